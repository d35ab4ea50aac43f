//! [`TestFederation`]: N real nodes on 127.0.0.1, each with its federation API over TLS on a
//! free port, wired to each other with `ammotrace peers card` / `peers add` (pinned keys and
//! certificates) and the policies a test asks for (every other pair: mode none).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::{TestNode, node_binary};

/// Waits (up to 3 minutes) until `node` holds `n` records, then checks that they are `n`
/// distinct ones, all from `origin`, and that its cursor for `origin` is at `last_seq`: a
/// catch-up with no loss and no duplicates. Returns the exported records.
pub async fn assert_caught_up(
    node: &TestNode,
    origin: &str,
    n: usize,
    last_seq: u64,
) -> Vec<Value> {
    let lines = eventually(
        Duration::from_secs(180),
        &format!("{} to hold {n} records", node.node_id),
        || async {
            let lines = node.export_lines().await?;
            Ok((lines.len() >= n).then_some(lines))
        },
    )
    .await
    .unwrap();
    assert_eq!(lines.len(), n, "no duplicates, no loss");
    let mut ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["record_id"].as_str())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "every record once");
    assert!(lines.iter().all(|l| l["originating_state"] == origin));
    assert_eq!(node.pulled_after(origin).await.unwrap(), last_seq);
    lines
}

pub struct TestFederation {
    pub nodes: BTreeMap<String, TestNode>,
}

/// A free TCP port on 127.0.0.1 for a node to bind a little later. It is taken below the
/// kernel's ephemeral range (32768 and up), so outgoing connections of running nodes cannot
/// grab it in between; probing starts at a spot that differs per process and call. A port is
/// handed out once per process, so a test running alongside cannot take one that a stopped
/// node (or one not yet started) is about to bind.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(101)) % 12_000) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in 20000-31999")
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(node_binary())
        .args(args)
        .stderr(Stdio::piped())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "ammotrace {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// A policy document with the test's usual defaults (everything, every category).
pub fn policy(mode: &str, overrides: Value) -> Value {
    let mut p = json!({
        "mode": mode,
        "categories": ["*"],
        "fields": ["*"],
        "location_precision": "exact",
    });
    if let (Some(p), Some(o)) = (p.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            p.insert(k.clone(), v.clone());
        }
    }
    p
}

impl TestFederation {
    /// Starts nodes `ids`; `policies` lists `(from, to, policy)`: what `from` shares with `to`.
    pub async fn start(ids: &[&str], policies: &[(&str, &str, Value)]) -> anyhow::Result<Self> {
        let mut prepared = Vec::new();
        for id in ids {
            let tmp = tempfile::tempdir()?;
            let data_dir = tmp.path().join("data");
            let dir = data_dir.to_string_lossy().into_owned();
            run(&["init", "--data-dir", &dir, "--node-id", id])?;
            let port = free_port()?;
            let card = run(&[
                "peers",
                "card",
                "--data-dir",
                &dir,
                "--url",
                &format!("https://127.0.0.1:{port}"),
            ])?;
            let card_path = tmp.path().join("card.json");
            std::fs::write(&card_path, card)?;
            prepared.push((id.to_string(), tmp, data_dir, port, card_path));
        }
        for (id, tmp, data_dir, _, _) in &prepared {
            for (other, _, _, _, card) in &prepared {
                if other == id {
                    continue;
                }
                let doc = policies
                    .iter()
                    .find(|(from, to, _)| from == id && to == other)
                    .map(|(_, _, p)| p.clone())
                    .unwrap_or_else(|| json!({ "mode": "none" }));
                let policy_path = tmp.path().join(format!("policy-{other}.json"));
                std::fs::write(&policy_path, serde_json::to_vec(&doc)?)?;
                run(&[
                    "peers",
                    "add",
                    "--data-dir",
                    &data_dir.to_string_lossy(),
                    "--card",
                    &card.to_string_lossy(),
                    "--policy",
                    &policy_path.to_string_lossy(),
                ])?;
            }
            let config = data_dir.join("config.toml");
            let text = std::fs::read_to_string(&config)?
                .replace("pull_interval_ms = 5000", "pull_interval_ms = 500");
            std::fs::write(&config, text)?;
        }
        let mut nodes = BTreeMap::new();
        for (id, tmp, data_dir, port, _) in prepared {
            let mut node = TestNode::start(&data_dir, &id, port)
                .await
                .with_context(|| format!("starting {id}"))?;
            node._tmp = Some(tmp);
            nodes.insert(id, node);
        }
        Ok(TestFederation { nodes })
    }

    pub fn node(&self, id: &str) -> &TestNode {
        &self.nodes[id]
    }

    pub fn node_mut(&mut self, id: &str) -> &mut TestNode {
        self.nodes.get_mut(id).expect("no such node")
    }

    /// Replaces `from`'s policy for `to` in its config.toml (restart `from` to apply).
    pub fn set_policy(&self, from: &str, to: &str, policy: &Value) -> anyhow::Result<()> {
        let node = self.node(from);
        let path = node.data_dir.join("config.toml");
        let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
        let peers = config
            .get_mut("peers")
            .and_then(|p| p.as_array_mut())
            .context("no peers")?;
        let peer = peers
            .iter_mut()
            .find(|p| p.get("id").and_then(|i| i.as_str()) == Some(to))
            .context("no such peer")?;
        let policy: toml::Value = toml::Value::try_from(policy)?;
        peer.as_table_mut()
            .context("peer is not a table")?
            .insert("policy".into(), policy);
        std::fs::write(&path, toml::to_string(&config)?)?;
        Ok(())
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
