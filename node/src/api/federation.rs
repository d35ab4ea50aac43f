//! The federation API under `/federation/v1`, for partners only: HTTPS (rustls, this node's
//! `tls.crt`) on its own address, every request signed by the partner's node key
//! (see [`crate::peer`]). A request that fails authentication gets a problem+json 401/403 and
//! nothing else, and is written to the audit log.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::node::Node;
use crate::peer::{self, Peer, SignedHeaders};
use crate::policy::Mode;
use crate::record::RecordId;
use crate::sync::{self, SignedReceipt};

/// Largest request body a partner may send.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct FedState {
    pub node: Arc<Node>,
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
        .with_state(FedState { node })
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
            tracing::warn!(sender = %claimed, %path, reason = %refusal, "refused a federation request");
            node.audit().record(
                "request_refused",
                json!({ "sender": claimed, "method": method, "path": path, "reason": refusal.to_string() }),
                true,
            );
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            ApiError::new(status, "request refused", refusal.to_string())
        };
        let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
                format!("bodies are limited to {MAX_BODY} bytes"),
            )
        })?;
        let headers = SignedHeaders::from(header).map_err(refuse)?;
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
                    tokio::spawn(async move {
                        let _ = sync::refresh_keys(&node, &p).await;
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
    let Query(params) = params.map_err(|e| ApiError::bad_request("", e.body_text()))?;
    let peer = signed.peer;
    if peer.policy.mode != Mode::Replicate {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no feed for this partner",
            format!(
                "this node's policy for {} is mode {:?}, which does not include the feed",
                peer.id, peer.policy.mode
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
    let request: crate::disclosure::Request = serde_json::from_slice(&signed.body)
        .map_err(|e| ApiError::bad_request("", format!("not a disclosure request: {e}")))?;
    tokio::task::spawn_blocking(move || crate::disclosure::receive(&node, &peer, &request))
        .await?
        .map_err(|(status, detail)| status_error(status, "disclosure request refused", detail))?;
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
    let decision: crate::disclosure::Decision = serde_json::from_slice(&signed.body)
        .map_err(|e| ApiError::bad_request("", format!("not a decision: {e}")))?;
    tokio::task::spawn_blocking(move || {
        crate::disclosure::decision_received(&node, &peer, &decision)
    })
    .await?
    .map_err(|(status, detail)| status_error(status, "decision refused", detail))?;
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
    let receipt: SignedReceipt = serde_json::from_slice(&signed.body)
        .map_err(|e| ApiError::bad_request("", format!("not a signed receipt: {e}")))?;
    let node = state.node.clone();
    let peer = signed.peer;
    if receipt.receipt.from != peer.id || receipt.receipt.to != node.config().node_id {
        return Err(ApiError::bad_request(
            "/receipt/from",
            "the receipt is not from the sender to this node",
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
        let mut stored = 0;
        for applied in &receipt.receipt.applied {
            let Some(id) = RecordId::parse(&applied.record_id) else {
                continue;
            };
            if store.head(&id)?.is_none() || !store.is_own(&id)? {
                continue;
            }
            let held = store
                .receipts(&id)?
                .into_iter()
                .find(|(p, _)| *p == peer.id)
                .and_then(|(_, v)| v.get("version").and_then(Value::as_u64));
            if held.is_some_and(|v| v >= u64::from(applied.version)) {
                continue;
            }
            store.put_receipt(
                &id,
                &peer.id,
                &json!({
                    "version": applied.version,
                    "retracted": applied.retracted,
                    "applied_at": receipt.receipt.at,
                    "key_id": receipt.receipt.key_id,
                }),
            )?;
            stored += 1;
        }
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
