//! Live federated queries (design §5-6, Prüm step 1): answering a partner's signed query under
//! its policy, and fanning an investigator's query out to every partner under a deadline.
//!
//! A partner in `query` (or `replicate`) mode is answered with signed views of the matching
//! own records (only the disclosed fields); a partner in `hit_no_hit` mode with a count and one
//! opaque reference per hit, never a field value; a partner in `none` mode is refused. Every
//! query names its purpose and case reference, is rate-limited per partner, and is audited on
//! both sides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::envelope::{Envelope, LoadError};
use crate::node::Node;
use crate::peer::Peer;
use crate::policy::Mode;
use crate::record::{FieldError, RecordId};
use crate::search::{self, SearchParams};
use crate::sync::{self, SyncError};

/// The body of `POST /federation/v1/search`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub params: SearchParams,
    pub purpose: String,
    pub case_ref: String,
}

/// One hit in a `query`-mode answer: the signed view and how it matched.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewHit {
    pub item_id: String,
    #[serde(rename = "match")]
    pub matched: Value,
    pub envelope: Envelope,
}

/// The answer to `POST /federation/v1/search`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    /// Views of the matching records.
    Query { hits: Vec<ViewHit> },
    /// A count and one opaque reference per hit: never a field value.
    HitNoHit { count: usize, refs: Vec<String> },
}

/// Per-partner token buckets for live queries.
#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimits {
    /// Takes one token from `partner`'s bucket (`per_minute` refill, `burst` capacity); when
    /// empty, the seconds until the next token.
    pub fn take(&self, partner: &str, per_minute: u32, burst: u32) -> Result<(), u64> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let rate = f64::from(per_minute.max(1)) / 60.0;
        let (tokens, last) = buckets
            .entry(partner.to_owned())
            .or_insert((f64::from(burst.max(1)), now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(f64::from(burst.max(1)));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil() as u64)
        }
    }
}

/// Why a partner's query is not answered.
#[derive(Debug)]
pub enum Refused {
    Invalid(Vec<FieldError>),
    Mode(Mode),
    RateLimited(u64),
    Internal(String),
}

/// Answers `peer`'s query (blocking: searches the index, reads envelopes).
pub fn answer(node: &Node, peer: &Peer, query: &Query) -> Result<Answer, Refused> {
    let mut errors = Vec::new();
    if query.purpose.trim().is_empty() {
        errors.push(FieldError::new("/purpose", "every query names its purpose"));
    }
    if query.case_ref.trim().is_empty() {
        errors.push(FieldError::new(
            "/case_ref",
            "every query names its case reference",
        ));
    }
    if !errors.is_empty() {
        return Err(Refused::Invalid(errors));
    }
    let mode = peer.policy.mode;
    if mode == Mode::None {
        return Err(Refused::Mode(mode));
    }
    let config = node.config();
    let max = config.federation.max_query_results;
    let mut params = query.params.clone();
    params.limit = Some(params.limit.unwrap_or(max).clamp(1, max));
    params.min_seq = None;
    let plan = search::plan(
        &params,
        config.search.default_limit,
        config.search.max_limit.max(max),
    )
    .map_err(Refused::Invalid)?;
    let candidates = node
        .index()
        .candidates(&plan.candidates)
        .map_err(|e| Refused::Internal(e.to_string()))?;
    let own = &config.node_id;
    let ranked = search::rank(
        &plan,
        candidates
            .into_iter()
            .filter(|c| &c.origin == own)
            .collect(),
    );
    let store = node.store();
    let mut hits = Vec::new();
    let mut versions = Vec::new();
    let mut paths = std::collections::BTreeSet::new();
    for r in ranked {
        let Some(id) = RecordId::parse(&r.candidate.record_id) else {
            continue;
        };
        let version = u32::try_from(r.candidate.version).unwrap_or(0);
        // Only the record as it is now is answered: the index may still hold a version the
        // origin has since retracted or marked do-not-share (until its next commit).
        match store.head(&id) {
            Ok(Some(head)) if head.version == version && !head.retracted => {}
            Ok(_) => continue,
            Err(e) => return Err(Refused::Internal(e.to_string())),
        }
        // The record as submitted comes with the envelope: the policy reads only submitted
        // fields (labels, categories, location).
        let (envelope, record) = match node.envelope_with_record(&id, version) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => continue,
            // One unreadable version must not fail every query that ranks it: it is left out,
            // loudly (the feed, which cannot skip a change, stops on it instead).
            Err(LoadError::Corrupt(..)) => {
                tracing::error!(%id, version, "left out of a partner's answer: unreadable envelope");
                continue;
            }
            Err(e) => return Err(Refused::Internal(e.to_string())),
        };
        let view = match sync::view_for(peer, &envelope, &record) {
            sync::View::Shown(view) => view,
            _ => continue,
        };
        // The hit's item must itself be disclosed (its category allowed). A view answers
        // `query` partners, so each field the query matched the hit on must be disclosed too:
        // the view would otherwise tell the partner that the record has what it asked for in
        // a field its policy withholds. A `hit_no_hit` answer is that telling and no more
        // (Prüm step 1: a count and references, rate-limited, every query audited with its
        // purpose), so it matches on any field of a record version it may be told of.
        let Some(item) = record
            .get("items")
            .and_then(Value::as_array)
            .and_then(|items| {
                items
                    .iter()
                    .position(|i| i["item_id"] == r.candidate.item_id.as_str())
            })
        else {
            continue;
        };
        let queried = match mode {
            Mode::HitNoHit => vec![format!("/items/{item}/item_id")],
            _ => queried_paths(&params, &r.matched, item),
        };
        if !queried.iter().all(|p| discloses(&view, p)) {
            continue;
        }
        versions.push(format!("{}@{}", r.candidate.record_id, version));
        if mode != Mode::HitNoHit {
            for d in &view.disclosures {
                paths.insert(sync::path_pattern(d.path()));
            }
        }
        hits.push((r, *view, id, version));
    }
    let answer = if mode == Mode::HitNoHit {
        let mut refs = Vec::with_capacity(hits.len());
        for (r, _, id, version) in &hits {
            let reference = crate::envelope::random_salt();
            store
                .put_hit_ref(
                    &reference,
                    &json!({
                        "partner": peer.id, "record_id": id.to_string(), "version": version,
                        "item_id": r.candidate.item_id, "purpose": query.purpose,
                        "case_ref": query.case_ref,
                        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    }),
                )
                .map_err(|e| Refused::Internal(e.to_string()))?;
            refs.push(reference);
        }
        Answer::HitNoHit {
            count: refs.len(),
            refs,
        }
    } else {
        Answer::Query {
            hits: hits
                .into_iter()
                .map(|(r, view, _, _)| ViewHit {
                    item_id: r.candidate.item_id.clone(),
                    matched: serde_json::to_value(&r.matched).unwrap_or(Value::Null),
                    envelope: view,
                })
                .collect(),
        }
    };
    // Written before the answer leaves: an answer the log cannot record is not given.
    node.audit()
        .append(
            "query_answered",
            json!({
                "partner": peer.id, "mode": mode, "purpose": query.purpose, "case_ref": query.case_ref,
                "params": query.params, "versions": versions,
                "hits": versions.len(), "paths": paths,
            }),
            mode != Mode::HitNoHit,
        )
        .map_err(|e| Refused::Internal(format!("cannot write the audit log: {e}")))?;
    Ok(answer)
}

/// The record paths a partner's query matched a hit on, for a hit on item number `item`:
/// the item itself, and the field of each search term it gave (free text counts as the lot
/// or headstamp it matched, as the lot when it matched neither).
fn queried_paths(params: &SearchParams, matched: &search::MatchInfo, item: usize) -> Vec<String> {
    let of_item = |field: &str| format!("/items/{item}/{field}");
    let mut paths = vec![of_item("item_id")];
    let text = params.q.is_some();
    let lot = params.lot.is_some() || (text && matched.lot.is_some());
    let headstamp = params.headstamp.is_some() || (text && matched.headstamp.is_some());
    if lot || (text && !headstamp) {
        paths.push(of_item("lot"));
    }
    if headstamp {
        paths.push(of_item("headstamp"));
    }
    if params.calibre.is_some() {
        paths.push(of_item("calibre"));
    }
    if params.category.is_some() {
        paths.push(of_item("item_category"));
    }
    if params.country.is_some() {
        paths.push("/event/location/country".into());
    }
    if params.from.is_some() || params.to.is_some() {
        paths.push("/event/date".into());
    }
    paths
}

/// Whether `view` discloses `path` or a field below it.
fn discloses(view: &Envelope, path: &str) -> bool {
    view.disclosures.iter().any(|d| {
        d.path()
            .strip_prefix(path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// One partner's part in a federated search.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerStatus {
    pub id: String,
    /// answered | no_hit | refused | timed_out | unreachable | bad_signature
    pub status: &'static str,
    pub latency_ms: u64,
    pub hits: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A partner's verified hits, ready to merge.
pub struct PartnerHit {
    pub score: f64,
    pub hit: Value,
}

/// Asks every partner at once, each under `deadline`; never waits longer.
pub async fn fan_out(
    node: &Arc<Node>,
    query: &Query,
    deadline: Duration,
) -> (Vec<PartnerStatus>, Vec<PartnerHit>) {
    let body = serde_json::to_vec(query).unwrap_or_default();
    let mut calls = tokio::task::JoinSet::new();
    for peer in node.peers().iter() {
        let (node, body, peer) = (node.clone(), body.clone(), peer.clone());
        calls.spawn(async move {
            let started = Instant::now();
            let result = tokio::time::timeout(
                deadline,
                sync::request_bytes(
                    &node,
                    &peer,
                    reqwest::Method::POST,
                    "/federation/v1/search",
                    Some(body),
                ),
            )
            .await;
            let latency_ms = started.elapsed().as_millis() as u64;
            partner_result(&peer, result, latency_ms)
        });
    }
    let mut statuses = Vec::new();
    let mut hits = Vec::new();
    while let Some(done) = calls.join_next().await {
        if let Ok((status, partner_hits)) = done {
            statuses.push(status);
            hits.extend(partner_hits);
        }
    }
    statuses.sort_by(|a, b| a.id.cmp(&b.id));
    (statuses, hits)
}

type Called = Result<Result<axum::body::Bytes, SyncError>, tokio::time::error::Elapsed>;

fn partner_result(
    peer: &Peer,
    result: Called,
    latency_ms: u64,
) -> (PartnerStatus, Vec<PartnerHit>) {
    let status = |status: &'static str, detail: Option<String>| PartnerStatus {
        id: peer.id.clone(),
        status,
        latency_ms,
        hits: 0,
        count: None,
        refs: Vec::new(),
        detail,
    };
    let bytes = match result {
        Err(_) => return (status("timed_out", None), Vec::new()),
        Ok(Err(SyncError::Unreachable(_, e))) => {
            return (status("unreachable", Some(e)), Vec::new());
        }
        Ok(Err(SyncError::Refused {
            status: code,
            detail,
            ..
        })) => {
            return (
                status("refused", Some(format!("{code}: {detail}"))),
                Vec::new(),
            );
        }
        Ok(Err(e)) => return (status("unreachable", Some(e.to_string())), Vec::new()),
        Ok(Ok(bytes)) => bytes,
    };
    let answer: Answer = match serde_json::from_slice(&bytes) {
        Ok(a) => a,
        Err(e) => {
            return (
                status("bad_signature", Some(format!("not an answer: {e}"))),
                Vec::new(),
            );
        }
    };
    match answer {
        Answer::HitNoHit { count, refs } => {
            let mut s = status(if count == 0 { "no_hit" } else { "answered" }, None);
            s.count = Some(count);
            s.refs = refs;
            (s, Vec::new())
        }
        Answer::Query { hits } => {
            let keys = peer.keys();
            let mut verified = Vec::with_capacity(hits.len());
            for hit in hits {
                let env = &hit.envelope;
                let ok = env.claims.origin == peer.id
                    && keys
                        .key_valid_at(&env.claims.key_id, &env.claims.issued_at)
                        .ok()
                        .is_some_and(|key| env.verify(&key).is_ok());
                if !ok {
                    tracing::warn!(peer = %peer.id, record = %env.claims.record_id, "a query answer failed verification");
                    return (
                        status(
                            "bad_signature",
                            Some(format!("record {} does not verify", env.claims.record_id)),
                        ),
                        Vec::new(),
                    );
                }
                let record = env.record();
                let item = record
                    .get("items")
                    .and_then(Value::as_array)
                    .and_then(|items| items.iter().find(|i| i["item_id"] == hit.item_id.as_str()))
                    .cloned();
                let score = hit
                    .matched
                    .get("score")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                verified.push(PartnerHit {
                    score,
                    hit: json!({
                        "record_id": env.claims.record_id,
                        "record_version": env.claims.version,
                        "item_id": hit.item_id,
                        "origin": env.claims.origin,
                        "via": "live_query",
                        "match": hit.matched,
                        "item": item,
                        "event": crate::record::event_summary(&record),
                    }),
                });
            }
            let mut s = status(
                if verified.is_empty() {
                    "no_hit"
                } else {
                    "answered"
                },
                None,
            );
            s.hits = verified.len();
            (s, verified)
        }
    }
}

/// Merges local and partner hits: one per (record, item), the best score, best first.
pub fn merge(local: Vec<Value>, partners: Vec<PartnerHit>, limit: usize) -> Vec<Value> {
    let mut best: HashMap<(String, String), (f64, Value)> = HashMap::new();
    let score_of = |h: &Value| {
        h.pointer("/match/score")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    let all = local
        .into_iter()
        .map(|h| (score_of(&h), h))
        .chain(partners.into_iter().map(|p| (p.score, p.hit)));
    for (score, hit) in all {
        let key = (
            hit["record_id"].as_str().unwrap_or_default().to_owned(),
            hit["item_id"].as_str().unwrap_or_default().to_owned(),
        );
        match best.get(&key) {
            Some((s, _)) if *s >= score => {}
            _ => {
                best.insert(key, (score, hit));
            }
        }
    }
    let mut merged: Vec<(f64, Value)> = best.into_values().collect();
    merged.sort_by(|a, b| b.0.total_cmp(&a.0));
    merged.into_iter().take(limit).map(|(_, h)| h).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::federation::tests::{Federation, assert_follows, schema, with};

    /// A live query as `fan_out` sends it, and both answers as the holder's endpoint gives
    /// them, taken off the wire, follow `liveQuery` and `liveQueryAnswer`; and what those
    /// schemas refuse, the code refuses too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn live_query_documents_follow_the_schema() {
        let policy = |mode: &str| json!({"mode": mode, "categories": ["*"], "fields": ["*"]});
        let fed = Federation::start(
            &["XAA", "XBB", "XCC"],
            &[
                ("XAA", "XBB", policy("query")),
                ("XAA", "XCC", policy("hit_no_hit")),
            ],
        )
        .await;
        fed.write("XAA", &[("LC10A000-001", "XAA")]).await;
        let query = Query {
            params: SearchParams {
                lot: Some("LC10A000-001".into()),
                limit: Some(10),
                ..SearchParams::default()
            },
            purpose: "trace request".into(),
            case_ref: "XBB-2026-7".into(),
        };
        let deadline = Duration::from_secs(20);
        for (from, hits, count) in [("XBB", 1, None), ("XCC", 0, Some(1))] {
            let (statuses, _) = fan_out(fed.node(from), &query, deadline).await;
            let holder = statuses.iter().find(|s| s.id == "XAA").unwrap();
            assert_eq!(
                (holder.status, holder.hits, holder.count),
                ("answered", hits, count),
                "{statuses:?}"
            );
        }

        let query_schema = schema("envelope.schema.json", Some("liveQuery"));
        let answer_schema = schema("envelope.schema.json", Some("liveQueryAnswer"));
        let mut answers = Vec::new();
        for from in ["XBB", "XCC"] {
            let asked: Vec<_> = fed
                .received("XAA", "/federation/v1/search")
                .into_iter()
                .filter(|e| e.from == from)
                .collect();
            assert_eq!(asked.len(), 1, "{asked:?}");
            let e = &asked[0];
            assert_eq!(e.status, 200, "{e:?}");
            assert_eq!(e.body, serde_json::to_value(&query).unwrap());
            assert_follows(&query_schema, &e.body, "live query");
            assert_follows(&answer_schema, &e.answer, "live query answer");
            answers.push(e.answer.clone());
        }
        let (views, refs) = (&answers[0], &answers[1]);
        assert_eq!(views["mode"], "query");
        assert_eq!(views["hits"][0]["item_id"], "i1");
        assert_eq!(refs["mode"], "hit_no_hit");
        assert_eq!(refs["count"], 1);

        // Every search parameter may be left out.
        let minimal = json!({"params": {}, "purpose": "p", "case_ref": "c"});
        assert!(query_schema.is_valid(&minimal));
        serde_json::from_value::<Query>(minimal).unwrap();

        let sent = serde_json::to_value(&query).unwrap();
        for bad in [
            with(&sent, "/params/radius", Some(json!(5))),
            with(&sent, "/params/limit", Some(json!(-1))),
            with(&sent, "/params/siblings", Some(Value::Null)),
            with(&sent, "/urgent", Some(json!(true))),
            with(&sent, "/case_ref", None),
        ] {
            assert!(!query_schema.is_valid(&bad), "{bad}");
            assert!(
                serde_json::from_value::<Query>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        // A blank purpose parses, and is refused (422) by the holder: the schema refuses it.
        let blank = Query {
            purpose: " ".into(),
            ..query.clone()
        };
        assert!(!query_schema.is_valid(&serde_json::to_value(&blank).unwrap()));
        assert!(matches!(
            answer(fed.node("XAA"), &fed.peer("XAA", "XBB"), &blank),
            Err(Refused::Invalid(_))
        ));

        for bad in [
            with(views, "/count", Some(json!(1))),
            with(refs, "/mode", Some(json!("query"))),
            with(refs, "/refs", Some(json!("one"))),
            with(views, "/hits/0/envelope", None),
            with(views, "/hits/0/envelope/claims/v", Some(json!("1"))),
            with(views, "/hits/0/score", Some(json!(1))),
        ] {
            assert!(!answer_schema.is_valid(&bad), "{bad}");
            assert!(
                serde_json::from_value::<Answer>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
