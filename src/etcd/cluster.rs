//! etcd's Cluster service: membership as Raft holds it, with the names and client URLs that
//! members publish once they run.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{status_of, status_of_apply, strip_scheme, Api};
use crate::pb::etcdserverpb as epb;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::raft::{ConsensusError, LeaderRequest};

pub struct ClusterService {
    api: Arc<Api>,
}

impl ClusterService {
    pub fn new(api: Arc<Api>) -> Self {
        ClusterService { api }
    }
}

/// The cluster's members as etcd lists them.
pub(crate) fn members(api: &Api) -> Result<Vec<epb::Member>, Status> {
    let status = api.node.status();
    let attrs = api.store.members().map_err(|e| status_of_apply(&e))?;
    Ok(status
        .nodes
        .iter()
        .map(|(id, peer)| {
            let attr = attrs.get(id).cloned().unwrap_or_default();
            epb::Member {
                id: *id,
                name: attr.name,
                peer_ur_ls: vec![format!("http://{peer}")],
                client_ur_ls: if attr.api_addr.is_empty() { vec![] } else { vec![format!("http://{}", attr.api_addr)] },
                is_learner: !status.voters.contains(id),
            }
        })
        .collect())
}

fn peer_addr(urls: &[String]) -> Result<String, Status> {
    let url = urls.first().ok_or_else(|| Status::invalid_argument("etcdserver: member peer URLs are not provided"))?;
    let addr = strip_scheme(url);
    if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
        return Err(Status::invalid_argument(format!("etcdserver: peer URL {url:?} is not host:port")));
    }
    Ok(addr.to_string())
}

impl ClusterService {
    /// Runs a membership change on the leader, then waits until this member has it too, so
    /// that the member list in the reply shows the change.
    async fn leader(&self, req: LeaderRequest) -> Result<(), Status> {
        self.api.node.on_leader(req).await.map_err(|e| status_of(&e))?;
        self.api.node.read_barrier().await.map_err(|e| status_of(&e))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    #[tracing::instrument(skip_all)]
    async fn member_add(
        &self,
        req: Request<epb::MemberAddRequest>,
    ) -> Result<Response<epb::MemberAddResponse>, Status> {
        let req = req.into_inner();
        let addr = peer_addr(&req.peer_ur_ls)?;
        // Ids are small integers here (they are also the `--id` of the new member's process):
        // the next one after every id the cluster has used.
        let status = self.api.node.status();
        let id = status.nodes.keys().max().copied().unwrap_or(0).max(self.api.node.id) + 1;
        self.leader(LeaderRequest::AddMember { id, peer_addr: addr.clone(), learner: req.is_learner }).await?;
        let member = epb::Member {
            id,
            name: String::new(),
            peer_ur_ls: vec![format!("http://{addr}")],
            client_ur_ls: vec![],
            is_learner: req.is_learner,
        };
        Ok(Response::new(epb::MemberAddResponse {
            header: self.api.header(self.api.store.revisions().current),
            member: Some(member),
            members: members(&self.api)?,
        }))
    }

    #[tracing::instrument(skip_all, fields(node_id = req.get_ref().id))]
    async fn member_remove(
        &self,
        req: Request<epb::MemberRemoveRequest>,
    ) -> Result<Response<epb::MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        self.leader(LeaderRequest::RemoveMember { id }).await?;
        Ok(Response::new(epb::MemberRemoveResponse {
            header: self.api.header(self.api.store.revisions().current),
            members: members(&self.api)?,
        }))
    }

    async fn member_update(
        &self,
        req: Request<epb::MemberUpdateRequest>,
    ) -> Result<Response<epb::MemberUpdateResponse>, Status> {
        let req = req.into_inner();
        let status = self.api.node.status();
        if !status.nodes.contains_key(&req.id) {
            return Err(status_of(&ConsensusError::MemberNotFound));
        }
        Err(Status::unimplemented(
            "etcdserver: changing a member's peer URL is not supported; remove the member and add it again",
        ))
    }

    async fn member_list(
        &self,
        _req: Request<epb::MemberListRequest>,
    ) -> Result<Response<epb::MemberListResponse>, Status> {
        Ok(Response::new(epb::MemberListResponse {
            header: self.api.header(self.api.store.revisions().current),
            members: members(&self.api)?,
        }))
    }

    #[tracing::instrument(skip_all, fields(node_id = req.get_ref().id))]
    async fn member_promote(
        &self,
        req: Request<epb::MemberPromoteRequest>,
    ) -> Result<Response<epb::MemberPromoteResponse>, Status> {
        let id = req.into_inner().id;
        self.leader(LeaderRequest::PromoteMember { id }).await?;
        Ok(Response::new(epb::MemberPromoteResponse {
            header: self.api.header(self.api.store.revisions().current),
            members: members(&self.api)?,
        }))
    }
}
