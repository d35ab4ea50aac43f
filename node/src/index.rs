//! The derived search index: one tantivy document per item, fed from the store's change log.
//!
//! This is the only module that imports tantivy. The indexer thread tails the change log from
//! its watermark (the sequence number of the last change it committed, kept in the tantivy
//! commit payload), so after a crash it replays what it missed; `ammotrace reindex` rebuilds
//! the whole index from the store. While tailing, keys are read from each item's stored
//! `derived` objects when the current normaliser version wrote them, else recomputed from the
//! raw text ([`IndexKeys::of`]); `reindex` always recomputes them from the raw text, so new
//! rules and tables take effect whether or not the version was bumped.
//!
//! Search callers describe what they want with [`CandidateQuery`]; this module turns it into
//! tantivy queries and returns [`Candidate`]s with the stored keys the ranker needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query, RangeQuery, RegexQuery,
    TermQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TantivyDocument, Value as _,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Term};
use tokio::sync::watch;

use crate::record::{DerivedItem, EventKeys, EventSummary, IndexKeys, ItemKeys, RecordId};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("index directory: {0}")]
    Directory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad query: {0}")]
    Query(String),
}

#[derive(Clone, Copy)]
struct Fields {
    record_id: Field,
    item_id: Field,
    origin: Field,
    version: Field,
    lot_folded: Field,
    lot_key: Field,
    lot_id: Field,
    lot_skel: Field,
    /// Skeletons of lots with a worn (`?`) character only: a small dictionary that complete
    /// queries scan with a pattern.
    lot_worn: Field,
    hs: Field,
    hs_skel: Field,
    calibre: Field,
    family: Field,
    category: Field,
    country: Field,
    date: Field,
    maker: Field,
    year: Field,
    /// The item and its event summary as JSON: what a hit shows, without a store read.
    hit: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        record_id: b.add_text_field("record_id", STRING | STORED),
        item_id: b.add_text_field("item_id", STORED),
        origin: b.add_text_field("origin", STRING | STORED),
        version: b.add_u64_field("version", STORED),
        lot_folded: b.add_text_field("lot_folded", STORED),
        lot_key: b.add_text_field("lot_key", STRING | STORED),
        lot_id: b.add_text_field("lot_id", STRING | STORED),
        lot_skel: b.add_text_field("lot_skel", STRING),
        lot_worn: b.add_text_field("lot_worn", STRING),
        hs: b.add_text_field("hs", STRING | STORED),
        hs_skel: b.add_text_field("hs_skel", STRING),
        calibre: b.add_text_field("calibre", STRING | STORED),
        family: b.add_text_field("family", STRING | STORED),
        category: b.add_text_field("category", STRING | STORED),
        country: b.add_text_field("country", STRING | STORED),
        date: b.add_i64_field("date", INDEXED | FAST | STORED),
        maker: b.add_text_field("maker", STRING | STORED),
        year: b.add_i64_field("year", STORED),
        // Stored as text, not bytes: tantivy reads a stored bytes value one byte at a time
        // (`Vec<u8>` deserialisation), which was a sixth of a search's time at 1M items.
        hit: b.add_text_field("hit", STORED),
    };
    (b.build(), fields)
}

/// What the ranker gets back for each candidate item.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub record_id: String,
    pub item_id: String,
    pub origin: String,
    pub version: u64,
    pub lot_folded: String,
    pub lot_key: String,
    /// The lot's identity key (`maker|YYYY|lot`), empty when it has none.
    pub lot_identity: String,
    pub headstamp: Vec<String>,
    pub calibres: Vec<String>,
    pub families: Vec<String>,
    pub category: String,
    pub country: String,
    pub date: i64,
    pub maker: String,
    pub year: i64,
    /// `{"item": …, "event": …}` as JSON bytes.
    pub hit: Vec<u8>,
    /// The index's own score (only used to bound how many candidates are fetched).
    pub retrieval_score: f32,
}

/// The candidate-generation part of a search, built by `search`.
#[derive(Debug, Clone, Default)]
pub struct CandidateQuery {
    /// Lot clauses (any may match): exact key, identity key, skeleton, wildcard pattern, fuzzy
    /// skeleton.
    pub lot_key: Option<String>,
    pub lot_identity: Option<String>,
    pub lot_skeleton: Option<String>,
    /// A regular expression over skeletons (wildcards already translated).
    pub lot_regex: Option<String>,
    /// A pattern for stored lots with worn characters (scanned only among those).
    pub lot_worn_regex: Option<String>,
    pub lot_fuzzy: Option<(String, u8)>,
    /// Headstamp tokens (skeletons) and token regexes, any may match.
    pub headstamp_skeletons: Vec<String>,
    pub headstamp_regexes: Vec<String>,
    /// Calibre ids and families: required when `calibre_required`, otherwise a boost.
    pub calibres: Vec<String>,
    pub families: Vec<String>,
    pub calibre_required: bool,
    /// Free text (`q`) tried both as a lot and as headstamp tokens: either may match, where an
    /// explicit lot must match and headstamp tokens only add to it.
    pub lot_or_headstamp: bool,
    /// Filters.
    pub category: Option<String>,
    pub country: Option<String>,
    pub date_from: Option<i64>,
    pub date_to: Option<i64>,
    pub limit: usize,
}

struct Shared {
    reader: IndexReader,
    fields: Fields,
    /// Item documents built by writers while the record was still in memory, by record
    /// version, waiting for the indexer (see [`SearchIndex::offer`]).
    prebuilt: Mutex<HashMap<(RecordId, u32), Prebuilt>>,
    /// Numbers the offers, so a writer withdraws only what it offered.
    tickets: AtomicU64,
    /// A writer has ended a bulk write ([`SearchIndex::bulk_done`]): commit at the next round.
    bulk_done: AtomicBool,
}

/// The item documents of one record version, built by its writer (see
/// [`SearchIndex::documents`]).
pub struct Documents {
    id: RecordId,
    version: u32,
    docs: Vec<TantivyDocument>,
}

/// Documents waiting for the indexer.
struct Prebuilt {
    ticket: u64,
    docs: Vec<TantivyDocument>,
}

/// What one [`SearchIndex::offer`] put in place, to withdraw if the write fails.
#[must_use = "withdraw the offer if the write fails"]
pub struct Offered {
    ticket: u64,
    keys: Vec<(RecordId, u32)>,
}

/// At most this many changes wait in [`Shared::prebuilt`]; beyond it, offers are dropped and
/// the indexer reads those records back from the store (bounds memory when it falls behind).
const MAX_PREBUILT: usize = 50_000;

/// The index: a reader for searches and a background indexer thread.
pub struct SearchIndex {
    shared: Arc<Shared>,
    watermark: watch::Receiver<u64>,
    wake: Mutex<mpsc::Sender<()>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn open_index(path: &Path) -> Result<(Index, Fields), IndexError> {
    std::fs::create_dir_all(path)?;
    let (schema, fields) = schema();
    let index = match Index::open_or_create(MmapDirectory::open(path)?, schema.clone()) {
        Ok(index) => index,
        // An index written by another version of the node: it is derived, so start afresh
        // (the indexer then replays the whole change log).
        Err(tantivy::TantivyError::SchemaError(e)) => {
            tracing::warn!(error = %e, path = %path.display(), "index schema changed; rebuilding the index");
            std::fs::remove_dir_all(path)?;
            std::fs::create_dir_all(path)?;
            Index::open_or_create(MmapDirectory::open(path)?, schema)?
        }
        Err(e) => return Err(e.into()),
    };
    Ok((index, fields))
}

fn watermark_of(index: &Index) -> Result<u64, IndexError> {
    Ok(index
        .load_metas()?
        .payload
        .and_then(|p| p.parse().ok())
        .unwrap_or(0))
}

/// `recompute`: normalise the raw text again even where the stored `derived` objects carry
/// the current normaliser version (what `reindex` does, so new rules always take effect).
fn add_item_docs(
    writer: &IndexWriter,
    fields: &Fields,
    id: &RecordId,
    version: u32,
    record: &serde_json::Value,
    recompute: bool,
) -> Result<(), IndexError> {
    let keys = if recompute {
        Keys::Recompute
    } else {
        Keys::Stored
    };
    for d in item_docs(fields, id, version, record, keys) {
        writer.add_document(d)?;
    }
    Ok(())
}

/// The stored `hit` field: `{"item": …, "event": …}`, written without copying the item.
#[derive(serde::Serialize)]
struct Hit<'a, I> {
    item: &'a I,
    event: &'a EventSummary<'a>,
}

/// The JSON of a [`Hit`].
fn hit_json<I: serde::Serialize>(item: &I, event: &EventSummary<'_>) -> String {
    serde_json::to_string(&Hit { item, event }).unwrap_or_default()
}

/// Where [`item_docs`] takes each item's search keys from.
enum Keys {
    /// Read from the item's `derived` objects ([`IndexKeys::of`]).
    Stored,
    /// Normalised again from the raw text (`reindex`).
    Recompute,
    /// Computed as the record was written, one per object item in order
    /// ([`crate::record::item_keys`]), for a record without its `derived` objects: the hit
    /// shows them as [`crate::record::derive`] would. Items beyond them are read as `Stored`.
    Given(Vec<ItemKeys>),
}

/// One document per item of a record version.
fn item_docs(
    fields: &Fields,
    id: &RecordId,
    version: u32,
    record: &serde_json::Value,
    keys: Keys,
) -> Vec<TantivyDocument> {
    let event = EventKeys::from_record(record);
    let Some(items) = record.get("items").and_then(|v| v.as_array()) else {
        return Vec::new();
    };
    let summary = EventSummary::of(record);
    let mut docs = Vec::with_capacity(items.len());
    for (n, item) in items.iter().filter_map(|i| i.as_object()).enumerate() {
        let (keys, hit) = match &keys {
            Keys::Given(given) if n < given.len() => {
                let derived = given[n].derived(item);
                let item = DerivedItem {
                    item,
                    derived: &derived,
                };
                (IndexKeys::from(&given[n]), hit_json(&item, &summary))
            }
            Keys::Recompute => (
                IndexKeys::from(&ItemKeys::from_item(item)),
                hit_json(item, &summary),
            ),
            Keys::Given(_) | Keys::Stored => (IndexKeys::of(item), hit_json(item, &summary)),
        };
        // Sized for the `hit` text and the keys, so adding them does not regrow its bytes.
        let mut d = TantivyDocument::with_capacity(hit.len() + 1024);
        d.add_text(fields.record_id, id.to_string());
        d.add_text(fields.item_id, keys.item_id);
        d.add_text(fields.origin, &event.origin);
        d.add_u64(fields.version, u64::from(version));
        d.add_text(fields.category, keys.category);
        d.add_text(fields.country, &event.country);
        d.add_i64(fields.date, event.date_key);
        d.add_text(fields.hit, hit);
        if let Some((folded, key, skeleton)) = &keys.lot {
            d.add_text(fields.lot_folded, folded);
            d.add_text(fields.lot_key, key);
            d.add_text(fields.lot_skel, skeleton);
            if skeleton.contains('?') {
                d.add_text(fields.lot_worn, skeleton);
            }
        }
        if let Some(identity) = &keys.identity {
            d.add_text(fields.lot_id, identity);
        }
        for token in &keys.headstamp_tokens {
            d.add_text(fields.hs, token);
            d.add_text(fields.hs_skel, crate::normalise::fold::skeleton(token));
        }
        for c in &keys.calibres {
            d.add_text(fields.calibre, c);
        }
        for f in &keys.families {
            d.add_text(fields.family, f);
        }
        if let Some(maker) = &keys.maker {
            d.add_text(fields.maker, maker);
        }
        if let Some(year) = keys.year {
            d.add_i64(fields.year, year);
        }
        docs.push(d);
    }
    docs
}

/// Adds the changes after `watermark` (the last change added) to the writer, without
/// committing; returns the last change added and how many changes were read (`batch` at most:
/// when it is reached, more may be waiting).
fn catch_up(
    store: &Store,
    shared: &Shared,
    writer: &mut IndexWriter,
    mut watermark: u64,
    batch: usize,
) -> Result<(u64, usize), IndexError> {
    // Only changes on disk: a change a crash can still take from the store must not be
    // committed to the index, which would then be ahead of the store after a restart.
    let durable = store.durable_seq();
    if durable <= watermark {
        return Ok((watermark, 0));
    }
    let wanted = usize::try_from(durable - watermark).map_or(batch, |n| n.min(batch));
    let mut changes = store.changes_after(watermark, wanted)?;
    changes.retain(|c| c.seq <= durable);
    if changes.is_empty() {
        return Ok((watermark, 0));
    }
    let mut prebuilt = {
        let mut waiting = shared
            .prebuilt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        changes
            .iter()
            .filter_map(|c| Some((c.seq, waiting.remove(&(c.id, c.version))?)))
            .collect::<HashMap<u64, Prebuilt>>()
    };
    let (mut built, mut read) = (0usize, 0usize);
    for change in &changes {
        // A record's first version has nothing in the index to replace (the index holds no
        // change after its watermark), and each delete is resolved at commit against every
        // segment's term dictionary.
        if !change.created {
            writer.delete_term(Term::from_field_text(
                shared.fields.record_id,
                &change.id.to_string(),
            ));
        }
        if change.retracted {
            watermark = change.seq;
            continue;
        }
        if let Some(p) = prebuilt.remove(&change.seq) {
            built += 1;
            for d in p.docs {
                writer.add_document(d)?;
            }
        } else if let Some(record) = store.get(&change.id, Some(change.version))? {
            read += 1;
            add_item_docs(
                writer,
                &shared.fields,
                &change.id,
                change.version,
                &record,
                false,
            )?;
        }
        watermark = change.seq;
    }
    tracing::debug!(changes = changes.len(), built, read, "indexing");
    Ok((watermark, changes.len()))
}

/// Commits what the writer holds, with `watermark` (the last change added) as the payload,
/// and makes it visible to searches.
fn commit(shared: &Shared, writer: &mut IndexWriter, watermark: u64) -> Result<(), IndexError> {
    let mut commit = writer.prepare_commit()?;
    commit.set_payload(&watermark.to_string());
    commit.commit()?;
    shared.reader.reload()?;
    Ok(())
}

/// When the indexer commits (decision 0020). Each commit makes a tantivy segment, which later
/// merges combine: a commit every `interval` during a bulk write (an import, or a partner's feed
/// being caught up) makes many small segments, and merging them cost a receiver about 25 µs of
/// CPU a record. So while changes arrive in bulk, commits wait up to `bulk_interval`.
#[derive(Debug, Clone, Copy)]
pub struct Commits {
    /// How long a write waits for search to see it, when writes do not arrive in bulk.
    pub interval: Duration,
    /// How long a write may wait while they do.
    pub bulk_interval: Duration,
}

/// Changes read in one round (one `interval`) from which writes count as arriving in bulk:
/// 500 a second at the default interval, far beyond what officers enter by hand.
const BULK_CHANGES: usize = 100;

/// Rounds without a bulk one after which a bulk write counts as over. Bulk writes come in
/// bursts (a partner's feed arrives a page at a time), so a round that reads little does not
/// end one; the last changes of a bulk write wait this many rounds longer to be seen.
const QUIET_ROUNDS: u32 = 3;

/// The indexer's state between two commits.
struct Pending {
    /// The last change committed (visible to searches).
    committed: u64,
    /// The last change added to the writer.
    added: u64,
    /// When the first change not yet committed was added.
    since: Option<Instant>,
    /// When a round last read changes in bulk.
    bulk_at: Option<Instant>,
}

impl Pending {
    /// Notes a round that read `read` changes, started at `began`.
    fn round(&mut self, added: u64, read: usize, began: Instant) {
        if added != self.added {
            self.added = added;
            self.since.get_or_insert(began);
        }
        if read >= BULK_CHANGES {
            self.bulk_at = Some(began);
        }
    }

    /// Whether to commit now: what was added, at once unless changes are arriving in bulk
    /// (a bulk round less than [`QUIET_ROUNDS`] intervals ago), and then once the oldest has
    /// waited `bulk_interval`.
    fn due(&self, commits: &Commits, now: Instant) -> bool {
        let waited = |t: Option<Instant>, d: Duration| t.is_none_or(|t| now.duration_since(t) >= d);
        self.added != self.committed
            && (waited(self.bulk_at, commits.interval * QUIET_ROUNDS)
                || waited(self.since, commits.bulk_interval))
    }

    fn committed(&mut self) {
        self.committed = self.added;
        self.since = None;
    }
}

impl SearchIndex {
    /// Opens the index in `path` and starts the indexer, which first replays every change the
    /// index has not committed yet.
    pub fn open(
        path: &Path,
        store: Store,
        writer_memory_mib: usize,
        commits: Commits,
    ) -> Result<SearchIndex, IndexError> {
        let (index, fields) = open_index(path)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        // One indexing worker: the tailing indexer commits small batches, and each worker
        // turns every commit into a segment of its own that merges must later combine.
        let mut writer: IndexWriter =
            index.writer_with_num_threads(1, writer_memory_mib.max(16) * 1024 * 1024)?;
        let mut start = watermark_of(&index)?;
        let last = store.last_seq()?;
        if start > last {
            // The index holds changes the store does not (a store restored from a backup, or
            // one a crash took unflushed changes from, written by an older node): those
            // records would stay searchable, and the store's next changes, numbered again from
            // `last`, would never be indexed. The index is derived: start afresh.
            tracing::warn!(
                index_watermark = start,
                store_last_seq = last,
                "the search index is ahead of the store; rebuilding it from the store"
            );
            writer.delete_all_documents()?;
            let mut commit = writer.prepare_commit()?;
            commit.set_payload("0");
            commit.commit()?;
            start = 0;
        }
        let shared = Arc::new(Shared {
            reader,
            fields,
            prebuilt: Mutex::new(HashMap::new()),
            tickets: AtomicU64::new(0),
            bulk_done: AtomicBool::new(false),
        });
        let (tx_mark, rx_mark) = watch::channel(start);
        let (wake_tx, wake_rx) = mpsc::channel::<()>();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("indexer".into())
                .spawn(move || {
                    let mut pending = Pending {
                        committed: start,
                        added: start,
                        since: None,
                        bulk_at: None,
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let began = Instant::now();
                        // Taken before reading: a bulk write that ends later is seen next round.
                        let bulk_done = shared.bulk_done.swap(false, Ordering::AcqRel);
                        let round = catch_up(&store, &shared, &mut writer, pending.added, 50_000)
                            .and_then(|(added, read)| {
                                pending.round(added, read, began);
                                if bulk_done {
                                    pending.bulk_at = None;
                                }
                                if pending.due(&commits, Instant::now()) {
                                    commit(&shared, &mut writer, pending.added)?;
                                    pending.committed();
                                    tx_mark.send_replace(pending.committed);
                                }
                                Ok(read)
                            });
                        match round {
                            // A full batch: more changes are waiting.
                            Ok(50_000) => continue,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "indexer failed; retrying from the last commit");
                                // Drop what was added since, so the retry adds it once.
                                if let Err(e) = writer.rollback() {
                                    tracing::error!(error = %e, "index rollback failed");
                                }
                                pending.added = pending.committed;
                                pending.since = None;
                            }
                        }
                        match wake_rx.recv_timeout(commits.interval) {
                            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                        // One round per interval at most: writes that arrive meanwhile join
                        // the next round (and commit, and segment) instead of each making one.
                        let next = began + commits.interval;
                        let now = Instant::now();
                        if next > now && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(next - now);
                        }
                        while wake_rx.try_recv().is_ok() {}
                    }
                    // What was added and not committed is committed now; were this to fail,
                    // the next start replays it from the store.
                    if pending.added != pending.committed {
                        match commit(&shared, &mut writer, pending.added) {
                            Ok(()) => {
                                tx_mark.send_replace(pending.added);
                            }
                            Err(e) => tracing::warn!(error = %e, "index commit at shutdown"),
                        }
                    }
                    if let Err(e) = writer.wait_merging_threads() {
                        tracing::warn!(error = %e, "index merge threads");
                    }
                })?
        };
        Ok(SearchIndex {
            shared,
            watermark: rx_mark,
            wake: Mutex::new(wake_tx),
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The documents of a record version about to be written, built while the record is in
    /// memory (see [`SearchIndex::offer`]), from its items' search keys as
    /// [`crate::record::item_keys`] returned them (read from the record's `derived` objects for
    /// any item they do not cover).
    pub fn documents(
        &self,
        id: RecordId,
        version: u32,
        record: &serde_json::Value,
        keys: Vec<ItemKeys>,
    ) -> Documents {
        Documents {
            id,
            version,
            docs: item_docs(&self.shared.fields, &id, version, record, Keys::Given(keys)),
        }
    }

    /// Hands the indexer the documents of record versions about to be written, so it need
    /// not read and parse them back from the store. Offer before writing (the indexer may
    /// reach a change as soon as it commits); if the write fails, [`SearchIndex::withdraw`]
    /// the offer. The store stays the source of truth: a change whose documents are not
    /// waiting (never offered, or dropped because too many wait) is read from the store.
    /// A version already on offer keeps its first offer.
    pub fn offer(&self, documents: impl IntoIterator<Item = Documents>) -> Offered {
        let ticket = self.shared.tickets.fetch_add(1, Ordering::Relaxed);
        let mut keys = Vec::new();
        let mut waiting = self
            .shared
            .prebuilt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in documents {
            if waiting.len() >= MAX_PREBUILT {
                break;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) =
                waiting.entry((d.id, d.version))
            {
                slot.insert(Prebuilt {
                    ticket,
                    docs: d.docs,
                });
                keys.push((d.id, d.version));
            }
        }
        Offered { ticket, keys }
    }

    /// Takes back what [`SearchIndex::offer`] put in place and the indexer has not used: the
    /// write failed, so those versions will never appear in the change log.
    pub fn withdraw(&self, offered: Offered) {
        self.settle(offered, &[]);
    }

    /// After a write that stored only some of the offered versions (`written`), takes back
    /// the others' documents, which the indexer would never use.
    pub fn settle(&self, offered: Offered, written: &[(RecordId, u32)]) {
        let written: std::collections::HashSet<&(RecordId, u32)> = written.iter().collect();
        let mut waiting = self
            .shared
            .prebuilt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in offered.keys.iter().filter(|k| !written.contains(k)) {
            if waiting.get(key).is_some_and(|p| p.ticket == offered.ticket) {
                waiting.remove(key);
            }
        }
    }

    /// Tells the indexer that a bulk write (a partner's feed caught up) has ended, so what it
    /// wrote is committed at the next round instead of a few rounds later (decision 0020).
    pub fn bulk_done(&self) {
        self.shared.bulk_done.store(true, Ordering::Release);
        self.notify();
    }

    /// Tells the indexer that the change log grew.
    pub fn notify(&self) {
        if let Ok(tx) = self.wake.lock() {
            let _ = tx.send(());
        }
    }

    /// The sequence number up to which the index is committed and visible.
    pub fn watermark(&self) -> u64 {
        *self.watermark.borrow()
    }

    /// Waits until the index has committed `seq`, or `timeout` passes; returns whether it has.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.watermark.clone();
        tokio::time::timeout(timeout, rx.wait_for(|mark| *mark >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the indexer thread after its current batch.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.notify();
        if let Some(handle) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = handle.join();
        }
    }

    /// Number of item documents visible to searches.
    pub fn num_docs(&self) -> u64 {
        self.shared.reader.searcher().num_docs()
    }

    /// True when some document has a term in `field`.
    fn has_terms(&self, field: Field) -> bool {
        self.shared
            .reader
            .searcher()
            .segment_readers()
            .iter()
            .any(|segment| {
                segment
                    .inverted_index(field)
                    .map(|i| i.terms().num_terms() > 0)
                    .unwrap_or(true)
            })
    }

    /// Runs a candidate query (blocking: call from a blocking thread).
    ///
    /// A fuzzy distance of 2 (long lots) is tried only when distance 1 leaves fewer candidates
    /// than a third of `q.limit` (the hits wanted): widening is for when nothing close exists,
    /// and a distance-2 automaton over a dense dictionary is the costliest clause.
    pub fn candidates(&self, q: &CandidateQuery) -> Result<Vec<Candidate>, IndexError> {
        if let Some((skeleton, 2)) = &q.lot_fuzzy {
            let narrow = CandidateQuery {
                lot_fuzzy: Some((skeleton.clone(), 1)),
                ..q.clone()
            };
            let found = self.candidates_once(&narrow)?;
            if found.len() >= (q.limit / 3).max(1) {
                return Ok(found);
            }
        }
        self.candidates_once(q)
    }

    fn candidates_once(&self, q: &CandidateQuery) -> Result<Vec<Candidate>, IndexError> {
        let f = &self.shared.fields;
        let term = |field: Field, text: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, text),
                IndexRecordOption::Basic,
            ))
        };
        let boost =
            |q: Box<dyn Query>, b: f32| -> Box<dyn Query> { Box::new(BoostQuery::new(q, b)) };
        let regex = |pattern: &str, field: Field| -> Result<Box<dyn Query>, IndexError> {
            Ok(Box::new(
                RegexQuery::from_pattern(pattern, field)
                    .map_err(|e| IndexError::Query(e.to_string()))?,
            ))
        };

        let mut lot: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if let Some(key) = &q.lot_key {
            lot.push((Occur::Should, boost(term(f.lot_key, key), 8.0)));
        }
        if let Some(identity) = &q.lot_identity {
            lot.push((Occur::Should, boost(term(f.lot_id, identity), 8.0)));
        }
        if let Some(skel) = &q.lot_skeleton {
            lot.push((Occur::Should, boost(term(f.lot_skel, skel), 6.0)));
        }
        if let Some(pattern) = q
            .lot_worn_regex
            .as_ref()
            .filter(|_| self.has_terms(f.lot_worn))
        {
            lot.push((Occur::Should, boost(regex(pattern, f.lot_worn)?, 4.0)));
        }
        if let Some(pattern) = &q.lot_regex {
            lot.push((Occur::Should, boost(regex(pattern, f.lot_skel)?, 4.0)));
        }
        if let Some((skel, distance)) = &q.lot_fuzzy {
            let fuzzy =
                FuzzyTermQuery::new(Term::from_field_text(f.lot_skel, skel), *distance, true);
            lot.push((Occur::Should, boost(Box::new(fuzzy), 1.0)));
        }
        let mut hs: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for s in &q.headstamp_skeletons {
            hs.push((Occur::Should, term(f.hs_skel, s)));
        }
        for pattern in &q.headstamp_regexes {
            hs.push((Occur::Should, regex(pattern, f.hs_skel)?));
        }
        let mut cal: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for c in &q.calibres {
            cal.push((Occur::Should, boost(term(f.calibre, c), 2.0)));
        }
        for fam in &q.families {
            cal.push((Occur::Should, term(f.family, fam)));
        }

        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let has_lot = !lot.is_empty();
        let has_hs = !hs.is_empty();
        if has_lot && has_hs && q.lot_or_headstamp {
            let either: Vec<(Occur, Box<dyn Query>)> = vec![
                (Occur::Should, Box::new(BooleanQuery::new(lot))),
                (Occur::Should, boost(Box::new(BooleanQuery::new(hs)), 0.5)),
            ];
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(either))));
        } else {
            if has_lot {
                clauses.push((Occur::Must, Box::new(BooleanQuery::new(lot))));
            }
            if has_hs {
                let occur = if has_lot { Occur::Should } else { Occur::Must };
                clauses.push((occur, boost(Box::new(BooleanQuery::new(hs)), 0.5)));
            }
        }
        if !cal.is_empty() {
            let occur = if q.calibre_required || (!has_lot && !has_hs) {
                Occur::Must
            } else {
                Occur::Should
            };
            clauses.push((occur, boost(Box::new(BooleanQuery::new(cal)), 0.5)));
        }
        if let Some(c) = &q.category {
            clauses.push((Occur::Must, term(f.category, c)));
        }
        if let Some(c) = &q.country {
            clauses.push((Occur::Must, term(f.country, c)));
        }
        if q.date_from.is_some() || q.date_to.is_some() {
            use std::ops::Bound::*;
            let lo = q
                .date_from
                .map_or(Unbounded, |d| Included(Term::from_field_i64(f.date, d)));
            let hi = q
                .date_to
                .map_or(Unbounded, |d| Included(Term::from_field_i64(f.date, d)));
            clauses.push((Occur::Must, Box::new(RangeQuery::new(lo, hi))));
        }
        if !clauses.iter().any(|(o, _)| *o == Occur::Must) {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.shared.reader.searcher();
        let started = std::time::Instant::now();
        let top = searcher.search(
            &query,
            &TopDocs::with_limit(q.limit.max(1)).order_by_score(),
        )?;
        let searched = started.elapsed();
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let d: TantivyDocument = searcher.doc(address)?;
            let text = |field: Field| {
                d.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let all = |field: Field| {
                d.get_all(field)
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            };
            out.push(Candidate {
                record_id: text(f.record_id),
                item_id: text(f.item_id),
                origin: text(f.origin),
                version: d.get_first(f.version).and_then(|v| v.as_u64()).unwrap_or(0),
                lot_folded: text(f.lot_folded),
                lot_key: text(f.lot_key),
                lot_identity: text(f.lot_id),
                headstamp: all(f.hs),
                calibres: all(f.calibre),
                families: all(f.family),
                category: text(f.category),
                country: text(f.country),
                date: d.get_first(f.date).and_then(|v| v.as_i64()).unwrap_or(0),
                maker: text(f.maker),
                year: d.get_first(f.year).and_then(|v| v.as_i64()).unwrap_or(0),
                hit: d
                    .get_first(f.hit)
                    .and_then(|v| v.as_str())
                    .map(|hit| hit.as_bytes().to_vec())
                    .unwrap_or_default(),
                retrieval_score: score,
            });
        }
        tracing::debug!(
            candidates = out.len(),
            search_us = searched.as_micros() as u64,
            fetch_us = (started.elapsed() - searched).as_micros() as u64,
            "index candidates"
        );
        Ok(out)
    }
}

impl Drop for SearchIndex {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Rebuilds the index in `path` from the store (the node must be stopped). Returns the number
/// of item documents written and the watermark committed.
pub fn rebuild(
    path: &Path,
    store: &Store,
    writer_memory_mib: usize,
    progress: &dyn Fn(u64),
) -> Result<(u64, u64), IndexError> {
    let tmp = PathBuf::from(format!("{}.rebuild", path.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let (index, fields) = open_index(&tmp)?;
    let mut writer: IndexWriter = index.writer(writer_memory_mib.max(16) * 1024 * 1024)?;
    let watermark = store.last_seq()?;
    let mut records = 0u64;
    for head in store.heads() {
        let (id, head) = head?;
        if !head.retracted
            && let Some(record) = store.get(&id, Some(head.version))?
        {
            add_item_docs(&writer, &fields, &id, head.version, &record, true)?;
        }
        records += 1;
        if records.is_multiple_of(1000) {
            progress(records);
        }
    }
    progress(records);
    let mut commit = writer.prepare_commit()?;
    commit.set_payload(&watermark.to_string());
    commit.commit()?;
    writer.wait_merging_threads()?;
    let docs = index.reader()?.searcher().num_docs();
    if path.exists() {
        std::fs::remove_dir_all(path)?;
    }
    std::fs::rename(&tmp, path)?;
    Ok((docs, watermark))
}

/// Bytes the index occupies on disk.
pub fn size_on_disk(path: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Prepared;
    use crate::store::tests::{prepared_as, sealer};

    fn prepared(id: &str, lot: &str) -> Prepared {
        prepared_as(Some(id), lot)
    }

    fn by_lot_key(index: &SearchIndex, key: &str) -> Vec<Candidate> {
        let q = CandidateQuery {
            lot_key: Some(key.into()),
            limit: 10,
            ..CandidateQuery::default()
        };
        index.candidates(&q).unwrap()
    }

    fn lots(index: &SearchIndex, key: &str) -> Vec<String> {
        let mut found: Vec<String> = by_lot_key(index, key)
            .into_iter()
            .map(|c| format!("{} {}", c.record_id, c.lot_key))
            .collect();
        found.sort();
        found
    }

    fn quick() -> Commits {
        Commits {
            interval: Duration::from_millis(20),
            bulk_interval: Duration::from_millis(200),
        }
    }

    /// Flushes the store (the indexer indexes changes on disk only) and waits until the
    /// indexer has committed its last change.
    fn wait_indexed(index: &SearchIndex, store: &Store) {
        store.flush().unwrap();
        index.notify();
        let last = store.last_seq().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while index.watermark() < last {
            assert!(std::time::Instant::now() < deadline, "indexer stuck");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An index left by a node whose schema differed (this happens when a release changes a
    /// field, as the stored `hit` did) is replaced on open and rebuilt from the store's
    /// change log, and its hits carry the item as stored.
    #[test]
    fn an_index_with_another_schema_is_rebuilt_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let a = "urn:uuid:019ad2f0-0000-7000-8000-00000000c003";
        store
            .create_batch(&mut [prepared(a, "OLD-SCHEMA-7")], &sealer())
            .unwrap();

        // An index of the previous layout: `hit` as a bytes field, one stale document.
        let path = dir.path().join("index");
        std::fs::create_dir_all(&path).unwrap();
        {
            let mut b = Schema::builder();
            let record_id = b.add_text_field("record_id", STRING | STORED);
            let hit = b.add_bytes_field("hit", STORED);
            let old = Index::create_in_dir(&path, b.build()).unwrap();
            let mut writer: IndexWriter = old.writer_with_num_threads(1, 15_000_000).unwrap();
            writer
                .add_document(tantivy::doc!(record_id => "stale", hit => b"{}".to_vec()))
                .unwrap();
            let mut commit = writer.prepare_commit().unwrap();
            commit.set_payload("1");
            commit.commit().unwrap();
        }

        let index = SearchIndex::open(&path, store.clone(), 16, quick()).unwrap();
        wait_indexed(&index, &store);
        assert_eq!(lots(&index, "OLDSCHEMA7"), vec![format!("{a} OLDSCHEMA7")]);
        assert_eq!(index.num_docs(), 1, "the stale document is gone");
        let hit: serde_json::Value =
            serde_json::from_slice(&by_lot_key(&index, "OLDSCHEMA7")[0].hit).unwrap();
        let stored = store
            .get(&RecordId::parse(a).unwrap(), None)
            .unwrap()
            .unwrap();
        assert_eq!(hit["item"], stored["items"][0]);
        index.shutdown();
    }

    /// Offered documents are what the indexer uses for that version; withdrawn ones are never
    /// used, even when the same record version is written later with other content; and a
    /// version offered nothing is read from the store.
    #[test]
    fn offered_documents_are_used_and_withdrawn_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let index =
            SearchIndex::open(&dir.path().join("index"), store.clone(), 16, quick()).unwrap();
        let a = "urn:uuid:019ad2f0-0000-7000-8000-00000000a001";
        let b = "urn:uuid:019ad2f0-0000-7000-8000-00000000b002";

        // A write that failed: offered, then withdrawn.
        let refused = prepared(a, "REFUSED-1");
        let offered =
            index.offer([index.documents(refused.id, 1, &refused.record, refused.keys.clone())]);
        index.withdraw(offered);

        // The same version written with other content, offered; and one not offered.
        let mut batch = vec![prepared(a, "KEPT-2")];
        let offered =
            index.offer([index.documents(batch[0].id, 1, &batch[0].record, batch[0].keys.clone())]);
        assert_eq!(offered.keys.len(), 1);
        let written = store.create_batch(&mut batch, &sealer()).unwrap();
        let mut plain = vec![prepared(b, "PLAIN-3")];
        store.create_batch(&mut plain, &sealer()).unwrap();
        index.notify();
        assert!(store.last_seq().unwrap() > written[0].seq);
        wait_indexed(&index, &store);
        assert!(lots(&index, "REFUSED1").is_empty());
        assert_eq!(lots(&index, "KEPT2"), vec![format!("{a} KEPT2")]);
        assert_eq!(lots(&index, "PLAIN3"), vec![format!("{b} PLAIN3")]);
        let waiting = || index.shared.prebuilt.lock().unwrap().len();
        assert_eq!(waiting(), 0, "used offers are removed");

        // A write that stored only some of what was offered: the rest is taken back.
        let (c, d) = (prepared(b, "SKIPPED-4"), prepared(a, "LATER-5"));
        let offered = index.offer([
            index.documents(c.id, 1, &c.record, c.keys.clone()),
            index.documents(d.id, 2, &d.record, Vec::new()),
        ]);
        assert_eq!(waiting(), 2);
        index.settle(offered, &[(d.id, 2)]);
        assert_eq!(waiting(), 1);
        index.shutdown();
    }

    /// Writes twice [`BULK_CHANGES`] records in one batch, so a round reads them in bulk.
    fn bulk_write(store: &Store, lot_prefix: &str) {
        let mut batch: Vec<Prepared> = (0..2 * BULK_CHANGES)
            .map(|n| prepared_as(None, &format!("{lot_prefix}-{n}")))
            .collect();
        store.create_batch(&mut batch, &sealer()).unwrap();
        store.flush().unwrap();
    }

    /// While rounds read changes in bulk, commits wait for more, up to the bulk interval; a
    /// few rounds after the last bulk one, what was added is committed, so the end of a bulk
    /// write is not held back; nothing added means nothing to commit.
    #[test]
    fn commits_wait_while_changes_arrive_in_bulk_and_not_after() {
        let commits = Commits {
            interval: Duration::from_millis(200),
            bulk_interval: Duration::from_secs(2),
        };
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut pending = Pending {
            committed: 10,
            added: 10,
            since: None,
            bulk_at: None,
        };
        pending.round(20, BULK_CHANGES - 1, t0);
        assert!(pending.due(&commits, t0), "not in bulk: at once");
        pending.round(500, BULK_CHANGES, t0);
        assert_eq!(pending.since, Some(t0));
        assert!(!pending.due(&commits, t0 + ms(599)));
        // A round that read little, within a bulk write: the next page is on its way.
        pending.round(500, 0, t0 + ms(200));
        assert!(!pending.due(&commits, t0 + ms(400)));
        assert!(
            pending.due(&commits, t0 + ms(600)),
            "quiet for three rounds"
        );
        // Bulk rounds all along: committed once the oldest change waited the bulk interval.
        for n in 1..10 {
            pending.round(500 + n * 200, 200, t0 + ms(200 * n));
        }
        assert!(!pending.due(&commits, t0 + ms(1999)));
        assert!(pending.due(&commits, t0 + ms(2000)));
        pending.committed();
        assert!(!pending.due(&commits, t0 + ms(9000)), "nothing to commit");

        // A bulk write (one batch, so the first round reads all of it) with a bulk interval far
        // beyond the wait below: the next round reads nothing new and commits it.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let commits = Commits {
            interval: Duration::from_millis(20),
            bulk_interval: Duration::from_secs(600),
        };
        let index =
            SearchIndex::open(&dir.path().join("index"), store.clone(), 16, commits).unwrap();
        bulk_write(&store, "BULK");
        index.notify();
        wait_indexed(&index, &store);
        assert_eq!(index.num_docs(), 2 * BULK_CHANGES as u64);
        index.shutdown();

        // Rounds of 2 s, so a bulk write would wait three quiet rounds (6 s) to be committed;
        // a writer that says its bulk write is done has it committed at the next round.
        let commits = Commits {
            interval: Duration::from_secs(2),
            bulk_interval: Duration::from_secs(600),
        };
        let index =
            SearchIndex::open(&dir.path().join("index"), store.clone(), 16, commits).unwrap();
        bulk_write(&store, "DONE");
        let written = Instant::now();
        index.bulk_done();
        let last = store.last_seq().unwrap();
        while index.watermark() < last {
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "not committed at the next round"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(index.num_docs(), 4 * BULK_CHANGES as u64);

        index.shutdown();
    }

    /// A change is indexed once it is on disk, never before: a crash can still take an
    /// unflushed change from the store, and the index must not keep what the store lost.
    #[test]
    fn changes_are_indexed_once_flushed_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let index =
            SearchIndex::open(&dir.path().join("index"), store.clone(), 16, quick()).unwrap();
        store
            .create_batch(&mut [prepared_as(None, "UNFLUSHED-1")], &sealer())
            .unwrap();
        index.notify();
        // Many commit rounds (20 ms each) pass: nothing is committed past the flushed change.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(index.watermark(), 0);
        assert!(lots(&index, "UNFLUSHED1").is_empty());
        wait_indexed(&index, &store);
        assert_eq!(index.watermark(), 1);
        assert_eq!(lots(&index, "UNFLUSHED1").len(), 1);
        index.shutdown();
    }

    /// An index ahead of its store (changes a crash took from the store before an older
    /// node's index committed them, or a store restored from an older backup) is started
    /// afresh: what the store lost is no longer found, and what is written after, under the
    /// same sequence numbers, is.
    #[test]
    fn an_index_ahead_of_its_store_is_rebuilt_from_the_store() {
        fn copy_dir(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                let target = to.join(e.file_name());
                if e.file_type().unwrap().is_dir() {
                    copy_dir(&e.path(), &target);
                } else {
                    std::fs::copy(e.path(), &target).unwrap();
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (live, older, idx) = (
            dir.path().join("store"),
            dir.path().join("older"),
            dir.path().join("index"),
        );
        {
            let store = Store::open(&live).unwrap();
            store
                .create_batch(&mut [prepared_as(None, "KEPT-1")], &sealer())
                .unwrap();
            store.flush().unwrap();
        }
        // The store as it will be found after the restart: its first change only.
        copy_dir(&live, &older);
        {
            let store = Store::open(&live).unwrap();
            store
                .create_batch(
                    &mut [prepared_as(None, "LOST-2"), prepared_as(None, "LOST-3")],
                    &sealer(),
                )
                .unwrap();
            let index = SearchIndex::open(&idx, store.clone(), 16, quick()).unwrap();
            wait_indexed(&index, &store);
            assert_eq!(index.watermark(), 3);
            index.shutdown();
        }
        let store = Store::open(&older).unwrap();
        assert_eq!(store.last_seq().unwrap(), 1);
        let index = SearchIndex::open(&idx, store.clone(), 16, quick()).unwrap();
        let written = store
            .create_batch(
                &mut [prepared_as(None, "AFTER-4"), prepared_as(None, "AFTER-5")],
                &sealer(),
            )
            .unwrap();
        assert_eq!(
            written[1].seq, 3,
            "the store numbers its changes again from 1"
        );
        wait_indexed(&index, &store);
        assert!(
            lots(&index, "LOST2").is_empty(),
            "a change the store lost is found"
        );
        assert_eq!(lots(&index, "AFTER4").len(), 1);
        assert_eq!(lots(&index, "AFTER5").len(), 1);
        assert_eq!(lots(&index, "KEPT1").len(), 1);
        index.shutdown();
    }
}
