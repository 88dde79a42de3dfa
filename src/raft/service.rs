//! The peer side of the Raft transport: answers Raft RPCs and forwarded leader work on
//! `--listen-peer`.

use std::sync::Arc;

use serde::Serialize;
use tonic::{Request, Status};

use super::{LeaderReply, LeaderRequest, RaftNode};
use crate::pb::raft::raft_peer_server::RaftPeer;
use crate::pb::raft::RaftBody;

pub struct PeerService {
    node: Arc<RaftNode>,
}

impl PeerService {
    pub fn new(node: Arc<RaftNode>) -> Self {
        PeerService { node }
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<RaftBody>) -> Result<T, Status> {
    bincode::deserialize(&req.into_inner().body)
        .map_err(|e| Status::invalid_argument(format!("peer message does not decode: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftBody>, Status> {
    let body = bincode::serialize(value).map_err(|e| Status::internal(format!("encoding reply: {e}")))?;
    Ok(tonic::Response::new(RaftBody { body }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: Request<RaftBody>) -> Result<tonic::Response<RaftBody>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft().append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftBody>) -> Result<tonic::Response<RaftBody>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft().vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftBody>) -> Result<tonic::Response<RaftBody>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft().install_snapshot(rpc).await)
    }

    async fn forward(&self, req: Request<RaftBody>) -> Result<tonic::Response<RaftBody>, Status> {
        let req: LeaderRequest = decode(req)?;
        if let LeaderRequest::ReadIndex = req {
            // Read-index requests from every follower share the leader's rounds too.
            return encode(&self.node.read_index().await.map(LeaderReply::ReadIndex));
        }
        encode(&self.node.handle_as_leader(req).await)
    }
}
