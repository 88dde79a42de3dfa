//! `bench-scheduler`: how fast the control plane places pods, measured from outside through
//! the `rkube.v1` API only (a watch on pods), against masters that run the scheduler and
//! controller manager and a `rkube hollow-nodes` process that runs what is bound.
//!
//! - `nodes`: waits until `--count` nodes are Ready with a pod subnet.
//! - `pods`: creates `--count` pending pods (bounded concurrency, as fast as the masters take
//!   them) while watching them: pods bound per second from the first bind to the last, and over
//!   1-second windows, create-to-bound latency, the time until all run; then checks that no
//!   pod was bound twice and no node holds more than it can, and deletes them.
//! - `deployment`: runs `rkctl run NAME --replicas=N` and times it until N pods run.
//! - `report`: prints the `--json` lines of a run as Markdown, beside the anchors
//!   (kube-scheduler's CI floor, Nomad) and the target.

#[path = "../common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rkube::api::v1::{Node, Pod};
use rkube::api::Object;
use rkube::client::{Api, Client, DeleteParams, ListParams};
use serde_json::json;
use tokio::time::Instant;

/// kube-scheduler's scheduling-throughput floor in Kubernetes CI (scheduler_perf, 5,000 nodes).
const ANCHOR_KUBE_SCHEDULER: f64 = 680.0;
/// Nomad's "million container challenge": about 1,500 containers placed per second.
const ANCHOR_NOMAD: f64 = 1500.0;
/// The target on this 2-core machine.
const TARGET_PODS_PER_SEC: f64 = 1500.0;
/// Latencies above this are recorded as this, in microseconds.
const MAX_LATENCY_US: u64 = 600_000_000;

#[derive(Parser)]
#[command(name = "bench-scheduler", about = "scheduler throughput: pods bound per second on hollow nodes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone, Debug)]
struct Common {
    /// Masters' client API addresses, comma-separated.
    #[arg(long, env = "BENCH_ENDPOINTS", default_value = "127.0.0.1:6443")]
    endpoints: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Waits until this many nodes are Ready with a pod subnet.
    Nodes {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Creates pending pods, measures how fast they are bound and run, then deletes them.
    Pods {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: PodsOpts,
    },
    /// Runs `rkctl run NAME --replicas=N` and times it until N pods run.
    Deployment {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 3000)]
        replicas: usize,
        /// The rkctl binary.
        #[arg(long, default_value = "rkctl")]
        rkctl: PathBuf,
        #[arg(long, default_value = "bench")]
        namespace: String,
        #[arg(long, default_value = "web")]
        name: String,
        /// Nodes in the cluster (carried into the output).
        #[arg(long, default_value_t = 0)]
        nodes: usize,
    },
    /// Prints the JSON lines of `pods` and `deployment` as Markdown beside the anchors.
    Report { files: Vec<PathBuf> },
}

#[derive(Args, Clone, Debug)]
struct PodsOpts {
    /// Pods to create.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Namespace of the pods (created if missing).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Each pod's cpu request.
    #[arg(long, default_value = "100m")]
    cpu: String,
    /// Each pod's memory request.
    #[arg(long, default_value = "64Mi")]
    memory: String,
    /// Nodes in the cluster (carried into the output).
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// Leave the pods in place.
    #[arg(long)]
    keep: bool,
    /// Write this file once every pod is created: a script that starts the scheduler only then
    /// measures it on a backlog of pending pods (the output says `"mode": "backlog"`).
    #[arg(long)]
    created_file: Option<PathBuf>,
}

fn client(endpoints: &str) -> anyhow::Result<Client> {
    Ok(Client::from_list(endpoints)?)
}

fn is_ready(n: &Node) -> bool {
    n.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
}

async fn wait_nodes(c: &Common, count: usize) -> anyhow::Result<()> {
    let client = client(&c.endpoints)?;
    let nodes = Api::<Node>::all(&client);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(c.timeout_secs);
    let mut last = usize::MAX;
    loop {
        let ready = match nodes.list(&ListParams::default()).await {
            Ok((items, _)) => {
                items.iter().filter(|n| is_ready(n) && n.spec.as_ref().is_some_and(|s| !s.pod_cidr.is_empty())).count()
            }
            Err(e) => {
                eprintln!("listing nodes: {e}");
                0
            }
        };
        if ready != last {
            eprintln!("{ready}/{count} nodes Ready with a pod subnet after {:.1} s", start.elapsed().as_secs_f64());
            last = ready;
        }
        if ready >= count {
            let secs = start.elapsed().as_secs_f64();
            if c.json {
                println!("{}", json!({"phase": "nodes", "nodes": ready, "secs": round(secs)}));
            }
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "only {ready} of {count} nodes Ready after {} s", c.timeout_secs);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the watch saw of one pod, as offsets from the start of the run.
#[derive(Debug, Clone, Default)]
struct Seen {
    sent: Option<Duration>,
    /// First seen by the watch.
    seen: Option<Duration>,
    bound: Option<Duration>,
    running: Option<Duration>,
    node: String,
    /// Bound to a node other than the one it was first bound to.
    rebound: bool,
    deleted: Option<Duration>,
}

/// Everything the watch saw, by pod name.
#[derive(Default)]
struct Tracker {
    pods: HashMap<String, Seen>,
    rebinds: usize,
}

impl Tracker {
    fn observe(&mut self, at: Duration, pod: &Pod, deleted: bool) {
        let s = self.pods.entry(pod.meta().name.clone()).or_default();
        if deleted {
            s.deleted.get_or_insert(at);
            return;
        }
        s.seen.get_or_insert(at);
        let node = pod.spec.as_ref().map(|s| s.node_name.as_str()).unwrap_or("");
        if !node.is_empty() {
            if s.bound.is_none() {
                s.bound = Some(at);
                s.node = node.to_string();
            } else if s.node != node && !s.rebound {
                s.rebound = true;
                self.rebinds += 1;
            }
        }
        if pod.meta().deletion_timestamp.is_empty() && pod.status.as_ref().is_some_and(|st| st.phase == "Running") {
            s.running.get_or_insert(at);
        }
    }

    fn count(&self, f: impl Fn(&Seen) -> bool) -> usize {
        self.pods.values().filter(|s| f(s)).count()
    }
}

/// Watches the pods of `ns` matching `selector` from `rv` into `tracker`.
fn watch_pods(
    client: &Client,
    ns: &str,
    selector: &str,
    rv: String,
    start: Instant,
    tracker: &Arc<Mutex<Tracker>>,
    changed: &Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (tracker, changed) = (tracker.clone(), changed.clone());
    common::spawn_pod_watch(
        Api::<Pod>::namespaced(client, ns),
        ListParams::default().labels(selector),
        rv,
        start,
        move |at, pod, deleted| tracker.lock().observe(at, pod, deleted),
        move || changed.notify_one(),
    )
}

/// Lists pods of `ns` matching `selector` to learn the resourceVersion to watch from.
async fn list_rv(api: &Api<Pod>, selector: &str) -> anyhow::Result<(usize, String)> {
    let (items, meta) = api.list(&ListParams::default().labels(selector)).await?;
    Ok((items.len(), meta.resource_version))
}

/// Waits until `done` holds of the tracker, waking on every watch event.
async fn wait_until(
    tracker: &Mutex<Tracker>,
    changed: &tokio::sync::Notify,
    deadline: Instant,
    what: &str,
    done: impl Fn(&Tracker) -> Option<String>,
) -> anyhow::Result<()> {
    let mut last_report = Instant::now();
    loop {
        let status = done(&tracker.lock());
        match status {
            None => return Ok(()),
            Some(progress) => {
                if Instant::now() >= deadline {
                    bail!("timed out waiting for {what}: {progress}");
                }
                if last_report.elapsed() >= Duration::from_secs(5) {
                    eprintln!("waiting for {what}: {progress}");
                    last_report = Instant::now();
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), changed.notified()).await;
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Binds counted in 1-second windows from the first bind; the last, partial window is left
/// out. Returns (min, median, max) pods/s.
fn windows(mut times: Vec<Duration>) -> Option<(u64, u64, u64)> {
    times.sort();
    let first = *times.first()?;
    let last = *times.last()?;
    let full = (last - first).as_secs() as usize;
    if full == 0 {
        return None;
    }
    let mut counts = vec![0u64; full];
    for t in times {
        let w = (t - first).as_secs() as usize;
        if w < full {
            counts[w] += 1;
        }
    }
    let mut sorted = counts.clone();
    sorted.sort();
    Some((sorted[0], sorted[sorted.len() / 2], sorted[sorted.len() - 1]))
}

fn pod_object(ns: &str, name: &str, cpu: &str, memory: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"bench": "scheduler"}},
        "spec": {"containers": [{"name": "c", "image": "bench/pause",
                                 "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}
    }))?)
}

async fn pods(c: &Common, o: &PodsOpts) -> anyhow::Result<()> {
    let (count, concurrency, ns) = (o.count, o.concurrency, o.namespace.as_str());
    ensure!(count >= 2 && concurrency >= 1, "--count must be at least 2 and --concurrency at least 1");
    let client = client(&c.endpoints)?;
    common::ensure_namespace(&client, ns).await?;
    let api = Api::<Pod>::namespaced(&client, ns);
    let selector = "bench=scheduler";
    let (existing, rv) = list_rv(&api, selector).await?;
    ensure!(existing == 0, "{existing} pods labelled {selector} exist in namespace {ns} already");
    let template = pod_object(ns, "x", &o.cpu, &o.memory)?;
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let changed = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(c.timeout_secs);
    let watch = watch_pods(&client, ns, selector, rv, start, &tracker, &changed);
    // Watches open lazily: give it a moment to be in place before the first create.
    tokio::time::sleep(Duration::from_millis(300)).await;
    eprintln!("creating {count} pods in namespace {ns}, {concurrency} at a time");
    let t0 = start.elapsed();
    let errors = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    futures::stream::iter(0..count)
        .map(|i| {
            let (api, tracker, errors) = (api.clone(), tracker.clone(), errors.clone());
            let mut pod = template.clone();
            let name = format!("sched-{i:05}");
            pod.meta_mut().name = name.clone();
            async move {
                tracker.lock().pods.entry(name.clone()).or_default().sent = Some(start.elapsed());
                if let Err(e) = api.create(&pod).await {
                    tracker.lock().pods.remove(&name);
                    *errors.lock().entry(e.to_string()).or_default() += 1;
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<()>()
        .await;
    let created_in = start.elapsed() - t0;
    let errors = errors.lock().clone();
    let failed: usize = errors.values().sum();
    for (e, n) in &errors {
        eprintln!("{n} creates failed: {e}");
    }
    let created = count - failed;
    if let Some(f) = &o.created_file {
        std::fs::write(f, format!("{created}\n")).with_context(|| format!("writing {}", f.display()))?;
    }
    eprintln!(
        "{created} pods created in {:.2} s ({:.0}/s)",
        created_in.as_secs_f64(),
        created as f64 / created_in.as_secs_f64()
    );
    wait_until(&tracker, &changed, deadline, "all pods bound", |t| {
        let b = t.count(|s| s.sent.is_some() && s.bound.is_some());
        (b < created).then(|| format!("{b}/{created} bound"))
    })
    .await?;
    wait_until(&tracker, &changed, deadline, "all pods running", |t| {
        let r = t.count(|s| s.sent.is_some() && s.running.is_some());
        (r < created).then(|| format!("{r}/{created} running"))
    })
    .await?;
    let (bind_times, lat, last_running, rebinds) = {
        let t = tracker.lock();
        let mine: Vec<&Seen> = t.pods.values().filter(|s| s.sent.is_some()).collect();
        let bind_times: Vec<Duration> = mine.iter().filter_map(|s| s.bound).collect();
        let mut lat = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).expect("histogram bounds are valid");
        for s in &mine {
            if let (Some(sent), Some(bound)) = (s.sent, s.bound) {
                lat.saturating_record(bound.saturating_sub(sent).as_micros() as u64);
            }
        }
        let last_running = mine.iter().filter_map(|s| s.running).max().unwrap_or_default();
        (bind_times, lat, last_running, t.rebinds)
    };
    let first_bind = *bind_times.iter().min().expect("at least two pods were bound");
    let last_bind = *bind_times.iter().max().expect("at least two pods were bound");
    let span = (last_bind - first_bind).as_secs_f64();
    let per_sec = (bind_times.len() - 1) as f64 / span.max(1e-9);
    let overall = bind_times.len() as f64 / (last_bind - t0).as_secs_f64();
    let win = windows(bind_times.clone());
    let (over, not_ready) = check_placement(&client).await?;
    let result = json!({
        "phase": "pods",
        "mode": if o.created_file.is_some() { "backlog" } else { "streaming" },
        "nodes": o.nodes,
        "pods": count,
        "created": created,
        "create_errors": failed,
        "concurrency": concurrency,
        "create_secs": round(created_in.as_secs_f64()),
        "creates_per_sec": round(created as f64 / created_in.as_secs_f64()),
        "first_bind_secs": round((first_bind - t0).as_secs_f64()),
        "first_bind_after_creates_secs": round(first_bind.as_secs_f64() - (t0 + created_in).as_secs_f64()),
        "bind_span_secs": round(span),
        "binds_per_sec": round(per_sec),
        "binds_per_sec_from_first_create": round(overall),
        "window_min": win.map(|w| w.0),
        "window_p50": win.map(|w| w.1),
        "window_max": win.map(|w| w.2),
        "latency_p50_ms": round(lat.value_at_quantile(0.5) as f64 / 1000.0),
        "latency_p99_ms": round(lat.value_at_quantile(0.99) as f64 / 1000.0),
        "latency_max_ms": round(lat.max() as f64 / 1000.0),
        "all_running_secs": round((last_running - t0).as_secs_f64()),
        "rebinds": rebinds,
        "overcommitted_nodes": over,
        "nodes_not_ready": not_ready,
    });
    if c.json {
        println!("{result}");
    } else {
        print_pods(&result);
    }
    if !o.keep {
        let n = delete_all(&api, selector, concurrency).await?;
        wait_until(&tracker, &changed, Instant::now() + Duration::from_secs(c.timeout_secs), "pods deleted", |t| {
            let d = t.count(|s| s.sent.is_some() && s.deleted.is_some());
            (d < n).then(|| format!("{d}/{n} deleted"))
        })
        .await?;
        eprintln!("{n} pods deleted");
    }
    watch.abort();
    ensure!(rebinds == 0, "{rebinds} pods were bound to a second node");
    ensure!(over == 0, "{over} nodes hold more than they can");
    Ok(())
}

fn print_pods(r: &serde_json::Value) {
    println!(
        "{} pods on {} nodes: created in {} s ({}/s); bound {} pods/s from first to last bind ({} s), 1-s windows min/p50/max {}/{}/{}; create->bound p50 {} ms p99 {} ms; all running {} s after the first create; rebinds {}, overcommitted nodes {}",
        r["pods"], r["nodes"], r["create_secs"], r["creates_per_sec"], r["binds_per_sec"], r["bind_span_secs"],
        r["window_min"], r["window_p50"], r["window_max"], r["latency_p50_ms"], r["latency_p99_ms"],
        r["all_running_secs"], r["rebinds"], r["overcommitted_nodes"],
    );
}

/// Counts nodes whose bound pods (in every namespace) ask for more cpu, memory or pod slots
/// than the node has, and nodes no longer Ready.
async fn check_placement(client: &Client) -> anyhow::Result<(usize, usize)> {
    let (nodes, _) = Api::<Node>::all(client).list(&ListParams::default()).await?;
    let (pods, _) = Api::<Pod>::namespaced(client, "").list(&ListParams::default()).await?;
    let mut used: HashMap<String, (i64, i64, i64)> = HashMap::new();
    for p in &pods {
        let node = p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
        if node.is_empty() || !p.meta().deletion_timestamp.is_empty() {
            continue;
        }
        let (cpu, mem) = rkube::scheduler::requests(p);
        let u = used.entry(node).or_default();
        u.0 += cpu;
        u.1 += mem;
        u.2 += 1;
    }
    let mut over = 0;
    let not_ready = nodes.iter().filter(|n| !is_ready(n)).count();
    for n in &nodes {
        let info = rkube::scheduler::NodeInfo::from_node(n);
        if let Some((cpu, mem, count)) = used.get(&info.name) {
            if *cpu > info.cpu_millis || *mem > info.memory || *count > info.max_pods {
                eprintln!(
                    "node {} holds cpu {cpu}m/{}m, memory {mem}/{}, pods {count}/{}",
                    info.name, info.cpu_millis, info.memory, info.max_pods
                );
                over += 1;
            }
        }
    }
    Ok((over, not_ready))
}

/// Deletes every pod matching `selector` at once (grace period 0); returns how many.
async fn delete_all(api: &Api<Pod>, selector: &str, concurrency: usize) -> anyhow::Result<usize> {
    let (items, _) = api.list(&ListParams::default().labels(selector)).await?;
    let n = items.len();
    let params = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    futures::stream::iter(items)
        .map(|p| {
            let (api, params) = (api.clone(), params.clone());
            async move {
                if let Err(e) = api.delete(&p.meta().name, &params).await {
                    if !e.is_not_found() {
                        eprintln!("deleting pod {}: {e}", p.meta().name);
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<()>()
        .await;
    Ok(n)
}

async fn deployment(
    c: &Common,
    replicas: usize,
    rkctl: &PathBuf,
    ns: &str,
    name: &str,
    nodes: usize,
) -> anyhow::Result<()> {
    let client = client(&c.endpoints)?;
    common::ensure_namespace(&client, ns).await?;
    let api = Api::<Pod>::namespaced(&client, ns);
    let selector = format!("run={name}");
    let (existing, rv) = list_rv(&api, &selector).await?;
    ensure!(existing == 0, "{existing} pods labelled {selector} exist in namespace {ns} already");
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let changed = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(c.timeout_secs);
    let watch = watch_pods(&client, ns, &selector, rv, start, &tracker, &changed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = start.elapsed();
    let out = tokio::process::Command::new(rkctl)
        .args(["--server", &c.endpoints, "-n", ns, "run", name, "--image=bench/pause"])
        .arg(format!("--replicas={replicas}"))
        .output()
        .await
        .with_context(|| format!("running {}", rkctl.display()))?;
    let rkctl_done = start.elapsed() - t0;
    ensure!(
        out.status.success(),
        "rkctl run failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    let live = |s: &Seen| s.deleted.is_none();
    let waited = wait_until(&tracker, &changed, deadline, &format!("{replicas} pods bound"), |t| {
        let b = t.count(|s| live(s) && s.bound.is_some());
        let n = t.count(live);
        (b < replicas).then(|| format!("{b}/{replicas} bound, {n} pods exist"))
    })
    .await;
    if waited.is_err() {
        // Say which pods were left pending, for whoever looks into it.
        if let Ok((items, _)) = api.list(&ListParams::default().labels(&selector)).await {
            for p in items.iter().filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_empty())).take(10) {
                eprintln!("pending: {} {:?}", p.meta().name, p.status.as_ref().map(|s| &s.conditions));
            }
        }
    }
    waited?;
    wait_until(&tracker, &changed, deadline, &format!("{replicas} pods running"), |t| {
        let r = t.count(|s| live(s) && s.running.is_some());
        (r < replicas).then(|| format!("{r}/{replicas} running"))
    })
    .await?;
    let t = tracker.lock();
    let mut running: Vec<Duration> = t.pods.values().filter(|s| live(s)).filter_map(|s| s.running).collect();
    running.sort();
    let mut bound: Vec<Duration> = t.pods.values().filter(|s| live(s)).filter_map(|s| s.bound).collect();
    bound.sort();
    let mut created: Vec<Duration> = t.pods.values().filter(|s| live(s)).filter_map(|s| s.seen).collect();
    created.sort();
    // The moment the last of the `replicas` pods was seen: what a user waiting for all would see.
    let all_running = running[replicas - 1] - t0;
    let all_bound = bound[replicas - 1] - t0;
    let bind_span = (bound[replicas - 1] - bound[0]).as_secs_f64();
    let result = json!({
        "phase": "deployment",
        "nodes": nodes,
        "replicas": replicas,
        "rkctl_secs": round(rkctl_done.as_secs_f64()),
        "all_created_secs": round((created[replicas - 1] - t0).as_secs_f64()),
        "first_bound_secs": round((bound[0] - t0).as_secs_f64()),
        "all_bound_secs": round(all_bound.as_secs_f64()),
        "all_running_secs": round(all_running.as_secs_f64()),
        "binds_per_sec": round((replicas - 1) as f64 / bind_span.max(1e-9)),
        "running_per_sec": round(replicas as f64 / all_running.as_secs_f64()),
        "pods_seen": t.pods.len(),
        "rebinds": t.rebinds,
    });
    let rebinds = t.rebinds;
    drop(t);
    watch.abort();
    if c.json {
        println!("{result}");
    } else {
        println!(
            "rkctl run {name} --replicas={replicas}: all created after {} s, all bound after {} s, all Running after {} s ({} pods/s); binds {} pods/s from first to last; rebinds {}",
            result["all_created_secs"], result["all_bound_secs"], result["all_running_secs"], result["running_per_sec"], result["binds_per_sec"], rebinds
        );
    }
    ensure!(rebinds == 0, "{rebinds} pods were bound to a second node");
    Ok(())
}

fn met(v: f64, target: f64) -> &'static str {
    if v >= target {
        "met"
    } else {
        "**NOT met**"
    }
}

fn report(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            lines.push(
                serde_json::from_str::<serde_json::Value>(l).with_context(|| format!("a line of {}", f.display()))?,
            );
        }
    }
    let f = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let pods: Vec<_> = lines.iter().filter(|l| l["phase"] == "pods").collect();
    let deps: Vec<_> = lines.iter().filter(|l| l["phase"] == "deployment").collect();
    if !pods.is_empty() {
        println!("| pods created | nodes | pods | create/s | binds/s first→last bind | 1-s windows min / p50 / max | create→bound p50 ms | p99 ms | all Running s | rebinds | overcommitted nodes |");
        println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for r in &pods {
            let mode = if r["mode"] == "backlog" { "before the scheduler started" } else { "while it runs" };
            println!(
                "| {mode} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} | {} | {} |",
                f(&r["nodes"]),
                f(&r["pods"]),
                f(&r["creates_per_sec"]),
                f(&r["binds_per_sec"]),
                f(&r["window_min"]),
                f(&r["window_p50"]),
                f(&r["window_max"]),
                f(&r["latency_p50_ms"]),
                f(&r["latency_p99_ms"]),
                f(&r["all_running_secs"]),
                f(&r["rebinds"]),
                f(&r["overcommitted_nodes"])
            );
        }
        println!();
    }
    if !deps.is_empty() {
        println!("| nodes | `rkctl run --replicas` | all created s | all bound s | all Running s | pods Running/s | binds/s first→last |");
        println!("|--:|--:|--:|--:|--:|--:|--:|");
        for r in &deps {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                f(&r["nodes"]),
                f(&r["replicas"]),
                f(&r["all_created_secs"]),
                f(&r["all_bound_secs"]),
                f(&r["all_running_secs"]),
                f(&r["running_per_sec"]),
                f(&r["binds_per_sec"])
            );
        }
        println!();
    }
    for r in &pods {
        let v = r["binds_per_sec"].as_f64().unwrap_or(0.0);
        println!(
            "- pods {}:",
            if r["mode"] == "backlog" { "created before the scheduler started" } else { "created while it runs" }
        );
        println!("- anchor: kube-scheduler CI floor {ANCHOR_KUBE_SCHEDULER:.0} pods/s at 5,000 nodes; rkube {v:.0} pods/s at {} nodes ({:.2}×)", f(&r["nodes"]), v / ANCHOR_KUBE_SCHEDULER);
        println!(
            "- anchor: Nomad about {ANCHOR_NOMAD:.0} containers/s; rkube {v:.0} pods/s ({:.2}×)",
            v / ANCHOR_NOMAD
        );
        println!("- target: ≥ {TARGET_PODS_PER_SEC:.0} pods/s bound: {v:.0}, {}", met(v, TARGET_PODS_PER_SEC));
    }
    for r in &deps {
        let v = r["running_per_sec"].as_f64().unwrap_or(0.0);
        println!(
            "- `rkctl run --replicas={}` to all Running: {} s ({v:.0} pods/s end to end; at the target rate {:.1} s)",
            f(&r["replicas"]),
            f(&r["all_running_secs"]),
            r["replicas"].as_f64().unwrap_or(0.0) / TARGET_PODS_PER_SEC
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Nodes { common, count } => wait_nodes(&common, count).await,
        Cmd::Pods { common, opts } => pods(&common, &opts).await,
        Cmd::Deployment { common, replicas, rkctl, namespace, name, nodes } => {
            deployment(&common, replicas, &rkctl, &namespace, &name, nodes).await
        }
        Cmd::Report { files } => report(&files),
    }
}
