//! The node's identity: its ed25519 signing key (with a key id) and its TLS certificate for the
//! federation, made by `ammotrace init` and kept in the data directory. Secrets are written
//! with mode 0600 and never overwritten.

use anyhow::Context;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File names inside the data directory.
pub const SIGNING_KEY_FILE: &str = "node.key";
pub const PUBLIC_KEY_FILE: &str = "node.pub";
pub const TLS_CERT_FILE: &str = "tls.crt";
pub const TLS_KEY_FILE: &str = "tls.key";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The node's key history (public): every key with its validity, and the signed rotation and
/// revocation statements that link them.
pub const KEYS_FILE: &str = "keys.json";

/// The node's signing key and its public identity.
pub struct Identity {
    pub node_id: String,
    signing_key: SigningKey,
}

impl Identity {
    /// Key id: `ed25519:` and the first 16 bytes of SHA-256 of the public key, base64url.
    pub fn key_id(&self) -> String {
        key_id(&self.signing_key.verifying_key())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// Loads the signing key written by [`init`] (a node first finishes a rotation a crash
    /// cut short, holding its data directory: [`finish_rotation`]).
    pub fn load(data_dir: &Path, node_id: &str) -> anyhow::Result<Identity> {
        Ok(Identity {
            node_id: node_id.to_owned(),
            signing_key: read_signing_key(&data_dir.join(SIGNING_KEY_FILE))?,
        })
    }
}

fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = fs::read_to_string(path)?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not a PKCS#8 ed25519 key: {e}", path.display()))
}

/// A rotation writes the new key aside (`node.key.new`), then `keys.json` naming it, then moves
/// it in place. Cut short by a crash, it is finished here when `keys.json` already names the new
/// key as current (partners may have learnt it), and undone when it does not (the old key stays
/// current, and the new one was never published). Callers hold the data directory (its store
/// open), so no rotation is under way meanwhile; a file that cannot be read is an error, and
/// nothing is deleted.
pub fn finish_rotation(data_dir: &Path) -> anyhow::Result<()> {
    let pending_path = data_dir.join(format!("{SIGNING_KEY_FILE}.new"));
    if !pending_path.exists() {
        // The last step, `node.pub`, may be what the crash cut.
        let key = read_signing_key(&data_dir.join(SIGNING_KEY_FILE))?.verifying_key();
        let public = fs::read_to_string(data_dir.join(PUBLIC_KEY_FILE)).unwrap_or_default();
        if parse_public_key(&public).ok() != Some(key) {
            write_public(data_dir, &key)?;
            tracing::warn!("node.pub named another key; written again");
        }
        return Ok(());
    }
    let pending = read_signing_key(&pending_path)
        .context("a key rotation was cut short, and its new key cannot be read")?;
    let history_path = data_dir.join(KEYS_FILE);
    let history: KeyHistory = serde_json::from_slice(
        &fs::read(&history_path)
            .with_context(|| format!("cannot read {}", history_path.display()))?,
    )
    .with_context(|| format!("{} cannot be read", history_path.display()))?;
    let pending_id = key_id(&pending.verifying_key());
    let named = match history.keys.iter().find(|k| k.key_id == pending_id) {
        None => None,
        Some(_) if history.is_current(&pending_id) => Some(pending),
        // Named, but no longer current: keys.json was changed after the cut. Neither finishing
        // nor undoing is safe; the operator decides.
        Some(_) => anyhow::bail!(
            "a key rotation was cut short, and {} names its new key {pending_id} but not as \
             current: check {} by hand",
            KEYS_FILE,
            KEYS_FILE
        ),
    };
    match named {
        Some(pending) => {
            fs::rename(&pending_path, data_dir.join(SIGNING_KEY_FILE))?;
            write_public(data_dir, &pending.verifying_key())?;
            tracing::warn!("finished a key rotation that was cut short");
        }
        None => {
            fs::remove_file(&pending_path)?;
            tracing::warn!("undid a key rotation that was cut short before it was recorded");
        }
    }
    Ok(())
}

/// One key in a node's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub key_id: String,
    /// base64url of the 32-byte ed25519 public key.
    pub public_key: String,
    pub valid_from: String,
    /// When the next key replaced it; signatures dated later are not accepted.
    pub rotated_at: Option<String>,
    /// When it was revoked; signatures dated at or after this are not accepted.
    pub revoked_at: Option<String>,
}

/// A rotation or revocation statement and its signature (base64url ed25519 over the JCS of
/// `statement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedStatement {
    pub statement: Statement,
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Statement {
    /// Signed by the key `from`: `to` (with `public_key`) replaces it at `at`.
    Rotation {
        node: String,
        from: String,
        to: String,
        public_key: String,
        at: String,
    },
    /// Signed by the key `signer` (any key of the node valid then): `key_id` is revoked from
    /// `at`.
    Revocation {
        node: String,
        key_id: String,
        signer: String,
        at: String,
    },
}

/// A node's key history, as served at `GET /federation/v1/identity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyHistory {
    pub node_id: String,
    pub keys: Vec<KeyRecord>,
    pub statements: Vec<SignedStatement>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("unknown key {0}")]
    Unknown(String),
    #[error("key {key} is not valid at {at}: {why}")]
    NotValid {
        key: String,
        at: String,
        why: &'static str,
    },
    #[error("a statement in the key history does not verify: {0}")]
    BadStatement(String),
}

fn decode_key(public_key: &str) -> Option<VerifyingKey> {
    let bytes = URL_SAFE_NO_PAD.decode(public_key).ok()?;
    VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()
}

fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn sign_statement(statement: Statement, key: &SigningKey) -> anyhow::Result<SignedStatement> {
    let bytes = crate::envelope::canonical(&statement)?;
    Ok(SignedStatement {
        statement,
        sig: URL_SAFE_NO_PAD.encode(key.sign(&bytes).to_bytes()),
    })
}

fn verify_statement(signed: &SignedStatement, key: &VerifyingKey) -> bool {
    let Ok(bytes) = crate::envelope::canonical(&signed.statement) else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(&signed.sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .is_some_and(|b| {
            key.verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&b))
                .is_ok()
        })
}

impl KeyHistory {
    /// The history of a node that has one key.
    pub fn new(node_id: &str, key: &VerifyingKey, valid_from: &str) -> KeyHistory {
        KeyHistory {
            node_id: node_id.to_owned(),
            keys: vec![KeyRecord {
                key_id: key_id(key),
                public_key: URL_SAFE_NO_PAD.encode(key.as_bytes()),
                valid_from: valid_from.to_owned(),
                rotated_at: None,
                revoked_at: None,
            }],
            statements: Vec::new(),
        }
    }

    /// Rebuilds a partner's history from what it served, trusting only what chains, through
    /// signed statements, to the key pinned in our configuration. Keys or validity the
    /// statements do not support are dropped.
    ///
    /// The pinned key may be the partner's first or a later one (a partner added after it
    /// rotated is pinned at its key of the day). Then the keys before it are trusted only when
    /// the partner's `first` key is configured too (cards carry it): the statements are
    /// replayed from it and must reach the pinned key, so what the partner signed before its
    /// rotations stays verifiable. Without it, the history is taken from the pinned key on:
    /// nothing the served document says of earlier keys is trusted on the TLS pin alone.
    pub fn verified_from(
        served: &KeyHistory,
        pinned: &VerifyingKey,
        first: Option<&VerifyingKey>,
    ) -> Result<KeyHistory, KeyError> {
        let pinned_id = key_id(pinned);
        let brought_in = |id: &str| {
            served
                .statements
                .iter()
                .position(|s| matches!(&s.statement, Statement::Rotation { to, .. } if to == id))
        };
        // Where the replay starts: the pinned key, or (when the pinned key came by rotation
        // and the partner's first key is configured too) that first key, which must be the
        // history's own first key (the one no rotation brought in).
        let (root, replay_from) = match (brought_in(&pinned_id), first) {
            (Some(_), Some(first)) => {
                let served_first = served
                    .keys
                    .iter()
                    .find(|k| brought_in(&k.key_id).is_none())
                    .map(|k| k.key_id.as_str());
                if served_first != Some(key_id(first).as_str()) {
                    return Err(KeyError::BadStatement(format!(
                        "the history does not start at the configured first key {}",
                        key_id(first)
                    )));
                }
                (*first, 0)
            }
            // Without it, what came before the pinned key is not trusted: only the pin is.
            (Some(at), None) => (*pinned, at + 1),
            (None, _) => (*pinned, 0),
        };
        let mut trusted = KeyHistory::new(&served.node_id, &root, "1970-01-01T00:00:00Z");
        if let Some(root_served) = served.keys.iter().find(|k| k.key_id == key_id(&root)) {
            trusted.keys[0].valid_from = root_served.valid_from.clone();
        }
        for signed in &served.statements[replay_from..] {
            match &signed.statement {
                Statement::Rotation {
                    node,
                    from,
                    to,
                    public_key,
                    at,
                } => {
                    let signer = trusted.current_signer(from)?;
                    let new_key = decode_key(public_key)
                        .filter(|k| &key_id(k) == to && trusted.key(to).is_none())
                        .ok_or_else(|| KeyError::BadStatement(format!("rotation to {to}")))?;
                    if node != &served.node_id || !verify_statement(signed, &signer) {
                        return Err(KeyError::BadStatement(format!("rotation from {from}")));
                    }
                    if let Some(k) = trusted.keys.iter_mut().find(|k| &k.key_id == from) {
                        k.rotated_at = Some(at.clone());
                    }
                    trusted.keys.push(KeyRecord {
                        key_id: to.clone(),
                        public_key: URL_SAFE_NO_PAD.encode(new_key.as_bytes()),
                        valid_from: at.clone(),
                        rotated_at: None,
                        revoked_at: None,
                    });
                }
                Statement::Revocation {
                    node,
                    key_id: revoked,
                    signer,
                    at,
                } => {
                    let signer_key = trusted.current_signer(signer)?;
                    if node != &served.node_id || !verify_statement(signed, &signer_key) {
                        return Err(KeyError::BadStatement(format!("revocation of {revoked}")));
                    }
                    // A later statement can bring a revocation forward, never push it back.
                    if let Some(k) = trusted.keys.iter_mut().find(|k| &k.key_id == revoked) {
                        let earlier = match (&k.revoked_at, parse_time(at)) {
                            (Some(held), Some(new)) => parse_time(held).is_none_or(|h| new < h),
                            (None, _) => true,
                            (Some(_), None) => false,
                        };
                        if earlier {
                            k.revoked_at = Some(at.clone());
                        }
                    }
                }
            }
        }
        if trusted.key(&pinned_id).is_none() {
            return Err(KeyError::Unknown(pinned_id));
        }
        trusted.statements = served.statements.clone();
        Ok(trusted)
    }

    /// Whether `newer` continues this history: it holds every statement this one does, in
    /// the same order (statements are only ever appended). An answer that holds fewer is
    /// out of date, and must not undo a rotation or revocation already learnt.
    pub fn is_continued_by(&self, newer: &KeyHistory) -> bool {
        newer.statements.len() >= self.statements.len()
            && self
                .statements
                .iter()
                .zip(&newer.statements)
                .all(|(a, b)| a.sig == b.sig)
    }

    /// The key that may sign the next statement of a history being replayed: the named key,
    /// if it is known and neither rotated out nor revoked. A key that was replaced, or
    /// revoked (perhaps because it was stolen), signs nothing more.
    fn current_signer(&self, signer: &str) -> Result<VerifyingKey, KeyError> {
        let record = self
            .keys
            .iter()
            .find(|k| k.key_id == signer)
            .ok_or_else(|| KeyError::Unknown(signer.to_owned()))?;
        if record.rotated_at.is_some() || record.revoked_at.is_some() {
            return Err(KeyError::BadStatement(format!(
                "a statement signed by {signer}, which was already rotated out or revoked"
            )));
        }
        self.key(signer)
            .ok_or_else(|| KeyError::Unknown(signer.to_owned()))
    }

    /// The public key named `key_id`, whatever its validity.
    pub fn key(&self, key_id: &str) -> Option<VerifyingKey> {
        self.keys
            .iter()
            .find(|k| k.key_id == key_id)
            .and_then(|k| decode_key(&k.public_key))
    }

    /// The key named `key_id` if it was valid at `at` (RFC 3339): not yet replaced, not
    /// revoked.
    pub fn key_valid_at(&self, key_id: &str, at: &str) -> Result<VerifyingKey, KeyError> {
        let record = self
            .keys
            .iter()
            .find(|k| k.key_id == key_id)
            .ok_or_else(|| KeyError::Unknown(key_id.to_owned()))?;
        let not_valid = |why| KeyError::NotValid {
            key: key_id.to_owned(),
            at: at.to_owned(),
            why,
        };
        let t = parse_time(at).ok_or_else(|| not_valid("the time is not RFC 3339"))?;
        if parse_time(&record.valid_from).is_some_and(|from| t < from) {
            return Err(not_valid("before the key was made"));
        }
        if record
            .rotated_at
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|r| t >= r)
        {
            return Err(not_valid("the key had been replaced"));
        }
        if record
            .revoked_at
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|r| t >= r)
        {
            return Err(not_valid("the key had been revoked"));
        }
        decode_key(&record.public_key).ok_or_else(|| KeyError::Unknown(key_id.to_owned()))
    }

    /// Whether the history has keys before `key_id` (a rotation brought it in).
    pub fn has_keys_before(&self, key_id: &str) -> bool {
        self.statements
            .iter()
            .any(|s| matches!(&s.statement, Statement::Rotation { to, .. } if to == key_id))
    }

    /// Whether `key_id` is the key in use: listed, neither rotated out nor revoked.
    pub fn is_current(&self, key_id: &str) -> bool {
        self.keys
            .iter()
            .any(|k| k.key_id == key_id && k.rotated_at.is_none() && k.revoked_at.is_none())
    }

    /// Reads `keys.json`, or makes the one-key history of a data directory that predates it.
    pub fn load(
        data_dir: &Path,
        node_id: &str,
        current: &VerifyingKey,
    ) -> anyhow::Result<KeyHistory> {
        let path = data_dir.join(KEYS_FILE);
        if path.exists() {
            let history: KeyHistory = serde_json::from_slice(&fs::read(&path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok(history);
        }
        Ok(KeyHistory::new(node_id, current, &now()))
    }

    fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let tmp = data_dir.join(format!("{KEYS_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, data_dir.join(KEYS_FILE))?;
        Ok(())
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Replaces the node key with a new one, with a rotation statement signed by the old key.
/// The old private key is destroyed; its public key stays in the history, so what it signed
/// stays verifiable. Returns the new key id. The node must be restarted to use it.
pub fn rotate(data_dir: &Path, node_id: &str) -> anyhow::Result<String> {
    finish_rotation(data_dir)?;
    let old = Identity::load(data_dir, node_id)?;
    let mut history = KeyHistory::load(data_dir, node_id, &old.verifying_key())?;
    let new = SigningKey::from_bytes(&random_bytes::<32>()?);
    let at = now();
    let new_id = key_id(&new.verifying_key());
    let statement = sign_statement(
        Statement::Rotation {
            node: node_id.to_owned(),
            from: old.key_id(),
            to: new_id.clone(),
            public_key: URL_SAFE_NO_PAD.encode(new.verifying_key().as_bytes()),
            at: at.clone(),
        },
        old.signing_key(),
    )?;
    if let Some(k) = history.keys.iter_mut().find(|k| k.key_id == old.key_id()) {
        k.rotated_at = Some(at.clone());
    }
    history.keys.push(KeyRecord {
        key_id: new_id.clone(),
        public_key: URL_SAFE_NO_PAD.encode(new.verifying_key().as_bytes()),
        valid_from: at,
        rotated_at: None,
        revoked_at: None,
    });
    history.statements.push(statement);
    let pem = new
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the signing key: {e}"))?;
    let tmp = data_dir.join(format!("{SIGNING_KEY_FILE}.new"));
    let _ = fs::remove_file(&tmp);
    write_secret(&tmp, pem.as_bytes())?;
    history.save(data_dir)?;
    fs::rename(&tmp, data_dir.join(SIGNING_KEY_FILE))?;
    write_public(data_dir, &new.verifying_key())?;
    Ok(new_id)
}

/// Revokes `key` (default: the current key) from `at`, with a statement signed by the current
/// key. Revoking the current key first rotates to a new one. Returns the revoked key id.
pub fn revoke(
    data_dir: &Path,
    node_id: &str,
    key: Option<&str>,
    at: &str,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        parse_time(at).is_some(),
        "--at {at:?} is not an RFC 3339 time"
    );
    finish_rotation(data_dir)?;
    let current = Identity::load(data_dir, node_id)?;
    let revoked = key.map_or_else(|| current.key_id(), str::to_owned);
    // Checked before anything changes (revoking the current key rotates first).
    let before = KeyHistory::load(data_dir, node_id, &current.verifying_key())?;
    let held = before
        .keys
        .iter()
        .find(|k| k.key_id == revoked)
        .ok_or_else(|| anyhow::anyhow!("no key {revoked} in {KEYS_FILE}"))?;
    if let Some(since) = held.revoked_at.as_deref()
        && parse_time(since) <= parse_time(at)
    {
        anyhow::bail!(
            "{revoked} is already revoked from {since}; a revocation can only move earlier"
        );
    }
    if revoked == current.key_id() {
        rotate(data_dir, node_id)?;
    }
    let signer = Identity::load(data_dir, node_id)?;
    let mut history = KeyHistory::load(data_dir, node_id, &signer.verifying_key())?;
    let record = history
        .keys
        .iter_mut()
        .find(|k| k.key_id == revoked)
        .ok_or_else(|| anyhow::anyhow!("no key {revoked} in {KEYS_FILE}"))?;
    record.revoked_at = Some(at.to_owned());
    history.statements.push(sign_statement(
        Statement::Revocation {
            node: node_id.to_owned(),
            key_id: revoked.clone(),
            signer: signer.key_id(),
            at: at.to_owned(),
        },
        signer.signing_key(),
    )?);
    history.save(data_dir)?;
    Ok(revoked)
}

fn write_public(data_dir: &Path, key: &VerifyingKey) -> anyhow::Result<()> {
    fs::write(
        data_dir.join(PUBLIC_KEY_FILE),
        format!(
            "{} {}\n",
            key_id(key),
            URL_SAFE_NO_PAD.encode(key.as_bytes())
        ),
    )?;
    Ok(())
}

/// Parses a public key written as in `node.pub`: `KEY_ID BASE64URL` (or just the base64url).
pub fn parse_public_key(text: &str) -> anyhow::Result<VerifyingKey> {
    let mut parts = text.split_whitespace();
    let (id, b64) = match (parts.next(), parts.next()) {
        (Some(id), Some(b64)) => (Some(id), b64),
        (Some(b64), None) => (None, b64),
        _ => anyhow::bail!("empty public key"),
    };
    let key =
        decode_key(b64).ok_or_else(|| anyhow::anyhow!("not a base64url ed25519 public key"))?;
    if let Some(id) = id {
        anyhow::ensure!(id == key_id(&key), "key id {id} does not match the key");
    }
    Ok(key)
}

/// Key id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("ed25519:{}", URL_SAFE_NO_PAD.encode(&digest[..16]))
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(bytes)
}

/// A new random API token (32 bytes, base64url).
pub fn new_token() -> anyhow::Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// Writes a secret file readable by its owner only; refuses to overwrite.
pub fn write_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// What `init` made.
pub struct Created {
    pub key_id: String,
    pub admin_token: String,
}

/// Makes the key pair, the TLS certificate and the admin token in `data_dir`.
pub fn init(data_dir: &Path, node_id: &str) -> anyhow::Result<Created> {
    init_named(data_dir, node_id, &[])
}

/// A self-signed TLS certificate (PEM) and its private key (PEM) for `localhost`,
/// `127.0.0.1`, the node id in lower case and `names` (the host names or addresses partners
/// reach the node at: a partner's client checks the name it dials, as well as the pin).
fn tls_certificate(node_id: &str, names: &[String]) -> anyhow::Result<(String, String)> {
    let mut all = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        node_id.to_lowercase(),
    ];
    for name in names {
        rustls_pki_types::ServerName::try_from(name.as_str())
            .map_err(|_| anyhow::anyhow!("--tls-name {name:?} is not a DNS name or IP address"))?;
        if !all.contains(name) {
            all.push(name.clone());
        }
    }
    let certified = rcgen::generate_simple_self_signed(all)?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// Replaces the node's TLS certificate and key with new ones for `names` (see
/// [`tls_certificate`]); partners must pin the new certificate (from `peers card`).
pub fn renew_tls(data_dir: &Path, node_id: &str, names: &[String]) -> anyhow::Result<()> {
    finish_tls_renewal(data_dir)?;
    let (cert, key) = tls_certificate(node_id, names)?;
    let (new_cert, new_key) = tls_pending(data_dir);
    // Both written whole first; moving the key in place is the step that decides.
    let mut file = fs::File::create(&new_cert)?;
    file.write_all(cert.as_bytes())?;
    file.sync_all()?;
    write_secret(&new_key, key.as_bytes())?;
    fs::rename(&new_key, data_dir.join(TLS_KEY_FILE))?;
    fs::rename(&new_cert, data_dir.join(TLS_CERT_FILE))?;
    Ok(())
}

/// Where [`renew_tls`] writes the new certificate and key before moving them in place.
fn tls_pending(data_dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        data_dir.join(format!("{TLS_CERT_FILE}.new")),
        data_dir.join(format!("{TLS_KEY_FILE}.new")),
    )
}

/// A certificate renewal cut short by a crash is undone when its key was not yet in place (the
/// old pair stays), and finished when it was (the new certificate goes with the new key), so
/// the node never starts with a key and a certificate that do not match. Callers hold the
/// data directory.
pub fn finish_tls_renewal(data_dir: &Path) -> anyhow::Result<()> {
    let (new_cert, new_key) = tls_pending(data_dir);
    if new_key.exists() {
        fs::remove_file(&new_key)?;
        if new_cert.exists() {
            fs::remove_file(&new_cert)?;
        }
        tracing::warn!("undid a TLS certificate renewal that was cut short");
    } else if new_cert.exists() {
        fs::rename(&new_cert, data_dir.join(TLS_CERT_FILE))?;
        tracing::warn!("finished a TLS certificate renewal that was cut short");
    }
    Ok(())
}

/// Whether the certificate (PEM) is valid for `host`, the name a partner dials.
pub fn certificate_names(cert_pem: &str, host: &str) -> anyhow::Result<bool> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the TLS certificate is not PEM: {e:?}"))?;
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| anyhow::anyhow!("the TLS certificate cannot be read: {e}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(name) = rustls_pki_types::ServerName::try_from(host) else {
        return Ok(false);
    };
    Ok(cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// [`init`], with the TLS certificate also valid for `tls_names`.
pub fn init_named(data_dir: &Path, node_id: &str, tls_names: &[String]) -> anyhow::Result<Created> {
    // Everything that can be refused (a name that is not one) is, before anything is written.
    let (cert, key) = tls_certificate(node_id, tls_names)?;
    let signing_key = SigningKey::from_bytes(&random_bytes::<32>()?);
    let pem = signing_key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the signing key: {e}"))?;
    write_secret(&data_dir.join(SIGNING_KEY_FILE), pem.as_bytes())?;
    let verifying = signing_key.verifying_key();
    let key_id = key_id(&verifying);
    write_public(data_dir, &verifying)?;
    KeyHistory::new(node_id, &verifying, &now()).save(data_dir)?;

    fs::write(data_dir.join(TLS_CERT_FILE), cert)?;
    write_secret(&data_dir.join(TLS_KEY_FILE), key.as_bytes())?;

    let admin_token = new_token()?;
    write_secret(
        &data_dir.join(ADMIN_TOKEN_FILE),
        format!("{admin_token}\n").as_bytes(),
    )?;
    Ok(Created {
        key_id,
        admin_token,
    })
}

/// SHA-256 of a token, hex: how tokens are named in the configuration.
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_secrets_0600_and_reloads_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let created = init(dir.path(), "XAA").unwrap();
        for file in [SIGNING_KEY_FILE, TLS_KEY_FILE, ADMIN_TOKEN_FILE] {
            let mode = fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let identity = Identity::load(dir.path(), "XAA").unwrap();
        assert_eq!(identity.key_id(), created.key_id);
        assert!(
            init(dir.path(), "XAA").is_err(),
            "init must not overwrite secrets"
        );
    }

    /// The certificate names localhost, 127.0.0.1, the node id and the names given; a new
    /// one replaces it (its key still 0600), and a name that is not one is refused.
    #[test]
    fn the_tls_certificate_names_the_hosts_partners_dial() {
        let dir = tempfile::tempdir().unwrap();
        let url = "https://xaa.example:8601".to_owned();
        assert!(init_named(dir.path(), "XAA", &[url]).is_err());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
        init_named(dir.path(), "XAA", &["xaa.example".into()]).unwrap();
        let cert = || fs::read_to_string(dir.path().join(TLS_CERT_FILE)).unwrap();
        for host in ["xaa.example", "localhost", "127.0.0.1", "xaa"] {
            assert!(certificate_names(&cert(), host).unwrap(), "{host}");
        }
        assert!(!certificate_names(&cert(), "other.example").unwrap());
        renew_tls(
            dir.path(),
            "XAA",
            &["10.1.2.3".into(), "node.xaa.example".into()],
        )
        .unwrap();
        assert!(certificate_names(&cert(), "node.xaa.example").unwrap());
        assert!(certificate_names(&cert(), "10.1.2.3").unwrap());
        assert!(!certificate_names(&cert(), "xaa.example").unwrap());
        let mode = fs::metadata(dir.path().join(TLS_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(renew_tls(dir.path(), "XAA", &["not a name".into()]).is_err());
        assert!(
            certificate_names(&cert(), "node.xaa.example").unwrap(),
            "unchanged"
        );

        // A renewal cut short: before the key moved in place, it is undone; after, finished.
        let (pending_cert, pending_key) = tls_pending(dir.path());
        let pair = || (cert(), fs::read(dir.path().join(TLS_KEY_FILE)).unwrap());
        let before = pair();
        let (new_cert, new_key) = tls_certificate("XAA", &["late.example".into()]).unwrap();
        fs::write(&pending_cert, &new_cert).unwrap();
        write_secret(&pending_key, new_key.as_bytes()).unwrap();
        finish_tls_renewal(dir.path()).unwrap();
        assert_eq!(pair(), before, "undone");
        assert!(!pending_cert.exists() && !pending_key.exists());
        fs::write(&pending_cert, &new_cert).unwrap();
        fs::remove_file(dir.path().join(TLS_KEY_FILE)).unwrap();
        write_secret(&dir.path().join(TLS_KEY_FILE), new_key.as_bytes()).unwrap();
        finish_tls_renewal(dir.path()).unwrap();
        assert_eq!(pair(), (new_cert, new_key.into_bytes()), "finished");
        assert!(!pending_cert.exists());
    }

    /// A rotation cut short by a crash is finished on the next load once `keys.json` names
    /// the new key, and undone before that; either way the node signs with its current key
    /// and the history chains from the first key.
    #[test]
    fn a_rotation_cut_short_is_finished_or_undone() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init(d, "XAA").unwrap();
        let first = Identity::load(d, "XAA").unwrap().verifying_key();
        let read = |f: &str| fs::read(d.join(f)).unwrap();
        let (key0, pub0) = (read(SIGNING_KEY_FILE), read(PUBLIC_KEY_FILE));
        let pending = pending_in(d);
        // Cut after keys.json named the new key, before the key was moved in place.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let new_id = rotate(d, "XAA").unwrap();
        fs::rename(d.join(SIGNING_KEY_FILE), &pending).unwrap();
        fs::write(d.join(SIGNING_KEY_FILE), &key0).unwrap();
        fs::write(d.join(PUBLIC_KEY_FILE), &pub0).unwrap();
        finish_rotation(d).unwrap();
        let loaded = Identity::load(d, "XAA").unwrap();
        assert_eq!(loaded.key_id(), new_id, "finished");
        assert!(!pending.exists());
        assert_eq!(
            parse_public_key(&fs::read_to_string(d.join(PUBLIC_KEY_FILE)).unwrap()).unwrap(),
            loaded.verifying_key()
        );
        let history = KeyHistory::load(d, "XAA", &loaded.verifying_key()).unwrap();
        assert!(history.is_current(&new_id));
        assert!(KeyHistory::verified_from(&history, &first, None).is_ok());

        // Cut before keys.json named it: the new key was never published, and is dropped.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init(d, "XAA").unwrap();
        let (key0, keys0) = (
            fs::read(d.join(SIGNING_KEY_FILE)).unwrap(),
            fs::read(d.join(KEYS_FILE)).unwrap(),
        );
        let first = Identity::load(d, "XAA").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        rotate(d, "XAA").unwrap();
        fs::rename(d.join(SIGNING_KEY_FILE), pending_in(d)).unwrap();
        fs::write(d.join(SIGNING_KEY_FILE), &key0).unwrap();
        // While keys.json cannot be read, nothing is decided, and nothing is deleted.
        fs::write(d.join(KEYS_FILE), b"{").unwrap();
        assert!(finish_rotation(d).is_err());
        assert!(pending_in(d).exists());
        fs::write(d.join(KEYS_FILE), &keys0).unwrap();
        finish_rotation(d).unwrap();
        assert_eq!(
            Identity::load(d, "XAA").unwrap().key_id(),
            first.key_id(),
            "undone"
        );
        assert!(!pending_in(d).exists());
        // The next rotation chains from the first key as if nothing had happened.
        std::thread::sleep(std::time::Duration::from_millis(5));
        rotate(d, "XAA").unwrap();
        let now = Identity::load(d, "XAA").unwrap().verifying_key();
        let history = KeyHistory::load(d, "XAA", &now).unwrap();
        assert!(KeyHistory::verified_from(&history, &first.verifying_key(), None).is_ok());
        // Cut after the key was moved, before node.pub was written: node.pub is written again.
        let current = fs::read(d.join(PUBLIC_KEY_FILE)).unwrap();
        fs::write(d.join(PUBLIC_KEY_FILE), b"").unwrap();
        finish_rotation(d).unwrap();
        assert_eq!(fs::read(d.join(PUBLIC_KEY_FILE)).unwrap(), current);
    }

    /// `keys revoke` after a rotation cut short finishes the rotation first, then signs with
    /// the key `keys.json` names as current: the history stays one partners accept. A
    /// pending key that `keys.json` names but not as current is neither installed nor
    /// deleted.
    #[test]
    fn a_revocation_after_a_rotation_cut_short_signs_with_the_current_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init(d, "XAA").unwrap();
        let first = Identity::load(d, "XAA").unwrap();
        let key0 = fs::read(d.join(SIGNING_KEY_FILE)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let new_id = rotate(d, "XAA").unwrap();
        fs::rename(d.join(SIGNING_KEY_FILE), pending_in(d)).unwrap();
        fs::write(d.join(SIGNING_KEY_FILE), &key0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        revoke(d, "XAA", Some(&first.key_id()), "2000-01-01T00:00:00Z").unwrap();
        let current = Identity::load(d, "XAA").unwrap();
        assert_eq!(current.key_id(), new_id);
        let history = KeyHistory::load(d, "XAA", &current.verifying_key()).unwrap();
        let trusted = KeyHistory::verified_from(&history, &first.verifying_key(), None).unwrap();
        assert!(trusted.key_valid_at(&new_id, &now()).is_ok());
        assert!(trusted.key_valid_at(&first.key_id(), &now()).is_err());

        // keys.json names a pending key as revoked: the node is told, and nothing changes.
        let pending = fs::read(d.join(SIGNING_KEY_FILE)).unwrap();
        fs::write(pending_in(d), &pending).unwrap();
        let mut edited = history.clone();
        for k in &mut edited.keys {
            if k.key_id == new_id {
                k.revoked_at = Some(now());
            }
        }
        edited.save(d).unwrap();
        let said = finish_rotation(d).unwrap_err().to_string();
        assert!(said.contains("not as current"), "{said}");
        assert!(pending_in(d).exists());
    }

    fn pending_in(d: &Path) -> std::path::PathBuf {
        d.join(format!("{SIGNING_KEY_FILE}.new"))
    }

    #[test]
    fn rotation_and_revocation_chain_from_the_pinned_key() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "XAA").unwrap();
        let first = Identity::load(dir.path(), "XAA").unwrap();
        let pinned = first.verifying_key();
        // Times have millisecond precision: a rotation within the key's first millisecond
        // would leave it no time of its own to check below.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second_id = rotate(dir.path(), "XAA").unwrap();
        let second = Identity::load(dir.path(), "XAA").unwrap();
        assert_eq!(second.key_id(), second_id);
        assert_eq!(
            fs::metadata(dir.path().join(SIGNING_KEY_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let served = KeyHistory::load(dir.path(), "XAA", &second.verifying_key()).unwrap();
        let trusted = KeyHistory::verified_from(&served, &pinned, None).unwrap();
        let rotated_at = trusted.keys[0].rotated_at.clone().unwrap();
        let made_at = trusted.keys[0].valid_from.clone();
        assert!(made_at < rotated_at);
        // The old key is valid before the rotation, not after; the new key after.
        assert!(trusted.key_valid_at(&first.key_id(), &made_at).is_ok());
        assert!(trusted.key_valid_at(&first.key_id(), &rotated_at).is_err());
        assert!(trusted.key_valid_at(&second_id, &rotated_at).is_ok());

        // A history whose rotation is signed by a stranger is refused.
        let mut forged = served.clone();
        forged.statements[0].sig = forged.statements[0].sig.replace('A', "B");
        if forged != served {
            assert!(KeyHistory::verified_from(&forged, &pinned, None).is_err());
        }

        // Revoking an old key from a past time invalidates what it signed from then on.
        revoke(dir.path(), "XAA", Some(&first.key_id()), &made_at).unwrap();
        let served = KeyHistory::load(dir.path(), "XAA", &second.verifying_key()).unwrap();
        let trusted = KeyHistory::verified_from(&served, &pinned, None).unwrap();
        assert!(trusted.key_valid_at(&first.key_id(), &made_at).is_err());
        // Again, or later: refused, and nothing changes (a revocation only moves earlier).
        let keys = std::fs::read_to_string(dir.path().join(KEYS_FILE)).unwrap();
        assert!(revoke(dir.path(), "XAA", Some(&first.key_id()), &made_at).is_err());
        assert!(
            revoke(
                dir.path(),
                "XAA",
                Some(&first.key_id()),
                "2031-01-01T00:00:00Z"
            )
            .is_err()
        );
        assert!(revoke(dir.path(), "XAA", Some("ed25519:nope"), &made_at).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(KEYS_FILE)).unwrap(),
            keys
        );
        // Revoking the current key rotates to a fresh one first.
        let revoked = revoke(dir.path(), "XAA", None, "2030-01-01T00:00:00Z").unwrap();
        assert_eq!(revoked, second_id);
        assert_ne!(
            Identity::load(dir.path(), "XAA").unwrap().key_id(),
            second_id
        );
    }

    /// A partner added after this node rotated its key pins the key of the day (`node.pub`,
    /// `peers card`): it accepts the served history all the same. What the first key signed
    /// before the rotation stays verifiable to it when the first key is configured too (the
    /// card carries it), and only then: a history that starts elsewhere is refused, and
    /// without the first key the earlier keys are not trusted on the TLS pin alone.
    #[test]
    fn pinning_the_current_key_after_a_rotation_accepts_the_history() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "XAA").unwrap();
        let first = Identity::load(dir.path(), "XAA").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        rotate(dir.path(), "XAA").unwrap();
        let current = Identity::load(dir.path(), "XAA").unwrap().verifying_key();
        let served = KeyHistory::load(dir.path(), "XAA", &current).unwrap();
        let pinned =
            parse_public_key(&fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap())
                .unwrap();
        assert_eq!(pinned, current, "node.pub names the current key");
        let made_at = served.keys[0].valid_from.clone();
        let first_key = first.verifying_key();
        let trusted = KeyHistory::verified_from(&served, &pinned, Some(&first_key)).unwrap();
        assert!(trusted.key_valid_at(&first.key_id(), &made_at).is_ok());
        assert!(trusted.key_valid_at(&key_id(&pinned), &now()).is_ok());
        let only_pinned = KeyHistory::verified_from(&served, &pinned, None).unwrap();
        assert!(only_pinned.key_valid_at(&first.key_id(), &made_at).is_err());
        assert!(only_pinned.key_valid_at(&key_id(&pinned), &now()).is_ok());
        // A history whose first key is not the one configured (one made up by whoever holds
        // the TLS key) is refused.
        let made_up = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(KeyHistory::verified_from(&served, &pinned, Some(&made_up)).is_err());
        // Pinned at a key the history never reaches, it is refused.
        let stranger = SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert!(KeyHistory::verified_from(&served, &stranger, None).is_err());
    }

    /// A stolen key that its owner has rotated out and revoked signs nothing more: neither a
    /// rotation to the thief's key nor a revocation that would push its own revocation back.
    #[test]
    fn a_replaced_or_revoked_key_signs_no_further_statement() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "XAA").unwrap();
        let k0 = Identity::load(dir.path(), "XAA")
            .unwrap()
            .signing_key()
            .clone();
        let pinned = k0.verifying_key();
        let k0_id = key_id(&pinned);
        rotate(dir.path(), "XAA").unwrap();
        revoke(dir.path(), "XAA", Some(&k0_id), "2000-01-01T00:00:00Z").unwrap();
        let served = KeyHistory::load(dir.path(), "XAA", &pinned).unwrap();
        let honest = KeyHistory::verified_from(&served, &pinned, None).unwrap();
        assert!(honest.key_valid_at(&k0_id, &now()).is_err());

        let thief = SigningKey::from_bytes(&[99u8; 32]);
        let mut forged = served.clone();
        forged.statements.push(
            sign_statement(
                Statement::Rotation {
                    node: "XAA".into(),
                    from: k0_id.clone(),
                    to: key_id(&thief.verifying_key()),
                    public_key: URL_SAFE_NO_PAD.encode(thief.verifying_key().as_bytes()),
                    at: "2001-01-01T00:00:00Z".into(),
                },
                &k0,
            )
            .unwrap(),
        );
        assert!(KeyHistory::verified_from(&forged, &pinned, None).is_err());

        let mut forged = served.clone();
        forged.statements.push(
            sign_statement(
                Statement::Revocation {
                    node: "XAA".into(),
                    key_id: k0_id.clone(),
                    signer: k0_id.clone(),
                    at: "9999-01-01T00:00:00Z".into(),
                },
                &k0,
            )
            .unwrap(),
        );
        assert!(KeyHistory::verified_from(&forged, &pinned, None).is_err());
    }
}
