//! openraft's network: Raft RPCs to peers over gRPC on their `--listen-peer` address. The
//! openraft request and reply travel bincode-encoded inside a `RaftBody`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::log_store::Durability;
use super::{Member, TypeConfig};
use crate::pb::raft::raft_peer_client::RaftPeerClient;
use crate::pb::raft::RaftBody;

/// A lazily connected gRPC channel to a peer address.
fn peer_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// One HTTP/2 connection per peer address, shared by replication, heartbeats, read-index
/// rounds and forwarded requests (openraft asks for a new client for every heartbeat round;
/// a connection each time would cost a TCP handshake per linearizable read).
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<parking_lot::Mutex<HashMap<String, Channel>>>,
}

impl PeerChannels {
    pub fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>, tonic::transport::Error> {
        let mut map = self.channels.lock();
        let ch = match map.get(addr) {
            Some(ch) => ch.clone(),
            None => {
                let ch = peer_channel(addr)?;
                map.insert(addr.to_string(), ch.clone());
                ch
            }
        };
        Ok(RaftPeerClient::new(ch).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20))
    }
}

pub struct Network {
    pub channels: PeerChannels,
    /// The local log's syncs: a commit index goes out only once they cover it.
    pub durability: Arc<Durability>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerConn {
        let client = self.channels.client(&node.peer_addr).ok();
        PeerConn { target, addr: node.peer_addr.clone(), client, durability: self.durability.clone() }
    }
}

pub struct PeerConn {
    target: u64,
    addr: String,
    client: Option<RaftPeerClient<Channel>>,
    durability: Arc<Durability>,
}

#[derive(Debug, thiserror::Error)]
#[error("peer {addr}: {reason}")]
struct PeerError {
    addr: String,
    reason: String,
}

impl PeerConn {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: Kind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, Member, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let fail = |reason: String| PeerError { addr: self.addr.clone(), reason };
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&fail("invalid peer address".into()))));
        };
        let body = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let req = tonic::Request::new(RaftBody { body });
        let fut = async {
            match kind {
                Kind::Append => client.append_entries(req).await,
                Kind::Vote => client.vote(req).await,
                Kind::Snapshot => client.install_snapshot(req).await,
            }
        };
        // Only a peer that cannot be connected to is Unreachable (openraft then backs off for a
        // while); a slow or failed call is a Network error, retried at once.
        let resp = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(_) => return Err(RPCError::Network(NetworkError::new(&fail("timed out".into())))),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable && status.message().contains("connect") => {
                return Err(RPCError::Unreachable(Unreachable::new(&fail(status.message().to_string()))))
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&fail(status.message().to_string())))),
            Ok(Ok(r)) => r.into_inner(),
        };
        let decoded: Result<Resp, RaftError<u64, E>> =
            bincode::deserialize(&resp.body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let mut rpc = rpc;
        let commit = self.durability.commit_to_send(rpc.leader_commit, rpc.entries.len());
        rpc.leader_commit = match tokio::time::timeout(option.hard_ttl(), commit).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(RPCError::Network(NetworkError::new(&std::io::Error::other(e)))),
            Err(_) => {
                let e = std::io::Error::other("timed out waiting for the local log's sync");
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        self.call(Kind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>> {
        self.call(Kind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.call(Kind::Vote, &rpc, &option).await
    }
}
