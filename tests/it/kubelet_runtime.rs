//! The node-local kubelet against the real thing: Debian's docker-registry on loopback (filled by
//! `scripts/test-registry.sh` from busybox-static), runc as root, real network namespaces,
//! veths and iptables. The portable cases also run with the process runtime. Every fixture
//! removes what it created when it drops, also when the test fails, and the leak check looks
//! for processes, mounts, veths, netns files, cgroups and IP allocations left behind.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rkube::kubelet::image::archive;
use rkube::kubelet::network::{host_veth, netns_name, PodNetwork, NETNS_DIR};
use rkube::kubelet::{
    build_runtime, ContainerConfig, ContainerState, ContainerStatus, ImageError, ImageRef, ImageStore, NetworkConfig,
    PullPolicy, RegistryConfig, Runtime, RuntimeConfig, RuntimeKind, SandboxConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::RKUBE;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-registry.sh");
const DEPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/deps.sh");

/// The loopback registry, shared by the tests running at one time and stopped by the last.
pub struct Registry {
    dir: tempfile::TempDir,
    pub port: u16,
}

static REGISTRY: Mutex<Weak<Registry>> = Mutex::new(Weak::new());

impl Registry {
    pub fn get() -> Arc<Registry> {
        let mut slot = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.upgrade() {
            return r;
        }
        let r = Arc::new(Registry::start(None));
        *slot = Arc::downgrade(&r);
        r
    }

    /// A registry of its own; with `creds` (USER:PASSWORD) it requires basic auth.
    pub fn start(creds: Option<&str>) -> Registry {
        ensure_tools();
        let dir = tempfile::tempdir().expect("registry tempdir");
        let mut cmd = std::process::Command::new(SCRIPT);
        cmd.arg("start").arg(dir.path()).stderr(std::process::Stdio::inherit());
        if let Some(c) = creds {
            cmd.env("TEST_REGISTRY_CREDS", c);
        }
        let out = cmd.output().expect("running scripts/test-registry.sh");
        assert!(out.status.success(), "scripts/test-registry.sh start failed");
        let port = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the script prints the port");
        Registry { dir, port }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A registry config that reaches it as docker.io's mirror, over plain HTTP.
    pub fn config(&self) -> RegistryConfig {
        RegistryConfig { insecure: vec![self.host()], mirrors: vec![self.host()], credentials: Default::default() }
    }

    pub fn archive(&self, name: &str) -> PathBuf {
        self.dir.path().join("archives").join(name)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = std::process::Command::new(SCRIPT).arg("stop").arg(self.dir.path()).status();
    }
}

/// Installs the test tools if any is missing (CI runs as root on a fresh machine).
fn ensure_tools() {
    let missing: Vec<&str> = ["runc", "busybox", "docker-registry", "skopeo", "htpasswd", "ip", "iptables", "curl"]
        .into_iter()
        .filter(|t| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("kubelet tests: installing missing tools {missing:?} with scripts/deps.sh test");
        let ok = std::process::Command::new(DEPS).arg("test").status().is_ok_and(|s| s.success());
        assert!(ok, "scripts/deps.sh test failed; these tests need {missing:?}");
    }
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the runc kubelet tests need root (runc, network namespaces, iptables); run them as root"
    );
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One node: a runtime over a temporary state dir, an image store fed by the registry, and (for
/// runc) its own bridge and /24, so tests running at once do not share addresses.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub runtime: Arc<dyn Runtime>,
    pub images: ImageStore,
    pub network: Option<NetworkConfig>,
    /// Held so the registry outlives the node.
    _registry: Arc<Registry>,
}

impl Node {
    pub async fn new(kind: RuntimeKind) -> Node {
        if kind == RuntimeKind::Runc {
            require_root();
        }
        let registry = Registry::get();
        let dir = tempfile::tempdir().expect("node tempdir");
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let network = (kind == RuntimeKind::Runc).then(|| NetworkConfig {
            bridge: format!("rkt{}-{n}", std::process::id() % 100_000),
            cidr: format!("10.234.{}.0/24", std::process::id().wrapping_mul(7).wrapping_add(n) % 250)
                .parse()
                .expect("cidr"),
        });
        let runtime = Self::runtime(kind, dir.path(), network.clone()).await;
        let images = ImageStore::open(&dir.path().join("images"), registry.config()).expect("image store");
        Node { dir, runtime, images, network, _registry: registry }
    }

    pub async fn runtime(kind: RuntimeKind, dir: &Path, network: Option<NetworkConfig>) -> Arc<dyn Runtime> {
        let mut cfg = RuntimeConfig::new(dir.join("state"), network);
        cfg.kind = kind;
        cfg.shim = PathBuf::from(RKUBE);
        build_runtime(cfg).await.expect("building the runtime")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}/0.log"))
    }

    pub async fn image(&self, name: &str) -> rkube::kubelet::Image {
        self.images.ensure(&ImageRef::parse(name).expect("image ref"), PullPolicy::IfNotPresent).await.expect("pull")
    }

    pub async fn sandbox(&self, name: &str) -> rkube::kubelet::Sandbox {
        let cfg = SandboxConfig {
            uid: format!("uid-{name}"),
            name: name.into(),
            namespace: "default".into(),
            host_network: false,
        };
        self.runtime.run_sandbox(&cfg).await.expect("run sandbox")
    }

    /// Creates and starts a container running `command` from `image`.
    pub async fn run(&self, sandbox: &str, name: &str, image: &str, command: &[&str]) -> String {
        let cfg = ContainerConfig {
            name: name.into(),
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: self.log_path(name),
            ..Default::default()
        };
        self.run_config(sandbox, &cfg).await
    }

    pub async fn run_config(&self, sandbox: &str, cfg: &ContainerConfig) -> String {
        let image = self.image(&cfg.image).await;
        let id = self.runtime.create_container(sandbox, cfg, &image).await.expect("create container");
        self.runtime.start_container(&id).await.expect("start container");
        id
    }

    pub async fn wait_exit(&self, id: &str, within: Duration) -> ContainerStatus {
        let deadline = Instant::now() + within;
        loop {
            let s = self.runtime.container_status(id).await.expect("status");
            if s.state == ContainerState::Exited {
                return s;
            }
            assert!(Instant::now() < deadline, "container {id} still {:?} after {within:?}", s.state);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn remove_all(&self) {
        for s in self.runtime.list().await.expect("list") {
            self.runtime.remove_sandbox(&s.sandbox.id).await.expect("remove sandbox");
        }
    }

    /// Everything the runtime made is gone: processes, mounts, netns files, veths, cgroups, IPs.
    pub fn assert_no_leaks(&self, sandboxes: &[String], containers: &[(String, Option<u32>)]) {
        let state = self.state();
        let state_s = state.display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mountinfo.contains(&state_s), "mounts left under {state_s}");
        for (id, pid) in containers {
            if let Some(pid) = pid {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                assert!(stat.is_empty() || stat.contains(") Z "), "process {pid} of container {id} still runs");
            }
            for cg in [format!("/sys/fs/cgroup/memory/rkube/{id}"), format!("/sys/fs/cgroup/rkube/{id}")] {
                assert!(!Path::new(&cg).exists(), "cgroup {cg} left");
            }
            assert!(!state.join("containers").join(id).exists(), "container dir {id} left");
        }
        // No shim of this node is alive.
        for p in std::fs::read_dir("/proc").expect("proc").flatten() {
            if p.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                assert!(!cmdline.contains(&state_s), "process {:?} still runs: {cmdline}", p.file_name());
            }
        }
        let links = std::process::Command::new("ip").args(["-o", "link"]).output().expect("ip link").stdout;
        let links = String::from_utf8_lossy(&links);
        for sid in sandboxes {
            assert!(!Path::new(NETNS_DIR).join(netns_name(sid)).exists(), "netns of {sid} left");
            assert!(!links.contains(&format!(" {}@", host_veth(sid))), "veth of {sid} left");
            assert!(!state.join("sandboxes").join(sid).exists(), "sandbox dir {sid} left");
        }
        if let Some(net) = &self.network {
            let ipam = state.join("ipam").join(net.cidr.to_string().replace('/', "_"));
            let left: Vec<String> = std::fs::read_dir(&ipam)
                .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            assert!(left.iter().all(|n| n == "last"), "IP allocations left: {left:?}");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Runs on failure too: remove every sandbox, then the node's bridge and rules.
        let runtime = self.runtime.clone();
        let network = self.network.clone();
        let state = self.state();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cleanup runtime");
            rt.block_on(async move {
                if let Ok(list) = runtime.list().await {
                    for s in list {
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

async fn http_get(ip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect((ip, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    Ok(out)
}

async fn http_get_eventually(ip: Ipv4Addr, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get(ip, port).await {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => panic!("http://{ip}:{port}/ did not answer: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn log_text(path: &Path) -> String {
    rkube::kubelet::logs::read_log(path, None)
        .map(|lines| lines.iter().map(|l| String::from_utf8_lossy(&l.content).into_owned() + "\n").collect())
        .unwrap_or_default()
}

async fn wait_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = log_text(path);
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{needle:?} never reached {}; it has:\n{text}", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// runc only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_httpd_pod_from_the_registry_answers_on_its_pod_ip() {
    let node = Node::new(RuntimeKind::Runc).await;
    // A short name, resolved like Docker and pulled through the registry mirror.
    let sandbox = node.sandbox("web").await;
    let ip = sandbox.ip.expect("a pod IP");
    assert!(node.network.as_ref().expect("network").cidr.contains(ip));
    let cfg = ContainerConfig {
        name: "httpd".into(),
        image: "httpd".into(),
        log_path: node.log_path("httpd"),
        cpu_millis: Some(500),
        memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    let id = node.run_config(&sandbox.id, &cfg).await;
    let body = http_get_eventually(ip, 80).await;
    assert!(body.contains("hello from rkube"), "unexpected answer: {body}");
    // busybox httpd -v logs each response on stderr: it reaches the container's log file.
    wait_log(&cfg.log_path, "response:200").await;
    let status = node.runtime.container_status(&id).await.expect("status");
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.image_id, node.image("httpd").await.id);
    let pid = status.pid;
    node.remove_all().await;
    assert!(http_get(ip, 80).await.is_err(), "the pod IP still answers after removal");
    node.assert_no_leaks(&[sandbox.id], &[(id, pid)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_two_pods_on_a_node_reach_each_other_by_ip() {
    let node = Node::new(RuntimeKind::Runc).await;
    let server = node.sandbox("server").await;
    let server_ip = server.ip.expect("server IP");
    node.run(&server.id, "httpd", "httpd", &[]).await;
    http_get_eventually(server_ip, 80).await;
    let client = node.sandbox("client").await;
    assert_ne!(client.ip, server.ip);
    let url = format!("http://{server_ip}/");
    let id = node.run(&client.id, "wget", "busybox", &["wget", "-q", "-O", "-", &url]).await;
    let status = node.wait_exit(&id, Duration::from_secs(10)).await;
    let log = log_text(&node.log_path("wget"));
    assert_eq!(status.exit_code, Some(0), "wget failed: {log}");
    assert!(log.contains("hello from rkube"), "wget output: {log}");
    // The pod sees its own address on eth0 and has a default route via the bridge.
    let id = node.run(&client.id, "ipcfg", "busybox", &["sh", "-c", "ip -4 addr show eth0; ip route"]).await;
    node.wait_exit(&id, Duration::from_secs(10)).await;
    let out = log_text(&node.log_path("ipcfg"));
    let gw = node.network.as_ref().expect("network").cidr.gateway();
    assert!(out.contains(&client.ip.expect("client IP").to_string()), "{out}");
    assert!(out.contains(&format!("default via {gw}")), "{out}");
    let sandboxes = vec![server.id.clone(), client.id.clone()];
    node.remove_all().await;
    node.assert_no_leaks(&sandboxes, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_memory_limit_is_enforced_and_reported_as_oomkilled() {
    let node = Node::new(RuntimeKind::Runc).await;
    let sandbox = node.sandbox("hog").await;
    let cfg = ContainerConfig {
        name: "hog".into(),
        image: "busybox".into(),
        // dd's 256 MiB buffer is filled from /dev/zero, so it is really used.
        command: vec!["dd".into(), "if=/dev/zero".into(), "of=/dev/null".into(), "bs=256M".into(), "count=4".into()],
        memory_bytes: Some(32 << 20),
        log_path: node.log_path("hog"),
        ..Default::default()
    };
    let id = node.run_config(&sandbox.id, &cfg).await;
    let status = node.wait_exit(&id, Duration::from_secs(20)).await;
    assert!(status.oom_killed, "not OOM-killed: {status:?}");
    assert_eq!((status.reason.as_deref(), status.exit_code), (Some("OOMKilled"), Some(137)));
    // Within the limit the same command completes.
    let ok = ContainerConfig {
        name: "fits".into(),
        command: vec!["dd".into(), "if=/dev/zero".into(), "of=/dev/null".into(), "bs=1M".into(), "count=4".into()],
        log_path: node.log_path("fits"),
        ..cfg
    };
    let id = node.run_config(&sandbox.id, &ok).await;
    let status = node.wait_exit(&id, Duration::from_secs(20)).await;
    assert_eq!((status.oom_killed, status.exit_code), (false, Some(0)));
    node.remove_all().await;
    node.assert_no_leaks(&[sandbox.id], &[(id, None)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_fail_with_a_clear_error() {
    let registry = Registry::get();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path(), registry.config()).expect("store");
    let missing = ImageRef::parse(&format!("{}/library/nosuch:1.0", registry.host())).expect("ref");
    let err = store.ensure(&missing, PullPolicy::IfNotPresent).await.expect_err("a missing image");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("image {missing} not found in {}", registry.host()));
    let err = store.ensure(&missing, PullPolicy::Never).await.expect_err("never pull");
    assert!(matches!(err, ImageError::NeverPull { .. }), "{err:?}");
    let nowhere = ImageRef::parse("127.0.0.1:1/library/httpd").expect("ref");
    let err = store.pull(&nowhere).await.expect_err("no registry there");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    // Present after a pull; Never then uses it without asking the registry.
    let httpd = ImageRef::parse(&format!("{}/library/httpd", registry.host())).expect("ref");
    let pulled = store.ensure(&httpd, PullPolicy::IfNotPresent).await.expect("pull");
    let again = store.ensure(&httpd, PullPolicy::Never).await.expect("local");
    assert_eq!(pulled.id, again.id);
    assert!(pulled.rootfs.join("bin/busybox").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_basic_auth_is_required_and_honoured() {
    let registry = Registry::start(Some("alice:s3cret"));
    let image = ImageRef::parse(&format!("{}/library/busybox", registry.host())).expect("ref");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = RegistryConfig { insecure: vec![registry.host()], ..Default::default() };
    let anonymous = ImageStore::open(&dir.path().join("a"), cfg.clone()).expect("store");
    let err = anonymous.pull(&image).await.expect_err("anonymous pull");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("no credentials are configured"), "{err}");
    let creds = |p: &str| rkube::kubelet::image::Credentials { username: "alice".into(), password: p.into() };
    cfg.credentials.insert(registry.host(), creds("wrong"));
    let wrong = ImageStore::open(&dir.path().join("w"), cfg.clone()).expect("store");
    let err = wrong.pull(&image).await.expect_err("wrong password");
    assert!(err.to_string().contains("credentials were refused"), "{err}");
    cfg.credentials.insert(registry.host(), creds("s3cret"));
    let ok = ImageStore::open(&dir.path().join("ok"), cfg).expect("store");
    let pulled = ok.pull(&image).await.expect("pull with credentials");
    assert!(pulled.rootfs.join("bin/sh").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_runc_as_root_and_process_is_always_there() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let auto = Node::runtime(RuntimeKind::Auto, dir.path(), None).await;
    assert_eq!(auto.name(), "runc");
    assert!(auto.version().starts_with("runc 1."), "{}", auto.version());
    let process = Node::runtime(RuntimeKind::Process, dir.path(), None).await;
    assert_eq!((process.name(), process.version().as_str()), ("process", "process (no isolation)"));
    // Without a pod network, runc still runs hostNetwork pods and refuses the others clearly.
    let cfg = SandboxConfig { uid: "u".into(), name: "p".into(), namespace: "default".into(), host_network: false };
    let err = auto.run_sandbox(&cfg).await.expect_err("no pod network");
    assert!(err.to_string().contains("no pod network configured"), "{err}");
    assert!(auto.list().await.expect("list").is_empty(), "a failed sandbox leaves no record");
    let host = auto.run_sandbox(&SandboxConfig { host_network: true, ..cfg }).await.expect("host network");
    assert_eq!((host.ip, host.netns), (None, None));
    // A hostNetwork container sees the node's interfaces and hostname.
    let registry = Registry::get();
    let images = ImageStore::open(&dir.path().join("images"), registry.config()).expect("store");
    let image = images.ensure(&ImageRef::parse("busybox").expect("ref"), PullPolicy::IfNotPresent).await.expect("pull");
    let log = dir.path().join("hostnet.log");
    let c = ContainerConfig {
        name: "hostnet".into(),
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), "hostname; ip -o link".into()],
        log_path: log.clone(),
        ..Default::default()
    };
    let id = auto.create_container(&host.id, &c, &image).await.expect("create");
    auto.start_container(&id).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while auto.container_status(&id).await.expect("status").state != ContainerState::Exited {
        assert!(Instant::now() < deadline, "the hostNetwork container did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = log_text(&log);
    let node_name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname").trim().to_string();
    assert!(out.lines().next() == Some(node_name.as_str()), "hostname in the container: {out}");
    let host_links = std::process::Command::new("ip").args(["-o", "link"]).output().expect("ip link").stdout;
    let first_host_link = String::from_utf8_lossy(&host_links)
        .lines()
        .nth(1)
        .and_then(|l| l.split(':').nth(1))
        .map(|n| n.trim().to_string())
        .expect("a second host interface");
    assert!(out.contains(&first_host_link), "host interface {first_host_link} not seen: {out}");
    auto.remove_sandbox(&host.id).await.expect("remove");
    assert!(auto.list().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_import_reads_docker_save_and_oci_archives() {
    let registry = Registry::get();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path(), RegistryConfig::default()).expect("store");
    let docker = archive::import(&store, &registry.archive("httpd-docker.tar"), None).await.expect("docker save");
    assert_eq!(docker[0].names, vec!["example.com/demo/httpd:v1".to_string()]);
    let named = ImageRef::parse("local/httpd:oci").expect("ref");
    let oci = archive::import(&store, &registry.archive("httpd-oci.tar"), Some(&named)).await.expect("oci");
    assert_eq!(oci[0].id, docker[0].id, "the same config is the same image");
    assert!(oci[0].rootfs.join("www/index.html").is_file());
    // The CLI over the same store.
    let out = std::process::Command::new(RKUBE)
        .args(["image", "--image-dir"])
        .arg(dir.path())
        .arg("ls")
        .output()
        .expect("rkube image ls");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("example.com/demo/httpd:v1") && text.contains("docker.io/local/httpd:oci"), "{text}");
    let bad = dir.path().join("bad.tar");
    std::fs::write(&bad, b"not a tarball").expect("write");
    let out = std::process::Command::new(RKUBE)
        .args(["image", "--image-dir"])
        .arg(dir.path())
        .arg("import")
        .arg(&bad)
        .output()
        .expect("rkube image import");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: malformed archive"), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// Both runtimes

async fn stop_honours_sigterm_and_the_grace_period(kind: RuntimeKind) {
    let node = Node::new(kind).await;
    let sandbox = node.sandbox("term").await;
    let trap = "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    let polite = node.run(&sandbox.id, "polite", "busybox", &["sh", "-c", trap]).await;
    let ignore = "trap '' TERM; echo ready; while true; do sleep 0.1; done";
    let stubborn = node.run(&sandbox.id, "stubborn", "busybox", &["sh", "-c", ignore]).await;
    wait_log(&node.log_path("polite"), "ready").await;
    wait_log(&node.log_path("stubborn"), "ready").await;

    let grace = Duration::from_secs(2);
    let t = Instant::now();
    let s = node.runtime.stop_container(&polite, Signal::SIGTERM, grace).await.expect("stop polite");
    assert!(t.elapsed() < grace, "a container that handles SIGTERM stops at once ({:?})", t.elapsed());
    assert_eq!((s.state, s.exit_code, s.reason.as_deref()), (ContainerState::Exited, Some(0), Some("Completed")));
    wait_log(&node.log_path("polite"), "got TERM").await;

    let t = Instant::now();
    let s = node.runtime.stop_container(&stubborn, Signal::SIGTERM, grace).await.expect("stop stubborn");
    assert!(t.elapsed() >= grace, "killed before its grace period ended ({:?})", t.elapsed());
    assert!(t.elapsed() < grace + Duration::from_secs(3), "took too long after the grace period");
    assert_eq!((s.exit_code, s.signal), (Some(137), Some(9)), "{s:?}");
    // Stopping again is harmless.
    node.runtime.stop_container(&stubborn, Signal::SIGTERM, grace).await.expect("stop again");
    node.remove_all().await;
    node.assert_no_leaks(&[sandbox.id], &[(polite, None), (stubborn, None)]);
}

async fn output_reaches_the_log_file_and_exit_codes_are_reported(kind: RuntimeKind) {
    let node = Node::new(kind).await;
    let sandbox = node.sandbox("logs").await;
    let script = "echo to stdout; echo to stderr >&2; echo $GREETING; exit 3";
    let cfg = ContainerConfig {
        name: "echo".into(),
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("GREETING".into(), "hello from env".into())],
        log_path: node.log_path("echo"),
        ..Default::default()
    };
    let id = node.run_config(&sandbox.id, &cfg).await;
    let s = node.wait_exit(&id, Duration::from_secs(10)).await;
    assert_eq!((s.exit_code, s.reason.as_deref()), (Some(3), Some("Error")));
    assert!(s.started_at.is_some() && s.finished_at >= s.started_at);
    let lines = rkube::kubelet::logs::read_log(&cfg.log_path, None).expect("log");
    let got: Vec<(rkube::kubelet::Stream, String)> =
        lines.iter().map(|l| (l.stream, String::from_utf8_lossy(&l.content).into_owned())).collect();
    use rkube::kubelet::Stream::*;
    assert!(got.contains(&(Stdout, "to stdout".into())), "{got:?}");
    assert!(got.contains(&(Stderr, "to stderr".into())), "{got:?}");
    assert!(got.contains(&(Stdout, "hello from env".into())), "{got:?}");
    assert_eq!(rkube::kubelet::logs::read_log(&cfg.log_path, Some(1)).expect("tail").len(), 1);
    // A command that does not exist fails to start, with the reason.
    let bad = ContainerConfig {
        name: "bad".into(),
        command: vec!["/no/such/binary".into()],
        log_path: node.log_path("bad"),
        ..cfg.clone()
    };
    let image = node.image("busybox").await;
    let bid = node.runtime.create_container(&sandbox.id, &bad, &image).await.expect("create");
    let err = node.runtime.start_container(&bid).await.expect_err("cannot start");
    assert!(err.to_string().contains("/no/such/binary"), "{err}");
    let s = node.runtime.container_status(&bid).await.expect("status");
    assert_eq!((s.state, s.reason.as_deref()), (ContainerState::Exited, Some("StartError")));
    node.remove_all().await;
    node.assert_no_leaks(&[sandbox.id], &[(id, None), (bid, None)]);
}

async fn a_new_runtime_adopts_running_containers(kind: RuntimeKind) {
    let node = Node::new(kind).await;
    let sandbox = node.sandbox("adopt").await;
    let id = node.run(&sandbox.id, "loop", "busybox", &["sh", "-c", "while true; do echo tick; sleep 0.2; done"]).await;
    let before = node.runtime.container_status(&id).await.expect("status");
    // A restarted kubelet: a new runtime instance over the same state directory.
    let again = Node::runtime(kind, node.dir.path(), node.network.clone()).await;
    let list = again.list().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].sandbox, sandbox);
    assert_eq!(list[0].containers.len(), 1);
    let c = &list[0].containers[0];
    assert_eq!((c.id.as_str(), c.state, c.pid), (id.as_str(), ContainerState::Running, before.pid));
    // It still logs, and the new instance stops it.
    let n = log_text(&node.log_path("loop")).matches("tick").count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while log_text(&node.log_path("loop")).matches("tick").count() <= n {
        assert!(Instant::now() < deadline, "the adopted container stopped logging");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = again.stop_container(&id, Signal::SIGTERM, Duration::from_secs(1)).await.expect("stop");
    assert_eq!(s.state, ContainerState::Exited);
    again.remove_sandbox(&sandbox.id).await.expect("remove");
    node.assert_no_leaks(&[sandbox.id], &[(id, before.pid)]);
}

async fn a_container_whose_shim_died_is_unknown_and_removal_kills_it(kind: RuntimeKind) {
    let node = Node::new(kind).await;
    let sandbox = node.sandbox("orphan").await;
    let id = node.run(&sandbox.id, "loop", "busybox", &["sh", "-c", "while true; do sleep 0.2; done"]).await;
    let pid = node.runtime.container_status(&id).await.expect("status").pid.expect("pid");
    let started: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.state().join("containers").join(&id).join("started.json")).expect("started.json"),
    )
    .expect("json");
    let shim = started["shim_pid"].as_i64().expect("shim pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), Signal::SIGKILL).expect("kill the shim");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = node.runtime.container_status(&id).await.expect("status");
        if s.state == ContainerState::Unknown {
            assert!(s.message.as_deref().is_some_and(|m| m.contains("supervisor")), "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still {:?} after its shim was killed", s.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the container outlives its shim");
    node.remove_all().await;
    node.assert_no_leaks(&[sandbox.id], &[(id, Some(pid))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_container_whose_shim_died_is_unknown_and_removal_kills_it() {
    a_container_whose_shim_died_is_unknown_and_removal_kills_it(RuntimeKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_container_whose_shim_died_is_unknown_and_removal_kills_it() {
    a_container_whose_shim_died_is_unknown_and_removal_kills_it(RuntimeKind::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_stop_honours_sigterm_and_the_grace_period() {
    stop_honours_sigterm_and_the_grace_period(RuntimeKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_stop_honours_sigterm_and_the_grace_period() {
    stop_honours_sigterm_and_the_grace_period(RuntimeKind::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_output_reaches_the_log_file_and_exit_codes_are_reported() {
    output_reaches_the_log_file_and_exit_codes_are_reported(RuntimeKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_output_reaches_the_log_file_and_exit_codes_are_reported() {
    output_reaches_the_log_file_and_exit_codes_are_reported(RuntimeKind::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_new_runtime_adopts_running_containers() {
    a_new_runtime_adopts_running_containers(RuntimeKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_new_runtime_adopts_running_containers() {
    a_new_runtime_adopts_running_containers(RuntimeKind::Process).await;
}

/// Start latency with the image present: create + start of a container in an existing
/// sandbox, and of a whole pod (sandbox with its network + container). Prints p50/p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_start_latency_with_the_image_present() {
    let runs: usize = std::env::var("RKUBE_START_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let node = Node::new(RuntimeKind::Runc).await;
    let image = node.image("busybox").await;
    let mut container = Vec::new();
    let mut pod = Vec::new();
    for i in 0..runs {
        let cfg = ContainerConfig {
            name: format!("c{i}"),
            image: "busybox".into(),
            command: vec!["sleep".into(), "3600".into()],
            log_path: node.log_path(&format!("c{i}")),
            ..Default::default()
        };
        let t = Instant::now();
        let sandbox = node.sandbox(&format!("p{i}")).await;
        let t_container = Instant::now();
        let id = node.runtime.create_container(&sandbox.id, &cfg, &image).await.expect("create");
        node.runtime.start_container(&id).await.expect("start");
        container.push(t_container.elapsed());
        pod.push(t.elapsed());
        let s = node.runtime.container_status(&id).await.expect("status");
        assert_eq!(s.state, ContainerState::Running);
        node.runtime.remove_sandbox(&sandbox.id).await.expect("remove");
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1).min(v.len() - 1)]
    };
    let (c50, c99, p50, p99) =
        (pct(&mut container, 0.5), pct(&mut container, 0.99), pct(&mut pod, 0.5), pct(&mut pod, 0.99));
    eprintln!(
        "runc start latency over {runs} runs (image present): container create+start p50 {c50:?} p99 {c99:?}; \
         pod (sandbox+network+container) p50 {p50:?} p99 {p99:?}"
    );
    assert!(p99 < Duration::from_secs(5), "pod start p99 {p99:?}");
    node.assert_no_leaks(&[], &[]);
}
