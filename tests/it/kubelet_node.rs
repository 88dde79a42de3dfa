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

use crate::harness::{free_port, Cluster, RKUBE};
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.delete("trap", &DeleteParams::default()).await.expect("delete");
    api.delete("stubborn", &DeleteParams::default()).await.expect("delete");
    let trap_took = wait_gone(&api, "trap", Duration::from_secs(30)).await;
    let stubborn_took = wait_gone(&api, "stubborn", Duration::from_secs(30)).await;
    assert!(trap_took < Duration::from_secs(5), "the trapping container exits at SIGTERM: {trap_took:?}");
    assert!(stubborn_took >= Duration::from_millis(2500), "killed only after the grace: {stubborn_took:?}");
    let uid = &t.meta().uid;
    let path = rkube::kubelet::pod_log_path(&agent.log_root(), "default", "trap", uid, "main", 0);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(text.contains("got TERM"), "log {}: {text:?}", path.display());
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
