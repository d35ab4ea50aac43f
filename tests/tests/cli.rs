//! The command line against real node processes: plain `serve` on the embedded default,
//! XLSX import, and `reindex`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ammotrace_e2e::{TestNode, node_binary};
use serde_json::Value;

#[tokio::test]
async fn plain_serve_initialises_the_embedded_default_on_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(node_binary())
        .arg("serve")
        .current_dir(dir.path())
        .env("RUST_LOG", "ammotrace=warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let mut api = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("API:") {
            api = rest.split_whitespace().next().map(str::to_owned);
        }
        printed.push(line.clone());
        if line.trim().starts_with("data:") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = printed.join("\n");
    // Port 8600 may be taken on a shared machine; then serve fails, and says so.
    let api = api.unwrap_or_else(|| panic!("no API line in: {text}"));
    assert!(api.starts_with("http://127.0.0.1:"), "{api}");
    assert!(text.contains("ammotrace-data/admin.token"), "{text}");
    let data = dir.path().join("ammotrace-data");
    let config = std::fs::read_to_string(data.join("config.toml")).unwrap();
    assert!(config.contains("node_id = \"XAA\""));
    assert!(
        config.lines().filter(|l| l.starts_with('#')).count() > 5,
        "config.toml is commented"
    );
    assert!(data.join("node.key").exists() && data.join("tls.crt").exists());
}

#[tokio::test]
async fn xlsx_import_and_reindex() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    let header = [
        "Record Ref",
        "date",
        "country",
        "event_type",
        "location_precision",
        "tlp",
        "item_category",
        "calibre",
        "headstamp",
        "lot",
        "quantity",
    ];
    for (c, h) in header.iter().enumerate() {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    let rows = [
        [
            "S1",
            "2024-02-03",
            "XAA",
            "seizure",
            "country",
            "GREEN",
            "small_arms_ammunition",
            "7,62х39",
            "539 85",
            "LOT 21-85",
            "",
        ],
        [
            "S1",
            "2024-02-03",
            "XAA",
            "seizure",
            "country",
            "GREEN",
            "small_arms_ammunition",
            "5.45x39",
            "270 98",
            "77-98",
            "",
        ],
        [
            "S2",
            "2024-02-04",
            "XAA",
            "seizure",
            "country",
            "AMBER",
            "small_arms_ammunition",
            "9mm Luger",
            "PPU 19",
            "UF7387/19",
            "",
        ],
    ];
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            if !cell.is_empty() {
                sheet.write_string(r as u32 + 1, c as u16, *cell).unwrap();
            }
        }
        // Quantities as spreadsheet numbers.
        sheet.write_number(r as u32 + 1, 10, 1080.0).unwrap();
    }
    let bytes = book.save_to_buffer().unwrap();
    let a = node
        .import(
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            bytes,
            "",
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        a.body["accepted"], 2,
        "rows with one Record Ref form one record"
    );
    let hit = node
        .search(&[("lot", "21-85"), ("calibre", "7.62x39")])
        .await
        .unwrap();
    let first = &hit.body["hits"][0];
    assert_eq!(first["item"]["quantity"]["count"], 1080);
    assert_eq!(
        first["item"]["calibre"]["derived"]["canonical_id"],
        "7.62x39"
    );
    let before: Vec<Value> = hit.body["hits"].as_array().unwrap().clone();

    // reindex on the stopped node rebuilds the same answers.
    let mut node = node;
    node.stop().unwrap();
    let out = Command::new(node_binary())
        .args(["reindex", "--data-dir"])
        .arg(&node.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reindexed 3 items"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let node = node.restart().await.unwrap();
    let again = node
        .search(&[("lot", "21-85"), ("calibre", "7.62x39")])
        .await
        .unwrap();
    assert_eq!(again.body["hits"].as_array().unwrap(), &before);
}

/// A reader that stops early (`ammotrace search … | head -1`) ends the command quietly and
/// successfully: no panic on the broken pipe, for printed answers and streamed exports alike.
#[tokio::test]
async fn output_to_a_closed_pipe_ends_quietly() {
    let node = TestNode::spawn("XAA").await.unwrap();
    assert_eq!(
        node.post_record(&minimal("PIPE-1")).await.unwrap().status,
        201
    );
    for args in [
        &["search", "--lot", "PIPE-1"][..],
        &["export"][..],
        &["search", "--lot", "PIPE-1", "--json"][..],
    ] {
        let mut child = Command::new(node_binary())
            .args(args)
            .args(["--url", &node.url, "--token", &node.token])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command can have written anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A small valid XAA record with one item of lot `lot`.
fn minimal(lot: &str) -> Value {
    serde_json::json!({
        "originating_state": "XAA",
        "event": {"event_type": "seizure", "date": {"start": "2024"},
                  "location": {"country": "XAA", "precision": "country"}},
        "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": lot}],
        "sharing": {"tlp": "GREEN"}
    })
}

fn cli_record(id: &str, lot: &str, count: i64) -> Value {
    serde_json::json!({
        "record_id": id,
        "originating_state": "XAA",
        "event": {"event_type": "seizure", "date": {"start": "2024"},
                  "location": {"country": "XAA", "precision": "country"}},
        "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": lot,
                   "quantity": {"count": count, "unit": "rounds"}}],
        "sharing": {"tlp": "GREEN"}
    })
}

/// `ammotrace import` in batches: all or nothing means across batches too (a record id twice
/// in the file stores nothing), rows are named by their line in the file, and an import that
/// stores nothing fails.
#[tokio::test]
async fn batched_imports_keep_their_promises() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = |n: u32| format!("urn:uuid:019ad2f0-0000-7000-8000-{n:012}");
    let write = |name: &str, records: &[Value]| {
        let path = dir.path().join(name);
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    };
    let import = |path: &std::path::Path, extra: &[&str]| {
        Command::new(node_binary())
            .arg("import")
            .arg(path)
            .args(["--batch", "2", "--url", &node.url, "--token", &node.token])
            .args(extra)
            .output()
            .unwrap()
    };

    // Line 5 repeats line 1's id, two batches later.
    let mut records: Vec<Value> = (1..=4).map(|n| cli_record(&id(n), "DUP-1", 10)).collect();
    records.push(cli_record(&id(1), "DUP-1", 10));
    let out = import(&write("twice.jsonl", &records), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("row 5") && stderr.contains("row 1"),
        "{stderr}"
    );
    assert!(node.export_lines().await.unwrap().is_empty());

    // Partial: the bad record on line 5 is named as row 5, not as row 1 of its batch.
    let mut records: Vec<Value> = (11..=14)
        .map(|n| cli_record(&id(n), "ROWS-1", 10))
        .collect();
    records.push(cli_record(&id(15), "ROWS-1", -1));
    let out = import(&write("rows.jsonl", &records), &["--partial"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("row 5"), "{stderr}");
    assert!(!stderr.contains("request failed"), "{stderr}");
    assert_eq!(node.export_lines().await.unwrap().len(), 4);

    // Nothing stored is a failure, even with --partial.
    let bad: Vec<Value> = (21..=23).map(|n| cli_record(&id(n), "BAD-1", -1)).collect();
    let out = import(&write("bad.jsonl", &bad), &["--partial"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no record was stored"));
}

/// Commands that would act behind a running node's back refuse, and so do inputs that would
/// only fail later: a key rotation while the node runs, a card with a URL partners cannot use,
/// a reindex of a directory without a store.
#[tokio::test]
async fn commands_refuse_what_would_fail_later() {
    let mut node = TestNode::spawn("XAA").await.unwrap();
    let keys_before = std::fs::read_to_string(node.data_dir.join("keys.json")).unwrap();
    let out = node.command(&["keys", "rotate"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(node.data_dir.join("keys.json")).unwrap(),
        keys_before
    );
    let out = node
        .command(&["peers", "card", "--url", "not-a-url"])
        .unwrap();
    assert!(!out.status.success());
    // A second node on the same directory says why it cannot start.
    let out = node
        .command(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--federation-listen",
            "127.0.0.1:0",
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another node"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.stop().unwrap();
    let out = node.command(&["keys", "rotate"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A card for a host the TLS certificate does not name would give partners a node they
    // cannot connect to: refused, saying how to make a certificate that names it.
    let card = ["peers", "card", "--url", "https://xaa.example:8601"];
    let out = node.command(&card).unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("not valid for xaa.example") && said.contains("keys tls"),
        "{said}"
    );
    let out = node
        .command(&["keys", "tls", "--name", "xaa.example"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = node.command(&card).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The key was rotated: the card names the first key too, for partners added from now on.
    let keys: Value =
        serde_json::from_slice(&std::fs::read(node.data_dir.join("keys.json")).unwrap()).unwrap();
    let first = &keys["keys"][0];
    assert_eq!(
        issued["first_key"],
        format!(
            "{} {}",
            first["key_id"].as_str().unwrap(),
            first["public_key"].as_str().unwrap()
        )
    );
    assert_ne!(issued["first_key"], issued["public_key"]);
    assert_eq!(
        issued["certificate"].as_str().unwrap(),
        std::fs::read_to_string(node.data_dir.join("tls.crt")).unwrap()
    );

    let empty = tempfile::tempdir().unwrap();
    let init = Command::new(node_binary())
        .args([
            "init",
            "--node-id",
            "XAA",
            "--tls-name",
            "node.xaa.example",
            "--data-dir",
        ])
        .arg(empty.path().join("d"))
        .output()
        .unwrap();
    assert!(init.status.success());
    let card = Command::new(node_binary())
        .args([
            "peers",
            "card",
            "--url",
            "https://node.xaa.example:8601",
            "--data-dir",
        ])
        .arg(empty.path().join("d"))
        .output()
        .unwrap();
    assert!(
        card.status.success(),
        "{}",
        String::from_utf8_lossy(&card.stderr)
    );
    let out = Command::new(node_binary())
        .args(["reindex", "--data-dir"])
        .arg(empty.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store"));
    let out = Command::new(node_binary())
        .args(["audit", "verify", "--data-dir"])
        .arg(empty.path().join("elsewhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no audit log"));
}

/// Client commands given only the data directory find the node where it really listens (here
/// a port the system chose), not where config.toml says.
#[tokio::test]
async fn client_commands_find_the_running_node_from_its_directory() {
    let mut node = TestNode::spawn("XAA").await.unwrap();
    assert_eq!(
        node.post_record(&minimal("DIR-42")).await.unwrap().status,
        201
    );
    let out = node.command(&["export"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("DIR-42"));
    node.stop().unwrap();
    assert!(!node.data_dir.join("api.url").exists());
}
