//! Exports for partners' existing tools: MISP JSON events and STIX 2.1 bundles. Both are
//! **lossy views**: they carry what an analyst needs to pivot (lots, headstamps, calibres,
//! quantities, where and when, origin, TLP) but not the signed form — a MISP or STIX consumer
//! cannot verify a record's origin from them. Verification needs the envelopes
//! (docs/protocol.md).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The bare UUID of a record id (`urn:uuid:…` or plain).
fn bare_uuid(id: &str) -> String {
    id.trim_start_matches("urn:uuid:").to_owned()
}

/// A deterministic UUID (version 8) for a name, so the same State gets the same STIX identity.
fn name_uuid(name: &str) -> String {
    let digest = Sha256::digest(format!("ammotrace:{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn items(record: &Value) -> Vec<Value> {
    record
        .get("items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    json!({
                        "item_id": i.get("item_id"),
                        "category": i.get("item_category"),
                        "lot": str_at(i, "/lot/raw"),
                        "headstamp": str_at(i, "/headstamp/raw_transcription"),
                        "calibre": str_at(i, "/calibre/raw"),
                        "calibre_id": str_at(i, "/calibre/derived/canonical_id"),
                        "quantity": i.pointer("/quantity/count"),
                        "unit": str_at(i, "/quantity/unit"),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One record as a MISP event (`{"Event": {…}}`).
pub fn misp_event(record: &Value) -> Value {
    let id = bare_uuid(record["record_id"].as_str().unwrap_or_default());
    let origin = record["originating_state"].as_str().unwrap_or("unknown");
    let date = str_at(record, "/event/date/start").unwrap_or("");
    let tlp = str_at(record, "/sharing/tlp")
        .unwrap_or("AMBER")
        .to_lowercase();
    let mut attributes = Vec::new();
    let mut attr = |value: &str, comment: &str, category: &str| {
        attributes.push(json!({
            "type": "text", "category": category, "value": value, "comment": comment,
            "to_ids": false,
        }));
    };
    for i in items(record) {
        for (field, comment) in [
            ("lot", "lot number (as recorded)"),
            ("headstamp", "headstamp transcription"),
            ("calibre", "calibre (as recorded)"),
        ] {
            if let Some(v) = i[field].as_str() {
                attr(v, comment, "Other");
            }
        }
        if let Some(q) = i["quantity"].as_u64() {
            attr(
                &format!("{q} {}", i["unit"].as_str().unwrap_or("")),
                "quantity",
                "Other",
            );
        }
    }
    if let Some(c) = str_at(record, "/event/location/country") {
        attr(c, "country of seizure (ISO 3166-1 alpha-3)", "Other");
    }
    json!({
        "Event": {
            "uuid": id,
            "info": format!("Seizure of conventional ammunition recorded by {origin}"),
            "date": date.get(..10).unwrap_or(date),
            "threat_level_id": "4",
            "analysis": "2",
            "distribution": "0",
            "Orgc": { "name": origin },
            "Tag": [{ "name": format!("tlp:{tlp}") }, { "name": "ammotrace:lossy-view" }],
            "Attribute": attributes,
        }
    })
}

/// Records as a STIX 2.1 bundle: one `report` per record (with the items as a custom
/// property), created by an `identity` for each originating State.
pub fn stix_bundle(records: &[Value], now: &str) -> Value {
    let mut objects = Vec::new();
    let mut identities = std::collections::BTreeSet::new();
    for record in records {
        let origin = record["originating_state"].as_str().unwrap_or("unknown");
        let identity = format!("identity--{}", name_uuid(origin));
        if identities.insert(identity.clone()) {
            objects.push(json!({
                "type": "identity", "spec_version": "2.1", "id": identity,
                "created": now, "modified": now, "name": origin, "identity_class": "organization",
            }));
        }
        let created = str_at(record, "/created_at").unwrap_or(now);
        let updated = str_at(record, "/updated_at").unwrap_or(created);
        let tlp = str_at(record, "/sharing/tlp").unwrap_or("AMBER");
        objects.push(json!({
            "type": "report",
            "spec_version": "2.1",
            "id": format!("report--{}", bare_uuid(record["record_id"].as_str().unwrap_or_default())),
            "created": created,
            "modified": updated,
            "created_by_ref": identity,
            "name": format!("Ammunition seizure recorded by {origin}"),
            "published": str_at(record, "/event/date/start").map(|d| {
                if d.len() == 10 { format!("{d}T00:00:00Z") } else { now.to_owned() }
            }),
            "report_types": ["observed-data"],
            "object_refs": [identity],
            "labels": [format!("tlp:{}", tlp.to_lowercase()), "ammotrace:lossy-view".to_owned()],
            "x_ammotrace_record_version": record.get("record_version"),
            "x_ammotrace_seizing_country": str_at(record, "/event/location/country"),
            "x_ammotrace_items": items(record),
        }));
    }
    json!({
        "type": "bundle",
        "id": format!("bundle--{}", uuid::Uuid::now_v7()),
        "objects": objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misp_and_stix_carry_the_pivots_only() {
        let record = json!({
            "record_id": "urn:uuid:018f2a10-0000-7000-8000-000000000001", "record_version": 2,
            "originating_state": "XAA", "created_at": "2024-07-01T12:00:00Z",
            "event": {"date": {"start": "2024-06-29"}, "location": {"country": "XAA", "place_name": "Port A"}},
            "items": [{"item_id": "i1", "item_category": "small_arms_ammunition",
                       "lot": {"raw": "21-85 539"}, "calibre": {"raw": "7.62x39"},
                       "quantity": {"count": 1080, "unit": "rounds"}}],
            "case_refs": [{"ref": "C-1"}],
            "sharing": {"tlp": "GREEN"}
        });
        let misp = misp_event(&record);
        assert_eq!(
            misp["Event"]["uuid"],
            "018f2a10-0000-7000-8000-000000000001"
        );
        assert_eq!(misp["Event"]["Tag"][0]["name"], "tlp:green");
        let values: Vec<&str> = misp["Event"]["Attribute"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["value"].as_str())
            .collect();
        assert!(values.contains(&"21-85 539") && values.contains(&"1080 rounds"));
        let stix = stix_bundle(&[record.clone(), record], "2026-01-01T00:00:00Z");
        let objects = stix["objects"].as_array().unwrap();
        assert_eq!(
            objects.iter().filter(|o| o["type"] == "identity").count(),
            1
        );
        assert_eq!(objects.iter().filter(|o| o["type"] == "report").count(), 2);
        assert_eq!(objects[1]["object_refs"][0], objects[0]["id"]);
        assert!(!stix.to_string().contains("C-1") && !stix.to_string().contains("Port A"));
    }
}
