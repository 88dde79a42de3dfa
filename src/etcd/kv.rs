//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use super::{status_of, status_of_apply, Api};
use crate::pb::etcdserverpb as epb;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::request_op::Request as OpRequest;
use crate::store::{Command, Response as Applied};

pub struct KvService {
    api: Arc<Api>,
}

impl KvService {
    pub fn new(api: Arc<Api>) -> Self {
        KvService { api }
    }
}

const NO_KEY: &str = "etcdserver: key is not provided";

fn check_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(NO_KEY));
    }
    Ok(())
}

/// Validates a transaction as etcd does: key presence, the op limit, and no key written twice
/// in one branch (a put and an overlapping delete count as twice).
pub(crate) fn check_txn(req: &epb::TxnRequest, max_ops: usize) -> Result<(), Status> {
    if req.compare.len() > max_ops || req.success.len() > max_ops || req.failure.len() > max_ops {
        return Err(Status::invalid_argument("etcdserver: too many operations in txn request"));
    }
    for c in &req.compare {
        check_key(&c.key)?;
    }
    for branch in [&req.success, &req.failure] {
        let mut puts = BTreeSet::new();
        let mut deletes = Vec::new();
        collect_writes(branch, &mut puts, &mut deletes, max_ops)?;
        for (start, end) in &deletes {
            if puts.iter().any(|k: &Vec<u8>| crate::store::in_range(k, start, end)) {
                return Err(Status::invalid_argument("etcdserver: duplicate key given in txn request"));
            }
        }
    }
    Ok(())
}

fn collect_writes(
    ops: &[epb::RequestOp],
    puts: &mut BTreeSet<Vec<u8>>,
    deletes: &mut Vec<(Vec<u8>, Vec<u8>)>,
    max_ops: usize,
) -> Result<(), Status> {
    for op in ops {
        match &op.request {
            Some(OpRequest::RequestRange(r)) => check_key(&r.key)?,
            Some(OpRequest::RequestPut(p)) => {
                check_key(&p.key)?;
                if !puts.insert(p.key.clone()) {
                    return Err(Status::invalid_argument("etcdserver: duplicate key given in txn request"));
                }
            }
            Some(OpRequest::RequestDeleteRange(d)) => {
                check_key(&d.key)?;
                deletes.push((d.key.clone(), d.range_end.clone()));
            }
            Some(OpRequest::RequestTxn(t)) => {
                check_txn(t, max_ops)?;
                for c in &t.compare {
                    check_key(&c.key)?;
                }
                // Only one branch of a nested transaction runs; each is checked with the parent.
                let (mut sp, mut sd) = (puts.clone(), deletes.clone());
                collect_writes(&t.success, &mut sp, &mut sd, max_ops)?;
                let (mut fp, mut fd) = (puts.clone(), deletes.clone());
                collect_writes(&t.failure, &mut fp, &mut fd, max_ops)?;
                puts.extend(sp.into_iter().chain(fp));
                deletes.extend(sd.into_iter().chain(fd));
            }
            None => {}
        }
    }
    Ok(())
}

impl KvService {
    async fn propose(&self, cmd: Command) -> Result<Applied, Status> {
        match self.api.node.write(cmd).await.map_err(|e| status_of(&e))? {
            Applied::Error(e) => Err(status_of_apply(&e)),
            other => Ok(other),
        }
    }
}

fn unexpected(what: &str) -> Status {
    tracing::error!(what, "the state machine answered a command with the wrong kind of response");
    Status::internal("etcdserver: internal error")
}

#[tonic::async_trait]
impl Kv for KvService {
    #[tracing::instrument(skip_all, fields(serializable = req.get_ref().serializable))]
    async fn range(&self, req: Request<epb::RangeRequest>) -> Result<Response<epb::RangeResponse>, Status> {
        let req = req.into_inner();
        check_key(&req.key)?;
        if !req.serializable && !self.api.limits.unsafe_stale_reads {
            self.api.node.read_barrier().await.map_err(|e| status_of(&e))?;
        }
        let store = self.api.store.clone();
        let mut resp = tokio::task::spawn_blocking(move || store.range(&req))
            .await
            .map_err(|_| Status::internal("etcdserver: read task failed"))?
            .map_err(|e| status_of_apply(&e))?;
        self.api.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn put(&self, req: Request<epb::PutRequest>) -> Result<Response<epb::PutResponse>, Status> {
        let req = req.into_inner();
        self.api.check_size(req.encoded_len())?;
        check_key(&req.key)?;
        self.api.check_quota().await?;
        match self.propose(Command::Put(req)).await? {
            Applied::Put(mut resp) => {
                self.api.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn delete_range(
        &self,
        req: Request<epb::DeleteRangeRequest>,
    ) -> Result<Response<epb::DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        self.api.check_size(req.encoded_len())?;
        check_key(&req.key)?;
        match self.propose(Command::DeleteRange(req)).await? {
            Applied::DeleteRange(mut resp) => {
                self.api.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn txn(&self, req: Request<epb::TxnRequest>) -> Result<Response<epb::TxnResponse>, Status> {
        let req = req.into_inner();
        self.api.check_size(req.encoded_len())?;
        check_txn(&req, self.api.limits.max_txn_ops)?;
        if crate::store::mvcc::txn_writes(&req) {
            self.api.check_quota().await?;
        }
        match self.propose(Command::Txn(req)).await? {
            Applied::Txn(mut resp) => {
                self.api.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    #[tracing::instrument(skip_all, fields(rev = req.get_ref().revision))]
    async fn compact(&self, req: Request<epb::CompactionRequest>) -> Result<Response<epb::CompactionResponse>, Status> {
        let req = req.into_inner();
        match self.propose(Command::Compact { revision: req.revision }).await? {
            Applied::Done { revision } => {
                Ok(Response::new(epb::CompactionResponse { header: self.api.header(revision) }))
            }
            _ => Err(unexpected("compact")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> epb::RequestOp {
        epb::RequestOp {
            request: Some(OpRequest::RequestPut(epb::PutRequest { key: key.into(), ..Default::default() })),
        }
    }

    fn del(key: &str, end: &str) -> epb::RequestOp {
        epb::RequestOp {
            request: Some(OpRequest::RequestDeleteRange(epb::DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn txn_checks_follow_etcd() {
        let ok = epb::TxnRequest { success: vec![put("a"), put("b")], failure: vec![put("a")], ..Default::default() };
        assert!(check_txn(&ok, 128).is_ok());
        let dup = epb::TxnRequest { success: vec![put("a"), put("a")], ..Default::default() };
        assert_eq!(check_txn(&dup, 128).unwrap_err().message(), "etcdserver: duplicate key given in txn request");
        let overlap = epb::TxnRequest { success: vec![put("ab"), del("a", "b")], ..Default::default() };
        assert!(check_txn(&overlap, 128).is_err());
        let many = epb::TxnRequest { success: (0..129).map(|i| put(&i.to_string())).collect(), ..Default::default() };
        assert_eq!(check_txn(&many, 128).unwrap_err().message(), "etcdserver: too many operations in txn request");
        let empty = epb::TxnRequest { success: vec![put("")], ..Default::default() };
        assert_eq!(check_txn(&empty, 128).unwrap_err().message(), NO_KEY);
    }
}
