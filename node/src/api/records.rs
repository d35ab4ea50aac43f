//! `/api/v1/records…` and `/api/v1/export`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Reader, Writer};
use super::error::{ApiError, ApiPath};
use super::{AppState, JsonBody, now_rfc3339};
use crate::record::RecordId;
use crate::store::Written;

pub(crate) fn parse_id(text: &str) -> Result<RecordId, ApiError> {
    RecordId::parse(text).ok_or_else(|| {
        ApiError::bad_request(
            "/record_id",
            format!("{text:?} is not a record id (urn:uuid:… or a UUID)"),
        )
    })
}

fn written_response(status: StatusCode, written: Written, record: Value) -> Response {
    let mut response = (status, Json(record)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/records/{}", written.id)) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert("ammotrace-seq", HeaderValue::from(written.seq));
    headers.insert("ammotrace-version", HeaderValue::from(written.version));
    response
}

/// # `POST /api/v1/records`
/// Stores a new record (version 1 unless it declares one); 201 after the flush.
pub async fn create(
    State(state): State<AppState>,
    Writer(caller): Writer,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let node = state.node.clone();
    let (written, record) = tokio::task::spawn_blocking(move || {
        let mut prepared = node
            .validator()
            .prepare(body, &now_rfc3339())
            .map_err(ApiError::invalid)?;
        let index = node.index();
        let offered = index.offer([index.documents(
            prepared.id,
            prepared.declared_version.unwrap_or(1),
            &prepared.record,
            std::mem::take(&mut prepared.keys),
        )]);
        let written = node
            .store()
            .create_batch(std::slice::from_mut(&mut prepared), node.sealer())
            .inspect_err(|_| index.withdraw(offered))?;
        node.store().flush()?;
        node.written();
        let written = written
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal("empty write"))?;
        // Shown as a read would show it, with this node's interpretations.
        crate::record::derive(&mut prepared.record);
        Ok::<_, ApiError>((written, prepared.record))
    })
    .await??;
    tracing::info!(record = %written.id, version = written.version, seq = written.seq, by = %caller.name, "record created");
    Ok(written_response(StatusCode::CREATED, written, record))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    version: Option<u32>,
}

/// # `GET /api/v1/records/{id}`
/// The latest version (or `?version=N`).
pub async fn get_one(
    State(state): State<AppState>,
    Reader(_caller): Reader,
    ApiPath(id): ApiPath<String>,
    params: Result<Query<GetParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(ApiError::query)?;
    let id = parse_id(&id)?;
    let node = state.node.clone();
    let record =
        tokio::task::spawn_blocking(move || node.store().get(&id, params.version)).await??;
    match record {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError::not_found(format!("no record {id}"))),
    }
}

/// # `PUT /api/v1/records/{id}`
/// Stores the body as the next version of the record.
pub async fn update(
    State(state): State<AppState>,
    Writer(caller): Writer,
    ApiPath(id): ApiPath<String>,
    JsonBody(mut body): JsonBody,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // This version's time is the node's: a copied `updated_at` would be stale.
    if let Some(o) = body.as_object_mut() {
        o.remove("updated_at");
    }
    match body.get("record_id") {
        Some(Value::String(given)) if RecordId::parse(given) != Some(id) => {
            return Err(ApiError::invalid(vec![crate::record::FieldError::new(
                "/record_id",
                "differs from the record id in the path",
            )]));
        }
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid(vec![crate::record::FieldError::new(
                "/record_id",
                "must be a string: the UUID (or urn:uuid) of the record in the path",
            )]));
        }
        None => {
            if let Some(o) = body.as_object_mut() {
                o.insert("record_id".into(), Value::String(id.to_string()));
            }
        }
    }
    let node = state.node.clone();
    let (written, record) = tokio::task::spawn_blocking(move || {
        if node.store().head(&id)?.is_none() {
            return Err(ApiError::not_found(format!("no record {id}")));
        }
        let prepared = node
            .validator()
            .prepare(body, &now_rfc3339())
            .map_err(ApiError::invalid)?;
        let written = node.store().update(prepared, node.sealer())?;
        node.store().flush()?;
        node.written();
        let record = node
            .store()
            .get(&id, Some(written.version))?
            .unwrap_or(Value::Null);
        Ok::<_, ApiError>((written, record))
    })
    .await??;
    tracing::info!(record = %written.id, version = written.version, by = %caller.name, "record updated");
    Ok(written_response(StatusCode::OK, written, record))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetractParams {
    reason: Option<String>,
}

/// # `DELETE /api/v1/records/{id}`
/// Retracts the record: a new version marked `retracted` that search no longer returns.
pub async fn retract(
    State(state): State<AppState>,
    Writer(caller): Writer,
    ApiPath(id): ApiPath<String>,
    params: Result<Query<RetractParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(ApiError::query)?;
    let id = parse_id(&id)?;
    let reason = params.reason.unwrap_or_else(|| "retracted".into());
    let node = state.node.clone();
    let (written, record) = tokio::task::spawn_blocking(move || {
        let written = node
            .store()
            .retract(id, &reason, &now_rfc3339(), node.sealer())?;
        node.store().flush()?;
        node.written();
        let record = node
            .store()
            .get(&id, Some(written.version))?
            .unwrap_or(Value::Null);
        Ok::<_, ApiError>((written, record))
    })
    .await??;
    tracing::info!(record = %written.id, version = written.version, by = %caller.name, "record retracted");
    Ok(written_response(StatusCode::OK, written, record))
}

/// # `GET /api/v1/records/{id}/versions`
pub async fn versions(
    State(state): State<AppState>,
    Reader(_caller): Reader,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let node = state.node.clone();
    let versions = tokio::task::spawn_blocking(move || node.store().versions(&id)).await??;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no record {id}")));
    }
    Ok(Json(json!({ "record_id": id.to_string(), "versions": versions })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    #[serde(default)]
    include_retracted: bool,
}

/// # `GET /api/v1/export`
/// Every record's latest version as JSON Lines (retractions only with `include_retracted`).
pub async fn export(
    State(state): State<AppState>,
    Writer(_caller): Writer,
    params: Result<Query<ExportParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(ApiError::query)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let node = state.node.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(64 * 1024);
        for head in node.store().heads() {
            let line = head.map_err(std::io::Error::other).and_then(|(id, head)| {
                if head.retracted && !params.include_retracted {
                    return Ok(None);
                }
                node.store()
                    .get(&id, Some(head.version))
                    .map_err(std::io::Error::other)
            });
            match line {
                // The head says whether the record is retracted (checked above).
                Ok(Some(record)) => {
                    if serde_json::to_writer(&mut chunk, &record).is_ok() {
                        chunk.push(b'\n');
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
            if chunk.len() >= 60 * 1024 && tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err()
            {
                return;
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(Ok(chunk));
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((headers, body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolExportParams {
    /// Export only what this partner may see (this node's own records, cut to its policy).
    partner: Option<String>,
}

/// # `GET /api/v1/export/{format}` (`misp` or `stix`)
/// Lossy views for MISP and STIX tooling: every record this node can see, or with `partner`,
/// this node's own records as that partner's policy shows them.
pub async fn export_tool(
    State(state): State<AppState>,
    Writer(_caller): Writer,
    ApiPath(format): ApiPath<String>,
    params: Result<Query<ToolExportParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(ApiError::query)?;
    if format != "misp" && format != "stix" {
        return Err(ApiError::not_found("export formats: misp, stix"));
    }
    let node = state.node.clone();
    let peer = match &params.partner {
        Some(id) => Some(
            node.peers()
                .get(id)
                .cloned()
                .ok_or_else(|| ApiError::bad_request("/partner", format!("no partner {id}")))?,
        ),
        None => None,
    };
    let records = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        let store = node.store();
        let mut out = Vec::new();
        for head in store.heads() {
            let (id, head) = head?;
            if head.retracted {
                continue;
            }
            match &peer {
                None => {
                    if let Some(record) = store.get(&id, Some(head.version))? {
                        out.push(record);
                    }
                }
                Some(peer) => {
                    if !store.is_own(&id)? {
                        continue;
                    }
                    // The record as submitted comes with the envelope.
                    let Some((envelope, record)) = node
                        .envelope_with_record(&id, head.version)
                        .map_err(ApiError::internal)?
                    else {
                        continue;
                    };
                    if let crate::sync::View::Shown(view) =
                        crate::sync::view_for(peer, &envelope, &record)
                    {
                        out.push(view.record());
                    }
                }
            }
        }
        Ok(out)
    })
    .await??;
    let body = if format == "misp" {
        json!({ "response": records.iter().map(crate::export::misp_event).collect::<Vec<_>>() })
    } else {
        crate::export::stix_bundle(&records, &now_rfc3339())
    };
    Ok(Json(body).into_response())
}
