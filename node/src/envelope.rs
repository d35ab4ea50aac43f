//! Selective-disclosure envelopes: a record version signed once by its origin, from which any
//! subset of leaf values can be shown to a partner without breaking the signature
//! (design §6; the format is specified in `docs/protocol.md` and `schemas/envelope.schema.json`).
//!
//! Every leaf of the record becomes a disclosure `[salt, path, value]`; the signed `claims` hold
//! the sorted digests of all disclosures. A view keeps the claims and signature and drops
//! disclosures; a receiver checks the signature and that every disclosure it got is listed.
//!
//! Claims written together may share one signature (decision 0017): the signature is then over
//! the head of an RFC 6962 Merkle tree of their digests, and each envelope carries its
//! [`Tree`], the proof that its claims are a leaf of that tree.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The envelope format version, `claims.v`.
pub const FORMAT_VERSION: u32 = 1;

/// `claims.prev` of an origin's first change.
pub const GENESIS: &str = "";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("unsupported envelope version {0}")]
    Version(u32),
    #[error("the value at {0} is a number with a fraction: signed data carries integers only")]
    Float(String),
    #[error(
        "the object key at {0} is an array index: object keys made only of digits cannot be disclosed"
    )]
    NumericKey(String),
    #[error("the disclosure for {0} is not listed in the signed claims")]
    Unlisted(String),
    #[error("two disclosures share the path {0}")]
    DuplicatePath(String),
    #[error("the disclosure path {0:?} is not a JSON pointer")]
    BadPath(String),
    #[error("the claims name key {0}, not the key used to verify")]
    WrongKey(String),
    #[error("the signature is not valid")]
    BadSignature,
    #[error("the signature is not base64url of 64 bytes")]
    MalformedSignature,
    #[error("the claims' digests are not sorted and unique")]
    UnsortedDigests,
    #[error("cannot make canonical JSON: {0}")]
    Canonical(String),
    #[error("the claims are not in the signed tree: {0}")]
    Tree(String),
}

/// `[salt, path, value]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disclosure(pub String, pub String, pub Value);

impl Disclosure {
    pub fn path(&self) -> &str {
        &self.1
    }
    pub fn value(&self) -> &Value {
        &self.2
    }
    /// `base64url(SHA-256(JCS([salt, path, value])))`.
    pub fn digest(&self) -> Result<String, EnvelopeError> {
        disclosure_digest(&self.0, &self.1, &self.2)
    }
}

/// The digest of the disclosure `[salt, path, value]` ([`Disclosure::digest`]), from borrowed
/// parts.
fn disclosure_digest(salt: &str, path: &str, value: &Value) -> Result<String, EnvelopeError> {
    Digester::default().encoded(salt, path, value)
}

/// Computes disclosure digests, writing each disclosure's canonical bytes into one buffer.
#[derive(Default)]
struct Digester {
    bytes: Vec<u8>,
}

impl Digester {
    /// `SHA-256(JCS([salt, path, value]))`. For a leaf value (string, integer, boolean, null,
    /// empty object or array) serde_json's compact output is already RFC 8785 (same escapes,
    /// no whitespace, integers as written), and much faster than the general canonicaliser.
    fn raw(&mut self, salt: &str, path: &str, value: &Value) -> Result<[u8; 32], EnvelopeError> {
        let leaf = match value {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            // JCS writes numbers as IEEE doubles: only integers within ±(2^53 - 1) print the
            // same way in both.
            Value::Number(n) => n.as_i64().is_some_and(|i| i.unsigned_abs() < (1u64 << 53)),
            _ => true,
        };
        let parts = (salt, path, value);
        self.bytes.clear();
        if leaf {
            serde_json::to_writer(&mut self.bytes, &parts)
                .map_err(|e| EnvelopeError::Canonical(e.to_string()))?;
        } else {
            self.bytes = canonical(&parts)?;
        }
        Ok(Sha256::digest(&self.bytes).into())
    }

    /// `base64url(SHA-256(JCS([salt, path, value])))`: the digest as the claims list it.
    fn encoded(&mut self, salt: &str, path: &str, value: &Value) -> Result<String, EnvelopeError> {
        Ok(URL_SAFE_NO_PAD.encode(self.raw(salt, path, value)?))
    }
}

/// The signed part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub v: u32,
    pub origin: String,
    pub record_id: String,
    pub version: u32,
    /// The origin's change sequence number.
    pub seq: u64,
    /// Digest of the claims of the origin's change `seq - 1` (empty for the first): the
    /// hash chain that lets a receiver prove it has every change.
    pub prev: String,
    pub issued_at: String,
    pub retracted: bool,
    pub normaliser: String,
    pub key_id: String,
    pub digests: Vec<String>,
}

impl Claims {
    /// `base64url(SHA-256(JCS(claims)))`: what the next change's `prev` names.
    pub fn digest(&self) -> Result<String, EnvelopeError> {
        Ok(URL_SAFE_NO_PAD.encode(self.leaf()?))
    }

    /// `SHA-256(JCS(claims))`: the claims' leaf in the tree they were signed in, if any.
    pub fn leaf(&self) -> Result<[u8; 32], EnvelopeError> {
        Ok(Sha256::digest(self.canonical()?).into())
    }

    /// RFC 8785 form of the claims: what is signed. The claims hold only strings, booleans,
    /// integers and a list of strings, so serde_json's compact output of the fields in
    /// sorted key order is already canonical (same string escapes, integers as written),
    /// provided every integer prints the same as an IEEE double (below 2^53); otherwise the
    /// general canonicaliser is used. A unit test checks both agree.
    pub fn canonical(&self) -> Result<Vec<u8>, EnvelopeError> {
        if self.seq >= 1 << 53 {
            return canonical(self);
        }
        #[derive(Serialize)]
        struct Sorted<'a> {
            digests: &'a [String],
            issued_at: &'a str,
            key_id: &'a str,
            normaliser: &'a str,
            origin: &'a str,
            prev: &'a str,
            record_id: &'a str,
            retracted: bool,
            seq: u64,
            v: u32,
            version: u32,
        }
        // Sized up front: a record's claims run to kilobytes (a 45-byte digest per leaf), and
        // growing the buffer by doubling copied them several times.
        let digests: usize = self.digests.iter().map(|d| d.len() + 3).sum();
        let mut out = Vec::with_capacity(320 + digests + self.prev.len() + self.key_id.len());
        serde_json::to_writer(
            &mut out,
            &Sorted {
                digests: &self.digests,
                issued_at: &self.issued_at,
                key_id: &self.key_id,
                normaliser: &self.normaliser,
                origin: &self.origin,
                prev: &self.prev,
                record_id: &self.record_id,
                retracted: self.retracted,
                seq: self.seq,
                v: self.v,
                version: self.version,
            },
        )
        .map_err(|e| EnvelopeError::Canonical(e.to_string()))?;
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub claims: Claims,
    /// Over `JCS(claims)`, or when `tree` is present over the tree's head ([`Tree::head`]).
    pub sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<Tree>,
    pub disclosures: Vec<Disclosure>,
}

/// Most claims one signature covers: a proof is then at most four hashes.
pub const TREE_LEAVES: usize = 16;

/// Largest tree a receiver accepts (a bound on the proof's work; the origin makes trees of at
/// most [`TREE_LEAVES`]).
const MAX_TREE: u64 = 1 << 20;

/// `kind` of a signed tree head.
const TREE_KIND: &str = "ammotrace/claims-tree/1";

/// Where one record version's claims sit in a tree of claims signed together (decision 0017):
/// the tree is RFC 6962's Merkle tree hash over the leaves `SHA-256(JCS(claims))` (32 bytes
/// each) of the claims signed together, in order; the signature is over the JCS of its head
/// `{"kind": "ammotrace/claims-tree/1", "root": …, "size": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// The tree's root hash, base64url.
    pub root: String,
    /// How many claims the tree holds.
    pub size: u64,
    /// This claims' leaf, from 0.
    pub index: u64,
    /// The audit path from the leaf to the root (RFC 6962 §2.1.1), base64url hashes.
    pub path: Vec<String>,
}

impl Tree {
    /// The signed bytes: `JCS({"kind", "root", "size"})`.
    fn head(&self) -> Result<Vec<u8>, EnvelopeError> {
        tree_head(&self.root, self.size)
    }

    /// Checks that `leaf` (the digest of the claims) is leaf `index` of the tree with this
    /// root and size.
    fn check(&self, leaf: [u8; 32]) -> Result<(), EnvelopeError> {
        let bad = |why: &str| EnvelopeError::Tree(why.to_owned());
        if self.size == 0 || self.size > MAX_TREE {
            return Err(bad("its size is not between 1 and 2^20"));
        }
        if self.index >= self.size {
            return Err(bad("its index is outside the tree"));
        }
        let root =
            bytes32(&self.root).ok_or_else(|| bad("the root is not base64url of 32 bytes"))?;
        let mut path = Vec::with_capacity(self.path.len() * 32);
        for node in &self.path {
            path.extend(
                bytes32(node).ok_or_else(|| bad("a path hash is not base64url of 32 bytes"))?,
            );
        }
        let proof = ct_merkle::InclusionProof::<Sha256>::try_from_bytes(path)
            .map_err(|_| bad("the path is malformed"))?;
        ct_merkle::RootHash::<Sha256>::new(root.into(), self.size)
            .verify_inclusion(&leaf, self.index, &proof)
            .map_err(|_| bad("the path does not lead from the claims to the root"))
    }
}

/// The 32 bytes a base64url string holds (a SHA-256, a secret).
fn bytes32(text: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
}

type ClaimsTree = ct_merkle::mem_backed_tree::MemoryBackedTree<Sha256, [u8; 32]>;

/// The tree over `leaves`, in order.
fn claims_tree<'a>(leaves: impl IntoIterator<Item = &'a [u8; 32]>) -> ClaimsTree {
    let mut tree = ClaimsTree::new();
    for leaf in leaves {
        tree.push(*leaf);
    }
    tree
}

/// The [`Tree`] of leaf `index`, which must be in `tree`.
fn place(tree: &ClaimsTree, root: &str, index: usize) -> Tree {
    Tree {
        root: root.to_owned(),
        size: tree.len(),
        index: index as u64,
        path: tree
            .prove_inclusion(index)
            .as_bytes()
            .chunks(32)
            .map(|h| URL_SAFE_NO_PAD.encode(h))
            .collect(),
    }
}

/// `JCS({"kind": TREE_KIND, "root": root, "size": size})`.
fn tree_head(root: &str, size: u64) -> Result<Vec<u8>, EnvelopeError> {
    canonical(&serde_json::json!({"kind": TREE_KIND, "root": root, "size": size}))
}

/// Signs the claims whose digests are `leaves` with one signature: the signature over the
/// tree head, and the tree with its root (base64url). A single leaf is signed alone, over
/// `single` (its claims' canonical bytes), and has no tree.
fn sign_leaves(
    leaves: &[[u8; 32]],
    single: &[u8],
    key: &SigningKey,
) -> Result<(String, Option<(ClaimsTree, String)>), EnvelopeError> {
    let encode = |s: Signature| URL_SAFE_NO_PAD.encode(s.to_bytes());
    if leaves.len() == 1 {
        return Ok((encode(key.sign(single)), None));
    }
    let tree = claims_tree(leaves);
    let root = URL_SAFE_NO_PAD.encode(tree.root().as_bytes());
    let sig = encode(key.sign(&tree_head(&root, tree.len())?));
    Ok((sig, Some((tree, root))))
}

/// What the origin states about a record version besides its content.
#[derive(Debug, Clone)]
pub struct Seal<'a> {
    pub origin: &'a str,
    pub seq: u64,
    pub prev: &'a str,
    pub issued_at: &'a str,
    pub retracted: bool,
    pub normaliser: &'a str,
}

/// RFC 8785 canonical JSON.
pub fn canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EnvelopeError> {
    serde_jcs::to_vec(value).map_err(|e| EnvelopeError::Canonical(e.to_string()))
}

/// [`canonical`] of a JSON object, written directly when every key in it is ASCII (keys then
/// sort bytewise as RFC 8785 sorts them, by UTF-16 code units) and every number an integer
/// below 2^53 in magnitude (which RFC 8785 prints as written); otherwise by the general
/// canonicaliser. Audit entries take this path: some list a thousand versions, and the
/// general canonicaliser took several times as long. A property test holds the two equal.
pub fn canonical_object(object: &Map<String, Value>) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::new();
    if write_canonical_object(object, &mut out) {
        Ok(out)
    } else {
        canonical(object)
    }
}

/// Writes `object` as [`canonical_object`] does; false when it needs the general canonicaliser.
fn write_canonical_object(object: &Map<String, Value>, out: &mut Vec<u8>) -> bool {
    let mut members: Vec<(&String, &Value)> = object.iter().collect();
    if !members.iter().all(|(k, _)| k.is_ascii()) {
        return false;
    }
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (n, (key, value)) in members.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        if serde_json::to_writer(&mut *out, key).is_err() {
            return false;
        }
        out.push(b':');
        if !write_canonical(value, out) {
            return false;
        }
    }
    out.push(b'}');
    true
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> bool {
    match value {
        Value::Object(m) => write_canonical_object(m, out),
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                if !write_canonical(item, out) {
                    return false;
                }
            }
            out.push(b']');
            true
        }
        Value::Number(n) if n.as_i64().is_none_or(|i| i.unsigned_abs() >= (1u64 << 53)) => false,
        // Strings: serde_json's escapes are RFC 8785's.
        leaf => serde_json::to_writer(&mut *out, leaf).is_ok(),
    }
}

/// A fresh random salt: 16 bytes, base64url.
pub fn random_salt() -> String {
    let mut bytes = [0u8; 16];
    // Without OS randomness nothing can be signed safely; getrandom fails only on broken
    // platforms, where a zero salt still keeps digests correct (though guessable).
    let _ = getrandom::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JSON Pointer segment escaped (RFC 6901); borrowed when it has nothing to escape.
fn escape_segment(key: &str) -> Cow<'_, str> {
    if key.contains(['~', '/']) {
        Cow::Owned(key.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(key)
    }
}

/// A JSON Pointer segment unescaped (RFC 6901); borrowed when it has nothing to unescape,
/// which is nearly always.
fn unescape_segment(segment: &str) -> Cow<'_, str> {
    if segment.contains('~') {
        Cow::Owned(segment.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(segment)
    }
}

fn is_index(segment: &str) -> bool {
    !segment.is_empty()
        && segment.bytes().all(|b| b.is_ascii_digit())
        && (segment == "0" || !segment.starts_with('0'))
}

/// Every leaf of `record` with its JSON pointer, in document order. Empty objects and arrays
/// are leaves, so a record survives the round trip exactly.
pub fn leaves(record: &Value) -> Result<Vec<(String, Value)>, EnvelopeError> {
    let mut out = Vec::new();
    walk_leaves(record, At::Plain, &mut String::new(), &mut |path, leaf| {
        out.push((path.to_owned(), leaf.clone()));
        Ok(())
    })?;
    Ok(out)
}

/// The sorted digests [`unsigned`] lists for `record::without_node_fields(record)`, taken from
/// the record as stored: its leaves are visited in place, skipping what the node adds
/// (`normaliser_version` and the `derived` readings of each item's calibre, lot and headstamp),
/// and no copy of the record or its leaves is made. The sealer's hot path; property tests hold
/// it to the long way and to the rebuild from the stored bytes.
fn submitted_digests(
    record: &Value,
    mut salt_for: impl FnMut(&str) -> String,
) -> Result<Vec<String>, EnvelopeError> {
    let mut digests = Vec::new();
    let mut digester = Digester::default();
    walk_leaves(record, At::Top, &mut String::new(), &mut |path, leaf| {
        digests.push(digester.encoded(&salt_for(path), path, leaf)?);
        Ok(())
    })?;
    digests.sort();
    Ok(digests)
}

/// Where a value sits, as far as the node's additions to a record are concerned. A walk that
/// starts at `Plain` skips nothing.
#[derive(Clone, Copy, PartialEq)]
enum At {
    Top,
    Items,
    Item,
    Reading,
    Plain,
}

/// Calls `visit(pointer, leaf)` for every leaf under `value`, in document order, leaving out
/// what the node adds when the walk starts at `At::Top`. An object left with nothing, and an
/// empty array, are leaves. Floats and numeric object keys are refused.
fn walk_leaves(
    value: &Value,
    at: At,
    path: &mut String,
    visit: &mut dyn FnMut(&str, &Value) -> Result<(), EnvelopeError>,
) -> Result<(), EnvelopeError> {
    match value {
        Value::Object(map) => {
            let added = |key: &str| {
                matches!(
                    (at, key),
                    (At::Top, "normaliser_version") | (At::Reading, "derived")
                )
            };
            if map.keys().all(|k| added(k)) {
                return visit(path, &Value::Object(serde_json::Map::new()));
            }
            for (key, child) in map.iter().filter(|(k, _)| !added(k)) {
                if is_index(key) {
                    return Err(EnvelopeError::NumericKey(format!("{path}/{key}")));
                }
                let next = match (at, key.as_str()) {
                    (At::Top, "items") => At::Items,
                    (At::Item, "calibre" | "lot" | "headstamp") => At::Reading,
                    _ => At::Plain,
                };
                let len = path.len();
                path.push('/');
                path.push_str(&escape_segment(key));
                walk_leaves(child, next, path, visit)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Array(items) if !items.is_empty() => {
            let next = if at == At::Items { At::Item } else { At::Plain };
            for (i, child) in items.iter().enumerate() {
                use std::fmt::Write;
                let len = path.len();
                // Writing to a String cannot fail.
                let _ = write!(path, "/{i}");
                walk_leaves(child, next, path, visit)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => Err(EnvelopeError::Float(path.clone())),
        leaf => visit(path, leaf),
    }
}

/// Signs a record version: one disclosure per leaf, with a salt from `salt_for(path)`.
pub fn seal_with(
    record: &Value,
    seal: &Seal<'_>,
    key: &SigningKey,
    salt_for: impl FnMut(&str) -> String,
) -> Result<Envelope, EnvelopeError> {
    let (claims, disclosures) = unsigned(
        record,
        seal,
        &crate::identity::key_id(&key.verifying_key()),
        salt_for,
    )?;
    sign(claims, disclosures, key)
}

fn sign(
    claims: Claims,
    disclosures: Vec<Disclosure>,
    key: &SigningKey,
) -> Result<Envelope, EnvelopeError> {
    let bytes = claims.canonical()?;
    sign_bytes(claims, &bytes, disclosures, key)
}

/// Signs claims whose canonical bytes the caller already has.
fn sign_bytes(
    claims: Claims,
    bytes: &[u8],
    disclosures: Vec<Disclosure>,
    key: &SigningKey,
) -> Result<Envelope, EnvelopeError> {
    let signature = key.sign(bytes);
    Ok(Envelope {
        claims,
        sig: URL_SAFE_NO_PAD.encode(signature.to_bytes()),
        tree: None,
        disclosures,
    })
}

/// Signs consecutive record versions of one origin with one signature (decision 0017), as the
/// node does a batch: version `i` gets `seq = first.seq + i`, its `prev` the digest of the
/// claims before it, and a salt from `salt_for(path)`. One version is signed alone, as
/// [`seal_with`] does.
pub fn seal_tree_with(
    records: &[&Value],
    first: &Seal<'_>,
    key: &SigningKey,
    mut salt_for: impl FnMut(&str) -> String,
) -> Result<Vec<Envelope>, EnvelopeError> {
    let key_id = crate::identity::key_id(&key.verifying_key());
    let mut unsigned_all = Vec::with_capacity(records.len());
    let mut leaves: Vec<[u8; 32]> = Vec::with_capacity(records.len());
    let mut single = Vec::new();
    let mut prev = first.prev.to_owned();
    for (i, record) in records.iter().enumerate() {
        let seal = Seal {
            seq: first.seq + i as u64,
            prev: &prev,
            ..first.clone()
        };
        let (claims, disclosures) = unsigned(record, &seal, &key_id, &mut salt_for)?;
        single = claims.canonical()?;
        let leaf: [u8; 32] = Sha256::digest(&single).into();
        prev = URL_SAFE_NO_PAD.encode(leaf);
        leaves.push(leaf);
        unsigned_all.push((claims, disclosures));
    }
    let (sig, tree) = sign_leaves(&leaves, &single, key)?;
    Ok(unsigned_all
        .into_iter()
        .enumerate()
        .map(|(index, (claims, disclosures))| Envelope {
            claims,
            sig: sig.clone(),
            tree: tree.as_ref().map(|(t, root)| place(t, root, index)),
            disclosures,
        })
        .collect())
}

/// The claims and disclosures of a record version, before signing.
fn unsigned(
    record: &Value,
    seal: &Seal<'_>,
    key_id: &str,
    mut salt_for: impl FnMut(&str) -> String,
) -> Result<(Claims, Vec<Disclosure>), EnvelopeError> {
    let (record_id, version) = id_and_version(record);
    let record_id = record_id.to_owned();
    let disclosures: Vec<Disclosure> = leaves(record)?
        .into_iter()
        .map(|(path, value)| Disclosure(salt_for(&path), path, value))
        .collect();
    let mut digester = Digester::default();
    let mut digests = disclosures
        .iter()
        .map(|Disclosure(salt, path, value)| digester.encoded(salt, path, value))
        .collect::<Result<Vec<_>, _>>()?;
    digests.sort();
    let claims = Claims {
        v: FORMAT_VERSION,
        origin: seal.origin.to_owned(),
        record_id,
        version,
        seq: seal.seq,
        prev: seal.prev.to_owned(),
        issued_at: seal.issued_at.to_owned(),
        retracted: seal.retracted,
        normaliser: seal.normaliser.to_owned(),
        key_id: key_id.to_owned(),
        digests,
    };
    Ok((claims, disclosures))
}

/// The `record_id` and `record_version` a record states (empty and 0 when it does not).
fn id_and_version(record: &Value) -> (&str, u32) {
    let record_id = record
        .get("record_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let version = record
        .get("record_version")
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    (record_id, version)
}

/// Signs a record version with random salts.
pub fn seal(record: &Value, seal: &Seal<'_>, key: &SigningKey) -> Result<Envelope, EnvelopeError> {
    seal_with(record, seal, key, salt_source())
}

/// Unpredictable salts for one record version: 16 bytes of SHA-256 over one fresh 32-byte
/// secret from the OS and the leaf's path. One system call per record instead of one per
/// leaf; a partner that sees some salts learns nothing of the others (the secret is never
/// sent; for an own version the store keeps it, in the compact form of the envelope).
fn salt_source() -> impl FnMut(&str) -> String {
    let mut secret = [0u8; 32];
    // Without OS randomness the salts would be guessable; getrandom fails only on broken
    // platforms, and the digests stay correct either way.
    let _ = getrandom::fill(&mut secret);
    salts_from(secret)
}

/// 32 bytes from the OS for one own version's salts; sealing fails without them (stored
/// salts must never be guessable).
fn fresh_secret() -> Result<[u8; 32], String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no OS randomness for salts: {e}"))?;
    Ok(secret)
}

/// The salts of one record version from its secret: 16 bytes of SHA-256 over the secret and
/// the leaf's path.
fn salts_from(secret: [u8; 32]) -> impl FnMut(&str) -> String {
    move |path: &str| {
        let mut h = Sha256::new();
        h.update(b"ammotrace-salt\0");
        h.update(secret);
        h.update(path.as_bytes());
        URL_SAFE_NO_PAD.encode(&h.finalize()[..16])
    }
}

/// Verifies many envelopes as [`Envelope::verify`] does, faster: in two halves on two
/// threads, each half's signatures in one ed25519 batch. When a batch fails, each of its
/// signatures is checked alone (strictly) to name the first bad envelope. Errors carry the
/// envelope's position; the first bad one is named. `leaves`, when given, holds each
/// envelope's [`Claims::leaf`] as the caller computed it from the same claims (a feed page's
/// chain check does), so it is not computed twice; it must be as long as `items`.
pub fn verify_all(
    items: &[(&Envelope, VerifyingKey)],
    leaves: Option<&[[u8; 32]]>,
) -> Result<(), (usize, EnvelopeError)> {
    if leaves.is_some_and(|l| l.len() != items.len()) {
        return Err((
            0,
            EnvelopeError::Tree("one leaf per envelope is needed".into()),
        ));
    }
    if items.len() < 32 {
        return verify_chunk(0, items, leaves);
    }
    let half = items.len() / 2;
    let (a, b) = items.split_at(half);
    let (la, lb) = match leaves {
        Some(l) => (Some(&l[..half]), Some(&l[half..])),
        None => (None, None),
    };
    std::thread::scope(|scope| {
        let second = scope.spawn(|| verify_chunk(a.len(), b, lb));
        let first = verify_chunk(0, a, la);
        let second = second
            .join()
            .unwrap_or(Err((a.len(), EnvelopeError::BadSignature)));
        first.and(second)
    })
}

fn verify_chunk(
    offset: usize,
    items: &[(&Envelope, VerifyingKey)],
    leaves: Option<&[[u8; 32]]>,
) -> Result<(), (usize, EnvelopeError)> {
    // Envelopes signed in one tree share their signed message, key and signature: each
    // distinct one is verified once, on behalf of the first envelope that carried it.
    let mut owners = Vec::with_capacity(items.len());
    let mut messages: Vec<Vec<u8>> = Vec::with_capacity(items.len());
    let mut signatures = Vec::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    for (n, (env, key)) in items.iter().enumerate() {
        let at = |e| (offset + n, e);
        env.check_key(key)
            .and_then(|()| env.check_disclosures())
            .map_err(at)?;
        let leaf = leaves.and_then(|l| l.get(n).copied());
        let message = env.signed_message(leaf).map_err(at)?;
        let signature = env.signature().map_err(at)?;
        let repeat = messages.last() == Some(&message)
            && signatures.last() == Some(&signature)
            && keys.last() == Some(key);
        if !repeat {
            owners.push(offset + n);
            messages.push(message);
            signatures.push(signature);
            keys.push(*key);
        }
    }
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    if ed25519_dalek::verify_batch(&refs, &signatures, &keys).is_ok() {
        return Ok(());
    }
    for (((message, signature), key), owner) in
        messages.iter().zip(&signatures).zip(&keys).zip(&owners)
    {
        key.verify_strict(message, signature)
            .map_err(|_| (*owner, EnvelopeError::BadSignature))?;
    }
    Ok(())
}

/// First byte of an own envelope stored compact ([`Compact`]); a full one is JSON, `{`.
const COMPACT: u8 = 0x02;

/// An own envelope as the store keeps it (decision 0011): the claims without their digests,
/// the signature, the claims' digest, and the version's random salt secret. [`load`] rebuilds
/// the disclosures and digests from the stored record and the secret, and the digest proves
/// the rebuild exact. About 400 bytes where the whole envelope takes several kilobytes.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Compact {
    claims: Claims,
    sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tree: Option<StoredTree>,
    digest: String,
    /// The 32-byte secret the version's salts come from ([`salts_from`]), base64url.
    secret: String,
}

/// Where an own version stored compact sits in the tree it was signed in (decision 0017): the
/// root, not the path. [`StoredTree::rebuild`] makes the path again from the own log, which
/// holds the digests of the tree's other versions; storing the path cost a sixth more bytes
/// on disk.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredTree {
    root: String,
    size: u64,
    index: u64,
}

impl StoredTree {
    /// The tree: its leaves are the own log's digests of the versions signed with this one
    /// (`digest` its own, at `index`), and they must hash to the stored root.
    fn rebuild(
        &self,
        store: &crate::store::Store,
        seq: u64,
        digest: &str,
    ) -> Result<ClaimsTree, String> {
        let size = usize::try_from(self.size)
            .ok()
            .filter(|&n| (1..=TREE_LEAVES).contains(&n))
            .ok_or("the stored tree's size is out of range")?;
        let first = seq
            .checked_sub(self.index)
            .filter(|&f| f >= 1 && self.index < self.size)
            .ok_or("the stored tree's index does not fit the change number")?;
        let entries = store
            .own_changes_after(first - 1, size)
            .map_err(|e| e.to_string())?;
        let missing = "the own log does not hold the tree's versions";
        let leaves = entries
            .iter()
            .enumerate()
            .map(|(n, entry)| {
                bytes32(&entry.digest)
                    .filter(|_| entry.seq == first + n as u64)
                    .ok_or(missing)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let index = self.index as usize;
        if entries.len() != size || entries[index].digest != digest {
            return Err(missing.into());
        }
        let tree = claims_tree(&leaves);
        if URL_SAFE_NO_PAD.encode(tree.root().as_bytes()) != self.root {
            return Err("the own log's digests do not make the signed tree".into());
        }
        Ok(tree)
    }
}

impl Compact {
    fn bytes(&self) -> Result<Vec<u8>, String> {
        let mut out = vec![COMPACT];
        serde_json::to_writer(&mut out, self).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// The full envelope, from the record version it was sealed from, as submitted (without
    /// what the node added: [`crate::record::parse_submitted`]), and the envelope's place in
    /// the tree it was signed in, if any ([`StoredTree::rebuild`]).
    fn rebuild(self, record: &Value, tree: Option<Tree>) -> Result<Envelope, String> {
        let secret = bytes32(&self.secret).ok_or("the salt secret is not base64url of 32 bytes")?;
        let c = &self.claims;
        let seal = Seal {
            origin: &c.origin,
            seq: c.seq,
            prev: &c.prev,
            issued_at: &c.issued_at,
            retracted: c.retracted,
            normaliser: &c.normaliser,
        };
        let (claims, disclosures) =
            unsigned(record, &seal, &c.key_id, salts_from(secret)).map_err(|e| e.to_string())?;
        if claims.digest().map_err(|e| e.to_string())? != self.digest {
            return Err("the stored record no longer matches the claims signed for it".into());
        }
        Ok(Envelope {
            claims,
            sig: self.sig,
            tree,
            disclosures,
        })
    }
}

/// Why a stored envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the stored envelope of {0} version {1} is unreadable: {2}")]
    Corrupt(crate::record::RecordId, u32, String),
}

/// A record version's envelope as stored: a partner's as it was received; an own one rebuilt
/// from the stored record ([`Compact`]).
pub fn load(
    store: &crate::store::Store,
    id: &crate::record::RecordId,
    version: u32,
) -> Result<Option<Envelope>, LoadError> {
    Ok(Loader::new(store)
        .read(id, version)?
        .map(|(envelope, _)| envelope))
}

/// [`load`], with the record the envelope discloses in full ([`Envelope::record`]), which
/// rebuilding an own envelope has at hand.
pub fn load_with_record(
    store: &crate::store::Store,
    id: &crate::record::RecordId,
    version: u32,
) -> Result<Option<(Envelope, Value)>, LoadError> {
    Loader::new(store).with_record(id, version)
}

/// Loads stored envelopes like [`load_with_record`], making each tree an own version was
/// signed in ([`StoredTree`]) once: a feed page or a query's hits load many versions of the
/// same trees, and each tree otherwise costs a read of the own log and its hashes.
pub struct Loader<'a> {
    store: &'a crate::store::Store,
    /// Trees made from the own log and checked against their root, by root.
    trees: HashMap<String, ClaimsTree>,
}

impl<'a> Loader<'a> {
    pub fn new(store: &'a crate::store::Store) -> Self {
        Loader {
            store,
            trees: HashMap::new(),
        }
    }

    /// [`load_with_record`].
    pub fn with_record(
        &mut self,
        id: &crate::record::RecordId,
        version: u32,
    ) -> Result<Option<(Envelope, Value)>, LoadError> {
        Ok(self.read(id, version)?.map(|(envelope, record)| {
            let record = record.unwrap_or_else(|| envelope.record());
            (envelope, record)
        }))
    }

    /// The stored envelope, and for an own one the record it was rebuilt from.
    fn read(
        &mut self,
        id: &crate::record::RecordId,
        version: u32,
    ) -> Result<Option<(Envelope, Option<Value>)>, LoadError> {
        let corrupt = |e: String| LoadError::Corrupt(*id, version, e);
        // Stored bytes that do not decode are this version's problem, not the store's:
        // callers that can leave one version out (a partner's query) do.
        let stored_error = |e: crate::store::StoreError| match e {
            crate::store::StoreError::Corrupt(e) => corrupt(e),
            e => LoadError::Store(e),
        };
        let Some(stored) = self.store.stored(id, version).map_err(stored_error)? else {
            return Ok(None);
        };
        let Some(bytes) = stored.envelope().map_err(stored_error)? else {
            return Ok(None);
        };
        let Some((&COMPACT, compact)) = bytes.split_first() else {
            return serde_json::from_slice(&bytes)
                .map(|envelope| Some((envelope, None)))
                .map_err(|e| corrupt(e.to_string()));
        };
        let compact: Compact =
            serde_json::from_slice(compact).map_err(|e| corrupt(e.to_string()))?;
        let record = stored
            .bare_with(crate::record::parse_submitted)
            .map_err(stored_error)?;
        let tree = match &compact.tree {
            Some(t) => Some(self.place(t, &compact).map_err(corrupt)?),
            None => None,
        };
        let envelope = compact.rebuild(&record, tree).map_err(corrupt)?;
        Ok(Some((envelope, Some(record))))
    }

    /// The [`Tree`] of a compact own version: from a tree already made and checked when its
    /// leaf there is this version's digest, otherwise made from the own log.
    fn place(&mut self, stored: &StoredTree, compact: &Compact) -> Result<Tree, String> {
        let index = usize::try_from(stored.index).unwrap_or(usize::MAX);
        if let Some(tree) = self.trees.get(&stored.root)
            && tree.len() == stored.size
            && tree
                .get(index)
                .is_some_and(|leaf| URL_SAFE_NO_PAD.encode(leaf) == compact.digest)
        {
            return Ok(place(tree, &stored.root, index));
        }
        let tree = stored.rebuild(self.store, compact.claims.seq, &compact.digest)?;
        let made = place(&tree, &stored.root, index);
        self.trees.insert(stored.root.clone(), tree);
        Ok(made)
    }
}

/// Seals own record versions as the store writes them, with the node's current key. What it
/// returns for the store is the [`Compact`] form.
pub struct NodeSealer {
    pub origin: String,
    pub key: SigningKey,
}

/// A record version's claims before its place in the own log is known (`seq`, `prev`,
/// `issued_at` and `key_id` still empty), with the secret its salts come from.
pub struct Pending {
    claims: Claims,
    secret: [u8; 32],
}

impl crate::store::Sealer for NodeSealer {
    type Pending = Pending;

    /// The salts, disclosures and digests: most of the work, and none of it depends on the
    /// own log, so the store does it before taking its write lock.
    fn prepare(&self, item: &crate::store::ToSeal<'_>) -> Result<Pending, String> {
        let secret = fresh_secret()?;
        let digests =
            submitted_digests(item.record, salts_from(secret)).map_err(|e| e.to_string())?;
        let (record_id, version) = id_and_version(item.record);
        let claims = Claims {
            v: FORMAT_VERSION,
            origin: self.origin.clone(),
            record_id: record_id.to_owned(),
            version,
            seq: 0,
            prev: String::new(),
            issued_at: String::new(),
            retracted: item.retracted,
            normaliser: crate::normalise::NORMALISER_VERSION.to_owned(),
            key_id: String::new(),
            digests,
        };
        Ok(Pending { claims, secret })
    }

    fn seal(
        &self,
        batch: Vec<Pending>,
        first_seq: u64,
        prev: &str,
    ) -> Result<Vec<crate::store::Sealed>, String> {
        let issued_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let key_id = crate::identity::key_id(&self.key.verifying_key());
        let mut prev = prev.to_owned();
        let mut parts = Vec::with_capacity(batch.len());
        for (n, Pending { claims, secret }) in batch.into_iter().enumerate() {
            let claims = Claims {
                seq: first_seq + n as u64,
                prev: std::mem::take(&mut prev),
                issued_at: issued_at.clone(),
                key_id: key_id.clone(),
                ..claims
            };
            let canonical = claims.canonical().map_err(|e| e.to_string())?;
            let leaf: [u8; 32] = Sha256::digest(&canonical).into();
            prev = URL_SAFE_NO_PAD.encode(leaf);
            parts.push((claims, canonical, leaf, secret));
        }
        // One signature per tree of up to TREE_LEAVES consecutive versions (decision 0017).
        let mut sealed = Vec::with_capacity(parts.len());
        let mut parts = parts.into_iter().peekable();
        while parts.peek().is_some() {
            let tree: Vec<_> = parts.by_ref().take(TREE_LEAVES).collect();
            let leaves: Vec<[u8; 32]> = tree.iter().map(|p| p.2).collect();
            let (sig, signed) =
                sign_leaves(&leaves, &tree[0].1, &self.key).map_err(|e| e.to_string())?;
            // The store keeps each version's place, not its path ([`StoredTree`]).
            let size = leaves.len() as u64;
            for (index, (claims, _, leaf, secret)) in tree.into_iter().enumerate() {
                let compact = Compact {
                    claims: Claims {
                        digests: Vec::new(),
                        ..claims
                    },
                    sig: sig.clone(),
                    tree: signed.as_ref().map(|(_, root)| StoredTree {
                        root: root.clone(),
                        size,
                        index: index as u64,
                    }),
                    digest: URL_SAFE_NO_PAD.encode(leaf),
                    secret: URL_SAFE_NO_PAD.encode(secret),
                };
                sealed.push(crate::store::Sealed {
                    envelope: compact.bytes()?,
                    digest: compact.digest,
                });
            }
        }
        Ok(sealed)
    }
}

impl Envelope {
    /// The view that keeps the disclosures whose entry in `keep` (one per disclosure, in
    /// order; missing ones count as false) is true, made from this envelope without copying.
    pub fn into_view(mut self, keep: &[bool]) -> Envelope {
        let mut keep = keep.iter();
        self.disclosures
            .retain(|_| keep.next().copied().unwrap_or(false));
        self
    }

    /// The view that keeps only the disclosures whose path `keep` accepts.
    pub fn view(&self, mut keep: impl FnMut(&str) -> bool) -> Envelope {
        Envelope {
            claims: self.claims.clone(),
            sig: self.sig.clone(),
            tree: self.tree.clone(),
            disclosures: self
                .disclosures
                .iter()
                .filter(|d| keep(d.path()))
                .cloned()
                .collect(),
        }
    }

    /// Checks the signature with `key` (which must be the key `claims.key_id` names, as it was
    /// valid at `claims.issued_at`: the caller resolves that) and that every disclosure is
    /// listed, carries no float, and has a path of its own.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), EnvelopeError> {
        self.check_key(key)?;
        key.verify_strict(&self.signed_message(None)?, &self.signature()?)
            .map_err(|_| EnvelopeError::BadSignature)?;
        self.check_disclosures()
    }

    /// What the signature is over: `JCS(claims)`, or, for claims signed in a tree, the tree's
    /// head once the claims are shown to be its leaf.
    /// What the signature covers: the canonical claims, or the head of the tree whose leaf
    /// they are (`leaf`: their [`Claims::leaf`], if already computed).
    fn signed_message(&self, leaf: Option<[u8; 32]>) -> Result<Vec<u8>, EnvelopeError> {
        let Some(tree) = &self.tree else {
            return self.claims.canonical();
        };
        tree.check(match leaf {
            Some(leaf) => leaf,
            None => self.claims.leaf()?,
        })?;
        tree.head()
    }

    fn check_key(&self, key: &VerifyingKey) -> Result<(), EnvelopeError> {
        if self.claims.v != FORMAT_VERSION {
            return Err(EnvelopeError::Version(self.claims.v));
        }
        if crate::identity::key_id(key) != self.claims.key_id {
            return Err(EnvelopeError::WrongKey(self.claims.key_id.clone()));
        }
        Ok(())
    }

    fn signature(&self) -> Result<Signature, EnvelopeError> {
        URL_SAFE_NO_PAD
            .decode(&self.sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or(EnvelopeError::MalformedSignature)
    }

    /// Everything but the signature: digests sorted and unique; every disclosure a pointer of
    /// its own, float-free, and listed in the claims.
    fn check_disclosures(&self) -> Result<(), EnvelopeError> {
        if self.claims.digests.windows(2).any(|w| w[0] >= w[1]) {
            return Err(EnvelopeError::UnsortedDigests);
        }
        let mut paths = HashSet::new();
        let mut digester = Digester::default();
        // A digest in base64url: 43 characters.
        let mut text = [0u8; 43];
        for d in &self.disclosures {
            if !d.path().is_empty() && !d.path().starts_with('/') {
                return Err(EnvelopeError::BadPath(d.path().to_owned()));
            }
            if !paths.insert(d.path()) {
                return Err(EnvelopeError::DuplicatePath(d.path().to_owned()));
            }
            // Walked in place, nothing copied (a disclosure is nearly always of one leaf):
            // floats and numeric keys are refused, named by their path in the record.
            walk_leaves(d.value(), At::Plain, &mut String::new(), &mut |_, _| Ok(())).map_err(
                |e| match e {
                    EnvelopeError::Float(at) => EnvelopeError::Float(format!("{}{at}", d.path())),
                    EnvelopeError::NumericKey(at) => {
                        EnvelopeError::NumericKey(format!("{}{at}", d.path()))
                    }
                    e => e,
                },
            )?;
            let digest = digester.raw(&d.0, d.path(), d.value())?;
            let written = URL_SAFE_NO_PAD
                .encode_slice(digest, &mut text)
                .map_err(|e| EnvelopeError::Canonical(e.to_string()))?;
            let digest = &text[..written];
            if self
                .claims
                .digests
                .binary_search_by(|listed| listed.as_bytes().cmp(digest))
                .is_err()
            {
                return Err(EnvelopeError::Unlisted(d.path().to_owned()));
            }
        }
        Ok(())
    }

    /// The record as far as the disclosures show it. Arrays keep their elements' order; an
    /// array whose first elements were withheld is compacted.
    pub fn record(&self) -> Value {
        rebuild(self.disclosures.iter().map(|d| (d.path(), d.value())))
    }

    /// The record a partner's version is, at the node that received it: what the disclosures
    /// show ([`Envelope::record`]), with the identity fields from the signed claims (and
    /// `retracted` for a retraction). The store keeps a partner's version as its envelope
    /// alone and reads the record back this way (decision 0019).
    pub fn replica_record(&self) -> Value {
        with_identity(self.record(), &self.claims)
    }

    /// [`Envelope::replica_record`], moving the disclosed values into the record.
    pub fn into_replica_record(self) -> Value {
        let record = rebuild_owned(
            self.disclosures
                .into_iter()
                .map(|Disclosure(_, p, v)| (p, v)),
        );
        with_identity(record, &self.claims)
    }

    /// The union of two views of the same signed claims (used when a widened policy shows
    /// more of a version already received).
    pub fn merge(&self, other: &Envelope) -> Option<Envelope> {
        if self.claims != other.claims || self.sig != other.sig || self.tree != other.tree {
            return None;
        }
        let mut merged = self.clone();
        let paths: HashSet<String> = self.disclosures.iter().map(|d| d.1.clone()).collect();
        merged.disclosures.extend(
            other
                .disclosures
                .iter()
                .filter(|d| !paths.contains(d.path()))
                .cloned(),
        );
        Some(merged)
    }

    /// The disclosed paths, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.disclosures.iter().map(|d| d.1.clone()).collect();
        paths.sort();
        paths
    }
}

/// `record` with the identity fields of the signed claims (and `retracted` for a retraction):
/// what a partner's version shows ([`Envelope::replica_record`]).
fn with_identity(mut record: Value, c: &Claims) -> Value {
    if let Some(o) = record.as_object_mut() {
        o.insert("record_id".into(), Value::String(c.record_id.clone()));
        o.insert("record_version".into(), Value::from(c.version));
        o.insert("originating_state".into(), Value::String(c.origin.clone()));
        if c.retracted {
            o.insert("retracted".into(), Value::Bool(true));
        }
    }
    record
}

/// Rebuilds a JSON document from `(pointer, leaf)` pairs. A segment that is a canonical array
/// index under a container made for it is an array position; positions are compacted.
pub fn rebuild<'a>(pairs: impl Iterator<Item = (&'a str, &'a Value)>) -> Value {
    rebuild_owned(pairs.map(|(path, value)| (path, value.clone())))
}

/// [`rebuild`], taking the leaves (which it moves into the document, not copies).
fn rebuild_owned<P: AsRef<str>>(pairs: impl Iterator<Item = (P, Value)>) -> Value {
    // An intermediate tree that remembers array positions, so gaps compact in order.
    enum Node {
        Leaf(Value),
        Object(Vec<(String, Node)>),
        Array(BTreeMap<u64, Node>),
    }
    fn insert<'s>(node: &mut Node, mut segments: impl Iterator<Item = &'s str>, value: Value) {
        let Some(first) = segments.next() else {
            *node = Node::Leaf(value);
            return;
        };
        let first = unescape_segment(first);
        if let Node::Leaf(_) = node {
            *node = if is_index(&first) {
                Node::Array(BTreeMap::new())
            } else {
                Node::Object(Vec::new())
            };
        }
        match node {
            Node::Array(map) => {
                let index = first.parse::<u64>().unwrap_or(u64::MAX);
                let child = map.entry(index).or_insert_with(|| Node::Leaf(Value::Null));
                insert(child, segments, value);
            }
            Node::Object(entries) => {
                let position = match entries.iter().position(|(k, _)| *k == first) {
                    Some(p) => p,
                    None => {
                        entries.push((first.into_owned(), Node::Leaf(Value::Null)));
                        entries.len() - 1
                    }
                };
                insert(&mut entries[position].1, segments, value);
            }
            Node::Leaf(_) => {}
        }
    }
    fn finish(node: Node) -> Value {
        match node {
            Node::Leaf(v) => v,
            Node::Object(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, n)| (k, finish(n)))
                    .collect::<Map<_, _>>(),
            ),
            Node::Array(map) => Value::Array(map.into_values().map(finish).collect()),
        }
    }
    let mut root = Node::Object(Vec::new());
    for (path, value) in pairs {
        insert(&mut root, path.as_ref().split('/').skip(1), value);
    }
    finish(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn sample() -> Value {
        json!({
            "record_id": "01900000-0000-7000-8000-000000000001",
            "record_version": 2,
            "originating_state": "XAA",
            "event": {"location": {"country": "XAA", "admin1": "XAA-01", "point": {"lat_e6": 1, "lon_e6": -2}}},
            "items": [
                {"item_id": "i1", "lot": {"raw": "LOT 12/3"}},
                {"item_id": "i2", "quantity": {"rounds": 40}, "tags": []}
            ],
            "we~ird/key": {},
            "casualties": null,
            "flag": true
        })
    }

    fn seal_sample() -> Envelope {
        let s = Seal {
            origin: "XAA",
            seq: 5,
            prev: "abc",
            issued_at: "2026-01-01T00:00:00Z",
            retracted: false,
            normaliser: "1",
        };
        seal(&sample(), &s, &key()).unwrap()
    }

    #[test]
    fn full_envelope_round_trips_and_verifies() {
        let env = seal_sample();
        env.verify(&key().verifying_key()).unwrap();
        assert_eq!(env.record(), sample());
        assert_eq!(env.claims.version, 2);
        assert_eq!(env.claims.digests.len(), env.disclosures.len());
    }

    #[test]
    fn views_verify_and_compact_arrays() {
        let env = seal_sample();
        let view = env.view(|p| !p.starts_with("/items/0") && !p.starts_with("/event"));
        view.verify(&key().verifying_key()).unwrap();
        let record = view.record();
        assert_eq!(record["items"][0]["item_id"], "i2");
        assert!(record.get("event").is_none());
        let merged = view.merge(&env.view(|p| p.starts_with("/event"))).unwrap();
        merged.verify(&key().verifying_key()).unwrap();
        assert_eq!(merged.record()["event"], sample()["event"]);
    }

    #[test]
    fn tampering_is_detected() {
        let env = seal_sample();
        let vk = key().verifying_key();
        let mut t = env.clone();
        t.disclosures[2].2 = json!("YYY");
        assert!(matches!(t.verify(&vk), Err(EnvelopeError::Unlisted(_))));
        let mut t = env.clone();
        t.claims.retracted = true;
        assert_eq!(t.verify(&vk), Err(EnvelopeError::BadSignature));
        let mut t = env.clone();
        t.disclosures.push(t.disclosures[0].clone());
        assert!(matches!(
            t.verify(&vk),
            Err(EnvelopeError::DuplicatePath(_))
        ));
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(matches!(
            env.verify(&other),
            Err(EnvelopeError::WrongKey(_))
        ));
    }

    #[test]
    fn fast_disclosure_encoding_is_jcs() {
        for value in [
            json!("a\u{1f}\"\\/é\u{2028}𝄞"),
            json!(-12345678901234i64),
            json!((1u64 << 53) - 1),
            json!(u64::MAX),
            json!(true),
            json!(null),
            json!({}),
            json!([]),
        ] {
            let d = Disclosure("c2FsdA".into(), "/a~1b/0".into(), value);
            assert_eq!(
                d.digest().unwrap(),
                URL_SAFE_NO_PAD.encode(Sha256::digest(canonical(&d).unwrap())),
                "{d:?}"
            );
        }
    }

    /// Stored-record-shaped JSON: items whose calibre, lot and headstamp carry (or not) a raw
    /// value and `derived` readings, beside arbitrary members and a `normaliser_version`.
    fn stored_like() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let any = crate::record::tests::record_like;
        let field = (proptest::option::of(any()), proptest::option::of(any())).prop_map(
            |(raw, derived)| {
                let mut m = serde_json::Map::new();
                if let Some(raw) = raw {
                    m.insert("raw".into(), raw);
                }
                if let Some(derived) = derived {
                    m.insert("derived".into(), derived);
                }
                Value::Object(m)
            },
        );
        let name = prop_oneof![
            Just("lot"),
            Just("calibre"),
            Just("headstamp"),
            Just("derived"),
            Just("item_id")
        ];
        let item = proptest::collection::vec((name, prop_oneof![field, any()]), 0..4)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
        let items = proptest::collection::vec(prop_oneof![item, any()], 0..3);
        (items, proptest::option::of(any()), any()).prop_map(|(items, version, other)| {
            let mut m = serde_json::Map::new();
            m.insert("items".into(), Value::Array(items));
            if let Some(v) = version {
                m.insert("normaliser_version".into(), v);
            }
            m.insert("notes".into(), other);
            Value::Object(m)
        })
    }

    proptest::proptest! {
        /// The sealer's digests, taken from the stored record in place, are those of the
        /// record as submitted, made the long way.
        #[test]
        fn digests_taken_in_place_equal_those_of_the_submitted_record(
            value in proptest::prop_oneof![crate::record::tests::record_like(), stored_like()],
            secret in proptest::prelude::any::<[u8; 32]>(),
        ) {
            let seal = Seal {
                origin: "XAA",
                seq: 1,
                prev: "",
                issued_at: "2026-01-01T00:00:00Z",
                retracted: false,
                normaliser: "2",
            };
            let digests = |record: &Value| {
                unsigned(record, &seal, "k", salts_from(secret)).map(|(c, _)| c.digests).ok()
            };
            let long = digests(&crate::record::without_node_fields(&value));
            // What `load` rebuilds an own envelope from: the stored bytes, parsed.
            let stored = serde_json::to_vec(&value).unwrap();
            let rebuilt = digests(&crate::record::parse_submitted(&stored).unwrap());
            let short = submitted_digests(&value, salts_from(secret)).ok();
            proptest::prop_assert_eq!(&short, &long);
            proptest::prop_assert_eq!(&short, &rebuilt);
        }
    }

    proptest::proptest! {
        /// A partner's record made by moving the disclosed values out of a view is the one
        /// made by copying them, whatever the view keeps (gaps in arrays included).
        #[test]
        fn a_view_moved_into_its_record_shows_what_it_copies(
            value in crate::record::tests::record_like(),
            keep in proptest::collection::vec(proptest::prelude::any::<bool>(), 64),
            retracted in proptest::prelude::any::<bool>(),
        ) {
            let at = Seal {
                origin: "XAA",
                seq: 1,
                prev: "",
                issued_at: "2026-01-01T00:00:00Z",
                retracted,
                normaliser: "2",
            };
            // Only integers and non-numeric keys can be sealed.
            fn sealable(value: Value) -> Value {
                match value {
                    Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => {
                        Value::from(n.as_f64().unwrap_or_default() as i64)
                    }
                    Value::Array(a) => Value::Array(a.into_iter().map(sealable).collect()),
                    Value::Object(m) => Value::Object(
                        m.into_iter()
                            .map(|(k, v)| (if is_index(&k) { format!("k{k}") } else { k }, sealable(v)))
                            .collect(),
                    ),
                    v => v,
                }
            }
            let envelope = seal(&json!({"record": sealable(value)}), &at, &key()).unwrap();
            let view = envelope.into_view(&keep);
            proptest::prop_assert_eq!(view.clone().into_replica_record(), view.replica_record());
        }
    }

    proptest::proptest! {
        /// The direct canonical form of a JSON object is byte for byte what serde_jcs writes,
        /// whatever its keys and numbers (floats, large integers and non-ASCII keys take the
        /// general canonicaliser).
        #[test]
        fn direct_canonical_objects_are_jcs(
            value in crate::record::tests::record_like(),
            key in proptest::prop_oneof![
                proptest::strategy::Just("\u{e000}".to_owned()),
                proptest::strategy::Just("\u{1f600}".to_owned()),
                "[a-zA-Z_]{0,3}",
                "[a-z~/]{0,3}",
            ],
            big in proptest::prop_oneof![
                -(1i64 << 53) + 1..(1i64 << 53),
                proptest::prelude::any::<i64>(),
            ],
        ) {
            let mut object = serde_json::Map::new();
            object.insert("value".into(), value.clone());
            object.insert(key, json!({"n": big, "s": "a\u{1f}\"é"}));
            object.insert("list".into(), json!([value, 12, -7, null, true, {}, []]));
            proptest::prop_assert_eq!(
                canonical_object(&object).unwrap(),
                canonical(&object).unwrap()
            );
        }
    }

    proptest::proptest! {
        /// The fast canonical form of the claims is byte for byte what serde_jcs writes.
        #[test]
        fn fast_claims_encoding_is_jcs(
            text in "\\PC*",
            control in proptest::collection::vec(0u32..0x20, 0..4),
            seq in proptest::prelude::any::<u64>(),
            version in proptest::prelude::any::<u32>(),
            retracted in proptest::prelude::any::<bool>(),
            digests in proptest::collection::vec("[A-Za-z0-9_-]{0,43}", 0..5),
        ) {
            let odd: String = control.iter().filter_map(|c| char::from_u32(*c)).collect();
            let claims = Claims {
                v: 1,
                origin: format!("X{text}"),
                record_id: odd.clone() + "\u{2028}\"",
                version,
                seq,
                prev: text.clone(),
                issued_at: "2026-11-29T19:00:00.000Z".into(),
                retracted,
                normaliser: odd,
                key_id: text,
                digests,
            };
            proptest::prop_assert_eq!(claims.canonical().unwrap(), canonical(&claims).unwrap());
        }
    }

    #[test]
    fn batch_verification_names_the_bad_envelope() {
        let vk = key().verifying_key();
        let envs: Vec<Envelope> = (0..40).map(|_| seal_sample()).collect();
        let items: Vec<(&Envelope, VerifyingKey)> = envs.iter().map(|e| (e, vk)).collect();
        verify_all(&items, None).unwrap();
        let mut bad = envs.clone();
        bad[33].claims.seq = 6;
        bad[35].disclosures[0].2 = json!("x");
        let items: Vec<(&Envelope, VerifyingKey)> = bad.iter().map(|e| (e, vk)).collect();
        // Disclosures are checked first: 35 is named before the signature pass finds 33.
        assert!(matches!(
            verify_all(&items, None),
            Err((35, EnvelopeError::Unlisted(_)))
        ));
        bad[35] = envs[35].clone();
        let items: Vec<(&Envelope, VerifyingKey)> = bad.iter().map(|e| (e, vk)).collect();
        assert_eq!(
            verify_all(&items, None),
            Err((33, EnvelopeError::BadSignature))
        );
    }

    /// Claims signed together share one signature over a Merkle tree of their digests: each
    /// envelope verifies alone, as a view and in a batch; a proof moved to other claims,
    /// altered, or dropped is refused, and so are claims changed after signing.
    #[test]
    fn claims_signed_in_one_tree_verify_alone_and_refuse_a_wrong_proof() {
        let vk = key().verifying_key();
        let seal_n = |n: usize| {
            let records: Vec<Value> = (0..n)
                .map(|i| {
                    let mut r = sample();
                    r["record_version"] = json!(i + 1);
                    r
                })
                .collect();
            let first = Seal {
                origin: "XAA",
                seq: 1,
                prev: GENESIS,
                issued_at: "2026-01-01T00:00:00.000Z",
                retracted: false,
                normaliser: "1",
            };
            let refs: Vec<&Value> = records.iter().collect();
            seal_tree_with(&refs, &first, &key(), |_| random_salt()).unwrap()
        };
        for n in 1..=17 {
            let envs = seal_n(n);
            assert_eq!(envs.len(), n);
            assert!(envs.iter().all(|e| e.sig == envs[0].sig));
            assert_eq!(envs[0].tree.is_some(), n > 1, "{n} claims");
            for (i, e) in envs.iter().enumerate() {
                e.verify(&vk).unwrap();
                e.view(|p| p.starts_with("/items")).verify(&vk).unwrap();
                assert_eq!(e.claims.seq, i as u64 + 1);
                if i > 0 {
                    assert_eq!(e.claims.prev, envs[i - 1].claims.digest().unwrap());
                }
                if let Some(t) = &e.tree {
                    assert_eq!((t.index, t.size), (i as u64, n as u64));
                    assert!(t.path.len() <= 5);
                }
                let wire = serde_json::to_string(e).unwrap();
                assert_eq!(serde_json::from_str::<Envelope>(&wire).unwrap(), *e);
            }
            let items: Vec<(&Envelope, VerifyingKey)> = envs.iter().map(|e| (e, vk)).collect();
            verify_all(&items, None).unwrap();
            // Leaves the caller computed are used as given: the right ones verify, another
            // envelope's leaf fails the path check, and a short list is refused.
            let mut leaves: Vec<[u8; 32]> = envs.iter().map(|e| e.claims.leaf().unwrap()).collect();
            verify_all(&items, Some(&leaves)).unwrap();
            if n > 1 {
                leaves.swap(0, 1);
                assert!(matches!(
                    verify_all(&items, Some(&leaves)),
                    Err((0, EnvelopeError::Tree(_)))
                ));
                assert!(verify_all(&items, Some(&leaves[1..])).is_err());
            }
        }
        let envs = seal_n(5);
        let tree_error = |e: &Envelope| matches!(e.verify(&vk), Err(EnvelopeError::Tree(_)));
        let mut moved = envs[1].clone();
        moved.tree = envs[2].tree.clone();
        assert!(tree_error(&moved));
        let mut altered = envs[1].clone();
        if let Some(t) = altered.tree.as_mut() {
            t.path[0] = t.root.clone();
        }
        assert!(tree_error(&altered));
        for (index, size) in [(5, 5), (0, 0), (u64::MAX - 1, u64::MAX), (0, MAX_TREE + 1)] {
            let mut out_of_range = envs[1].clone();
            if let Some(t) = out_of_range.tree.as_mut() {
                (t.index, t.size) = (index, size);
            }
            assert!(tree_error(&out_of_range), "index {index} of {size}");
        }
        let mut resized = envs[1].clone();
        if let Some(t) = resized.tree.as_mut() {
            t.size = 6;
        }
        assert!(matches!(
            resized.verify(&vk),
            Err(EnvelopeError::Tree(_) | EnvelopeError::BadSignature)
        ));
        let mut dropped = envs[1].clone();
        dropped.tree = None;
        assert_eq!(dropped.verify(&vk), Err(EnvelopeError::BadSignature));
        let mut changed = envs[1].clone();
        changed.claims.retracted = true;
        assert!(tree_error(&changed));
        // Another tree's signature on claims of this one is named in a batch, though the
        // envelopes around it share their signed message.
        let mut mixed = envs.clone();
        mixed[3].sig = seal_n(5)[3].sig.clone();
        let items: Vec<(&Envelope, VerifyingKey)> = mixed.iter().map(|e| (e, vk)).collect();
        assert_eq!(
            verify_all(&items, None),
            Err((3, EnvelopeError::BadSignature))
        );
    }

    #[test]
    fn floats_and_numeric_keys_are_refused() {
        let s = Seal {
            origin: "XAA",
            seq: 1,
            prev: GENESIS,
            issued_at: "2026-01-01T00:00:00Z",
            retracted: false,
            normaliser: "1",
        };
        assert_eq!(
            seal(&json!({"a": {"b": 1.5}}), &s, &key()).unwrap_err(),
            EnvelopeError::Float("/a/b".into())
        );
        assert_eq!(
            seal(&json!({"a": {"12": 1}}), &s, &key()).unwrap_err(),
            EnvelopeError::NumericKey("/a/12".into())
        );
    }

    /// A received disclosure whose value holds a float or a numeric object key is refused,
    /// named by its path in the record, before its digest is looked at.
    #[test]
    fn a_disclosure_with_a_float_or_numeric_key_is_refused_by_its_path() {
        let sealed = seal_sample();
        assert_eq!(sealed.check_disclosures(), Ok(()));
        let at = sealed
            .disclosures
            .iter()
            .position(|d| d.path() == "/items/1/quantity/rounds")
            .unwrap();
        let mut float = sealed.clone();
        float.disclosures[at].2 = json!(40.5);
        assert_eq!(
            float.check_disclosures(),
            Err(EnvelopeError::Float("/items/1/quantity/rounds".into()))
        );
        let mut nested = sealed.clone();
        nested.disclosures[at].2 = json!({"a": [1, {"b": 0.5}]});
        assert_eq!(
            nested.check_disclosures(),
            Err(EnvelopeError::Float(
                "/items/1/quantity/rounds/a/1/b".into()
            ))
        );
        let mut numeric = sealed;
        numeric.disclosures[at].2 = json!({"7": 1});
        assert_eq!(
            numeric.check_disclosures(),
            Err(EnvelopeError::NumericKey(
                "/items/1/quantity/rounds/7".into()
            ))
        );
    }

    /// Writes own records with `sealer` through the store; returns the store and what it wrote.
    fn stored_with(
        sealer: &impl crate::store::Sealer,
        lots: &[&str],
    ) -> (
        tempfile::TempDir,
        crate::store::Store,
        Vec<crate::store::Written>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let mut batch: Vec<_> = lots
            .iter()
            .map(|lot| crate::store::tests::prepared_as(None, lot))
            .collect();
        let written = store.create_batch(&mut batch, sealer).unwrap();
        (dir, store, written)
    }

    #[test]
    fn an_own_envelope_is_stored_compact_and_rebuilt_exactly() {
        let sealer = crate::store::tests::sealer();
        let (_dir, store, written) = stored_with(&sealer, &["LC-19-A", "WCC-20-B"]);
        let mut all_salts = HashSet::new();
        for w in &written {
            let stored = store.envelope(&w.id, w.version).unwrap().unwrap();
            let envelope = load(&store, &w.id, w.version).unwrap().unwrap();
            // The rebuilt envelope verifies, holds every leaf of the record as submitted and
            // chains to the digest the own log kept.
            envelope.verify(&sealer.key.verifying_key()).unwrap();
            let record = store.get(&w.id, Some(w.version)).unwrap().unwrap();
            assert_eq!(
                envelope.record(),
                crate::record::without_node_fields(&record)
            );
            let own = store.own_changes_after(0, 10).unwrap();
            assert!(
                own.iter()
                    .any(|c| c.id == w.id && c.digest == envelope.claims.digest().unwrap())
            );
            // The store keeps a fraction of the full envelope.
            let full = serde_json::to_vec(&envelope).unwrap();
            assert_eq!(stored[0], COMPACT);
            assert!(
                stored.len() * 3 < full.len(),
                "{} stored bytes for a {}-byte envelope",
                stored.len(),
                full.len()
            );
            // Every load rebuilds the same envelope; no two leaves of any version share a salt.
            assert_eq!(load(&store, &w.id, w.version).unwrap().unwrap(), envelope);
            let (with_record, record) =
                load_with_record(&store, &w.id, w.version).unwrap().unwrap();
            assert_eq!(with_record, envelope);
            assert_eq!(record, envelope.record());
            for d in &envelope.disclosures {
                assert!(all_salts.insert(d.0.clone()), "salt {} twice", d.0);
            }
        }
    }

    /// Writers prepare their envelopes concurrently (outside the store's write lock) but chain
    /// and sign them one at a time: the own log stays one unbroken, gap-free chain.
    #[test]
    fn concurrent_writers_keep_one_unbroken_chain() {
        let sealer = crate::store::tests::sealer();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let (writers, batches, size) = (3, 4, 70);
        std::thread::scope(|scope| {
            for w in 0..writers {
                let (store, sealer) = (&store, &sealer);
                scope.spawn(move || {
                    for b in 0..batches {
                        let mut batch: Vec<_> = (0..size)
                            .map(|i| {
                                crate::store::tests::prepared_as(None, &format!("L{w}-{b}-{i}"))
                            })
                            .collect();
                        store.create_batch(&mut batch, sealer).unwrap();
                    }
                });
            }
        });
        let own = store.own_changes_after(0, usize::MAX).unwrap();
        assert_eq!(own.len(), writers * batches * size);
        let mut prev = String::new();
        let mut signatures = HashSet::new();
        for (n, change) in own.iter().enumerate() {
            assert_eq!(change.seq, n as u64 + 1);
            let envelope = load(&store, &change.id, change.version).unwrap().unwrap();
            envelope.verify(&sealer.key.verifying_key()).unwrap();
            // Each batch of 70 is signed as trees of 16, 16, 16, 16 and 6 versions.
            let tree = envelope.tree.as_ref().unwrap();
            assert_eq!(tree.index, n as u64 % 70 % 16);
            assert_eq!(tree.size, if n % 70 < 64 { 16 } else { 6 });
            signatures.insert(envelope.sig.clone());
            assert_eq!(envelope.claims.seq, change.seq);
            assert_eq!(
                envelope.claims.prev, prev,
                "change {} does not chain",
                change.seq
            );
            assert_eq!(envelope.claims.record_id, change.id.to_string());
            prev = envelope.claims.digest().unwrap();
            assert_eq!(prev, change.digest);
        }
        assert_eq!(store.own_tail().unwrap(), (own.len() as u64, prev));
        assert_eq!(signatures.len(), writers * batches * 5);
    }

    /// Updates, retractions and records that declare their version rebuild too: every write
    /// path stores the record it sealed.
    #[test]
    fn every_write_path_stores_what_it_sealed() {
        let sealer = crate::store::tests::sealer();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let mut declared = crate::store::tests::prepared_as(None, "LC-19-A");
        declared.declared_version = Some(3);
        declared.record["record_version"] = json!(3);
        let created = store
            .create_batch(&mut [declared], &sealer)
            .unwrap()
            .remove(0);
        assert_eq!(created.version, 3);
        let mut edit = crate::store::tests::prepared_as(Some(&created.id.to_string()), "LC-19-B");
        edit.declared_version = Some(3);
        let updated = store.update(edit, &sealer).unwrap();
        let retracted = store
            .retract(created.id, "entered twice", "2026-01-02T00:00:00Z", &sealer)
            .unwrap();
        for w in [created, updated, retracted] {
            let envelope = load(&store, &w.id, w.version).unwrap().unwrap();
            envelope.verify(&sealer.key.verifying_key()).unwrap();
            assert_eq!(envelope.claims.version, w.version);
        }
        let last = load(&store, &retracted.id, retracted.version)
            .unwrap()
            .unwrap();
        assert!(last.claims.retracted);
        assert_eq!(last.record()["items"][0]["lot"]["raw"], "LC-19-B");
    }

    #[test]
    fn each_version_has_its_own_random_salt_secret() {
        let sealer = crate::store::tests::sealer();
        // The same record content sealed twice (two stores): other secrets, other salts.
        let (_a, store_a, written_a) = stored_with(&sealer, &["LC-19-A"]);
        let (_b, store_b, written_b) = stored_with(&sealer, &["LC-19-A"]);
        let secret = |store: &crate::store::Store, w: &crate::store::Written| {
            let stored = store.envelope(&w.id, w.version).unwrap().unwrap();
            let compact: Compact = serde_json::from_slice(&stored[1..]).unwrap();
            URL_SAFE_NO_PAD.decode(compact.secret).unwrap()
        };
        let (a, b) = (
            secret(&store_a, &written_a[0]),
            secret(&store_b, &written_b[0]),
        );
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let salt = |store: &crate::store::Store, w: &crate::store::Written| {
            let e = load(store, &w.id, w.version).unwrap().unwrap();
            e.disclosures
                .iter()
                .find(|d| d.path() == "/items/0/lot/raw")
                .map(|d| d.0.clone())
                .unwrap()
        };
        assert_ne!(salt(&store_a, &written_a[0]), salt(&store_b, &written_b[0]));
    }

    #[test]
    fn a_rebuild_from_a_changed_record_or_secret_is_refused() {
        let sealer = crate::store::tests::sealer();
        let (_dir, store, written) = stored_with(&sealer, &["LC-19-A"]);
        let w = &written[0];
        let stored = store.envelope(&w.id, w.version).unwrap().unwrap();
        let compact = || serde_json::from_slice::<Compact>(&stored[1..]).unwrap();
        let mut record = crate::record::without_node_fields(
            &store.get(&w.id, Some(w.version)).unwrap().unwrap(),
        );
        assert!(compact().rebuild(&record, None).is_ok());
        let refused = |c: Compact, record: &Value| c.rebuild(record, None).unwrap_err();
        let mut other_secret = compact();
        other_secret.secret = URL_SAFE_NO_PAD.encode([9u8; 32]);
        assert!(refused(other_secret, &record).contains("no longer matches"));
        let mut short_secret = compact();
        short_secret.secret = URL_SAFE_NO_PAD.encode([9u8; 8]);
        assert!(refused(short_secret, &record).contains("32 bytes"));
        record["items"][0]["lot"]["raw"] = json!("LC-19-B");
        assert!(refused(compact(), &record).contains("no longer matches"));
    }

    fn compact_with_digest(stored: &[u8], digest: &str) -> Compact {
        let mut compact: Compact = serde_json::from_slice(&stored[1..]).unwrap();
        compact.digest = digest.to_owned();
        compact
    }

    /// An own version signed in a tree is stored with the tree's root only; its path is made
    /// again from the own log, and a root, place or digest that does not fit is refused.
    #[test]
    fn a_stored_tree_is_rebuilt_from_the_own_log_and_checked() {
        let sealer = crate::store::tests::sealer();
        let lots = ["A-1", "A-2", "A-3", "A-4", "A-5"];
        let (_dir, store, written) = stored_with(&sealer, &lots);
        let vk = sealer.key.verifying_key();
        let envelopes: Vec<Envelope> = written
            .iter()
            .map(|w| load(&store, &w.id, w.version).unwrap().unwrap())
            .collect();
        for (n, e) in envelopes.iter().enumerate() {
            e.verify(&vk).unwrap();
            let tree = e.tree.as_ref().unwrap();
            assert_eq!((tree.index, tree.size), (n as u64, 5));
            assert_eq!(tree.root, envelopes[0].tree.as_ref().unwrap().root);
            assert!(!tree.path.is_empty());
        }
        // One loader makes the tree once and gives the same envelopes.
        let mut loader = Loader::new(&store);
        for (w, e) in written.iter().zip(&envelopes) {
            let (loaded, record) = loader.with_record(&w.id, w.version).unwrap().unwrap();
            assert_eq!(&loaded, e);
            assert_eq!(record, e.record());
        }
        assert_eq!(loader.trees.len(), 1);
        let w = &written[2];
        let stored = store.envelope(&w.id, w.version).unwrap().unwrap();
        let compact: Compact = serde_json::from_slice(&stored[1..]).unwrap();
        // A tree already made serves a version only if its leaf there is the version's digest.
        let mut other = compact_with_digest(&stored, &envelopes[1].claims.digest().unwrap());
        assert!(
            loader
                .place(compact.tree.as_ref().unwrap(), &other)
                .is_err()
        );
        other.digest = compact.digest.clone();
        assert!(loader.place(compact.tree.as_ref().unwrap(), &other).is_ok());
        assert!(
            stored.len() < 600,
            "{} bytes stored for an own envelope",
            stored.len()
        );
        let t = compact.tree.as_ref().unwrap();
        let seq = compact.claims.seq;
        assert!(t.rebuild(&store, seq, &compact.digest).is_ok());
        let other = |root: &str, size: u64, index: u64| StoredTree {
            root: root.to_owned(),
            size,
            index,
        };
        let refused = |tree: StoredTree, digest: &str| tree.rebuild(&store, seq, digest).is_err();
        assert!(refused(other(&compact.digest, 5, 2), &compact.digest));
        assert!(refused(other(&t.root, 5, 3), &compact.digest));
        for (size, index) in [(0, 0), (17, 2), (5, 5), (5, u64::MAX)] {
            assert!(refused(other(&t.root, size, index), &compact.digest));
        }
        assert!(refused(
            other(&t.root, 5, 2),
            &envelopes[1].claims.digest().unwrap()
        ));
    }

    /// Seals as nodes did before compact storage: whole envelopes, random salts.
    struct WholeSealer(SigningKey);

    impl crate::store::Sealer for WholeSealer {
        type Pending = (Value, bool);

        fn prepare(&self, item: &crate::store::ToSeal<'_>) -> Result<(Value, bool), String> {
            Ok((
                crate::record::without_node_fields(item.record),
                item.retracted,
            ))
        }

        fn seal(
            &self,
            batch: Vec<(Value, bool)>,
            first_seq: u64,
            prev: &str,
        ) -> Result<Vec<crate::store::Sealed>, String> {
            let mut prev = prev.to_owned();
            let mut out = Vec::new();
            for (n, (record, retracted)) in batch.into_iter().enumerate() {
                let s = Seal {
                    origin: "XAA",
                    seq: first_seq + n as u64,
                    prev: &prev,
                    issued_at: "2026-01-01T00:00:00Z",
                    retracted,
                    normaliser: "2",
                };
                let envelope = seal(&record, &s, &self.0).map_err(|e| e.to_string())?;
                prev = envelope.claims.digest().map_err(|e| e.to_string())?;
                out.push(crate::store::Sealed {
                    envelope: serde_json::to_vec(&envelope).map_err(|e| e.to_string())?,
                    digest: prev.clone(),
                });
            }
            Ok(out)
        }
    }

    #[test]
    fn whole_envelopes_stored_before_still_load() {
        let sealer = WholeSealer(key());
        let (_dir, store, written) = stored_with(&sealer, &["LC-19-A"]);
        let w = &written[0];
        let envelope = load(&store, &w.id, w.version).unwrap().unwrap();
        envelope.verify(&key().verifying_key()).unwrap();
        assert_eq!(envelope.record()["items"][0]["lot"]["raw"], "LC-19-A");
    }
}

/// The test vectors in `schemas/vectors/`: made from a fixed key and fixed salts, checked
/// against the files (set `AMMOTRACE_WRITE_VECTORS=1` to rewrite them after a deliberate
/// format change).
#[cfg(test)]
mod vectors {
    use super::*;
    use crate::policy::{LocationPrecision, Mode, Policy};
    use serde_json::json;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/vectors")
    }

    fn salt(path: &str) -> String {
        URL_SAFE_NO_PAD.encode(&Sha256::digest(format!("ammotrace-vector-salt{path}"))[..16])
    }

    fn record() -> Value {
        json!({
            "schema_version": "0.1-draft",
            "record_id": "01900000-0000-7000-8000-00000000a001",
            "record_version": 1,
            "originating_state": "XAA",
            "created_at": "2026-05-01T10:00:00Z",
            "event": {
                "event_type": "seizure",
                "date": {"start": "2026-04-28", "precision": "day"},
                "location": {"country": "XAA", "admin1": "XAA-NO", "place_name": "Port A",
                             "point": {"lat_e6": 12345678, "lon_e6": -2345678}, "precision": "exact_point"}
            },
            "items": [{
                "item_id": "i1", "item_category": "small_arms_ammunition",
                "calibre": {"raw": "7.62x39"}, "headstamp": {"present": true, "raw_transcription": "539 85"},
                "lot": {"raw": "21-85 539"}, "quantity": {"count": 1080, "unit": "rounds"}
            }],
            "case_refs": [{"system": "national_police", "ref": "CASE-2026-0042"}],
            "sharing": {"tlp": "GREEN"}
        })
    }

    fn build() -> Vec<(&'static str, Value)> {
        let seed = [42u8; 32];
        let key = SigningKey::from_bytes(&seed);
        let vk = key.verifying_key();
        let s = Seal {
            origin: "XAA",
            seq: 1,
            prev: GENESIS,
            issued_at: "2026-05-01T10:00:00.000Z",
            retracted: false,
            normaliser: "1",
        };
        let record = record();
        let envelope = seal_with(&record, &s, &key, salt).unwrap();
        let policy = Policy {
            mode: Mode::Replicate,
            categories: vec!["*".into()],
            fields: vec!["*".into()],
            location_precision: LocationPrecision::Admin1,
            ..Policy::default()
        };
        let decision = crate::policy::decide("XBB", &policy, &record, &envelope.paths(), 0);
        let allowed: HashSet<&str> = decision.disclosed().collect();
        let view = envelope.view(|p| allowed.contains(p));
        let key_fields = json!({
            "seed": URL_SAFE_NO_PAD.encode(seed),
            "public_key": URL_SAFE_NO_PAD.encode(vk.as_bytes()),
            "key_id": crate::identity::key_id(&vk),
        });
        let salts: Map<String, Value> = envelope
            .disclosures
            .iter()
            .map(|d| (d.1.clone(), json!(d.0)))
            .collect();
        let digests: Map<String, Value> = envelope
            .disclosures
            .iter()
            .map(|d| (d.1.clone(), json!(d.digest().unwrap())))
            .collect();
        let jcs = String::from_utf8(canonical(&envelope.claims).unwrap()).unwrap();
        let positive = json!({
            "description": "A record version sealed by XAA with a fixed key and fixed salts, and the view XBB receives under a replicate policy with location at admin1 and no case references.",
            "key": key_fields,
            "record": record,
            "seal": {"origin": "XAA", "seq": 1, "prev": GENESIS, "issued_at": s.issued_at, "retracted": false, "normaliser": "1"},
            "salts": salts,
            "disclosures": envelope.disclosures,
            "digests": digests,
            "claims": envelope.claims,
            "signed_jcs": jcs,
            "sig": envelope.sig,
            "envelope": envelope,
            "view": {"partner": "XBB", "policy": policy, "envelope": view, "record": view.record()},
        });
        let mut out = vec![("sealed-record.json", positive)];
        // Changes 2 to 4, sealed together with one signature over the tree of their claims.
        let more: Vec<Value> = (2..=4)
            .map(|n| {
                let mut r = record.clone();
                r["record_id"] = json!(format!("01900000-0000-7000-8000-00000000a00{n}"));
                r["items"][0]["lot"]["raw"] = json!(format!("21-85 53{n}"));
                r
            })
            .collect();
        let refs: Vec<&Value> = more.iter().collect();
        let after = envelope.claims.digest().unwrap();
        let first = Seal {
            seq: 2,
            prev: &after,
            ..s.clone()
        };
        let tree = seal_tree_with(&refs, &first, &key, salt).unwrap();
        let head = tree[0].tree.as_ref().unwrap().head().unwrap();
        out.push((
            "signed-tree.json",
            json!({
                "description": "Three record versions XAA sealed together after sealed-record.json (changes 2 to 4), with one signature over the RFC 6962 Merkle tree of their claims: for each, its leaf (SHA-256 of JCS(claims), base64url) and its envelope, whose `tree` gives its place and audit path; the tree head whose JCS was signed; the signature.",
                "key": key_fields,
                "records": more,
                "seal": {"origin": "XAA", "first_seq": 2, "prev": after, "issued_at": s.issued_at, "retracted": false, "normaliser": "1"},
                "leaves": tree.iter().map(|e| e.claims.digest().unwrap()).collect::<Vec<_>>(),
                "signed_jcs": String::from_utf8(head).unwrap(),
                "sig": tree[0].sig,
                "envelopes": tree,
            }),
        ));
        let negative =
            |name: &'static str, description: &str, env: Envelope, error: EnvelopeError| {
                (
                    name,
                    json!({
                        "description": description,
                        "key": key_fields,
                        "envelope": env,
                        "error": format!("{error:?}"),
                        "message": error.to_string(),
                    }),
                )
            };
        let mut t = envelope.clone();
        let i = t
            .disclosures
            .iter()
            .position(|d| d.1 == "/items/0/lot/raw")
            .unwrap();
        t.disclosures[i].2 = json!("21-85 538");
        out.push(negative(
            "tampered-value.json",
            "A disclosure's value was changed: its digest is not in the claims.",
            t,
            EnvelopeError::Unlisted("/items/0/lot/raw".into()),
        ));
        let mut t = envelope.clone();
        t.disclosures.push(Disclosure(
            salt("/foreign"),
            "/items/0/lot/raw".into(),
            json!("21-85 538"),
        ));
        t.disclosures.swap_remove(i);
        out.push(negative(
            "foreign-disclosure.json",
            "A disclosure the origin never made replaces a genuine one.",
            t,
            EnvelopeError::Unlisted("/items/0/lot/raw".into()),
        ));
        let mut t = envelope.clone();
        t.disclosures.push(t.disclosures[i].clone());
        out.push(negative(
            "duplicated-path.json",
            "Two disclosures share a path.",
            t,
            EnvelopeError::DuplicatePath("/items/0/lot/raw".into()),
        ));
        let other = SigningKey::from_bytes(&[43u8; 32]);
        let t = seal_with(&record, &s, &other, salt).unwrap();
        let mut t2 = t.clone();
        t2.claims.key_id = envelope.claims.key_id.clone();
        out.push(negative(
            "wrong-key.json",
            "Signed by another key while naming the vector key.",
            t2,
            EnvelopeError::BadSignature,
        ));
        let mut t = tree[0].clone();
        t.tree = tree[1].tree.clone();
        out.push(negative(
            "tree-wrong-leaf.json",
            "Claims from signed-tree.json carrying another version's place in the tree.",
            t,
            EnvelopeError::Tree("the path does not lead from the claims to the root".into()),
        ));
        let mut t = envelope.clone();
        t.claims.retracted = true;
        out.push(negative(
            "tampered-claims.json",
            "The signed part was changed after signing.",
            t,
            EnvelopeError::BadSignature,
        ));
        out
    }

    #[test]
    fn vectors_follow_the_schemas() {
        let load = |name: &str| -> Value {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../schemas")
                .join(name);
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        };
        let envelope_schema = load("envelope.schema.json");
        let validator = jsonschema::validator_for(&envelope_schema).unwrap();
        let policy_validator = jsonschema::validator_for(&load("policy.schema.json")).unwrap();
        for (name, value) in build() {
            let envelopes = match value.get("envelopes") {
                Some(Value::Array(all)) => all.clone(),
                _ => vec![value["envelope"].clone()],
            };
            for envelope in envelopes {
                validator
                    .validate(&envelope)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            if value.get("view").is_some() {
                validator.validate(&value["view"]["envelope"]).unwrap();
                policy_validator.validate(&value["view"]["policy"]).unwrap();
            }
        }
        let mut page_schema = envelope_schema.clone();
        page_schema["$ref"] = json!("#/$defs/keyHistory");
        let history = crate::identity::KeyHistory::new(
            "XAA",
            &SigningKey::from_bytes(&[42u8; 32]).verifying_key(),
            "2026-05-01T10:00:00.000Z",
        );
        jsonschema::validator_for(&page_schema)
            .unwrap()
            .validate(&serde_json::to_value(history).unwrap())
            .unwrap();
        assert!(
            policy_validator
                .validate(&json!({"mode": "sometimes"}))
                .is_err()
        );
        assert!(
            policy_validator
                .validate(&json!({"max_tlp": "RED"}))
                .is_err()
        );
    }

    #[test]
    fn vectors_match_the_files_and_verify_as_documented() {
        let vk = SigningKey::from_bytes(&[42u8; 32]).verifying_key();
        let built = build();
        if std::env::var_os("AMMOTRACE_WRITE_VECTORS").is_some() {
            std::fs::create_dir_all(dir()).unwrap();
            for (name, value) in &built {
                let mut text = serde_json::to_string_pretty(value).unwrap();
                text.push('\n');
                std::fs::write(dir().join(name), text).unwrap();
            }
        }
        for (name, value) in &built {
            let file: Value =
                serde_json::from_slice(&std::fs::read(dir().join(name)).unwrap()).unwrap();
            assert_eq!(&file, value, "{name} differs from what the code makes");
            if let Some(envelopes) = file.get("envelopes") {
                let envelopes: Vec<Envelope> = serde_json::from_value(envelopes.clone()).unwrap();
                for (n, env) in envelopes.iter().enumerate() {
                    env.verify(&vk).unwrap();
                    assert_eq!(env.record(), file["records"][n]);
                    assert_eq!(env.sig, file["sig"].as_str().unwrap());
                    assert_eq!(file["leaves"][n], json!(env.claims.digest().unwrap()));
                    let head = env.tree.as_ref().unwrap().head().unwrap();
                    assert_eq!(file["signed_jcs"], json!(String::from_utf8(head).unwrap()));
                }
                continue;
            }
            let env: Envelope = serde_json::from_value(file["envelope"].clone()).unwrap();
            match file.get("error") {
                None => {
                    env.verify(&vk).unwrap();
                    let view: Envelope =
                        serde_json::from_value(file["view"]["envelope"].clone()).unwrap();
                    view.verify(&vk).unwrap();
                    assert_eq!(env.record(), file["record"]);
                    assert!(!file["view"]["record"].to_string().contains("Port A"));
                }
                Some(error) => {
                    let got = env.verify(&vk).unwrap_err();
                    assert_eq!(&json!(format!("{got:?}")), error, "{name}");
                }
            }
        }
    }
}
