//! etcd's Lease service. Grants and revocations are Raft commands; keep-alives and TTL queries
//! go to the leader, which alone tracks deadlines.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{status_of, status_of_apply, Api};
use crate::pb::etcdserverpb as epb;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::raft::{ConsensusError, LeaderReply, LeaderRequest};
use crate::store::{Command, Response as Applied};

/// etcd's largest lease TTL, in seconds.
const MAX_TTL: i64 = 9_000_000_000;
/// The shortest TTL granted: shorter leases could expire during one leader election.
pub const MIN_TTL: i64 = 2;

pub struct LeaseService {
    api: Arc<Api>,
}

impl LeaseService {
    pub fn new(api: Arc<Api>) -> Self {
        LeaseService { api }
    }
}

async fn leader_ttl(api: &Api, req: LeaderRequest) -> Result<Option<(i64, i64)>, Status> {
    match api.node.on_leader(req).await {
        Ok(LeaderReply::LeaseTtl { remaining, granted }) => Ok(Some((remaining, granted))),
        Ok(_) => Err(Status::internal("etcdserver: unexpected reply from the leader")),
        Err(ConsensusError::LeaseNotFound) => Ok(None),
        Err(e) => Err(status_of(&e)),
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<epb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    #[tracing::instrument(skip_all)]
    async fn lease_grant(
        &self,
        req: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status> {
        let req = req.into_inner();
        if req.ttl > MAX_TTL {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        if req.id < 0 {
            return Err(Status::invalid_argument("etcdserver: lease ID must be positive"));
        }
        self.api.check_quota().await?;
        let id = if req.id != 0 { req.id } else { (rand::random::<u64>() >> 1).max(1) as i64 };
        let cmd = Command::LeaseGrant { id, ttl: req.ttl.max(MIN_TTL) };
        match self.api.node.write(cmd).await.map_err(|e| status_of(&e))? {
            Applied::LeaseGrant { id, ttl, revision } => Ok(Response::new(epb::LeaseGrantResponse {
                header: self.api.header(revision),
                id,
                ttl,
                error: String::new(),
            })),
            Applied::Error(e) => Err(status_of_apply(&e)),
            _ => Err(Status::internal("etcdserver: unexpected reply to a lease grant")),
        }
    }

    #[tracing::instrument(skip_all, fields(lease = req.get_ref().id))]
    async fn lease_revoke(
        &self,
        req: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status> {
        let id = req.into_inner().id;
        match self.api.node.write(Command::LeaseRevoke { id }).await.map_err(|e| status_of(&e))? {
            Applied::Done { revision } => {
                Ok(Response::new(epb::LeaseRevokeResponse { header: self.api.header(revision) }))
            }
            Applied::Error(e) => Err(status_of_apply(&e)),
            _ => Err(Status::internal("etcdserver: unexpected reply to a lease revoke")),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<epb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let api = self.api.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = incoming.next().await {
                let reply = match leader_ttl(&api, LeaderRequest::LeaseKeepAlive { id: msg.id }).await {
                    // etcd answers a keep-alive for an unknown lease with TTL 0.
                    Ok(found) => Ok(epb::LeaseKeepAliveResponse {
                        header: api.header(api.store.revisions().current),
                        id: msg.id,
                        ttl: found.map_or(0, |(ttl, _)| ttl),
                    }),
                    Err(status) => Err(status),
                };
                let stop = reply.is_err();
                if tx.send(reply).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(lease = req.get_ref().id))]
    async fn lease_time_to_live(
        &self,
        req: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<epb::LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        let found = leader_ttl(&self.api, LeaderRequest::LeaseTimeToLive { id: req.id }).await?;
        // etcd answers a query for an unknown lease with TTL -1.
        let Some((ttl, granted)) = found else {
            return Ok(Response::new(epb::LeaseTimeToLiveResponse {
                header: self.api.header(self.api.store.revisions().current),
                id: req.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        // The keys come from this member's store: a read barrier first, so that a follower
        // lists every key a write acknowledged before this call attached (as etcd's leader does).
        let keys = if req.keys {
            self.api.node.read_barrier().await.map_err(|e| status_of(&e))?;
            self.api.store.lease_keys(req.id).map_err(|e| status_of_apply(&e))?
        } else {
            Vec::new()
        };
        let header = self.api.header(self.api.store.revisions().current);
        Ok(Response::new(epb::LeaseTimeToLiveResponse { header, id: req.id, ttl, granted_ttl: granted, keys }))
    }

    async fn lease_leases(
        &self,
        _req: Request<epb::LeaseLeasesRequest>,
    ) -> Result<Response<epb::LeaseLeasesResponse>, Status> {
        self.api.node.read_barrier().await.map_err(|e| status_of(&e))?;
        let leases = self.api.store.leases().map_err(|e| status_of_apply(&e))?;
        Ok(Response::new(epb::LeaseLeasesResponse {
            header: self.api.header(self.api.store.revisions().current),
            leases: leases.into_iter().map(|(id, _)| epb::LeaseStatus { id }).collect(),
        }))
    }
}
