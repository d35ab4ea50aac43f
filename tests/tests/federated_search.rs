//! Live federated search between real nodes over TLS: one question from XDD, answered by
//! partners under their own policies (views, hit/no-hit, refusal), with a partner that is down
//! and one that sleeps past the deadline; rate limits; forged and purposeless queries.

use std::time::{Duration, Instant};

use ammotrace::identity::Identity;
use ammotrace::peer::sign_request;
use ammotrace_e2e::TestNode;
use ammotrace_e2e::federation::{TestFederation, eventually, policy};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

/// How long a test waits for what travels between nodes in the background.
const WAIT: Duration = Duration::from_secs(60);

fn record(state: &str, lot: &str) -> Value {
    json!({
        "originating_state": state,
        "event": {"event_type": "seizure", "date": {"start": "2024-05-02"},
                  "location": {"country": state, "admin1": format!("{state}-01"),
                               "place_name": format!("Secret place {state}"), "precision": "settlement"}},
        "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": lot,
                   "calibre": "7.62x39", "headstamp": "539 85"}],
        "case_refs": [{"system": "police", "ref": format!("CASE-{state}")}],
        "sharing": {"tlp": "GREEN"}
    })
}

async fn create(node: &TestNode, r: &Value) -> String {
    let a = node.post_record(r).await.unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["record_id"].as_str().unwrap().to_owned()
}

/// Sends a signed live query from `from` to `to`'s federation API; status, headers, raw body.
async fn query(
    from: &TestNode,
    to: &TestNode,
    key: &SigningKey,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let bytes = serde_json::to_vec(body).unwrap();
    let headers = sign_request(
        key,
        &from.node_id,
        &to.node_id,
        "POST",
        "/federation/v1/search",
        &bytes,
    );
    post_signed(to, &headers, bytes).await
}

async fn post_signed(
    to: &TestNode,
    headers: &[(&'static str, String)],
    bytes: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let pem = std::fs::read(to.data_dir.join("tls.crt")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .no_proxy()
        .build()
        .unwrap();
    let mut req = client
        .post(format!(
            "https://127.0.0.1:{}/federation/v1/search",
            to.federation_port
        ))
        .header("content-type", "application/json")
        .body(bytes);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn one_question_gets_an_honest_answer_from_every_partner_within_the_deadline() {
    let to_xdd = |mode: &str| policy(mode, json!({"location_precision": "admin1"}));
    let mut fed = TestFederation::start(
        &["XAA", "XBB", "XCC", "XDD", "XEE", "XRR", "XSS", "XTT"],
        &[
            ("XAA", "XDD", to_xdd("query")),
            ("XBB", "XDD", to_xdd("hit_no_hit")),
            ("XCC", "XDD", to_xdd("query")),
            ("XEE", "XDD", to_xdd("query")),
            ("XSS", "XDD", to_xdd("query")),
            ("XTT", "XDD", to_xdd("query")),
            // XRR shares nothing with XDD: mode none.
        ],
    )
    .await
    .unwrap();
    // XDD's deadline: 8 s, under the 10 s request timeout (past which a partner counts as
    // unreachable) and ample for a loaded CI machine running eight nodes on two cores. XAA
    // allows bursts of 3 queries and refills one a minute, so its bucket is empty by the time
    // the test checks the limit, however slowly the steps before it ran.
    for (id, from, to) in [
        (
            "XDD",
            "search_deadline_ms = 3000",
            "search_deadline_ms = 8000",
        ),
        ("XAA", "query_burst = 20", "query_burst = 3"),
        (
            "XAA",
            "query_rate_per_minute = 60",
            "query_rate_per_minute = 1",
        ),
    ] {
        let node = fed.node_mut(id);
        node.stop().unwrap();
        let path = node.data_dir.join("config.toml");
        let text = std::fs::read_to_string(&path).unwrap().replace(from, to);
        std::fs::write(&path, text).unwrap();
        node.start_again().await.unwrap();
    }

    // The same lot, seized in three States, transcribed three ways.
    let a = create(fed.node("XAA"), &record("XAA", "21-85 539")).await;
    let b = create(fed.node("XBB"), &record("XBB", "LOT 21-85-539")).await;
    let c = create(fed.node("XCC"), &record("XCC", "2I-85 S39")).await;
    for id in ["XAA", "XBB", "XCC"] {
        fed.node(id).search(&[("lot", "x")]).await.unwrap(); // waits for the index
    }

    // XEE is down; XSS answers only after 60 s (a TLS server with XSS's certificate).
    fed.node_mut("XEE").stop().unwrap();
    let xss_port = fed.node("XSS").federation_port;
    let xss_dir = fed.node("XSS").data_dir.clone();
    fed.node_mut("XSS").stop().unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(
        xss_dir.join("tls.crt"),
        xss_dir.join("tls.key"),
    )
    .await
    .unwrap();
    let slow = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        "{}"
    });
    tokio::spawn(
        axum_server::bind_rustls(std::net::SocketAddr::from(([127, 0, 0, 1], xss_port)), tls)
            .serve(slow.into_make_service()),
    );

    // XTT answers with a hit whose envelope was signed by a key that is not XTT's.
    let xtt_port = fed.node("XTT").federation_port;
    let xtt_dir = fed.node("XTT").data_dir.clone();
    fed.node_mut("XTT").stop().unwrap();
    let forged = ammotrace::envelope::seal(
        &json!({"record_id": "01900000-0000-7000-8000-0000000000ff", "record_version": 1,
                "originating_state": "XTT", "items": [{"item_id": "i1", "lot": {"raw": "21-85 539"}}]}),
        &ammotrace::envelope::Seal {
            origin: "XTT", seq: 1, prev: "", issued_at: "2026-01-01T00:00:00.000Z",
            retracted: false, normaliser: "1",
        },
        &SigningKey::from_bytes(&[66u8; 32]),
    )
    .unwrap();
    let forged_answer = json!({"mode": "query", "hits": [
        {"item_id": "i1", "match": {"kind": "exact", "score": 1.0}, "envelope": forged}
    ]})
    .to_string();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(
        xtt_dir.join("tls.crt"),
        xtt_dir.join("tls.key"),
    )
    .await
    .unwrap();
    let liar = axum::Router::new().fallback(move || {
        let body = forged_answer.clone();
        async move { ([("content-type", "application/json")], body) }
    });
    tokio::spawn(
        axum_server::bind_rustls(std::net::SocketAddr::from(([127, 0, 0, 1], xtt_port)), tls)
            .serve(liar.into_make_service()),
    );

    let xdd = fed.node("XDD");
    let started = Instant::now();
    let answer = xdd
        .send(xdd.request(reqwest::Method::GET, "/api/v1/search").query(&[
            ("lot", "21-85-539"),
            ("scope", "federated"),
            ("purpose", "trace request"),
            ("case_ref", "XDD-2026-7"),
        ]))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    // The sleeper answers after 60 s: a deadline of 8 s must not wait for it.
    assert!(
        took < Duration::from_secs(30),
        "the deadline was not kept: {took:?}"
    );

    let partner = |id: &str| {
        answer.body["partners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no status for {id}: {}", answer.body))
    };
    assert_eq!(partner("XAA")["status"], "answered");
    assert_eq!(partner("XCC")["status"], "answered");
    assert_eq!(partner("XBB")["status"], "answered");
    assert_eq!(partner("XBB")["count"], 1);
    assert_eq!(partner("XBB")["refs"].as_array().unwrap().len(), 1);
    assert_eq!(partner("XEE")["status"], "unreachable");
    assert_eq!(partner("XSS")["status"], "timed_out");
    assert_eq!(partner("XRR")["status"], "refused");
    assert!(
        partner("XRR")["detail"]
            .as_str()
            .unwrap()
            .starts_with("403")
    );
    assert_eq!(partner("XTT")["status"], "bad_signature");
    assert_eq!(partner("XTT")["hits"], 0);
    for p in answer.body["partners"].as_array().unwrap() {
        assert!(p["latency_ms"].as_u64().unwrap() <= 10_000, "{p}");
    }

    let hits = answer.body["hits"].as_array().unwrap();
    let hit = |id: &str| {
        hits.iter()
            .find(|h| h["record_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not among the hits: {}", answer.body))
    };
    assert_eq!(hit(&a)["origin"], "XAA");
    assert_eq!(hit(&a)["match"]["kind"], "exact");
    assert_eq!(hit(&c)["origin"], "XCC");
    assert_eq!(hit(&c)["match"]["kind"], "confusable");
    assert!(
        !hits.iter().any(|h| h["record_id"] == b.as_str()),
        "hit/no-hit leaked a view"
    );
    let text = answer.body.to_string();
    assert!(
        !text.contains("Secret place"),
        "an undisclosed field arrived: {text}"
    );
    assert!(!text.contains("CASE-"), "a case reference arrived");
    assert_eq!(hit(&a)["event"]["country"], "XAA");

    // Hit/no-hit: the raw answer holds a count and references, nothing else.
    let xdd_key = Identity::load(&xdd.data_dir, "XDD")
        .unwrap()
        .signing_key()
        .clone();
    let body = json!({"params": {"lot": "21-85-539"}, "purpose": "trace", "case_ref": "C-1"});
    let (status, _, raw) = query(xdd, fed.node("XBB"), &xdd_key, &body).await;
    assert_eq!(status, 200);
    let parsed: Value = serde_json::from_slice(&raw).unwrap();
    let keys: Vec<&String> = parsed.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["mode", "count", "refs"], "{parsed}");
    let raw = String::from_utf8(raw).unwrap();
    for secret in ["21-85", "539", "XBB-01", "Secret", "7.62", "CASE", &b] {
        assert!(
            !raw.contains(secret),
            "hit/no-hit answer leaks {secret:?}: {raw}"
        );
    }

    // Refusals: no purpose, a partner that shares nothing, a forged query, and the rate limit.
    let no_purpose = xdd
        .send(
            xdd.request(reqwest::Method::GET, "/api/v1/search")
                .query(&[("lot", "21-85-539"), ("scope", "federated")]),
        )
        .await
        .unwrap();
    assert_eq!(no_purpose.status, 400);
    assert_eq!(no_purpose.pointer(), Some("/purpose"));
    let (status, _, _) = query(
        xdd,
        fed.node("XAA"),
        &xdd_key,
        &json!({"params": {"lot": "1"}, "purpose": " ", "case_ref": "C"}),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _, raw) = query(fed.node("XCC"), fed.node("XAA"), &xdd_key, &body).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&raw));
    // A replayed query (same signed headers and body, sent again) is refused with no data.
    let bytes = serde_json::to_vec(&body).unwrap();
    let signed = sign_request(
        &xdd_key,
        "XDD",
        "XCC",
        "POST",
        "/federation/v1/search",
        &bytes,
    );
    let (first, _, _) = post_signed(fed.node("XCC"), &signed, bytes.clone()).await;
    assert_eq!(first, 200);
    let (replayed, _, raw) = post_signed(fed.node("XCC"), &signed, bytes).await;
    assert_eq!(replayed, 401);
    assert!(!String::from_utf8_lossy(&raw).contains("hits"));
    let xaa_key = Identity::load(&fed.node("XAA").data_dir, "XAA")
        .unwrap()
        .signing_key()
        .clone();
    let (status, _, _) = query(fed.node("XAA"), fed.node("XBB"), &xaa_key, &body).await;
    assert_eq!(status, 403, "XBB shares nothing with XAA");
    // XAA's bucket (burst 3) was used by the federated search and the 422 above.
    let mut limited = None;
    for _ in 0..4 {
        let (status, headers, _) = query(xdd, fed.node("XAA"), &xdd_key, &body).await;
        if status == 429 {
            limited = Some(headers);
            break;
        }
        assert_eq!(status, 200);
    }
    let headers = limited.expect("the rate limit never triggered");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let log = std::fs::read_to_string(fed.node("XAA").data_dir.join("audit.log")).unwrap();
    assert!(log.contains("\"event\":\"query_answered\"") && log.contains("XDD-2026-7"));
    assert!(log.contains("\"event\":\"query_refused\"") && log.contains("rate limit"));
    let log = std::fs::read_to_string(xdd.data_dir.join("audit.log")).unwrap();
    assert!(log.contains("\"event\":\"query_sent\""));
}

async fn federated(xdd: &TestNode, lot: &str) -> Value {
    let a = xdd
        .send(xdd.request(reqwest::Method::GET, "/api/v1/search").query(&[
            ("lot", lot),
            ("scope", "federated"),
            ("purpose", "trace request"),
            ("case_ref", "XDD-2026-9"),
        ]))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body
}

fn refs_from(answer: &Value, partner: &str) -> Vec<String> {
    answer["partners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == partner)
        .and_then(|p| p["refs"].as_array())
        .map(|r| r.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

async fn ask(xdd: &TestNode, reference: &str) -> (u16, Value) {
    let a = xdd
        .send(
            xdd.request(reqwest::Method::POST, "/api/v1/disclosure-requests")
                .json(&json!({"partner": "XBB", "reference": reference,
                              "purpose": "identify the supplier", "case_ref": "XDD-2026-9"})),
        )
        .await
        .unwrap();
    (a.status, a.body)
}

/// The focal point's `approve` or `decline` of disclosure request `id`, with a reason.
async fn decide(node: &TestNode, id: &str, action: &str, reason: &str) -> ammotrace_e2e::Answer {
    node.send(
        node.request(
            reqwest::Method::POST,
            &format!("/api/v1/disclosure-requests/{id}/{action}"),
        )
        .json(&json!({ "reason": reason })),
    )
    .await
    .unwrap()
}

/// The id of the one pending request `node` holds.
async fn pending_id(node: &TestNode) -> String {
    let pending = requests(node)
        .await
        .into_iter()
        .find(|r| r["status"] == "pending")
        .unwrap();
    pending["id"].as_str().unwrap().to_owned()
}

async fn requests(node: &TestNode) -> Vec<Value> {
    let a = node
        .send(node.request(reqwest::Method::GET, "/api/v1/disclosure-requests"))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body["requests"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_hit_is_followed_up_approved_or_declined_and_audited() {
    let fed = TestFederation::start(
        &["XBB", "XDD"],
        &[(
            "XBB",
            "XDD",
            policy("hit_no_hit", json!({"location_precision": "admin1"})),
        )],
    )
    .await
    .unwrap();
    let (xbb, xdd) = (fed.node("XBB"), fed.node("XDD"));
    let wanted = create(xbb, &record("XBB", "21-85 539")).await;
    let other = create(xbb, &record("XBB", "FC17H462-520")).await;
    xbb.search(&[("lot", "x")]).await.unwrap();

    // Step 1: a hit, as a reference only.
    let answer = federated(xdd, "21-85-539").await;
    let refs = refs_from(&answer, "XBB");
    assert_eq!(refs.len(), 1, "{answer}");
    assert!(!answer.to_string().contains(&wanted));

    // The same from the command line: the merged hits and the partner table.
    let cli = xdd
        .command(&[
            "search",
            "--lot",
            "21-85-539",
            "--federated",
            "--purpose",
            "trace",
            "--case-ref",
            "XDD-2026-9",
            "--url",
            &xdd.url,
            "--token",
            &xdd.token,
        ])
        .unwrap();
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("XBB"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("answered") && row.contains("1*") && row.contains("refs: "),
        "{out}"
    );
    let no_purpose = xdd
        .command(&["search", "--lot", "1", "--federated", "--url", &xdd.url])
        .unwrap();
    assert!(!no_purpose.status.success());

    // Step 2: ask; XBB sees the pending request with its purpose; its focal point approves.
    let sent = ask(xdd, &refs[0]).await;
    assert_eq!(sent.0, 201, "{}", sent.1);
    assert_eq!(sent.1["status"], "pending");
    let incoming = requests(xbb).await;
    assert_eq!(incoming.len(), 1);
    assert_eq!(incoming[0]["direction"], "incoming");
    assert_eq!(incoming[0]["purpose"], "identify the supplier");
    assert_eq!(incoming[0]["record_id"], wanted.as_str());
    let id = incoming[0]["id"].as_str().unwrap().to_owned();
    let approved = decide(xbb, &id, "approve", "joint investigation agreed").await;
    assert_eq!(approved.status, 200, "{:?}", approved.body);

    // The record arrives at XDD as XBB's, with only what XBB's policy lets leave.
    let outgoing = requests(xdd).await;
    assert_eq!(outgoing[0]["status"], "approved", "{outgoing:?}");
    assert_eq!(outgoing[0]["record_id"], wanted.as_str());
    let got = xdd.wait_for_version(&wanted, 1, WAIT).await.unwrap();
    assert_eq!(got["originating_state"], "XBB");
    assert_eq!(got["event"]["location"]["admin1"], "XBB-01");
    assert!(got["event"]["location"].get("place_name").is_none());
    assert!(got.get("case_refs").is_none());
    let hits = xdd.search(&[("lot", "21-85-539")]).await.unwrap();
    assert_eq!(hits.body["hits"][0]["record_id"], wanted.as_str());
    assert_eq!(hits.body["hits"][0]["origin"], "XBB");
    // Approving twice is refused.
    let again = decide(xbb, &id, "approve", "again").await;
    assert_eq!(again.status, 409);

    // XBB retracts the record: the retraction reaches XDD, which holds it by the grant alone
    // (XBB's policy for XDD gives it no feed), and XDD's receipt comes back.
    assert_eq!(xbb.delete_record(&wanted).await.unwrap().status, 200);
    let withdrawn = xdd.wait_for_version(&wanted, 2, WAIT).await.unwrap();
    assert_eq!(withdrawn["retracted"], true, "{withdrawn}");
    assert!(
        xdd.search_ids(&[("lot", "21-85-539")])
            .await
            .unwrap()
            .is_empty()
    );
    eventually(WAIT, "XDD's receipt", || async {
        let list = xbb.receipts(&wanted).await?;
        Ok(list
            .iter()
            .any(|r| r["partner"] == "XDD" && r["version"] == 2)
            .then_some(()))
    })
    .await
    .unwrap();

    // A second hit, declined with a reason: nothing arrives.
    let refs = refs_from(&federated(xdd, "FC17H462-520").await, "XBB");
    assert_eq!(ask(xdd, &refs[0]).await.0, 201);
    let id = pending_id(xbb).await;
    let declined = decide(xbb, &id, "decline", "ongoing operation").await;
    assert_eq!(declined.status, 200, "{:?}", declined.body);
    let mine = requests(xdd).await;
    let declined = mine.iter().find(|r| r["status"] == "declined").unwrap();
    assert_eq!(declined["reason"], "ongoing operation");
    assert_eq!(xdd.get_record(&other).await.unwrap().status, 404);

    // A hit on a record marked do-not-share after the hit: approval is refused, since the
    // record as it is now may not leave; nothing arrives.
    let later = create(xbb, &record("XBB", "LC19L123-456")).await;
    xbb.search(&[("lot", "x")]).await.unwrap();
    let refs = refs_from(&federated(xdd, "LC19L123-456").await, "XBB");
    assert_eq!(ask(xdd, &refs[0]).await.0, 201);
    let mut marked = record("XBB", "LC19L123-456");
    marked["sharing"] = json!({"tlp": "GREEN", "do_not_share": true});
    assert_eq!(xbb.put_record(&later, &marked).await.unwrap().status, 200);
    let id = pending_id(xbb).await;
    let refused = decide(xbb, &id, "approve", "agreed before the label changed").await;
    assert_eq!(refused.status, 409, "{:?}", refused.body);
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("do-not-share")),
        "{:?}",
        refused.body
    );
    assert_eq!(xdd.get_record(&later).await.unwrap().status, 404);

    // A reference XBB never gave is refused; nothing is stored.
    let bogus = ask(xdd, "not-a-reference").await;
    assert_eq!(bogus.0, 409, "{}", bogus.1);
    assert_eq!(requests(xdd).await.len(), 3);

    for (node, events) in [
        (
            xbb,
            &[
                "disclosure_request_received",
                "disclosure_request_decided",
                "\"channel\":\"grant\"",
            ][..],
        ),
        (
            xdd,
            &[
                "query_sent",
                "disclosure_request_sent",
                "disclosure_request_answered",
            ][..],
        ),
    ] {
        let log = std::fs::read_to_string(node.data_dir.join("audit.log")).unwrap();
        for e in events {
            assert!(log.contains(e), "{} audit has no {e}", node.node_id);
        }
    }
}

#[tokio::test]
async fn disclosure_requests_expire() {
    let mut fed = TestFederation::start(
        &["XBB", "XDD"],
        &[("XBB", "XDD", policy("hit_no_hit", json!({})))],
    )
    .await
    .unwrap();
    let xbb = fed.node_mut("XBB");
    xbb.stop().unwrap();
    let path = xbb.data_dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "disclosure_request_hours = 48",
        "disclosure_request_hours = 0",
    );
    std::fs::write(&path, text).unwrap();
    xbb.start_again().await.unwrap();
    create(fed.node("XBB"), &record("XBB", "21-85 539")).await;
    fed.node("XBB").search(&[("lot", "x")]).await.unwrap();
    let refs = refs_from(&federated(fed.node("XDD"), "21-85-539").await, "XBB");
    assert_eq!(ask(fed.node("XDD"), &refs[0]).await.0, 201);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let listed = requests(fed.node("XBB")).await;
    assert_eq!(listed[0]["status"], "expired", "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap();
    let late = fed
        .node("XBB")
        .send(
            fed.node("XBB")
                .request(
                    reqwest::Method::POST,
                    &format!("/api/v1/disclosure-requests/{id}/approve"),
                )
                .json(&json!({"reason": "too late"})),
        )
        .await
        .unwrap();
    assert_eq!(late.status, 409);
    assert!(late.body["detail"].as_str().unwrap().contains("expired"));
}
