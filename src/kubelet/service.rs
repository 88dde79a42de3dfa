//! The kubelet API on the node's kubelet port: `rkube.v1.Kubelet/Logs` streams a container's
//! log file (tail, follow, previous attempt). The API server proxies `Pods/Logs` here; pods
//! are found in the agent's pod cache, their files under the agent's log root.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::logs::{follow_log, read_log, LogLine};
use super::pod_worker::find_log;
use crate::api::v1::Pod;
use crate::pb::v1::kubelet_server::{Kubelet, KubeletServer};
use crate::pb::v1::{LogChunk, LogsRequest};
use crate::reconcile::Cache;

/// Chunks in flight to one log client.
const LOG_STREAM_BOUND: usize = 64;

struct Service {
    pods: Arc<Cache<Pod>>,
    log_root: PathBuf,
    stop: CancellationToken,
}

fn chunk(line: &LogLine) -> LogChunk {
    let mut data = line.content.clone();
    if !line.partial {
        data.push(b'\n');
    }
    LogChunk { data }
}

#[tonic::async_trait]
impl Kubelet for Service {
    type LogsStream = ReceiverStream<Result<LogChunk, Status>>;

    #[tracing::instrument(skip_all, fields(ns = %req.get_ref().namespace, pod = %req.get_ref().name))]
    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let pod = self
            .pods
            .get(&format!("{}/{}", r.namespace, r.name))
            .ok_or_else(|| Status::not_found(format!("pod {}/{} is not on this node", r.namespace, r.name)))?;
        let containers: Vec<String> =
            pod.spec.as_ref().map(|s| s.containers.iter().map(|c| c.name.clone()).collect()).unwrap_or_default();
        let container = if r.container.is_empty() {
            match containers.as_slice() {
                [one] => one.clone(),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "a container name must be given for pod {}: one of {containers:?}",
                        r.name
                    )))
                }
            }
        } else if containers.contains(&r.container) {
            r.container.clone()
        } else {
            return Err(Status::invalid_argument(format!("container {:?} is not in pod {}", r.container, r.name)));
        };
        let path = find_log(&self.log_root, &pod, &container, r.previous).ok_or_else(|| {
            let what = if r.previous { "previous terminated container" } else { "container" };
            Status::invalid_argument(format!("{what} {container:?} in pod {} has no logs yet", r.name))
        })?;
        let tail = r.tail_lines.and_then(|t| usize::try_from(t).ok());
        let (tx, rx) = tokio::sync::mpsc::channel(LOG_STREAM_BOUND);
        if r.follow {
            let stop = self.stop.child_token();
            let mut lines = follow_log(&path, tail, stop.clone()).map_err(|e| Status::internal(e.to_string()))?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tx.closed() => break,
                        line = lines.recv() => match line {
                            Some(Ok(l)) => if tx.send(Ok(chunk(&l))).await.is_err() { break },
                            Some(Err(e)) => {
                                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                                break;
                            }
                            None => break,
                        },
                    }
                }
                stop.cancel();
            });
        } else {
            let lines = tokio::task::spawn_blocking(move || read_log(&path, tail))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(e.to_string()))?;
            tokio::spawn(async move {
                for l in &lines {
                    if tx.send(Ok(chunk(l))).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the kubelet API on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pods: Arc<Cache<Pod>>,
    log_root: PathBuf,
    stop: CancellationToken,
) {
    let svc = Service { pods, log_root, stop: stop.clone() };
    let result = tonic::transport::Server::builder()
        .add_service(KubeletServer::new(svc))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the kubelet API server failed");
    }
}
