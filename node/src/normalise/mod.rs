//! Normalisation of the three identifiers investigators search by: lot, headstamp and calibre.
//!
//! Raw text is never changed. The functions here compute *interpretations* that sit beside it
//! (`derived` objects in a stored record), each with the method that produced it, a confidence
//! and [`NORMALISER_VERSION`], so keys can be recomputed when the tables change
//! (`ammotrace reindex`).
//!
//! - [`fold`]: script, digit, dash and case folding, and the confusable skeleton.
//! - [`lot`]: lot labels, separators, known lot grammars, identity keys.
//! - [`headstamp`]: tokens, rotated readings, maker/year readings.
//! - [`calibre`]: alias resolution to canonical ids and families.
//! - [`maker`]: the headstamp maker-code table.

pub mod calibre;
pub mod fold;
pub mod headstamp;
pub mod lot;
pub mod maker;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Version of the normalisation rules and tables. Bump it whenever a rule or a table changes
/// the keys it produces; `ammotrace reindex` recomputes every record's derived values.
pub const NORMALISER_VERSION: &str = "2";

/// How sure an interpretation is (the `confidence` vocabulary of `enums.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    Confirmed,
    High,
    Medium,
    Low,
    Unverified,
}

/// Remembers the interpretations of recent raw strings. Interpretations are pure functions of
/// the text and the embedded tables, and a national collection repeats the same few hundred
/// headstamps and calibres: reading each once instead of once per item takes most of the
/// normalisation out of an import. Bounded (entries and key length), so it cannot grow with
/// the input.
pub(crate) struct Memo<V> {
    cache: quick_cache::sync::Cache<String, Arc<V>>,
}

impl<V> Memo<V> {
    /// Keys longer than this are computed every time: they are rare and would be costly to keep.
    const MAX_KEY: usize = 64;

    pub(crate) fn new(entries: usize) -> Memo<V> {
        Memo {
            cache: quick_cache::sync::Cache::new(entries),
        }
    }

    /// The interpretation of `raw`, computed by `compute` unless remembered.
    pub(crate) fn get(&self, raw: &str, compute: impl FnOnce(&str) -> V) -> Arc<V> {
        if raw.len() > Self::MAX_KEY {
            return Arc::new(compute(raw));
        }
        if let Some(hit) = self.cache.get(raw) {
            return hit;
        }
        let value = Arc::new(compute(raw));
        self.cache.insert(raw.to_owned(), Arc::clone(&value));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn memo_computes_once_per_short_key_and_always_for_long_ones() {
        let memo: Memo<String> = Memo::new(16);
        let calls = AtomicUsize::new(0);
        let compute = |raw: &str| {
            calls.fetch_add(1, Ordering::Relaxed);
            raw.to_uppercase()
        };
        for _ in 0..3 {
            assert_eq!(*memo.get("lc 19", compute), "LC 19");
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        let long = "x".repeat(Memo::<String>::MAX_KEY + 1);
        for _ in 0..2 {
            assert_eq!(*memo.get(&long, compute), long.to_uppercase());
        }
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    /// The remembered interpretations are the computed ones, on the reference data.
    #[test]
    fn remembered_readings_equal_fresh_ones() {
        let texts = [
            "LC 19",
            "WCC 17",
            "539 85",
            "ППУ 7.62x39",
            "* 71 *",
            "FNM 83-3",
            "711 14",
            "",
            "7,62 × 39 mm",
            "5.56x45mm NATO",
            ".223 Rem",
            "9mm Luger",
            "12.7x108",
        ];
        for text in texts {
            for _ in 0..2 {
                assert_eq!(headstamp::normalise(text), headstamp::read(text), "{text}");
                assert_eq!(
                    calibre::CalibreTable::resolve_embedded(text),
                    calibre::CalibreTable::embedded().resolve(text),
                    "{text}"
                );
            }
        }
    }
}
