//! One running node: its configuration, store, index and validator, wired together, and the
//! entry points that start and stop it. `serve` takes a bound listener and a shutdown future,
//! so tests start real nodes on 127.0.0.1:0.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::auth::{ApiToken, Role};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::envelope::{self, Envelope, LoadError, NodeSealer};
use crate::identity::{self, ADMIN_TOKEN_FILE, Identity, KeyHistory};
use crate::index::SearchIndex;
use crate::peer::Peers;
use crate::record::{RecordId, Validator};
use crate::store::Store;

/// Sub-directories of the data directory.
pub const STORE_DIR: &str = "store";
pub const INDEX_DIR: &str = "index";

pub struct Node {
    config: Config,
    data_dir: PathBuf,
    store: Store,
    index: SearchIndex,
    validator: Validator,
    tokens: Vec<ApiToken>,
    identity: Identity,
    keys: KeyHistory,
    sealer: NodeSealer,
    peers: Peers,
    audit: AuditLog,
    /// Woken after every acknowledged write: the notifier tells replicating partners.
    written: tokio::sync::Notify,
    wakes: crate::sync::Wakes,
    rate_limits: crate::query::RateLimits,
    stats_cache: crate::stats::FactCache,
}

/// What `init` reports.
pub struct Initialised {
    pub key_id: String,
    pub admin_token: String,
}

/// Creates a data directory: config, keys, TLS certificate, admin token. Refuses to touch a
/// directory that already holds a configuration.
pub fn init(data_dir: &Path, node_id: &str) -> anyhow::Result<Initialised> {
    init_named(data_dir, node_id, &[])
}

/// [`init`], with the TLS certificate also valid for `tls_names` (the host names or addresses
/// partners reach the federation API at).
pub fn init_named(
    data_dir: &Path,
    node_id: &str,
    tls_names: &[String],
) -> anyhow::Result<Initialised> {
    let config_text = Config::default_text_for(node_id);
    Config::parse(&config_text)?;
    let config_path = data_dir.join("config.toml");
    anyhow::ensure!(
        !config_path.exists(),
        "{} already exists: this data directory is initialised",
        config_path.display()
    );
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let created = identity::init_named(data_dir, node_id, tls_names)?;
    std::fs::write(&config_path, config_text)?;
    Ok(Initialised {
        key_id: created.key_id,
        admin_token: created.admin_token,
    })
}

/// Writes to the audit log every policy and key change since the node last started (they are
/// made in `config.toml` and by `ammotrace keys` while the node is stopped).
fn audit_changes(
    store: &Store,
    audit: &AuditLog,
    config: &Config,
    identity: &Identity,
) -> anyhow::Result<()> {
    let key_id = identity.key_id();
    if store.note("key_id")?.as_deref() != Some(key_id.as_str()) {
        audit.append(
            "key_in_use",
            serde_json::json!({ "key_id": key_id, "previous": store.note("key_id")? }),
            true,
        )?;
        store.set_note("key_id", &key_id)?;
    }
    let mut known: Vec<String> = store
        .note("peers")?
        .map(|s| {
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    for peer in &config.peers {
        let digest = peer.policy.digest();
        let name = format!("policy:{}", peer.id);
        if store.note(&name)?.as_deref() != Some(digest.as_str()) {
            audit.append(
                "policy_changed",
                serde_json::json!({ "partner": peer.id, "policy": peer.policy, "digest": digest, "public_key": peer.public_key }),
                true,
            )?;
            store.set_note(&name, &digest)?;
        }
    }
    known.retain(|id| !config.peers.iter().any(|p| &p.id == id));
    for removed in known {
        audit.append(
            "peer_removed",
            serde_json::json!({ "partner": removed }),
            true,
        )?;
        store.set_note(&format!("policy:{removed}"), "")?;
    }
    let ids: Vec<&str> = config.peers.iter().map(|p| p.id.as_str()).collect();
    store.set_note("peers", &ids.join(","))?;
    store.flush()?;
    Ok(())
}

impl Node {
    /// Opens the node in `data_dir` (initialised by [`init`]) with its `config.toml`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Arc<Node>> {
        let config = Config::load(data_dir)?;
        Node::open_with(data_dir, config)
    }

    pub fn open_with(data_dir: &Path, config: Config) -> anyhow::Result<Arc<Node>> {
        let admin =
            std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE)).with_context(|| {
                format!("cannot read {}", data_dir.join(ADMIN_TOKEN_FILE).display())
            })?;
        let mut tokens = vec![ApiToken {
            name: "admin".into(),
            role: Role::Admin,
            sha256: identity::token_digest(admin.trim()),
        }];
        tokens.extend(config.api.tokens.iter().map(|t| ApiToken {
            name: t.name.clone(),
            role: t.role,
            sha256: t.sha256.clone(),
        }));
        // The store first: it holds the data directory (one node, or one `keys` command, at a
        // time), so what follows may repair what a crash left.
        let store = Store::open(&data_dir.join(STORE_DIR)).with_context(|| {
            format!(
                "cannot open the store in {} (is another node using this data directory?)",
                data_dir.join(STORE_DIR).display()
            )
        })?;
        let audit = AuditLog::open(data_dir)?;
        identity::finish_rotation(data_dir)?;
        identity::finish_tls_renewal(data_dir)?;
        let identity =
            Identity::load(data_dir, &config.node_id).context("cannot load the node key")?;
        let keys = KeyHistory::load(data_dir, &config.node_id, &identity.verifying_key())?;
        anyhow::ensure!(
            keys.is_current(&identity.key_id()),
            "{} does not list the node key {} as current (rotated out, revoked, or unknown): \
             partners would refuse everything it signs",
            identity::KEYS_FILE,
            identity.key_id()
        );
        let peers = Peers::new(
            &config.peers,
            Duration::from_millis(config.federation.request_timeout_ms),
        )?;
        let sealer = NodeSealer {
            origin: config.node_id.clone(),
            key: identity.signing_key().clone(),
        };
        let index = SearchIndex::open(
            &data_dir.join(INDEX_DIR),
            store.clone(),
            config.index.writer_memory_mib,
            crate::index::Commits {
                interval: Duration::from_millis(config.index.commit_interval_ms),
                bulk_interval: Duration::from_millis(config.index.bulk_commit_interval_ms),
            },
        )
        .context("cannot open the index")?;
        for peer in peers.iter() {
            crate::peer::restore_keys(peer, &store);
        }
        audit_changes(&store, &audit, &config, &identity)?;
        Ok(Arc::new(Node {
            validator: Validator::new(&config.node_id),
            config,
            data_dir: data_dir.to_owned(),
            store,
            index,
            tokens,
            identity,
            keys,
            sealer,
            peers,
            audit,
            written: tokio::sync::Notify::new(),
            wakes: Default::default(),
            rate_limits: Default::default(),
            stats_cache: Default::default(),
        }))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    pub fn keys(&self) -> &KeyHistory {
        &self.keys
    }
    pub fn sealer(&self) -> &NodeSealer {
        &self.sealer
    }
    /// A record version's envelope as stored (own ones rebuilt, see [`envelope::load`]).
    pub fn envelope(&self, id: &RecordId, version: u32) -> Result<Option<Envelope>, LoadError> {
        envelope::load(&self.store, id, version)
    }
    /// [`Node::envelope`] with the record it discloses in full ([`envelope::load_with_record`]).
    pub fn envelope_with_record(
        &self,
        id: &RecordId,
        version: u32,
    ) -> Result<Option<(Envelope, serde_json::Value)>, LoadError> {
        envelope::load_with_record(&self.store, id, version)
    }
    pub fn peers(&self) -> &Peers {
        &self.peers
    }
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Called after an acknowledged write: the indexer and the partners' notifier wake up.
    pub fn written(&self) {
        self.index.notify();
        self.written.notify_one();
    }

    /// The statistics' facts, cached per store change.
    pub fn stats_cache(&self) -> &crate::stats::FactCache {
        &self.stats_cache
    }

    /// Per-partner limits on live queries.
    pub fn rate_limits(&self) -> &crate::query::RateLimits {
        &self.rate_limits
    }

    /// Wakes the puller of `peer` (its notify call arrived).
    pub fn pull_wake(&self, peer: &str) -> Arc<tokio::sync::Notify> {
        self.wakes.get(peer)
    }

    pub(crate) async fn wait_written(&self) {
        self.written.notified().await
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn index(&self) -> &SearchIndex {
        &self.index
    }
    pub fn validator(&self) -> &Validator {
        &self.validator
    }
    pub fn tokens(&self) -> &[ApiToken] {
        &self.tokens
    }

    /// Serves the local API on `listener` (and, when given, the federation API over TLS on
    /// `federation`, with the partners' pullers and notifier) until `shutdown` completes, then
    /// stops the indexer and flushes the store.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        federation: Option<std::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut federation_task = None;
        if let Some(federation) = federation {
            federation_task = Some(
                crate::api::federation::serve(self.clone(), federation, stop_rx.clone()).await?,
            );
            crate::sync::start(self.clone(), stop_rx.clone());
        }
        if self.config.stats.warm_on_start {
            let node = self.clone();
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                match node.stats_cache.facts(&node.store) {
                    Ok((seq, facts)) => tracing::info!(
                        seizures = facts.len(),
                        watermark = seq,
                        ms = started.elapsed().as_millis(),
                        "statistics cache warmed"
                    ),
                    Err(e) => tracing::warn!(error = %e, "could not warm the statistics cache"),
                }
            });
        }
        let router = crate::api::router(self.clone());
        let mut api_stop = stop_rx.clone();
        let api = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = api_stop.wait_for(|stop| *stop).await;
        });
        let api = tokio::spawn(async move { api.await });
        shutdown.await;
        let _ = stop_tx.send(true);
        api.await??;
        if let Some(task) = federation_task {
            task.await??;
        }
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            node.index.shutdown();
            node.store.flush()
        })
        .await??;
        Ok(())
    }
}
