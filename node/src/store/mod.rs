//! The source of truth: records, every version, and the change log, in sled (=0.34.7).
//!
//! This is the only module that imports sled. Trees and their keys:
//! - `record_head`: `RecordId(16)` → `version u32 BE ‖ retracted u8`, then for a partner's record
//!   its origin (since decision 0022)
//! - `record_versions`: `RecordId(16) ‖ version u32 BE` → the record version, JSON (values
//!   here and in `envelopes` are LZ4-compressed, marked by a leading `0x01`; see `pack`);
//!   since decision 0014 without its headstamp and calibre interpretations, which it refers
//!   to (`0x03` and the references first: [`encoding`]); since decision 0015 with the
//!   version's envelope in front (`0x04`), so that a version is one insert
//! - `interpretations`: the SHA-256 of its JSON → a headstamp or calibre
//!   interpretation (`derived`), packed: each distinct one once, written in the transaction
//!   of the first version that refers to it
//! - `change_groups`: the change log, up to 8 consecutive entries per value, keyed by the last
//!   one's `seq u64 BE`; an entry is `RecordId(16) ‖ version u32 BE ‖ retracted u8 ‖ created u8`
//!   ([`log`], decision 0016). `changes` holds the entries of stores written before, one per
//!   `seq` key, and is read only
//! - `meta`: `b"last_seq"` → `u64 BE`; `b"own_seq"` → `u64 BE`; `b"own_head"` → digest;
//!   `note:NAME` → text ([`Store::note`]; `note:secret:NAME` the node's secrets)
//! - `envelopes` (written before decision 0015, read only since: a version now holds its
//!   envelope): `RecordId(16) ‖ version u32 BE` → the signed envelope: for own records what
//!   the sealer gave (since decision 0011 a compact form, `0x02` then JSON, from which
//!   `envelope::load` rebuilds the envelope; before, the whole envelope as JSON); for
//!   partners' records the view received, JSON
//! - `own_groups`: this node's own changes, the sequence its partners pull (hash-chained
//!   through the claims), grouped like the change log; an entry is `RecordId(16) ‖ version
//!   u32 BE ‖ digest length u8 ‖ claims digest`. `own_log` holds those of stores written
//!   before decision 0016, one per `own_seq u64 BE` key (`RecordId(16) ‖ version u32 BE ‖
//!   claims digest`), and is read only
//! - `cursors`: origin → JSON [`Cursor`]: how far this node has pulled each partner's feed
//! - `receipts`: `RecordId(16) ‖ partner` → JSON receipt entry
//! - `nonces`: `sender ‖ 0 ‖ nonce` → `unix seconds i64 BE`: request nonces already seen
//! - `replicas`: `RecordId(16)` → origin: records that arrived from a partner's feed before
//!   decision 0022 (since, the head names the origin); read only
//! - `hit_refs`: opaque reference → JSON: what a hit/no-hit answer referred to, for follow-up
//! - `requests`: `in:ID` / `out:ID` → JSON: disclosure requests received and sent
//! - `disclosed`: `partner ‖ 0xFF ‖ RecordId(16)` → `version u32 BE`: the latest version of
//!   each own record this node has sent each partner (by feed or grant), so a retraction
//!   reaches every partner that holds the record, whatever its policy says now
//!
//! Every write is one sled transaction over the trees it touches: the version, its
//! interpretations, the head and the change-log entry appear together or not at all. A write
//! is acknowledged only after [`Store::flush`]; the API calls it before answering (a batch
//! shares one flush).

use std::path::Path;

use serde_json::Value;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::record::{Prepared, RecordId};

mod encoding;
mod log;

use log::Groups;

use encoding::{
    Encoded, InterpretationId, Names, decode_record, encode_record, pack, split_version, to_bytes,
    unpack, version_value,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("record {0} already exists")]
    Exists(RecordId),
    #[error("record {0} not found")]
    NotFound(RecordId),
    #[error("record {id} is at version {current}; the edit is based on version {submitted}")]
    VersionConflict {
        id: RecordId,
        current: u32,
        submitted: u32,
    },
    #[error("record {0} is at the highest version number: it takes no further version")]
    VersionLimit(RecordId),
    #[error("record {0} is retracted")]
    Retracted(RecordId),
    #[error("record {0} appears twice in one batch")]
    DuplicateInBatch(RecordId),
    /// (Not a `source`: its text is already in this message, and error chains print it once.)
    #[error("storage error: {0}")]
    Sled(sled::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot sign: {0}")]
    Seal(String),
    #[error("record {0} belongs to another State: it changes only through its origin's feed")]
    Foreign(RecordId),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        StoreError::Sled(e)
    }
}

/// What sealing gives back for one record version: the signed envelope as the store keeps it
/// (see [`crate::envelope::load`]) and the digest of its claims (the link of the own-change
/// hash chain).
pub struct Sealed {
    pub envelope: Vec<u8>,
    pub digest: String,
}

/// One own record version to seal.
pub struct ToSeal<'a> {
    pub record: &'a Value,
    pub retracted: bool,
}

/// Signs own record versions as they are written (implemented with the node key, see
/// [`crate::envelope`]), in two steps:
/// - [`Sealer::prepare`] does what does not depend on the version's place in the own log (for
///   the node's envelopes: the salts and the disclosures' digests). A batch of new records is
///   prepared before the store's write lock is taken, so concurrent writers overlap it;
/// - [`Sealer::seal`] chains and signs, under the lock. `first_seq` is the own sequence number
///   of the first, `prev` the digest of the change before it; the n-th result must chain to
///   the (n-1)-th.
pub trait Sealer: Send + Sync {
    type Pending: Send;
    fn prepare(&self, item: &ToSeal<'_>) -> Result<Self::Pending, String>;
    fn seal(
        &self,
        batch: Vec<Self::Pending>,
        first_seq: u64,
        prev: &str,
    ) -> Result<Vec<Sealed>, String>;
}

/// How far this node has pulled one partner's feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The origin's last change sequence number applied here.
    pub after: u64,
    /// Its claims digest: the next change's `prev` must equal it.
    pub prev: String,
    /// Digest of the policy the feed was served under; a change replays the feed.
    pub policy: String,
}

/// One partner's record version to store, already verified.
pub struct Replica {
    pub id: RecordId,
    pub version: u32,
    /// The record its envelope shows ([`crate::envelope::Envelope::replica_record`]), for the
    /// index. The store keeps the envelope alone and makes the record again from it as it
    /// reads it (decision 0019).
    pub record: Value,
    /// The envelope as received (JSON).
    pub envelope: Vec<u8>,
    pub retracted: bool,
}

/// A record version as stored ([`Store::stored`]): one read serves both its envelope and its
/// record, which since decision 0015 share one sled value.
pub struct StoredVersion {
    id: RecordId,
    version: u32,
    value: sled::IVec,
    /// The envelope of a version written before decision 0015, stored apart.
    apart: Option<sled::IVec>,
}

impl StoredVersion {
    /// The envelope (own: as the sealer gave it; a partner's: the view received), if any.
    pub fn envelope(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let envelope = match (split_version(&self.value, &self.id)?, &self.apart) {
            ((Some(envelope), _), _) => envelope,
            ((None, _), Some(apart)) => apart,
            ((None, _), None) => return Ok(None),
        };
        Ok(Some(unpack(envelope, &self.id)?.into_owned()))
    }

    /// The record as `parse` reads its JSON *without* the headstamp and calibre
    /// interpretations (`derived`) the store keeps apart ([`encoding`]): for readers that skip
    /// them, at no cost of looking them up. [`Store::get`] reads the whole record.
    pub fn bare_with<T>(
        &self,
        parse: impl FnOnce(&[u8]) -> serde_json::Result<T>,
    ) -> Result<T, StoreError> {
        parse(&decode_record(&self.value, &self.id)?.json)
            .map_err(|e| StoreError::Corrupt(format!("{} v{}: {e}", self.id, self.version)))
    }
}

/// One own change as the feed serves it.
#[derive(Debug, Clone)]
pub struct OwnChange {
    pub seq: u64,
    pub id: RecordId,
    pub version: u32,
    pub digest: String,
}

/// Where a write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub id: RecordId,
    pub version: u32,
    pub seq: u64,
}

/// A stored record as a reader sees it: with this node's `derived` interpretations.
fn shown(mut record: Value) -> Value {
    crate::record::derive(&mut record);
    record
}

/// One entry of the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub id: RecordId,
    pub version: u32,
    pub retracted: bool,
    /// The record's first version: nothing of it was indexed before.
    pub created: bool,
}

/// The latest version of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub version: u32,
    pub retracted: bool,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    head: sled::Tree,
    versions: sled::Tree,
    /// Change-log entries one per key, written before decision 0016; read only.
    changes: sled::Tree,
    change_groups: sled::Tree,
    meta: sled::Tree,
    envelopes: sled::Tree,
    /// Own-log entries one per key, written before decision 0016; read only.
    own_log: sled::Tree,
    own_groups: sled::Tree,
    cursors: sled::Tree,
    receipts: sled::Tree,
    nonces: sled::Tree,
    replicas: sled::Tree,
    hit_refs: sled::Tree,
    requests: sled::Tree,
    disclosed: sled::Tree,
    interpretations: sled::Tree,
    /// Receipts for pages applied from partners, until each partner has taken its own.
    receipt_outbox: sled::Tree,
    names: std::sync::Arc<Names>,
    /// Serialises writes of own records: the own sequence and its hash chain are assigned
    /// and signed outside the transaction, so no two writers may interleave.
    write_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// The last change known to be on disk ([`Store::durable_seq`]).
    durable: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

const LAST_SEQ: &[u8] = b"last_seq";
const OWN_SEQ: &[u8] = b"own_seq";
const OWN_HEAD: &[u8] = b"own_head";

fn read_u64(bytes: Option<sled::IVec>, what: &str) -> Result<u64, StoreError> {
    match bytes {
        Some(b) => Ok(u64::from_be_bytes(
            b.as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt(what.into()))?,
        )),
        None => Ok(0),
    }
}

fn version_key(id: &RecordId, version: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(id.as_bytes());
    key[16..].copy_from_slice(&version.to_be_bytes());
    key
}

/// `version u32 BE ‖ retracted u8`, then for a partner's record its origin (decision 0022):
/// one write where there were two. Heads written before it end after the flag, and a
/// partner's record then has its origin in the `replicas` tree.
fn encode_head(head: Head, origin: Option<&str>) -> Vec<u8> {
    let origin = origin.map(str::as_bytes).unwrap_or_default();
    let mut v = Vec::with_capacity(5 + origin.len());
    v.extend_from_slice(&head.version.to_be_bytes());
    v.push(u8::from(head.retracted));
    v.extend_from_slice(origin);
    v
}

/// The origin of the record whose head value is `head`: the one the head names (decision
/// 0022), or for a head written before, what `replicas` holds (`legacy`, read only then).
/// `None` for an own record.
fn head_origin<E>(
    head: &[u8],
    legacy: impl FnOnce() -> Result<Option<sled::IVec>, E>,
) -> Result<Option<sled::IVec>, E> {
    match head.get(5..).filter(|o| !o.is_empty()) {
        Some(origin) => Ok(Some(sled::IVec::from(origin))),
        None => legacy(),
    }
}

/// A receipt's key: the record id, then the partner's id.
/// A receipt owed to a partner: its outbox key, and the applied versions it lists (JSON).
pub type OwedReceipt = (Vec<u8>, Vec<u8>);

/// Outbox key of the receipt owed to `origin` for the page that ended at `after`.
fn outbox_key(origin: &str, after: u64) -> Vec<u8> {
    let mut key = origin.as_bytes().to_vec();
    key.push(0xFF);
    key.extend_from_slice(&after.to_be_bytes());
    key
}

fn receipt_key(id: &RecordId, partner: &str) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.extend_from_slice(partner.as_bytes());
    key
}

/// `partner ‖ 0xFF ‖ RecordId(16)`: a partner id is ASCII, so the byte 0xFF ends it.
fn disclosed_key(partner: &str, id: &RecordId) -> Vec<u8> {
    let mut key = Vec::with_capacity(partner.len() + 17);
    key.extend_from_slice(partner.as_bytes());
    key.push(0xFF);
    key.extend_from_slice(id.as_bytes());
    key
}

fn decode_head(bytes: &[u8]) -> Option<Head> {
    let version = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    Some(Head {
        version,
        retracted: *bytes.get(4)? == 1,
    })
}

type Tx<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The head, versions and meta trees of a write.
type Trees<'a> = (
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
);

/// Records an own version's own-log entry inside a transaction (its envelope is in the version's
/// value: [`encoding::version_value`]).
fn append_own(
    own_log: &mut Groups<'_>,
    meta: &TransactionalTree,
    id: &RecordId,
    version: u32,
    own_seq: u64,
    sealed: &Sealed,
) -> Tx<()> {
    own_log.push_own(own_seq, id, version, &sealed.digest)?;
    meta.insert(OWN_SEQ, &own_seq.to_be_bytes())?;
    meta.insert(OWN_HEAD, sealed.digest.as_bytes())?;
    Ok(())
}

/// One version to append ([`append`]).
struct NewVersion<'a> {
    id: &'a RecordId,
    version: u32,
    /// The version's stored form with its envelope ([`encoding::version_value`]).
    value: &'a [u8],
    retracted: bool,
    /// The record's first version.
    created: bool,
    /// The partner whose record it is; `None` for an own record.
    origin: Option<&'a str>,
}

/// Appends one version inside a transaction; returns its sequence number. The change-log
/// entry goes to `changes`, which the caller finishes before the transaction ends.
fn append(
    (head, versions, meta): Trees<'_>,
    changes: &mut Groups<'_>,
    new: NewVersion<'_>,
) -> Tx<u64> {
    let NewVersion {
        id,
        version,
        value,
        retracted,
        created,
        origin,
    } = new;
    let last = match meta.get(LAST_SEQ)? {
        Some(b) => u64::from_be_bytes(b.as_ref().try_into().map_err(|_| {
            ConflictableTransactionError::Abort(StoreError::Corrupt("last_seq".into()))
        })?),
        None => 0,
    };
    let seq = last + 1;
    meta.insert(LAST_SEQ, &seq.to_be_bytes())?;
    versions.insert(&version_key(id, version), value)?;
    head.insert(
        id.as_bytes(),
        encode_head(Head { version, retracted }, origin),
    )?;
    changes.push_change(&Change {
        seq,
        id: *id,
        version,
        retracted,
        created,
    })?;
    Ok(seq)
}

fn abort<T>(e: StoreError) -> Tx<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn flatten<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

/// The JSON value stored at `key`, if any.
fn json_at(tree: &sled::Tree, key: &[u8], what: &str) -> Result<Option<Value>, StoreError> {
    tree.get(key)?
        .map(|b| {
            serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
        })
        .transpose()
}

/// The interpretations that versions about to be written refer to, each once.
fn interpretations_of<'a>(
    versions: impl IntoIterator<Item = &'a Encoded>,
) -> std::collections::BTreeMap<InterpretationId, &'a [u8]> {
    versions
        .into_iter()
        .flat_map(|e| e.interpretations.iter())
        .map(|(id, json)| (*id, json.as_ref()))
        .collect()
}

/// Writes, inside the transaction that writes the versions referring to them, the
/// interpretations the tree does not hold yet.
fn keep_interpretations(
    tree: &TransactionalTree,
    interpretations: &std::collections::BTreeMap<InterpretationId, &[u8]>,
) -> Tx<()> {
    for (id, json) in interpretations {
        if tree.get(id)?.is_none() {
            tree.insert(&id[..], pack(json))?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(256 * 1024 * 1024)
            .open()?;
        let store = Store {
            head: db.open_tree("record_head")?,
            versions: db.open_tree("record_versions")?,
            changes: db.open_tree("changes")?,
            change_groups: db.open_tree("change_groups")?,
            meta: db.open_tree("meta")?,
            envelopes: db.open_tree("envelopes")?,
            own_log: db.open_tree("own_log")?,
            own_groups: db.open_tree("own_groups")?,
            cursors: db.open_tree("cursors")?,
            receipts: db.open_tree("receipts")?,
            nonces: db.open_tree("nonces")?,
            replicas: db.open_tree("replicas")?,
            hit_refs: db.open_tree("hit_refs")?,
            requests: db.open_tree("requests")?,
            disclosed: db.open_tree("disclosed")?,
            interpretations: db.open_tree("interpretations")?,
            receipt_outbox: db.open_tree("receipt_outbox")?,
            names: Default::default(),
            write_lock: Default::default(),
            durable: Default::default(),
            db,
        };
        // What sled recovered on opening is on disk.
        store
            .durable
            .store(store.last_seq()?, std::sync::atomic::Ordering::Release);
        store.backfill_disclosed()?;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The trees an own write touches, for one transaction.
    #[allow(clippy::type_complexity)]
    fn own_write_trees(
        &self,
    ) -> (
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
    ) {
        (
            &self.head,
            &self.versions,
            &self.change_groups,
            &self.meta,
            &self.own_groups,
            &self.interpretations,
        )
    }

    /// The last own sequence number and its claims digest.
    pub fn own_tail(&self) -> Result<(u64, String), StoreError> {
        let seq = read_u64(self.meta.get(OWN_SEQ)?, "own_seq")?;
        let head = self
            .meta
            .get(OWN_HEAD)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Ok((seq, head))
    }

    /// Called with the write lock held.
    fn seal<S: Sealer>(
        &self,
        sealer: &S,
        batch: Vec<S::Pending>,
    ) -> Result<(u64, Vec<Sealed>), StoreError> {
        let (seq, prev) = self.own_tail()?;
        let expected = batch.len();
        let mut sealed = sealer
            .seal(batch, seq + 1, &prev)
            .map_err(StoreError::Seal)?;
        if sealed.len() != expected {
            return Err(StoreError::Seal(format!(
                "the sealer returned {} envelopes for {expected} versions",
                sealed.len()
            )));
        }
        for s in &mut sealed {
            s.envelope = pack(&s.envelope);
        }
        Ok((seq + 1, sealed))
    }

    /// Makes every write so far durable (fsync of sled's log). Call before acknowledging.
    pub fn flush(&self) -> Result<(), StoreError> {
        // Read first: every change up to it is in what the flush writes out.
        let last = self.last_seq()?;
        self.db.flush()?;
        self.durable
            .fetch_max(last, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// The last change known to be on disk: the last one when the store was opened or, since,
    /// when a [`Store::flush`] began. A change after it may still be lost by a crash, so
    /// nothing derived from it may outlive one (the search index commits up to here only).
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stores new records (version 1, or the version they declare) in one transaction: all of
    /// them or none.
    pub fn create_batch(
        &self,
        batch: &mut [Prepared],
        sealer: &impl Sealer,
    ) -> Result<Vec<Written>, StoreError> {
        let mut ids = std::collections::HashSet::new();
        for p in batch.iter() {
            if !ids.insert(p.id) {
                return Err(StoreError::DuplicateInBatch(p.id));
            }
        }
        for p in batch.iter_mut() {
            let version = p.declared_version.unwrap_or(1);
            if let Some(o) = p.record.as_object_mut() {
                o.insert("record_version".into(), Value::from(version));
            }
        }
        let encoded: Vec<(RecordId, u32, Encoded)> = batch
            .iter()
            .map(|p| {
                (
                    p.id,
                    p.declared_version.unwrap_or(1),
                    encode_record(&p.record, &self.names),
                )
            })
            .collect();
        let interpretations = interpretations_of(encoded.iter().map(|(_, _, e)| e));
        // A fast refusal before any sealing work; the check inside the transaction below is
        // the one that holds when two writers race.
        for (id, _, _) in &encoded {
            if self.head.contains_key(id.as_bytes())? {
                return Err(StoreError::Exists(*id));
            }
        }
        let started = std::time::Instant::now();
        let pending = batch
            .iter()
            .map(|p| {
                sealer.prepare(&ToSeal {
                    record: &p.record,
                    retracted: false,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Seal)?;
        let waited = std::time::Instant::now();
        let _guard = self.lock();
        let locked = std::time::Instant::now();
        let (first_own, sealed) = self.seal(sealer, pending)?;
        let values = encoded
            .iter()
            .zip(&sealed)
            .map(|((_, _, stored), sealed)| version_value(&stored.bytes, &sealed.envelope))
            .collect::<Result<Vec<_>, _>>()?;
        let sealed_at = std::time::Instant::now();
        let trees = self.own_write_trees();
        let result = flatten(trees.transaction(|t| {
            keep_interpretations(&t.5, &interpretations)?;
            let (mut changes, mut own) = (Groups::new(&t.2), Groups::new(&t.4));
            let mut written = Vec::with_capacity(encoded.len());
            for (n, ((id, version, _), value)) in encoded.iter().zip(&values).enumerate() {
                if t.0.get(id.as_bytes())?.is_some() {
                    return abort(StoreError::Exists(*id));
                }
                let seq = append(
                    (&t.0, &t.1, &t.3),
                    &mut changes,
                    NewVersion {
                        id,
                        version: *version,
                        value,
                        retracted: false,
                        created: true,
                        origin: None,
                    },
                )?;
                append_own(
                    &mut own,
                    &t.3,
                    id,
                    *version,
                    first_own + n as u64,
                    &sealed[n],
                )?;
                written.push(Written {
                    id: *id,
                    version: *version,
                    seq,
                });
            }
            changes.finish()?;
            own.finish()?;
            Ok(written)
        }));
        tracing::debug!(
            records = encoded.len(),
            stored = result.is_ok(),
            prepare_ms = (waited - started).as_millis() as u64,
            lock_wait_ms = (locked - waited).as_millis() as u64,
            seal_ms = (sealed_at - locked).as_millis() as u64,
            transaction_ms = sealed_at.elapsed().as_millis() as u64,
            "batch stored"
        );
        result
    }

    /// Stores a new version of an existing record. A declared `record_version` is the version
    /// the edit was based on (the one the editor read): it must still be the latest, or the
    /// edit would silently undo someone else's. `created_at` is kept from the previous version.
    pub fn update(
        &self,
        mut prepared: Prepared,
        sealer: &impl Sealer,
    ) -> Result<Written, StoreError> {
        let id = prepared.id;
        let _guard = self.lock();
        let head = self.head(&id)?.ok_or(StoreError::NotFound(id))?;
        if head.retracted {
            return Err(StoreError::Retracted(id));
        }
        let next = head
            .version
            .checked_add(1)
            .ok_or(StoreError::VersionLimit(id))?;
        if let Some(submitted) = prepared.declared_version.filter(|v| *v != head.version) {
            return Err(StoreError::VersionConflict {
                id,
                current: head.version,
                submitted,
            });
        }
        let previous = self
            .get(&id, Some(head.version))?
            .ok_or(StoreError::NotFound(id))?;
        if !self.is_own(&id)? {
            return Err(StoreError::Foreign(id));
        }
        if let Some(o) = prepared.record.as_object_mut() {
            o.insert("record_version".into(), Value::from(next));
            if let Some(created) = previous.get("created_at") {
                o.insert("created_at".into(), created.clone());
            }
        }
        self.append_version(id, head.version, next, &prepared.record, false, sealer)
    }

    /// Appends a retraction: a copy of the latest version marked `retracted`, with the reason.
    pub fn retract(
        &self,
        id: RecordId,
        reason: &str,
        now: &str,
        sealer: &impl Sealer,
    ) -> Result<Written, StoreError> {
        let _guard = self.lock();
        let head = self.head(&id)?.ok_or(StoreError::NotFound(id))?;
        if head.retracted {
            return Err(StoreError::Retracted(id));
        }
        if !self.is_own(&id)? {
            return Err(StoreError::Foreign(id));
        }
        let mut record = self
            .get_stored(&id, Some(head.version))?
            .ok_or(StoreError::NotFound(id))?;
        let next = head
            .version
            .checked_add(1)
            .ok_or(StoreError::VersionLimit(id))?;
        if let Some(o) = record.as_object_mut() {
            o.insert("record_version".into(), Value::from(next));
            o.insert("retracted".into(), Value::Bool(true));
            o.insert(
                "retraction".into(),
                serde_json::json!({ "reason": reason, "at": now }),
            );
            o.insert("updated_at".into(), Value::String(now.into()));
        }
        self.append_version(id, head.version, next, &record, true, sealer)
    }

    /// The partner a replicated record came from (`None` for own records and unknown ids):
    /// named by its head, or for a head written before decision 0022 by `replicas`.
    pub fn replica_origin(&self, id: &RecordId) -> Result<Option<String>, StoreError> {
        let Some(head) = self.head.get(id.as_bytes())? else {
            return Ok(None);
        };
        let origin = head_origin(&head, || self.replicas.get(id.as_bytes()))?;
        Ok(origin.map(|o| String::from_utf8_lossy(&o).into_owned()))
    }

    /// Whether a record is this node's own: not a partner's ([`Store::replica_origin`]).
    pub fn is_own(&self, id: &RecordId) -> Result<bool, StoreError> {
        Ok(self.replica_origin(id)?.is_none())
    }

    /// Called with the write lock held.
    fn append_version(
        &self,
        id: RecordId,
        expected_head: u32,
        version: u32,
        record: &Value,
        retracted: bool,
        sealer: &impl Sealer,
    ) -> Result<Written, StoreError> {
        let stored = encode_record(record, &self.names);
        let interpretations = interpretations_of([&stored]);
        let pending = sealer
            .prepare(&ToSeal { record, retracted })
            .map_err(StoreError::Seal)?;
        let (own_seq, sealed) = self.seal(sealer, vec![pending])?;
        let sealed = sealed
            .first()
            .ok_or_else(|| StoreError::Seal("the sealer returned nothing".into()))?;
        let value = version_value(&stored.bytes, &sealed.envelope)?;
        let trees = self.own_write_trees();
        flatten(trees.transaction(|t| {
            let current = t.0.get(id.as_bytes())?.as_deref().and_then(decode_head);
            match current {
                Some(h) if h.version == expected_head => {}
                Some(h) => {
                    return abort(StoreError::VersionConflict {
                        id,
                        current: h.version,
                        submitted: version,
                    });
                }
                None => return abort(StoreError::NotFound(id)),
            }
            keep_interpretations(&t.5, &interpretations)?;
            let (mut changes, mut own) = (Groups::new(&t.2), Groups::new(&t.4));
            let seq = append(
                (&t.0, &t.1, &t.3),
                &mut changes,
                NewVersion {
                    id: &id,
                    version,
                    value: &value,
                    retracted,
                    created: false,
                    origin: None,
                },
            )?;
            append_own(&mut own, &t.3, &id, version, own_seq, sealed)?;
            changes.finish()?;
            own.finish()?;
            Ok(Written { id, version, seq })
        }))
    }

    pub fn head(&self, id: &RecordId) -> Result<Option<Head>, StoreError> {
        Ok(self
            .head
            .get(id.as_bytes())?
            .as_deref()
            .and_then(decode_head))
    }

    /// A version of a record (the latest when `version` is `None`), with this node's `derived`
    /// interpretations ([`crate::record::derive`], computed as it is read: decision 0018).
    pub fn get(&self, id: &RecordId, version: Option<u32>) -> Result<Option<Value>, StoreError> {
        Ok(self.get_stored(id, version)?.map(shown))
    }

    /// A version of a record as stored: without `derived` interpretations (except for versions
    /// written before decision 0018, which kept them).
    fn get_stored(&self, id: &RecordId, version: Option<u32>) -> Result<Option<Value>, StoreError> {
        let Some(version) = self.version_or_head(id, version)? else {
            return Ok(None);
        };
        self.versions
            .get(version_key(id, version))?
            .map(|bytes| self.whole(&bytes, &format_args!("{id} v{version}")))
            .transpose()
    }

    fn version_or_head(
        &self,
        id: &RecordId,
        version: Option<u32>,
    ) -> Result<Option<u32>, StoreError> {
        Ok(match version {
            Some(v) => Some(v),
            None => self.head(id)?.map(|h| h.version),
        })
    }

    /// A stored record version with its interpretations put back; a partner's version kept as
    /// its envelope alone, as the record that envelope shows.
    fn whole(&self, bytes: &[u8], what: &dyn std::fmt::Display) -> Result<Value, StoreError> {
        if let (Some(envelope), []) = split_version(bytes, what)? {
            let envelope: crate::envelope::Envelope =
                serde_json::from_slice(&unpack(envelope, what)?)
                    .map_err(|e| StoreError::Corrupt(format!("{what}: envelope: {e}")))?;
            return Ok(envelope.replica_record());
        }
        let decoded = decode_record(bytes, what)?;
        let mut record: Value = serde_json::from_slice(&decoded.json)
            .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
        for reference in &decoded.references {
            let stored = self.interpretations.get(reference.id)?.ok_or_else(|| {
                StoreError::Corrupt(format!("{what}: an interpretation it refers to is missing"))
            })?;
            let interpretation = serde_json::from_slice(&unpack(&stored, what)?)
                .map_err(|e| StoreError::Corrupt(format!("{what}: interpretation: {e}")))?;
            encoding::restore(&mut record, reference, interpretation, what)?;
        }
        Ok(record)
    }

    /// Every version of a record, oldest first, as [`Store::get`] shows them.
    pub fn versions(&self, id: &RecordId) -> Result<Vec<Value>, StoreError> {
        self.versions
            .scan_prefix(id.as_bytes())
            .map(|kv| {
                let (_, bytes) = kv?;
                self.whole(&bytes, id).map(shown)
            })
            .collect()
    }

    /// Up to `limit` changes with a sequence number greater than `after`, in order.
    pub fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        log::read_after(
            &self.changes,
            &self.change_groups,
            after,
            limit,
            log::single_change,
            log::change_group,
            |c| c.seq,
        )
    }

    /// The sequence number of the last write.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(match self.meta.get(LAST_SEQ)? {
            Some(b) => u64::from_be_bytes(
                b.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("last_seq".into()))?,
            ),
            None => 0,
        })
    }

    /// Number of records (heads), retracted ones included.
    pub fn record_count(&self) -> usize {
        self.head.len()
    }

    /// Every record's latest version, in id order.
    pub fn heads(&self) -> impl Iterator<Item = Result<(RecordId, Head), StoreError>> + '_ {
        self.head.iter().map(|kv| {
            let (k, v) = kv?;
            let id = RecordId(uuid::Uuid::from_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("head key".into()))?,
            ));
            let head = decode_head(&v).ok_or_else(|| StoreError::Corrupt("head value".into()))?;
            Ok((id, head))
        })
    }

    /// The stored envelope of a record version (own: as the sealer gave it; a partner's: the
    /// view received). Read it with [`crate::envelope::load`].
    pub fn envelope(&self, id: &RecordId, version: u32) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(match self.stored(id, version)? {
            Some(stored) => stored.envelope()?,
            None => None,
        })
    }

    /// A record version as stored, read once: its envelope and its record
    /// ([`StoredVersion`]). `None` when the version is unknown.
    pub fn stored(&self, id: &RecordId, version: u32) -> Result<Option<StoredVersion>, StoreError> {
        let key = version_key(id, version);
        let Some(value) = self.versions.get(key)? else {
            return Ok(None);
        };
        // Versions written before decision 0015 keep their envelope apart.
        let apart = match split_version(&value, id)? {
            (Some(_), _) => None,
            (None, _) => self.envelopes.get(key)?,
        };
        Ok(Some(StoredVersion {
            id: *id,
            version,
            value,
            apart,
        }))
    }

    /// Up to `limit` own changes after own sequence number `after`, in order.
    pub fn own_changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OwnChange>, StoreError> {
        log::read_after(
            &self.own_log,
            &self.own_groups,
            after,
            limit,
            log::single_own,
            log::own_group,
            |c| c.seq,
        )
    }

    /// The cursor of a partner's feed.
    pub fn cursor(&self, origin: &str) -> Result<Cursor, StoreError> {
        match self.cursors.get(origin.as_bytes())? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Corrupt(format!("cursor {origin}: {e}"))),
            None => Ok(Cursor::default()),
        }
    }

    /// Sets a partner's cursor without storing anything (a replay from the start).
    pub fn set_cursor(&self, origin: &str, cursor: &Cursor) -> Result<(), StoreError> {
        self.cursors.insert(
            origin.as_bytes(),
            serde_json::to_vec(cursor).unwrap_or_default(),
        )?;
        Ok(())
    }

    /// Stores one verified page of a partner's feed and its new cursor in one transaction:
    /// after a crash either the whole page and cursor are there or neither is. A version older
    /// than the one held is skipped; the same version replaces the held one (the caller has
    /// merged their disclosures).
    ///
    /// Only `origin` changes its records: a record held as another partner's, or as this
    /// node's own, refuses the whole page (`Foreign`, `Exists`). `cursor` is `None` for a
    /// version received outside the feed (a disclosure grant): the feed's cursor stays.
    pub fn apply_replicas(
        &self,
        origin: &str,
        page: &[Replica],
        cursor: Option<&Cursor>,
    ) -> Result<Vec<Written>, StoreError> {
        self.apply_page(origin, page, cursor.map(|c| (c, None)))
    }

    /// [`Store::apply_replicas`] for a feed page: with the cursor after it, and the receipt
    /// owed to `origin` for it (kept in the outbox, in the same transaction, until `origin`
    /// has taken it: [`Store::owed_receipts`]).
    pub fn apply_page(
        &self,
        origin: &str,
        page: &[Replica],
        cursor: Option<(&Cursor, Option<&[u8]>)>,
    ) -> Result<Vec<Written>, StoreError> {
        let owed = cursor.and_then(|(c, receipt)| Some((outbox_key(origin, c.after), receipt?)));
        let cursor = cursor.map(|(c, _)| c);
        // A partner's version is its envelope alone: the record is the one it shows
        // (decision 0019), made again as the version is read. Kept as JSON, not LZ4: its
        // salts, digests and tree hashes are random, so LZ4 saved about a tenth of the bytes
        // for ~10 µs of CPU a record (decision 0020).
        let values = page
            .iter()
            .map(|r| version_value(&[], &r.envelope))
            .collect::<Result<Vec<_>, _>>()?;
        let cursor_bytes = cursor.map(|c| serde_json::to_vec(c).unwrap_or_default());
        let trees = (
            &self.head,
            &self.versions,
            &self.change_groups,
            &self.meta,
            &self.replicas,
            &self.cursors,
            &self.receipt_outbox,
        );
        flatten(trees.transaction(|t| {
            let mut changes = Groups::new(&t.2);
            let mut written = Vec::new();
            for (r, value) in page.iter().zip(&values) {
                let held = t.0.get(r.id.as_bytes())?;
                let current = held.as_deref().and_then(decode_head);
                if let Some(bytes) = &held {
                    match head_origin(bytes, || t.4.get(r.id.as_bytes()))? {
                        // An own record with the same id: never overwritten by a partner.
                        None => return abort(StoreError::Exists(r.id)),
                        // Another partner's record: only its origin changes it.
                        Some(held) if held.as_ref() != origin.as_bytes() => {
                            return abort(StoreError::Foreign(r.id));
                        }
                        Some(_) => {}
                    }
                }
                if current.is_some_and(|h| h.version > r.version) {
                    continue;
                }
                let seq = append(
                    (&t.0, &t.1, &t.3),
                    &mut changes,
                    NewVersion {
                        id: &r.id,
                        version: r.version,
                        value,
                        retracted: r.retracted,
                        created: current.is_none(),
                        origin: Some(origin),
                    },
                )?;
                written.push(Written {
                    id: r.id,
                    version: r.version,
                    seq,
                });
            }
            changes.finish()?;
            if let Some(bytes) = &cursor_bytes {
                t.5.insert(origin.as_bytes(), bytes.as_slice())?;
            }
            if let Some((key, receipt)) = &owed {
                t.6.insert(key.as_slice(), *receipt)?;
            }
            Ok(written)
        }))
    }

    /// The receipts owed to `origin` that it has not taken yet, oldest first: each with the
    /// key that [`Store::receipt_taken`] clears.
    pub fn owed_receipts(&self, origin: &str) -> Result<Vec<OwedReceipt>, StoreError> {
        let mut prefix = origin.as_bytes().to_vec();
        prefix.push(0xFF);
        self.receipt_outbox
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// `origin` took the receipt kept under `key`.
    pub fn receipt_taken(&self, key: &[u8]) -> Result<(), StoreError> {
        self.receipt_outbox.remove(key)?;
        Ok(())
    }

    /// Records, from its signed receipt, which version of each record `partner` has applied:
    /// all the entries or none.
    pub fn put_receipts<'a>(
        &self,
        partner: &str,
        entries: impl IntoIterator<Item = (RecordId, &'a Value)>,
    ) -> Result<(), StoreError> {
        // Read and written in one transaction: of two receipts stored at once (their pages'
        // receipts travel apart), the higher version stays, whichever comes last.
        let entries: Vec<(Vec<u8>, Option<u64>, Vec<u8>)> = entries
            .into_iter()
            .map(|(id, e)| {
                let version = e.get("version").and_then(Value::as_u64);
                (receipt_key(&id, partner), version, to_bytes(e))
            })
            .collect();
        flatten(self.receipts.transaction(|t| {
            for (key, version, bytes) in &entries {
                let held = t.get(key)?.and_then(|b| {
                    serde_json::from_slice::<Value>(&b)
                        .ok()
                        .and_then(|v| v.get("version").and_then(Value::as_u64))
                });
                if held.is_none_or(|h| Some(h) < *version) {
                    t.insert(key.as_slice(), bytes.as_slice())?;
                }
            }
            Ok(())
        }))
    }

    /// `partner`'s receipt for a record, if it sent one.
    pub fn receipt(&self, id: &RecordId, partner: &str) -> Result<Option<Value>, StoreError> {
        json_at(&self.receipts, &receipt_key(id, partner), "receipt")
    }

    /// Every partner's receipt for a record.
    pub fn receipts(&self, id: &RecordId) -> Result<Vec<(String, Value)>, StoreError> {
        self.receipts
            .scan_prefix(id.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                let partner = String::from_utf8_lossy(&k[16..]).into_owned();
                let entry = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("receipt: {e}")))?;
                Ok((partner, entry))
            })
            .collect()
    }

    /// Remembers a request nonce; false when `sender` used it before. Entries older than
    /// `forget_before` (unix seconds) are pruned now and then.
    pub fn remember_nonce(
        &self,
        sender: &str,
        nonce: &str,
        at: i64,
        forget_before: i64,
    ) -> Result<bool, StoreError> {
        let mut key = sender.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(nonce.as_bytes());
        let fresh = self
            .nonces
            .compare_and_swap(key, None as Option<&[u8]>, Some(&at.to_be_bytes()[..]))?
            .is_ok();
        if fresh && at % 64 == 0 {
            for kv in self.nonces.iter() {
                let (k, v) = kv?;
                let t = v.as_ref().try_into().map(i64::from_be_bytes).unwrap_or(0);
                if t < forget_before {
                    self.nonces.remove(k)?;
                }
            }
        }
        Ok(fresh)
    }

    /// Remembers what an opaque hit reference (given to a `hit_no_hit` partner) points at.
    pub fn put_hit_ref(&self, reference: &str, entry: &Value) -> Result<(), StoreError> {
        self.hit_refs
            .insert(reference.as_bytes(), to_bytes(entry))?;
        Ok(())
    }

    pub fn hit_ref(&self, reference: &str) -> Result<Option<Value>, StoreError> {
        json_at(&self.hit_refs, reference.as_bytes(), "hit ref")
    }

    /// Stores a disclosure request (`in:ID` received, `out:ID` sent) and flushes it.
    pub fn put_request(&self, key: &str, entry: &Value) -> Result<(), StoreError> {
        self.requests.insert(key.as_bytes(), to_bytes(entry))?;
        self.flush()
    }

    pub fn request(&self, key: &str) -> Result<Option<Value>, StoreError> {
        json_at(&self.requests, key.as_bytes(), "request")
    }

    /// Every disclosure request, received (`in:`) and sent (`out:`).
    pub fn requests(&self) -> Result<Vec<(String, Value)>, StoreError> {
        self.requests
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let entry = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("request: {e}")))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), entry))
            })
            .collect()
    }

    /// Fills `disclosed` from the receipts and the approved disclosure requests of a store
    /// written before it existed (once).
    fn backfill_disclosed(&self) -> Result<(), StoreError> {
        if !self.disclosed.is_empty() {
            return Ok(());
        }
        for kv in self.requests.scan_prefix(b"in:") {
            let (_, v) = kv?;
            let Ok(entry) = serde_json::from_slice::<Value>(&v) else {
                continue;
            };
            let text = |k: &str| entry.get(k).and_then(Value::as_str);
            if text("status") != Some("approved") {
                continue;
            }
            let (Some(partner), Some(id)) =
                (text("partner"), text("record_id").and_then(RecordId::parse))
            else {
                continue;
            };
            let version = entry
                .get("version")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(1);
            self.note_disclosed(partner, &[(id, version)])?;
        }
        for kv in self.receipts.iter() {
            let (k, v) = kv?;
            let (Some(id), Some(partner)) = (k.get(..16), k.get(16..)) else {
                continue;
            };
            let Ok(id) = <[u8; 16]>::try_from(id) else {
                continue;
            };
            let version = serde_json::from_slice::<Value>(&v)
                .ok()
                .and_then(|e| e.get("version").and_then(Value::as_u64))
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(1);
            let partner = String::from_utf8_lossy(partner);
            let id = RecordId(uuid::Uuid::from_bytes(id));
            self.note_disclosed(&partner, &[(id, version)])?;
        }
        Ok(())
    }

    /// Notes that `partner` was sent these versions of own records (highest version kept).
    /// Callers pass own records that exist, and only those (the feed serves the own log, a
    /// grant an own hit): `sync::store_receipt` relies on it to accept receipts for own
    /// records only. Not flushed here: callers flush before what they note leaves the node (a feed page, a
    /// grant), so a crash never leaves a partner holding a record the node does not know of.
    pub fn note_disclosed(
        &self,
        partner: &str,
        versions: &[(RecordId, u32)],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (id, version) in versions {
            let key = disclosed_key(partner, id);
            let held = self
                .disclosed
                .get(&key)?
                .and_then(|b| b.as_ref().try_into().ok().map(u32::from_be_bytes));
            if held.is_none_or(|h| h < *version) {
                batch.insert(key, &version.to_be_bytes());
            }
        }
        self.disclosed.apply_batch(batch)?;
        Ok(())
    }

    /// The latest version of own record `id` sent to `partner`, if any was.
    pub fn disclosed_version(
        &self,
        partner: &str,
        id: &RecordId,
    ) -> Result<Option<u32>, StoreError> {
        Ok(self
            .disclosed
            .get(disclosed_key(partner, id))?
            .and_then(|b| b.as_ref().try_into().ok().map(u32::from_be_bytes)))
    }

    /// True when `partner` was ever sent a version of any own record.
    pub fn disclosed_any(&self, partner: &str) -> Result<bool, StoreError> {
        let mut prefix = partner.as_bytes().to_vec();
        prefix.push(0xFF);
        Ok(self
            .disclosed
            .scan_prefix(prefix)
            .next()
            .transpose()?
            .is_some())
    }

    /// Stores one record version a partner disclosed under a one-off grant (no cursor moves).
    pub fn apply_granted(&self, origin: &str, replica: &Replica) -> Result<Written, StoreError> {
        self.apply_replicas(origin, std::slice::from_ref(replica), None)?
            .into_iter()
            .next()
            .ok_or(StoreError::Exists(replica.id))
    }

    /// A small named value kept with the store (e.g. the policy digest last seen per partner).
    pub fn note(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get(format!("note:{name}"))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    pub fn set_note(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.meta.insert(format!("note:{name}"), value.as_bytes())?;
        Ok(())
    }

    /// A random 32-byte secret named `name`, kept with the store (so a restored backup keeps
    /// it) and created, durably, on first use.
    pub fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let note = format!("secret:{name}");
        let _guard = self.lock();
        if let Some(text) = self.note(&note)? {
            return URL_SAFE_NO_PAD
                .decode(&text)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| StoreError::Corrupt(format!("secret {name}")));
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| StoreError::Corrupt(format!("no OS randomness for secret {name}: {e}")))?;
        self.set_note(&note, &URL_SAFE_NO_PAD.encode(bytes))?;
        self.flush()?;
        Ok(bytes)
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::Validator;
    use serde_json::json;

    /// Opens a store just dropped: sled's background threads let go of the file lock a
    /// moment after the drop.
    fn reopen(path: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(path) {
                Ok(store) => return store,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("lock"), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        }
    }

    /// A sealer with a fixed key, for tests that write own records.
    pub(crate) fn sealer() -> crate::envelope::NodeSealer {
        crate::envelope::NodeSealer {
            origin: "XAA".into(),
            key: ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]),
        }
    }

    fn prepared(lot: &str) -> Prepared {
        prepared_as(None, lot)
    }

    /// A minimal one-item XAA record with `lot`, validated; `id` sets its `record_id`.
    pub(crate) fn prepared_as(id: Option<&str>, lot: &str) -> Prepared {
        let mut record = json!({
            "originating_state": "XAA",
            "event": {"event_type": "seizure", "date": {"start": "2024"},
                      "location": {"country": "XAA", "precision": "country"}},
            "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": lot}],
            "sharing": {"tlp": "GREEN"}
        });
        if let Some(id) = id {
            record["record_id"] = json!(id);
        }
        Validator::new("XAA")
            .prepare(record, "2026-01-01T00:00:00Z")
            .unwrap()
    }

    #[test]
    fn values_are_compressed_and_plain_json_still_reads() {
        let json = serde_json::to_vec(&prepared("LC10A000-000").record).unwrap();
        let packed = pack(&json);
        assert_eq!(packed[0], encoding::LZ4);
        assert!(
            packed.len() < json.len(),
            "{} >= {}",
            packed.len(),
            json.len()
        );
        assert_eq!(unpack(&packed, &"x").unwrap().as_ref(), json.as_slice());
        // Stores written before compression hold plain JSON.
        assert_eq!(unpack(&json, &"x").unwrap().as_ref(), json.as_slice());
        // A value cut anywhere is corruption, also where lz4_flex alone would decode it short
        // (after a run of literals).
        for cut in 1..packed.len() {
            assert!(
                matches!(unpack(&packed[..cut], &"x"), Err(StoreError::Corrupt(_))),
                "cut at {cut} of {}",
                packed.len()
            );
        }
        // A damaged size prefix stating gigabytes is corruption, not an allocation.
        let mut huge = packed.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(unpack(&huge, &"x"), Err(StoreError::Corrupt(_))));
    }

    /// A one-item record with a headstamp and a calibre besides its lot, validated.
    fn prepared_with(lot: &str, headstamp: &str, calibre: &str) -> Prepared {
        let record = json!({
            "originating_state": "XAA",
            "event": {"event_type": "seizure", "date": {"start": "2024"},
                      "location": {"country": "XAA", "precision": "country"}},
            "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": lot,
                       "headstamp": {"present": true, "raw_transcription": headstamp},
                       "calibre": calibre}],
            "sharing": {"tlp": "GREEN"}
        });
        Validator::new("XAA")
            .prepare(record, "2026-01-01T00:00:00Z")
            .unwrap()
    }

    /// Records are kept without their interpretations (decision 0018): nothing goes to the
    /// `interpretations` tree, every read shows them as `record::derive` makes them, and
    /// readers that skip them (`bare_with`) get the record as written.
    #[test]
    fn records_are_kept_bare_and_read_back_with_their_interpretations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = vec![
            prepared_with("LC10A000-001", "LC 10", "5.56x45mm NATO"),
            prepared_with("LC10A000-002", "LC 10", "5.56x45mm NATO"),
            prepared_with("WCC10A000-001", "WCC 10", "5.56x45mm NATO"),
        ];
        let shown = |record: &Value| {
            let mut record = record.clone();
            crate::record::derive(&mut record);
            record
        };
        for p in &batch {
            assert!(!p.record.to_string().contains("derived"), "{}", p.record);
        }
        let written = store.create_batch(&mut batch, &sealer()).unwrap();
        assert_eq!(store.interpretations.len(), 0);
        for (w, p) in written.iter().zip(&batch) {
            let expected = shown(&p.record);
            assert!(expected["items"][0]["headstamp"]["derived"].is_object());
            assert!(expected["items"][0]["calibre"]["derived"].is_object());
            assert!(expected["items"][0]["lot"]["derived"].is_object());
            // Equal as text too: every key where it was (`Value` equality ignores order).
            assert_eq!(
                to_bytes(&store.get(&w.id, None).unwrap().unwrap()),
                to_bytes(&expected)
            );
            assert_eq!(store.versions(&w.id).unwrap(), vec![expected]);
            let bare = store
                .stored(&w.id, w.version)
                .unwrap()
                .unwrap()
                .bare_with(|json| serde_json::from_slice::<Value>(json))
                .unwrap();
            assert_eq!(to_bytes(&bare), to_bytes(&p.record));
        }
        // A new version shows its own readings.
        let mut next = prepared_with("LC10A000-009", "FC 18", "5.56x45mm NATO");
        next.id = written[0].id;
        store.update(next.clone(), &sealer()).unwrap();
        let versions = store.versions(&written[0].id).unwrap();
        assert_eq!(versions.len(), 2);
        assert_eq!(
            versions[1]["items"][0]["headstamp"]["derived"]["tokens"],
            json!(["FC", "18"])
        );
        // A retraction is a version like any other, kept bare too.
        store
            .retract(
                written[1].id,
                "withdrawn",
                "2026-01-02T00:00:00Z",
                &sealer(),
            )
            .unwrap();
        let retracted = store.get(&written[1].id, None).unwrap().unwrap();
        assert_eq!(retracted["retracted"], true);
        assert_eq!(retracted["items"], shown(&batch[1].record)["items"]);
        let kept = store.get_stored(&written[1].id, None).unwrap().unwrap();
        assert!(!kept.to_string().contains("derived"), "{kept}");
        assert_eq!(store.interpretations.len(), 0);
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(
            to_bytes(&store.get(&written[2].id, None).unwrap().unwrap()),
            to_bytes(&shown(&batch[2].record))
        );
    }

    /// A `derived` that is not an object (a partner's record can carry anything the origin
    /// signed) stays in the record as it is; a reference to a missing interpretation is
    /// reported as corruption, not read as a record without it.
    #[test]
    fn only_object_interpretations_are_kept_apart_and_a_missing_one_is_corruption() {
        // A record as stores written before decision 0018 kept it: with its interpretations.
        let mut record = prepared_with("LC10A000-001", "LC 10", "9mm").record;
        crate::record::derive(&mut record);
        record["items"][0]["calibre"]["derived"] = json!("a string");
        // A headstamp whose interpretation is not its last key stays whole too, so that a
        // read gives back every key where it was.
        let headstamp = record["items"][0]["headstamp"].as_object_mut().unwrap();
        let derived = headstamp.shift_remove("derived").unwrap();
        headstamp.shift_insert(0, "derived".into(), derived);
        let encoded = encode_record(&record, &Names::default());
        assert!(encoded.interpretations.is_empty());
        let decoded = encoding::decode_record(&encoded.bytes, &"x").unwrap();
        assert_eq!(decoded.json.as_ref(), to_bytes(&record).as_slice());
        record["items"][0]["headstamp"]
            .as_object_mut()
            .unwrap()
            .shift_remove("derived");
        record["items"][0]["headstamp"]["derived"] = json!({"tokens": ["LC", "10"]});
        let encoded = encode_record(&record, &Names::default());
        assert_eq!(encoded.interpretations.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let decoded = encoding::decode_record(&encoded.bytes, &"x").unwrap();
        let json: Value = serde_json::from_slice(&decoded.json).unwrap();
        assert_eq!(json["items"][0]["calibre"]["derived"], "a string");
        assert!(json["items"][0]["headstamp"].get("derived").is_none());
        let missing = store.whole(&encoded.bytes, &"x").unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
        let (id, interpretation) = &encoded.interpretations[0];
        store
            .interpretations
            .insert(id, pack(interpretation))
            .unwrap();
        assert_eq!(store.whole(&encoded.bytes, &"x").unwrap(), record);
        // A truncated reference list is corruption too.
        assert!(matches!(
            encoding::decode_record(&encoded.bytes[..10], &"x"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn the_last_version_number_takes_no_further_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = vec![prepared("1")];
        batch[0].declared_version = Some(u32::MAX);
        let id = store.create_batch(&mut batch, &sealer()).unwrap()[0].id;
        let mut update = prepared("2");
        update.id = id;
        assert!(matches!(
            store.update(update, &sealer()),
            Err(StoreError::VersionLimit(_))
        ));
        assert!(matches!(
            store.retract(id, "x", "2026-01-01T00:00:00Z", &sealer()),
            Err(StoreError::VersionLimit(_))
        ));
        assert_eq!(store.head(&id).unwrap().unwrap().version, u32::MAX);
        assert_eq!(store.versions(&id).unwrap().len(), 1);
    }

    /// A fresh store holding one own record (lot `LC-19-A`).
    fn store_with_one() -> (tempfile::TempDir, Store, Written) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let written = store
            .create_batch(&mut [prepared("LC-19-A")], &sealer())
            .unwrap()[0];
        (dir, store, written)
    }

    /// The stored value of a version split into its envelope and its record part.
    fn stored_parts(store: &Store, key: [u8; 20]) -> (Vec<u8>, Vec<u8>) {
        let value = store.versions.get(key).unwrap().unwrap();
        let (Some(envelope), record) = split_version(&value, &"x").unwrap() else {
            panic!("the version holds no envelope");
        };
        (envelope.to_vec(), record.to_vec())
    }

    /// A stored own version changed under its signature (by hand, or by a bug) is never
    /// served: its envelope no longer rebuilds.
    #[test]
    fn an_own_version_changed_in_the_store_has_no_envelope_to_serve() {
        let (_dir, store, w) = store_with_one();
        assert!(crate::envelope::load(&store, &w.id, w.version).is_ok());
        let mut record = store.get(&w.id, Some(w.version)).unwrap().unwrap();
        record["items"][0]["lot"]["raw"] = json!("LC-19-B");
        let key = version_key(&w.id, w.version);
        let (envelope, _) = stored_parts(&store, key);
        let changed = encode_record(&record, &store.names).bytes;
        store
            .versions
            .insert(key, version_value(&changed, &envelope).unwrap())
            .unwrap();
        let err = crate::envelope::load(&store, &w.id, w.version).unwrap_err();
        assert!(
            matches!(err, crate::envelope::LoadError::Corrupt(id, 1, _) if id == w.id),
            "{err}"
        );
        assert!(err.to_string().contains("no longer matches"), "{err}");
    }

    /// Version 1 of record `id` as partner `origin` seals it, with `lot`.
    fn partner_envelope(origin: &str, id: &RecordId, lot: &str) -> crate::envelope::Envelope {
        let mut record = prepared(lot).record;
        record["record_id"] = json!(id.to_string());
        record["originating_state"] = json!(origin);
        let seal = crate::envelope::Seal {
            origin,
            seq: 1,
            prev: "",
            issued_at: "2026-01-01T00:00:00.000Z",
            retracted: false,
            normaliser: crate::normalise::NORMALISER_VERSION,
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        crate::envelope::seal(&record, &seal, &key).unwrap()
    }

    /// A partner's version 1 of record `id`, as received in `envelope`.
    fn partner_replica(id: &RecordId, envelope: &crate::envelope::Envelope) -> Replica {
        Replica {
            id: *id,
            version: 1,
            record: envelope.replica_record(),
            envelope: serde_json::to_vec(envelope).unwrap(),
            retracted: false,
        }
    }

    /// A partner's record names its origin in its head (decision 0022): one write, not a
    /// second in `replicas`. A head written before, with the origin in `replicas`, still
    /// reads as that partner's record, and no other partner (nor the node) may write it.
    #[test]
    fn a_partners_record_is_named_by_its_head_and_older_heads_still_read() {
        let (_dir, store, own) = store_with_one();
        let (theirs, older) = (
            RecordId(uuid::Uuid::now_v7()),
            RecordId(uuid::Uuid::now_v7()),
        );
        for id in [&theirs, &older] {
            let replica = partner_replica(id, &partner_envelope("XBB", id, "LOT-1"));
            store.apply_replicas("XBB", &[replica], None).unwrap();
        }
        assert_eq!(store.replicas.len(), 0, "nothing is written to `replicas`");
        let head = store.head.get(theirs.as_bytes()).unwrap().unwrap();
        assert_eq!(&head[5..], b"XBB");
        assert_eq!(
            store.head(&theirs).unwrap(),
            Some(Head {
                version: 1,
                retracted: false
            })
        );
        // `older` as a store written before decision 0022 holds it.
        store.head.insert(older.as_bytes(), &head[..5]).unwrap();
        store.replicas.insert(older.as_bytes(), "XBB").unwrap();
        for id in [&theirs, &older] {
            assert_eq!(store.replica_origin(id).unwrap().as_deref(), Some("XBB"));
            assert!(!store.is_own(id).unwrap());
            let replica = partner_replica(id, &partner_envelope("XCC", id, "LOT-2"));
            assert!(matches!(
                store.apply_replicas("XCC", &[replica], None),
                Err(StoreError::Foreign(f)) if f == *id
            ));
        }
        assert!(store.is_own(&own.id).unwrap());
        assert_eq!(store.replica_origin(&own.id).unwrap(), None);
        let replica = partner_replica(&own.id, &partner_envelope("XBB", &own.id, "LOT-3"));
        assert!(matches!(
            store.apply_replicas("XBB", &[replica], None),
            Err(StoreError::Exists(e)) if e == own.id
        ));
        assert_eq!(
            store
                .replica_origin(&RecordId(uuid::Uuid::now_v7()))
                .unwrap(),
            None
        );
    }

    /// A version is one sled value with its envelope (decision 0015), own or a partner's, so
    /// the `envelopes` tree takes no new writes; versions written before, with the envelope
    /// apart, read as they did; a value cut inside its envelope is corruption.
    #[test]
    fn a_version_holds_its_envelope_and_envelopes_stored_apart_still_read() {
        let (_dir, store, own) = store_with_one();
        let own_envelope = store.envelope(&own.id, own.version).unwrap().unwrap();
        let loaded = crate::envelope::load(&store, &own.id, own.version)
            .unwrap()
            .unwrap();
        assert_eq!(loaded.claims.version, 1);

        let theirs = RecordId(uuid::Uuid::now_v7());
        // XBB's version 1 of `theirs`, sealed by XBB, as received.
        let sealed = |lot: &str| partner_envelope("XBB", &theirs, lot);
        let receive = |envelope: &crate::envelope::Envelope| {
            store
                .apply_replicas("XBB", &[partner_replica(&theirs, envelope)], None)
                .unwrap();
        };
        let shown = |envelope: &crate::envelope::Envelope| {
            let mut record = envelope.replica_record();
            crate::record::derive(&mut record);
            record
        };
        let first = sealed("XBB-LOT-1");
        receive(&first);
        let received = serde_json::to_vec(&first).unwrap();
        assert_eq!(store.envelope(&theirs, 1).unwrap().unwrap(), received);
        assert_eq!(store.envelopes.len(), 0, "no envelope is written apart");
        assert!(store.envelope(&theirs, 2).unwrap().is_none());
        // A partner's version is its envelope alone (decision 0019); its record is the one
        // the envelope shows, with the identity fields of the claims.
        let (envelope, kept) = stored_parts(&store, version_key(&theirs, 1));
        assert!(kept.is_empty(), "{} bytes of record kept", kept.len());
        assert_eq!(envelope, received, "kept as received, not compressed");
        let read = store.get(&theirs, None).unwrap().unwrap();
        assert_eq!(read, shown(&first));
        assert_eq!(read["record_id"], theirs.to_string());
        assert_eq!(read["originating_state"], "XBB");
        assert_eq!(read["items"][0]["lot"]["raw"], "XBB-LOT-1");
        assert!(read["items"][0]["lot"]["derived"].is_object());
        assert_eq!(store.versions(&theirs).unwrap(), vec![read.clone()]);

        // The layout before decision 0015: the record alone, its envelope in `envelopes`
        // (a partner's version then kept its record too).
        let key = version_key(&own.id, own.version);
        let before = (
            store.get(&own.id, None).unwrap(),
            store.envelope(&own.id, own.version).unwrap(),
        );
        let (envelope, record) = stored_parts(&store, key);
        store.envelopes.insert(key, envelope).unwrap();
        store.versions.insert(key, record).unwrap();
        assert_eq!(store.get(&own.id, None).unwrap(), before.0);
        assert_eq!(store.envelope(&own.id, own.version).unwrap(), before.1);
        let key = version_key(&theirs, 1);
        store.envelopes.insert(key, pack(&received)).unwrap();
        store
            .versions
            .insert(key, pack(&to_bytes(&first.replica_record())))
            .unwrap();
        assert_eq!(store.get(&theirs, None).unwrap().unwrap(), read);
        assert_eq!(store.envelope(&theirs, 1).unwrap().unwrap(), received);
        assert_eq!(
            store.envelope(&own.id, own.version).unwrap().unwrap(),
            own_envelope
        );
        let reloaded = crate::envelope::load(&store, &own.id, own.version)
            .unwrap()
            .unwrap();
        assert_eq!(reloaded, loaded);
        // The partner sends version 1 again (merged): the new value's envelope is the one
        // read, not the stale one left in `envelopes`, and so is its record.
        let merged = sealed("XBB-LOT-2");
        receive(&merged);
        assert_eq!(
            store.envelope(&theirs, 1).unwrap().unwrap(),
            serde_json::to_vec(&merged).unwrap()
        );
        assert_eq!(store.get(&theirs, None).unwrap().unwrap(), shown(&merged));
        assert_eq!(store.envelopes.len(), 2);

        // Cut inside the envelope: both readers report corruption.
        let key = version_key(&own.id, own.version);
        let whole = version_value(b"{}", &own_envelope).unwrap();
        store.versions.insert(key, &whole[..20]).unwrap();
        assert!(matches!(
            store.envelope(&own.id, own.version),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.get(&own.id, None),
            Err(StoreError::Corrupt(_))
        ));
        // For the envelope's readers, that version alone is unreadable (a partner's query
        // leaves it out), not the store.
        assert!(matches!(
            crate::envelope::load(&store, &own.id, own.version),
            Err(crate::envelope::LoadError::Corrupt(id, 1, _)) if id == own.id
        ));
    }

    /// A store written before the `disclosed` tree learns, once, who holds what from its
    /// receipts (feeds) and its approved disclosure requests (grants, which send no receipt).
    #[test]
    fn holders_are_filled_from_receipts_and_grants_once() {
        let dir = tempfile::tempdir().unwrap();
        let (fed, granted) = (
            RecordId(uuid::Uuid::now_v7()),
            RecordId(uuid::Uuid::now_v7()),
        );
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put_receipts("XBB", [(fed, &json!({"version": 2, "retracted": false}))])
                .unwrap();
            store
                .put_request(
                    "in:r1",
                    &json!({"status": "approved", "partner": "XDD",
                            "record_id": granted.to_string(), "version": 1}),
                )
                .unwrap();
            store
                .put_request(
                    "in:r2",
                    &json!({"status": "declined", "partner": "XEE",
                            "record_id": granted.to_string(), "version": 1}),
                )
                .unwrap();
            store.disclosed.clear().unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.disclosed_version("XBB", &fed).unwrap(), Some(2));
        assert_eq!(store.disclosed_version("XDD", &granted).unwrap(), Some(1));
        assert_eq!(store.disclosed_version("XEE", &granted).unwrap(), None);
        assert!(!store.disclosed_any("XCC").unwrap());
    }

    #[test]
    fn versions_heads_and_change_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = vec![prepared("1"), prepared("2")];
        let written = store.create_batch(&mut batch, &sealer()).unwrap();
        assert_eq!(
            written.iter().map(|w| w.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(matches!(
            store.create_batch(&mut batch[..1], &sealer()),
            Err(StoreError::Exists(_))
        ));

        let mut update = prepared("1b");
        update.id = written[0].id;
        let w = store.update(update.clone(), &sealer()).unwrap();
        assert_eq!((w.version, w.seq), (2, 3));
        update.declared_version = Some(1);
        assert!(matches!(
            store.update(update.clone(), &sealer()),
            Err(StoreError::VersionConflict { .. })
        ));
        // Based on the latest version: accepted as the next one.
        update.declared_version = Some(2);
        assert_eq!(store.update(update, &sealer()).unwrap().version, 3);

        let r = store
            .retract(
                written[0].id,
                "entered twice",
                "2026-01-02T00:00:00Z",
                &sealer(),
            )
            .unwrap();
        assert_eq!(r.version, 4);
        assert!(store.head(&written[0].id).unwrap().unwrap().retracted);
        assert_eq!(store.versions(&written[0].id).unwrap().len(), 4);
        let changes = store.changes_after(2, 10).unwrap();
        assert_eq!(changes.len(), 3);
        assert!(
            changes.iter().all(|c| !c.created),
            "only first versions are `created`"
        );
        assert!(changes[2].retracted);
        assert!(store.changes_after(0, 1).unwrap()[0].created);
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.last_seq().unwrap(), 5);
        // Every own version is signed and chained in the own log.
        let own = store.own_changes_after(0, 10).unwrap();
        assert_eq!(
            own.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        let mut prev = String::new();
        for c in &own {
            let env = crate::envelope::load(&store, &c.id, c.version)
                .unwrap()
                .unwrap();
            env.verify(&sealer().key.verifying_key()).unwrap();
            assert_eq!(env.claims.prev, prev);
            assert_eq!(env.claims.digest().unwrap(), c.digest);
            prev = c.digest.clone();
        }
        assert_eq!(store.own_tail().unwrap(), (5, prev));
        assert_eq!(
            store.get(&written[1].id, None).unwrap().unwrap()["items"][0]["lot"]["raw"],
            "2"
        );
    }

    #[test]
    fn the_logs_are_read_across_groups_and_from_entries_stored_one_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch: Vec<Prepared> = (0..150).map(|n| prepared(&format!("L{n}"))).collect();
        let written = store.create_batch(&mut batch, &sealer()).unwrap();
        let groups = 150usize.div_ceil(log::GROUP);
        assert!(groups > 2, "the test needs several groups");
        assert_eq!(store.change_groups.len(), groups);
        assert_eq!(store.own_groups.len(), groups);
        assert!(store.changes.is_empty() && store.own_log.is_empty());

        // The first group as a store written before decision 0016 held it: one entry per key.
        let first = log::GROUP as u64;
        let changes = store.changes_after(0, log::GROUP).unwrap();
        let own = store.own_changes_after(0, log::GROUP).unwrap();
        for (c, o) in changes.iter().zip(&own) {
            let mut entry = version_key(&c.id, c.version).to_vec();
            entry.extend_from_slice(&[u8::from(c.retracted), u8::from(c.created)]);
            store.changes.insert(c.seq.to_be_bytes(), entry).unwrap();
            let mut entry = version_key(&o.id, o.version).to_vec();
            entry.extend_from_slice(o.digest.as_bytes());
            store.own_log.insert(o.seq.to_be_bytes(), entry).unwrap();
        }
        store.change_groups.remove(first.to_be_bytes()).unwrap();
        store.own_groups.remove(first.to_be_bytes()).unwrap();

        // Two more writes, one transaction each: a group of one entry each.
        let mut update = prepared("L0b");
        update.id = written[0].id;
        store.update(update, &sealer()).unwrap();
        store
            .retract(written[1].id, "twice", "2026-01-02T00:00:00Z", &sealer())
            .unwrap();
        assert_eq!(store.change_groups.len(), groups + 1);

        let mut expected: Vec<(u64, RecordId, u32)> =
            written.iter().map(|w| (w.seq, w.id, w.version)).collect();
        expected.push((151, written[0].id, 2));
        expected.push((152, written[1].id, 2));
        let g = first;
        let near_groups = [0, 1, g - 1, g, g + 1, 2 * g];
        let elsewhere = [63, 64, 65, 100, 149, 150, 151, 152, 500];
        for after in near_groups.into_iter().chain(elsewhere) {
            for limit in [1, 7, log::GROUP, log::GROUP + 1, 64, 1000] {
                let want: Vec<(u64, RecordId, u32)> = expected
                    .iter()
                    .filter(|(seq, _, _)| *seq > after)
                    .take(limit)
                    .copied()
                    .collect();
                let got: Vec<(u64, RecordId, u32)> = store
                    .changes_after(after, limit)
                    .unwrap()
                    .iter()
                    .map(|c| (c.seq, c.id, c.version))
                    .collect();
                assert_eq!(got, want, "changes after {after}, limit {limit}");
                // Own sequence numbers equal the store's here: every write is an own one.
                let got: Vec<(u64, RecordId, u32)> = store
                    .own_changes_after(after, limit)
                    .unwrap()
                    .iter()
                    .map(|c| (c.seq, c.id, c.version))
                    .collect();
                assert_eq!(got, want, "own changes after {after}, limit {limit}");
            }
        }
        let all = store.changes_after(0, usize::MAX).unwrap();
        assert!(all[..150].iter().all(|c| c.created && !c.retracted));
        assert!(!all[150].created && !all[150].retracted);
        assert!(all[151].retracted);
        // The own log still chains: each claims' `prev` is the digest before it.
        let own = store.own_changes_after(0, usize::MAX).unwrap();
        for pair in own.windows(2) {
            let env = crate::envelope::load(&store, &pair[1].id, pair[1].version)
                .unwrap()
                .unwrap();
            assert_eq!(env.claims.prev, pair[0].digest);
        }

        // A group cut short is corruption, not a shorter log.
        let cut_last = |tree: &sled::Tree| {
            let (key, value) = tree.last().unwrap().unwrap();
            tree.insert(key, &value[..value.len() - 1]).unwrap();
        };
        cut_last(&store.change_groups);
        assert!(matches!(
            store.changes_after(0, usize::MAX),
            Err(StoreError::Corrupt(_))
        ));
        cut_last(&store.own_groups);
        assert!(matches!(
            store.own_changes_after(0, usize::MAX),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// The receipt owed for a page is kept with the page, in its transaction: a page that is
    /// refused keeps none; one applied keeps its receipt until the origin has taken it.
    #[test]
    fn a_pages_receipt_is_owed_until_taken_and_only_with_the_page() {
        let (_dir, store, own) = store_with_one();
        let id = RecordId(uuid::Uuid::now_v7());
        let cursor = |after| Cursor {
            after,
            prev: format!("d{after}"),
            policy: "p".into(),
        };
        let page = [partner_replica(&id, &partner_envelope("XBB", &id, "LOT-1"))];
        store
            .apply_page("XBB", &page, Some((&cursor(7), Some(b"receipt-7"))))
            .unwrap();
        // A page naming this node's own record is refused: neither it nor its receipt stays.
        let foreign = [partner_replica(
            &own.id,
            &partner_envelope("XBB", &own.id, "LOT-2"),
        )];
        assert!(
            store
                .apply_page("XBB", &foreign, Some((&cursor(8), Some(b"receipt-8"))))
                .is_err()
        );
        store
            .apply_page("XBB", &[], Some((&cursor(9), Some(b"receipt-9"))))
            .unwrap();
        store
            .apply_page("XCC", &[], Some((&cursor(3), Some(b"c"))))
            .unwrap();
        let owed = store.owed_receipts("XBB").unwrap();
        let bodies: Vec<&[u8]> = owed.iter().map(|(_, b)| b.as_slice()).collect();
        assert_eq!(
            bodies,
            [b"receipt-7".as_slice(), b"receipt-9"],
            "oldest first"
        );
        assert_eq!(store.cursor("XBB").unwrap().after, 9);
        store.receipt_taken(&owed[0].0).unwrap();
        let left: Vec<Vec<u8>> = store
            .owed_receipts("XBB")
            .unwrap()
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        assert_eq!(left, [b"receipt-9".to_vec()]);
        assert_eq!(store.owed_receipts("XCC").unwrap().len(), 1);
    }

    /// Of two receipts for a record stored in either order (their pages' receipts travel
    /// apart, and may be stored at once), the higher version stays.
    #[test]
    fn a_lower_receipt_never_replaces_a_higher_one() {
        let (_dir, store, own) = store_with_one();
        let entry = |v: u32| json!({"version": v, "retracted": false});
        store.put_receipts("XBB", [(own.id, &entry(2))]).unwrap();
        store.put_receipts("XBB", [(own.id, &entry(1))]).unwrap();
        assert_eq!(store.receipt(&own.id, "XBB").unwrap(), Some(entry(2)));
        store.put_receipts("XBB", [(own.id, &entry(3))]).unwrap();
        assert_eq!(store.receipt(&own.id, "XBB").unwrap(), Some(entry(3)));
    }
}
