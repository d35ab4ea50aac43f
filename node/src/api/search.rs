//! `GET /api/v1/search`.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Reader;
use super::error::ApiError;
use crate::search::{self, SearchParams};

/// # `GET /api/v1/search`
/// Ranked item hits for a lot, headstamp and/or calibre (with filters), each labelled with its
/// match kind and score, the item and a summary of its event. With `scope=federated` (and a
/// `purpose` and `case_ref`), every partner is asked at once under the search deadline, their
/// verified hits are merged in, and each partner's status is reported.
pub async fn search(
    State(state): State<AppState>,
    Reader(caller): Reader,
    params: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(ApiError::query)?;
    let started = Instant::now();
    let federated = match params.scope.as_deref() {
        None | Some("local") => None,
        Some("federated") => {
            let mut errors = Vec::new();
            for (name, value) in [("purpose", &params.purpose), ("case_ref", &params.case_ref)] {
                if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                    errors.push(crate::record::FieldError::new(
                        format!("/{name}"),
                        format!("a federated search names its {name}"),
                    ));
                }
            }
            if !errors.is_empty() {
                return Err(ApiError {
                    title: "invalid query",
                    ..ApiError::invalid(errors)
                }
                .with_status(axum::http::StatusCode::BAD_REQUEST));
            }
            let mut sent = params.clone();
            sent.scope = None;
            sent.purpose = None;
            sent.case_ref = None;
            sent.min_seq = None;
            Some(crate::query::Query {
                params: sent,
                purpose: params.purpose.clone().unwrap_or_default(),
                case_ref: params.case_ref.clone().unwrap_or_default(),
            })
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "/scope",
                format!("scope {other:?}: use local or federated"),
            ));
        }
    };
    let config = &state.node.config().search;
    let plan = search::plan(&params, config.default_limit, config.max_limit).map_err(|errors| {
        ApiError {
            title: "invalid query",
            ..ApiError::invalid(errors)
        }
        .with_status(axum::http::StatusCode::BAD_REQUEST)
    })?;
    // A change the store has not made yet would only be waited for in vain.
    if let Some(seq) = params.min_seq {
        let last = state.node.store().last_seq().map_err(ApiError::from)?;
        if seq > last {
            let detail = format!("change {seq} has not been made (the last is {last})");
            return Err(ApiError {
                errors: vec![crate::record::FieldError::new("/min_seq", detail.clone())],
                ..ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid query", detail)
            });
        }
    }
    if let Some(seq) = params.min_seq
        && !state
            .node
            .index()
            .wait_for(seq, Duration::from_secs(10))
            .await
    {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "index behind",
            format!("the index has not reached change {seq} yet; retry"),
        ));
    }
    let limit = plan.limit();
    let node = state.node.clone();
    let fan_out = federated.map(|query| {
        let node = state.node.clone();
        let deadline = Duration::from_millis(node.config().federation.search_deadline_ms);
        node.audit().record(
            "query_sent",
            json!({ "by": caller.name, "purpose": query.purpose, "case_ref": query.case_ref,
                    "params": query.params, "partners": node.peers().iter().map(|p| p.id.clone()).collect::<Vec<_>>() }),
            false,
        );
        tokio::spawn(async move { crate::query::fan_out(&node, &query, deadline).await })
    });
    let ranked = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let candidates = node.index().candidates(&plan.candidates)?;
        let t1 = Instant::now();
        let ranked = search::rank(&plan, candidates);
        tracing::debug!(
            candidates_us = (t1 - t0).as_micros() as u64,
            rank_us = t1.elapsed().as_micros() as u64,
            "search"
        );
        Ok::<_, ApiError>(ranked)
    })
    .await??;
    let Some(fan_out) = fan_out else {
        let hits: Vec<LocalHit<'_>> = ranked.iter().map(LocalHit::of).collect();
        let answer = LocalAnswer {
            hits,
            index_seq: state.node.index().watermark(),
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        return Ok(Json(answer).into_response());
    };
    let hits: Vec<Value> = ranked
        .iter()
        .map(|r| serde_json::to_value(LocalHit::of(r)).unwrap_or(Value::Null))
        .collect();
    let (partners, partner_hits) = fan_out.await?;
    Ok(Json(json!({
        "hits": crate::query::merge(hits, partner_hits, limit),
        "partners": partners,
        "index_seq": state.node.index().watermark(),
        "took_ms": started.elapsed().as_secs_f64() * 1000.0,
    }))
    .into_response())
}

/// The item and event summary a hit shows, as the index stored them (see `index::Hit`).
#[derive(serde::Deserialize)]
struct Shown<'a> {
    #[serde(borrow)]
    item: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
}

/// One local hit as answered. The item and its event summary are copied from the index's
/// stored `hit` field as they are, not parsed into a tree and written out again.
#[derive(serde::Serialize)]
struct LocalHit<'a> {
    record_id: &'a str,
    record_version: u64,
    item_id: &'a str,
    origin: &'a str,
    #[serde(rename = "match")]
    matched: &'a search::MatchInfo,
    item: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
}

impl<'a> LocalHit<'a> {
    fn of(r: &'a search::Ranked) -> LocalHit<'a> {
        let c = &r.candidate;
        let shown = serde_json::from_slice::<Shown<'_>>(&c.hit).ok();
        LocalHit {
            record_id: &c.record_id,
            record_version: c.version,
            item_id: &c.item_id,
            origin: &c.origin,
            matched: &r.matched,
            item: shown.as_ref().and_then(|s| s.item),
            event: shown.as_ref().and_then(|s| s.event),
        }
    }
}

/// The answer to a local search.
#[derive(serde::Serialize)]
struct LocalAnswer<'a> {
    hits: Vec<LocalHit<'a>>,
    index_seq: u64,
    took_ms: f64,
}
