//! Matching: turns an investigator's question into candidates and ranks them (design §5,
//! `docs/matching.md`).
//!
//! Candidates come from the index by any of: the lot key, its confusable skeleton, a wildcard
//! pattern, or a fuzzy skeleton (edit distance 1, 2 for long lots); by headstamp tokens; by
//! calibre. Each candidate is then scored here, in this order of lot match kinds:
//! `exact` (same folded text, or same identity key) > `folded` (same key once labels,
//! separators, case and scripts are folded) > `confusable` (same skeleton: O/0, I/1, S/5…) >
//! `wildcard` (`?`, `*`) > `fuzzy` (a dropped, added or swapped character, confined to the same
//! calibre family). Headstamp agreement (tokens in any order, rotated reading) and calibre
//! agreement raise the score; disagreement lowers it. Sibling lots (one digit apart in the lot
//! number, same maker, year and interfix as far as the lot and the headstamp tell) are a
//! separate query, [`SearchParams::siblings`].

use serde::{Deserialize, Serialize};

use crate::index::{Candidate, CandidateQuery};
use crate::normalise::calibre::{CalibreMatch, CalibreTable};
use crate::normalise::maker::MakerTable;
use crate::normalise::{fold, headstamp, lot};
use crate::record::{FieldError, date_key};

/// The parameters of `GET /api/v1/search` and `ammotrace search`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    pub lot: Option<String>,
    pub headstamp: Option<String>,
    pub calibre: Option<String>,
    /// Free text: tried as a lot and as headstamp tokens.
    pub q: Option<String>,
    pub country: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub category: Option<String>,
    pub limit: Option<usize>,
    /// Sibling-lot query: lots of the same maker and year one character apart.
    #[serde(default)]
    pub siblings: bool,
    /// Offer related-not-identical calibres (5.56 NATO ~ .223 Rem) as agreeing.
    #[serde(default)]
    pub include_related: bool,
    /// Wait until the index has committed this change sequence number (at most 10 s).
    pub min_seq: Option<u64>,
    /// `local` (default) or `federated`: also ask every partner, under a deadline.
    pub scope: Option<String>,
    /// Why this search is made; required for federated scope, sent to partners and audited.
    pub purpose: Option<String>,
    /// The case it serves; required for federated scope.
    pub case_ref: Option<String>,
}

/// How a hit matched.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MatchInfo {
    pub kind: &'static str,
    pub score: f64,
    /// Lot match kind, if the query gave a lot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lot: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headstamp: Option<headstamp::HeadstampMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibre: Option<&'static str>,
    /// True when the lot matched only on its text (maker or year unknown): a weak key.
    pub weak_key: bool,
}

/// A ranked candidate.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub candidate: Candidate,
    pub matched: MatchInfo,
}

/// A query prepared for the index and the ranker.
#[derive(Debug)]
pub struct Plan {
    pub candidates: CandidateQuery,
    lot: Option<lot::LotNorm>,
    headstamp: Vec<String>,
    calibres: Vec<String>,
    families: Vec<String>,
    related: Vec<String>,
    /// The queried lot's identity key (`maker|YYYY|lot`), when the query's headstamp reads as a
    /// maker and a year: it finds the same lot however its number was written (the factory
    /// left out or put first, the year in four digits).
    identity: Option<String>,
    /// A sibling-lot query, with the maker and year its headstamp reads as (when it has one).
    siblings: Option<SiblingOf>,
    limit: usize,
}

/// What sibling lots must share with the queried lot besides their text: the maker and year
/// read from the query's headstamp. The lot's own fixed parts (maker, year, interfix,
/// factory, when its grammar is known) are compared on the lot itself.
#[derive(Debug, Default)]
struct SiblingOf {
    maker: Option<String>,
    year: Option<i64>,
}

/// A regular expression over index terms for a (skeleton) text: `?` is any one character, `*`
/// any run, and every other character also matches a stored `?` (a worn character there).
fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '?' => out.push('.'),
            '*' => out.push_str(".*"),
            c if c.is_alphanumeric() => {
                out.push('[');
                out.push(c);
                out.push_str("?]");
            }
            // ASCII punctuation may be special: escaped. Anything else (`★`, `€`) is literal
            // inside a class, and escaping it would be a syntax error.
            c if c.is_ascii() => {
                out.push_str("[\\");
                out.push(c);
                out.push_str("?]");
            }
            c => {
                out.push('[');
                out.push(c);
                out.push_str("?]");
            }
        }
    }
    out
}

impl Plan {
    /// Most hits the query asked for.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The longest text a search parameter may carry, in characters. Real lots, headstamps and
/// calibres are tens of characters; the limit keeps the fuzzy, wildcard and sibling automata
/// (whose size grows with the text) small whatever a caller sends.
pub const MAX_TEXT_CHARS: usize = 200;

/// Validates the parameters and builds the plan.
pub fn plan(
    params: &SearchParams,
    default_limit: usize,
    max_limit: usize,
) -> Result<Plan, Vec<FieldError>> {
    let mut errors = Vec::new();
    let texts = [
        ("lot", &params.lot),
        ("headstamp", &params.headstamp),
        ("calibre", &params.calibre),
        ("q", &params.q),
        ("country", &params.country),
        ("from", &params.from),
        ("to", &params.to),
        ("category", &params.category),
    ];
    for (name, value) in texts {
        if value
            .as_deref()
            .is_some_and(|v| v.chars().nth(MAX_TEXT_CHARS).is_some())
        {
            errors.push(FieldError::new(
                format!("/{name}"),
                format!("at most {MAX_TEXT_CHARS} characters"),
            ));
        }
    }
    if !errors.is_empty() {
        // Nothing else is looked at: the text is not even normalised.
        return Err(errors);
    }
    let limit = params.limit.unwrap_or(default_limit);
    if limit == 0 || limit > max_limit {
        errors.push(FieldError::new(
            "/limit",
            format!("limit must be between 1 and {max_limit}"),
        ));
    }
    let from = params.from.as_deref().map(|d| (d, date_key(d, false)));
    let to = params.to.as_deref().map(|d| (d, date_key(d, true)));
    for (name, bound) in [("from", from), ("to", to)] {
        if let Some((text, None)) = bound {
            errors.push(FieldError::new(
                format!("/{name}"),
                format!("{text:?} is not YYYY, YYYY-MM or YYYY-MM-DD"),
            ));
        }
    }
    if let (Some((_, Some(from))), Some((_, Some(to)))) = (from, to)
        && from > to
    {
        errors.push(FieldError::new("/to", "to is before from"));
    }
    if let Some(c) = &params.country
        && !crate::record::country::is_valid(c)
    {
        errors.push(FieldError::new(
            "/country",
            format!("{c:?} is not an ISO 3166-1 alpha-3 code"),
        ));
    }
    let lot_text = params
        .lot
        .as_deref()
        .or(params.q.as_deref())
        .filter(|t| !t.trim().is_empty());
    let lot = lot_text.map(lot::normalise).filter(|l| !l.is_empty());
    if let (Some(text), None) = (params.lot.as_deref(), &lot)
        && !text.trim().is_empty()
    {
        errors.push(FieldError::new(
            "/lot",
            format!(
                "{text:?} leaves no character to match: a lot needs at least one besides ? and *"
            ),
        ));
    }
    if params
        .category
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        errors.push(FieldError::new(
            "/category",
            "empty: leave it out to search every category",
        ));
    }
    let hs_text = params.headstamp.as_deref().or(params.q.as_deref());
    let headstamp = hs_text
        .map(|t| headstamp::tokenise(t).0)
        .unwrap_or_default();
    let calibre = params.calibre.as_deref().filter(|t| !t.trim().is_empty());
    if lot.is_none()
        && headstamp.is_empty()
        && calibre.is_none()
        && params.category.is_none()
        && params.country.is_none()
    {
        errors.push(FieldError::new(
            "",
            "give at least one of lot, headstamp, calibre, q, category or country",
        ));
    }
    if params.siblings && lot.as_ref().is_none_or(|l| l.wildcard) {
        errors.push(FieldError::new(
            "/lot",
            "a sibling-lot query needs a lot without wildcards",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let table = CalibreTable::embedded();
    let (calibres, families) = match calibre.map(|c| table.resolve(c)) {
        Some(r) if r.match_kind != CalibreMatch::Unresolved => {
            (r.candidates.clone(), r.families.clone())
        }
        _ => (Vec::new(), Vec::new()),
    };
    let related: Vec<String> = if params.include_related {
        calibres
            .iter()
            .flat_map(|c| table.related(c).iter().cloned())
            .collect()
    } else {
        Vec::new()
    };

    let mut cq = CandidateQuery {
        category: params.category.clone(),
        country: params.country.clone(),
        date_from: from.and_then(|(_, k)| k),
        date_to: to.and_then(|(_, k)| k),
        // Enough candidates for the ranker to reorder; the index's order is only a first cut.
        limit: (limit * 3).clamp(30, 600),
        ..CandidateQuery::default()
    };
    if let Some(l) = &lot {
        if params.siblings {
            cq.lot_regex = Some(sibling_pattern(&l.key));
        } else if l.wildcard {
            cq.lot_regex = Some(regex_escape(&l.skeleton));
        } else {
            cq.lot_key = Some(l.key.clone());
            cq.lot_skeleton = Some(l.skeleton.clone());
            // Stored lots with worn characters (`8-7?`) match a complete query.
            cq.lot_worn_regex = Some(regex_escape(&l.skeleton));
            let len = l.skeleton.chars().count();
            if len >= 4 {
                cq.lot_fuzzy = Some((l.skeleton.clone(), if len >= 12 { 2 } else { 1 }));
            }
        }
    }
    for token in &headstamp {
        let skel = fold::skeleton(token);
        if token.contains(['?', '*']) {
            cq.headstamp_regexes.push(regex_escape(&skel));
        } else {
            cq.headstamp_skeletons.push(skel.clone());
            if let Some(rotated) = headstamp::rotate_token(token) {
                cq.headstamp_skeletons.push(fold::skeleton(&rotated));
            }
        }
    }
    cq.calibres = calibres.iter().chain(related.iter()).cloned().collect();
    cq.families = families.clone();
    cq.lot_or_headstamp = params.q.is_some()
        && params.lot.is_none()
        && params.headstamp.is_none()
        && !params.siblings;
    let reading = (!headstamp.is_empty())
        .then(|| {
            MakerTable::embedded()
                .interpret(&headstamp)
                .into_iter()
                .next()
        })
        .flatten();
    let identity = lot.as_ref().filter(|_| !params.siblings).and_then(|l| {
        lot::identity_key(
            l,
            reading
                .as_ref()
                .and_then(|r| r.manufacturer_code.as_deref()),
            reading.as_ref().and_then(|r| r.year_gregorian),
        )
    });
    cq.lot_identity = identity.clone();
    let siblings = params.siblings.then(|| SiblingOf {
        maker: reading.as_ref().and_then(|r| r.manufacturer_code.clone()),
        year: reading
            .as_ref()
            .and_then(|r| r.year_gregorian)
            .map(i64::from),
    });
    Ok(Plan {
        candidates: cq,
        lot,
        headstamp,
        calibres,
        families,
        related,
        identity,
        siblings,
        limit,
    })
}

/// Lots one character away from `key` at a digit position, same length: `(?:.123|1.23|…)` over
/// skeletons, with the digit replaced by any digit class.
fn sibling_pattern(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut alternatives = Vec::new();
    for i in 0..chars.len() {
        if chars[i].is_ascii_digit() {
            let prefix: String = fold::skeleton(&chars[..i].iter().collect::<String>());
            let suffix: String = fold::skeleton(&chars[i + 1..].iter().collect::<String>());
            alternatives.push(format!(
                "{}[0-9]{}",
                regex_escape(&prefix),
                regex_escape(&suffix)
            ));
        }
    }
    if alternatives.is_empty() {
        return regex_escape(&fold::skeleton(key));
    }
    format!("(?:{})", alternatives.join("|"))
}

fn lot_match(
    query: &lot::LotNorm,
    identity: Option<&str>,
    c: &Candidate,
) -> Option<(&'static str, f32)> {
    if c.lot_key.is_empty() {
        return None;
    }
    // The same maker, year and lot number, however the number was written (the factory left
    // out, the year in four digits), when a lot grammar read the number on both sides and no
    // part disagrees (a factory left out counts as the headstamp's maker).
    if let Some(identity) = identity.filter(|i| *i == c.lot_identity)
        && query.folded != c.lot_folded
        && query.components.contains_key("lot")
    {
        let candidate = lot::normalise(&c.lot_folded);
        let maker = identity.split('|').next().unwrap_or_default();
        if candidate.components.contains_key("lot") && parts_agree(query, &candidate, maker) {
            return Some(("exact", 0.98));
        }
    }
    if query.wildcard || c.lot_key.contains('?') {
        let cand = fold::skeleton(&c.lot_key);
        if headstamp::wildcard_match(&query.skeleton, &cand) {
            return Some(("wildcard", 0.82));
        }
        if query.wildcard {
            return None;
        }
    }
    if query.folded == c.lot_folded {
        return Some(("exact", 1.0));
    }
    if query.key == c.lot_key {
        return Some(("folded", 0.96));
    }
    let d = fold::weighted_distance(&query.key, &c.lot_key);
    let candidate_skeleton = fold::skeleton(&c.lot_key);
    if query.skeleton == candidate_skeleton {
        return Some(("confusable", 0.92 - 0.05 * d.min(1.0)));
    }
    // Edits are counted on skeletons (a confusion is not an edit) and ranked by the weighted
    // distance on keys.
    let edits = fold::weighted_distance(&query.skeleton, &candidate_skeleton);
    let len = query.key.chars().count().max(c.lot_key.chars().count());
    let max = if len >= 12 {
        2.0
    } else if len >= 4 {
        1.0
    } else {
        0.0
    };
    (edits <= max).then_some(("fuzzy", 0.72 - 0.12 * d.min(2.0)))
}

/// True when no part that both lots' grammars give (lot number, year, factory…) differs; a
/// year in two and in four digits agrees on its last two; a factory one side leaves out is
/// taken to be `maker`, the maker both headstamps read as.
fn parts_agree(a: &lot::LotNorm, b: &lot::LotNorm, maker: &str) -> bool {
    fn factory(l: &lot::LotNorm) -> Option<&str> {
        l.components.get("factory").map(String::as_str)
    }
    match (factory(a), factory(b)) {
        (Some(f), None) | (None, Some(f)) if f != maker => return false,
        _ => {}
    }
    a.components
        .iter()
        .all(|(part, x)| match b.components.get(part) {
            None => true,
            Some(y) if *part == "year" => {
                let last2 = |s: &str| s.get(s.len().saturating_sub(2)..).unwrap_or(s).to_owned();
                last2(x) == last2(y)
            }
            Some(y) => x == y,
        })
}

fn calibre_agreement(plan: &Plan, c: &Candidate) -> (Option<&'static str>, f32) {
    if plan.calibres.is_empty() || c.calibres.is_empty() {
        return (None, 0.0);
    }
    let same = c.calibres.iter().any(|x| plan.calibres.contains(x));
    if same {
        let single = plan.calibres.len() == 1 && c.calibres.len() == 1;
        return (
            Some(if single { "same" } else { "candidate" }),
            if single { 0.08 } else { 0.05 },
        );
    }
    if c.calibres.iter().any(|x| plan.related.contains(x)) {
        return (Some("related"), 0.02);
    }
    if c.families.iter().any(|f| plan.families.contains(f)) {
        return (Some("same_family"), -0.08);
    }
    (Some("different"), -0.25)
}

const HEADSTAMP_AGREE: f32 = 0.25;
const HEADSTAMP_DISAGREE: f32 = 0.15;
const CALIBRE_SAME: f32 = 0.08;
const MAX_RAW_SCORE: f32 = 1.0 + HEADSTAMP_AGREE + CALIBRE_SAME;

/// Scores and orders the candidates; drops those that do not match.
pub fn rank(plan: &Plan, candidates: Vec<Candidate>) -> Vec<Ranked> {
    let mut out: Vec<Ranked> = Vec::with_capacity(candidates.len());
    for c in candidates {
        let (calibre_kind, calibre_adj) = calibre_agreement(plan, &c);
        let mut kind = if plan.calibres.is_empty() {
            "filter"
        } else {
            "calibre"
        };
        let mut score = 0.5;
        let mut lot_kind = None;
        let mut weak_key = false;
        if let Some(q) = &plan.lot {
            let found = if let Some(of) = &plan.siblings {
                sibling_match(q, of, &c)
            } else {
                lot_match(q, plan.identity.as_deref(), &c)
            };
            match found {
                Some((k, s)) => {
                    kind = k;
                    score = s;
                    lot_kind = Some(k);
                    weak_key = c.maker.is_empty() || c.year == 0;
                }
                // A sibling query asks for sibling lots only.
                None if plan.headstamp.is_empty() || plan.siblings.is_some() => continue,
                None if headstamp::similarity(&plan.headstamp, &c.headstamp).0 <= 0.0 => continue,
                None => {
                    // A headstamp-only match when the lot disagrees: kept, but far down.
                    kind = "headstamp";
                    score = 0.2;
                }
            }
            // Fuzzy lots must stay within the calibre family.
            if kind == "fuzzy" && calibre_kind == Some("different") {
                continue;
            }
        }
        let mut hs_kind = None;
        if !plan.headstamp.is_empty() && !c.headstamp.is_empty() {
            let (s, k) = headstamp::similarity(&plan.headstamp, &c.headstamp);
            hs_kind = Some(k);
            if plan.lot.is_none() {
                if s <= 0.0 {
                    continue;
                }
                kind = "headstamp";
                score = 0.4 + 0.5 * s;
            } else {
                // Full agreement is strong evidence (same maker and year); a token left
                // unmatched (often the maker code) points to another factory's lot.
                score += HEADSTAMP_AGREE * s - HEADSTAMP_DISAGREE * (1.0 - s);
            }
        } else if plan.lot.is_none() && !plan.headstamp.is_empty() {
            continue;
        }
        score += calibre_adj;
        if plan.lot.is_none()
            && plan.headstamp.is_empty()
            && calibre_kind.is_none()
            && !plan.calibres.is_empty()
        {
            continue;
        }
        out.push(Ranked {
            matched: MatchInfo {
                kind,
                // Scale by the best possible raw score instead of clamping, so agreement still
                // separates two exact lot matches.
                score: (f64::from((score / MAX_RAW_SCORE).clamp(0.0, 1.0)) * 1000.0).round()
                    / 1000.0,
                lot: lot_kind,
                headstamp: hs_kind,
                calibre: calibre_kind,
                weak_key,
            },
            candidate: c,
        });
    }
    out.sort_by(|a, b| {
        b.matched
            .score
            .total_cmp(&a.matched.score)
            .then(b.candidate.date.cmp(&a.candidate.date))
            .then(a.candidate.record_id.cmp(&b.candidate.record_id))
    });
    out.truncate(plan.limit);
    out
}

/// A sibling lot: same length, one digit different, and nothing else that tells the lots
/// apart (domain §4.1: "same manufacturer, year and interfix, different sequence"):
/// - when both lots parse in the same grammar (MIL-STD-1168, the old US system, the
///   lot-year-factory style), the digit must lie in the sequence or lot number, and every other
///   part (maker, year, month, interfix, factory, suffix) must be equal;
/// - when the query reads as a maker or a year from its headstamp, a candidate whose own
///   reading names another maker or another year is not a sibling.
///
/// The nearer the number, the higher the score (`22-85` ranks above `29-85` for `21-85`).
fn sibling_match(q: &lot::LotNorm, of: &SiblingOf, c: &Candidate) -> Option<(&'static str, f32)> {
    let (a, b): (Vec<char>, Vec<char>) = (q.key.chars().collect(), c.lot_key.chars().collect());
    if a.len() != b.len() {
        return None;
    }
    let diffs: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    let [i] = diffs.as_slice() else {
        return None;
    };
    let (x, y) = (a[*i].to_digit(10)?, b[*i].to_digit(10)?);
    let theirs = lot::normalise(&c.lot_folded);
    if q.scheme != "unknown" && theirs.scheme == q.scheme {
        let fixed = |l: &lot::LotNorm| {
            l.components
                .iter()
                .filter(|(name, _)| !matches!(**name, "sequence" | "lot"))
                .map(|(name, value)| (*name, value.clone()))
                .collect::<Vec<_>>()
        };
        if fixed(q) != fixed(&theirs) {
            return None;
        }
    }
    if let Some(maker) = &of.maker
        && !c.maker.is_empty()
        && c.maker != *maker
    {
        return None;
    }
    if let Some(year) = of.year
        && c.year != 0
        && c.year != year
    {
        return None;
    }
    Some(("sibling", 0.7 - 0.01 * (x.abs_diff(y) - 1) as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(lot: &str, hs: &str, calibre: &str) -> Candidate {
        let l = lot::normalise(lot);
        let r = CalibreTable::resolve_embedded(calibre);
        Candidate {
            record_id: format!("{lot}/{hs}/{calibre}"),
            lot_folded: l.folded,
            lot_key: l.key,
            headstamp: headstamp::tokenise(hs).0,
            calibres: r.candidates,
            families: r.families,
            ..Candidate::default()
        }
    }

    fn params(lot: &str, hs: &str, calibre: &str) -> SearchParams {
        SearchParams {
            lot: Some(lot.into()),
            headstamp: Some(hs.into()),
            calibre: Some(calibre.into()),
            ..SearchParams::default()
        }
    }

    #[test]
    fn kinds_are_ordered_and_agreement_counts() {
        let p = plan(&params("21-85 539", "539 85", "7.62x39"), 10, 100).unwrap();
        let ranked = rank(
            &p,
            vec![
                cand("21-85-539", "85 539", "7.62x39mm"),
                cand("21 85 539", "539 85", "7,62x39"),
                cand("2I-85-539", "539 85", "7.62x39"),
                cand("21-85-538", "539 85", "7.62x39"),
                cand("21-85-539", "PPU 19", "9mm Luger"),
                cand("99-99", "539 85", "7.62x39"),
            ],
        );
        let kinds: Vec<&str> = ranked.iter().map(|r| r.matched.kind).collect();
        assert_eq!(kinds[0], "exact");
        assert_eq!(kinds[1], "exact");
        assert_eq!(kinds[2], "confusable");
        // The same lot text from another maker and calibre falls below the confusable match.
        assert!(
            ranked
                .iter()
                .position(|r| r.candidate.record_id.contains("PPU"))
                .unwrap()
                > 2
        );
        assert!(ranked.iter().any(|r| r.matched.kind == "fuzzy"));
    }

    #[test]
    fn wildcards_and_siblings() {
        let p = plan(&params("21-8?-539", "", ""), 10, 100).unwrap();
        let r = rank(
            &p,
            vec![cand("21-85-539", "", ""), cand("21-95-539", "", "")],
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].matched.kind, "wildcard");
        let mut sp = params("21-85", "", "");
        sp.siblings = true;
        let p = plan(&sp, 10, 100).unwrap();
        let r = rank(
            &p,
            vec![
                cand("22-85", "", ""),
                cand("21-85", "", ""),
                cand("2185", "", ""),
            ],
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].matched.kind, "sibling");
    }

    fn siblings(lot: &str, hs: &str, candidates: Vec<Candidate>) -> Vec<(String, f64)> {
        let mut sp = params(lot, hs, "");
        sp.siblings = true;
        let p = plan(&sp, 10, 100).unwrap();
        rank(&p, candidates)
            .into_iter()
            .map(|r| {
                assert_eq!(r.matched.kind, "sibling");
                (r.candidate.lot_folded, r.matched.score)
            })
            .collect()
    }

    /// A candidate whose headstamp has been read as a maker and a year, as the index does.
    fn read_cand(lot: &str, hs: &str) -> Candidate {
        let mut c = cand(lot, hs, "");
        if let Some(r) = MakerTable::embedded().interpret(&c.headstamp).first() {
            c.maker = r.manufacturer_code.clone().unwrap_or_default();
            c.year = r.year_gregorian.map(i64::from).unwrap_or(0);
        }
        c
    }

    /// The candidate as the index holds it: with its identity key from its own headstamp.
    fn id_cand(lot: &str, hs: &str) -> Candidate {
        let mut c = read_cand(lot, hs);
        let year = i32::try_from(c.year).ok().filter(|y| *y > 0);
        let maker = Some(c.maker.as_str()).filter(|m| !m.is_empty());
        c.lot_identity = lot::identity_key(&lot::normalise(lot), maker, year).unwrap_or_default();
        c
    }

    #[test]
    fn one_lot_identity_however_the_number_was_written() {
        // Stored as lot-year-factory; asked with the factory left out (it is on the headstamp),
        // the year in four digits, or the factory named by a label.
        let stored = || id_cand("901-61-188", "188 61");
        for lot in ["901-61", "901-1961-188", "партия 901-61 завод 188"] {
            let p = plan(&params(lot, "188 61", ""), 10, 100).unwrap();
            assert_eq!(
                p.candidates.lot_identity.as_deref(),
                Some("188|1961|901"),
                "{lot}"
            );
            let ranked = rank(&p, vec![stored()]);
            assert_eq!(
                ranked.first().map(|r| r.matched.kind),
                Some("exact"),
                "{lot}"
            );
        }
        // Nor is a lot whose factory is not the maker the query leaves it to; nor two lots no
        // grammar reads (`A12-345`, `A123-45`: equal only once separators are dropped).
        let exact =
            |p: &Plan, c: Candidate| rank(p, vec![c]).iter().any(|r| r.matched.kind == "exact");
        let p = plan(&params("901-61", "188 61", ""), 10, 100).unwrap();
        assert!(!exact(&p, id_cand("901-61-270", "188 61")));
        let p = plan(&params("A12-345", "LC 17", ""), 10, 100).unwrap();
        assert_eq!(p.candidates.lot_identity.as_deref(), Some("LC|2017|A12345"));
        assert!(!exact(&p, id_cand("A123-45", "LC 17")));
        // Another factory's or another year's lot of the same number is not the same lot,
        // even when the query's headstamp gives the same maker and year.
        let p = plan(&params("901-61-188", "188 61", ""), 10, 100).unwrap();
        for other in [
            id_cand("901-61-270", "188 61"),
            id_cand("901-63-188", "188 61"),
        ] {
            let ranked = rank(&p, vec![other]);
            assert!(
                ranked.iter().all(|r| r.matched.kind != "exact"),
                "{:?}",
                ranked.first().map(|r| &r.matched)
            );
        }
        // No headstamp reading, no identity: the lot text decides alone.
        let p = plan(&params("901-61", "", ""), 10, 100).unwrap();
        assert_eq!(p.candidates.lot_identity, None);
    }

    #[test]
    fn siblings_differ_only_in_the_lot_number() {
        // Lot-year-factory: the year and the factory are fixed; nearer numbers rank higher.
        let found = siblings(
            "21-85-539",
            "",
            vec![
                cand("29-85-539", "", ""),
                cand("21-86-539", "", ""),
                cand("21-85-538", "", ""),
                cand("22-85-539", "", ""),
            ],
        );
        let lots: Vec<&str> = found.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(lots, vec!["22-85-539", "29-85-539"]);
        assert!(found[0].1 > found[1].1);
        // MIL-STD-1168: maker, year, month and interfix are fixed; the sequence advances.
        let found = siblings(
            "LC19L123-456",
            "",
            vec![
                cand("LC19L123-457", "", ""),
                cand("LC18L123-456", "", ""),
                cand("LC19L124-456", "", ""),
            ],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "LC19L123-457");
    }

    #[test]
    fn siblings_share_the_maker_and_year_of_the_headstamp() {
        let found = siblings(
            "21-85",
            "539 85",
            vec![
                read_cand("22-85", "539 85"),
                read_cand("23-85", "711 85"),
                read_cand("24-85", "539 84"),
                read_cand("25-85", ""),
            ],
        );
        let lots: Vec<&str> = found.iter().map(|(l, _)| l.as_str()).collect();
        // Same maker and year, or nothing read that says otherwise.
        assert_eq!(lots, vec!["22-85", "25-85"]);
    }

    #[test]
    fn overlong_text_is_refused_before_it_is_read() {
        let long = "A1".repeat(MAX_TEXT_CHARS);
        for name in ["lot", "headstamp", "q", "calibre"] {
            let mut p = SearchParams::default();
            match name {
                "lot" => p.lot = Some(long.clone()),
                "headstamp" => p.headstamp = Some(long.clone()),
                "q" => p.q = Some(long.clone()),
                _ => p.calibre = Some(long.clone()),
            }
            p.siblings = name == "lot";
            let errors = plan(&p, 10, 100).unwrap_err();
            assert_eq!(errors[0].pointer, format!("/{name}"));
        }
        // At the limit it is still a query.
        let mut p = params(&"7".repeat(MAX_TEXT_CHARS), "", "");
        p.siblings = true;
        assert!(plan(&p, 10, 100).is_ok());
    }

    #[test]
    fn patterns_with_symbols_compile() {
        for text in ["★?", "5*€", "21-8?", "Ш?-85", "a.b*(c)?[d]"] {
            let pattern = regex_escape(&fold::skeleton(text));
            regex::Regex::new(&pattern).unwrap_or_else(|e| panic!("{text}: {pattern}: {e}"));
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut p = params("1", "", "");
        p.limit = Some(0);
        p.from = Some("last year".into());
        let errors = plan(&p, 10, 100).unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, vec!["/limit", "/from"]);
        assert!(plan(&SearchParams::default(), 10, 100).is_err());
        let mut p = params("1", "", "");
        (p.from, p.to) = (Some("2025".into()), Some("2020-12".into()));
        assert_eq!(plan(&p, 10, 100).unwrap_err()[0].pointer, "/to");
        (p.from, p.to) = (Some("2024-02-30".into()), Some("2024".into()));
        assert_eq!(plan(&p, 10, 100).unwrap_err()[0].pointer, "/from");
        (p.from, p.to) = (Some("2024-02".into()), Some("2024".into()));
        assert!(plan(&p, 10, 100).is_ok());
        let p = params("*-?", "", "");
        assert_eq!(plan(&p, 10, 100).unwrap_err()[0].pointer, "/lot");
        let mut p = SearchParams {
            category: Some(" ".into()),
            ..SearchParams::default()
        };
        assert_eq!(plan(&p, 10, 100).unwrap_err()[0].pointer, "/category");
        p.category = Some("small_arms_ammunition".into());
        assert!(plan(&p, 10, 100).is_ok());
    }
}
