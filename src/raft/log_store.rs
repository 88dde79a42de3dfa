//! The Raft log and vote in RocksDB.
//!
//! Appends are written at once without a sync, so that they are readable straight away. A
//! leader's syncs happen on one dedicated thread that takes every append waiting at that moment
//! and covers them with a single `fsync` (group commit). The vote is synced before `save_vote`
//! returns.
//!
//! A follower acknowledges an append to openraft only after its sync: its answer to the leader
//! says the entries are durable. It syncs on the calling task: openraft 0.9 sends a follower one
//! AppendEntries at a time, so there is nothing to group, and of the 280 µs a follower took to
//! answer a lone write, 32 µs went to waiting for the thread and part of another 40 µs to the
//! result's way back (bench/README.md). The leader's own new entries are acknowledged at once, so that
//! openraft replicates them while the leader's sync runs instead of after it (openraft 0.9
//! waits for the leader's flush before it sends), as Raft allows (Ongaro's thesis, 10.2.1) and
//! etcd does. Nothing is lost by it: the leader still counts a follower's durable copy before it
//! commits, and the state machine applies an entry, which is what answers the client and what
//! reads see, only once the leader's sync has covered it too ([`Durability`]). So every
//! acknowledged write is on the disks of a majority.
//!
//! The followers must not apply such an entry before the leader's sync either: a follower that
//! applied an entry the leader then lost in a power failure could see it overwritten by a leader
//! elected without it. So the leader never tells a follower an index is committed before its own
//! sync has covered it ([`Durability::commit_to_send`], used by the network on every
//! AppendEntries).

// openraft's storage traits fix `StorageError` (large) as the error type; helpers return it too
// rather than converting at every call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::TypeConfig;
use crate::store::db::{CF_LOG, CF_RAFT};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<u64>>;

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column families are created when the database opens")
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

/// Counters of the group commit, for the benchmark and metrics.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub syncs: std::sync::atomic::AtomicU64,
    pub appends: std::sync::atomic::AtomicU64,
    pub entries: std::sync::atomic::AtomicU64,
}

/// How far the log's WAL syncs have got, so that the state machine can wait for the sync of
/// entries the leader acknowledged before syncing them, and the leader can hold back a commit
/// index its followers must not apply yet.
#[derive(Debug)]
pub struct Durability {
    /// Sequence number of the last append.
    appended: AtomicU64,
    /// Sequence number of the last append acknowledged before its sync.
    early: AtomicU64,
    /// How far the syncs have got; `Err` once a sync failed.
    synced: tokio::sync::watch::Sender<Result<Synced, String>>,
}

/// Every append up to sequence number `seq` is synced; `last` is the last log id of append `seq`.
#[derive(Debug, Default, Clone, Copy)]
struct Synced {
    seq: u64,
    last: Option<LogId<u64>>,
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            appended: AtomicU64::new(0),
            early: AtomicU64::new(0),
            synced: tokio::sync::watch::Sender::new(Ok(Synced::default())),
        }
    }
}

impl Durability {
    /// Waits until every entry this member acknowledged before its sync is synced. Fails if a
    /// sync failed: the entries may not be on disk, so they must not be applied.
    pub async fn wait_synced(&self) -> Result<(), String> {
        let early = self.early.load(Ordering::Acquire);
        if early == 0 {
            return Ok(());
        }
        self.wait_until(|s| s.seq >= early).await
    }

    /// Waits until the syncs have got as far as `done` says; fails once a sync failed.
    async fn wait_until(&self, done: impl Fn(&Synced) -> bool) -> Result<(), String> {
        let mut rx = self.synced.subscribe();
        let state = rx.wait_for(|s| !matches!(s, Ok(n) if !done(n))).await;
        match state.as_deref() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("syncing the Raft log failed: {e}")),
            Err(_) => Err("the Raft log's sync thread stopped".into()),
        }
    }

    /// The commit index a leader may send with an AppendEntries carrying `entries` entries,
    /// given openraft's `committed`: never one its own sync has not covered yet. With entries to
    /// send, an unsynced commit index is lowered to the last synced entry of the same term (the
    /// entries go out now; the commit follows with the next message, which openraft sends when
    /// the commit index moves on). Otherwise this waits for the sync: a message carrying only a
    /// commit index loses nothing by waiting, and no later one may come to carry it.
    pub async fn commit_to_send(
        &self,
        committed: Option<LogId<u64>>,
        entries: usize,
    ) -> Result<Option<LogId<u64>>, String> {
        let Some(c) = committed else { return Ok(None) };
        let covers = |s: &Synced| s.last >= Some(c);
        let synced = match &*self.synced.borrow() {
            Ok(s) => *s,
            Err(e) => return Err(format!("syncing the Raft log failed: {e}")),
        };
        if covers(&synced) {
            return Ok(committed);
        }
        if entries > 0 {
            // Entries of one term sit at consecutive indexes, so an index of `c`'s term below
            // `c` is in the log as the synced entry; anything else is held back entirely.
            return Ok(synced.last.filter(|s| s.leader_id == c.leader_id));
        }
        self.wait_until(covers).await.map(|()| committed)
    }
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<Syncer>,
    /// This member's id: entries of its own leadership are acknowledged before their sync.
    id: u64,
    /// The last vote saved or read.
    vote: Option<Vote<u64>>,
    durability: Arc<Durability>,
}

/// Appends to sync: a leader's one waiting for the sync thread (openraft was told it is flushed
/// already), or what one sync covers.
struct Pending {
    seq: u64,
    entries: u64,
    /// The log id of its last entry.
    last: Option<LogId<u64>>,
}

/// The sync thread's handle. Dropping the last clone of the store closes the channel and joins
/// the thread, so the thread's reference to the database is gone when the store is: RocksDB must
/// not be closed by a detached thread racing the process's exit.
struct Syncer {
    stats: Arc<SyncStats>,
    tx: Option<mpsc::Sender<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl LogStore {
    /// The log of member `id`, whose syncs are reported to `durability`.
    pub fn new(db: Arc<DB>, stats: Arc<SyncStats>, id: u64, durability: Arc<Durability>) -> Self {
        let (tx, rx) = mpsc::channel::<Pending>();
        let sync_db = db.clone();
        let (sync_durability, sync_stats) = (durability.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_loop(sync_db, rx, sync_stats, sync_durability))
            .expect("spawning the log sync thread");
        let syncer = Syncer { stats, tx: Some(tx), thread: Some(thread) };
        LogStore { db, syncer: Arc::new(syncer), id, vote: None, durability }
    }

    /// Whether `entries` are this member's own as the leader of the current term.
    fn leading(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let Some(vote) = &self.vote else { return false };
        vote.committed
            && vote.leader_id.node_id == self.id
            && entries.iter().all(|e| e.log_id.leader_id == vote.leader_id)
    }

    fn get_raft<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self.db.get_cf(cf(&self.db, CF_RAFT), key).map_err(read_err)? {
            Some(b) => Ok(Some(bincode::deserialize(&b).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_raft<T: serde::Serialize>(&self, key: &[u8], value: &T, sync: bool) -> StorageResult<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        let bytes = bincode::serialize(value).map_err(write_err)?;
        self.db.put_cf_opt(cf(&self.db, CF_RAFT), key, bytes, &wo).map_err(write_err)
    }
}

/// Syncs the WAL for `appends` appends, covered by `upto` (the last one's sequence number and
/// log id, all of their entries), and records it in `durability` and `stats`.
fn sync(
    db: &DB,
    stats: &SyncStats,
    durability: &Durability,
    appends: u64,
    upto: &Pending,
) -> Result<(), std::io::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let &Pending { seq, entries, last } = upto;
    let result = db.flush_wal(true).map_err(std::io::Error::other);
    stats.syncs.fetch_add(1, Relaxed);
    stats.appends.fetch_add(appends, Relaxed);
    stats.entries.fetch_add(entries, Relaxed);
    // A sync covers every append written before it. The sync thread and a follower's own sync
    // may finish out of order: the marks stay with the latest append synced.
    durability.synced.send_modify(|s| match (&result, s.as_mut()) {
        (Ok(()), Ok(n)) => {
            if seq >= n.seq {
                n.seq = seq;
                n.last = last.or(n.last);
            }
        }
        (Err(e), _) => *s = Err(e.to_string()),
        (Ok(()), Err(_)) => {}
    });
    result
}

/// Waits for a leader's appends, then syncs the WAL once for all of them. A failed sync is
/// recorded in the durability marks, which stops the state machine from applying the entries
/// and the leader from sending their commit.
fn sync_loop(db: Arc<DB>, rx: mpsc::Receiver<Pending>, stats: Arc<SyncStats>, durability: Arc<Durability>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        // Appends arrive in sequence order, so the last one received is the furthest synced.
        let upto = Pending {
            seq: waiting.last().map_or(0, |p| p.seq),
            entries: waiting.iter().map(|p| p.entries).sum(),
            last: waiting.iter().rev().find_map(|p| p.last),
        };
        if let Err(e) = sync(&db, &stats, &durability, waiting.len() as u64, &upto) {
            tracing::error!(error = %e, "syncing the Raft log failed");
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let from = start.to_be_bytes();
        for item in self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::From(&from, Direction::Forward)) {
            let (k, v) = item.map_err(read_err)?;
            let idx =
                u64::from_be_bytes(k.as_ref().try_into().map_err(|_| read_err(std::io::Error::other("bad log key")))?);
            if !range.contains(&idx) {
                break;
            }
            out.push(bincode::deserialize(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = self.get_raft(PURGED)?;
        let mut it = self.db.raw_iterator_cf(cf(&self.db, CF_LOG));
        it.seek_to_last();
        let last = match it.value() {
            Some(v) => Some(bincode::deserialize::<Entry<TypeConfig>>(v).map_err(read_err)?.log_id),
            None => {
                it.status().map_err(read_err)?;
                last_purged
            }
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.put_raft(VOTE, vote, true).map_err(|e| -> StorageError<u64> {
            StorageIOError::write_vote(&std::io::Error::other(e.to_string())).into()
        })?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.vote = self.get_raft(VOTE)?;
        Ok(self.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        // Unsynced: the committed index is a hint that lets a restarted member apply sooner; a
        // lost one is learned again from the leader.
        self.put_raft(COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.get_raft::<Option<LogId<u64>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut batch = WriteBatch::default();
        let log_cf = cf(&self.db, CF_LOG);
        for entry in &entries {
            let bytes = bincode::serialize(entry).map_err(write_err)?;
            batch.put_cf(log_cf, entry.log_id.index.to_be_bytes(), bytes);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(batch, &wo).map_err(write_err)?;
        let seq = self.durability.appended.fetch_add(1, Ordering::AcqRel) + 1;
        let pending = Pending { seq, entries: entries.len() as u64, last: entries.last().map(|e| e.log_id) };
        if !self.leading(&entries) {
            // Anyone else's entries are durable once synced, here and now (see the module's
            // documentation).
            callback.log_io_completed(sync(&self.db, &self.syncer.stats, &self.durability, 1, &pending));
            return Ok(());
        }
        // A leader's own entries count as its copy at once; the sync thread syncs them.
        self.durability.early.store(seq, Ordering::Release);
        callback.log_io_completed(Ok(()));
        let sent = self.syncer.tx.as_ref().map(|tx| tx.send(pending));
        if !matches!(sent, Some(Ok(()))) {
            return Err(write_err(std::io::Error::other("log sync thread stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let log_cf = cf(&self.db, CF_LOG);
        self.db.delete_range_cf(log_cf, log_id.index.to_be_bytes(), u64::MAX.to_be_bytes()).map_err(write_err)?;
        self.db.delete_cf(log_cf, u64::MAX.to_be_bytes()).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT), PURGED, bincode::serialize(&log_id).map_err(write_err)?);
        batch.delete_range_cf(cf(&self.db, CF_LOG), 0u64.to_be_bytes(), (log_id.index + 1).to_be_bytes());
        self.db.write(batch).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::{Durability, Synced};

    fn id(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn synced(d: &Durability, seq: u64, last: Option<LogId<u64>>) {
        d.synced.send_modify(|s| *s = Ok(Synced { seq, last }));
    }

    /// A commit index goes to a follower only once the leader's own sync covers it: lowered to
    /// the synced entry of its term when entries go with it, waited for when it goes alone.
    #[tokio::test]
    async fn a_commit_index_is_sent_only_once_the_local_sync_covers_it() {
        let d = Durability::default();
        assert_eq!(d.commit_to_send(None, 0).await, Ok(None));

        synced(&d, 1, id(2, 10));
        assert_eq!(d.commit_to_send(id(2, 10), 0).await, Ok(id(2, 10)), "covered exactly");
        assert_eq!(d.commit_to_send(id(1, 50), 3).await, Ok(id(1, 50)), "an earlier term is covered");

        // Ahead of the sync, with entries: the synced entry of the same term, or nothing.
        assert_eq!(d.commit_to_send(id(2, 12), 5).await, Ok(id(2, 10)));
        assert_eq!(d.commit_to_send(id(3, 11), 5).await, Ok(None));

        // Ahead of the sync, alone: it waits, and goes out once the sync gets there.
        let d = std::sync::Arc::new(d);
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.commit_to_send(id(3, 11), 0).await }
        });
        tokio::task::yield_now().await;
        synced(&d, 2, id(3, 10));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "sent before the sync covered it");
        synced(&d, 3, id(3, 11));
        assert_eq!(waiting.await.expect("the wait ends"), Ok(id(3, 11)));

        // A failed sync fails the send: the entries may not be on disk.
        d.synced.send_modify(|s| *s = Err("disk gone".into()));
        let err = d.commit_to_send(id(3, 12), 0).await.expect_err("a failed sync");
        assert!(err.contains("disk gone"), "{err}");
    }
}
