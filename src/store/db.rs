//! Opening the member's RocksDB: column families, tuning, and the start-up checks that refuse
//! a data directory that is not ours, belongs to another member, or is damaged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, WriteOptions, DB};
use serde::{Deserialize, Serialize};

/// Raft log entries, keyed by index.
pub const CF_LOG: &str = "log";
/// Raft metadata: vote, committed, last purged, member identity.
pub const CF_RAFT: &str = "raft";
/// Current value of each key.
pub const CF_KV: &str = "kv";
/// Every version of each key still in history.
pub const CF_HIST: &str = "hist";
/// Events by revision, for watches.
pub const CF_REVS: &str = "revs";
/// Leases by id.
pub const CF_LEASE: &str = "lease";
/// Keys attached to each lease.
pub const CF_LEASE_KEYS: &str = "lease_keys";
/// State machine metadata: applied log id, membership, revision, compaction, members, alarms.
pub const CF_META: &str = "meta";

/// The column families that make up the state machine (and so a snapshot).
pub const SM_CFS: [&str; 6] = [CF_KV, CF_HIST, CF_REVS, CF_LEASE, CF_LEASE_KEYS, CF_META];
const ALL_CFS: [&str; 8] = [CF_LOG, CF_RAFT, CF_KV, CF_HIST, CF_REVS, CF_LEASE, CF_LEASE_KEYS, CF_META];

const IDENTITY_KEY: &[u8] = b"identity";

/// Who a data directory belongs to, written once when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data dir {path}: cannot read it: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("data dir {path}: not empty and holds no rkube database (expected {path}/db); refusing to use it")]
    NotADataDir { path: PathBuf },
    #[error("data dir {path}: belongs to member {found} of cluster {found_cluster:x}, not to member {expected}; refusing to start")]
    OtherMember { path: PathBuf, found: u64, found_cluster: u64, expected: u64 },
    #[error("data dir {path}: the database is damaged or unreadable: {reason}; refusing to start (restore it from a snapshot or remove the member and add it anew)")]
    Corrupt { path: PathBuf, reason: String },
}

/// An open member database and the identity it carries.
pub struct Opened {
    pub db: Arc<DB>,
    pub identity: Identity,
    /// True when the database was created by this start.
    pub fresh: bool,
}

fn options() -> (Options, Vec<ColumnFamilyDescriptor>) {
    // One small block cache for every column family keeps the resident set small; RocksDB's
    // own page reads go through the OS cache anyway.
    let cache = Cache::new_lru_cache(8 << 20);
    let mut block = BlockBasedOptions::default();
    block.set_block_cache(&cache);
    block.set_bloom_filter(10.0, false);
    block.set_cache_index_and_filter_blocks(true);

    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_paranoid_checks(true);
    db_opts.set_max_open_files(512);
    db_opts.set_keep_log_file_num(4);
    db_opts.set_max_background_jobs(2);
    // Every family shares one WAL; the Raft log's synced appends also make the state machine's
    // earlier unsynced writes durable, because the WAL is one sequential file.
    db_opts.set_max_total_wal_size(256 << 20);
    // Reuse obsolete WAL files instead of creating new ones: overwriting blocks a file already
    // has keeps its size and block map unchanged, so each sync is a data-only fdatasync, with
    // no ext4 journal commit for the inode (bench/README.md, run R). Records carry their log
    // number, so recovery stops at the stale tail of a reused file. RocksDB then refuses writes
    // with `disableWAL`, which rkube does not use.
    db_opts.set_recycle_log_file_num(4);
    // Not `manual_wal_flush`: every write reaches the WAL file at once (a write(2) each), so a
    // leader killed with -9 keeps the entries it counted as its own copy before its sync; kept
    // in RocksDB's buffer instead, they died with the process, a majority could elect a leader
    // without entries a follower had already applied, and Jepsen's objects-kill-partition saw
    // lost updates (bench/README.md, runs F-K).
    // The state machine's writes are not synced on their own (the next synced log append covers
    // them). Flushing every family together keeps a memtable flush of one family (say, a log
    // purge) from reaching disk ahead of the unsynced writes of another that it depends on.
    db_opts.set_atomic_flush(true);
    // All memtables together stay under this, whatever the number of column families. They are
    // most of a member's heap: 48 MiB cost 20 MiB more RSS over three members after 100k keys,
    // with no more put throughput (bench/README.md).
    db_opts.set_db_write_buffer_size(32 << 20);

    let cfs = ALL_CFS
        .iter()
        .map(|name| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&block);
            // Compression pays off only where data settles: the Raft log is deleted behind
            // each snapshot and is never compressed; the other families are compressed from
            // level 2 down, so that memtable flushes and the busiest compactions (levels 0 and
            // 1) do not spend CPU on it.
            if *name == CF_LOG {
                o.set_compression_type(rocksdb::DBCompressionType::None);
            } else {
                use rocksdb::DBCompressionType::{Lz4, None as Plain};
                o.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
            }
            o.set_write_buffer_size(if *name == CF_LOG { 16 << 20 } else { 8 << 20 });
            o.set_max_write_buffer_number(2);
            ColumnFamilyDescriptor::new(*name, o)
        })
        .collect();
    (db_opts, cfs)
}

/// Opens (or creates) the database under `data_dir`, checking that it is this member's.
pub fn open(data_dir: &Path, wanted: Identity) -> Result<Opened, OpenError> {
    let unreadable = |source| OpenError::Unreadable { path: data_dir.to_path_buf(), source };
    let db_dir = data_dir.join("db");
    let exists = db_dir.join("CURRENT").exists();
    if !exists {
        if data_dir.exists() {
            let mut entries = std::fs::read_dir(data_dir).map_err(unreadable)?;
            let has_foreign = entries.any(|e| {
                e.map(|e| {
                    let name = e.file_name();
                    name != "db" && name != "snapshots"
                })
                .unwrap_or(true)
            });
            if has_foreign || db_dir.exists() {
                return Err(OpenError::NotADataDir { path: data_dir.to_path_buf() });
            }
        }
        std::fs::create_dir_all(&db_dir).map_err(unreadable)?;
    }
    let corrupt = |reason: String| OpenError::Corrupt { path: data_dir.to_path_buf(), reason };
    if exists {
        // Check whose database this is before opening it for writing: a read-write open
        // flushes the WAL into new files and rewrites the MANIFEST, which would change another
        // member's data dir even though start-up then refuses it.
        let (opts, cfs) = options();
        let db = DB::open_cf_descriptors_read_only(&opts, &db_dir, cfs, false).map_err(|e| corrupt(e.into_string()))?;
        read_identity(&db, data_dir, wanted)?;
    }
    let (mut opts, cfs) = options();
    opts.create_if_missing(!exists);
    // Flushes and compactions write new files, and the kernel copying them into fresh
    // page-cache pages was half of their CPU in a profile under 1000-client puts: 15 % of the
    // machine, 7 % with direct I/O (bench/README.md, run T). Reads stay buffered, and every
    // file is still synced before RocksDB relies on it.
    match direct_io_works(&db_dir) {
        Ok(()) => opts.set_use_direct_io_for_flush_and_compaction(true),
        Err(e) => {
            tracing::info!(dir = %db_dir.display(), error = %e, "no direct I/O here; flushes and compactions write through the page cache")
        }
    }
    let db = DB::open_cf_descriptors(&opts, &db_dir, cfs).map_err(|e| corrupt(e.into_string()))?;
    // RocksDB rewrites a last-level file once the oldest snapshot is newer than the file, to
    // zero its sequence numbers ("BottommostFiles" compactions). Every Range takes a snapshot,
    // and while a family's data fits in one level its every fresh flush is last-level: each
    // Raft log and revision file was written twice, a third of all compaction output under
    // puts. An hour's delay leaves the log's files to their purge and the rest to the normal
    // compactions, which zero the numbers anyway. Only a tuning: a member runs without it.
    for name in ALL_CFS {
        let cf = db.cf_handle(name).expect("column family created at open");
        if let Err(e) = db.set_options_cf(cf, &[("bottommost_file_compaction_delay", "3600")]) {
            tracing::warn!(family = name, error = %e, "could not delay RocksDB's BottommostFiles compactions");
        }
    }
    let raft_cf = db.cf_handle(CF_RAFT).expect("column family created at open");
    let identity = match read_identity(&db, data_dir, wanted)? {
        Some(found) => found,
        None if !exists => {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            let bytes = bincode::serialize(&wanted).expect("identity serializes");
            db.put_cf_opt(raft_cf, IDENTITY_KEY, bytes, &wo).map_err(|e| corrupt(e.into_string()))?;
            wanted
        }
        None => return Err(corrupt("the identity record is missing".into())),
    };
    Ok(Opened { db: Arc::new(db), identity, fresh: !exists })
}

/// Whether files in `dir` can be written with `O_DIRECT` (tmpfs before Linux 6.6 cannot):
/// writes one aligned block to a probe file, then removes it.
fn direct_io_works(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK: usize = 4096;
    let path = dir.join("direct-io-probe");
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        // A block-aligned slice of a buffer twice its size.
        let buf = vec![0u8; 2 * BLOCK];
        let at = (BLOCK - buf.as_ptr() as usize % BLOCK) % BLOCK;
        file.write_all(&buf[at..at + BLOCK])
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The identity recorded in `db`, if any; refuses one of another member.
fn read_identity(db: &DB, data_dir: &Path, wanted: Identity) -> Result<Option<Identity>, OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt { path: data_dir.to_path_buf(), reason };
    let raft_cf = db.cf_handle(CF_RAFT).expect("column family opened");
    let Some(bytes) = db.get_cf(raft_cf, IDENTITY_KEY).map_err(|e| corrupt(e.into_string()))? else {
        return Ok(None);
    };
    let found: Identity = bincode::deserialize(&bytes).map_err(|e| corrupt(format!("identity record: {e}")))?;
    if found.member_id != wanted.member_id {
        return Err(OpenError::OtherMember {
            path: data_dir.to_path_buf(),
            found: found.member_id,
            found_cluster: found.cluster_id,
            expected: wanted.member_id,
        });
    }
    Ok(Some(found))
}

/// Bytes the database takes on disk (SST files plus memtables).
pub fn size_bytes(db: &DB) -> u64 {
    ALL_CFS
        .iter()
        .filter_map(|name| db.cf_handle(name))
        .map(|cf| {
            let sst = db.property_int_value_cf(cf, "rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
            let mem = db.property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables").ok().flatten().unwrap_or(0);
            sst + mem
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_io_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        // Either answer is right depending on the file system; the directory stays empty.
        let _ = direct_io_works(dir.path());
        assert_eq!(std::fs::read_dir(dir.path()).expect("listing").count(), 0);
        let missing = dir.path().join("missing");
        assert!(direct_io_works(&missing).is_err(), "a directory that does not exist cannot be probed");
    }
}
