//! The etcd-v3-compatible client API served on `--listen-api`: KV, Watch, Lease, Cluster and
//! Maintenance, so that etcdctl and other etcd clients work against rkube unchanged.
//!
//! Handlers validate requests as etcd does, turn writes into store commands proposed through
//! [`RaftNode`], and serve reads from the local store after a read barrier (linearizable) or at
//! once (serializable). Errors become gRPC statuses in one place, [`status_of`].

mod cluster;
mod kv;
pub(crate) mod lease;
mod maintenance;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::Status;

use crate::pb::etcdserverpb as epb;
use crate::raft::{ConsensusError, RaftNode};
use crate::store::{ApplyError, Store};
pub use cluster::ClusterService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use maintenance::MaintenanceService;
pub use watch::WatchService;

/// Limits of the client API, as etcd's flags set them.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_bytes: u64,
    /// Test only (`RKUBE_TEST_UNSAFE_STALE_READS`): Range skips the read barrier, so
    /// "linearizable" reads are served from possibly stale local state.
    pub unsafe_stale_reads: bool,
}

/// What every handler shares.
pub struct Api {
    pub node: Arc<RaftNode>,
    pub store: Arc<Store>,
    pub cluster_id: u64,
    pub limits: ApiLimits,
    /// The database size, refreshed in the background (reading RocksDB properties on every
    /// write would cost more than the write).
    pub db_size: AtomicU64,
}

impl Api {
    pub fn new(node: Arc<RaftNode>, cluster_id: u64, limits: ApiLimits) -> Arc<Self> {
        let store = node.store().clone();
        let size = crate::store::db::size_bytes(store.db());
        Arc::new(Api { node, store, cluster_id, limits, db_size: AtomicU64::new(size) })
    }

    /// A response header stamped with this member and the given revision.
    pub(crate) fn header(&self, revision: i64) -> Option<epb::ResponseHeader> {
        Some(epb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.node.id,
            revision,
            raft_term: self.node.term(),
        })
    }

    pub(crate) fn fill(&self, header: &mut Option<epb::ResponseHeader>) {
        let revision = header.as_ref().map(|h| h.revision).unwrap_or_else(|| self.store.revisions().current);
        *header = self.header(revision);
    }

    /// Refuses a write that would grow the database past the quota, raising the NOSPACE alarm
    /// (replicated) the first time, as etcd does.
    pub(crate) async fn check_quota(&self) -> Result<(), Status> {
        if self.db_size.load(Ordering::Relaxed) <= self.limits.quota_bytes {
            return Ok(());
        }
        let raised = self
            .store
            .alarms()
            .map_err(|e| status_of_apply(&e))?
            .iter()
            .any(|(_, a)| *a == crate::store::mvcc::ALARM_NOSPACE);
        if !raised {
            let cmd = crate::store::Command::Alarm {
                member: self.node.id,
                alarm: crate::store::mvcc::ALARM_NOSPACE,
                activate: true,
            };
            self.node.write(cmd).await.map_err(|e| status_of(&e))?;
        }
        Err(status_of_apply(&ApplyError::NoSpace))
    }

    pub(crate) fn refresh_db_size(&self) {
        self.db_size.store(crate::store::db::size_bytes(self.store.db()), Ordering::Relaxed);
    }

    pub(crate) fn check_size(&self, len: usize) -> Result<(), Status> {
        if len > self.limits.max_request_bytes {
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        Ok(())
    }
}

/// The gRPC status for a consensus failure.
pub fn status_of(e: &ConsensusError) -> Status {
    let msg = e.to_string();
    match e {
        ConsensusError::NoLeader
        | ConsensusError::Timeout
        | ConsensusError::Stopped
        | ConsensusError::LeaderChanged
        | ConsensusError::Forward { .. } => Status::unavailable(msg),
        ConsensusError::MemberNotFound | ConsensusError::LeaseNotFound => Status::not_found(msg),
        ConsensusError::PeerUrlExists
        | ConsensusError::MemberExists
        | ConsensusError::NotLearner
        | ConsensusError::LearnerNotReady
        | ConsensusError::NotEnoughStarted
        | ConsensusError::Membership(_) => Status::failed_precondition(msg),
        ConsensusError::Storage(_) => {
            tracing::error!(error = %msg, "storage failure serving a request");
            Status::internal("etcdserver: internal storage error")
        }
    }
}

/// The gRPC status for a command that applied to nothing.
pub fn status_of_apply(e: &ApplyError) -> Status {
    let msg = e.to_string();
    match e {
        ApplyError::Compacted | ApplyError::FutureRevision => Status::out_of_range(msg),
        ApplyError::LeaseNotFound => Status::not_found(msg),
        ApplyError::LeaseExists => Status::failed_precondition(msg),
        ApplyError::KeyNotFound => Status::invalid_argument(msg),
        ApplyError::NoSpace => Status::resource_exhausted(msg),
        ApplyError::Storage(_) => {
            tracing::error!(error = %msg, "storage failure serving a request");
            Status::internal("etcdserver: internal storage error")
        }
    }
}

/// Turns a peer URL (`http://host:port`) or a bare `host:port` into `host:port`.
pub(crate) fn strip_scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest).trim_end_matches('/')
}
