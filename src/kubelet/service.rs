//! The kubelet API on the node's kubelet port: `rkube.v1.Kubelet/Logs` streams a container's
//! log file (tail, follow, previous attempt); `Exec` runs a command in a running container and
//! streams its output and exit code. The API server proxies `Pods/Logs` and `Pods/Exec` here;
//! pods are found in the agent's pod cache, their files under the agent's log root, their
//! containers in the runtime.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::logs::{follow_log, read_log, LogLine};
use super::pod_worker::find_log;
use super::runtime::{ContainerState, Runtime};
use crate::api::v1::Pod;
use crate::api::Object;
use crate::pb::v1::kubelet_server::{Kubelet, KubeletServer};
use crate::pb::v1::{ExecOutput, ExecRequest, LogChunk, LogsRequest};
use crate::reconcile::Cache;

/// Chunks in flight to one log or exec client.
const LOG_STREAM_BOUND: usize = 64;
/// The most an exec output message carries.
const EXEC_CHUNK: usize = 32 * 1024;

struct Service {
    pods: Arc<Cache<Pod>>,
    runtime: Arc<dyn Runtime>,
    log_root: PathBuf,
    stop: CancellationToken,
}

impl Service {
    fn pod(&self, namespace: &str, name: &str) -> Result<Arc<Pod>, Status> {
        self.pods
            .get(&format!("{namespace}/{name}"))
            .ok_or_else(|| Status::not_found(format!("pod {namespace}/{name} is not on this node")))
    }
}

/// The container a request names, or the pod's only one when it names none.
fn container_of(pod: &Pod, requested: &str) -> Result<String, Status> {
    let name = &pod.meta().name;
    let containers: Vec<String> =
        pod.spec.as_ref().map(|s| s.containers.iter().map(|c| c.name.clone()).collect()).unwrap_or_default();
    if requested.is_empty() {
        match containers.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(Status::invalid_argument(format!(
                "a container name must be given for pod {name}: one of {containers:?}"
            ))),
        }
    } else if containers.iter().any(|c| c == requested) {
        Ok(requested.to_string())
    } else {
        Err(Status::invalid_argument(format!("container {requested:?} is not in pod {name}")))
    }
}

/// Reads `from` into output messages (`stdout` or not) until it ends.
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    mut from: R,
    stdout: bool,
    tx: tokio::sync::mpsc::Sender<Result<ExecOutput, Status>>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; EXEC_CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let out = if stdout {
                    ExecOutput { stdout: data, ..Default::default() }
                } else {
                    ExecOutput { stderr: data, ..Default::default() }
                };
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
        }
    }
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
        let pod = self.pod(&r.namespace, &r.name)?;
        let container = container_of(&pod, &r.container)?;
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

    type ExecStream = ReceiverStream<Result<ExecOutput, Status>>;

    #[tracing::instrument(skip_all, fields(ns = %req.get_ref().namespace, pod = %req.get_ref().name))]
    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<Self::ExecStream>, Status> {
        let r = req.into_inner();
        if r.command.is_empty() {
            return Err(Status::invalid_argument("exec needs a command"));
        }
        let pod = self.pod(&r.namespace, &r.name)?;
        let container = container_of(&pod, &r.container)?;
        let uid = pod.meta().uid.clone();
        let sandboxes = self.runtime.list().await.map_err(|e| Status::internal(e.to_string()))?;
        let running = sandboxes
            .into_iter()
            .filter(|s| s.sandbox.config.uid == uid)
            .flat_map(|s| s.containers)
            .filter(|c| c.name == container && c.state == ContainerState::Running)
            .max_by_key(|c| c.attempt);
        let Some(c) = running else {
            return Err(Status::failed_precondition(format!(
                "container {container:?} in pod {} is not running",
                r.name
            )));
        };
        let mut child = self.runtime.exec(&c.id, &r.command).await.map_err(|e| Status::internal(e.to_string()))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (tx, rx) = tokio::sync::mpsc::channel(LOG_STREAM_BOUND);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let pumps = async {
                let out = async {
                    if let Some(o) = stdout {
                        pump(o, true, tx.clone()).await
                    }
                };
                let err = async {
                    if let Some(e) = stderr {
                        pump(e, false, tx.clone()).await
                    }
                };
                tokio::join!(out, err);
                child.wait().await
            };
            // A client that goes away, or the agent stopping, kills the command (kill_on_drop).
            let status = tokio::select! {
                s = pumps => s,
                _ = tx.closed() => return,
                _ = stop.cancelled() => return,
            };
            let code = match status {
                Ok(s) => {
                    s.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0))
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(format!("waiting for the command: {e}")))).await;
                    return;
                }
            };
            let _ = tx.send(Ok(ExecOutput { exit_code: Some(code), ..Default::default() })).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the kubelet API on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pods: Arc<Cache<Pod>>,
    runtime: Arc<dyn Runtime>,
    log_root: PathBuf,
    stop: CancellationToken,
) {
    let svc = Service { pods, runtime, log_root, stop: stop.clone() };
    let result = tonic::transport::Server::builder()
        .add_service(KubeletServer::new(svc))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the kubelet API server failed");
    }
}
