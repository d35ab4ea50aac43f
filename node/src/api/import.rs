//! `POST /api/v1/import`: JSON Lines, CSV or XLSX, validated whole before anything is stored.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::Writer;
use super::error::ApiError;
use super::{AppState, RawBody, now_rfc3339};
use crate::import::{self, Format};
use crate::record::{FieldError, Prepared};

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Store every row or none (the default).
    #[default]
    Atomic,
    /// Store the valid rows and report the others.
    Partial,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    #[serde(default)]
    mode: Mode,
    /// Validate and report; store nothing.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Serialize)]
struct Rejected {
    row: usize,
    pointer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<String>,
    detail: String,
}

/// # `POST /api/v1/import`
pub async fn import(
    State(state): State<AppState>,
    Writer(caller): Writer,
    headers: HeaderMap,
    params: Result<Query<ImportParams>, axum::extract::rejection::QueryRejection>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(ApiError::query)?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = Format::from_media_type(media).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type",
            format!(
                "{media:?}: send application/x-ndjson, text/csv or {}",
                import::XLSX_MEDIA_TYPE
            ),
        )
    })?;
    let node = state.node.clone();
    let caller_name = caller.name.clone();
    let response = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let rows = import::parse(format, &body, node.config().node_id.as_str()).map_err(|e| {
            ApiError { title: "unreadable import", ..ApiError::invalid(vec![e]) }
        })?;
        let now = now_rfc3339();
        let mut accepted: Vec<(usize, Prepared)> = Vec::new();
        let mut rejected: Vec<Rejected> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for row in rows {
            let result = row.record.and_then(|value| node.validator().prepare(value, &now));
            let result = result.and_then(|p| {
                if let Some(first) = seen.insert(p.id, row.row) {
                    return Err(vec![FieldError::new("/record_id", format!("record {} also appears at row {first}", p.id))]);
                }
                match node.store().head(&p.id) {
                    Ok(Some(_)) => Err(vec![FieldError::new("/record_id", format!("record {} already exists", p.id))]),
                    Ok(None) => Ok(p),
                    Err(e) => {
                        tracing::error!(error = %e, "import: store lookup failed");
                        Err(vec![FieldError::new("", "storage error; see the node's log")])
                    }
                }
            });
            match result {
                Ok(p) => accepted.push((row.row, p)),
                Err(errors) => rejected.extend(errors.into_iter().map(|e| Rejected {
                    row: row.row,
                    column: import::column_of(&row.columns, &e.pointer),
                    pointer: e.pointer,
                    detail: e.detail,
                })),
            }
        }
        let rejected_rows: std::collections::BTreeSet<usize> = rejected.iter().map(|r| r.row).collect();
        if !rejected.is_empty() && params.mode == Mode::Atomic {
            let first = &rejected[0];
            let detail = format!(
                "{} of {} records rejected; nothing was stored (first: row {}, {}: {})",
                rejected_rows.len(),
                accepted.len() + rejected_rows.len(),
                first.row,
                if first.pointer.is_empty() { "record" } else { &first.pointer },
                first.detail
            );
            // Pointers into the file: `/rows/N` then the pointer into the record built from it.
            let errors = rejected
                .iter()
                .take(20)
                .map(|r| FieldError::new(format!("/rows/{}{}", r.row, r.pointer), r.detail.clone()))
                .collect();
            return Err(ApiError { errors, ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "import rejected", detail) }
                .with_extra(json!({
                    "accepted": 0,
                    "rejected": rejected,
                    "rejected_rows": rejected_rows.len(),
                    "stored": false,
                    "records": [],
                    "last_seq": node.store().last_seq()?,
                })));
        }
        let mut records = Vec::with_capacity(accepted.len());
        let mut last_seq = node.store().last_seq()?;
        if !params.dry_run {
            // One transaction: every accepted record is stored, or none is.
            let (rows, mut batch): (Vec<usize>, Vec<Prepared>) = accepted.into_iter().unzip();
            let index = node.index();
            let offered = index.offer(batch.iter_mut().map(|p| index.documents(p.id, p.declared_version.unwrap_or(1), &p.record, std::mem::take(&mut p.keys))));
            let prepared_at = std::time::Instant::now();
            let written = node.store().create_batch(&mut batch, node.sealer()).inspect_err(|_| index.withdraw(offered))?;
            let stored_at = std::time::Instant::now();
            for (row, w) in rows.into_iter().zip(written) {
                last_seq = w.seq;
                records.push(json!({ "row": row, "record_id": w.id.to_string(), "record_version": w.version }));
            }
            node.store().flush()?;
            node.written();
            tracing::debug!(
                records = records.len(),
                validate_ms = (prepared_at - started).as_millis() as u64,
                store_ms = (stored_at - prepared_at).as_millis() as u64,
                flush_ms = stored_at.elapsed().as_millis() as u64,
                "import batch durable"
            );
        } else {
            records = accepted.iter().map(|(row, p)| json!({ "row": row, "record_id": p.id.to_string() })).collect();
        }
        tracing::info!(accepted = records.len(), rejected = rejected_rows.len(), dry_run = params.dry_run, by = %caller_name, "import");
        Ok::<_, ApiError>(Json(json!({
            "accepted": records.len(),
            "rejected": rejected,
            "rejected_rows": rejected_rows.len(),
            // Whether this import stored anything (not when every row was refused).
            "stored": !params.dry_run && !records.is_empty(),
            "records": records,
            "last_seq": last_seq,
        })))
    })
    .await??;
    Ok(response.into_response())
}
