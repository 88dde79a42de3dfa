//! The node agent against a real `rkube server` (scheduler and controllers included) and the
//! loopback registry: `rkube node` processes with runc as root (its own bridge and /24 per
//! test) or the process runtime. Each fixture kills its agent and removes every sandbox it
//! left (processes, netns, veths, IPs) and its bridge when it drops, also when a test fails.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rkube::api::v1::*;
use rkube::api::Object;
use rkube::client::{Api, Client, DeleteParams};
use rkube::kubelet::network::{host_veth, netns_name, PodNetwork, NETNS_DIR};
use rkube::kubelet::{build_runtime, NetworkConfig, RuntimeConfig, RuntimeKind};
use rkube::pb::v1::LogsRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{eventually, free_port, rkctl_cmd, run, Cluster, RKCTL, RKUBE};
use crate::kubelet_runtime::Registry;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One `rkube node` process and everything it owns.
struct Agent {
    name: String,
    dir: tempfile::TempDir,
    args: Vec<String>,
    network: Option<NetworkConfig>,
    child: Option<Child>,
    _registry: Arc<Registry>,
}

impl Agent {
    fn start(cluster: &Cluster, kind: RuntimeKind) -> Agent {
        let registry = Registry::get();
        let dir = tempfile::tempdir().expect("agent tempdir");
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("w{n}");
        let network = (kind == RuntimeKind::Runc).then(|| NetworkConfig {
            bridge: format!("rkn{}-{n}", pid % 100_000),
            cidr: format!("10.235.{}.0/24", pid.wrapping_mul(7).wrapping_add(n) % 250).parse().expect("cidr"),
        });
        let mut args = vec![
            "node".to_string(),
            "--server".into(),
            cluster.endpoints(),
            "--node-name".into(),
            name.clone(),
            "--runtime".into(),
            if kind == RuntimeKind::Runc { "runc" } else { "process" }.into(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--image-dir".into(),
            dir.path().join("images").display().to_string(),
            "--kubelet-port".into(),
            free_port().to_string(),
            "--insecure-registry".into(),
            registry.host(),
            "--registry-mirror".into(),
            registry.host(),
            "--backoff-initial-ms".into(),
            "1000".into(),
        ];
        if let Some(net) = &network {
            args.extend(["--pod-cidr".into(), net.cidr.to_string(), "--bridge".into(), net.bridge.clone()]);
        }
        let mut a = Agent { name, dir, args, network, child: None, _registry: registry };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        self.child = Some(
            Command::new(RKUBE)
                .args(&self.args)
                .env("RKUBE_LOG", "info,rkube=debug")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting rkube node"),
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_root(&self) -> PathBuf {
        self.state().join("logs")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- agent {} log ----\n{}", self.name, self.log());
        }
        let state = self.state().join("runtime");
        let network = self.network.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cleanup runtime");
            rt.block_on(async move {
                let mut cfg = RuntimeConfig::new(state.clone(), network.clone());
                cfg.kind = if network.is_some() { RuntimeKind::Runc } else { RuntimeKind::Process };
                cfg.shim = PathBuf::from(RKUBE);
                if let Ok(runtime) = build_runtime(cfg).await {
                    for s in runtime.list().await.unwrap_or_default() {
                        if let Err(e) = runtime.remove_sandbox(&s.sandbox.id).await {
                            eprintln!("cleanup: removing sandbox {}: {e}", s.sandbox.id);
                        }
                    }
                }
                if let Some(net) = network {
                    if let Ok(n) = PodNetwork::new(net, &state) {
                        let _ = n.teardown_node().await;
                    }
                }
            });
        })
        .join();
    }
}

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "the runc node tests need root (runc, network namespaces, iptables)");
}

fn pod(name: &str, image: &str, command: &[&str]) -> Pod {
    let mut p = Pod {
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: image.into(),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    p.meta_mut().name = name.into();
    p.meta_mut().namespace = "default".into();
    p
}

async fn wait_pod<F: Fn(&Pod) -> bool>(api: &Api<Pod>, name: &str, within: Duration, what: &str, f: F) -> Pod {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(p) = api.get(name).await {
            if f(&p) {
                return p;
            }
            last = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pod {name}: {what} not seen within {within:?}; last: {:?}", last.and_then(|p| p.status));
}

async fn wait_gone(api: &Api<Pod>, name: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        match api.get_opt(name).await {
            Ok(None) => return start.elapsed(),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("pod {name} still exists after {within:?}");
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("")
}

fn main_status(p: &Pod) -> Option<&ContainerStatus> {
    p.status.as_ref().and_then(|s| s.container_statuses.first())
}

fn waiting_reason(p: &Pod) -> String {
    main_status(p).and_then(|c| c.state.as_ref()?.waiting.as_ref()).map(|w| w.reason.clone()).unwrap_or_default()
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && main_status(p).is_some_and(|c| c.ready)
}

async fn logs(api: &Api<Pod>, name: &str, previous: bool) -> String {
    let r = LogsRequest { namespace: "default".into(), name: name.into(), previous, ..Default::default() };
    let mut s = api.logs(r).await.expect("logs");
    let mut out = Vec::new();
    while let Ok(Some(c)) = s.message().await {
        out.extend(c.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn http_get(ip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect((ip, port))).await??;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut buf)).await??;
    Ok(buf)
}

async fn setup(kind: RuntimeKind) -> (Cluster, Agent, Client) {
    if kind == RuntimeKind::Runc {
        require_root();
    }
    let cluster = Cluster::start_with(1, &["--control-plane", "true"]).await;
    let agent = Agent::start(&cluster, kind);
    let client = Client::from_list(&cluster.endpoints()).expect("client");
    let nodes = Api::<Node>::all(&client);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes.get_opt(&agent.name).await.ok().flatten().is_some_and(|n| {
            n.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "node {} did not become Ready; agent log:\n{}", agent.name, agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (cluster, agent, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_with_machine_capacity_and_renews_its_lease() {
    let (_cluster, agent, client) = setup(RuntimeKind::Process).await;
    let node = Api::<Node>::all(&client).get(&agent.name).await.expect("node");
    let st = node.status.expect("status");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    assert_eq!(st.capacity.get("cpu"), Some(&cpus));
    assert_eq!(st.capacity.get("pods").map(String::as_str), Some("110"));
    assert!(st.capacity.get("memory").is_some_and(|m| !m.is_empty() && m != "0"));
    let info = st.node_info.expect("nodeInfo");
    assert!(info.container_runtime_version.starts_with("process://"), "{}", info.container_runtime_version);
    assert!(!info.kernel_version.is_empty());
    assert!(st.addresses.iter().any(|a| a.r#type == "InternalIP" && a.address == "127.0.0.1"));
    for kind in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(st.conditions.iter().any(|c| c.r#type == kind), "condition {kind}");
    }
    let lease = Api::<Lease>::namespaced(&client, "kube-node-lease").get(&agent.name).await.expect("lease");
    assert!(!lease.spec.expect("spec").renew_time.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_pod_from_the_registry_runs_answers_on_its_ip_and_shows_logs() {
    let (_cluster, agent, client) = setup(RuntimeKind::Runc).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    let start = Instant::now();
    api.create(&pod("web", "httpd", &[])).await.expect("create");
    let p = wait_pod(&api, "web", Duration::from_secs(60), "Running", running_and_ready).await;
    eprintln!("create -> Running and Ready (first pull included): {:?}", start.elapsed());
    let st = p.status.clone().expect("status");
    let ip: Ipv4Addr = st.pod_ip.parse().expect("pod IP");
    assert!(agent.network.as_ref().expect("net").cidr.contains(ip), "pod IP {ip} in the node's subnet");
    assert_eq!(st.host_ip, "127.0.0.1");
    assert!(!st.start_time.is_empty());
    assert!(st.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"));
    let body = http_get(ip, 80).await.expect("GET on the pod IP");
    assert!(body.starts_with("HTTP/1."), "{body}");
    // busybox httpd -v logs each response on stderr.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = logs(&api, "web", false).await;
        if t.contains("response:200") || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("response:200"), "logs: {text:?}");

    // A second pod: create -> Running with the image present.
    let start = Instant::now();
    api.create(&pod("web2", "httpd", &[])).await.expect("create");
    wait_pod(&api, "web2", Duration::from_secs(30), "Running", |p| phase(p) == "Running").await;
    eprintln!("create -> Running (image present): {:?}", start.elapsed());

    let sandbox_dirs = |state: PathBuf| -> Vec<String> {
        std::fs::read_dir(state.join("runtime").join("sandboxes"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let sandboxes = sandbox_dirs(agent.state());
    assert_eq!(sandboxes.len(), 2, "{sandboxes:?}");
    for name in ["web", "web2"] {
        api.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    for name in ["web", "web2"] {
        wait_gone(&api, name, Duration::from_secs(40)).await;
    }
    let links =
        String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output().expect("ip").stdout).into_owned();
    for sid in &sandboxes {
        assert!(!std::path::Path::new(NETNS_DIR).join(netns_name(sid)).exists(), "netns of {sid} left");
        assert!(!links.contains(&format!(" {}@", host_veth(sid))), "veth of {sid} left");
    }
    assert!(sandbox_dirs(agent.state()).is_empty(), "sandboxes left");
}

async fn crash_loop_backs_off(kind: RuntimeKind) {
    let (_cluster, _agent, client) = setup(kind).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    api.create(&pod("crash", "busybox", &["sh", "-c", "echo attempt; exit 3"])).await.expect("create");
    let mut seen_backoff = false;
    let mut restarts: Vec<Instant> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while restarts.len() < 4 {
        assert!(Instant::now() < deadline, "only {} restarts seen", restarts.len());
        if let Ok(p) = api.get("crash").await {
            seen_backoff |= waiting_reason(&p) == "CrashLoopBackOff";
            let count = main_status(&p).map_or(0, |c| c.restart_count) as usize;
            while restarts.len() < count {
                restarts.push(Instant::now());
            }
            if count >= 1 {
                let last = main_status(&p).and_then(|c| c.last_state.as_ref()?.terminated.as_ref());
                if let Some(t) = last {
                    assert_eq!(t.exit_code, 3);
                    assert_eq!(t.reason, "Error");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_backoff, "CrashLoopBackOff was never reported");
    let gap = |i: usize| restarts[i] - restarts[i - 1];
    // Backoff 1 s, 2 s, 4 s (tests start it at 1 s instead of 10 s): gaps grow.
    assert!(gap(3) > gap(2) && gap(3) >= Duration::from_millis(3500), "gaps {:?} {:?}", gap(2), gap(3));
    let text = logs(&api, "crash", true).await;
    assert!(text.contains("attempt"), "previous logs: {text:?}");
    api.delete("crash", &DeleteParams::default()).await.expect("delete");
    wait_gone(&api, "crash", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_crashing_container_restarts_with_growing_backoff() {
    crash_loop_backs_off(RuntimeKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_crashing_container_restarts_with_growing_backoff() {
    crash_loop_backs_off(RuntimeKind::Process).await;
}

async fn delete_honours_sigterm_and_grace(kind: RuntimeKind) {
    let (_cluster, agent, client) = setup(kind).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    let mut trap = pod(
        "trap",
        "busybox",
        &["sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.1; done"],
    );
    trap.spec.as_mut().expect("spec").termination_grace_period_seconds = Some(20);
    let mut stubborn =
        pod("stubborn", "busybox", &["sh", "-c", "trap '' TERM; echo started; while true; do sleep 0.1; done"]);
    stubborn.spec.as_mut().expect("spec").termination_grace_period_seconds = Some(3);
    api.create(&trap).await.expect("create");
    api.create(&stubborn).await.expect("create");
    let t = wait_pod(&api, "trap", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await;
    wait_pod(&api, "stubborn", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await;
    // The trapping container's log, followed from before the delete: the pod's logs go with it.
    let r = LogsRequest { namespace: "default".into(), name: "trap".into(), follow: true, ..Default::default() };
    let mut follow = api.logs(r).await.expect("logs -f");
    let followed = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Ok(Ok(Some(c))) = tokio::time::timeout(Duration::from_secs(20), follow.message()).await {
            out.extend(c.data);
            if String::from_utf8_lossy(&out).contains("got TERM") {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    wait_log_line(&api, "trap", "started").await;
    wait_log_line(&api, "stubborn", "started").await;
    api.delete("trap", &DeleteParams::default()).await.expect("delete");
    api.delete("stubborn", &DeleteParams::default()).await.expect("delete");
    let trap_took = wait_gone(&api, "trap", Duration::from_secs(30)).await;
    let stubborn_took = wait_gone(&api, "stubborn", Duration::from_secs(30)).await;
    assert!(trap_took < Duration::from_secs(5), "the trapping container exits at SIGTERM: {trap_took:?}");
    assert!(stubborn_took >= Duration::from_millis(2500), "killed only after the grace: {stubborn_took:?}");
    let text = followed.await.expect("follower");
    assert!(text.contains("got TERM"), "followed log: {text:?}");
    let dir = rkube::kubelet::pod_log_path(&agent.log_root(), "default", "trap", &t.meta().uid, "main", 0);
    let dir = dir.parent().and_then(|c| c.parent()).expect("pod log dir");
    assert!(!dir.exists(), "the logs of a deleted pod are removed: {}", dir.display());
}

/// Waits until the pod's log holds `needle` (its container is past its start-up).
async fn wait_log_line(api: &Api<Pod>, name: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs(api, name, false).await.contains(needle) {
        assert!(Instant::now() < deadline, "pod {name}: {needle:?} not logged within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_delete_honours_sigterm_and_the_grace_period() {
    delete_honours_sigterm_and_grace(RuntimeKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_delete_honours_sigterm_and_the_grace_period() {
    delete_honours_sigterm_and_grace(RuntimeKind::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_gives_err_image_pull_then_image_pull_backoff() {
    let (_cluster, _agent, client) = setup(RuntimeKind::Process).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    api.create(&pod("noimg", "no-such-image:v1", &[])).await.expect("create");
    wait_pod(&api, "noimg", Duration::from_secs(30), "ErrImagePull", |p| waiting_reason(p) == "ErrImagePull").await;
    let p = wait_pod(&api, "noimg", Duration::from_secs(30), "ImagePullBackOff", |p| {
        waiting_reason(p) == "ImagePullBackOff"
    })
    .await;
    assert_eq!(phase(&p), "Pending");
    api.delete("noimg", &DeleteParams::default()).await.expect("delete");
    wait_gone(&api, "noimg", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_agent_restart_adopts_running_pods() {
    let (_cluster, mut agent, client) = setup(RuntimeKind::Runc).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    api.create(&pod("keep", "httpd", &[])).await.expect("create");
    let before = wait_pod(&api, "keep", Duration::from_secs(60), "Running", running_and_ready).await;
    let id_before = main_status(&before).expect("cs").container_id.clone();
    let ip: Ipv4Addr = before.status.as_ref().expect("st").pod_ip.parse().expect("ip");
    agent.kill();
    assert!(http_get(ip, 80).await.is_ok(), "the pod keeps serving while its agent is down");
    agent.spawn();
    // The new agent reports the same container, not a restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = wait_pod(&api, "keep", Duration::from_secs(30), "Running", running_and_ready).await;
    let cs = main_status(&after).expect("cs");
    assert_eq!(cs.container_id, id_before);
    assert_eq!(cs.restart_count, 0);
    assert!(agent.log().contains("adopted a running pod"), "agent log:\n{}", agent.log());
    assert!(http_get(ip, 80).await.is_ok());
    api.delete("keep", &DeleteParams::default()).await.expect("delete");
    wait_gone(&api, "keep", Duration::from_secs(40)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pod_runs_shows_logs_and_succeeds() {
    let (_cluster, _agent, client) = setup(RuntimeKind::Process).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    let mut p = pod("once", "busybox", &["sh", "-c", "echo hello-from-rkube; sleep 1"]);
    p.spec.as_mut().expect("spec").restart_policy = "Never".into();
    api.create(&p).await.expect("create");
    wait_pod(&api, "once", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await;
    let done = wait_pod(&api, "once", Duration::from_secs(30), "Succeeded", |p| phase(p) == "Succeeded").await;
    let t = main_status(&done).and_then(|c| c.state.as_ref()?.terminated.clone()).expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_str()), (0, "Completed"));
    let text = logs(&api, "once", false).await;
    assert!(text.contains("hello-from-rkube"), "logs: {text:?}");
    api.delete("once", &DeleteParams::default()).await.expect("delete");
    wait_gone(&api, "once", Duration::from_secs(30)).await;
}

fn pod_ready(p: &Pod) -> Option<bool> {
    let c = p.status.as_ref()?.conditions.iter().find(|c| c.r#type == "Ready")?;
    Some(c.status == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_readiness_flips_ready_and_liveness_restarts() {
    let (_cluster, agent, client) = setup(RuntimeKind::Process).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    let flag = agent.dir.path().join("ready-flag");
    let mut p = pod("probed", "busybox", &["sh", "-c", "sleep 300"]);
    p.spec.as_mut().expect("spec").containers[0].readiness_probe = Some(Probe {
        exec: Some(ExecAction { command: vec!["test".into(), "-f".into(), flag.display().to_string()] }),
        period_seconds: 1,
        failure_threshold: 1,
        ..Default::default()
    });
    api.create(&p).await.expect("create");
    let got = wait_pod(&api, "probed", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await;
    assert_eq!(pod_ready(&got), Some(false), "not ready before the probe succeeds");
    std::fs::write(&flag, b"").expect("flag");
    wait_pod(&api, "probed", Duration::from_secs(15), "Ready", |p| pod_ready(p) == Some(true)).await;
    std::fs::remove_file(&flag).expect("flag");
    wait_pod(&api, "probed", Duration::from_secs(15), "not Ready", |p| pod_ready(p) == Some(false)).await;

    let mut live = pod("live", "busybox", &["sh", "-c", "sleep 300"]);
    live.spec.as_mut().expect("spec").termination_grace_period_seconds = Some(1);
    live.spec.as_mut().expect("spec").containers[0].liveness_probe = Some(Probe {
        tcp_socket: Some(TcpSocketAction { port: "1".into(), host: "127.0.0.1".into() }),
        period_seconds: 1,
        failure_threshold: 2,
        ..Default::default()
    });
    api.create(&live).await.expect("create");
    wait_pod(&api, "live", Duration::from_secs(60), "a liveness restart", |p| {
        main_status(p).is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    for name in ["probed", "live"] {
        api.delete(name, &DeleteParams { grace_period_seconds: Some(1), ..Default::default() }).await.expect("delete");
    }
    for name in ["probed", "live"] {
        wait_gone(&api, name, Duration::from_secs(30)).await;
    }
}

/// What a runc node holds on the machine for its pods, read from the machine (procfs,
/// mountinfo, `ip`, `runc list`, cgroupfs, the agent's state directory), not asked of the agent.
#[derive(Debug, Default)]
struct Footprint {
    processes: Vec<String>,
    mounts: Vec<String>,
    netns: Vec<String>,
    veths: Vec<String>,
    addresses: Vec<String>,
    runc: Vec<String>,
    cgroups: Vec<String>,
    state: Vec<String>,
    logs: Vec<String>,
}

impl Footprint {
    fn is_empty(&self) -> bool {
        [
            &self.processes,
            &self.mounts,
            &self.netns,
            &self.veths,
            &self.addresses,
            &self.runc,
            &self.cgroups,
            &self.state,
            &self.logs,
        ]
        .iter()
        .all(|v| v.is_empty())
    }
}

/// The sandboxes, containers and processes (pid, start ticks) an agent's runtime has made so
/// far, remembered across calls so that a later footprint still looks for them.
#[derive(Debug, Default)]
struct Seen {
    sandboxes: std::collections::BTreeSet<String>,
    containers: std::collections::BTreeSet<String>,
    processes: std::collections::BTreeSet<(u32, u64)>,
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Field 22 of /proc/PID/stat: the start time in clock ticks (tells a process from a reused pid).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

impl Seen {
    fn record(&mut self, agent: &Agent) {
        let rt = agent.state().join("runtime");
        self.sandboxes.extend(names_in(&rt.join("sandboxes")));
        for c in names_in(&rt.join("containers")) {
            let started = std::fs::read_to_string(rt.join("containers").join(&c).join("started.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            if let Some(s) = started {
                for (pid, ticks) in [("pid", "pid_start_ticks"), ("shim_pid", "shim_start_ticks")] {
                    if let (Some(p), Some(t)) = (s[pid].as_u64(), s[ticks].as_u64()) {
                        self.processes.insert((p as u32, t));
                    }
                }
            }
            self.containers.insert(c);
        }
    }

    fn footprint(&self, agent: &Agent) -> Footprint {
        let state = agent.state();
        let state_str = state.display().to_string();
        let rt = state.join("runtime");
        let agent_pid = agent.child.as_ref().map(|c| c.id());
        let mut f = Footprint::default();

        for &(pid, ticks) in &self.processes {
            if start_ticks(pid) == Some(ticks) {
                f.processes.push(format!("pid {pid} (started by the runtime)"));
            }
        }
        for pid in names_in(std::path::Path::new("/proc")).iter().filter_map(|n| n.parse::<u32>().ok()) {
            if Some(pid) == agent_pid || pid == std::process::id() {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if cmdline.contains(&state_str) || self.containers.iter().any(|c| cgroup.contains(&format!("/rkube/{c}"))) {
                f.processes.push(format!("pid {pid}: {}", cmdline.trim()));
            }
        }
        f.processes.sort();
        f.processes.dedup();

        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        f.mounts = mountinfo
            .lines()
            .filter(|l| l.contains(&state_str) || self.sandboxes.iter().any(|s| l.contains(&netns_name(s))))
            .map(str::to_string)
            .collect();
        f.netns = self
            .sandboxes
            .iter()
            .map(|s| std::path::Path::new(NETNS_DIR).join(netns_name(s)))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        let links = Command::new("ip").args(["-o", "link"]).output().expect("ip link");
        let links = String::from_utf8_lossy(&links.stdout);
        f.veths = self.sandboxes.iter().map(|s| host_veth(s)).filter(|v| links.contains(&format!(" {v}@"))).collect();
        for subnet in names_in(&rt.join("ipam")) {
            for ip in names_in(&rt.join("ipam").join(&subnet)) {
                if ip.parse::<Ipv4Addr>().is_ok() {
                    f.addresses.push(ip);
                }
            }
        }
        let runc = Command::new("runc").arg("--root").arg(rt.join("runc")).args(["list", "-q"]).output().expect("runc");
        f.runc = String::from_utf8_lossy(&runc.stdout).lines().map(str::to_string).collect();
        let roots: Vec<PathBuf> = std::iter::once(PathBuf::from("/sys/fs/cgroup"))
            .chain(
                names_in(std::path::Path::new("/sys/fs/cgroup"))
                    .into_iter()
                    .map(|c| PathBuf::from("/sys/fs/cgroup").join(c)),
            )
            .collect();
        for c in &self.containers {
            for root in &roots {
                let p = root.join("rkube").join(c);
                if p.is_dir() {
                    f.cgroups.push(p.display().to_string());
                }
            }
        }
        for d in ["sandboxes", "containers"] {
            f.state.extend(names_in(&rt.join(d)).into_iter().map(|n| format!("{d}/{n}")));
        }
        f.logs = names_in(&agent.log_root());
        f
    }
}

/// Pods of every kind go (served, crash-looping, ignoring SIGTERM, two containers, deleted while
/// starting, removed from the API while the agent was down), and the node keeps nothing of them.
/// Every check first sees the live pods, so none of them passes for looking in the wrong place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_nothing_is_left_on_the_node_after_pods_go() {
    let (_cluster, mut agent, client) = setup(RuntimeKind::Runc).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    let mut seen = Seen::default();

    api.create(&pod("web", "httpd", &[])).await.expect("create");
    api.create(&pod("crash", "busybox", &["sh", "-c", "echo once; exit 1"])).await.expect("create");
    let mut stubborn = pod("stubborn", "busybox", &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]);
    stubborn.spec.as_mut().expect("spec").termination_grace_period_seconds = Some(2);
    api.create(&stubborn).await.expect("create");
    let mut two = pod("two", "httpd", &[]);
    let spec = two.spec.as_mut().expect("spec");
    let mut side = spec.containers[0].clone();
    side.name = "side".into();
    side.image = "busybox".into();
    side.command = vec!["sh".into(), "-c".into(), "while true; do sleep 0.1; done".into()];
    spec.containers.push(side);
    api.create(&two).await.expect("create");
    api.create(&pod("orphan", "busybox", &["sh", "-c", "while true; do sleep 0.1; done"])).await.expect("create");

    for name in ["web", "stubborn", "two", "orphan"] {
        wait_pod(&api, name, Duration::from_secs(90), "Running", |p| phase(p) == "Running").await;
    }
    wait_pod(&api, "crash", Duration::from_secs(60), "a restart", |p| {
        main_status(p).is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    seen.record(&agent);
    let live = seen.footprint(&agent);
    // web 1 + stubborn 1 + two 2 + orphan 1 running containers, each with its shim.
    assert!(live.processes.len() >= 10, "processes: {:#?}", live.processes);
    assert!(live.mounts.len() >= 5 + 5, "rootfs and netns mounts: {:#?}", live.mounts);
    assert_eq!(live.netns.len(), 5, "{live:#?}");
    assert_eq!(live.veths.len(), 5, "{live:#?}");
    assert_eq!(live.addresses.len(), 5, "{live:#?}");
    assert!(live.runc.len() >= 5, "{live:#?}");
    assert!(live.cgroups.len() >= 5, "{live:#?}");
    assert!(seen.containers.len() >= 7, "the crashing container ran twice at least: {seen:#?}");
    assert_eq!(live.logs.len(), 5, "{live:#?}");

    // The agent goes down; "orphan" is removed from the API meanwhile (grace 0, as
    // `rkctl delete --force` does). The restarted agent finds its sandbox and removes it.
    agent.kill();
    api.delete("orphan", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("delete");
    assert!(api.get_opt("orphan").await.expect("get").is_none());
    agent.spawn();

    // One more pod, deleted at once: it may be anywhere between scheduled and starting.
    api.create(&pod("quick", "busybox", &["sh", "-c", "while true; do sleep 0.1; done"])).await.expect("create");
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.record(&agent);
    for name in ["web", "crash", "stubborn", "two", "quick"] {
        api.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    for name in ["web", "crash", "stubborn", "two", "quick"] {
        seen.record(&agent);
        wait_gone(&api, name, Duration::from_secs(60)).await;
    }
    // The kubelet removes a pod object only after its sandbox; processes that were killed may
    // take a moment to be reaped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let f = seen.footprint(&agent);
        if f.is_empty() || Instant::now() > deadline {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(left.is_empty(), "left on the node after every pod went: {left:#?}\nagent log:\n{}", agent.log());
    assert!(agent.log().contains("removing the sandbox of a pod that is gone"), "{}", agent.log());
}

/// The README's walkthrough, as a user types it: `rkube dev`, then plain `rkctl` (found through
/// the config file `rkube dev` writes) runs two httpd pods, curl reaches them on their pod IPs
/// from the host, and deleting the Deployment shows them Terminating, then no pods at all. The
/// demo image comes from the loopback registry as docker.io's mirror; the bridge and subnet are
/// this test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rkube_dev_runs_httpd_pods_reachable_from_the_host_and_deletes_them() {
    require_root();
    let registry = Registry::get();
    let dir = tempfile::tempdir().expect("tempdir");
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    let network = NetworkConfig {
        bridge: format!("rkd{}-{n}", pid % 100_000),
        cidr: format!("10.236.{}.0/24", pid.wrapping_mul(7).wrapping_add(n) % 250).parse().expect("cidr"),
    };
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("dev.log")).expect("log");
    let dev = Command::new(RKUBE)
        .arg("dev")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-api", &format!("127.0.0.1:{}", free_port())])
        .args(["--listen-peer", &format!("127.0.0.1:{}", free_port())])
        .args(["--kubelet-port", &free_port().to_string()])
        .args(["--insecure-registry", &registry.host(), "--registry-mirror", &registry.host()])
        .args(["--bridge", &network.bridge, "--pod-cidr", &network.cidr.to_string()])
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting rkube dev");
    // Stops rkube dev and removes what its kubelet left (on failure too), then its bridge.
    struct Dev {
        child: Child,
        state: PathBuf,
        network: NetworkConfig,
        log: PathBuf,
    }
    impl Drop for Dev {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if std::thread::panicking() {
                eprintln!("---- rkube dev log ----\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            let (state, network) = (self.state.join("runtime"), self.network.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cleanup runtime");
                rt.block_on(async move {
                    let mut cfg = RuntimeConfig::new(state.clone(), Some(network.clone()));
                    cfg.kind = RuntimeKind::Runc;
                    cfg.shim = PathBuf::from(RKUBE);
                    if let Ok(runtime) = build_runtime(cfg).await {
                        for s in runtime.list().await.unwrap_or_default() {
                            let _ = runtime.remove_sandbox(&s.sandbox.id).await;
                        }
                    }
                    if let Ok(n) = PodNetwork::new(network, &state) {
                        let _ = n.teardown_node().await;
                    }
                });
            })
            .join();
        }
    }
    let _dev =
        Dev { child: dev, state: data.join("kubelet"), network: network.clone(), log: dir.path().join("dev.log") };
    let rkctl = |args: &[&str]| {
        run(Command::new(RKCTL)
            .args(args)
            .env_remove("RKUBE_SERVER")
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("HOME", dir.path()))
    };
    let rows = |table: &str| -> Vec<Vec<String>> {
        table.lines().skip(1).map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
    };

    eventually(Duration::from_secs(60), "the dev node to be Ready", || async {
        let (ok, out, _) = rkctl(&["get", "nodes"]);
        (ok && rows(&out).iter().any(|r| r.get(1).map(String::as_str) == Some("Ready"))).then_some(())
    })
    .await;
    let (ok, out, err) = rkctl(&["run", "httpd-pod", "--image=httpd", "--replicas=2"]);
    assert!(ok, "rkctl run: {err}");
    assert_eq!(out.trim(), "deployment.apps/httpd-pod created");

    let running = eventually(Duration::from_secs(90), "two Running httpd-pod pods", || async {
        let (ok, out, _) = rkctl(&["get", "pods", "-o", "wide"]);
        let r: Vec<Vec<String>> =
            rows(&out).into_iter().filter(|r| r[0].starts_with("httpd-pod-") && r[2] == "Running").collect();
        (ok && r.len() == 2).then_some(r)
    })
    .await;
    for r in &running {
        assert_eq!(r[1], "1/1", "{r:?}");
        let ip: Ipv4Addr = r[5].parse().unwrap_or_else(|_| panic!("pod IP in {r:?}"));
        assert!(network.cidr.contains(ip), "{ip} in {}", network.cidr);
        let curl = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", &format!("http://{ip}/")])
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&curl.stdout).into_owned();
        // busybox httpd answers 404 for a missing index; any HTTP answer proves the pod serves.
        assert!(
            code.len() == 3 && code != "000",
            "curl http://{ip}/: {code} {}",
            String::from_utf8_lossy(&curl.stderr)
        );
    }

    let (ok, out, err) = rkctl(&["delete", "deployment", "httpd-pod"]);
    assert!(ok, "rkctl delete: {err}");
    assert_eq!(out.trim(), "deployment.apps \"httpd-pod\" deleted");
    eventually(Duration::from_secs(30), "the pods shown Terminating", || async {
        let (_, out, _) = rkctl(&["get", "pods"]);
        rows(&out).iter().any(|r| r.get(2).map(String::as_str) == Some("Terminating")).then_some(())
    })
    .await;
    let start = Instant::now();
    let (out, err) = eventually(Duration::from_secs(60), "no pods left", || async {
        let (ok, out, err) = rkctl(&["get", "pods"]);
        (ok && out.is_empty()).then_some((out, err))
    })
    .await;
    eprintln!("Terminating -> gone: {:?}", start.elapsed());
    assert_eq!((out.as_str(), err.trim()), ("", "No resources found in default namespace."));
}

/// `rkctl logs` through the API server and the kubelet: `--tail N` gives the last N lines, and
/// `-f` keeps printing lines as the container writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_rkctl_logs_tails_and_follows() {
    let (cluster, _agent, client) = setup(RuntimeKind::Process).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    let script = "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.2; done";
    api.create(&pod("counter", "busybox", &["sh", "-c", script])).await.expect("create");
    let rkctl = |args: &[&str]| {
        let mut c = rkctl_cmd(&cluster.endpoints());
        c.args(args);
        c
    };
    let number = |l: &str| -> u32 {
        l.strip_prefix("line ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a counter line: {l:?}"))
    };
    eventually(Duration::from_secs(60), "five lines logged", || async {
        let (ok, out, _) = run(&mut rkctl(&["logs", "counter"]));
        (ok && out.lines().count() >= 5).then_some(())
    })
    .await;

    let (ok, out, err) = run(&mut rkctl(&["logs", "counter", "--tail", "2"]));
    assert!(ok, "{err}");
    let lines: Vec<u32> = out.lines().map(number).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[1], lines[0] + 1, "{out}");
    assert!(lines[0] >= 4, "the last lines, not the first: {out}");

    let mut follow = rkctl(&["logs", "-f", "counter", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rkctl logs -f");
    let rx = crate::harness::stdout_lines(&mut follow);
    let next = || rx.recv_timeout(Duration::from_secs(10)).expect("a followed line within 10 s");
    let first = number(&next());
    assert!(first >= lines[1], "tail 1 starts at the newest line: {first} after {lines:?}");
    // Lines written after rkctl started keep coming, in order, none skipped.
    for k in 1..=5 {
        assert_eq!(number(&next()), first + k);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    api.delete("counter", &DeleteParams { grace_period_seconds: Some(1), ..Default::default() }).await.expect("delete");
    wait_gone(&api, "counter", Duration::from_secs(30)).await;
}

/// resources.limits reach the container's cgroup (cpu quota and memory limit, v1 or v2 files),
/// and a container that goes over its memory limit is killed and reported as OOMKilled, as
/// kubectl shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_pod_limits_become_cgroup_limits_and_oom_kills_are_reported() {
    let (cluster, _agent, client) = setup(RuntimeKind::Runc).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    let limited = |name: &str, command: &[&str]| {
        let mut p = pod(name, "busybox", command);
        let spec = p.spec.as_mut().expect("spec");
        spec.restart_policy = "Never".into();
        spec.containers[0].resources = Some(ResourceRequirements {
            limits: [("cpu".to_string(), "250m".to_string()), ("memory".to_string(), "32Mi".to_string())].into(),
            ..Default::default()
        });
        p
    };
    api.create(&limited("calm", &["sh", "-c", "while true; do sleep 0.1; done"])).await.expect("create");
    // dd's 256 MiB buffer is filled from /dev/zero, so it is really used.
    api.create(&limited("hog", &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=4"])).await.expect("create");

    let calm = wait_pod(&api, "calm", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await;
    let id = main_status(&calm).expect("status").container_id.rsplit("://").next().expect("id").to_string();
    let read = |p: String| std::fs::read_to_string(&p).ok().map(|s| s.trim().to_string());
    let (cpu, memory) = match read(format!("/sys/fs/cgroup/rkube/{id}/cpu.max")) {
        Some(cpu) => (cpu, read(format!("/sys/fs/cgroup/rkube/{id}/memory.max"))),
        None => (
            format!(
                "{} {}",
                read(format!("/sys/fs/cgroup/cpu/rkube/{id}/cpu.cfs_quota_us")).unwrap_or_default(),
                read(format!("/sys/fs/cgroup/cpu/rkube/{id}/cpu.cfs_period_us")).unwrap_or_default()
            ),
            read(format!("/sys/fs/cgroup/memory/rkube/{id}/memory.limit_in_bytes")),
        ),
    };
    assert_eq!(cpu, "25000 100000", "cpu quota and period of container {id}");
    assert_eq!(memory.as_deref(), Some("33554432"), "memory limit of container {id}");

    let hog = wait_pod(&api, "hog", Duration::from_secs(60), "Failed", |p| phase(p) == "Failed").await;
    let t = main_status(&hog).and_then(|c| c.state.as_ref()?.terminated.clone()).expect("terminated");
    assert_eq!((t.reason.as_str(), t.exit_code), ("OOMKilled", 137));
    let (ok, out, err) = run(rkctl_cmd(&cluster.endpoints()).args(["get", "pod", "hog"]));
    assert!(ok, "{err}");
    let row: Vec<&str> = out.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row.get(1..3), Some(&["0/1", "OOMKilled"][..]), "{out}");
    for name in ["calm", "hog"] {
        api.delete(name, &DeleteParams { grace_period_seconds: Some(1), ..Default::default() }).await.expect("delete");
    }
    for name in ["calm", "hog"] {
        wait_gone(&api, name, Duration::from_secs(30)).await;
    }
}

/// `rkctl exec` through the API server and the kubelet: the command runs in the container with
/// its environment (and, with runc, in its namespaces: the pod's hostname, the image's root),
/// stdout and stderr come back apart, and a failing command's exit code becomes rkctl's.
async fn exec_runs_commands_in_the_container(kind: RuntimeKind) {
    let (cluster, _agent, client) = setup(kind).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    let mut p = pod("box", "busybox", &["sh", "-c", "while true; do sleep 0.1; done"]);
    p.spec.as_mut().expect("spec").containers[0].env =
        vec![EnvVar { name: "GREETING".into(), value: "hello from the pod".into() }];
    api.create(&p).await.expect("create");
    wait_pod(&api, "box", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await;
    let rkctl = |args: &[&str]| run(rkctl_cmd(&cluster.endpoints()).args(args));
    let (ok, out, err) = rkctl(&["exec", "box", "--", "sh", "-c", "echo $GREETING; echo to-stderr >&2"]);
    assert!(ok, "{err}");
    assert_eq!((out.as_str(), err.as_str()), ("hello from the pod\n", "to-stderr\n"));

    let failed =
        rkctl_cmd(&cluster.endpoints()).args(["exec", "box", "--", "sh", "-c", "exit 3"]).output().expect("rkctl exec");
    assert_eq!(failed.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&failed.stderr), "command terminated with exit code 3\n");

    if kind == RuntimeKind::Runc {
        let (ok, out, err) = rkctl(&["exec", "pod/box", "-c", "main", "--", "hostname"]);
        assert!(ok, "{err}");
        assert_eq!(out, "box\n", "the pod's own uts namespace");
        let (ok, out, _) = rkctl(&["exec", "box", "--", "ls", "/"]);
        assert!(ok && out.lines().any(|l| l == "bin") && !out.lines().any(|l| l == "home"), "the image's root: {out}");
    }

    let (ok, _, err) = rkctl(&["exec", "box", "-c", "nope", "--", "true"]);
    assert!(!ok && err.contains("container \"nope\" is not in pod box"), "{err}");
    let (ok, _, err) = rkctl(&["exec", "ghost", "--", "true"]);
    assert!(!ok && err.trim() == "Error from server (NotFound): pods \"ghost\" not found", "{err}");
    api.delete("box", &DeleteParams { grace_period_seconds: Some(1), ..Default::default() }).await.expect("delete");
    wait_gone(&api, "box", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_exec_runs_commands_in_the_container() {
    exec_runs_commands_in_the_container(RuntimeKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_exec_runs_commands_in_the_container() {
    exec_runs_commands_in_the_container(RuntimeKind::Process).await;
}

/// After what a reboot leaves (the agent and every container process gone, the network
/// namespaces gone, the state directory kept), the restarted agent does not adopt the dead
/// sandboxes: it removes them and builds new ones, and the pod runs and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_pods_come_back_after_their_network_namespaces_are_lost() {
    let (_cluster, mut agent, client) = setup(RuntimeKind::Runc).await;
    let api = Api::<Pod>::namespaced(&client, "default");
    api.create(&pod("phoenix", "httpd", &[])).await.expect("create");
    let before = wait_pod(&api, "phoenix", Duration::from_secs(60), "Running", running_and_ready).await;
    let id_before = main_status(&before).expect("status").container_id.clone();
    agent.kill();
    let mut seen = Seen::default();
    seen.record(&agent);
    assert_eq!(seen.sandboxes.len(), 1, "{seen:?}");
    for &(pid, ticks) in &seen.processes {
        if start_ticks(pid) == Some(ticks) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
    for sid in &seen.sandboxes {
        let status = Command::new("ip").args(["netns", "delete", &netns_name(sid)]).status().expect("ip netns delete");
        assert!(status.success(), "deleting the netns of {sid}");
    }
    agent.spawn();
    let after = wait_pod(&api, "phoenix", Duration::from_secs(60), "Running in a new container", |p| {
        running_and_ready(p) && main_status(p).is_some_and(|c| c.container_id != id_before)
    })
    .await;
    let ip: Ipv4Addr = after.status.as_ref().expect("status").pod_ip.parse().expect("pod IP");
    let body = http_get(ip, 80).await.expect("GET on the rebuilt pod");
    assert!(body.starts_with("HTTP/1."), "{body}");
    assert!(agent.log().contains("removing a sandbox whose network namespace is gone"), "{}", agent.log());
    api.delete("phoenix", &DeleteParams::default()).await.expect("delete");
    wait_gone(&api, "phoenix", Duration::from_secs(30)).await;
}
