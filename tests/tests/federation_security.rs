//! Federation refusals: forged, replayed, stale, misaddressed and unknown requests get nothing
//! and are audited; tampered feed pages (a fault-injecting TLS proxy between two real nodes)
//! are refused with nothing stored, and the cursor holds until a genuine page arrives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ammotrace::identity::Identity;
use ammotrace::peer::{sign_request, sign_request_at};
use ammotrace_e2e::TestNode;
use ammotrace_e2e::federation::{TestFederation, assert_caught_up, eventually, policy};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn record(lot: &str) -> Value {
    json!({
        "originating_state": "XAA",
        "event": {"event_type": "seizure", "date": {"start": "2024-03-11"},
                  "location": {"country": "XAA", "precision": "country"}},
        "items": [{"item_id": "i1", "item_category": "small_arms_ammunition", "lot": lot,
                   "calibre": "7.62x39"}],
        "sharing": {"tlp": "GREEN"}
    })
}

async fn create(node: &TestNode, r: &Value) -> String {
    let a = node.post_record(r).await.unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["record_id"].as_str().unwrap().to_owned()
}

fn pinned_client(node: &TestNode) -> reqwest::Client {
    let pem = std::fs::read(node.data_dir.join("tls.crt")).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .no_proxy()
        .build()
        .unwrap()
}

async fn send(
    client: &reqwest::Client,
    node: &TestNode,
    path: &str,
    headers: &[(&'static str, String)],
) -> (u16, Value) {
    let mut req = client.get(format!("https://127.0.0.1:{}{path}", node.federation_port));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A flood of refused requests is audited in full but at a bounded cost: each second, the
/// first twenty one by one, the rest counted by reason in one entry once the second is over.
#[tokio::test]
async fn a_flood_of_refused_requests_is_counted_not_written_one_by_one() {
    let node = TestNode::spawn("XAA").await.unwrap();
    let client = pinned_client(&node);
    let path = "/federation/v1/feed?after=0";
    let audited = |event: &str| {
        let log = std::fs::read_to_string(node.data_dir.join("audit.log")).unwrap();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == event)
            .collect::<Vec<_>>()
    };
    let before = audited("request_refused").len();
    const SENT: usize = 100;
    let first = chrono::Utc::now().timestamp();
    // All at once, as a flood comes: however slow this machine's disk, more than twenty
    // arrive within a second.
    let url = format!("https://127.0.0.1:{}{path}", node.federation_port);
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..SENT {
        let (client, url) = (client.clone(), url.clone());
        flood.spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    while let Some(status) = flood.join_next().await {
        assert_eq!(status.unwrap().unwrap(), 401);
    }
    let seconds = (chrono::Utc::now().timestamp() - first + 1) as usize;
    let (one_by_one, counted) = eventually(WAIT, "every refusal to be audited", || async {
        let one_by_one = audited("request_refused").len() - before;
        let counted: u64 = audited("requests_refused")
            .iter()
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        Ok((one_by_one + counted as usize == SENT).then_some((one_by_one, counted)))
    })
    .await
    .unwrap();
    assert!(
        one_by_one <= 20 * seconds,
        "{one_by_one} written one by one in {seconds} s"
    );
    assert!(counted > 0);
    let bulk = audited("requests_refused");
    assert_eq!(
        bulk[0]["by_reason"]["missing_header"], bulk[0]["count"],
        "{}",
        bulk[0]
    );
    let verify = node.command(&["audit", "verify"]).unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[tokio::test]
async fn forged_replayed_stale_and_unknown_requests_get_nothing() {
    let fed = TestFederation::start(
        &["XAA", "XBB"],
        &[("XAA", "XBB", policy("replicate", json!({})))],
    )
    .await
    .unwrap();
    let (xaa, xbb) = (fed.node("XAA"), fed.node("XBB"));
    create(xaa, &record("SEC-1")).await;
    let key = Identity::load(&xbb.data_dir, "XBB")
        .unwrap()
        .signing_key()
        .clone();
    let client = pinned_client(xaa);
    let path = "/federation/v1/feed?after=0";

    let genuine = sign_request(&key, "XBB", "XAA", "GET", path, b"");
    let (status, body) = send(&client, xaa, path, &genuine).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entries"][0]["seq"], 1);

    let now = chrono::Utc::now().timestamp();
    let stranger = SigningKey::from_bytes(&[9u8; 32]);
    type Headers = Vec<(&'static str, String)>;
    let cases: Vec<(&str, Headers, &str, u16)> = vec![
        ("replayed", genuine.clone(), path, 401),
        (
            "unknown key",
            sign_request(&stranger, "XBB", "XAA", "GET", path, b""),
            path,
            401,
        ),
        (
            "stale",
            sign_request_at(&key, "XBB", "XAA", "GET", path, b"", now - 3600, "n-stale"),
            path,
            401,
        ),
        (
            "misaddressed",
            sign_request(&key, "XBB", "XCC", "GET", path, b""),
            path,
            403,
        ),
        (
            "unknown sender",
            sign_request(&key, "XQQ", "XAA", "GET", path, b""),
            path,
            401,
        ),
        (
            "altered path",
            sign_request(&key, "XBB", "XAA", "GET", path, b""),
            "/federation/v1/feed?after=1",
            401,
        ),
        ("unsigned", Vec::new(), path, 401),
    ];
    for (what, headers, path, expected) in &cases {
        let (status, body) = send(&client, xaa, path, headers).await;
        assert_eq!(status, *expected, "{what}: {body}");
        assert!(body.get("entries").is_none(), "{what} got data: {body}");
        assert_eq!(body["title"], "request refused", "{what}: {body}");
    }
    let log = std::fs::read_to_string(xaa.data_dir.join("audit.log")).unwrap();
    let refused = log
        .lines()
        .filter(|l| l.contains("\"event\":\"request_refused\""))
        .count();
    assert_eq!(refused, cases.len(), "{log}");
    for reason in [
        "nonce was used before",
        "unknown or invalid key",
        "from this node's clock",
        "addressed to XCC",
        "unknown sender XQQ",
        "signature does not verify",
        "missing header",
    ] {
        assert!(log.contains(reason), "no refusal says {reason:?}");
    }

    // Refusals by the endpoints themselves, once the sender is known, are audited too: a feed
    // asked of a node that shares nothing with the asker, and a receipt that is not one.
    let xaa_key = Identity::load(&xaa.data_dir, "XAA")
        .unwrap()
        .signing_key()
        .clone();
    let asked = sign_request(&xaa_key, "XAA", "XBB", "GET", path, b"");
    let (status, body) = send(&pinned_client(xbb), xbb, path, &asked).await;
    assert_eq!(status, 403, "{body}");
    let receipts = "/federation/v1/receipts";
    let signed = sign_request(&key, "XBB", "XAA", "POST", receipts, b"not json");
    let mut req = client
        .post(format!(
            "https://127.0.0.1:{}{receipts}",
            xaa.federation_port
        ))
        .body("not json");
    for (k, v) in &signed {
        req = req.header(*k, v);
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 400);
    for (node, path) in [(xbb, "\"feed\""), (xaa, "\"receipts\"")] {
        let log = std::fs::read_to_string(node.data_dir.join("audit.log")).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("\"event\":\"request_refused\"") && l.contains(path)),
            "{}: no audited refusal at {path}",
            node.node_id
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    TamperDisclosure,
    TamperClaims,
    /// Alters the signed part and recomputes its digest, so only the signature can tell.
    TamperSigned,
    DropEntry,
    /// Every other feed request fails (503, not forwarded), so a prefetched page often fails
    /// while the page before it is being written.
    FailEveryOther,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    fault: Arc<Mutex<Fault>>,
    /// Feed requests seen, and how many of them were failed.
    feeds: Arc<std::sync::atomic::AtomicUsize>,
    failed: Arc<std::sync::atomic::AtomicUsize>,
}

async fn forward(State(proxy): State<Proxy>, req: Request) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 26)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    if path.starts_with("/federation/v1/feed") {
        let n = proxy
            .feeds
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if *proxy.fault.lock().unwrap() == Fault::FailEveryOther && n % 2 == 1 {
            proxy
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "injected fault",
            )
                .into_response();
        }
    }
    let mut out = proxy
        .client
        .request(parts.method.clone(), format!("{}{path}", proxy.upstream));
    for (k, v) in &parts.headers {
        if k.as_str().starts_with("ammotrace-") || k == "content-type" {
            out = out.header(k, v);
        }
    }
    let resp = out.body(bytes.to_vec()).send().await.unwrap();
    let status = resp.status();
    let mut body = resp.bytes().await.unwrap_or_default();
    let fault = *proxy.fault.lock().unwrap();
    if path.starts_with("/federation/v1/feed") && status.is_success() && fault != Fault::None {
        let mut page: Value = serde_json::from_slice(&body).unwrap();
        let entries = page["entries"].as_array_mut().unwrap();
        if !entries.is_empty() {
            match fault {
                Fault::TamperDisclosure => {
                    for d in entries[0]["envelope"]["disclosures"]
                        .as_array_mut()
                        .unwrap()
                    {
                        if d[1] == "/items/0/lot/raw" {
                            d[2] = json!("99-99 999");
                        }
                    }
                }
                Fault::TamperClaims => entries[0]["envelope"]["claims"]["version"] = json!(7),
                Fault::TamperSigned => {
                    // The last change: no later `prev` betrays it, only the signature can.
                    let last = entries.last_mut().unwrap();
                    last["envelope"]["claims"]["retracted"] = json!(true);
                    let claims: ammotrace::envelope::Claims =
                        serde_json::from_value(last["envelope"]["claims"].clone()).unwrap();
                    last["digest"] = json!(claims.digest().unwrap());
                }
                Fault::DropEntry => {
                    entries.remove(0);
                }
                Fault::None | Fault::FailEveryOther => {}
            }
        }
        body = Bytes::from(serde_json::to_vec(&page).unwrap());
    }
    (status, [("content-type", "application/json")], body).into_response()
}

/// Puts a TLS proxy that presents XAA's certificate, and alters what XAA answers as `fault`
/// says, between XBB and XAA (XBB is restarted with the proxy as XAA's address, and `edit`
/// applied to its config). Returns the proxy's state.
async fn proxy_before_xaa(
    fed: &mut TestFederation,
    fault: Fault,
    edit: impl Fn(String) -> String,
) -> Proxy {
    let xaa_port = fed.node("XAA").federation_port;
    let dir = fed.node("XAA").data_dir.clone();
    let proxy = Proxy {
        upstream: format!("https://127.0.0.1:{xaa_port}"),
        client: pinned_client(fed.node("XAA")),
        fault: Arc::new(Mutex::new(fault)),
        feeds: Default::default(),
        failed: Default::default(),
    };
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(
        dir.join("tls.crt"),
        dir.join("tls.key"),
    )
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(proxy.clone());
    tokio::spawn(
        axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .serve(app.into_make_service()),
    );

    fed.node_mut("XBB").stop().unwrap();
    let config = fed.node("XBB").data_dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("https://127.0.0.1:{xaa_port}"),
        &format!("https://127.0.0.1:{proxy_port}"),
    );
    std::fs::write(&config, edit(text)).unwrap();
    fed.node_mut("XBB").start_again().await.unwrap();
    proxy
}

#[tokio::test]
async fn tampered_feed_pages_are_refused_and_nothing_is_stored() {
    let mut fed = TestFederation::start(
        &["XAA", "XBB"],
        &[("XAA", "XBB", policy("replicate", json!({})))],
    )
    .await
    .unwrap();
    let fault = proxy_before_xaa(&mut fed, Fault::TamperDisclosure, |c| c)
        .await
        .fault;

    let mut ids = Vec::new();
    for (n, (mode, reason)) in [
        (Fault::TamperDisclosure, "not listed in the signed claims"),
        (Fault::TamperClaims, "digest does not match the claims"),
        (Fault::TamperSigned, "signature is not valid"),
        (Fault::DropEntry, "gap"),
    ]
    .into_iter()
    .enumerate()
    {
        *fault.lock().unwrap() = mode;
        ids.push(create(fed.node("XAA"), &record(&format!("21-85 53{n}"))).await);
        let xbb = fed.node("XBB");
        let audit = xbb.data_dir.join("audit.log");
        eventually(
            WAIT,
            &format!("XBB to refuse a page ({mode:?})"),
            || async {
                let log = std::fs::read_to_string(&audit).unwrap_or_default();
                Ok(log
                    .lines()
                    .any(|l| l.contains("feed_page_refused") && l.contains(reason))
                    .then_some(()))
            },
        )
        .await
        .unwrap();
        for id in &ids {
            assert_eq!(
                xbb.get_record(id).await.unwrap().status,
                404,
                "{mode:?}: {id} was stored"
            );
        }
        let export = xbb.export_lines().await.unwrap();
        assert!(export.is_empty(), "{mode:?}: XBB stored {export:?}");
    }

    // The genuine feed then arrives whole, from the unchanged cursor.
    *fault.lock().unwrap() = Fault::None;
    for id in &ids {
        let r = fed.node("XBB").wait_for_version(id, 1, WAIT).await.unwrap();
        assert!(
            r["items"][0]["lot"]["raw"]
                .as_str()
                .unwrap()
                .starts_with("21-85 53")
        );
    }
}

/// Feed fetches that fail while the page before is still being written (every other one, over
/// a catch-up of many small pages, with notifies arriving meanwhile): XBB ends with every
/// record exactly once and its cursor at XAA's end.
#[tokio::test]
async fn failing_fetches_mid_catch_up_lose_and_repeat_nothing() {
    let mut fed = TestFederation::start(
        &["XAA", "XBB"],
        &[("XAA", "XBB", policy("replicate", json!({})))],
    )
    .await
    .unwrap();
    let proxy = proxy_before_xaa(&mut fed, Fault::FailEveryOther, |c| {
        c.replace("page_size = 1000", "page_size = 20")
    })
    .await;
    let xaa = fed.node("XAA");
    for batch in 0..4 {
        let mut body = Vec::new();
        for n in 0..250 {
            body.extend(serde_json::to_vec(&record(&format!("FAIL-{batch}-{n}"))).unwrap());
            body.push(b'\n');
        }
        let a = xaa.import("application/x-ndjson", body, "").await.unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    let xbb = fed.node("XBB");
    assert_caught_up(xbb, "XAA", 1000, 1000).await;
    let failed = proxy.failed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(failed >= 10, "only {failed} fetches failed");
    // Nothing was refused as a gap or a bad page on the way.
    let log = std::fs::read_to_string(xbb.data_dir.join("audit.log")).unwrap();
    assert!(!log.contains("feed_page_refused"), "a page was refused");
}
