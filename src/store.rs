//! The replicated store's state: an MVCC key-value store with etcd's semantics, in RocksDB.
//!
//! Owns the member's RocksDB (opening and start-up checks in [`db`]), the state machine that
//! Raft applies commands to ([`mvcc::Applier`]), the read side that the API serves from
//! ([`mvcc::Store`]) and the snapshot format. Knows nothing of Raft: `src/raft/` drives it.

pub mod command;
pub mod db;
mod index;
mod keys;
pub mod mvcc;
pub mod snapshot;

pub use command::{ApplyError, Command, Response};
pub use mvcc::{Applier, EventBatch, LeaseRecord, MemberAttr, Revisions, Store};

pub(crate) use keys::in_range;
