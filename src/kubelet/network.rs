//! The pod network on a node (what CNI's bridge + host-local plugins do): bridge `rkube0` holding
//! the first address of the node's pod subnet; per pod a network namespace
//! (`/var/run/netns/rkube-<sandbox>`, where `ip netns` keeps its own), a veth pair with one end
//! (`eth0`) in it and the other on the bridge, an address from the subnet ([`super::ipam`]),
//! loopback up and a default route via the bridge. Outbound traffic from the subnet is
//! masqueraded and forwarding to and from the bridge accepted, with iptables rules tagged by a
//! comment.
//!
//! Links, addresses and routes are made over rtnetlink ([`super::netlink`]), in this process:
//! a pod's setup is a few kernel requests on a thread of its own, not `ip` processes. Only the
//! node's iptables rules, made once, run `iptables`.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::ipam::{IpamError, IpamStore, Ipv4Net};
use super::netlink::{self, Link};

pub const DEFAULT_BRIDGE: &str = "rkube0";
pub const NETNS_DIR: &str = "/var/run/netns";

/// How many pod network setups run at once. They contend for the kernel's rtnl lock, so more
/// gain nothing on a small node; a fair queue in front hands them out in arrival order, so the
/// pods created first get their network (and go on to start containers) first.
const SETUPS_AT_ONCE: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// At most 15 characters (a Linux interface name).
    pub bridge: String,
    /// The node's pod subnet (its podCIDR, or `--pod-cidr`).
    pub cidr: Ipv4Net,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run {program}: {source}")]
    Spawn { program: &'static str, source: std::io::Error },
    #[error("netlink `{request}`: {source}")]
    Netlink { request: String, source: std::io::Error },
    #[error("network namespace {path}: {op}: {source}")]
    Netns { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("the thread doing {task} stopped before it finished")]
    Thread { task: String },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("invalid bridge name {0:?} (1-15 characters)")]
    BridgeName(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What a pod got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
}

/// The netns name of a sandbox.
pub fn netns_name(sandbox_id: &str) -> String {
    format!("rkube-{sandbox_id}")
}

/// The host end of a sandbox's veth (15 characters at most).
pub fn host_veth(sandbox_id: &str) -> String {
    format!("rkv{}", &sandbox_id[..sandbox_id.len().min(12)])
}

async fn run(program: &'static str, args: &[&str]) -> Result<String, NetworkError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| NetworkError::Spawn { program, source })?;
    if !out.status.success() {
        let command = format!("{program} {}", args.join(" "));
        return Err(NetworkError::Command { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names a failed netlink request after the `ip` command that does the same.
fn nl(request: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let request = request.into();
    move |source| NetworkError::Netlink { request, source }
}

fn netns_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(nix::errno::Errno) -> NetworkError + 'a {
    move |e| NetworkError::Netns { path: path.to_path_buf(), op, source: e.into() }
}

/// Deletes a link; one that is not there is not an error.
fn del_link(sock: &mut netlink::Socket, name: &str) -> Result<(), NetworkError> {
    match sock.del_link(name) {
        Err(e) if e.raw_os_error() != Some(libc::ENODEV) => Err(nl(format!("link del {name}"))(e)),
        _ => Ok(()),
    }
}

/// Makes the namespace directory a shared mount point, once per process, as `ip netns add` does:
/// a namespace unmounted in one mount namespace is then unmounted in all, and can be freed.
fn prepare_netns_dir() -> Result<(), NetworkError> {
    use nix::mount::{mount, MsFlags};
    static READY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if *ready {
        return Ok(());
    }
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|source| NetworkError::Io { path: dir.to_path_buf(), source })?;
    // `ip netns add` holds this lock over the same steps, so the two never stack bind mounts of
    // the directory on each other; like `ip`, go on without it if it cannot be taken.
    let lock = std::fs::File::open(dir).ok();
    if let Some(f) = &lock {
        // SAFETY: flock on a descriptor we own; the lock goes with the descriptor.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    }
    let mut made_mount_point = false;
    loop {
        match mount(None::<&str>, dir, Some("none"), MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>) {
            Ok(()) => break,
            // Not a mount point yet: make it one (bind it on itself), then try again.
            Err(nix::errno::Errno::EINVAL) if !made_mount_point => {
                mount(Some(dir), dir, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                    .map_err(netns_err(dir, "bind mount on itself"))?;
                made_mount_point = true;
            }
            Err(e) => return Err(netns_err(dir, "make shared")(e)),
        }
    }
    *ready = true;
    Ok(())
}

/// `ip netns add`: moves the calling thread into a new network namespace and pins it at `path`.
/// The thread stays in it; only a thread of its own may call this.
fn create_netns(path: &Path) -> Result<(), NetworkError> {
    use std::os::unix::fs::OpenOptionsExt;
    prepare_netns_dir()?;
    // Mode 0, as `ip` makes it: the file is only a mount point.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map_err(|source| NetworkError::Netns { path: path.to_path_buf(), op: "create", source })?;
    let res =
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(netns_err(path, "unshare")).and_then(|()| {
            // /proc/self would name the process's main thread, not this one.
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                path,
                Some("none"),
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(netns_err(path, "bind mount"))
        });
    if res.is_err() {
        let _ = std::fs::remove_file(path);
    }
    res
}

/// `ip netns delete`: unpins a namespace (it goes once nothing else holds it). Idempotent.
fn delete_netns(path: &Path) -> Result<(), NetworkError> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(netns_err(path, "unmount")(e)),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(NetworkError::Netns { path: path.to_path_buf(), op: "remove", source: e })
        }
        _ => Ok(()),
    }
}

/// What a pod's network setup needs, moved onto the thread that does it.
struct PodSetup {
    ipam: IpamStore,
    sandbox_id: String,
    bridge: String,
    cidr: Ipv4Net,
}

impl PodSetup {
    /// Runs on a thread of its own, which ends up in the pod's namespace and ends with it.
    fn run(self) -> Result<PodNet, NetworkError> {
        let ip = self.ipam.allocate(&self.sandbox_id)?;
        let ns = netns_name(&self.sandbox_id);
        let veth = host_veth(&self.sandbox_id);
        let path = Path::new(NETNS_DIR).join(&ns);
        // Opened before the thread leaves the node's namespace, so it keeps working there.
        let mut host = netlink::Socket::open().map_err(nl("socket"))?;
        let bridge = host.link_index(&self.bridge).map_err(nl(format!("link show {}", self.bridge)))?;
        create_netns(&path)?;
        let ns_file = std::fs::File::open(&path).map_err(|source| NetworkError::Io { path: path.clone(), source })?;
        host.add_veth(&veth, "eth0", ns_file.as_raw_fd())
            .map_err(nl(format!("link add {veth} type veth peer name eth0 netns {ns}")))?;
        host.set_up(Link::Name(&veth), Some(bridge))
            .map_err(nl(format!("link set {veth} master {} up", self.bridge)))?;
        // Opened in the pod's namespace, where this thread now is.
        let mut pod = netlink::Socket::open().map_err(nl("socket"))?;
        let eth0 = pod.link_index("eth0").map_err(nl(format!("-n {ns} link show eth0")))?;
        let prefix = self.cidr.prefix;
        pod.add_addr(eth0, ip, prefix, false).map_err(nl(format!("-n {ns} addr add {ip}/{prefix} dev eth0")))?;
        pod.set_up(Link::Index(eth0), None).map_err(nl(format!("-n {ns} link set eth0 up")))?;
        pod.set_up(Link::Name("lo"), None).map_err(nl(format!("-n {ns} link set lo up")))?;
        let gw = self.cidr.gateway();
        pod.add_default_route(gw).map_err(nl(format!("-n {ns} route add default via {gw}")))?;
        Ok(PodNet { ip, netns: path })
    }
}

/// Undoes [`PodSetup`]; idempotent. Runs on a blocking thread in the node's namespace.
fn teardown_pod(ipam: &IpamStore, sandbox_id: &str) -> Result<(), NetworkError> {
    let mut host = netlink::Socket::open().map_err(nl("socket"))?;
    // Deleting one end of the veth deletes the other.
    del_link(&mut host, &host_veth(sandbox_id))?;
    delete_netns(&Path::new(NETNS_DIR).join(netns_name(sandbox_id)))?;
    ipam.release(sandbox_id)?;
    Ok(())
}

/// The bridge with the pods' gateway address on it, up.
fn ensure_bridge(config: &NetworkConfig) -> Result<(), NetworkError> {
    let br = config.bridge.as_str();
    let mut sock = netlink::Socket::open().map_err(nl("socket"))?;
    let index = match sock.link_index(br) {
        Ok(i) => i,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            sock.add_bridge(br).map_err(nl(format!("link add name {br} type bridge")))?;
            sock.link_index(br).map_err(nl(format!("link show {br}")))?
        }
        Err(e) => return Err(nl(format!("link show {br}"))(e)),
    };
    let (gw, prefix) = (config.cidr.gateway(), config.cidr.prefix);
    sock.add_addr(index, gw, prefix, true).map_err(nl(format!("addr replace {gw}/{prefix} dev {br}")))?;
    sock.set_up(Link::Index(index), None).map_err(nl(format!("link set {br} up")))?;
    Ok(())
}

/// Runs blocking work (file system, netlink) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(res) => res,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(NetworkError::Thread { task: "pod network work (the runtime is shutting down)".into() }),
    }
}

/// The pod network of one node.
pub struct PodNetwork {
    config: NetworkConfig,
    ipam: IpamStore,
    /// Node setup (bridge, rules) is done once per process, and redone if it failed.
    ready: tokio::sync::Mutex<bool>,
    /// Bounds the pod setups running at once ([`SETUPS_AT_ONCE`]); fair, so first come first served.
    setups: tokio::sync::Semaphore,
}

impl PodNetwork {
    pub fn new(config: NetworkConfig, state_dir: &std::path::Path) -> Result<PodNetwork, NetworkError> {
        if config.bridge.is_empty() || config.bridge.len() > 15 {
            return Err(NetworkError::BridgeName(config.bridge));
        }
        let ipam = IpamStore::new(&state_dir.join("ipam"), config.cidr);
        Ok(PodNetwork {
            config,
            ipam,
            ready: tokio::sync::Mutex::new(false),
            setups: tokio::sync::Semaphore::new(SETUPS_AT_ONCE),
        })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    fn rules(&self) -> Vec<(&'static str, &'static str, Vec<String>)> {
        let br = self.config.bridge.clone();
        let comment = format!("rkube pod network {br}");
        let c = |v: &[&str]| {
            let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            v.extend(["-m".into(), "comment".into(), "--comment".into(), comment.clone()]);
            v
        };
        let cidr = self.config.cidr.to_string();
        vec![
            ("nat", "POSTROUTING", c(&["-s", &cidr, "!", "-o", &br, "-j", "MASQUERADE"])),
            ("filter", "FORWARD", c(&["-i", &br, "-j", "ACCEPT"])),
            ("filter", "FORWARD", c(&["-o", &br, "-j", "ACCEPT"])),
        ]
    }

    /// Creates the bridge, its address, forwarding and the iptables rules, if missing.
    pub async fn ensure_node(&self) -> Result<(), NetworkError> {
        let mut ready = self.ready.lock().await;
        if *ready {
            return Ok(());
        }
        let config = self.config.clone();
        blocking(move || ensure_bridge(&config)).await?;
        let fwd = PathBuf::from("/proc/sys/net/ipv4/ip_forward");
        std::fs::write(&fwd, "1").map_err(|source| NetworkError::Io { path: fwd, source })?;
        for (table, chain, rule) in self.rules() {
            let mut check = vec!["-w", "-t", table, "-C", chain];
            check.extend(rule.iter().map(String::as_str));
            if run("iptables", &check).await.is_err() {
                // Forwarding rules go first: a FORWARD policy of DROP (Docker sets one) must
                // not drop pod traffic.
                let mut add = vec!["-w", "-t", table];
                if chain == "FORWARD" {
                    add.extend(["-I", chain, "1"]);
                } else {
                    add.extend(["-A", chain]);
                }
                add.extend(rule.iter().map(String::as_str));
                run("iptables", &add).await?;
            }
        }
        *ready = true;
        tracing::info!(bridge = %self.config.bridge, cidr = %self.config.cidr, "pod network ready");
        Ok(())
    }

    /// Removes the bridge and the rules (for tests and node decommissioning; pods must be gone).
    pub async fn teardown_node(&self) -> Result<(), NetworkError> {
        let mut ready = self.ready.lock().await;
        for (table, chain, rule) in self.rules() {
            let mut del = vec!["-w", "-t", table, "-D", chain];
            del.extend(rule.iter().map(String::as_str));
            while run("iptables", &del).await.is_ok() {}
        }
        let br = self.config.bridge.clone();
        blocking(move || del_link(&mut netlink::Socket::open().map_err(nl("socket"))?, &br)).await?;
        *ready = false;
        Ok(())
    }

    /// Gives a sandbox its namespace, veth and address. Undoes its work if it fails.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox_id))]
    pub async fn setup(&self, sandbox_id: &str) -> Result<PodNet, NetworkError> {
        self.ensure_node().await?;
        let res = self.setup_inner(sandbox_id).await;
        if res.is_err() {
            if let Err(e) = self.teardown(sandbox_id).await {
                tracing::warn!(error = %e, "cleaning up a pod network that failed to set up");
            }
        }
        res
    }

    async fn setup_inner(&self, sandbox_id: &str) -> Result<PodNet, NetworkError> {
        let queued = std::time::Instant::now();
        let _turn = self.setups.acquire().await.expect("the setup semaphore is never closed");
        let started = std::time::Instant::now();
        let job = PodSetup {
            ipam: self.ipam.clone(),
            sandbox_id: sandbox_id.to_string(),
            bridge: self.config.bridge.clone(),
            cidr: self.config.cidr,
        };
        // A thread of its own, not one of tokio's blocking pool: it moves into the pod's
        // namespace and must not be reused for anything else afterwards.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("rkube-podnet".into())
            // Nobody waits for the result if the setup was cancelled; the sandbox's record
            // (written before) is what its removal goes by.
            .spawn(move || {
                let _ = tx.send(job.run());
            })
            .map_err(|source| NetworkError::Spawn { program: "a network setup thread", source })?;
        let net =
            rx.await.map_err(|_| NetworkError::Thread { task: format!("the network setup of {sandbox_id}") })??;
        tracing::debug!(
            ip = %net.ip,
            netns = %net.netns.display(),
            queued = ?started - queued,
            took = ?started.elapsed(),
            "pod network set up"
        );
        Ok(net)
    }

    /// Removes a sandbox's namespace, veth and address. Idempotent.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox_id))]
    pub async fn teardown(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        let (ipam, id) = (self.ipam.clone(), sandbox_id.to_string());
        blocking(move || teardown_pod(&ipam, &id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of pods on one node: every setup gets its own address, namespace and veth, and
    /// removal leaves nothing. Prints how long the burst took.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root: creates a bridge and 100 network namespaces"]
    async fn a_hundred_pod_networks_at_once_get_distinct_addresses_and_leave_nothing() {
        let state = tempfile::tempdir().expect("tempdir");
        let config = NetworkConfig { bridge: "rknltest0".into(), cidr: "10.238.0.0/24".parse().expect("cidr") };
        let net = std::sync::Arc::new(PodNetwork::new(config, state.path()).expect("network"));
        net.ensure_node().await.expect("bridge");
        let ids: Vec<String> = (0..100).map(|i| format!("nltest{i:03}")).collect();
        let start = std::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for id in ids.clone() {
            let net = net.clone();
            set.spawn(async move {
                let res = net.setup(&id).await;
                (id, res, start.elapsed())
            });
        }
        let mut done = Vec::new();
        while let Some(r) = set.join_next().await {
            done.push(r.expect("setup task"));
        }
        let burst = start.elapsed();
        let mut ips = std::collections::BTreeSet::new();
        let mut errors = Vec::new();
        for (id, res, _) in &done {
            match res {
                Ok(p) => {
                    ips.insert(p.ip);
                    assert!(p.netns.exists(), "{id}: {}", p.netns.display());
                }
                Err(e) => errors.push(format!("{id}: {e}")),
            }
        }
        let mut at: Vec<_> = done.iter().map(|(_, _, t)| *t).collect();
        at.sort();
        eprintln!("100 pod networks in {burst:?}; first ready after {:?}, p50 {:?}", at[0], at[50]);
        let mut sock = netlink::Socket::open().expect("socket");
        let veths = ids.iter().filter(|id| sock.link_index(&host_veth(id)).is_ok()).count();
        for id in &ids {
            net.teardown(id).await.expect("teardown");
        }
        net.teardown_node().await.expect("teardown node");
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(ips.len(), 100, "distinct addresses");
        assert_eq!(veths, 100);
        for id in &ids {
            assert!(!Path::new(NETNS_DIR).join(netns_name(id)).exists(), "{id}: netns left");
            assert!(sock.link_index(&host_veth(id)).is_err(), "{id}: veth left");
        }
        assert!(sock.link_index("rknltest0").is_err(), "bridge left");
        assert!(net.ipam.list().expect("ipam").is_empty(), "addresses left");
    }
}
