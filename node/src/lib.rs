//! ammotrace: a federated information-sharing node for seized-ammunition tracing.
//!
//! # Layout
//!
//! - [`record`]: the seizure record: validation at the edge, node-assigned fields, derived keys.
//! - [`normalise`]: lot, headstamp and calibre normalisation, driven by the tables in `data/`.
//! - [`store`]: sled, the source of truth: versions, heads, change log. Only module using sled.
//! - [`index`]: tantivy, derived: one document per item, fed from the change log. Only module
//!   using tantivy.
//! - [`search`]: matching and ranking (match kinds, scores, sibling lots).
//! - [`import`]: JSON Lines, CSV and XLSX bodies to submitted records.
//! - [`export`]: MISP events and STIX 2.1 bundles (lossy views for partners' tools).
//! - [`identity`]: the node's ed25519 key and its history (rotation, revocation), TLS
//!   certificate and admin token.
//! - [`envelope`]: selective-disclosure envelopes: a record version signed once, shown in part.
//! - [`policy`]: per-partner sharing policies and the per-field decision of what leaves.
//! - [`peer`]: partners: pinned keys and certificates, their clients, signed requests.
//! - [`sync`]: the exact pull feed (served and pulled), notify, receipts.
//! - [`query`]: live federated queries: answering partners (views or hit/no-hit), fan-out.
//! - [`disclosure`]: follow-up on a hit: disclosure requests, approval, one-off grants.
//! - [`stats`]: regional aggregation: grouped counts with small-cell suppression, lots seen
//!   across borders.
//! - [`audit`]: the append-only, hash-chained audit log.
//! - [`config`]: the typed configuration and the embedded default.
//! - [`api`]: the local HTTP API (axum), problem+json errors, tokens and roles; and the
//!   federation API (`api::federation`, TLS, signed requests).
//! - [`node`]: wiring and the `serve` entry point.
//! - [`cli`]: the `ammotrace` command line, a client of the above.

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod disclosure;
pub mod envelope;
pub mod export;
pub mod identity;
pub mod import;
pub mod index;
pub mod node;
pub mod normalise;
pub mod peer;
pub mod policy;
pub mod query;
pub mod record;
pub mod search;
pub mod stats;
pub mod store;
pub mod sync;
