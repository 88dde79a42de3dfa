//! etcd's Maintenance service: status, alarms, defragmentation, hashes and snapshots.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{status_of, status_of_apply, Api};
use crate::pb::etcdserverpb as epb;
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::store::{db, snapshot, Command};

/// The version rkube reports: the etcd API level it speaks, and its own version.
pub const VERSION: &str = concat!("3.4.0+rkube.", env!("CARGO_PKG_VERSION"));
const SNAPSHOT_CHUNK: usize = 32 * 1024;

pub struct MaintenanceService {
    api: Arc<Api>,
}

impl MaintenanceService {
    pub fn new(api: Arc<Api>) -> Self {
        MaintenanceService { api }
    }
}

/// Pads a snapshot to a multiple of 512 bytes and appends the SHA-256 of everything before it,
/// as etcd's snapshot stream ends: `etcdctl snapshot save` refuses a stream whose length is not
/// 32 past a multiple of 512 ("sha256 checksum not found").
fn with_checksum(mut blob: Vec<u8>) -> Vec<u8> {
    use sha2::Digest;
    blob.resize(blob.len().next_multiple_of(512), 0);
    let sum = sha2::Sha256::digest(&blob);
    blob.extend_from_slice(&sum);
    blob
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<epb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<epb::AlarmRequest>) -> Result<Response<epb::AlarmResponse>, Status> {
        let req = req.into_inner();
        let action = AlarmAction::try_from(req.action).unwrap_or(AlarmAction::Get);
        if action != AlarmAction::Get {
            let member = if req.member_id == 0 { self.api.node.id } else { req.member_id };
            let cmd = Command::Alarm { member, alarm: req.alarm, activate: action == AlarmAction::Activate };
            self.api.node.write(cmd).await.map_err(|e| status_of(&e))?;
            if action == AlarmAction::Deactivate {
                self.api.refresh_db_size();
            }
        }
        let alarms = self.api.store.alarms().map_err(|e| status_of_apply(&e))?;
        Ok(Response::new(epb::AlarmResponse {
            header: self.api.header(self.api.store.revisions().current),
            alarms: alarms
                .into_iter()
                .filter(|(m, a)| {
                    action == AlarmAction::Get || (*m == req.member_id || req.member_id == 0) && *a == req.alarm
                })
                .map(|(member_id, alarm)| epb::AlarmMember { member_id, alarm })
                .collect(),
        }))
    }

    async fn status(&self, _req: Request<epb::StatusRequest>) -> Result<Response<epb::StatusResponse>, Status> {
        let status = self.api.node.status();
        let size = db::size_bytes(self.api.store.db()) as i64;
        let errors = self
            .api
            .store
            .alarms()
            .map_err(|e| status_of_apply(&e))?
            .into_iter()
            .map(|(m, a)| format!("memberID:{m} alarm:{}", if a == 1 { "NOSPACE" } else { "CORRUPT" }))
            .collect();
        Ok(Response::new(epb::StatusResponse {
            header: self.api.header(self.api.store.revisions().current),
            version: VERSION.into(),
            db_size: size,
            leader: status.leader.unwrap_or(0),
            raft_index: status.last_log_index,
            raft_term: status.term,
            raft_applied_index: status.applied_index,
            errors,
            db_size_in_use: size,
            is_learner: status.is_learner(status.id),
        }))
    }

    async fn defragment(
        &self,
        _req: Request<epb::DefragmentRequest>,
    ) -> Result<Response<epb::DefragmentResponse>, Status> {
        let store = self.api.store.clone();
        tokio::task::spawn_blocking(move || {
            for name in db::SM_CFS.iter().chain([db::CF_LOG].iter()) {
                if let Some(cf) = store.db().cf_handle(name) {
                    store.db().compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
                }
            }
        })
        .await
        .map_err(|_| Status::internal("etcdserver: defragment task failed"))?;
        self.api.refresh_db_size();
        Ok(Response::new(epb::DefragmentResponse { header: self.api.header(self.api.store.revisions().current) }))
    }

    async fn hash(&self, _req: Request<epb::HashRequest>) -> Result<Response<epb::HashResponse>, Status> {
        let store = self.api.store.clone();
        let (hash, revs) = tokio::task::spawn_blocking(move || store.hash_kv(0))
            .await
            .map_err(|_| Status::internal("etcdserver: hash task failed"))?
            .map_err(|e| status_of_apply(&e))?;
        Ok(Response::new(epb::HashResponse { header: self.api.header(revs.current), hash }))
    }

    async fn hash_kv(&self, req: Request<epb::HashKvRequest>) -> Result<Response<epb::HashKvResponse>, Status> {
        let rev = req.into_inner().revision;
        let store = self.api.store.clone();
        let (hash, revs) = tokio::task::spawn_blocking(move || store.hash_kv(rev))
            .await
            .map_err(|_| Status::internal("etcdserver: hash task failed"))?
            .map_err(|e| status_of_apply(&e))?;
        Ok(Response::new(epb::HashKvResponse {
            header: self.api.header(revs.current),
            hash,
            compact_revision: revs.compacted,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _req: Request<epb::SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        let store = self.api.store.clone();
        let blob = tokio::task::spawn_blocking(move || {
            let snap = store.db().snapshot();
            snapshot::dump(store.db(), &snap, Vec::new()).map(with_checksum)
        })
        .await
        .map_err(|_| Status::internal("etcdserver: snapshot task failed"))?
        .map_err(|e| Status::internal(format!("etcdserver: snapshot: {e}")))?;
        let header = self.api.header(self.api.store.revisions().current);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let total = blob.len();
            let mut sent = 0;
            for chunk in blob.chunks(SNAPSHOT_CHUNK) {
                sent += chunk.len();
                let resp =
                    epb::SnapshotResponse { header, remaining_bytes: (total - sent) as u64, blob: chunk.to_vec() };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        _req: Request<epb::MoveLeaderRequest>,
    ) -> Result<Response<epb::MoveLeaderResponse>, Status> {
        Err(Status::unimplemented("etcdserver: moving the leader is not supported by rkube yet"))
    }
}
