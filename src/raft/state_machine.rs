//! openraft's state machine side: applies committed entries to the store's [`Applier`], and
//! builds, sends and installs snapshots as files under `<data-dir>/snapshots/`.
//!
//! The applied log id and membership are written in the same RocksDB batch as the data they
//! describe. A snapshot file is `[u32 meta length][bincode SnapshotMeta][store dump]`.

// openraft's storage traits fix `StorageError` (large) as the error type; helpers return it too
// rather than converting at every call.
#![allow(clippy::result_large_err)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use rocksdb::DB;
use tokio::io::AsyncSeekExt;

use super::log_store::Durability;
use super::{Member, TypeConfig};
use crate::store::db::CF_META;
use crate::store::{snapshot, Applier, Response, Store};

const APPLIED: &[u8] = b"raft/applied";
const MEMBERSHIP: &[u8] = b"raft/membership";
/// (log index, commands applied) of the entry being applied, written with each command.
const PARTIAL: &[u8] = b"raft/partial";
const CURRENT: &str = "current.snap";

type StorageResult<T> = Result<T, StorageError<u64>>;

fn sm_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

pub struct StateMachine {
    db: Arc<DB>,
    applier: Applier,
    dir: PathBuf,
    incoming: Option<PathBuf>,
    /// How far into a log entry of several commands the state machine got.
    partial: Option<(u64, usize)>,
    /// The log's syncs: an entry is applied only once it is synced here too.
    durability: Arc<Durability>,
}

impl StateMachine {
    pub fn new(
        store: Arc<Store>,
        snapshot_dir: PathBuf,
        durability: Arc<Durability>,
    ) -> Result<Self, StorageError<u64>> {
        std::fs::create_dir_all(&snapshot_dir).map_err(sm_err)?;
        let meta = store.db().cf_handle(CF_META).expect("column family exists");
        let partial = match store.db().get_cf(meta, PARTIAL).map_err(sm_err)? {
            Some(b) => Some(bincode::deserialize(&b).map_err(sm_err)?),
            None => None,
        };
        Ok(StateMachine {
            partial,
            db: store.db().clone(),
            applier: Applier::new(store).map_err(sm_err)?,
            dir: snapshot_dir,
            incoming: None,
            durability,
        })
    }

    /// Commits what is staged, up to command `done` of the entry at `index`.
    fn commit_partial(&mut self, index: u64, done: usize) -> Result<(), crate::store::ApplyError> {
        let marker =
            bincode::serialize(&(index, done)).map_err(|e| crate::store::ApplyError::Storage(e.to_string()))?;
        self.applier.stage_meta(PARTIAL, marker);
        self.applier.commit()?;
        self.partial = Some((index, done));
        Ok(())
    }
}

type Applied = (Option<LogId<u64>>, StoredMembership<u64, Member>);

fn read_applied(db: &DB, ro: &rocksdb::ReadOptions) -> StorageResult<Applied> {
    let meta = db.cf_handle(CF_META).expect("column family exists");
    let applied = match db.get_cf_opt(meta, APPLIED, ro).map_err(sm_err)? {
        Some(b) => bincode::deserialize(&b).map_err(sm_err)?,
        None => None,
    };
    let membership = match db.get_cf_opt(meta, MEMBERSHIP, ro).map_err(sm_err)? {
        Some(b) => bincode::deserialize(&b).map_err(sm_err)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Writes a snapshot file of the current state and returns its meta. Blocking.
fn write_snapshot_file(db: &DB, dir: &Path) -> StorageResult<SnapshotMeta<u64, Member>> {
    let snap = db.snapshot();
    let mut ro = rocksdb::ReadOptions::default();
    ro.set_snapshot(&snap);
    let (applied, membership) = read_applied(db, &ro)?;
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: format!(
            "{}-{}",
            applied.map(|l| l.leader_id.term).unwrap_or(0),
            applied.map(|l| l.index).unwrap_or(0)
        ),
    };
    let tmp = dir.join(format!("{}.tmp", meta.snapshot_id));
    let file = std::fs::File::create(&tmp).map_err(sm_err)?;
    let mut w = std::io::BufWriter::new(file);
    write_meta(&mut w, &meta)?;
    let w = snapshot::dump(db, &snap, w).map_err(sm_err)?;
    let file = w.into_inner().map_err(sm_err)?;
    file.sync_all().map_err(sm_err)?;
    std::fs::rename(&tmp, dir.join(CURRENT)).map_err(sm_err)?;
    Ok(meta)
}

/// Reads the meta at the head of a snapshot file, leaving the reader at the store dump.
fn read_meta(r: &mut impl Read) -> StorageResult<SnapshotMeta<u64, Member>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(snap_err)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 64 << 20 {
        return Err(snap_err("snapshot meta header is implausibly large"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(snap_err)?;
    bincode::deserialize(&buf).map_err(snap_err)
}

/// Writes the header of a snapshot file: the meta, length-prefixed.
fn write_meta(w: &mut impl Write, meta: &SnapshotMeta<u64, Member>) -> StorageResult<()> {
    let meta_bytes = bincode::serialize(meta).map_err(sm_err)?;
    w.write_all(&(meta_bytes.len() as u32).to_be_bytes()).map_err(sm_err)?;
    w.write_all(&meta_bytes).map_err(sm_err)
}

/// Opens the current snapshot file, if there is one.
pub fn open_current(dir: &Path) -> StorageResult<Option<(SnapshotMeta<u64, Member>, std::fs::File)>> {
    let path = dir.join(CURRENT);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(snap_err(e)),
    };
    let meta = read_meta(&mut file).map_err(snap_err)?;
    Ok(Some((meta, file)))
}

pub struct SnapshotBuilder {
    db: Arc<DB>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (db, dir) = (self.db.clone(), self.dir.clone());
        let meta = tokio::task::spawn_blocking(move || write_snapshot_file(&db, &dir)).await.map_err(sm_err)??;
        let file = tokio::fs::File::open(self.dir.join(CURRENT)).await.map_err(snap_err)?;
        tracing::info!(log_index = meta.last_log_id.map(|l| l.index), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<Applied> {
        read_applied(&self.db, &rocksdb::ReadOptions::default())
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Vec<Response>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The leader acknowledged its own entries before syncing them; apply them, which answers
        // the client and shows them to reads, only once they are on this disk too.
        self.durability.wait_synced().await.map_err(sm_err)?;
        // Every command of every entry given is staged and written in one RocksDB batch, with
        // the applied log id of the last entry. A command that must be applied alone (a lease
        // grant, a compaction, ...) is committed on its own, with what came before it
        // committed first; a commit inside an entry writes a marker of how far into the entry
        // it got, so that after a crash the entry is applied again from there and nothing
        // twice.
        let mut out = Vec::new();
        for entry in entries {
            let applied = bincode::serialize(&Some(entry.log_id)).map_err(sm_err)?;
            let fail = |e: crate::store::ApplyError| StorageIOError::apply(entry.log_id, &e);
            match &entry.payload {
                EntryPayload::Blank => out.push(Vec::new()),
                EntryPayload::Normal(cmds) => {
                    let index = entry.log_id.index;
                    let done = match self.partial {
                        Some((i, n)) if i == index => n,
                        _ => 0,
                    };
                    let mut responses = Vec::with_capacity(cmds.len());
                    for (i, cmd) in cmds.iter().enumerate().skip(done) {
                        let alone = Applier::stages_alone(cmd);
                        if alone && self.applier.staged() > 0 {
                            self.commit_partial(index, i).map_err(fail)?;
                        }
                        responses.push(self.applier.stage(cmd).map_err(fail)?);
                        if alone {
                            // Also when it ends the entry: commands of the next entries read
                            // what it wrote (a lease it granted) from RocksDB.
                            self.commit_partial(index, i + 1).map_err(fail)?;
                        }
                    }
                    let marker = bincode::serialize(&(index, cmds.len())).map_err(sm_err)?;
                    self.applier.stage_meta(PARTIAL, marker);
                    self.partial = Some((index, cmds.len()));
                    out.push(responses);
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    self.applier.stage_meta(MEMBERSHIP, bincode::serialize(&stored).map_err(sm_err)?);
                    out.push(Vec::new());
                }
            }
            self.applier.stage_meta(APPLIED, applied);
        }
        self.applier.commit().map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), dir: self.dir.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.dir.join(format!("incoming-{}.snap", rand::random::<u64>()));
        let file =
            tokio::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).await.map_err(sm_err)?;
        if let Some(old) = self.incoming.replace(path) {
            let _ = tokio::fs::remove_file(old).await;
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        let mut received = snapshot.into_std().await;
        let incoming = self.incoming.take();
        let (db, dir, meta2) = (self.db.clone(), self.dir.clone(), meta.clone());
        tokio::task::spawn_blocking(move || -> StorageResult<()> {
            // Keep what was received, under the meta openraft installs, as the current snapshot
            // (so that this member can send it on), and restore from that one copy.
            let installing = dir.join("installing.snap");
            received.seek(SeekFrom::Start(0)).map_err(snap_err)?;
            let mut received = std::io::BufReader::new(received);
            let _sent_meta = read_meta(&mut received)?;
            let mut copy = std::io::BufWriter::new(std::fs::File::create(&installing).map_err(sm_err)?);
            write_meta(&mut copy, &meta2)?;
            std::io::copy(&mut received, &mut copy).map_err(sm_err)?;
            copy.into_inner().map_err(sm_err)?.sync_all().map_err(sm_err)?;
            let mut f = std::io::BufReader::new(std::fs::File::open(&installing).map_err(snap_err)?);
            read_meta(&mut f)?;
            snapshot::restore(&db, f).map_err(sm_err)?;
            // The dump carries the sender's applied id and membership; make them match the
            // meta that openraft installs, in case the sender's state moved past it.
            let meta_cf = db.cf_handle(CF_META).expect("column family exists");
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(meta_cf, APPLIED, bincode::serialize(&meta2.last_log_id).map_err(sm_err)?);
            batch.put_cf(meta_cf, MEMBERSHIP, bincode::serialize(&meta2.last_membership).map_err(sm_err)?);
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo).map_err(sm_err)?;
            std::fs::rename(&installing, dir.join(CURRENT)).map_err(sm_err)?;
            if let Some(p) = incoming {
                let _ = std::fs::remove_file(p);
            }
            Ok(())
        })
        .await
        .map_err(sm_err)??;
        self.applier.reload().map_err(sm_err)?;
        self.partial = None;
        tracing::info!(log_index = meta.last_log_id.map(|l| l.index), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let dir = self.dir.clone();
        let found = tokio::task::spawn_blocking(move || open_current(&dir)).await.map_err(sm_err)??;
        let Some((meta, file)) = found else { return Ok(None) };
        let mut file = tokio::fs::File::from_std(file);
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(snap_err)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}
