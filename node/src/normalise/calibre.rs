//! Calibre resolution: free-text calibre strings to canonical calibre ids (domain §2.6, §6.3).
//!
//! The table is `data/calibre_synonyms.csv`, embedded at compile time and parsed once
//! ([`CalibreTable::embedded`]). [`CalibreTable::resolve`] never changes the raw text; it
//! returns a [`CalibreResolution`]: the id (only when exactly one calibre is meant), every
//! candidate, their families, the method used and a confidence.
//!
//! # Normalisation ([`normalise`])
//!
//! Applied identically to the input and to every alias of the table:
//! NFKC; lower case; Arabic-Indic and Persian digits to ASCII; the dash family to `-`; `×`,
//! `✕` and Cyrillic `х` to `x`; other Cyrillic letters transliterated (`мм` → `mm`, `ПМ` →
//! `pm`, `ДШК` → `dshk`, `обр.` → `obr`); decimal comma to dot (`7,62` → `7.62`);
//! `7.62 x 39`, `7.62*39`, `9 mm x 19` → `7.62x39`, `9x19`; the dotted typo `7.62.39` →
//! `7.62x39`; `mm` dropped only inside a dimension (`7.62x54mmR` → `7.62x54r`) and glued to a
//! bare number (`9 mm` → `9mm`, kept as one token); a leading dot dropped (`.308` → `308`); a
//! number glued to a word split off (`556NATO` → `556 nato`, `40SW` → `40 sw`, but not `9mm`
//! nor the `r` of `7.62x54r`); noise words dropped (`ammo`, `ammunition`, `cartridge(s)`,
//! `round(s)`, `rds`, `bullets`, `патрон`…). `cal`/`caliber`/`calibre` is noise too, except
//! next to a bare number, where it says "inch designation": `40 cal` and `Cal .50` stay
//! distinct from a bare `40` or `.50`.
//!
//! # Resolution order
//!
//! 1. **Exact alias** (`alias_table`): the whole normalised text is an alias or a canonical
//!    label. An alias that is a bare diameter (`9mm`, `5.56mm`, `.303`) is honoured as the
//!    table says, with [`Confidence::Low`].
//! 2. **Bare diameter** (`bare_diameter`): the whole text is a number, optionally with `mm` or
//!    `cal` (`7.62mm`, `.50`, `12.7 mm`, `50 cal`) → [`CalibreMatch::Ambiguous`] with every
//!    member of the families that number designates.
//! 3. **Conflation** (`segments`): text split on `/ , ; |` or `or` whose parts name different
//!    calibres (`9mm/40SW`, `22 LR/22 Magnum`) → [`CalibreMatch::Multi`].
//! 4. **Dimension key** (`dimension_key`, `\d+(\.\d+)?x\d+r?` anywhere, ASCII digits,
//!    compact `762x39` accepted) and **alias tokens** (`alias_token`, longest first, on word
//!    boundaries). Two different calibres (`308 Win 7.62x51mm`) → [`CalibreMatch::Multi`],
//!    related or not; a bare-diameter alias of another family counts (`9mm 40 S&W`).
//!    A dimension owned by one calibre only resolves even without its suffix
//!    (`7.62x54` → `7.62x54r`).
//! 5. **Designations and loads** (`designation`, `load_table`): model names and load codes
//!    from the tables in this file (`M43`, `obr. 1943`, `Type 56`, `Soviet`, `Mosin`,
//!    `Makarov`, `DShK`; `PS`, `7N6`, `M855`, `B-32`…), scoped by any diameter stated in the
//!    text (`5.45 PS` → 5.45x39, `7.62 PS` → 7.62x39, `12.7 B-32` → 12.7x108). Loads also fill
//!    [`CalibreResolution::load_designation`], whatever step resolved the calibre, when they
//!    agree with it.
//! 6. **Fuzzy alias** (`fuzzy_alias`): Damerau–Levenshtein over word windows, ≤ 1 edit for
//!    aliases with ≥ 5 letters, ≤ 2 for ≥ 8 letters (letters, not characters, so that `9mm K`
//!    and `9mm P` never meet), and only when the digits are identical: a different number is
//!    a different calibre (`7.62x35` is not a typo of `7.62x25`).
//! 7. A bare-diameter alias inside longer text, followed only by descriptors such as `+P`,
//!    `FMJ`, `115gr` (`Partizan 9mm`, `9mm +P`) → its table id, low confidence. Other words
//!    after it name another cartridge (`9mm Flobert`, `.303 Savage`) and fall through to 8.
//! 8. A diameter stated inside otherwise unknown text (`7.62mm blah`, `.22 WMR`) → ambiguous
//!    family; an integer from 17 up without `mm` is read as inches there (`30 Super Carry`).
//! 9. Otherwise [`CalibreMatch::Unresolved`].
//!
//! # Families
//!
//! A family is the nominal bore class, derived from the `bullet_diameter_mm_nominal` column by
//! fixed buckets ([`FAMILY_BUCKETS`]): `4.6` [4.4, 5.0) mm; `5.45` [5.5, 5.65); `5.56`
//! [5.65, 5.9) (5.56 NATO, .223, .22 LR, 5.7x28); `5.8` [5.9, 6.2); `7.62` [7.5, 8.0) (every
//! .30-class round: 7.62x39/x51/x54R/x25/x38R, .308, .30-06, .30 Carbine, .303, 7.63 Mauser,
//! 7.65 Browning/Parabellum); `8` [8.0, 8.5) (7.92x57); `9` [8.8, 9.5) (9x17/18/19/21/39, .38,
//! .357); `10` [9.9, 10.5); `11.43` [11.2, 11.7); `12.7` [12.5, 13.2); `14.5` [14.5, 15.0).
//! Outside the buckets the family is the diameter itself (`18.5` for 12 gauge, `40` for 40 mm
//! grenades and the RPG-7 launcher bore, `81` and `82` for mortars, kept apart). A row without a
//! diameter is its own family. A query for a bare diameter matches every member of the family;
//! fuzzy lot matching is confined to one family.
//!
//! Nothing here panics on input: all slicing is on match boundaries and every lookup is total.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use super::{Confidence, fold};

const CALIBRE_CSV: &str = include_str!("../../data/calibre_synonyms.csv");

/// Bore-class buckets over `bullet_diameter_mm_nominal`: (family, lower bound inclusive, upper
/// bound exclusive), in millimetres. See the module documentation.
pub const FAMILY_BUCKETS: &[(&str, f64, f64)] = &[
    ("4.6", 4.4, 5.0),
    ("5.45", 5.5, 5.65),
    ("5.56", 5.65, 5.9),
    ("5.8", 5.9, 6.2),
    ("7.62", 7.5, 8.0),
    ("8", 8.0, 8.5),
    ("9", 8.8, 9.5),
    ("10", 9.9, 10.5),
    ("11.43", 11.2, 11.7),
    ("12.7", 12.5, 13.2),
    ("14.5", 14.5, 15.0),
];

/// Longest text (in bytes, after normalisation) the fuzzy step looks at.
const FUZZY_MAX_LEN: usize = 160;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// How a calibre string was (or was not) resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibreMatch {
    /// The whole text is an alias (or label) of one calibre.
    Alias,
    /// A dimension key (`7.62x39`) in the text.
    Dimension,
    /// An alias or a model designation found inside longer text.
    Token,
    /// An alias within a small edit distance.
    Fuzzy,
    /// Only a load designation (`M855`, `7N6`) identified the calibre.
    Load,
    /// Several calibres fit and the text does not say which (`7.62mm`, `.50`, `B-32`).
    Ambiguous,
    /// The text names two or more different calibres (`308 Win 7.62x51mm`).
    Multi,
    /// Nothing recognised.
    Unresolved,
}

/// The interpretation of one calibre string.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibreResolution {
    /// Set only when exactly one calibre is meant.
    pub canonical_id: Option<String>,
    #[serde(rename = "match")]
    pub match_kind: CalibreMatch,
    /// Every id the text could mean (`[id]` when resolved; table order for ambiguous results,
    /// order of appearance for [`CalibreMatch::Multi`]).
    pub candidates: Vec<String>,
    /// Families of the candidates, deduplicated and sorted.
    pub families: Vec<String>,
    /// The rule that decided: `alias_table`, `bare_diameter`, `segments`, `dimension_key`,
    /// `alias_token`, `designation`, `load_table`, `fuzzy_alias`, `multiple_calibres`, `none`.
    pub method: &'static str,
    pub confidence: Confidence,
    /// A load designation found in the text and consistent with the result (`M855`, `7N6`).
    pub load_designation: Option<String>,
}

/// The embedded table could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum CalibreTableError {
    #[error("calibre table is not valid CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("calibre table row {row}: {problem}")]
    Row { row: usize, problem: String },
}

/// The calibre synonym table with its lookup indexes.
pub struct CalibreTable {
    entries: Vec<Entry>,
    by_id: HashMap<String, usize>,
    /// Normalised alias (and label) → calibres listing it.
    exact: HashMap<String, Vec<usize>>,
    /// Every exact key, longest first, for the token scan.
    tokens: Vec<TokenAlias>,
    fuzzy: Vec<FuzzyAlias>,
    /// Dimension keys that are, by themselves, an alias of the calibre.
    dims_strong: HashMap<String, Vec<usize>>,
    /// Dimension keys that only occur inside longer aliases or labels.
    dims_weak: HashMap<String, Vec<usize>>,
    /// Leading number of each alias (`7.62`, `308`, `40`) → (unit written, calibre).
    designation_numbers: HashMap<String, Vec<(Unit, usize)>>,
    /// Family → members, table order.
    families: BTreeMap<String, Vec<usize>>,
}

struct Entry {
    id: String,
    label: String,
    family: String,
    related: Vec<String>,
}

struct TokenAlias {
    key: String,
    ids: Vec<usize>,
    bare: bool,
}

struct FuzzyAlias {
    key: String,
    ids: Vec<usize>,
    letters: usize,
    digits: String,
    words: usize,
}

#[derive(Deserialize)]
struct Row {
    canonical_id: String,
    canonical_label: String,
    bullet_diameter_mm_nominal: String,
    aliases: String,
    related_not_identical: String,
}

/// The unit a number is written in: `7.62mm` metric, `.308`/`40 cal` inch, `12 ga` other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Metric,
    Inch,
    Other,
    /// Query only: unit not stated.
    Any,
}

impl Unit {
    fn admits(self, designated: Unit) -> bool {
        self == Unit::Any || self == designated
    }
}

// ---------------------------------------------------------------------------------------------
// Designation and load tables
// ---------------------------------------------------------------------------------------------

/// A model designation or qualifier word: what it means alone, and after a stated diameter.
struct Designation {
    /// Regex fragment over normalised text (non-capturing groups only).
    pattern: &'static str,
    /// Calibres meant with no diameter stated; filtered by the families of any stated diameter.
    standalone: &'static [&'static str],
    /// (numbers, calibre): what the word means when one of these numbers is stated in the text.
    scoped: &'static [(&'static [&'static str], &'static str)],
}

const N762: &[&str] = &["7.62", "762"];
const N545: &[&str] = &["5.45", "545"];
const N556: &[&str] = &["5.56", "556"];
const N127: &[&str] = &["12.7", "127"];
const N145: &[&str] = &["14.5", "145"];

/// Model designations and qualifier words (longest match wins over overlapping shorter ones).
const DESIGNATIONS: &[Designation] = &[
    // Soviet 1943-model intermediate cartridge.
    Designation {
        pattern: r"m[-.]?\s?(?:19)?43|mod(?:el)?[-.]?\s?(?:19)?43|obr[-.]?\s?(?:19)?43(?:\s?g)?|[vw]z[-.]?\s?(?:19)?43",
        standalone: &["7.62x39"],
        scoped: &[],
    },
    Designation {
        pattern: r"type\s?56|ak-?47|akms?|sks|rpd|vz[-.]?\s?58",
        standalone: &["7.62x39"],
        scoped: &[],
    },
    Designation {
        pattern: r"kalashnikov",
        standalone: &["7.62x39"],
        scoped: &[(N545, "5.45x39")],
    },
    Designation {
        pattern: r"m[-.]?\s?74|ak-?74m?|aks-?74u?|rpk-?74|obr[-.]?\s?(?:19)?74(?:\s?g)?",
        standalone: &["5.45x39"],
        scoped: &[],
    },
    Designation {
        pattern: r"(?:russian|soviet)\s+short|short\s+russian",
        standalone: &["7.62x39"],
        scoped: &[],
    },
    Designation {
        pattern: r"short",
        standalone: &[],
        scoped: &[(N762, "7.62x39"), (&["30"], "7.62x39"), (&["9"], "9x17")],
    },
    Designation {
        pattern: r"soviet|ussr|sssr",
        standalone: &[],
        scoped: &[
            (N762, "7.62x39"),
            (N545, "5.45x39"),
            (N127, "12.7x108"),
            (N145, "14.5x114"),
            (&["9"], "9x18-makarov"),
        ],
    },
    Designation {
        pattern: r"russian|russia",
        standalone: &[],
        scoped: &[
            (N762, "7.62x54r"),
            (N545, "5.45x39"),
            (N127, "12.7x108"),
            (N145, "14.5x114"),
            (&["9"], "9x18-makarov"),
        ],
    },
    Designation {
        pattern: r"mosin(?:[-\s]?nagant)?|m[-.]?\s?1891(?:/30)?|m[-.]?\s?91/30|dragunov|svd|pk[mst]?|sgm|type\s?53|type\s?67",
        standalone: &["7.62x54r"],
        scoped: &[],
    },
    Designation {
        pattern: r"rimmed",
        standalone: &[],
        scoped: &[(N762, "7.62x54r")],
    },
    Designation {
        pattern: r"tokarev|tt(?:-?33)?|ppsh(?:-?41)?|type\s?51",
        standalone: &["7.62x25"],
        scoped: &[],
    },
    Designation {
        pattern: r"type\s?54",
        standalone: &["7.62x25", "12.7x108"],
        scoped: &[],
    },
    Designation {
        pattern: r"nagant|m[-.]?\s?1895",
        standalone: &["7.62x38r"],
        scoped: &[],
    },
    Designation {
        pattern: r"makarov|mak|pmm?",
        standalone: &["9x18-makarov"],
        scoped: &[],
    },
    Designation {
        pattern: r"ultra|police",
        standalone: &[],
        scoped: &[(&["9"], "9x18-ultra")],
    },
    Designation {
        pattern: r"luger|parabellum|para|p[-.]?\s?08",
        standalone: &["9x19", "7.65x21"],
        scoped: &[],
    },
    Designation {
        pattern: r"kurz|court|corto|browning\s+short",
        standalone: &[],
        scoped: &[(&["9"], "9x17")],
    },
    Designation {
        pattern: r"dshkm?|nsvt?|kord|w85|type\s?77|utyos|utes",
        standalone: &["12.7x108"],
        scoped: &[],
    },
    Designation {
        pattern: r"kpvt?|zpu(?:-?[124])?",
        standalone: &["14.5x114"],
        scoped: &[],
    },
    Designation {
        pattern: r"bmg|m2\s?hb",
        standalone: &["12.7x99-nato"],
        scoped: &[],
    },
    Designation {
        pattern: r"browning",
        standalone: &[],
        scoped: &[
            (N127, "12.7x99-nato"),
            (&["50"], "12.7x99-nato"),
            (&["7.65"], "7.65x17sr"),
        ],
    },
    Designation {
        pattern: r"acp|auto|automatic",
        standalone: &[],
        scoped: &[
            (&["45", "11.43"], ".45-acp"),
            (&["380"], "9x17"),
            (&["32", "7.65"], "7.65x17sr"),
        ],
    },
    Designation {
        pattern: r"nato",
        standalone: &[],
        scoped: &[
            (N762, "7.62x51-nato"),
            (N556, "5.56x45-nato"),
            (&["9"], "9x19"),
            (N127, "12.7x99-nato"),
            (&["50"], "12.7x99-nato"),
        ],
    },
    Designation {
        pattern: r"mauser",
        standalone: &[],
        scoped: &[
            (&["7.92", "792", "7.9", "8"], "7.92x57"),
            (&["7.63", "30"], "7.63x25-mauser"),
        ],
    },
    Designation {
        pattern: r"carbine",
        standalone: &[],
        scoped: &[(&["30"], ".30-carbine")],
    },
    Designation {
        pattern: r"springfield|sprg",
        standalone: &[],
        scoped: &[(&["30"], ".30-06")],
    },
    Designation {
        pattern: r"lee[-\s]?enfield|smle",
        standalone: &[".303-british"],
        scoped: &[],
    },
    Designation {
        pattern: r"british|brit",
        standalone: &[],
        scoped: &[(&["303", "7.7"], ".303-british")],
    },
    Designation {
        pattern: r"vz[-.]?\s?52",
        standalone: &["7.62x45-vz52"],
        scoped: &[],
    },
    Designation {
        pattern: r"grad|bm-?21",
        standalone: &["rocket-122"],
        scoped: &[],
    },
    Designation {
        pattern: r"mortar|bomb|mine|mina",
        standalone: &[],
        scoped: &[
            (&["60"], "mortar-60"),
            (&["81"], "mortar-81"),
            (&["82"], "mortar-82"),
            (&["120"], "mortar-120"),
        ],
    },
    Designation {
        pattern: r"rocket|rkt",
        standalone: &[],
        scoped: &[(&["107"], "rocket-107"), (&["122"], "rocket-122")],
    },
    Designation {
        pattern: r"gauge|ga|bore",
        standalone: &[],
        scoped: &[(&["12"], "12-gauge"), (&["20"], "20-gauge")],
    },
];

/// A load (projectile/loading) designation: not a calibre, but it implies one or a few.
struct Load {
    name: &'static str,
    calibres: &'static [&'static str],
}

const L762X39: &[&str] = &["7.62x39"];
const L545: &[&str] = &["5.45x39"];
const L556: &[&str] = &["5.56x45-nato"];
const L762X51: &[&str] = &["7.62x51-nato"];
const L762X54: &[&str] = &["7.62x54r"];
const L127X99: &[&str] = &["12.7x99-nato"];
const L40LV: &[&str] = &["40x46-lv"];
const L40HV: &[&str] = &["40x53-hv"];

/// Load designations. Spelled canonically; matching tolerates `-`, `.` or a space between the
/// letter and digit groups (`SS109`, `SS 109`; `57-N-231`, `57N231`).
const LOADS: &[Load] = &[
    // 7.62x39
    Load {
        name: "57-N-231",
        calibres: L762X39,
    },
    Load {
        name: "57-N-231S",
        calibres: L762X39,
    },
    Load {
        name: "57-T-231P",
        calibres: L762X39,
    },
    Load {
        name: "T-45",
        calibres: L762X39,
    },
    Load {
        name: "7N23",
        calibres: L762X39,
    },
    // "PS" (steel-core ball) is 57-N-231 in 7.62x39 and 7N6 in 5.45x39.
    Load {
        name: "PS",
        calibres: &["7.62x39", "5.45x39"],
    },
    Load {
        name: "BZ",
        calibres: &["7.62x39", "7.62x54r"],
    },
    // 5.45x39
    Load {
        name: "7N6",
        calibres: L545,
    },
    Load {
        name: "7N6M",
        calibres: L545,
    },
    Load {
        name: "7N10",
        calibres: L545,
    },
    Load {
        name: "7N22",
        calibres: L545,
    },
    Load {
        name: "7N24",
        calibres: L545,
    },
    Load {
        name: "7N39",
        calibres: L545,
    },
    Load {
        name: "7T3",
        calibres: L545,
    },
    Load {
        name: "7T3M",
        calibres: L545,
    },
    Load {
        name: "7U1",
        calibres: L545,
    },
    // 5.56x45 NATO
    Load {
        name: "M193",
        calibres: L556,
    },
    Load {
        name: "M196",
        calibres: L556,
    },
    Load {
        name: "M855",
        calibres: L556,
    },
    Load {
        name: "M855A1",
        calibres: L556,
    },
    Load {
        name: "M856",
        calibres: L556,
    },
    Load {
        name: "M856A1",
        calibres: L556,
    },
    Load {
        name: "M995",
        calibres: L556,
    },
    Load {
        name: "SS109",
        calibres: L556,
    },
    Load {
        name: "SS110",
        calibres: L556,
    },
    Load {
        name: "L110",
        calibres: L556,
    },
    Load {
        name: "Mk262",
        calibres: L556,
    },
    // 7.62x51 NATO
    Load {
        name: "M80",
        calibres: L762X51,
    },
    Load {
        name: "M80A1",
        calibres: L762X51,
    },
    Load {
        name: "M61",
        calibres: L762X51,
    },
    Load {
        name: "M62",
        calibres: L762X51,
    },
    Load {
        name: "M118",
        calibres: L762X51,
    },
    Load {
        name: "M118LR",
        calibres: L762X51,
    },
    Load {
        name: "M852",
        calibres: L762X51,
    },
    Load {
        name: "M993",
        calibres: L762X51,
    },
    Load {
        name: "DM41",
        calibres: L762X51,
    },
    Load {
        name: "L2A2",
        calibres: L762X51,
    },
    // 7.62x54R
    Load {
        name: "LPS",
        calibres: L762X54,
    },
    Load {
        name: "57-N-323S",
        calibres: L762X54,
    },
    Load {
        name: "7N1",
        calibres: L762X54,
    },
    Load {
        name: "7N13",
        calibres: L762X54,
    },
    Load {
        name: "7N14",
        calibres: L762X54,
    },
    Load {
        name: "7BZ-3",
        calibres: L762X54,
    },
    Load {
        name: "T-46",
        calibres: L762X54,
    },
    // Pistol
    Load {
        name: "M882",
        calibres: &["9x19"],
    },
    Load {
        name: "7N21",
        calibres: &["9x19"],
    },
    Load {
        name: "7N31",
        calibres: &["9x19"],
    },
    Load {
        name: "57-N-181S",
        calibres: &["9x18-makarov"],
    },
    Load {
        name: "57-N-134S",
        calibres: &["7.62x25"],
    },
    // Heavy machine gun
    Load {
        name: "B-32",
        calibres: &["7.62x54r", "12.7x108", "14.5x114"],
    },
    Load {
        name: "BZT",
        calibres: &["12.7x108", "14.5x114"],
    },
    Load {
        name: "BZT-44",
        calibres: &["12.7x108"],
    },
    Load {
        name: "MDZ",
        calibres: &["12.7x108", "14.5x114"],
    },
    Load {
        name: "BS-41",
        calibres: &["14.5x114"],
    },
    Load {
        name: "M33",
        calibres: L127X99,
    },
    Load {
        name: "M8",
        calibres: L127X99,
    },
    Load {
        name: "M17",
        calibres: L127X99,
    },
    Load {
        name: "M20",
        calibres: L127X99,
    },
    Load {
        name: "M903",
        calibres: L127X99,
    },
    Load {
        name: "Mk211",
        calibres: L127X99,
    },
    // M2 ball (.30-06) and M2 AP (.50).
    Load {
        name: "M2",
        calibres: &["12.7x99-nato", ".30-06"],
    },
    // 40 mm grenades
    Load {
        name: "M406",
        calibres: L40LV,
    },
    Load {
        name: "M433",
        calibres: L40LV,
    },
    Load {
        name: "M381",
        calibres: L40LV,
    },
    Load {
        name: "M576",
        calibres: L40LV,
    },
    Load {
        name: "M781",
        calibres: L40LV,
    },
    Load {
        name: "M430",
        calibres: L40HV,
    },
    Load {
        name: "M430A1",
        calibres: L40HV,
    },
    Load {
        name: "M383",
        calibres: L40HV,
    },
    Load {
        name: "M384",
        calibres: L40HV,
    },
    Load {
        name: "M918",
        calibres: L40HV,
    },
    // Other
    Load {
        name: "DBP87",
        calibres: &["5.8x42"],
    },
    Load {
        name: "DBP88",
        calibres: &["5.8x42"],
    },
    Load {
        name: "DBP10",
        calibres: &["5.8x42"],
    },
    Load {
        name: "SP-5",
        calibres: &["9x39"],
    },
    Load {
        name: "SP-6",
        calibres: &["9x39"],
    },
    Load {
        name: "PAB-9",
        calibres: &["9x39"],
    },
    Load {
        name: "SS190",
        calibres: &["5.7x28"],
    },
    Load {
        name: "SS195",
        calibres: &["5.7x28"],
    },
    Load {
        name: "SS197",
        calibres: &["5.7x28"],
    },
];

enum QualifierKind {
    Designation(&'static Designation),
    Load(&'static Load),
}

struct CompiledQualifier {
    regex: Regex,
    kind: QualifierKind,
}

/// Builds the matching regex of a load name: letter and digit groups, optionally separated.
fn load_pattern(name: &str) -> String {
    let mut groups: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut current_is_digit = None;
    for c in name.chars().flat_map(char::to_lowercase) {
        if !c.is_ascii_alphanumeric() {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            current_is_digit = None;
            continue;
        }
        let is_digit = c.is_ascii_digit();
        if current_is_digit.is_some_and(|d| d != is_digit) && !current.is_empty() {
            groups.push(std::mem::take(&mut current));
        }
        current.push(c);
        current_is_digit = Some(is_digit);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
        .iter()
        .map(|g| regex::escape(g))
        .collect::<Vec<_>>()
        .join(r"[-\s.]?")
}

static QUALIFIERS: LazyLock<Vec<CompiledQualifier>> = LazyLock::new(|| {
    let designations = DESIGNATIONS.iter().map(|d| CompiledQualifier {
        regex: Regex::new(&format!(r"\b(?:{})\b", d.pattern))
            .expect("designation patterns are constants (checked by unit test)"),
        kind: QualifierKind::Designation(d),
    });
    let loads = LOADS.iter().map(|l| CompiledQualifier {
        regex: Regex::new(&format!(r"\b(?:{})\b", load_pattern(l.name)))
            .expect("load patterns are built from constants (checked by unit test)"),
        kind: QualifierKind::Load(l),
    });
    designations.chain(loads).collect()
});

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("normalisation patterns are constants (checked by unit test)")
}

static RE_DEC_COMMA: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9]),([0-9])"));
static RE_CAL_GLUE: LazyLock<Regex> = LazyLock::new(|| re(r"\b(cal(?:iber|ibre)?)\.?(\.?[0-9])"));
static RE_CN_TYPE: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9]+)\s*式"));
static RE_DIM_JOIN: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9])\s*(?:mm\s*)?[x*]\s*([0-9])"));
static RE_DOTTED: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b([0-9]{1,2}\.[0-9]{1,2})\.([0-9]{2,3})\b"));
static RE_DIM_MM: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9]+(?:\.[0-9]+)?x[0-9]+)\s*mm"));
static RE_DIM_R: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9]+(?:\.[0-9]+)?x[0-9]+)\s+r\b"));
static RE_NUM_MM: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9])\s+mm\b"));
static RE_DOTTED_START: LazyLock<Regex> =
    LazyLock::new(|| re(r"^\s*(?:cal(?:iber|ibre)?\s+)?\.[0-9]"));
static RE_LEADING_DOT: LazyLock<Regex> = LazyLock::new(|| re(r"(^|[^0-9a-z.])\.([0-9])"));
static RE_NUM_LETTERS: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9]+(?:\.[0-9]+)?)([a-z]+)"));
static RE_AMP: LazyLock<Regex> = LazyLock::new(|| re(r"\s*&\s*"));
static RE_DIM: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9]+(?:\.[0-9]+)?)x([0-9]+)([a-z]*)"));
static RE_BARE: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?:(cal) )?([0-9]+(?:\.[0-9]+)?)(mm)?(?: (cal))?$"));
static RE_LEAD_NUMBER: LazyLock<Regex> = LazyLock::new(|| re(r"^([0-9]+(?:\.[0-9]+)?)(.*)$"));

const NOISE_WORDS: &[&str] = &[
    "ammo",
    "ammunition",
    "ammunitions",
    "cartridge",
    "cartridges",
    "round",
    "rounds",
    "rd",
    "rds",
    "bullet",
    "bullets",
    "shell",
    "shells",
    "patron",
    "patrony",
    "patronov",
    "patrone",
    "patronen",
    "cartouche",
    "cartouches",
    "cartucho",
    "cartuchos",
    "munition",
    "munitions",
];
const CAL_WORDS: &[&str] = &[
    "cal", "caliber", "calibre", "calibers", "calibres", "calibro", "kal", "kaliber", "kalibr",
];
const SEPARATORS: &[&str] = &["/", ",", ";", "|"];

/// Normalised text plus what normalisation removed but bare-diameter reading needs.
struct Prepared {
    key: String,
    /// The text began with a dot-prefixed number (`.50`), an inch designation.
    dotted: bool,
}

/// The normalised matching form of a calibre string (see the module documentation).
pub fn normalise(raw: &str) -> String {
    prepare(raw).key
}

fn prepare(raw: &str) -> Prepared {
    let mut s = String::with_capacity(raw.len() + 8);
    for c in raw.nfkc() {
        for lc in c.to_lowercase() {
            fold_char(lc, &mut s);
        }
    }
    let s = s.replace("毫米", "mm").replace("口径", " ");
    let s = RE_CN_TYPE.replace_all(&s, " type $1 ");
    let s = RE_DEC_COMMA.replace_all(&s, "$1.$2");
    let s = RE_CAL_GLUE.replace_all(&s, "$1 $2");
    let s = RE_DIM_JOIN.replace_all(&s, "${1}x$2");
    let s = s.replace('*', " ");
    let s = RE_DOTTED.replace_all(&s, "${1}x$2");
    let s = RE_DIM_MM.replace_all(&s, "$1 ");
    let s = RE_DIM_R.replace_all(&s, "${1}r");
    let s = RE_NUM_MM.replace_all(&s, "${1}mm");
    let dotted = RE_DOTTED_START.is_match(&s);
    let s = RE_LEADING_DOT.replace_all(&s, "$1$2");
    let s = split_number_letters(&s);
    let s = RE_AMP.replace_all(&s, "&");
    let key = finish_tokens(&s);
    Prepared { key, dotted }
}

/// Folds one lower-cased character into `out`.
fn fold_char(c: char, out: &mut String) {
    match c {
        '0'..='9' | 'a'..='z' => out.push(c),
        '\u{0660}'..='\u{0669}' => push_digit(out, c as u32 - 0x0660),
        '\u{06F0}'..='\u{06F9}' => push_digit(out, c as u32 - 0x06F0),
        '×' | '✕' | '✖' | '╳' | 'х' => out.push('x'),
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}' => {
            out.push('-')
        }
        '.' | ',' | '-' | '+' | '&' | '/' | ';' | '|' | '*' => out.push(c),
        // Arabic decimal separator (٧٫٦٢) and comma (used as one too, as in 7,62).
        '\u{066B}' => out.push('.'),
        '\u{060C}' | '\u{066C}' => out.push(','),
        // Invisible marks (direction marks around Arabic digits, soft hyphens, zero widths).
        c if fold::is_invisible(c) => {}
        _ => match transliterate(c) {
            Some(t) => out.push_str(t),
            None if c.is_alphanumeric() => out.push(c),
            None => out.push(' '),
        },
    }
}

fn push_digit(out: &mut String, d: u32) {
    if let Some(c) = char::from_digit(d, 10) {
        out.push(c);
    }
}

/// Cyrillic (Russian, Ukrainian, Serbian, Bulgarian) lower case → Latin. `х` is handled as `x`.
fn transliterate(c: char) -> Option<&'static str> {
    Some(match c {
        'а' => "a",
        'б' => "b",
        'в' => "v",
        'г' | 'ґ' => "g",
        'д' => "d",
        'е' | 'ё' | 'є' | 'э' => "e",
        'ж' => "zh",
        'з' => "z",
        'и' | 'і' | 'ї' | 'й' => "i",
        'ј' => "j",
        'к' => "k",
        'л' => "l",
        'љ' => "lj",
        'м' => "m",
        'н' => "n",
        'њ' => "nj",
        'о' => "o",
        'п' => "p",
        'р' => "r",
        'с' => "s",
        'т' => "t",
        'ћ' | 'ђ' => "c",
        'у' | 'ў' => "u",
        'ф' => "f",
        'ц' => "ts",
        'ч' => "ch",
        'џ' => "dz",
        'ш' => "sh",
        'щ' => "shch",
        'ъ' | 'ь' => "",
        'ы' => "y",
        'ю' => "yu",
        'я' => "ya",
        _ => return None,
    })
}

/// `556nato` → `556 nato`, `40sw` → `40 sw`, `9mmluger` → `9mm luger`; leaves `9mm`, `7.62x39`,
/// the suffix of `7.62x54r` and codes with digits on both sides of the letters (`7n6`) alone.
fn split_number_letters(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut last = 0;
    for caps in RE_NUM_LETTERS.captures_iter(s) {
        let (Some(whole), Some(num), Some(letters)) = (caps.get(0), caps.get(1), caps.get(2))
        else {
            continue;
        };
        let before = s[..whole.start()].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '.') {
            continue;
        }
        let l = letters.as_str();
        let after = s[letters.end()..].chars().next();
        // `9mm`, a dimension, or an alphanumeric code such as `7n6` or `9m22`: left whole.
        if l == "mm" || after.is_some_and(|c| c.is_ascii_digit()) {
            continue;
        }
        let split_at = if l.len() > 2 && l.starts_with("mm") {
            num.end() + 2
        } else {
            num.end()
        };
        out.push_str(&s[last..split_at]);
        out.push(' ');
        last = split_at;
    }
    out.push_str(&s[last..]);
    out
}

fn is_plain_number(t: &str) -> bool {
    let mut parts = t.splitn(2, '.');
    let int_ok = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let frac_ok = parts
        .next()
        .is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    int_ok && frac_ok
}

/// Separators padded, trailing dots of words dropped, noise words removed, `cal` kept only
/// next to a bare number, whitespace collapsed.
fn finish_tokens(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut padded = String::with_capacity(s.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        match c {
            ',' | ';' | '|' => {
                padded.push(' ');
                padded.push(c);
                padded.push(' ');
            }
            // `12/70` (gauge/chamber) and `91/30` (model) stay whole; any other slash separates.
            '/' => {
                let left = chars[..i]
                    .iter()
                    .rev()
                    .take_while(|c| c.is_ascii_digit() || **c == '.');
                let left: String = left.collect();
                let right: String = chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || **c == '.')
                    .collect();
                let left_ok = (1..=2).contains(&left.len()) && !left.contains('.');
                let left_alone = chars[..i - left.len()]
                    .last()
                    .is_none_or(|c| !c.is_ascii_digit() && *c != '.' && *c != 'x');
                if left_ok && left_alone && right.len() == 2 && !right.contains('.') {
                    padded.push('/');
                } else {
                    padded.push_str(" / ");
                }
            }
            _ => padded.push(c),
        }
    }
    let mut tokens: Vec<&str> = Vec::new();
    for token in padded.split_whitespace() {
        let mut t = token;
        while let Some(stripped) = t.strip_suffix('.') {
            if stripped
                .chars()
                .next_back()
                .is_some_and(char::is_alphabetic)
            {
                t = stripped;
            } else {
                break;
            }
        }
        if matches!(t, "" | "." | "-" | "+" | "&") || NOISE_WORDS.contains(&t) {
            continue;
        }
        if CAL_WORDS.contains(&t) {
            tokens.push("cal");
        } else {
            tokens.push(t);
        }
    }
    let mut kept: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, &t) in tokens.iter().enumerate() {
        if t == "cal" {
            let prev_num = i > 0 && is_plain_number(tokens[i - 1]);
            let next_num = tokens.get(i + 1).is_some_and(|n| is_plain_number(n));
            if !(prev_num || next_num) || kept.last() == Some(&"cal") {
                continue;
            }
        }
        if SEPARATORS.contains(&t) && kept.last().is_none_or(|l| SEPARATORS.contains(l)) {
            continue;
        }
        kept.push(t);
    }
    while kept.last().is_some_and(|l| SEPARATORS.contains(l)) {
        kept.pop();
    }
    kept.join(" ")
}

/// Words that describe a load or its packaging, never a different cartridge.
const DESCRIPTORS: &[&str] = &[
    "+p",
    "+p+",
    "p+",
    "fmj",
    "tmj",
    "jhp",
    "hp",
    "jsp",
    "sp",
    "hollow",
    "point",
    "soft",
    "ball",
    "tracer",
    "ap",
    "api",
    "subsonic",
    "supersonic",
    "match",
    "target",
    "training",
    "practice",
    "defense",
    "defence",
    "steel",
    "brass",
    "nickel",
    "lead",
    "free",
    "lf",
    "frangible",
    "blank",
    "blanks",
    "dummy",
    "gr",
    "grain",
    "grains",
    "g",
    "box",
    "boxes",
    "pack",
    "bulk",
    "new",
    "factory",
    "military",
    "surplus",
    "reloaded",
    "case",
    "cased",
];

fn is_descriptor(word: &str) -> bool {
    word.is_empty()
        || DESCRIPTORS.contains(&word)
        || SEPARATORS.contains(&word)
        || is_plain_number(word)
}

fn canon_number(n: &str) -> String {
    if n.contains('.') {
        let t = n.trim_end_matches('0').trim_end_matches('.');
        if t.is_empty() {
            "0".to_owned()
        } else {
            t.to_owned()
        }
    } else {
        n.to_owned()
    }
}

fn is_bare_key(key: &str) -> bool {
    let number = key.strip_suffix("mm").unwrap_or(key);
    is_plain_number(number)
}

/// Letters of a key, not counting a `mm` unit glued to a number.
fn letter_count(key: &str) -> usize {
    let without_unit = RE_NUM_MM_GLUED.replace_all(key, "$1");
    without_unit.chars().filter(|c| c.is_alphabetic()).count()
}

static RE_NUM_MM_GLUED: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9])mm\b"));

fn digits_of(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// The leading number of a normalised alias and the unit it is written in.
fn leading_number(key: &str, dotted: bool) -> Option<(String, Unit)> {
    let caps = RE_LEAD_NUMBER.captures(key)?;
    let num = canon_number(caps.get(1)?.as_str());
    let rest = caps.get(2).map_or("", |m| m.as_str());
    // A number glued to letters other than `mm`/`x` is part of a code (`9m22`), not a bore.
    let separated =
        rest.is_empty() || rest.starts_with(['x', ' ', '/', '-']) || rest.starts_with("mm");
    if !separated {
        return None;
    }
    let next_word = rest.trim_start().split(' ').next().unwrap_or("");
    let unit = if rest.starts_with("mm")
        || rest
            .strip_prefix('x')
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    {
        Unit::Metric
    } else if matches!(next_word, "ga" | "gauge" | "bore") || rest.starts_with('/') {
        Unit::Other
    } else if num.contains('.') {
        Unit::Metric
    } else if dotted || next_word == "cal" || num.parse::<u32>().is_ok_and(|n| n >= 17) {
        // `.308`, `40 cal`, and integers from 17 up (`22 LR`, `45 ACP`) are inch designations.
        Unit::Inch
    } else {
        Unit::Other
    };
    Some((num, unit))
}

/// A dimension key found in normalised text.
struct DimFound {
    start: usize,
    end: usize,
    diameter: String,
    length: String,
    rimmed: bool,
}

fn find_dimensions(text: &str) -> Vec<DimFound> {
    let mut found = Vec::new();
    for caps in RE_DIM.captures_iter(text) {
        let (Some(whole), Some(d), Some(l)) = (caps.get(0), caps.get(1), caps.get(2)) else {
            continue;
        };
        let before = text[..whole.start()].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '.') {
            continue;
        }
        let suffix = caps.get(3).map_or("", |m| m.as_str());
        found.push(DimFound {
            start: whole.start(),
            end: whole.end(),
            diameter: canon_number(d.as_str()),
            length: l.as_str().to_owned(),
            rimmed: suffix == "r",
        });
    }
    found
}

fn dim_key(diameter: &str, length: &str, rimmed: bool) -> String {
    format!("{diameter}x{length}{}", if rimmed { "r" } else { "" })
}

// ---------------------------------------------------------------------------------------------
// Table construction
// ---------------------------------------------------------------------------------------------

fn family_for_diameter(d: f64) -> String {
    FAMILY_BUCKETS
        .iter()
        .find(|(_, lo, hi)| d >= *lo && d < *hi)
        .map_or_else(|| format!("{d}"), |(label, _, _)| (*label).to_owned())
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

static EMBEDDED: LazyLock<CalibreTable> = LazyLock::new(|| {
    CalibreTable::from_csv(CALIBRE_CSV)
        .expect("embedded data/calibre_synonyms.csv must parse (checked by unit test)")
});

impl CalibreTable {
    /// The table embedded from `data/calibre_synonyms.csv`, parsed on first use.
    pub fn embedded() -> &'static CalibreTable {
        &EMBEDDED
    }

    /// Parses a table with the columns of `calibre_synonyms.csv`.
    pub fn from_csv(text: &str) -> Result<CalibreTable, CalibreTableError> {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut entries = Vec::new();
        let mut by_id = HashMap::new();
        let mut alias_lists = Vec::new();
        for (i, row) in reader.deserialize::<Row>().enumerate() {
            let row = row?;
            let line = i + 2;
            let id = row.canonical_id.trim().to_owned();
            if id.is_empty() {
                return Err(CalibreTableError::Row {
                    row: line,
                    problem: "empty canonical_id".into(),
                });
            }
            let diameter = row.bullet_diameter_mm_nominal.trim();
            let family = if diameter.is_empty() {
                id.clone()
            } else {
                let d: f64 = diameter.parse().map_err(|_| CalibreTableError::Row {
                    row: line,
                    problem: format!("bad bullet_diameter_mm_nominal {diameter:?}"),
                })?;
                family_for_diameter(d)
            };
            if by_id.insert(id.clone(), entries.len()).is_some() {
                return Err(CalibreTableError::Row {
                    row: line,
                    problem: format!("duplicate id {id}"),
                });
            }
            let related = split_list(&row.related_not_identical);
            let mut aliases = split_list(&row.aliases);
            aliases.push(row.canonical_label.trim().to_owned());
            alias_lists.push(aliases);
            entries.push(Entry {
                id,
                label: row.canonical_label.trim().to_owned(),
                family,
                related,
            });
        }

        let mut table = CalibreTable {
            entries,
            by_id,
            exact: HashMap::new(),
            tokens: Vec::new(),
            fuzzy: Vec::new(),
            dims_strong: HashMap::new(),
            dims_weak: HashMap::new(),
            designation_numbers: HashMap::new(),
            families: BTreeMap::new(),
        };
        for (idx, entry) in table.entries.iter().enumerate() {
            table
                .families
                .entry(entry.family.clone())
                .or_default()
                .push(idx);
        }
        for (idx, aliases) in alias_lists.iter().enumerate() {
            for alias in aliases {
                table.index_alias(idx, alias);
            }
        }
        let mut tokens: Vec<TokenAlias> = table
            .exact
            .iter()
            .map(|(key, ids)| TokenAlias {
                key: key.clone(),
                ids: ids.clone(),
                bare: is_bare_key(key),
            })
            .collect();
        tokens.sort_by(|a, b| {
            b.key
                .len()
                .cmp(&a.key.len())
                .then_with(|| a.key.cmp(&b.key))
        });
        table.tokens = tokens;
        table.fuzzy.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(table)
    }

    fn index_alias(&mut self, idx: usize, alias: &str) {
        let prepared = prepare(alias);
        let key = prepared.key;
        if key.is_empty() {
            return;
        }
        let bare = is_bare_key(&key);
        push_unique(self.exact.entry(key.clone()).or_default(), idx);
        if key.contains('-') {
            for variant in [key.replace('-', " "), key.replace('-', "")] {
                if !is_bare_key(&variant) {
                    push_unique(self.exact.entry(variant).or_default(), idx);
                }
            }
        }
        if let Some((num, unit)) = leading_number(&key, prepared.dotted) {
            push_unique(
                self.designation_numbers.entry(num).or_default(),
                (unit, idx),
            );
        }
        for dim in find_dimensions(&key) {
            let k = dim_key(&dim.diameter, &dim.length, dim.rimmed);
            let whole = dim.start == 0 && dim.end == key.len();
            let map = if whole {
                &mut self.dims_strong
            } else {
                &mut self.dims_weak
            };
            push_unique(map.entry(k).or_default(), idx);
        }
        let letters = letter_count(&key);
        if !bare && key.len() >= 5 && letters >= 5 && !self.fuzzy.iter().any(|f| f.key == key) {
            self.fuzzy.push(FuzzyAlias {
                digits: digits_of(&key),
                words: key.split(' ').count(),
                key,
                ids: vec![idx],
                letters,
            });
        } else if let Some(f) = self.fuzzy.iter_mut().find(|f| f.key == key) {
            push_unique(&mut f.ids, idx);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Accessors
    // -----------------------------------------------------------------------------------------

    /// The family of a canonical id (`7.62x39` → `7.62`).
    pub fn family_of(&self, canonical_id: &str) -> Option<&str> {
        self.by_id
            .get(canonical_id)
            .map(|&i| self.entries[i].family.as_str())
    }

    /// The `related_not_identical` ids of a canonical id (empty when unknown).
    pub fn related(&self, canonical_id: &str) -> &[String] {
        self.by_id
            .get(canonical_id)
            .map_or(&[], |&i| self.entries[i].related.as_slice())
    }

    /// The display label of a canonical id.
    pub fn label(&self, canonical_id: &str) -> Option<&str> {
        self.by_id
            .get(canonical_id)
            .map(|&i| self.entries[i].label.as_str())
    }

    /// Every canonical id, in table order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.id.as_str())
    }

    /// The members of a family, in table order (empty when unknown).
    pub fn family_members(&self, family: &str) -> Vec<&str> {
        self.families
            .get(family)
            .map(|m| m.iter().map(|&i| self.entries[i].id.as_str()).collect())
            .unwrap_or_default()
    }

    // -----------------------------------------------------------------------------------------
    // Resolution
    // -----------------------------------------------------------------------------------------

    /// Resolves a raw calibre string with the embedded table, remembering recent strings
    /// (see [`super::Memo`]).
    pub fn resolve_embedded(raw: &str) -> CalibreResolution {
        CalibreResolution::clone(&Self::resolve_shared(raw))
    }

    /// [`CalibreTable::resolve_embedded`], shared with every other caller of the same text.
    pub fn resolve_shared(raw: &str) -> std::sync::Arc<CalibreResolution> {
        static MEMO: LazyLock<super::Memo<CalibreResolution>> =
            LazyLock::new(|| super::Memo::new(4096));
        MEMO.get(raw, |raw| EMBEDDED.resolve(raw))
    }

    /// Resolves a raw calibre string. Total and deterministic on any input.
    pub fn resolve(&self, raw: &str) -> CalibreResolution {
        let prepared = prepare(raw);
        self.resolve_key(&prepared.key, prepared.dotted, true)
    }

    fn resolve_key(&self, key: &str, dotted: bool, allow_segments: bool) -> CalibreResolution {
        if key.is_empty() {
            return self.unresolved();
        }
        let loads = self.find_qualifiers(key, true);
        // 1. Exact alias.
        if let Some(ids) = self.exact.get(key) {
            let bare = is_bare_key(key);
            return if ids.len() == 1 {
                let conf = if bare {
                    Confidence::Low
                } else {
                    Confidence::High
                };
                self.resolved(ids[0], CalibreMatch::Alias, "alias_table", conf, &loads)
            } else {
                self.several(
                    ids.clone(),
                    CalibreMatch::Ambiguous,
                    "alias_table",
                    Confidence::Low,
                    &loads,
                )
            };
        }
        // 2. Bare diameter.
        if let Some(caps) = RE_BARE.captures(key) {
            let number = caps.get(2).map_or("", |m| m.as_str());
            let unit = if caps.get(3).is_some() {
                Unit::Metric
            } else if dotted || caps.get(1).is_some() || caps.get(4).is_some() {
                Unit::Inch
            } else {
                Unit::Any
            };
            let members = self.family_candidates(&canon_number(number), unit);
            return if members.is_empty() {
                self.unresolved()
            } else {
                self.several(
                    members,
                    CalibreMatch::Ambiguous,
                    "bare_diameter",
                    Confidence::Low,
                    &loads,
                )
            };
        }
        // 3. Conflation across separators.
        if allow_segments && let Some(r) = self.resolve_segments(key, &loads) {
            return r;
        }
        // 4. Dimension keys and alias tokens.
        let mentions = self.mentions(key);
        if let Some(r) = self.decide_mentions(&mentions, &loads) {
            return r;
        }
        // 5. Designations and loads.
        if let Some(r) = self.decide_qualifiers(key) {
            return r;
        }
        // 6. Fuzzy alias.
        if let Some(r) = self.fuzzy_match(key, &loads) {
            return r;
        }
        // 7. A bare-diameter alias inside longer text, followed only by descriptors
        // (`Partizan 9mm`, `9mm +P 115gr`; not `9mm Flobert`, which names another cartridge).
        if let Some(m) = mentions
            .iter()
            .find(|m| m.bare && m.ids.len() == 1 && key[m.end..].split(' ').all(is_descriptor))
        {
            return self.resolved(
                m.ids[0],
                CalibreMatch::Token,
                "alias_token",
                Confidence::Low,
                &loads,
            );
        }
        // 8. A diameter stated inside unknown text.
        let stated = self.stated_numbers(key, &[]);
        let mut members = Vec::new();
        for (num, unit) in &stated {
            for id in self.family_candidates(num, *unit) {
                push_unique(&mut members, id);
            }
        }
        if !members.is_empty() {
            members.sort_unstable();
            return self.several(
                members,
                CalibreMatch::Ambiguous,
                "bare_diameter",
                Confidence::Low,
                &loads,
            );
        }
        self.unresolved()
    }

    /// Splits on `/ , ; |` and `or`; reports [`CalibreMatch::Multi`] when the parts name
    /// different calibres (or one known and one unknown calibre).
    fn resolve_segments(&self, key: &str, loads: &[QualifierHit]) -> Option<CalibreResolution> {
        let tokens: Vec<&str> = key.split(' ').collect();
        let mut segments: Vec<Vec<&str>> = vec![Vec::new()];
        for t in tokens {
            if SEPARATORS.contains(&t) || t == "or" {
                segments.push(Vec::new());
            } else if let Some(last) = segments.last_mut() {
                last.push(t);
            }
        }
        segments.retain(|s| !s.is_empty());
        if segments.len() < 2 {
            return None;
        }
        let mut definite: Vec<usize> = Vec::new();
        let mut others: Vec<Vec<usize>> = Vec::new();
        let mut unknown_calibres = 0;
        for segment in &segments {
            let text = segment.join(" ");
            let r = self.resolve_key(&text, false, false);
            // A number followed by unknown words (`22 magnum`) is a calibre the table lacks.
            let unknown = r.match_kind == CalibreMatch::Unresolved
                || (r.method == "bare_diameter" && !RE_BARE.is_match(&text));
            if unknown {
                if self.looks_like_calibre(&text) {
                    unknown_calibres += 1;
                }
                continue;
            }
            match r.canonical_id.as_deref().and_then(|c| self.by_id.get(c)) {
                Some(&i) => push_unique(&mut definite, i),
                None => others.push(
                    r.candidates
                        .iter()
                        .filter_map(|c| self.by_id.get(c).copied())
                        .collect(),
                ),
            }
        }
        let disjoint: Vec<Vec<usize>> = others
            .into_iter()
            .filter(|set| !set.iter().any(|i| definite.contains(i)))
            .collect();
        let distinct = definite.len() + disjoint.len() + unknown_calibres;
        if definite.is_empty() || distinct < 2 {
            return None;
        }
        let mut ids = definite;
        for set in disjoint {
            for i in set {
                push_unique(&mut ids, i);
            }
        }
        Some(self.several(
            ids,
            CalibreMatch::Multi,
            "segments",
            Confidence::Medium,
            loads,
        ))
    }

    /// Unresolved text that still names a calibre: a dimension, or a known designation number
    /// followed by a word (`22 magnum`).
    fn looks_like_calibre(&self, text: &str) -> bool {
        if !find_dimensions(text).is_empty() {
            return true;
        }
        let mut words = text.split(' ');
        let first = words.next().unwrap_or("");
        let number = first.strip_suffix("mm").unwrap_or(first);
        is_plain_number(number)
            && words.next().is_some()
            && self.designation_numbers.contains_key(&canon_number(number))
    }

    /// Dimension and alias mentions, overlaps removed (longest first).
    fn mentions(&self, key: &str) -> Vec<Mention> {
        let mut all: Vec<Mention> = Vec::new();
        for dim in find_dimensions(key) {
            if let Some((ids, strong)) = self.lookup_dimension(&dim) {
                all.push(Mention {
                    start: dim.start,
                    end: dim.end,
                    ids,
                    bare: false,
                    dimension: Some(strong),
                });
            }
        }
        for alias in &self.tokens {
            for (start, _) in key.match_indices(alias.key.as_str()) {
                let end = start + alias.key.len();
                if on_boundaries(key, start, end) {
                    all.push(Mention {
                        start,
                        end,
                        ids: alias.ids.clone(),
                        bare: alias.bare,
                        dimension: None,
                    });
                }
            }
        }
        // Longest first; at equal length a dimension before an alias, then leftmost.
        all.sort_by(|a, b| {
            (b.end - b.start)
                .cmp(&(a.end - a.start))
                .then_with(|| b.dimension.is_some().cmp(&a.dimension.is_some()))
                .then_with(|| a.start.cmp(&b.start))
        });
        let mut accepted: Vec<Mention> = Vec::new();
        for m in all {
            if accepted
                .iter()
                .all(|a| m.end <= a.start || m.start >= a.end)
            {
                accepted.push(m);
            }
        }
        accepted.sort_by_key(|m| m.start);
        accepted
    }

    fn lookup_dimension(&self, dim: &DimFound) -> Option<(Vec<usize>, bool)> {
        let mut diameters = vec![dim.diameter.clone()];
        // Compact forms: 762x39 → 7.62x39, 127x108 → 12.7x108.
        if !dim.diameter.contains('.') && dim.diameter.len() >= 3 {
            for cut in 1..dim.diameter.len() {
                diameters.push(format!("{}.{}", &dim.diameter[..cut], &dim.diameter[cut..]));
            }
        }
        let mut keys = Vec::new();
        for d in &diameters {
            keys.push(dim_key(d, &dim.length, dim.rimmed));
            keys.push(dim_key(d, &dim.length, !dim.rimmed));
        }
        for (map, strong) in [(&self.dims_strong, true), (&self.dims_weak, false)] {
            for k in &keys {
                if let Some(ids) = map.get(k) {
                    return Some((ids.clone(), strong));
                }
            }
        }
        None
    }

    fn decide_mentions(
        &self,
        mentions: &[Mention],
        loads: &[QualifierHit],
    ) -> Option<CalibreResolution> {
        let strong: Vec<&Mention> = mentions.iter().filter(|m| !m.bare).collect();
        if strong.is_empty() {
            return None;
        }
        let mut definite: Vec<usize> = Vec::new();
        for m in &strong {
            if let [only] = m.ids.as_slice() {
                push_unique(&mut definite, *only);
            }
        }
        // Groups of ids, one per calibre named.
        let mut groups: Vec<Vec<usize>> = definite.iter().map(|&i| vec![i]).collect();
        // An ambiguous mention is covered by a definite id it contains, narrows an overlapping
        // ambiguous group, or else names one more calibre.
        for m in strong.iter().filter(|m| m.ids.len() > 1) {
            if m.ids.iter().any(|i| definite.contains(i)) {
                continue;
            }
            let overlapping = groups
                .iter_mut()
                .find(|g| g.len() > 1 && g.iter().any(|i| m.ids.contains(i)));
            match overlapping {
                Some(g) => g.retain(|i| m.ids.contains(i)),
                None => groups.push(m.ids.clone()),
            }
        }
        // A bare-diameter alias of another family is another calibre (`9mm 40 S&W`).
        for m in mentions.iter().filter(|m| m.bare) {
            if let [only] = m.ids.as_slice() {
                let family = &self.entries[*only].family;
                let shares = groups
                    .iter()
                    .flatten()
                    .any(|&i| &self.entries[i].family == family);
                if !shares {
                    groups.push(vec![*only]);
                }
            }
        }
        match groups.as_slice() {
            [] => None,
            [single] if single.len() == 1 => {
                let id = single[0];
                let dim = strong
                    .iter()
                    .filter(|m| m.ids.contains(&id))
                    .find_map(|m| m.dimension);
                Some(match dim {
                    Some(true) => self.resolved(
                        id,
                        CalibreMatch::Dimension,
                        "dimension_key",
                        Confidence::High,
                        loads,
                    ),
                    Some(false) => self.resolved(
                        id,
                        CalibreMatch::Dimension,
                        "dimension_key",
                        Confidence::Medium,
                        loads,
                    ),
                    None => self.resolved(
                        id,
                        CalibreMatch::Token,
                        "alias_token",
                        Confidence::Medium,
                        loads,
                    ),
                })
            }
            [set] => {
                let method = if strong.iter().any(|m| m.dimension.is_some()) {
                    "dimension_key"
                } else {
                    "alias_token"
                };
                Some(self.several(
                    set.clone(),
                    CalibreMatch::Ambiguous,
                    method,
                    Confidence::Low,
                    loads,
                ))
            }
            _ => {
                let mut ids = Vec::new();
                for g in groups {
                    for i in g {
                        push_unique(&mut ids, i);
                    }
                }
                Some(self.several(
                    ids,
                    CalibreMatch::Multi,
                    "multiple_calibres",
                    Confidence::Medium,
                    loads,
                ))
            }
        }
    }

    /// Load hits, and designation hits unless `loads_only`; overlaps removed (longest wins).
    fn find_qualifiers(&self, key: &str, loads_only: bool) -> Vec<QualifierHit> {
        let mut all: Vec<QualifierHit> = Vec::new();
        for q in QUALIFIERS.iter() {
            if loads_only && matches!(q.kind, QualifierKind::Designation(_)) {
                continue;
            }
            for m in q.regex.find_iter(key) {
                all.push(QualifierHit {
                    start: m.start(),
                    end: m.end(),
                    kind: &q.kind,
                });
            }
        }
        all.sort_by(|a, b| {
            (b.end - b.start)
                .cmp(&(a.end - a.start))
                .then_with(|| a.start.cmp(&b.start))
        });
        let mut accepted: Vec<QualifierHit> = Vec::new();
        for h in all {
            if accepted
                .iter()
                .all(|a| h.end <= a.start || h.start >= a.end)
            {
                accepted.push(h);
            }
        }
        accepted.sort_by_key(|h| h.start);
        accepted
    }

    /// Numbers stated in the text outside the given spans (`7.62`, `9mm`, `50 cal`).
    fn stated_numbers(&self, key: &str, exclude: &[(usize, usize)]) -> Vec<(String, Unit)> {
        let mut out: Vec<(String, Unit)> = Vec::new();
        let tokens: Vec<(usize, &str)> = key
            .split(' ')
            .scan(0usize, |pos, t| {
                let start = *pos;
                *pos += t.len() + 1;
                Some((start, t))
            })
            .collect();
        for (i, &(start, t)) in tokens.iter().enumerate() {
            let end = start + t.len();
            if exclude.iter().any(|&(s, e)| start < e && end > s) {
                continue;
            }
            let (number, metric) = match t.strip_suffix("mm") {
                Some(n) => (n, true),
                None => (t, false),
            };
            if !is_plain_number(number) {
                continue;
            }
            let next = tokens.get(i + 1).map_or("", |(_, n)| *n);
            let cal_prev = i > 0 && tokens[i - 1].1 == "cal";
            // Inside longer text an integer from 17 up without `mm` is an inch designation
            // (`30 Super Carry`); metric bores of that size are written with `mm`.
            let unit = if metric {
                Unit::Metric
            } else if matches!(next, "ga" | "gauge" | "bore") {
                Unit::Other
            } else if next == "cal" || cal_prev || number.parse::<u32>().is_ok_and(|n| n >= 17) {
                Unit::Inch
            } else {
                Unit::Any
            };
            push_unique(&mut out, (canon_number(number), unit));
        }
        out
    }

    /// Every member of the families a number designates in the given unit.
    fn family_candidates(&self, number: &str, unit: Unit) -> Vec<usize> {
        let mut families: BTreeSet<&str> = BTreeSet::new();
        if let Some(list) = self.designation_numbers.get(number) {
            for &(u, idx) in list {
                if unit.admits(u) {
                    families.insert(self.entries[idx].family.as_str());
                }
            }
        }
        if matches!(unit, Unit::Metric | Unit::Any) && self.families.contains_key(number) {
            families.insert(number);
        }
        let mut members: Vec<usize> = families
            .iter()
            .filter_map(|f| self.families.get(*f))
            .flatten()
            .copied()
            .collect();
        members.sort_unstable();
        members.dedup();
        members
    }

    fn decide_qualifiers(&self, key: &str) -> Option<CalibreResolution> {
        let hits = self.find_qualifiers(key, false);
        if hits.is_empty() {
            return None;
        }
        let mut exclude: Vec<(usize, usize)> = hits.iter().map(|h| (h.start, h.end)).collect();
        exclude.extend(find_dimensions(key).iter().map(|d| (d.start, d.end)));
        let stated = self.stated_numbers(key, &exclude);
        let stated_members: Vec<usize> = {
            let mut m: Vec<usize> = stated
                .iter()
                .flat_map(|(n, u)| self.family_candidates(n, *u))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        let mut sets: Vec<(Vec<usize>, bool)> = Vec::new();
        for h in &hits {
            let ids = match h.kind {
                QualifierKind::Designation(d) => {
                    let mut ids: Vec<usize> = Vec::new();
                    for (numbers, id) in d.scoped {
                        let named = stated.iter().any(|(n, _)| numbers.contains(&n.as_str()));
                        if let (true, Some(&i)) = (named, self.by_id.get(*id)) {
                            push_unique(&mut ids, i);
                        }
                    }
                    for id in d.standalone.iter().filter_map(|id| self.by_id.get(*id)) {
                        if stated.is_empty() || stated_members.contains(id) {
                            push_unique(&mut ids, *id);
                        }
                    }
                    ids
                }
                QualifierKind::Load(l) => l
                    .calibres
                    .iter()
                    .filter_map(|id| self.by_id.get(*id).copied())
                    .filter(|id| stated.is_empty() || stated_members.contains(id))
                    .collect(),
            };
            if !ids.is_empty() {
                sets.push((ids, matches!(h.kind, QualifierKind::Designation(_))));
            }
        }
        if sets.is_empty() {
            return None;
        }
        let mut common: Vec<usize> = sets[0].0.clone();
        for (set, _) in &sets[1..] {
            common.retain(|i| set.contains(i));
        }
        let by_designation = sets.iter().any(|(_, d)| *d);
        let (kind, method) = if by_designation {
            (CalibreMatch::Token, "designation")
        } else {
            (CalibreMatch::Load, "load_table")
        };
        let load_hits: Vec<QualifierHit> = hits
            .iter()
            .filter(|h| matches!(h.kind, QualifierKind::Load(_)))
            .cloned()
            .collect();
        Some(match common.as_slice() {
            [only] => self.resolved(*only, kind, method, Confidence::Medium, &load_hits),
            [] => {
                let mut union = Vec::new();
                for i in sets.into_iter().flat_map(|(s, _)| s) {
                    push_unique(&mut union, i);
                }
                union.sort_unstable();
                self.several(
                    union,
                    CalibreMatch::Ambiguous,
                    method,
                    Confidence::Low,
                    &load_hits,
                )
            }
            _ => {
                common.sort_unstable();
                self.several(
                    common,
                    CalibreMatch::Ambiguous,
                    method,
                    Confidence::Low,
                    &load_hits,
                )
            }
        })
    }

    fn fuzzy_match(&self, key: &str, loads: &[QualifierHit]) -> Option<CalibreResolution> {
        if key.len() > FUZZY_MAX_LEN {
            return None;
        }
        let words: Vec<&str> = key.split(' ').collect();
        let mut best: Option<(usize, Vec<usize>)> = None;
        for alias in &self.fuzzy {
            if alias.words > words.len() {
                continue;
            }
            let max = if alias.letters >= 8 { 2 } else { 1 };
            for window in words.windows(alias.words) {
                let text = window.join(" ");
                if text.len().abs_diff(alias.key.len()) > max || digits_of(&text) != alias.digits {
                    continue;
                }
                let d = strsim::damerau_levenshtein(&text, &alias.key);
                if d == 0 || d > max {
                    continue;
                }
                match &mut best {
                    Some((bd, ids)) if *bd == d => {
                        for &i in &alias.ids {
                            push_unique(ids, i);
                        }
                    }
                    Some((bd, _)) if *bd < d => {}
                    _ => best = Some((d, alias.ids.clone())),
                }
            }
        }
        let (_, mut ids) = best?;
        Some(if let [only] = ids.as_slice() {
            self.resolved(
                *only,
                CalibreMatch::Fuzzy,
                "fuzzy_alias",
                Confidence::Low,
                loads,
            )
        } else {
            ids.sort_unstable();
            self.several(
                ids,
                CalibreMatch::Ambiguous,
                "fuzzy_alias",
                Confidence::Low,
                loads,
            )
        })
    }

    // -----------------------------------------------------------------------------------------
    // Result builders
    // -----------------------------------------------------------------------------------------

    fn load_for(&self, loads: &[QualifierHit], ids: &[usize]) -> Option<String> {
        loads.iter().find_map(|h| match h.kind {
            QualifierKind::Load(l)
                if l.calibres
                    .iter()
                    .any(|c| self.by_id.get(*c).is_some_and(|i| ids.contains(i))) =>
            {
                Some(l.name.to_owned())
            }
            _ => None,
        })
    }

    fn families_of(&self, ids: &[usize]) -> Vec<String> {
        let set: BTreeSet<&str> = ids
            .iter()
            .map(|&i| self.entries[i].family.as_str())
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }

    fn resolved(
        &self,
        idx: usize,
        match_kind: CalibreMatch,
        method: &'static str,
        confidence: Confidence,
        loads: &[QualifierHit],
    ) -> CalibreResolution {
        let id = self.entries[idx].id.clone();
        CalibreResolution {
            canonical_id: Some(id.clone()),
            match_kind,
            candidates: vec![id],
            families: self.families_of(&[idx]),
            method,
            confidence,
            load_designation: self.load_for(loads, &[idx]),
        }
    }

    fn several(
        &self,
        ids: Vec<usize>,
        match_kind: CalibreMatch,
        method: &'static str,
        confidence: Confidence,
        loads: &[QualifierHit],
    ) -> CalibreResolution {
        CalibreResolution {
            canonical_id: None,
            match_kind,
            candidates: ids.iter().map(|&i| self.entries[i].id.clone()).collect(),
            families: self.families_of(&ids),
            method,
            confidence,
            load_designation: self.load_for(loads, &ids),
        }
    }

    fn unresolved(&self) -> CalibreResolution {
        CalibreResolution {
            canonical_id: None,
            match_kind: CalibreMatch::Unresolved,
            candidates: Vec::new(),
            families: Vec::new(),
            method: "none",
            confidence: Confidence::Unverified,
            load_designation: None,
        }
    }
}

struct Mention {
    start: usize,
    end: usize,
    ids: Vec<usize>,
    /// The alias is a bare diameter (`9mm`): weak evidence.
    bare: bool,
    /// `Some(strong)` for a dimension mention.
    dimension: Option<bool>,
}

#[derive(Clone)]
struct QualifierHit {
    start: usize,
    end: usize,
    kind: &'static QualifierKind,
}

/// True when `key[start..end]` is not glued to a neighbouring letter, digit or decimal point.
fn on_boundaries(key: &str, start: usize, end: usize) -> bool {
    let before = key[..start].chars().next_back();
    let mut after = key[end..].chars();
    let next = after.next();
    let next2 = after.next();
    let before_ok = before.is_none_or(|c| !c.is_alphanumeric() && c != '.');
    let after_ok = match next {
        None => true,
        Some('.') => !next2.is_some_and(|c| c.is_ascii_digit()),
        Some(c) => !c.is_alphanumeric(),
    };
    before_ok && after_ok
}

fn split_list(s: &str) -> Vec<String> {
    s.split('|')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> &'static CalibreTable {
        CalibreTable::embedded()
    }

    fn id_of(raw: &str) -> Option<String> {
        table().resolve(raw).canonical_id
    }

    #[test]
    fn embedded_table_and_patterns_parse() {
        let t = CalibreTable::from_csv(CALIBRE_CSV).expect("embedded table parses");
        assert_eq!(t.ids().count(), 50);
        assert_eq!(QUALIFIERS.len(), DESIGNATIONS.len() + LOADS.len());
        // Force every normalisation regex.
        assert_eq!(normalise("7,62 x 39 mm"), "7.62x39");
    }

    #[test]
    fn qualifier_tables_name_known_ids_and_families() {
        let t = table();
        for d in DESIGNATIONS {
            for id in d.standalone.iter().chain(d.scoped.iter().map(|(_, id)| id)) {
                assert!(
                    t.label(id).is_some(),
                    "designation {} names unknown id {id}",
                    d.pattern
                );
            }
        }
        for l in LOADS {
            for id in l.calibres {
                assert!(
                    t.label(id).is_some(),
                    "load {} names unknown id {id}",
                    l.name
                );
            }
        }
    }

    #[test]
    fn every_alias_resolves_to_its_own_id() {
        let mut reader = csv::Reader::from_reader(CALIBRE_CSV.as_bytes());
        let mut listed: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut rows = Vec::new();
        for row in reader.deserialize::<Row>() {
            let row = row.expect("row");
            for alias in split_list(&row.aliases) {
                listed
                    .entry(normalise(&alias))
                    .or_default()
                    .insert(row.canonical_id.clone());
                rows.push((alias, row.canonical_id.clone()));
            }
        }
        for (alias, id) in rows {
            let r = table().resolve(&alias);
            let owners = &listed[&normalise(&alias)];
            if owners.len() == 1 {
                assert_eq!(
                    r.canonical_id.as_deref(),
                    Some(id.as_str()),
                    "alias {alias:?}: {r:?}"
                );
                assert_eq!(r.match_kind, CalibreMatch::Alias, "alias {alias:?}");
            } else {
                assert_eq!(r.match_kind, CalibreMatch::Ambiguous, "alias {alias:?}");
                assert!(r.candidates.contains(&id));
            }
        }
    }

    #[test]
    fn labels_resolve_to_their_id() {
        let t = table();
        for id in t.ids() {
            let label = t.label(id).unwrap_or_default();
            assert_eq!(id_of(label).as_deref(), Some(id), "label {label:?}");
        }
    }

    #[test]
    fn normalisation_rules() {
        let cases = [
            ("7,62х39", "7.62x39"),
            ("7.62 × 39 mm", "7.62x39"),
            ("7.62x54mmR", "7.62x54r"),
            ("5.56 x 45 mm NATO", "5.56x45 nato"),
            ("9 mm Luger", "9mm luger"),
            (".308 Win Ammo", "308 win"),
            ("556NATO", "556 nato"),
            ("9mm/40SW", "9mm / 40 sw"),
            ("7,62 мм обр. 1943 г.", "7.62mm obr 1943 g"),
            ("Cal .50", "cal 50"),
            ("40 Caliber", "40 cal"),
            ("7.62x39 caliber", "7.62x39"),
            ("12/70", "12/70"),
            ("٧,٦٢x٣٩", "7.62x39"),
            ("٧٫٦٢×٣٩", "7.62x39"),
            ("١٢٫٧×١٠٨", "12.7x108"),
            ("\u{200f}٧٫٦٢\u{200f}×٣٩", "7.62x39"),
            ("7.62*39", "7.62x39"),
            ("7.62.39", "7.62x39"),
            ("S & W", "s&w"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise(raw), want, "normalise({raw:?})");
        }
    }

    #[test]
    fn resolves_to_expected_ids() {
        let cases: &[(&str, &str)] = &[
            ("7,62х39", "7.62x39"),
            ("7.62x39mm", "7.62x39"),
            ("7,62 мм обр. 1943 г.", "7.62x39"),
            ("7,62 обр. 43", "7.62x39"),
            ("7.62mm mod. 1943", "7.62x39"),
            ("7.62 M.43", "7.62x39"),
            ("M1943", "7.62x39"),
            ("556NATO", "5.56x45-nato"),
            ("5.56x45", "5.56x45-nato"),
            ("762NATO", "7.62x51-nato"),
            ("7.62 NATO", "7.62x51-nato"),
            ("9mm Luger +P", "9x19"),
            ("9 x 19 NATO", "9x19"),
            ("9mm Parabellum", "9x19"),
            ("9 mm Luger", "9x19"),
            ("7.62x54mmR", "7.62x54r"),
            ("7.62x54", "7.62x54r"),
            ("7.62x54 Russian", "7.62x54r"),
            ("7.62 Mosin", "7.62x54r"),
            ("7.62x54 Rimmed", "7.62x54r"),
            ("7.62 Dragunov", "7.62x54r"),
            ("12.7 Russian", "12.7x108"),
            ("12.7 x 108", "12.7x108"),
            ("12.7 mm NSV", "12.7x108"),
            ("ДШК 12,7", "12.7x108"),
            ("7.62 TT", "7.62x25"),
            ("7,62 ТТ", "7.62x25"),
            ("7.62×25", "7.62x25"),
            ("5.45mm M74", "5.45x39"),
            ("5,45 мм", "5.45x39"),
            ("5.45 M74", "5.45x39"),
            ("7.62.39", "7.62x39"),
            ("762x39", "7.62x39"),
            (".30 Russian Short", "7.62x39"),
            ("7.62 Russian Short", "7.62x39"),
            ("7.62 Soviet", "7.62x39"),
            ("7.62x39 Type 56", "7.62x39"),
            ("Type 56 7.62", "7.62x39"),
            ("9x18 Makarov", "9x18-makarov"),
            ("9,2x18", "9x18-makarov"),
            ("9x18", "9x18-makarov"),
            ("9мм ПМ", "9x18-makarov"),
            ("9 mm Mak", "9x18-makarov"),
            ("12.7x99mm NATO (.50 BMG)", "12.7x99-nato"),
            ("Cal .50", "12.7x99-nato"),
            ("40 cal", ".40-sw"),
            ("40 Caliber", ".40-sw"),
            ("Partizan 308 Win Ammo", ".308-win"),
            ("308 WINCHSTER", ".308-win"),
            ("9mm Makarvo", "9x18-makarov"),
            ("7.62 Tokarv", "7.62x25"),
            ("12 Gauge Ammo", "12-gauge"),
            ("82mm mortar bomb", "mortar-82"),
        ];
        for (raw, want) in cases {
            let r = table().resolve(raw);
            assert_eq!(
                r.canonical_id.as_deref(),
                Some(*want),
                "resolve({raw:?}) = {r:?}"
            );
            assert_eq!(r.candidates, vec![(*want).to_owned()]);
        }
    }

    #[test]
    fn bare_diameters_are_ambiguous_families() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "7.62mm",
                "7.62",
                &["7.62x39", "7.62x51-nato", "7.62x54r", "7.62x25"],
            ),
            ("7.62", "7.62", &["7.62x39", ".308-win"]),
            ("7,62 мм", "7.62", &["7.62x39"]),
            (".50", "12.7", &["12.7x99-nato", "12.7x108"]),
            ("50 cal", "12.7", &["12.7x99-nato", "12.7x108"]),
            ("12.7 mm", "12.7", &["12.7x99-nato", "12.7x108"]),
            ("7.65mm", "7.62", &["7.65x17sr", "7.65x21"]),
            (".308", "7.62", &[".308-win", "7.62x51-nato"]),
            ("223", "5.56", &[".223-rem", "5.56x45-nato"]),
            ("9", "9", &["9x19", "9x18-makarov", "9x17"]),
        ];
        for (raw, family, members) in cases {
            let r = table().resolve(raw);
            assert_eq!(r.match_kind, CalibreMatch::Ambiguous, "{raw:?}: {r:?}");
            assert_eq!(r.canonical_id, None);
            assert!(r.families.contains(&(*family).to_owned()), "{raw:?}: {r:?}");
            for m in *members {
                assert!(
                    r.candidates.contains(&(*m).to_owned()),
                    "{raw:?} lacks {m}: {r:?}"
                );
            }
        }
        // `.40` is the inch designation only; a bare `40` may also be a 40 mm grenade.
        let inch = table().resolve(".40");
        assert_eq!(inch.families, vec!["10".to_owned()]);
        let any = table().resolve("40");
        assert!(any.families.contains(&"40".to_owned()) && any.families.contains(&"10".to_owned()));
        // The table lists `9mm` and `5.56mm` under one calibre: honoured, with low confidence.
        for (raw, id) in [("9mm", "9x19"), ("5.56mm", "5.56x45-nato")] {
            let r = table().resolve(raw);
            assert_eq!(r.canonical_id.as_deref(), Some(id));
            assert_eq!(r.confidence, Confidence::Low);
        }
    }

    #[test]
    fn conflation_is_reported_as_multi() {
        let cases: &[(&str, &[&str])] = &[
            ("308 Win 7.62x51mm", &[".308-win", "7.62x51-nato"]),
            ("9mm/40SW", &["9x19", ".40-sw"]),
            ("22 LR/22 Magnum", &[".22-lr"]),
            ("5.56x45 .223 Rem", &["5.56x45-nato", ".223-rem"]),
            ("7.62x39 or 7.62x54R", &["7.62x39", "7.62x54r"]),
        ];
        for (raw, ids) in cases {
            let r = table().resolve(raw);
            assert_eq!(r.match_kind, CalibreMatch::Multi, "{raw:?}: {r:?}");
            assert_eq!(r.canonical_id, None);
            let want: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(r.candidates, want, "{raw:?}");
        }
        // Agreeing mentions are not a conflation.
        for raw in [
            "7.62x39 / M43",
            "9x19 9mm",
            "12.7x99 (.50 BMG)",
            "9mm/115gr",
        ] {
            let r = table().resolve(raw);
            assert!(r.canonical_id.is_some(), "{raw:?}: {r:?}");
        }
    }

    #[test]
    fn loads_resolve_only_through_the_load_table() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("M855", Some("5.56x45-nato"), "M855"),
            ("SS109", Some("5.56x45-nato"), "SS109"),
            ("SS 109", Some("5.56x45-nato"), "SS109"),
            ("7N6", Some("5.45x39"), "7N6"),
            ("5.45 7N10", Some("5.45x39"), "7N10"),
            ("7.62 PS", Some("7.62x39"), "PS"),
            ("5,45 ПС", Some("5.45x39"), "PS"),
            ("57-N-231", Some("7.62x39"), "57-N-231"),
            ("12.7 B-32", Some("12.7x108"), "B-32"),
            ("PS", None, "PS"),
            ("B-32", None, "B-32"),
        ];
        for (raw, id, load) in cases {
            let r = table().resolve(raw);
            assert_eq!(r.canonical_id.as_deref(), *id, "{raw:?}: {r:?}");
            assert_eq!(r.load_designation.as_deref(), Some(*load), "{raw:?}: {r:?}");
            if id.is_none() {
                assert_eq!(r.match_kind, CalibreMatch::Ambiguous);
            }
        }
        let r = table().resolve("M855");
        assert_eq!(r.match_kind, CalibreMatch::Load);
        assert_eq!(r.method, "load_table");
        // A load beside a stronger mention only annotates it.
        let r = table().resolve("7.62x51 M80 ball");
        assert_eq!(r.canonical_id.as_deref(), Some("7.62x51-nato"));
        assert_eq!(r.load_designation.as_deref(), Some("M80"));
        let r = table().resolve("PS 5.56x45");
        assert_eq!(r.canonical_id.as_deref(), Some("5.56x45-nato"));
        assert_eq!(r.load_designation, None);
    }

    #[test]
    fn non_ascii_digits_do_not_panic() {
        // Found by proptest: `\d` would have matched the Lao digit and sliced inside it.
        for raw in ["໐*0", "໐x0", "٣٤٥x٣٩", "७.६२x३९", "१२३x४५"] {
            let r = table().resolve(raw);
            assert_eq!(r, table().resolve(raw));
        }
        assert_eq!(id_of("٧,٦٢x٣٩").as_deref(), Some("7.62x39"));
    }

    #[test]
    fn unknown_calibres_stay_unresolved() {
        for raw in [
            "",
            "   ",
            "VOR",
            "N/A",
            "Multi Cal",
            "7.62x40",
            "7.62x35",
            "6.5 Creedmoor",
            "300 Blackout",
        ] {
            let r = table().resolve(raw);
            assert_eq!(r.match_kind, CalibreMatch::Unresolved, "{raw:?}: {r:?}");
            assert!(r.candidates.is_empty());
            assert_eq!(r.confidence, Confidence::Unverified);
        }
    }

    #[test]
    fn families_follow_diameter_buckets() {
        let t = table();
        let cases = [
            ("7.62x39", "7.62"),
            (".308-win", "7.62"),
            (".303-british", "7.62"),
            ("7.92x57", "8"),
            ("9x19", "9"),
            (".357-mag", "9"),
            ("5.45x39", "5.45"),
            (".223-rem", "5.56"),
            ("12.7x108", "12.7"),
            ("mortar-81", "81"),
            ("mortar-82", "82"),
            ("12-gauge", "18.5"),
        ];
        for (id, family) in cases {
            assert_eq!(t.family_of(id), Some(family), "{id}");
        }
        assert_eq!(t.family_of("nope"), None);
        assert_eq!(t.related("5.56x45-nato"), [".223-rem".to_owned()]);
        assert!(t.related("nope").is_empty());
        assert_eq!(t.label("7.62x54r"), Some("7.62x54mmR"));
        assert!(t.family_members("12.7").contains(&"12.7x108"));
    }

    #[test]
    fn serialises_match_field() {
        let r = table().resolve("7.62x39");
        let json = serde_json::to_value(&r).expect("serialises");
        assert_eq!(json["match"], "alias");
        assert_eq!(json["confidence"], "high");
        assert_eq!(json["canonical_id"], "7.62x39");
    }

    /// Resolves every line of the shared third-party fixtures; asserts only that nothing panics.
    #[test]
    fn third_party_strings_never_panic() {
        let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/third_party");
        for name in [
            "ammunitions_caliber_strings.csv",
            "firearms_caliber_strings.csv",
        ] {
            let Ok(text) = std::fs::read_to_string(format!("{base}/misp-galaxy/{name}")) else {
                continue;
            };
            for line in text.lines() {
                let _ = table().resolve(line);
                let _ = table().resolve(line.rsplit_once(',').map_or(line, |(s, _)| s));
            }
        }
        if let Ok(text) = std::fs::read_to_string(format!("{base}/gunsnprices/calibers.json"))
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        {
            let calibers = json["calibers"].as_array().cloned().unwrap_or_default();
            for c in calibers {
                for field in ["name", "site_name"] {
                    if let Some(s) = c[field].as_str() {
                        let _ = table().resolve(s);
                    }
                }
                for a in c["aliases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str())
                {
                    let _ = table().resolve(a);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn resolve_is_total_and_deterministic(s in "\\PC{0,60}") {
            let a = table().resolve(&s);
            let b = table().resolve(&s);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.canonical_id.is_some(), a.candidates.len() == 1 && matches!(
                a.match_kind,
                CalibreMatch::Alias | CalibreMatch::Dimension | CalibreMatch::Token | CalibreMatch::Fuzzy | CalibreMatch::Load
            ));
        }

        #[test]
        fn resolve_survives_calibre_like_noise(
            s in "[0-9٠-٩०-९.,x×х*/ MmRrNATOnatoмм+&|;\\-]{0,24}"
        ) {
            // Whatever the noise, an answer is one the table knows: a canonical id is its one
            // candidate, and every candidate is a calibre of the table.
            let a = table().resolve(&s);
            if let Some(id) = &a.canonical_id {
                prop_assert_eq!(&a.candidates, &vec![id.clone()]);
            }
            for c in &a.candidates {
                prop_assert!(table().label(c).is_some(), "{c} is not a calibre of the table");
            }
        }
    }
}
