//! The cluster under test: three members in Docker containers started by Compose (rkube's
//! `docker-compose.yml`, or `docker/etcd-compose.yml` for etcd 3.4), and the faults the
//! nemesis applies to them from the host:
//!
//! - kill -9 (`docker kill -s KILL`) and restart (`docker start`);
//! - pause and resume (`docker pause`, the cgroup freezer: SIGSTOP for the whole container);
//! - packet drops with iptables run in a container's network namespace through
//!   `nsenter -t <pid> -n` (the images are FROM scratch and carry no tools);
//! - replacing a member: kill it, `member remove`, `member add`, and start a container with an
//!   empty data directory at the same address and published port.
//!
//! Members keep their names (m1, m2, m3) and host ports when replaced, so clients need not
//! know. The cluster is removed when the guard drops, also when a run fails or panics.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use parking_lot::Mutex;
use rkube::pb::etcdserverpb as epb;
use rkube::pb::etcdserverpb::{cluster_client::ClusterClient, maintenance_client::MaintenanceClient};
use tokio::time::Instant;

use crate::client::channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum System {
    Rkube,
    Etcd,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    /// Address on the cluster's bridge network.
    pub ip: String,
    /// Client port published on the host's loopback.
    pub port: u16,
    pub container: String,
    /// The store's member id.
    pub id: u64,
    /// How many times it was replaced.
    pub generation: u32,
}

pub struct Cluster {
    pub system: System,
    project: String,
    files: Vec<String>,
    env: Vec<(String, String)>,
    compose: Vec<String>,
    members: Mutex<Vec<Member>>,
    /// Containers this harness started itself (replacements), removed on teardown.
    extra: Mutex<Vec<String>>,
}

/// Runs a command and returns its stdout; fails with its stderr.
pub async fn sh(args: &[String], env: &[(String, String)]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(&args[0]);
    cmd.args(&args[1..]).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .map_err(|_| anyhow!("{} timed out", args.join(" ")))?
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `docker compose` where the plugin exists, else `docker-compose` (v1.29 on Debian).
fn compose_command() -> Vec<String> {
    if let Ok(c) = std::env::var("COMPOSE") {
        return c.split_whitespace().map(str::to_string).collect();
    }
    let plugin = std::process::Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if plugin {
        strs(&["docker", "compose"])
    } else {
        strs(&["docker-compose"])
    }
}

/// Where each system's members live: (name, ip, host port).
fn layout(system: System, base_port: u16) -> Vec<(String, String, u16)> {
    let net = match system {
        System::Rkube => "172.28.0",
        System::Etcd => "172.29.0",
    };
    (1..=3).map(|i| (format!("m{i}"), format!("{net}.{}", 10 + i), base_port + i as u16 - 1)).collect()
}

impl Cluster {
    /// A cluster description; nothing runs until [`Cluster::up`]. `overrides` are extra
    /// Compose files layered on the system's own (e.g. the broken-build switch).
    pub fn new(system: System, project: &str, base_port: u16, overrides: &[String]) -> Cluster {
        let mut files = match system {
            System::Rkube => vec!["docker-compose.yml".to_string(), "tests/jepsen/image.yml".to_string()],
            System::Etcd => vec!["docker/etcd-compose.yml".to_string()],
        };
        files.extend(overrides.iter().cloned());
        let port_vars = match system {
            System::Rkube => ["RKUBE_M1_PORT", "RKUBE_M2_PORT", "RKUBE_M3_PORT"],
            System::Etcd => ["ETCD_M1_PORT", "ETCD_M2_PORT", "ETCD_M3_PORT"],
        };
        let members: Vec<Member> = layout(system, base_port)
            .into_iter()
            .map(|(name, ip, port)| Member { name, ip, port, container: String::new(), id: 0, generation: 0 })
            .collect();
        let env = port_vars.iter().zip(&members).map(|(v, m)| (v.to_string(), m.port.to_string())).collect();
        Cluster {
            system,
            project: project.to_string(),
            files,
            env,
            compose: compose_command(),
            members: Mutex::new(members),
            extra: Mutex::new(Vec::new()),
        }
    }

    fn compose_args(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.compose.clone();
        for f in &self.files {
            v.push("-f".into());
            v.push(f.clone());
        }
        v.push("-p".into());
        v.push(self.project.clone());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.lock().clone()
    }

    pub fn member(&self, name: &str) -> Option<Member> {
        self.members.lock().iter().find(|m| m.name == name).cloned()
    }

    /// Starts the cluster from scratch (removing what an earlier run of the same project left)
    /// and waits until every member answers and all agree on a leader.
    pub async fn up(&self) -> Result<()> {
        self.down().await?;
        sh(&self.compose_args(&["up", "-d"]), &self.env).await?;
        for m in self.members.lock().iter_mut() {
            m.container = String::new();
        }
        let names: Vec<String> = self.members().iter().map(|m| m.name.clone()).collect();
        for name in names {
            let id = sh(&self.compose_args(&["ps", "-q", &name]), &self.env).await?;
            if id.is_empty() {
                bail!("compose started no container for {name}");
            }
            if let Some(m) = self.members.lock().iter_mut().find(|m| m.name == name) {
                m.container = id;
            }
        }
        self.wait_ready(Duration::from_secs(120)).await
    }

    /// Waits until every member answers a status request, all name the same leader, and
    /// records each member's id.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let statuses = self.statuses().await;
            let leaders: Vec<u64> = statuses.values().map(|s| s.1).collect();
            if statuses.len() == 3 && leaders.iter().all(|l| *l != 0 && *l == leaders[0]) {
                for m in self.members.lock().iter_mut() {
                    if let Some((id, _)) = statuses.get(&m.name) {
                        m.id = *id;
                    }
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cluster not ready after {within:?}: member statuses (id, leader) {statuses:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Each answering member's (own id, leader id).
    pub async fn statuses(&self) -> HashMap<String, (u64, u64)> {
        let members = self.members();
        let calls = members.iter().map(|m| async move {
            let mut c = MaintenanceClient::new(channel(m.port));
            let r = tokio::time::timeout(Duration::from_millis(800), c.status(epb::StatusRequest::default())).await;
            match r {
                Ok(Ok(s)) => {
                    let s = s.into_inner();
                    Some((m.name.clone(), (s.header.map_or(0, |h| h.member_id), s.leader)))
                }
                _ => None,
            }
        });
        futures::future::join_all(calls).await.into_iter().flatten().collect()
    }

    /// The member a majority of members names as leader, if any.
    pub async fn leader(&self) -> Option<String> {
        let statuses = self.statuses().await;
        let mut votes: HashMap<u64, usize> = HashMap::new();
        for (_, leader) in statuses.values() {
            if *leader != 0 {
                *votes.entry(*leader).or_default() += 1;
            }
        }
        let (id, n) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        if n < 2 {
            return None;
        }
        self.members.lock().iter().find(|m| m.id == id).map(|m| m.name.clone())
    }

    async fn docker(&self, args: &[&str]) -> Result<String> {
        let mut v = strs(&["docker"]);
        v.extend(strs(args));
        sh(&v, &[]).await
    }

    fn container(&self, name: &str) -> Result<String> {
        self.member(name).map(|m| m.container).ok_or_else(|| anyhow!("no member {name}"))
    }

    pub async fn kill(&self, name: &str) -> Result<()> {
        self.docker(&["kill", "-s", "KILL", &self.container(name)?]).await.map(drop)
    }

    pub async fn start(&self, name: &str) -> Result<()> {
        let c = self.container(name)?;
        let running = self.docker(&["inspect", "-f", "{{.State.Running}}", &c]).await?;
        if running != "true" {
            self.docker(&["start", &c]).await?;
        }
        Ok(())
    }

    pub async fn pause(&self, name: &str) -> Result<()> {
        self.docker(&["pause", &self.container(name)?]).await.map(drop)
    }

    pub async fn unpause(&self, name: &str) -> Result<()> {
        let c = self.container(name)?;
        if self.docker(&["inspect", "-f", "{{.State.Paused}}", &c]).await? == "true" {
            self.docker(&["unpause", &c]).await?;
        }
        Ok(())
    }

    /// Runs iptables in a member's network namespace.
    async fn iptables(&self, name: &str, args: &[&str]) -> Result<()> {
        let c = self.container(name)?;
        let pid = self.docker(&["inspect", "-f", "{{.State.Pid}}", &c]).await?;
        if pid == "0" {
            bail!("{name} is not running");
        }
        let mut v = strs(&["nsenter", "-t", &pid, "-n", "iptables", "-w"]);
        v.extend(strs(args));
        sh(&v, &[]).await.map(drop)
    }

    /// Drops every packet that `to` receives from each member of `from` (one direction).
    pub async fn drop_from(&self, to: &str, from: &[String]) -> Result<()> {
        for f in from {
            let ip = self.member(f).ok_or_else(|| anyhow!("no member {f}"))?.ip;
            self.iptables(to, &["-A", "INPUT", "-s", &ip, "-j", "DROP"]).await?;
        }
        Ok(())
    }

    /// Removes every packet filter from every running member.
    pub async fn heal_network(&self) -> Result<()> {
        for m in self.members() {
            // A stopped member has no namespace (and no rules) to clean.
            if let Err(e) = self.iptables(&m.name, &["-F", "INPUT"]).await {
                if !e.to_string().contains("not running") {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Undoes every fault: resumes paused members, starts stopped ones, heals the network.
    pub async fn heal_all(&self) -> Result<()> {
        for m in self.members() {
            self.unpause(&m.name).await?;
            self.start(&m.name).await?;
        }
        self.heal_network().await
    }

    /// A membership call against the first other member that answers.
    async fn membership<T>(
        &self,
        except: &str,
        call: impl Fn(ClusterClient<tonic::transport::Channel>) -> futures::future::BoxFuture<'static, Result<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut last = anyhow!("no member to ask");
            for m in self.members().iter().filter(|m| m.name != except) {
                match tokio::time::timeout(Duration::from_secs(5), call(ClusterClient::new(channel(m.port)))).await {
                    Ok(Ok(r)) => return Ok(r),
                    Ok(Err(e)) => last = e,
                    Err(_) => last = anyhow!("membership call to {} timed out", m.name),
                }
            }
            if Instant::now() > deadline {
                return Err(last.context("membership change"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Kills `name`, removes it from the membership, adds a new member at the same address and
    /// starts it with an empty data directory. Returns the new member id.
    pub async fn replace(&self, name: &str) -> Result<u64> {
        let old = self.member(name).ok_or_else(|| anyhow!("no member {name}"))?;
        let image = self.docker(&["inspect", "-f", "{{.Config.Image}}", &old.container]).await?;
        let network = self
            .docker(&["inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}", &old.container])
            .await?;
        self.docker(&["rm", "-f", &old.container]).await?;
        let old_id = old.id;
        self.membership(name, move |mut c| {
            Box::pin(async move {
                match c.member_remove(epb::MemberRemoveRequest { id: old_id }).await {
                    Ok(_) => Ok(()),
                    // A retry after a remove that landed but timed out.
                    Err(s) if s.code() == tonic::Code::NotFound || s.message().contains("not found") => Ok(()),
                    Err(s) => Err(anyhow!("member remove {old_id}: {s}")),
                }
            })
        })
        .await?;
        let peer = format!("http://{}:2380", old.ip);
        let peer2 = peer.clone();
        let added = self
            .membership(name, move |mut c| {
                let peer = peer2.clone();
                Box::pin(async move {
                    let r =
                        c.member_add(epb::MemberAddRequest { peer_ur_ls: vec![peer.clone()], is_learner: false }).await;
                    match r {
                        Ok(r) => Ok(r.into_inner()),
                        Err(s) => Err(anyhow!("member add {peer}: {s}")),
                    }
                })
            })
            .await?;
        let new_id = added.member.as_ref().map(|m| m.id).ok_or_else(|| anyhow!("member add returned no member"))?;
        let generation = old.generation + 1;
        let cname = format!("{}-{}-r{generation}", self.project, name);
        let mut args = strs(&["docker", "run", "-d", "--name", &cname, "--hostname", name, "--network", &network]);
        args.extend(strs(&["--ip", &old.ip, "-p", &format!("127.0.0.1:{}:{}", old.port, self.client_port())]));
        args.extend(strs(&["--label", &format!("rkube.jepsen={}", self.project)]));
        args.extend(self.replacement_args(&old, new_id, &added.members, &image));
        self.extra.lock().push(cname.clone());
        let container = sh(&args, &[]).await?;
        if let Some(m) = self.members.lock().iter_mut().find(|m| m.name == name) {
            m.container = container;
            m.id = new_id;
            m.generation = generation;
        }
        Ok(new_id)
    }

    fn client_port(&self) -> u16 {
        match self.system {
            System::Rkube => 6443,
            System::Etcd => 2379,
        }
    }

    /// Image and command of a replacement member joining an existing cluster.
    fn replacement_args(&self, old: &Member, new_id: u64, members: &[epb::Member], image: &str) -> Vec<String> {
        let peer_of = |m: &epb::Member| {
            m.peer_ur_ls.first().map(|u| u.trim_start_matches("http://").to_string()).unwrap_or_default()
        };
        match self.system {
            System::Rkube => {
                let cluster: Vec<String> = members.iter().map(|m| format!("{}={}", m.id, peer_of(m))).collect();
                let env = [
                    ("RKUBE_ID", new_id.to_string()),
                    ("RKUBE_NAME", old.name.clone()),
                    ("RKUBE_DATA_DIR", "/var/lib/rkube/data".into()),
                    ("RKUBE_LISTEN_API", "0.0.0.0:6443".into()),
                    ("RKUBE_LISTEN_PEER", "0.0.0.0:2380".into()),
                    ("RKUBE_ADVERTISE_API", format!("{}:6443", old.ip)),
                    ("RKUBE_ADVERTISE_PEER", format!("{}:2380", old.ip)),
                    ("RKUBE_INITIAL_CLUSTER", cluster.join(",")),
                    ("RKUBE_INITIAL_CLUSTER_STATE", "existing".into()),
                    ("RKUBE_INITIAL_CLUSTER_TOKEN", "rkube-compose".into()),
                ];
                let mut v = Vec::new();
                for (k, val) in env {
                    v.push("-e".to_string());
                    v.push(format!("{k}={val}"));
                }
                // The broken-build switch, when the run uses it, must hold for replacements too.
                if let Ok(val) = std::env::var("RKUBE_TEST_UNSAFE_STALE_READS") {
                    v.push("-e".to_string());
                    v.push(format!("RKUBE_TEST_UNSAFE_STALE_READS={val}"));
                }
                v.push(image.to_string());
                v.push("server".to_string());
                v
            }
            System::Etcd => {
                let new_name = format!("{}-r{}", old.name, old.generation + 1);
                let cluster: Vec<String> = members
                    .iter()
                    .map(|m| {
                        let n = if m.id == new_id || m.name.is_empty() { new_name.clone() } else { m.name.clone() };
                        format!("{n}=http://{}", peer_of(m))
                    })
                    .collect();
                let mut v = vec![image.to_string()];
                v.extend(etcd_args(&new_name, &old.ip, &cluster.join(","), "existing"));
                v
            }
        }
    }

    /// Removes the cluster: containers this harness started, then Compose's containers,
    /// network and volumes.
    pub async fn down(&self) -> Result<()> {
        let extra: Vec<String> = std::mem::take(&mut *self.extra.lock());
        for c in extra {
            let _ = self.docker(&["rm", "-f", &c]).await;
        }
        let labelled = self.docker(&["ps", "-aq", "--filter", &format!("label=rkube.jepsen={}", self.project)]).await?;
        for c in labelled.split_whitespace() {
            let _ = self.docker(&["rm", "-f", c]).await;
        }
        sh(&self.compose_args(&["down", "-v", "--remove-orphans", "-t", "1"]), &self.env).await.map(drop)
    }

    /// [`Cluster::down`] without a runtime, for guards and panics.
    pub fn down_blocking(&self) {
        for c in std::mem::take(&mut *self.extra.lock()) {
            let _ = std::process::Command::new("docker").args(["rm", "-f", &c]).output();
        }
        let args = self.compose_args(&["down", "-v", "--remove-orphans", "-t", "1"]);
        let _ = std::process::Command::new(&args[0]).args(&args[1..]).envs(self.env.clone()).output();
    }

    /// The members' logs, for the run folder.
    pub async fn logs(&self) -> String {
        let mut out = String::new();
        for m in self.members() {
            let v = strs(&["docker", "logs", "--tail", "300", &m.container]);
            let mut cmd = std::process::Command::new(&v[0]);
            cmd.args(&v[1..]);
            if let Ok(o) = cmd.output() {
                out.push_str(&format!("==== {} ({})\n", m.name, m.container));
                out.push_str(&String::from_utf8_lossy(&o.stdout));
                out.push_str(&String::from_utf8_lossy(&o.stderr));
            }
        }
        out
    }
}

/// etcd's flags for one member (the same as docker/etcd-compose.yml gives the first ones); the
/// image's entry point is etcd.
pub fn etcd_args(name: &str, ip: &str, cluster: &str, state: &str) -> Vec<String> {
    [
        "--name",
        name,
        "--data-dir",
        "/var/lib/etcd/data",
        "--listen-client-urls",
        "http://0.0.0.0:2379",
        "--advertise-client-urls",
        &format!("http://{ip}:2379"),
        "--listen-peer-urls",
        "http://0.0.0.0:2380",
        "--initial-advertise-peer-urls",
        &format!("http://{ip}:2380"),
        "--initial-cluster",
        cluster,
        "--initial-cluster-state",
        state,
        "--initial-cluster-token",
        "etcd-jepsen",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Tears the cluster down when dropped.
pub struct Guard<'a>(pub &'a Cluster);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.down_blocking();
    }
}
