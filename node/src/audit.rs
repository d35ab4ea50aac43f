//! The audit log: append-only and hash-chained (design §6). One JSON object per line in
//! `DATA_DIR/audit.log`: `{"seq", "at", "event", …details, "prev", "hash"}` where `hash` is
//! base64url SHA-256 of the JCS of the entry without `hash`, and `prev` the previous entry's
//! `hash` (empty for the first). Editing, removing or reordering any line breaks the chain
//! from there on; `ammotrace audit verify` reports the first broken line.
//!
//! Disclosures, refusals, policy and key changes are synced to disk before the action they
//! record is answered; routine entries are flushed to the OS.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub const AUDIT_FILE: &str = "audit.log";

pub struct AuditLog {
    path: PathBuf,
    state: Mutex<Tail>,
}

struct Tail {
    file: File,
    seq: u64,
    hash: String,
}

/// Where the chain breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit log line {line} (seq {seq}): {reason}")]
pub struct Broken {
    pub line: usize,
    pub seq: u64,
    pub reason: String,
}

fn entry_hash(entry: &Map<String, Value>) -> String {
    let bytes = crate::envelope::canonical_object(entry).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(Sha256::digest(bytes))
}

impl AuditLog {
    /// Opens the log in `data_dir`, checking its chain first. A broken chain is reported as an
    /// error in the node's log (the node keeps working, and `audit verify` keeps failing);
    /// new entries chain to the last line.
    pub fn open(data_dir: &Path) -> anyhow::Result<AuditLog> {
        let path = data_dir.join(AUDIT_FILE);
        let torn = if path.exists() {
            set_torn_tail_aside(&path)?
        } else {
            None
        };
        let (seq, hash) = if path.exists() {
            match verify(&path) {
                Ok(tail) => tail,
                Err(broken) => {
                    tracing::error!(%broken, "the audit log's hash chain is broken");
                    last_entry(&path)?
                }
            }
        } else {
            (0, String::new())
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        let log = AuditLog {
            path,
            state: Mutex::new(Tail { file, seq, hash }),
        };
        if let Some((bytes, kept_in)) = torn {
            tracing::warn!(bytes = bytes.len(), kept_in = %kept_in.display(), "the audit log ended in part of an entry (a write cut short); set it aside");
            log.append(
                "audit_torn_tail_removed",
                json!({
                    "bytes": bytes.len(),
                    "sha256": URL_SAFE_NO_PAD.encode(Sha256::digest(&bytes)),
                    "kept_in": kept_in.display().to_string(),
                }),
                true,
            )?;
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry; `sync` makes it durable before returning.
    pub fn append(&self, event: &str, details: Value, sync: bool) -> anyhow::Result<()> {
        let mut tail = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut entry = Map::new();
        entry.insert("seq".into(), json!(tail.seq + 1));
        entry.insert(
            "at".into(),
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        entry.insert("event".into(), json!(event));
        if let Value::Object(details) = details {
            for (k, v) in details {
                if !matches!(k.as_str(), "seq" | "at" | "event" | "prev" | "hash") {
                    entry.insert(k, v);
                }
            }
        }
        entry.insert("prev".into(), json!(tail.hash));
        let hash = entry_hash(&entry);
        entry.insert("hash".into(), json!(hash));
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        let before = tail.file.metadata()?.len();
        let written = tail
            .file
            .write_all(&line)
            .and_then(|()| if sync { tail.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // No part of an entry stays behind to glue the next one to.
            if let Err(undo) = tail.file.set_len(before) {
                tracing::error!(error = %undo, "cannot cut a failed audit entry back out");
            }
            return Err(e.into());
        }
        tail.seq += 1;
        tail.hash = hash;
        Ok(())
    }

    /// Appends, logging (not failing) when the log cannot be written.
    pub fn record(&self, event: &str, details: Value, sync: bool) {
        if let Err(e) = self.append(event, details, sync) {
            tracing::error!(error = %e, event, "cannot write the audit log");
        }
    }
}

/// A log whose last line has no end (a write cut short by a crash, a full disk or a power
/// loss) is cut back to its last whole line, and the cut bytes are appended to
/// `audit.log.torn` beside it: the chain goes on from the last whole entry instead of gluing
/// the next one to the fragment. Returns the bytes cut and where they are kept.
fn set_torn_tail_aside(path: &Path) -> anyhow::Result<Option<(Vec<u8>, PathBuf)>> {
    use std::io::{Read, Seek, SeekFrom};
    // Read from the end only: the log may be far larger than memory should hold.
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut tail: Vec<u8> = Vec::new();
    let mut start = len;
    let mut block = 4096u64;
    let keep = loop {
        if start == 0 {
            break 0;
        }
        let from = start.saturating_sub(block);
        let mut chunk = vec![0u8; usize::try_from(start - from)?];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        if start == len && chunk.last() == Some(&b'\n') {
            return Ok(None);
        }
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start = from;
        if let Some(i) = tail.iter().rposition(|b| *b == b'\n') {
            tail.drain(..=i);
            break start + i as u64 + 1;
        }
        block = block.saturating_mul(2);
    };
    if len == 0 {
        return Ok(None);
    }
    let torn = tail;
    let kept_in = path.with_extension("log.torn");
    let mut aside = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&kept_in)?;
    aside.write_all(&torn)?;
    aside.write_all(b"\n")?;
    aside.sync_data()?;
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(keep)?;
    file.sync_data()?;
    Ok(Some((torn, kept_in)))
}

fn last_entry(path: &Path) -> anyhow::Result<(u64, String)> {
    let text = std::fs::read_to_string(path)?;
    let last: Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    Ok((
        last.get("seq").and_then(Value::as_u64).unwrap_or(0),
        last.get("hash")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    ))
}

/// Checks the whole chain of the log at `path`; returns the last sequence number and hash.
pub fn verify(path: &Path) -> Result<(u64, String), Broken> {
    let file = File::open(path).map_err(|e| Broken {
        line: 0,
        seq: 0,
        reason: format!("cannot open: {e}"),
    })?;
    let mut prev = String::new();
    let mut seq = 0u64;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line_no = n + 1;
        let broken = |reason: String| Broken {
            line: line_no,
            seq: seq + 1,
            reason,
        };
        let line = line.map_err(|e| broken(format!("unreadable: {e}")))?;
        let mut entry: Map<String, Value> =
            serde_json::from_str(&line).map_err(|e| broken(format!("not a JSON object: {e}")))?;
        let hash = match entry.remove("hash") {
            Some(Value::String(h)) => h,
            _ => return Err(broken("no hash".into())),
        };
        if entry.get("seq").and_then(Value::as_u64) != Some(seq + 1) {
            return Err(broken(format!("expected seq {}", seq + 1)));
        }
        if entry.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(broken(
                "prev does not name the previous entry's hash".into(),
            ));
        }
        if entry_hash(&entry) != hash {
            return Err(broken("the entry's content does not match its hash".into()));
        }
        seq += 1;
        prev = hash;
    }
    Ok((seq, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_verifies_and_an_edit_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for n in 0..3 {
            log.append("test", json!({ "n": n }), n == 2).unwrap();
        }
        drop(log);
        let path = dir.path().join(AUDIT_FILE);
        assert_eq!(verify(&path).unwrap().0, 3);
        // Reopening continues the chain.
        AuditLog::open(dir.path())
            .unwrap()
            .append("test", json!({}), true)
            .unwrap();
        assert_eq!(verify(&path).unwrap().0, 4);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"n\":1", "\"n\":7", 1)).unwrap();
        let broken = verify(&path).unwrap_err();
        assert_eq!(broken.line, 2);
        // The node still opens its log; the break stays visible.
        AuditLog::open(dir.path())
            .unwrap()
            .append("test", json!({}), true)
            .unwrap();
        assert_eq!(verify(&path).unwrap_err().line, 2);
    }

    /// A write cut short leaves part of an entry at the end of the log: on opening, it is set
    /// aside (kept in `audit.log.torn`), and the chain goes on from the last whole entry, with
    /// an entry that says so; `audit verify` passes.
    #[test]
    fn a_torn_last_line_is_set_aside_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for n in 0..3 {
            log.append("test", json!({ "n": n }), true).unwrap();
        }
        drop(log);
        let path = dir.path().join(AUDIT_FILE);
        let (seq3, hash3) = verify(&path).unwrap();
        let fragment = br#"{"at":"2026-01-01T00:00:00.000Z","event":"disclosure","partner":"XB"#;
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(fragment)
            .unwrap();
        assert!(verify(&path).is_err());
        let log = AuditLog::open(dir.path()).unwrap();
        log.append("after_restart", json!({}), true).unwrap();
        let (seq, _) = verify(&path).unwrap();
        assert_eq!(seq, seq3 + 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[3]["event"], "audit_torn_tail_removed");
        assert_eq!(lines[3]["prev"], json!(hash3));
        assert_eq!(lines[3]["bytes"], json!(fragment.len()));
        assert_eq!(lines[4]["event"], "after_restart");
        let aside = std::fs::read(dir.path().join("audit.log.torn")).unwrap();
        assert_eq!(&aside[..fragment.len()], fragment);
    }

    /// The end of the log is found by reading backwards, whatever the torn part's size: a
    /// fragment longer than the first block read, and a log that is one fragment only.
    #[test]
    fn long_and_lone_torn_tails_are_set_aside_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        let log = AuditLog::open(dir.path()).unwrap();
        log.append("test", json!({ "n": 0 }), true).unwrap();
        drop(log);
        let whole = std::fs::read(&path).unwrap();
        let fragment = vec![b'x'; 10_000];
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&fragment)
            .unwrap();
        assert_eq!(set_torn_tail_aside(&path).unwrap().unwrap().0, fragment);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        assert!(set_torn_tail_aside(&path).unwrap().is_none());
        std::fs::write(&path, b"{\"seq\":1").unwrap();
        assert_eq!(
            set_torn_tail_aside(&path).unwrap().unwrap().0,
            b"{\"seq\":1"
        );
        assert!(std::fs::read(&path).unwrap().is_empty());
        assert!(set_torn_tail_aside(&path).unwrap().is_none());
    }
}
