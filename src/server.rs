//! `rkube server`: one master. Parses and validates its flags into a [`ServerConfig`], opens
//! the data directory, starts Raft, serves the peer protocol on `--listen-peer` and the client
//! API (rkube.v1 objects, etcd v3, reflection, health) on `--listen-api`, runs the leader's periodic work (auto
//! compaction), and drains on shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::apiserver::{AllocConfig, ApiConfig, ApiServer};
use crate::etcd::{self, Api, ApiLimits};
use crate::pb::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::pb::raft::raft_peer_server::RaftPeerServer;
use crate::raft::{PeerService, RaftNode, RaftOptions};
use crate::store::{db, Command, Store};

/// Flags of `rkube server`; each also reads an `RKUBE_*` environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerOpts {
    /// This member's id: a positive integer, unique in the cluster.
    #[arg(long, env = "RKUBE_ID", default_value_t = 1)]
    pub id: u64,
    /// Human-readable member name (default: m<id>).
    #[arg(long, env = "RKUBE_NAME")]
    pub name: Option<String>,
    /// Where the member keeps its database and snapshots (default: ./<name>.rkube).
    #[arg(long, env = "RKUBE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for clients (etcd v3 API, rkube API).
    #[arg(long, env = "RKUBE_LISTEN_API", default_value = "127.0.0.1:6443")]
    pub listen_api: String,
    /// Address for the other masters (Raft).
    #[arg(long, env = "RKUBE_LISTEN_PEER", default_value = "127.0.0.1:2380")]
    pub listen_peer: String,
    /// Client address as others should use it (default: --listen-api).
    #[arg(long, env = "RKUBE_ADVERTISE_API")]
    pub advertise_api: Option<String>,
    /// Peer address as others should use it (default: --listen-peer).
    #[arg(long, env = "RKUBE_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Initial members' peer addresses: `1=host:port,2=host:port,3=host:port` (default: this
    /// member alone). Ignored when the data dir already holds a member.
    #[arg(long, env = "RKUBE_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` forms a cluster from --initial-cluster; `existing` joins one (after `member add`).
    #[arg(long, env = "RKUBE_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Distinguishes clusters formed from the same addresses.
    #[arg(long, env = "RKUBE_INITIAL_CLUSTER_TOKEN", default_value = "rkube-cluster")]
    pub initial_cluster_token: String,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "RKUBE_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Most operations in one transaction.
    #[arg(long, env = "RKUBE_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Database size that raises the NOSPACE alarm, in bytes.
    #[arg(long, env = "RKUBE_QUOTA_BACKEND_BYTES", default_value_t = 2 << 30)]
    pub quota_backend_bytes: u64,
    /// Auto compaction: with `periodic`, a duration to keep (`5m`, `1h`; a bare number means
    /// hours); with `revision`, a number of revisions to keep. 0 turns it off.
    #[arg(long, env = "RKUBE_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// `periodic` or `revision`.
    #[arg(long, env = "RKUBE_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "RKUBE_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Raft election timeout in milliseconds: a member that stops hearing its leader stands
    /// for election after 1.5 to 2 times this.
    #[arg(long, env = "RKUBE_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Entries between snapshots.
    #[arg(long, env = "RKUBE_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Interval of watch progress notifications, in seconds.
    #[arg(long, env = "RKUBE_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value_t = 600)]
    pub watch_progress_notify_interval: u64,
    /// Run the scheduler and controller manager here (leader-elected among the masters).
    #[arg(long, env = "RKUBE_CONTROL_PLANE", default_value_t = true, action = clap::ArgAction::Set)]
    pub control_plane: bool,
    #[command(flatten)]
    pub control: crate::controlplane::ControlPlaneOpts,
    /// The range Services' ClusterIPs are allocated from.
    #[arg(long, env = "RKUBE_SERVICE_CIDR", default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// Seconds an Event is kept after its last write (the store deletes it through a lease).
    #[arg(long, env = "RKUBE_EVENT_TTL", default_value_t = 3600)]
    pub event_ttl: u64,
    /// TEST ONLY, deliberately unsafe: linearizable reads skip the read index and serve this
    /// member's local state, so they can be stale. It exists so that tests/jepsen can show its
    /// register checker catching a broken build; never set it anywhere else.
    #[arg(long, env = "RKUBE_TEST_UNSAFE_STALE_READS", hide = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub test_unsafe_stale_reads: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--id must be a positive integer")]
    ZeroId,
    #[error("--{flag} {value:?}: not a host:port address")]
    BadAddr { flag: &'static str, value: String },
    #[error("--{flag} {value:?}: others cannot reach an unspecified address; set --advertise-{what}")]
    Unspecified { flag: &'static str, value: String, what: &'static str },
    #[error("--initial-cluster: entry {entry:?} is not id=host:port")]
    BadClusterEntry { entry: String },
    #[error("--initial-cluster: member {id} is listed twice")]
    DuplicateMember { id: u64 },
    #[error("--initial-cluster does not list this member (--id {id})")]
    SelfMissing { id: u64 },
    #[error("--initial-cluster lists member {id} at {listed}, but --advertise-peer is {advertised}")]
    SelfMismatch { id: u64, listed: String, advertised: String },
    #[error("--initial-cluster-state must be new or existing, not {0:?}")]
    BadClusterState(String),
    #[error("--auto-compaction-mode must be periodic or revision, not {0:?}")]
    BadCompactionMode(String),
    #[error("--auto-compaction-retention {0:?}: not a duration (5m, 1h, 30s) or number")]
    BadRetention(String),
    #[error("--heartbeat-interval must be positive and --election-timeout at least five times it")]
    BadTimeouts,
    #[error("--max-request-bytes must be between 1 and 64 MiB")]
    BadRequestLimit,
    #[error("{0}")]
    BadServiceCidr(String),
    #[error("--event-ttl {0}: events must live at least 2 seconds")]
    BadEventTtl(u64),
    #[error("{0}")]
    BadControlPlane(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AutoCompaction {
    Off,
    Periodic(Duration),
    Revisions(i64),
}

/// A validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub id: u64,
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_api: SocketAddr,
    pub listen_peer: SocketAddr,
    pub advertise_api: String,
    pub advertise_peer: String,
    pub initial_cluster: BTreeMap<u64, String>,
    pub bootstrap: bool,
    pub cluster_id: u64,
    pub limits: ApiLimits,
    pub auto_compaction: AutoCompaction,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub progress_interval: Duration,
    pub objects: ApiConfig,
    pub control_plane: Option<crate::controlplane::ControlPlaneConfig>,
}

fn parse_addr(flag: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    let v = etcd::strip_scheme(value);
    v.parse().or_else(|_| {
        use std::net::ToSocketAddrs;
        v.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or(ConfigError::BadAddr { flag, value: value.to_string() })
    })
}

fn advertise(
    flag: &'static str,
    what: &'static str,
    listen: &str,
    adv: &Option<String>,
) -> Result<String, ConfigError> {
    match adv {
        Some(a) => {
            let a = etcd::strip_scheme(a).to_string();
            if a.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
                return Err(ConfigError::BadAddr {
                    flag: if what == "api" { "advertise-api" } else { "advertise-peer" },
                    value: a,
                });
            }
            Ok(a)
        }
        None => {
            let addr = parse_addr(flag, listen)?;
            if addr.ip().is_unspecified() {
                return Err(ConfigError::Unspecified { flag, value: listen.to_string(), what });
            }
            Ok(addr.to_string())
        }
    }
}

/// Parses `5m`, `1h`, `30s`, or a bare number of hours (etcd's convention).
fn parse_retention(s: &str) -> Option<Duration> {
    if let Ok(h) = s.parse::<u64>() {
        return Some(Duration::from_secs(h * 3600));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

impl ServerOpts {
    pub fn validate(&self) -> Result<ServerConfig, ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        let name = self.name.clone().unwrap_or_else(|| format!("m{}", self.id));
        let listen_api = parse_addr("listen-api", &self.listen_api)?;
        let listen_peer = parse_addr("listen-peer", &self.listen_peer)?;
        let advertise_api = advertise("listen-api", "api", &self.listen_api, &self.advertise_api)?;
        let advertise_peer = advertise("listen-peer", "peer", &self.listen_peer, &self.advertise_peer)?;
        let mut initial_cluster = BTreeMap::new();
        match &self.initial_cluster {
            None => {
                initial_cluster.insert(self.id, advertise_peer.clone());
            }
            Some(list) => {
                for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let bad = || ConfigError::BadClusterEntry { entry: entry.to_string() };
                    let (id, addr) = entry.split_once('=').ok_or_else(bad)?;
                    let id: u64 = id.trim().parse().map_err(|_| bad())?;
                    let addr = etcd::strip_scheme(addr.trim());
                    if id == 0 || addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
                        return Err(bad());
                    }
                    if initial_cluster.insert(id, addr.to_string()).is_some() {
                        return Err(ConfigError::DuplicateMember { id });
                    }
                }
                match initial_cluster.get(&self.id) {
                    None => return Err(ConfigError::SelfMissing { id: self.id }),
                    Some(listed) if self.advertise_peer.is_some() && *listed != advertise_peer => {
                        return Err(ConfigError::SelfMismatch {
                            id: self.id,
                            listed: listed.clone(),
                            advertised: advertise_peer,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        let bootstrap = match self.initial_cluster_state.as_str() {
            "new" => true,
            "existing" => false,
            other => return Err(ConfigError::BadClusterState(other.to_string())),
        };
        let auto_compaction = match (self.auto_compaction_mode.as_str(), self.auto_compaction_retention.as_str()) {
            (_, "0") | (_, "") => AutoCompaction::Off,
            ("periodic", r) => {
                AutoCompaction::Periodic(parse_retention(r).ok_or_else(|| ConfigError::BadRetention(r.into()))?)
            }
            ("revision", r) => AutoCompaction::Revisions(r.parse().map_err(|_| ConfigError::BadRetention(r.into()))?),
            (other, _) => return Err(ConfigError::BadCompactionMode(other.to_string())),
        };
        if self.heartbeat_interval == 0 || self.election_timeout < self.heartbeat_interval * 5 {
            return Err(ConfigError::BadTimeouts);
        }
        if self.max_request_bytes == 0 || self.max_request_bytes > 64 << 20 {
            return Err(ConfigError::BadRequestLimit);
        }
        let cluster_id = {
            // FNV-1a of the token: the same on every member formed with it.
            let mut h: u64 = 0xcbf29ce484222325;
            for b in self.initial_cluster_token.bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100000001b3);
            }
            h
        };
        Ok(ServerConfig {
            id: self.id,
            data_dir: self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{name}.rkube"))),
            name,
            listen_api,
            listen_peer,
            advertise_api,
            advertise_peer,
            initial_cluster,
            bootstrap,
            cluster_id,
            limits: ApiLimits {
                max_request_bytes: self.max_request_bytes,
                max_txn_ops: self.max_txn_ops,
                quota_bytes: self.quota_backend_bytes,
                unsafe_stale_reads: self.test_unsafe_stale_reads,
            },
            auto_compaction,
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count.max(1),
            progress_interval: Duration::from_secs(self.watch_progress_notify_interval.max(1)),
            objects: ApiConfig {
                alloc: AllocConfig::with_service_cidr(&self.service_cidr).map_err(ConfigError::BadServiceCidr)?,
                event_ttl: {
                    if self.event_ttl < 2 {
                        return Err(ConfigError::BadEventTtl(self.event_ttl));
                    }
                    Duration::from_secs(self.event_ttl)
                },
                ..ApiConfig::default()
            },
            control_plane: if self.control_plane {
                Some(self.control.validate().map_err(ConfigError::BadControlPlane)?)
            } else {
                None
            },
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Open(#[from] db::OpenError),
    #[error("opening the store: {0}")]
    Store(String),
    #[error("starting raft: {0}")]
    Raft(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen { addr: SocketAddr, what: &'static str, source: std::io::Error },
}

/// Runs a master until `shutdown` is cancelled.
pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    // Bind first: a port in use should stop start-up before anything is written.
    let api_listener = TcpListener::bind(cfg.listen_api).await.map_err(|source| StartError::Listen {
        addr: cfg.listen_api,
        what: "client API",
        source,
    })?;
    let peer_listener = TcpListener::bind(cfg.listen_peer).await.map_err(|source| StartError::Listen {
        addr: cfg.listen_peer,
        what: "peers",
        source,
    })?;

    let identity = db::Identity { cluster_id: cfg.cluster_id, member_id: cfg.id };
    let data_dir = cfg.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || db::open(&data_dir, identity))
        .await
        .map_err(|e| StartError::Store(e.to_string()))??;
    if !opened.fresh {
        tracing::info!(data_dir = %cfg.data_dir.display(), "restarting from existing data; --initial-cluster is ignored");
    }
    let cluster_id = opened.identity.cluster_id;
    let store = Store::new(opened.db).map_err(|e| StartError::Store(e.to_string()))?;
    let raft_opts = RaftOptions {
        id: cfg.id,
        initial_cluster: cfg.initial_cluster.clone(),
        bootstrap: cfg.bootstrap && opened.fresh,
        snapshot_dir: cfg.data_dir.join("snapshots"),
        heartbeat: cfg.heartbeat,
        election_timeout: cfg.election_timeout,
        snapshot_entries: cfg.snapshot_count,
    };
    let node = RaftNode::start(raft_opts, store.clone(), shutdown.clone())
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

    // Shutdown goes in steps (see the end of this function): the client API stops after the
    // control plane has handed over its leases, Raft after the API, the peer port last.
    let api_stop = CancellationToken::new();
    let peer_stop = CancellationToken::new();
    let peer_server = tonic::transport::Server::builder()
        .add_service(
            RaftPeerServer::new(PeerService::new(node.clone()))
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        )
        .serve_with_incoming_shutdown(incoming(peer_listener), peer_stop.clone().cancelled_owned());
    let peer_task = tokio::spawn(peer_server);

    let api = Api::new(node.clone(), cluster_id, cfg.limits.clone());
    let gate: crate::apiserver::WriteGate = {
        let api = api.clone();
        Arc::new(move || {
            let api = api.clone();
            Box::pin(async move {
                api.check_quota().await.map_err(|s| crate::apiserver::ApiError::NoSpace(s.message().to_string()))
            })
        })
    };
    let objects = ApiServer::new(node.clone(), cfg.objects.clone(), Some(gate), api_stop.clone());
    let api_task =
        tokio::spawn(serve_api(api.clone(), objects.clone(), api_listener, cfg.progress_interval, api_stop.clone()));
    tokio::spawn({
        let (objects, shutdown) = (objects.clone(), shutdown.clone());
        async move { objects.bootstrap(shutdown).await }
    });
    let mut control_tasks = Vec::new();
    if let Some(cp) = &cfg.control_plane {
        let endpoints = vec![cfg.advertise_api.clone()];
        control_tasks.push(tokio::spawn(crate::controlplane::run_scheduler(
            endpoints.clone(),
            cp.clone(),
            shutdown.clone(),
        )));
        control_tasks.push(tokio::spawn(crate::controlplane::run_controller_manager(
            endpoints,
            cp.clone(),
            shutdown.clone(),
        )));
    }
    tokio::spawn(publish_member(node.clone(), cfg.name.clone(), cfg.advertise_api.clone(), shutdown.clone()));
    tokio::spawn(background(api.clone(), cfg.auto_compaction.clone(), shutdown.clone()));
    if cfg.limits.unsafe_stale_reads {
        tracing::warn!("RKUBE_TEST_UNSAFE_STALE_READS is set: linearizable reads may be stale (test only)");
    }
    tracing::info!(
        id = cfg.id,
        name = %cfg.name,
        api = %cfg.listen_api,
        peer = %cfg.listen_peer,
        cluster_id = format!("{cluster_id:x}"),
        "rkube server started"
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    let grace = Duration::from_secs(5);
    // The control plane hands its leases over while the API still answers. Its loops stop
    // together under one grace period: waited for one after the other, each could use a whole
    // one when the hand-over found no quorum (every member stopping at once), and a leader
    // once took over 10 s to exit (bench/README.md, runs N-Q).
    let _ = tokio::time::timeout(grace, futures::future::join_all(control_tasks)).await;
    // The client API: no new connections, watch streams end with "server stopped" so that
    // their clients resume on another member, calls in flight finish. Meanwhile the other
    // members still reach this one's Raft through the peer port.
    api_stop.cancel();
    let _ = tokio::time::timeout(grace, api_task).await;
    // Raft next, with the peer port still open: a leader's followers stop hearing from it and
    // elect another one; forwarded calls still in flight get an answer ("stopped") instead of a
    // broken connection. Closing the peer port first would leave a leader that replicates but
    // takes no writes until it stops.
    node.shutdown().await;
    peer_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), peer_task).await;
    // Make everything applied durable before the process exits.
    if let Err(e) = store.db().flush_wal(true) {
        tracing::warn!(error = %e, "final WAL sync");
    }
    Ok(())
}

/// Accepted connections with Nagle's algorithm off. tonic applies its own `tcp_nodelay` only to
/// listeners it binds itself; without this, small responses wait for delayed ACKs (~40 ms).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "setting TCP_NODELAY");
            }
        }
        conn
    })
}

async fn serve_api(
    api: Arc<Api>,
    objects: Arc<ApiServer>,
    listener: TcpListener,
    progress: Duration,
    shutdown: CancellationToken,
) {
    let limit = api.limits.max_request_bytes + 512 * 1024;
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<KvServer<etcd::KvService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::pb::V1_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::pb::V1_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptor set is valid");
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_routes(crate::apiserver::router(objects, limit))
        .add_service(KvServer::new(etcd::KvService::new(api.clone())).max_decoding_message_size(limit))
        .add_service(
            WatchServer::new(etcd::WatchService::new(api.clone(), progress, shutdown.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(LeaseServer::new(etcd::LeaseService::new(api.clone())).max_decoding_message_size(limit))
        .add_service(ClusterServer::new(etcd::ClusterService::new(api.clone())).max_decoding_message_size(limit))
        .add_service(
            MaintenanceServer::new(etcd::MaintenanceService::new(api.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "client API server stopped");
    }
}

/// Publishes this member's name and client address through Raft, as etcd does, retrying
/// until it lands.
async fn publish_member(node: Arc<RaftNode>, name: String, api_addr: String, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let current = node.store().members().ok().and_then(|m| m.get(&node.id).cloned());
        if current.is_some_and(|m| m.name == name && m.api_addr == api_addr) {
            return;
        }
        let cmd = Command::PublishMember { id: node.id, name: name.clone(), api_addr: api_addr.clone() };
        match node.write(cmd).await {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Periodic work: the database size for the quota, and auto compaction on the leader.
async fn background(api: Arc<Api>, mode: AutoCompaction, shutdown: CancellationToken) {
    let tick_every = match &mode {
        AutoCompaction::Periodic(d) => (*d / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        _ => Duration::from_secs(1),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut samples: std::collections::VecDeque<(tokio::time::Instant, i64)> = Default::default();
    let mut last_sample = tokio::time::Instant::now() - tick_every;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        api.refresh_db_size();
        let revs = api.store.revisions();
        let now = tokio::time::Instant::now();
        let target = match &mode {
            AutoCompaction::Off => continue,
            AutoCompaction::Revisions(keep) => revs.current - keep,
            AutoCompaction::Periodic(keep) => {
                if now.duration_since(last_sample) >= tick_every {
                    samples.push_back((now, revs.current));
                    last_sample = now;
                }
                // The newest revision sampled at least `keep` ago.
                let mut target = 0;
                while let Some((t, r)) = samples.front().copied() {
                    if now.duration_since(t) >= *keep {
                        target = r;
                        samples.pop_front();
                    } else {
                        break;
                    }
                }
                if target > 0 {
                    samples.push_front((now - *keep, target));
                }
                target
            }
        };
        if target > revs.compacted && api.node.status().is_leader {
            match api.node.write(Command::Compact { revision: target }).await {
                Ok(_) => tracing::info!(rev = target, "auto compaction"),
                Err(e) => tracing::warn!(rev = target, error = %e, "auto compaction failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        o: ServerOpts,
    }

    fn opts(args: &[&str]) -> ServerOpts {
        let mut all = vec!["t"];
        all.extend_from_slice(args);
        T::parse_from(all).o
    }

    #[test]
    fn bad_flags_get_clear_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--id", "0"], "--id must be a positive integer"),
            (&["--listen-api", "nonsense"], "--listen-api \"nonsense\": not a host:port address"),
            (&["--initial-cluster", "1=a:1,x"], "--initial-cluster: entry \"x\" is not id=host:port"),
            (&["--initial-cluster", "2=a:1"], "--initial-cluster does not list this member (--id 1)"),
            (&["--initial-cluster", "1=a:1,1=b:2"], "--initial-cluster: member 1 is listed twice"),
            (&["--initial-cluster-state", "old"], "--initial-cluster-state must be new or existing, not \"old\""),
            (
                &["--auto-compaction-retention", "5x"],
                "--auto-compaction-retention \"5x\": not a duration (5m, 1h, 30s) or number",
            ),
            (
                &["--listen-peer", "0.0.0.0:2380"],
                "--listen-peer \"0.0.0.0:2380\": others cannot reach an unspecified address; set --advertise-peer",
            ),
        ];
        for (args, want) in cases {
            let err = opts(args).validate().expect_err(want);
            assert_eq!(err.to_string(), *want);
        }
    }

    #[test]
    fn retention_parses_like_etcd() {
        assert_eq!(parse_retention("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_retention("2"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_retention("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_retention("m"), None);
    }
}
