//! `bench-api`: the object API (`rkube.v1.Pods`) under load, against the targets of issue 3,
//! which are a tenth of the Kubernetes API SLO: single-object calls p99 ≤ 100 ms, a list of
//! 10 000 pods ≤ 3 s, watch delivery p99 ≤ 50 ms.
//!
//! One run, in order:
//! 1. `fill`: creates `--pods` pods (10 000) in `--namespace`, `--fill-concurrency` at once;
//! 2. at every rate of `--rates` (20 and 200 req/s), `--duration-secs` (15) each of Create
//!    (fresh pods), Get (linearizable, random filled pods), Update (Get, then Update carrying
//!    the resourceVersion it read: a compare-and-swap; conflicts are counted) and Delete (the
//!    pods this rate's Create made, so that the store holds `--pods` again);
//! 3. List of every pod of the namespace, in one call and in pages (`--page-size` + continue),
//!    and across all namespaces, `--list-runs` times each;
//! 4. watch delivery: a watcher on the leader and one on a follower, while a writer patches pods
//!    at `--watch-rate` with an annotation holding its send time (nanoseconds since the epoch).
//!
//! The single-object steps are an open loop: request *i* is due at start + *i*/rate, is sent
//! then whatever is still in flight, and its latency runs from that due time, not from when it
//! left, so a slow answer delays nobody's clock (no coordinated omission). Requests go
//! round-robin over the members, each through the crate's own client (`rkube::client`).
//! Requests slower than 100 ms are listed by wall-clock time, grouped into pauses, to be matched
//! with the members' logs.
//!
//! The report is a table of every step and one of the targets (figure, ours, target, met?);
//! `--json FILE` also appends one JSON object per figure to FILE.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prost::Message;
use rkube::api::v1::Pod;
use rkube::api::Object;
use rkube::client::{Api, Client, ClientError, DeleteParams, ListParams, WatchEvent};
use rkube::pb::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Latencies above this are recorded as this (the histogram's upper bound), in microseconds.
const MAX_LATENCY_US: u64 = 120_000_000;
/// Distinct error messages kept per step; the rest are counted under one line.
const MAX_ERROR_KINDS: usize = 16;
const OTHER_ERRORS: &str = "(other errors)";
/// The annotation a watched write carries: its number in the writer's sequence.
const SEQ_ANNOTATION: &str = "bench.rkube.io/seq";
/// The annotation a watched write carries: when it was due, in nanoseconds since the epoch.
const SENT_ANNOTATION: &str = "bench.rkube.io/sent-unix-nanos";
/// The annotation an Update step changes.
const UPDATE_ANNOTATION: &str = "bench.rkube.io/update";
/// A request of an open-loop step slower than this is listed with when it was due, so that
/// slow requests can be told apart as isolated or as one pause that held everything in flight.
const SLOW: Duration = Duration::from_millis(100);
/// Slow requests due within this of the end of the previous one belong to the same pause.
const PAUSE_GAP: Duration = Duration::from_millis(500);
/// How long the watchers may take to see the last writes once the writer is done.
const WATCH_DRAIN: Duration = Duration::from_secs(10);

/// The targets.
const SINGLE_P99_TARGET_MS: f64 = 100.0;
const LIST_TARGET_MS: f64 = 3000.0;
const WATCH_P99_TARGET_MS: f64 = 50.0;

#[derive(Parser, Debug)]
#[command(name = "bench-api", about = "rkube object API benchmark: pods under load against the issue's targets")]
struct Opts {
    /// `--listen-api` addresses of the members, host:port, comma-separated.
    #[arg(long, env = "BENCH_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:6443")]
    endpoints: Vec<String>,
    /// Pods stored before the measurements.
    #[arg(long, default_value_t = 10_000)]
    pods: u64,
    /// Namespace of the benchmark's pods (created if missing).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Creates in flight at once while filling.
    #[arg(long, default_value_t = 64)]
    fill_concurrency: usize,
    /// Do not create the pods (they exist from an earlier run against the same cluster).
    #[arg(long)]
    skip_fill: bool,
    /// Request rates of the single-object steps, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "20,200")]
    rates: Vec<f64>,
    /// Length of each single-object step, seconds.
    #[arg(long, default_value_t = 15)]
    duration_secs: u64,
    /// Lists of each kind.
    #[arg(long, default_value_t = 5)]
    list_runs: usize,
    /// Page size of the paged list.
    #[arg(long, default_value_t = 500)]
    page_size: i64,
    /// Writes per second while the watchers measure delivery.
    #[arg(long, default_value_t = 100.0)]
    watch_rate: f64,
    /// Length of the watch step, seconds.
    #[arg(long, default_value_t = 15)]
    watch_secs: u64,
    /// A request not answered in this many seconds counts as an error.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Requests of an open-loop step in flight at most (the next ones wait, their clocks running).
    #[arg(long, default_value_t = 5000)]
    max_in_flight: usize,
    /// Wait this long at most for every member to answer and one to lead.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
    /// Seed of the choice of pods to get and update.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Append one JSON object per figure to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Name of the system measured, carried into the JSON lines.
    #[arg(long, default_value = "rkube")]
    label: String,
}

/// A validated run.
#[derive(Debug, Clone)]
struct Config {
    endpoints: Vec<String>,
    pods: u64,
    namespace: String,
    fill_concurrency: usize,
    skip_fill: bool,
    rates: Vec<f64>,
    duration: Duration,
    list_runs: usize,
    page_size: i64,
    watch_rate: f64,
    watch_time: Duration,
    timeout: Duration,
    max_in_flight: usize,
    wait: Duration,
    seed: u64,
    json: Option<PathBuf>,
    label: String,
}

impl Opts {
    fn validate(self) -> anyhow::Result<Config> {
        let endpoints: Vec<String> =
            self.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        ensure!(!endpoints.is_empty(), "--endpoints lists no address");
        ensure!(self.pods >= 1, "--pods must be at least 1");
        ensure!(!self.namespace.is_empty(), "--namespace must not be empty");
        ensure!(self.fill_concurrency >= 1, "--fill-concurrency must be at least 1");
        ensure!(self.rates.iter().all(|r| r.is_finite() && *r > 0.0), "--rates must be positive");
        ensure!(self.duration_secs >= 1, "--duration-secs must be at least 1");
        ensure!(self.page_size >= 1, "--page-size must be at least 1");
        ensure!(self.watch_rate.is_finite() && self.watch_rate > 0.0, "--watch-rate must be positive");
        ensure!(self.timeout_secs >= 1, "--timeout-secs must be at least 1");
        ensure!(self.max_in_flight >= 1, "--max-in-flight must be at least 1");
        Ok(Config {
            endpoints,
            pods: self.pods,
            namespace: self.namespace,
            fill_concurrency: self.fill_concurrency,
            skip_fill: self.skip_fill,
            rates: self.rates,
            duration: Duration::from_secs(self.duration_secs),
            list_runs: self.list_runs,
            page_size: self.page_size,
            watch_rate: self.watch_rate,
            watch_time: Duration::from_secs(self.watch_secs),
            timeout: Duration::from_secs(self.timeout_secs),
            max_in_flight: self.max_in_flight,
            wait: Duration::from_secs(self.wait_secs),
            seed: self.seed,
            json: self.json,
            label: self.label,
        })
    }
}

/// One member: a client whose calls go to it first (the others are its failover).
#[derive(Clone)]
struct Member {
    endpoint: String,
    pods: Api<Pod>,
    all_pods: Api<Pod>,
    client: Client,
}

fn members(cfg: &Config) -> anyhow::Result<Vec<Member>> {
    let n = cfg.endpoints.len();
    (0..n)
        .map(|i| {
            let order: Vec<String> = (0..n).map(|k| cfg.endpoints[(i + k) % n].clone()).collect();
            let client = Client::new(&order).with_context(|| format!("a client for {}", cfg.endpoints[i]))?;
            Ok(Member {
                endpoint: cfg.endpoints[i].clone(),
                pods: Api::namespaced(&client, &cfg.namespace),
                all_pods: Api::all(&client),
                client,
            })
        })
        .collect()
}

/// The index of the member that leads, as the members report it (etcd's Maintenance.Status),
/// if every member answers and they agree.
async fn leader_index(members: &[Member]) -> Option<usize> {
    let mut leaders = Vec::new();
    let mut leading = None;
    for (i, m) in members.iter().enumerate() {
        let status = MaintenanceClient::new(m.client.channel()).status(StatusRequest {}).await.ok()?.into_inner();
        let me = status.header.map(|h| h.member_id).unwrap_or(0);
        if status.leader == 0 {
            return None;
        }
        leaders.push(status.leader);
        if me == status.leader {
            leading = Some(i);
        }
    }
    leaders.dedup();
    if leaders.len() == 1 {
        leading
    } else {
        None
    }
}

/// Waits until every member answers and one of them leads.
async fn wait_ready(cfg: &Config, members: &[Member]) -> anyhow::Result<()> {
    let deadline = Instant::now() + cfg.wait;
    loop {
        if let Some(l) = leader_index(members).await {
            eprintln!("bench-api: every member answers; {} leads", members[l].endpoint);
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the members at {:?} have no common leader after {:?}",
            cfg.endpoints,
            cfg.wait
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Pod number `i` of the fill: one container with an image, ports, resources, environment and
/// a readiness probe, labels as a Deployment's pods carry; unscheduled.
fn bench_pod(namespace: &str, name: &str, i: u64) -> Pod {
    let manifest = serde_json::json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app": format!("svc-{}", i % 50),
                "tier": "backend",
                "pod-template-hash": format!("{:08x}", splitmix64(i % 50)),
            },
            "annotations": {"bench.rkube.io/index": i.to_string()},
        },
        "spec": {
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "app",
                "image": format!("registry.example.com/bench/app:1.{}", i % 10),
                "args": ["--listen=:8080", "--metrics=:9090", "--log-format=json"],
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                ],
                "env": [
                    {"name": "POD_INDEX", "value": i.to_string()},
                    {"name": "LOG_LEVEL", "value": "info"},
                ],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "500m", "memory": "256Mi"},
                },
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                "imagePullPolicy": "IfNotPresent",
            }],
        },
    });
    serde_json::from_value(manifest).expect("the benchmark's pod manifest is a valid Pod")
}

fn fill_name(i: u64) -> String {
    format!("pod-{i:06}")
}

/// A well-mixed 64-bit hash (splitmix64's finalizer): request number → pod number, with no
/// state shared between requests.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("the histogram bounds are valid")
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_LATENCY_US)
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

/// What one request of a step came to, when the server answered.
struct Done {
    /// The server refused a compare-and-swap (Update on a stale resourceVersion).
    conflict: bool,
    /// The latency of the step's last call alone, from when it was sent (Update's own call,
    /// after its Get), when that differs from the whole request.
    call: Option<Duration>,
}

impl Done {
    fn ok() -> Self {
        Done { conflict: false, call: None }
    }
}

/// What a step saw.
struct Tally {
    /// Answered requests, from due time to answer.
    latency_us: Histogram<u64>,
    /// The last call alone, where the request has several.
    call_us: Histogram<u64>,
    sent: u64,
    ok: u64,
    conflicts: u64,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
    /// Requests slower than [`SLOW`]: when each was due (wall clock) and its latency.
    slow: Vec<(SystemTime, Duration)>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            latency_us: new_histogram(),
            call_us: new_histogram(),
            sent: 0,
            ok: 0,
            conflicts: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
            slow: Vec::new(),
        }
    }

    fn error(&mut self, msg: String) {
        let slot = if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&msg) {
            msg
        } else {
            OTHER_ERRORS.to_string()
        };
        *self.errors.entry(slot).or_default() += 1;
    }

    fn record(&mut self, latency: Duration, answer: Result<Result<Done, ClientError>, tokio::time::error::Elapsed>) {
        self.sent += 1;
        match answer {
            Ok(Ok(done)) => {
                self.latency_us.saturating_record(us(latency));
                if let Some(call) = done.call {
                    self.call_us.saturating_record(us(call));
                }
                self.ok += 1;
                if done.conflict {
                    self.conflicts += 1;
                }
            }
            Ok(Err(e)) => self.error(e.to_string()),
            Err(_) => self.error("no answer within the timeout".into()),
        }
    }

    /// The slow requests grouped into pauses: (first due, last answer, requests, worst latency).
    fn pauses(&self) -> Vec<(SystemTime, SystemTime, usize, Duration)> {
        let mut slow = self.slow.clone();
        slow.sort();
        let mut pauses: Vec<(SystemTime, SystemTime, usize, Duration)> = Vec::new();
        for (due, latency) in slow {
            match pauses.last_mut() {
                Some(p) if due <= p.1 + PAUSE_GAP => {
                    p.1 = p.1.max(due + latency);
                    p.2 += 1;
                    p.3 = p.3.max(latency);
                }
                _ => pauses.push((due, due + latency, 1, latency)),
            }
        }
        pauses
    }

    fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        (self.ok > 0).then(|| ms(self.latency_us.value_at_quantile(q)))
    }

    fn max_ms(&self) -> Option<f64> {
        (self.ok > 0).then(|| ms(self.latency_us.max()))
    }
}

type Answer = Result<Result<Done, ClientError>, tokio::time::error::Elapsed>;

/// Runs `total` requests on an open loop at `rate` per second: request `i` is due at
/// start + i/rate and is sent then, whatever is still in flight (up to `max_in_flight`; beyond
/// that it waits with its clock running); its latency runs from its due time to its answer.
/// `op` gets the request number and its due time.
async fn open_loop<F, Fut>(rate: f64, total: u64, cfg: &Config, op: F) -> Tally
where
    F: Fn(u64, Instant) -> Fut,
    Fut: Future<Output = Result<Done, ClientError>> + Send + 'static,
{
    let mut tally = Tally::new();
    let mut tasks: JoinSet<(Instant, Duration, Answer)> = JoinSet::new();
    let start = Instant::now() + Duration::from_millis(20);
    let wall_start = SystemTime::now() + Duration::from_millis(20);
    let record = |tally: &mut Tally, (due, latency, answer): (Instant, Duration, Answer)| {
        if latency > SLOW && matches!(answer, Ok(Ok(_))) {
            tally.slow.push((wall_start + due.saturating_duration_since(start), latency));
        }
        tally.record(latency, answer);
    };
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        while let Some(done) = tasks.try_join_next() {
            record(&mut tally, done.expect("a request task does not panic"));
        }
        while tasks.len() >= cfg.max_in_flight {
            if let Some(done) = tasks.join_next().await {
                record(&mut tally, done.expect("a request task does not panic"));
            }
        }
        let request = op(i, due);
        let timeout = cfg.timeout;
        tasks.spawn(async move {
            let answer = tokio::time::timeout(timeout, request).await;
            (due, Instant::now().saturating_duration_since(due), answer)
        });
    }
    while let Some(done) = tasks.join_next().await {
        record(&mut tally, done.expect("a request task does not panic"));
    }
    tally.elapsed = start.elapsed();
    tally
}

/// One line of the targets table.
struct Verdict {
    figure: String,
    ours: String,
    target: String,
    met: Option<bool>,
}

/// Collects the figures: the step table, the targets, and the JSON lines.
struct Report {
    cfg: Config,
    steps: Vec<String>,
    verdicts: Vec<Verdict>,
    notes: Vec<String>,
}

impl Report {
    fn new(cfg: &Config) -> Self {
        Report { cfg: cfg.clone(), steps: Vec::new(), verdicts: Vec::new(), notes: Vec::new() }
    }

    fn json(&self, mut value: serde_json::Value) -> anyhow::Result<()> {
        value["label"] = self.cfg.label.clone().into();
        eprintln!("bench-api: {value}");
        if let Some(path) = &self.cfg.json {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            writeln!(f, "{value}").with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// A step of requests: its table row and JSON line.
    fn step(&mut self, step: &str, rate: Option<f64>, t: &Tally) -> anyhow::Result<()> {
        for (msg, n) in &t.errors {
            eprintln!("bench-api: {step}: {n} × {msg}");
        }
        let pauses = t.pauses();
        if !pauses.is_empty() {
            let each: Vec<String> = pauses
                .iter()
                .map(|(from, to, n, worst)| {
                    format!("{}-{} UTC ({n}, worst {:.0} ms)", clock(*from), clock(*to), worst.as_secs_f64() * 1000.0)
                })
                .collect();
            self.notes.push(format!(
                "{step}{}: {} requests over {} ms, in {} pauses: {}",
                rate.map(|r| format!(" at {r:.0} req/s")).unwrap_or_default(),
                t.slow.len(),
                SLOW.as_millis(),
                pauses.len(),
                each.join(", ")
            ));
        }
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        let achieved = t.ok as f64 / t.elapsed.as_secs_f64().max(1e-9);
        let call = (!t.call_us.is_empty()).then(|| {
            (ms(t.call_us.value_at_quantile(0.5)), ms(t.call_us.value_at_quantile(0.99)), ms(t.call_us.max()))
        });
        self.steps.push(format!(
            "| {step} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            rate.map(|r| format!("{r:.0}")).unwrap_or_else(|| "closed loop".into()),
            achieved,
            t.sent,
            t.ok,
            t.errors(),
            t.conflicts,
            opt(t.quantile_ms(0.5)),
            opt(t.quantile_ms(0.99)),
            opt(t.max_ms()),
        ));
        if let Some((p50, p99, max)) = call {
            self.steps.push(format!(
                "| {step}: the Update call alone | {} | | | | | | {p50:.2} | {p99:.2} | {max:.2} |",
                rate.map(|r| format!("{r:.0}")).unwrap_or_default(),
            ));
        }
        self.json(serde_json::json!({
            "workload": step,
            "rate": rate,
            "achieved_req_per_s": achieved.round(),
            "sent": t.sent,
            "ok": t.ok,
            "errors": t.errors(),
            "conflicts": t.conflicts,
            "elapsed_s": (t.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "p50_ms": t.quantile_ms(0.5),
            "p99_ms": t.quantile_ms(0.99),
            "max_ms": t.max_ms(),
            "call_p50_ms": call.map(|c| c.0),
            "call_p99_ms": call.map(|c| c.1),
            "call_max_ms": call.map(|c| c.2),
        }))
    }

    fn verdict(&mut self, figure: String, ours: String, target: String, met: Option<bool>) {
        self.verdicts.push(Verdict { figure, ours, target, met });
    }

    /// A single-object step against the p99 target.
    fn single_target(&mut self, what: &str, rate: f64, t: &Tally) {
        let p99 = t.quantile_ms(0.99);
        let ours = match p99 {
            Some(p) => format!(
                "p99 {p:.1} ms (p50 {:.1}, max {:.1}; {} errors of {})",
                t.quantile_ms(0.5).unwrap_or_default(),
                t.max_ms().unwrap_or_default(),
                t.errors(),
                t.sent
            ),
            None => format!("no request answered ({} errors)", t.errors()),
        };
        let met = p99.map(|p| p <= SINGLE_P99_TARGET_MS && t.errors() == 0);
        self.verdict(format!("{what} at {rate:.0} req/s"), ours, format!("p99 ≤ {SINGLE_P99_TARGET_MS:.0} ms"), met);
    }

    fn print(&self) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| step | rate req/s | achieved req/s | sent | ok | errors | conflicts | p50 ms | p99 ms | max ms |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for row in &self.steps {
            let _ = writeln!(out, "{row}");
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| figure | ours | target | met? |");
        let _ = writeln!(out, "|---|---|---|---|");
        for v in &self.verdicts {
            let met = match v.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(out, "| {} | {} | {} | {met} |", v.figure, v.ours, v.target);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        print!("{out}");
    }
}

/// Creates the namespace unless it exists.
async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<rkube::api::v1::Namespace> = Api::all(client);
    let mut ns = rkube::api::v1::Namespace::default();
    ns.meta_mut().name = name.to_string();
    match api.create(&ns).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Creates pods 0..N, `fill_concurrency` at once, round-robin over the members; existing pods
/// count as done.
async fn fill(cfg: &Config, members: &[Member], report: &mut Report) -> anyhow::Result<()> {
    let start = Instant::now();
    let results: Vec<(Duration, Result<bool, ClientError>)> = futures::stream::iter(0..cfg.pods)
        .map(|i| {
            let api = members[i as usize % members.len()].pods.clone();
            let pod = bench_pod(&cfg.namespace, &fill_name(i), i);
            async move {
                let t = Instant::now();
                let r = match api.create(&pod).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.is_already_exists() => Ok(false),
                    Err(e) => Err(e),
                };
                (t.elapsed(), r)
            }
        })
        .buffer_unordered(cfg.fill_concurrency)
        .collect()
        .await;
    let mut t = Tally::new();
    let mut existing = 0;
    for (latency, r) in results {
        if matches!(r, Ok(false)) {
            existing += 1;
        }
        t.record(latency, Ok(r.map(|_| Done::ok())));
    }
    t.elapsed = start.elapsed();
    eprintln!(
        "bench-api: filled {} pods in {:.1} s ({existing} existed already, {} errors)",
        t.ok,
        t.elapsed.as_secs_f64(),
        t.errors()
    );
    report.step(&format!("fill ({} pods, {} in flight)", cfg.pods, cfg.fill_concurrency), None, &t)?;
    ensure!(t.errors() == 0, "the fill failed for {} pods; see the errors above", t.errors());
    Ok(())
}

/// Create, Get, Update and Delete at one rate.
async fn single_object_steps(cfg: &Config, members: &[Member], rate: f64, report: &mut Report) -> anyhow::Result<()> {
    let total = (rate * cfg.duration.as_secs_f64()).round().max(1.0) as u64;
    let m = members.to_vec();
    let ns = cfg.namespace.clone();
    let pick = |i: u64| fill_name(splitmix64(cfg.seed ^ ((rate as u64) << 40) ^ i) % cfg.pods);
    let created = |i: u64| format!("create-{rate:.0}-{i:06}");

    eprintln!("bench-api: create at {rate} req/s for {:?}", cfg.duration);
    let t = open_loop(rate, total, cfg, |i, _| {
        let api = m[i as usize % m.len()].pods.clone();
        let pod = bench_pod(&ns, &created(i), cfg.pods + i);
        async move { api.create(&pod).await.map(|_| Done::ok()) }
    })
    .await;
    report.step("create", Some(rate), &t)?;
    report.single_target("Create", rate, &t);

    eprintln!("bench-api: get at {rate} req/s");
    let t = open_loop(rate, total, cfg, |i, _| {
        let api = m[i as usize % m.len()].pods.clone();
        let name = pick(i);
        async move { api.get(&name).await.map(|_| Done::ok()) }
    })
    .await;
    report.step("get", Some(rate), &t)?;
    report.single_target("Get", rate, &t);

    eprintln!("bench-api: update at {rate} req/s");
    let t = open_loop(rate, total, cfg, |i, _| {
        let api = m[i as usize % m.len()].pods.clone();
        let name = pick(total + i);
        async move {
            let mut pod = api.get(&name).await?;
            pod.meta_mut().annotations.insert(UPDATE_ANNOTATION.into(), i.to_string());
            let sent = Instant::now();
            match api.update(&pod).await {
                Ok(_) => Ok(Done { conflict: false, call: Some(sent.elapsed()) }),
                Err(e) if e.is_conflict() => Ok(Done { conflict: true, call: Some(sent.elapsed()) }),
                Err(e) => Err(e),
            }
        }
    })
    .await;
    report.step("update (get, then update on its resourceVersion)", Some(rate), &t)?;
    report.single_target("Update (get + compare-and-swap update)", rate, &t);

    eprintln!("bench-api: delete at {rate} req/s (the pods created at this rate)");
    let t = open_loop(rate, total, cfg, |i, _| {
        let api = m[i as usize % m.len()].pods.clone();
        let name = created(i);
        async move { api.delete(&name, &DeleteParams::default()).await.map(|_| Done::ok()) }
    })
    .await;
    report.step("delete", Some(rate), &t)?;
    report.single_target("Delete (not in the issue; held to the same target)", rate, &t);
    Ok(())
}

/// Lists every pod, `page` at a time (0: one call); returns the pods and the calls made.
/// A wall-clock time of day as HH:MM:SS.mmm (UTC), to match the members' logs.
fn clock(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

async fn list_all(api: &Api<Pod>, page: i64) -> Result<(Vec<Pod>, usize), ClientError> {
    let mut params = ListParams::default().limit(page);
    let mut pods = Vec::new();
    let mut calls = 0;
    loop {
        let (items, meta) = api.list(&params).await?;
        calls += 1;
        pods.extend(items);
        if meta.r#continue.is_empty() {
            return Ok((pods, calls));
        }
        params.continue_token = meta.r#continue;
    }
}

/// One kind of list and what its runs saw.
struct ListKind {
    what: &'static str,
    all_namespaces: bool,
    page: i64,
    tally: Tally,
    counts: Vec<usize>,
    runs: Vec<String>,
    bytes: usize,
    calls: usize,
}

/// Lists every pod in one call, in pages, and across all namespaces, `list_runs` times each;
/// the kinds take turns (and each run goes to the next member) so that anything that slows a
/// moment down is shared among them.
async fn list_steps(cfg: &Config, members: &[Member], report: &mut Report) -> anyhow::Result<()> {
    let kind = |what, all_namespaces, page| ListKind {
        what,
        all_namespaces,
        page,
        tally: Tally::new(),
        counts: Vec::new(),
        runs: Vec::new(),
        bytes: 0,
        calls: 0,
    };
    let mut kinds = [
        kind("list, one call", false, 0),
        kind("list, paged", false, cfg.page_size),
        kind("list, all namespaces, one call", true, 0),
    ];
    let start = Instant::now();
    for run in 0..cfg.list_runs {
        for (k, kind) in kinds.iter_mut().enumerate() {
            let m = &members[(run + k) % members.len()];
            let api = if kind.all_namespaces { &m.all_pods } else { &m.pods };
            let sent = Instant::now();
            let answer = tokio::time::timeout(cfg.timeout, list_all(api, kind.page)).await;
            let latency = sent.elapsed();
            kind.runs.push(format!("{:.0} ms at {}", latency.as_secs_f64() * 1000.0, m.endpoint));
            let answer = answer.map(|r| {
                r.map(|(pods, calls)| {
                    kind.counts.push(pods.len());
                    kind.bytes = pods.iter().map(Message::encoded_len).sum::<usize>();
                    kind.calls = calls;
                    Done::ok()
                })
            });
            kind.tally.record(latency, answer);
        }
    }
    for kind in kinds.iter_mut() {
        kind.tally.elapsed = start.elapsed();
        let t = &kind.tally;
        let step = if kind.page > 0 {
            format!("{} ({} a page, {} calls)", kind.what, kind.page, kind.calls)
        } else {
            kind.what.to_string()
        };
        report.step(&step, None, t)?;
        report.notes.push(format!("{step}, each run: {}", kind.runs.join(", ")));
        let count = kind.counts.first().copied().unwrap_or(0);
        if kind.counts.iter().any(|&c| c != count) {
            report.notes.push(format!("{step}: the runs returned different numbers of pods: {:?}", kind.counts));
        }
        if !kind.all_namespaces && count as u64 != cfg.pods {
            report.notes.push(format!("{step}: {count} pods listed, {} expected", cfg.pods));
        }
        if kind.page == 0 && !kind.all_namespaces && count > 0 {
            report.notes.push(format!(
                "a benchmark pod is {} bytes of protobuf on average; the list of {count} pods carries {:.1} MiB",
                kind.bytes / count,
                kind.bytes as f64 / (1 << 20) as f64
            ));
        }
        let ours = match t.max_ms() {
            Some(max) => format!(
                "{count} pods: p50 {:.0} ms, max {max:.0} ms over {} runs ({} errors)",
                t.quantile_ms(0.5).unwrap_or_default(),
                t.ok,
                t.errors()
            ),
            None => format!("no list answered ({} errors)", t.errors()),
        };
        let met = t.max_ms().map(|max| max <= LIST_TARGET_MS && t.errors() == 0);
        report.verdict(
            format!("List of {} pods: {step}", cfg.pods),
            ours,
            format!("≤ {LIST_TARGET_MS:.0} ms (slowest run)"),
            met,
        );
    }
    Ok(())
}

/// What a watcher saw of one write.
struct Seen {
    seq: u64,
    /// When the event arrived.
    at: Instant,
    /// Receive wall time minus the send time the write carried.
    since_sent: Duration,
}

/// Follows the namespace's pods from `rv` until cancelled, noting the writes of the writer.
async fn watcher(
    api: Api<Pod>,
    rv: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut stream = api.watch(&ListParams::default(), &rv).await.context("starting a watch")?;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            e = stream.next() => e,
        };
        let pod = match event {
            None => anyhow::bail!("the server ended the watch"),
            Some(Err(e)) => return Err(e).context("watching"),
            Some(Ok(WatchEvent::Modified(pod))) => pod,
            Some(Ok(_)) => continue,
        };
        let at = Instant::now();
        let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        let notes = &pod.meta().annotations;
        let (Some(seq), Some(sent)) = (
            notes.get(SEQ_ANNOTATION).and_then(|s| s.parse::<u64>().ok()),
            notes.get(SENT_ANNOTATION).and_then(|s| s.parse::<i128>().ok()),
        ) else {
            continue;
        };
        let since_sent = Duration::from_nanos((now_ns - sent).max(0) as u64);
        seen.lock().push(Seen { seq, at, since_sent });
    }
}

async fn watch_step(cfg: &Config, members: &[Member], report: &mut Report) -> anyhow::Result<()> {
    let leader = leader_index(members).await;
    let watched: Vec<(String, usize)> = match leader {
        Some(l) if members.len() > 1 => vec![("leader".into(), l), ("follower".into(), (l + 1) % members.len())],
        Some(l) => vec![("leader".into(), l)],
        None => {
            report.notes.push("no member reported itself leader: the watchers are on the first two members".into());
            (0..members.len().min(2)).map(|i| (format!("member {}", i + 1), i)).collect()
        }
    };
    // Watch from now on, not from the beginning (which would start with every pod as ADDED).
    let (_, meta) = members[0].pods.list(&ListParams::default().limit(1)).await.context("reading the revision")?;
    let stop = CancellationToken::new();
    let mut watchers = JoinSet::new();
    let mut seen = Vec::new();
    for (role, i) in &watched {
        let s = Arc::new(Mutex::new(Vec::new()));
        seen.push((format!("{role} ({})", members[*i].endpoint), s.clone()));
        watchers.spawn(watcher(members[*i].pods.clone(), meta.resource_version.clone(), s, stop.clone()));
    }
    // The watches are open once the server answered; give them a moment to settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let total = (cfg.watch_rate * cfg.watch_time.as_secs_f64()).round().max(1.0) as u64;
    let acks: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total as usize]));
    // Due times as wall-clock time, for the annotation.
    let (wall0, mono0) = (SystemTime::now(), Instant::now());
    eprintln!(
        "bench-api: watch: {} watchers, a writer patching {total} pods at {} writes/s",
        watched.len(),
        cfg.watch_rate
    );
    let m = members.to_vec();
    let t = open_loop(cfg.watch_rate, total, cfg, |i, due| {
        let api = m[i as usize % m.len()].pods.clone();
        let name = fill_name(i % cfg.pods);
        let sent = wall0 + due.saturating_duration_since(mono0);
        let sent_ns = sent.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let acks = acks.clone();
        async move {
            let patch = serde_json::json!({"metadata": {"annotations": {
                SEQ_ANNOTATION: i.to_string(),
                SENT_ANNOTATION: sent_ns.to_string(),
            }}});
            api.patch(&name, &patch, false).await?;
            acks.lock()[i as usize] = Some(Instant::now());
            Ok(Done::ok())
        }
    })
    .await;
    report.step("watch writer (merge patch)", Some(cfg.watch_rate), &t)?;

    // Wait until every watcher saw every acknowledged write, or the drain time is over.
    let drained = Instant::now() + WATCH_DRAIN;
    while Instant::now() < drained && seen.iter().any(|(_, s)| (s.lock().len() as u64) < t.ok) {
        if watchers.try_join_next().is_some() {
            break; // a watcher ended early: its error is reported below
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    while let Some(done) = watchers.join_next().await {
        if let Err(e) = done.context("a watcher panicked")? {
            report.notes.push(format!("a watcher failed: {e:#}"));
        }
    }

    let acks = acks.lock().clone();
    for (who, s) in &seen {
        let s = s.lock();
        let mut since_sent = Tally::new();
        let mut since_ack = Tally::new();
        let mut before_ack = 0;
        let mut seqs: Vec<u64> = s.iter().map(|e| e.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        for e in s.iter() {
            since_sent.record(e.since_sent, Ok(Ok(Done::ok())));
            if let Some(ack) = acks.get(e.seq as usize).copied().flatten() {
                // The event may reach the watcher before the writer has its answer.
                if e.at < ack {
                    before_ack += 1;
                }
                since_ack.record(e.at.saturating_duration_since(ack), Ok(Ok(Done::ok())));
            }
        }
        since_sent.elapsed = t.elapsed;
        since_ack.elapsed = t.elapsed;
        let missing = t.ok.saturating_sub(seqs.len() as u64);
        report.step(
            &format!("watch delivery at {who}: write due → event received"),
            Some(cfg.watch_rate),
            &since_sent,
        )?;
        report.step(
            &format!("watch delivery at {who}: write acknowledged → event received"),
            Some(cfg.watch_rate),
            &since_ack,
        )?;
        if missing > 0 || s.len() != seqs.len() {
            report.notes.push(format!(
                "watcher at {who}: {missing} acknowledged writes never seen, {} seen twice",
                s.len() - seqs.len()
            ));
        }
        report.notes.push(format!(
            "watcher at {who}: {before_ack} of {} events arrived before the writer had its answer (counted as 0 ms after the ack)",
            s.len()
        ));
        let p = |t: &Tally, q| t.quantile_ms(q).unwrap_or_default();
        let ours = if since_sent.ok > 0 {
            format!(
                "p99 {:.1} ms (p50 {:.1}) from the write's due time; p99 {:.1} ms (p50 {:.1}) from its acknowledgement; {} of {} writes seen",
                p(&since_sent, 0.99),
                p(&since_sent, 0.5),
                p(&since_ack, 0.99),
                p(&since_ack, 0.5),
                seqs.len(),
                t.ok
            )
        } else {
            "no event seen".into()
        };
        let met = (since_sent.ok > 0).then(|| p(&since_sent, 0.99) <= WATCH_P99_TARGET_MS && missing == 0);
        report.verdict(
            format!("Watch delivery, watcher on the {who}, {:.0} writes/s", cfg.watch_rate),
            ours,
            format!("p99 ≤ {WATCH_P99_TARGET_MS:.0} ms (from the write's due time)"),
            met,
        );
    }
    Ok(())
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let members = members(&cfg)?;
    let mut report = Report::new(&cfg);
    wait_ready(&cfg, &members).await?;
    ensure_namespace(&members[0].client, &cfg.namespace).await?;
    if !cfg.skip_fill {
        eprintln!("bench-api: filling {} pods in namespace {}", cfg.pods, cfg.namespace);
        fill(&cfg, &members, &mut report).await?;
    }
    for &rate in &cfg.rates {
        single_object_steps(&cfg, &members, rate, &mut report).await?;
    }
    eprintln!("bench-api: lists ({} runs of each)", cfg.list_runs);
    list_steps(&cfg, &members, &mut report).await?;
    watch_step(&cfg, &members, &mut report).await?;
    report.print();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cfg = Opts::parse().validate()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(run(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_pod_is_a_valid_pod() {
        let pod = bench_pod("bench", &fill_name(7), 7);
        assert_eq!(pod.meta().name, "pod-000007");
        assert_eq!(pod.spec.as_ref().map(|s| s.containers.len()), Some(1));
    }

    #[test]
    fn slow_requests_close_together_make_one_pause() {
        let t0 = UNIX_EPOCH + Duration::from_secs(3600);
        let ms = Duration::from_millis;
        let mut t = Tally::new();
        // Two overlapping slow requests, one 400 ms after the first pause ended, one far later.
        t.slow = vec![(t0 + ms(2000), ms(150)), (t0, ms(200)), (t0 + ms(10), ms(300)), (t0 + ms(710), ms(120))];
        let pauses = t.pauses();
        assert_eq!(pauses.len(), 2, "{pauses:?}");
        assert_eq!(pauses[0], (t0, t0 + ms(830), 3, ms(300)));
        assert_eq!(pauses[1], (t0 + ms(2000), t0 + ms(2150), 1, ms(150)));
        assert_eq!(clock(t0 + ms(61_005)), "01:01:01.005");
    }

    #[test]
    fn pods_are_picked_across_the_whole_fill() {
        let picked: std::collections::HashSet<u64> = (0..3000).map(|i| splitmix64(i) % 10_000).collect();
        assert!(picked.len() > 2000, "{}", picked.len());
    }
}
