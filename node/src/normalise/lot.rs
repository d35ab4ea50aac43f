//! Lot (and sub-lot) numbers: labels, separators, grammars and keys (domain notes §2.4, §6.4).
//!
//! A lot is not a global identifier. The node keeps the raw text and derives:
//! - `folded`: upper case, script-folded, labels (`LOT`, `LOT NO.`, `L/N`, `№`, `партия`, `批号`)
//!   removed, every separator run written as one `-`;
//! - `key`: `folded` without separators: the spelling-independent form (`21-85 539`, `21/85/539`
//!   and `LOT 2185539` share it). Leading zeros are kept: a lot is text, never a number;
//! - `skeleton`: `key` with cheap confusions merged (see [`super::fold`]);
//! - `scheme` and `components` when a known grammar parses it (MIL-STD-1168, the old US
//!   system, the Soviet lot-year[-factory] style); `unknown` otherwise.
//!
//! `?` (one worn character) and `*` (a run) are kept in `key` so queries can carry them.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use super::fold;

/// The derived view of one lot marking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LotNorm {
    pub folded: String,
    pub key: String,
    pub skeleton: String,
    pub scheme: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub wildcard: bool,
}

impl LotNorm {
    /// True when nothing identifying is left (empty or only wildcards).
    pub fn is_empty(&self) -> bool {
        self.key.chars().all(|c| c == '?' || c == '*')
    }
}

/// Labels written before a lot number. Matched after upper-casing but before script folding,
/// so Cyrillic and Chinese labels are seen as written. `1OT`/`L0T` are OCR readings of `LOT`.
static LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        // LOT, LOTE, LOT NO., LOT-NR., LOT #, and OCR readings of LOT (1OT, L0T). The longer
        // word first: the leftmost alternative wins, and LOT would leave LOTE's E behind.
        r"^(?:(?:LOTTO|LOTE|LOT|L0T|1OT|IOT|\|OT|BATCH)(?:\s*[-.]?\s*(?:NO|N0|NR|NUMBER|N°|Nº|#)\b\.?)?\s*[:#.]?\s*",
        // Los (German), Parti/Partie (Nordic, Turkish; French, Dutch): only when a separator
        // follows, as these could begin a lot code.
        r"|(?:LOS|PARTIE|PARTI)(?:\s*[-.]?\s*(?:NO|NR|N°|Nº|#)\b\.?)?(?:\s+|\s*[:#.]\s*)",
        // A worn LOT (one unreadable character): only when a separator follows.
        r"|(?:\?OT|\?0T|L\?T|LO\?|L0\?)(?:\s*(?:NO|N0|N\?|NR|N°|#)\.?)?(?:\s+|\s*[:#.]\s*)",
        // L/N (lot number), also worn (?/N, L/?), №, N°, NO., and Cyrillic and Chinese labels.
        r"|[L1I?]\s*/\s*[N?]\s*[:#.]?\s*|№\s*|N°\s*|Nº\s*|NO\.\s*|ПАРТИЯ\s*[:#.]?\s*|ПАРТІЯ\s*[:#.]?\s*|批号\s*[:：]?\s*|批次\s*[:：]?\s*)",
    ))
    .expect("static regex")
});

static MIL_STD_1168: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([A-Z]{1,3})-?(\d{2})-?([A-HJ-M])-?(\d{2,4})-?(\d{2,4})-?([A-Z]{1,2})?$")
        .expect("static regex")
});
static US_OLD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([A-Z]{2})-(\d{2})-(\d{2})([A-Z])?$").expect("static regex"));
// Lot-year[-factory]; the year also in four digits (`901-1961-188`).
static SOVIET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\d{1,4})-(\d{2}|(?:19|20)\d{2})(?:-(\d{1,4}))?$").expect("static regex")
});

/// A factory label inside the marking (`901-61 завод 188`): a separator, like the others.
static FACTORY_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:ЗАВОД|ZAVOD|FACTORY)\b\.?\s*[:#№]?").expect("static regex"));

/// Normalises one lot marking.
pub fn normalise(raw: &str) -> LotNorm {
    let upper: String = raw.trim().to_uppercase();
    // Labels can be stacked ("LOT NO. L/N 21-85"): strip until none is left.
    let mut unlabelled = upper
        .trim_start_matches(|c: char| !c.is_alphanumeric() && c != '?' && c != '*' && c != '№')
        .to_owned();
    while let Some(m) = LABEL.find(&unlabelled) {
        if m.end() == 0 {
            break;
        }
        unlabelled = unlabelled[m.end()..]
            .trim_start_matches(|c: char| !c.is_alphanumeric() && c != '?' && c != '*' && c != '№')
            .to_owned();
    }
    let unlabelled = FACTORY_LABEL.replace_all(&unlabelled, " ");
    let folded_text = fold::fold(&unlabelled);
    let mut folded = String::with_capacity(folded_text.len());
    let mut key = String::with_capacity(folded_text.len());
    for c in folded_text.chars() {
        if c.is_alphanumeric() || c == '?' || c == '*' {
            folded.push(c);
            key.push(c);
        } else if !folded.is_empty() && !folded.ends_with('-') {
            folded.push('-');
        }
    }
    while folded.ends_with('-') {
        folded.pop();
    }
    // Collapse `**` runs: they mean the same as one `*`.
    while key.contains("**") {
        key = key.replace("**", "*");
    }
    let (scheme, components) = parse(&folded);
    LotNorm {
        skeleton: fold::skeleton(&key),
        wildcard: key.contains(['?', '*']),
        folded,
        key,
        scheme,
        components,
    }
}

fn parse(folded: &str) -> (&'static str, BTreeMap<&'static str, String>) {
    let mut components = BTreeMap::new();
    if let Some(c) = MIL_STD_1168.captures(folded) {
        for (i, name) in [
            "mfr",
            "year",
            "month_letter",
            "interfix",
            "sequence",
            "suffix",
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(m) = c.get(i + 1) {
                components.insert(name, m.as_str().to_owned());
            }
        }
        return ("mil_std_1168", components);
    }
    if let Some(c) = US_OLD.captures(folded) {
        for (i, name) in ["mfr", "interfix", "sequence", "suffix"]
            .into_iter()
            .enumerate()
        {
            if let Some(m) = c.get(i + 1) {
                components.insert(name, m.as_str().to_owned());
            }
        }
        return ("us_old_system", components);
    }
    if let Some(c) = SOVIET.captures(folded) {
        for (i, name) in ["lot", "year", "factory"].into_iter().enumerate() {
            if let Some(m) = c.get(i + 1) {
                components.insert(name, m.as_str().to_owned());
            }
        }
        return ("soviet_style_lot_year_factory", components);
    }
    ("unknown", components)
}

/// Identity key `maker|YYYY|lot` when the maker and the year are known, else `None` (the lot's
/// `key` is then only a weak key and matches on it say so).
pub fn identity_key(lot: &LotNorm, maker: Option<&str>, year: Option<i32>) -> Option<String> {
    let maker = maker.filter(|m| !m.is_empty())?;
    let year = year?;
    let number = lot
        .components
        .get("lot")
        .cloned()
        .unwrap_or_else(|| lot.key.clone());
    if number.is_empty() || lot.wildcard {
        return None;
    }
    Some(format!("{maker}|{year}|{number}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_separators_and_case_fold_to_one_key() {
        let same = [
            "21-85 539",
            "21/85/539",
            "LOT 21-85-539",
            "Lot No. 21 85 539",
            "L/N 21.85.539",
            "№ 21–85–539",
            "партия 21-85-539",
            "lot: 2185539",
            "1ot: 21-85-539",
            "٢١-٨٥-٥٣٩",
            "lo?: 21-85-539",
            "?/N 21 85 539",
            "L/? 21/85/539",
            "?ot No. 21-85-539",
            "Lot-Nr. 21-85-539",
            "Los-Nr. 21-85-539",
            "Lote 21-85-539",
            "Parti 21-85-539",
            "Partie: 21-85-539",
            "LOT.NO. 21-85-539",
            "Lotto 21-85-539",
            "LOTTO NR. 21-85-539",
        ];
        for raw in same {
            assert_eq!(normalise(raw).key, "2185539", "key of {raw:?}");
        }
    }

    #[test]
    fn worn_lots_are_not_taken_for_labels() {
        assert_eq!(normalise("1?7-85").key, "1?785");
        assert_eq!(normalise("LO?85").key, "LO?85");
    }

    #[test]
    fn grammars_parse() {
        let n = normalise("LC-19L123-456");
        assert_eq!(n.scheme, "mil_std_1168");
        assert_eq!(n.components.get("mfr").map(String::as_str), Some("LC"));
        assert_eq!(
            n.components.get("interfix").map(String::as_str),
            Some("123")
        );
        let n = normalise("21-85 539");
        assert_eq!(n.scheme, "soviet_style_lot_year_factory");
        assert_eq!(n.components.get("year").map(String::as_str), Some("85"));
        for raw in [
            "901-61 завод 188",
            "901-1961-188",
            "партия 901-61, завод № 188",
        ] {
            let n = normalise(raw);
            assert_eq!(n.scheme, "soviet_style_lot_year_factory", "{raw}");
            assert_eq!(n.components.get("lot").map(String::as_str), Some("901"));
            assert_eq!(
                identity_key(&n, Some("188"), Some(1961)).as_deref(),
                Some("188|1961|901")
            );
        }
        assert_eq!(normalise("LW-06-01A").scheme, "us_old_system");
        assert_eq!(normalise("CC141614").scheme, "unknown");
    }

    #[test]
    fn leading_zeros_and_wildcards_are_kept() {
        assert_eq!(normalise("007-85").key, "00785");
        let n = normalise("FC?7H462-520");
        assert!(n.wildcard);
        assert_eq!(n.key, "FC?7H462520");
        assert!(normalise("??").is_empty());
    }

    #[test]
    fn identity_key_needs_maker_and_year() {
        let lot = normalise("21-85 539");
        assert_eq!(
            identity_key(&lot, Some("539"), Some(1985)).as_deref(),
            Some("539|1985|21")
        );
        assert_eq!(identity_key(&lot, None, Some(1985)), None);
    }

    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(raw in "\\PC*") {
            let n = normalise(&raw);
            let again = normalise(&n.folded);
            prop_assert_eq!(&again.key, &n.key);
            prop_assert_eq!(fold::skeleton(&n.skeleton), n.skeleton.clone());
        }
    }
}
