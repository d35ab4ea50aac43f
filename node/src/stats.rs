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
//! Facts are read from the stored records' `derived` interpretations (calibre canonical id,
//! the best headstamp reading's maker, country and year), cached per store change sequence.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::record::FieldError;

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

/// One item of one seizure, as the statistics see it.
#[derive(Debug, Clone, Default)]
struct ItemFact {
    calibre: String,
    maker: String,
    country_of_manufacture: String,
    year_of_manufacture: String,
    age_band: String,
    rounds: u64,
}

/// One seizure (a record's latest, non-retracted version).
#[derive(Debug, Clone, Default)]
pub struct Fact {
    seizure: u32,
    origin: String,
    seizing_country: String,
    date: String,
    quarter: String,
    contexts: Vec<String>,
    route_segments: Vec<String>,
    shipment_method: String,
    concealment: Vec<String>,
    items: Vec<ItemFact>,
    lots: Vec<(String, String)>,
}

const UNKNOWN: &str = "unknown";

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(UNKNOWN)
        .to_owned()
}

fn list(v: Option<&Value>) -> Vec<String> {
    let items: Vec<String> = v
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if items.is_empty() {
        vec![UNKNOWN.into()]
    } else {
        items
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

impl Fact {
    /// The facts of one stored record version.
    pub fn from_record(seizure: u32, record: &Value) -> Fact {
        let event = record.get("event");
        let date = event
            .and_then(|e| e.pointer("/date/start"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let seizure_year: Option<i64> = date.get(..4).and_then(|y| y.parse().ok());
        let chain = record.get("supply_chain");
        let mut route: Vec<(i64, String)> = chain
            .and_then(|c| c.get("route"))
            .and_then(Value::as_array)
            .map(|stops| {
                stops
                    .iter()
                    .map(|s| (s["seq"].as_i64().unwrap_or(0), text(s.get("country"))))
                    .collect()
            })
            .unwrap_or_default();
        route.sort();
        let route_segments: Vec<String> = route
            .windows(2)
            .map(|w| format!("{}>{}", w[0].1, w[1].1))
            .collect();
        let items = record
            .get("items")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        let reading = item.pointer("/headstamp/derived/readings/0");
                        let year = item
                            .pointer("/manufacture/year")
                            .and_then(Value::as_i64)
                            .or_else(|| reading.and_then(|r| r["year_gregorian"].as_i64()));
                        let rounds = if item.pointer("/quantity/unit").and_then(Value::as_str)
                            == Some("rounds")
                        {
                            item.pointer("/quantity/count")
                                .and_then(Value::as_u64)
                                .unwrap_or(0)
                        } else {
                            0
                        };
                        ItemFact {
                            calibre: item
                                .pointer("/calibre/derived/canonical_id")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .unwrap_or_else(|| UNKNOWN.into()),
                            maker: text(reading.and_then(|r| r.get("manufacturer_code"))),
                            country_of_manufacture: text(
                                reading.and_then(|r| r.get("country_iso3")),
                            ),
                            year_of_manufacture: year
                                .map_or_else(|| UNKNOWN.into(), |y| y.to_string()),
                            age_band: match (seizure_year, year) {
                                (Some(s), Some(m)) => age_band(s - m).into(),
                                _ => UNKNOWN.into(),
                            },
                            rounds,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let lots = record
            .get("items")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| {
                        let d = i.pointer("/lot/derived")?;
                        let (key, kind) = match d.get("identity_key").and_then(Value::as_str) {
                            Some(k) => (k.to_owned(), "exact"),
                            None => (d.get("key")?.as_str()?.to_owned(), "folded"),
                        };
                        (!key.is_empty()).then(|| (key, kind.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Fact {
            seizure,
            origin: text(record.get("originating_state")),
            seizing_country: text(event.and_then(|e| e.pointer("/location/country"))),
            quarter: match (
                date.get(..4),
                date.get(5..7).and_then(|m| m.parse::<u32>().ok()),
            ) {
                (Some(y), Some(m)) if (1..=12).contains(&m) => format!("{y}-Q{}", (m - 1) / 3 + 1),
                _ => UNKNOWN.into(),
            },
            date,
            contexts: list(event.and_then(|e| e.get("context"))),
            route_segments: if route_segments.is_empty() {
                vec![UNKNOWN.into()]
            } else {
                route_segments
            },
            shipment_method: text(chain.and_then(|c| c.pointer("/shipment/method"))),
            concealment: list(chain.and_then(|c| c.pointer("/concealment/method"))),
            items,
            lots,
        }
    }

    /// The values of a seizure-level dimension.
    fn seizure_values(&self, dim: Dim) -> Vec<&str> {
        let d = &self.date;
        match dim {
            Dim::SeizingCountry => vec![self.seizing_country.as_str()],
            Dim::Context => self.contexts.iter().map(String::as_str).collect(),
            Dim::RouteSegment => self.route_segments.iter().map(String::as_str).collect(),
            Dim::ShipmentMethod => vec![self.shipment_method.as_str()],
            Dim::Concealment => self.concealment.iter().map(String::as_str).collect(),
            Dim::Year => vec![d.get(..4).unwrap_or(UNKNOWN)],
            Dim::Month => vec![d.get(..7).filter(|m| m.len() == 7).unwrap_or(UNKNOWN)],
            Dim::Quarter => vec![self.quarter.as_str()],
            _ => Vec::new(),
        }
    }
}

fn item_value(item: &ItemFact, dim: Dim) -> &str {
    match dim {
        Dim::Calibre => &item.calibre,
        Dim::Maker => &item.maker,
        Dim::CountryOfManufacture => &item.country_of_manufacture,
        Dim::YearOfManufacture => &item.year_of_manufacture,
        Dim::AgeAtSeizure => &item.age_band,
        _ => UNKNOWN,
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
                "from" => p.from = Some(value.clone()),
                "to" => p.to = Some(value.clone()),
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
}

impl Cell {
    fn add(&mut self, items: u64, rounds: u64) {
        self.seizures += 1;
        self.items += items;
        self.rounds += rounds;
    }

    fn value(&self, m: Measure) -> u64 {
        match m {
            Measure::Seizures => self.seizures as u64,
            Measure::Items => self.items,
            Measure::Rounds => self.rounds,
        }
    }
}

/// Cached facts, keyed by the store's change sequence they were read at.
#[derive(Default)]
pub struct FactCache {
    cached: Mutex<Option<(u64, std::sync::Arc<Vec<Fact>>)>>,
}

impl FactCache {
    /// The facts of every visible record (latest versions, retractions excluded).
    pub fn facts(
        &self,
        store: &crate::store::Store,
    ) -> Result<(u64, std::sync::Arc<Vec<Fact>>), crate::store::StoreError> {
        let last = store.last_seq()?;
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seq, facts)) = cached.as_ref()
            && *seq == last
        {
            return Ok((last, facts.clone()));
        }
        let mut facts = Vec::new();
        for head in store.heads() {
            let (id, head) = head?;
            if head.retracted {
                continue;
            }
            if let Some(record) = store.get(&id, Some(head.version))? {
                facts.push(Fact::from_record(facts.len() as u32, &record));
            }
        }
        let facts = std::sync::Arc::new(facts);
        *cached = Some((last, facts.clone()));
        Ok((last, facts))
    }
}

fn in_period(f: &Fact, p: &Params) -> bool {
    let d = f.date.as_str();
    p.from.as_deref().is_none_or(|from| d >= from)
        && p.to
            .as_deref()
            .is_none_or(|to| d.is_empty() || d <= to || d.starts_with(to))
}

/// A computed table.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub group_by: Vec<&'static str>,
    pub measure: Measure,
    pub k: usize,
    pub cells: Vec<Value>,
    pub totals: Vec<Value>,
    pub suppressed: usize,
}

/// Computes a table over `facts`.
fn push_values<'a>(f: &'a Fact, d: Dim, item: Option<&'a ItemFact>, out: &mut Vec<&'a str>) {
    if d.per_item() {
        out.extend(item.map(|i| item_value(i, d)));
        return;
    }
    match d {
        Dim::SeizingCountry => out.push(&f.seizing_country),
        Dim::Context => out.extend(f.contexts.iter().map(String::as_str)),
        Dim::RouteSegment => out.extend(f.route_segments.iter().map(String::as_str)),
        Dim::ShipmentMethod => out.push(&f.shipment_method),
        Dim::Concealment => out.extend(f.concealment.iter().map(String::as_str)),
        Dim::Year => out.push(f.date.get(..4).unwrap_or(UNKNOWN)),
        Dim::Month => out.push(f.date.get(..7).filter(|m| m.len() == 7).unwrap_or(UNKNOWN)),
        Dim::Quarter => out.push(&f.quarter),
        _ => {}
    }
}

// The grouping loop indexes `items` by unit number because a unit is either one item or
// (for seizure-level dimensions) the whole seizure; an iterator would need a second loop body.
#[allow(clippy::needless_range_loop)]
pub fn table<'a>(facts: &'a [Fact], p: &Params) -> Table {
    let measure = p.measure.unwrap_or(Measure::Seizures);
    let dims = &p.group_by;
    // Values are interned per table (borrowed from the facts), so grouping works on integers.
    let mut ids: HashMap<&'a str, u32> = HashMap::new();
    let mut names: Vec<&'a str> = Vec::new();
    let mut raw_cells: HashMap<[u32; 2], Cell> = HashMap::new();
    let mut raw_margins: Vec<HashMap<u32, Cell>> = vec![HashMap::new(); dims.len()];
    let mut grand = Cell::default();
    let mut contributions: Vec<([u32; 2], u64, u64)> = Vec::new();
    let mut margin_contrib: Vec<Vec<(u32, u64, u64)>> = vec![Vec::new(); dims.len()];
    // Buffers reused across facts: the loop allocates nothing once they have grown.
    let mut items: Vec<&'a ItemFact> = Vec::new();
    let mut vals: Vec<&'a str> = Vec::new();
    let mut first: Vec<u32> = Vec::new();
    let mut second: Vec<u32> = Vec::new();
    let item_filters: Vec<&(Dim, String)> =
        p.filters.iter().filter(|(d, _)| d.per_item()).collect();
    let per_item = dims.iter().any(|d| d.per_item());
    for f in facts.iter().filter(|f| in_period(f, p)) {
        if let Some(own) = &p.own_only
            && &f.origin != own
        {
            continue;
        }
        if !p
            .filters
            .iter()
            .filter(|(d, _)| !d.per_item())
            .all(|(d, v)| f.seizure_values(*d).contains(&v.as_str()))
        {
            continue;
        }
        items.clear();
        items.extend(
            f.items
                .iter()
                .filter(|i| item_filters.iter().all(|(d, v)| item_value(i, *d) == v)),
        );
        if items.is_empty() && !item_filters.is_empty() {
            continue;
        }
        let mut id_of = |v: &'a str| -> u32 {
            if let Some(id) = ids.get(v) {
                return *id;
            }
            let id = names.len() as u32;
            names.push(v);
            ids.insert(v, id);
            id
        };
        let all_items = items.len() as u64;
        let all_rounds: u64 = items.iter().map(|i| i.rounds).sum();
        // Every combination of values this seizure contributes, with its items.
        contributions.clear();
        let n_units = if per_item { items.len() } else { 1 };
        for u in 0..n_units {
            let unit = if per_item { Some(items[u]) } else { None };
            let (n_items, rounds) = match unit {
                Some(i) => (1, i.rounds),
                None => (all_items, all_rounds),
            };
            vals.clear();
            push_values(f, dims[0], unit, &mut vals);
            first.clear();
            first.extend(vals.iter().map(|v| id_of(v)));
            second.clear();
            match dims.get(1) {
                Some(d) => {
                    vals.clear();
                    push_values(f, *d, unit, &mut vals);
                    second.extend(vals.iter().map(|v| id_of(v)));
                }
                None => second.push(u32::MAX),
            }
            for a in &first {
                for b in &second {
                    let key = [*a, *b];
                    match contributions.iter_mut().find(|(k, _, _)| *k == key) {
                        Some(e) => {
                            e.1 += n_items;
                            e.2 += rounds;
                        }
                        None => contributions.push((key, n_items, rounds)),
                    }
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
                push_values(f, *d, unit, &mut vals);
                for v in &vals {
                    let v = id_of(v);
                    match margin_contrib[i].iter_mut().find(|(k, _, _)| *k == v) {
                        Some(e) => {
                            e.1 += n_items;
                            e.2 += rounds;
                        }
                        None => margin_contrib[i].push((v, n_items, rounds)),
                    }
                }
            }
        }
        for (key, n_items, rounds) in &contributions {
            raw_cells.entry(*key).or_default().add(*n_items, *rounds);
        }
        for (i, contrib) in margin_contrib.iter().enumerate() {
            for (v, n_items, rounds) in contrib {
                raw_margins[i].entry(*v).or_default().add(*n_items, *rounds);
            }
        }
        grand.add(all_items, all_rounds);
    }
    // Back to names, in order.
    let name = |id: u32| {
        names
            .get(id as usize)
            .copied()
            .unwrap_or(UNKNOWN)
            .to_owned()
    };
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
    let show = |id: &str, c: &Cell, key: Value| -> Value {
        match suppressed.get(id) {
            Some(reason) => {
                json!({ "key": key, "value": null, "suppressed": true, "reason": reason })
            }
            None => {
                json!({ "key": key, "value": c.value(measure), "seizures": c.seizures, "suppressed": false })
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
pub fn cross_border_lots(facts: &[Fact], k: usize, unsuppressed: bool) -> (Vec<Value>, usize) {
    #[derive(Default)]
    struct Seen {
        countries: BTreeSet<String>,
        seizures: BTreeSet<u32>,
        first: String,
        last: String,
        kinds: BTreeSet<String>,
    }
    let mut lots: BTreeMap<String, Seen> = BTreeMap::new();
    for f in facts {
        for (key, kind) in &f.lots {
            let s = lots.entry(key.clone()).or_default();
            s.countries.insert(f.seizing_country.clone());
            s.seizures.insert(f.seizure);
            s.kinds.insert(kind.clone());
            if !f.date.is_empty() {
                if s.first.is_empty() || f.date < s.first {
                    s.first = f.date.clone();
                }
                if f.date > s.last {
                    s.last = f.date.clone();
                }
            }
        }
    }
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
            json!({
                "lot": lot, "countries": s.countries, "seizures": s.seizures.len(),
                "first_seen": s.first, "last_seen": s.last, "match_kinds": s.kinds,
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

    fn facts(rows: &[(&str, &str, u64)]) -> Vec<Fact> {
        rows.iter()
            .enumerate()
            .map(|(n, (country, calibre, rounds))| Fact {
                seizure: n as u32,
                origin: (*country).into(),
                seizing_country: (*country).into(),
                date: "2024-03-01".into(),
                quarter: "2024-Q1".into(),
                contexts: vec!["unknown".into()],
                route_segments: vec!["unknown".into()],
                shipment_method: "unknown".into(),
                concealment: vec!["unknown".into()],
                items: vec![ItemFact {
                    calibre: (*calibre).into(),
                    rounds: *rounds,
                    ..ItemFact::default()
                }],
                lots: Vec::new(),
            })
            .collect()
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
        assert_eq!(value(&t, &[("seizing_country", "XAA")]), Some(6));
        assert_eq!(value(&t, &[("seizing_country", "XBB")]), Some(5));
        assert_eq!(value(&t, &[("seizing_country", "XCC")]), None);
        assert_eq!(value(&t, &[("seizing_country", "XDD")]), None);
        assert_eq!(value(&t, &[]), Some(14), "the total is published");
        // Two primary cells, so the line needs no complement.
        assert_eq!(t.suppressed, 2);

        // With only XDD under k, the smallest other cell (XBB) is suppressed as complement.
        let rows: Vec<_> = rows.into_iter().filter(|r| r.0 != "XCC").collect();
        let t = table(&facts(&rows), &params(&[Dim::SeizingCountry], 5));
        assert_eq!(value(&t, &[("seizing_country", "XDD")]), None);
        assert_eq!(value(&t, &[("seizing_country", "XBB")]), None);
        assert_eq!(value(&t, &[("seizing_country", "XAA")]), Some(6));
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
        assert_eq!(value(&t, &[("seizing_country", "XAA")]), Some(560));
        assert_eq!(value(&t, &[("seizing_country", "XBB")]), Some(1007));
        assert_eq!(value(&t, &[("calibre", "7.62x39")]), Some(507));
        assert_eq!(value(&t, &[("calibre", "5.56x45")]), Some(1060));
        assert_eq!(value(&t, &[]), Some(1567));
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
            // And no published cell is under k.
            for c in t.cells.iter().chain(&t.totals) {
                if let Some(s) = c["seizures"].as_u64() {
                    proptest::prop_assert!(s as usize >= k || s == 0);
                }
            }
        }
    }
}
