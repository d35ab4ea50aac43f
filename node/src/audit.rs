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
        Ok(AuditLog {
            path,
            state: Mutex::new(Tail { file, seq, hash }),
        })
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
        tail.file.write_all(&line)?;
        if sync {
            tail.file.sync_data()?;
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
}
