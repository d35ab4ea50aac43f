//! Headstamp maker codes and (maker, year) readings (domain §2.1–2.2, §6.2 points 5–6).
//!
//! The table is `data/headstamp_codes_seed.csv`, embedded at compile time and parsed once
//! ([`MakerTable::embedded`]). It is a seed to verify, not an authority: every candidate
//! carries the row's confidence and notes.
//!
//! # Lookup ([`MakerTable::lookup`])
//!
//! A token is matched, upper-cased and without spaces, against the row's `code_key` (the Latin
//! or ASCII form: `PPU`, `27`), its `code_as_marked` (`ППУ`, `٢٧`) and the variant spellings the
//! notes list as `Also 'X', 'Y'` (`S+B`, `MKEK`, `TULA`). Rules:
//! - A row naming several countries (`RA`: `USA|NOR`; `21`: `POL|HUN|ROU`) gives one candidate
//!   per country, paired with the `— OR —` parts of the manufacturer when they line up, each
//!   one confidence step lower than the row: a shared code cannot be attributed firmly.
//! - A code marked in lower case (Czech letter codes such as `bxn`) is case-sensitive: the exact
//!   lower-case token keeps the row's confidence; an upper-case token (case folded away, so
//!   unverifiable) is one step lower; any other casing is [`Confidence::Low`].
//! - The `(none)` row (unmarked headstamps) has no code and is not a candidate; an unmarked or
//!   year-only headstamp shows up as readings without a maker.
//!
//! # Interpretation ([`MakerTable::interpret`])
//!
//! Every token that is a known code is a maker candidate; every 2- or 4-digit ASCII token is a
//! year candidate. Every assignment of at most one maker token and one *other* year token is
//! scored and returned, best first, with reasons (never a bare country: a reading always names
//! the maker code, or has no maker at all). Scoring:
//! - maker: row confidence (high 3, medium 2, low 1, unverified 0.5); year: 2;
//! - +0.5 when the maker token comes before the year token (the usual code-then-year order,
//!   e.g. Soviet code at 12 o'clock, year at 6; `LC 19`);
//! - −0.5 when the maker token is also year-like, or the year token is also a known code
//!   (`17 85`: 17 is Barnaul *or* 2017), and the reading's confidence drops one step;
//! - −1.5 for a year outside the maker's known production window, −0.5 for the second century
//!   of a 2-digit year;
//! - −0.25 for every token left unexplained.
//!
//! A reading's confidence starts from its maker candidate's (`low` for a year-only reading)
//! and drops one step for each doubt above (collision, alternative century, outside window).
//!
//! Two-digit years: with a known production window ([`PRODUCTION_WINDOWS`]) the centuries
//! (19xx, 20xx) that fall inside it are used; otherwise the pivot rule applies: a value above
//! the current year mod 100 is 19xx, anything else 20xx, and 19xx is kept as a lower-ranked
//! alternative (old stock exists). Future years are never produced. Four-digit years count from
//! 1870 to the current year. The rule used is stated in each reading's reasons.
//! [`MakerTable::interpret_at`] takes the current year explicitly, for reproducible results.
//!
//! Calendars other than Gregorian (Minguo, Solar Hijri, Buddhist Era) are not applied: no
//! maker in the seed table is known to use them; a future table column should say so per maker.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use super::Confidence;

const MAKER_CSV: &str = include_str!("../../data/headstamp_codes_seed.csv");

/// Approximate production windows (first year, last year if closed) for codes whose history is
/// well documented in collector references. They choose the century of a 2-digit year (a
/// century outside the window is not proposed while another fits) and rank 4-digit years; a
/// year no century of which fits is still returned, ranked low.
pub const PRODUCTION_WINDOWS: &[(&str, i32, Option<i32>)] = &[
    ("LC", 1941, None),
    ("TW", 1941, None),
    ("RG", 1940, None),
    ("FA", 1816, Some(1977)),
    ("DEN", 1941, Some(1945)),
    ("EC", 1942, Some(1945)),
    ("SL", 1941, Some(1945)),
];

/// Earliest 4-digit year read as a headstamp date.
const EARLIEST_YEAR: i32 = 1870;

/// One manufacturer a headstamp token may stand for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MakerCandidate {
    /// The table's code key (Latin/ASCII form): `PPU` for both `PPU` and `ППУ`.
    pub code: String,
    pub manufacturer: String,
    pub country_iso3: String,
    pub confidence: Confidence,
    pub note: Option<String>,
}

/// One plausible (maker, year) assignment of a headstamp's tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadstampReading {
    pub manufacturer_code: Option<String>,
    pub manufacturer: Option<String>,
    pub country_iso3: Option<String>,
    /// The year token as marked (`85`).
    pub year_marked: Option<String>,
    pub year_gregorian: Option<i32>,
    /// `maker_code+year`, `maker_code` or `year_only`.
    pub method: &'static str,
    pub confidence: Confidence,
    pub reasons: Vec<String>,
}

/// The embedded table could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum MakerTableError {
    #[error("maker table is not valid CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("maker table row {row}: {problem}")]
    Row { row: usize, problem: String },
}

#[derive(Deserialize)]
struct Row {
    code_as_marked: String,
    code_key: String,
    manufacturer: String,
    country_iso3: String,
    confidence: String,
    ambiguity_or_notes: String,
}

struct Entry {
    code: String,
    as_marked: String,
    manufacturer: String,
    country: String,
    confidence: Confidence,
    note: Option<String>,
    case_sensitive: bool,
}

/// The headstamp maker-code table with its lookup index.
pub struct MakerTable {
    entries: Vec<Entry>,
    /// Upper-cased spelling → entries.
    index: HashMap<String, Vec<usize>>,
}

static EMBEDDED: LazyLock<MakerTable> = LazyLock::new(|| {
    MakerTable::from_csv(MAKER_CSV)
        .expect("embedded data/headstamp_codes_seed.csv must parse (checked by unit test)")
});

fn parse_confidence(s: &str) -> Option<Confidence> {
    match s.trim().to_ascii_lowercase().as_str() {
        "confirmed" => Some(Confidence::Confirmed),
        "high" => Some(Confidence::High),
        "medium" => Some(Confidence::Medium),
        "low" => Some(Confidence::Low),
        "unverified" => Some(Confidence::Unverified),
        _ => None,
    }
}

/// One step less sure.
fn lower(c: Confidence) -> Confidence {
    match c {
        Confidence::Confirmed => Confidence::High,
        Confidence::High => Confidence::Medium,
        Confidence::Medium => Confidence::Low,
        Confidence::Low | Confidence::Unverified => Confidence::Unverified,
    }
}

fn rank(c: Confidence) -> u8 {
    match c {
        Confidence::Confirmed => 4,
        Confidence::High => 3,
        Confidence::Medium => 2,
        Confidence::Low => 1,
        Confidence::Unverified => 0,
    }
}

fn weight(c: Confidence) -> f32 {
    match c {
        Confidence::Confirmed => 4.0,
        Confidence::High => 3.0,
        Confidence::Medium => 2.0,
        Confidence::Low => 1.0,
        Confidence::Unverified => 0.5,
    }
}

/// Upper case, no whitespace, Arabic-Indic and Persian digits to ASCII.
fn key_of(token: &str) -> String {
    token
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '\u{0660}'..='\u{0669}' => char::from_digit(c as u32 - 0x0660, 10).unwrap_or(c),
            '\u{06F0}'..='\u{06F9}' => char::from_digit(c as u32 - 0x06F0, 10).unwrap_or(c),
            _ => c,
        })
        .flat_map(char::to_uppercase)
        .collect()
}

/// Quoted spellings after "Also" in a notes cell: `Also 'S & B', 'SB', 'S+B'`.
fn listed_variants(notes: &str) -> Vec<String> {
    let Some(pos) = notes.find("Also") else {
        return Vec::new();
    };
    notes[pos..]
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(key_of)
        .filter(|v| !v.is_empty())
        .collect()
}

impl MakerTable {
    /// The table embedded from `data/headstamp_codes_seed.csv`, parsed on first use.
    pub fn embedded() -> &'static MakerTable {
        &EMBEDDED
    }

    /// Parses a table with the columns of `headstamp_codes_seed.csv`.
    pub fn from_csv(text: &str) -> Result<MakerTable, MakerTableError> {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut table = MakerTable {
            entries: Vec::new(),
            index: HashMap::new(),
        };
        for (i, row) in reader.deserialize::<Row>().enumerate() {
            let row = row?;
            let line = i + 2;
            let code = key_of(&row.code_key);
            if code.is_empty() {
                continue; // the "(none)" row: unmarked headstamps
            }
            let confidence =
                parse_confidence(&row.confidence).ok_or_else(|| MakerTableError::Row {
                    row: line,
                    problem: format!("unknown confidence {:?}", row.confidence),
                })?;
            let countries: Vec<&str> = row
                .country_iso3
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            if countries.is_empty() {
                return Err(MakerTableError::Row {
                    row: line,
                    problem: "no country".into(),
                });
            }
            let makers: Vec<&str> = row.manufacturer.split("— OR —").map(str::trim).collect();
            let shared = countries.len() > 1;
            let notes = row.ambiguity_or_notes.trim();
            let note = (!notes.is_empty()).then(|| notes.to_owned());
            let as_marked = row.code_as_marked.trim().to_owned();
            let case_sensitive = as_marked.chars().any(char::is_lowercase);
            let mut spellings = vec![code.clone(), key_of(&as_marked)];
            spellings.extend(listed_variants(notes));
            for (k, country) in countries.iter().enumerate() {
                let manufacturer = if makers.len() == countries.len() {
                    makers[k]
                } else {
                    row.manufacturer.trim()
                };
                let idx = table.entries.len();
                table.entries.push(Entry {
                    code: code.clone(),
                    as_marked: as_marked.clone(),
                    manufacturer: manufacturer.to_owned(),
                    country: (*country).to_owned(),
                    confidence: if shared {
                        lower(confidence)
                    } else {
                        confidence
                    },
                    note: note.clone(),
                    case_sensitive,
                });
                for s in &spellings {
                    let list = table.index.entry(s.clone()).or_default();
                    if !list.contains(&idx) {
                        list.push(idx);
                    }
                }
            }
        }
        Ok(table)
    }

    /// Candidates for one headstamp token (ideally already folded: upper case, Cyrillic
    /// homoglyphs to Latin, Arabic-Indic digits to ASCII; raw forms such as `ППУ` also work).
    /// Best first; empty when the token is no known code.
    pub fn lookup(&self, token: &str) -> Vec<MakerCandidate> {
        let trimmed = token.trim();
        let key = key_of(trimmed);
        let Some(list) = self.index.get(&key) else {
            return Vec::new();
        };
        let mut out: Vec<MakerCandidate> = Vec::new();
        for &i in list {
            let e = &self.entries[i];
            let mut confidence = e.confidence;
            let mut remarks: Vec<String> = e.note.iter().cloned().collect();
            if e.case_sensitive && trimmed != e.as_marked {
                if trimmed.chars().any(char::is_lowercase) {
                    confidence = Confidence::Low;
                    remarks.push(format!(
                        "case-sensitive code marked '{}'; token case differs",
                        e.as_marked
                    ));
                } else {
                    confidence = lower(confidence);
                    remarks.push(format!(
                        "case-sensitive code marked '{}'; case not verifiable",
                        e.as_marked
                    ));
                }
            }
            let candidate = MakerCandidate {
                code: e.code.clone(),
                manufacturer: e.manufacturer.clone(),
                country_iso3: e.country.clone(),
                confidence,
                note: (!remarks.is_empty()).then(|| remarks.join("; ")),
            };
            // Script variants of one maker (PPU / ППУ) are one candidate.
            match out.iter_mut().find(|c| {
                c.code == candidate.code
                    && c.manufacturer == candidate.manufacturer
                    && c.country_iso3 == candidate.country_iso3
            }) {
                Some(existing) if rank(candidate.confidence) > rank(existing.confidence) => {
                    *existing = candidate
                }
                Some(_) => {}
                None => out.push(candidate),
            }
        }
        out.sort_by(|a, b| {
            rank(b.confidence)
                .cmp(&rank(a.confidence))
                .then_with(|| a.country_iso3.cmp(&b.country_iso3))
        });
        out
    }

    /// All plausible (maker, year) assignments of the tokens, best first (see the module
    /// documentation). Empty when no token is a known code or year-like.
    pub fn interpret(&self, tokens: &[String]) -> Vec<HeadstampReading> {
        self.interpret_at(tokens, current_year())
    }

    /// [`MakerTable::interpret`] with an explicit current year.
    pub fn interpret_at(&self, tokens: &[String], current_year: i32) -> Vec<HeadstampReading> {
        let text: Vec<&str> = tokens
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect();
        let facts = TokenFacts {
            significant: text
                .iter()
                .map(|t| t.chars().any(char::is_alphanumeric))
                .collect(),
            makers: text.iter().map(|t| self.lookup(t)).collect(),
            year_like: text.iter().map(|t| year_digits(t).is_some()).collect(),
            text,
        };

        let mut scored: Vec<(f32, HeadstampReading)> = Vec::new();
        let maker_options = std::iter::once(None).chain(
            facts
                .makers
                .iter()
                .enumerate()
                .flat_map(|(i, cs)| cs.iter().map(move |c| Some((i, c)))),
        );
        for maker in maker_options {
            let window = maker.and_then(|(_, c)| window_of(&c.code));
            let year_options = std::iter::once(None).chain(
                facts
                    .text
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| maker.is_none_or(|(i, _)| i != *j))
                    .flat_map(|(j, t)| {
                        years_for(t, window, current_year)
                            .into_iter()
                            .map(move |y| Some((j, y)))
                    }),
            );
            for year in year_options {
                if maker.is_none() && year.is_none() {
                    continue;
                }
                scored.push(reading(&facts, maker, year));
            }
        }
        scored.sort_by(|(sa, a), (sb, b)| {
            sb.total_cmp(sa)
                .then_with(|| a.manufacturer_code.cmp(&b.manufacturer_code))
                .then_with(|| a.country_iso3.cmp(&b.country_iso3))
                .then_with(|| a.year_gregorian.cmp(&b.year_gregorian))
        });
        let mut out: Vec<HeadstampReading> = Vec::new();
        for (_, r) in scored {
            let duplicate = out.iter().any(|o| {
                o.manufacturer_code == r.manufacturer_code
                    && o.manufacturer == r.manufacturer
                    && o.country_iso3 == r.country_iso3
                    && o.year_gregorian == r.year_gregorian
            });
            if !duplicate {
                out.push(r);
            }
        }
        out
    }
}

/// What each token can be: its text, whether it carries a character, its maker candidates,
/// and whether it is year-like.
struct TokenFacts<'a> {
    text: Vec<&'a str>,
    significant: Vec<bool>,
    makers: Vec<Vec<MakerCandidate>>,
    year_like: Vec<bool>,
}

/// Scores one assignment and explains it.
fn reading(
    facts: &TokenFacts<'_>,
    maker: Option<(usize, &MakerCandidate)>,
    year: Option<(usize, YearOption)>,
) -> (f32, HeadstampReading) {
    let tokens = &facts.text;
    let mut score = 0.0_f32;
    let mut reasons = Vec::new();
    let mut confidence = Confidence::Low;
    if let Some((i, c)) = maker {
        score += weight(c.confidence);
        confidence = c.confidence;
        reasons.push(format!(
            "'{}' is maker code {}: {}, {} (table confidence {})",
            tokens[i],
            c.code,
            c.manufacturer,
            c.country_iso3,
            confidence_word(c.confidence)
        ));
        if let Some(note) = &c.note {
            reasons.push(format!("table note for {}: {note}", c.code));
        }
        if facts.year_like[i] {
            score -= 0.5;
            confidence = lower(confidence);
            reasons.push(format!(
                "'{}' is also year-like; read here as a maker code",
                tokens[i]
            ));
        }
    }
    if let Some((j, y)) = &year {
        score += 2.0 - y.penalty;
        reasons.push(y.reason.clone());
        if maker.is_none() {
            reasons.push(
                "no maker code read: year-only reading (unmarked or unknown maker)".to_owned(),
            );
        }
        if y.penalty > 0.0 {
            confidence = lower(confidence);
        }
        if let Some(c) = facts.makers[*j].first() {
            score -= 0.5;
            confidence = lower(confidence);
            reasons.push(format!(
                "'{}' is also maker code {} ({}); read here as a year",
                tokens[*j], c.code, c.manufacturer
            ));
        }
    }
    if let (Some((i, _)), Some((j, _))) = (maker, &year)
        && i < *j
    {
        score += 0.5;
        reasons.push("maker code before year (the usual code-then-year order)".to_owned());
    }
    let used = |k: usize| {
        maker.is_some_and(|(i, _)| i == k) || year.as_ref().is_some_and(|(j, _)| *j == k)
    };
    for (k, t) in tokens.iter().enumerate() {
        if facts.significant[k] && !used(k) {
            score -= 0.25;
            reasons.push(format!("token '{t}' not explained by this reading"));
        }
    }
    let method = match (maker.is_some(), year.is_some()) {
        (true, true) => "maker_code+year",
        (true, false) => "maker_code",
        _ => "year_only",
    };
    let reading = HeadstampReading {
        manufacturer_code: maker.map(|(_, c)| c.code.clone()),
        manufacturer: maker.map(|(_, c)| c.manufacturer.clone()),
        country_iso3: maker.map(|(_, c)| c.country_iso3.clone()),
        year_marked: year.as_ref().map(|(j, _)| tokens[*j].to_owned()),
        year_gregorian: year.as_ref().map(|(_, y)| y.year),
        method,
        confidence,
        reasons,
    };
    (score, reading)
}

fn confidence_word(c: Confidence) -> &'static str {
    match c {
        Confidence::Confirmed => "confirmed",
        Confidence::High => "high",
        Confidence::Medium => "medium",
        Confidence::Low => "low",
        Confidence::Unverified => "unverified",
    }
}

fn window_of(code: &str) -> Option<(i32, Option<i32>)> {
    PRODUCTION_WINDOWS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|&(_, from, to)| (from, to))
}

/// The ASCII digits of a 2- or 4-digit year-like token (Arabic-Indic digits folded).
fn year_digits(token: &str) -> Option<String> {
    let key = key_of(token);
    (matches!(key.len(), 2 | 4) && key.bytes().all(|b| b.is_ascii_digit())).then_some(key)
}

#[derive(Debug, Clone)]
struct YearOption {
    year: i32,
    penalty: f32,
    reason: String,
}

fn in_window(year: i32, window: (i32, Option<i32>)) -> bool {
    year >= window.0 && window.1.is_none_or(|end| year <= end)
}

fn window_text(w: (i32, Option<i32>)) -> String {
    match w.1 {
        Some(end) => format!("{}–{end}", w.0),
        None => format!("{}–present", w.0),
    }
}

/// The Gregorian years a token may mark, best first.
fn years_for(
    token: &str,
    window: Option<(i32, Option<i32>)>,
    current_year: i32,
) -> Vec<YearOption> {
    let Some(digits) = year_digits(token) else {
        return Vec::new();
    };
    let Ok(n) = digits.parse::<i32>() else {
        return Vec::new();
    };
    if digits.len() == 4 {
        if !(EARLIEST_YEAR..=current_year).contains(&n) {
            return Vec::new();
        }
        return vec![match window {
            Some(w) if !in_window(n, w) => YearOption {
                year: n,
                penalty: 1.5,
                reason: format!(
                    "'{token}' read as the year {n}, outside the production window {}",
                    window_text(w)
                ),
            },
            _ => YearOption {
                year: n,
                penalty: 0.0,
                reason: format!("'{token}' read as the year {n}"),
            },
        }];
    }
    let pivot = current_year.rem_euclid(100);
    if let Some(w) = window {
        let inside: Vec<i32> = [2000 + n, 1900 + n]
            .into_iter()
            .filter(|y| *y <= current_year && in_window(*y, w))
            .collect();
        if !inside.is_empty() {
            let many = inside.len() > 1;
            return inside
                .iter()
                .enumerate()
                .map(|(k, &y)| YearOption {
                    year: y,
                    penalty: if k == 0 { 0.0 } else { 0.5 },
                    reason: if many {
                        format!(
                            "2-digit year '{token}' → {y}: both centuries fall in the production window {}; the later ranks first",
                            window_text(w)
                        )
                    } else {
                        format!(
                            "2-digit year '{token}' → {y}: the only century in the production window {}",
                            window_text(w)
                        )
                    },
                })
                .collect();
        }
        let y = pivot_year(n, current_year);
        return vec![YearOption {
            year: y,
            penalty: 1.5,
            reason: format!(
                "2-digit year '{token}' → {y} by the pivot rule, but outside the production window {}",
                window_text(w)
            ),
        }];
    }
    let y = pivot_year(n, current_year);
    let (sign, century) = if n > pivot {
        (">", "19xx")
    } else {
        ("≤", "20xx")
    };
    let mut out = vec![YearOption {
        year: y,
        penalty: 0.0,
        reason: format!(
            "2-digit year '{token}' → {y}: {n} {sign} {pivot} (current year mod 100), so {century}"
        ),
    }];
    if y - 100 >= 1900 {
        out.push(YearOption {
            year: y - 100,
            penalty: 0.5,
            reason: format!(
                "2-digit year '{token}' → {}: alternative century (older stock)",
                y - 100
            ),
        });
    }
    out
}

/// The latest year not after `current_year` that ends in the two digits `n` (for a current
/// year in 2000–2099: `n` > current year mod 100 → 19xx, otherwise 20xx).
fn pivot_year(n: i32, current_year: i32) -> i32 {
    current_year - (current_year - n).rem_euclid(100)
}

/// The current Gregorian year from the system clock (UTC).
fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    year_from_days(days)
}

/// Civil year of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn year_from_days(days: i64) -> i32 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    i32::try_from(year).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> &'static MakerTable {
        MakerTable::embedded()
    }

    fn toks(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    fn top(t: &[&str]) -> HeadstampReading {
        table()
            .interpret_at(&toks(t), 2025)
            .into_iter()
            .next()
            .expect("at least one reading")
    }

    #[test]
    fn embedded_table_parses() {
        let t = MakerTable::from_csv(MAKER_CSV).expect("embedded table parses");
        // 58 coded rows (the "(none)" row has no code); RA adds one entry, `21` two.
        assert_eq!(t.entries.len(), 58 + 1 + 2);
    }

    #[test]
    fn lookup_known_codes() {
        let lc = table().lookup("LC");
        assert_eq!(lc.len(), 1);
        assert_eq!(lc[0].country_iso3, "USA");
        assert_eq!(lc[0].confidence, Confidence::High);
        assert_eq!(table().lookup("lc"), lc);
        assert_eq!(table().lookup(" L C "), lc);

        for raw in ["PPU", "ППУ"] {
            let c = table().lookup(raw);
            assert_eq!(c.len(), 1, "{raw}");
            assert_eq!(c[0].code, "PPU");
            assert_eq!(c[0].country_iso3, "SRB");
        }
        assert_eq!(table().lookup("٢٧")[0].code, "27");
        assert_eq!(table().lookup("27")[0].country_iso3, "EGY");
        assert_eq!(table().lookup("S+B")[0].code, "S&B");
        assert_eq!(table().lookup("MKEK")[0].code, "MKE");
        assert!(table().lookup("XYZ").is_empty());
        assert!(table().lookup("").is_empty());
    }

    #[test]
    fn shared_codes_give_one_candidate_per_country() {
        let ra = table().lookup("RA");
        let countries: Vec<&str> = ra.iter().map(|c| c.country_iso3.as_str()).collect();
        assert_eq!(countries, ["NOR", "USA"]);
        assert!(ra.iter().all(|c| c.confidence == Confidence::Medium));
        assert!(ra.iter().any(|c| c.manufacturer.starts_with("Raufoss")));
        assert!(ra.iter().any(|c| c.manufacturer.starts_with("Remington")));
        assert_eq!(table().lookup("21").len(), 3);
    }

    #[test]
    fn case_sensitive_codes() {
        let exact = table().lookup("bxn");
        assert_eq!(exact[0].confidence, Confidence::Medium);
        let folded = table().lookup("BXN");
        assert_eq!(folded[0].confidence, Confidence::Low);
        assert!(
            folded[0]
                .note
                .as_deref()
                .is_some_and(|n| n.contains("case not verifiable"))
        );
        assert_eq!(table().lookup("Bxn")[0].confidence, Confidence::Low);
    }

    #[test]
    fn interprets_code_and_year() {
        let cases: &[(&[&str], &str, i32)] = &[
            (&["539", "85"], "539", 1985),
            (&["85", "539"], "539", 1985),
            (&["LC", "19"], "LC", 2019),
            (&["PPU", "24"], "PPU", 2024),
            (&["ППУ", "24"], "PPU", 2024),
            (&["17", "85"], "17", 1985),
            (&["10", "75"], "10", 1975),
            (&["FA", "52"], "FA", 1952),
            (&["FA", "05"], "FA", 1905),
            (&["WCC", "1944"], "WCC", 1944),
            (&["٢٧", "٨٠"], "27", 1980),
        ];
        for (tokens, code, year) in cases {
            let r = top(tokens);
            assert_eq!(
                r.manufacturer_code.as_deref(),
                Some(*code),
                "{tokens:?}: {r:?}"
            );
            assert_eq!(r.year_gregorian, Some(*year), "{tokens:?}: {r:?}");
            assert_eq!(r.method, "maker_code+year");
            assert!(!r.reasons.is_empty());
        }
        assert_eq!(top(&["539", "85"]).confidence, Confidence::High);
        assert_eq!(top(&["17", "85"]).confidence, Confidence::Low);
        assert_eq!(top(&["٢٧", "٨٠"]).year_marked.as_deref(), Some("٨٠"));
    }

    #[test]
    fn collisions_keep_every_assignment() {
        let all = table().interpret_at(&toks(&["10", "75"]), 2025);
        assert!(
            all.iter()
                .any(|r| r.manufacturer_code.is_none() && r.year_gregorian == Some(2010))
        );
        assert!(
            all.iter()
                .any(|r| r.manufacturer_code.is_none() && r.year_gregorian == Some(1975))
        );
        let both = table().interpret_at(&toks(&["71", "61"]), 2025);
        assert_eq!(both[0].manufacturer_code.as_deref(), Some("71"));
        assert_eq!(both[0].year_gregorian, Some(1961));
        assert!(both.iter().any(|r| {
            r.manufacturer_code.as_deref() == Some("61") && r.year_gregorian == Some(1971)
        }));
        let ra = table().interpret_at(&toks(&["RA", "67"]), 2025);
        let countries: Vec<_> = ra
            .iter()
            .take(2)
            .filter_map(|r| r.country_iso3.as_deref())
            .collect();
        assert_eq!(countries, ["NOR", "USA"]);
    }

    #[test]
    fn unknown_makers_give_year_only_readings() {
        let r = top(&["XYZ", "87"]);
        assert_eq!(r.manufacturer_code, None);
        assert_eq!(r.year_gregorian, Some(1987));
        assert_eq!(r.method, "year_only");
        assert_eq!(r.confidence, Confidence::Low);
        let r = top(&["QQ", "12"]);
        assert_eq!(r.year_gregorian, Some(2012));
        assert!(table().interpret_at(&toks(&["QQ", "ABC"]), 2025).is_empty());
        assert!(table().interpret_at(&[], 2025).is_empty());
        // No future years.
        assert!(table().interpret_at(&toks(&["2099"]), 2025).is_empty());
    }

    #[test]
    fn pivot_rule() {
        assert_eq!(pivot_year(85, 2025), 1985);
        assert_eq!(pivot_year(19, 2025), 2019);
        assert_eq!(pivot_year(25, 2025), 2025);
        assert_eq!(pivot_year(26, 2025), 1926);
        // Found by proptest: no reading may lie in the future, whatever the clock says.
        let r = table().interpret_at(&toks(&["00"]), 1900);
        assert_eq!(r[0].year_gregorian, Some(1900));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn interpret_uses_the_clock() {
        let r = table().interpret(&toks(&["LC", "19"]));
        assert_eq!(r[0].year_gregorian, Some(2019));
        assert!(current_year() >= 2024);
        assert_eq!(year_from_days(0), 1970);
        assert_eq!(year_from_days(19_723), 2024); // 2024-01-01
        assert_eq!(year_from_days(19_722), 2023);
    }

    #[test]
    fn serialises_readings() {
        let r = top(&["LC", "19"]);
        let json = serde_json::to_value(&r).expect("serialises");
        assert_eq!(json["manufacturer_code"], "LC");
        assert_eq!(json["year_gregorian"], 2019);
        assert_eq!(json["confidence"], "high");
    }

    proptest! {
        #[test]
        fn interpret_is_total(
            tokens in proptest::collection::vec("\\PC{0,6}", 0..5),
            year in 1900i32..2200,
        ) {
            let a = table().interpret_at(&tokens, year);
            prop_assert_eq!(&a, &table().interpret_at(&tokens, year));
            for r in &a {
                prop_assert!(r.manufacturer_code.is_some() || r.year_gregorian.is_some());
                prop_assert!(r.year_gregorian.is_none_or(|y| y <= year));
            }
        }
    }
}
