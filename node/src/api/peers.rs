//! Partners as the local API shows them: the list with policies and sync cursors, the
//! preview of exactly what one partner would receive of one record (and why), and the
//! receipts partners sent for a record.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::auth::Reader;
use super::error::{ApiError, ApiPath};
use super::records::parse_id;
use crate::policy;

/// # `GET /api/v1/peers`
pub async fn list(
    State(state): State<AppState>,
    Reader(_caller): Reader,
) -> Result<Response, ApiError> {
    let node = state.node.clone();
    let peers = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        node.peers()
            .iter()
            .map(|p| {
                let cursor = node.store().cursor(&p.id)?;
                Ok(json!({
                    "id": p.id,
                    "url": p.url,
                    "pull": p.pull,
                    "policy": p.policy,
                    "policy_digest": p.policy.digest(),
                    "keys": p.keys().keys,
                    "pulled_after": cursor.after,
                }))
            })
            .collect()
    })
    .await??;
    Ok(Json(json!({ "peers": peers })).into_response())
}

/// # `GET /api/v1/peers/{id}/preview/{record_id}`
/// What partner `id` would receive of the latest version of a record under its current
/// policy: every field path with whether it is disclosed and why, and the record as the
/// partner would see it.
pub async fn preview(
    State(state): State<AppState>,
    Reader(_caller): Reader,
    ApiPath((peer_id, record_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&record_id)?;
    let node = state.node.clone();
    let peer = node
        .peers()
        .get(&peer_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no partner {peer_id}")))?;
    let body = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let store = node.store();
        let head = store
            .head(&id)?
            .ok_or_else(|| ApiError::not_found(format!("no record {id}")))?;
        if !store.is_own(&id)? {
            return Ok(json!({
                "peer": peer.id, "record_id": id.to_string(), "version": head.version,
                "shared": false,
                "reason": "the record is another State's: this node never passes it on",
                "fields": [], "view": null,
            }));
        }
        // The record as submitted comes with the envelope (the policy reads submitted fields).
        let (envelope, record) = node
            .envelope_with_record(&id, head.version)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::internal("the record version has no envelope"))?;
        let decision = policy::decide(&peer.id, &peer.policy, &record, &envelope.paths(), i64::MAX);
        let embargo_until = chrono::DateTime::parse_from_rfc3339(&envelope.claims.issued_at)
            .ok()
            .map(|t| t + chrono::Duration::hours(i64::from(peer.policy.embargo_hours)));
        let view = decision.shared.then(|| {
            let allowed: std::collections::HashSet<&str> = decision.disclosed().collect();
            envelope.view(|p| allowed.contains(p)).record()
        });
        Ok(json!({
            "peer": peer.id,
            "mode": peer.policy.mode,
            "record_id": id.to_string(),
            "version": head.version,
            "shared": decision.shared,
            "reason": decision.reason,
            "embargo_until": embargo_until.map(|t| t.to_rfc3339()),
            "fields": decision.paths,
            "view": view,
        }))
    })
    .await??;
    Ok(Json(body).into_response())
}

/// # `GET /api/v1/records/{id}/receipts`
/// Which partner has applied which version of a record, from their signed receipts.
pub async fn receipts(
    State(state): State<AppState>,
    Reader(_caller): Reader,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let node = state.node.clone();
    let body = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let head = node
            .store()
            .head(&id)?
            .ok_or_else(|| ApiError::not_found(format!("no record {id}")))?;
        let receipts: Vec<Value> = node
            .store()
            .receipts(&id)?
            .into_iter()
            .map(|(partner, mut entry)| {
                let current =
                    entry.get("version").and_then(Value::as_u64) == Some(u64::from(head.version));
                if let Some(o) = entry.as_object_mut() {
                    o.insert("partner".into(), json!(partner));
                    o.insert("current".into(), json!(current));
                }
                entry
            })
            .collect();
        Ok(json!({
            "record_id": id.to_string(),
            "version": head.version,
            "retracted": head.retracted,
            "receipts": receipts,
        }))
    })
    .await??;
    Ok(Json(body).into_response())
}
