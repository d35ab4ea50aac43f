//! The change log and the own log, written in groups (decision 0016).
//!
//! Both logs are sequences: the change log numbers every write of this store (`seq`), the own
//! log every own version (`own_seq`, the sequence partners pull). Since decision 0016 a sled
//! value holds a run of up to [`GROUP`] entries with consecutive numbers, keyed by the last
//! one's number (u64 BE), so that storing a batch of records costs one insert per log per
//! [`GROUP`] records instead of one per record. A range read from key `after + 1` starts at
//! the group holding `after + 1`.
//!
//! - change-log entry (22 bytes): `RecordId(16) ‖ version u32 BE ‖ retracted u8 ‖ created u8`
//! - own-log entry: `RecordId(16) ‖ version u32 BE ‖ digest length u8 ‖ claims digest`
//!
//! Stores written before keep one entry per key in the trees `changes` and `own_log`; their
//! numbers all come before any grouped one, so a reader takes those first.

use sled::transaction::TransactionalTree;

use super::{Change, OwnChange, StoreError, Tx, abort};
use crate::record::RecordId;

/// The most entries one sled value holds: a change-log group is at most 176 bytes, an own-log
/// group about 520. Larger groups save few inserts more and grow the store on disk: sled
/// rewrites whole leaves, and leaves of larger values leave more garbage in its log
/// (decision 0016 has the measurements).
pub(super) const GROUP: usize = 8;

const CHANGE_LEN: usize = 22;

/// The entries of one log written in one transaction, inserted a group at a time.
pub(super) struct Groups<'t> {
    tree: &'t TransactionalTree,
    buf: Vec<u8>,
    count: usize,
    last: u64,
}

impl<'t> Groups<'t> {
    pub(super) fn new(tree: &'t TransactionalTree) -> Groups<'t> {
        Groups {
            tree,
            buf: Vec::new(),
            count: 0,
            last: 0,
        }
    }

    /// Appends an entry numbered `seq`. A number that does not follow the previous one starts
    /// a new group, so a group's numbers are always consecutive.
    fn push(&mut self, seq: u64, entry: impl FnOnce(&mut Vec<u8>)) -> Tx<()> {
        if self.count > 0 && seq != self.last + 1 {
            self.finish()?;
        }
        entry(&mut self.buf);
        self.count += 1;
        self.last = seq;
        if self.count == GROUP {
            self.finish()?;
        }
        Ok(())
    }

    pub(super) fn push_change(&mut self, change: &Change) -> Tx<()> {
        self.push(change.seq, |buf| {
            buf.extend_from_slice(change.id.as_bytes());
            buf.extend_from_slice(&change.version.to_be_bytes());
            buf.push(u8::from(change.retracted));
            buf.push(u8::from(change.created));
        })
    }

    pub(super) fn push_own(
        &mut self,
        own_seq: u64,
        id: &RecordId,
        version: u32,
        digest: &str,
    ) -> Tx<()> {
        let Ok(len) = u8::try_from(digest.len()) else {
            return abort(StoreError::Seal(format!(
                "a claims digest of {} bytes does not fit the own log",
                digest.len()
            )));
        };
        self.push(own_seq, |buf| {
            buf.extend_from_slice(id.as_bytes());
            buf.extend_from_slice(&version.to_be_bytes());
            buf.push(len);
            buf.extend_from_slice(digest.as_bytes());
        })
    }

    /// Inserts the entries pushed since the last group. Call before the transaction ends.
    pub(super) fn finish(&mut self) -> Tx<()> {
        if self.count > 0 {
            self.tree
                .insert(&self.last.to_be_bytes(), std::mem::take(&mut self.buf))?;
            self.count = 0;
        }
        Ok(())
    }
}

fn seq_of(key: &[u8], what: &str) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(
        key.try_into()
            .map_err(|_| StoreError::Corrupt(format!("{what} key")))?,
    ))
}

/// The number of a group's first entry, from its last one's and its length; `None` for an
/// empty group or numbers no store assigns (a damaged key).
fn first_of(last: u64, entries: usize) -> Option<u64> {
    let n = u64::try_from(entries).ok().filter(|n| *n > 0)?;
    last.checked_add(1)?.checked_sub(n)
}

fn id_version(entry: &[u8]) -> Option<(RecordId, u32)> {
    let id = RecordId(uuid::Uuid::from_bytes(entry.get(..16)?.try_into().ok()?));
    let version = u32::from_be_bytes(entry.get(16..20)?.try_into().ok()?);
    Some((id, version))
}

fn change(seq: u64, entry: &[u8]) -> Option<Change> {
    let (id, version) = id_version(entry)?;
    Some(Change {
        seq,
        id,
        version,
        retracted: *entry.get(20)? == 1,
        created: entry.get(21) == Some(&1),
    })
}

/// A change-log entry stored on its own (before decision 0016).
pub(super) fn single_change(key: &[u8], value: &[u8]) -> Result<Change, StoreError> {
    change(seq_of(key, "change log")?, value)
        .ok_or_else(|| StoreError::Corrupt("change log entry".into()))
}

/// The changes of a group, in order.
pub(super) fn change_group(key: &[u8], value: &[u8]) -> Result<Vec<Change>, StoreError> {
    let bad = || StoreError::Corrupt("change log group".into());
    let last = seq_of(key, "change log")?;
    if value.is_empty() || !value.len().is_multiple_of(CHANGE_LEN) {
        return Err(bad());
    }
    let first = first_of(last, value.len() / CHANGE_LEN).ok_or_else(bad)?;
    value
        .chunks_exact(CHANGE_LEN)
        .zip(first..)
        .map(|(entry, seq)| change(seq, entry).ok_or_else(bad))
        .collect()
}

/// An own-log entry stored on its own (before decision 0016): the digest is the rest.
pub(super) fn single_own(key: &[u8], value: &[u8]) -> Result<OwnChange, StoreError> {
    let seq = seq_of(key, "own log")?;
    let (id, version) =
        id_version(value).ok_or_else(|| StoreError::Corrupt("own log entry".into()))?;
    let digest = String::from_utf8_lossy(value.get(20..).unwrap_or_default()).into_owned();
    Ok(OwnChange {
        seq,
        id,
        version,
        digest,
    })
}

/// The own changes of a group, in order.
pub(super) fn own_group(key: &[u8], value: &[u8]) -> Result<Vec<OwnChange>, StoreError> {
    let bad = || StoreError::Corrupt("own log group".into());
    let last = seq_of(key, "own log")?;
    let mut entries = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let (id, version) = id_version(rest).ok_or_else(bad)?;
        let len = usize::from(*rest.get(20).ok_or_else(bad)?);
        let digest = rest.get(21..21 + len).ok_or_else(bad)?;
        entries.push((id, version, String::from_utf8_lossy(digest).into_owned()));
        rest = &rest[21 + len..];
    }
    let first = first_of(last, entries.len()).ok_or_else(bad)?;
    Ok(entries
        .into_iter()
        .zip(first..)
        .map(|((id, version, digest), seq)| OwnChange {
            seq,
            id,
            version,
            digest,
        })
        .collect())
}

/// Up to `limit` entries numbered above `after`, in order: first from the tree of single
/// entries (older stores), then from the groups.
pub(super) fn read_after<T>(
    singles: &sled::Tree,
    groups: &sled::Tree,
    after: u64,
    limit: usize,
    single: impl Fn(&[u8], &[u8]) -> Result<T, StoreError>,
    group: impl Fn(&[u8], &[u8]) -> Result<Vec<T>, StoreError>,
    seq: impl Fn(&T) -> u64,
) -> Result<Vec<T>, StoreError> {
    let start = after.saturating_add(1).to_be_bytes();
    let mut out = Vec::new();
    for kv in singles.range(start..) {
        if out.len() >= limit {
            return Ok(out);
        }
        let (k, v) = kv?;
        out.push(single(&k, &v)?);
    }
    for kv in groups.range(start..) {
        if out.len() >= limit {
            break;
        }
        let (k, v) = kv?;
        let room = limit - out.len();
        out.extend(
            group(&k, &v)?
                .into_iter()
                .filter(|e| seq(e) > after)
                .take(room),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_s_first_number_never_overflows() {
        assert_eq!(first_of(8, 8), Some(1));
        assert_eq!(first_of(8, 1), Some(8));
        assert_eq!(first_of(8, 0), None);
        assert_eq!(first_of(3, 8), None);
        assert_eq!(first_of(u64::MAX, 1), None);
        let key = u64::MAX.to_be_bytes();
        assert!(matches!(
            change_group(&key, &[0; CHANGE_LEN]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
