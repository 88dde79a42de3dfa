//! `bench-pods`: pod start-up on one real node (issue 5): how long a pod takes from its create
//! call to Running, and from its delete call to gone, with the image already on the node, and
//! the same containers through Docker on the same machine as the anchor.
//!
//! - `rkube`: against a running `rkube server` and one `rkube node` (runc): waits until the node
//!   is Ready, runs one warm-up pod (it pulls the image), then `--count` pods three times: one
//!   at a time, in batches of `--batch` (create a batch at once, wait until all of it runs, the
//!   next batch; then delete the same way) and all at once (create all, wait, delete all).
//!   Everything is seen
//!   through one pod watch opened before the first create: create → Running runs from sending
//!   the create to the watch event showing `status.phase == Running`, delete → gone from
//!   sending the delete to the DELETED event. The watch also gives where the time goes (the
//!   create answered, the pod bound, the kubelet's first status, Running).
//! - `docker`: the anchor. The same containers (same image, same command) by `docker run -d`,
//!   one at a time, `--batch` at once and all at once, then `docker rm -f` the same way;
//!   latency from starting the
//!   command to its exit (`docker run -d` returns once the container started), and a
//!   `docker inspect` afterwards checks that every container runs.
//! - `runc`: the floor under any kubelet that drives runc: the same command in the same busybox
//!   files, started by `runc run --detach` from one prepared bundle (new namespaces, the
//!   network one empty; no image store, no pod network, no shim, no API), the same three ways,
//!   then `runc delete --force`. Latency from starting `runc run` to its exit (it returns once
//!   the container's process runs); `runc list` afterwards checks that every container runs.
//! - `report`: prints the JSON lines of the three as Markdown: figures side by side, the phases,
//!   memory, and the target (create → Running p99 ≤ 0.5 s, a tenth of Kubernetes' 5 s SLO).
//! - `cleanup`: removes what a node left behind (sandboxes, their namespaces and veths, the
//!   bridge and its iptables rules) after the node is stopped, as tests/it does.
//!
//! Percentiles are nearest-rank over the pods of a run: with 100 pods, p99 is the 99th fastest.

#[path = "../common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::{Args, Parser, Subcommand};
use parking_lot::Mutex;
use rkube::api::v1::{Node, Pod};
use rkube::api::Object;
use rkube::client::{Api, Client, DeleteParams, ListParams};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

/// The target: create → Running p99 at most this, in milliseconds.
const TARGET_P99_MS: f64 = 500.0;
/// Kubernetes' pod start-up SLO (stateless pods, image pull excluded, creation to Running as
/// observed through a watch): p99 ≤ 5 s.
const KUBE_SLO_P99_MS: f64 = 5000.0;
/// The label every benchmark pod carries (the watch selects on it).
const LABEL: (&str, &str) = ("bench", "pods");
/// The container's command, in the pods and in Docker alike: the image's busybox httpd, under a
/// shell that exits on SIGTERM. busybox httpd as PID 1 ignores SIGTERM (PID 1 gets no default
/// signal action), so as the image's entrypoint every delete would wait out the grace period.
const COMMAND: [&str; 3] = ["/bin/sh", "-c", "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /www & wait"];

#[derive(Parser)]
#[command(
    name = "bench-pods",
    about = "pod start-up on one node: create → Running, delete → gone; Docker as the anchor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pods on an rkube node.
    Rkube(RkubeOpts),
    /// The same containers through Docker (the anchor).
    Docker(DockerOpts),
    /// The same command started by runc alone from a prepared bundle: the floor.
    Runc(RuncOpts),
    /// Prints the JSON lines of `rkube` and `docker` as Markdown.
    Report { files: Vec<PathBuf> },
    /// Removes the sandboxes, network namespaces, veths, bridge and iptables rules a stopped
    /// `rkube node` left.
    Cleanup(CleanupOpts),
}

#[derive(Args, Clone, Debug)]
struct Shape {
    /// Pods (containers) per run.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Pods created (and deleted) at once in the batched run.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Runs, in order: `one` (one pod at a time), `batches`, `all`.
    #[arg(long, value_delimiter = ',', default_value = "one,batches,all")]
    modes: Vec<String>,
    /// Give up waiting for a batch after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Append one JSON object per run to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
struct RkubeOpts {
    /// Masters' client API addresses, comma-separated.
    #[arg(long, env = "BENCH_ENDPOINTS", default_value = "127.0.0.1:6443")]
    endpoints: String,
    /// Namespace of the pods (created if missing).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// The node that runs them (the pods are left to the scheduler; it is the only node).
    #[arg(long, default_value = "bench-node")]
    node: String,
    /// The pods' image (present on the node after the warm-up pod).
    #[arg(long, default_value = "httpd")]
    image: String,
    /// Processes whose memory (Pss) is read once all pods of a run are Running: NAME=PID.
    /// The node's shims (processes running the node's executable with `shim`) are added up.
    #[arg(long, value_delimiter = ',')]
    memory: Vec<String>,
    #[command(flatten)]
    shape: Shape,
}

#[derive(Args, Clone, Debug)]
struct DockerOpts {
    /// The docker client.
    #[arg(long, default_value = "docker")]
    docker: PathBuf,
    /// The image (loaded beforehand).
    #[arg(long, default_value = "example.com/demo/httpd:v1")]
    image: String,
    /// Container names start with this; containers so named are removed before and after.
    #[arg(long, default_value = "rkube-bench-pods")]
    prefix: String,
    #[command(flatten)]
    shape: Shape,
}

#[derive(Args, Clone, Debug)]
struct RuncOpts {
    /// The runc executable.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// busybox-static: the rootfs is this one program (as `/bin/busybox` and `/bin/sh`).
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// A new directory for the bundle, runc's state and its log; removed afterwards.
    #[arg(long)]
    work_dir: PathBuf,
    #[command(flatten)]
    shape: Shape,
}

#[derive(Args, Clone, Debug)]
struct CleanupOpts {
    /// The node's --state-dir.
    #[arg(long)]
    state_dir: PathBuf,
    /// The node's --bridge.
    #[arg(long)]
    bridge: String,
    /// The node's --pod-cidr.
    #[arg(long)]
    pod_cidr: String,
    /// The rkube executable the node ran (its shims).
    #[arg(long)]
    shim: PathBuf,
}

/// Percentiles of a run's latencies, in milliseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct Dist {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Dist {
    fn of(mut ms: Vec<f64>) -> Option<Dist> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least q of the values at or below it.
        let q = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Some(Dist {
            n: ms.len(),
            p50: round(q(0.5)),
            p90: round(q(0.9)),
            p99: round(q(0.99)),
            max: round(ms[ms.len() - 1]),
        })
    }
}

/// One run (`system` × `mode`), as a JSON line.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct RunResult {
    system: String,
    mode: String,
    count: usize,
    batch: usize,
    /// Pods (containers) that reached Running.
    running: usize,
    create_to_running: Option<Dist>,
    /// Pods Running per second, from the first create sent to the last pod Running.
    pods_per_sec: f64,
    /// From the first create sent to the last pod Running, seconds.
    all_running_secs: f64,
    delete_to_gone: Option<Dist>,
    /// From the first delete sent to the last pod gone, seconds.
    all_gone_secs: f64,
    /// rkube only: create sent → each step as the watch saw it (`create answered`, `bound`,
    /// `kubelet's first status`, `Running`), and delete sent → `terminating` → `gone`.
    phases: BTreeMap<String, Dist>,
    /// Memory (Pss) once all were Running, KiB, by process (or group of processes).
    pss_kib: BTreeMap<String, u64>,
    errors: BTreeMap<String, usize>,
    load_before: String,
    load_after: String,
    notes: Vec<String>,
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn write_json(path: &Option<PathBuf>, r: &RunResult) -> anyhow::Result<()> {
    let line = serde_json::to_string(r)?;
    eprintln!("bench-pods: {line}");
    if let Some(path) = path {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn mode_name(mode: &str, s: &Shape) -> anyhow::Result<String> {
    Ok(match mode {
        "one" => "one at a time".to_string(),
        "batches" => format!("batches of {}", s.batch),
        "all" => format!("all {} at once", s.count),
        m => bail!("unknown mode {m:?} (one, batches, all)"),
    })
}

/// The groups of pod numbers created at once in `mode`.
fn groups(mode: &str, s: &Shape) -> Vec<Vec<usize>> {
    let size = match mode {
        "one" => 1,
        "batches" => s.batch.max(1),
        _ => s.count.max(1),
    };
    (0..s.count).collect::<Vec<_>>().chunks(size).map(|c| c.to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------
// Memory

/// The proportional set size of a process (Pss: its private pages, and its share of pages it
/// shares, such as the executable's text that 100 shims map), KiB; sums of it over processes
/// count shared pages once.
fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Every process: (pid, executable, argv).
fn processes() -> Vec<(u32, Option<PathBuf>, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()?
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some((pid, exe, argv))
    })
    .collect()
}

/// Sums Pss over the processes `pick` selects: (processes, KiB).
fn pss_of(pick: impl Fn(&Option<PathBuf>, &[String]) -> bool) -> (usize, u64) {
    processes()
        .into_iter()
        .filter(|(_, exe, argv)| pick(exe, argv))
        .fold((0, 0), |(n, kib), (pid, _, _)| (n + 1, kib + pss_kib(pid).unwrap_or(0)))
}

// ---------------------------------------------------------------------------------------------
// rkube

/// What the watch saw of one pod: offsets from the start of the benchmark.
#[derive(Debug, Clone, Default)]
struct Seen {
    sent: Option<Duration>,
    answered: Option<Duration>,
    bound: Option<Duration>,
    /// The kubelet's first status (it sets startTime).
    kubelet: Option<Duration>,
    running: Option<Duration>,
    delete_sent: Option<Duration>,
    terminating: Option<Duration>,
    deleted: Option<Duration>,
    /// The last status seen: phase and the first container's waiting reason.
    last: String,
}

/// When the watch saw one step of a pod.
type Mark = fn(&Seen) -> Option<Duration>;

#[derive(Default)]
struct Tracker {
    pods: HashMap<String, Seen>,
}

impl Tracker {
    fn observe(&mut self, at: Duration, pod: &Pod, deleted: bool) {
        let s = self.pods.entry(pod.meta().name.clone()).or_default();
        if deleted {
            s.deleted.get_or_insert(at);
            return;
        }
        if !pod.meta().deletion_timestamp.is_empty() {
            s.terminating.get_or_insert(at);
        }
        if pod.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()) {
            s.bound.get_or_insert(at);
        }
        if let Some(st) = &pod.status {
            if !st.start_time.is_empty() {
                s.kubelet.get_or_insert(at);
            }
            if st.phase == "Running" && pod.meta().deletion_timestamp.is_empty() {
                s.running.get_or_insert(at);
            }
            let waiting = st
                .container_statuses
                .first()
                .and_then(|c| c.state.as_ref())
                .and_then(|c| c.waiting.as_ref())
                .map(|w| format!(" ({}: {})", w.reason, w.message))
                .unwrap_or_default();
            s.last = format!("{}{waiting} {}", st.phase, st.message).trim_end().to_string();
        }
    }
}

fn pod_object(ns: &str, name: &str, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {LABEL.0: LABEL.1}},
        "spec": {"containers": [{
            "name": "httpd",
            "image": image,
            // The image is on the node: never look it up again (`:latest` would mean Always).
            "imagePullPolicy": "IfNotPresent",
            "command": COMMAND,
        }]}
    }))?)
}

/// Waits until `done` of every pod in `names` holds, waking on watch events.
async fn wait_for(
    tracker: &Mutex<Tracker>,
    changed: &tokio::sync::Notify,
    names: &[String],
    what: &str,
    timeout: Duration,
    done: impl Fn(&Seen) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let notified = changed.notified();
        let left: Vec<String> = {
            let t = tracker.lock();
            names
                .iter()
                .filter(|n| !t.pods.get(*n).is_some_and(&done))
                .map(|n| format!("{n}: {}", t.pods.get(n).map_or("not seen", |s| s.last.as_str())))
                .collect()
        };
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} of {} pods not {what} after {timeout:?}: {}", left.len(), names.len(), left.join("; "));
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!("bench-pods: waiting for {} pods to be {what}, e.g. {}", left.len(), left[0]);
            last_report = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
    }
}

async fn wait_node(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let nodes = Api::<Node>::all(client);
    let deadline = Instant::now() + timeout;
    loop {
        let ready = match nodes.get_opt(name).await {
            Ok(Some(n)) => n
                .status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True")),
            Ok(None) => false,
            Err(e) => {
                eprintln!("bench-pods: reading node {name}: {e}");
                false
            }
        };
        if ready {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "node {name} is not Ready after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the benchmark shares between its steps.
struct Bench {
    api: Api<Pod>,
    ns: String,
    image: String,
    start: Instant,
    tracker: Arc<Mutex<Tracker>>,
    changed: Arc<tokio::sync::Notify>,
    timeout: Duration,
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Bench {
    /// Creates `names` at once; returns the names whose create succeeded.
    async fn create(&self, names: &[String]) -> anyhow::Result<Vec<String>> {
        let creates = names.iter().map(|name| async move {
            let pod = pod_object(&self.ns, name, &self.image)?;
            self.tracker.lock().pods.entry(name.clone()).or_default().sent = Some(self.start.elapsed());
            let r = self.api.create(&pod).await;
            let at = self.start.elapsed();
            match r {
                Ok(_) => {
                    self.tracker.lock().pods.entry(name.clone()).or_default().answered = Some(at);
                    Ok::<_, anyhow::Error>(Some(name.clone()))
                }
                Err(e) => {
                    *self.errors.lock().entry(format!("create: {e}")).or_default() += 1;
                    Ok(None)
                }
            }
        });
        let done = futures::future::try_join_all(creates).await?;
        Ok(done.into_iter().flatten().collect())
    }

    /// Deletes `names` at once (default grace period).
    async fn delete(&self, names: &[String]) -> Vec<String> {
        let deletes = names.iter().map(|name| async move {
            self.tracker.lock().pods.entry(name.clone()).or_default().delete_sent = Some(self.start.elapsed());
            match self.api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Some(name.clone()),
                Err(e) if e.is_not_found() => Some(name.clone()),
                Err(e) => {
                    *self.errors.lock().entry(format!("delete: {e}")).or_default() += 1;
                    None
                }
            }
        });
        futures::future::join_all(deletes).await.into_iter().flatten().collect()
    }

    async fn wait(&self, names: &[String], what: &str, done: impl Fn(&Seen) -> bool) -> anyhow::Result<()> {
        wait_for(&self.tracker, &self.changed, names, what, self.timeout, done).await
    }
}

async fn rkube(o: &RkubeOpts) -> anyhow::Result<()> {
    let s = &o.shape;
    ensure!(s.count >= 1 && s.batch >= 1, "--count and --batch must be at least 1");
    let modes: Vec<(String, String)> =
        s.modes.iter().map(|m| Ok((m.clone(), mode_name(m, s)?))).collect::<anyhow::Result<_>>()?;
    let client = Client::from_list(&o.endpoints)?;
    let timeout = Duration::from_secs(s.timeout_secs);
    eprintln!("bench-pods: waiting for node {} to be Ready", o.node);
    wait_node(&client, &o.node, timeout).await?;
    common::ensure_namespace(&client, &o.namespace).await?;
    let api = Api::<Pod>::namespaced(&client, &o.namespace);
    let selector = format!("{}={}", LABEL.0, LABEL.1);
    let (items, meta) = api.list(&ListParams::default().labels(&selector)).await?;
    ensure!(items.is_empty(), "{} pods labelled {selector} exist in namespace {} already", items.len(), o.namespace);
    let bench = Bench {
        api: api.clone(),
        ns: o.namespace.clone(),
        image: o.image.clone(),
        start: Instant::now(),
        tracker: Arc::new(Mutex::new(Tracker::default())),
        changed: Arc::new(tokio::sync::Notify::new()),
        timeout,
        errors: Mutex::new(BTreeMap::new()),
    };
    let params = ListParams::default().labels(&format!("{}={}", LABEL.0, LABEL.1));
    let (tracker, changed) = (bench.tracker.clone(), bench.changed.clone());
    let watch = common::spawn_pod_watch(
        api,
        params,
        meta.resource_version,
        bench.start,
        move |at, pod, deleted| tracker.lock().observe(at, pod, deleted),
        move || changed.notify_waiters(),
    );
    // The watch opens lazily: give it a moment before the first create.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Warm-up: one pod pulls the image (and sets up the node's bridge); then it goes.
    let warm = vec!["warmup".to_string()];
    eprintln!("bench-pods: warm-up pod (pulls {})", o.image);
    ensure!(bench.create(&warm).await? == warm, "creating the warm-up pod failed: {:?}", bench.errors.lock());
    bench.wait(&warm, "Running", |s| s.running.is_some()).await?;
    let warm_secs = {
        let t = bench.tracker.lock();
        let w = &t.pods["warmup"];
        (w.running.unwrap_or_default().saturating_sub(w.sent.unwrap_or_default())).as_secs_f64()
    };
    bench.delete(&warm).await;
    bench.wait(&warm, "gone", |s| s.deleted.is_some()).await?;
    eprintln!("bench-pods: warm-up pod ran after {warm_secs:.2} s (image pull included) and is gone");

    for (mode, name) in &modes {
        let prefix = &mode[..1];
        let groups: Vec<Vec<String>> =
            groups(mode, s).into_iter().map(|g| g.into_iter().map(|i| format!("{prefix}-{i:03}")).collect()).collect();
        let all: Vec<String> = groups.iter().flatten().cloned().collect();
        bench.errors.lock().clear();
        let load_before = loadavg();
        eprintln!("bench-pods: rkube, {name}: creating {} pods (load average {load_before})", all.len());
        let mut created = Vec::new();
        for g in &groups {
            let ok = bench.create(g).await?;
            bench.wait(&ok, "Running", |s| s.running.is_some()).await?;
            created.extend(ok);
        }
        // Memory with every pod running.
        let mut rss = BTreeMap::new();
        let mut node_exe = None;
        for spec in &o.memory {
            let (label, pid) = spec.split_once('=').context("--memory takes NAME=PID")?;
            let pid: u32 = pid.parse().context("--memory takes NAME=PID")?;
            if let Some(kib) = pss_kib(pid) {
                rss.insert(label.to_string(), kib);
            }
            if label == "node" {
                node_exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            }
        }
        if let Some(exe) = node_exe {
            let (n, kib) = pss_of(|e, argv| e.as_ref() == Some(&exe) && argv.get(1).is_some_and(|a| a == "shim"));
            rss.insert(format!("{n} shims"), kib);
        }
        eprintln!("bench-pods: rkube, {name}: all Running; deleting");
        for g in &groups {
            let g: Vec<String> = g.iter().filter(|n| created.contains(n)).cloned().collect();
            let ok = bench.delete(&g).await;
            bench.wait(&ok, "gone", |s| s.deleted.is_some()).await?;
        }
        let load_after = loadavg();
        let t = bench.tracker.lock();
        let mine: Vec<&Seen> = all.iter().filter_map(|n| t.pods.get(n)).collect();
        let since = |from: Mark, to: Mark| {
            Dist::of(mine.iter().filter_map(|s| Some(ms(to(s)?.checked_sub(from(s)?).unwrap_or_default()))).collect())
        };
        let mut phases = BTreeMap::new();
        let steps: [(&str, Mark, Mark); 7] = [
            ("1 create answered", |s| s.sent, |s| s.answered),
            ("2 bound", |s| s.sent, |s| s.bound),
            ("3 kubelet's first status", |s| s.sent, |s| s.kubelet),
            ("4 Running", |s| s.sent, |s| s.running),
            ("5 bound → kubelet's first status", |s| s.bound, |s| s.kubelet),
            ("6 kubelet's first status → Running", |s| s.kubelet, |s| s.running),
            ("7 delete sent → terminating", |s| s.delete_sent, |s| s.terminating),
        ];
        for (label, from, to) in steps {
            if let Some(d) = since(from, to) {
                phases.insert(label.to_string(), d);
            }
        }
        let first_sent = mine.iter().filter_map(|s| s.sent).min().unwrap_or_default();
        let last_running = mine.iter().filter_map(|s| s.running).max().unwrap_or_default();
        let first_delete = mine.iter().filter_map(|s| s.delete_sent).min().unwrap_or_default();
        let last_gone = mine.iter().filter_map(|s| s.deleted).max().unwrap_or_default();
        let running = mine.iter().filter(|s| s.running.is_some()).count();
        let all_running_secs = last_running.saturating_sub(first_sent).as_secs_f64();
        let result = RunResult {
            system: "rkube".into(),
            mode: name.clone(),
            count: s.count,
            batch: groups.first().map_or(0, Vec::len),
            running,
            create_to_running: since(|s| s.sent, |s| s.running),
            pods_per_sec: round(running as f64 / all_running_secs.max(1e-9)),
            all_running_secs: round(all_running_secs * 100.0) / 100.0,
            delete_to_gone: since(|s| s.delete_sent, |s| s.deleted),
            all_gone_secs: round(last_gone.saturating_sub(first_delete).as_secs_f64() * 100.0) / 100.0,
            phases,
            pss_kib: rss,
            errors: bench.errors.lock().clone(),
            load_before,
            load_after,
            notes: vec![format!("warm-up pod (image pull included): Running {warm_secs:.2} s after its create")],
        };
        drop(t);
        write_json(&s.json, &result)?;
    }
    watch.abort();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Docker

async fn docker_cmd(docker: &Path, args: &[String]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(docker)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", docker.display()))?;
    if !out.status.success() {
        bail!("docker {}: {}", args.first().map_or("", |a| a.as_str()), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes every container whose name starts with the prefix.
async fn docker_sweep(o: &DockerOpts) -> anyhow::Result<usize> {
    let ids =
        docker_cmd(&o.docker, &["ps".into(), "-aq".into(), "--filter".into(), format!("name=^{}-", o.prefix)]).await?;
    let ids: Vec<String> = ids.split_whitespace().map(String::from).collect();
    if !ids.is_empty() {
        let mut args = vec!["rm".to_string(), "-f".into()];
        args.extend(ids.iter().cloned());
        docker_cmd(&o.docker, &args).await?;
    }
    Ok(ids.len())
}

/// Runs `run(name)` for every name at once: (name, latency) of those that succeeded; failures
/// are counted by message.
async fn each<F, Fut>(names: &[String], run: F, errors: &Mutex<BTreeMap<String, usize>>) -> Vec<(String, Duration)>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runs = names.iter().map(|name| {
        let fut = run(name.clone());
        async move {
            let t = Instant::now();
            match fut.await {
                Ok(()) => Some((name.clone(), t.elapsed())),
                Err(e) => {
                    *errors.lock().entry(format!("{e:#}")).or_default() += 1;
                    None
                }
            }
        }
    });
    futures::future::join_all(runs).await.into_iter().flatten().collect()
}

/// What an anchor says once the containers of a run were started.
struct Started {
    /// Containers seen running.
    running: usize,
    notes: Vec<String>,
    /// Memory (Pss) of the anchor's processes, KiB.
    pss_kib: BTreeMap<String, u64>,
}

/// The runs of an anchor (Docker, runc alone), one JSON line each: for every mode, starts the
/// containers group by group (a group at once) with `start`, lets `check` say what runs, then
/// removes them the same way with `remove`. Latencies are those of `start` and `remove`.
async fn anchor_runs<S, SF, R, RF, C, CF>(
    s: &Shape,
    system: &str,
    name_of: impl Fn(&str, usize) -> String,
    start: S,
    remove: R,
    check: C,
) -> anyhow::Result<()>
where
    S: Fn(String) -> SF + Copy,
    SF: std::future::Future<Output = anyhow::Result<()>>,
    R: Fn(String) -> RF + Copy,
    RF: std::future::Future<Output = anyhow::Result<()>>,
    C: Fn(String, Vec<String>) -> CF,
    CF: std::future::Future<Output = anyhow::Result<Started>>,
{
    for mode in &s.modes {
        let name = mode_name(mode, s)?;
        let groups: Vec<Vec<String>> =
            groups(mode, s).into_iter().map(|g| g.into_iter().map(|i| name_of(mode, i)).collect()).collect();
        let errors = Mutex::new(BTreeMap::new());
        let load_before = loadavg();
        eprintln!("bench-pods: {system}, {name}: starting {} containers (load average {load_before})", s.count);
        let start_at = Instant::now();
        let mut started = Vec::new();
        for g in &groups {
            started.extend(each(g, start, &errors).await);
        }
        let all_running_secs = start_at.elapsed().as_secs_f64();
        let names: Vec<String> = started.iter().map(|(n, _)| n.clone()).collect();
        let seen = check(mode.clone(), names.clone()).await?;
        eprintln!("bench-pods: {system}, {name}: all started; removing");
        let del_start = Instant::now();
        let mut removed = Vec::new();
        for g in &groups {
            let g: Vec<String> = g.iter().filter(|n| names.contains(n)).cloned().collect();
            removed.extend(each(&g, remove, &errors).await);
        }
        let all_gone_secs = del_start.elapsed().as_secs_f64();
        let result = RunResult {
            system: system.into(),
            mode: name,
            count: s.count,
            batch: groups.first().map_or(0, Vec::len),
            running: seen.running,
            create_to_running: Dist::of(started.iter().map(|(_, d)| ms(*d)).collect()),
            pods_per_sec: round(started.len() as f64 / all_running_secs.max(1e-9)),
            all_running_secs: round(all_running_secs * 100.0) / 100.0,
            delete_to_gone: Dist::of(removed.iter().map(|(_, d)| ms(*d)).collect()),
            all_gone_secs: round(all_gone_secs * 100.0) / 100.0,
            phases: BTreeMap::new(),
            pss_kib: seen.pss_kib,
            errors: errors.into_inner(),
            load_before,
            load_after: loadavg(),
            notes: seen.notes,
        };
        write_json(&s.json, &result)?;
    }
    Ok(())
}

async fn docker(o: &DockerOpts) -> anyhow::Result<()> {
    let s = &o.shape;
    ensure!(s.count >= 1 && s.batch >= 1, "--count and --batch must be at least 1");
    let version = docker_cmd(&o.docker, &["version".into(), "--format".into(), "{{.Server.Version}}".into()])
        .await
        .context("the Docker daemon does not answer")?;
    let info = docker_cmd(
        &o.docker,
        &["info".into(), "--format".into(), "{{.Driver}}, cgroup {{.CgroupDriver}} v{{.CgroupVersion}}".into()],
    )
    .await
    .unwrap_or_default();
    let swept = docker_sweep(o).await?;
    if swept > 0 {
        eprintln!("bench-pods: removed {swept} containers left by an earlier run");
    }
    // Warm-up: one container, so that nothing is done for the first time during the runs.
    let warm = format!("{}-warmup", o.prefix);
    let run_args = |name: &str| -> Vec<String> {
        let mut a: Vec<String> =
            ["run", "-d", "--network", "bridge", "--name", name, "--entrypoint", COMMAND[0], o.image.as_str()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(COMMAND[1..].iter().map(|s| s.to_string()));
        a
    };
    docker_cmd(&o.docker, &run_args(&warm)).await.context("the warm-up container")?;
    docker_cmd(&o.docker, &["rm".into(), "-f".into(), warm]).await?;
    let engine = format!("Docker {} ({})", version.trim(), info.trim());
    let start = move |name: String| {
        let args = run_args(&name);
        async move { docker_cmd(&o.docker, &args).await.map(drop) }
    };
    let remove = |name: String| async move { docker_cmd(&o.docker, &["rm".into(), "-f".into(), name]).await.map(drop) };
    let check = |_mode: String, started: Vec<String>| {
        let engine = engine.clone();
        async move {
            // Every container that `docker run -d` reported must be running now.
            let mut notes = vec![engine];
            if !started.is_empty() {
                let mut args = vec!["inspect".to_string(), "--format".into(), "{{.State.Running}}".into()];
                args.extend(started.iter().cloned());
                let states = docker_cmd(&o.docker, &args).await?;
                let not_running = states.lines().filter(|l| l.trim() != "true").count();
                notes.push(format!(
                    "docker inspect after the last start: {} of {} containers running",
                    started.len() - not_running,
                    started.len()
                ));
            }
            let mut pss_kib = BTreeMap::new();
            for daemon in ["dockerd", "containerd"] {
                let (n, kib) = pss_of(|exe, _| exe.as_ref().and_then(|e| e.file_name()).is_some_and(|f| f == daemon));
                if n > 0 {
                    pss_kib.insert(daemon.to_string(), kib);
                }
            }
            let (n, kib) = pss_of(|exe, _| {
                exe.as_ref()
                    .and_then(|e| e.file_name())
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with("containerd-shim"))
            });
            pss_kib.insert(format!("{n} containerd shims"), kib);
            Ok(Started { running: started.len(), notes, pss_kib })
        }
    };
    anchor_runs(s, "docker", |mode, i| format!("{}-{mode}-{i:03}", o.prefix), start, remove, check).await?;
    docker_sweep(o).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// runc alone

/// runc with `--root` (its state) and `--log` in the work directory. Its output is discarded:
/// a detached container inherits runc's stdio, so waiting for that output would wait for the
/// container to end. What went wrong is in the log.
async fn runc_cmd(o: &RuncOpts, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let log = o.work_dir.join("runc.log");
    let out = tokio::process::Command::new(&o.runc)
        .arg("--root")
        .arg(o.work_dir.join("state"))
        .arg("--log")
        .arg(&log)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(if args.first() == Some(&"list") { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stderr(std::process::Stdio::null())
        // Not `output()`: tokio's pipes stdout and stderr whatever was set.
        .spawn()
        .with_context(|| format!("running {}", o.runc.display()))?
        .wait_with_output()
        .await
        .with_context(|| format!("waiting for {}", o.runc.display()))?;
    ensure!(
        out.status.success(),
        "runc {}: {} (see {})",
        args.first().copied().unwrap_or(""),
        out.status,
        log.display()
    );
    Ok(out)
}

/// The bundle every container starts from: busybox as `/bin/busybox` and `/bin/sh`, `/www`,
/// a read-only root, the shared command, `runc spec`'s defaults otherwise (new pid, mount,
/// ipc, uts and network namespaces).
async fn runc_bundle(o: &RuncOpts) -> anyhow::Result<PathBuf> {
    let bundle = o.work_dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "www", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).with_context(|| format!("creating {}", rootfs.join(d).display()))?;
    }
    std::fs::copy(&o.busybox, rootfs.join("bin/busybox"))
        .with_context(|| format!("copying {}", o.busybox.display()))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).context("linking /bin/sh")?;
    let bundle_arg = bundle.to_string_lossy().into_owned();
    runc_cmd(o, &["spec", "--bundle", &bundle_arg]).await?;
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path)?).context("runc spec's config.json")?;
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(COMMAND);
    spec["root"] = json!({ "path": "rootfs", "readonly": true });
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(bundle)
}

/// Container ids in runc's state and whether each runs.
async fn runc_list(o: &RuncOpts) -> anyhow::Result<Vec<(String, bool)>> {
    let out = runc_cmd(o, &["list", "--format", "json"]).await?;
    let list: Option<Vec<serde_json::Value>> = serde_json::from_slice(&out.stdout).context("runc list's JSON")?;
    Ok(list
        .unwrap_or_default()
        .iter()
        .map(|c| (c["id"].as_str().unwrap_or_default().to_string(), c["status"] == "running"))
        .collect())
}

async fn runc_sweep(o: &RuncOpts) -> anyhow::Result<()> {
    for (id, _) in runc_list(o).await? {
        runc_cmd(o, &["delete", "--force", &id]).await?;
    }
    Ok(())
}

async fn runc_alone(o: &RuncOpts) -> anyhow::Result<()> {
    let s = &o.shape;
    ensure!(s.count >= 1 && s.batch >= 1, "--count and --batch must be at least 1");
    ensure!(!o.work_dir.exists(), "--work-dir {} exists already; give a new one", o.work_dir.display());
    std::fs::create_dir_all(&o.work_dir).with_context(|| format!("creating {}", o.work_dir.display()))?;
    let result = runc_runs(o).await;
    let swept = runc_sweep(o).await;
    let _ = std::fs::remove_dir_all(&o.work_dir);
    result.and(swept)
}

async fn runc_runs(o: &RuncOpts) -> anyhow::Result<()> {
    let bundle = runc_bundle(o).await?.to_string_lossy().into_owned();
    let start = |name: String| {
        let bundle = bundle.clone();
        async move { runc_cmd(o, &["run", "--detach", "--bundle", &bundle, &name]).await.map(drop) }
    };
    let remove = |name: String| async move { runc_cmd(o, &["delete", "--force", &name]).await.map(drop) };
    // Warm-up: one container, so that nothing is done for the first time during the runs.
    start("warmup".into()).await.context("the warm-up container")?;
    remove("warmup".into()).await.context("removing the warm-up container")?;
    let check = |mode: String, started: Vec<String>| async move {
        let running = runc_list(o).await?.into_iter().filter(|(id, run)| *run && id.starts_with(mode.as_str())).count();
        Ok(Started {
            running: started.len().min(running),
            notes: vec![format!("runc list after the last start: {running} of {} containers running", started.len())],
            pss_kib: BTreeMap::new(),
        })
    };
    anchor_runs(&o.shape, "runc", |mode, i| format!("{mode}-{i:03}"), start, remove, check).await
}

// ---------------------------------------------------------------------------------------------
// Report

fn system_name(system: &str) -> String {
    match system {
        "docker" => "Docker (anchor)".into(),
        "runc" => "runc alone (floor)".into(),
        other => other.into(),
    }
}

fn report(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut runs: Vec<RunResult> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            runs.push(serde_json::from_str(line).with_context(|| format!("a line of {}", f.display()))?);
        }
    }
    ensure!(!runs.is_empty(), "no results in {files:?}");
    let d = |d: &Option<Dist>, f: fn(&Dist) -> f64| d.as_ref().map_or("-".to_string(), |d| format!("{:.0}", f(d)));
    println!("| system | run | Running | create→Running p50 / p90 / p99 / max (ms) | all Running | pods/s | delete→gone p50 / p99 / max (ms) | all gone | load before → after |");
    println!("|---|---|--:|--:|--:|--:|--:|--:|---|");
    for r in &runs {
        let system = system_name(&r.system);
        println!(
            "| {system} | {} | {}/{} | {} / {} / {} / {} | {:.2} s | {:.0} | {} / {} / {} | {:.2} s | {} → {} |",
            r.mode,
            r.running,
            r.count,
            d(&r.create_to_running, |d| d.p50),
            d(&r.create_to_running, |d| d.p90),
            d(&r.create_to_running, |d| d.p99),
            d(&r.create_to_running, |d| d.max),
            r.all_running_secs,
            r.pods_per_sec,
            d(&r.delete_to_gone, |d| d.p50),
            d(&r.delete_to_gone, |d| d.p99),
            d(&r.delete_to_gone, |d| d.max),
            r.all_gone_secs,
            r.load_before,
            r.load_after,
        );
    }
    println!();
    // Where rkube's time goes.
    for r in runs.iter().filter(|r| !r.phases.is_empty()) {
        println!("rkube, {}: from the create (delete) call to each step as the watch saw it, p50 / p99 (ms):", r.mode);
        println!();
        for (step, dist) in &r.phases {
            let step = step.split_once(' ').map_or(step.as_str(), |(_, s)| s);
            println!("- {step}: {:.0} / {:.0}", dist.p50, dist.p99);
        }
        println!();
    }
    for r in &runs {
        if !r.pss_kib.is_empty() {
            let each: Vec<String> =
                r.pss_kib.iter().map(|(k, v)| format!("{k} {:.1} MiB", *v as f64 / 1024.0)).collect();
            println!("- {}, {}: memory (Pss) with all running: {}", r.system, r.mode, each.join(", "));
        }
        for (e, n) in &r.errors {
            println!("- {}, {}: {n} × {e}", r.system, r.mode);
        }
        for n in &r.notes {
            println!("- {}, {}: {n}", r.system, r.mode);
        }
    }
    println!();
    println!("Target (issue 5): create → Running p99 ≤ {TARGET_P99_MS:.0} ms, a tenth of Kubernetes' {KUBE_SLO_P99_MS:.0} ms SLO:");
    println!();
    for r in runs.iter().filter(|r| r.system == "rkube") {
        let (verdict, p99) = match &r.create_to_running {
            Some(d) if r.running == r.count => (if d.p99 <= TARGET_P99_MS { "met" } else { "**not met**" }, d.p99),
            Some(d) => ("**not met** (not every pod ran)", d.p99),
            None => ("**not met** (no pod ran)", f64::NAN),
        };
        let anchors: String = runs
            .iter()
            .filter(|x| x.system != "rkube" && x.mode == r.mode)
            .filter_map(|x| {
                Some(format!("; {} p99 {:.0} ms", system_name(&x.system), x.create_to_running.as_ref()?.p99))
            })
            .collect();
        println!("- {}: p99 {p99:.0} ms: {verdict}{anchors}", r.mode);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cleanup

async fn cleanup(o: &CleanupOpts) -> anyhow::Result<()> {
    use rkube::kubelet::network::PodNetwork;
    use rkube::kubelet::{build_runtime, NetworkConfig, RuntimeConfig, RuntimeKind};
    let net = NetworkConfig { bridge: o.bridge.clone(), cidr: o.pod_cidr.parse().context("--pod-cidr")? };
    let state = o.state_dir.join("runtime");
    let mut removed = 0;
    if state.is_dir() {
        let mut cfg = RuntimeConfig::new(state.clone(), Some(net.clone()));
        cfg.kind = RuntimeKind::Runc;
        cfg.shim = o.shim.clone();
        let runtime = build_runtime(cfg).await.context("opening the node's runtime state")?;
        for s in runtime.list().await.unwrap_or_default() {
            match runtime.remove_sandbox(&s.sandbox.id).await {
                Ok(()) => removed += 1,
                Err(e) => eprintln!("bench-pods: cleanup: removing sandbox {}: {e}", s.sandbox.id),
            }
        }
    }
    PodNetwork::new(net, &state)?.teardown_node().await.context("removing the bridge and its rules")?;
    eprintln!("bench-pods: cleanup: {removed} sandboxes removed; bridge {} and its rules removed", o.bridge);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.cmd {
        Cmd::Rkube(o) => runtime.block_on(rkube(&o)),
        Cmd::Docker(o) => runtime.block_on(docker(&o)),
        Cmd::Runc(o) => runtime.block_on(runc_alone(&o)),
        Cmd::Report { files } => report(&files),
        Cmd::Cleanup(o) => runtime.block_on(cleanup(&o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d = Dist::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((d.p50, d.p90, d.p99, d.max), (50.0, 90.0, 99.0, 100.0));
        let d = Dist::of(vec![3.0]).unwrap();
        assert_eq!((d.p50, d.p99), (3.0, 3.0));
    }

    #[test]
    fn the_pod_is_valid_and_runs_the_shared_command() {
        let pod = pod_object("bench", "b-000", "httpd").unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.command, COMMAND);
        assert_eq!(c.image_pull_policy, "IfNotPresent");
    }

    #[test]
    fn batches_cover_every_pod_once() {
        let s = Shape { count: 25, batch: 10, modes: vec![], timeout_secs: 1, json: None };
        let g = groups("batches", &s);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert_eq!(groups("all", &s).len(), 1);
    }
}
