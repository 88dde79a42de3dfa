//! The harness's etcd v3 client: one lazily connected channel per member (on its published
//! port), unary calls bounded by a timeout, and the mapping of errors to the history's
//! outcomes. A write's outcome is `fail` only when it certainly did not reach the server;
//! anything else (a timeout, a lost connection, "no leader" after a forward) is `info`.

use std::time::Duration;

use rkube::pb::etcdserverpb as epb;
use rkube::pb::etcdserverpb::request_op::Request as OpRequest;
use rkube::pb::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::history::Kind;

/// Why a call did not succeed.
#[derive(Debug)]
pub enum CallError {
    Timeout,
    Status(Status),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => write!(f, "timeout"),
            CallError::Status(s) => {
                let mut msg = format!("{:?}: {}", s.code(), s.message());
                let mut src = std::error::Error::source(s);
                while let Some(e) = src {
                    msg.push_str(&format!(": {e}"));
                    src = e.source();
                }
                write!(f, "{msg}")
            }
        }
    }
}

impl CallError {
    /// The history outcome of a write that ended with this error.
    pub fn write_outcome(&self) -> Kind {
        match self {
            CallError::Timeout => Kind::Info,
            CallError::Status(s) => match s.code() {
                Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::ResourceExhausted
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented => Kind::Fail,
                // The request never left: no connection could be made.
                Code::Unavailable if self.to_string().contains("tcp connect error") => Kind::Fail,
                _ => Kind::Info,
            },
        }
    }
}

/// A channel to one member's client port on the host.
pub fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("a loopback address is a valid URI")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy()
}

#[derive(Clone)]
pub struct Client {
    pub member: String,
    kv: KvClient<Channel>,
    pub watch: WatchClient<Channel>,
    timeout: Duration,
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(CallError::Timeout),
        Ok(Err(s)) => Err(CallError::Status(s)),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

pub fn put_op(key: &str, value: &str) -> epb::RequestOp {
    epb::RequestOp {
        request: Some(OpRequest::RequestPut(epb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

pub fn delete_op(key: &str) -> epb::RequestOp {
    epb::RequestOp {
        request: Some(OpRequest::RequestDeleteRange(epb::DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// The end of the range of keys that start with `prefix` (etcd's `--prefix`).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Client {
    pub fn new(member: &str, port: u16, timeout: Duration) -> Client {
        let ch = channel(port);
        Client { member: member.to_string(), kv: KvClient::new(ch.clone()), watch: WatchClient::new(ch), timeout }
    }

    /// A linearizable (or serializable) read of one key or a prefix.
    pub async fn range(&self, key: &str, prefix: bool, serializable: bool) -> Result<epb::RangeResponse, CallError> {
        let req = epb::RangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: if prefix { prefix_end(key) } else { vec![] },
            serializable,
            ..Default::default()
        };
        bounded(self.timeout, self.kv.clone().range(req)).await
    }

    pub async fn txn(&self, req: epb::TxnRequest) -> Result<epb::TxnResponse, CallError> {
        bounded(self.timeout, self.kv.clone().txn(req)).await
    }
}

/// The revision in a response header (0 when absent).
pub fn revision(h: &Option<epb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}
