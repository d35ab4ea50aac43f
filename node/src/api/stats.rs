//! `GET /api/v1/stats`, `GET /api/v1/stats/cross-border-lots`, `POST /api/v1/stats/snapshots`.
//! Any role may read aggregates; suppression applies to everyone except an admin asking for
//! `unsuppressed=true`, who then sees their own State's records only.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use crate::stats::{self, Params};

fn parse(
    state: &AppState,
    caller: &Caller,
    query: &[(String, String)],
) -> Result<Params, ApiError> {
    let mut params = Params::parse(query, state.node.config().stats.k).map_err(|errors| {
        ApiError {
            title: "invalid statistics query",
            ..ApiError::invalid(errors)
        }
        .with_status(StatusCode::BAD_REQUEST)
    })?;
    if params.unsuppressed {
        if caller.role != Role::Admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only an admin may see unsuppressed figures, and only of this node's own State",
            ));
        }
        params.own_only = Some(state.node.config().node_id.clone());
    }
    params.unperturbed = !state.node.config().stats.perturb;
    Ok(params)
}

/// # `GET /api/v1/stats?group_by=a[,b]&measure=…&from=…&to=…&DIMENSION=value…&format=csv|json`
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = parse(&state, &caller, &query)?;
    let csv = query.iter().any(|(k, v)| k == "format" && v == "csv");
    let node = state.node.clone();
    let (watermark, table) = tokio::task::spawn_blocking(move || {
        let (seq, facts) = node.stats_cache().facts(node.store())?;
        Ok::<_, ApiError>((seq, stats::table(&facts, &params)))
    })
    .await??;
    if csv {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            stats::to_csv(&table),
        )
            .into_response());
    }
    let mut body = serde_json::to_value(&table).map_err(ApiError::internal)?;
    body["watermark"] = json!(watermark);
    body["node_id"] = json!(state.node.config().node_id);
    Ok(Json(body).into_response())
}

/// # `GET /api/v1/stats/cross-border-lots`
pub async fn cross_border_lots(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let unsuppressed = query
        .iter()
        .any(|(k, v)| k == "unsuppressed" && v == "true");
    if unsuppressed && caller.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin may see unsuppressed rows",
        ));
    }
    let k = state.node.config().stats.k;
    let perturb = state.node.config().stats.perturb;
    let node = state.node.clone();
    let (watermark, (lots, withheld)) = tokio::task::spawn_blocking(move || {
        let (seq, facts) = node.stats_cache().facts(node.store())?;
        Ok::<_, ApiError>((
            seq,
            stats::cross_border_lots(&facts, k, unsuppressed, perturb),
        ))
    })
    .await??;
    Ok(
        Json(json!({ "lots": lots, "withheld_under_k": withheld, "k": k, "watermark": watermark }))
            .into_response(),
    )
}

/// # `POST /api/v1/stats/snapshots` (admin)
/// Publishes a statistics table as a document signed with the node key: the parameters, k,
/// the record-set watermark and the table, so a member State can verify what was published.
pub async fn snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let params = parse(&state, &caller, &query)?;
    if params.unsuppressed {
        return Err(ApiError::bad_request(
            "/unsuppressed",
            "published snapshots are always suppressed",
        ));
    }
    let node = state.node.clone();
    let (watermark, table) = tokio::task::spawn_blocking(move || {
        let (seq, facts) = node.stats_cache().facts(node.store())?;
        Ok::<_, ApiError>((seq, stats::table(&facts, &params)))
    })
    .await??;
    let document = json!({
        "v": 1,
        "node": state.node.config().node_id,
        // Milliseconds, as key validity is recorded: a snapshot signed in a key's first second
        // would otherwise date from before the key.
        "published_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "parameters": query.iter().filter(|(k, _)| k != "format").map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "k": table.k,
        "watermark": watermark,
        "table": table,
        "key_id": state.node.identity().key_id(),
    });
    let signed = stats::sign_snapshot(state.node.identity().signing_key(), document)
        .map_err(ApiError::internal)?;
    state.node.audit().record("stats_published", json!({ "by": caller.name, "watermark": watermark, "parameters": signed["snapshot"]["parameters"] }), true);
    Ok((StatusCode::CREATED, Json(signed)).into_response())
}
