//! Durability: kill -9 during a bulk import, restart, and every acknowledged record is present
//! and searchable, and the store reopens.

use ammotrace_e2e::TestNode;
use serde_json::json;

fn batch(start: usize, n: usize) -> Vec<u8> {
    let mut body = String::new();
    for i in start..start + n {
        let r = json!({
            "originating_state": "XAA",
            "event": {"event_type": "seizure", "date": {"start": "2025-01-01"},
                      "location": {"country": "XAA", "precision": "country"}},
            "items": [{"item_id": "i1", "item_category": "small_arms_ammunition",
                       "calibre": "7.62x39", "headstamp": "539 85", "lot": format!("K9-{i:06}")}],
            "sharing": {"tlp": "GREEN"}
        });
        body.push_str(&r.to_string());
        body.push('\n');
    }
    body.into_bytes()
}

#[tokio::test]
async fn kill_9_during_bulk_import_loses_no_acknowledged_record() {
    let mut node = TestNode::spawn("XAA").await.unwrap();
    let url = node.url.clone();
    let token = node.token.clone();
    // Writers that keep importing until the node dies, remembering what was acknowledged.
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (url, token, counted) = (url.clone(), token.clone(), counted.clone());
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acked = Vec::new();
            for b in 0.. {
                let start = (w * 1_000_000) + b * 200;
                let sent = http
                    .post(format!("{url}/api/v1/import"))
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(batch(start, 200))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        if let Some(records) = body["records"].as_array() {
                            acked.extend(
                                records
                                    .iter()
                                    .filter_map(|r| r["record_id"].as_str().map(str::to_owned)),
                            );
                            counted.fetch_add(records.len(), std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    _ => break,
                }
            }
            acked
        }));
    }
    // Let the import run until at least 400 records are acknowledged (however slow the
    // machine), then crash the node mid-write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while counted.load(std::sync::atomic::Ordering::SeqCst) < 400 {
        assert!(
            std::time::Instant::now() < deadline,
            "the import acknowledged too little in two minutes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    node.kill9().unwrap();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() >= 400,
        "too few acknowledged records to prove anything: {}",
        acked.len()
    );

    // `crashed` keeps the temporary data directory alive.
    let crashed = node;
    let node = TestNode::start(&crashed.data_dir, "XAA", 0).await.unwrap();
    let exported: std::collections::HashSet<String> = node
        .export_lines()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| r["record_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !exported.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    // Every acknowledged record is searchable once the indexer has replayed the change log.
    for id in acked.iter().step_by(97) {
        let record = node.get_record(id).await.unwrap();
        let lot = record.body["items"][0]["lot"]["raw"]
            .as_str()
            .unwrap()
            .to_owned();
        let ids = node.search_ids(&[("lot", &lot)]).await.unwrap();
        assert!(
            ids.contains(id),
            "{id} ({lot}) not searchable after restart"
        );
    }
    let health = node
        .send(node.http.get(format!("{}/healthz", node.url)))
        .await
        .unwrap();
    assert_eq!(health.body["indexed_seq"], health.body["last_seq"]);
}
