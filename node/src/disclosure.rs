//! Follow-up on a hit (Prüm step 2): disclosure requests.
//!
//! An investigator who got an opaque reference from a `hit_no_hit` partner asks that partner
//! for the record behind it, with a purpose and a case reference. The holder's focal point
//! approves or declines with a reason. On approval the holder sends that record version as a
//! signed view under a one-off grant (the partner's policy rules for fields, location, case
//! references and casualties still apply; do-not-share and TLP RED still never leave); the
//! requester verifies it, stores it like any partner's record, and it appears in search.
//! Requests expire (default 48 h). Every step is audited on both sides.
//!
//! Stored as `out:ID` (sent) and `in:ID` (received) in the store's `requests` tree.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::envelope::Envelope;
use crate::node::Node;
use crate::peer::Peer;
use crate::policy::{self, Mode};
use crate::record::RecordId;

/// `POST /federation/v1/disclosure-requests` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: String,
    pub reference: String,
    pub purpose: String,
    pub case_ref: String,
    pub expires_at: String,
}

/// `POST /federation/v1/disclosure-decisions` body: the holder's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub id: String,
    /// `approved` or `declined`.
    pub decision: String,
    pub reason: String,
    /// The disclosed view (approved only).
    pub envelope: Option<Envelope>,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn expired(entry: &Value) -> bool {
    entry["expires_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t < chrono::Utc::now())
}

/// A request as listed: `pending` turns `expired` once past its deadline.
pub fn listed(direction: &str, mut entry: Value) -> Value {
    if entry["status"] == "pending" && expired(&entry) {
        entry["status"] = json!("expired");
    }
    entry["direction"] = json!(direction);
    entry
}

/// Holder side: records a partner's request for the record behind `reference` (blocking).
/// Err: (HTTP status, reason).
pub fn receive(node: &Node, peer: &Peer, request: &Request) -> Result<(), (u16, String)> {
    if request.purpose.trim().is_empty() || request.case_ref.trim().is_empty() {
        return Err((
            422,
            "a disclosure request names its purpose and case reference".into(),
        ));
    }
    let store = node.store();
    let internal = |e: crate::store::StoreError| (500, e.to_string());
    let target = store
        .hit_ref(&request.reference)
        .map_err(internal)?
        .filter(|r| r["partner"] == peer.id.as_str())
        .ok_or((
            404,
            format!(
                "no hit reference {} was given to {}",
                request.reference, peer.id
            ),
        ))?;
    let key = format!("in:{}:{}", peer.id, request.id);
    if store.request(&key).map_err(internal)?.is_some() {
        return Err((409, format!("request {} already received", request.id)));
    }
    let ttl = chrono::Duration::hours(i64::from(node.config().federation.disclosure_request_hours));
    let expires_at = (chrono::Utc::now() + ttl).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let entry = json!({
        "id": request.id, "partner": peer.id, "reference": request.reference,
        "record_id": target["record_id"], "version": target["version"], "item_id": target["item_id"],
        "purpose": request.purpose, "case_ref": request.case_ref,
        "status": "pending", "received_at": now(), "expires_at": expires_at,
    });
    store.put_request(&key, &entry).map_err(internal)?;
    node.audit()
        .record("disclosure_request_received", entry, true);
    Ok(())
}

/// Holder side: the view granted for an approved request, or why it cannot be given.
pub(crate) fn granted_view(node: &Node, peer: &Peer, entry: &Value) -> Result<Envelope, String> {
    // A partner whose policy is now `none` gets nothing, whatever it was found to hold before.
    if peer.policy.mode == Mode::None {
        return Err("this partner's policy shares nothing (mode none)".into());
    }
    let id = entry["record_id"]
        .as_str()
        .and_then(RecordId::parse)
        .ok_or("the request names no record")?;
    let version = entry["version"].as_u64().unwrap_or(0) as u32;
    let store = node.store();
    // What the record is now decides whether anything may leave: a version retracted since,
    // or marked do-not-share or TLP RED since the hit, is not disclosed in its old form.
    let head = store
        .head(&id)
        .map_err(|e| e.to_string())?
        .ok_or("the record is gone")?;
    if head.retracted {
        return Err("the record has been retracted since".into());
    }
    if head.version != version {
        let latest = store
            .get(&id, Some(head.version))
            .map_err(|e| e.to_string())?
            .ok_or("the record version is gone")?;
        let mut grant = peer.policy.clone();
        grant.mode = Mode::Query;
        let now = policy::decide(&peer.id, &grant, &latest, &[], i64::MAX);
        if !now.shared {
            return Err(format!(
                "the record cannot leave since version {}: {}",
                head.version, now.reason
            ));
        }
    }
    // The record as submitted comes with the envelope (the policy reads submitted fields).
    let (envelope, record) = node
        .envelope_with_record(&id, version)
        .map_err(|e| e.to_string())?
        .ok_or("the record version is gone")?;
    // The partner's field rules, as if it could query.
    let mut grant = peer.policy.clone();
    grant.mode = Mode::Query;
    let decision = policy::decide(&peer.id, &grant, &record, &envelope.paths(), i64::MAX);
    if !decision.shared {
        return Err(format!("the record cannot leave: {}", decision.reason));
    }
    let allowed: HashSet<&str> = decision.disclosed().collect();
    Ok(envelope.view(|p| allowed.contains(p)))
}

/// Holder side: the focal point approves (`approve = true`) or declines a request, and the
/// decision (with the view, on approval) is sent to the requester. Err: (status, reason).
pub async fn decide(
    node: &Arc<Node>,
    key: &str,
    approve: bool,
    reason: &str,
    by: &str,
) -> Result<Value, (u16, String)> {
    let store = node.store();
    let internal = |e: crate::store::StoreError| (500, e.to_string());
    let mut entry = store
        .request(key)
        .map_err(internal)?
        .ok_or((404, "no such request".to_owned()))?;
    if entry["status"] != "pending" {
        return Err((409, format!("the request is {}", entry["status"])));
    }
    if expired(&entry) {
        return Err((409, "the request has expired".into()));
    }
    let partner = entry["partner"].as_str().unwrap_or_default().to_owned();
    let peer = node
        .peers()
        .get(&partner)
        .cloned()
        .ok_or((409, format!("{partner} is no longer a partner")))?;
    let envelope = if approve {
        Some(granted_view(node, &peer, &entry).map_err(|e| (409, e))?)
    } else {
        None
    };
    let decision = Decision {
        id: entry["id"].as_str().unwrap_or_default().to_owned(),
        decision: if approve { "approved" } else { "declined" }.into(),
        reason: reason.to_owned(),
        envelope: envelope.clone(),
    };
    let body = serde_json::to_vec(&decision).map_err(|e| (500, e.to_string()))?;
    if let Some(env) = &envelope
        && let Some(id) = RecordId::parse(&env.claims.record_id)
    {
        // Audited first (synced): a disclosure the log cannot record does not happen, and one
        // recorded that then fails to leave is the safer error.
        let paths: std::collections::BTreeSet<String> = env
            .disclosures
            .iter()
            .map(|d| crate::sync::path_pattern(d.path()))
            .collect();
        node.audit()
            .append(
                "disclosure",
                json!({ "partner": partner, "channel": "grant", "request": decision.id,
                        "versions": [format!("{}@{}", env.claims.record_id, env.claims.version)],
                        "paths": paths }),
                true,
            )
            .map_err(|e| (500, format!("cannot write the audit log: {e}")))?;
        // Noted before it leaves, so a later retraction reaches the partner (see `sync::holds`),
        // and durable (see `Store::note_disclosed`).
        store
            .note_disclosed(&peer.id, &[(id, env.claims.version)])
            .map_err(internal)?;
        store.flush().map_err(internal)?;
    }
    crate::sync::request_bytes(
        node,
        &peer,
        reqwest::Method::POST,
        "/federation/v1/disclosure-decisions",
        Some(body),
    )
    .await
    .map_err(|e| (502, format!("the decision did not reach {partner}: {e}")))?;
    entry["status"] = json!(decision.decision);
    entry["reason"] = json!(reason);
    entry["decided_by"] = json!(by);
    entry["decided_at"] = json!(now());
    store.put_request(key, &entry).map_err(internal)?;
    let audit = entry.clone();
    node.audit()
        .record("disclosure_request_decided", audit, true);
    Ok(listed("incoming", entry))
}

/// Requester side: the holder's decision arrived (blocking). Err: (status, reason).
pub fn decision_received(
    node: &Node,
    peer: &Peer,
    decision: &Decision,
) -> Result<(), (u16, String)> {
    let store = node.store();
    let internal = |e: crate::store::StoreError| (500, e.to_string());
    let key = format!("out:{}", decision.id);
    let mut entry = store
        .request(&key)
        .map_err(internal)?
        .filter(|e| e["partner"] == peer.id.as_str())
        .ok_or((
            404,
            format!("no request {} was sent to {}", decision.id, peer.id),
        ))?;
    if entry["status"] != "pending" {
        return Err((409, format!("the request is {}", entry["status"])));
    }
    match (decision.decision.as_str(), &decision.envelope) {
        ("approved", Some(envelope)) => {
            let c = &envelope.claims;
            let verified = c.origin == peer.id
                && peer
                    .keys()
                    .key_valid_at(&c.key_id, &c.issued_at)
                    .ok()
                    .is_some_and(|k| envelope.verify(&k).is_ok());
            let id = RecordId::parse(&c.record_id).filter(|_| verified).ok_or_else(|| {
                node.audit().record(
                    "disclosure_refused",
                    json!({ "partner": peer.id, "request": decision.id, "reason": "does not verify" }),
                    true,
                );
                (401, "the disclosed record does not verify".to_owned())
            })?;
            if store.head(&id).map_err(internal)?.is_some()
                && store.is_own(&id).map_err(internal)?
            {
                return Err((409, "the disclosure names this node's own record".into()));
            }
            let replica = crate::sync::replica_from(id, envelope.clone())
                .map_err(|e| (500, e.to_string()))?;
            store.apply_granted(&peer.id, &replica).map_err(internal)?;
            store.flush().map_err(internal)?;
            node.index().notify();
            entry["record_id"] = json!(c.record_id);
            entry["version"] = json!(c.version);
        }
        ("declined", None) => {}
        _ => {
            return Err((
                422,
                "a decision is approved with a record, or declined without".into(),
            ));
        }
    }
    entry["status"] = json!(decision.decision);
    entry["reason"] = json!(decision.reason);
    entry["decided_at"] = json!(now());
    store.put_request(&key, &entry).map_err(internal)?;
    node.audit()
        .record("disclosure_request_answered", entry, true);
    Ok(())
}

/// Requester side: sends a request for the record behind `reference` to `peer`.
pub async fn send(
    node: &Arc<Node>,
    peer: &Arc<Peer>,
    reference: &str,
    purpose: &str,
    case_ref: &str,
    by: &str,
) -> Result<Value, (u16, String)> {
    let ttl = chrono::Duration::hours(i64::from(node.config().federation.disclosure_request_hours));
    let request = Request {
        id: RecordId::new_v7().to_string(),
        reference: reference.to_owned(),
        purpose: purpose.to_owned(),
        case_ref: case_ref.to_owned(),
        expires_at: (chrono::Utc::now() + ttl).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let body = serde_json::to_vec(&request).map_err(|e| (500, e.to_string()))?;
    crate::sync::request_bytes(
        node,
        peer,
        reqwest::Method::POST,
        "/federation/v1/disclosure-requests",
        Some(body),
    )
    .await
    .map_err(|e| match e {
        crate::sync::SyncError::Refused { status, detail, .. } => (
            if status == 429 { 429 } else { 409 },
            format!("{} refused: {detail}", peer.id),
        ),
        other => (502, other.to_string()),
    })?;
    let entry = json!({
        "id": request.id, "partner": peer.id, "reference": reference,
        "purpose": purpose, "case_ref": case_ref, "requested_by": by,
        "status": "pending", "sent_at": now(), "expires_at": request.expires_at,
    });
    node.store()
        .put_request(&format!("out:{}", request.id), &entry)
        .map_err(|e| (500, e.to_string()))?;
    node.audit()
        .record("disclosure_request_sent", entry.clone(), true);
    Ok(listed("outgoing", entry))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::federation::tests::{Federation, assert_follows, schema, with};
    use crate::query::Query;
    use crate::search::SearchParams;

    /// Disclosure requests as `send` makes them and decisions (approved, declined) as `decide`
    /// makes them, taken off the wire, follow `disclosureRequest` and `disclosureDecision`; and
    /// what those schemas refuse, the code refuses too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn disclosure_documents_follow_the_schema() {
        let policy = json!({"mode": "hit_no_hit", "categories": ["*"], "fields": ["*"]});
        let fed = Federation::start(&["XAA", "XCC"], &[("XAA", "XCC", policy)]).await;
        fed.write("XAA", &[("LC10A000-001", "XAA")]).await;
        let (holder, requester) = (fed.node("XAA").clone(), fed.node("XCC").clone());
        let (purpose, case_ref) = ("trace request", "XCC-2026-1");
        let query = Query {
            params: SearchParams {
                lot: Some("LC10A000-001".into()),
                ..SearchParams::default()
            },
            purpose: purpose.into(),
            case_ref: case_ref.into(),
        };
        let (statuses, _) =
            crate::query::fan_out(&requester, &query, Duration::from_secs(20)).await;
        let reference = statuses[0].refs[0].clone();
        let to_holder = fed.peer("XCC", "XAA");
        let mut ids = Vec::new();
        for _ in 0..3 {
            let sent = send(
                &requester,
                &to_holder,
                &reference,
                purpose,
                case_ref,
                "investigator",
            )
            .await
            .unwrap();
            ids.push(sent["id"].as_str().unwrap().to_owned());
        }
        for (id, approve) in [(&ids[0], true), (&ids[1], false)] {
            let key = format!("in:XCC:{id}");
            decide(&holder, &key, approve, "reviewed", "focal point")
                .await
                .unwrap();
        }

        let request_schema = schema("envelope.schema.json", Some("disclosureRequest"));
        let decision_schema = schema("envelope.schema.json", Some("disclosureDecision"));
        let requests = fed.received("XAA", "/federation/v1/disclosure-requests");
        assert_eq!(requests.len(), 3);
        for (r, id) in requests.iter().zip(&ids) {
            assert_eq!(r.status, 202, "{r:?}");
            assert_eq!(
                (&r.body["id"], &r.body["reference"]),
                (&json!(id), &json!(reference))
            );
            assert_follows(&request_schema, &r.body, "disclosure request");
        }
        let decisions = fed.received("XCC", "/federation/v1/disclosure-decisions");
        assert_eq!(decisions.len(), 2);
        let (approved, declined) = (&decisions[0].body, &decisions[1].body);
        assert_eq!(
            (&approved["decision"], &declined["decision"]),
            (&json!("approved"), &json!("declined"))
        );
        assert!(approved["envelope"].is_object() && declined["envelope"].is_null());
        for d in &decisions {
            assert_eq!(d.status, 200, "{d:?}");
            assert_follows(&decision_schema, &d.body, "disclosure decision");
        }

        // Members the structs do not know, or missing ones.
        let request = &requests[0].body;
        for bad in [
            with(request, "/priority", Some(json!("high"))),
            with(request, "/expires_at", None),
            with(request, "/reference", Some(json!(7))),
        ] {
            assert!(!request_schema.is_valid(&bad), "{bad}");
            assert!(
                serde_json::from_value::<Request>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        for bad in [
            with(approved, "/by", Some(json!("focal point"))),
            with(declined, "/reason", None),
            with(approved, "/envelope/sig", Some(json!(false))),
        ] {
            assert!(!decision_schema.is_valid(&bad), "{bad}");
            assert!(
                serde_json::from_value::<Decision>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        // Documents that parse but that the receiver refuses (422): the schemas refuse them.
        let blank = with(request, "/purpose", Some(json!("  ")));
        assert!(!request_schema.is_valid(&blank));
        let blank: Request = serde_json::from_value(blank).unwrap();
        assert_eq!(
            receive(&holder, &fed.peer("XAA", "XCC"), &blank).map_err(|e| e.0),
            Err(422)
        );
        let pending = json!(ids[2]);
        for bad in [
            with(approved, "/envelope", Some(Value::Null)),
            with(declined, "/envelope", Some(approved["envelope"].clone())),
            with(declined, "/decision", Some(json!("deferred"))),
        ] {
            assert!(!decision_schema.is_valid(&bad), "{bad}");
            let bad: Decision =
                serde_json::from_value(with(&bad, "/id", Some(pending.clone()))).unwrap();
            assert_eq!(
                decision_received(&requester, &to_holder, &bad).map_err(|e| e.0),
                Err(422)
            );
        }
    }
}
