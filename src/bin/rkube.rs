//! The `rkube` binary: `rkube server` runs a master; `rkube dev` everything on one machine;
//! `rkube scheduler` and `rkube controller-manager` one control-plane component alone;
//! `rkube hollow-nodes` simulated nodes for scale tests; `rkube image` manages a node's images.

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "rkube", version, about = "A Kubernetes-style orchestrator with consensus built into the masters")]
struct Cli {
    /// Log filter (e.g. info, rkube=debug).
    #[arg(long, global = true, env = "RKUBE_LOG", default_value = "info,openraft=warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a master: Raft member, store and client API.
    Server(Box<rkube::server::ServerOpts>),
    /// Run everything on this machine in one process (today: a single-member store and its
    /// etcd-compatible API). Data persists in a per-user directory between runs.
    Dev(DevOpts),
    /// Run the scheduler alone (leader-elected) against masters.
    Scheduler(ComponentOpts),
    /// Run the controller manager alone (leader-elected) against masters.
    ControllerManager(ComponentOpts),
    /// Register simulated nodes that run bound pods at once (like kubemark).
    HollowNodes(HollowOpts),
    /// Run a worker node: the kubelet (registers the Node, runs the pods bound to it).
    Node(Box<rkube::kubelet::agent::NodeOpts>),
    /// Manage this node's image store: import, ls, pull.
    Image(rkube::kubelet::cli::ImageOpts),
    /// Supervise one container (started by the kubelet's runtime, not by hand).
    #[command(hide = true)]
    Shim { dir: std::path::PathBuf },
}

#[derive(clap::Args)]
struct ComponentOpts {
    /// Masters' client API addresses, comma-separated.
    #[arg(long, env = "RKUBE_SERVER", default_value = "127.0.0.1:6443")]
    server: String,
    #[command(flatten)]
    control: rkube::controlplane::ControlPlaneOpts,
}

#[derive(clap::Args)]
struct HollowOpts {
    /// Masters' client API addresses, comma-separated.
    #[arg(long, env = "RKUBE_SERVER", default_value = "127.0.0.1:6443")]
    server: String,
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// Node names are <prefix>-<n>.
    #[arg(long, default_value = "hollow")]
    prefix: String,
    /// Each node's cpu capacity.
    #[arg(long, default_value = "4")]
    cpu: String,
    /// Each node's memory capacity.
    #[arg(long, default_value = "16Gi")]
    memory: String,
    /// Seconds between node lease renewals.
    #[arg(long, default_value_t = 10)]
    lease_renew_seconds: u64,
}

#[derive(clap::Args)]
struct DevOpts {
    /// Where to keep data (default: $XDG_DATA_HOME/rkube/dev or ~/.local/share/rkube/dev).
    #[arg(long, env = "RKUBE_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Address for clients.
    #[arg(long, env = "RKUBE_LISTEN_API", default_value = "127.0.0.1:6443")]
    listen_api: String,
    /// Address for Raft (a single member still listens).
    #[arg(long, env = "RKUBE_LISTEN_PEER", default_value = "127.0.0.1:2380")]
    listen_peer: String,
    /// Do not run a kubelet for this machine.
    #[arg(long)]
    no_kubelet: bool,
    #[command(flatten)]
    agent: rkube::kubelet::agent::AgentOpts,
}

impl DevOpts {
    fn into_server(self) -> Result<(rkube::server::ServerOpts, Option<rkube::kubelet::agent::AgentConfig>), String> {
        let data_dir = match self.data_dir {
            Some(d) => d,
            None => {
                let base = std::env::var_os("XDG_DATA_HOME")
                    .map(std::path::PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share")))
                    .ok_or("neither XDG_DATA_HOME nor HOME is set; pass --data-dir")?;
                base.join("rkube/dev")
            }
        };
        // The local kubelet keeps its sandboxes and logs beside the store, so one directory
        // holds the whole dev cluster.
        let mut agent_opts = self.agent;
        agent_opts.state_dir.get_or_insert_with(|| data_dir.join("kubelet"));
        let agent = if self.no_kubelet { None } else { Some(agent_opts.validate().map_err(|e| e.to_string())?) };
        let mut opts = ServerDefaults::parse_from(["server"]).opts;
        opts.name = Some("dev".into());
        opts.data_dir = Some(data_dir);
        opts.listen_api = self.listen_api;
        opts.listen_peer = self.listen_peer;
        opts.auto_compaction_mode = "periodic".into();
        opts.auto_compaction_retention = "5m".into();
        Ok((opts, agent))
    }
}

/// `rkube server`'s flags at their defaults, the starting point of `rkube dev`.
#[derive(Parser)]
struct ServerDefaults {
    #[command(flatten)]
    opts: rkube::server::ServerOpts,
}

// A member's allocations are mostly small and short-lived (HTTP/2 frames, protobuf messages,
// log entries, events); mimalloc serves them with less CPU than glibc's malloc (bench/README.md).
// RocksDB's C++ allocations still go to glibc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option that commits its arenas up front where Linux overcommits. Committed so,
/// the pages it frees stay in the resident set: 20 MiB more per member after 100k keys than
/// glibc (bench/README.md); committed on demand, the resident set is glibc's. mimalloc reads its
/// options from the environment as the process starts, and its first arena exists before
/// `main`, so only the environment of a fresh process can set it.
const MIMALLOC_EAGER_COMMIT: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// Starts this program again with [`MIMALLOC_EAGER_COMMIT`] off, unless it was set (by the
/// caller or by this); returns only if it cannot, and then rkube runs with mimalloc's default.
fn reexec_with_allocator_options() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(MIMALLOC_EAGER_COMMIT).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let err = std::process::Command::new(exe).arg0(arg0).args(args).env(MIMALLOC_EAGER_COMMIT, "0").exec();
    eprintln!("warning: could not restart with {MIMALLOC_EAGER_COMMIT}=0 ({err}); memory use will be higher");
}

fn main() -> std::process::ExitCode {
    reexec_with_allocator_options();
    // glibc gives threads that allocate at once malloc arenas of their own (up to eight per
    // core), each keeping freed memory; two arenas keep a member's resident set ~3 MiB smaller
    // (bench/README.md). Set before any thread exists.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a malloc tunable; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (opts, dev, agent) = match cli.command {
        // Before any thread exists: the shim forks.
        Command::Shim { dir } => return rkube::kubelet::shim::main(&dir),
        Command::Image(opts) => return run_image(opts),
        Command::Scheduler(c) => return run_component(c, true),
        Command::ControllerManager(c) => return run_component(c, false),
        Command::HollowNodes(h) => return run_hollow(h),
        Command::Node(n) => return run_node(*n),
        Command::Server(opts) => (*opts, false, None),
        Command::Dev(dev) => match dev.into_server() {
            Ok((o, agent)) => (o, true, agent),
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let cfg = match opts.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if dev {
        eprintln!(
            "rkube dev: data in {}\n  etcd v3 API on {}: try `ETCDCTL_API=3 etcdctl --endpoints={} put hello world`\n  Ctrl-C stops it; the next start reuses the data.",
            cfg.data_dir.display(),
            cfg.listen_api,
            cfg.listen_api
        );
        write_rkctl_config(&cfg.listen_api.to_string());
    }
    let rt = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        if let Some(agent) = agent {
            // The local node's kubelet, against this process's own API.
            let api = rkube::rkctl::config::client_address(&cfg.listen_api.to_string());
            match rkube::client::Client::from_list(&api) {
                Ok(client) => {
                    let stop = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(e) = rkube::kubelet::agent::run(client, agent, stop).await {
                            tracing::error!(error = %e, "the local kubelet stopped");
                        }
                    });
                }
                Err(e) => eprintln!("error: local kubelet: {e}"),
            }
        }
        match rkube::server::run(cfg, shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(1)
            }
        }
    })
}

fn run_component(c: ComponentOpts, scheduler: bool) -> std::process::ExitCode {
    let cfg = match c.control.validate() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let endpoints = rkube::client::parse_servers(&c.server);
    if endpoints.is_empty() {
        eprintln!("error: --server names no master");
        return std::process::ExitCode::from(2);
    }
    let rt = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    rt.block_on(async {
        let stop = CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        if scheduler {
            rkube::controlplane::run_scheduler(endpoints, cfg, stop).await;
        } else {
            rkube::controlplane::run_controller_manager(endpoints, cfg, stop).await;
        }
    });
    std::process::ExitCode::SUCCESS
}

fn run_hollow(h: HollowOpts) -> std::process::ExitCode {
    let cfg = rkube::hollow::HollowConfig {
        count: h.count,
        prefix: h.prefix,
        cpu: h.cpu,
        memory: h.memory,
        lease_renew: std::time::Duration::from_secs(h.lease_renew_seconds.max(1)),
    };
    let rt = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    rt.block_on(async {
        let client = match rkube::client::Client::from_list(&h.server) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let stop = CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        match rkube::hollow::run(client, cfg, stop).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(1)
            }
        }
    })
}

fn run_node(n: rkube::kubelet::agent::NodeOpts) -> std::process::ExitCode {
    let cfg = match n.agent.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    rt.block_on(async {
        // The client's channels need the runtime.
        let client = match rkube::client::Client::from_list(&n.server) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let stop = CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        match rkube::kubelet::agent::run(client, cfg, stop).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(1)
            }
        }
    })
}

/// Points plain `rkctl` at this dev server (rkctl's config file) and says how to use it.
fn write_rkctl_config(listen_api: &str) {
    use rkube::rkctl::config;
    match config::default_path() {
        Some(path) => match config::write(&path, listen_api) {
            Ok(()) => eprintln!(
                "  rkctl: {} points plain `rkctl` here; try `rkctl get ns`, `rkctl run web --image=httpd`, `rkctl get pods`",
                path.display()
            ),
            Err(e) => eprintln!("  rkctl: {e}; use `rkctl --server {}`", config::client_address(listen_api)),
        },
        None => eprintln!("  rkctl: use `rkctl --server {}`", config::client_address(listen_api)),
    }
}

fn run_image(opts: rkube::kubelet::cli::ImageOpts) -> std::process::ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    match rt.block_on(rkube::kubelet::cli::run_image(opts)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
