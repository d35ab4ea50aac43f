//! Exact pull sync (design §6): the feed this node serves of its own changes, and the puller
//! that applies partners' feeds.
//!
//! The feed lists every own change after a cursor, in order: the partner's view of the version
//! (its envelope with the disclosures the policy allows) or, when the policy withholds it, only
//! its sequence number and claims digest. Each envelope's claims name the digest of the
//! previous change's claims, so the puller can prove it has every change (a refused page when
//! the chain shows a gap) without seeing withheld ones. A page and the new cursor are stored
//! in one transaction; the puller resumes after any outage without loss or duplicates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::envelope::Envelope;
use crate::identity::KeyHistory;
use crate::index::{Documents, SearchIndex};
use crate::node::Node;
use crate::peer::{self, Peer};
use crate::policy::{self, Mode};
use crate::record::RecordId;
use crate::store::{Cursor, Replica};

/// One change in a feed page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedEntry {
    pub seq: u64,
    /// Digest of the change's claims.
    pub digest: String,
    /// The partner's view, or null when its policy withholds this change.
    pub envelope: Option<Envelope>,
}

/// `GET /federation/v1/feed` answers with this.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedPage {
    pub origin: String,
    /// Digest of the policy the page was made under.
    pub policy: String,
    /// Whether the partner may relay what it receives.
    pub relay: bool,
    pub after: u64,
    pub entries: Vec<FeedEntry>,
    /// The origin's latest change sequence number.
    pub last_seq: u64,
}

/// A signed acknowledgement that a partner applied record versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub v: u32,
    pub from: String,
    pub to: String,
    pub at: String,
    pub key_id: String,
    pub applied: Vec<Applied>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub record_id: String,
    pub version: u32,
    pub retracted: bool,
}

impl Receipt {
    /// RFC 8785 form of the receipt: what is signed. It holds only strings, booleans and
    /// integers below 2^32, so serde_json's compact output of its fields in sorted key order
    /// is already canonical (as for [`crate::envelope::Claims::canonical`]), and several
    /// times faster than the general canonicaliser on a page's thousand entries. A property
    /// test checks both agree.
    pub fn canonical(&self) -> Result<Vec<u8>, serde_json::Error> {
        #[derive(Serialize)]
        struct Sorted<'a> {
            applied: Vec<SortedApplied<'a>>,
            at: &'a str,
            from: &'a str,
            key_id: &'a str,
            to: &'a str,
            v: u32,
        }
        #[derive(Serialize)]
        struct SortedApplied<'a> {
            record_id: &'a str,
            retracted: bool,
            version: u32,
        }
        let applied = self
            .applied
            .iter()
            .map(|a| SortedApplied {
                record_id: &a.record_id,
                retracted: a.retracted,
                version: a.version,
            })
            .collect();
        let entries: usize = self.applied.iter().map(|a| a.record_id.len() + 60).sum();
        let mut out = Vec::with_capacity(200 + entries);
        serde_json::to_writer(
            &mut out,
            &Sorted {
                applied,
                at: &self.at,
                from: &self.from,
                key_id: &self.key_id,
                to: &self.to,
                v: self.v,
            },
        )?;
        Ok(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    pub sig: String,
}

fn hours_since(issued_at: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(issued_at)
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_hours())
        .unwrap_or(0)
}

/// Normalises a path for the audit log: array positions become `*`.
pub fn path_pattern(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// What a partner gets of one own version.
pub enum View {
    /// Its view: the envelope with the disclosures its policy allows.
    Shown(Box<Envelope>),
    /// Nothing: the policy withholds this version.
    Withheld,
    /// Not yet: the version is under the partner's embargo.
    Embargoed,
}

/// What `peer` may get of one own version, before its view is made.
enum Sharing {
    /// Whether each disclosure, in order, is in its view.
    Shown(Vec<bool>),
    Withheld,
    Embargoed,
}

/// The policy's answer for `peer` on one stored own version ([`policy::disclosed`], the
/// reasons of [`policy::decide`] left out).
fn sharing(peer: &Peer, envelope: &Envelope, record: &Value) -> Sharing {
    let age = hours_since(&envelope.claims.issued_at);
    if age < i64::from(peer.policy.embargo_hours) {
        return Sharing::Embargoed;
    }
    let paths = envelope.disclosures.iter().map(|d| d.path());
    match policy::disclosed(&peer.id, &peer.policy, record, paths, age) {
        Some(keep) => Sharing::Shown(keep),
        None => Sharing::Withheld,
    }
}

/// The view `peer` gets of one stored own version.
pub fn view_for(peer: &Peer, envelope: &Envelope, record: &Value) -> View {
    match sharing(peer, envelope, record) {
        Sharing::Shown(keep) => View::Shown(Box::new(envelope.clone().into_view(&keep))),
        Sharing::Withheld => View::Withheld,
        Sharing::Embargoed => View::Embargoed,
    }
}

/// Builds `peer`'s feed page after `after` (blocking: reads the store).
///
/// A `replicate` partner gets its view of every change its policy shares. A partner in any
/// other mode gets only what a holder must: the retractions of records it was sent (by a
/// feed, under an earlier policy, or by a disclosure grant). Every version served is noted as
/// disclosed to that partner.
pub fn feed_page(node: &Node, peer: &Peer, after: u64, limit: usize) -> anyhow::Result<FeedPage> {
    let store = node.store();
    let replicate = peer.policy.mode == Mode::Replicate;
    let changes = store.own_changes_after(after, limit)?;
    // Each tree of versions signed together is made once a page.
    let mut envelopes = crate::envelope::Loader::new(store);
    let mut entries = Vec::with_capacity(changes.len());
    let mut sent = Vec::new();
    let mut disclosed_paths = std::collections::BTreeSet::new();
    let mut seen_paths = std::collections::HashSet::new();
    for change in changes {
        // Without the feed, a partner's entries are all withheld but for its records' retractions.
        if !replicate && !holds(store, &peer.id, &change.id)? {
            entries.push(FeedEntry {
                seq: change.seq,
                digest: change.digest,
                envelope: None,
            });
            continue;
        }
        let (envelope, submitted) = envelopes
            .with_record(&change.id, change.version)?
            .ok_or_else(|| anyhow::anyhow!("no envelope for {}@{}", change.id, change.version))?;
        let retraction = envelope.claims.retracted;
        let shared = if replicate && labels_now_allow(store, peer, &change.id, change.version)? {
            // The policy reads the submitted fields (sharing labels, item categories), which an
            // own envelope discloses in full.
            sharing(peer, &envelope, &submitted)
        } else {
            Sharing::Withheld
        };
        // (The views are made from the loaded envelope, which is not needed after.)
        let view = match shared {
            Sharing::Shown(keep) => Some(envelope.into_view(&keep)),
            // A retraction reaches every partner that holds the record, even when the policy
            // has narrowed, the mode changed or the labels changed since: the signed claims
            // alone (no field leaves).
            // (Without the feed, holding was checked above.)
            Sharing::Withheld
                if retraction && (!replicate || holds(store, &peer.id, &change.id)?) =>
            {
                Some(envelope.into_view(&[]))
            }
            Sharing::Withheld => None,
            // The page stops here; the partner asks again later.
            Sharing::Embargoed => break,
        };
        if let Some(view) = &view {
            sent.push((change.id, change.version));
            for d in &view.disclosures {
                // Records repeat the same paths: each is turned into its pattern once a page.
                if !seen_paths.contains(d.path()) {
                    seen_paths.insert(d.path().to_owned());
                    disclosed_paths.insert(path_pattern(d.path()));
                }
            }
        }
        entries.push(FeedEntry {
            seq: change.seq,
            digest: change.digest,
            envelope: view,
        });
    }
    if !sent.is_empty() {
        // Audited first (synced): a disclosure the log cannot record does not happen, and one
        // recorded that then fails to leave is the safer error.
        node.audit().append(
            "disclosure",
            json!({
                "partner": peer.id,
                "channel": "feed",
                "versions": sent.iter().map(|(id, v)| format!("{id}@{v}")).collect::<Vec<_>>(),
                "paths": disclosed_paths,
            }),
            true,
        )?;
        // Then noted, so a later retraction reaches the partner (made durable below).
        store.note_disclosed(&peer.id, &sent)?;
    }
    // Every change the page names is made durable before it leaves, withheld ones too: the
    // partner keeps their sequence numbers and digests in its cursor, and a change a crash
    // took back would be numbered again with another digest, breaking its chain for good.
    store.flush()?;
    Ok(FeedPage {
        origin: node.config().node_id.clone(),
        policy: peer.policy.digest(),
        relay: peer.policy.relay,
        after,
        entries,
        last_seq: store.own_tail()?.0,
    })
}

/// Whether own record `id`'s latest version lets its older `version` leave to `peer`: a
/// record marked do-not-share or TLP RED since (or no longer releasable to the partner) does
/// not leave in any earlier form either ([`policy::labels_allow`]). A partner that was
/// offline, is under embargo or pulls from the start must not get what the origin has since
/// withdrawn.
fn labels_now_allow(
    store: &crate::store::Store,
    peer: &Peer,
    id: &RecordId,
    version: u32,
) -> anyhow::Result<bool> {
    let Some(head) = store.head(id)? else {
        return Ok(false);
    };
    if head.version <= version {
        return Ok(true);
    }
    let Some(latest) = store.get(id, Some(head.version))? else {
        return Ok(false);
    };
    Ok(policy::labels_allow(&peer.id, &peer.policy, &latest).is_ok())
}

/// True when `partner` was sent a version of own record `id` (noted, durably, before a feed
/// page or a grant leaves; a store from before the notes is filled once from its receipts and
/// grants), or its receipt says it applied one.
fn holds(store: &crate::store::Store, partner: &str, id: &RecordId) -> anyhow::Result<bool> {
    Ok(store.disclosed_version(partner, id)?.is_some()
        || store.receipts(id)?.iter().any(|(p, _)| p == partner))
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("{peer} answered {status}: {detail}")]
    Refused {
        peer: String,
        status: u16,
        detail: String,
    },
    #[error("refused a page from {peer}: {reason}")]
    BadPage { peer: String, reason: String },
    #[error("{peer} answered more than {limit} bytes (federation.max_answer_mib)")]
    TooLarge { peer: String, limit: usize },
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// Sends a signed request to `peer`; the answer body as JSON.
pub async fn request(
    node: &Node,
    peer: &Peer,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
) -> Result<Value, SyncError> {
    let bytes = request_bytes(node, peer, method, path_and_query, body).await?;
    serde_json::from_slice(&bytes).map_err(|e| SyncError::BadPage {
        peer: peer.id.clone(),
        reason: format!("not JSON: {e}"),
    })
}

/// Sends a signed request to `peer`; the body of a 2xx answer.
pub async fn request_bytes(
    node: &Node,
    peer: &Peer,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
) -> Result<axum::body::Bytes, SyncError> {
    let body = body.unwrap_or_default();
    let headers = peer::sign_request(
        node.identity().signing_key(),
        &node.config().node_id,
        &peer.id,
        method.as_str(),
        path_and_query,
        &body,
    );
    let mut req = peer
        .client
        .request(method, format!("{}{path_and_query}", peer.url));
    for (name, value) in headers {
        req = req.header(name, value);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| SyncError::Unreachable(peer.id.clone(), error_chain(&e)))?;
    let status = resp.status();
    let bytes = read_limited(
        resp,
        node.config()
            .federation
            .max_answer_mib
            .saturating_mul(1 << 20),
    )
    .await
    .map_err(|e| match e {
        Limited::Over(limit) => SyncError::TooLarge {
            peer: peer.id.clone(),
            limit,
        },
        Limited::Read(e) => SyncError::Unreachable(peer.id.clone(), error_chain(&e)),
    })?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(SyncError::Refused {
            peer: peer.id.clone(),
            status: status.as_u16(),
            detail,
        });
    }
    Ok(bytes)
}

enum Limited {
    Over(usize),
    Read(reqwest::Error),
}

/// A partner's answer body, read up to `limit` bytes: a larger one is refused as it arrives,
/// before it fills this node's memory.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<axum::body::Bytes, Limited> {
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(Limited::Over(limit));
    }
    let expected = resp.content_length().and_then(|n| usize::try_from(n).ok());
    let mut body = Vec::with_capacity(expected.unwrap_or(0));
    while let Some(chunk) = resp.chunk().await.map_err(Limited::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(Limited::Over(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Fetches `peer`'s key history and adopts what chains to its pinned key.
pub async fn refresh_keys(node: &Node, peer: &Arc<Peer>) -> Result<(), SyncError> {
    let served = request(
        node,
        peer,
        reqwest::Method::GET,
        "/federation/v1/identity",
        None,
    )
    .await?;
    let served: KeyHistory = serde_json::from_value(served).map_err(|e| SyncError::BadPage {
        peer: peer.id.clone(),
        reason: format!("identity: {e}"),
    })?;
    let changed = peer.learn_keys(&served).map_err(|e| SyncError::BadPage {
        peer: peer.id.clone(),
        reason: format!("identity: {e}"),
    })?;
    if changed {
        // Kept (and flushed) for the next start, off the async workers.
        let (store, peer) = (node.store().clone(), peer.clone());
        tokio::task::spawn_blocking(move || crate::peer::save_keys(&store, &peer, &served))
            .await
            .map_err(anyhow::Error::from)??;
    }
    Ok(())
}

/// Checks a page against the cursor: contiguous sequence numbers from `cursor.after + 1`,
/// every claims `prev` naming the previous digest, every envelope from `peer`, signed by a key
/// valid when it was issued, and every disclosure listed. Returns the new cursor.
pub fn verify_page(peer: &Peer, cursor: &Cursor, page: &FeedPage) -> Result<Cursor, String> {
    if page.origin != peer.id {
        return Err(format!("the page names origin {}", page.origin));
    }
    if page.after != cursor.after {
        return Err(format!(
            "asked after {}, got a page after {}",
            cursor.after, page.after
        ));
    }
    let keys = peer.keys();
    let mut expected = cursor.after + 1;
    let mut prev = cursor.prev.clone();
    let mut to_verify = Vec::new();
    let mut leaves = Vec::new();
    let mut seqs = Vec::new();
    let mut last_key: Option<(&str, &str, ed25519_dalek::VerifyingKey)> = None;
    for entry in &page.entries {
        if entry.seq != expected {
            return Err(format!(
                "gap: expected change {expected}, got {}",
                entry.seq
            ));
        }
        if let Some(env) = &entry.envelope {
            let c = &env.claims;
            if c.seq != entry.seq || c.origin != peer.id {
                return Err(format!(
                    "change {}: claims name {}#{}",
                    entry.seq, c.origin, c.seq
                ));
            }
            if c.prev != prev {
                return Err(format!("change {}: the hash chain is broken", entry.seq));
            }
            let leaf = c.leaf().map_err(|e| e.to_string())?;
            if base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, leaf)
                != entry.digest
            {
                return Err(format!(
                    "change {}: digest does not match the claims",
                    entry.seq
                ));
            }
            // A batch of changes shares its key and time: check and decode the key once.
            let key = match &last_key {
                Some((id, at, key)) if *id == c.key_id && *at == c.issued_at => *key,
                _ => {
                    let key = keys.key_valid_at(&c.key_id, &c.issued_at).map_err(|e| {
                        let root = keys.keys.first().map(|k| k.key_id.as_str());
                        let hint = if keys.key(&c.key_id).is_none()
                            && root.is_some_and(|r| keys.has_keys_before(r))
                        {
                            " (a key from before the pinned one: configure the partner's \
                             first_key, from a new card)"
                        } else {
                            ""
                        };
                        format!("change {}: {e}{hint}", entry.seq)
                    })?;
                    last_key = Some((c.key_id.as_str(), c.issued_at.as_str(), key));
                    key
                }
            };
            if RecordId::parse(&c.record_id).is_none() {
                return Err(format!("change {}: bad record id", entry.seq));
            }
            to_verify.push((env, key));
            leaves.push(leaf);
            seqs.push(entry.seq);
        }
        prev = entry.digest.clone();
        expected += 1;
    }
    crate::envelope::verify_all(&to_verify, Some(&leaves))
        .map_err(|(n, e)| format!("change {}: {e}", seqs.get(n).copied().unwrap_or(0)))?;
    Ok(Cursor {
        after: expected - 1,
        prev,
        policy: page.policy.clone(),
    })
}

/// The outcome of one pull.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pulled {
    pub pages: usize,
    pub applied: usize,
}

/// A page being written, and when its fetch started.
type Writing = (
    tokio::task::JoinHandle<Result<(Vec<Applied>, Cursor), SyncError>>,
    std::time::Instant,
);

/// Pulls `peer`'s feed until caught up. Three pages are in flight: the next one is fetched
/// while this one is verified and prepared, and the previous one is written and flushed
/// meanwhile; writes stay in order, each with its cursor. `pulled` counts the pages written,
/// also when a later one fails; no write is still running when this returns.
pub async fn pull(
    node: &Arc<Node>,
    peer: &Arc<Peer>,
    pulled: &mut Pulled,
) -> Result<(), SyncError> {
    refresh_keys(node, peer).await?;
    // Receipts a partner did not take before (it was down, or this node stopped) go again.
    let (n, p) = (node.clone(), peer.clone());
    tokio::spawn(async move { send_owed_receipts(&n, &p).await });
    let page_size = node.config().federation.page_size;
    let mut limit = match peer.page_limit.load(std::sync::atomic::Ordering::Relaxed) {
        0 => page_size,
        remembered => remembered.min(page_size),
    };
    let n = node.clone();
    let id = peer.id.clone();
    let mut cursor = tokio::task::spawn_blocking(move || n.store().cursor(&id))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(anyhow::Error::from)?;
    let mut prefetched: Option<tokio::task::JoinHandle<Result<FeedPage, SyncError>>> = None;
    let mut writing: Option<Writing> = None;
    loop {
        let started = std::time::Instant::now();
        let page = match prefetched.take() {
            Some(handle) => handle
                .await
                .unwrap_or_else(|e| Err(anyhow::Error::from(e).into())),
            None => fetch_page(node.clone(), peer.clone(), cursor.after, limit).await,
        };
        let page = match page {
            Ok(page) => page,
            // A page too large to take (records with many items): ask for fewer changes, down
            // to one, rather than asking for the same page again and again.
            Err(SyncError::TooLarge { limit: bytes, .. }) if limit > 1 => {
                finish_write(node, peer, writing.take(), pulled).await?;
                limit = (limit / 2).max(1);
                // Remembered: later rounds start there, not from a size known to fail.
                peer.page_limit
                    .store(limit, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(peer = %peer.id, bytes, page_size = limit, "a feed page was too large; asking for fewer changes");
                continue;
            }
            Err(e) => {
                // The page before may still be being written: let it finish (it is verified
                // and whole) before giving up, or the next round, reading the cursor from
                // before it, would write it a second time alongside.
                finish_write(node, peer, writing.take(), pulled).await?;
                return Err(e);
            }
        };
        if page.policy != cursor.policy && cursor.after > 0 {
            // The partner changed what it shares with us: replay its feed from the start, so
            // a widened policy reaches back (held versions are merged, never lost).
            finish_write(node, peer, writing.take(), pulled).await?;
            tracing::info!(peer = %peer.id, "partner's policy changed: replaying its feed");
            cursor = Cursor {
                after: 0,
                prev: String::new(),
                policy: page.policy.clone(),
            };
            let n = node.clone();
            let id = peer.id.clone();
            let c = cursor.clone();
            tokio::task::spawn_blocking(move || n.store().set_cursor(&id, &c))
                .await
                .map_err(anyhow::Error::from)?
                .map_err(anyhow::Error::from)?;
            continue;
        }
        let count = page.entries.len();
        if count == limit
            && let Some(last) = page.entries.last()
        {
            prefetched = Some(tokio::spawn(fetch_page(
                node.clone(),
                peer.clone(),
                last.seq,
                limit,
            )));
        }
        let fetched = started.elapsed();
        let (n, p, c) = (node.clone(), peer.clone(), cursor.clone());
        let prepared = tokio::task::spawn_blocking(move || prepare_page(&n, &p, &c, page))
            .await
            .unwrap_or_else(|e| Err(anyhow::Error::from(e).into()));
        let verified = started.elapsed();
        // Whatever happened to this page, the previous one is written first.
        finish_write(node, peer, writing.take(), pulled).await?;
        tracing::debug!(
            peer = %peer.id,
            count,
            fetch_wait_ms = fetched.as_millis(),
            verify_prepare_ms = (verified - fetched).as_millis(),
            previous_write_wait_ms = (started.elapsed() - verified).as_millis(),
            "page verified"
        );
        let prepared = prepared?;
        cursor = prepared.next.clone();
        let (n, p) = (node.clone(), peer.clone());
        writing = Some((
            tokio::task::spawn_blocking(move || write_page(&n, &p, prepared)),
            started,
        ));
        if count < limit {
            finish_write(node, peer, writing.take(), pulled).await?;
            if pulled.applied > 0 {
                // Caught up: what this pull wrote need not wait for the bulk to look over.
                node.index().bulk_done();
            }
            return Ok(());
        }
    }
}

/// Waits for a page's write; then receipts and the indexer's wake-up.
async fn finish_write(
    node: &Arc<Node>,
    peer: &Arc<Peer>,
    writing: Option<Writing>,
    pulled: &mut Pulled,
) -> Result<(), SyncError> {
    let Some((handle, started)) = writing else {
        return Ok(());
    };
    let (applied, _) = handle.await.map_err(anyhow::Error::from)??;
    pulled.pages += 1;
    pulled.applied += applied.len();
    tracing::debug!(
        peer = %peer.id,
        applied = applied.len(),
        ms = started.elapsed().as_millis(),
        "page applied"
    );
    if !applied.is_empty() {
        node.index().notify();
        let (n, p) = (node.clone(), peer.clone());
        tokio::spawn(async move { send_owed_receipts(&n, &p).await });
    }
    Ok(())
}

async fn fetch_page(
    node: Arc<Node>,
    peer: Arc<Peer>,
    after: u64,
    limit: usize,
) -> Result<FeedPage, SyncError> {
    let bytes = request_bytes(
        &node,
        &peer,
        reqwest::Method::GET,
        &format!("/federation/v1/feed?after={after}&limit={limit}"),
        None,
    )
    .await?;
    serde_json::from_slice(&bytes).map_err(|e| SyncError::BadPage {
        peer: peer.id.clone(),
        reason: format!("not a feed page: {e}"),
    })
}

/// A verified page, ready to store.
struct Prepared {
    replicas: Vec<Replica>,
    /// The search documents of each replica (none for retractions), for the indexer.
    docs: Vec<Option<Documents>>,
    /// The change sequence number of each replica.
    seqs: Vec<u64>,
    applied: Vec<Applied>,
    after: u64,
    next: Cursor,
}

/// Verifies one page and builds what will be stored (blocking; writes nothing).
fn prepare_page(
    node: &Node,
    peer: &Peer,
    cursor: &Cursor,
    page: FeedPage,
) -> Result<Prepared, SyncError> {
    let next = verify_page(peer, cursor, &page).map_err(|reason| {
        node.audit().record(
            "feed_page_refused",
            json!({ "partner": peer.id, "after": cursor.after, "reason": reason }),
            true,
        );
        tracing::warn!(peer = %peer.id, %reason, "refused a feed page");
        SyncError::BadPage {
            peer: peer.id.clone(),
            reason,
        }
    })?;
    let mut envelopes = Vec::new();
    let mut seqs = Vec::new();
    let mut applied = Vec::new();
    for entry in page.entries {
        let Some(envelope) = entry.envelope else {
            continue;
        };
        let c = &envelope.claims;
        let Some(id) = RecordId::parse(&c.record_id) else {
            continue;
        };
        applied.push(Applied {
            record_id: c.record_id.clone(),
            version: c.version,
            retracted: c.retracted,
        });
        seqs.push(entry.seq);
        envelopes.push((id, envelope));
    }
    // Built as received; what the store already holds is checked by the writer, in order.
    let (replicas, docs) = build_replicas(node.index(), envelopes)
        .map_err(anyhow::Error::from)?
        .into_iter()
        .unzip();
    Ok(Prepared {
        replicas,
        docs,
        seqs,
        applied,
        after: cursor.after,
        next,
    })
}

/// Checks replicas against what the store holds (called by the only writer, so no other
/// write interleaves): a change naming one of this node's own records refuses the page; a
/// version already held (a replay after a policy change) keeps the union of both views.
fn reconcile(
    store: &crate::store::Store,
    peer: &Peer,
    replicas: &mut [Replica],
    docs: &mut [Option<Documents>],
    seqs: &[u64],
) -> Result<(), SyncError> {
    for ((replica, doc), seq) in replicas.iter_mut().zip(docs).zip(seqs) {
        let id = replica.id;
        // A record this node has never seen (the common case) needs no further lookup.
        if store.head(&id).map_err(anyhow::Error::from)?.is_none() {
            continue;
        }
        // Only the origin changes its records: an own record never takes a partner's version.
        if store.is_own(&id).map_err(anyhow::Error::from)? {
            return Err(SyncError::BadPage {
                peer: peer.id.clone(),
                reason: format!("change {seq} names this node's own record {id}"),
            });
        }
        // Nor does a partner change another partner's records.
        if let Some(origin) = store.replica_origin(&id).map_err(anyhow::Error::from)?
            && origin != peer.id
        {
            return Err(SyncError::BadPage {
                peer: peer.id.clone(),
                reason: format!("change {seq} names record {id}, which is {origin}'s"),
            });
        }
        if let Some(held) = store
            .envelope(&id, replica.version)
            .map_err(anyhow::Error::from)?
            .and_then(|b| serde_json::from_slice::<Envelope>(&b).ok())
        {
            let received: Envelope =
                serde_json::from_slice(&replica.envelope).map_err(anyhow::Error::from)?;
            if let Some(merged) = held.merge(&received) {
                *replica = replica_from(id, merged).map_err(anyhow::Error::from)?;
                // Rare (a replay after a policy change): the indexer reads it from the store.
                *doc = None;
            }
        }
    }
    Ok(())
}

/// Builds the stored form of verified envelopes and their search documents, on two threads
/// for a full page. The envelopes are consumed: their disclosed values move into the records.
fn build_replicas(
    index: &SearchIndex,
    mut envelopes: Vec<(RecordId, Envelope)>,
) -> Result<Vec<(Replica, Option<Documents>)>, serde_json::Error> {
    type Built = Vec<(Replica, Option<Documents>)>;
    let build = |part: Vec<(RecordId, Envelope)>| -> Result<Built, serde_json::Error> {
        part.into_iter()
            .map(|(id, e)| {
                let (replica, keys) = keyed_replica(id, e)?;
                let docs = (!replica.retracted)
                    .then(|| index.documents(replica.id, replica.version, &replica.record, keys));
                Ok((replica, docs))
            })
            .collect()
    };
    if envelopes.len() < 32 {
        return build(envelopes);
    }
    let second_half = envelopes.split_off(envelopes.len() / 2);
    std::thread::scope(|scope| {
        let second = scope.spawn(|| build(second_half));
        let mut first = build(envelopes)?;
        first.extend(second.join().unwrap_or_else(|_| Ok(Vec::new()))?);
        Ok(first)
    })
}

/// Stores a prepared page with its cursor in one transaction and flushes (blocking).
/// Returns what was applied, for the receipt.
fn write_page(
    node: &Node,
    peer: &Peer,
    prepared: Prepared,
) -> Result<(Vec<Applied>, Cursor), SyncError> {
    let Prepared {
        mut replicas,
        mut docs,
        seqs,
        applied,
        after,
        next,
    } = prepared;
    if let Err(e) = reconcile(node.store(), peer, &mut replicas, &mut docs, &seqs) {
        if let SyncError::BadPage { reason, .. } = &e {
            node.audit().record(
                "feed_page_refused",
                json!({ "partner": peer.id, "after": after, "reason": reason }),
                true,
            );
            tracing::warn!(peer = %peer.id, %reason, "refused a feed page");
        }
        return Err(e);
    }
    let index = node.index();
    // The receipt owed for the page is kept with it, and sent until the partner takes it.
    let receipt = (!applied.is_empty())
        .then(|| serde_json::to_vec(&applied))
        .transpose()
        .map_err(anyhow::Error::from)?;
    let offered = index.offer(docs.into_iter().flatten());
    let written =
        match node
            .store()
            .apply_page(&peer.id, &replicas, Some((&next, receipt.as_deref())))
        {
            Ok(written) => written,
            Err(e) => {
                index.withdraw(offered);
                return Err(anyhow::Error::from(e).into());
            }
        };
    let written: Vec<(RecordId, u32)> = written.iter().map(|w| (w.id, w.version)).collect();
    index.settle(offered, &written);
    node.store().flush().map_err(anyhow::Error::from)?;
    if !applied.is_empty() {
        node.audit().record(
            "received",
            json!({ "partner": peer.id, "after": after, "to": next.after, "versions": applied.len() }),
            false,
        );
    }
    Ok((applied, next))
}

/// The stored form of a verified envelope from a partner: the envelope, and the record its
/// disclosures show with identity fields from the signed claims ([`Envelope::replica_record`];
/// the store keeps the envelope alone and shows the record with this node's `derived`
/// interpretations as it reads it).
pub fn replica_from(id: RecordId, envelope: Envelope) -> Result<Replica, serde_json::Error> {
    keyed_replica(id, envelope).map(|(replica, _)| replica)
}

/// [`replica_from`], with the search keys of the record's items
/// (for [`crate::index::SearchIndex::documents`]).
fn keyed_replica(
    id: RecordId,
    envelope: Envelope,
) -> Result<(Replica, Vec<crate::record::ItemKeys>), serde_json::Error> {
    let bytes = serde_json::to_vec(&envelope)?;
    let (version, retracted) = (envelope.claims.version, envelope.claims.retracted);
    let record = envelope.into_replica_record();
    let keys = crate::record::item_keys(&record);
    let replica = Replica {
        id,
        version,
        record,
        envelope: bytes,
        retracted,
    };
    Ok((replica, keys))
}

/// Stores what a partner's (verified) receipt says it applied, in one write; returns how many
/// records got a newer receipt. Only own records count, and only versions this node sent that
/// partner: a receipt cannot make a partner a holder (and so open the feed to it) of a record
/// it never got. A version at or below the one already receipted changes nothing, and of a
/// record named twice the higher version is kept.
pub fn store_receipt(
    store: &crate::store::Store,
    partner: &str,
    receipt: &Receipt,
) -> Result<usize, crate::store::StoreError> {
    let mut newer: std::collections::HashMap<RecordId, (u32, Value)> = Default::default();
    for applied in &receipt.applied {
        let Some(id) = RecordId::parse(&applied.record_id) else {
            continue;
        };
        // Only versions this node sent `partner` count; `disclosed` holds own records only
        // (feeds and grants serve nothing else), so this also skips unknown and foreign ids.
        if store
            .disclosed_version(partner, &id)?
            .is_none_or(|sent| sent < applied.version)
        {
            continue;
        }
        let held = store
            .receipt(&id, partner)?
            .and_then(|v| v.get("version").and_then(Value::as_u64));
        if held.is_some_and(|v| v >= u64::from(applied.version))
            || newer.get(&id).is_some_and(|(v, _)| *v >= applied.version)
        {
            continue;
        }
        let entry = json!({
            "version": applied.version,
            "retracted": applied.retracted,
            "applied_at": receipt.at,
            "key_id": receipt.key_id,
        });
        newer.insert(id, (applied.version, entry));
    }
    store.put_receipts(partner, newer.iter().map(|(id, (_, e))| (*id, e)))?;
    Ok(newer.len())
}

/// Sends `peer` the receipts owed to it, oldest first, each until `peer` takes it: one that
/// fails waits for the next page or pull round, and survives restarts in the store.
async fn send_owed_receipts(node: &Node, peer: &Peer) {
    let _one_at_a_time = peer.receipts_sending.lock().await;
    let (store, id) = (node.store().clone(), peer.id.clone());
    let owed = match tokio::task::spawn_blocking(move || store.owed_receipts(&id)).await {
        Ok(Ok(owed)) => owed,
        Ok(Err(e)) => {
            tracing::error!(peer = %peer.id, error = %e, "cannot read the receipts owed");
            return;
        }
        Err(e) => {
            tracing::error!(peer = %peer.id, error = %e, "cannot read the receipts owed");
            return;
        }
    };
    for (key, bytes) in owed {
        match serde_json::from_slice::<Vec<Applied>>(&bytes) {
            Ok(applied) => {
                if !send_receipt(node, peer, applied).await {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(peer = %peer.id, error = %e, "an owed receipt is unreadable; dropped")
            }
        }
        if let Err(e) = node.store().receipt_taken(&key) {
            tracing::error!(peer = %peer.id, error = %e, "cannot clear a receipt sent");
        }
    }
}

/// Signs a receipt for applied versions and sends it to their origin; true when it is done
/// with (taken, or refused for good), false when it is to be sent again.
async fn send_receipt(node: &Node, peer: &Peer, applied: Vec<Applied>) -> bool {
    let receipt = Receipt {
        v: 1,
        from: node.config().node_id.clone(),
        to: peer.id.clone(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        key_id: node.identity().key_id(),
        applied,
    };
    let signed = match sign_receipt(node, receipt) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a receipt");
            return false;
        }
    };
    let body = serde_json::to_vec(&signed).unwrap_or_default();
    match request(
        node,
        peer,
        reqwest::Method::POST,
        "/federation/v1/receipts",
        Some(body),
    )
    .await
    {
        Ok(_) => true,
        // Refused for what it is (not for the moment: 401 may be a key not yet learnt, 408
        // and 429 are the partner's load): sending it again would change nothing.
        Err(SyncError::Refused { status, detail, .. })
            if (400..500).contains(&status) && !matches!(status, 401 | 408 | 429) =>
        {
            tracing::error!(peer = %peer.id, status, %detail, "receipt refused; dropped");
            true
        }
        Err(e) => {
            tracing::warn!(peer = %peer.id, error = %e, "receipt not delivered; sent again later");
            false
        }
    }
}

fn sign_receipt(node: &Node, receipt: Receipt) -> anyhow::Result<SignedReceipt> {
    use base64::Engine;
    use ed25519_dalek::Signer;
    let bytes = receipt.canonical()?;
    let sig = node.identity().signing_key().sign(&bytes);
    Ok(SignedReceipt {
        receipt,
        sig: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.to_bytes()),
    })
}

/// Checks a receipt's signature with the sender's key valid at its time.
pub fn verify_receipt(peer: &Peer, signed: &SignedReceipt) -> Result<(), String> {
    use base64::Engine;
    let key = peer
        .keys()
        .key_valid_at(&signed.receipt.key_id, &signed.receipt.at)
        .map_err(|e| e.to_string())?;
    let bytes = signed.receipt.canonical().map_err(|e| e.to_string())?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&signed.sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
        .ok_or("malformed signature")?;
    key.verify_strict(&bytes, &sig)
        .map_err(|_| "the receipt's signature does not verify".to_owned())
}

/// How long a puller waits for its next round after `failures` failed rounds in a row (the
/// partner unreachable, any answer but a 2xx, a refused page; a round that wrote a page
/// before it failed is not one): the pull interval, doubled with each such round up to twelve
/// intervals (a minute by default). A partner that shares no feed is so asked, and its audit
/// log written, about once a minute rather than every 5 s. A notify from the partner ends any
/// wait at once, and every node notifies its partners when it starts (decision 0013).
fn next_pull_in(interval: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures).min(12);
    interval.saturating_mul(factor)
}

/// How often the key history of a partner not pulled from is fetched again.
const KEY_HISTORY_REFRESH: Duration = Duration::from_secs(300);

/// Starts the background work of federation: one puller per partner we pull from (woken by
/// its notify calls and by a timer, which waits longer while the partner fails or refuses),
/// and the notifier that tells replicating partners about new writes, and that this node is
/// up (once at start: partners that backed off while it was down pull at once).
pub fn start(node: Arc<Node>, stop: tokio::sync::watch::Receiver<bool>) {
    let interval = Duration::from_millis(node.config().federation.pull_interval_ms);
    for peer in node.peers().iter().filter(|p| p.pull).cloned() {
        let node = node.clone();
        let mut stop = stop.clone();
        let wake = node.pull_wake(&peer.id);
        tokio::spawn(async move {
            // The last failure, so a partner that stays down is logged once, not every round.
            let mut failing: Option<String> = None;
            // Failed rounds in a row: the wait before the next one grows with them. A round
            // that wrote a page before it failed made progress, and counts as none.
            let mut failures = 0u32;
            loop {
                let mut p = Pulled::default();
                let outcome = pull(&node, &peer, &mut p).await;
                failures = if outcome.is_ok() || p.pages > 0 {
                    0
                } else {
                    failures.saturating_add(1)
                };
                match outcome {
                    Ok(()) => {
                        if failing.take().is_some() {
                            tracing::info!(peer = %peer.id, "partner reachable again");
                        }
                        if p.applied > 0 {
                            tracing::info!(peer = %peer.id, applied = p.applied, "pulled");
                        }
                    }
                    // A partner that shares nothing with us by feed answers 403: not an error.
                    Err(SyncError::Refused { status: 403, .. }) => {}
                    Err(e) => {
                        let kind = match &e {
                            SyncError::Unreachable(..) => "unreachable".to_owned(),
                            other => other.to_string(),
                        };
                        if failing.as_deref() != Some(kind.as_str()) {
                            tracing::warn!(peer = %peer.id, error = %e, "pull failed");
                            failing = Some(kind);
                        }
                    }
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(next_pull_in(interval, failures)) => {}
                }
            }
        });
    }
    // A partner not pulled from still has its key history refreshed now and then (a pull
    // refreshes it each round), so that a key it rotated out or revoked is learnt soon.
    for peer in node.peers().iter().filter(|p| !p.pull).cloned() {
        let node = node.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = refresh_keys(&node, &peer).await {
                    tracing::debug!(peer = %peer.id, error = %e, "key history not refreshed");
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(KEY_HISTORY_REFRESH) => {}
                }
            }
        });
    }
    let partners: Vec<Arc<Peer>> = node.peers().iter().cloned().collect();
    if partners.is_empty() {
        return;
    }
    let mut stop = stop;
    tokio::spawn(async move {
        // A round at start (this node is up), then one after each burst of writes.
        loop {
            let body = serde_json::to_vec(&json!({
                "last_seq": node.store().own_tail().map(|t| t.0).unwrap_or(0)
            }))
            .unwrap_or_default();
            // Partners that pull a feed: `replicate` ones, and any other that holds records
            // it was sent (it pulls their retractions).
            let store = node.store();
            let notified = partners.iter().filter(|p| {
                p.policy.mode == Mode::Replicate || store.disclosed_any(&p.id).unwrap_or(true)
            });
            let mut calls = tokio::task::JoinSet::new();
            for peer in notified {
                let (body, node, peer) = (body.clone(), node.clone(), peer.clone());
                calls.spawn(async move {
                    let path = "/federation/v1/notify";
                    if let Err(e) =
                        request(&node, &peer, reqwest::Method::POST, path, Some(body)).await
                    {
                        tracing::debug!(peer = %peer.id, error = %e, "notify not delivered");
                    }
                });
            }
            calls.join_all().await;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = node.wait_written() => {}
            }
            // Gather a burst of writes into one notify.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Per-partner wake-ups for the pullers, set by the notify endpoint.
#[derive(Default)]
pub struct Wakes {
    map: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl Wakes {
    pub fn get(&self, peer: &str) -> Arc<tokio::sync::Notify> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(peer.to_owned())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The fast canonical form of a receipt is byte for byte what serde_jcs writes.
        #[test]
        fn fast_receipt_encoding_is_jcs(
            text in "\\PC*",
            control in proptest::collection::vec(0u32..0x20, 0..4),
            v in proptest::prelude::any::<u32>(),
            applied in proptest::collection::vec(
                ("\\PC{0,12}", proptest::prelude::any::<u32>(), proptest::prelude::any::<bool>()),
                0..6,
            ),
        ) {
            let odd: String = control.iter().filter_map(|c| char::from_u32(*c)).collect();
            let receipt = Receipt {
                v,
                from: format!("X{text}"),
                to: odd.clone() + "\u{2028}\"\\",
                at: text.clone(),
                key_id: odd,
                applied: applied
                    .into_iter()
                    .map(|(record_id, version, retracted)| Applied { record_id, version, retracted })
                    .collect(),
            };
            proptest::prop_assert_eq!(
                receipt.canonical().unwrap(),
                crate::envelope::canonical(&receipt).unwrap()
            );
        }
    }

    #[test]
    fn a_failing_partner_is_pulled_less_and_less_often_up_to_twelve_intervals() {
        let i = Duration::from_millis(5000);
        let waits: Vec<u64> = (0..7)
            .map(|f| next_pull_in(i, f).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [5000, 10_000, 20_000, 40_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(next_pull_in(i, u32::MAX), Duration::from_secs(60));
        assert_eq!(
            next_pull_in(Duration::from_millis(500), 9),
            Duration::from_secs(6)
        );
    }
    use crate::envelope::{Seal, seal};
    use crate::peer::{PeerConfig, Peers};
    use base64::Engine;
    use ed25519_dalek::SigningKey;

    /// A configured partner whose node key is `key` (its TLS certificate is a real one).
    fn peer(id: &str, key: &SigningKey) -> Arc<Peer> {
        peer_with(id, key, Default::default())
    }

    /// The same, with this node's `policy` for it.
    fn peer_with(id: &str, key: &SigningKey, policy: policy::Policy) -> Arc<Peer> {
        let dir = tempfile::tempdir().unwrap();
        crate::identity::init(dir.path(), id).unwrap();
        let vk = key.verifying_key();
        let config = PeerConfig {
            id: id.into(),
            url: "https://127.0.0.1:1".into(),
            public_key: format!(
                "{} {}",
                crate::identity::key_id(&vk),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vk.as_bytes())
            ),
            certificate: std::fs::read_to_string(dir.path().join(crate::identity::TLS_CERT_FILE))
                .unwrap(),
            first_key: None,
            pull: true,
            policy,
        };
        Peers::new(&[config], Duration::from_secs(1))
            .unwrap()
            .get(id)
            .unwrap()
            .clone()
    }

    /// A one-change feed page of `origin`, signed by `key`, carrying record `rid`.
    fn page(origin: &str, key: &SigningKey, rid: &str, version: u32, lot: &str) -> FeedPage {
        let record = json!({"record_id": rid, "record_version": version, "originating_state": origin,
            "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": {"raw": lot}}],
            "sharing": {"tlp": "GREEN"}});
        let seal_as = Seal {
            origin,
            seq: 1,
            prev: "",
            issued_at: "2026-01-01T00:00:00.000Z",
            retracted: false,
            normaliser: "1",
        };
        let env = seal(&record, &seal_as, key).unwrap();
        FeedPage {
            origin: origin.into(),
            policy: "p".into(),
            relay: false,
            after: 0,
            entries: vec![FeedEntry {
                seq: 1,
                digest: env.claims.digest().unwrap(),
                envelope: Some(env),
            }],
            last_seq: 1,
        }
    }

    fn replicas(p: &FeedPage) -> Vec<Replica> {
        p.entries
            .iter()
            .filter_map(|e| e.envelope.clone())
            .map(|e| replica_from(RecordId::parse(&e.claims.record_id).unwrap(), e).unwrap())
            .collect()
    }

    /// The view a partner gets is the one `policy::decide` describes, path for path, though
    /// the record's disclosures are not in sorted order (`case_refs` and `items` sort before
    /// `event`, which comes first here) and a whole item is withheld by category.
    #[test]
    fn a_view_holds_exactly_the_paths_the_policy_discloses() {
        let key = SigningKey::from_bytes(&[13u8; 32]);
        let record = json!({
            "record_id": "01900000-0000-7000-8000-00000000d001", "record_version": 1,
            "originating_state": "XAA",
            "event": {"event_type": "seizure", "date": {"start": "2024-03-01"},
                      "location": {"country": "XAA", "admin1": "XAA-01", "place_name": "Port"}},
            "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": {"raw": "1"}},
                      {"item_id": "i2", "item_category": "grenade", "lot": {"raw": "2"}}],
            "case_refs": [{"system": "police", "ref": "C-1"}],
            "sharing": {"tlp": "GREEN"}
        });
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let seal_as = Seal {
            origin: "XAA",
            seq: 1,
            prev: "",
            issued_at: &now,
            retracted: false,
            normaliser: "1",
        };
        let envelope = seal(&record, &seal_as, &key).unwrap();
        let sorted = envelope.paths();
        let order: Vec<&str> = envelope.disclosures.iter().map(|d| d.path()).collect();
        assert_ne!(
            order, sorted,
            "the test needs disclosures out of sorted order"
        );
        let policy = policy::Policy {
            mode: policy::Mode::Replicate,
            categories: vec!["small_arms_ammunition".into()],
            fields: vec!["*".into()],
            location_precision: policy::LocationPrecision::Admin1,
            ..Default::default()
        };
        let xbb = peer_with("XBB", &SigningKey::from_bytes(&[14u8; 32]), policy.clone());
        let decision = policy::decide("XBB", &policy, &record, &sorted, 0);
        let mut expected: Vec<&str> = decision.disclosed().collect();
        expected.sort_unstable();
        let View::Shown(view) = view_for(&xbb, &envelope, &record) else {
            panic!("the record is shared");
        };
        let mut shown: Vec<&str> = view.disclosures.iter().map(|d| d.path()).collect();
        shown.sort_unstable();
        assert_eq!(shown, expected);
        for gone in [
            "/case_refs/0/ref",
            "/items/1/lot/raw",
            "/event/location/place_name",
        ] {
            assert!(!shown.contains(&gone), "{gone} left");
        }
        assert!(shown.contains(&"/event/location/admin1"));
        view.verify(&key.verifying_key()).unwrap();
        // The feed's way, cutting the envelope itself, gives the same view.
        let Sharing::Shown(keep) = sharing(&xbb, &envelope, &record) else {
            panic!("the record is shared");
        };
        assert_eq!(envelope.clone().into_view(&keep), *view);
    }

    /// XBB signs, as itself, a version of a record that came from XCC: its signature is good,
    /// but only XCC changes XCC's records. The page is refused and the store keeps XCC's.
    #[test]
    fn a_partner_cannot_overwrite_another_partners_record() {
        let (kc, kb) = (
            SigningKey::from_bytes(&[11u8; 32]),
            SigningKey::from_bytes(&[12u8; 32]),
        );
        let (xcc, xbb) = (peer("XCC", &kc), peer("XBB", &kb));
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let rid = "01900000-0000-7000-8000-00000000c001";
        let id = RecordId::parse(rid).unwrap();

        let genuine = page("XCC", &kc, rid, 1, "GENUINE");
        let next = verify_page(&xcc, &Cursor::default(), &genuine).unwrap();
        let mut reps = replicas(&genuine);
        let mut docs: Vec<Option<Documents>> = reps.iter().map(|_| None).collect();
        reconcile(&store, &xcc, &mut reps, &mut docs, &[1]).unwrap();
        store.apply_replicas("XCC", &reps, Some(&next)).unwrap();

        let hostile = page("XBB", &kb, rid, 9, "FORGED");
        let next = verify_page(&xbb, &Cursor::default(), &hostile).unwrap();
        let mut reps = replicas(&hostile);
        let mut docs: Vec<Option<Documents>> = reps.iter().map(|_| None).collect();
        let refused = reconcile(&store, &xbb, &mut reps, &mut docs, &[1]).unwrap_err();
        assert!(refused.to_string().contains("XCC's"), "{refused}");
        // The store refuses it too, whoever calls it (a disclosure grant does not reconcile).
        let e = store.apply_replicas("XBB", &reps, Some(&next)).unwrap_err();
        assert!(matches!(e, crate::store::StoreError::Foreign(_)), "{e}");
        assert!(store.apply_granted("XBB", &reps[0]).is_err());
        let head = store.get(&id, None).unwrap().unwrap();
        assert_eq!(head["originating_state"], "XCC");
        assert_eq!(head["record_version"], 1);
        assert_eq!(head["items"][0]["lot"]["raw"], "GENUINE");
        assert_eq!(store.replica_origin(&id).unwrap().as_deref(), Some("XCC"));
        assert_eq!(store.cursor("XBB").unwrap().after, 0);
    }

    #[test]
    fn a_retraction_reaches_every_holder_whatever_its_policy_and_receipts_say() {
        let dir = tempfile::tempdir().unwrap();
        crate::node::init(dir.path(), "XAA").unwrap();
        let node = Node::open(dir.path()).unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let policy = |v: Value| serde_json::from_value::<policy::Policy>(v).unwrap();
        let replicate = json!({"mode": "replicate", "categories": ["*"], "fields": ["*"]});
        let mut p = crate::store::tests::prepared_as(None, "LC10A000-000");
        let id = p.id;
        node.store()
            .create_batch(std::slice::from_mut(&mut p), node.sealer())
            .unwrap();
        // XBB pulls the record; its receipt never arrives. XCC is sent nothing.
        let xbb = peer_with("XBB", &key, policy(replicate.clone()));
        let first = feed_page(&node, &xbb, 0, 10).unwrap();
        assert!(first.entries[0].envelope.is_some());
        node.store()
            .retract(id, "withdrawn", "2026-01-02T00:00:00Z", node.sealer())
            .unwrap();
        assert!(node.store().receipts(&id).unwrap().is_empty());

        let mut narrowed = replicate.clone();
        narrowed["categories"] = json!(["artillery_ammunition"]);
        for (case, narrowed) in [
            ("categories narrowed", narrowed),
            ("mode query", json!({"mode": "query"})),
            ("mode hit_no_hit", json!({"mode": "hit_no_hit"})),
            ("mode none", json!({"mode": "none"})),
        ] {
            let xbb = peer_with("XBB", &key, policy(narrowed.clone()));
            let page = feed_page(&node, &xbb, 1, 10).unwrap();
            let env = page.entries[0]
                .envelope
                .as_ref()
                .unwrap_or_else(|| panic!("{case}"));
            assert!(env.claims.retracted, "{case}");
            assert!(env.disclosures.is_empty(), "{case}: fields left");
            // A partner that was never sent the record learns nothing of it.
            let xcc = peer_with("XCC", &key, policy(narrowed));
            let page = feed_page(&node, &xcc, 0, 10).unwrap();
            assert!(page.entries.iter().all(|e| e.envelope.is_none()), "{case}");
        }
        assert!(node.store().disclosed_any("XBB").unwrap());
        assert!(!node.store().disclosed_any("XCC").unwrap());
    }

    /// A receipt is stored in one write, for own records sent to that partner only; of a record
    /// named twice the higher version stays, and a receipt for a version already receipted
    /// changes nothing.
    #[test]
    fn a_receipt_stores_the_highest_sent_version_of_each_own_record_once() {
        let dir = tempfile::tempdir().unwrap();
        crate::node::init(dir.path(), "XAA").unwrap();
        let node = Node::open(dir.path()).unwrap();
        let store = node.store();
        let mut batch: Vec<_> = ["LC10A000-001", "LC10A000-002", "LC10A000-003"]
            .iter()
            .map(|lot| crate::store::tests::prepared_as(None, lot))
            .collect();
        let ids: Vec<RecordId> = batch.iter().map(|p| p.id).collect();
        store.create_batch(&mut batch, node.sealer()).unwrap();
        // XBB is sent the first two records, then version 2 of the first.
        let key = SigningKey::from_bytes(&[9; 32]);
        let only_first_two = json!({"mode": "replicate", "categories": ["*"], "fields": ["*"]});
        let xbb = peer_with("XBB", &key, serde_json::from_value(only_first_two).unwrap());
        let page = feed_page(&node, &xbb, 0, 2).unwrap();
        assert_eq!(page.entries.len(), 2);
        let mut next = crate::store::tests::prepared_as(Some(&ids[0].to_string()), "LC10A000-009");
        next.declared_version = Some(1);
        store.update(next, node.sealer()).unwrap();
        let after = store.own_tail().unwrap().0 - 1;
        assert_eq!(feed_page(&node, &xbb, after, 1).unwrap().entries.len(), 1);
        assert_eq!(store.disclosed_version("XBB", &ids[0]).unwrap(), Some(2));

        let applied = |id: &RecordId, version| Applied {
            record_id: id.to_string(),
            version,
            retracted: false,
        };
        let receipt = |applied| Receipt {
            v: 1,
            from: "XBB".into(),
            to: "XAA".into(),
            at: "2026-01-01T00:00:00Z".into(),
            key_id: "ed25519:test".into(),
            applied,
        };
        let stranger = RecordId::parse("01900000-0000-7000-8000-00000000dead").unwrap();
        // A record XBB itself sent here: never this node's to receipt.
        let theirs = RecordId::parse("01900000-0000-7000-8000-0000000000bb").unwrap();
        let mut record = crate::store::tests::prepared_as(None, "XBB-1").record;
        record["record_id"] = json!(theirs.to_string());
        store
            .apply_replicas(
                "XBB",
                &[crate::store::Replica {
                    id: theirs,
                    version: 1,
                    record,
                    envelope: b"{}".to_vec(),
                    retracted: false,
                }],
                None,
            )
            .unwrap();
        let first = receipt(vec![
            applied(&ids[0], 2),
            applied(&ids[0], 1),
            applied(&ids[1], 1),
            applied(&ids[1], 3), // never sent: ignored
            applied(&ids[2], 1), // not sent to XBB: ignored
            applied(&stranger, 1),
            applied(&theirs, 1),
        ]);
        assert_eq!(store_receipt(store, "XBB", &first).unwrap(), 2);
        let version = |id: &RecordId| {
            store
                .receipt(id, "XBB")
                .unwrap()
                .map(|r| r["version"].clone())
        };
        assert_eq!(version(&ids[0]), Some(json!(2)));
        assert_eq!(version(&ids[1]), Some(json!(1)));
        assert_eq!(version(&ids[2]), None);
        assert_eq!(version(&theirs), None);
        assert_eq!(store.receipts(&ids[0]).unwrap().len(), 1);
        // The same receipt again, or an older one, changes nothing.
        assert_eq!(store_receipt(store, "XBB", &first).unwrap(), 0);
        let older = receipt(vec![applied(&ids[0], 1)]);
        assert_eq!(store_receipt(store, "XBB", &older).unwrap(), 0);
        assert_eq!(version(&ids[0]), Some(json!(2)));
    }

    /// An own record as `XAA` writes it: one item with `lot`, and these sharing labels.
    fn own_record(id: Option<RecordId>, lot: &str, sharing: Value) -> crate::record::Prepared {
        let mut record = json!({
            "originating_state": "XAA",
            "event": {"event_type": "seizure", "date": {"start": "2024-03-01"},
                      "location": {"country": "XAA", "precision": "country"}},
            "items": [{"item_id": "i1", "item_category": "small_arms_ammunition",
                       "lot": {"raw": lot}}],
            "sharing": sharing
        });
        if let Some(id) = id {
            record["record_id"] = json!(id.to_string());
        }
        let mut p = crate::record::Validator::new("XAA")
            .prepare(record, "2026-01-01T00:00:00Z")
            .unwrap();
        if id.is_some() {
            p.declared_version = Some(1);
        }
        p
    }

    /// A record marked do-not-share (or TLP RED, or no longer releasable to the partner) at
    /// a later version does not leave in its earlier form either, to a partner that pulls
    /// after (offline, under embargo, new, or replaying); a plain correction leaves both.
    #[test]
    fn a_record_withdrawn_from_sharing_later_does_not_leave_in_its_old_form() {
        let dir = tempfile::tempdir().unwrap();
        crate::node::init(dir.path(), "XAA").unwrap();
        let node = Node::open(dir.path()).unwrap();
        let store = node.store();
        let write = |id: Option<RecordId>, lot: &str, sharing: Value| {
            let p = own_record(id, lot, sharing);
            match id {
                None => store.create_batch(&mut [p], node.sealer()).unwrap()[0].id,
                Some(_) => store.update(p, node.sealer()).unwrap().id,
            }
        };
        let green = json!({"tlp": "GREEN"});
        let withdrawn = [
            json!({"tlp": "GREEN", "do_not_share": true}),
            json!({"tlp": "RED"}),
            json!({"tlp": "GREEN", "releasable_to": ["XCC"]}),
        ];
        let mut hidden = Vec::new();
        for labels in withdrawn {
            let id = write(None, "LC10A000-001", green.clone());
            write(Some(id), "LC10A000-001", labels);
            hidden.push(id.to_string());
        }
        let corrected = write(None, "LC10A000-002", green.clone());
        write(Some(corrected), "LC10A000-003", green.clone());
        let key = SigningKey::from_bytes(&[9; 32]);
        let all = json!({"mode": "replicate", "categories": ["*"], "fields": ["*"]});
        let xbb = peer_with("XBB", &key, serde_json::from_value(all).unwrap());
        let page = feed_page(&node, &xbb, 0, 100).unwrap();
        assert_eq!(
            page.entries.len(),
            8,
            "every change is named, withheld or not"
        );
        let sent: Vec<(String, u32)> = page
            .entries
            .iter()
            .filter_map(|e| e.envelope.as_ref())
            .map(|e| (e.claims.record_id.clone(), e.claims.version))
            .collect();
        let corrected = corrected.to_string();
        assert_eq!(sent, vec![(corrected.clone(), 1), (corrected, 2)]);
        assert!(hidden.iter().all(|h| sent.iter().all(|(id, _)| id != h)));
    }

    /// Writes `p` as a new own record of `node`, flushed and indexed.
    async fn write_indexed(node: &Arc<Node>, p: crate::record::Prepared) -> RecordId {
        let written = node.store().create_batch(&mut [p], node.sealer()).unwrap();
        node.store().flush().unwrap();
        node.index().notify();
        assert!(
            node.index()
                .wait_for(written[0].seq, Duration::from_secs(20))
                .await
        );
        written[0].id
    }

    /// What `policy` (a JSON policy for partner XBB) answers to a query for `lot`.
    async fn query_as(node: &Arc<Node>, policy: Value, lot: &str) -> crate::query::Answer {
        let key = SigningKey::from_bytes(&[9; 32]);
        let xbb = peer_with("XBB", &key, serde_json::from_value(policy).unwrap());
        let query = crate::query::Query {
            params: crate::search::SearchParams {
                lot: Some(lot.into()),
                ..Default::default()
            },
            purpose: "p".into(),
            case_ref: "c".into(),
        };
        let n = node.clone();
        tokio::task::spawn_blocking(move || crate::query::answer(&n, &xbb, &query))
            .await
            .unwrap()
            .map_err(|e| format!("{e:?}"))
            .unwrap()
    }

    fn hit_count(answer: &crate::query::Answer) -> usize {
        match answer {
            crate::query::Answer::Query { hits } => hits.len(),
            crate::query::Answer::HitNoHit { count, .. } => *count,
        }
    }

    /// A `query` partner's hit is matched only on fields its policy discloses: one that gets
    /// events but no lots learns nothing by asking for a lot. A `hit_no_hit` partner is told
    /// whether a lot is held (a count, nothing else: what that mode is for) whatever its fields.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_does_not_match_on_fields_the_policy_withholds() {
        let dir = tempfile::tempdir().unwrap();
        crate::node::init(dir.path(), "XAA").unwrap();
        let node = Arc::new(Node::open(dir.path()).unwrap());
        write_indexed(
            &node,
            own_record(None, "LC10A000-001", json!({"tlp": "GREEN"})),
        )
        .await;
        let policy = |mode: &str, fields: &[&str]| json!({"mode": mode, "categories": ["*"], "fields": fields});
        for (mode, withheld) in [("query", 0), ("hit_no_hit", 1)] {
            let all = query_as(&node, policy(mode, &["*"]), "LC10A000-001").await;
            assert_eq!(hit_count(&all), 1, "{mode}: found when the lot is shared");
            let events = query_as(&node, policy(mode, &["/event"]), "LC10A000-001").await;
            assert_eq!(hit_count(&events), withheld, "{mode}: lots withheld");
            let lots = query_as(&node, policy(mode, &["/items/*/lot"]), "LC10A000-001").await;
            assert_eq!(hit_count(&lots), 1, "{mode}: the lot alone is enough");
        }
        let other = query_as(&node, policy("hit_no_hit", &[]), "QX77Z123-909").await;
        assert_eq!(hit_count(&other), 0, "a lot not held is no hit");
        node.index().shutdown();
    }

    /// A query is answered from the record as it is now, not from a version the index still
    /// holds: a record marked do-not-share after it was indexed is not a hit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_answers_from_the_current_version_not_the_indexed_one() {
        let dir = tempfile::tempdir().unwrap();
        crate::node::init(dir.path(), "XAA").unwrap();
        let node = Arc::new(Node::open(dir.path()).unwrap());
        let id = write_indexed(
            &node,
            own_record(None, "LC10A000-001", json!({"tlp": "GREEN"})),
        )
        .await;
        let all = json!({"mode": "query", "categories": ["*"], "fields": ["*"]});
        assert_eq!(
            hit_count(&query_as(&node, all.clone(), "LC10A000-001").await),
            1
        );
        // The indexer stops: it stands for the time until its next commit.
        node.index().shutdown();
        let labels = json!({"tlp": "GREEN", "do_not_share": true});
        node.store()
            .update(own_record(Some(id), "LC10A000-001", labels), node.sealer())
            .unwrap();
        node.store().flush().unwrap();
        assert_eq!(hit_count(&query_as(&node, all, "LC10A000-001").await), 0);
    }

    /// A disclosure grant follows the partner's policy as it is when approved: under mode
    /// `none` nothing leaves, though the partner was found to hold a hit before.
    #[test]
    fn a_partner_under_mode_none_is_granted_nothing() {
        let dir = tempfile::tempdir().unwrap();
        crate::node::init(dir.path(), "XAA").unwrap();
        let node = Node::open(dir.path()).unwrap();
        let p = own_record(None, "LC10A000-001", json!({"tlp": "GREEN"}));
        let id = node.store().create_batch(&mut [p], node.sealer()).unwrap()[0].id;
        let entry = json!({"record_id": id.to_string(), "version": 1});
        let key = SigningKey::from_bytes(&[9; 32]);
        let policy = |mode: &str| {
            let p = json!({"mode": mode, "categories": ["*"], "fields": ["*"]});
            serde_json::from_value(p).unwrap()
        };
        let hit_no_hit = peer_with("XBB", &key, policy("hit_no_hit"));
        assert!(crate::disclosure::granted_view(&node, &hit_no_hit, &entry).is_ok());
        let none = peer_with("XBB", &key, policy("none"));
        let refused = crate::disclosure::granted_view(&node, &none, &entry).unwrap_err();
        assert!(refused.contains("mode none"), "{refused}");
    }

    /// A partner's answer is read up to the limit and refused past it, whether it states
    /// its length or streams without one.
    #[tokio::test]
    async fn an_answer_over_the_limit_is_refused_as_it_arrives() {
        use axum::routing::get;
        let mib = vec![b'x'; 1 << 20];
        let stated = mib.repeat(3);
        let chunks = vec![mib.clone(); 3];
        let app = axum::Router::new()
            .route("/stated", get(move || async move { stated.clone() }))
            .route(
                "/streamed",
                get(move || {
                    let chunks = chunks.clone().into_iter().map(Ok::<_, std::io::Error>);
                    async move { axum::body::Body::from_stream(tokio_stream::iter(chunks)) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        for path in ["/stated", "/streamed"] {
            let get = || client.get(format!("http://{addr}{path}")).send();
            let over = read_limited(get().await.unwrap(), 2 << 20).await;
            assert!(
                matches!(over, Err(Limited::Over(n)) if n == 2 << 20),
                "{path}"
            );
            let whole = read_limited(get().await.unwrap(), 3 << 20).await;
            assert_eq!(whole.ok().map(|b| b.len()), Some(3 << 20), "{path}");
        }
    }
}
