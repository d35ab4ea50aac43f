//! The federation API under `/federation/v1`, for partners only: HTTPS (rustls, this node's
//! `tls.crt`) on its own address, every request signed by the partner's node key
//! (see [`crate::peer`]). A request that fails authentication gets a problem+json 401/403 and
//! nothing else, and is written to the audit log.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use crate::node::Node;
use crate::peer::{self, Peer, SignedHeaders};
use crate::policy::Mode;
use crate::sync::{self, SignedReceipt};

/// Largest request body a partner may send.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct FedState {
    pub node: Arc<Node>,
    refusals: Arc<Refusals>,
}

/// How many refused requests a second are audited one by one.
const REFUSALS_AUDITED_A_SECOND: u32 = 20;

/// Refused requests can come from anyone, as fast as they are sent, and each audit entry of a
/// refusal is synced to disk. So in each second the first [`REFUSALS_AUDITED_A_SECOND`] are
/// audited one by one; the rest are counted by reason and audited as one entry
/// (`requests_refused`) when that second is over.
#[derive(Default)]
struct Refusals {
    window: std::sync::Mutex<RefusalWindow>,
}

#[derive(Default)]
struct RefusalWindow {
    second: i64,
    audited: u32,
    /// Refusals counted, not audited one by one: by second, then by reason.
    counted: BTreeMap<i64, BTreeMap<&'static str, u64>>,
}

impl Refusals {
    /// Whether a refusal at `second` is audited on its own. When not, it is counted; the
    /// first one counted in a second asks the caller (true in the second place) to audit that
    /// second's counts once it is over ([`Refusals::take`]).
    fn admit(&self, second: i64, kind: &'static str) -> (bool, bool) {
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.second != second {
            w.second = second;
            w.audited = 0;
        }
        if w.audited < REFUSALS_AUDITED_A_SECOND {
            w.audited += 1;
            return (true, false);
        }
        let counts = w.counted.entry(second).or_default();
        let first = counts.is_empty();
        *counts.entry(kind).or_default() += 1;
        (false, first)
    }

    /// The refusals counted in `second`, taken.
    fn take(&self, second: i64) -> BTreeMap<&'static str, u64> {
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counted
            .remove(&second)
            .unwrap_or_default()
    }
}

/// Starts the TLS listener; the returned task ends when `stop` turns true.
pub async fn serve(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let dir = node.data_dir();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        std::fs::read(dir.join(crate::identity::TLS_CERT_FILE))?,
        std::fs::read(dir.join(crate::identity::TLS_KEY_FILE))?,
    )
    .await?;
    listener.set_nonblocking(true)?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle.clone());
    let app = router(node);
    tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        handle.graceful_shutdown(Some(std::time::Duration::from_secs(2)));
    });
    Ok(tokio::spawn(async move {
        server.serve(app.into_make_service()).await?;
        Ok(())
    }))
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/federation/v1/identity", get(identity))
        .route("/federation/v1/feed", get(feed))
        .route("/federation/v1/notify", post(notify))
        .route("/federation/v1/receipts", post(receipts))
        .route("/federation/v1/search", post(search))
        .route(
            "/federation/v1/disclosure-requests",
            post(disclosure_request),
        )
        .route(
            "/federation/v1/disclosure-decisions",
            post(disclosure_decision),
        )
        .fallback(|| async { ApiError::not_found("no such federation endpoint") })
        .with_state(FedState {
            node,
            refusals: Default::default(),
        })
}

/// A request whose signature, sender, destination, time and nonce checked out.
pub struct Signed {
    pub peer: Arc<Peer>,
    pub body: Bytes,
}

impl FromRequest<FedState> for Signed {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &FedState) -> Result<Self, Self::Rejection> {
        let node = &state.node;
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let method = parts.method.as_str().to_owned();
        let header = |name: &'static str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let claimed = header(peer::H_SENDER).unwrap_or("?").to_owned();
        let refuse = |refusal: peer::Refusal| {
            let second = chrono::Utc::now().timestamp();
            match state.refusals.admit(second, refusal.kind()) {
                (true, _) => {
                    tracing::warn!(sender = %claimed, %path, reason = %refusal, "refused a federation request");
                    node.audit().record(
                        "request_refused",
                        json!({ "sender": claimed, "method": method, "path": path, "reason": refusal.to_string() }),
                        true,
                    );
                }
                (false, true) => {
                    let (node, refusals) = (node.clone(), state.refusals.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
                        let counts = refusals.take(second);
                        let total: u64 = counts.values().sum();
                        tracing::warn!(
                            total,
                            ?counts,
                            "refused many federation requests in one second"
                        );
                        let at = chrono::DateTime::from_timestamp(second, 0)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                        node.audit().record(
                            "requests_refused",
                            json!({ "second": at, "count": total, "by_reason": counts }),
                            true,
                        );
                    });
                }
                (false, false) => {}
            }
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            ApiError::new(status, "request refused", refusal.to_string())
        };
        // Headers and sender first: a stranger's body is not even read.
        let headers = SignedHeaders::from(header).map_err(refuse)?;
        if node.peers().get(headers.sender).is_none() {
            return Err(refuse(peer::Refusal::UnknownSender(
                headers.sender.to_owned(),
            )));
        }
        let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
                format!("bodies are limited to {MAX_BODY} bytes"),
            )
        })?;
        let config = node.config();
        let peer = peer::verify_request(
            node.peers(),
            &config.node_id,
            config.federation.max_clock_skew_secs,
            &headers,
            &method,
            &path,
            &bytes,
        )
        .map_err(|r| {
            if matches!(r, peer::Refusal::UnknownKey(_)) {
                // The partner may have rotated its key: learn its history for next time.
                if let Some(p) = node.peers().get(headers.sender).cloned()
                    && p.key_refresh_due(chrono::Utc::now().timestamp())
                {
                    let node = node.clone();
                    let key_id = headers.key_id.to_owned();
                    tokio::spawn(async move {
                        // If that key is now known, pull from the partner at once: the refused
                        // request was most likely its notify, and the puller may be backing
                        // off. (A made-up key id wakes nothing.)
                        let now =
                            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                        if sync::refresh_keys(&node, &p).await.is_ok()
                            && p.keys().key_valid_at(&key_id, &now).is_ok()
                        {
                            node.pull_wake(&p.id).notify_one();
                        }
                    });
                }
            }
            refuse(r)
        })?;
        let now = chrono::Utc::now().timestamp();
        let fresh = node
            .store()
            .remember_nonce(
                &peer.id,
                headers.nonce,
                now,
                now - 2 * config.federation.max_clock_skew_secs,
            )
            .map_err(ApiError::from)?;
        if !fresh {
            return Err(refuse(peer::Refusal::Replayed));
        }
        node.audit().record(
            "request",
            json!({ "sender": peer.id, "method": method, "path": path }),
            false,
        );
        Ok(Signed { peer, body: bytes })
    }
}

/// A refusal by an endpoint after its sender was authenticated (bad document, wrong mode,
/// unknown reference…): logged and audited like the refusals of authentication.
fn refused(node: &crate::node::Node, partner: &str, endpoint: &str, e: ApiError) -> ApiError {
    tracing::warn!(sender = %partner, endpoint, status = e.status.as_u16(), reason = %e.detail, "refused a federation request");
    node.audit().record(
        "request_refused",
        json!({ "sender": partner, "path": endpoint, "status": e.status.as_u16(), "reason": e.detail }),
        true,
    );
    e
}

/// What an endpoint does with a signed document: `Err((status, reason))` refuses it.
type Apply<T> = fn(&Node, &Peer, &T) -> Result<(), (u16, String)>;

/// Reads a signed body as a `T` and hands it to `apply` on a blocking thread. A body that is
/// not a `T` (400), or that `apply` refuses (its status), is a refusal: logged and audited.
async fn apply_document<T>(
    node: &Arc<Node>,
    peer: &Arc<Peer>,
    endpoint: &'static str,
    not_one: &'static str,
    title: &'static str,
    body: Bytes,
    apply: Apply<T>,
) -> Result<(), ApiError>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let document: T = serde_json::from_slice(&body).map_err(|e| {
        refused(
            node,
            &peer.id,
            endpoint,
            ApiError::bad_request("", format!("{not_one}: {e}")),
        )
    })?;
    let (n, p) = (node.clone(), peer.clone());
    tokio::task::spawn_blocking(move || apply(&n, &p, &document))
        .await?
        .map_err(|(status, detail)| {
            refused(
                node,
                &peer.id,
                endpoint,
                status_error(status, title, detail),
            )
        })
}

/// # `GET /federation/v1/identity`
/// This node's id and key history (current and past keys with validity, and the signed
/// rotation and revocation statements).
async fn identity(State(state): State<FedState>, _signed: Signed) -> Response {
    axum::Json(state.node.keys().clone()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedParams {
    after: u64,
    limit: Option<usize>,
}

/// # `GET /federation/v1/feed?after=N&limit=M`
/// The caller's view of this node's changes after N.
async fn feed(
    State(state): State<FedState>,
    params: Result<Query<FeedParams>, axum::extract::rejection::QueryRejection>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let peer = signed.peer;
    let Query(params) =
        params.map_err(|e| refused(&state.node, &peer.id, "feed", ApiError::query(e)))?;
    // A partner without the feed still pulls the retractions of what it was sent.
    let holder = || state.node.store().disclosed_any(&peer.id).unwrap_or(false);
    if peer.policy.mode != Mode::Replicate && !holder() {
        return Err(refused(
            &state.node,
            &peer.id,
            "feed",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "no feed for this partner",
                format!(
                    "this node's policy for {} is mode {:?}, which does not include the feed",
                    peer.id, peer.policy.mode
                ),
            ),
        ));
    }
    let max = state.node.config().federation.page_size;
    let limit = params.limit.unwrap_or(max).clamp(1, max);
    let node = state.node.clone();
    let page =
        tokio::task::spawn_blocking(move || sync::feed_page(&node, &peer, params.after, limit))
            .await?
            .map_err(ApiError::internal)?;
    Ok(axum::Json(page).into_response())
}

/// # `POST /federation/v1/search`
/// A partner's live query, answered under its policy: views (`query`, `replicate`), a count and
/// opaque references (`hit_no_hit`), or a refusal (`none`). Rate-limited per partner.
async fn search(State(state): State<FedState>, signed: Signed) -> Result<Response, ApiError> {
    let node = state.node.clone();
    let peer = signed.peer;
    let refuse = |status: StatusCode, reason: String| {
        node.audit().record(
            "query_refused",
            json!({ "partner": peer.id, "status": status.as_u16(), "reason": reason }),
            true,
        );
        tracing::warn!(peer = %peer.id, %reason, "refused a live query");
    };
    let config = &node.config().federation;
    if let Err(retry_after) =
        node.rate_limits()
            .take(&peer.id, config.query_rate_per_minute, config.query_burst)
    {
        refuse(StatusCode::TOO_MANY_REQUESTS, "rate limit".into());
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many queries",
            format!(
                "at most {} queries a minute (bursts of {}); retry in {retry_after} s",
                config.query_rate_per_minute, config.query_burst
            ),
        );
        e.retry_after = Some(retry_after);
        return Err(e);
    }
    let query: crate::query::Query = serde_json::from_slice(&signed.body).map_err(|e| {
        refuse(StatusCode::BAD_REQUEST, e.to_string());
        ApiError::bad_request("", format!("not a query: {e}"))
    })?;
    let (n, p) = (node.clone(), peer.clone());
    let answer = tokio::task::spawn_blocking(move || crate::query::answer(&n, &p, &query)).await?;
    match answer {
        Ok(answer) => Ok(axum::Json(answer).into_response()),
        Err(crate::query::Refused::Invalid(errors)) => {
            refuse(StatusCode::UNPROCESSABLE_ENTITY, format!("{errors:?}"));
            Err(ApiError {
                title: "invalid query",
                ..ApiError::invalid(errors)
            })
        }
        Err(crate::query::Refused::Mode(mode)) => {
            refuse(StatusCode::FORBIDDEN, format!("mode {mode:?}"));
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "no queries from this partner",
                format!("this node's policy for {} is mode {mode:?}", peer.id),
            ))
        }
        Err(crate::query::Refused::RateLimited(s)) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many queries",
            format!("retry in {s} s"),
        )),
        Err(crate::query::Refused::Internal(e)) => Err(ApiError::internal(e)),
    }
}

fn status_error(status: u16, title: &'static str, detail: String) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        title,
        detail,
    )
}

/// # `POST /federation/v1/disclosure-requests`
/// A partner asks for the record behind a hit reference it was given (rate-limited with its
/// queries).
async fn disclosure_request(
    State(state): State<FedState>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let node = state.node.clone();
    let peer = signed.peer;
    let config = &node.config().federation;
    if let Err(retry_after) =
        node.rate_limits()
            .take(&peer.id, config.query_rate_per_minute, config.query_burst)
    {
        node.audit().record(
            "query_refused",
            json!({ "partner": peer.id, "status": 429, "reason": "rate limit (disclosure request)" }),
            true,
        );
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
            format!("retry in {retry_after} s"),
        );
        e.retry_after = Some(retry_after);
        return Err(e);
    }
    apply_document(
        &node,
        &peer,
        "disclosure-requests",
        "not a disclosure request",
        "disclosure request refused",
        signed.body,
        crate::disclosure::receive,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "status": "pending" })),
    )
        .into_response())
}

/// # `POST /federation/v1/disclosure-decisions`
/// The holder's decision on a request this node sent (with the record, when approved).
async fn disclosure_decision(
    State(state): State<FedState>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let node = state.node.clone();
    let peer = signed.peer;
    apply_document(
        &node,
        &peer,
        "disclosure-decisions",
        "not a decision",
        "decision refused",
        signed.body,
        crate::disclosure::decision_received,
    )
    .await?;
    Ok(axum::Json(json!({ "status": "recorded" })).into_response())
}

/// # `POST /federation/v1/notify`
/// The caller has new changes: pull its feed now.
async fn notify(State(state): State<FedState>, signed: Signed) -> Response {
    state.node.pull_wake(&signed.peer.id).notify_one();
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "pulling": signed.peer.pull })),
    )
        .into_response()
}

/// # `POST /federation/v1/receipts`
/// A signed receipt: the caller has applied these versions of this node's records.
async fn receipts(State(state): State<FedState>, signed: Signed) -> Result<Response, ApiError> {
    let node = state.node.clone();
    let peer = signed.peer;
    let receipt: SignedReceipt = serde_json::from_slice(&signed.body).map_err(|e| {
        refused(
            &node,
            &peer.id,
            "receipts",
            ApiError::bad_request("", format!("not a signed receipt: {e}")),
        )
    })?;
    if receipt.receipt.from != peer.id || receipt.receipt.to != node.config().node_id {
        return Err(refused(
            &node,
            &peer.id,
            "receipts",
            ApiError::bad_request(
                "/receipt/from",
                "the receipt is not from the sender to this node",
            ),
        ));
    }
    sync::verify_receipt(&peer, &receipt).map_err(|e| {
        node.audit().record(
            "receipt_refused",
            json!({ "sender": peer.id, "reason": e }),
            true,
        );
        ApiError::new(StatusCode::UNAUTHORIZED, "receipt refused", e)
    })?;
    let stored = tokio::task::spawn_blocking(move || -> Result<usize, ApiError> {
        let store = node.store();
        let stored = sync::store_receipt(store, &peer.id, &receipt.receipt)?;
        store.flush()?;
        node.audit().record(
            "receipt",
            json!({ "partner": peer.id, "receipt": receipt }),
            false,
        );
        Ok(stored)
    })
    .await??;
    Ok(axum::Json(json!({ "stored": stored })).into_response())
}

#[cfg(test)]
pub(crate) mod tests {
    //! Real nodes in this process, each serving its federation API over TLS on 127.0.0.1, with
    //! every request each one receives (and its answer) recorded as it crossed the wire; and
    //! the schemas those documents follow.

    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::body::Body;
    use axum::middleware::Next;

    use super::*;
    use crate::config::Config;
    use crate::identity::{PUBLIC_KEY_FILE, TLS_CERT_FILE, TLS_KEY_FILE};
    use crate::peer::PeerConfig;
    use crate::policy::Policy;
    use serde_json::Value;

    /// `schemas/FILE`, pointed at `#/$defs/DEF` when given; formats (`date-time`…) are checked.
    pub(crate) fn schema(file: &str, def: Option<&str>) -> jsonschema::Validator {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas")
            .join(file);
        let mut schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        if let Some(def) = def {
            assert!(
                schema["$defs"].get(def).is_some(),
                "{file} has no $defs/{def}"
            );
            schema["$ref"] = json!(format!("#/$defs/{def}"));
        }
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap()
    }

    /// Panics with the schema's reasons (every failing keyword, where) unless `value`
    /// follows it.
    pub(crate) fn assert_follows(validator: &jsonschema::Validator, value: &Value, what: &str) {
        if validator.is_valid(value) {
            return;
        }
        let errors: Vec<String> = validator
            .evaluate(value)
            .iter_errors()
            .map(|e| {
                format!(
                    "{} at {:?}: {}",
                    e.schema_location,
                    e.instance_location.as_str(),
                    e.error
                )
            })
            .collect();
        panic!(
            "{what} does not follow its schema:\n{}\n{value:#}",
            errors.join("\n")
        );
    }

    /// `doc` with the member at `pointer` set to `value`, or removed (None).
    pub(crate) fn with(doc: &Value, pointer: &str, value: Option<Value>) -> Value {
        let mut doc = doc.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = doc
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("no object at {pointer}"));
        match value {
            Some(value) => parent.insert(key.to_owned(), value),
            None => parent.remove(key),
        };
        doc
    }

    /// One request a node received on its federation API, and its answer.
    #[derive(Debug, Clone)]
    pub(crate) struct Exchange {
        pub from: String,
        pub path: String,
        pub body: Value,
        pub status: u16,
        pub answer: Value,
    }

    type Wire = Arc<Mutex<BTreeMap<String, Vec<Exchange>>>>;

    /// Passes a request on unchanged (its signature covers the body) and records it.
    async fn record(wire: Wire, to: String, request: Request, next: Next) -> Response {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .unwrap_or_default();
        let from = parts
            .headers
            .get(peer::H_SENDER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        let path = parts.uri.path().to_owned();
        let response = next
            .run(Request::from_parts(parts, Body::from(body.clone())))
            .await;
        let (parts, answer) = response.into_parts();
        let answer = axum::body::to_bytes(answer, MAX_BODY)
            .await
            .unwrap_or_default();
        let json = |b: &[u8]| serde_json::from_slice(b).unwrap_or(Value::Null);
        wire.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(to)
            .or_default()
            .push(Exchange {
                from,
                path,
                body: json(&body),
                status: parts.status.as_u16(),
                answer: json(&answer),
            });
        Response::from_parts(parts, Body::from(answer))
    }

    /// Nodes federated with each other, as `ammotrace serve` runs them (federation API,
    /// pullers, notifier), minus the local API.
    pub(crate) struct Federation {
        nodes: BTreeMap<String, Arc<Node>>,
        admin_tokens: BTreeMap<String, String>,
        wire: Wire,
        stop: tokio::sync::watch::Sender<bool>,
        servers: Vec<axum_server::Handle<std::net::SocketAddr>>,
        _dir: tempfile::TempDir,
    }

    impl Federation {
        /// Starts nodes `ids`; `policies` lists `(from, to, policy)`: what `from` shares with
        /// `to` (every other pair: the default policy, mode none).
        pub(crate) async fn start(ids: &[&str], policies: &[(&str, &str, Value)]) -> Federation {
            let dir = tempfile::tempdir().unwrap();
            let data_dir = |id: &str| dir.path().join(id);
            let mut admin_tokens = BTreeMap::new();
            let mut listeners = BTreeMap::new();
            for id in ids {
                let created = crate::node::init(&data_dir(id), id).unwrap();
                admin_tokens.insert(id.to_string(), created.admin_token);
                listeners.insert(
                    id.to_string(),
                    std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
                );
            }
            let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let wire = Wire::default();
            let mut nodes = BTreeMap::new();
            let mut servers = Vec::new();
            for (id, listener) in listeners.iter() {
                let mut config = Config::load(&data_dir(id)).unwrap();
                for (other, other_listener) in listeners.iter().filter(|(o, _)| *o != id) {
                    let policy = policies
                        .iter()
                        .find(|(from, to, _)| from == id && to == other)
                        .map(|(_, _, p)| serde_json::from_value::<Policy>(p.clone()).unwrap())
                        .unwrap_or_default();
                    config.peers.push(PeerConfig {
                        id: other.clone(),
                        url: format!("https://{}", other_listener.local_addr().unwrap()),
                        public_key: read(&data_dir(other), PUBLIC_KEY_FILE).trim().to_owned(),
                        certificate: read(&data_dir(other), TLS_CERT_FILE),
                        first_key: None,
                        pull: true,
                        policy,
                    });
                }
                let node = Node::open_with(&data_dir(id), config).unwrap();
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
                    std::fs::read(data_dir(id).join(TLS_CERT_FILE)).unwrap(),
                    std::fs::read(data_dir(id).join(TLS_KEY_FILE)).unwrap(),
                )
                .await
                .unwrap();
                let listener = listener.try_clone().unwrap();
                listener.set_nonblocking(true).unwrap();
                let (wire, to) = (wire.clone(), id.clone());
                let app = router(node.clone()).layer(axum::middleware::from_fn(
                    move |request: Request, next: Next| {
                        record(wire.clone(), to.clone(), request, next)
                    },
                ));
                let handle = axum_server::Handle::new();
                let server = axum_server::from_tcp_rustls(listener, tls)
                    .unwrap()
                    .handle(handle.clone());
                tokio::spawn(server.serve(app.into_make_service()));
                servers.push(handle);
                sync::start(node.clone(), stop_rx.clone());
                nodes.insert(id.clone(), node);
            }
            Federation {
                nodes,
                admin_tokens,
                wire,
                stop,
                servers,
                _dir: dir,
            }
        }

        pub(crate) fn node(&self, id: &str) -> &Arc<Node> {
            &self.nodes[id]
        }

        /// `of`'s partner `id` (as `of` knows it: pinned key, client, policy).
        pub(crate) fn peer(&self, of: &str, id: &str) -> Arc<Peer> {
            self.nodes[of].peers().get(id).unwrap().clone()
        }

        pub(crate) fn admin_token(&self, id: &str) -> &str {
            &self.admin_tokens[id]
        }

        /// What `to` has received on `path` so far, in order.
        pub(crate) fn received(&self, to: &str, path: &str) -> Vec<Exchange> {
            self.wire
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(to)
                .into_iter()
                .flatten()
                .filter(|e| e.path == path)
                .cloned()
                .collect()
        }

        /// The first request `to` receives on `path` that `wanted` accepts (waiting up to 20 s
        /// for it).
        pub(crate) async fn first_received(
            &self,
            to: &str,
            path: &str,
            wanted: impl Fn(&Exchange) -> bool,
        ) -> Exchange {
            for _ in 0..400 {
                if let Some(e) = self.received(to, path).into_iter().find(&wanted) {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{to} received nothing on {path}");
        }

        /// Writes own records of node `id` (each one item with a lot, seized in a country) as
        /// the local API does, and waits until they are searchable. Returns the last change
        /// sequence number.
        pub(crate) async fn write(&self, id: &str, records: &[(&str, &str)]) -> u64 {
            let node = self.node(id).clone();
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let mut prepared: Vec<_> = records
                .iter()
                .map(|(lot, country)| {
                    let record = json!({
                        "originating_state": id,
                        "event": {"event_type": "seizure", "date": {"start": "2024-03-01"},
                                  "location": {"country": country, "precision": "country"}},
                        "items": [{"item_id": "i1", "item_category": "small_arms_ammunition",
                                   "lot": lot}],
                        "sharing": {"tlp": "GREEN"}
                    });
                    node.validator().prepare(record, &now).unwrap()
                })
                .collect();
            let seq = tokio::task::spawn_blocking({
                let node = node.clone();
                move || {
                    let index = node.index();
                    let offered = index.offer(
                        prepared
                            .iter_mut()
                            .map(|p| {
                                index.documents(p.id, 1, &p.record, std::mem::take(&mut p.keys))
                            })
                            .collect::<Vec<_>>(),
                    );
                    let written = node
                        .store()
                        .create_batch(&mut prepared, node.sealer())
                        .inspect_err(|_| index.withdraw(offered))
                        .unwrap();
                    node.store().flush().unwrap();
                    node.written();
                    written.last().unwrap().seq
                }
            })
            .await
            .unwrap();
            assert!(
                node.index().wait_for(seq, Duration::from_secs(20)).await,
                "{id} did not index change {seq}"
            );
            seq
        }
    }

    impl Drop for Federation {
        fn drop(&mut self) {
            let _ = self.stop.send(true);
            for handle in &self.servers {
                handle.shutdown();
            }
            for node in self.nodes.values() {
                node.index().shutdown();
            }
        }
    }

    /// The notify call a node makes after a write, and the answer of the partner's real
    /// endpoint, as they crossed the wire, follow `notify` and `notifyReply`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn notify_documents_follow_the_schema() {
        let replicate = json!({"mode": "replicate", "categories": ["*"], "fields": ["*"]});
        let fed = Federation::start(&["XAA", "XBB"], &[("XAA", "XBB", replicate)]).await;
        let seq = fed.write("XAA", &[("LC10A000-001", "XAA")]).await;
        // (XAA also notifies when it starts, with the sequence it had then.)
        let notify = fed
            .first_received("XBB", "/federation/v1/notify", |e| {
                e.body == json!({ "last_seq": seq })
            })
            .await;
        assert_eq!(notify.from, "XAA");
        assert_eq!(notify.status, 202, "{notify:?}");
        assert_eq!(notify.body, json!({ "last_seq": seq }));
        assert_eq!(notify.answer, json!({ "pulling": true }));

        let body = schema("envelope.schema.json", Some("notify"));
        let reply = schema("envelope.schema.json", Some("notifyReply"));
        assert_follows(&body, &notify.body, "notify body");
        assert_follows(&reply, &notify.answer, "notify answer");
        // Neither is read with a struct that refuses unknown members, so neither schema does.
        assert!(body.is_valid(&json!({ "last_seq": seq, "later": 1 })));
        for bad in [
            json!({}),
            json!({ "last_seq": -1 }),
            json!({ "last_seq": "7" }),
        ] {
            assert!(!body.is_valid(&bad), "{bad}");
        }
        for bad in [json!({}), json!({ "pulling": "yes" })] {
            assert!(!reply.is_valid(&bad), "{bad}");
        }
    }
}
