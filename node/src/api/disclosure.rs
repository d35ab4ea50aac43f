//! Disclosure requests as the local API shows them (follow-up on a hit, Prüm step 2).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Reader, Writer};
use super::error::{ApiError, ApiPath};
use super::{AppState, JsonBody};
use crate::disclosure;

fn error(status: u16, title: &'static str, detail: String) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        title,
        detail,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRequest {
    partner: String,
    reference: String,
    purpose: String,
    case_ref: String,
}

/// # `POST /api/v1/disclosure-requests`
/// Asks `partner` for the record behind a hit reference it gave, with purpose and case.
pub async fn create(
    State(state): State<AppState>,
    Reader(caller): Reader,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request: NewRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request("", format!("not a disclosure request: {e}")))?;
    for (pointer, value) in [
        ("/purpose", &request.purpose),
        ("/case_ref", &request.case_ref),
    ] {
        if value.trim().is_empty() {
            return Err(ApiError::bad_request(pointer, "required"));
        }
    }
    let node = state.node.clone();
    let peer = node.peers().get(&request.partner).cloned().ok_or_else(|| {
        ApiError::bad_request("/partner", format!("no partner {}", request.partner))
    })?;
    let entry = disclosure::send(
        &node,
        &peer,
        &request.reference,
        &request.purpose,
        &request.case_ref,
        &caller.name,
    )
    .await
    .map_err(|(status, detail)| error(status, "disclosure request not sent", detail))?;
    Ok((StatusCode::CREATED, Json(entry)).into_response())
}

/// # `GET /api/v1/disclosure-requests`
/// Requests received (to approve or decline) and sent (with their status).
pub async fn list(
    State(state): State<AppState>,
    Reader(_caller): Reader,
) -> Result<Response, ApiError> {
    let node = state.node.clone();
    let requests = tokio::task::spawn_blocking(move || node.store().requests()).await??;
    let list: Vec<Value> = requests
        .into_iter()
        .map(|(key, entry)| {
            disclosure::listed(
                if key.starts_with("in:") {
                    "incoming"
                } else {
                    "outgoing"
                },
                entry,
            )
        })
        .collect();
    Ok(Json(json!({ "requests": list })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: String,
}

async fn decide(
    state: AppState,
    caller: &str,
    id: String,
    body: Value,
    approve: bool,
) -> Result<Response, ApiError> {
    let body: DecisionBody = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request("/reason", format!("give a reason: {e}")))?;
    if body.reason.trim().is_empty() {
        return Err(ApiError::bad_request("/reason", "give a reason"));
    }
    let node = state.node.clone();
    let key = tokio::task::spawn_blocking(move || {
        node.store().requests().map(|all| {
            all.into_iter()
                .map(|(k, _)| k)
                .find(|k| k.starts_with("in:") && k.ends_with(&format!(":{id}")))
        })
    })
    .await??
    .ok_or_else(|| ApiError::not_found("no such incoming request"))?;
    let entry = disclosure::decide(&state.node, &key, approve, &body.reason, caller)
        .await
        .map_err(|(status, detail)| error(status, "decision not made", detail))?;
    Ok(Json(entry).into_response())
}

/// # `POST /api/v1/disclosure-requests/{id}/approve`
pub async fn approve(
    State(state): State<AppState>,
    Writer(caller): Writer,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    decide(state, &caller.name, id, body, true).await
}

/// # `POST /api/v1/disclosure-requests/{id}/decline`
pub async fn decline(
    State(state): State<AppState>,
    Writer(caller): Writer,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    decide(state, &caller.name, id, body, false).await
}
