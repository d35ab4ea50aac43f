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

use serde::{Deserialize, Serialize};

/// Version of the normalisation rules and tables. Bump it whenever a rule or a table changes
/// the keys it produces; `ammotrace reindex` recomputes every record's derived values.
pub const NORMALISER_VERSION: &str = "1";

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
