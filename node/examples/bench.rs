//! Benchmark helper for `scripts/bench.sh`.
//!
//! - `bench limits`: the physical limits on this machine (ed25519 sign/verify of 1.5 KB,
//!   sled inserts of 1.5 KB values with a flush every 1,000, tantivy indexing in one commit,
//!   and the node's own store write: `Store::create_batch` of already validated and signed
//!   records, in batches of 5,000, each flushed: what an import costs sled alone), and the
//!   reference pipelines of dependencies.md, one thread: serialise + sign + sled + tantivy
//!   (write) and parse + verify + sled + tantivy (receive).
//! - `bench gen N FILE`: N synthetic one-item records as JSON Lines (deterministic).
//! - `bench latency URL TOKEN N TOTAL`: p50/p99 of `GET /api/v1/search` for exact, confusable,
//!   wildcard and fuzzy lot queries on lots that `gen` made (TOTAL = records generated).

use std::io::Write;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey, Verifier};
use serde_json::json;
use tantivy::schema::{STORED, STRING, Schema};

const MAKERS: [(&str, &str, &str); 6] = [
    ("LC", "LC", "5.56x45mm NATO"),
    ("WCC", "WCC", "7.62x51mm NATO"),
    ("FC", "FC", "5.56x45"),
    ("PPU", "PPU", "9mm Luger"),
    ("MKE", "MKE", "7.62x39"),
    ("IVI", "IVI", "5.56 NATO"),
];

/// The lot of synthetic record `i`: MIL-STD-1168 shaped and unique per `i`.
fn lot(i: u64) -> String {
    let (maker, _, _) = MAKERS[(i % 6) as usize];
    let year = 10 + (i / 6) % 15;
    let month = b"ABCDEFGHJKLM"[((i / 90) % 12) as usize] as char;
    let n = i / 1080;
    format!("{maker}{year}{month}{:03}-{:03}", n / 1000, n % 1000)
}

fn record(i: u64) -> serde_json::Value {
    let (_, code, calibre) = MAKERS[(i % 6) as usize];
    let year = 10 + (i / 6) % 15;
    json!({
        "originating_state": "XAA",
        "event": {"event_type": "seizure", "context": ["trafficking_interdiction"],
                  "date": {"start": format!("20{:02}-{:02}-{:02}", 15 + i % 10, 1 + i % 12, 1 + i % 28), "precision": "day"},
                  "location": {"country": "XAA", "precision": "settlement", "place_name": format!("site-{}", i % 500)},
                  "seizing_agency": {"type": "customs"}},
        "items": [{"item_id": "i1", "item_category": "small_arms_ammunition",
                   "calibre": {"raw": calibre}, "headstamp": {"present": true, "raw_transcription": format!("{code} {year}")},
                   "lot": {"raw": lot(i)}, "quantity": {"count": 100 + i % 5000, "unit": "rounds"}}],
        "sharing": {"tlp": "GREEN"},
        "notes": "synthetic benchmark record with a note of ordinary length to make the record about as large as a real one"
    })
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn limits() -> anyhow::Result<()> {
    let message = vec![7u8; 1536];
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let n = 20_000u64;
    let t = Instant::now();
    let mut sig = key.sign(&message);
    for _ in 0..n {
        sig = key.sign(&message);
    }
    let sign = rate(n, t.elapsed());
    let vk = key.verifying_key();
    let t = Instant::now();
    for _ in 0..n {
        vk.verify(&message, &sig)?;
    }
    let verify = rate(n, t.elapsed());

    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path().join("sled"))?;
    let value = vec![1u8; 1536];
    let n = 100_000u64;
    let t = Instant::now();
    for i in 0..n {
        db.insert(i.to_be_bytes(), value.as_slice())?;
        if i % 1000 == 999 {
            db.flush()?;
        }
    }
    db.flush()?;
    let sled_rate = rate(n, t.elapsed());

    let mut b = Schema::builder();
    let id = b.add_text_field("id", STRING | STORED);
    let lot_f = b.add_text_field("lot", STRING);
    let cal = b.add_text_field("calibre", STRING);
    std::fs::create_dir_all(dir.path().join("tantivy"))?;
    let index = tantivy::Index::create_in_dir(dir.path().join("tantivy"), b.build())?;
    let mut writer: tantivy::IndexWriter = index.writer(256 * 1024 * 1024)?;
    let n = 300_000u64;
    let t = Instant::now();
    for i in 0..n {
        writer.add_document(
            tantivy::doc!(id => i.to_string(), lot_f => lot(i), cal => "5.56x45-nato"),
        )?;
    }
    writer.commit()?;
    let tantivy_rate = rate(n, t.elapsed());
    let (store_rate, store_bytes) = store_write(&dir.path().join("store"))?;
    let (write_rate, receive_rate) = pipelines(dir.path())?;
    println!(
        "{}",
        json!({"sign_per_s": sign.round(), "verify_per_s": verify.round(), "sled_insert_per_s": sled_rate.round(), "tantivy_docs_per_s": tantivy_rate.round(),
               "store_write_per_s": store_rate.round(), "store_bytes_per_record": store_bytes.round(),
               "write_pipeline_per_s": write_rate.round(), "receive_pipeline_per_s": receive_rate.round()})
    );
    Ok(())
}

/// The least work an import and a sync receiver can do per record, one thread, no HTTP:
/// dependencies.md's reference pipeline ("serialize + sign + sled + tantivy"). Write: a synthetic
/// record serialised canonically (RFC 8785), signed, inserted in sled with its signature (a flush
/// every 1,000) and indexed by lot and calibre (one commit). Receive: the same bytes parsed back
/// to JSON, the signature verified, the record inserted in a second sled and indexed. Returns
/// records/s for each. No validation, normalisation, selective disclosure, compression or
/// change log: the gap between these and the node's rates is the node's own work.
fn pipelines(dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let vk = key.verifying_key();
    let n = 50_000u64;
    let index_at = |name: &str| -> anyhow::Result<_> {
        let mut b = Schema::builder();
        let id = b.add_text_field("id", STRING | STORED);
        let lot_f = b.add_text_field("lot", STRING);
        let cal = b.add_text_field("calibre", STRING);
        std::fs::create_dir_all(dir.join(name))?;
        let index = tantivy::Index::create_in_dir(dir.join(name), b.build())?;
        let writer: tantivy::IndexWriter = index.writer(256 * 1024 * 1024)?;
        Ok((writer, id, lot_f, cal))
    };
    let records: Vec<serde_json::Value> = (0..n).map(record).collect();

    let db = sled::open(dir.join("pipeline-write"))?;
    let (mut writer, id, lot_f, cal) = index_at("pipeline-write-index")?;
    let mut sent = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for (i, r) in records.iter().enumerate() {
        let bytes = serde_jcs::to_vec(r)?;
        let sig = key.sign(&bytes);
        let mut value = bytes;
        value.extend_from_slice(&sig.to_bytes());
        db.insert((i as u64).to_be_bytes(), value.as_slice())?;
        if i % 1000 == 999 {
            db.flush()?;
        }
        writer.add_document(
            tantivy::doc!(id => i.to_string(), lot_f => lot(i as u64), cal => "5.56x45-nato"),
        )?;
        sent.push(value);
    }
    db.flush()?;
    writer.commit()?;
    let write = rate(n, t.elapsed());

    let db = sled::open(dir.join("pipeline-receive"))?;
    let (mut writer, id, lot_f, cal) = index_at("pipeline-receive-index")?;
    let t = Instant::now();
    for (i, value) in sent.iter().enumerate() {
        let (bytes, sig) = value.split_at(value.len() - 64);
        let record: serde_json::Value = serde_json::from_slice(bytes)?;
        vk.verify(bytes, &ed25519_dalek::Signature::from_slice(sig)?)?;
        db.insert((i as u64).to_be_bytes(), value.as_slice())?;
        if i % 1000 == 999 {
            db.flush()?;
        }
        let lot_text = record["items"][0]["lot"]["raw"]
            .as_str()
            .unwrap_or_default();
        writer.add_document(
            tantivy::doc!(id => i.to_string(), lot_f => lot_text, cal => "5.56x45-nato"),
        )?;
    }
    db.flush()?;
    writer.commit()?;
    Ok((write, rate(n, t.elapsed())))
}

/// Hands the store envelopes signed beforehand, so that only the store's work is timed.
struct Presealed(std::sync::Mutex<Vec<ammotrace::store::Sealed>>);

impl ammotrace::store::Sealer for Presealed {
    type Pending = ();

    fn prepare(&self, _item: &ammotrace::store::ToSeal<'_>) -> Result<(), String> {
        Ok(())
    }

    fn seal(
        &self,
        _batch: Vec<()>,
        _first_seq: u64,
        _prev: &str,
    ) -> Result<Vec<ammotrace::store::Sealed>, String> {
        Ok(std::mem::take(
            &mut *self.0.lock().map_err(|_| "poisoned".to_owned())?,
        ))
    }
}

/// The node's own write alone: `Store::create_batch` and a flush per batch of 5,000 synthetic
/// records, validated, normalised and signed beforehand (untimed). Returns records/s and the
/// store's bytes on disk per record.
fn store_write(path: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    use ammotrace::store::Sealer;
    let store = ammotrace::store::Store::open(path)?;
    let validator = ammotrace::record::Validator::new("XAA");
    let sealer = ammotrace::envelope::NodeSealer {
        origin: "XAA".into(),
        key: SigningKey::from_bytes(&[42u8; 32]),
    };
    let (batches, size) = (10u64, 5_000u64);
    let mut timed = Duration::ZERO;
    for b in 0..batches {
        let mut batch = (b * size..(b + 1) * size)
            .map(|i| {
                validator
                    .prepare(record(i), "2026-01-01T00:00:00Z")
                    .map_err(|e| anyhow::anyhow!("synthetic record {i} is invalid: {e:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // What create_batch will seal, sealed here (record_version set as it sets it).
        for p in &mut batch {
            if let Some(o) = p.record.as_object_mut() {
                o.insert("record_version".into(), json!(1));
            }
        }
        let pending = batch
            .iter()
            .map(|p| {
                sealer.prepare(&ammotrace::store::ToSeal {
                    record: &p.record,
                    retracted: false,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let sealed = sealer
            .seal(pending, b * size + 1, "")
            .map_err(anyhow::Error::msg)?;
        let presealed = Presealed(std::sync::Mutex::new(sealed));
        let t = Instant::now();
        store.create_batch(&mut batch, &presealed)?;
        store.flush()?;
        timed += t.elapsed();
    }
    let n = batches * size;
    Ok((rate(n, timed), store.size_on_disk() as f64 / n as f64))
}

fn gen_records(n: u64, path: &str) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        serde_json::to_writer(&mut out, &record(i))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn variant(kind: &str, lot: &str, salt: u64) -> String {
    let chars: Vec<char> = lot.chars().collect();
    match kind {
        "confusable" => {
            // One digit read as its look-alike letter.
            let swap = |c: char| match c {
                '0' => Some('O'),
                '1' => Some('I'),
                '5' => Some('S'),
                '8' => Some('B'),
                '2' => Some('Z'),
                _ => None,
            };
            let mut out = chars.clone();
            let positions: Vec<usize> = (0..chars.len())
                .filter(|&i| swap(chars[i]).is_some())
                .collect();
            if let Some(&p) = positions.get((salt as usize) % positions.len().max(1)) {
                out[p] = swap(chars[p]).unwrap_or(chars[p]);
            }
            out.into_iter().collect()
        }
        "wildcard" => {
            let mut out = chars.clone();
            let p = chars.len() - 1 - (salt as usize % 4);
            out[p] = '?';
            out.into_iter().collect()
        }
        "fuzzy" => {
            let mut out = chars.clone();
            out.remove(chars.len() - 2 - (salt as usize % 3));
            out.into_iter().collect()
        }
        _ => lot.to_owned(),
    }
}

async fn latency(url: &str, token: &str, n: u64, total: u64) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    // Extra query parameters for every search, e.g. BENCH_EXTRA="scope=federated&purpose=b&case_ref=b".
    let extra: Vec<(String, String)> = std::env::var("BENCH_EXTRA")
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // Warm the page cache and the connection first: the figures are for a node in service.
    for q in 0..n.min(400) {
        let l = lot((q * 104_729 + 7) % total);
        let query = variant(
            ["exact", "confusable", "wildcard", "fuzzy"][(q % 4) as usize],
            &l,
            q,
        );
        http.get(format!("{url}/api/v1/search"))
            .bearer_auth(token)
            .query(&[("lot", query.as_str()), ("limit", "10")])
            .query(&extra)
            .send()
            .await?
            .bytes()
            .await?;
    }
    let mut report = serde_json::Map::new();
    for kind in ["exact", "confusable", "wildcard", "fuzzy"] {
        let mut times = Vec::with_capacity(n as usize);
        let mut found = 0u64;
        for q in 0..n {
            let i = (q * 7919 + 13) % total;
            let l = lot(i);
            let query = variant(kind, &l, q);
            let t = Instant::now();
            let response = http
                .get(format!("{url}/api/v1/search"))
                .bearer_auth(token)
                .query(&[("lot", query.as_str()), ("limit", "10")])
                .query(&extra)
                .send()
                .await?;
            let body: serde_json::Value = response.json().await?;
            times.push(t.elapsed());
            if body["hits"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["item"]["lot"]["raw"] == l.as_str()))
            {
                found += 1;
            }
        }
        times.sort();
        let pct = |p: f64| {
            times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1000.0
        };
        report.insert(kind.into(), json!({"p50_ms": pct(0.50), "p99_ms": pct(0.99), "found_share": found as f64 / n as f64, "queries": n}));
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

/// Statistics over N one-item seizures in 20 countries: the facts are built once (as the
/// node's cache does), then two-dimension tables with suppression are timed.
fn stats(n: u64) -> anyhow::Result<()> {
    use ammotrace::stats::{Dim, Facts, Params, table};
    let t = Instant::now();
    // Records are derived on two threads (the node stores them derived); facts are interned
    // on one, as the node's cache does.
    let build = |range: std::ops::Range<u64>| -> Vec<serde_json::Value> {
        range
            .map(|i| {
                let mut r = record(i);
                let country = format!(
                    "X{}{}",
                    (b'A' + (i % 20) as u8) as char,
                    (b'A' + (i / 20 % 3) as u8) as char
                );
                r["originating_state"] = json!(country);
                r["event"]["location"]["country"] = json!(country);
                ammotrace::record::derive(&mut r);
                r
            })
            .collect()
    };
    let records: Vec<serde_json::Value> = std::thread::scope(|s| {
        let second = s.spawn(|| build(n / 2..n));
        let mut first = build(0..n / 2);
        first.extend(second.join().unwrap_or_default());
        first
    });
    let derived = t.elapsed();
    let t = Instant::now();
    let mut facts = Facts::default();
    for r in &records {
        facts.set(ammotrace::record::RecordId(uuid::Uuid::now_v7()), Some(r));
    }
    drop(records);
    let built = t.elapsed();
    let mut report = serde_json::Map::new();
    for dims in [
        [Dim::SeizingCountry, Dim::Calibre],
        [Dim::Calibre, Dim::YearOfManufacture],
        [Dim::SeizingCountry, Dim::Quarter],
    ] {
        let params = Params {
            group_by: dims.to_vec(),
            k: 5,
            ..Params::default()
        };
        let mut times = Vec::new();
        let mut cells = 0;
        for _ in 0..30 {
            let t = Instant::now();
            let out = table(&facts, &params);
            times.push(t.elapsed());
            cells = out.cells.len();
        }
        times.sort();
        let pct = |p: f64| {
            times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1000.0
        };
        report.insert(
            format!("{}×{}", dims[0].name(), dims[1].name()),
            json!({"p50_ms": pct(0.5), "p99_ms": pct(0.99), "cells": cells}),
        );
    }
    println!(
        "{}",
        json!({"items": n, "derive_s": derived.as_secs_f64(), "facts_build_s": built.as_secs_f64(), "tables": report})
    );
    Ok(())
}

/// Where the time of one record's write goes, without HTTP or sled.
fn prepare(n: u64) -> anyhow::Result<()> {
    use ammotrace::normalise::{calibre::CalibreTable, headstamp, lot};
    let records: Vec<serde_json::Value> = (0..n).map(record).collect();
    let validator = ammotrace::record::Validator::new("XAA");
    let time = |name: &str, f: &mut dyn FnMut(&serde_json::Value)| {
        let t = Instant::now();
        for r in &records {
            f(r);
        }
        println!(
            "{name:>12}: {:>8.1} µs/record",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    };
    time("prepare", &mut |r| {
        let _ = validator.prepare(r.clone(), "2026-01-01T00:00:00Z");
    });
    let schema: serde_json::Value = serde_json::from_str(ammotrace::record::SCHEMA_JSON)?;
    let compiled = jsonschema::validator_for(&schema).map_err(|e| anyhow::anyhow!("{e}"))?;
    time("schema", &mut |r| {
        let _ = compiled.is_valid(r);
    });
    time("derive", &mut |r| {
        let mut v = r.clone();
        ammotrace::record::derive(&mut v);
    });
    time("clone", &mut |r| {
        let _ = r.clone();
    });
    time("lot", &mut |r| {
        let _ = lot::normalise(r["items"][0]["lot"]["raw"].as_str().unwrap_or_default());
    });
    time("headstamp", &mut |r| {
        let _ = headstamp::normalise(
            r["items"][0]["headstamp"]["raw_transcription"]
                .as_str()
                .unwrap_or_default(),
        );
    });
    time("calibre", &mut |r| {
        let _ = CalibreTable::embedded()
            .resolve(r["items"][0]["calibre"]["raw"].as_str().unwrap_or_default());
    });
    time("to_vec", &mut |r| {
        let _ = serde_json::to_vec(r);
    });
    Ok(())
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["limits"] => limits(),
        ["gen", n, path] => gen_records(n.parse()?, path),
        ["latency", url, token, n, total] => latency(url, token, n.parse()?, total.parse()?).await,
        ["prepare", n] => prepare(n.parse()?),
        ["stats", n] => stats(n.parse()?),
        _ => anyhow::bail!("usage: bench limits | gen N FILE | latency URL TOKEN N TOTAL"),
    }
}
