//! The applier's in-memory index of the current keys: what a write must know of the version it
//! replaces (create revision, version, lease) and what a transaction compares, without a
//! RocksDB read. etcd keeps the same in memory (its `treeIndex`). Values stay in RocksDB only.

use std::hash::BuildHasher;

use prost::Message;
use rocksdb::{IteratorMode, DB};

use super::command::ApplyError;
use super::db::CF_KV;
use crate::pb::mvccpb::KeyValue;

/// A current key's revisions and lease: a [`KeyValue`] without its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMeta {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl KeyMeta {
    pub fn of(kv: &KeyValue) -> Self {
        KeyMeta {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }

    /// The key with these revisions and no value (for comparisons and tombstones).
    pub fn to_kv(self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            value: Vec::new(),
        }
    }
}

/// Every current key, with its [`KeyMeta`]: one allocation per key, the meta in front of the
/// key's bytes, so that 100 000 keys of a few bytes cost about 7 MiB.
#[derive(Default)]
pub struct KeyIndex {
    keys: hashbrown::HashTable<Box<[u8]>>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyIndex").field("keys", &self.len()).finish()
    }
}

const META: usize = 32;

fn key_of(entry: &[u8]) -> &[u8] {
    &entry[META..]
}

fn meta_of(entry: &[u8]) -> KeyMeta {
    let field = |i: usize| i64::from_le_bytes(entry[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    KeyMeta { create_revision: field(0), mod_revision: field(1), version: field(2), lease: field(3) }
}

fn write_meta(entry: &mut [u8], m: KeyMeta) {
    for (i, v) in [m.create_revision, m.mod_revision, m.version, m.lease].into_iter().enumerate() {
        entry[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
}

impl KeyIndex {
    /// Reads every current key of the store.
    pub fn load(db: &DB) -> Result<Self, ApplyError> {
        let storage = |e: String| ApplyError::Storage(format!("loading the key index: {e}"));
        let cf = db.cf_handle(CF_KV).expect("column families are created when the database opens");
        let mut index = KeyIndex::default();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| storage(e.to_string()))?;
            let kv = KeyValue::decode(v.as_ref()).map_err(|e| storage(e.to_string()))?;
            index.set(&k, Some(KeyMeta::of(&kv)));
        }
        let hasher = index.hasher.clone();
        index.keys.shrink_to_fit(|e| hasher.hash_one(key_of(e)));
        Ok(index)
    }

    pub fn get(&self, key: &[u8]) -> Option<KeyMeta> {
        let hash = self.hasher.hash_one(key);
        self.keys.find(hash, |e| key_of(e) == key).map(|e| meta_of(e))
    }

    /// Records a key's new current version, or its deletion.
    pub fn set(&mut self, key: &[u8], meta: Option<KeyMeta>) {
        let hash = self.hasher.hash_one(key);
        let hasher = &self.hasher;
        match (self.keys.find_entry(hash, |e| key_of(e) == key), meta) {
            (Ok(mut found), Some(m)) => write_meta(found.get_mut(), m),
            (Ok(found), None) => {
                found.remove();
            }
            (Err(_), Some(m)) => {
                let mut entry = vec![0u8; META + key.len()].into_boxed_slice();
                write_meta(&mut entry, m);
                entry[META..].copy_from_slice(key);
                self.keys.insert_unique(hash, entry, |e| hasher.hash_one(key_of(e)));
            }
            (Err(_), None) => {}
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::{self, Identity};

    #[test]
    fn loads_what_the_store_holds_and_follows_changes() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let opened = db::open(&dir.path().join("d"), Identity { cluster_id: 1, member_id: 1 }).expect("opening");
        let cf = opened.db.cf_handle(CF_KV).expect("kv family");
        let kv = KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 7,
            value: b"v".to_vec(),
        };
        opened.db.put_cf(cf, b"a", kv.encode_to_vec()).expect("put");
        let mut index = KeyIndex::load(&opened.db).expect("load");
        assert_eq!(index.len(), 1);
        assert_eq!(index.get(b"a"), Some(KeyMeta { create_revision: 2, mod_revision: 5, version: 3, lease: 7 }));
        assert_eq!(index.get(b"b"), None);
        index.set(b"b", Some(KeyMeta::of(&kv)));
        index.set(b"a", None);
        assert_eq!((index.get(b"a"), index.get(b"b").map(|m| m.version)), (None, Some(3)));
    }

    #[test]
    fn a_record_that_does_not_decode_is_an_error_not_a_skip() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let opened = db::open(&dir.path().join("d"), Identity { cluster_id: 1, member_id: 1 }).expect("opening");
        let cf = opened.db.cf_handle(CF_KV).expect("kv family");
        opened.db.put_cf(cf, b"a", [0xff, 0xff, 0xff]).expect("put");
        let err = KeyIndex::load(&opened.db).expect_err("a corrupt record must fail the load");
        assert!(err.to_string().contains("loading the key index"), "{err}");
    }
}
