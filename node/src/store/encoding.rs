//! How values are laid out in sled: compressed JSON ([`pack`]), and record versions whose
//! headstamp and calibre interpretations are kept apart, once each ([`encode_record`],
//! decision 0014).
//!
//! A stored record version is one of:
//! - JSON (stores written before compression);
//! - `0x01` then LZ4 (block format, original size prepended) of the JSON;
//! - `0x03`, a `u16` BE count of references, each `item u16 BE ‖ field u8 ‖ id(32)`, then the
//!   record as `0x01` form without those interpretations. `field` 0 is the item's
//!   `headstamp`, 1 its `calibre`; `id` names the interpretation (the `derived` object, the
//!   last key of its object) in the `interpretations` tree: the SHA-256 of its JSON, which
//!   that tree maps to the JSON, packed;
//! - `0x04`, the version's envelope length `u32` BE, the envelope (what `Store::envelope` hands
//!   out, packed), then the record in any of the forms above (decision 0015: one sled insert
//!   per version instead of two). Versions written before keep their envelope in the
//!   `envelopes` tree. A partner's version written since decision 0019 has no record after
//!   its envelope: its record is the one the envelope shows. Since session 17 a partner's
//!   envelope is kept as plain JSON, not packed (its salts and digests are random: LZ4 saved
//!   a tenth of the bytes for ~10 µs of CPU); both forms read.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::StoreError;

/// First byte of a compressed value: LZ4 block format with the original size prepended (a JSON
/// value never starts with it, so values written before compression still read as JSON).
pub(super) const LZ4: u8 = 0x01;

/// First byte of a record version stored with its interpretations apart (see the module).
const APART: u8 = 0x03;

/// First byte of a record version stored with its envelope (see the module).
const WITH_ENVELOPE: u8 = 0x04;

/// The item fields whose `derived` interpretation is kept apart: pure functions of a short raw
/// text that a national collection repeats thousands of times ("FC 18", "5.56x45mm NATO").
/// A lot's interpretation is as unique as the lot, so it stays in the record.
const SHARED: [&str; 2] = ["headstamp", "calibre"];

/// The name of an interpretation in the `interpretations` tree: the SHA-256 of its JSON, whole
/// (a partner's records can carry interpretations of its choosing: no collision may be found).
pub(super) type InterpretationId = [u8; 32];

/// Bytes of one reference: item, field, id.
const REFERENCE_LEN: usize = 2 + 1 + 32;

/// The stored form of a record version or an envelope: compressed JSON. A record with its
/// derived readings and an envelope with its salts take about half the bytes this way, which
/// halves what sled copies, logs and flushes per write.
pub(super) fn pack(json: &[u8]) -> Vec<u8> {
    let compressed = lz4_flex::block::compress_prepend_size(json);
    let mut out = Vec::with_capacity(compressed.len() + 1);
    out.push(LZ4);
    out.extend_from_slice(&compressed);
    out
}

/// The JSON of a stored value (see [`pack`]).
pub(super) fn unpack<'a>(
    bytes: &'a [u8],
    what: &dyn std::fmt::Display,
) -> Result<Cow<'a, [u8]>, StoreError> {
    let Some((&LZ4, compressed)) = bytes.split_first() else {
        return Ok(Cow::Borrowed(bytes));
    };
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
    let (size, block) = lz4_flex::block::uncompressed_size(compressed).map_err(|e| corrupt(&e))?;
    // An LZ4 block expands at most ~255 times; a larger stated size is a damaged prefix, which
    // must not make the node allocate gigabytes.
    if size > block.len().saturating_mul(256) + 64 {
        return Err(corrupt(
            &"the stated size does not fit the compressed bytes",
        ));
    }
    let out = lz4_flex::block::decompress(block, size).map_err(|e| corrupt(&e))?;
    // lz4_flex stops without an error when the input ends after a run of literals: a value
    // cut there decodes short, so the length is what tells.
    if out.len() != size {
        return Err(corrupt(&format_args!(
            "{} bytes decoded where {size} were stored",
            out.len()
        )));
    }
    Ok(Cow::Owned(out))
}

pub(super) fn to_bytes(value: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its keys are strings.
    serde_json::to_vec(value).unwrap_or_default()
}

/// A record version ready to store.
pub(super) struct Encoded {
    /// The record part of the version's value in `record_versions`; the value itself is
    /// [`version_value`] of these bytes and the version's envelope.
    pub bytes: Vec<u8>,
    /// The interpretations it refers to, as JSON; the `interpretations` tree must hold each
    /// (packed) when the version is written.
    pub interpretations: Vec<(InterpretationId, Arc<[u8]>)>,
}

/// The interpretations named lately, by field and raw text, so that a repeated one (the
/// common case: a collection repeats its headstamps and calibres) is named without
/// serialising and hashing it again. A hit counts only when the interpretation is the same
/// JSON, key order included. Bounded: emptied when full.
#[derive(Default)]
pub(super) struct Names(Mutex<[HashMap<String, Named>; 2]>);

struct Named {
    interpretation: Value,
    id: InterpretationId,
    json: Arc<[u8]>,
}

/// At most this many names are remembered per field.
const NAMES_MAX: usize = 4096;

/// The key of a reading's raw text.
const RAW: [&str; 2] = ["raw_transcription", "raw"];

impl Names {
    /// The id and JSON of `interpretation`, the `field` reading's of `raw` (when known).
    fn name(
        &self,
        field: u8,
        raw: Option<&str>,
        interpretation: &Value,
    ) -> (InterpretationId, Arc<[u8]>) {
        let lock = || {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let field = usize::from(field);
        if let Some(raw) = raw
            && let Some(named) = lock()[field].get(raw)
            && same_json(&named.interpretation, interpretation)
        {
            return (named.id, named.json.clone());
        }
        let json: Arc<[u8]> = to_bytes(interpretation).into();
        let id = interpretation_id(&json);
        if let Some(raw) = raw {
            let names = &mut lock()[field];
            if names.len() >= NAMES_MAX {
                names.clear();
            }
            names.insert(
                raw.to_owned(),
                Named {
                    interpretation: interpretation.clone(),
                    id,
                    json: json.clone(),
                },
            );
        }
        (id, json)
    }
}

/// Equal as JSON text: the same values with object keys in the same order (`Value`'s own
/// equality ignores the order).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_json(va, vb))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(va, vb)| same_json(va, vb))
        }
        _ => a == b,
    }
}

/// Where an interpretation kept apart belongs: `items/{item}/{SHARED[field]}/derived`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reference {
    item: u16,
    field: u8,
    pub id: InterpretationId,
}

/// The most items a record may have for its interpretations to be kept apart: two references
/// per item, counted in a `u16`. (Real records have a handful; a larger one is stored whole.)
const MAX_ITEMS_APART: usize = (u16::MAX / 2) as usize;

/// Whether `encode_record` keeps this item field's interpretation apart: only an object that
/// is the last key of its reading (where `record::derive` puts it, and where a read puts it
/// back), and only in a record of at most [`MAX_ITEMS_APART`] items.
fn apart(items: usize, reading: Option<&Value>) -> Option<&Value> {
    let (key, derived) = reading?.as_object()?.iter().next_back()?;
    (key == "derived" && items <= MAX_ITEMS_APART && derived.is_object()).then_some(derived)
}

/// The stored form of a record version: its headstamp and calibre interpretations apart,
/// referred to by id, and the rest packed (see the module).
pub(super) fn encode_record(record: &Value, names: &Names) -> Encoded {
    let items = record
        .get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut references = Vec::new();
    let mut interpretations = Vec::new();
    for (n, item) in items.iter().enumerate() {
        for (field, name) in SHARED.iter().enumerate() {
            let reading = item.get(name);
            if let Some(derived) = apart(items.len(), reading) {
                let raw = reading
                    .and_then(|r| r.get(RAW[field]))
                    .and_then(Value::as_str);
                let (id, json) = names.name(field as u8, raw, derived);
                references.push(Reference {
                    // `apart` allows at most MAX_ITEMS_APART items: the number fits.
                    item: u16::try_from(n).unwrap_or(u16::MAX),
                    field: field as u8,
                    id,
                });
                interpretations.push((id, json));
            }
        }
    }
    if references.is_empty() {
        return Encoded {
            bytes: pack(&to_bytes(record)),
            interpretations,
        };
    }
    let rest = pack(&serde_json::to_vec(&Apart(record)).unwrap_or_default());
    let mut bytes = Vec::with_capacity(3 + references.len() * REFERENCE_LEN + rest.len());
    bytes.push(APART);
    // Two per item at most, and `apart` allows at most MAX_ITEMS_APART items: it fits.
    let count = u16::try_from(references.len()).unwrap_or(u16::MAX);
    bytes.extend_from_slice(&count.to_be_bytes());
    for r in &references {
        bytes.extend_from_slice(&r.item.to_be_bytes());
        bytes.push(r.field);
        bytes.extend_from_slice(&r.id);
    }
    bytes.extend_from_slice(&rest);
    Encoded {
        bytes,
        interpretations,
    }
}

fn interpretation_id(json: &[u8]) -> InterpretationId {
    Sha256::digest(json).into()
}

/// The value of a record version in the `record_versions` tree: `envelope` (as packed for the
/// store) in front of `record` (an [`Encoded`] form).
pub(super) fn version_value(record: &[u8], envelope: &[u8]) -> Result<Vec<u8>, StoreError> {
    // Unreachable in practice (request bodies are far smaller), but never truncated silently.
    let len = u32::try_from(envelope.len()).map_err(|_| {
        StoreError::Corrupt(format!(
            "an envelope of {} bytes is too large to store",
            envelope.len()
        ))
    })?;
    let mut value = Vec::with_capacity(1 + 4 + envelope.len() + record.len());
    value.push(WITH_ENVELOPE);
    value.extend_from_slice(&len.to_be_bytes());
    value.extend_from_slice(envelope);
    value.extend_from_slice(record);
    Ok(value)
}

/// A value of the `record_versions` tree split into its envelope (`None` for versions written
/// before decision 0015, whose envelope is in the `envelopes` tree) and its record.
pub(super) fn split_version<'a>(
    bytes: &'a [u8],
    what: &dyn std::fmt::Display,
) -> Result<(Option<&'a [u8]>, &'a [u8]), StoreError> {
    let Some((&WITH_ENVELOPE, rest)) = bytes.split_first() else {
        return Ok((None, bytes));
    };
    let truncated = || StoreError::Corrupt(format!("{what}: truncated envelope"));
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(truncated)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| truncated())?;
    if rest.len() < len {
        return Err(truncated());
    }
    let (envelope, record) = rest.split_at(len);
    Ok((Some(envelope), record))
}

/// A stored record version read back: its JSON (without the interpretations kept apart) and
/// where those belong.
pub(super) struct Decoded<'a> {
    pub json: Cow<'a, [u8]>,
    pub references: Vec<Reference>,
}

/// The record of a `record_versions` value, in any of the forms the module lists.
pub(super) fn decode_record<'a>(
    bytes: &'a [u8],
    what: &dyn std::fmt::Display,
) -> Result<Decoded<'a>, StoreError> {
    let (_, bytes) = split_version(bytes, what)?;
    let Some((&APART, rest)) = bytes.split_first() else {
        return Ok(Decoded {
            json: unpack(bytes, what)?,
            references: Vec::new(),
        });
    };
    let corrupt = || StoreError::Corrupt(format!("{what}: truncated interpretation references"));
    let (count, mut rest) = rest.split_first_chunk::<2>().ok_or_else(corrupt)?;
    let count = u16::from_be_bytes(*count);
    let mut references = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (entry, tail) = rest
            .split_first_chunk::<REFERENCE_LEN>()
            .ok_or_else(corrupt)?;
        let (item, field_and_id) = entry.split_at(2);
        let field = field_and_id[0];
        if usize::from(field) >= SHARED.len() {
            return Err(StoreError::Corrupt(format!(
                "{what}: unknown interpretation field {field}"
            )));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&field_and_id[1..]);
        references.push(Reference {
            item: u16::from_be_bytes([item[0], item[1]]),
            field,
            id,
        });
        rest = tail;
    }
    Ok(Decoded {
        json: unpack(rest, what)?,
        references,
    })
}

/// Puts an interpretation back where `reference` says it belongs: last in its reading, where it
/// was (see [`apart`]).
pub(super) fn restore(
    record: &mut Value,
    reference: &Reference,
    interpretation: Value,
    what: &dyn std::fmt::Display,
) -> Result<(), StoreError> {
    let reading = record
        .get_mut("items")
        .and_then(|items| items.get_mut(usize::from(reference.item)))
        .and_then(|item| item.get_mut(SHARED[usize::from(reference.field)]))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{what}: an interpretation refers to item {} {}, which the record lacks",
                reference.item,
                SHARED[usize::from(reference.field)]
            ))
        })?;
    reading.insert("derived".into(), interpretation);
    Ok(())
}

/// Serialises a record without the interpretations [`encode_record`] keeps apart.
struct Apart<'a>(&'a Value);

impl Serialize for Apart<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Value::Object(top) = self.0 else {
            return self.0.serialize(s);
        };
        let mut map = s.serialize_map(Some(top.len()))?;
        for (key, value) in top {
            match (key.as_str(), value) {
                ("items", Value::Array(items)) => map.serialize_entry(key, &Items(items))?,
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

struct Items<'a>(&'a [Value]);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&Item(item, self.0.len()))?;
        }
        seq.end()
    }
}

/// An item, and how many items its record has.
struct Item<'a>(&'a Value, usize);

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Value::Object(fields) = self.0 else {
            return self.0.serialize(s);
        };
        let mut map = s.serialize_map(Some(fields.len()))?;
        for (key, value) in fields {
            match value {
                Value::Object(reading)
                    if SHARED.contains(&key.as_str()) && apart(self.1, Some(value)).is_some() =>
                {
                    map.serialize_entry(key, &Without(reading, "derived"))?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

/// An object without one of its keys.
struct Without<'a>(&'a serde_json::Map<String, Value>, &'a str);

impl Serialize for Without<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (key, value) in self.0 {
            if key != self.1 {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A remembered name is used only for the same JSON text: another interpretation of the
    /// same raw text (another year's reading of "FC 27"), or the same one with its keys in
    /// another order, is named by its own SHA-256.
    #[test]
    fn a_remembered_name_is_used_only_for_the_same_json() {
        let names = Names::default();
        let fresh = |v: &Value| interpretation_id(&to_bytes(v));
        let one = json!({"tokens": ["FC", "27"], "readings": [{"year_gregorian": 2027}]});
        let other = json!({"tokens": ["FC", "27"], "readings": [{"year_gregorian": 1927}]});
        let reordered = json!({"readings": [{"year_gregorian": 2027}], "tokens": ["FC", "27"]});
        assert_eq!(one, reordered, "Value equality ignores key order");
        for _ in 0..2 {
            for v in [&one, &other, &reordered, &one] {
                let (id, json) = names.name(0, Some("FC 27"), v);
                assert_eq!(id, fresh(v));
                assert_eq!(json.as_ref(), to_bytes(v).as_slice());
            }
        }
        // The same text under the other field, or with no raw text, is named alike.
        assert_eq!(names.name(1, Some("FC 27"), &one).0, fresh(&one));
        assert_eq!(names.name(0, None, &other).0, fresh(&other));
        assert!(!same_json(&one, &reordered));
        assert!(same_json(&one, &one.clone()));
    }
}
