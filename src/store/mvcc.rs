//! The MVCC key-value state machine with etcd's semantics, kept in RocksDB.
//!
//! A global revision grows by one for each write transaction; each key carries its create and
//! mod revision, version and lease. `kv` holds the current version of each key, `hist` every
//! version still in history (for reads at a past revision), `revs` every event by revision (for
//! watches). The [`Applier`] is the only writer and runs on the Raft apply path; [`Store`] serves
//! reads from RocksDB snapshots to any number of callers.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::Message;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::command::{ApplyError, Command, Response};
use super::db::{CF_HIST, CF_KV, CF_LEASE, CF_LEASE_KEYS, CF_META, CF_REVS};
use super::index::{KeyIndex, KeyMeta};
use super::keys::{self, RangeEnd};
use crate::pb::etcdserverpb as epb;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::request_op::Request as OpRequest;
use crate::pb::etcdserverpb::response_op::Response as OpResponse;
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};

const META_REVS: &[u8] = b"revisions";
const META_MEMBER: &[u8] = b"member/";
const META_ALARM: &[u8] = b"alarm/";
/// etcd's alarm type for "database space exceeded".
pub const ALARM_NOSPACE: i32 = 1;

/// The store's revision counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revisions {
    /// The revision of the last write transaction (etcd starts at 1 for an empty store).
    pub current: i64,
    /// Reads and watches below this revision answer "compacted".
    pub compacted: i64,
}

/// One read of the revision log ([`Store::events`]).
#[derive(Debug)]
pub struct EventBatch {
    pub events: Vec<Event>,
    /// The store's revisions when the batch was read.
    pub revs: Revisions,
    /// The revision the following read starts at: after the last revision in `events` when
    /// the batch filled up, else after `revs.current` (every event up to it was read).
    pub next: i64,
}

/// A member's published attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttr {
    pub name: String,
    pub api_addr: String,
}

/// A lease as the state machine keeps it: its granted TTL in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl: i64,
}

fn storage(e: impl std::fmt::Display) -> ApplyError {
    ApplyError::Storage(e.to_string())
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column families are created when the database opens")
}

fn decode_kv(bytes: &[u8]) -> Result<KeyValue, ApplyError> {
    KeyValue::decode(bytes).map_err(storage)
}

/// A history record: a version of a key, or the tombstone that ended it.
fn encode_hist(kv: &KeyValue, live: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(kv.encoded_len() + 1);
    out.push(u8::from(live));
    kv.encode(&mut out).expect("a Vec grows as needed");
    out
}

fn decode_hist(bytes: &[u8]) -> Result<(bool, KeyValue), ApplyError> {
    let (tag, rest) = bytes.split_first().ok_or_else(|| storage("empty history record"))?;
    Ok((*tag == 1, decode_kv(rest)?))
}

/// Scans the current versions of keys in a range, calling `f` until it returns false.
fn scan_current(
    db: &DB,
    ro: ReadOptions,
    start: &[u8],
    end: &[u8],
    mut f: impl FnMut(KeyValue) -> bool,
) -> Result<(), ApplyError> {
    let kv_cf = cf(db, CF_KV);
    if let RangeEnd::Single = keys::range_end(end) {
        if let Some(v) = db.get_cf_opt(kv_cf, start, &ro).map_err(storage)? {
            f(decode_kv(&v)?);
        }
        return Ok(());
    }
    let mut ro = ro;
    if let RangeEnd::Before(e) = keys::range_end(end) {
        if e <= start {
            return Ok(());
        }
        ro.set_iterate_upper_bound(e.to_vec());
    }
    for item in db.iterator_cf_opt(kv_cf, ro, IteratorMode::From(start, Direction::Forward)) {
        let (_, v) = item.map_err(storage)?;
        if !f(decode_kv(&v)?) {
            break;
        }
    }
    Ok(())
}

/// Scans the versions of keys in a range as they were at `rev`.
fn scan_at(
    db: &DB,
    ro: ReadOptions,
    start: &[u8],
    end: &[u8],
    rev: i64,
    mut f: impl FnMut(KeyValue) -> bool,
) -> Result<(), ApplyError> {
    let hist_cf = cf(db, CF_HIST);
    let from = keys::escape(start);
    let stop: Option<Vec<u8>> = match keys::range_end(end) {
        RangeEnd::Single => None,
        RangeEnd::Open => None,
        RangeEnd::Before(e) => Some(keys::escape(e)),
    };
    let single = matches!(keys::range_end(end), RangeEnd::Single);
    // The newest version at or below `rev` of the key group being read.
    let mut group: Option<Vec<u8>> = None;
    let mut best: Option<(bool, KeyValue)> = None;
    let mut flush = |best: &mut Option<(bool, KeyValue)>| -> bool {
        match best.take() {
            Some((true, kv)) => f(kv),
            _ => true,
        }
    };
    for item in db.iterator_cf_opt(hist_cf, ro, IteratorMode::From(&from, Direction::Forward)) {
        let (k, v) = item.map_err(storage)?;
        let Some((gk, r)) = keys::split_hist(&k) else { continue };
        if single && gk != from.as_slice() {
            break;
        }
        if let Some(stop) = &stop {
            if gk >= stop.as_slice() {
                break;
            }
        }
        if group.as_deref() != Some(gk) {
            if !flush(&mut best) {
                return Ok(());
            }
            group = Some(gk.to_vec());
        }
        if r <= rev {
            best = Some(decode_hist(&v)?);
        }
    }
    flush(&mut best);
    Ok(())
}

fn sort_and_page(mut kvs: Vec<KeyValue>, req: &epb::RangeRequest) -> (Vec<KeyValue>, bool, i64) {
    let count = kvs.len() as i64;
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    // etcd sorts ascending when a target other than the key is named without an order.
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    if order != SortOrder::None {
        let key_of = |kv: &KeyValue| -> (Vec<u8>, i64) {
            match target {
                SortTarget::Key => (kv.key.clone(), 0),
                SortTarget::Version => (Vec::new(), kv.version),
                SortTarget::Create => (Vec::new(), kv.create_revision),
                SortTarget::Mod => (Vec::new(), kv.mod_revision),
                SortTarget::Value => (kv.value.clone(), 0),
            }
        };
        kvs.sort_by(|a, b| {
            let o = key_of(a).cmp(&key_of(b));
            if order == SortOrder::Descend {
                o.reverse()
            } else {
                o
            }
        });
    }
    let more = req.limit > 0 && count > req.limit;
    if req.limit > 0 {
        kvs.truncate(req.limit as usize);
    }
    (kvs, more, count)
}

fn passes_filters(kv: &KeyValue, req: &epb::RangeRequest) -> bool {
    (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
        && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
        && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
}

fn finish_range(kvs: Vec<KeyValue>, req: &epb::RangeRequest, revision: i64) -> epb::RangeResponse {
    let (mut kvs, more, count) = sort_and_page(kvs, req);
    if req.count_only {
        kvs.clear();
    } else if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    epb::RangeResponse { header: Some(epb::ResponseHeader { revision, ..Default::default() }), kvs, more, count }
}

/// Whether a range request can stop reading after `limit` keys: only when keys come out in
/// their natural order and nothing needs counting past the page.
fn read_all_for(req: &epb::RangeRequest) -> bool {
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    !(order == SortOrder::None || (order == SortOrder::Ascend && target == SortTarget::Key))
}

/// The read side of the store, shared by every API handler.
pub struct Store {
    db: Arc<DB>,
    revs: watch::Sender<Revisions>,
    /// The newest events, as the applier wrote them: watchers that keep up read them here
    /// instead of each reading and decoding them from RocksDB.
    recent: parking_lot::RwLock<RecentEvents>,
}

/// Events kept in memory, at most.
const RECENT_EVENTS: usize = 2048;

/// The last events written, by revision, with every event from `from` on.
#[derive(Debug, Default)]
struct RecentEvents {
    events: std::collections::VecDeque<(i64, Event)>,
    /// Every event at or after this revision is in `events`.
    from: i64,
    /// The counters as of the last event recorded.
    revs: Revisions,
}

impl Store {
    /// Opens the store over an already opened database, reading its counters.
    pub fn new(db: Arc<DB>) -> Result<Arc<Self>, ApplyError> {
        let revs = read_revisions(&db)?;
        let recent = RecentEvents { events: Default::default(), from: revs.current + 1, revs };
        Ok(Arc::new(Store { db, revs: watch::channel(revs).0, recent: parking_lot::RwLock::new(recent) }))
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// The counters as of the last applied entry.
    pub fn revisions(&self) -> Revisions {
        *self.revs.borrow()
    }

    /// A receiver that wakes whenever the applied revision moves.
    pub fn subscribe(&self) -> watch::Receiver<Revisions> {
        self.revs.subscribe()
    }

    /// Records the events of a commit just written (in revision order), and the counters after
    /// it; `None` forgets every recorded event (the state was replaced by a snapshot).
    fn remember(&self, events: Option<Vec<(i64, Event)>>, revs: Revisions) {
        let mut recent = self.recent.write();
        match events {
            Some(events) => recent.events.extend(events),
            None => {
                recent.events.clear();
                recent.from = revs.current + 1;
            }
        }
        while recent.events.len() > RECENT_EVENTS {
            // Whole revisions only: a revision partly kept would be read as complete.
            let Some((rev, _)) = recent.events.pop_front() else { break };
            while recent.events.front().is_some_and(|(r, _)| *r == rev) {
                recent.events.pop_front();
            }
            recent.from = rev + 1;
        }
        recent.revs = revs;
    }

    /// [`Store::events_where`] from memory, when every event from `from` on is there; `None`
    /// when the read must go to RocksDB. It never blocks on I/O, so a watcher that keeps up can
    /// call it on its own task.
    pub fn recent_events_where(
        &self,
        from: i64,
        max: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Option<Result<EventBatch, ApplyError>> {
        let recent = self.recent.read();
        let revs = recent.revs;
        if from < revs.compacted {
            return Some(Err(ApplyError::Compacted));
        }
        if from < recent.from {
            return None;
        }
        let start = recent.events.partition_point(|(r, _)| *r < from);
        let mut events = Vec::new();
        let (mut seen, mut last_rev) = (0, 0);
        let mut next = revs.current.max(from - 1) + 1;
        for (rev, ev) in recent.events.range(start..) {
            if *rev != last_rev && seen >= max {
                next = *rev;
                break;
            }
            last_rev = *rev;
            seen += 1;
            if keep(ev) {
                events.push(ev.clone());
            }
        }
        Some(Ok(EventBatch { events, revs, next }))
    }

    pub(crate) fn publish(&self, revs: Revisions) {
        self.revs.send_if_modified(|cur| {
            let changed = *cur != revs;
            *cur = revs;
            changed
        });
    }

    /// A Range read against a consistent snapshot of the store.
    pub fn range(&self, req: &epb::RangeRequest) -> Result<epb::RangeResponse, ApplyError> {
        let snap = self.db.snapshot();
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        let revs = revisions_at(&self.db, &ro)?;
        let current = revs.current.max(1);
        if req.revision > 0 && req.revision < revs.compacted {
            return Err(ApplyError::Compacted);
        }
        if req.revision > current {
            return Err(ApplyError::FutureRevision);
        }
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        let stop_early = !read_all_for(req) && !req.count_only;
        let limit = if req.limit > 0 { req.limit as usize } else { usize::MAX };
        let mut kvs = Vec::new();
        let mut extra = 0i64;
        let collect = |kv: KeyValue| {
            if passes_filters(&kv, req) {
                if stop_early && kvs.len() >= limit {
                    extra += 1;
                } else {
                    kvs.push(kv);
                }
            }
            true
        };
        if req.revision == 0 || req.revision >= revs.current {
            scan_current(&self.db, ro, &req.key, &req.range_end, collect)?;
        } else {
            scan_at(&self.db, ro, &req.key, &req.range_end, req.revision, collect)?;
        }
        let mut resp = finish_range(kvs, req, current);
        resp.count += extra;
        resp.more = resp.more || extra > 0;
        Ok(resp)
    }

    /// The events of whole revisions from `from` on, in order: about `max` events (a revision
    /// is never split, so a batch may hold more), and where the next read starts. Fails with
    /// Compacted when `from` is below the compaction point.
    pub fn events(&self, from: i64, max: usize) -> Result<EventBatch, ApplyError> {
        self.events_where(from, max, |_| true)
    }

    /// [`Store::events`] with only the events `keep` selects; `max` still counts every event
    /// read, so a batch's size and `next` do not depend on the filter. Watchers filter here so
    /// that the events they skip are never copied.
    pub fn events_where(&self, from: i64, max: usize, keep: impl Fn(&Event) -> bool) -> Result<EventBatch, ApplyError> {
        match self.recent_events_where(from, max, &keep) {
            Some(batch) => batch,
            None => self.events_from_db(from, max, keep),
        }
    }

    /// [`Store::events_where`] for a watcher's task: from memory at once when the events are
    /// there, otherwise from RocksDB on a blocking thread.
    pub async fn watch_events<F>(self: &Arc<Self>, from: i64, max: usize, keep: F) -> Result<EventBatch, ApplyError>
    where
        F: Fn(&Event) -> bool + Send + 'static,
    {
        if let Some(batch) = self.recent_events_where(from, max, &keep) {
            return batch;
        }
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.events_from_db(from, max, keep)).await {
            Ok(batch) => batch,
            Err(e) => Err(ApplyError::Storage(format!("reading events: {e}"))),
        }
    }

    fn events_from_db(&self, from: i64, max: usize, keep: impl Fn(&Event) -> bool) -> Result<EventBatch, ApplyError> {
        let snap = self.db.snapshot();
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        let revs = revisions_at(&self.db, &ro)?;
        if from < revs.compacted {
            return Err(ApplyError::Compacted);
        }
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        let start = keys::rev_key(from, 0);
        let mut events = Vec::new();
        let (mut seen, mut last_rev) = (0, 0);
        // Everything up to the snapshot's current revision, unless the batch fills up first.
        let mut next = revs.current.max(from - 1) + 1;
        for item in self.db.iterator_cf_opt(cf(&self.db, CF_REVS), ro, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item.map_err(storage)?;
            let rev = keys::rev_of(&k);
            if rev != last_rev && seen >= max {
                next = rev;
                break;
            }
            last_rev = rev;
            seen += 1;
            let ev = Event::decode(v.as_ref()).map_err(storage)?;
            if keep(&ev) {
                events.push(ev);
            }
        }
        Ok(EventBatch { events, revs, next })
    }

    /// The version of `key` just before revision `rev`, if it was live then.
    pub fn prev_kv(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, ApplyError> {
        let target = keys::hist_key(key, rev - 1);
        let prefix = keys::escape(key);
        let mut it = self.db.raw_iterator_cf(cf(&self.db, CF_HIST));
        it.seek_for_prev(&target);
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let Some((gk, _)) = keys::split_hist(k) {
                if gk == prefix.as_slice() {
                    let (live, kv) = decode_hist(v)?;
                    return Ok(live.then_some(kv));
                }
            }
        }
        it.status().map_err(storage)?;
        Ok(None)
    }

    /// Every lease and its granted TTL.
    pub fn leases(&self) -> Result<Vec<(i64, LeaseRecord)>, ApplyError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf(&self.db, CF_LEASE), IteratorMode::Start) {
            let (k, v) = item.map_err(storage)?;
            let id = i64::from_be_bytes(k.as_ref().try_into().map_err(storage)?);
            out.push((id, bincode::deserialize(&v).map_err(storage)?));
        }
        Ok(out)
    }

    pub fn lease(&self, id: i64) -> Result<Option<LeaseRecord>, ApplyError> {
        match self.db.get_cf(cf(&self.db, CF_LEASE), keys::lease_key(id)).map_err(storage)? {
            Some(v) => Ok(Some(bincode::deserialize(&v).map_err(storage)?)),
            None => Ok(None),
        }
    }

    /// The keys attached to a lease.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, ApplyError> {
        lease_keys(&self.db, id)
    }

    /// Published member attributes by member id.
    pub fn members(&self) -> Result<BTreeMap<u64, MemberAttr>, ApplyError> {
        let mut out = BTreeMap::new();
        for item in self.db.prefix_iterator_cf(cf(&self.db, CF_META), META_MEMBER) {
            let (k, v) = item.map_err(storage)?;
            if !k.starts_with(META_MEMBER) {
                break;
            }
            let id = u64::from_be_bytes(k[META_MEMBER.len()..].try_into().map_err(storage)?);
            out.insert(id, bincode::deserialize(&v).map_err(storage)?);
        }
        Ok(out)
    }

    /// Active alarms as (member, alarm type).
    pub fn alarms(&self) -> Result<Vec<(u64, i32)>, ApplyError> {
        read_alarms(&self.db).map(|s| s.into_iter().collect())
    }

    /// A hash of every key version at or below `rev`, for comparing members.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, Revisions), ApplyError> {
        let snap = self.db.snapshot();
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        let revs = revisions_at(&self.db, &ro)?;
        let rev = if rev == 0 { revs.current } else { rev };
        let mut h = crc32fast::Hasher::new();
        for item in self.db.iterator_cf_opt(cf(&self.db, CF_HIST), ro, IteratorMode::Start) {
            let (k, v) = item.map_err(storage)?;
            if keys::split_hist(&k).is_some_and(|(_, r)| r <= rev) {
                h.update(&k);
                h.update(&v);
            }
        }
        Ok((h.finalize(), revs))
    }
}

fn lease_keys(db: &DB, id: i64) -> Result<Vec<Vec<u8>>, ApplyError> {
    let prefix = keys::lease_key(id);
    let mut out = Vec::new();
    for item in db.iterator_cf(cf(db, CF_LEASE_KEYS), IteratorMode::From(&prefix, Direction::Forward)) {
        let (k, _) = item.map_err(storage)?;
        if !k.starts_with(&prefix) {
            break;
        }
        out.push(k[8..].to_vec());
    }
    Ok(out)
}

/// The counters as the read options' snapshot sees them.
fn revisions_at(db: &DB, ro: &ReadOptions) -> Result<Revisions, ApplyError> {
    match db.get_cf_opt(cf(db, CF_META), META_REVS, ro).map_err(storage)? {
        Some(b) => bincode::deserialize(&b).map_err(storage),
        None => Ok(Revisions { current: 1, compacted: 0 }),
    }
}

fn read_revisions(db: &DB) -> Result<Revisions, ApplyError> {
    match db.get_cf(cf(db, CF_META), META_REVS).map_err(storage)? {
        Some(b) => bincode::deserialize(&b).map_err(storage),
        None => Ok(Revisions { current: 1, compacted: 0 }),
    }
}

fn read_alarms(db: &DB) -> Result<BTreeSet<(u64, i32)>, ApplyError> {
    let mut out = BTreeSet::new();
    for item in db.prefix_iterator_cf(cf(db, CF_META), META_ALARM) {
        let (k, _) = item.map_err(storage)?;
        if !k.starts_with(META_ALARM) {
            break;
        }
        let rest = &k[META_ALARM.len()..];
        if rest.len() == 12 {
            let member = u64::from_be_bytes(rest[..8].try_into().map_err(storage)?);
            let alarm = i32::from_be_bytes(rest[8..].try_into().map_err(storage)?);
            out.insert((member, alarm));
        }
    }
    Ok(out)
}

fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = META_ALARM.to_vec();
    k.extend_from_slice(&member.to_be_bytes());
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

/// The one writer: applies commands to the store. Commands are staged ([`Applier::stage`]) and
/// written together by [`Applier::commit`] in one RocksDB write batch, so a log entry of many
/// writes costs one write to RocksDB, not one per command.
pub struct Applier {
    store: Arc<Store>,
    /// The counters with every staged command counted.
    revs: Revisions,
    /// The counters as last written to RocksDB (and published to readers).
    written: Revisions,
    alarms: BTreeSet<(u64, i32)>,
    staged: Staged,
    /// The current keys as written (the staged ones are in `staged.overlay`).
    index: KeyIndex,
}

/// Commands applied but not yet written: their writes, and the keys they changed (later
/// commands of the same batch read them there).
#[derive(Default)]
struct Staged {
    batch: Ops,
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    meta: BTreeMap<&'static [u8], Vec<u8>>,
    events: Vec<(i64, Event)>,
    commands: usize,
}

/// A write of the state machine, by column family name. A command's writes are kept here
/// until it succeeds, so that a command that fails leaves nothing in the batch.
enum Op {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

#[derive(Default)]
struct Ops(Vec<Op>);

impl Ops {
    fn put_cf(&mut self, cf: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.0.push(Op::Put(cf, key.into(), value.into()));
    }

    fn delete_cf(&mut self, cf: &'static str, key: impl Into<Vec<u8>>) {
        self.0.push(Op::Delete(cf, key.into()));
    }

    fn delete_range_cf(&mut self, cf: &'static str, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.0.push(Op::DeleteRange(cf, from.into(), to.into()));
    }

    fn write_into(self, db: &DB, batch: &mut WriteBatch) {
        for op in self.0 {
            match op {
                Op::Put(c, k, v) => batch.put_cf(cf(db, c), k, v),
                Op::Delete(c, k) => batch.delete_cf(cf(db, c), k),
                Op::DeleteRange(c, from, to) => batch.delete_range_cf(cf(db, c), from, to),
            }
        }
    }
}

/// The writes of one transaction, and what it has changed so far (reads within the
/// transaction see its own earlier writes, as in etcd).
struct TxnCtx {
    rev: i64,
    sub: u32,
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    batch: Ops,
    /// The events written, for [`Store::remember`].
    events: Vec<(i64, Event)>,
}

impl Applier {
    pub fn new(store: Arc<Store>) -> Result<Self, ApplyError> {
        let revs = read_revisions(&store.db)?;
        let alarms = read_alarms(&store.db)?;
        let index = KeyIndex::load(&store.db)?;
        tracing::info!(keys = index.len(), revision = revs.current, "state machine loaded");
        Ok(Applier { store, revs, written: revs, alarms, staged: Staged::default(), index })
    }

    pub fn revisions(&self) -> Revisions {
        self.revs
    }

    /// Reloads the counters after a snapshot replaced the state. Drops anything staged.
    pub fn reload(&mut self) -> Result<(), ApplyError> {
        self.staged = Staged::default();
        self.revs = read_revisions(&self.store.db)?;
        self.written = self.revs;
        self.alarms = read_alarms(&self.store.db)?;
        self.index = KeyIndex::load(&self.store.db)?;
        self.store.remember(None, self.revs);
        self.store.publish(self.revs);
        Ok(())
    }

    /// Applies one command (or none, for Raft's own entries) together with `meta`, the
    /// caller's bookkeeping (applied log id, membership), in a single write batch, with
    /// anything staged before it.
    /// Only a storage failure is an `Err`; a command that fails answers `Response::Error`.
    pub fn apply(&mut self, cmd: Option<&Command>, meta: &[(&'static [u8], Vec<u8>)]) -> Result<Response, ApplyError> {
        let resp = match cmd {
            Some(cmd) => self.stage(cmd)?,
            None => Response::None,
        };
        for (k, v) in meta {
            self.stage_meta(k, v.clone());
        }
        self.commit()?;
        Ok(resp)
    }

    /// Whether `cmd` reads state that staged commands may have changed without going through
    /// the staged keys (leases, history at a past revision, the whole history for a
    /// compaction) or changes such state: it must be staged alone, with everything before it
    /// committed first and itself committed at once.
    pub fn stages_alone(cmd: &Command) -> bool {
        fn reads_past(ops: &[epb::RequestOp]) -> bool {
            ops.iter().any(|op| match &op.request {
                Some(OpRequest::RequestRange(r)) => r.revision > 0,
                Some(OpRequest::RequestTxn(t)) => reads_past(&t.success) || reads_past(&t.failure),
                _ => false,
            })
        }
        match cmd {
            Command::Put(_) | Command::DeleteRange(_) => false,
            Command::Txn(t) => reads_past(&t.success) || reads_past(&t.failure),
            _ => true,
        }
    }

    /// Commands staged and not yet committed.
    pub fn staged(&self) -> usize {
        self.staged.commands
    }

    /// Applies `cmd` to the staged state and answers what it did. Nothing is visible to
    /// readers until [`Applier::commit`]. A command for which [`Applier::stages_alone`] holds
    /// must be staged with nothing before it and committed at once.
    /// Only a storage failure is an `Err`; a command that fails answers `Response::Error`.
    pub fn stage(&mut self, cmd: &Command) -> Result<Response, ApplyError> {
        let mut ctx = TxnCtx {
            rev: self.revs.current + 1,
            sub: 0,
            overlay: BTreeMap::new(),
            batch: Ops::default(),
            events: Vec::new(),
        };
        let mut alarms = self.alarms.clone();
        let mut compacted = self.revs.compacted;
        let resp = match self.apply_command(&mut ctx, cmd, &mut alarms, &mut compacted) {
            Ok(resp) => resp,
            Err(ApplyError::Storage(e)) => return Err(ApplyError::Storage(e)),
            Err(e) => {
                self.staged.commands += 1;
                return Ok(Response::Error(e));
            }
        };
        let current = if ctx.sub > 0 { ctx.rev } else { self.revs.current };
        self.staged.batch.0.extend(ctx.batch.0);
        self.staged.events.extend(ctx.events);
        self.staged.overlay.extend(ctx.overlay);
        self.staged.commands += 1;
        self.revs = Revisions { current, compacted };
        self.alarms = alarms;
        Ok(resp)
    }

    /// Adds the caller's bookkeeping (applied log id, membership) to the next commit.
    pub fn stage_meta(&mut self, key: &'static [u8], value: Vec<u8>) {
        self.staged.meta.insert(key, value);
    }

    /// Writes everything staged in one batch, then shows it to readers and watchers.
    pub fn commit(&mut self) -> Result<(), ApplyError> {
        let staged = std::mem::take(&mut self.staged);
        let mut batch = WriteBatch::default();
        staged.batch.write_into(&self.store.db, &mut batch);
        let meta_cf = cf(&self.store.db, CF_META);
        for (k, v) in staged.meta {
            batch.put_cf(meta_cf, k, v);
        }
        if self.revs != self.written {
            batch.put_cf(meta_cf, META_REVS, bincode::serialize(&self.revs).expect("revisions serialize"));
        }
        // Not synced here: the Raft log holds the entry durably, and the next synced log append
        // syncs this write too (one WAL). A crash re-applies from the persisted applied index.
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        if let Err(e) = self.store.db.write_opt(batch, &wo) {
            // What was staged is lost with the batch: go back to what is written.
            self.revs = self.written;
            self.alarms = read_alarms(&self.store.db)?;
            return Err(storage(e));
        }
        self.written = self.revs;
        for (k, v) in &staged.overlay {
            self.index.set(k, v.as_ref().map(KeyMeta::of));
        }
        self.store.remember(Some(staged.events), self.revs);
        self.store.publish(self.revs);
        Ok(())
    }

    fn apply_command(
        &self,
        ctx: &mut TxnCtx,
        cmd: &Command,
        alarms: &mut BTreeSet<(u64, i32)>,
        compacted: &mut i64,
    ) -> Result<Response, ApplyError> {
        let no_space = alarms.iter().any(|(_, a)| *a == ALARM_NOSPACE);
        let header = |rev| Some(epb::ResponseHeader { revision: rev, ..Default::default() });
        match cmd {
            Command::Put(req) => {
                if no_space {
                    return Err(ApplyError::NoSpace);
                }
                self.check_put(ctx, req)?;
                let mut resp = self.put(ctx, req)?;
                resp.header = header(ctx.rev);
                Ok(Response::Put(resp))
            }
            Command::DeleteRange(req) => {
                let mut resp = self.delete_range(ctx, req)?;
                resp.header = header(if ctx.sub > 0 { ctx.rev } else { self.revs.current });
                Ok(Response::DeleteRange(resp))
            }
            Command::Txn(req) => {
                if no_space && txn_writes(req) {
                    return Err(ApplyError::NoSpace);
                }
                let mut resp = self.txn(ctx, req)?;
                resp.header = header(if ctx.sub > 0 { ctx.rev } else { self.revs.current });
                Ok(Response::Txn(resp))
            }
            Command::Compact { revision } => {
                self.compact(ctx, *revision)?;
                *compacted = *revision;
                Ok(Response::Done { revision: self.revs.current })
            }
            Command::LeaseGrant { id, ttl } => {
                if no_space {
                    return Err(ApplyError::NoSpace);
                }
                let lease_cf = cf(&self.store.db, CF_LEASE);
                if self.store.db.get_cf(lease_cf, keys::lease_key(*id)).map_err(storage)?.is_some() {
                    return Err(ApplyError::LeaseExists);
                }
                let rec = LeaseRecord { ttl: *ttl };
                ctx.batch.put_cf(CF_LEASE, keys::lease_key(*id), bincode::serialize(&rec).expect("lease serializes"));
                Ok(Response::LeaseGrant { id: *id, ttl: *ttl, revision: self.revs.current })
            }
            Command::LeaseRevoke { id } => {
                let lease_cf = cf(&self.store.db, CF_LEASE);
                if self.store.db.get_cf(lease_cf, keys::lease_key(*id)).map_err(storage)?.is_none() {
                    return Err(ApplyError::LeaseNotFound);
                }
                for key in lease_keys(&self.store.db, *id)? {
                    self.delete_range(ctx, &epb::DeleteRangeRequest { key, ..Default::default() })?;
                }
                ctx.batch.delete_cf(CF_LEASE, keys::lease_key(*id));
                let from = keys::lease_key(*id);
                let to = keys::lease_key(id.wrapping_add(1));
                if *id != i64::MAX {
                    ctx.batch.delete_range_cf(CF_LEASE_KEYS, from, to);
                }
                Ok(Response::Done { revision: if ctx.sub > 0 { ctx.rev } else { self.revs.current } })
            }
            Command::PublishMember { id, name, api_addr } => {
                let mut k = META_MEMBER.to_vec();
                k.extend_from_slice(&id.to_be_bytes());
                let attr = MemberAttr { name: name.clone(), api_addr: api_addr.clone() };
                ctx.batch.put_cf(CF_META, k, bincode::serialize(&attr).expect("member serializes"));
                Ok(Response::Done { revision: self.revs.current })
            }
            Command::Alarm { member, alarm, activate } => {
                let k = alarm_key(*member, *alarm);
                if *activate {
                    alarms.insert((*member, *alarm));
                    ctx.batch.put_cf(CF_META, k, []);
                } else {
                    alarms.remove(&(*member, *alarm));
                    ctx.batch.delete_cf(CF_META, k);
                }
                Ok(Response::Done { revision: self.revs.current })
            }
        }
    }

    fn get(&self, ctx: &TxnCtx, key: &[u8]) -> Result<Option<KeyValue>, ApplyError> {
        if let Some(v) = ctx.overlay.get(key).or_else(|| self.staged.overlay.get(key)) {
            return Ok(v.clone());
        }
        match self.store.db.get_cf(cf(&self.store.db, CF_KV), key).map_err(storage)? {
            Some(v) => Ok(Some(decode_kv(&v)?)),
            None => Ok(None),
        }
    }

    /// A current key's revisions and lease, from the index (no RocksDB read).
    fn meta(&self, ctx: &TxnCtx, key: &[u8]) -> Option<KeyMeta> {
        match ctx.overlay.get(key).or_else(|| self.staged.overlay.get(key)) {
            Some(v) => v.as_ref().map(KeyMeta::of),
            None => self.index.get(key),
        }
    }

    /// Current versions in a range, with the transaction's own writes laid over them.
    fn range_current(&self, ctx: &TxnCtx, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, ApplyError> {
        if end.is_empty() {
            return Ok(self.get(ctx, start)?.into_iter().collect());
        }
        let mut found = BTreeMap::new();
        scan_current(&self.store.db, ReadOptions::default(), start, end, |kv| {
            found.insert(kv.key.clone(), kv);
            true
        })?;
        for (k, v) in self.staged.overlay.iter().chain(&ctx.overlay) {
            if keys::in_range(k, start, end) {
                match v {
                    Some(kv) => found.insert(k.clone(), kv.clone()),
                    None => found.remove(k),
                };
            }
        }
        Ok(found.into_values().collect())
    }

    fn check_put(&self, ctx: &TxnCtx, req: &epb::PutRequest) -> Result<(), ApplyError> {
        if (req.ignore_value || req.ignore_lease) && self.meta(ctx, &req.key).is_none() {
            return Err(ApplyError::KeyNotFound);
        }
        if req.lease != 0 && !req.ignore_lease && self.store.lease(req.lease)?.is_none() {
            return Err(ApplyError::LeaseNotFound);
        }
        Ok(())
    }

    fn put(&self, ctx: &mut TxnCtx, req: &epb::PutRequest) -> Result<epb::PutResponse, ApplyError> {
        let prev = self.meta(ctx, &req.key);
        // The value replaced is read only when the request asks for it.
        let prev_kv = if req.prev_kv || req.ignore_value { self.get(ctx, &req.key)? } else { None };
        let rev = ctx.rev;
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: match (&prev_kv, req.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => req.value.clone(),
            },
            lease: match (&prev, req.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => req.lease,
            },
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != kv.lease {
                ctx.batch.delete_cf(CF_LEASE_KEYS, keys::lease_key_attach(p.lease, &kv.key));
            }
        }
        if kv.lease != 0 {
            ctx.batch.put_cf(CF_LEASE_KEYS, keys::lease_key_attach(kv.lease, &kv.key), []);
        }
        ctx.batch.put_cf(CF_KV, kv.key.clone(), kv.encode_to_vec());
        ctx.batch.put_cf(CF_HIST, keys::hist_key(&kv.key, rev), encode_hist(&kv, true));
        let event = Event { r#type: EventType::Put as i32, kv: Some(kv.clone()), prev_kv: None };
        ctx.batch.put_cf(CF_REVS, keys::rev_key(rev, ctx.sub), event.encode_to_vec());
        ctx.events.push((rev, event));
        ctx.sub += 1;
        ctx.overlay.insert(kv.key.clone(), Some(kv));
        Ok(epb::PutResponse { header: None, prev_kv: if req.prev_kv { prev_kv } else { None } })
    }

    fn delete_range(
        &self,
        ctx: &mut TxnCtx,
        req: &epb::DeleteRangeRequest,
    ) -> Result<epb::DeleteRangeResponse, ApplyError> {
        let victims = if req.range_end.is_empty() && !req.prev_kv {
            // One key, its value not wanted: the index knows all a tombstone needs.
            self.meta(ctx, &req.key).map(|m| m.to_kv(&req.key)).into_iter().collect()
        } else {
            self.range_current(ctx, &req.key, &req.range_end)?
        };
        let rev = ctx.rev;
        for prev in &victims {
            let tomb = KeyValue { key: prev.key.clone(), mod_revision: rev, ..Default::default() };
            if prev.lease != 0 {
                ctx.batch.delete_cf(CF_LEASE_KEYS, keys::lease_key_attach(prev.lease, &prev.key));
            }
            ctx.batch.delete_cf(CF_KV, prev.key.clone());
            ctx.batch.put_cf(CF_HIST, keys::hist_key(&prev.key, rev), encode_hist(&tomb, false));
            let event = Event { r#type: EventType::Delete as i32, kv: Some(tomb), prev_kv: None };
            ctx.batch.put_cf(CF_REVS, keys::rev_key(rev, ctx.sub), event.encode_to_vec());
            ctx.events.push((rev, event));
            ctx.sub += 1;
            ctx.overlay.insert(prev.key.clone(), None);
        }
        Ok(epb::DeleteRangeResponse {
            header: None,
            deleted: victims.len() as i64,
            prev_kvs: if req.prev_kv { victims } else { Vec::new() },
        })
    }

    fn compare(&self, ctx: &TxnCtx, c: &epb::Compare) -> Result<bool, ApplyError> {
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let kvs = if c.range_end.is_empty() && target != CompareTarget::Value {
            // One key, compared on a revision, version or lease: the index has them.
            self.meta(ctx, &c.key).map(|m| m.to_kv(&c.key)).into_iter().collect()
        } else {
            self.range_current(ctx, &c.key, &c.range_end)?
        };
        if kvs.is_empty() {
            if target == CompareTarget::Value {
                return Ok(false);
            }
            return Ok(compare_kv(c, target, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
    }

    /// Checks a branch's puts before anything is written, so that a transaction applies whole
    /// or not at all.
    fn check_ops(&self, ctx: &TxnCtx, ops: &[epb::RequestOp]) -> Result<(), ApplyError> {
        for op in ops {
            match &op.request {
                Some(OpRequest::RequestPut(p)) => self.check_put(ctx, p)?,
                Some(OpRequest::RequestTxn(t)) => {
                    let ok =
                        t.compare.iter().try_fold(true, |acc, c| Ok::<_, ApplyError>(acc && self.compare(ctx, c)?))?;
                    self.check_ops(ctx, if ok { &t.success } else { &t.failure })?;
                }
                Some(OpRequest::RequestRange(r)) => {
                    if r.revision > 0 && r.revision < self.revs.compacted {
                        return Err(ApplyError::Compacted);
                    }
                    if r.revision > self.revs.current {
                        return Err(ApplyError::FutureRevision);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn txn(&self, ctx: &mut TxnCtx, req: &epb::TxnRequest) -> Result<epb::TxnResponse, ApplyError> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare(ctx, c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &req.success } else { &req.failure };
        self.check_ops(ctx, ops)?;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(OpRequest::RequestRange(r)) => {
                    let resp = if r.revision > 0 && r.revision < self.revs.current {
                        let mut past = self.store.range(r)?;
                        past.header = None;
                        past
                    } else {
                        let kvs: Vec<KeyValue> = self
                            .range_current(ctx, &r.key, &r.range_end)?
                            .into_iter()
                            .filter(|kv| passes_filters(kv, r))
                            .collect();
                        let mut resp = finish_range(kvs, r, 0);
                        resp.header = None;
                        resp
                    };
                    OpResponse::ResponseRange(resp)
                }
                Some(OpRequest::RequestPut(p)) => OpResponse::ResponsePut(self.put(ctx, p)?),
                Some(OpRequest::RequestDeleteRange(d)) => OpResponse::ResponseDeleteRange(self.delete_range(ctx, d)?),
                Some(OpRequest::RequestTxn(t)) => OpResponse::ResponseTxn(self.txn(ctx, t)?),
                None => continue,
            };
            responses.push(epb::ResponseOp { response: Some(resp) });
        }
        Ok(epb::TxnResponse { header: None, succeeded, responses })
    }

    /// Drops history below `rev`: every version older than the newest one at or below `rev`,
    /// and that one too when it is a tombstone; events below `rev`.
    fn compact(&self, ctx: &mut TxnCtx, rev: i64) -> Result<(), ApplyError> {
        if rev <= self.revs.compacted {
            return Err(ApplyError::Compacted);
        }
        if rev > self.revs.current {
            return Err(ApplyError::FutureRevision);
        }
        let db = &self.store.db;
        let hist_cf = cf(db, CF_HIST);
        let mut group: Option<Vec<u8>> = None;
        // The newest version at or below `rev` seen so far in the group: (hist key, live).
        let mut keep: Option<(Vec<u8>, bool)> = None;
        let finish = |keep: &mut Option<(Vec<u8>, bool)>, batch: &mut Ops| {
            if let Some((k, false)) = keep.take() {
                batch.delete_cf(CF_HIST, k);
            }
        };
        for item in db.iterator_cf(hist_cf, IteratorMode::Start) {
            let (k, v) = item.map_err(storage)?;
            let Some((gk, r)) = keys::split_hist(&k) else { continue };
            if group.as_deref() != Some(gk) {
                finish(&mut keep, &mut ctx.batch);
                group = Some(gk.to_vec());
            }
            if r <= rev {
                if let Some((older, _)) = keep.take() {
                    ctx.batch.delete_cf(CF_HIST, older);
                }
                keep = Some((k.to_vec(), v.first() == Some(&1)));
            }
        }
        finish(&mut keep, &mut ctx.batch);
        ctx.batch.delete_range_cf(CF_REVS, keys::rev_key(0, 0), keys::rev_key(rev, 0));
        Ok(())
    }
}

/// Whether a transaction may write (a put in either branch, at any depth).
pub(crate) fn txn_writes(req: &epb::TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).any(|op| match &op.request {
        Some(OpRequest::RequestPut(_)) => true,
        Some(OpRequest::RequestTxn(t)) => txn_writes(t),
        _ => false,
    })
}

fn compare_kv(c: &epb::Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    let ord = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        CompareTarget::Version => kv.version.cmp(&int_target(c)),
        CompareTarget::Create => kv.create_revision.cmp(&int_target(c)),
        CompareTarget::Mod => kv.mod_revision.cmp(&int_target(c)),
        CompareTarget::Lease => kv.lease.cmp(&int_target(c)),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

fn int_target(c: &epb::Compare) -> i64 {
    match c.target_union {
        Some(TargetUnion::Version(v))
        | Some(TargetUnion::CreateRevision(v))
        | Some(TargetUnion::ModRevision(v))
        | Some(TargetUnion::Lease(v)) => v,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::{self, Identity};

    fn fresh() -> (tempfile::TempDir, Arc<Store>, Applier) {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let opened = db::open(&dir.path().join("d"), Identity { cluster_id: 1, member_id: 1 }).expect("opening");
        let store = Store::new(opened.db).expect("store");
        let applier = Applier::new(store.clone()).expect("applier");
        (dir, store, applier)
    }

    fn put(a: &mut Applier, k: &str, v: &str) -> Response {
        let req = epb::PutRequest { key: k.into(), value: v.into(), prev_kv: true, ..Default::default() };
        a.apply(Some(&Command::Put(req)), &[]).expect("apply")
    }

    fn del(a: &mut Applier, k: &str, end: &str) -> Response {
        let req = epb::DeleteRangeRequest { key: k.into(), range_end: end.into(), prev_kv: true };
        a.apply(Some(&Command::DeleteRange(req)), &[]).expect("apply")
    }

    /// (key, value, create_revision, mod_revision, version)
    type Row = (String, String, i64, i64, i64);

    fn range(s: &Store, k: &str, end: &str, rev: i64) -> Result<Vec<Row>, ApplyError> {
        let req = epb::RangeRequest { key: k.into(), range_end: end.into(), revision: rev, ..Default::default() };
        Ok(s.range(&req)?
            .kvs
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8(kv.key).unwrap();
                (key, String::from_utf8(kv.value).unwrap(), kv.create_revision, kv.mod_revision, kv.version)
            })
            .collect())
    }

    #[test]
    fn staged_commands_see_each_other_and_show_only_once_committed() {
        let (_d, s, mut a) = fresh();
        let put_req =
            |k: &str, v: &str| Command::Put(epb::PutRequest { key: k.into(), value: v.into(), ..Default::default() });
        a.stage(&put_req("a", "1")).expect("stage");
        a.stage(&put_req("a", "2")).expect("stage");
        // A command that fails leaves nothing staged: an ignore_value put of a key never written.
        let bad = Command::Put(epb::PutRequest { key: b"nope".to_vec(), ignore_value: true, ..Default::default() });
        assert!(matches!(a.stage(&bad).expect("stage"), Response::Error(ApplyError::KeyNotFound)));
        let del = Command::DeleteRange(epb::DeleteRangeRequest { key: b"a".to_vec(), ..Default::default() });
        a.stage(&del).expect("stage");
        a.stage(&put_req("a", "3")).expect("stage");
        assert_eq!(a.staged(), 5);
        assert_eq!(s.revisions().current, 1, "nothing is visible before the commit");
        assert!(range(&s, "a", "", 0).unwrap().is_empty());
        a.commit().expect("commit");
        assert_eq!(s.revisions().current, 5);
        // The second put saw the first (version 2), the delete ended that life, the last put
        // began a new one.
        assert_eq!(range(&s, "a", "", 3).unwrap(), vec![("a".into(), "2".into(), 2, 3, 2)]);
        assert!(range(&s, "a", "", 4).unwrap().is_empty());
        assert_eq!(range(&s, "a", "", 0).unwrap(), vec![("a".into(), "3".into(), 5, 5, 1)]);
        assert!(range(&s, "nope", "", 0).unwrap().is_empty());
        // A fresh applier over the same store knows the keys (its index is loaded from RocksDB).
        let mut b = Applier::new(s.clone()).expect("applier");
        match put(&mut b, "a", "4") {
            Response::Put(r) => assert_eq!(r.prev_kv.map(|kv| (kv.version, kv.create_revision)), Some((1, 5))),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(range(&s, "a", "", 0).unwrap(), vec![("a".into(), "4".into(), 5, 6, 2)]);
    }

    #[test]
    fn recent_events_in_memory_read_the_same_as_from_rocksdb() {
        let (_d, s, mut a) = fresh();
        for i in 0..RECENT_EVENTS + 300 {
            put(&mut a, &format!("k{}", i % 50), &i.to_string());
            if i % 7 == 0 {
                del(&mut a, &format!("k{}", i % 50), "");
            }
        }
        let oldest_kept = s.recent.read().from;
        assert!(oldest_kept > 2, "the oldest events were dropped from memory");
        let current = s.revisions().current;
        for from in [2, oldest_kept - 1, oldest_kept, oldest_kept + 1, current - 3, current, current + 1, current + 5] {
            for max in [1, 3, 100, 5000] {
                let mem = s.events(from, max).unwrap();
                let db = s.events_from_db(from, max, |_| true).unwrap();
                assert_eq!((&mem.events, mem.next, mem.revs), (&db.events, db.next, db.revs), "from {from}, max {max}");
                // A filter drops events from the batch, not from what the batch covers.
                let ones = |ev: &Event| ev.kv.as_ref().is_some_and(|kv| kv.key.ends_with(b"1"));
                let want: Vec<Event> = mem.events.iter().filter(|ev| ones(ev)).cloned().collect();
                for filtered in [s.events_where(from, max, ones).unwrap(), s.events_from_db(from, max, ones).unwrap()] {
                    assert_eq!(
                        (&filtered.events, filtered.next),
                        (&want, mem.next),
                        "from {from}, max {max}, filtered"
                    );
                }
            }
        }
        a.apply(Some(&Command::Compact { revision: oldest_kept + 10 }), &[]).expect("compact");
        assert_eq!(s.events(oldest_kept + 9, 10).unwrap_err(), ApplyError::Compacted);
        let mem = s.events(oldest_kept + 10, 10).unwrap();
        assert_eq!(mem.events, s.events_from_db(oldest_kept + 10, 10, |_| true).unwrap().events);
    }

    #[test]
    fn writes_bump_revisions_and_versions_like_etcd() {
        let (_d, s, mut a) = fresh();
        assert_eq!(s.revisions().current, 1, "an empty store is at revision 1, as etcd");
        put(&mut a, "a", "1");
        put(&mut a, "a", "2");
        put(&mut a, "b", "x");
        assert_eq!(range(&s, "a", "", 0).unwrap(), vec![("a".into(), "2".into(), 2, 3, 2)]);
        assert_eq!(range(&s, "a", "", 2).unwrap(), vec![("a".into(), "1".into(), 2, 2, 1)]);
        assert_eq!(range(&s, "a", "c", 3).unwrap().len(), 1, "b did not exist at revision 3");
        match del(&mut a, "a", "\0") {
            Response::DeleteRange(r) => {
                assert_eq!(r.deleted, 2);
                assert_eq!(r.header.unwrap().revision, 5, "one revision for the whole delete");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(range(&s, "a", "\0", 0).unwrap().is_empty());
        assert_eq!(range(&s, "a", "\0", 4).unwrap().len(), 2);
        // A delete that matches nothing writes nothing.
        del(&mut a, "zzz", "");
        assert_eq!(s.revisions().current, 5);
        // A key created again starts a new life.
        put(&mut a, "a", "3");
        assert_eq!(range(&s, "a", "", 0).unwrap(), vec![("a".into(), "3".into(), 6, 6, 1)]);
        assert_eq!(range(&s, "a", "", 7).unwrap_err(), ApplyError::FutureRevision);
    }

    #[test]
    fn transactions_compare_and_see_their_own_writes() {
        let (_d, s, mut a) = fresh();
        put(&mut a, "k", "v1");
        let cmp = |target: CompareTarget, result: CompareResult, tu: TargetUnion| epb::Compare {
            result: result as i32,
            target: target as i32,
            key: b"k".to_vec(),
            target_union: Some(tu),
            range_end: vec![],
        };
        let op_put = |k: &str, v: &str| epb::RequestOp {
            request: Some(OpRequest::RequestPut(epb::PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })),
        };
        let op_get = |k: &str| epb::RequestOp {
            request: Some(OpRequest::RequestRange(epb::RangeRequest { key: k.into(), ..Default::default() })),
        };
        let txn = epb::TxnRequest {
            compare: vec![cmp(CompareTarget::Value, CompareResult::Equal, TargetUnion::Value(b"v1".to_vec()))],
            success: vec![op_put("k", "v2"), op_get("k")],
            failure: vec![op_put("other", "x")],
        };
        let Response::Txn(r) = a.apply(Some(&Command::Txn(txn.clone())), &[]).unwrap() else { panic!() };
        assert!(r.succeeded);
        let Some(OpResponse::ResponseRange(got)) = &r.responses[1].response else { panic!() };
        assert_eq!(got.kvs[0].value, b"v2", "a read in a transaction sees the transaction's own write");
        // The same compare now fails: the failure branch runs.
        let Response::Txn(r) = a.apply(Some(&Command::Txn(txn)), &[]).unwrap() else { panic!() };
        assert!(!r.succeeded);
        assert_eq!(range(&s, "other", "", 0).unwrap().len(), 1);
        // A missing key has version 0 and never equals a value.
        let missing = epb::Compare {
            key: b"nope".to_vec(),
            ..cmp(CompareTarget::Version, CompareResult::Equal, TargetUnion::Version(0))
        };
        assert!(a
            .compare(
                &TxnCtx { rev: 0, sub: 0, overlay: BTreeMap::new(), batch: Ops::default(), events: Vec::new() },
                &missing,
            )
            .unwrap());
        // A put with an unknown lease fails whole and writes nothing.
        let before = s.revisions().current;
        let bad = epb::TxnRequest {
            success: vec![
                op_put("x", "1"),
                epb::RequestOp {
                    request: Some(OpRequest::RequestPut(epb::PutRequest {
                        key: b"y".to_vec(),
                        lease: 99,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        assert!(matches!(a.apply(Some(&Command::Txn(bad)), &[]).unwrap(), Response::Error(ApplyError::LeaseNotFound)));
        assert_eq!(s.revisions().current, before);
        assert!(range(&s, "x", "", 0).unwrap().is_empty());
    }

    #[test]
    fn event_batches_hold_whole_revisions_and_say_where_to_go_on() {
        let (_d, s, mut a) = fresh();
        // Revisions 2..=11 with two events each (a delete of two keys), then 12 with one.
        for i in 0..10 {
            put(&mut a, &format!("p{i}a"), "1");
            put(&mut a, &format!("p{i}b"), "1");
        }
        for i in 0..10 {
            del(&mut a, &format!("p{i}a"), &format!("p{i}c"));
        }
        put(&mut a, "last", "1");
        let from = 22; // the first delete
        let revs_of = |b: &EventBatch| b.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect::<Vec<_>>();
        let mut seen = Vec::new();
        let mut next = from;
        let mut reads = 0;
        while next <= s.revisions().current {
            let b = s.events(next, 3).unwrap();
            let revs = revs_of(&b);
            assert!(revs.len() <= 4, "a batch of 3 takes at most one more to finish a revision: {revs:?}");
            assert!(revs.windows(2).all(|w| w[0] <= w[1]));
            next = b.next;
            seen.extend(revs);
            reads += 1;
        }
        let mut want: Vec<i64> = (22..32).flat_map(|r| [r, r]).collect();
        want.push(32);
        assert_eq!(seen, want, "every event of every revision, once, in order");
        assert!(reads >= 6, "the batches were limited ({reads} reads)");
        let all = s.events(from, 1000).unwrap();
        assert_eq!(all.next, 33, "a read that reached the end goes on after the current revision");
        assert_eq!(s.events(40, 10).unwrap().next, 40, "a read from the future stays where it was asked to start");
    }

    #[test]
    fn compaction_drops_history_but_keeps_the_compacted_revision_readable() {
        let (_d, s, mut a) = fresh();
        put(&mut a, "a", "1"); // 2
        put(&mut a, "a", "2"); // 3
        put(&mut a, "b", "1"); // 4
        del(&mut a, "b", ""); // 5
        put(&mut a, "a", "3"); // 6
        assert!(matches!(a.apply(Some(&Command::Compact { revision: 5 }), &[]).unwrap(), Response::Done { .. }));
        assert_eq!(range(&s, "a", "", 4).unwrap_err(), ApplyError::Compacted);
        assert_eq!(range(&s, "a", "\0", 5).unwrap(), vec![("a".into(), "2".into(), 2, 3, 2)]);
        assert_eq!(range(&s, "a", "", 0).unwrap()[0].1, "3");
        assert_eq!(s.events(4, 100).unwrap_err(), ApplyError::Compacted);
        let events = s.events(5, 100).unwrap().events;
        assert_eq!(events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect::<Vec<_>>(), vec![5, 6]);
        assert!(matches!(
            a.apply(Some(&Command::Compact { revision: 5 }), &[]).unwrap(),
            Response::Error(ApplyError::Compacted)
        ));
        // Only the newest version at or below the compaction point survives.
        let hist = s.db.iterator_cf(cf(&s.db, CF_HIST), IteratorMode::Start).count();
        assert_eq!(hist, 2, "a@3 and a@6 remain; b's tombstone and older versions are gone");
    }

    #[test]
    fn revoking_a_lease_deletes_its_keys_in_one_revision() {
        let (_d, s, mut a) = fresh();
        a.apply(Some(&Command::LeaseGrant { id: 7, ttl: 10 }), &[]).unwrap();
        for k in ["l1", "l2"] {
            let req = epb::PutRequest { key: k.into(), value: b"v".to_vec(), lease: 7, ..Default::default() };
            a.apply(Some(&Command::Put(req)), &[]).unwrap();
        }
        put(&mut a, "free", "v");
        assert_eq!(s.lease_keys(7).unwrap(), vec![b"l1".to_vec(), b"l2".to_vec()]);
        let before = s.revisions().current;
        a.apply(Some(&Command::LeaseRevoke { id: 7 }), &[]).unwrap();
        assert_eq!(s.revisions().current, before + 1);
        assert_eq!(range(&s, "a", "z", 0).unwrap().len(), 1);
        assert!(s.lease(7).unwrap().is_none());
        assert!(matches!(
            a.apply(Some(&Command::LeaseRevoke { id: 7 }), &[]).unwrap(),
            Response::Error(ApplyError::LeaseNotFound)
        ));
    }

    #[test]
    fn snapshot_restore_replaces_the_state_atomically() {
        let (_d, s, mut a) = fresh();
        put(&mut a, "a", "1");
        put(&mut a, "b", "2");
        let snap = s.db.snapshot();
        let bytes = crate::store::snapshot::dump(&s.db, &snap, Vec::new()).unwrap();
        drop(snap);
        let (_d2, s2, mut a2) = fresh();
        put(&mut a2, "zzz", "gone after restore");
        // A damaged snapshot is refused and changes nothing.
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xFF;
        assert!(crate::store::snapshot::restore(&s2.db, bad.as_slice()).is_err());
        assert_eq!(range(&s2, "zzz", "", 0).unwrap().len(), 1);
        crate::store::snapshot::restore(&s2.db, bytes.as_slice()).unwrap();
        a2.reload().unwrap();
        assert_eq!(range(&s2, "a", "\0", 0).unwrap().len(), 2);
        assert!(range(&s2, "zzz", "", 0).unwrap().is_empty());
        assert_eq!(s2.revisions(), s.revisions());
    }
}
