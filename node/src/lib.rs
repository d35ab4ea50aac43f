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
//! - [`identity`]: the node's ed25519 key, TLS certificate and admin token.
//! - [`config`]: the typed configuration and the embedded default.
//! - [`api`]: the local HTTP API (axum), problem+json errors, tokens and roles.
//! - [`node`]: wiring and the `serve` entry point.
//! - [`cli`]: the `ammotrace` command line, a client of the above.

pub mod api;
pub mod cli;
pub mod config;
pub mod identity;
pub mod import;
pub mod index;
pub mod node;
pub mod normalise;
pub mod record;
pub mod search;
pub mod store;
