//! Federation between real nodes over TLS on 127.0.0.1: views per partner policy, do-not-share,
//! retractions and receipts, replicated records in search, catch-up after an outage, key
//! rotation, policy widening, and the audit log.

use std::time::Duration;

use ammotrace_e2e::TestNode;
use ammotrace_e2e::federation::{TestFederation, assert_caught_up, eventually, policy};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn record(lot: &str, sharing: Value) -> Value {
    json!({
        "originating_state": "XAA",
        "event": {
            "event_type": "seizure",
            "context": ["trafficking_interdiction"],
            "date": {"start": "2024-03-11", "precision": "day"},
            "location": {
                "country": "XAA", "admin1": "XAA-NO", "admin2": "Harbour district",
                "place_name": "Port A", "point": {"lat_e6": 12345678, "lon_e6": -2345678},
                "precision": "exact_point"
            }
        },
        "items": [
            {
                "item_id": "i1",
                "item_category": "small_arms_ammunition",
                "calibre": "7.62x39",
                "headstamp": "539 85",
                "lot": lot,
                "quantity": {"count": 1080, "unit": "rounds"}
            },
            {
                "item_id": "i2",
                "item_category": "light_weapons_ammunition",
                "calibre": "40mm",
                "lot": "GR-1-77",
                "quantity": {"count": 4, "unit": "rounds"}
            }
        ],
        "case_refs": [{"system": "national_police", "ref": "CASE-2024-0042"}],
        "casualties": {"relevant": true, "counts": [{"outcome": "injured", "sex": "male", "age_group": "30-44", "count": 1}]},
        "sharing": sharing
    })
}

async fn create(node: &TestNode, r: &Value) -> String {
    let a = node.post_record(r).await.unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["record_id"].as_str().unwrap().to_owned()
}

fn three_nodes() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "XAA",
            "XBB",
            policy(
                "replicate",
                json!({"location_precision": "admin1", "case_references": false}),
            ),
        ),
        (
            "XAA",
            "REG",
            policy(
                "replicate",
                json!({"location_precision": "country", "categories": ["small_arms_ammunition"]}),
            ),
        ),
    ]
}

#[tokio::test]
async fn each_partner_gets_exactly_its_view_and_retractions_come_back_with_receipts() {
    let fed = TestFederation::start(&["XAA", "XBB", "REG"], &three_nodes())
        .await
        .unwrap();
    let xaa = fed.node("XAA");
    let (xbb, reg) = (fed.node("XBB"), fed.node("REG"));

    // Written first, so by the time the shared record arrives these have been processed.
    let secret = create(
        xaa,
        &record("21-85 539", json!({"tlp": "GREEN", "do_not_share": true})),
    )
    .await;
    let red = create(xaa, &record("21-85 539", json!({"tlp": "RED"}))).await;
    let shared = create(xaa, &record("21-85 539", json!({"tlp": "GREEN"}))).await;

    let at_xbb = xbb.wait_for_version(&shared, 1, WAIT).await.unwrap();
    let at_reg = reg.wait_for_version(&shared, 1, WAIT).await.unwrap();

    // XBB: replicate, no case references, location at admin1, both items.
    assert_eq!(at_xbb["originating_state"], "XAA");
    assert!(at_xbb.get("case_refs").is_none(), "{at_xbb}");
    let loc = &at_xbb["event"]["location"];
    assert_eq!(loc["admin1"], "XAA-NO");
    for hidden in ["admin2", "place_name", "point"] {
        assert!(
            loc.get(hidden).is_none(),
            "XBB must not get {hidden}: {loc}"
        );
    }
    assert_eq!(at_xbb["items"].as_array().unwrap().len(), 2);
    assert!(at_xbb.get("casualties").is_none());
    assert_eq!(at_xbb["items"][0]["lot"]["raw"], "21-85 539");

    // REG: country precision, only small-arms ammunition.
    let loc = &at_reg["event"]["location"];
    assert_eq!(loc["country"], "XAA");
    assert!(loc.get("admin1").is_none(), "{loc}");
    let items = at_reg["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["item_category"], "small_arms_ammunition");

    // Do-not-share and TLP RED never left.
    for node in [xbb, reg] {
        assert_eq!(node.get_record(&secret).await.unwrap().status, 404);
        assert_eq!(node.get_record(&red).await.unwrap().status, 404);
    }

    // The replicated record is searchable at XBB and names its origin.
    let hits = xbb.search(&[("lot", "21-85-539")]).await.unwrap();
    let hit = hits.body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["record_id"] == shared.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("replicated record not found: {}", hits.body));
    assert_eq!(hit["origin"], "XAA");
    assert!(
        !hit.to_string().contains("Port A"),
        "a hit shows an undisclosed field: {hit}"
    );

    // Only the origin changes a record.
    let refused = xbb.put_record(&shared, &at_xbb).await.unwrap();
    assert!(matches!(refused.status, 409 | 422), "{:?}", refused.body);
    let refused = xbb.delete_record(&shared).await.unwrap();
    assert_eq!(refused.status, 409, "{:?}", refused.body);

    // The preview says what XBB receives and why.
    let preview = xaa
        .send(xaa.request(
            reqwest::Method::GET,
            &format!("/api/v1/peers/XBB/preview/{shared}"),
        ))
        .await
        .unwrap();
    assert_eq!(preview.status, 200, "{:?}", preview.body);
    let field = |path: &str| {
        preview.body["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .cloned()
            .unwrap()
    };
    assert_eq!(field("/event/location/place_name")["disclosed"], false);
    assert_eq!(field("/case_refs/0/ref")["disclosed"], false);
    assert!(
        field("/case_refs/0/ref")["reason"]
            .as_str()
            .unwrap()
            .contains("case references")
    );
    assert_eq!(field("/items/0/lot/raw")["disclosed"], true);
    let preview_secret = xaa
        .send(xaa.request(
            reqwest::Method::GET,
            &format!("/api/v1/peers/XBB/preview/{secret}"),
        ))
        .await
        .unwrap();
    assert_eq!(preview_secret.body["shared"], false);
    assert!(
        preview_secret.body["reason"]
            .as_str()
            .unwrap()
            .contains("do-not-share")
    );

    // A correction then a retraction reach both partners; both send receipts.
    let mut corrected = record("21-85 539", json!({"tlp": "GREEN"}));
    corrected["record_version"] = json!(1);
    corrected["items"][0]["quantity"]["count"] = json!(1000);
    let put = xaa.put_record(&shared, &corrected).await.unwrap();
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(
        xbb.wait_for_version(&shared, 2, WAIT).await.unwrap()["items"][0]["quantity"]["count"],
        1000
    );
    assert_eq!(xaa.delete_record(&shared).await.unwrap().status, 200);
    for node in [xbb, reg] {
        let v3 = node.wait_for_version(&shared, 3, WAIT).await.unwrap();
        assert_eq!(v3["retracted"], true);
    }
    assert!(
        !xbb.search_ids(&[("lot", "21-85-539")])
            .await
            .unwrap()
            .contains(&shared),
        "a retracted record is still found at XBB"
    );
    let receipts = eventually(WAIT, "receipts for v3 from XBB and REG", || async {
        let list = xaa.receipts(&shared).await?;
        let done = ["XBB", "REG"].iter().all(|p| {
            list.iter()
                .any(|r| r["partner"] == *p && r["version"] == 3 && r["current"] == true)
        });
        Ok(done.then_some(list))
    })
    .await
    .unwrap();
    assert_eq!(receipts.len(), 2);
    assert!(receipts.iter().all(|r| r["retracted"] == true));

    // Nothing of the secret record was ever disclosed, per XAA's own audit log.
    let log = std::fs::read_to_string(xaa.data_dir.join("audit.log")).unwrap();
    assert!(log.contains("\"event\":\"disclosure\""));
    assert!(!log.contains(&format!("{secret}@")));
    assert!(log.contains("\"event\":\"policy_changed\""));

    // The audit chain verifies, and an edited entry is found.
    let ok = xaa.command(&["audit", "verify"]).unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn audit_verify_fails_on_an_edited_entry() {
    let fed = TestFederation::start(
        &["XAA", "XBB"],
        &[("XAA", "XBB", policy("replicate", json!({})))],
    )
    .await
    .unwrap();
    let id = create(fed.node("XAA"), &record("LOT-1", json!({"tlp": "GREEN"}))).await;
    fed.node("XBB")
        .wait_for_version(&id, 1, WAIT)
        .await
        .unwrap();
    let xaa = fed.node("XAA");
    let path = xaa.data_dir.join("audit.log");
    let ok = xaa.command(&["audit", "verify"]).unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("\"event\":\"disclosure\""))
        .expect("a disclosure entry");
    // The disclosure entry itself is edited (the partner it names), nothing else.
    let edited: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == line {
                assert!(l.contains("\"partner\":\"XBB\""), "{l}");
                l.replacen("\"partner\":\"XBB\"", "\"partner\":\"XZZ\"", 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    let broken = xaa.command(&["audit", "verify"]).unwrap();
    assert!(!broken.status.success());
    let message = String::from_utf8_lossy(&broken.stderr);
    assert!(
        message.contains(&format!("line {} ", line + 1)),
        "the first broken entry is the edited one, line {}: {message}",
        line + 1
    );
}

/// XBB misses 5,000 records while stopped, then is killed (SIGKILL) in the middle of catching
/// up, and started again: it ends with every record exactly once, and its cursor at XAA's end.
#[tokio::test]
async fn a_stopped_partner_catches_up_exactly_even_if_killed_midway() {
    let mut fed = TestFederation::start(
        &["XAA", "XBB"],
        &[("XAA", "XBB", policy("replicate", json!({})))],
    )
    .await
    .unwrap();
    let first = create(fed.node("XAA"), &record("CATCH-0", json!({"tlp": "GREEN"}))).await;
    fed.node("XBB")
        .wait_for_version(&first, 1, WAIT)
        .await
        .unwrap();
    fed.node_mut("XBB").stop().unwrap();

    // 5,000 records while XBB is down, in five imports.
    let xaa = fed.node("XAA");
    // Record ids in the order of XAA's changes: `ids[k]` is change k + 2.
    let mut ids = Vec::new();
    for batch in 0..5 {
        let mut body = Vec::new();
        for n in 0..1000 {
            let r = record(&format!("CATCH-{batch}-{n}"), json!({"tlp": "GREEN"}));
            body.extend(serde_json::to_vec(&r).unwrap());
            body.push(b'\n');
        }
        let a = xaa.import("application/x-ndjson", body, "").await.unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        for r in a.body["records"].as_array().unwrap() {
            ids.push(r["record_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 5000);

    // Pages of 50 (XBB asks for its own page size), so catching up takes a hundred pages.
    const PAGE: u64 = 50;
    let config = fed.node("XBB").data_dir.join("config.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("page_size = 1000", &format!("page_size = {PAGE}"));
    std::fs::write(&config, text).unwrap();
    fed.node_mut("XBB").start_again().await.unwrap();
    let xbb = fed.node("XBB");
    // Two pages in: the first of them is flushed, since a page is written only once the one
    // before it is durable.
    let midway = eventually(WAIT, "XBB to be catching up", || async {
        let after = xbb.pulled_after("XAA").await?;
        Ok((after > 1 + PAGE).then_some(after))
    })
    .await
    .unwrap();
    fed.node_mut("XBB").kill9().unwrap();
    // What the killed node had stored: part of the way (or, on a slow poll, all of it). The
    // cursor the API showed may be that of a page whose flush the kill cut short (never
    // acknowledged to anyone), so the store may be one page behind it, never more.
    let stored = {
        let store = ammotrace::store::Store::open(
            &fed.node("XBB").data_dir.join(ammotrace::node::STORE_DIR),
        )
        .unwrap();
        store.cursor("XAA").unwrap().after
    };
    assert!(
        stored > 1 && (midway - PAGE..=5001).contains(&stored),
        "the store's cursor after the kill ({stored}) is more than a page behind the {midway} \
         shown before it"
    );
    fed.node_mut("XBB").start_again().await.unwrap();
    let xbb = fed.node("XBB");
    assert_caught_up(xbb, "XAA", 5001, 5001).await;
    // The last record written is found by search, as XAA's.
    let hits = xbb.search(&[("lot", "CATCH-4-999")]).await.unwrap();
    let top = &hits.body["hits"][0];
    assert_eq!(top["origin"], "XAA", "{}", hits.body);
    assert_eq!(top["match"]["kind"], "exact", "{}", hits.body);
    // Every page's receipt reaches XAA, those the kill cut off included (they were owed in
    // XBB's store and sent again): every record around the kill, and every 50th elsewhere.
    let around = (stored.saturating_sub(3 * PAGE))..=(stored + 2 * PAGE);
    let xaa = fed.node("XAA");
    for (k, id) in ids.iter().enumerate() {
        let seq = k as u64 + 2;
        if !around.contains(&seq) && k % 50 != 0 {
            continue;
        }
        eventually(WAIT, &format!("XBB's receipt for change {seq}"), || async {
            let list = xaa.receipts(id).await?;
            Ok(list.iter().any(|r| r["partner"] == "XBB").then_some(()))
        })
        .await
        .unwrap();
    }
}

/// XAA replicating to XBB, and XBB stopped: what XAA writes next waits for XBB's start.
async fn xaa_sharing_with_xbb_stopped() -> TestFederation {
    let mut fed = TestFederation::start(
        &["XAA", "XBB"],
        &[("XAA", "XBB", policy("replicate", json!({})))],
    )
    .await
    .unwrap();
    fed.node_mut("XBB").stop().unwrap();
    fed
}

/// A partner whose feed pages are larger than this node takes (`federation.max_answer_mib`)
/// is asked for fewer changes a page, and is caught up all the same.
#[tokio::test]
async fn pages_too_large_to_take_are_asked_for_in_fewer_changes() {
    let mut fed = xaa_sharing_with_xbb_stopped().await;
    // 1,000 records of ~3 KB envelopes: a page of them is ~3 MB, three times the limit below.
    let mut body = Vec::new();
    for n in 0..1000 {
        let r = record(&format!("LARGE-{n}"), json!({"tlp": "GREEN"}));
        body.extend(serde_json::to_vec(&r).unwrap());
        body.push(b'\n');
    }
    let a = fed
        .node("XAA")
        .import("application/x-ndjson", body, "")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let config = fed.node("XBB").data_dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("max_answer_mib = 256"));
    std::fs::write(
        &config,
        text.replace("max_answer_mib = 256", "max_answer_mib = 1"),
    )
    .unwrap();
    fed.node_mut("XBB").start_again().await.unwrap();
    assert_caught_up(fed.node("XBB"), "XAA", 1000, 1000).await;
}

/// Sets `field` of `node`'s `[[peers]]` entry for `peer` in its config.toml (`None`: removes it).
fn set_peer_field(node: &ammotrace_e2e::TestNode, peer: &str, field: &str, value: Option<&str>) {
    let path = node.data_dir.join("config.toml");
    let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entry = config["peers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["id"].as_str() == Some(peer))
        .unwrap()
        .as_table_mut()
        .unwrap();
    match value {
        Some(v) => entry.insert(field.into(), toml::Value::String(v.into())),
        None => entry.remove(field),
    };
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
}

/// A partner that pins XAA's key after XAA rotated (from a new card) verifies what XAA signed
/// before the rotation through the card's `first_key`; pinned without it, it trusts none of
/// the earlier keys, and takes nothing signed by them.
#[tokio::test]
async fn a_partner_pinned_after_a_rotation_verifies_older_records_through_the_first_key() {
    let mut fed = xaa_sharing_with_xbb_stopped().await;
    let old = create(fed.node("XAA"), &record("PIN-1", json!({"tlp": "GREEN"}))).await;
    fed.node_mut("XAA").stop().unwrap();
    let out = fed.node("XAA").command(&["keys", "rotate"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!("https://127.0.0.1:{}", fed.node("XAA").federation_port);
    let out = fed
        .node("XAA")
        .command(&["peers", "card", "--url", &url])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let card: Value = serde_json::from_slice(&out.stdout).unwrap();
    fed.node_mut("XAA").start_again().await.unwrap();

    // XBB pinned at the new key only: the record signed by the first key is not taken.
    let xbb = fed.node("XBB");
    set_peer_field(xbb, "XAA", "public_key", card["public_key"].as_str());
    set_peer_field(xbb, "XAA", "first_key", None);
    fed.node_mut("XBB").start_again().await.unwrap();
    // XBB pulls, and refuses the page, saying first_key is what it lacks.
    let audit = fed.node("XBB").data_dir.join("audit.log");
    eventually(
        WAIT,
        "XBB to refuse XAA's page for want of first_key",
        || {
            let audit = audit.clone();
            async move {
                let log = std::fs::read_to_string(&audit)?;
                Ok(log
                    .lines()
                    .any(|l| l.contains("feed_page_refused") && l.contains("first_key"))
                    .then_some(()))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(fed.node("XBB").pulled_after("XAA").await.unwrap(), 0);
    assert!(fed.node("XBB").get_record(&old).await.unwrap().status == 404);

    // With the card's first key, it is.
    fed.node_mut("XBB").stop().unwrap();
    set_peer_field(
        fed.node("XBB"),
        "XAA",
        "first_key",
        card["first_key"].as_str(),
    );
    fed.node_mut("XBB").start_again().await.unwrap();
    fed.node("XBB")
        .wait_for_version(&old, 1, WAIT)
        .await
        .unwrap();
    assert_caught_up(fed.node("XBB"), "XAA", 1, 1).await;
}

#[tokio::test]
async fn key_rotation_keeps_old_records_verifiable_and_a_widened_policy_replays_history() {
    let mut fed = TestFederation::start(
        &["XAA", "XBB"],
        &[(
            "XAA",
            "XBB",
            policy("replicate", json!({"location_precision": "country"})),
        )],
    )
    .await
    .unwrap();
    let old = create(fed.node("XAA"), &record("ROT-1", json!({"tlp": "GREEN"}))).await;
    let before = fed
        .node("XBB")
        .wait_for_version(&old, 1, WAIT)
        .await
        .unwrap();
    assert!(before["event"]["location"].get("admin1").is_none());

    // Rotate XAA's key and widen its policy for XBB, then restart XAA.
    let xaa = fed.node_mut("XAA");
    xaa.stop().unwrap();
    let rotated = xaa.command(&["keys", "rotate"]).unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    fed.set_policy(
        "XAA",
        "XBB",
        &policy("replicate", json!({"location_precision": "admin1"})),
    )
    .unwrap();
    fed.node_mut("XAA").start_again().await.unwrap();

    // A record signed with the new key arrives (XBB learns the rotation from XAA's identity).
    let new = create(fed.node("XAA"), &record("ROT-2", json!({"tlp": "GREEN"}))).await;
    let xbb = fed.node("XBB");
    let after = xbb.wait_for_version(&new, 1, WAIT).await.unwrap();
    assert_eq!(after["event"]["location"]["admin1"], "XAA-NO");
    // The replay re-verified the old record under the old key and widened its view.
    let widened = eventually(WAIT, "the old record's widened view", || async {
        let r = xbb.get_record(&old).await?;
        Ok((r.body["event"]["location"]["admin1"] == "XAA-NO").then_some(r.body))
    })
    .await
    .unwrap();
    assert_eq!(widened["record_version"], 1);
    let peers = xbb
        .send(xbb.request(reqwest::Method::GET, "/api/v1/peers"))
        .await
        .unwrap();
    let keys = peers.body["peers"][0]["keys"].as_array().unwrap().clone();
    assert_eq!(
        keys.len(),
        2,
        "XBB trusts the old and the new key: {keys:?}"
    );
}

/// A retraction reaches a partner that holds the record even after its policy narrowed so
/// that the record would no longer be shared: the signed claims go, and no field with them.
/// A partner that never received the record learns nothing of its retraction.
#[tokio::test]
async fn a_retraction_reaches_a_holder_after_its_policy_narrowed() {
    // XBB may now receive only artillery ammunition: neither record qualifies.
    retraction_after_narrowing(policy(
        "replicate",
        json!({"categories": ["artillery_ammunition"]}),
    ))
    .await;
}

#[tokio::test]
async fn a_retraction_reaches_a_holder_no_longer_replicating() {
    // XBB is now asked live queries only: XAA's feed gives it nothing but the retractions of
    // what it holds.
    retraction_after_narrowing(policy("query", json!({}))).await;
}

/// XBB receives a record; XAA narrows its policy for XBB to `narrowed`, creates a second
/// record and retracts both: the first retraction reaches XBB with no field, the second record
/// never does.
async fn retraction_after_narrowing(narrowed: Value) {
    let mut fed = TestFederation::start(
        &["XAA", "XBB"],
        &[("XAA", "XBB", policy("replicate", json!({})))],
    )
    .await
    .unwrap();
    let held = create(
        fed.node("XAA"),
        &record("NARROW-1", json!({"tlp": "GREEN"})),
    )
    .await;
    fed.node("XBB")
        .wait_for_version(&held, 1, WAIT)
        .await
        .unwrap();
    let xaa = fed.node("XAA");
    eventually(WAIT, "XBB's receipt", || async {
        let list = xaa.receipts(&held).await?;
        Ok(list.iter().any(|r| r["partner"] == "XBB").then_some(()))
    })
    .await
    .unwrap();

    fed.node_mut("XAA").stop().unwrap();
    fed.set_policy("XAA", "XBB", &narrowed).unwrap();
    fed.node_mut("XAA").start_again().await.unwrap();
    let xaa = fed.node("XAA");
    let never = create(xaa, &record("NARROW-2", json!({"tlp": "GREEN"}))).await;
    for id in [&held, &never] {
        let a = xaa.delete_record(id).await.unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
    }

    let xbb = fed.node("XBB");
    let retracted = xbb.wait_for_version(&held, 2, WAIT).await.unwrap();
    assert_eq!(retracted["retracted"], true, "{retracted}");
    assert!(
        retracted
            .get("items")
            .is_none_or(|i| i.as_array().is_some_and(Vec::is_empty)),
        "fields left with the retraction: {retracted}"
    );
    // No other field of the record either: the signed claims alone.
    for field in [
        "event",
        "case_refs",
        "casualties",
        "supply_chain",
        "packaging",
        "notes",
        "attachments",
        "originating_agency",
        "trace_requests",
        "retraction",
    ] {
        assert!(
            retracted.get(field).is_none(),
            "{field} left with the retraction: {retracted}"
        );
    }
    assert!(
        xbb.search_ids(&[("lot", "NARROW-1")])
            .await
            .unwrap()
            .is_empty()
    );
    // XBB has pulled everything (its cursor is at XAA's last change) and knows nothing of
    // the record it never held.
    let last = xaa
        .send(xaa.request(reqwest::Method::GET, "/healthz"))
        .await
        .unwrap();
    // XAA holds only its own records, so its change log is its own-change sequence.
    let own_last = last.body["last_seq"].as_u64();
    eventually(WAIT, "XBB's cursor at XAA's last change", || async {
        let a = xbb
            .send(xbb.request(reqwest::Method::GET, "/api/v1/peers"))
            .await?;
        Ok((a.body["peers"][0]["pulled_after"].as_u64() >= own_last).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(xbb.get_record(&never).await.unwrap().status, 404);
}
