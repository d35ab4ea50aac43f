//! Character folding shared by every identifier, driven by `data/ocr_confusions.csv`.
//!
//! Two levels, both deterministic:
//! - [`fold`]: Unicode NFKC, Arabic-Indic and Persian digits to ASCII, the dash family to `-`,
//!   `×` to `x`, Cyrillic homoglyphs and transliterations to Latin, upper case. Two spellings
//!   that fold to the same text are the same marking written differently.
//! - [`skeleton_char`]: the confusable class of a folded character (`O`/`D` → `0`, `I`/`L`/`|`
//!   → `1`, `S` → `5`, …): cheap OCR and stamping confusions (cost ≤ [`SKELETON_MAX_COST`]) are
//!   merged, so a lot typed `1Z681` and one typed `126 81` share a skeleton.
//!
//! [`weighted_distance`] ranks candidates: a Damerau–Levenshtein distance whose substitution
//! costs come from the same table (a confusable substitution costs less than an arbitrary one).

use std::collections::HashMap;
use std::sync::LazyLock;

use unicode_normalization::UnicodeNormalization;

/// Confusions at or below this cost are merged into one skeleton class.
pub const SKELETON_MAX_COST: f32 = 0.4;

const TABLE: &str = include_str!("../../data/ocr_confusions.csv");

struct Confusions {
    /// Script and punctuation folds (cost 0): Cyrillic → Latin, Arabic-Indic → ASCII, dashes.
    char_fold: HashMap<char, char>,
    /// Substitution costs between two folded single characters (both directions).
    sub_cost: HashMap<(char, char), f32>,
    /// Skeleton representative of each folded character that has one.
    skeleton: HashMap<char, char>,
    /// The same two tables for ASCII, as arrays: ranking calls them for every character pair.
    ascii_cost: Box<[[f32; 128]; 128]>,
    ascii_skeleton: [char; 128],
}

static CONFUSIONS: LazyLock<Confusions> = LazyLock::new(load_confusions);

fn load_confusions() -> Confusions {
    let mut char_fold = HashMap::new();
    let mut rows: Vec<(char, char, f32, String)> = Vec::new();
    let mut reader = csv::Reader::from_reader(TABLE.as_bytes());
    for record in reader.records().flatten() {
        let (from, to, cost, kind) = (&record[0], &record[1], &record[2], &record[3]);
        let cost: f32 = cost.parse().unwrap_or(1.0);
        let (mut f, mut t) = (from.chars(), to.chars());
        // Multi-character confusions (rn/m) are left to the edit distance.
        let (Some(fc), None, Some(tc), None) = (f.next(), f.next(), t.next(), t.next()) else {
            continue;
        };
        match kind {
            "homoglyph_script" | "transliteration" | "digit_script" | "punctuation" => {
                // Cyrillic У looks like Y but, in the codes seen on ammunition (ППУ = PPU),
                // stands for U: transliteration wins over the look-alike.
                let tc = if fc == 'У' { 'U' } else { tc };
                // Fold both cases of the source letter, to the upper-case target.
                for src in std::iter::once(fc)
                    .chain(fc.to_lowercase())
                    .chain(fc.to_uppercase())
                {
                    char_fold.insert(src, tc.to_ascii_uppercase());
                }
            }
            _ => rows.push((fc, tc, cost, kind.to_owned())),
        }
    }
    let mut sub_cost = HashMap::new();
    let mut parent: HashMap<char, char> = HashMap::new();
    for (fc, tc, cost, kind) in &rows {
        // A confusion between a foreign-script letter and a digit (Cyrillic З / 3) is about
        // the letter as written; once folded to Latin (Z) it must not merge Z with 3.
        if char_fold.contains_key(fc) || char_fold.contains_key(tc) {
            continue;
        }
        let (a, b) = (
            fold_char_with(&char_fold, *fc),
            fold_char_with(&char_fold, *tc),
        );
        if a == b {
            continue;
        }
        let entry = sub_cost.entry((a, b)).or_insert(*cost);
        *entry = entry.min(*cost);
        let entry = sub_cost.entry((b, a)).or_insert(*cost);
        *entry = entry.min(*cost);
        if kind == "ocr_glyph" && *cost <= SKELETON_MAX_COST {
            union(&mut parent, a, b);
        }
    }
    // Representative of a class: its digit if it has one, else its smallest character.
    let mut classes: HashMap<char, Vec<char>> = HashMap::new();
    let members: Vec<char> = parent.keys().copied().collect();
    for c in members {
        let root = find(&mut parent, c);
        classes.entry(root).or_default().push(c);
    }
    let mut skeleton = HashMap::new();
    for chars in classes.values() {
        let rep = chars
            .iter()
            .copied()
            .filter(char::is_ascii_digit)
            .min()
            .or_else(|| chars.iter().copied().min());
        if let Some(rep) = rep {
            for &c in chars {
                skeleton.insert(c, rep);
            }
        }
    }
    let mut ascii_cost = Box::new([[1.0f32; 128]; 128]);
    for (&(a, b), &cost) in &sub_cost {
        if a.is_ascii() && b.is_ascii() {
            ascii_cost[a as usize][b as usize] = cost;
        }
    }
    let ascii_skeleton = std::array::from_fn(|i| {
        let c = char::from(i as u8);
        skeleton.get(&c).copied().unwrap_or(c)
    });
    Confusions {
        char_fold,
        sub_cost,
        skeleton,
        ascii_cost,
        ascii_skeleton,
    }
}

fn find(parent: &mut HashMap<char, char>, c: char) -> char {
    let p = *parent.entry(c).or_insert(c);
    if p == c {
        return c;
    }
    let root = find(parent, p);
    parent.insert(c, root);
    root
}

fn union(parent: &mut HashMap<char, char>, a: char, b: char) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        parent.insert(ra.max(rb), ra.min(rb));
    }
}

fn fold_char_with(table: &HashMap<char, char>, c: char) -> char {
    let c = table.get(&c).copied().unwrap_or(c);
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// Folds one character (after NFKC): script fold, then upper case when that is one character.
pub fn fold_char(c: char) -> char {
    fold_char_with(&CONFUSIONS.char_fold, c)
}

/// Characters with no glyph of their own that transcriptions carry along: direction marks
/// (typed around Arabic-Indic digits), soft hyphens, zero-width spaces and joiners, word
/// joiners, the byte order mark. Folding drops them.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// NFKC, script and digit folding, dashes to `-`, `×` to `x`, upper case, invisible marks
/// dropped. Whitespace runs become one space and the ends are trimmed.
pub fn fold(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut pending_space = false;
    for c in raw.nfkc() {
        if is_invisible(c) {
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(fold_char(c));
    }
    out
}

/// Confusable class of a folded character: itself when it has none.
pub fn skeleton_char(c: char) -> char {
    let table = &*CONFUSIONS;
    if c.is_ascii() {
        return table.ascii_skeleton[c as usize];
    }
    table.skeleton.get(&c).copied().unwrap_or(c)
}

/// Maps every character of folded text to its confusable class.
pub fn skeleton(folded: &str) -> String {
    folded.chars().map(skeleton_char).collect()
}

/// Cost of reading `b` where `a` was marked: 0 when equal, the table's cost for a known
/// confusion, 1 otherwise.
pub fn substitution_cost(a: char, b: char) -> f32 {
    if a == b {
        return 0.0;
    }
    let table = &*CONFUSIONS;
    if a.is_ascii() && b.is_ascii() {
        return table.ascii_cost[a as usize][b as usize];
    }
    table.sub_cost.get(&(a, b)).copied().unwrap_or(1.0)
}

/// Damerau–Levenshtein (optimal string alignment) distance between two folded strings, with
/// substitution costs from the confusion table; insertions, deletions and transpositions cost 1.
/// A `?` in either string matches any one character at no cost.
pub fn weighted_distance(a: &str, b: &str) -> f32 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0.0f32; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i as f32;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j as f32;
    }
    for i in 1..=n {
        for j in 1..=m {
            let sub = if a[i - 1] == '?' || b[j - 1] == '?' {
                0.0
            } else {
                substitution_cost(a[i - 1], b[j - 1])
            };
            let mut best = (d[i - 1][j] + 1.0)
                .min(d[i][j - 1] + 1.0)
                .min(d[i - 1][j - 1] + sub);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1.0);
            }
            d[i][j] = best;
        }
    }
    d[n][m]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_scripts_digits_dashes_and_case() {
        let cases = [
            ("٢١–٨٥", "21-85"),
            ("۲۱—۸۵", "21-85"),
            ("ппу", "PPU"),
            ("ТПЗ", "TPZ"),
            ("  lot   21 ", "LOT 21"),
            ("７.６２×３９", "7.62X39"),
        ];
        for (raw, want) in cases {
            assert_eq!(fold(raw), want, "fold({raw:?})");
        }
    }

    #[test]
    fn skeleton_merges_cheap_confusions_only() {
        assert_eq!(skeleton("1Z681"), skeleton("12681"));
        assert_eq!(skeleton("EB8817"), skeleton("E88817"));
        assert_eq!(skeleton("WCC22L554"), skeleton("WCC221554"));
        // T/7 costs 0.5: not merged.
        assert_ne!(skeleton("T1"), skeleton("71"));
    }

    #[test]
    fn weighted_distance_prefers_confusions() {
        assert_eq!(weighted_distance("2185", "2185"), 0.0);
        assert!(weighted_distance("21O5", "2105") < weighted_distance("2175", "2105"));
        assert_eq!(weighted_distance("21?5", "2185"), 0.0);
        assert_eq!(weighted_distance("2158", "2185"), 1.0);
    }
}
