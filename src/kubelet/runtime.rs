//! The container runtime interface the pod worker drives, modelled on Kubernetes' CRI: pod
//! sandboxes (the pod's network namespace and IP) and containers in them, each container one
//! attempt (a restart is a new container). [`build_runtime`] picks the implementation:
//! `runc` (OCI bundles, one network namespace per pod, own pid/mount/uts/ipc namespaces, cgroup
//! limits) or `process` (plain host processes, no isolation, no limits — for machines without
//! root or runc). All state lives under the state directory, so a new runtime instance over the
//! same directory sees (adopts) what an earlier one started.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::image::{Image, ImageConfig};
use super::logs::RotationPolicy;
use super::network::{NetworkConfig, NetworkError};

/// What a pod's sandbox needs to know about the pod.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxConfig {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Share the node's network namespace: no netns, no veth, no pod IP of its own.
    pub host_network: bool,
}

/// A created sandbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub config: SandboxConfig,
    /// The pod IP; `None` when the pod uses the node's network (hostNetwork, or the process
    /// runtime, which has no network isolation): its IP is then the node's.
    pub ip: Option<Ipv4Addr>,
    /// The network namespace (`/var/run/netns/rkube-<id>`), if the pod has its own.
    pub netns: Option<PathBuf>,
    pub created_at: SystemTime,
}

/// One container attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerConfig {
    /// The container's name in the pod spec.
    pub name: String,
    /// The image reference as the pod spec gives it (reported back in status).
    pub image: String,
    /// Replaces the image's entrypoint (Kubernetes `command`); empty keeps it.
    pub command: Vec<String>,
    /// Replaces the image's cmd (Kubernetes `args`); empty keeps it unless `command` is set.
    pub args: Vec<String>,
    /// Added to (and overriding) the image's environment, in order.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// CPU limit in millicores (cgroup cpu quota over a 100 ms period).
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes (exceeding it gets the container OOM-killed).
    pub memory_bytes: Option<u64>,
    /// Where stdout/stderr go (CRI format, rotated by size); the kubelet chooses, e.g.
    /// `/var/log/pods/<ns>_<pod>_<uid>/<container>/<attempt>.log`.
    pub log_path: PathBuf,
    /// Restart count of this container in its pod (0 for the first run).
    pub attempt: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    Running,
    Exited,
    /// Its supervisor is gone without recording an exit (e.g. the node rebooted).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub image_id: String,
    pub state: ContainerState,
    /// The container's main process, as seen from the node.
    pub pid: Option<u32>,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// Exit code; 128+N when killed by signal N (as shells and Kubernetes report it).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// `Completed`, `Error`, `OOMKilled`, `StartError` (as Kubernetes' terminated reasons).
    pub reason: Option<String>,
    pub message: Option<String>,
    pub log_path: PathBuf,
}

/// A sandbox and its containers, as found in the state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxStatus {
    pub sandbox: Sandbox,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("container {container}: no command (the image has no entrypoint or cmd, and the pod gives none)")]
    NoCommand { container: String },
    #[error("container {container}: invalid {field}: {reason}")]
    InvalidConfig { container: String, field: &'static str, reason: String },
    #[error("container {container} failed to start: {message}")]
    StartFailed { container: String, message: String },
    #[error("container {container} is {state:?}, cannot {op}")]
    WrongState { container: String, state: ContainerState, op: &'static str },
    #[error("container {container} did not exit within {waited:?} of SIGKILL")]
    StopTimeout { container: String, waited: Duration },
    #[error("runc {op} {id}: {message}")]
    Runc { op: &'static str, id: String, message: String },
    #[error("runtime {kind} is not usable here: {reason}")]
    Unavailable { kind: &'static str, reason: String },
    #[error("pod network: {0}")]
    Network(#[from] NetworkError),
    #[error("state {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The container runtime of a node.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// `runc` or `process`.
    fn name(&self) -> &'static str;
    /// For the node's nodeInfo (`runc 1.1.5`, `process (no isolation)`).
    fn version(&self) -> String;
    /// Creates the pod's sandbox: network namespace, veth and IP unless the pod uses the node's
    /// network. Undoes what it did if it fails.
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<Sandbox, RuntimeError>;
    /// Kills and removes the sandbox's containers, then its network and IP. Removing a missing
    /// sandbox succeeds.
    async fn remove_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError>;
    /// Prepares a container from a stored image; returns its id. It does not run yet.
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        image: &Image,
    ) -> Result<String, RuntimeError>;
    /// Starts a created container; returns once its process runs (or failed to start).
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Sends `signal`, waits up to `grace` for the container to exit, then SIGKILLs it.
    /// Returns its final status. Stopping a container that is not running returns its status.
    async fn stop_container(
        &self,
        id: &str,
        signal: nix::sys::signal::Signal,
        grace: Duration,
    ) -> Result<ContainerStatus, RuntimeError>;
    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// Removes a container (SIGKILL first if it still runs). Its log file stays. Removing a
    /// missing container succeeds.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Everything in the state directory: what a restarted kubelet adopts.
    async fn list(&self) -> Result<Vec<SandboxStatus>, RuntimeError>;
    /// Starts `argv` inside a running container (its namespaces and root, environment and
    /// working directory), without a terminal; stdin is empty, stdout and stderr are piped. The
    /// child is killed if dropped before it exits.
    async fn exec(&self, id: &str, argv: &[String]) -> Result<tokio::process::Child, RuntimeError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// runc when it can run here (root, `runc` works, cgroups mounted), else process.
    Auto,
    Runc,
    Process,
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub kind: RuntimeKind,
    /// Sandboxes, containers, bundles, IP allocations (e.g. `/var/lib/rkube/kubelet`).
    pub state_dir: PathBuf,
    /// The `runc` binary (looked up in PATH if relative).
    pub runc: PathBuf,
    /// The binary whose `shim` subcommand supervises containers (normally this rkube binary).
    pub shim: PathBuf,
    /// The pod network of this node; required by runc unless every pod uses the host network.
    pub network: Option<NetworkConfig>,
    pub log_rotation: RotationPolicy,
}

impl RuntimeConfig {
    /// Defaults: auto, `runc` from PATH, this executable as the shim, default log rotation.
    pub fn new(state_dir: PathBuf, network: Option<NetworkConfig>) -> RuntimeConfig {
        RuntimeConfig {
            kind: RuntimeKind::Auto,
            state_dir,
            runc: PathBuf::from("runc"),
            shim: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rkube")),
            network,
            log_rotation: RotationPolicy::default(),
        }
    }
}

/// Why runc cannot run here, or its version if it can.
pub async fn probe_runc(runc: &std::path::Path) -> Result<String, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".into());
    }
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && !std::path::Path::new("/sys/fs/cgroup/memory").is_dir()
    {
        return Err("no cgroup filesystem at /sys/fs/cgroup".into());
    }
    let out = tokio::process::Command::new(runc)
        .arg("--version")
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", runc.display()))?;
    if !out.status.success() {
        return Err(format!("{} --version failed: {}", runc.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("runc").trim();
    Ok(first.strip_prefix("runc version ").map(|v| format!("runc {v}")).unwrap_or_else(|| first.to_string()))
}

/// Builds the runtime `config.kind` asks for.
pub async fn build_runtime(config: RuntimeConfig) -> Result<Arc<dyn Runtime>, RuntimeError> {
    let runc = match config.kind {
        RuntimeKind::Process => None,
        RuntimeKind::Runc => {
            Some(probe_runc(&config.runc).await.map_err(|reason| RuntimeError::Unavailable { kind: "runc", reason })?)
        }
        RuntimeKind::Auto => match probe_runc(&config.runc).await {
            Ok(v) => Some(v),
            Err(reason) => {
                tracing::warn!(%reason, "runc is not usable; containers run as plain processes without isolation");
                None
            }
        },
    };
    match runc {
        Some(version) => Ok(Arc::new(super::engine::Engine::new(&config, super::runc::Runc::new(&config, version)?)?)),
        None => Ok(Arc::new(super::engine::Engine::new(&config, super::process::Process)?)),
    }
}

/// The command line of a container, as Kubernetes combines the pod's `command`/`args` with the
/// image's `Entrypoint`/`Cmd`.
pub fn resolve_argv(image: &ImageConfig, command: &[String], args: &[String]) -> Vec<String> {
    let entry = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    match (command.is_empty(), args.is_empty()) {
        (true, true) => [entry, cmd].concat(),
        (true, false) => [entry, args.to_vec()].concat(),
        (false, true) => command.to_vec(),
        (false, false) => [command.to_vec(), args.to_vec()].concat(),
    }
}

/// The image's environment overridden by the container's, keeping first-seen order.
pub fn merge_env(image: &[String], container: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => out.push((k.to_string(), v.to_string())),
    };
    for kv in image {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v);
    }
    for (k, v) in container {
        set(k, v);
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(0, ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The uid/gid an image's `User` means: `uid`, `uid:gid`, or names looked up in the image's
/// `/etc/passwd` and `/etc/group` contents.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() {
        return Ok((0, 0));
    }
    let passwd_entry =
        |name: &str| passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 4 && f[0] == name);
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (
            uid,
            passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 4 && f[2] == u)
                .and_then(|f| f[3].parse().ok())
                .unwrap_or(uid),
        ),
        Err(_) => {
            let f = passwd_entry(u).ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?;
            let uid = f[2].parse().map_err(|_| format!("bad uid for {u:?} in /etc/passwd"))?;
            let gid = f[3].parse().map_err(|_| format!("bad gid for {u:?} in /etc/passwd"))?;
            (uid, gid)
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn argv_combines_like_kubernetes() {
        let img = ImageConfig {
            entrypoint: Some(v(&["/bin/busybox", "httpd"])),
            cmd: Some(v(&["-f", "-p", "80"])),
            ..Default::default()
        };
        assert_eq!(resolve_argv(&img, &[], &[]), v(&["/bin/busybox", "httpd", "-f", "-p", "80"]));
        assert_eq!(resolve_argv(&img, &[], &v(&["-p", "8080"])), v(&["/bin/busybox", "httpd", "-p", "8080"]));
        assert_eq!(resolve_argv(&img, &v(&["sh"]), &[]), v(&["sh"]), "command drops the image's cmd too");
        assert_eq!(resolve_argv(&img, &v(&["sh", "-c"]), &v(&["echo hi"])), v(&["sh", "-c", "echo hi"]));
        assert!(resolve_argv(&ImageConfig::default(), &[], &[]).is_empty());
    }

    #[test]
    fn env_is_image_then_container_with_overrides_in_place() {
        let got = merge_env(&v(&["PATH=/bin", "A=1", "B=2"]), &[("B".into(), "3".into()), ("C".into(), "4".into())]);
        assert_eq!(got, v(&["PATH=/bin", "A=1", "B=3", "C=4"]));
        assert!(merge_env(&[], &[]).first().is_some_and(|p| p.starts_with("PATH=")), "a default PATH");
    }

    #[test]
    fn users_resolve_by_number_or_name() {
        let passwd = "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n";
        let group = "root:x:0:\nweb:x:50:\n";
        assert_eq!(resolve_user("", passwd, group), Ok((0, 0)));
        assert_eq!(resolve_user("1000", passwd, group), Ok((1000, 1000)));
        assert_eq!(resolve_user("33", passwd, group), Ok((33, 34)));
        assert_eq!(resolve_user("www", passwd, group), Ok((33, 34)));
        assert_eq!(resolve_user("www:web", passwd, group), Ok((33, 50)));
        assert_eq!(resolve_user("1:2", passwd, group), Ok((1, 2)));
        assert!(resolve_user("nobody", passwd, group).is_err());
        assert!(resolve_user("www:nogroup", passwd, group).is_err());
    }
}
