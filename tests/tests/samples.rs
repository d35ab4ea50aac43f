//! The shared sample records and the dev set go through real nodes and come back unchanged
//! (apart from what the node adds: ids, versions, times it lacked, and `derived` objects).

use std::collections::BTreeMap;

use ammotrace_e2e::{TestNode, shared_data};
use serde_json::{Value, json};

/// Removes what the node added to `stored` relative to `submitted`.
fn as_submitted(stored: &Value, submitted: &Value) -> Value {
    let mut copy = ammotrace::record::without_node_fields(stored);
    if let (Some(c), Some(s)) = (copy.as_object_mut(), submitted.as_object()) {
        for key in [
            "record_id",
            "record_version",
            "created_at",
            "updated_at",
            "schema_version",
        ] {
            if !s.contains_key(key) {
                c.remove(key);
            }
        }
    }
    copy
}

fn by_state(records: Vec<Value>) -> BTreeMap<String, Vec<Value>> {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        let state = r["originating_state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        map.entry(state).or_default().push(r);
    }
    map
}

#[tokio::test]
async fn samples_round_trip_unchanged() {
    let dir = shared_data().join("samples");
    let mut samples = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("../shared/data/samples beside the checkout") {
        let path = entry.unwrap().path();
        samples
            .push(serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap()).unwrap());
    }
    assert_eq!(samples.len(), 4);
    for (state, records) in by_state(samples) {
        let node = TestNode::spawn(&state).await.unwrap();
        for submitted in records {
            let a = node.post_record(&submitted).await.unwrap();
            assert_eq!(a.status, 201, "{state}: {:?}", a.body);
            let id = a.body["record_id"].as_str().unwrap().to_owned();
            assert_eq!(id, submitted["record_id"].as_str().unwrap());
            let got = node.get_record(&id).await.unwrap();
            assert_eq!(as_submitted(&got.body, &submitted), submitted);
            // Derived keys sit beside the raw text, with the normaliser version.
            for item in got.body["items"].as_array().unwrap() {
                if item.get("lot").is_some() {
                    assert!(item["lot"]["derived"]["key"].is_string(), "{item}");
                }
            }
        }
    }
}

#[tokio::test]
async fn dev_set_imports_and_exports_unchanged() {
    let text =
        std::fs::read_to_string(shared_data().join("dev-set/records.jsonl")).expect("dev set");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let total = records.len();
    let mut seen = 0;
    for (state, records) in by_state(records) {
        let node = TestNode::spawn(&state).await.unwrap();
        let body: String = records.iter().map(|r| format!("{r}\n")).collect();
        let a = node
            .import("application/x-ndjson", body.into_bytes(), "")
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{state}: {:?}", a.body);
        assert_eq!(a.body["accepted"].as_u64(), Some(records.len() as u64));
        let exported: BTreeMap<String, Value> = node
            .export_lines()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r["record_id"].as_str().unwrap().to_owned(), r))
            .collect();
        assert_eq!(exported.len(), records.len());
        for submitted in &records {
            let stored = &exported[submitted["record_id"].as_str().unwrap()];
            assert_eq!(as_submitted(stored, submitted), *submitted);
        }
        seen += records.len();
    }
    assert_eq!(seen, total);
}

/// The index reads an item's keys from its stored `derived` objects (written by the same
/// normaliser) instead of normalising again: for every item of the dev set and the samples,
/// both ways give the same keys.
#[test]
fn index_keys_from_derived_equal_recomputed_keys() {
    use ammotrace::record::{IndexKeys, ItemKeys, derive};
    let text =
        std::fs::read_to_string(shared_data().join("dev-set/records.jsonl")).expect("dev set");
    let mut checked = 0;
    let mut with_lot = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut record: Value = serde_json::from_str(line).unwrap();
        // Shorthand strings as the node reads them.
        for item in record["items"].as_array_mut().unwrap() {
            for key in ["calibre", "lot"] {
                if let Some(raw) = item[key].as_str().map(str::to_owned) {
                    item[key] = json!({ "raw": raw });
                }
            }
            if let Some(raw) = item["headstamp"].as_str().map(str::to_owned) {
                item["headstamp"] = json!({ "present": true, "raw_transcription": raw });
            }
        }
        derive(&mut record);
        for item in record["items"].as_array().unwrap() {
            let item = item.as_object().unwrap();
            let recomputed = IndexKeys::from(&ItemKeys::from_item(item));
            if let Some(read) = IndexKeys::from_derived(item) {
                assert_eq!(read, recomputed, "{item:?}");
                checked += 1;
                with_lot += usize::from(read.lot.is_some());
            }
            assert_eq!(IndexKeys::of(item), recomputed);
        }
    }
    assert!(
        checked > 6000 && with_lot > 5000,
        "{checked} items read, {with_lot} with a lot"
    );
}
