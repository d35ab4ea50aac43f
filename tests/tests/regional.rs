//! Regional aggregation on a real regional node fed by three States over TLS: a hand-computed
//! table with primary and complementary suppression, CSV, cross-border lots, admin-only
//! unsuppressed figures, and a signed snapshot a member State can verify.

use std::time::Duration;

use ammotrace::identity::{Identity, KeyHistory};
use ammotrace_e2e::TestNode;
use ammotrace_e2e::federation::{TestFederation, eventually, policy};
use serde_json::{Value, json};

fn record(state: &str, lot: &str, calibre: &str, rounds: u64, date: &str) -> Value {
    json!({
        "originating_state": state,
        "event": {"event_type": "seizure", "context": ["trafficking_interdiction"],
                  "date": {"start": date}, "location": {"country": state, "precision": "country"}},
        "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": lot,
                   "calibre": calibre, "quantity": {"count": rounds, "unit": "rounds"}}],
        "sharing": {"tlp": "GREEN"}
    })
}

async fn import(node: &TestNode, records: &[Value]) {
    let mut body = Vec::new();
    for r in records {
        body.extend(serde_json::to_vec(r).unwrap());
        body.push(b'\n');
    }
    let a = node.import("application/x-ndjson", body, "").await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
}

async fn stats(node: &TestNode, query: &[(&str, &str)]) -> Value {
    let a = node
        .send(
            node.request(reqwest::Method::GET, "/api/v1/stats")
                .query(query),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body
}

fn cell(table: &Value, key: Value) -> Value {
    table["cells"]
        .as_array()
        .unwrap()
        .iter()
        .chain(table["totals"].as_array().unwrap())
        .find(|c| c["key"] == key)
        .cloned()
        .unwrap_or_else(|| panic!("no cell {key} in {table}"))
}

/// Checks a published figure against the exact one: cell-key noise moves a count by at most 2
/// (never under k = 5); rounds (`top` > 0: the largest seizure in the cell) by Laplace noise of
/// scale 15% of `top`, here within 2 × `top` (over 13 scales: a chance of about 2 in a million).
fn near(v: &Value, exact: u64, top: u64) {
    let got = v
        .as_u64()
        .unwrap_or_else(|| panic!("{v} is not a published figure"));
    let d = got.abs_diff(exact);
    if top == 0 {
        assert!(d <= 2 && got >= 5, "{got} is not {exact} ± 2");
    } else {
        assert!(
            d <= 2 * top,
            "{got} is not {exact} with noise scaled to {top}"
        );
    }
}

#[tokio::test]
async fn a_regional_node_publishes_patterns_without_exposing_single_cases() {
    let share = policy("replicate", json!({"location_precision": "country"}));
    let fed = TestFederation::start(
        &["XAA", "XBB", "XCC", "REG"],
        &[
            ("XAA", "REG", share.clone()),
            ("XBB", "REG", share.clone()),
            ("XCC", "REG", share),
        ],
    )
    .await
    .unwrap();
    // Hand-made data (k = 5):
    //   XAA: 6 seizures of 7.62x39 (100 rounds each), 5 of 5.56x45 (10 each)
    //   XBB: 7 of 7.62x39 (1 each), 1 of 5.56x45 (1000)
    //   XCC: 5 of 7.62x39 (2 each)
    // One lot, "21-85 539", is seized in XAA, XBB and XCC.
    let mut xaa = Vec::new();
    for n in 0..6 {
        xaa.push(record(
            "XAA",
            if n == 0 { "21-85 539" } else { "A-1" },
            "7.62x39",
            100,
            "2024-02-10",
        ));
    }
    for _ in 0..5 {
        xaa.push(record("XAA", "A-2", "5.56x45 NATO", 10, "2024-05-10"));
    }
    let mut xbb = Vec::new();
    for n in 0..7 {
        xbb.push(record(
            "XBB",
            if n == 0 { "21-85-539" } else { "B-1" },
            "7.62x39",
            1,
            "2024-03-01",
        ));
    }
    xbb.push(record("XBB", "B-2", "5.56x45 NATO", 1000, "2024-08-01"));
    let mut xcc = Vec::new();
    for n in 0..5 {
        xcc.push(record(
            "XCC",
            if n == 0 { "LOT 21 85 539" } else { "C-1" },
            "7.62x39",
            2,
            "2023-12-24",
        ));
    }
    import(fed.node("XAA"), &xaa).await;
    import(fed.node("XBB"), &xbb).await;
    import(fed.node("XCC"), &xcc).await;
    let reg = fed.node("REG");
    eventually(
        Duration::from_secs(60),
        "REG to hold all 24 seizures",
        || async { Ok((reg.export_lines().await?.len() == 24).then_some(())) },
    )
    .await
    .unwrap();

    // Seizing country × calibre, seizures.
    let t = stats(reg, &[("group_by", "seizing_country,calibre")]).await;
    let c = |country: &str, calibre: &str| {
        cell(&t, json!({"seizing_country": country, "calibre": calibre}))
    };
    assert_eq!(t["perturbed"], true);
    near(&c("XCC", "7.62x39")["value"], 5, 0);
    // XBB × 5.56 has one seizure: primary. Its row and its column each need a complement
    // (XBB × 7.62 and XAA × 5.56); then XAA's row and the 7.62 column each hold one hidden
    // cell, and XAA × 7.62 mends both.
    assert_eq!(c("XBB", "5.56x45-nato")["suppressed"], true);
    assert_eq!(c("XBB", "5.56x45-nato")["reason"], "primary");
    assert_eq!(c("XBB", "7.62x39")["suppressed"], true);
    assert_eq!(c("XBB", "7.62x39")["reason"], "complementary");
    assert_eq!(c("XBB", "5.56x45-nato")["value"], Value::Null);
    assert_eq!(c("XAA", "5.56x45-nato")["suppressed"], true);
    assert_eq!(c("XAA", "7.62x39")["suppressed"], true);
    assert_eq!(t["suppressed"], 4, "no more cells hidden than needed: {t}");
    assert_eq!(c("XCC", "7.62x39")["suppressed"], false);
    near(&cell(&t, json!({"seizing_country": "XBB"}))["value"], 8, 0);
    near(&cell(&t, json!({}))["value"], 24, 0);
    // The same seizures get the same figure: asked again, grouped otherwise, filtered to them.
    let again = stats(reg, &[("group_by", "seizing_country,calibre")]).await;
    assert_eq!(again["cells"], t["cells"]);
    let by_year = stats(reg, &[("group_by", "year")]).await;
    assert_eq!(
        cell(&by_year, json!({}))["value"],
        cell(&t, json!({}))["value"]
    );
    let only_xcc = stats(reg, &[("group_by", "year"), ("seizing_country", "XCC")]).await;
    assert_eq!(
        cell(&only_xcc, json!({}))["value"],
        cell(&t, json!({"seizing_country": "XCC"}))["value"]
    );
    // A table over fewer than k seizures names no cell: XBB's one 5.56 seizure.
    let one = stats(
        reg,
        &[
            ("group_by", "month"),
            ("seizing_country", "XBB"),
            ("calibre", "5.56x45-nato"),
        ],
    )
    .await;
    assert_eq!(one["cells"], json!([]), "{one}");
    assert_eq!(cell(&one, json!({}))["suppressed"], true);
    // Nothing published lets one subtract its way to XBB × 5.56: the 5.56 column has two
    // hidden cells or a hidden total.
    let col: Vec<bool> = ["XAA", "XBB"]
        .iter()
        .map(|s| c(s, "5.56x45-nato")["suppressed"] == true)
        .chain([cell(&t, json!({"calibre": "5.56x45-nato"}))["suppressed"] == true])
        .collect();
    assert!(col.iter().filter(|h| **h).count() >= 2, "{col:?}");

    // Rounds by calibre, CSV.
    let csv = reg
        .request(reqwest::Method::GET, "/api/v1/stats")
        .query(&[
            ("group_by", "calibre"),
            ("measure", "rounds"),
            ("format", "csv"),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        csv.starts_with("calibre,value,suppressed,reason\n"),
        "{csv}"
    );
    let figure = |name: &str| {
        let line = csv
            .lines()
            .find(|l| l.starts_with(&format!("{name},")))
            .unwrap_or_else(|| panic!("no {name} in {csv}"));
        assert!(line.ends_with(",false,"), "{line}");
        json!(line.split(',').nth(1).unwrap().parse::<u64>().unwrap())
    };
    near(&figure("7.62x39"), 617, 100);
    near(&figure("5.56x45-nato"), 1050, 1000);
    near(&figure("(total)"), 1667, 1000);

    // Filters and periods: 2024 only, by quarter.
    let q = stats(
        reg,
        &[
            ("group_by", "quarter"),
            ("from", "2024-01-01"),
            ("calibre", "7.62x39"),
        ],
    )
    .await;
    near(&cell(&q, json!({"quarter": "2024-Q1"}))["value"], 13, 0);
    // The quarter holds every seizure of the table: the same seizures, the same figure.
    assert_eq!(
        cell(&q, json!({"quarter": "2024-Q1"}))["value"],
        cell(&q, json!({}))["value"]
    );

    // Cross-border lots: the one lot seized in three countries.
    let lots = reg
        .send(
            reg.request(reqwest::Method::GET, "/api/v1/stats/cross-border-lots")
                .query(&[("unsuppressed", "true")]),
        )
        .await
        .unwrap();
    assert_eq!(lots.status, 200, "{:?}", lots.body);
    let row = lots.body["lots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["countries"].as_array().unwrap().len() == 3)
        .cloned()
        .unwrap_or_else(|| panic!("{}", lots.body));
    assert_eq!(row["countries"], json!(["XAA", "XBB", "XCC"]));
    assert_eq!(row["first_seen"], "2023-12-24");
    assert_eq!(row["last_seen"], "2024-03-01");
    // Published beyond the node: three seizures < k, so withheld.
    let public = reg
        .send(reg.request(reqwest::Method::GET, "/api/v1/stats/cross-border-lots"))
        .await
        .unwrap();
    assert_eq!(public.body["lots"].as_array().unwrap().len(), 0);
    assert!(public.body["withheld_under_k"].as_u64().unwrap() >= 1);

    // Unsuppressed figures: admins only, and only their own State's records.
    let own = stats(
        fed.node("XBB"),
        &[("group_by", "calibre"), ("unsuppressed", "true")],
    )
    .await;
    assert_eq!(cell(&own, json!({"calibre": "5.56x45-nato"}))["value"], 1);
    assert_eq!(cell(&own, json!({}))["value"], 8);
    // REG holds its members' records and none of its own: unsuppressed, it counts nothing.
    let reg_own = stats(reg, &[("group_by", "calibre"), ("unsuppressed", "true")]).await;
    let counted: Vec<&Value> = reg_own["cells"]
        .as_array()
        .unwrap()
        .iter()
        .chain(reg_own["totals"].as_array().unwrap())
        .filter(|c| c["value"].as_u64().is_some_and(|v| v > 0))
        .collect();
    assert!(counted.is_empty(), "REG's own figures: {reg_own}");
    // Its published figures do count its members' seizures: the filter above is what hid them.
    let reg_all = stats(reg, &[("group_by", "calibre")]).await;
    assert!(
        reg_all["totals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["value"].as_u64().is_some_and(|v| v > 0)),
        "{reg_all}"
    );

    // A signed snapshot, verified by a member State with REG's key history.
    let published = reg
        .send(
            reg.request(reqwest::Method::POST, "/api/v1/stats/snapshots")
                .query(&[("group_by", "seizing_country")]),
        )
        .await
        .unwrap();
    assert_eq!(published.status, 201, "{:?}", published.body);
    assert_eq!(published.body["snapshot"]["k"], 5);
    assert_eq!(
        published.body["snapshot"]["watermark"],
        reg_last_seq(reg).await
    );
    let key = Identity::load(&reg.data_dir, "REG")
        .unwrap()
        .verifying_key();
    let history = KeyHistory::verified_from(
        &serde_json::from_slice(&std::fs::read(reg.data_dir.join("keys.json")).unwrap()).unwrap(),
        &key,
        None,
    )
    .unwrap();
    ammotrace::stats::verify_snapshot(&published.body, &history).unwrap();
    let mut forged = published.body.clone();
    forged["snapshot"]["table"]["cells"][0]["value"] = json!(999);
    assert!(ammotrace::stats::verify_snapshot(&forged, &history).is_err());

    // Exports for MISP and STIX tools: every record REG sees, as lossy views.
    let misp = reg
        .send(reg.request(reqwest::Method::GET, "/api/v1/export/misp"))
        .await
        .unwrap();
    assert_eq!(misp.status, 200, "{:?}", misp.body);
    let events = misp.body["response"].as_array().unwrap();
    assert_eq!(events.len(), 24);
    assert!(events.iter().any(|e| {
        e["Event"]["Attribute"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["value"] == "LOT 21 85 539")
    }));
    let stix = reg
        .send(reg.request(reqwest::Method::GET, "/api/v1/export/stix"))
        .await
        .unwrap();
    assert_eq!(stix.body["type"], "bundle");
    let objects = stix.body["objects"].as_array().unwrap();
    assert_eq!(objects.iter().filter(|o| o["type"] == "report").count(), 24);
    assert_eq!(
        objects.iter().filter(|o| o["type"] == "identity").count(),
        3
    );
    // A partner's cut: XAA's own records as REG's policy shows them (country only).
    let cut = fed
        .node("XAA")
        .send(
            fed.node("XAA")
                .request(reqwest::Method::GET, "/api/v1/export/stix")
                .query(&[("partner", "REG")]),
        )
        .await
        .unwrap();
    let reports: Vec<&Value> = cut.body["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "report")
        .collect();
    assert_eq!(reports.len(), 11);
    let unknown = fed
        .node("XAA")
        .send(
            fed.node("XAA")
                .request(reqwest::Method::GET, "/api/v1/export/stix")
                .query(&[("partner", "XQQ")]),
        )
        .await
        .unwrap();
    assert_eq!(unknown.status, 400);

    // The cached facts follow later writes (only the changed records are read again): XBB
    // retracts its 5.56 seizure and records a new 7.62 one; its own figures follow at once,
    // REG's once the retraction and the new record have crossed.
    let xbb_records = fed.node("XBB").export_lines().await.unwrap();
    let retracted = xbb_records
        .iter()
        .find(|r| r["items"][0]["calibre"]["raw"] == "5.56x45 NATO")
        .and_then(|r| r["record_id"].as_str())
        .unwrap()
        .to_owned();
    let gone = fed.node("XBB").delete_record(&retracted).await.unwrap();
    assert!(gone.status < 300, "{:?}", gone.body);
    import(
        fed.node("XBB"),
        &[record("XBB", "B-3", "7.62x39", 3, "2024-09-01")],
    )
    .await;
    let own = stats(
        fed.node("XBB"),
        &[("group_by", "calibre"), ("unsuppressed", "true")],
    )
    .await;
    assert_eq!(cell(&own, json!({"calibre": "7.62x39"}))["value"], 8);
    assert_eq!(cell(&own, json!({}))["value"], 8);
    assert!(
        own["cells"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["key"]["calibre"] != "5.56x45-nato"),
        "{own}"
    );
    eventually(
        Duration::from_secs(60),
        "REG's figures to follow XBB's retraction and new seizure",
        || async {
            // In rounds, XBB's 1,000-round seizure leaving the 5.56 cell shows through the
            // noise: 1,050 with noise of scale 150 before, 50 with noise of scale 1.5 after
            // (within 20: 13 scales). REG must also hold XBB's new seizure (lot B-3).
            let held = reg.export_lines().await?;
            if !held.iter().any(|r| r["items"][0]["lot"]["raw"] == "B-3") {
                return Ok(None);
            }
            let t = stats(reg, &[("group_by", "calibre"), ("measure", "rounds")]).await;
            let v = cell(&t, json!({"calibre": "5.56x45-nato"}))["value"].as_u64();
            Ok(v.is_some_and(|v| (30..=70).contains(&v)).then_some(()))
        },
    )
    .await
    .unwrap();

    // Bad parameters are refused with a pointer.
    let bad = reg
        .send(
            reg.request(reqwest::Method::GET, "/api/v1/stats")
                .query(&[("group_by", "colour")]),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.pointer(), Some("/group_by"));
    let bad = reg
        .send(
            reg.request(reqwest::Method::GET, "/api/v1/stats")
                .query(&[("group_by", "calibre"), ("from", "last week")]),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.pointer(), Some("/from"));
}

async fn reg_last_seq(node: &TestNode) -> Value {
    node.health().await.unwrap()["last_seq"].clone()
}

/// With `warm_on_start`, a restarted node reads its records into the statistics cache in the
/// background; tables then count what was there before the restart and what came after.
#[tokio::test]
async fn statistics_cache_warmed_at_start_follows_later_writes() {
    let node = TestNode::spawn_with_config("XAA", |c| {
        c.replace("warm_on_start = false", "warm_on_start = true")
    })
    .await
    .unwrap();
    let before: Vec<Value> = (0..6)
        .map(|n| record("XAA", &format!("A-{n}"), "7.62x39", 10, "2024-02-10"))
        .collect();
    import(&node, &before).await;
    let last = reg_last_seq(&node).await;
    let mut node = node.restart().await.unwrap();
    // Warmed in the background, with no statistics request: health shows it.
    eventually(
        Duration::from_secs(60),
        "the statistics cache warmed",
        || async {
            let h = node.health().await?;
            if h["stats_cached_seq"] == last {
                return Ok(Some(()));
            }
            anyhow::ensure!(
                h["stats_cached_seq"].is_null(),
                "the cache is at what the store held: {h}"
            );
            Ok(None)
        },
    )
    .await
    .unwrap();
    import(
        &node,
        &[record("XAA", "A-9", "5.56x45 NATO", 10, "2024-03-10")],
    )
    .await;
    let t = stats(&node, &[("group_by", "calibre"), ("unsuppressed", "true")]).await;
    assert_eq!(cell(&t, json!({"calibre": "7.62x39"}))["value"], 6);
    assert_eq!(cell(&t, json!({"calibre": "5.56x45-nato"}))["value"], 1);
    assert_eq!(cell(&t, json!({}))["value"], 7);
    node.stop().unwrap();
}
