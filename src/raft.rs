//! Consensus: openraft over RocksDB, and the handle the rest of rkube uses to write, to read
//! linearizably and to change membership.
//!
//! Owns the Raft log ([`log_store`]), the state machine adapter ([`state_machine`]), the peer
//! transport ([`network`], [`service`]) and lease expiry ([`lessor`]). No openraft type leaves
//! this module: callers see [`RaftNode`], [`Command`]/[`Response`] and [`ConsensusError`].

mod lessor;
mod log_store;
mod network;
mod service;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::pb::raft::RaftBody;
use crate::store::{Command, Response, Store};
pub use lessor::Lessor;
pub use log_store::SyncStats;
pub use service::PeerService;

openraft::declare_raft_types!(
    /// rkube's Raft types: each log entry carries a batch of store commands (concurrent writes
    /// share an entry, and so a log sync).
    pub TypeConfig:
        D = Vec<Command>,
        R = Vec<Response>,
        NodeId = u64,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

/// A member as Raft's membership records it: where its peers reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub peer_addr: String,
}

/// Why a consensus operation did not happen. Messages are etcd's where etcd clients match them.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum ConsensusError {
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("etcdserver: unhealthy cluster: {0}")]
    Membership(String),
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: forwarding to the leader at {addr} failed: {reason}")]
    Forward { addr: String, reason: String },
    #[error("etcdserver: storage error: {0}")]
    Storage(String),
    /// The leader a request was sent to lost its leadership (or was lost) before answering:
    /// the request may or may not have been applied.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
}

/// Work only the leader does, asked of it by any member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderRequest {
    /// Writes gathered by a follower, forwarded together.
    Writes(Vec<Command>),
    ReadIndex,
    AddMember {
        id: u64,
        peer_addr: String,
        learner: bool,
    },
    PromoteMember {
        id: u64,
    },
    RemoveMember {
        id: u64,
    },
    LeaseKeepAlive {
        id: i64,
    },
    LeaseTimeToLive {
        id: i64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    Writes(Vec<Result<Response, ConsensusError>>),
    ReadIndex(u64),
    Done,
    /// Remaining and granted TTL of a lease, in seconds.
    LeaseTtl {
        remaining: i64,
        granted: i64,
    },
}

/// Start-up settings of the consensus member.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub id: u64,
    /// Peer addresses of the initial members, this one included.
    pub initial_cluster: BTreeMap<u64, String>,
    /// Form a new cluster with `initial_cluster` (etcd's `--initial-cluster-state new`).
    pub bootstrap: bool,
    pub snapshot_dir: PathBuf,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Take a snapshot after this many entries.
    pub snapshot_entries: u64,
}

/// A snapshot of the member's view of consensus.
#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
    pub voters: BTreeSet<u64>,
    /// Every member (voters and learners) and its peer address.
    pub nodes: BTreeMap<u64, String>,
}

impl RaftStatus {
    pub fn is_learner(&self, id: u64) -> bool {
        self.nodes.contains_key(&id) && !self.voters.contains(&id)
    }
}

pub struct RaftNode {
    pub id: u64,
    raft: Raft<TypeConfig>,
    store: Arc<Store>,
    lessor: Lessor,
    channels: network::PeerChannels,
    stats: Arc<SyncStats>,
    reads: ReadIndexBatch,
    proposals: tokio::sync::mpsc::Sender<Proposal>,
    forwards: tokio::sync::mpsc::Sender<Proposal>,
}

type Proposal = (Command, Reply);

/// Writes waiting to be proposed, at most.
const PROPOSAL_QUEUE: usize = 4096;
/// Commands in one log entry, at most.
const MAX_BATCH: usize = 1024;
/// Bytes of requests in one log entry, roughly, at most (a single larger request still goes).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Log entries proposed and not yet applied, at most. openraft 0.9 keeps one AppendEntries in
/// flight per follower, so entries proposed meanwhile only queue up in the leader; writes that
/// arrive meanwhile wait here instead, to share the next entry.
const MAX_IN_FLIGHT: usize = 2;

type Reply = tokio::sync::oneshot::Sender<Result<Response, ConsensusError>>;

/// `first` and the writes already waiting behind it, up to the batch bounds.
fn gather(first: Proposal, rx: &mut tokio::sync::mpsc::Receiver<Proposal>) -> (Vec<Command>, Vec<Reply>) {
    let mut bytes = first.0.approx_size();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(p) => {
                bytes += p.0.approx_size();
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    batch.into_iter().unzip()
}

/// Answers each waiting write with its own result, or all of them with one error.
fn answer(replies: Vec<Reply>, results: Result<Vec<Result<Response, ConsensusError>>, ConsensusError>) {
    match results {
        Ok(results) if results.len() == replies.len() => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(r);
            }
        }
        Ok(results) => {
            let e = ConsensusError::Storage(format!("{} results for {} writes", results.len(), replies.len()));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// How long a proposed entry is still waited for once this member no longer leads. By then it
/// is either committed by the next leader and applied here (answered), or cut from the log
/// (answered "no leader" and retried); but openraft 0.9 never answers an entry that the next
/// leader's snapshot replaced (the follower purges it with the rest of the log), so without a
/// bound such a write would wait forever.
const ORPHAN_WAIT: Duration = Duration::from_secs(5);

/// Gathers the writes that arrive while earlier entries are in flight into one log entry.
async fn run_proposer(raft: Raft<TypeConfig>, mut rx: tokio::sync::mpsc::Receiver<Proposal>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (cmds, replies) = gather(first, &mut rx);
        let raft = raft.clone();
        tokio::spawn(async move {
            let term = raft.metrics().borrow().current_term;
            let write = raft.client_write(cmds);
            tokio::pin!(write);
            let done = tokio::select! {
                r = &mut write => Some(r),
                () = stopped_leading(&raft, term) => None,
            };
            // The slot goes back as soon as this member stops leading, whatever becomes of
            // this entry: a slot held by an entry that is never answered would stop every
            // write here for good, and this member may lead again.
            drop(slot);
            let result = match done {
                Some(r) => r.map_err(map_write_err),
                None => match tokio::time::timeout(ORPHAN_WAIT, write).await {
                    Ok(r) => r.map_err(map_write_err),
                    // May or may not be applied: the client is told it timed out, as etcd does.
                    Err(_) => Err(ConsensusError::Timeout),
                },
            };
            answer(replies, result.map(|r| r.data.into_iter().map(Ok).collect()));
        });
    }
}

/// Returns once this member is no longer the leader of `term` (at once if it is not).
async fn stopped_leading(raft: &Raft<TypeConfig>, term: u64) {
    let mut metrics = raft.metrics();
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.current_term != term || m.state != ServerState::Leader {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

type SharedRead = futures::future::Shared<futures::future::BoxFuture<'static, Result<u64, ConsensusError>>>;

/// Coalesces concurrent read-index requests into rounds. A caller joins the round that has not
/// started yet (or starts one), so the index it gets was confirmed after it asked: what makes
/// the read linearizable. One round runs at a time.
#[derive(Default)]
struct ReadIndexBatch {
    next: parking_lot::Mutex<Option<SharedRead>>,
    running: tokio::sync::Mutex<()>,
}

type WriteErr = RaftError<u64, ClientWriteError<u64, Member>>;

impl RaftNode {
    /// Starts the Raft member over an opened database. Forms the cluster when asked to and the
    /// log is empty; a member with state rejoins with what it has.
    pub async fn start(
        opts: RaftOptions,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, ConsensusError> {
        let stop = |e: String| ConsensusError::Storage(e);
        let config = Config {
            cluster_name: "rkube".into(),
            heartbeat_interval: opts.heartbeat.as_millis() as u64,
            // openraft 0.9 lets a follower that has known a leader stand for election only
            // after a leader lease of election_timeout_max plus a random election timeout, and
            // the other members refuse votes until their own lease runs out. With [T/2, T) the
            // first election comes 1.5-2 T after the last heartbeat, close to etcd's [T, 2T);
            // with [T, 2T) it came after 3-4 T (3.4-3.8 s of no writes when a leader died).
            election_timeout_min: opts.election_timeout.as_millis() as u64 / 2,
            election_timeout_max: opts.election_timeout.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_entries),
            max_in_snapshot_log_to_keep: 1_000,
            max_payload_entries: 1_000,
            snapshot_max_chunk_size: 1 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(|e| stop(e.to_string()))?;
        let stats = Arc::new(SyncStats::default());
        let durability = Arc::new(log_store::Durability::default());
        let log = log_store::LogStore::new(store.db().clone(), stats.clone(), opts.id, durability.clone());
        let sm = state_machine::StateMachine::new(store.clone(), opts.snapshot_dir.clone(), durability.clone())
            .map_err(|e| stop(e.to_string()))?;
        let channels = network::PeerChannels::default();
        let net = network::Network { channels: channels.clone(), durability };
        let raft = Raft::new(opts.id, Arc::new(config), net, log, sm).await.map_err(|e| stop(e.to_string()))?;
        if opts.bootstrap && !raft.is_initialized().await.map_err(|e| stop(e.to_string()))? {
            let members: BTreeMap<u64, Member> =
                opts.initial_cluster.iter().map(|(id, addr)| (*id, Member { peer_addr: addr.clone() })).collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "cluster already initialized");
            }
        }
        let (proposals, proposal_rx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(run_proposer(raft.clone(), proposal_rx));
        let (forwards, forward_rx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(run_forwarder(raft.clone(), channels.clone(), forward_rx));
        let node = Arc::new(RaftNode {
            proposals,
            forwards,
            id: opts.id,
            raft,
            store: store.clone(),
            lessor: Lessor::default(),
            channels,
            stats,
            reads: ReadIndexBatch::default(),
        });
        tokio::spawn(lessor::run_expiry(node.clone(), shutdown));
        Ok(node)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    /// (WAL syncs, log appends, log entries) since start: entries per sync is the group commit.
    pub fn sync_stats(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.stats.syncs.load(Relaxed), self.stats.appends.load(Relaxed), self.stats.entries.load(Relaxed))
    }

    /// The current Raft term, cheaply (for response headers).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        RaftStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            is_leader: m.state == ServerState::Leader,
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, n)| (*id, n.peer_addr.clone())).collect(),
        }
    }

    /// Waits up to `limit` for a known leader.
    async fn leader(&self, limit: Duration) -> Result<(u64, String), ConsensusError> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let m = rx.borrow_and_update();
                if let Some(l) = m.current_leader {
                    if let Some(n) = m.membership_config.membership().get_node(&l) {
                        return Ok((l, n.peer_addr.clone()));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ConsensusError::Stopped),
                Err(_) => return Err(ConsensusError::NoLeader),
            }
        }
    }

    /// Runs `req` on the leader: here when this member leads, else forwarded over the peer link.
    pub async fn on_leader(&self, req: LeaderRequest) -> Result<LeaderReply, ConsensusError> {
        for _ in 0..5 {
            let (leader, addr) = self.leader(Duration::from_secs(5)).await?;
            if leader == self.id {
                match self.handle_as_leader(req.clone()).await {
                    Err(ConsensusError::NoLeader) => continue,
                    other => return other,
                }
            }
            match self.forward(leader, &addr, &req).await {
                // A read index or lease query is safe to ask the next leader again.
                Err(ConsensusError::LeaderChanged) if !matches!(req, LeaderRequest::Writes(_)) => continue,
                Err(ConsensusError::NoLeader) => {
                    // The leader moved on since we looked; wait a moment for the next one.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                other => return other,
            }
        }
        Err(ConsensusError::NoLeader)
    }

    async fn forward(&self, leader: u64, addr: &str, req: &LeaderRequest) -> Result<LeaderReply, ConsensusError> {
        forward_to(&self.raft, &self.channels, leader, addr, req).await
    }

    /// Does leader-only work locally. Answers NoLeader when this member is not (or no longer)
    /// the leader, so that the caller looks for the leader again.
    pub(crate) async fn handle_as_leader(&self, req: LeaderRequest) -> Result<LeaderReply, ConsensusError> {
        match req {
            LeaderRequest::Writes(cmds) => {
                let mut waiting = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    let grant = match &cmd {
                        Command::LeaseGrant { id, ttl } => Some((*id, *ttl)),
                        _ => None,
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    self.proposals.send((cmd, tx)).await.map_err(|_| ConsensusError::Stopped)?;
                    waiting.push((rx, grant));
                }
                let mut results = Vec::with_capacity(waiting.len());
                for (rx, grant) in waiting {
                    let r = rx.await.unwrap_or(Err(ConsensusError::Stopped));
                    if let (Ok(_), Some((id, ttl))) = (&r, grant) {
                        self.lessor.touch(id, ttl);
                    }
                    results.push(r);
                }
                Ok(LeaderReply::Writes(results))
            }
            LeaderRequest::ReadIndex => {
                let (read, _) = self.raft.get_read_log_id().await.map_err(|e| match e {
                    RaftError::APIError(_) => ConsensusError::NoLeader,
                    RaftError::Fatal(_) => ConsensusError::Stopped,
                })?;
                Ok(LeaderReply::ReadIndex(read.map(|l| l.index).unwrap_or(0)))
            }
            LeaderRequest::AddMember { id, peer_addr, learner } => {
                let status = self.status();
                if status.nodes.contains_key(&id) {
                    return Err(ConsensusError::MemberExists);
                }
                if status.nodes.values().any(|a| *a == peer_addr) {
                    return Err(ConsensusError::PeerUrlExists);
                }
                self.raft.add_learner(id, Member { peer_addr }, false).await.map_err(map_write_err)?;
                if !learner {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(map_write_err)?;
                }
                Ok(LeaderReply::Done)
            }
            LeaderRequest::PromoteMember { id } => {
                let status = self.status();
                if !status.nodes.contains_key(&id) {
                    return Err(ConsensusError::MemberNotFound);
                }
                if !status.is_learner(id) {
                    return Err(ConsensusError::NotLearner);
                }
                let m = self.raft.metrics().borrow().clone();
                let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned()).flatten().map(|l| l.index);
                let caught_up = matched.is_some_and(|i| i + 1000 >= m.last_log_index.unwrap_or(0));
                if !caught_up {
                    return Err(ConsensusError::LearnerNotReady);
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(map_write_err)?;
                Ok(LeaderReply::Done)
            }
            LeaderRequest::RemoveMember { id } => {
                let status = self.status();
                if !status.nodes.contains_key(&id) {
                    return Err(ConsensusError::MemberNotFound);
                }
                if status.voters.contains(&id) {
                    if status.voters.len() == 1 {
                        return Err(ConsensusError::Membership("cannot remove the last voting member".into()));
                    }
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(map_write_err)?;
                } else {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(map_write_err)?;
                }
                Ok(LeaderReply::Done)
            }
            LeaderRequest::LeaseKeepAlive { id } => {
                self.ensure_leader()?;
                let rec = self.store.lease(id).map_err(|e| ConsensusError::Storage(e.to_string()))?;
                let rec = rec.ok_or(ConsensusError::LeaseNotFound)?;
                self.lessor.touch(id, rec.ttl);
                Ok(LeaderReply::LeaseTtl { remaining: rec.ttl, granted: rec.ttl })
            }
            LeaderRequest::LeaseTimeToLive { id } => {
                self.ensure_leader()?;
                let rec = self.store.lease(id).map_err(|e| ConsensusError::Storage(e.to_string()))?;
                let rec = rec.ok_or(ConsensusError::LeaseNotFound)?;
                let remaining = self.lessor.remaining(id).unwrap_or(rec.ttl);
                Ok(LeaderReply::LeaseTtl { remaining, granted: rec.ttl })
            }
        }
    }

    fn ensure_leader(&self) -> Result<(), ConsensusError> {
        if self.raft.metrics().borrow().state == ServerState::Leader {
            Ok(())
        } else {
            Err(ConsensusError::NoLeader)
        }
    }

    /// Proposes a command and returns what applying it answered. On a follower, concurrent
    /// writes travel to the leader together.
    pub async fn write(&self, cmd: Command) -> Result<Response, ConsensusError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (leader, _) = self.leader(Duration::from_secs(5)).await?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let queue = if leader == self.id { &self.proposals } else { &self.forwards };
            queue.send((cmd.clone(), tx)).await.map_err(|_| ConsensusError::Stopped)?;
            match rx.await.unwrap_or(Err(ConsensusError::Stopped)) {
                // Nothing was applied: the leader changed or could not be reached. Try the next.
                Err(ConsensusError::NoLeader) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(resp) => {
                    if let (Command::LeaseGrant { id, ttl }, true) = (&cmd, leader == self.id) {
                        self.lessor.touch(*id, *ttl);
                    }
                    return Ok(resp);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The leader's read index, confirmed with a quorum after this call began. Concurrent
    /// callers share rounds.
    pub async fn read_index(self: &Arc<Self>) -> Result<u64, ConsensusError> {
        let round = {
            let mut next = self.reads.next.lock();
            match &*next {
                Some(round) => round.clone(),
                None => {
                    let node = self.clone();
                    let round = async move {
                        let _one_at_a_time = node.reads.running.lock().await;
                        // From here on the round has started: later callers need the next one.
                        node.reads.next.lock().take();
                        match node.on_leader(LeaderRequest::ReadIndex).await? {
                            LeaderReply::ReadIndex(i) => Ok(i),
                            other => Err(ConsensusError::Storage(format!("unexpected reply to read index: {other:?}"))),
                        }
                    }
                    .boxed()
                    .shared();
                    *next = Some(round.clone());
                    round
                }
            }
        };
        round.await
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by the leader with a quorum (read index). After it, local reads are
    /// linearizable.
    pub async fn read_barrier(self: &Arc<Self>) -> Result<(), ConsensusError> {
        let index = self.read_index().await?;
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|_| ConsensusError::Timeout)?;
        Ok(())
    }

    pub async fn shutdown(&self) {
        let (syncs, appends, entries) = self.sync_stats();
        tracing::info!(
            syncs,
            appends,
            entries,
            entries_per_sync = format!("{:.2}", entries as f64 / syncs.max(1) as f64),
            "raft log group commit"
        );
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }
}

/// Sends leader-only work to the leader at `addr`.
/// Resolves once `leader` is no longer this member's idea of the leader in the term it had:
/// the cluster has moved on (it died, was cut off, or stepped down).
async fn leadership_lost(raft: &Raft<TypeConfig>, leader: u64) {
    let mut rx = raft.metrics();
    let term = rx.borrow().current_term;
    loop {
        {
            let m = rx.borrow_and_update();
            if m.current_leader != Some(leader) || m.current_term != term {
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn forward_to(
    raft: &Raft<TypeConfig>,
    channels: &network::PeerChannels,
    leader: u64,
    addr: &str,
    req: &LeaderRequest,
) -> Result<LeaderReply, ConsensusError> {
    let fail = |reason: String| ConsensusError::Forward { addr: addr.to_string(), reason };
    let mut client = channels.client(addr).map_err(|e| fail(e.to_string()))?;
    let body = bincode::serialize(req).map_err(|e| fail(e.to_string()))?;
    // A leader that dies or is cut off mid-request may never answer (its packets are simply
    // dropped); stop waiting as soon as the cluster elects another, not at the timeout.
    let call = tokio::time::timeout(Duration::from_secs(10), client.forward(RaftBody { body }));
    let resp = tokio::select! {
        r = call => r,
        _ = leadership_lost(raft, leader) => return Err(ConsensusError::LeaderChanged),
    };
    let resp = resp.map_err(|_| ConsensusError::Timeout)?.map_err(|s| {
        // A leader that cannot be connected to received nothing: the request may safely go
        // to whichever member leads next. Any other failure is ambiguous and is reported.
        if s.code() == tonic::Code::Unavailable && s.message().contains("connect") {
            ConsensusError::NoLeader
        } else {
            fail(s.message().to_string())
        }
    })?;
    bincode::deserialize::<Result<LeaderReply, ConsensusError>>(&resp.into_inner().body)
        .map_err(|e| fail(e.to_string()))?
}

/// Gathers writes made on a follower into one forwarded request per batch.
async fn run_forwarder(
    raft: Raft<TypeConfig>,
    channels: network::PeerChannels,
    mut rx: tokio::sync::mpsc::Receiver<Proposal>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT * 2));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (cmds, replies) = gather(first, &mut rx);
        let leader = {
            let m = raft.metrics();
            let m = m.borrow();
            m.current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| (l, n.peer_addr.clone())))
        };
        let (channels, raft) = (channels.clone(), raft.clone());
        tokio::spawn(async move {
            let result = match &leader {
                Some((id, addr)) => forward_to(&raft, &channels, *id, addr, &LeaderRequest::Writes(cmds)).await,
                None => Err(ConsensusError::NoLeader),
            };
            drop(slot);
            let results = result.and_then(|reply| match reply {
                LeaderReply::Writes(results) => Ok(results),
                other => Err(ConsensusError::Storage(format!("unexpected reply to forwarded writes: {other:?}"))),
            });
            answer(replies, results);
        });
    }
}

fn map_write_err(e: WriteErr) -> ConsensusError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ConsensusError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ConsensusError::Membership(e.to_string()),
        RaftError::Fatal(_) => ConsensusError::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::log_store::{Durability, LogStore};
    use super::state_machine::StateMachine;
    use super::TypeConfig;
    use crate::store::db::{self, Identity};
    use crate::store::Store;

    struct RocksBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().expect("creating a temporary directory");
            let opened = db::open(&dir.path().join("data"), Identity { cluster_id: 1, member_id: 1 })
                .expect("opening a fresh database");
            let store = Store::new(opened.db).expect("reading a fresh store");
            let durability = Arc::new(Durability::default());
            let log = LogStore::new(store.db().clone(), Arc::default(), 1, durability.clone());
            let sm = StateMachine::new(store, dir.path().join("snapshots"), durability)?;
            Ok((dir, log, sm))
        }
    }

    /// A lease granted at the end of one entry is there for a put in the next one applied in
    /// the same call (the entries' commands share one RocksDB batch, apart from such grants),
    /// and every write of the call is visible and counted once.
    #[tokio::test]
    async fn entries_applied_together_see_each_others_writes() {
        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

        use crate::pb::etcdserverpb::PutRequest;
        use crate::store::{Command, Response};

        let (_dir, _log, mut sm) = RocksBuilder.build().await.expect("stores");
        let put = |k: &str, lease: i64| {
            Command::Put(PutRequest { key: k.into(), value: b"v".to_vec(), lease, ..Default::default() })
        };
        let entry = |index: u64, cmds: Vec<Command>| Entry::<super::TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmds),
        };
        let entries = vec![
            entry(1, vec![put("a", 0), Command::LeaseGrant { id: 7, ttl: 60 }]),
            entry(2, vec![put("b", 7), put("a", 0)]),
        ];
        let out = sm.apply(entries).await.expect("apply");
        let revisions: Vec<Vec<i64>> = out
            .iter()
            .map(|rs| {
                rs.iter()
                    .map(|r| match r {
                        Response::Put(p) => p.header.as_ref().map_or(-1, |h| h.revision),
                        Response::LeaseGrant { .. } => 0,
                        other => panic!("unexpected {other:?}"),
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            revisions,
            vec![vec![2, 0], vec![3, 4]],
            "each put its own revision, the put with the lease accepted"
        );
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|l| l.index), Some(2));
    }

    /// openraft's own storage conformance suite, run against the real RocksDB log and state
    /// machine.
    #[test]
    fn openraft_storage_suite_passes_on_rocksdb() {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("openraft=info").try_init();
        Suite::test_all(RocksBuilder).expect("openraft storage suite");
    }
}
