//! What the Raft log carries and what applying it answers. Every variant is applied the same
//! way on every member, so everything it depends on (lease ids, member ids) is chosen before it
//! is proposed.

use serde::{Deserialize, Serialize};

use crate::pb::etcdserverpb as epb;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Put(epb::PutRequest),
    DeleteRange(epb::DeleteRangeRequest),
    Txn(epb::TxnRequest),
    Compact {
        revision: i64,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revokes a lease: by a client, or by the leader when the lease expired.
    LeaseRevoke {
        id: i64,
    },
    /// A member's name and client address, published once it runs (etcd does the same).
    PublishMember {
        id: u64,
        name: String,
        api_addr: String,
    },
    /// Raises or clears an alarm (NOSPACE) for a member.
    Alarm {
        member: u64,
        alarm: i32,
        activate: bool,
    },
}

impl Command {
    /// Roughly how many bytes the command takes, for bounding batches.
    pub fn approx_size(&self) -> usize {
        use prost::Message;
        match self {
            Command::Put(r) => r.key.len() + r.value.len() + 16,
            Command::DeleteRange(r) => r.key.len() + r.range_end.len() + 8,
            Command::Txn(r) => r.encoded_len(),
            Command::PublishMember { name, api_addr, .. } => name.len() + api_addr.len() + 8,
            _ => 16,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Put(epb::PutResponse),
    DeleteRange(epb::DeleteRangeResponse),
    Txn(epb::TxnResponse),
    /// Commands that answer only with the store revision.
    Done {
        revision: i64,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
        revision: i64,
    },
    Error(ApplyError),
    /// Raft's own entries (blank, membership) answer nothing.
    None,
}

/// A command that applied to nothing, deterministically on every member. The messages are
/// etcd's, because etcd clients match on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: storage error: {0}")]
    Storage(String),
}

#[cfg(test)]
mod tests {
    use super::Command;
    use crate::pb::etcdserverpb as epb;

    /// Keys and values are (de)serialized as bytes, whole, not one element at a time; the
    /// encoding is what it was as a sequence (a u64 length, then the bytes), so log entries
    /// written before still read back.
    #[test]
    fn a_put_in_the_log_keeps_its_encoding() {
        let put = Command::Put(epb::PutRequest { key: b"k1".to_vec(), value: b"abc".to_vec(), ..Default::default() });
        let bytes = bincode::serialize(&put).expect("serializes");
        let mut want = Vec::new();
        want.extend(0u32.to_le_bytes()); // variant Put
        want.extend(2u64.to_le_bytes());
        want.extend(b"k1");
        want.extend(3u64.to_le_bytes());
        want.extend(b"abc");
        want.extend(0i64.to_le_bytes()); // lease
        want.extend([0u8, 0, 0]); // prev_kv, ignore_value, ignore_lease
        assert_eq!(bytes, want);
        match bincode::deserialize::<Command>(&want).expect("the old encoding reads") {
            Command::Put(p) => assert_eq!((p.key.as_slice(), p.value.as_slice()), (&b"k1"[..], &b"abc"[..])),
            other => panic!("read back as {other:?}"),
        }
    }
}
