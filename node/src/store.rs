//! The source of truth: records, every version, and the change log, in sled (=0.34.7).
//!
//! This is the only module that imports sled. Trees and their keys:
//! - `record_head`: `RecordId(16)` → `version u32 BE ‖ retracted u8`
//! - `record_versions`: `RecordId(16) ‖ version u32 BE` → the record version, JSON
//! - `changes`: `seq u64 BE` → `RecordId(16) ‖ version u32 BE ‖ retracted u8 ‖ created u8`
//! - `meta`: `b"last_seq"` → `u64 BE`
//!
//! Every write is one sled transaction over the four trees: the version, the head and the
//! change-log entry appear together or not at all. A write is acknowledged only after
//! [`Store::flush`]; the API calls it before answering (a batch shares one flush).

use std::path::Path;

use serde_json::Value;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::record::{Prepared, RecordId};

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
    #[error("record {0} is retracted")]
    Retracted(RecordId),
    #[error("record {0} appears twice in one batch")]
    DuplicateInBatch(RecordId),
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Where a write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub id: RecordId,
    pub version: u32,
    pub seq: u64,
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
    changes: sled::Tree,
    meta: sled::Tree,
}

const LAST_SEQ: &[u8] = b"last_seq";

fn version_key(id: &RecordId, version: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(id.as_bytes());
    key[16..].copy_from_slice(&version.to_be_bytes());
    key
}

fn encode_head(head: Head) -> [u8; 5] {
    let mut v = [0u8; 5];
    v[..4].copy_from_slice(&head.version.to_be_bytes());
    v[4] = u8::from(head.retracted);
    v
}

fn decode_head(bytes: &[u8]) -> Option<Head> {
    let version = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    Some(Head {
        version,
        retracted: *bytes.get(4)? == 1,
    })
}

fn decode_change(seq: &[u8], value: &[u8]) -> Option<Change> {
    let seq = u64::from_be_bytes(seq.try_into().ok()?);
    let id = RecordId(uuid::Uuid::from_bytes(value.get(..16)?.try_into().ok()?));
    let version = u32::from_be_bytes(value.get(16..20)?.try_into().ok()?);
    Some(Change {
        seq,
        id,
        version,
        retracted: *value.get(20)? == 1,
        created: value.get(21) == Some(&1),
    })
}

type Tx<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Appends one version inside a transaction; returns its sequence number.
fn append(
    (head, versions, changes, meta): (
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
    ),
    id: &RecordId,
    version: u32,
    record: &[u8],
    retracted: bool,
    created: bool,
) -> Tx<u64> {
    let last = match meta.get(LAST_SEQ)? {
        Some(b) => u64::from_be_bytes(b.as_ref().try_into().map_err(|_| {
            ConflictableTransactionError::Abort(StoreError::Corrupt("last_seq".into()))
        })?),
        None => 0,
    };
    let seq = last + 1;
    meta.insert(LAST_SEQ, &seq.to_be_bytes())?;
    versions.insert(&version_key(id, version), record)?;
    head.insert(id.as_bytes(), &encode_head(Head { version, retracted }))?;
    let mut change = [0u8; 22];
    change[..20].copy_from_slice(&version_key(id, version));
    change[20] = u8::from(retracted);
    change[21] = u8::from(created);
    changes.insert(&seq.to_be_bytes(), &change)?;
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

fn to_bytes(record: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its keys are strings.
    serde_json::to_vec(record).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(256 * 1024 * 1024)
            .open()?;
        Ok(Store {
            head: db.open_tree("record_head")?,
            versions: db.open_tree("record_versions")?,
            changes: db.open_tree("changes")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// Makes every write so far durable (fsync of sled's log). Call before acknowledging.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Stores new records (version 1, or the version they declare) in one transaction: all of
    /// them or none.
    pub fn create_batch(&self, batch: &mut [Prepared]) -> Result<Vec<Written>, StoreError> {
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
        let encoded: Vec<(RecordId, u32, Vec<u8>)> = batch
            .iter()
            .map(|p| (p.id, p.declared_version.unwrap_or(1), to_bytes(&p.record)))
            .collect();
        let trees = (&self.head, &self.versions, &self.changes, &self.meta);
        flatten(trees.transaction(|t| {
            let mut written = Vec::with_capacity(encoded.len());
            for (id, version, bytes) in &encoded {
                if t.0.get(id.as_bytes())?.is_some() {
                    return abort(StoreError::Exists(*id));
                }
                let seq = append((&t.0, &t.1, &t.2, &t.3), id, *version, bytes, false, true)?;
                written.push(Written {
                    id: *id,
                    version: *version,
                    seq,
                });
            }
            Ok(written)
        }))
    }

    /// Stores a new version of an existing record. A declared `record_version` is the version
    /// the edit was based on (the one the editor read): it must still be the latest, or the
    /// edit would silently undo someone else's. `created_at` is kept from the previous version.
    pub fn update(&self, mut prepared: Prepared) -> Result<Written, StoreError> {
        let id = prepared.id;
        let head = self.head(&id)?.ok_or(StoreError::NotFound(id))?;
        if head.retracted {
            return Err(StoreError::Retracted(id));
        }
        let next = head.version + 1;
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
        if let Some(o) = prepared.record.as_object_mut() {
            o.insert("record_version".into(), Value::from(next));
            if let Some(created) = previous.get("created_at") {
                o.insert("created_at".into(), created.clone());
            }
        }
        self.append_version(id, head.version, next, &prepared.record, false)
    }

    /// Appends a retraction: a copy of the latest version marked `retracted`, with the reason.
    pub fn retract(&self, id: RecordId, reason: &str, now: &str) -> Result<Written, StoreError> {
        let head = self.head(&id)?.ok_or(StoreError::NotFound(id))?;
        if head.retracted {
            return Err(StoreError::Retracted(id));
        }
        let mut record = self
            .get(&id, Some(head.version))?
            .ok_or(StoreError::NotFound(id))?;
        let next = head.version + 1;
        if let Some(o) = record.as_object_mut() {
            o.insert("record_version".into(), Value::from(next));
            o.insert("retracted".into(), Value::Bool(true));
            o.insert(
                "retraction".into(),
                serde_json::json!({ "reason": reason, "at": now }),
            );
            o.insert("updated_at".into(), Value::String(now.into()));
        }
        self.append_version(id, head.version, next, &record, true)
    }

    fn append_version(
        &self,
        id: RecordId,
        expected_head: u32,
        version: u32,
        record: &Value,
        retracted: bool,
    ) -> Result<Written, StoreError> {
        let bytes = to_bytes(record);
        let trees = (&self.head, &self.versions, &self.changes, &self.meta);
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
            let seq = append(
                (&t.0, &t.1, &t.2, &t.3),
                &id,
                version,
                &bytes,
                retracted,
                false,
            )?;
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

    /// A version of a record (the latest when `version` is `None`).
    pub fn get(&self, id: &RecordId, version: Option<u32>) -> Result<Option<Value>, StoreError> {
        let version = match version {
            Some(v) => v,
            None => match self.head(id)? {
                Some(h) => h.version,
                None => return Ok(None),
            },
        };
        match self.versions.get(version_key(id, version))? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{id} v{version}: {e}"))),
            None => Ok(None),
        }
    }

    /// Every version of a record, oldest first.
    pub fn versions(&self, id: &RecordId) -> Result<Vec<Value>, StoreError> {
        self.versions
            .scan_prefix(id.as_bytes())
            .map(|kv| {
                let (_, bytes) = kv?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("{id}: {e}")))
            })
            .collect()
    }

    /// Up to `limit` changes with a sequence number greater than `after`, in order.
    pub fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        self.changes
            .range(start..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode_change(&k, &v).ok_or_else(|| StoreError::Corrupt("change log entry".into()))
            })
            .collect()
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

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Validator;
    use serde_json::json;

    fn prepared(lot: &str) -> Prepared {
        let record = json!({
            "originating_state": "XAA",
            "event": {"event_type": "seizure", "date": {"start": "2024"},
                      "location": {"country": "XAA", "precision": "country"}},
            "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": lot}],
            "sharing": {"tlp": "GREEN"}
        });
        Validator::new("XAA")
            .prepare(record, "2026-01-01T00:00:00Z")
            .unwrap()
    }

    #[test]
    fn versions_heads_and_change_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = vec![prepared("1"), prepared("2")];
        let written = store.create_batch(&mut batch).unwrap();
        assert_eq!(
            written.iter().map(|w| w.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(matches!(
            store.create_batch(&mut batch[..1]),
            Err(StoreError::Exists(_))
        ));

        let mut update = prepared("1b");
        update.id = written[0].id;
        let w = store.update(update.clone()).unwrap();
        assert_eq!((w.version, w.seq), (2, 3));
        update.declared_version = Some(1);
        assert!(matches!(
            store.update(update.clone()),
            Err(StoreError::VersionConflict { .. })
        ));
        // Based on the latest version: accepted as the next one.
        update.declared_version = Some(2);
        assert_eq!(store.update(update).unwrap().version, 3);

        let r = store
            .retract(written[0].id, "entered twice", "2026-01-02T00:00:00Z")
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
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_seq().unwrap(), 5);
        assert_eq!(
            store.get(&written[1].id, None).unwrap().unwrap()["items"][0]["lot"]["raw"],
            "2"
        );
    }
}
