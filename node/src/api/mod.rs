//! The local JSON API under `/api/v1` (`docs/api.md`, `schemas/openapi.json`).
//!
//! Handlers are thin: they check the caller's role, parse, call `record`/`store`/`search` on a
//! blocking thread (sled and tantivy block), and map the result. Every error leaves through
//! [`error::ApiError`] as problem+json. A 2xx to a write is sent after the store's flush.

// `ApiError` carries the field errors of a refusal (about 150 bytes); it only travels on the
// answer path, where boxing would buy nothing.
#![allow(clippy::result_large_err)]

pub mod auth;
mod disclosure;
pub mod error;
pub mod federation;
mod import;
mod peers;
mod records;
mod search;
mod stats;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::node::Node;
use error::ApiError;

/// The OpenAPI document served at `/api/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../schemas/openapi.json");

#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
}

/// The router of the local API.
pub fn router(node: Arc<Node>) -> Router {
    let limit = node.config().api.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/openapi.json", get(openapi))
        .route("/api/seizure-record.schema.json", get(record_schema))
        .route("/api/v1/records", axum::routing::post(records::create))
        .route(
            "/api/v1/records/{id}",
            get(records::get_one)
                .put(records::update)
                .delete(records::retract),
        )
        .route("/api/v1/records/{id}/versions", get(records::versions))
        .route("/api/v1/search", get(search::search))
        .route("/api/v1/import", axum::routing::post(import::import))
        .route("/api/v1/export", get(records::export))
        .route("/api/v1/export/{format}", get(records::export_tool))
        .route("/api/v1/records/{id}/receipts", get(peers::receipts))
        .route("/api/v1/peers", get(peers::list))
        .route(
            "/api/v1/peers/{id}/preview/{record_id}",
            get(peers::preview),
        )
        .route("/api/v1/stats", get(stats::stats))
        .route(
            "/api/v1/stats/cross-border-lots",
            get(stats::cross_border_lots),
        )
        .route(
            "/api/v1/stats/snapshots",
            axum::routing::post(stats::snapshot),
        )
        .route(
            "/api/v1/disclosure-requests",
            get(disclosure::list).post(disclosure::create),
        )
        .route(
            "/api/v1/disclosure-requests/{id}/approve",
            axum::routing::post(disclosure::approve),
        )
        .route(
            "/api/v1/disclosure-requests/{id}/decline",
            axum::routing::post(disclosure::decline),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(AppState { node })
}

async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    let node = &state.node;
    axum::Json(json!({
        "status": "ok",
        "node_id": node.config().node_id,
        "last_seq": node.store().last_seq().unwrap_or(0),
        "indexed_seq": node.index().watermark(),
        "stats_cached_seq": node.stats_cache().watermark(),
    }))
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON,
    )
}

/// The record schema the OpenAPI document refers to (`seizure-record.schema.json`).
async fn record_schema() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/schema+json")],
        crate::record::SCHEMA_JSON,
    )
}

/// A request body read whole, with rejections (too large, unreadable) as problem+json.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<RawBody, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload too large",
                    "the body is larger than api.max_body_bytes; nothing was stored",
                ))
            }
            Err(rejection) => Err(ApiError::new(
                rejection.status(),
                "bad request",
                rejection.body_text(),
            )),
        }
    }
}

/// A JSON body: malformed JSON is a 400 naming the line and column.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<JsonBody, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let detail = format!(
                "the body is not JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            );
            // The whole document is at fault: pointer "".
            ApiError {
                errors: vec![crate::record::FieldError::new("", detail.clone())],
                ..ApiError::new(StatusCode::BAD_REQUEST, "malformed JSON", detail)
            }
        })
    }
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::OPENAPI_JSON;

    /// Every route of the router is described in the OpenAPI document, and vice versa.
    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let mut documented: Vec<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        documented.sort();
        let source = include_str!("mod.rs");
        let source = source.split("#[cfg(test)]").next().unwrap_or_default();
        let mut routed: Vec<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect();
        routed.sort();
        assert_eq!(routed, documented);
    }
}
