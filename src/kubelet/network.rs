//! The pod network on a node (what CNI's bridge + host-local plugins do): bridge `rkube0` holding
//! the first address of the node's pod subnet; per pod a network namespace
//! (`/var/run/netns/rkube-<sandbox>`), a veth pair with one end (`eth0`) in it and the other on
//! the bridge, an address from the subnet ([`super::ipam`]), loopback up and a default route via
//! the bridge. Outbound traffic from the subnet is masqueraded and forwarding to and from the
//! bridge accepted, with iptables rules tagged by a comment. Driven through `ip` and `iptables`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use tokio::io::AsyncWriteExt;

use super::ipam::{IpamError, IpamStore, Ipv4Net};

pub const DEFAULT_BRIDGE: &str = "rkube0";
pub const NETNS_DIR: &str = "/var/run/netns";

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

async fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, NetworkError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| NetworkError::Spawn { program, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.map_err(|source| NetworkError::Spawn { program, source })?;
    }
    let out = child.wait_with_output().await.map_err(|source| NetworkError::Spawn { program, source })?;
    if !out.status.success() {
        let mut command = format!("{program} {}", args.join(" "));
        if let Some(input) = stdin {
            command.push_str(&format!(" <<< {:?}", input.trim()));
        }
        return Err(NetworkError::Command { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_gone(e: &NetworkError) -> bool {
    matches!(e, NetworkError::Command { stderr, .. }
        if stderr.contains("No such file") || stderr.contains("Cannot find device") || stderr.contains("does not exist")
            || stderr.contains("Bad rule") || stderr.contains("No chain/target/match"))
}

/// The pod network of one node.
pub struct PodNetwork {
    config: NetworkConfig,
    ipam: IpamStore,
    /// Node setup (bridge, rules) is done once per process, and redone if it failed.
    ready: tokio::sync::Mutex<bool>,
}

impl PodNetwork {
    pub fn new(config: NetworkConfig, state_dir: &std::path::Path) -> Result<PodNetwork, NetworkError> {
        if config.bridge.is_empty() || config.bridge.len() > 15 {
            return Err(NetworkError::BridgeName(config.bridge));
        }
        let ipam = IpamStore::new(&state_dir.join("ipam"), config.cidr);
        Ok(PodNetwork { config, ipam, ready: tokio::sync::Mutex::new(false) })
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
        let br = self.config.bridge.as_str();
        if run("ip", &["link", "show", "dev", br], None).await.is_err() {
            run("ip", &["link", "add", "name", br, "type", "bridge"], None).await?;
        }
        let addr = format!("{}/{}", self.config.cidr.gateway(), self.config.cidr.prefix);
        run("ip", &["addr", "replace", &addr, "dev", br], None).await?;
        run("ip", &["link", "set", br, "up"], None).await?;
        let fwd = PathBuf::from("/proc/sys/net/ipv4/ip_forward");
        std::fs::write(&fwd, "1").map_err(|source| NetworkError::Io { path: fwd, source })?;
        for (table, chain, rule) in self.rules() {
            let mut check = vec!["-w", "-t", table, "-C", chain];
            check.extend(rule.iter().map(String::as_str));
            if run("iptables", &check, None).await.is_err() {
                // Forwarding rules go first: a FORWARD policy of DROP (Docker sets one) must
                // not drop pod traffic.
                let mut add = vec!["-w", "-t", table];
                if chain == "FORWARD" {
                    add.extend(["-I", chain, "1"]);
                } else {
                    add.extend(["-A", chain]);
                }
                add.extend(rule.iter().map(String::as_str));
                run("iptables", &add, None).await?;
            }
        }
        *ready = true;
        tracing::info!(bridge = br, cidr = %self.config.cidr, "pod network ready");
        Ok(())
    }

    /// Removes the bridge and the rules (for tests and node decommissioning; pods must be gone).
    pub async fn teardown_node(&self) -> Result<(), NetworkError> {
        let mut ready = self.ready.lock().await;
        for (table, chain, rule) in self.rules() {
            let mut del = vec!["-w", "-t", table, "-D", chain];
            del.extend(rule.iter().map(String::as_str));
            while run("iptables", &del, None).await.is_ok() {}
        }
        match run("ip", &["link", "del", &self.config.bridge], None).await {
            Ok(_) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(e),
        }
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
        let ip = self.ipam.allocate(sandbox_id)?;
        let ns = netns_name(sandbox_id);
        let veth = host_veth(sandbox_id);
        let host = format!(
            "netns add {ns}\nlink add {veth} type veth peer name eth0 netns {ns}\nlink set {veth} master {br} up\n",
            br = self.config.bridge
        );
        run("ip", &["-batch", "-"], Some(&host)).await?;
        let inside = format!(
            "addr add {ip}/{prefix} dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {gw}\n",
            prefix = self.config.cidr.prefix,
            gw = self.config.cidr.gateway()
        );
        run("ip", &["-n", &ns, "-batch", "-"], Some(&inside)).await?;
        tracing::debug!(%ip, netns = %ns, "pod network set up");
        Ok(PodNet { ip, netns: PathBuf::from(NETNS_DIR).join(ns) })
    }

    /// Removes a sandbox's namespace, veth and address. Idempotent.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox_id))]
    pub async fn teardown(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        for args in [vec!["link", "del", &host_veth(sandbox_id)], vec!["netns", "delete", &netns_name(sandbox_id)]] {
            match run("ip", &args, None).await {
                Ok(_) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.ipam.release(sandbox_id)?;
        Ok(())
    }
}
