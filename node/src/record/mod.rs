//! The seizure record: validation at the edge, node-assigned fields, and derived values.
//!
//! A record crosses the API as JSON (`schemas/seizure-record.schema.json`, `docs/records.md`)
//! and is stored as that JSON: the node never rewrites what a State submitted. It only
//! - coerces the shorthand `"lot": "21-85"` to `{"raw": "21-85"}` (also `calibre`, `ammo_type`,
//!   `designation`, and `headstamp` → `{"present": true, "raw_transcription": …}`);
//! - assigns `record_id` (UUIDv7), `record_version`, `created_at`/`updated_at`,
//!   `schema_version` when absent;
//! - shows a node-owned `derived` object beside the raw `lot`, `headstamp` and `calibre` text
//!   (method, confidence, `normaliser_version`): [`derive`], as the store reads a record (it
//!   keeps records without them, decision 0018).
//!
//! Validation refuses, with a JSON pointer to the field: any float (no floats in stored
//! records), anything the schema refuses, unknown country codes, duplicate item ids, and a
//! record whose `originating_state` is not this node's State.

pub mod country;

use std::fmt;
use std::sync::{Arc, LazyLock};

use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::normalise::calibre::{CalibreResolution, CalibreTable};
use crate::normalise::{self, NORMALISER_VERSION, headstamp, lot};

/// The record schema, as published in `schemas/`.
pub const SCHEMA_JSON: &str = include_str!("../../../schemas/seizure-record.schema.json");

/// Current `schema_version` written when a record carries none.
pub const SCHEMA_VERSION: &str = "0.1";

static SCHEMA: LazyLock<Result<jsonschema::Validator, String>> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(SCHEMA_JSON).map_err(|e| e.to_string())?;
    jsonschema::validator_for(&schema).map_err(|e| e.to_string())
});

/// A record id: a UUID, written `urn:uuid:…` by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub Uuid);

impl RecordId {
    /// A new time-ordered id.
    pub fn new_v7() -> RecordId {
        RecordId(Uuid::now_v7())
    }

    /// Parses `urn:uuid:<uuid>` or a bare UUID.
    pub fn parse(text: &str) -> Option<RecordId> {
        let bare = text.strip_prefix("urn:uuid:").unwrap_or(text);
        Uuid::try_parse(bare).ok().map(RecordId)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "urn:uuid:{}", self.0.hyphenated())
    }
}

/// One reason a document was refused, located by a JSON pointer (RFC 6901).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// A record that passed validation, ready to store.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub id: RecordId,
    /// The version the submitter declared, if any.
    pub declared_version: Option<u32>,
    pub record: Value,
    /// The search keys of its object items, in order (for
    /// [`crate::index::SearchIndex::documents`]). The record itself carries no `derived`
    /// objects: the store keeps it without them (see [`derive`]).
    pub keys: Vec<ItemKeys>,
}

/// Validates submitted records for one node.
#[derive(Debug, Clone)]
pub struct Validator {
    node_id: String,
}

impl Validator {
    pub fn new(node_id: &str) -> Validator {
        Validator {
            node_id: node_id.to_owned(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Validates and completes a submitted record. `now` is the RFC 3339 time of the write.
    pub fn prepare(&self, mut value: Value, now: &str) -> Result<Prepared, Vec<FieldError>> {
        let Some(object) = value.as_object_mut() else {
            return Err(vec![FieldError::new("", "a record must be a JSON object")]);
        };
        coerce_shorthand(object);
        strip_derived(object);
        let mut errors = Vec::new();
        find_floats(&value, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        schema_errors(&value, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        self.domain_errors(&value, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let Some(object) = value.as_object_mut() else {
            return Err(vec![FieldError::new("", "a record must be a JSON object")]);
        };
        let id = match object.get("record_id").and_then(Value::as_str) {
            Some(text) => RecordId::parse(text)
                .ok_or_else(|| vec![FieldError::new("/record_id", "not a UUID or urn:uuid")])?,
            None => {
                let id = RecordId::new_v7();
                object.insert("record_id".into(), Value::String(id.to_string()));
                id
            }
        };
        let declared_version = match object.get("record_version") {
            Some(v) => Some(
                v.as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| {
                        vec![FieldError::new(
                            "/record_version",
                            "must be an integer from 1",
                        )]
                    })?,
            ),
            None => None,
        };
        object
            .entry("schema_version")
            .or_insert_with(|| Value::String(SCHEMA_VERSION.into()));
        object
            .entry("created_at")
            .or_insert_with(|| Value::String(now.into()));
        object
            .entry("updated_at")
            .or_insert_with(|| Value::String(now.into()));
        let keys = item_keys(&value);
        Ok(Prepared {
            id,
            declared_version,
            record: value,
            keys,
        })
    }

    fn domain_errors(&self, value: &Value, errors: &mut Vec<FieldError>) {
        // Retraction is a version the node writes (DELETE): a submitted flag would hide a live
        // record from exports while search still showed it.
        for member in ["retracted", "retraction"] {
            if value.get(member).is_some() {
                errors.push(FieldError::new(
                    format!("/{member}"),
                    "set by the node: retract a record with DELETE /api/v1/records/{id}",
                ));
            }
        }
        if let Some(state) = value.get("originating_state").and_then(Value::as_str)
            && state != self.node_id
        {
            errors.push(FieldError::new(
                "/originating_state",
                format!(
                    "this node records {}'s seizures only; {state}'s records arrive through the federation",
                    self.node_id
                ),
            ));
        }
        check_countries_and_dates(value, errors);
        if let Some(items) = value.get("items").and_then(Value::as_array) {
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(id) = item.get("item_id").and_then(Value::as_str)
                    && !seen.insert(id)
                {
                    errors.push(FieldError::new(
                        format!("/items/{i}/item_id"),
                        format!("item_id {id:?} appears twice in this record"),
                    ));
                }
            }
        }
        if let Some(text) = value.get("record_id").and_then(Value::as_str)
            && RecordId::parse(text).is_none()
        {
            errors.push(FieldError::new("/record_id", "not a UUID or urn:uuid"));
        }
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub fn pointer_segment(key: &str) -> std::borrow::Cow<'_, str> {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1").into()
    } else {
        key.into()
    }
}

fn schema_errors(value: &Value, errors: &mut Vec<FieldError>) {
    match &*SCHEMA {
        // Fast path: a valid document builds no error objects.
        Ok(validator) if validator.is_valid(value) => {}
        Ok(validator) => {
            for error in validator.iter_errors(value).take(20) {
                let mut detail = error.masked().to_string();
                if detail.len() > 300 {
                    let mut cut = 300;
                    while !detail.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    detail.truncate(cut);
                }
                // A missing member is located at the member, not at its parent.
                let mut pointer = error.instance_path().as_str().to_owned();
                if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind()
                    && let Some(name) = property.as_str()
                {
                    pointer.push('/');
                    pointer.push_str(&pointer_segment(name));
                    detail = format!("{name:?} is required");
                }
                errors.push(FieldError::new(pointer, detail));
            }
        }
        Err(e) => errors.push(FieldError::new(
            "",
            format!("record schema unavailable: {e}"),
        )),
    }
}

/// Keys whose value is a country code, wherever they appear.
const COUNTRY_KEYS: [&str; 4] = ["originating_state", "country", "state", "country_iso3"];

/// Depth-first walk: `visit(pointer, key, value)` for every value; returning `false` skips the
/// value's children.
fn walk(
    value: &Value,
    path: &mut String,
    key: Option<&str>,
    visit: &mut dyn FnMut(&str, Option<&str>, &Value) -> bool,
) {
    if !visit(path, key, value) {
        return;
    }
    let mut descend =
        |segment: &dyn std::fmt::Display, child: &Value, key: Option<&str>, path: &mut String| {
            use std::fmt::Write;
            let len = path.len();
            // Writing to a String cannot fail.
            let _ = write!(path, "/{segment}");
            walk(child, path, key, visit);
            path.truncate(len);
        };
    match value {
        Value::Object(map) => {
            for (k, child) in map {
                descend(&pointer_segment(k), child, Some(k), path);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                descend(&i, child, None, path);
            }
        }
        _ => {}
    }
}

/// Country codes the schema cannot list, and dates its pattern admits but the calendar does
/// not (`2024-02-30`), in one pass.
fn check_countries_and_dates(value: &Value, errors: &mut Vec<FieldError>) {
    walk(
        value,
        &mut String::new(),
        None,
        &mut |pointer, key, child| {
            if let (Some(key), Some(code)) = (key, child.as_str())
                && COUNTRY_KEYS.contains(&key)
                && !country::is_valid(code)
            {
                errors.push(FieldError::new(
                    pointer,
                    format!("{code:?} is not an ISO 3166-1 alpha-3 or user-assigned country code"),
                ));
            }
            if let (Some(key), Some(text)) = (key, child.as_str())
                && DATE_MEMBERS.contains(&key)
                && text.len() == 10
                && text.as_bytes()[4] == b'-'
                && date_key(text, false).is_none()
            {
                errors.push(FieldError::new(
                    pointer,
                    format!("{text:?} is not a date of the calendar"),
                ));
            }
            // `derived` objects are the node's own.
            key != Some("derived")
        },
    );
}

fn find_floats(value: &Value, errors: &mut Vec<FieldError>) {
    walk(value, &mut String::new(), None, &mut |pointer, _, child| {
        if let Value::Number(n) = child
            && !n.is_i64()
            && !n.is_u64()
        {
            // serde_json reads an integer too large for 64 bits as a float: say which it is.
            let integral = n.as_f64().is_some_and(|f| {
                f.fract() == 0.0
                    && !(-9_223_372_036_854_775_808.0..18_446_744_073_709_551_615.0).contains(&f)
            });
            errors.push(FieldError::new(
                pointer,
                if integral {
                    "integer out of range: at most 18446744073709551615 (and at least -9223372036854775808)"
                } else {
                    "numbers must be integers (no floats in stored records: write coordinates as decimal strings)"
                },
            ));
        }
        true
    });
}

fn coerce_shorthand(record: &mut Map<String, Value>) {
    let Some(items) = record.get_mut("items").and_then(Value::as_array_mut) else {
        return;
    };
    for item in items.iter_mut().filter_map(Value::as_object_mut) {
        for key in ["calibre", "lot", "ammo_type", "designation"] {
            if let Some(Value::String(raw)) = item.get(key) {
                let raw = raw.clone();
                item.insert(key.into(), json!({ "raw": raw }));
            }
        }
        if let Some(Value::String(raw)) = item.get("headstamp") {
            let raw = raw.clone();
            item.insert(
                "headstamp".into(),
                json!({ "present": true, "raw_transcription": raw }),
            );
        }
    }
}

fn strip_derived(record: &mut Map<String, Value>) {
    record.remove("normaliser_version");
    if let Some(items) = record.get_mut("items").and_then(Value::as_array_mut) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            for key in ["calibre", "lot", "headstamp"] {
                if let Some(obj) = item.get_mut(key).and_then(Value::as_object_mut) {
                    obj.remove("derived");
                }
            }
        }
    }
}

/// Parses a stored record version as [`without_node_fields`] would leave it, without building
/// what that drops: the derived readings (the bulk of a stored record, and of the cost of
/// parsing it) are skipped as they are read. Used to rebuild an own envelope.
pub fn parse_submitted(json: &[u8]) -> serde_json::Result<Value> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = Level::Top.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Where a value sits in a record, for [`parse_submitted`]: the levels on the way to a
/// `derived` reading, and everything else.
#[derive(Clone, Copy)]
enum Level {
    Top,
    Items,
    Item,
    Reading,
    Plain,
}

impl<'de> serde::de::DeserializeSeed<'de> for Level {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self {
            Level::Plain => serde::Deserialize::deserialize(d),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Level {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = match self {
            Level::Items => Level::Item,
            _ => Level::Plain,
        };
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(child)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = match (self, key.as_str()) {
                (Level::Top, "normaliser_version") | (Level::Reading, "derived") => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
                (Level::Top, "items") => Level::Items,
                (Level::Item, "calibre" | "lot" | "headstamp") => Level::Reading,
                _ => Level::Plain,
            };
            let value = map.next_value_seed(child)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Removes what the node adds to a record, leaving what the submitter wrote (used to compare a
/// stored record with its submission).
pub fn without_node_fields(record: &Value) -> Value {
    // Copy all but the `derived` values (the bulk of a stored record), then remove their keys
    // exactly as before.
    fn shallow(value: &Value, depth: u8) -> Value {
        let Some(object) = value.as_object() else {
            return match (value, depth) {
                (Value::Array(items), 1) => {
                    Value::Array(items.iter().map(|i| shallow(i, 2)).collect())
                }
                _ => value.clone(),
            };
        };
        let mut out = Map::with_capacity(object.len());
        for (key, child) in object {
            let copy = match (depth, key.as_str()) {
                (0, "items") => shallow(child, 1),
                (2, "calibre" | "lot" | "headstamp") => shallow(child, 3),
                (3, "derived") => Value::Null,
                _ => child.clone(),
            };
            out.insert(key.clone(), copy);
        }
        Value::Object(out)
    }
    let mut copy = shallow(record, 0);
    if let Some(object) = copy.as_object_mut() {
        strip_derived(object);
    }
    copy
}

/// Recomputes the node-owned `derived` objects and `normaliser_version` of a record. Returns
/// the search keys of its items (the object ones, in order), which are what
/// [`IndexKeys::of`] would read back from those `derived` objects.
///
/// The store keeps records without them and calls this as it reads one (decision 0018): they
/// are a pure function of the raw text and the normaliser, so a read always shows the current
/// normaliser's interpretations.
pub fn derive(record: &mut Value) -> Vec<IndexKeys> {
    let mut index_keys = Vec::new();
    let Some(object) = record.as_object_mut() else {
        return index_keys;
    };
    object.insert(
        "normaliser_version".into(),
        Value::String(NORMALISER_VERSION.into()),
    );
    let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) else {
        return index_keys;
    };
    for item in items.iter_mut().filter_map(Value::as_object_mut) {
        let keys = ItemKeys::from_item(item);
        let derived = keys.derived(item);
        let values = [
            ("lot", derived.lot.as_ref().map(serde_json::to_value)),
            (
                "headstamp",
                derived.headstamp.as_ref().map(serde_json::to_value),
            ),
            (
                "calibre",
                derived.calibre.as_ref().map(serde_json::to_value),
            ),
        ];
        for (field, value) in values {
            if let Some(Ok(value)) = value
                && let Some(reading) = item.get_mut(field).and_then(Value::as_object_mut)
            {
                reading.insert("derived".into(), value);
            }
        }
        index_keys.push(IndexKeys::from(&keys));
    }
    index_keys
}

/// The search keys of a record's object items, in order, without writing its `derived`
/// objects (what a write needs: the store keeps the record without them).
pub fn item_keys(record: &Value) -> Vec<ItemKeys> {
    record
        .get("items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_object)
                .map(ItemKeys::from_item)
                .collect()
        })
        .unwrap_or_default()
}

/// The `derived` object of a lot: its normal form and the identity key it gives with the
/// item's headstamp.
#[derive(Debug, Serialize)]
pub struct LotDerived<'a> {
    #[serde(flatten)]
    lot: &'a lot::LotNorm,
    weak: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity_key: Option<String>,
    method: &'static str,
    confidence: &'static str,
    normaliser_version: &'static str,
}

/// The `derived` object of a headstamp: its tokens and its three best readings (the rest add
/// size, not information).
#[derive(Debug, Serialize)]
pub struct HeadstampDerived<'a> {
    tokens: &'a [String],
    readings: &'a [normalise::maker::HeadstampReading],
    method: &'static str,
    normaliser_version: &'static str,
}

/// The `derived` object of a calibre: its resolution.
#[derive(Debug, Serialize)]
pub struct CalibreDerived<'a> {
    #[serde(flatten)]
    calibre: &'a CalibreResolution,
    normaliser_version: &'static str,
}

/// The `derived` objects of one item, each present only where its reading is an object with
/// something to interpret ([`derive`] writes exactly these).
#[derive(Debug)]
pub struct ItemDerived<'a> {
    pub lot: Option<LotDerived<'a>>,
    pub headstamp: Option<HeadstampDerived<'a>>,
    pub calibre: Option<CalibreDerived<'a>>,
}

/// An item as [`derive`] would leave it, written without building it: its fields as they are,
/// each reading with its `derived` object last (for the index's stored hits).
pub struct DerivedItem<'a> {
    pub item: &'a Map<String, Value>,
    pub derived: &'a ItemDerived<'a>,
}

impl Serialize for DerivedItem<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        /// A reading object with its `derived` object put last.
        struct Reading<'a, D> {
            object: &'a Map<String, Value>,
            derived: &'a D,
        }
        impl<D: Serialize> Serialize for Reading<'_, D> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(None)?;
                for (k, v) in self.object.iter().filter(|(k, _)| *k != "derived") {
                    map.serialize_entry(k, v)?;
                }
                map.serialize_entry("derived", self.derived)?;
                map.end()
            }
        }
        let d = self.derived;
        let mut map = serializer.serialize_map(Some(self.item.len()))?;
        for (key, value) in self.item {
            match (key.as_str(), value.as_object()) {
                ("lot", Some(object)) if d.lot.is_some() => map.serialize_entry(
                    key,
                    &Reading {
                        object,
                        derived: &d.lot,
                    },
                )?,
                ("headstamp", Some(object)) if d.headstamp.is_some() => map.serialize_entry(
                    key,
                    &Reading {
                        object,
                        derived: &d.headstamp,
                    },
                )?,
                ("calibre", Some(object)) if d.calibre.is_some() => map.serialize_entry(
                    key,
                    &Reading {
                        object,
                        derived: &d.calibre,
                    },
                )?,
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

/// The searchable identifiers of one item, recomputed from its raw text by the current
/// normaliser.
#[derive(Debug, Clone)]
pub struct ItemKeys {
    pub item_id: String,
    pub category: String,
    pub lot: Option<lot::LotNorm>,
    /// The headstamp's tokens and readings, shared with the normaliser's memo.
    pub headstamp: Option<Arc<headstamp::HeadstampNorm>>,
    /// The calibre's resolution, shared with the normaliser's memo.
    pub calibre: Option<Arc<CalibreResolution>>,
}

impl ItemKeys {
    pub fn from_item(item: &Map<String, Value>) -> ItemKeys {
        let text = |key: &str, field: &str| {
            item.get(key)
                .and_then(|v| v.get(field))
                .and_then(Value::as_str)
        };
        let lot = text("lot", "raw")
            .map(lot::normalise)
            .filter(|l| !l.is_empty());
        let headstamp = text("headstamp", "raw_transcription").map(headstamp::normalise_shared);
        let calibre = text("calibre", "raw").map(CalibreTable::resolve_shared);
        ItemKeys {
            item_id: item
                .get("item_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            category: item
                .get("item_category")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            lot,
            headstamp,
            calibre,
        }
    }

    /// The headstamp's tokens (none without a headstamp).
    pub fn headstamp_tokens(&self) -> &[String] {
        self.headstamp.as_ref().map_or(&[], |h| &h.tokens)
    }

    /// The headstamp's readings, best first (none without a headstamp).
    pub fn readings(&self) -> &[normalise::maker::HeadstampReading] {
        self.headstamp.as_ref().map_or(&[], |h| &h.readings)
    }

    /// The `derived` objects of `item` (whose keys these are), as [`derive`] writes them.
    pub fn derived<'a>(&'a self, item: &Map<String, Value>) -> ItemDerived<'a> {
        let is_object = |key: &str| item.get(key).is_some_and(Value::is_object);
        let reading = self.readings().first();
        ItemDerived {
            lot: self.lot.as_ref().filter(|_| is_object("lot")).map(|lot| {
                let identity_key = lot::identity_key(
                    lot,
                    reading.and_then(|r| r.manufacturer_code.as_deref()),
                    reading.and_then(|r| r.year_gregorian),
                );
                LotDerived {
                    lot,
                    weak: identity_key.is_none(),
                    identity_key,
                    method: "lot_grammar",
                    confidence: if lot.scheme == "unknown" {
                        "low"
                    } else {
                        "medium"
                    },
                    normaliser_version: NORMALISER_VERSION,
                }
            }),
            headstamp: (is_object("headstamp") && !self.headstamp_tokens().is_empty()).then(|| {
                let readings = self.readings();
                HeadstampDerived {
                    tokens: self.headstamp_tokens(),
                    readings: &readings[..readings.len().min(3)],
                    method: "headstamp_table",
                    normaliser_version: NORMALISER_VERSION,
                }
            }),
            calibre: self
                .calibre
                .as_deref()
                .filter(|_| is_object("calibre"))
                .map(|calibre| CalibreDerived {
                    calibre,
                    normaliser_version: NORMALISER_VERSION,
                }),
        }
    }
}

/// What the search index needs of one item: the keys of its lot, headstamp and calibre.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexKeys {
    pub item_id: String,
    pub category: String,
    /// `(folded, key, skeleton)`.
    pub lot: Option<(String, String, String)>,
    pub headstamp_tokens: Vec<String>,
    pub calibres: Vec<String>,
    pub families: Vec<String>,
    pub maker: Option<String>,
    pub year: Option<i64>,
    /// The lot's identity key (`maker|YYYY|lot`), when its headstamp reads as a maker and year.
    pub identity: Option<String>,
}

impl IndexKeys {
    /// The item's keys: read from its stored `derived` objects when the current normaliser
    /// wrote them (every write and every received replica is derived on arrival, so this is
    /// the common case and saves normalising twice), else recomputed from the raw text.
    pub fn of(item: &Map<String, Value>) -> IndexKeys {
        IndexKeys::from_derived(item).unwrap_or_else(|| IndexKeys::from(&ItemKeys::from_item(item)))
    }

    /// `None` unless every raw field present has a `derived` of the current normaliser.
    pub fn from_derived(item: &Map<String, Value>) -> Option<IndexKeys> {
        let derived = |key: &str, raw: &str| -> Option<Option<&Map<String, Value>>> {
            let Some(field) = item.get(key) else {
                return Some(None);
            };
            if field.get(raw).and_then(Value::as_str).is_none() {
                return Some(None);
            }
            let d = field.get("derived")?.as_object()?;
            (d.get("normaliser_version")?.as_str()? == NORMALISER_VERSION).then_some(Some(d))
        };
        let strings = |v: Option<&Value>| -> Option<Vec<String>> {
            v?.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let text = |d: &Map<String, Value>, k: &str| d.get(k)?.as_str().map(str::to_owned);
        let (lot, identity) = match derived("lot", "raw")? {
            Some(d) => (
                Some((text(d, "folded")?, text(d, "key")?, text(d, "skeleton")?)),
                text(d, "identity_key"),
            ),
            None => (None, None),
        };
        let (headstamp_tokens, maker, year) = match derived("headstamp", "raw_transcription")? {
            Some(d) => {
                let first = d.get("readings")?.as_array()?.first();
                (
                    strings(d.get("tokens"))?,
                    first.and_then(|r| text(r.as_object()?, "manufacturer_code")),
                    first.and_then(|r| r.get("year_gregorian")?.as_i64()),
                )
            }
            None => (Vec::new(), None, None),
        };
        let (calibres, families) = match derived("calibre", "raw")? {
            Some(d) => (strings(d.get("candidates"))?, strings(d.get("families"))?),
            None => (Vec::new(), Vec::new()),
        };
        let field = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default();
        Some(IndexKeys {
            item_id: field("item_id").to_owned(),
            category: field("item_category").to_owned(),
            lot,
            headstamp_tokens,
            calibres,
            families,
            maker,
            year,
            identity,
        })
    }
}

impl From<&ItemKeys> for IndexKeys {
    fn from(k: &ItemKeys) -> IndexKeys {
        let first = k.readings().first();
        IndexKeys {
            identity: k.lot.as_ref().and_then(|l| {
                lot::identity_key(
                    l,
                    first.and_then(|r| r.manufacturer_code.as_deref()),
                    first.and_then(|r| r.year_gregorian),
                )
            }),
            maker: first.and_then(|r| r.manufacturer_code.clone()),
            year: first.and_then(|r| r.year_gregorian).map(i64::from),
            lot: k
                .lot
                .as_ref()
                .map(|l| (l.folded.clone(), l.key.clone(), l.skeleton.clone())),
            headstamp_tokens: k.headstamp_tokens().to_vec(),
            calibres: k
                .calibre
                .as_ref()
                .map(|c| c.candidates.clone())
                .unwrap_or_default(),
            families: k
                .calibre
                .as_ref()
                .map(|c| c.families.clone())
                .unwrap_or_default(),
            item_id: k.item_id.clone(),
            category: k.category.clone(),
        }
    }
}

/// Record-level facts every item of a record shares, for the index and for hit summaries.
#[derive(Debug, Clone, Default)]
pub struct EventKeys {
    pub origin: String,
    pub country: String,
    /// `YYYYMMDD` with unknown parts as 00 (`2024-06` → 20240600); 0 when absent.
    pub date_key: i64,
}

impl EventKeys {
    pub fn from_record(record: &Value) -> EventKeys {
        let event = record.get("event");
        EventKeys {
            origin: str_at(record, "/originating_state").to_owned(),
            country: event
                .and_then(|e| e.pointer("/location/country"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            date_key: event
                .and_then(|e| e.pointer("/date/start"))
                .and_then(Value::as_str)
                .and_then(|d| date_key(d, false))
                .unwrap_or(0),
        }
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Members holding a partial date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) in the record schema.
const DATE_MEMBERS: &[&str] = &["date", "start", "end", "sent", "response_date"];

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` as `YYYYMMDD`; missing parts are 00, or 99 when `upper`
/// (so a `to` bound includes the whole month or year). `None` unless it is a real month or
/// day of the calendar.
pub fn date_key(text: &str, upper: bool) -> Option<i64> {
    let parts: Vec<&str> = text.split('-').collect();
    let num = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<i64>().ok())?
    };
    let fill = if upper { 99 } else { 0 };
    let month = |m: &str| num(m, 2).filter(|m| (1..=12).contains(m));
    match parts.as_slice() {
        [y] => Some(num(y, 4)? * 10000 + fill * 100 + fill),
        [y, m] => Some(num(y, 4)? * 10000 + month(m)? * 100 + fill),
        [y, m, d] => {
            let (y, m, d) = (num(y, 4)?, month(m)?, num(d, 2)?);
            chrono::NaiveDate::from_ymd_opt(
                i32::try_from(y).ok()?,
                u32::try_from(m).ok()?,
                u32::try_from(d).ok()?,
            )?;
            Some(y * 10000 + m * 100 + d)
        }
        _ => None,
    }
}

/// The event summary shown with a search hit, borrowed from the record (serialised into
/// each item's stored hit without copying the event).
#[derive(Debug, Serialize)]
pub struct EventSummary<'a> {
    event_type: Option<&'a Value>,
    date: Option<&'a Value>,
    country: Option<&'a Value>,
    place_name: Option<&'a Value>,
    context: Option<&'a Value>,
}

impl<'a> EventSummary<'a> {
    pub fn of(record: &'a Value) -> Self {
        let event = record.get("event");
        let at = |key: &str| event.and_then(|e| e.get(key));
        let location = |key: &str| at("location").and_then(|l| l.get(key));
        EventSummary {
            event_type: at("event_type"),
            date: at("date"),
            country: location("country"),
            place_name: location("place_name"),
            context: at("context"),
        }
    }
}

/// The event summary shown with a search hit ([`EventSummary`]), as JSON.
pub fn event_summary(record: &Value) -> Value {
    serde_json::to_value(EventSummary::of(record)).unwrap_or(Value::Null)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A hit's event summary names the same five fields, in the same order, whatever the
    /// event holds: null where the record has none.
    #[test]
    fn the_event_summary_is_the_events_five_fields_in_order() {
        let full = json!({"event": {"event_type": "seizure", "date": {"start": "2024"},
            "location": {"country": "XAA", "place_name": "port", "admin1": "XAA-01"},
            "context": ["trafficking_interdiction"], "seizing_agency": {"type": "customs"}}});
        let text = serde_json::to_string(&EventSummary::of(&full)).unwrap();
        assert_eq!(
            text,
            r#"{"event_type":"seizure","date":{"start":"2024"},"country":"XAA","place_name":"port","context":["trafficking_interdiction"]}"#
        );
        assert_eq!(
            event_summary(&full),
            serde_json::from_str::<Value>(&text).unwrap()
        );
        let bare = json!({"event": {"location": {}}});
        assert_eq!(
            serde_json::to_string(&EventSummary::of(&bare)).unwrap(),
            r#"{"event_type":null,"date":null,"country":null,"place_name":null,"context":null}"#
        );
        assert_eq!(event_summary(&json!({}))["country"], Value::Null);
    }

    /// Record-shaped JSON: the keys `parse_submitted` treats specially at their levels and
    /// elsewhere, with derived readings and leaves of every kind.
    pub(crate) fn record_like() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
            (-1e9f64..1e9f64).prop_map(Value::from),
        ];
        let key = prop_oneof![
            Just("items".to_owned()),
            Just("lot".to_owned()),
            Just("calibre".to_owned()),
            Just("headstamp".to_owned()),
            Just("derived".to_owned()),
            Just("normaliser_version".to_owned()),
            Just("raw".to_owned()),
            // Keys a JSON Pointer must escape, array-like keys and the empty key.
            Just("a/b~c".to_owned()),
            Just("0".to_owned()),
            Just("12".to_owned()),
            Just(String::new()),
            "[a-z]{1,6}",
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// The search keys `derive` hands the index are exactly what the index would read back
    /// from the `derived` objects it wrote, and what normalising the raw text again gives;
    /// and an item as a write shows it (`item_keys`, then `DerivedItem`) is, byte for byte,
    /// the item `derive` makes: over every record of the shared dev set (real transcription
    /// variants).
    #[test]
    fn derived_keys_equal_the_keys_read_back_and_recomputed() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/dev-set/records.jsonl"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut items = 0;
        let mut shown = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut record: Value = serde_json::from_str(line).unwrap();
            if let Some(o) = record.as_object_mut() {
                strip_derived(o);
            }
            let written = item_keys(&record);
            let bare = record.clone();
            let keys = derive(&mut record);
            let bare_items = bare["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_object);
            let derived_items = record["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_object);
            for ((k, item), derived) in written.iter().zip(bare_items).zip(derived_items) {
                let view = DerivedItem {
                    item,
                    derived: &k.derived(item),
                };
                assert_eq!(
                    serde_json::to_string(&view).unwrap(),
                    serde_json::to_string(derived).unwrap()
                );
                shown += usize::from(derived.values().any(|v| v.get("derived").is_some()));
            }
            let objects: Vec<_> = record["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_object)
                .collect();
            assert_eq!(keys.len(), objects.len());
            for (keys, item) in keys.iter().zip(objects) {
                assert_eq!(keys, &IndexKeys::of(item), "{item:?}");
                assert_eq!(keys, &IndexKeys::from(&ItemKeys::from_item(item)));
                items += 1;
            }
        }
        assert!(items > 6_000, "{items} items");
        assert!(shown > 6_000, "{shown} items with interpretations");
    }

    proptest! {
        #[test]
        fn parse_submitted_equals_parsing_then_removing_node_fields(value in record_like()) {
            let json = serde_json::to_vec(&value).unwrap();
            prop_assert_eq!(parse_submitted(&json).unwrap(), without_node_fields(&value));
        }
    }

    #[test]
    fn parse_submitted_drops_the_derived_readings_of_a_stored_record() {
        let prepared = Validator::new("XAA")
            .prepare(
                json!({
                    "originating_state": "XAA",
                    "event": {"event_type": "seizure", "date": {"start": "2024"},
                              "location": {"country": "XAA", "precision": "country"}},
                    "items": [{"item_id": "i1", "item_category": "small_arms_ammunition",
                               "calibre": "5.56x45", "headstamp": "LC 19", "lot": "LC19A001-002"}],
                    "sharing": {"tlp": "GREEN"}
                }),
                "2026-01-01T00:00:00Z",
            )
            .unwrap();
        // As a store written before decision 0018 kept it: with its interpretations.
        let mut record = prepared.record.clone();
        derive(&mut record);
        let stored = serde_json::to_vec(&record).unwrap();
        assert!(String::from_utf8_lossy(&stored).contains("\"derived\""));
        let submitted = parse_submitted(&stored).unwrap();
        assert_eq!(submitted, without_node_fields(&record));
        assert_eq!(submitted, without_node_fields(&prepared.record));
        assert!(!submitted.to_string().contains("derived"));
        assert_eq!(submitted["items"][0]["lot"]["raw"], "LC19A001-002");
        assert!(parse_submitted(b"{\"items\": [").is_err());
        assert!(parse_submitted(b"{} trailing").is_err());
    }

    fn minimal() -> Value {
        json!({
            "originating_state": "XAA",
            "event": {"event_type": "seizure", "date": {"start": "2024-03-11", "precision": "day"},
                      "location": {"country": "XAA", "precision": "country"}},
            "items": [{"item_id": "i1", "item_category": "small_arms_ammunition",
                       "calibre": "7.62x39", "lot": "21-85", "headstamp": "539 85",
                       "quantity": {"count": 10, "unit": "rounds"}}],
            "sharing": {"tlp": "GREEN"}
        })
    }

    #[test]
    fn prepares_shorthand_ids_and_derived() {
        let p = Validator::new("XAA")
            .prepare(minimal(), "2026-01-01T00:00:00Z")
            .unwrap();
        let item = &p.record["items"][0];
        assert_eq!(item["lot"]["raw"], "21-85");
        assert_eq!(item["headstamp"]["raw_transcription"], "539 85");
        // The record is kept without interpretations; its keys carry them, and a read shows
        // them (`derive`).
        assert!(!p.record.to_string().contains("derived"));
        assert_eq!(p.keys[0].lot.as_ref().unwrap().key, "2185");
        let mut shown = p.record.clone();
        derive(&mut shown);
        let item = &shown["items"][0];
        assert_eq!(item["lot"]["derived"]["key"], "2185");
        assert_eq!(item["calibre"]["derived"]["canonical_id"], "7.62x39");
        assert_eq!(shown["normaliser_version"], NORMALISER_VERSION);
        assert_eq!(p.record["record_id"], p.id.to_string());
        assert_eq!(p.id.0.get_version_num(), 7);
    }

    #[test]
    fn too_large_integers_are_told_apart_from_floats() {
        let value: Value =
            serde_json::from_str(r#"{"a": 18446744073709551616, "b": 1.5, "c": 7}"#).unwrap();
        let mut errors = Vec::new();
        find_floats(&value, &mut errors);
        let detail = |p: &str| {
            errors
                .iter()
                .find(|e| e.pointer == p)
                .map(|e| e.detail.clone())
        };
        assert!(detail("/a").unwrap().contains("out of range"));
        assert!(detail("/b").unwrap().contains("must be integers"));
        assert!(detail("/c").is_none());
    }

    #[test]
    fn refusals_point_at_the_field() {
        let v = Validator::new("XAA");
        type Mutation = fn(&mut Value);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |r| r["originating_state"] = json!("XBB"),
                "/originating_state",
            ),
            (
                |r| r["event"]["location"]["country"] = json!("ABC"),
                "/event/location/country",
            ),
            (
                |r| r["items"][0]["quantity"]["count"] = json!(1.5),
                "/items/0/quantity/count",
            ),
            (
                |r| r["items"][0]["item_category"] = json!("banana"),
                "/items/0/item_category",
            ),
            (|r| r["retracted"] = json!(true), "/retracted"),
            (
                |r| r["items"][0]["quantity"]["count"] = json!(1e20),
                "/items/0/quantity/count",
            ),
            (
                |r| r["event"]["date"]["start"] = json!("2024-02-30"),
                "/event/date/start",
            ),
            (
                |r| r["retraction"] = json!({"reason": "x", "at": "2026-01-01T00:00:00Z"}),
                "/retraction",
            ),
        ];
        for (mutate, pointer) in cases {
            let mut r = minimal();
            mutate(&mut r);
            let errors = v.prepare(r, "2026-01-01T00:00:00Z").unwrap_err();
            assert!(
                errors.iter().any(|e| e.pointer == pointer),
                "{pointer}: {errors:?}"
            );
        }
        let mut r = minimal();
        r["items"] = json!([]);
        assert!(v.prepare(r, "t").is_err());
    }

    #[test]
    fn date_keys() {
        assert_eq!(date_key("2024-06", false), Some(20240600));
        assert_eq!(date_key("2024", true), Some(20249999));
        assert_eq!(date_key("2024-06-07", true), Some(20240607));
        assert_eq!(date_key("24-06", false), None);
        assert_eq!(date_key("2024-13", false), None);
        assert_eq!(date_key("2024-02-30", false), None);
        assert_eq!(date_key("2024-02-29", false), Some(20240229));
        assert_eq!(date_key("2023-02-29", false), None);
    }
}
