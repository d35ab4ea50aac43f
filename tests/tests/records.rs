//! Records through the API of a real node: create, search by transcription variants, versions,
//! retraction, refusals that change nothing, restart.

use ammotrace_e2e::TestNode;
use serde_json::{Value, json};

fn record(lot: &str, headstamp: &str, calibre: &str) -> Value {
    json!({
        "originating_state": "XAA",
        "event": {
            "event_type": "seizure",
            "context": ["trafficking_interdiction"],
            "date": {"start": "2024-03-11", "precision": "day"},
            "location": {"country": "XAA", "precision": "settlement", "place_name": "Port A"}
        },
        "items": [{
            "item_id": "i1",
            "item_category": "small_arms_ammunition",
            "calibre": calibre,
            "headstamp": headstamp,
            "lot": lot,
            "quantity": {"count": 1080, "unit": "rounds"}
        }],
        "sharing": {"tlp": "AMBER"}
    })
}

async fn create(node: &TestNode, r: &Value) -> String {
    let a = node.post_record(r).await.unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["record_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn lot_variants_and_calibre_aliases_find_the_record() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let target = create(&node, &record("LC19L123-456", "LC 19", "5.56x45mm NATO")).await;
    let soviet = create(&node, &record("21-85 539", "539 85", "7.62x39")).await;
    // Distractors: a sibling lot and the same lot text from another maker and calibre.
    let sibling = create(&node, &record("LC19L123-457", "LC 19", "5.56x45mm NATO")).await;
    let other = create(&node, &record("21-85 539", "PPU 19", "9mm Luger")).await;

    type Params<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Params, &str, &str)] = &[
        (&[("lot", "LC19L123-456")], &target, "exact"),
        (&[("lot", "lc-19-l-123 456")], &target, "folded"),
        (&[("lot", "LOT NO. LC19L123-456")], &target, "exact"),
        (&[("lot", "L/N lc19l123456")], &target, "folded"),
        (&[("lot", "LC19LI23-456")], &target, "confusable"),
        (&[("lot", "LC19L12?-456")], &target, "wildcard"),
        (&[("lot", "LC19L*456")], &target, "wildcard"),
        (&[("lot", "LC19L12-456")], &target, "fuzzy"),
        (
            &[("lot", "№ 21–85–539"), ("headstamp", "85 539")],
            &soviet,
            "exact",
        ),
        (
            &[
                ("lot", "2I-85-S39"),
                ("headstamp", "S39 85"),
                ("calibre", "7,62х39"),
            ],
            &soviet,
            "confusable",
        ),
        (&[("lot", "٢١-٨٥-٥٣٩")], &soviet, "exact"),
    ];
    for (params, want, kind) in cases {
        let a = node.search(params).await.unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        let first = &a.body["hits"][0];
        assert_eq!(
            first["record_id"], **want,
            "{params:?} → {:?}",
            a.body["hits"]
        );
        assert_eq!(first["match"]["kind"], *kind, "{params:?}");
        assert!(first["match"]["score"].as_f64().unwrap() > 0.0);
        assert_eq!(first["origin"], "XAA");
        assert_eq!(first["event"]["country"], "XAA");
    }
    // Headstamp and calibre agreement rank the right maker first; the other maker still shows.
    let ids = node
        .search_ids(&[
            ("lot", "21-85-539"),
            ("headstamp", "539 85"),
            ("calibre", "7.62x39mm"),
        ])
        .await
        .unwrap();
    assert_eq!(ids.first(), Some(&soviet));
    let ids = node
        .search_ids(&[
            ("lot", "21-85-539"),
            ("headstamp", "PPU 19"),
            ("calibre", "9x19"),
        ])
        .await
        .unwrap();
    assert_eq!(ids.first(), Some(&other));
    // The sibling is below the target for its own lot, and found by the sibling query.
    let ids = node.search_ids(&[("lot", "LC19L123-456")]).await.unwrap();
    assert_eq!(ids.first(), Some(&target));
    let a = node
        .search(&[("lot", "LC19L123-456"), ("siblings", "true")])
        .await
        .unwrap();
    let hits = a.body["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["record_id"], sibling.as_str());
    assert_eq!(hits[0]["match"]["kind"], "sibling");
    // Calibre aliases and families.
    for alias in ["5.56 NATO", "556NATO", "5,56x45"] {
        let ids = node.search_ids(&[("calibre", alias)]).await.unwrap();
        assert!(
            ids.contains(&target) && !ids.contains(&soviet),
            "{alias}: {ids:?}"
        );
    }
    let ids = node.search_ids(&[("calibre", "7.62mm")]).await.unwrap();
    assert!(
        ids.contains(&soviet) && !ids.contains(&target),
        "family: {ids:?}"
    );
    // Headstamp only, tokens in any order.
    let ids = node.search_ids(&[("headstamp", "85/539")]).await.unwrap();
    assert_eq!(ids.first(), Some(&soviet));
    // Filters.
    assert!(
        node.search_ids(&[("lot", "LC19L123-456"), ("country", "XBB")])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        node.search_ids(&[("lot", "LC19L123-456"), ("from", "2025")])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        node.search_ids(&[("lot", "LC19L123-456"), ("to", "2024-03")])
            .await
            .unwrap()
            .first(),
        Some(&target)
    );
    assert!(
        node.search_ids(&[("lot", "LC19L123-456"), ("category", "grenade")])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn update_makes_version_2_and_retraction_hides_the_record() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let id = create(&node, &record("77-98", "270 98", "5.45x39")).await;
    let mut changed = record("78-98", "270 98", "5.45x39");
    let a = node.put_record(&id, &changed).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["record_version"], 2);
    let hits = node.search(&[("lot", "78-98")]).await.unwrap();
    assert_eq!(hits.body["hits"][0]["record_id"], id.as_str());
    assert_eq!(hits.body["hits"][0]["record_version"], 2);
    // The old lot text now only reaches version 2, as a one-character (fuzzy) match.
    let old = node.search(&[("lot", "77-98")]).await.unwrap();
    let old_hits = old.body["hits"].as_array().unwrap();
    assert_eq!(old_hits.len(), 1, "{:?}", old.body);
    let hit = &old_hits[0];
    assert_eq!(hit["record_id"], id.as_str());
    assert_eq!(hit["record_version"], 2, "old version still indexed: {hit}");
    assert_eq!(hit["match"]["kind"], "fuzzy");
    // An edit based on a stale version is a conflict and changes nothing.
    changed["record_version"] = json!(1);
    let a = node.put_record(&id, &changed).await.unwrap();
    assert_eq!(a.status, 409);
    assert!(a.is_problem());

    let a = node.delete_record(&id).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body["record_version"], 3);
    assert_eq!(a.body["retracted"], true);
    assert!(
        node.search_ids(&[("lot", "78-98")])
            .await
            .unwrap()
            .is_empty()
    );
    let versions = node
        .send(node.request(
            reqwest::Method::GET,
            &format!("/api/v1/records/{id}/versions"),
        ))
        .await
        .unwrap();
    let versions = versions.body["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions[0]["items"][0]["lot"]["raw"], "77-98");
    assert_eq!(node.delete_record(&id).await.unwrap().status, 409);
}

#[tokio::test]
async fn bad_input_gets_problem_json_and_changes_nothing() {
    let node = TestNode::spawn_with_config("XAA", |c| {
        c.replace("max_body_bytes = 67108864", "max_body_bytes = 65536")
    })
    .await
    .unwrap();
    let keep = create(&node, &record("1-1", "LC 19", "5.56x45")).await;
    let before = node.export_lines().await.unwrap();

    let raw = |body: &'static str| {
        node.request(reqwest::Method::POST, "/api/v1/records")
            .header("content-type", "application/json")
            .body(body)
    };
    let a = node
        .send(raw("{\"originating_state\": \"XAA\", "))
        .await
        .unwrap();
    assert_eq!(a.status, 400);
    assert!(a.is_problem(), "{}", a.content_type);
    assert_eq!(a.pointer(), Some(""), "the whole document: {:?}", a.body);

    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut r = record("1", "", "9mm");
    r["items"][0]["quantity"]["count"] = json!("many");
    cases.push((r, "/items/0/quantity/count"));
    let mut r = record("1", "", "9mm");
    r["items"][0]["item_category"] = json!("banana");
    cases.push((r, "/items/0/item_category"));
    let mut r = record("1", "", "9mm");
    r["event"]["location"]["country"] = json!("XA");
    cases.push((r, "/event/location/country"));
    let mut r = record("1", "", "9mm");
    r["event"]["location"]["country"] = json!("ABC");
    cases.push((r, "/event/location/country"));
    let mut r = record("1", "", "9mm");
    r["items"] = json!([]);
    cases.push((r, "/items"));
    let mut r = record("1", "", "9mm");
    r["originating_state"] = json!("XBB");
    cases.push((r, "/originating_state"));
    let mut r = record("1", "", "9mm");
    r["items"][0]["quantity"]["count"] = json!(1.5);
    cases.push((r, "/items/0/quantity/count"));
    for (body, pointer) in cases {
        let a = node.post_record(&body).await.unwrap();
        assert_eq!(a.status, 422, "{pointer}: {:?}", a.body);
        assert!(a.is_problem());
        assert_eq!(a.pointer(), Some(pointer), "{:?}", a.body);
    }
    // Oversized body: 413, as problem+json.
    let huge = format!("{{\"notes\": \"{}\"}}", "x".repeat(200 * 1024));
    let a = node
        .send(
            node.request(reqwest::Method::POST, "/api/v1/records")
                .header("content-type", "application/json")
                .body(huge),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 413);
    assert!(a.is_problem());
    assert_eq!(
        a.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    // A CSV with one broken row: the whole import is refused, with the row and column.
    let csv = "date,country,event_type,location_precision,tlp,item_category,lot,quantity\n\
               2024-01-01,XAA,seizure,country,GREEN,small_arms_ammunition,5-55,10\n\
               2024-01-02,XAA,seizure,country,GREEN,rocket_launcher,5-56,10\n";
    let a = node
        .import("text/csv", csv.as_bytes().to_vec(), "")
        .await
        .unwrap();
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert!(a.is_problem());
    assert_eq!(a.body["rejected"][0]["row"], 3);
    assert_eq!(a.body["rejected"][0]["column"], "item_category");
    assert_eq!(a.pointer(), Some("/rows/3/items/0/item_category"));
    // Unknown token and missing token.
    let a = node
        .send(
            node.http
                .get(format!("{}/api/v1/search?lot=1", node.url))
                .bearer_auth("nope"),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 401);
    let a = node
        .send(node.http.get(format!("{}/api/v1/search?lot=1", node.url)))
        .await
        .unwrap();
    assert_eq!(a.status, 401);
    // Nothing changed.
    assert_eq!(node.export_lines().await.unwrap(), before);
    assert_eq!(
        node.search_ids(&[("lot", "5-55")]).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        node.get_record(&keep).await.unwrap().body["record_version"],
        1
    );
}

#[tokio::test]
async fn imports_and_restart_keep_everything() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let csv = "record_ref,date,country,event_type,location_precision,tlp,item_category,calibre,headstamp,lot,quantity\n\
               A,2024-01-01,XAA,seizure,country,GREEN,small_arms_ammunition,7.62x39,539 85,21-85,100\n\
               A,2024-01-01,XAA,seizure,country,GREEN,small_arms_ammunition,5.45x39,270 98,77-98,40\n\
               B,2024-01-02,XAA,seizure,country,GREEN,small_arms_ammunition,9mm Luger,PPU 19,UF7387/19,10\n";
    let a = node
        .import("text/csv", csv.as_bytes().to_vec(), "")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["accepted"], 2);
    let mut lines = String::new();
    for i in 0..50 {
        lines.push_str(&record(&format!("JL-{i:03}"), "LC 20", "5.56x45").to_string());
        lines.push('\n');
    }
    let a = node
        .import("application/x-ndjson", lines.into_bytes(), "")
        .await
        .unwrap();
    assert_eq!(a.body["accepted"], 50, "{:?}", a.body);
    // Partial mode stores the good rows and reports the bad one.
    let mixed = format!(
        "{}\n{{\"originating_state\": \"XAA\"}}\n",
        record("PM-1", "", "9mm")
    );
    let a = node
        .import("application/x-ndjson", mixed.into_bytes(), "?mode=partial")
        .await
        .unwrap();
    assert_eq!(
        (
            a.body["accepted"].as_u64(),
            a.body["rejected_rows"].as_u64()
        ),
        (Some(1), Some(1)),
        "{:?}",
        a.body
    );
    assert_eq!(a.body["rejected"][0]["row"], 2);

    let before = node.export_lines().await.unwrap();
    assert_eq!(before.len(), 53);
    let node = node.restart().await.unwrap();
    assert_eq!(node.export_lines().await.unwrap(), before);
    for lot in ["UF7387-19", "JL-049"] {
        let a = node.search(&[("lot", lot)]).await.unwrap();
        let same = |h: &&Value| h["match"]["kind"] == "exact" || h["match"]["kind"] == "folded";
        assert!(same(&&a.body["hits"][0]), "{lot}: {:?}", a.body["hits"][0]);
        let exact: Vec<_> = a.body["hits"]
            .as_array()
            .unwrap()
            .iter()
            .filter(same)
            .collect();
        assert_eq!(exact.len(), 1, "{lot}");
    }
    let h = node
        .search(&[("lot", "21/85"), ("headstamp", "539 85")])
        .await
        .unwrap();
    assert_eq!(h.body["hits"][0]["item"]["calibre"]["raw"], "7.62x39");
}

/// Writers hand the indexer the documents of what they are about to write; a write the store
/// refuses must take its documents back, or a later write of the same record version would be
/// indexed with the refused content.
#[tokio::test]
async fn a_refused_write_leaves_nothing_in_the_index() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let id = create(&node, &record("WCC17K001-004", "WCC 17", "7.62x51")).await;

    let mut again = record("ZZZ99Q123-777", "LC 19", "5.56x45");
    again["record_id"] = json!(id);
    let a = node.post_record(&again).await.unwrap();
    assert_eq!(a.status, 409, "{:?}", a.body);
    // All or nothing: the new record in this batch is refused with the duplicate.
    let fresh = "urn:uuid:019ad2f0-0000-7000-8000-00000000a001";
    let mut refused = record("YYY11A222-333", "LC 19", "5.56x45");
    refused["record_id"] = json!(fresh);
    let body = serde_json::to_vec(&json!([refused, again])).unwrap();
    let a = node.import("application/json", body, "").await.unwrap();
    assert!(a.status >= 400, "{:?}", a.body);

    // The same record id and version, written now with other content.
    let mut accepted = record("MEN21B555-666", "MEN 21", "9x19");
    accepted["record_id"] = json!(fresh);
    assert_eq!(create(&node, &accepted).await, fresh);
    assert_eq!(
        node.search_ids(&[("lot", "MEN21B555-666")]).await.unwrap(),
        vec![fresh.to_owned()]
    );
    for lot in ["ZZZ99Q123-777", "YYY11A222-333"] {
        let ids = node.search_ids(&[("lot", lot)]).await.unwrap();
        assert!(ids.is_empty(), "{lot}: {ids:?}");
    }
    assert_eq!(
        node.search_ids(&[("lot", "WCC17K001-004")]).await.unwrap(),
        vec![id.clone()]
    );
    // A hit shows the stored item (with its derived readings) and an event summary.
    let found = node.search(&[("lot", "WCC17K001-004")]).await.unwrap();
    let stored = node.get_record(&id).await.unwrap().body;
    let hit = &found.body["hits"][0];
    assert_eq!(hit["item"], stored["items"][0], "{hit}");
    assert_eq!(hit["event"]["country"], "XAA", "{hit}");
    assert_eq!(hit["match"]["kind"], "exact", "{hit}");
}

/// The OpenAPI document and the router agree on methods too: every documented method of every
/// documented path reaches its handler (whatever the handler then answers to an empty request),
/// and any other method is a 405 problem, not a 404.
#[tokio::test]
async fn every_documented_method_is_routed_and_others_are_405() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let doc: Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schemas/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let absent = "urn:uuid:019ad2f0-0000-7000-8000-0000000000ff";
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = template
            .replace("{record_id}", absent)
            .replace("{format}", "misp")
            .replace(
                "{id}",
                if template.contains("/records/") {
                    absent
                } else {
                    "XZZ"
                },
            );
        for method in ["get", "post", "put", "delete", "patch"] {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let a = node
                .send(
                    node.request(m, &path)
                        .header("content-type", "application/json")
                        .body("{}"),
                )
                .await
                .unwrap();
            if item.get(method).is_some() {
                assert!(
                    a.status != 405 && a.body["detail"] != "no such endpoint",
                    "{method} {path} is documented but not routed: {} {:?}",
                    a.status,
                    a.body
                );
                checked += 1;
            } else {
                assert_eq!(a.status, 405, "{method} {path}: {:?}", a.body);
                assert!(a.is_problem(), "{method} {path}: {}", a.content_type);
            }
        }
    }
    assert!(checked >= 21, "only {checked} documented operations");
}

/// Query strings and paths that cannot be read are 400 problems that name the parameter;
/// overlong search texts are refused before anything is computed; the `Bearer` scheme is
/// case-insensitive.
#[tokio::test]
async fn bad_parameters_are_problems_that_point_at_the_parameter() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let id = create(&node, &record("PARAM-1", "539 85", "7.62x39")).await;
    let long = "A1".repeat(32_000);
    let cases: Vec<(String, &str)> = vec![
        ("/api/v1/search?lot=1&limit=ten".into(), "/limit"),
        ("/api/v1/search?lot=1&siblings=yes".into(), "/siblings"),
        ("/api/v1/search?lot=1&colour=red".into(), "/colour"),
        (
            "/api/v1/search?lot=1&min_seq=18446744073709551615".into(),
            "/min_seq",
        ),
        (format!("/api/v1/search?lot={long}"), "/lot"),
        (
            format!("/api/v1/search?headstamp={long}&siblings=true"),
            "/headstamp",
        ),
        (
            "/api/v1/export?include_retracted=yes".into(),
            "/include_retracted",
        ),
        (format!("/api/v1/records/{id}?version=abc"), "/version"),
    ];
    for (path, pointer) in cases {
        let started = std::time::Instant::now();
        let a = node
            .send(node.request(reqwest::Method::GET, &path))
            .await
            .unwrap();
        let shown: String = path.chars().take(60).collect();
        assert_eq!(a.status, 400, "{shown}: {:?}", a.body);
        assert!(a.is_problem(), "{shown}: {}", a.content_type);
        assert_eq!(a.pointer(), Some(pointer), "{shown}: {:?}", a.body);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{shown} took {:?}",
            started.elapsed()
        );
    }
    // A symbol next to a wildcard is a pattern like any other.
    let a = node
        .send(node.request(
            reqwest::Method::GET,
            "/api/v1/search?headstamp=%E2%98%85%3F",
        ))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    // A path segment that is not UTF-8.
    let a = node
        .send(node.request(reqwest::Method::GET, "/api/v1/records/%FF"))
        .await
        .unwrap();
    assert_eq!(a.status, 400);
    assert!(a.is_problem(), "{}", a.content_type);
    // `bearer` in lower case is the same scheme.
    let a = node
        .http
        .get(format!("{}/api/v1/records/{id}", node.url))
        .header("authorization", format!("bearer {}", node.token))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
}

/// `retracted` and `retraction` are the node's to write: a submitted flag is refused rather
/// than hiding a live record from exports. The record id is the path's.
#[tokio::test]
async fn node_managed_fields_are_refused_in_submissions() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let mut r = record("FLAG-1", "539 85", "7.62x39");
    r["retracted"] = json!(true);
    let a = node.post_record(&r).await.unwrap();
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert_eq!(a.pointer(), Some("/retracted"));
    assert!(node.export_lines().await.unwrap().is_empty());
    // A record id that is not a string is not silently replaced by the path's.
    let id = create(&node, &record("FLAG-2", "539 85", "7.62x39")).await;
    let mut r = record("FLAG-2b", "539 85", "7.62x39");
    r["record_id"] = json!(123);
    let a = node.put_record(&id, &r).await.unwrap();
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert_eq!(a.pointer(), Some("/record_id"));
    assert_eq!(
        node.get_record(&id).await.unwrap().body["record_version"],
        1
    );
}

/// A partial import whose every record is refused stores nothing and says so.
#[tokio::test]
async fn an_import_that_stores_nothing_says_so() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let mut bad = record("NONE-1", "539 85", "7.62x39");
    bad["items"][0]["quantity"]["count"] = json!(-1);
    let body = format!("{bad}\n{{oops\n").into_bytes();
    let a = node
        .import("application/x-ndjson", body, "?mode=partial")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["accepted"], 0);
    assert_eq!(a.body["rejected_rows"], 2);
    assert_eq!(a.body["stored"], false);
    let good = format!("{}\n", record("NONE-2", "539 85", "7.62x39")).into_bytes();
    let a = node
        .import("application/x-ndjson", good, "?mode=partial")
        .await
        .unwrap();
    assert_eq!(a.body["stored"], true, "{:?}", a.body);
}

/// Free text (`q`) is tried as a lot and as headstamp tokens: either finds the item.
#[tokio::test]
async fn free_text_finds_a_lot_or_a_headstamp() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let id = create(&node, &record("QQ-77-1", "19 PMP", "9x19")).await;
    for (q, kind) in [
        ("QQ-77-1", "exact"),
        ("19 PMP", "headstamp"),
        ("PMP 19", "headstamp"),
    ] {
        let a = node.search(&[("q", q)]).await.unwrap();
        let hits = a.body["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 1, "{q}: {:?}", a.body);
        assert_eq!(hits[0]["record_id"], id.as_str(), "{q}");
        assert_eq!(hits[0]["match"]["kind"], kind, "{q}");
    }
}

/// Roles (design §8): a token in `[[api.tokens]]` gets what its role allows and a 403 problem
/// for the rest, with nothing changed. Focal points record; investigators read and search;
/// analysts see aggregates only; unsuppressed figures and signed snapshots are for admins.
#[tokio::test]
async fn each_role_gets_what_it_may_do_and_a_403_for_the_rest() {
    let roles = ["focal_point", "investigator", "analyst"];
    let node = TestNode::spawn_with_config("XAA", |mut c| {
        for role in roles {
            let digest = ammotrace::identity::token_digest(&format!("{role}-secret"));
            c.push_str(&format!(
                "\n[[api.tokens]]\nname = \"{role}-1\"\nrole = \"{role}\"\nsha256 = \"{digest}\"\n"
            ));
        }
        c
    })
    .await
    .unwrap();
    let id = create(&node, &record("ROLE-1", "LC 19", "5.56x45mm NATO")).await;
    let call = |role: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = node
            .http
            .request(method, format!("{}{path}", node.url))
            .bearer_auth(format!("{role}-secret"));
        if let Some(b) = body {
            r = r.json(&b);
        }
        node.send(r)
    };
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let read = format!("/api/v1/records/{id}");
    let search = "/api/v1/search?lot=ROLE-1";
    let stats = "/api/v1/stats?group_by=calibre";
    let unsuppressed = "/api/v1/stats?group_by=calibre&unsuppressed=true";
    let snapshot = "/api/v1/stats/snapshots?group_by=calibre";
    let new = record("ROLE-2", "LC 19", "5.56x45mm NATO");
    // (role, method, path, body, expected status)
    let cases: Vec<(&str, reqwest::Method, &str, Option<Value>, u16)> = vec![
        (
            "focal_point",
            post.clone(),
            "/api/v1/records",
            Some(new.clone()),
            201,
        ),
        ("focal_point", get.clone(), &read, None, 200),
        ("focal_point", get.clone(), stats, None, 200),
        ("focal_point", get.clone(), unsuppressed, None, 403),
        ("focal_point", post.clone(), snapshot, None, 403),
        ("investigator", get.clone(), &read, None, 200),
        ("investigator", get.clone(), search, None, 200),
        (
            "investigator",
            post.clone(),
            "/api/v1/records",
            Some(new.clone()),
            403,
        ),
        ("investigator", get.clone(), unsuppressed, None, 403),
        ("analyst", get.clone(), stats, None, 200),
        ("analyst", get.clone(), &read, None, 403),
        ("analyst", get.clone(), search, None, 403),
        (
            "analyst",
            post.clone(),
            "/api/v1/records",
            Some(new.clone()),
            403,
        ),
        ("analyst", get.clone(), unsuppressed, None, 403),
        ("analyst", post.clone(), snapshot, None, 403),
    ];
    for (role, method, path, body, status) in cases {
        let what = format!("{role} {method} {path}");
        let a = call(role, method, path, body).await.unwrap();
        assert_eq!(a.status, status, "{what}: {:?}", a.body);
        if status == 403 {
            assert!(a.is_problem(), "{what}: {:?}", a.body);
        }
    }
    // The admin token may do what the others may not.
    let a = node.send(node.request(get, unsuppressed)).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    // One record was added (by the focal point): the refused writes stored nothing.
    let h = node.health().await.unwrap();
    assert_eq!(h["last_seq"], 2, "{h}");
}
