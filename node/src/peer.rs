//! Partners: their configuration (`[[peers]]` in `config.toml`), the key history we trust for
//! each (from the pinned key through signed rotation statements), one HTTPS client per partner
//! that trusts only that partner's pinned certificate, and signed requests between nodes.
//!
//! A request is signed by the sender's node key over
//! `ammotrace-request-v1\nMETHOD\nPATH?QUERY\nDESTINATION\nSENDER\nTIME\nNONCE\nBODY_DIGEST`
//! (see `docs/protocol.md`); the receiver refuses unknown senders and keys, bad signatures, a
//! destination other than itself, times outside the allowed skew, and nonces seen before.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{self, KeyHistory};
use crate::policy::Policy;

pub const H_SENDER: &str = "ammotrace-sender";
pub const H_DESTINATION: &str = "ammotrace-destination";
pub const H_KEY_ID: &str = "ammotrace-key-id";
pub const H_TIME: &str = "ammotrace-time";
pub const H_NONCE: &str = "ammotrace-nonce";
pub const H_SIGNATURE: &str = "ammotrace-signature";

/// A partner as configured in `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The partner's node id.
    pub id: String,
    /// Base URL of its federation API, `https://host:port`.
    pub url: String,
    /// Its public key as in its `node.pub`: `KEY_ID BASE64URL`.
    pub public_key: String,
    /// Its TLS certificate (PEM), pinned: the only certificate its client trusts.
    pub certificate: String,
    /// Its first key (`KEY_ID BASE64URL`), when the pinned `public_key` came by rotation: the
    /// keys before the pinned one are trusted only through a chain from this one (cards carry
    /// it). Absent: only the pinned key and those after it are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_key: Option<String>,
    /// Whether this node pulls the partner's feed.
    #[serde(default = "yes")]
    pub pull: bool,
    /// What this node shares with the partner. Absent: nothing (default deny).
    #[serde(default)]
    pub policy: Policy,
}

fn yes() -> bool {
    true
}

impl PeerConfig {
    pub fn validate(&self) -> Result<(), String> {
        identity::parse_public_key(&self.public_key)
            .map_err(|e| format!("peer {}: public_key: {e}", self.id))?;
        if let Some(first) = &self.first_key {
            identity::parse_public_key(first)
                .map_err(|e| format!("peer {}: first_key: {e}", self.id))?;
        }
        reqwest::Certificate::from_pem(self.certificate.as_bytes())
            .map_err(|e| format!("peer {}: certificate: {e}", self.id))?;
        if !self.url.starts_with("https://") {
            return Err(format!("peer {}: url must start with https://", self.id));
        }
        self.policy
            .validate()
            .map_err(|e| format!("peer {}: policy: {e}", self.id))
    }
}

/// A partner at run time.
pub struct Peer {
    pub id: String,
    pub url: String,
    pub pull: bool,
    pub policy: Policy,
    pinned: VerifyingKey,
    /// The partner's first key, when configured ([`PeerConfig::first_key`]).
    first_key: Option<VerifyingKey>,
    keys: RwLock<KeyHistory>,
    /// When a request with an unknown key last made us fetch this partner's key history
    /// (unix seconds): such requests are not yet authenticated, so they may trigger it only
    /// once per [`KEY_REFRESH_SECS`].
    last_key_refresh: std::sync::atomic::AtomicI64,
    pub client: reqwest::Client,
    /// Held while the receipts owed to this partner are sent, so each goes once at a time.
    pub receipts_sending: tokio::sync::Mutex<()>,
    /// Whether the missing `first_key` was warned about.
    warned_first_key: std::sync::atomic::AtomicBool,
    /// The page size this node asks this partner for, once its pages came too large to take
    /// (0: `federation.page_size`).
    pub page_limit: std::sync::atomic::AtomicUsize,
}

/// How often a request signed with an unknown key may make us fetch the sender's key history.
pub const KEY_REFRESH_SECS: i64 = 10;

impl Peer {
    pub fn new(config: &PeerConfig, timeout: Duration) -> anyhow::Result<Peer> {
        let pinned = identity::parse_public_key(&config.public_key)?;
        let first_key = config
            .first_key
            .as_deref()
            .map(identity::parse_public_key)
            .transpose()?;
        let certificate = reqwest::Certificate::from_pem(config.certificate.as_bytes())?;
        let client = reqwest::Client::builder()
            .tls_certs_only([certificate])
            .https_only(true)
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Peer {
            id: config.id.clone(),
            url: config.url.trim_end_matches('/').to_owned(),
            pull: config.pull,
            policy: config.policy.clone(),
            keys: RwLock::new(KeyHistory::new(&config.id, &pinned, "1970-01-01T00:00:00Z")),
            pinned,
            first_key,
            last_key_refresh: std::sync::atomic::AtomicI64::new(i64::MIN),
            client,
            receipts_sending: tokio::sync::Mutex::new(()),
            warned_first_key: Default::default(),
            page_limit: Default::default(),
        })
    }

    /// True (once per [`KEY_REFRESH_SECS`]) when an unauthenticated hint (a request signed
    /// with a key we do not know) may make us fetch this partner's key history.
    pub fn key_refresh_due(&self, now: i64) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.last_key_refresh.load(Ordering::Relaxed);
        now.saturating_sub(last) >= KEY_REFRESH_SECS
            && self
                .last_key_refresh
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The key history we trust for this partner.
    pub fn keys(&self) -> KeyHistory {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Adopts the history the partner served, as far as it chains to the pinned key; true
    /// when it changed what was learnt.
    pub fn learn_keys(&self, served: &KeyHistory) -> Result<bool, identity::KeyError> {
        if served.node_id != self.id {
            return Err(identity::KeyError::BadStatement(format!(
                "history of {} served by {}",
                served.node_id, self.id
            )));
        }
        let trusted = KeyHistory::verified_from(served, &self.pinned, self.first_key.as_ref())?;
        if self.first_key.is_none()
            && served.has_keys_before(&identity::key_id(&self.pinned))
            && !self
                .warned_first_key
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                peer = %self.id,
                "the partner's key history has keys before the one pinned, and no first_key is \
                 configured: what they signed cannot be verified (its feed stops at the first \
                 such change). Ask the partner for a new card, or add first_key under its \
                 [[peers]] in config.toml after checking it with the partner"
            );
        }
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !keys.is_continued_by(&trusted) {
            // Out of date (a slower answer, or a partner restored from a backup) or another
            // history altogether: what was learnt stays, rotations and revocations included.
            return Err(identity::KeyError::BadStatement(format!(
                "the history served by {} does not continue the one learnt ({} statements, \
                 served {})",
                self.id,
                keys.statements.len(),
                trusted.statements.len()
            )));
        }
        let changed = *keys != trusted;
        *keys = trusted;
        Ok(changed)
    }
}

/// The store's note that keeps the key history last learnt from `partner`, as it served it.
fn keys_note(partner: &str) -> String {
    format!("peer_keys:{partner}")
}

/// The history last saved for `partner`, if any (`Err` inside: it does not parse).
fn saved_keys(
    store: &crate::store::Store,
    partner: &str,
) -> Result<Option<Result<KeyHistory, serde_json::Error>>, crate::store::StoreError> {
    Ok(store
        .note(&keys_note(partner))?
        .filter(|t| !t.is_empty())
        .map(|t| serde_json::from_str(&t)))
}

/// Keeps the history `partner` served, once learnt, so a restart starts from it: a key the
/// partner rotated out or revoked stays so even while the partner cannot be reached.
pub fn save_keys(
    store: &crate::store::Store,
    peer: &Peer,
    served: &KeyHistory,
) -> anyhow::Result<()> {
    let partner = peer.id.as_str();
    // One save at a time, each only over a history it continues: two refreshes that learnt
    // histories of different ages may save them in either order.
    static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SAVING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A saved history that no longer chains to what is pinned now (the partner was re-pinned
    // after it re-keyed from scratch) counts as none.
    let saved = saved_keys(store, partner)?
        .and_then(Result::ok)
        .filter(|h| KeyHistory::verified_from(h, &peer.pinned, peer.first_key.as_ref()).is_ok());
    let text = serde_json::to_string(served)?;
    match saved {
        Some(saved) if !saved.is_continued_by(served) => {}
        Some(saved) if serde_json::to_string(&saved)? == text => {}
        _ => {
            store.set_note(&keys_note(partner), &text)?;
            store.flush()?;
        }
    }
    Ok(())
}

/// Learns again, at start, the history last learnt from `peer` (checked again against its
/// pinned key; one that no longer chains to it, after a new key was pinned, is left out).
pub fn restore_keys(peer: &Peer, store: &crate::store::Store) {
    let saved = match saved_keys(store, &peer.id) {
        Ok(Some(saved)) => saved,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(peer = %peer.id, error = %e, "cannot read the partner's saved key history");
            return;
        }
    };
    let learnt = saved
        .map_err(|e| e.to_string())
        .and_then(|served| peer.learn_keys(&served).map_err(|e| e.to_string()));
    if let Err(e) = learnt {
        tracing::warn!(peer = %peer.id, error = %e, "the partner's saved key history is not used");
    }
}

/// All partners, by id.
#[derive(Default)]
pub struct Peers {
    by_id: BTreeMap<String, Arc<Peer>>,
}

impl Peers {
    pub fn new(configs: &[PeerConfig], timeout: Duration) -> anyhow::Result<Peers> {
        let mut by_id = BTreeMap::new();
        for c in configs {
            by_id.insert(c.id.clone(), Arc::new(Peer::new(c, timeout)?));
        }
        Ok(Peers { by_id })
    }
    pub fn get(&self, id: &str) -> Option<&Arc<Peer>> {
        self.by_id.get(id)
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_id.values()
    }
}

fn body_digest(body: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(body))
}

fn signing_input(
    method: &str,
    path_and_query: &str,
    destination: &str,
    sender: &str,
    time: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    format!(
        "ammotrace-request-v1\n{method}\n{path_and_query}\n{destination}\n{sender}\n{time}\n{nonce}\n{}",
        body_digest(body)
    )
}

/// The headers that sign a request from `sender` to `destination`.
pub fn sign_request(
    key: &SigningKey,
    sender: &str,
    destination: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let time = chrono::Utc::now().timestamp();
    let nonce = crate::envelope::random_salt();
    sign_request_at(
        key,
        sender,
        destination,
        method,
        path_and_query,
        body,
        time,
        &nonce,
    )
}

/// [`sign_request`] with a given time (unix seconds) and nonce.
#[allow(clippy::too_many_arguments)]
pub fn sign_request_at(
    key: &SigningKey,
    sender: &str,
    destination: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    time: i64,
    nonce: &str,
) -> Vec<(&'static str, String)> {
    let time = time.to_string();
    let input = signing_input(
        method,
        path_and_query,
        destination,
        sender,
        &time,
        nonce,
        body,
    );
    let sig = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).to_bytes());
    vec![
        (H_SENDER, sender.to_owned()),
        (H_DESTINATION, destination.to_owned()),
        (H_KEY_ID, identity::key_id(&key.verifying_key())),
        (H_TIME, time),
        (H_NONCE, nonce.to_owned()),
        (H_SIGNATURE, sig),
    ]
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("unknown sender {0}")]
    UnknownSender(String),
    #[error("unknown or invalid key {0}")]
    UnknownKey(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the request is addressed to {0}, not to this node")]
    WrongDestination(String),
    #[error("the request time is {0} s away from this node's clock")]
    Stale(i64),
    #[error("the nonce was used before")]
    Replayed,
}

impl Refusal {
    /// A short name of the reason, without what the request claimed.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::MissingHeader(_) => "missing_header",
            Refusal::UnknownSender(_) => "unknown_sender",
            Refusal::UnknownKey(_) => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongDestination(_) => "wrong_destination",
            Refusal::Stale(_) => "stale",
            Refusal::Replayed => "replayed",
        }
    }

    /// 403 for a well-signed request to the wrong node; 401 for the rest.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::WrongDestination(_) => 403,
            _ => 401,
        }
    }
}

/// The signed headers of an incoming request.
pub struct SignedHeaders<'a> {
    pub sender: &'a str,
    pub destination: &'a str,
    pub key_id: &'a str,
    pub time: &'a str,
    pub nonce: &'a str,
    pub signature: &'a str,
}

impl<'a> SignedHeaders<'a> {
    pub fn from(get: impl Fn(&'static str) -> Option<&'a str>) -> Result<Self, Refusal> {
        let h = |name| get(name).ok_or(Refusal::MissingHeader(name));
        Ok(SignedHeaders {
            sender: h(H_SENDER)?,
            destination: h(H_DESTINATION)?,
            key_id: h(H_KEY_ID)?,
            time: h(H_TIME)?,
            nonce: h(H_NONCE)?,
            signature: h(H_SIGNATURE)?,
        })
    }
}

/// Verifies a request's signature, destination and time (the caller checks the nonce after,
/// so a forged request cannot burn a genuine nonce). Returns the sender.
pub fn verify_request(
    peers: &Peers,
    me: &str,
    max_skew_secs: i64,
    headers: &SignedHeaders<'_>,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<Arc<Peer>, Refusal> {
    let peer = peers
        .get(headers.sender)
        .ok_or_else(|| Refusal::UnknownSender(headers.sender.to_owned()))?;
    let now = chrono::Utc::now();
    let time: i64 = headers.time.parse().map_err(|_| Refusal::Stale(i64::MAX))?;
    let key = peer
        .keys()
        .key_valid_at(
            headers.key_id,
            &now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
        .map_err(|_| Refusal::UnknownKey(headers.key_id.to_owned()))?;
    let input = signing_input(
        method,
        path_and_query,
        headers.destination,
        headers.sender,
        headers.time,
        headers.nonce,
        body,
    );
    let sig = URL_SAFE_NO_PAD
        .decode(headers.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or(Refusal::BadSignature)?;
    key.verify_strict(input.as_bytes(), &sig)
        .map_err(|_| Refusal::BadSignature)?;
    if headers.destination != me {
        return Err(Refusal::WrongDestination(headers.destination.to_owned()));
    }
    let skew = now.timestamp().saturating_sub(time);
    if now.timestamp().abs_diff(time) > max_skew_secs.unsigned_abs() {
        return Err(Refusal::Stale(skew));
    }
    Ok(peer.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A partner's node XAA whose first key K0 was rotated out, then revoked (stolen): the
    /// partner's configuration (pinned at K0), K0, and XAA's history before and after.
    fn revoked_setup() -> (
        tempfile::TempDir,
        PeerConfig,
        SigningKey,
        KeyHistory,
        KeyHistory,
    ) {
        let dir = tempfile::tempdir().unwrap();
        identity::init(dir.path(), "XAA").unwrap();
        let k0 = identity::Identity::load(dir.path(), "XAA")
            .unwrap()
            .signing_key()
            .clone();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let config = PeerConfig {
            id: "XAA".into(),
            url: "https://127.0.0.1:1".into(),
            public_key: read(identity::PUBLIC_KEY_FILE).trim().to_owned(),
            certificate: read(identity::TLS_CERT_FILE),
            first_key: None,
            pull: true,
            policy: Policy::default(),
        };
        let before: KeyHistory = serde_json::from_str(&read(identity::KEYS_FILE)).unwrap();
        identity::rotate(dir.path(), "XAA").unwrap();
        let k0_id = identity::key_id(&k0.verifying_key());
        identity::revoke(dir.path(), "XAA", Some(&k0_id), "2000-01-01T00:00:00Z").unwrap();
        let after: KeyHistory = serde_json::from_str(&read(identity::KEYS_FILE)).unwrap();
        (dir, config, k0, before, after)
    }

    /// Whether a request signed with `k0` as XAA is accepted.
    fn accepts(peers: &Peers, k0: &SigningKey) -> bool {
        let path = "/federation/v1/feed?after=0";
        let forged = sign_request(k0, "XAA", "XBB", "GET", path, b"");
        let headers = SignedHeaders::from(|name| lookup(&forged, name)).unwrap();
        verify_request(peers, "XBB", 300, &headers, "GET", path, b"").is_ok()
    }

    /// A revocation learnt is kept in the store: after a restart, before the partner can be
    /// reached again, the revoked key is still refused.
    #[test]
    fn a_revoked_key_is_refused_after_the_receiver_restarts() {
        let (dir, config, k0, before, after) = revoked_setup();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let peers = Peers::new(std::slice::from_ref(&config), Duration::from_secs(1)).unwrap();
        assert!(
            accepts(&peers, &k0),
            "pinned, and not yet known to be revoked"
        );
        peers.get("XAA").unwrap().learn_keys(&after).unwrap();
        let xaa = peers.get("XAA").unwrap();
        save_keys(&store, xaa, &after).unwrap();
        // A slower refresh that learnt the older history saves it after: it is not kept.
        save_keys(&store, xaa, &before).unwrap();
        assert!(!accepts(&peers, &k0), "refused once learnt");
        let restarted = Peers::new(&[config], Duration::from_secs(1)).unwrap();
        restore_keys(restarted.get("XAA").unwrap(), &store);
        assert!(
            !accepts(&restarted, &k0),
            "a revoked key verified a request after the receiver restarted"
        );
    }

    /// A partner that re-keyed from scratch is pinned again: the history saved for its old
    /// chain no longer counts, and the new one is saved in its place.
    #[test]
    fn a_history_saved_for_an_abandoned_chain_is_replaced_after_a_new_pin() {
        let (dir, config, _k0, _before, after) = revoked_setup();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let peers = Peers::new(std::slice::from_ref(&config), Duration::from_secs(1)).unwrap();
        save_keys(&store, peers.get("XAA").unwrap(), &after).unwrap();
        // XAA starts over with a new key, and is pinned at it.
        let fresh = tempfile::tempdir().unwrap();
        identity::init(fresh.path(), "XAA").unwrap();
        let read = |f: &str| std::fs::read_to_string(fresh.path().join(f)).unwrap();
        let repinned = PeerConfig {
            public_key: read(identity::PUBLIC_KEY_FILE).trim().to_owned(),
            ..config
        };
        let peers = Peers::new(&[repinned], Duration::from_secs(1)).unwrap();
        let xaa = peers.get("XAA").unwrap();
        let new_history: KeyHistory = serde_json::from_str(&read(identity::KEYS_FILE)).unwrap();
        xaa.learn_keys(&new_history).unwrap();
        save_keys(&store, xaa, &new_history).unwrap();
        let saved: KeyHistory =
            serde_json::from_str(&store.note(&keys_note("XAA")).unwrap().unwrap()).unwrap();
        assert_eq!(saved, new_history);
    }

    /// An older answer (a slower refresh, a replayed identity document) never undoes a
    /// rotation or revocation already learnt.
    #[test]
    fn a_learnt_revocation_is_never_forgotten() {
        let (_dir, config, k0, before, after) = revoked_setup();
        let peers = Peers::new(&[config], Duration::from_secs(1)).unwrap();
        let peer = peers.get("XAA").unwrap();
        peer.learn_keys(&after).unwrap();
        assert!(peer.learn_keys(&before).is_err());
        assert!(
            !accepts(&peers, &k0),
            "an older history made a revoked key valid again"
        );
        // The same history again is taken, and changes nothing (nothing to save).
        assert!(!peer.learn_keys(&after).unwrap());
    }

    #[test]
    fn signed_requests_verify_and_refusals_are_precise() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let vk = key.verifying_key();
        let dir = tempfile::tempdir().unwrap();
        identity::init(dir.path(), "XAA").unwrap();
        let config = PeerConfig {
            id: "XAA".into(),
            url: "https://127.0.0.1:1".into(),
            public_key: format!(
                "{} {}",
                identity::key_id(&vk),
                URL_SAFE_NO_PAD.encode(vk.as_bytes())
            ),
            certificate: std::fs::read_to_string(dir.path().join(identity::TLS_CERT_FILE)).unwrap(),
            first_key: None,
            pull: true,
            policy: Policy::default(),
        };
        config.validate().unwrap();
        let peers = Peers::new(&[config], Duration::from_secs(1)).unwrap();
        let signed = sign_request(
            &key,
            "XAA",
            "XBB",
            "GET",
            "/federation/v1/feed?after=0",
            b"",
        );
        let headers = SignedHeaders::from(|name| lookup(&signed, name)).unwrap();
        let ok = verify_request(
            &peers,
            "XBB",
            300,
            &headers,
            "GET",
            "/federation/v1/feed?after=0",
            b"",
        );
        assert_eq!(ok.unwrap().id, "XAA");
        assert_eq!(
            verify_request(
                &peers,
                "XBB",
                300,
                &headers,
                "GET",
                "/federation/v1/feed?after=1",
                b""
            )
            .err(),
            Some(Refusal::BadSignature)
        );
        assert_eq!(
            verify_request(
                &peers,
                "XCC",
                300,
                &headers,
                "GET",
                "/federation/v1/feed?after=0",
                b""
            )
            .err(),
            Some(Refusal::WrongDestination("XBB".into()))
        );
        let other = sign_request(
            &SigningKey::from_bytes(&[4u8; 32]),
            "XAA",
            "XBB",
            "GET",
            "/",
            b"",
        );
        let headers = SignedHeaders::from(|name| lookup(&other, name)).unwrap();
        assert!(matches!(
            verify_request(&peers, "XBB", 300, &headers, "GET", "/", b""),
            Err(Refusal::UnknownKey(_))
        ));
        // Times at the ends of the range are stale, not an overflow.
        let now = chrono::Utc::now().timestamp();
        for time in [i64::MIN + now, i64::MIN, i64::MAX, now - 301, now + 301] {
            let signed = sign_request_at(&key, "XAA", "XBB", "GET", "/", b"", time, "n1");
            let headers = SignedHeaders::from(|name| lookup(&signed, name)).unwrap();
            assert!(
                matches!(
                    verify_request(&peers, "XBB", 300, &headers, "GET", "/", b""),
                    Err(Refusal::Stale(_))
                ),
                "{time}"
            );
        }
        // A request signed with an unknown key may make us fetch the history once in a while.
        let peer = peers.get("XAA").unwrap();
        assert!(peer.key_refresh_due(now));
        assert!(!peer.key_refresh_due(now + 1));
        assert!(peer.key_refresh_due(now + KEY_REFRESH_SECS));
    }
}
