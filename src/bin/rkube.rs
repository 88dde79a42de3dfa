//! The `rkube` binary: `rkube server` runs a master; `rkube image` manages a node's images.

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
    /// Manage this node's image store: import, ls, pull.
    Image(rkube::kubelet::cli::ImageOpts),
    /// Supervise one container (started by the kubelet's runtime, not by hand).
    #[command(hide = true)]
    Shim { dir: std::path::PathBuf },
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
}

impl DevOpts {
    fn into_server(self) -> Result<rkube::server::ServerOpts, String> {
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
        let mut opts = ServerDefaults::parse_from(["server"]).opts;
        opts.name = Some("dev".into());
        opts.data_dir = Some(data_dir);
        opts.listen_api = self.listen_api;
        opts.listen_peer = self.listen_peer;
        opts.auto_compaction_mode = "periodic".into();
        opts.auto_compaction_retention = "5m".into();
        Ok(opts)
    }
}

/// `rkube server`'s flags at their defaults, the starting point of `rkube dev`.
#[derive(Parser)]
struct ServerDefaults {
    #[command(flatten)]
    opts: rkube::server::ServerOpts,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (opts, dev) = match cli.command {
        // Before any thread exists: the shim forks.
        Command::Shim { dir } => return rkube::kubelet::shim::main(&dir),
        Command::Image(opts) => return run_image(opts),
        Command::Server(opts) => (*opts, false),
        Command::Dev(dev) => match dev.into_server() {
            Ok(o) => (o, true),
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
    }
    let rt = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        match rkube::server::run(cfg, shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(1)
            }
        }
    })
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
