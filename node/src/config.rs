//! The node's typed configuration: `DATA_DIR/config.toml` over the embedded default
//! (`config/default.toml`), with defaults in code for every key but `node_id`.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::record::country;

/// The embedded default configuration, written (with the chosen node id) by `ammotrace init`.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's State (ISO 3166-1 alpha-3 or user-assigned).
    pub node_id: String,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub search: SearchConfig,
    #[serde(default)]
    pub index: IndexConfig,
    #[serde(default)]
    pub federation: FederationConfig,
    #[serde(default)]
    pub stats: StatsConfig,
    /// Partners: see `docs/operations.md` and `docs/policies.md`.
    #[serde(default)]
    pub peers: Vec<crate::peer::PeerConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub tokens: Vec<TokenConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8600)),
            max_body_bytes: 64 * 1024 * 1024,
            tokens: Vec::new(),
        }
    }
}

/// An API token known by its SHA-256, with the role it grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: crate::api::auth::Role,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub default_limit: usize,
    pub max_limit: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            default_limit: 20,
            max_limit: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    pub writer_memory_mib: usize,
    pub commit_interval_ms: u64,
    /// How long a write may wait for search while writes arrive in bulk (decision 0020).
    pub bulk_commit_interval_ms: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            writer_memory_mib: 256,
            commit_interval_ms: 200,
            bulk_commit_interval_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Cells with fewer distinct seizures are suppressed.
    pub k: usize,
    /// Read every record into the statistics cache when the node starts (in the background),
    /// so the first statistics request does not wait for it: for regional nodes.
    pub warm_on_start: bool,
    /// Perturb every published figure by its cell key (decision 0010). Off, tables a day
    /// apart or with and without a filter subtract to a suppressed cell.
    pub perturb: bool,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            k: 5,
            warm_on_start: false,
            perturb: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    pub listen: SocketAddr,
    /// Whether to serve the federation API at all.
    pub enabled: bool,
    /// How often each partner's feed is pulled when no notify arrives, in milliseconds.
    pub pull_interval_ms: u64,
    /// Feed page size: changes per page served and asked for.
    pub page_size: usize,
    /// Largest accepted difference between a request's time and this node's clock, seconds.
    pub max_clock_skew_secs: i64,
    /// Timeout of one request to a partner, milliseconds.
    pub request_timeout_ms: u64,
    /// Largest answer read from a partner, MiB.
    pub max_answer_mib: usize,
    /// Deadline of a federated search: partners that have not answered by then are reported
    /// as timed out, milliseconds.
    pub search_deadline_ms: u64,
    /// Most hits one live query from a partner gets.
    pub max_query_results: usize,
    /// Live queries a partner may send per minute, and in a burst.
    pub query_rate_per_minute: u32,
    pub query_burst: u32,
    /// Hours a disclosure request stays open before it expires.
    pub disclosure_request_hours: u32,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8601)),
            enabled: true,
            pull_interval_ms: 5000,
            page_size: 1000,
            max_clock_skew_secs: 300,
            request_timeout_ms: 10_000,
            max_answer_mib: 256,
            search_deadline_ms: 3000,
            max_query_results: 50,
            query_rate_per_minute: 60,
            query_burst: 20,
            disclosure_request_hours: 48,
        }
    }
}

/// A regional body's node id (its members' records arrive through the federation).
fn is_body_id(id: &str) -> bool {
    (3..=16).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_uppercase())
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

impl Config {
    /// Parses and checks a configuration text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> anyhow::Result<Config> {
        Config::parse(DEFAULT_TOML)
    }

    /// Reads `DATA_DIR/config.toml`.
    pub fn load(data_dir: &Path) -> anyhow::Result<Config> {
        let path = data_dir.join("config.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            country::is_valid(&self.node_id) || is_body_id(&self.node_id),
            "node_id {:?} is not an ISO 3166-1 alpha-3 or user-assigned code, nor a regional \
             body's id (3-16 capital letters, digits or _, starting with a letter)",
            self.node_id
        );
        let mut ids = std::collections::HashSet::new();
        for peer in &self.peers {
            anyhow::ensure!(ids.insert(&peer.id), "peer {} is configured twice", peer.id);
            anyhow::ensure!(peer.id != self.node_id, "peer {} is this node", peer.id);
            peer.validate().map_err(|e| anyhow::anyhow!(e))?;
        }
        anyhow::ensure!(self.stats.k >= 1, "stats.k must be at least 1");
        anyhow::ensure!(
            self.federation.max_answer_mib >= 1,
            "federation.max_answer_mib must be at least 1"
        );
        // Nonces are kept for twice the skew: a skew of 0 or less would forget them at once.
        anyhow::ensure!(
            (1..=86_400).contains(&self.federation.max_clock_skew_secs),
            "federation.max_clock_skew_secs must be 1..=86400"
        );
        anyhow::ensure!(
            (1..=5000).contains(&self.federation.page_size),
            "federation.page_size must be 1..=5000"
        );
        anyhow::ensure!(
            self.search.default_limit >= 1,
            "search.default_limit must be at least 1"
        );
        anyhow::ensure!(
            self.search.max_limit >= self.search.default_limit,
            "search.max_limit must be at least search.default_limit"
        );
        anyhow::ensure!(
            self.api.max_body_bytes >= 1024,
            "api.max_body_bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.index.writer_memory_mib >= 16,
            "index.writer_memory_mib must be at least 16"
        );
        Ok(())
    }

    /// The configuration file text `init` writes: the commented default with this node id.
    pub fn default_text_for(node_id: &str) -> String {
        DEFAULT_TOML.replacen("node_id = \"XAA\"", &format!("node_id = \"{node_id}\""), 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.node_id, "XAA");
        assert_eq!(c.api.listen.port(), 8600);
    }

    #[test]
    fn init_text_sets_node_id_and_rejects_bad_ids() {
        let c = Config::parse(&Config::default_text_for("XBB")).unwrap();
        assert_eq!(c.node_id, "XBB");
        assert!(Config::parse("node_id = \"xx\"").is_err());
        assert!(Config::parse("node_id = \"XAA\"\nbogus = 1").is_err());
    }

    /// A clock skew of zero or less would have the node forget every nonce at once, letting
    /// a replayed request through: it is refused with the setting named.
    #[test]
    fn a_clock_skew_below_one_second_is_refused() {
        let with = |skew: i64| {
            Config::parse(&format!(
                "node_id = \"XAA\"\n[federation]\nmax_clock_skew_secs = {skew}"
            ))
        };
        assert!(with(300).is_ok());
        for skew in [0, -300] {
            let e = with(skew).unwrap_err().to_string();
            assert!(e.contains("max_clock_skew_secs"), "{e}");
        }
    }
}
