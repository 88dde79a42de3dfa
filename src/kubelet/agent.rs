//! The node agent (`rkube node`, and the local node of `rkube dev`): registers this machine as a
//! Node, renews its Lease in kube-node-lease and keeps its conditions current, watches the pods
//! bound to it and runs one [`PodWorker`] per pod, and serves container logs on the kubelet
//! port. Talks to the masters through [`Client`] (which fails over between `--server`s), and
//! drives the node-local [`Runtime`] and [`ImageStore`].

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cli::RegistryOpts;
use super::image::{ImageStore, RegistryConfig};
use super::ipam::Ipv4Net;
use super::network::{NetworkConfig, DEFAULT_BRIDGE};
use super::pod_worker::{PodWorker, WorkerEnv};
use super::runtime::{build_runtime, probe_runc, Runtime, RuntimeConfig, RuntimeError, RuntimeKind, SandboxStatus};
use super::BackoffPolicy;
use crate::api::v1::*;
use crate::api::{self, Object};
use crate::client::{Api, Client, ClientError, ListParams};
use crate::reconcile::{Change, Informer};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// How long to wait for node IPAM to give the node a podCIDR before giving up.
const POD_CIDR_WAIT: Duration = Duration::from_secs(60);

/// `rkube node`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeOpts {
    /// Masters' client API addresses, comma-separated; the next is tried when one fails.
    #[arg(long, env = "RKUBE_SERVER", default_value = "127.0.0.1:6443")]
    pub server: String,
    #[command(flatten)]
    pub agent: AgentOpts,
}

/// The agent's own flags (shared by `rkube node` and `rkube dev`).
#[derive(Clone, Debug, clap::Args)]
pub struct AgentOpts {
    /// This node's name (default: the host name).
    #[arg(long, env = "RKUBE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Container runtime: auto picks runc when it can run it, else plain processes.
    #[arg(long, env = "RKUBE_RUNTIME", value_enum, default_value = "auto")]
    pub runtime: RuntimeKind,
    /// The node's pod subnet when node IPAM gives none (e.g. 10.244.1.0/24); set on the Node
    /// at registration.
    #[arg(long, env = "RKUBE_POD_CIDR")]
    pub pod_cidr: Option<String>,
    /// The bridge pods attach to.
    #[arg(long, env = "RKUBE_BRIDGE", default_value = DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Sandboxes, containers, IP allocations and logs (default: /var/lib/rkube/kubelet as
    /// root, else a per-user directory).
    #[arg(long, env = "RKUBE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The image store (default: as `rkube image`).
    #[arg(long, env = "RKUBE_IMAGE_DIR")]
    pub image_dir: Option<PathBuf>,
    /// The address this node reports (default: the one it reaches the masters from).
    #[arg(long, env = "RKUBE_NODE_IP")]
    pub node_ip: Option<Ipv4Addr>,
    /// Port of the kubelet API (logs).
    #[arg(long, env = "RKUBE_KUBELET_PORT", default_value_t = DEFAULT_KUBELET_PORT)]
    pub kubelet_port: u16,
    /// First restart backoff in milliseconds (doubling to 30x, as 10 s to 5 min); for tests.
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub backoff_initial_ms: u64,
    #[command(flatten)]
    pub registries: RegistryOpts,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid --{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error("api: {0}")]
    Api(#[from] ClientError),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("image store: {0}")]
    Image(#[from] super::ImageError),
    #[error("node {node} got no podCIDR from node IPAM within {waited:?}; pass --pod-cidr")]
    NoPodCidr { node: String, waited: Duration },
    #[error("kubelet port {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// The validated agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub runtime: RuntimeKind,
    pub pod_cidr: Option<Ipv4Net>,
    pub bridge: String,
    pub state_dir: PathBuf,
    pub image_dir: PathBuf,
    pub node_ip: Option<Ipv4Addr>,
    pub kubelet_port: u16,
    pub registries: RegistryConfig,
    pub backoff: BackoffPolicy,
    pub lease_renew: Duration,
}

impl AgentOpts {
    pub fn validate(&self) -> Result<AgentConfig, AgentError> {
        let node_name = match &self.node_name {
            Some(n) => n.clone(),
            None => host_name(),
        };
        if node_name.is_empty() {
            return Err(AgentError::Invalid { flag: "node-name", reason: "empty".into() });
        }
        let pod_cidr = self
            .pod_cidr
            .as_deref()
            .map(|c| c.parse::<Ipv4Net>().map_err(|e| AgentError::Invalid { flag: "pod-cidr", reason: e.to_string() }))
            .transpose()?;
        let base = if nix::unistd::geteuid().is_root() {
            PathBuf::from("/var/lib/rkube")
        } else {
            super::cli::default_image_dir().parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
        };
        let initial = Duration::from_millis(self.backoff_initial_ms.max(1));
        Ok(AgentConfig {
            node_name,
            runtime: self.runtime,
            pod_cidr,
            bridge: self.bridge.clone(),
            state_dir: self.state_dir.clone().unwrap_or_else(|| base.join("kubelet")),
            image_dir: self.image_dir.clone().unwrap_or_else(super::cli::default_image_dir),
            node_ip: self.node_ip,
            kubelet_port: self.kubelet_port,
            registries: self
                .registries
                .to_config()
                .map_err(|reason| AgentError::Invalid { flag: "registry-auth", reason })?,
            backoff: BackoffPolicy { initial, max: initial * 30, reset_after: initial * 60 },
            lease_renew: Duration::from_secs(10),
        })
    }
}

/// The address this machine uses toward the first master (no packet is sent).
fn local_ip_towards(client: &Client) -> Ipv4Addr {
    let target = client.current_endpoint().trim_start_matches("http://").trim_start_matches("https://").to_string();
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&target).ok().and_then(|mut a| a.find(|a| a.is_ipv4()));
    let Some(addr) = resolved else { return Ipv4Addr::LOCALHOST };
    let ip = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect(addr)?;
        s.local_addr()
    });
    match ip {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::LOCALHOST,
    }
}

fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "Linux".into())
}

fn host_name() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// What the node says about itself.
fn node_status(cfg: &AgentConfig, node_ip: Ipv4Addr, runtime_version: &str, ready: bool) -> NodeStatus {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = api::quantity::format_bytes(mem_total_bytes() as i64);
    let capacity: std::collections::BTreeMap<String, String> =
        [("cpu", cpus.to_string()), ("memory", mem), ("pods", "110".to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    let now = api::time::now();
    let cond = |kind: &str, status: bool, reason: &str, message: &str| NodeCondition {
        r#type: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        last_heartbeat_time: now.clone(),
        last_transition_time: now.clone(),
        reason: reason.into(),
        message: message.into(),
    };
    let uname = nix::sys::utsname::uname().ok();
    let hostname = host_name();
    NodeStatus {
        allocatable: capacity.clone(),
        capacity,
        phase: String::new(),
        conditions: vec![
            cond("MemoryPressure", false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            if ready {
                cond("Ready", true, "KubeletReady", "kubelet is posting ready status")
            } else {
                cond("Ready", false, "KubeletNotReady", "container runtime is starting")
            },
        ],
        addresses: [("InternalIP", node_ip.to_string()), ("Hostname", hostname)]
            .into_iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(t, a)| NodeAddress { r#type: t.into(), address: a })
            .collect(),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(cfg.kubelet_port) }),
        }),
        node_info: Some(NodeSystemInfo {
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            kernel_version: uname.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            os_image: os_image(),
            container_runtime_version: runtime_version.into(),
            kubelet_version: format!("rkube/{}", env!("CARGO_PKG_VERSION")),
            operating_system: "linux".into(),
            architecture: super::image::go_arch().into(),
        }),
    }
}

/// Keeps the conditions' transition times of the current status when they did not change.
fn carry_transitions(old: Option<&NodeStatus>, new: &mut NodeStatus) {
    let Some(old) = old else { return };
    for c in &mut new.conditions {
        if let Some(o) = old.conditions.iter().find(|o| o.r#type == c.r#type && o.status == c.status) {
            if !o.last_transition_time.is_empty() {
                c.last_transition_time = o.last_transition_time.clone();
            }
        }
    }
}

/// Creates the Node or takes it over; returns it as stored.
async fn register(client: &Client, cfg: &AgentConfig, status: NodeStatus) -> Result<Node, ClientError> {
    let nodes = Api::<Node>::all(client);
    let mut want = Node {
        spec: Some(NodeSpec {
            pod_cidr: cfg.pod_cidr.map(|c| c.to_string()).unwrap_or_default(),
            ..Default::default()
        }),
        status: Some(status.clone()),
        ..Default::default()
    };
    want.meta_mut().name = cfg.node_name.clone();
    for (k, v) in [("kubernetes.io/hostname", cfg.node_name.as_str()), ("kubernetes.io/os", "linux")] {
        want.meta_mut().labels.insert(k.into(), v.into());
    }
    want.meta_mut().labels.insert("kubernetes.io/arch".into(), super::image::go_arch().into());
    match nodes.create(&want).await {
        Ok(_) => {}
        Err(e) if e.is_already_exists() => {}
        Err(e) => return Err(e),
    }
    // Node IPAM and others write the Node too: retry on conflicts with a fresh copy.
    let mut attempt = 0;
    loop {
        let mut cur = nodes.get(&cfg.node_name).await?;
        let spec = cur.spec.get_or_insert_with(Default::default);
        if spec.pod_cidr.is_empty() {
            if let Some(c) = cfg.pod_cidr {
                spec.pod_cidr = c.to_string();
                match nodes.update(&cur).await {
                    Ok(n) => cur = n,
                    Err(e) if e.is_conflict() && attempt < 5 => {
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut status = status.clone();
        carry_transitions(cur.status.as_ref(), &mut status);
        cur.status = Some(status);
        match nodes.update_status(&cur).await {
            Err(e) if e.is_conflict() && attempt < 5 => attempt += 1,
            r => return r,
        }
    }
}

async fn renew_lease(leases: &Api<Lease>, name: &str) -> Result<(), ClientError> {
    let now = api::time::now();
    match leases.get_opt(name).await? {
        Some(mut l) => {
            let s = l.spec.get_or_insert_with(Default::default);
            s.renew_time = now;
            s.holder_identity = name.to_string();
            leases.update(&l).await.map(|_| ())
        }
        None => {
            let mut l = Lease {
                spec: Some(LeaseSpec {
                    holder_identity: name.to_string(),
                    lease_duration_seconds: Some(40),
                    renew_time: now,
                    ..Default::default()
                }),
                ..Default::default()
            };
            l.meta_mut().name = name.to_string();
            l.meta_mut().namespace = LEASE_NAMESPACE.into();
            leases.create(&l).await.map(|_| ())
        }
    }
}

/// Renews the node's lease and refreshes its status every `cfg.lease_renew` until `stop`.
async fn heartbeat(
    client: Client,
    cfg: AgentConfig,
    node_ip: Ipv4Addr,
    runtime_version: String,
    stop: CancellationToken,
) {
    let leases = Api::<Lease>::namespaced(&client, LEASE_NAMESPACE);
    let nodes = Api::<Node>::all(&client);
    loop {
        if let Err(e) = renew_lease(&leases, &cfg.node_name).await {
            tracing::warn!(node = %cfg.node_name, error = %e, "renewing the node lease");
        }
        let result = async {
            let mut attempt = 0;
            loop {
                let mut cur = nodes.get(&cfg.node_name).await?;
                let mut status = node_status(&cfg, node_ip, &runtime_version, true);
                carry_transitions(cur.status.as_ref(), &mut status);
                cur.status = Some(status);
                match nodes.update_status(&cur).await {
                    Err(e) if e.is_conflict() && attempt < 3 => attempt += 1,
                    r => return r,
                }
            }
        }
        .await;
        if let Err(e) = result {
            if e.is_not_found() {
                tracing::warn!(node = %cfg.node_name, "the Node object is gone; registering again");
                let status = node_status(&cfg, node_ip, &runtime_version, true);
                if let Err(e) = register(&client, &cfg, status).await {
                    tracing::warn!(node = %cfg.node_name, error = %e, "registering the node");
                }
            } else {
                tracing::warn!(node = %cfg.node_name, error = %e, "updating the node status");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.lease_renew) => {}
        }
    }
}

/// Waits for node IPAM to give the node a podCIDR.
async fn wait_pod_cidr(client: &Client, node: &str, stop: &CancellationToken) -> Result<Option<Ipv4Net>, AgentError> {
    let nodes = Api::<Node>::all(client);
    let deadline = tokio::time::Instant::now() + POD_CIDR_WAIT;
    loop {
        match nodes.get(node).await {
            Ok(n) => {
                let cidr = n.spec.map(|s| s.pod_cidr).unwrap_or_default();
                if !cidr.is_empty() {
                    let net = cidr.parse::<Ipv4Net>().map_err(|e| AgentError::Invalid {
                        flag: "pod-cidr",
                        reason: format!("node's podCIDR: {e}"),
                    })?;
                    return Ok(Some(net));
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the node for its podCIDR"),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(AgentError::NoPodCidr { node: node.into(), waited: POD_CIDR_WAIT });
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The per-pod workers and what the log service needs to find a pod's files.
struct Workers {
    env: Arc<WorkerEnv>,
    running: HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    adoptable: HashMap<String, SandboxStatus>,
    done_tx: tokio::sync::mpsc::UnboundedSender<String>,
    stop: CancellationToken,
}

impl Workers {
    fn apply(&mut self, pod: Arc<Pod>) {
        let uid = pod.meta().uid.clone();
        if let Some(tx) = self.running.get(&uid) {
            tx.send_replace(Some(pod));
            return;
        }
        let phase = pod.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
        let finished = matches!(phase, "Succeeded" | "Failed");
        if finished && pod.meta().deletion_timestamp.is_empty() && !self.adoptable.contains_key(&uid) {
            // A finished pod whose containers are gone (an earlier agent cleaned up).
            return;
        }
        let (tx, rx) = watch::channel(Some(pod));
        let worker = PodWorker::new(self.env.clone(), uid.clone(), self.adoptable.remove(&uid));
        let (done, stop) = (self.done_tx.clone(), self.stop.clone());
        let uid2 = uid.clone();
        tokio::spawn(async move {
            worker.run(rx, stop).await;
            let _ = done.send(uid2);
        });
        self.running.insert(uid, tx);
    }

    fn deleted(&mut self, pod: &Pod) {
        if let Some(tx) = self.running.get(&pod.meta().uid) {
            tx.send_replace(None);
        }
    }
}

/// Runs the node agent until `stop`.
pub async fn run(client: Client, cfg: AgentConfig, stop: CancellationToken) -> Result<(), AgentError> {
    let node_ip = cfg.node_ip.unwrap_or_else(|| local_ip_towards(&client));
    // Register first (NotReady) so node IPAM can give the node a subnet.
    // Masters may still be starting (`rkube dev`, or a node booted first): keep trying.
    let status = node_status(&cfg, node_ip, "starting", false);
    let registered =
        crate::client::retry_while_unavailable(&stop, "waiting for the masters to register the node", || {
            register(&client, &cfg, status.clone())
        })
        .await?;
    if registered.is_none() {
        return Ok(());
    }
    let runc_ok = match cfg.runtime {
        RuntimeKind::Process => false,
        _ => probe_runc(std::path::Path::new("runc")).await.is_ok(),
    };
    let network = if runc_ok {
        let cidr = match cfg.pod_cidr {
            Some(c) => Some(c),
            None => wait_pod_cidr(&client, &cfg.node_name, &stop).await?,
        };
        let Some(cidr) = cidr else { return Ok(()) };
        Some(NetworkConfig { bridge: cfg.bridge.clone(), cidr })
    } else {
        None
    };
    let mut rcfg = RuntimeConfig::new(cfg.state_dir.join("runtime"), network);
    rcfg.kind = cfg.runtime;
    let runtime = build_runtime(rcfg).await?;
    let runtime_version = format!("{}://{}", runtime.name(), runtime.version());
    let images = {
        let (dir, reg) = (cfg.image_dir.clone(), cfg.registries.clone());
        tokio::task::spawn_blocking(move || ImageStore::open(&dir, reg))
            .await
            .map_err(|e| AgentError::Invalid { flag: "image-dir", reason: e.to_string() })??
    };
    tracing::info!(node = %cfg.node_name, %node_ip, runtime = %runtime_version, "node agent starting");
    tokio::spawn(heartbeat(client.clone(), cfg.clone(), node_ip, runtime_version, stop.clone()));

    let log_root = cfg.state_dir.join("logs");
    let pods = Informer::<Pod>::builder()
        .params(ListParams::default().fields(&format!("spec.nodeName={}", cfg.node_name)))
        .start(&client, stop.clone());
    let addr = SocketAddr::from(([0, 0, 0, 0], cfg.kubelet_port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| AgentError::Listen { addr, source })?;
    tokio::spawn(super::service::serve(
        listener,
        pods.cache().clone(),
        runtime.clone(),
        log_root.clone(),
        stop.clone(),
    ));

    let mut changes = pods.subscribe();
    pods.wait_synced().await;
    let found = runtime.list().await?;
    let live: HashSet<String> = pods.cache().list().iter().map(|p| p.meta().uid.clone()).collect();
    let mut adoptable = HashMap::new();
    for s in found {
        // A sandbox whose network namespace is gone (the node rebooted, or /run was a tmpfs of
        // a container that restarted) cannot run its containers again: it is removed, and the
        // pod's worker builds a new one.
        let lost_netns = s.sandbox.netns.as_ref().is_some_and(|p| !p.exists());
        if live.contains(&s.sandbox.config.uid) && !lost_netns {
            adoptable.insert(s.sandbox.config.uid.clone(), s);
            continue;
        }
        if lost_netns {
            tracing::info!(sandbox = %s.sandbox.id, pod = %s.sandbox.config.name, "removing a sandbox whose network namespace is gone");
        } else {
            tracing::info!(sandbox = %s.sandbox.id, pod = %s.sandbox.config.name, "removing the sandbox of a pod that is gone");
        }
        if let Err(e) = runtime.remove_sandbox(&s.sandbox.id).await {
            tracing::warn!(sandbox = %s.sandbox.id, error = %e, "removing a sandbox at start-up");
        }
    }
    match super::logs::remove_pod_logs_except(&log_root, &|uid| live.contains(uid)) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(count = removed.len(), "removed the logs of pods that are gone")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "removing the logs of pods that are gone"),
    }
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let env = Arc::new(WorkerEnv {
        client: client.clone(),
        runtime: runtime.clone() as Arc<dyn Runtime>,
        images,
        node_ip,
        log_root,
        backoff: cfg.backoff,
    });
    let mut workers = Workers { env, running: HashMap::new(), adoptable, done_tx, stop: stop.clone() };
    for p in pods.cache().list() {
        workers.apply(p);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            Some(uid) = done_rx.recv() => { workers.running.remove(&uid); }
            c = changes.recv() => match c {
                Ok(Change::Applied(p)) => workers.apply(p),
                Ok(Change::Deleted(p)) => workers.deleted(&p),
                Ok(Change::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let cached = pods.cache().list();
                    let live: HashSet<&str> = cached.iter().map(|p| p.meta().uid.as_str()).collect();
                    for (uid, tx) in &workers.running {
                        if !live.contains(uid.as_str()) {
                            tx.send_replace(None);
                        }
                    }
                    for p in cached {
                        workers.apply(p);
                    }
                }
                Err(_) => return Ok(()),
            },
        }
    }
}
