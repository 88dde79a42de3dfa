//! Fixtures: a cluster of `rkube server` processes on free loopback ports, in a temporary
//! directory, killed (all of them) when the fixture drops, also when a test fails.

#![allow(dead_code)] // each test area uses a different part of the fixture

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rkube::pb::etcdserverpb as epb;
use rkube::pb::etcdserverpb::cluster_client::ClusterClient;
use rkube::pb::etcdserverpb::kv_client::KvClient;
use rkube::pb::etcdserverpb::lease_client::LeaseClient;
use rkube::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use rkube::pb::etcdserverpb::watch_client::WatchClient;
use tonic::transport::Channel;

pub const RKUBE: &str = env!("CARGO_BIN_EXE_rkube");
pub const RKCTL: &str = env!("CARGO_BIN_EXE_rkctl");

/// A port that was free a moment ago.
/// `kill SIGNAL PID`; whether it was delivered.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill").arg(signal).arg(pid.to_string()).status().is_ok_and(|s| s.success())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port").local_addr().unwrap().port()
}

pub struct Member {
    pub id: u64,
    pub api_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    pub fn api(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    pub fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The member's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub extra: Vec<String>,
}

/// The lines `child` prints on its (piped) stdout, on a channel as they come.
pub fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts an `rkube server` with the given arguments, logging to `log`.
pub fn spawn_server(args: &[String], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("opening the member log");
    Command::new(RKUBE)
        .arg("server")
        .args(args)
        .env("RKUBE_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("starting rkube server")
}

impl Cluster {
    /// Starts `n` members that form one cluster, and waits for a leader.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// Like [`Cluster::start`], passing `extra` flags to every member.
    ///
    /// Ports come from `free_port`, which lets the kernel pick one and frees it again: another
    /// process of the suite may take it before the member binds it. A member that exits at
    /// start-up because its port is taken is started again, with all the others, on new ports.
    pub async fn start_with(n: usize, extra: &[&str]) -> Cluster {
        for _ in 0..5 {
            if let Some(c) = Self::try_start(n, extra).await {
                return c;
            }
        }
        panic!("could not start {n} members on free ports in 5 attempts");
    }

    /// One attempt of [`Cluster::start_with`]: None if a member lost its port to another process.
    async fn try_start(n: usize, extra: &[&str]) -> Option<Cluster> {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let mut members: Vec<Member> = (1..=n as u64)
            .map(|id| Member {
                id,
                api_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{id}")),
                log: dir.path().join(format!("m{id}.log")),
                args: vec![],
                child: None,
            })
            .collect();
        let initial: Vec<String> = members.iter().map(|m| format!("{}={}", m.id, m.peer())).collect();
        let initial = initial.join(",");
        for m in &mut members {
            m.args = vec![
                "--id".into(),
                m.id.to_string(),
                "--data-dir".into(),
                m.data_dir.display().to_string(),
                "--listen-api".into(),
                m.api(),
                "--listen-peer".into(),
                m.peer(),
                "--initial-cluster".into(),
                initial.clone(),
                "--heartbeat-interval".into(),
                "50".into(),
                "--election-timeout".into(),
                "500".into(),
            ];
            // The control plane acts on objects; only tests that want it get it.
            if !extra.contains(&"--control-plane") {
                m.args.extend(["--control-plane".to_string(), "false".to_string()]);
            }
            m.args.extend(extra.iter().map(|s| s.to_string()));
        }
        let mut c = Cluster { dir, members, extra: extra.iter().map(|s| s.to_string()).collect() };
        for i in 0..n {
            c.restart(i);
        }
        if c.lost_a_port().await {
            for i in 0..n {
                c.kill(i);
            }
            return None;
        }
        c.wait_leader(Duration::from_secs(20)).await;
        c.wait_bootstrapped(Duration::from_secs(10)).await;
        Some(c)
    }

    /// Waits until every member has bound its ports; true if one exited because a port of its
    /// was taken.
    async fn lost_a_port(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        for i in 0..self.members.len() {
            loop {
                if !self.members[i].is_running() {
                    let log = self.members[i].log_text();
                    assert!(
                        log.contains("cannot listen on"),
                        "member {} exited at start-up:\n{log}",
                        self.members[i].id
                    );
                    return true;
                }
                // Logged once both ports are bound.
                if self.members[i].log_text().contains("rkube server started") {
                    break;
                }
                assert!(Instant::now() < deadline, "member {} does not listen after 20 s", self.members[i].id);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        false
    }

    /// Waits until every member has applied the API server's start-up writes (the system
    /// namespaces), so that tests counting revisions start from a quiet store. A member that
    /// cannot make them (a test's tiny quota) is left as it is.
    async fn wait_bootstrapped(&self, limit: Duration) {
        let last = format!("/registry/namespaces/{}", rkube::api::SYSTEM_NAMESPACES.last().expect("some"));
        let deadline = Instant::now() + limit;
        for i in 0..self.members.len() {
            let mut kv = self.kv(i).await;
            let req = epb::RangeRequest { key: last.clone().into(), serializable: true, ..Default::default() };
            while Instant::now() < deadline {
                if kv.range(req.clone()).await.is_ok_and(|r| r.into_inner().count > 0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Starts member `i` again from its data dir (or for the first time).
    pub fn restart(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.child = Some(spawn_server(&m.args, &m.log));
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to member `i`, which must be running.
    pub fn signal(&self, i: usize, signal: &str) {
        let c = self.members[i].child.as_ref().expect("the member runs");
        assert!(send_signal(c.id(), signal), "kill {signal} member {}", self.members[i].id);
    }

    /// Stops member `i` with SIGTERM and waits for it to exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            send_signal(c.id(), "-TERM");
            let _ = c.wait();
        }
    }

    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.api()).collect::<Vec<_>>().join(",")
    }

    pub async fn channel(&self, i: usize) -> Channel {
        channel(&self.members[i].api()).await
    }

    pub async fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(i).await)
    }

    pub async fn watch(&self, i: usize) -> WatchClient<Channel> {
        WatchClient::new(self.channel(i).await)
    }

    /// Opens a watch stream on member `i` with one create request; the sender stays open for
    /// more requests (dropping it ends the stream).
    pub async fn open_watch(
        &self,
        i: usize,
        create: epb::WatchCreateRequest,
    ) -> (tokio::sync::mpsc::Sender<epb::WatchRequest>, tonic::Streaming<epb::WatchResponse>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(epb::WatchRequest { request_union: Some(epb::watch_request::RequestUnion::CreateRequest(create)) })
            .await
            .unwrap();
        let stream = self
            .watch(i)
            .await
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        (tx, stream)
    }

    pub async fn lease(&self, i: usize) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel(i).await)
    }

    pub async fn cluster(&self, i: usize) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(i).await)
    }

    pub async fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel(i).await)
    }

    /// The status of member `i`, if it answers.
    pub async fn status(&self, i: usize) -> Option<epb::StatusResponse> {
        let ch = try_channel(&self.members[i].api()).await?;
        let mut c = MaintenanceClient::new(ch);
        let fut = c.status(epb::StatusRequest {});
        tokio::time::timeout(Duration::from_secs(2), fut).await.ok()?.ok().map(|r| r.into_inner())
    }

    /// Waits until every running member names the same leader; returns its index.
    pub async fn wait_leader(&mut self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let mut leaders = Vec::new();
            let mut running = 0;
            for i in 0..self.members.len() {
                if !self.members[i].is_running() {
                    continue;
                }
                running += 1;
                if let Some(s) = self.status(i).await {
                    leaders.push(s.leader);
                }
            }
            if running > 0 && leaders.len() == running && leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
                // A leader that was just killed is still named until the others time out.
                if let Some(i) = self.members.iter().position(|m| m.id == leaders[0]) {
                    if self.members[i].is_running() {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader within {limit:?}: saw {leaders:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last 40 lines of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = m.log_text();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!("--- member {} ---\n{}", m.id, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // A failed test leaves no data dir behind: show what each member said at the end.
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

pub async fn try_channel(addr: &str) -> Option<Channel> {
    let ep =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?.connect_timeout(Duration::from_secs(2));
    ep.connect().await.ok()
}

pub async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("a valid address").connect_lazy()
}

pub fn put(key: &str, value: &str) -> epb::PutRequest {
    epb::PutRequest { key: key.into(), value: value.into(), ..Default::default() }
}

pub fn get(key: &str) -> epb::RangeRequest {
    epb::RangeRequest { key: key.into(), ..Default::default() }
}

pub fn prefix(p: &str) -> epb::RangeRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    epb::RangeRequest { key: p.into(), range_end: end, ..Default::default() }
}

/// Runs a command to completion and returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An rkctl command for `servers` that cannot pick up the caller's config or environment.
pub fn rkctl_cmd(servers: &str) -> Command {
    let mut c = Command::new(RKCTL);
    c.env_remove("RKUBE_SERVER").env("XDG_CONFIG_HOME", "/nonexistent-rkctl-test").arg("--server").arg(servers);
    c
}

/// Retries `f` until it returns Some or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
