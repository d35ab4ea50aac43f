//! Helpers for end-to-end tests: [`TestNode`] starts a real `ammotrace` node process (real
//! sled, tantivy, HTTP) on 127.0.0.1 port 0 in a temporary data directory, and talks to it
//! with typed request helpers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// Path of the node binary built with this crate: `target/<profile>/ammotrace-e2e-node`,
/// beside the `deps/` folder holding the running test binary (`AMMOTRACE_BIN` overrides).
pub fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AMMOTRACE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile_dir.join("ammotrace-e2e-node")
}

/// The repository's `../shared/data` (present beside the checkout in development and CI).
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// A running node process and its data directory.
pub struct TestNode {
    pub node_id: String,
    pub url: String,
    /// Port of the federation API (HTTPS), kept across restarts.
    pub federation_port: u16,
    pub token: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    pub http: reqwest::Client,
}

/// A response's status and JSON body (Null when not JSON), and its content type.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The `pointer` of a problem+json answer.
    pub fn pointer(&self) -> Option<&str> {
        self.body.get("pointer").and_then(Value::as_str)
    }
    pub fn is_problem(&self) -> bool {
        self.content_type.starts_with("application/problem+json")
    }
    pub fn seq(&self) -> Option<u64> {
        self.headers
            .get("ammotrace-seq")?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }
}

impl TestNode {
    /// Initialises a fresh data directory for `node_id` and starts a node on it.
    pub async fn spawn(node_id: &str) -> anyhow::Result<TestNode> {
        TestNode::spawn_with_config(node_id, |text| text).await
    }

    /// Like [`TestNode::spawn`], with `edit` applied to the `config.toml` that `init` wrote.
    pub async fn spawn_with_config(
        node_id: &str,
        edit: impl FnOnce(String) -> String,
    ) -> anyhow::Result<TestNode> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("data");
        let status = Command::new(node_binary())
            .args(["init", "--data-dir"])
            .arg(&data_dir)
            .args(["--node-id", node_id])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "init failed");
        let config = data_dir.join("config.toml");
        std::fs::write(&config, edit(std::fs::read_to_string(&config)?))?;
        let mut node = TestNode::start(&data_dir, node_id, 0).await?;
        node._tmp = Some(tmp);
        Ok(node)
    }

    /// Starts a node process on an initialised data directory, its federation API on
    /// `federation_port` (0: any free port).
    pub async fn start(
        data_dir: &Path,
        node_id: &str,
        federation_port: u16,
    ) -> anyhow::Result<TestNode> {
        let mut child = Command::new(node_binary())
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--federation-listen")
            .arg(format!("127.0.0.1:{federation_port}"))
            .env(
                "RUST_LOG",
                std::env::var("AMMOTRACE_TEST_LOG").unwrap_or_else(|_| "ammotrace=warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (url, federation_port) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<(String, u16)> {
                let mut lines = BufReader::new(stdout).lines();
                let mut base = None;
                while let Some(line) = lines.next() {
                    let line = line?;
                    if let Some(rest) = line.trim().strip_prefix("API:") {
                        let url = rest.split_whitespace().next().unwrap_or_default();
                        base = Some(url.trim_end_matches("/api/v1").to_owned());
                    }
                    if let Some(rest) = line.trim().strip_prefix("federation:") {
                        let url = rest.split_whitespace().next().unwrap_or_default();
                        let port = url
                            .trim_start_matches("https://")
                            .split(['/', ':'])
                            .nth(1)
                            .and_then(|p| p.parse().ok())
                            .unwrap_or(0);
                        // Keep draining stdout so the child never blocks on a full pipe.
                        std::thread::spawn(move || for _ in lines.by_ref() {});
                        return Ok((base.unwrap_or_default(), port));
                    }
                }
                bail!("the node exited before printing its address")
            })
            .await??;
        let token = std::fs::read_to_string(data_dir.join("admin.token"))?
            .trim()
            .to_owned();
        Ok(TestNode {
            node_id: node_id.to_owned(),
            url,
            federation_port,
            token,
            data_dir: data_dir.to_owned(),
            _tmp: None,
            child: Some(child),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
        })
    }

    /// Stops the process gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status()?;
            let status = child.wait()?;
            anyhow::ensure!(status.success(), "node exited with {status}");
        }
        Ok(())
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops (gracefully, unless already dead) and starts again on the same data directory.
    pub async fn restart(mut self) -> anyhow::Result<TestNode> {
        self.stop()?;
        let tmp = self._tmp.take();
        let mut node = TestNode::start(&self.data_dir, &self.node_id, self.federation_port).await?;
        node._tmp = tmp;
        Ok(node)
    }

    /// Starts a stopped node again (same data directory and federation port).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the node is running");
        let mut fresh =
            TestNode::start(&self.data_dir, &self.node_id, self.federation_port).await?;
        self.url = std::mem::take(&mut fresh.url);
        self.child = fresh.child.take();
        Ok(())
    }

    /// Runs an `ammotrace` command (e.g. `keys rotate`) against this node's data directory.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let output = Command::new(node_binary())
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()?;
        Ok(output)
    }

    /// Waits (up to `timeout`) until `GET /api/v1/records/{id}` shows version `version`.
    pub async fn wait_for_version(
        &self,
        id: &str,
        version: u64,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let answer = self.get_record(id).await?;
            if answer.status == 200 && answer.body["record_version"].as_u64() >= Some(version) {
                return Ok(answer.body);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{}: record {id} v{version} did not arrive within {timeout:?} (last: {} {})",
                    self.node_id,
                    answer.status,
                    answer.body
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn answer(response: reqwest::Response) -> anyhow::Result<Answer> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            content_type,
            headers,
            body,
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        TestNode::answer(request.send().await?).await
    }

    pub async fn post_record(&self, record: &Value) -> anyhow::Result<Answer> {
        self.send(
            self.request(reqwest::Method::POST, "/api/v1/records")
                .json(record),
        )
        .await
    }

    pub async fn put_record(&self, id: &str, record: &Value) -> anyhow::Result<Answer> {
        self.send(
            self.request(reqwest::Method::PUT, &format!("/api/v1/records/{id}"))
                .json(record),
        )
        .await
    }

    pub async fn get_record(&self, id: &str) -> anyhow::Result<Answer> {
        self.send(self.request(reqwest::Method::GET, &format!("/api/v1/records/{id}")))
            .await
    }

    pub async fn delete_record(&self, id: &str) -> anyhow::Result<Answer> {
        self.send(self.request(
            reqwest::Method::DELETE,
            &format!("/api/v1/records/{id}?reason=test"),
        ))
        .await
    }

    pub async fn import(
        &self,
        media_type: &str,
        body: Vec<u8>,
        query: &str,
    ) -> anyhow::Result<Answer> {
        self.send(
            self.request(reqwest::Method::POST, &format!("/api/v1/import{query}"))
                .header("content-type", media_type)
                .body(body),
        )
        .await
    }

    /// `GET /healthz`: the store's last change, the index's and the statistics cache's.
    pub async fn health(&self) -> anyhow::Result<Value> {
        Ok(self
            .send(self.http.get(format!("{}/healthz", self.url)))
            .await?
            .body)
    }

    /// Searches, waiting until every write so far is indexed. The node waits up to 10 s for
    /// its index and then answers 503 "index behind"; on a loaded machine (a rebuild after a
    /// crash, a large import) this asks again, for up to two minutes.
    pub async fn search(&self, params: &[(&str, &str)]) -> anyhow::Result<Answer> {
        let seq = self.health().await?["last_seq"]
            .as_u64()
            .unwrap_or(0)
            .to_string();
        let mut query: Vec<(&str, &str)> = params.to_vec();
        query.push(("min_seq", &seq));
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let answer = self
                .send(
                    self.request(reqwest::Method::GET, "/api/v1/search")
                        .query(&query),
                )
                .await?;
            let behind = answer.status == 503 && answer.body["title"] == "index behind";
            if !behind || std::time::Instant::now() >= deadline {
                return Ok(answer);
            }
        }
    }

    /// Record ids of the hits of a search, in order.
    pub async fn search_ids(&self, params: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
        let answer = self.search(params).await?;
        anyhow::ensure!(answer.status == 200, "search failed: {:?}", answer.body);
        Ok(answer.body["hits"]
            .as_array()
            .map(|hits| {
                hits.iter()
                    .filter_map(|h| h["record_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The receipts partners sent for own record `id` (`GET /api/v1/records/{id}/receipts`).
    pub async fn receipts(&self, id: &str) -> anyhow::Result<Vec<Value>> {
        let a = self
            .send(self.request(
                reqwest::Method::GET,
                &format!("/api/v1/records/{id}/receipts"),
            ))
            .await?;
        Ok(a.body["receipts"].as_array().cloned().unwrap_or_default())
    }

    /// How far this node has pulled `origin`'s feed (`pulled_after` in `GET /api/v1/peers`;
    /// 0 when it has not yet).
    pub async fn pulled_after(&self, origin: &str) -> anyhow::Result<u64> {
        let peers = self
            .send(self.request(reqwest::Method::GET, "/api/v1/peers"))
            .await?;
        Ok(peers.body["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == origin)
            .and_then(|p| p["pulled_after"].as_u64())
            .unwrap_or(0))
    }

    /// Number of records in the store, by export.
    pub async fn export_lines(&self) -> anyhow::Result<Vec<Value>> {
        let response = self
            .request(reqwest::Method::GET, "/api/v1/export")
            .send()
            .await?;
        let text = response.text().await?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

pub mod federation;
