//! Regional aggregation (design §7): counts of seizures, items and rounds over the records a
//! node can see (own and replicated), grouped by one or two dimensions, with small-cell
//! suppression, and lots seen in two or more countries.
//!
//! **Suppression.** A cell with fewer than k distinct seizures is suppressed (primary). Then,
//! so that no published total or difference reveals it, every line of the table — each row
//! with its row total, each column with its column total, the row of column totals with the
//! grand total (and the single line of a one-dimension table) — is made to hold either no
//! suppressed cell or at least two: while a line holds exactly one, the smallest other
//! non-empty cell of that line is suppressed too (complementary). Totals themselves are cells
//! of these lines, so a total under k is suppressed and protected the same way.
//!
//! **Perturbation** (the cell key method of table builders such as the Australian Bureau of
//! Statistics'). Suppression decided table by table cannot stop differencing across tables: two
//! legitimate queries (a day apart, with and without a filter, one dimension and two) subtract
//! to a hidden cell. So every published figure is also perturbed: each seizure has a secret,
//! fixed key (from the node's statistics secret and its record id); a cell's key is the sum of
//! its seizures' keys, and the noise is a function of that key alone. The same set of seizures
//! therefore always gets the same noise, in any table (asking again averages nothing out), and
//! a difference of two published figures carries the noise of both. Counts move by at most ±2
//! (never below k); rounds by Laplace noise whose scale is 15% of the cell's largest single
//! seizure (unbounded, so readings cannot be intersected to the true value). A table over
//! fewer than k seizures names no cell, and a filtered one answers alike for none and for
//! fewer than k. Admins' own unsuppressed figures are exact.
//!
//! Facts are read from the stored records' `derived` interpretations (calibre canonical id,
//! the best headstamp reading's maker, country and year), cached per store change sequence.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::record::{FieldError, RecordId};
use crate::store::{Store, StoreError};

/// A dimension to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    Calibre,
    Maker,
    CountryOfManufacture,
    YearOfManufacture,
    AgeAtSeizure,
    SeizingCountry,
    Context,
    RouteSegment,
    ShipmentMethod,
    Concealment,
    Month,
    Quarter,
    Year,
}

impl Dim {
    pub const ALL: [Dim; 13] = [
        Dim::Calibre,
        Dim::Maker,
        Dim::CountryOfManufacture,
        Dim::YearOfManufacture,
        Dim::AgeAtSeizure,
        Dim::SeizingCountry,
        Dim::Context,
        Dim::RouteSegment,
        Dim::ShipmentMethod,
        Dim::Concealment,
        Dim::Month,
        Dim::Quarter,
        Dim::Year,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dim::Calibre => "calibre",
            Dim::Maker => "maker",
            Dim::CountryOfManufacture => "country_of_manufacture",
            Dim::YearOfManufacture => "year_of_manufacture",
            Dim::AgeAtSeizure => "age_at_seizure",
            Dim::SeizingCountry => "seizing_country",
            Dim::Context => "context",
            Dim::RouteSegment => "route_segment",
            Dim::ShipmentMethod => "shipment_method",
            Dim::Concealment => "concealment",
            Dim::Month => "month",
            Dim::Quarter => "quarter",
            Dim::Year => "year",
        }
    }

    pub fn parse(text: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.name() == text)
    }

    /// Whether the dimension belongs to the item (else to the seizure).
    fn per_item(self) -> bool {
        matches!(
            self,
            Dim::Calibre
                | Dim::Maker
                | Dim::CountryOfManufacture
                | Dim::YearOfManufacture
                | Dim::AgeAtSeizure
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Seizures,
    Items,
    Rounds,
}

/// Dimension values interned as small integers: facts hold codes, so the grouping loop works
/// on integers and a million facts stay compact. Code 0 is always `unknown`.
#[derive(Debug, Clone)]
pub struct Names {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Default for Names {
    fn default() -> Names {
        Names {
            ids: HashMap::from([(UNKNOWN.to_owned(), 0)]),
            names: vec![UNKNOWN.to_owned()],
        }
    }
}

impl Names {
    fn intern(&mut self, value: &str) -> u32 {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(value.to_owned());
        self.ids.insert(value.to_owned(), id);
        id
    }

    fn intern_or_unknown(&mut self, value: Option<&str>) -> u32 {
        match value.filter(|s| !s.is_empty()) {
            Some(v) => self.intern(v),
            None => 0,
        }
    }

    fn code(&self, value: &str) -> Option<u32> {
        self.ids.get(value).copied()
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or(UNKNOWN, String::as_str)
    }
}

/// One item of one seizure, as the statistics see it (values are [`Names`] codes).
#[derive(Debug, Clone, Copy, Default)]
struct ItemFact {
    calibre: u32,
    maker: u32,
    country_of_manufacture: u32,
    year_of_manufacture: u32,
    age_band: u32,
    rounds: u64,
}

/// A run of entries in one of the pools of [`Facts`].
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// One seizure (a record's latest, non-retracted version): fixed-size, values as [`Names`]
/// codes, lists as spans of the pools of [`Facts`], so the grouping loop reads memory in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fact {
    /// Distinct per seizure within its [`Facts`].
    seizure: u32,
    /// The seizure's secret key for perturbation (see the module comment).
    key: u32,
    origin: u32,
    seizing_country: u32,
    /// The event's start date as `YYYYMMDD` (00 for a missing month or day; 0: no date).
    date: u32,
    year: u32,
    month: u32,
    quarter: u32,
    shipment_method: u32,
    contexts: Span,
    route_segments: Span,
    concealment: Span,
    items: Span,
}

const UNKNOWN: &str = "unknown";

fn str_of(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` as `YYYYMMDD` ([`crate::record::date_key`]: missing
/// parts 00, or 99 when `upper`).
fn date_code(date: &str, upper: bool) -> Option<u32> {
    crate::record::date_key(date, upper).and_then(|k| u32::try_from(k).ok())
}

/// A date code back as the text it was read from.
fn date_text(code: u32) -> String {
    match (code / 10_000, code / 100 % 100, code % 100) {
        (0, _, _) => String::new(),
        (y, 0, _) => format!("{y:04}"),
        (y, m, 0) => format!("{y:04}-{m:02}"),
        (y, m, d) => format!("{y:04}-{m:02}-{d:02}"),
    }
}

fn age_band(age: i64) -> &'static str {
    match age {
        i64::MIN..=-1 => UNKNOWN,
        0..=4 => "0-4",
        5..=9 => "5-9",
        10..=19 => "10-19",
        20..=29 => "20-29",
        _ => "30+",
    }
}

/// The facts of every visible record, with the names their codes stand for. Slots of
/// retracted records are emptied, so a record's facts can be replaced in place; the pools
/// are compacted when replaced entries outnumber live ones.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    names: Names,
    slots: Vec<Option<Fact>>,
    /// Lot identities per slot, for cross-border lots (not read by the grouping loop).
    lots: Vec<Vec<(String, &'static str)>>,
    codes: Vec<u32>,
    items: Vec<ItemFact>,
    /// Pool entries no live fact points at.
    garbage: usize,
    by_id: HashMap<RecordId, u32>,
    /// The node's statistics secret, from which each seizure's key is derived.
    secret: [u8; 32],
}

impl Facts {
    /// No facts yet; seizure keys derived from `secret`.
    pub fn with_secret(secret: [u8; 32]) -> Facts {
        Facts {
            secret,
            ..Facts::default()
        }
    }

    /// A seizure's perturbation key: the first 4 bytes of SHA-256(secret ‖ record id), fixed
    /// for the record's life (updates keep it), unknowable without the secret.
    fn key_of(&self, id: &RecordId) -> u32 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.secret);
        h.update(id.as_bytes());
        let d = h.finalize();
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// The seizures, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Fact> {
        self.slots.iter().flatten()
    }

    /// Number of visible seizures.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn codes(&self, span: Span) -> &[u32] {
        &self.codes[span.range()]
    }

    fn items_of(&self, f: &Fact) -> &[ItemFact] {
        &self.items[f.items.range()]
    }

    /// Adds or replaces the facts of record `id` (`None`: the record is retracted).
    pub fn set(&mut self, id: RecordId, record: Option<&Value>) {
        let slot = self.by_id.get(&id).copied();
        if let Some(old) = slot.and_then(|s| self.slots[s as usize]) {
            self.garbage +=
                (old.contexts.len + old.route_segments.len + old.concealment.len + old.items.len)
                    as usize;
        }
        match (slot, record) {
            (Some(slot), Some(record)) => {
                let (mut fact, lots) = self.fact(slot, record);
                fact.key = self.key_of(&id);
                self.slots[slot as usize] = Some(fact);
                self.lots[slot as usize] = lots;
            }
            (Some(slot), None) => {
                self.slots[slot as usize] = None;
                self.lots[slot as usize] = Vec::new();
                self.by_id.remove(&id);
            }
            (None, Some(record)) => {
                let slot = self.slots.len() as u32;
                let (mut fact, lots) = self.fact(slot, record);
                fact.key = self.key_of(&id);
                self.slots.push(Some(fact));
                self.lots.push(lots);
                self.by_id.insert(id, slot);
            }
            (None, None) => {}
        }
        if self.garbage > 4096 && self.garbage > self.codes.len() + self.items.len() - self.garbage
        {
            self.compact();
        }
    }

    /// Rewrites the pools with only what live facts point at.
    fn compact(&mut self) {
        let (mut codes, mut items) = (Vec::new(), Vec::new());
        let mut copy = |span: Span, from: &[u32]| {
            let start = codes.len() as u32;
            codes.extend_from_slice(&from[span.range()]);
            Span {
                start,
                len: span.len,
            }
        };
        for f in self.slots.iter_mut().flatten() {
            f.contexts = copy(f.contexts, &self.codes);
            f.route_segments = copy(f.route_segments, &self.codes);
            f.concealment = copy(f.concealment, &self.codes);
            let start = items.len() as u32;
            items.extend_from_slice(&self.items[f.items.range()]);
            f.items.start = start;
        }
        (self.codes, self.items, self.garbage) = (codes, items, 0);
    }

    /// Appends codes to the pool (at least `unknown`).
    fn push_codes(&mut self, codes: impl IntoIterator<Item = u32>) -> Span {
        let start = self.codes.len() as u32;
        self.codes.extend(codes);
        if self.codes.len() as u32 == start {
            self.codes.push(0);
        }
        Span {
            start,
            len: self.codes.len() as u32 - start,
        }
    }

    /// The facts of one stored record version, and its lot identities.
    fn fact(&mut self, seizure: u32, record: &Value) -> (Fact, Vec<(String, &'static str)>) {
        let event = record.get("event");
        let date = str_of(event.and_then(|e| e.pointer("/date/start"))).unwrap_or("");
        let seizure_year: Option<i64> = date.get(..4).and_then(|y| y.parse().ok());
        let chain = record.get("supply_chain");
        let mut route: Vec<(i64, &str)> = chain
            .and_then(|c| c.get("route"))
            .and_then(Value::as_array)
            .map(|stops| {
                stops
                    .iter()
                    .map(|s| {
                        let country = str_of(s.get("country")).filter(|c| !c.is_empty());
                        (s["seq"].as_i64().unwrap_or(0), country.unwrap_or(UNKNOWN))
                    })
                    .collect()
            })
            .unwrap_or_default();
        route.sort();
        let segments: Vec<u32> = route
            .windows(2)
            .map(|w| self.names.intern(&format!("{}>{}", w[0].1, w[1].1)))
            .collect();
        let route_segments = self.push_codes(segments);
        let list = |facts: &mut Facts, v: Option<&Value>| -> Span {
            let codes: Vec<u32> = v
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|s| facts.names.intern(s))
                        .collect()
                })
                .unwrap_or_default();
            facts.push_codes(codes)
        };
        let contexts = list(self, event.and_then(|e| e.get("context")));
        let concealment = list(self, chain.and_then(|c| c.pointer("/concealment/method")));
        let items_json = record.get("items").and_then(Value::as_array);
        let names = &mut self.names;
        let items_start = self.items.len() as u32;
        for item in items_json.into_iter().flatten() {
            let reading = item.pointer("/headstamp/derived/readings/0");
            let year = item
                .pointer("/manufacture/year")
                .and_then(Value::as_i64)
                .or_else(|| reading.and_then(|r| r["year_gregorian"].as_i64()));
            let rounds = if str_of(item.pointer("/quantity/unit")) == Some("rounds") {
                item.pointer("/quantity/count")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            } else {
                0
            };
            self.items.push(ItemFact {
                calibre: names
                    .intern_or_unknown(str_of(item.pointer("/calibre/derived/canonical_id"))),
                maker: names
                    .intern_or_unknown(str_of(reading.and_then(|r| r.get("manufacturer_code")))),
                country_of_manufacture: names
                    .intern_or_unknown(str_of(reading.and_then(|r| r.get("country_iso3")))),
                year_of_manufacture: match year {
                    Some(y) => names.intern(&y.to_string()),
                    None => 0,
                },
                age_band: match (seizure_year, year) {
                    (Some(s), Some(m)) => names.intern(age_band(s - m)),
                    _ => 0,
                },
                rounds,
            });
        }
        let items = Span {
            start: items_start,
            len: self.items.len() as u32 - items_start,
        };
        let lots = items_json
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let d = i.pointer("/lot/derived")?;
                let (key, kind) = match str_of(d.get("identity_key")) {
                    Some(k) => (k.to_owned(), "exact"),
                    None => (str_of(d.get("key"))?.to_owned(), "folded"),
                };
                (!key.is_empty()).then_some((key, kind))
            })
            .collect();
        let quarter = match (
            date.get(..4),
            date.get(5..7).and_then(|m| m.parse::<u32>().ok()),
        ) {
            (Some(y), Some(m)) if (1..=12).contains(&m) => {
                names.intern(&format!("{y}-Q{}", (m - 1) / 3 + 1))
            }
            _ => 0,
        };
        let fact = Fact {
            seizure,
            key: 0,
            origin: names.intern_or_unknown(str_of(record.get("originating_state"))),
            seizing_country: names
                .intern_or_unknown(str_of(event.and_then(|e| e.pointer("/location/country")))),
            date: date_code(date, false).unwrap_or(0),
            year: names.intern_or_unknown(date.get(..4)),
            month: names.intern_or_unknown(date.get(..7).filter(|m| m.len() == 7)),
            quarter,
            shipment_method: names
                .intern_or_unknown(str_of(chain.and_then(|c| c.pointer("/shipment/method")))),
            contexts,
            route_segments,
            concealment,
            items,
        };
        (fact, lots)
    }

    /// The codes of dimension `d` for one unit: an item (item dimensions) or the whole
    /// seizure.
    fn push_values(&self, f: &Fact, d: Dim, item: Option<&ItemFact>, out: &mut Vec<u32>) {
        if d.per_item() {
            out.extend(item.map(|i| item_value(i, d)));
            return;
        }
        match d {
            Dim::SeizingCountry => out.push(f.seizing_country),
            Dim::Context => out.extend_from_slice(self.codes(f.contexts)),
            Dim::RouteSegment => out.extend_from_slice(self.codes(f.route_segments)),
            Dim::ShipmentMethod => out.push(f.shipment_method),
            Dim::Concealment => out.extend_from_slice(self.codes(f.concealment)),
            Dim::Year => out.push(f.year),
            Dim::Month => out.push(f.month),
            Dim::Quarter => out.push(f.quarter),
            _ => {}
        }
    }
}

fn item_value(item: &ItemFact, dim: Dim) -> u32 {
    match dim {
        Dim::Calibre => item.calibre,
        Dim::Maker => item.maker,
        Dim::CountryOfManufacture => item.country_of_manufacture,
        Dim::YearOfManufacture => item.year_of_manufacture,
        Dim::AgeAtSeizure => item.age_band,
        _ => 0,
    }
}
/// The parameters of `GET /api/v1/stats`.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub group_by: Vec<Dim>,
    pub measure: Option<Measure>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Dimension filters: only seizures/items whose value is this.
    pub filters: Vec<(Dim, String)>,
    pub k: usize,
    /// Own records only, unsuppressed (admins of their own node).
    pub own_only: Option<String>,
    pub unsuppressed: bool,
    /// Publish exact figures (`[stats] perturb = false`).
    pub unperturbed: bool,
}

impl Params {
    /// From query parameters.
    pub fn parse(query: &[(String, String)], k: usize) -> Result<Params, Vec<FieldError>> {
        let mut p = Params {
            k,
            ..Params::default()
        };
        let mut errors = Vec::new();
        for (key, value) in query {
            match key.as_str() {
                "group_by" => {
                    for name in value.split(',').filter(|s| !s.is_empty()) {
                        match Dim::parse(name) {
                            Some(d) => p.group_by.push(d),
                            None => errors.push(FieldError::new(
                                "/group_by",
                                format!("unknown dimension {name:?}"),
                            )),
                        }
                    }
                }
                "measure" => match serde_json::from_value(json!(value)) {
                    Ok(m) => p.measure = Some(m),
                    Err(_) => errors.push(FieldError::new("/measure", "seizures, items or rounds")),
                },
                "from" | "to" => {
                    if date_code(value, false).is_none() {
                        errors.push(FieldError::new(
                            format!("/{key}"),
                            "a date: YYYY, YYYY-MM or YYYY-MM-DD",
                        ));
                    } else if key == "from" {
                        p.from = Some(value.clone());
                    } else {
                        p.to = Some(value.clone());
                    }
                }
                "unsuppressed" => p.unsuppressed = value == "true",
                "format" => {}
                other => match Dim::parse(other) {
                    Some(d) => p.filters.push((d, value.clone())),
                    None => errors.push(FieldError::new(format!("/{other}"), "unknown parameter")),
                },
            }
        }
        if p.group_by.is_empty() || p.group_by.len() > 2 {
            errors.push(FieldError::new(
                "/group_by",
                "one or two dimensions, comma-separated",
            ));
        }
        if p.group_by.len() == 2 && p.group_by[0] == p.group_by[1] {
            errors.push(FieldError::new("/group_by", "two different dimensions"));
        }
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(errors)
        }
    }
}

/// One cell's sums. Each seizure adds to a cell at most once (its contributions are gathered
/// per seizure first), so `seizures` counts distinct seizures.
#[derive(Debug, Clone, Default)]
struct Cell {
    seizures: usize,
    items: u64,
    rounds: u64,
    /// The sum of its seizures' keys (wrapping): the cell key.
    key: u32,
    /// The most rounds one seizure adds to it.
    top: u64,
}

/// Count noise by the cell key: -2…+2, zero most often (probabilities 1, 2, 4, 2, 1 in 10).
const COUNT_NOISE: [i64; 10] = [-2, -1, -1, 0, 0, 0, 0, 1, 1, 2];

/// Scale of the rounds noise, as a share of the cell's largest seizure: the mean distance
/// from the true figure.
const ROUNDS_NOISE: f64 = 0.15;

/// A Laplace-distributed value of scale 1 from 53 bits of `h` (inverse CDF). Unbounded and
/// smooth: no set of published figures pins the true one by intersecting ranges, as bounded
/// noise would let an analyst do.
fn laplace(h: u64) -> f64 {
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64 - 0.5;
    -u.signum() * (1.0 - 2.0 * u.abs()).ln()
}

/// SplitMix64's finaliser: spreads a cell key (and a measure's tag) over 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Cell {
    fn add(&mut self, key: u32, items: u64, rounds: u64) {
        // Counts come from submitted records: a total saturates rather than wrap.
        self.seizures += 1;
        self.items = self.items.saturating_add(items);
        self.rounds = self.rounds.saturating_add(rounds);
        self.key = self.key.wrapping_add(key);
        self.top = self.top.max(rounds);
    }

    /// The published, perturbed value of measure `m` (see the module comment): a function of
    /// the cell key, so the same seizures always get the same figure. Counts move by at most
    /// 2 and never below `k`; rounds by Laplace noise of scale 15% of the largest seizure in
    /// the cell.
    fn perturbed(&self, m: Measure, k: usize) -> u64 {
        let tag = match m {
            Measure::Seizures => 1,
            Measure::Items => 2,
            Measure::Rounds => 3,
        };
        if self.seizures == 0 {
            return 0;
        }
        let h = mix(u64::from(self.key) << 2 | tag);
        match m {
            Measure::Seizures | Measure::Items => {
                let v = i64::try_from(self.value(m)).unwrap_or(i64::MAX);
                let noisy = v.saturating_add(COUNT_NOISE[(h % 10) as usize]);
                noisy.max(k as i64) as u64
            }
            Measure::Rounds => {
                let noisy = self.rounds as f64 + laplace(h) * ROUNDS_NOISE * self.top as f64;
                // `as` saturates: a negative figure is 0.
                noisy.round() as u64
            }
        }
    }

    fn value(&self, m: Measure) -> u64 {
        match m {
            Measure::Seizures => self.seizures as u64,
            Measure::Items => self.items,
            Measure::Rounds => self.rounds,
        }
    }
}

/// Facts cached per store change sequence. After writes, only the records changed since are
/// read again (from the change log); the first call reads every head.
#[derive(Default)]
pub struct FactCache {
    cached: Mutex<Option<(u64, Arc<Facts>)>>,
    /// The change sequence the cache is current at, plus one (0: nothing cached yet); read
    /// without waiting for a computation that holds `cached`.
    watermark: std::sync::atomic::AtomicU64,
}

/// Changes read per page when bringing the cache up to date.
const CHANGE_PAGE: usize = 4096;

impl FactCache {
    /// The change sequence the cached facts are current at; `None` before the first
    /// computation (a statistics request, or `stats.warm_on_start`) has finished.
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
            .load(std::sync::atomic::Ordering::Acquire)
            .checked_sub(1)
    }

    fn note(&self, seq: u64) {
        self.watermark
            .fetch_max(seq + 1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The facts of every visible record (latest versions, retractions excluded), with the
    /// change sequence they are current at.
    pub fn facts(&self, store: &Store) -> Result<(u64, Arc<Facts>), StoreError> {
        let last = store.last_seq()?;
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match cached.as_mut() {
            Some((seq, facts)) if *seq >= last => Ok((*seq, facts.clone())),
            Some((seq, facts)) => {
                // Copy-on-write: a table still being computed keeps the old facts.
                let target = Arc::make_mut(facts);
                let mut at = *seq;
                while at < last {
                    let page = store.changes_after(at, CHANGE_PAGE)?;
                    let Some(end) = page.last().map(|c| c.seq) else {
                        break;
                    };
                    let ids: BTreeSet<RecordId> = page.iter().map(|c| c.id).collect();
                    for id in ids {
                        apply(target, store, id)?;
                    }
                    at = end;
                }
                *seq = at;
                self.note(at);
                Ok((at, facts.clone()))
            }
            None => {
                let mut facts = Facts::with_secret(store.secret("stats")?);
                for head in store.heads() {
                    let (id, head) = head?;
                    if !head.retracted {
                        let record = store.get(&id, Some(head.version))?;
                        facts.set(id, record.as_ref());
                    }
                }
                let facts = Arc::new(facts);
                *cached = Some((last, facts.clone()));
                self.note(last);
                Ok((last, facts))
            }
        }
    }
}

/// Brings one record's facts up to its current head.
fn apply(facts: &mut Facts, store: &Store, id: RecordId) -> Result<(), StoreError> {
    let record = match store.head(&id)? {
        Some(head) if !head.retracted => store.get(&id, Some(head.version))?,
        _ => None,
    };
    facts.set(id, record.as_ref());
    Ok(())
}

/// The period bounds as date codes: a date on or after `from`; on or before `to`, where a
/// truncated `to` (`2024`, `2024-06`) includes its whole year or month. Undated seizures fall
/// outside any `from` but inside any `to` alone.
fn period(p: &Params) -> (u32, u32) {
    let from = p
        .from
        .as_deref()
        .and_then(|d| date_code(d, false))
        .unwrap_or(0);
    let to =
        p.to.as_deref()
            .and_then(|d| date_code(d, true))
            .unwrap_or(u32::MAX);
    (from, to)
}

/// A computed table.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub group_by: Vec<&'static str>,
    pub measure: Measure,
    pub k: usize,
    /// Whether the figures carry cell-key noise (all but an admin's own unsuppressed view).
    pub perturbed: bool,
    pub cells: Vec<Value>,
    pub totals: Vec<Value>,
    pub suppressed: usize,
}

/// Adds `(n_items, rounds)` to the entry of `key` in a seizure's contributions (a short list:
/// a seizure touches few cells).
fn contribute<K: PartialEq>(list: &mut Vec<(K, u64, u64)>, key: K, n_items: u64, rounds: u64) {
    match list.iter_mut().find(|(k, _, _)| *k == key) {
        Some(e) => {
            e.1 = e.1.saturating_add(n_items);
            e.2 = e.2.saturating_add(rounds);
        }
        None => list.push((key, n_items, rounds)),
    }
}

/// Computes a table over `facts`.
// The grouping loop indexes `items` by unit number because a unit is either one item or
// (for seizure-level dimensions) the whole seizure; an iterator would need a second loop body.
#[allow(clippy::needless_range_loop)]
pub fn table(facts: &Facts, p: &Params) -> Table {
    let measure = p.measure.unwrap_or(Measure::Seizures);
    let dims = &p.group_by;
    let mut raw_cells: HashMap<[u32; 2], Cell> = HashMap::new();
    let mut raw_margins: Vec<HashMap<u32, Cell>> = vec![HashMap::new(); dims.len()];
    let mut grand = Cell::default();
    let mut contributions: Vec<([u32; 2], u64, u64)> = Vec::new();
    let mut margin_contrib: Vec<Vec<(u32, u64, u64)>> = vec![Vec::new(); dims.len()];
    // Buffers reused across facts: the loop allocates nothing once they have grown.
    let mut items: Vec<&ItemFact> = Vec::new();
    let mut vals: Vec<u32> = Vec::new();
    let mut first: Vec<u32> = Vec::new();
    let mut second: Vec<u32> = Vec::new();
    // Filters as codes; a value no record holds matches nothing.
    let filter_codes: Option<Vec<(Dim, u32)>> = p
        .filters
        .iter()
        .map(|(d, v)| facts.names.code(v).map(|c| (*d, c)))
        .collect();
    let filter_codes = filter_codes.unwrap_or_default();
    let no_match = filter_codes.len() < p.filters.len();
    let own = p.own_only.as_deref().map(|o| facts.names.code(o));
    let item_filters: Vec<(Dim, u32)> = filter_codes
        .iter()
        .copied()
        .filter(|(d, _)| d.per_item())
        .collect();
    let seizure_filters: Vec<(Dim, u32)> = filter_codes
        .iter()
        .copied()
        .filter(|(d, _)| !d.per_item())
        .collect();
    let per_item = dims.iter().any(|d| d.per_item());
    let (from, to) = period(p);
    let everything = facts.iter().filter(|_| !no_match && own != Some(None));
    for f in everything.filter(|f| f.date >= from && (f.date == 0 || f.date <= to)) {
        if let Some(Some(own)) = own
            && f.origin != own
        {
            continue;
        }
        if !seizure_filters.iter().all(|(d, v)| {
            vals.clear();
            facts.push_values(f, *d, None, &mut vals);
            vals.contains(v)
        }) {
            continue;
        }
        items.clear();
        items.extend(
            facts
                .items_of(f)
                .iter()
                .filter(|i| item_filters.iter().all(|(d, v)| item_value(i, *d) == *v)),
        );
        if items.is_empty() && !item_filters.is_empty() {
            continue;
        }
        let all_items = items.len() as u64;
        let all_rounds = items
            .iter()
            .fold(0u64, |sum, i| sum.saturating_add(i.rounds));
        // Every combination of values this seizure contributes, with its items.
        contributions.clear();
        let n_units = if per_item { items.len() } else { 1 };
        for u in 0..n_units {
            let unit = if per_item { Some(items[u]) } else { None };
            let (n_items, rounds) = match unit {
                Some(i) => (1, i.rounds),
                None => (all_items, all_rounds),
            };
            first.clear();
            facts.push_values(f, dims[0], unit, &mut first);
            second.clear();
            match dims.get(1) {
                Some(d) => facts.push_values(f, *d, unit, &mut second),
                None => second.push(u32::MAX),
            }
            for a in &first {
                for b in &second {
                    contribute(&mut contributions, [*a, *b], n_items, rounds);
                }
            }
        }
        // Margins: per value of each dimension, items counted once however many values of
        // the other dimension they fall under.
        for (i, d) in dims.iter().enumerate() {
            margin_contrib[i].clear();
            let n_units = if d.per_item() { items.len() } else { 1 };
            for u in 0..n_units {
                let unit = if d.per_item() { Some(items[u]) } else { None };
                let (n_items, rounds) = match unit {
                    Some(i) => (1, i.rounds),
                    None => (all_items, all_rounds),
                };
                vals.clear();
                facts.push_values(f, *d, unit, &mut vals);
                for v in &vals {
                    contribute(&mut margin_contrib[i], *v, n_items, rounds);
                }
            }
        }
        for (key, n_items, rounds) in &contributions {
            raw_cells
                .entry(*key)
                .or_default()
                .add(f.key, *n_items, *rounds);
        }
        for (i, contrib) in margin_contrib.iter().enumerate() {
            for (v, n_items, rounds) in contrib {
                raw_margins[i]
                    .entry(*v)
                    .or_default()
                    .add(f.key, *n_items, *rounds);
            }
        }
        grand.add(f.key, all_items, all_rounds);
    }
    // Back to names, in order.
    let name = |id: u32| facts.names.name(id).to_owned();
    let cells: BTreeMap<Vec<String>, Cell> = raw_cells
        .into_iter()
        .map(|(k, c)| {
            let key = if dims.len() == 2 {
                vec![name(k[0]), name(k[1])]
            } else {
                vec![name(k[0])]
            };
            (key, c)
        })
        .collect();
    let margins: Vec<BTreeMap<String, Cell>> = raw_margins
        .into_iter()
        .map(|m| m.into_iter().map(|(k, c)| (name(k), c)).collect())
        .collect();

    // Suppression over a grid: cells, margins and the grand total, by their seizure counts.
    let mut suppressed: HashMap<String, &'static str> = HashMap::new();
    let id_cell = |k: &[String]| format!("c:{}", k.join("\u{1f}"));
    let id_margin = |i: usize, v: &str| format!("m{i}:{v}");
    let id_grand = "g".to_owned();
    let mut sizes: HashMap<String, usize> = HashMap::new();
    for (k, c) in &cells {
        sizes.insert(id_cell(k), c.seizures);
    }
    if dims.len() == 2 {
        for (i, m) in margins.iter().enumerate() {
            for (v, c) in m {
                sizes.insert(id_margin(i, v), c.seizures);
            }
        }
    }
    sizes.insert(id_grand.clone(), grand.seizures);
    if !p.unsuppressed {
        for (id, n) in &sizes {
            if *n < p.k && *n > 0 {
                suppressed.insert(id.clone(), "primary");
            }
        }
        // Lines: sets of cells tied by one sum.
        let mut lines: Vec<Vec<String>> = Vec::new();
        if dims.len() == 1 {
            let mut line: Vec<String> = cells.keys().map(|k| id_cell(k)).collect();
            line.push(id_grand.clone());
            lines.push(line);
        } else {
            for (i, margin) in margins.iter().enumerate() {
                for v in margin.keys() {
                    let mut line: Vec<String> = cells
                        .keys()
                        .filter(|k| &k[i] == v)
                        .map(|k| id_cell(k))
                        .collect();
                    line.push(id_margin(i, v));
                    lines.push(line);
                }
                let mut line: Vec<String> = margin.keys().map(|v| id_margin(i, v)).collect();
                line.push(id_grand.clone());
                lines.push(line);
            }
        }
        loop {
            let mut changed = false;
            for line in &lines {
                let hidden = line.iter().filter(|c| suppressed.contains_key(*c)).count();
                if hidden == 1 {
                    // Prefer a complement that also mends another line holding a single
                    // suppressed entry, then the smallest: fewer cells hidden in the end.
                    let mends = |c: &String| {
                        lines
                            .iter()
                            .filter(|l| !std::ptr::eq(*l, line) && l.contains(c))
                            .filter(|l| {
                                l.iter().filter(|x| suppressed.contains_key(*x)).count() == 1
                            })
                            .count()
                    };
                    let next = line
                        .iter()
                        .filter(|c| {
                            !suppressed.contains_key(*c) && sizes.get(*c).copied().unwrap_or(0) > 0
                        })
                        .min_by_key(|c| {
                            (
                                std::cmp::Reverse(mends(c)),
                                sizes.get(*c).copied().unwrap_or(0),
                                (*c).clone(),
                            )
                        })
                        .cloned();
                    if let Some(next) = next {
                        suppressed.insert(next, "complementary");
                        changed = true;
                    }
                }
            }
            // A line check is not enough in two dimensions: audit the whole system of sums
            // and, while some suppressed entry is still determined by it, hide one more.
            if !changed && let Some(determined) = first_determined(&lines, &suppressed) {
                let candidate = lines
                    .iter()
                    .filter(|l| l.contains(&determined))
                    .filter_map(|l| smallest_published(l, &suppressed, &sizes))
                    .min_by_key(|c| (sizes.get(c).copied().unwrap_or(0), c.clone()))
                    .or_else(|| {
                        lines
                            .iter()
                            .filter(|l| l.iter().any(|c| suppressed.contains_key(c)))
                            .filter_map(|l| smallest_published(l, &suppressed, &sizes))
                            .min_by_key(|c| (sizes.get(c).copied().unwrap_or(0), c.clone()))
                    });
                if let Some(c) = candidate {
                    suppressed.insert(c, "complementary");
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }
    // Exact figures only in an admin's own unsuppressed view; every other figure perturbed.
    let exact = p.unsuppressed || p.unperturbed;
    let figure = |c: &Cell, m: Measure| {
        if exact {
            c.value(m)
        } else {
            c.perturbed(m, p.k)
        }
    };
    let show = |id: &str, c: &Cell, key: Value| -> Value {
        match suppressed.get(id) {
            Some(reason) => {
                json!({ "key": key, "value": null, "suppressed": true, "reason": reason })
            }
            None => {
                json!({ "key": key, "value": figure(c, measure),
                        "seizures": figure(c, Measure::Seizures), "suppressed": false })
            }
        }
    };
    let names: Vec<&'static str> = dims.iter().map(|d| d.name()).collect();
    let key_obj = |k: &[String]| -> Value {
        Value::Object(
            names
                .iter()
                .zip(k)
                .map(|(n, v)| ((*n).to_owned(), json!(v)))
                .collect(),
        )
    };
    // Over fewer than k seizures, not even the names of the cells are published: they would
    // describe those few seizures (their contexts, routes, calibres). A filtered table (or a
    // period) answers alike for none and for fewer than k, and says nothing of how many values
    // they hold: otherwise each filter would be a yes/no question about one seizure (has it
    // this context? was it seized that day?).
    let restricted = !p.filters.is_empty() || p.from.is_some() || p.to.is_some();
    if !p.unsuppressed && grand.seizures < p.k && (grand.seizures > 0 || restricted) {
        return Table {
            group_by: names,
            measure,
            k: p.k,
            perturbed: !exact,
            cells: Vec::new(),
            totals: vec![
                json!({ "key": {}, "value": null, "suppressed": true, "reason": "primary" }),
            ],
            suppressed: 1,
        };
    }
    let mut out_cells = Vec::new();
    for (k, c) in &cells {
        out_cells.push(show(&id_cell(k), c, key_obj(k)));
    }
    let mut totals = Vec::new();
    if dims.len() == 2 {
        for (i, margin) in margins.iter().enumerate() {
            for (v, c) in margin {
                totals.push(show(&id_margin(i, v), c, json!({ names[i]: v })));
            }
        }
    }
    totals.push(show(&id_grand, &grand, json!({})));
    Table {
        group_by: names,
        measure,
        k: p.k,
        perturbed: !exact,
        cells: out_cells,
        totals,
        suppressed: suppressed.len(),
    }
}

fn smallest_published(
    line: &[String],
    suppressed: &HashMap<String, &'static str>,
    sizes: &HashMap<String, usize>,
) -> Option<String> {
    line.iter()
        .filter(|c| !suppressed.contains_key(*c) && sizes.get(*c).copied().unwrap_or(0) > 0)
        .min_by_key(|c| (sizes.get(*c).copied().unwrap_or(0), (*c).clone()))
        .cloned()
}

/// The first suppressed entry whose value the published sums determine: its unit vector lies
/// in the row space of the line equations restricted to suppressed entries (reduced row
/// echelon form: a pivot row with no other non-zero entry).
fn first_determined(
    lines: &[Vec<String>],
    suppressed: &HashMap<String, &'static str>,
) -> Option<String> {
    let mut unknowns: Vec<&String> = suppressed.keys().collect();
    unknowns.sort();
    let index: HashMap<&String, usize> =
        unknowns.iter().enumerate().map(|(i, u)| (*u, i)).collect();
    // Each line says: sum of its cells equals its total (the last entry).
    let mut rows: Vec<Vec<f64>> = lines
        .iter()
        .filter(|l| l.iter().any(|c| index.contains_key(c)))
        .map(|l| {
            let mut row = vec![0.0; unknowns.len()];
            let (total, parts) = l.split_last().map_or((None, &l[..]), |(t, p)| (Some(t), p));
            for c in parts {
                if let Some(&i) = index.get(c) {
                    row[i] += 1.0;
                }
            }
            if let Some(&i) = total.and_then(|t| index.get(t)) {
                row[i] -= 1.0;
            }
            row
        })
        .collect();
    let cols = unknowns.len();
    let mut pivots = Vec::new();
    let mut r = 0;
    for c in 0..cols {
        let Some(p) = (r..rows.len()).find(|&i| rows[i][c].abs() > 1e-9) else {
            continue;
        };
        rows.swap(r, p);
        let lead = rows[r][c];
        for v in rows[r].iter_mut() {
            *v /= lead;
        }
        let pivot_row = rows[r].clone();
        for (i, row) in rows.iter_mut().enumerate() {
            if i != r && row[c].abs() > 1e-9 {
                let f = row[c];
                for (x, p) in row.iter_mut().zip(&pivot_row) {
                    *x -= f * p;
                }
            }
        }
        pivots.push((r, c));
        r += 1;
    }
    pivots
        .into_iter()
        .find(|&(row, col)| (0..cols).all(|j| j == col || rows[row][j].abs() < 1e-9))
        .map(|(_, col)| unknowns[col].clone())
}

/// Lot identities seen in two or more seizing countries.
///
/// Published (not `unsuppressed`), the same small-cell rule holds as in the tables: a lot is
/// listed only when it counts at least k seizures; a country is named only when it seized the
/// lot at least k times (the others are counted in `other_countries`), the seizure count is
/// perturbed like a table's, and first and last sightings are given to the month, so no row
/// points at one country's single case.
pub fn cross_border_lots(
    facts: &Facts,
    k: usize,
    unsuppressed: bool,
    perturb: bool,
) -> (Vec<Value>, usize) {
    #[derive(Default)]
    struct Seen<'a> {
        countries: BTreeMap<&'a str, BTreeSet<u32>>,
        seizures: BTreeSet<u32>,
        cell: Cell,
        first: u32,
        last: u32,
        kinds: BTreeSet<&'static str>,
    }
    let mut lots: BTreeMap<&str, Seen> = BTreeMap::new();
    for (f, keys) in facts.slots.iter().zip(&facts.lots) {
        let Some(f) = f else { continue };
        for (key, kind) in keys {
            let s = lots.entry(key).or_default();
            s.countries
                .entry(facts.names.name(f.seizing_country))
                .or_default()
                .insert(f.seizure);
            if s.seizures.insert(f.seizure) {
                s.cell.add(f.key, 0, 0);
            }
            s.kinds.insert(kind);
            if f.date != 0 {
                if s.first == 0 || f.date < s.first {
                    s.first = f.date;
                }
                s.last = s.last.max(f.date);
            }
        }
    }
    // YYYYMMDD to YYYYMM00: the month (a date given to the year or month stays as it is).
    let month = |code: u32| date_text(code / 100 * 100);
    let mut withheld = 0;
    let rows = lots
        .into_iter()
        .filter(|(_, s)| s.countries.len() >= 2)
        .filter(|(_, s)| {
            let keep = unsuppressed || s.seizures.len() >= k;
            withheld += usize::from(!keep);
            keep
        })
        .map(|(lot, s)| {
            if unsuppressed {
                return json!({
                    "lot": lot, "countries": s.countries.keys().collect::<Vec<_>>(),
                    "seizures": s.seizures.len(), "first_seen": date_text(s.first),
                    "last_seen": date_text(s.last), "match_kinds": s.kinds,
                });
            }
            let named: Vec<&str> = s
                .countries
                .iter()
                .filter(|(_, seized)| seized.len() >= k)
                .map(|(c, _)| *c)
                .collect();
            json!({
                "lot": lot, "countries": named, "other_countries": s.countries.len() - named.len(),
                "seizures": if perturb { s.cell.perturbed(Measure::Seizures, k) } else { s.seizures.len() as u64 },
                "first_seen": month(s.first), "last_seen": month(s.last), "match_kinds": s.kinds,
            })
        })
        .collect();
    (rows, withheld)
}

/// Signs a snapshot document: `{"snapshot": doc, "sig": b64url(ed25519(JCS(doc)))}`. The
/// table holds only integers and strings, so its canonical form is well defined.
pub fn sign_snapshot(key: &ed25519_dalek::SigningKey, doc: Value) -> Result<Value, String> {
    use base64::Engine;
    use ed25519_dalek::Signer;
    let bytes = crate::envelope::canonical(&doc).map_err(|e| e.to_string())?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.sign(&bytes).to_bytes());
    Ok(json!({ "snapshot": doc, "sig": sig }))
}

/// Checks a signed snapshot against the publishing node's key history.
pub fn verify_snapshot(
    signed: &Value,
    history: &crate::identity::KeyHistory,
) -> Result<(), String> {
    use base64::Engine;
    let doc = &signed["snapshot"];
    let key_id = doc["key_id"].as_str().ok_or("no key_id")?;
    let at = doc["published_at"].as_str().ok_or("no published_at")?;
    let key = history
        .key_valid_at(key_id, at)
        .map_err(|e| e.to_string())?;
    let bytes = crate::envelope::canonical(doc).map_err(|e| e.to_string())?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signed["sig"].as_str().ok_or("no sig")?)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
        .ok_or("malformed signature")?;
    key.verify_strict(&bytes, &sig)
        .map_err(|_| "the snapshot's signature does not verify".to_owned())
}

/// A table as CSV: one row per cell and total; suppressed values empty.
pub fn to_csv(table: &Table) -> String {
    let mut out = String::new();
    let header: Vec<&str> = table
        .group_by
        .iter()
        .copied()
        .chain(["value", "suppressed", "reason"])
        .collect();
    out.push_str(&header.join(","));
    out.push('\n');
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    for row in table.cells.iter().chain(&table.totals) {
        let mut fields: Vec<String> = table
            .group_by
            .iter()
            .map(|d| {
                quote(
                    row["key"]
                        .get(*d)
                        .and_then(Value::as_str)
                        .unwrap_or("(total)"),
                )
            })
            .collect();
        fields.push(
            row["value"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
        fields.push(row["suppressed"].to_string());
        fields.push(row["reason"].as_str().unwrap_or("").to_owned());
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(country: &str, calibre: &str, rounds: u64) -> Value {
        json!({
            "originating_state": country,
            "event": { "date": { "start": "2024-03-01" }, "location": { "country": country } },
            "items": [{
                "calibre": { "raw": calibre, "derived": { "canonical_id": calibre } },
                "quantity": { "count": rounds, "unit": "rounds" },
            }],
        })
    }

    /// Facts of `rows`, with fixed record ids (so the noise, and the tests, are the same on
    /// every run).
    fn facts(rows: &[(&str, &str, u64)]) -> Facts {
        let mut facts = Facts::default();
        for (n, (country, calibre, rounds)) in rows.iter().enumerate() {
            let id = RecordId(uuid::Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0000_0000 + n as u128,
            ));
            facts.set(id, Some(&record(country, calibre, *rounds)));
        }
        facts
    }

    #[test]
    fn totals_saturate_instead_of_wrapping() {
        let mut cell = Cell::default();
        cell.add(7, 1, u64::MAX);
        cell.add(7, 1, u64::MAX);
        assert_eq!(cell.value(Measure::Rounds), u64::MAX);
        assert_eq!(cell.value(Measure::Items), 2);
        let mut list = Vec::new();
        contribute(&mut list, 7u32, 1, u64::MAX);
        contribute(&mut list, 7u32, 1, 1);
        assert_eq!(list, vec![(7, 2, u64::MAX)]);
    }

    #[test]
    fn partial_dates_keep_their_order_and_text() {
        for d in ["2024", "2024-03", "2024-03-05", "1999-12-31"] {
            assert_eq!(date_text(date_code(d, false).unwrap()), d);
        }
        for bad in [
            "",
            "24",
            "2024-3",
            "2024/03/05",
            "２０２４",
            "2024-03-05T00",
        ] {
            assert_eq!(date_code(bad, false), None, "{bad}");
        }
        let mut facts = Facts::default();
        for date in ["2023-12-24", "2024", "2024-03", "2024-03-05", "2025-01-01"] {
            let mut r = record("XAA", "7.62x39", 1);
            r["event"]["date"]["start"] = json!(date);
            facts.set(RecordId(uuid::Uuid::now_v7()), Some(&r));
        }
        let count = |from: Option<&str>, to: Option<&str>| {
            let p = Params {
                from: from.map(str::to_owned),
                to: to.map(str::to_owned),
                unsuppressed: true,
                ..params(&[Dim::Year], 5)
            };
            value(&table(&facts, &p), &[]).unwrap_or(0)
        };
        assert_eq!(count(Some("2024"), Some("2024")), 3);
        assert_eq!(count(Some("2024-03"), None), 3, "2024-03, 2024-03-05, 2025");
        assert_eq!(
            count(None, Some("2024-03")),
            4,
            "a truncated `to` takes its month"
        );
        assert_eq!(count(Some("2024-03-06"), Some("2024-12-31")), 0);
    }

    #[test]
    fn replacing_facts_many_times_compacts_without_changing_tables() {
        let mut facts = Facts::default();
        let ids: Vec<RecordId> = (0..50).map(|_| RecordId(uuid::Uuid::now_v7())).collect();
        for round in 0..200u64 {
            for (n, id) in ids.iter().enumerate() {
                let calibre = if n % 2 == 0 { "7.62x39" } else { "5.56x45" };
                facts.set(*id, Some(&record("XAA", calibre, round + n as u64)));
            }
        }
        assert!(facts.items.len() < 50 * 200, "the pools were compacted");
        let p = Params {
            measure: Some(Measure::Rounds),
            unsuppressed: true,
            ..params(&[Dim::Calibre], 5)
        };
        let t = table(&facts, &p);
        // Last round: rounds = 199 + n.
        let even: u64 = (0..50).filter(|n| n % 2 == 0).map(|n| 199 + n).sum();
        let odd: u64 = (0..50).filter(|n| n % 2 == 1).map(|n| 199 + n).sum();
        assert_eq!(value(&t, &[("calibre", "7.62x39")]), Some(even));
        assert_eq!(value(&t, &[("calibre", "5.56x45")]), Some(odd));
    }

    #[test]
    fn facts_are_replaced_and_removed_in_place() {
        let mut facts = Facts::default();
        let (a, b) = (
            RecordId(uuid::Uuid::now_v7()),
            RecordId(uuid::Uuid::now_v7()),
        );
        facts.set(a, Some(&record("XAA", "7.62x39", 10)));
        facts.set(b, Some(&record("XBB", "7.62x39", 20)));
        facts.set(a, Some(&record("XCC", "5.56x45", 30)));
        let p = Params {
            unsuppressed: true,
            ..params(&[Dim::SeizingCountry], 5)
        };
        let t = table(&facts, &p);
        assert_eq!(value(&t, &[("seizing_country", "XAA")]), None);
        assert_eq!(value(&t, &[("seizing_country", "XCC")]), Some(1));
        assert_eq!(value(&t, &[]), Some(2));
        facts.set(b, None);
        assert_eq!(facts.len(), 1);
        let t = table(
            &facts,
            &Params {
                measure: Some(Measure::Rounds),
                ..p
            },
        );
        assert_eq!(value(&t, &[]), Some(30));
        assert_eq!(value(&t, &[("seizing_country", "XBB")]), None);
    }

    fn params(dims: &[Dim], k: usize) -> Params {
        Params {
            group_by: dims.to_vec(),
            k,
            ..Params::default()
        }
    }

    fn value(t: &Table, key: &[(&str, &str)]) -> Option<u64> {
        t.cells
            .iter()
            .chain(&t.totals)
            .find(|c| {
                key.iter().all(|(d, v)| c["key"][*d] == *v)
                    && c["key"].as_object().unwrap().len() == key.len()
            })
            .and_then(|c| c["value"].as_u64())
    }

    /// The published value of `key`, checked to be `exact` moved by cell-key noise: a count by
    /// at most 2 and never under k; rounds by Laplace noise of scale 15% of `top`, the largest
    /// seizure in the cell (within 7 scales here: the ids, so the noise, are fixed).
    fn published(t: &Table, key: &[(&str, &str)], exact: u64, top: u64) -> u64 {
        let v = value(t, key).unwrap_or_else(|| panic!("{key:?} is not published"));
        let d = v.abs_diff(exact);
        match t.measure {
            Measure::Rounds => assert!(
                d as f64 <= 7.0 * ROUNDS_NOISE * top as f64,
                "{key:?}: {v} is not {exact} moved by Laplace noise of scale 15% of {top}"
            ),
            _ => assert!(
                d <= 2 && v >= t.k as u64,
                "{key:?}: {v} is not {exact} ± 2 (at least k)"
            ),
        }
        v
    }

    #[test]
    fn one_dimension_hand_computed() {
        // XAA: 6 seizures, XBB: 5, XCC: 2 (under k = 5), XDD: 1 (under k).
        let mut rows = Vec::new();
        for (c, n) in [("XAA", 6), ("XBB", 5), ("XCC", 2), ("XDD", 1)] {
            for _ in 0..n {
                rows.push((c, "7.62x39", 10));
            }
        }
        let t = table(&facts(&rows), &params(&[Dim::SeizingCountry], 5));
        assert!(t.perturbed);
        published(&t, &[("seizing_country", "XAA")], 6, 0);
        published(&t, &[("seizing_country", "XBB")], 5, 0);
        assert_eq!(value(&t, &[("seizing_country", "XCC")]), None);
        assert_eq!(value(&t, &[("seizing_country", "XDD")]), None);
        published(&t, &[], 14, 0);
        // Two primary cells, so the line needs no complement.
        assert_eq!(t.suppressed, 2);

        // With only XDD under k, the smallest other cell (XBB) is suppressed as complement.
        let rows: Vec<_> = rows.into_iter().filter(|r| r.0 != "XCC").collect();
        let t = table(&facts(&rows), &params(&[Dim::SeizingCountry], 5));
        assert_eq!(value(&t, &[("seizing_country", "XDD")]), None);
        assert_eq!(value(&t, &[("seizing_country", "XBB")]), None);
        published(&t, &[("seizing_country", "XAA")], 6, 0);
        let xbb = t
            .cells
            .iter()
            .find(|c| c["key"]["seizing_country"] == "XBB")
            .unwrap();
        assert_eq!(xbb["reason"], "complementary");
    }

    #[test]
    fn rounds_and_two_dimensions_hand_computed() {
        let mut rows = Vec::new();
        for _ in 0..5 {
            rows.push(("XAA", "7.62x39", 100));
        }
        for _ in 0..6 {
            rows.push(("XAA", "5.56x45", 10));
        }
        for _ in 0..7 {
            rows.push(("XBB", "7.62x39", 1));
        }
        rows.push(("XBB", "5.56x45", 1000));
        let mut p = params(&[Dim::SeizingCountry, Dim::Calibre], 5);
        p.measure = Some(Measure::Rounds);
        let t = table(&facts(&rows), &p);
        // XBB × 5.56 has 1 seizure: primary. Its row (XBB) and column (5.56) each need a
        // complement: XBB × 7.62 (7) and XAA × 5.56 (6); then XAA's row has one hidden cell
        // too, so XAA × 7.62 goes: all four cells hidden, every margin published.
        for key in [
            ("XBB", "5.56x45"),
            ("XBB", "7.62x39"),
            ("XAA", "5.56x45"),
            ("XAA", "7.62x39"),
        ] {
            assert_eq!(
                value(&t, &[("seizing_country", key.0), ("calibre", key.1)]),
                None,
                "{key:?}"
            );
        }
        published(&t, &[("seizing_country", "XAA")], 560, 100);
        published(&t, &[("seizing_country", "XBB")], 1007, 1000);
        published(&t, &[("calibre", "7.62x39")], 507, 100);
        published(&t, &[("calibre", "5.56x45")], 1060, 1000);
        published(&t, &[], 1567, 1000);
        let unsuppressed = table(
            &facts(&rows),
            &Params {
                unsuppressed: true,
                ..p
            },
        );
        assert_eq!(
            value(
                &unsuppressed,
                &[("seizing_country", "XBB"), ("calibre", "5.56x45")]
            ),
            Some(1000)
        );
    }

    /// The review's differencing attacks (2026-11-30): a total minus the other published cells,
    /// the same table a day apart. Every published figure is perturbed, so the difference
    /// misses the hidden seizure's rounds by at least 10% of it; the same seizures get the
    /// same figure in any table and any time they are asked for.
    #[test]
    fn differencing_tables_recovers_no_hidden_seizure() {
        let mut rows = Vec::new();
        for _ in 0..20 {
            rows.push(("XAA", "7.62x39", 100));
        }
        for _ in 0..7 {
            rows.push(("XBB", "9x19", 50));
        }
        for _ in 0..6 {
            rows.push(("XDD", "7.62x39", 10));
        }
        rows.push(("XCC", "5.56x45", 12345));
        let facts = facts(&rows);
        let mut p = params(&[Dim::SeizingCountry], 5);
        p.measure = Some(Measure::Rounds);
        let t = table(&facts, &p);
        assert_eq!(value(&t, &[("seizing_country", "XCC")]), None);
        let others: u64 = ["XAA", "XBB", "XDD"]
            .iter()
            .filter_map(|c| value(&t, &[("seizing_country", c)]))
            .sum();
        let total = published(&t, &[], 14755, 12345);
        assert_ne!(
            total - others,
            12345,
            "the total minus the others is not the hidden cell"
        );
        // The grand total is the same figure whatever the grouping, and on every asking.
        for dims in [[Dim::Calibre], [Dim::Year], [Dim::SeizingCountry]] {
            let mut q = params(&dims, 5);
            q.measure = Some(Measure::Rounds);
            assert_eq!(value(&table(&facts, &q), &[]), Some(total), "{dims:?}");
        }
        // The same figure by filter: XAA's cell equals the total of a table filtered to XAA.
        let mut q = params(&[Dim::Calibre], 5);
        q.measure = Some(Measure::Rounds);
        q.filters = vec![(Dim::SeizingCountry, "XAA".into())];
        assert_eq!(
            value(&table(&facts, &q), &[]),
            value(&t, &[("seizing_country", "XAA")])
        );
        // Admins' own unsuppressed figures stay exact.
        let exact = table(
            &facts,
            &Params {
                unsuppressed: true,
                ..p
            },
        );
        assert!(!exact.perturbed);
        assert_eq!(value(&exact, &[]), Some(14755));
    }

    /// Rounds noise (over many cells, i.e. many cell keys): centred on the true figure, of
    /// mean distance 15% of the cell's largest seizure, and unbounded (bounded noise could be
    /// intersected away over a few tables). Count noise: -2..=2, zero most often.
    #[test]
    fn noise_is_centred_scaled_and_rounds_noise_unbounded() {
        let n = 20_000u64;
        let (mut sum, mut abs, mut beyond) = (0.0f64, 0.0f64, 0);
        let mut counts = [0u64; 5];
        for i in 0..n {
            let cell = Cell {
                seizures: 10,
                items: 10,
                rounds: 5_000,
                key: (mix(i) >> 32) as u32,
                top: 1_000,
            };
            let d = cell.perturbed(Measure::Rounds, 5) as f64 - 5_000.0;
            sum += d;
            abs += d.abs();
            beyond += usize::from(d.abs() > 5.0 * 150.0);
            let c = cell.perturbed(Measure::Seizures, 5) as i64 - 10;
            counts[(c + 2) as usize] += 1;
        }
        let mean = sum / n as f64;
        let mad = abs / n as f64;
        assert!(mean.abs() < 10.0, "mean noise {mean}");
        assert!((135.0..165.0).contains(&mad), "mean distance {mad}");
        // P(|noise| > 5 scales) = e^-5, about 134 of 20,000.
        assert!((60..260).contains(&beyond), "{beyond} beyond 5 scales");
        let share = |i: usize| counts[i] as f64 / n as f64;
        assert!((0.37..0.43).contains(&share(2)), "{counts:?}");
        assert!((0.08..0.12).contains(&share(0)) && (0.08..0.12).contains(&share(4)));
    }

    /// A table over fewer than k seizures (a filter down to one seizure) names no cell: the
    /// names alone would describe that seizure.
    #[test]
    fn a_table_over_fewer_than_k_seizures_names_nothing() {
        let rows = [
            ("XAA", "7.62x39", 100),
            ("XAA", "7.62x39", 100),
            ("XAA", "7.62x39", 100),
            ("XAA", "7.62x39", 100),
            ("XAA", "7.62x39", 100),
            ("XCC", "5.56x45", 12345),
        ];
        let facts = facts(&rows);
        let mut p = params(&[Dim::Calibre], 5);
        p.filters = vec![(Dim::SeizingCountry, "XCC".into())];
        let t = table(&facts, &p);
        assert!(t.cells.is_empty(), "{:?}", t.cells);
        assert_eq!(t.totals.len(), 1);
        assert_eq!(t.totals[0]["suppressed"], true);
        assert_eq!(t.suppressed, 1);
        assert!(!serde_json::to_string(&t).unwrap().contains("5.56"));
        // Filtered to no seizure at all, the answer is the same: no yes/no oracle.
        let mut none = p.clone();
        none.filters.push((Dim::Calibre, "7.62x39".into()));
        let empty = table(&facts, &none);
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            serde_json::to_value(&t).unwrap()
        );
        // Over every seizure the cell is named, and suppressed.
        p.filters.clear();
        let t = table(&facts, &p);
        assert_eq!(value(&t, &[("calibre", "5.56x45")]), None);
        assert!(serde_json::to_string(&t).unwrap().contains("5.56"));
    }

    /// A lot seized five times in XGG and once in XHH: published, XHH's single seizure is
    /// neither named nor dated to the day; an admin's unsuppressed list shows both.
    #[test]
    fn cross_border_lots_name_no_country_under_k() {
        let mut facts = Facts::default();
        for (n, (country, date)) in std::iter::repeat_n(("XGG", "2023-05-02"), 5)
            .chain([("XHH", "2023-09-17")])
            .enumerate()
        {
            let mut r = record(country, "7.62x39", 10 + n as u64);
            r["event"]["date"]["start"] = json!(date);
            r["items"][0]["lot"] = json!({"raw": "LOT 4711-B", "derived": {"key": "4711B"}});
            facts.set(RecordId(uuid::Uuid::now_v7()), Some(&r));
        }
        let (rows, withheld) = cross_border_lots(&facts, 5, false, true);
        assert_eq!(withheld, 0);
        let row = &rows[0];
        assert_eq!(row["countries"], json!(["XGG"]));
        assert_eq!(row["other_countries"], 1);
        assert_eq!(row["first_seen"], "2023-05");
        assert_eq!(row["last_seen"], "2023-09");
        let n = row["seizures"].as_u64().unwrap();
        assert!((5..=8).contains(&n), "{n}");
        let (rows, _) = cross_border_lots(&facts, 5, true, true);
        assert_eq!(rows[0]["countries"], json!(["XGG", "XHH"]));
        assert_eq!(rows[0]["last_seen"], "2023-09-17");
        assert_eq!(rows[0]["seizures"], 6);
        // Under k seizures in all, the lot is withheld.
        let (rows, withheld) = cross_border_lots(&facts, 7, false, true);
        assert!(rows.is_empty());
        assert_eq!(withheld, 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// No published table lets one derive a suppressed cell by subtraction: every line
        /// (cells and their total) holds zero or at least two suppressed entries.
        #[test]
        fn no_suppressed_cell_is_derivable(counts in proptest::collection::vec(0usize..9, 9), k in 2usize..6) {
            let countries = ["XAA", "XBB", "XCC"];
            let calibres = ["a", "b", "c"];
            let mut rows = Vec::new();
            for (i, n) in counts.iter().enumerate() {
                for _ in 0..*n {
                    rows.push((countries[i / 3], calibres[i % 3], 1u64));
                }
            }
            let t = table(&facts(&rows), &params(&[Dim::SeizingCountry, Dim::Calibre], k));
            let hidden = |key: &[(&str, &str)]| value(&t, key).is_none()
                && t.cells.iter().chain(&t.totals).any(|c| key.iter().all(|(d, v)| c["key"][*d] == *v) && c["key"].as_object().unwrap().len() == key.len());
            for c in countries {
                let mut line: Vec<bool> = calibres.iter().map(|b| hidden(&[("seizing_country", c), ("calibre", b)])).collect();
                line.push(hidden(&[("seizing_country", c)]));
                proptest::prop_assert!(line.iter().filter(|h| **h).count() != 1, "row {c}: {line:?}");
            }
            for b in calibres {
                let mut line: Vec<bool> = countries.iter().map(|c| hidden(&[("seizing_country", c), ("calibre", b)])).collect();
                line.push(hidden(&[("calibre", b)]));
                proptest::prop_assert!(line.iter().filter(|h| **h).count() != 1, "column {b}: {line:?}");
            }
            // Stronger: no suppressed entry is fixed by the published sums (linear algebra over
            // every row, column and margin equation): its unit vector is not in the row space.
            let mut unknowns: Vec<Vec<(&str, &str)>> = Vec::new();
            for c in countries {
                for b in calibres {
                    if hidden(&[("seizing_country", c), ("calibre", b)]) { unknowns.push(vec![("seizing_country", c), ("calibre", b)]); }
                }
                if hidden(&[("seizing_country", c)]) { unknowns.push(vec![("seizing_country", c)]); }
            }
            for b in calibres {
                if hidden(&[("calibre", b)]) { unknowns.push(vec![("calibre", b)]); }
            }
            if hidden(&[]) { unknowns.push(vec![]); }
            let col = |key: &[(&str, &str)]| unknowns.iter().position(|u| u.as_slice() == key);
            let mut equations: Vec<Vec<f64>> = Vec::new();
            let mut eq = |parts: Vec<Vec<(&str, &str)>>, total: Vec<(&str, &str)>| {
                let mut row = vec![0.0; unknowns.len()];
                for part in &parts { if let Some(i) = col(part) { row[i] += 1.0; } }
                if let Some(i) = col(&total) { row[i] -= 1.0; }
                equations.push(row);
            };
            for c in countries {
                eq(calibres.iter().map(|b| vec![("seizing_country", c), ("calibre", *b)]).collect(), vec![("seizing_country", c)]);
            }
            for b in calibres {
                eq(countries.iter().map(|c| vec![("seizing_country", *c), ("calibre", b)]).collect(), vec![("calibre", b)]);
            }
            eq(countries.iter().map(|c| vec![("seizing_country", *c)]).collect(), vec![]);
            eq(calibres.iter().map(|b| vec![("calibre", *b)]).collect(), vec![]);
            let rank = |m: &[Vec<f64>]| -> usize {
                let mut m = m.to_vec();
                let (mut r, cols) = (0, m.first().map_or(0, Vec::len));
                for c in 0..cols {
                    let Some(p) = (r..m.len()).find(|&i| m[i][c].abs() > 1e-9) else { continue };
                    m.swap(r, p);
                    let pivot = m[r].clone();
                    for (i, row) in m.iter_mut().enumerate() {
                        if i != r && row[c].abs() > 1e-9 {
                            let f = row[c] / pivot[c];
                            for (x, p) in row.iter_mut().zip(&pivot) { *x -= f * p; }
                        }
                    }
                    r += 1;
                }
                r
            };
            let base = rank(&equations);
            for i in 0..unknowns.len() {
                let mut with = equations.clone();
                let mut unit = vec![0.0; unknowns.len()];
                unit[i] = 1.0;
                with.push(unit);
                proptest::prop_assert!(rank(&with) > base, "{:?} can be derived", unknowns[i]);
            }
            // And no published cell counts fewer than k seizures. The true counts are
            // checked: a published figure carries noise and is never shown under k.
            let mut truth: Vec<(Vec<(&str, &str)>, usize)> = Vec::new();
            for (i, c) in countries.iter().enumerate() {
                truth.push((vec![("seizing_country", *c)], counts[i * 3..i * 3 + 3].iter().sum()));
                for (j, b) in calibres.iter().enumerate() {
                    truth.push((vec![("seizing_country", *c), ("calibre", *b)], counts[i * 3 + j]));
                }
            }
            for (j, b) in calibres.iter().enumerate() {
                truth.push((vec![("calibre", *b)], (0..3).map(|i| counts[i * 3 + j]).sum()));
            }
            for (key, n) in &truth {
                if value(&t, key).is_some() {
                    proptest::prop_assert!(*n == 0 || *n >= k, "{key:?} published with {n} seizures, k = {k}");
                }
            }
        }
    }

    /// A snapshot as `POST /api/v1/stats/snapshots` publishes it follows
    /// `schemas/stats-snapshot.schema.json` and verifies with the node's key history; an
    /// altered one does neither.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn published_snapshots_follow_the_schema() {
        use crate::api::federation::tests::{Federation, assert_follows, schema, with};
        let fed = Federation::start(&["XAA"], &[]).await;
        let lots: Vec<(String, &str)> = [("XAA", 5), ("XCC", 5), ("XBB", 1)]
            .into_iter()
            .flat_map(|(country, n)| {
                (0..n).map(move |i| (format!("LC10A{i:03}-{country}"), country))
            })
            .collect();
        let lots: Vec<(&str, &str)> = lots.iter().map(|(l, c)| (l.as_str(), *c)).collect();
        fed.write("XAA", &lots).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/api/v1/stats/snapshots?group_by=seizing_country&format=json",
            listener.local_addr().unwrap()
        );
        let api = crate::api::router(fed.node("XAA").clone());
        tokio::spawn(async move { axum::serve(listener, api).await });
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(fed.admin_token("XAA"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let signed: Value = response.json().await.unwrap();

        let validator = schema("stats-snapshot.schema.json", None);
        assert_follows(&validator, &signed, "signed snapshot");
        let keys = fed.node("XAA").keys();
        verify_snapshot(&signed, keys).unwrap();
        let table = &signed["snapshot"]["table"];
        let rows: Vec<&Value> = table["cells"]
            .as_array()
            .into_iter()
            .chain(table["totals"].as_array())
            .flatten()
            .collect();
        // Both forms of a cell are there to check: published, and suppressed with a reason.
        assert!(rows.iter().any(|c| c["suppressed"] == true), "{signed:#}");
        assert!(rows.iter().any(|c| c["suppressed"] == false), "{signed:#}");
        assert_eq!(
            signed["snapshot"]["parameters"],
            json!([["group_by", "seizing_country"]])
        );

        // The verifier reads the document as JSON and ignores members it does not know.
        let extra = with(&signed, "/published_by", Some(json!("admin")));
        assert!(validator.is_valid(&extra));
        verify_snapshot(&extra, keys).unwrap();
        // A suppressed cell must say why.
        let mut no_reason = signed.clone();
        for row in no_reason["snapshot"]["table"]["cells"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .filter(|row| row["suppressed"] == true)
        {
            row.as_object_mut().unwrap().remove("reason");
        }
        assert_ne!(no_reason, signed);
        for bad in [
            with(&signed, "/snapshot/k", Some(json!(0))),
            with(&signed, "/snapshot/v", Some(json!(2))),
            with(&signed, "/snapshot/key_id", None),
            with(&signed, "/snapshot/table/measure", Some(json!("kilograms"))),
            with(&signed, "/sig", Some(json!("AAAA"))),
            no_reason,
        ] {
            assert!(!validator.is_valid(&bad), "{bad}");
            assert!(verify_snapshot(&bad, keys).is_err(), "{bad}");
        }
    }
}
