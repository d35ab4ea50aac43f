//! Headstamps: tokens in any order, rotated readings, and maker/year readings (domain §6.2).
//!
//! A headstamp is evidence, not proof. The node keeps the transcription and derives:
//! - `tokens`: the folded alphanumeric tokens (split on spaces, `/ | , ; :` and brackets), in
//!   the order written; the matching key is their multiset, so `539 85`, `85/539` and
//!   `85 | 539` agree;
//! - `symbols`: marks that are not codes (`+`, `⊕`, `*`, `NATO`), kept but not matched on;
//! - `readings`: every plausible (maker, year) assignment from the maker table, ranked.
//!
//! [`similarity`] compares two token multisets allowing confusions (`S39` ~ `539`), worn
//! characters (`5?9`) and a 180° rotated reading (`61` read upside down is `19`).

use serde::Serialize;

use super::fold;
use super::maker::{HeadstampReading, MakerTable};

/// The derived view of one headstamp transcription.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadstampNorm {
    pub tokens: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub symbols: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub readings: Vec<HeadstampReading>,
}

/// How two headstamps agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadstampMatch {
    Exact,
    Confusable,
    Wildcard,
    Rotated,
    Partial,
    None,
}

/// Between headstamp elements: spaces, and the punctuation transcribers put between them
/// (`LC/17`, `LC-17`, `LC.17`, `LC_17`; dashes are `-` once folded).
fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '/' | '|' | ',' | ';' | ':' | '(' | ')' | '[' | ']' | '\\' | '-' | '.' | '_' | '·'
        )
}

/// Puts back together what transcribers split or glued, where the maker table says so:
/// a run of single characters that spells a known code (`L C 17`, `1 8 8 79`) becomes that
/// code; a known letter code glued to a 2- or 4-digit year (`LC17`, `17LC`) is split.
fn mend(tokens: Vec<String>) -> Vec<String> {
    let table = MakerTable::embedded();
    let known = |t: &str| !table.lookup(t).is_empty();
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let single = |t: &String| t.chars().count() == 1 && t != "?" && t != "*";
        let run = tokens[i..].iter().take_while(|t| single(t)).count();
        if run >= 2 {
            // The longest prefix of the run that spells a code, then the rest one by one.
            let spelled = (2..=run)
                .rev()
                .map(|n| (n, tokens[i..i + n].concat()))
                .find(|(_, code)| known(code));
            if let Some((n, code)) = spelled {
                out.push(code);
                i += n;
                continue;
            }
        }
        let t = &tokens[i];
        let split = t
            .find(|c: char| c.is_ascii_digit())
            .filter(|&at| at > 0)
            .map(|at| (&t[..at], &t[at..]))
            .or_else(|| {
                t.find(|c: char| !c.is_ascii_digit())
                    .filter(|&at| at > 0)
                    .map(|at| (&t[at..], &t[..at]))
            });
        match split {
            Some((code, year))
                if code.chars().count() >= 2
                    && code.chars().all(|c| c.is_alphabetic() || c == '&')
                    && matches!(year.len(), 2 | 4)
                    && year.chars().all(|c| c.is_ascii_digit())
                    && known(code) =>
            {
                let glued_first = t.starts_with(code);
                let (code, year) = (code.to_owned(), year.to_owned());
                if glued_first {
                    out.extend([code, year]);
                } else {
                    out.extend([year, code]);
                }
            }
            _ => out.push(t.clone()),
        }
        i += 1;
    }
    out
}

/// Clock positions transcribers add to say where an element sits on the head (`LC@12 17@6`,
/// `LC (12) / 17 (6)`, `12 o'clock: LC; 6 o'clock: 17`): where, not what, so not tokens.
/// Dropped only when the transcription gives two or more (one element's position alone looks
/// too much like a year in brackets: `LC (12)`).
static CLOCK: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(concat!(
        r"@\s*(?:1[0-2]|[1-9])\b",
        r"|\(\s*(?:1[0-2]|[1-9])\s*(?:H|O['’]?CLOCK)?\s*\)",
        r"|\b(?:1[0-2]|[1-9])\s*(?:O['’]?CLOCK|H\b)\s*:?",
    ))
    .expect("static regex")
});

/// Splits a transcription into folded tokens and symbols (no maker readings).
pub fn tokenise(raw: &str) -> (Vec<String>, Vec<String>) {
    let folded = fold::fold(raw);
    let folded = if CLOCK.find_iter(&folded).nth(1).is_some() {
        CLOCK.replace_all(&folded, " ")
    } else {
        std::borrow::Cow::Borrowed(folded.as_str())
    };
    let mut tokens = Vec::new();
    let mut symbols = Vec::new();
    for part in folded.split(is_separator).filter(|p| !p.is_empty()) {
        let part = part.trim_matches(|c: char| c == '-' || c == '.');
        if part.is_empty() {
            continue;
        }
        let symbol = match part {
            "+" | "⊕" | "NATO" => Some("NATO_CROSS"),
            "*" | "★" | "☆" => Some("STAR"),
            _ if !part.chars().any(|c| c.is_alphanumeric() || c == '?') => Some("OTHER"),
            _ => None,
        };
        match symbol {
            Some(s) => symbols.push(s.to_owned()),
            None => tokens.push(part.to_owned()),
        }
    }
    (mend(tokens), symbols)
}

/// Tokenises and reads a transcription.
pub fn normalise(raw: &str) -> HeadstampNorm {
    HeadstampNorm::clone(&normalise_shared(raw))
}

/// [`normalise`], shared with every other caller of the same text (no copy of the readings).
pub fn normalise_shared(raw: &str) -> std::sync::Arc<HeadstampNorm> {
    static MEMO: std::sync::LazyLock<super::Memo<HeadstampNorm>> =
        std::sync::LazyLock::new(|| super::Memo::new(4096));
    MEMO.get(raw, read)
}

/// [`normalise`] without the memo.
pub(crate) fn read(raw: &str) -> HeadstampNorm {
    let (tokens, symbols) = tokenise(raw);
    let readings = MakerTable::embedded().interpret(&tokens);
    HeadstampNorm {
        tokens,
        symbols,
        readings,
    }
}

/// The token as read with the cartridge turned 180°: characters reversed, 6 and 9 swapped.
/// `None` when a character has no rotated form (only 0, 1, 6, 8, 9 and `?` do).
pub fn rotate_token(token: &str) -> Option<String> {
    token
        .chars()
        .rev()
        .map(|c| match c {
            '0' | '1' | '8' | '?' => Some(c),
            '6' => Some('9'),
            '9' => Some('6'),
            _ => None,
        })
        .collect()
}

/// Agreement of one query token with one stored token, in 0..=1.
fn token_score(query: &str, stored: &str) -> (f32, HeadstampMatch) {
    if query == stored {
        return (1.0, HeadstampMatch::Exact);
    }
    if query.contains(['?', '*']) || stored.contains('?') {
        return if wildcard_match(query, stored) {
            (0.9, HeadstampMatch::Wildcard)
        } else {
            (0.0, HeadstampMatch::None)
        };
    }
    if fold::skeleton(query) == fold::skeleton(stored) {
        return (0.9, HeadstampMatch::Confusable);
    }
    let d = fold::weighted_distance(query, stored);
    let len = query.chars().count().max(stored.chars().count());
    if len >= 3 && d <= 0.5 {
        return (0.7, HeadstampMatch::Partial);
    }
    (0.0, HeadstampMatch::None)
}

/// `?` matches one character, `*` any run (possibly empty). A `?` in `text` (a worn character
/// in the stored marking) matches any one character of the pattern.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && (p[pi] == '?' || t[ti] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn multiset_score(query: &[String], stored: &[String]) -> (f32, HeadstampMatch) {
    if query.is_empty() || stored.is_empty() {
        return (0.0, HeadstampMatch::None);
    }
    let mut used = vec![false; stored.len()];
    let mut total = 0.0;
    let mut worst = HeadstampMatch::Exact;
    let mut matched = 0;
    for q in query {
        let best = stored
            .iter()
            .enumerate()
            .filter(|(i, _)| !used[*i])
            .map(|(i, s)| (i, token_score(q, s)))
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0));
        if let Some((i, (score, kind))) = best.filter(|(_, (s, _))| *s > 0.0) {
            used[i] = true;
            total += score;
            matched += 1;
            worst = weaker(worst, kind);
        }
    }
    let denom = query.len().max(stored.len()) as f32;
    let kind = if matched == 0 {
        HeadstampMatch::None
    } else if matched < query.len().max(stored.len()) {
        HeadstampMatch::Partial
    } else {
        worst
    };
    (total / denom, kind)
}

fn weaker(a: HeadstampMatch, b: HeadstampMatch) -> HeadstampMatch {
    use HeadstampMatch::*;
    let rank = |k| match k {
        Exact => 0,
        Confusable => 1,
        Wildcard => 2,
        Rotated => 3,
        Partial => 4,
        None => 5,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// Order-free agreement of a query's tokens with a stored item's tokens, in 0..=1, trying the
/// reading as written and the 180° rotated reading.
pub fn similarity(query: &[String], stored: &[String]) -> (f32, HeadstampMatch) {
    let direct = multiset_score(query, stored);
    let rotated: Option<Vec<String>> = query.iter().map(|t| rotate_token(t)).collect();
    if let Some(rotated) = rotated.filter(|r| r.as_slice() != query) {
        let (score, kind) = multiset_score(&rotated, stored);
        let score = score * 0.9;
        if score > direct.0 {
            let kind = if kind == HeadstampMatch::None {
                kind
            } else {
                HeadstampMatch::Rotated
            };
            return (score, kind);
        }
    }
    direct
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn toks(raw: &str) -> Vec<String> {
        tokenise(raw).0
    }

    #[test]
    fn tokens_are_order_free_and_symbols_apart() {
        assert_eq!(toks("539 85"), vec!["539", "85"]);
        assert_eq!(toks("85/539"), vec!["85", "539"]);
        let (t, s) = tokenise("22 | WCC (NATO)");
        assert_eq!(t, vec!["22", "WCC"]);
        assert_eq!(s, vec!["NATO_CROSS"]);
        assert_eq!(toks("ппу 24"), vec!["PPU", "24"]);
        assert_eq!(similarity(&toks("539 85"), &toks("85 | 539")).0, 1.0);
    }

    #[test]
    fn punctuation_invisible_marks_split_and_glued_codes() {
        for raw in [
            "LC-17",
            "LC.17",
            "LC_17",
            "LC–17",
            "LC17",
            "17LC",
            "L C 17",
            "L\u{00AD}C 17",
            "LC \u{200f}١٧\u{200f}",
        ] {
            let mut t = toks(raw);
            t.sort();
            assert_eq!(t, vec!["17", "LC"], "{raw:?}");
        }
        assert_eq!(toks("S&B22"), vec!["S&B", "22"]);
        assert_eq!(toks("1 8 8 79"), vec!["188", "79"]);
        for raw in [
            "LC@12 17@6",
            "LC (12) / 17 (6)",
            "12 o'clock: LC; 6 o'clock: 17",
            "LC (12h) 17 (6h)",
        ] {
            assert_eq!(toks(raw), vec!["LC", "17"], "{raw:?}");
        }
        assert_eq!(
            toks("539 (85)"),
            vec!["539", "85"],
            "a year in brackets is no clock"
        );
        assert_eq!(
            toks("LC (11)"),
            vec!["LC", "11"],
            "one bracketed number may be a year"
        );
        assert_eq!(toks("539 8 5").len(), 3, "8 5 spells no code");
        // A worn code is not split or merged: S39 may be 539 misread.
        assert_eq!(toks("S39 85"), vec!["S39", "85"]);
        assert_eq!(toks("? ? 85"), vec!["?", "?", "85"]);
    }

    #[test]
    fn confusions_wildcards_and_rotation() {
        let (score, kind) = similarity(&toks("S39 85"), &toks("539 85"));
        assert!(
            score > 0.9 && kind == HeadstampMatch::Confusable,
            "{score} {kind:?}"
        );
        let (score, kind) = similarity(&toks("5?9 8?"), &toks("539 85"));
        assert!(
            score > 0.85 && kind == HeadstampMatch::Wildcard,
            "{score} {kind:?}"
        );
        let (score, kind) = similarity(&toks("61 881"), &toks("188 19"));
        assert!(
            score > 0.8 && kind == HeadstampMatch::Rotated,
            "{score} {kind:?}"
        );
        assert_eq!(similarity(&toks("LC 19"), &toks("PPU 24")).0, 0.0);
    }

    proptest! {
        #[test]
        fn never_panics(raw in "\\PC*", other in "\\PC*") {
            let n = normalise(&raw);
            let (score, _) = similarity(&n.tokens, &toks(&other));
            prop_assert!((0.0..=1.0).contains(&score));
        }
    }
}
