//! The state machine's snapshot format: every record of the state machine's column families,
//! read from one RocksDB snapshot, followed by a CRC32 of everything before it. Restoring checks
//! the checksum before it writes anything, then replaces the state in one atomic write batch.

use std::io::{Read, Write};

use rocksdb::{IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use super::db::SM_CFS;

const MAGIC: &[u8; 8] = b"RKSNAP01";
const END: u8 = 0xFF;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot storage: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("snapshot is not an rkube state machine snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot is damaged: {0}")]
    Damaged(&'static str),
}

struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the state machine as seen by `snap` to `out`.
pub fn dump<W: Write>(db: &DB, snap: &rocksdb::Snapshot<'_>, out: W) -> Result<W, SnapshotError> {
    let mut w = Crc { inner: out, hasher: crc32fast::Hasher::new() };
    w.write_all(MAGIC)?;
    for (i, name) in SM_CFS.iter().enumerate() {
        let cf = db.cf_handle(name).expect("column family exists");
        let mut ro = ReadOptions::default();
        ro.set_snapshot(snap);
        for item in db.iterator_cf_opt(cf, ro, IteratorMode::Start) {
            let (k, v) = item?;
            w.write_all(&[i as u8])?;
            w.write_all(&(k.len() as u32).to_be_bytes())?;
            w.write_all(&k)?;
            w.write_all(&(v.len() as u32).to_be_bytes())?;
            w.write_all(&v)?;
        }
    }
    w.write_all(&[END])?;
    let sum = w.hasher.clone().finalize();
    let mut out = w.inner;
    out.write_all(&sum.to_be_bytes())?;
    out.flush()?;
    Ok(out)
}

fn read_exact_vec<R: Read>(r: &mut R, n: usize) -> Result<Vec<u8>, SnapshotError> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).map_err(|_| SnapshotError::Damaged("truncated record"))?;
    Ok(buf)
}

/// Replaces the state machine with the snapshot read from `input`, atomically.
pub fn restore<R: Read>(db: &DB, input: R) -> Result<(), SnapshotError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut r = std::io::BufReader::new(input);
    let mut take = |r: &mut std::io::BufReader<R>, n: usize| -> Result<Vec<u8>, SnapshotError> {
        let b = read_exact_vec(r, n)?;
        hasher.update(&b);
        Ok(b)
    };
    if take(&mut r, 8)? != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let mut batch = WriteBatch::default();
    for name in SM_CFS {
        let cf = db.cf_handle(name).expect("column family exists");
        let mut it = db.raw_iterator_cf(cf);
        it.seek_to_last();
        if let Some(last) = it.key() {
            let mut end = last.to_vec();
            end.push(0);
            batch.delete_range_cf(cf, [].as_slice(), end.as_slice());
        }
    }
    loop {
        let tag = take(&mut r, 1)?[0];
        if tag == END {
            break;
        }
        let name = SM_CFS.get(tag as usize).ok_or(SnapshotError::Damaged("unknown column family"))?;
        let klen = u32::from_be_bytes(take(&mut r, 4)?.try_into().expect("four bytes")) as usize;
        let k = take(&mut r, klen)?;
        let vlen = u32::from_be_bytes(take(&mut r, 4)?.try_into().expect("four bytes")) as usize;
        let v = take(&mut r, vlen)?;
        batch.put_cf(db.cf_handle(name).expect("column family exists"), k, v);
    }
    let sum = hasher.finalize();
    let stored = u32::from_be_bytes(read_exact_vec(&mut r, 4)?.try_into().expect("four bytes"));
    if sum != stored {
        return Err(SnapshotError::Damaged("checksum mismatch"));
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo)?;
    Ok(())
}
