//! `bench-kv`: a load generator for any etcd v3 endpoint, with the workloads of etcd's own
//! `tools/benchmark`, so that rkube and etcd can be measured by the same client.
//!
//! - `put`: keys of `--key-size` bytes (8) chosen at random in `--key-space` (100000), values of
//!   `--val-size` bytes (256).
//! - `range`: single-key gets of keys in the key space, linearizable by default or
//!   `--serializable`; write the keys first with `fill`.
//! - `fill`: writes keys `0..--keys` once each, then exits (the RSS measurement uses it).
//! - `report`: reads the `--json` lines of two systems and prints them side by side, with ratios.
//!
//! `--clients` requests are in flight at once, carried by `--conns` HTTP/2 connections that are
//! spread round-robin over `--endpoints`; client `i` uses connection `i % conns`, as in etcd's
//! tool. Each run prints one line: throughput, mean, p50 and p99 latency, errors.
//!
//! Talks only to the etcd v3 gRPC API (KV, and Maintenance for `--target-leader`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rkube::pb::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, RangeRequest, StatusRequest,
};
use tokio::time::Instant;
use tonic::transport::Channel;

/// Distinct error messages kept per run; the rest are counted under one line.
const MAX_ERROR_KINDS: usize = 16;
const OTHER_ERRORS: &str = "(other errors)";
/// Latencies above this are recorded as this (the histogram's upper bound), in microseconds.
const MAX_LATENCY_US: u64 = 120_000_000;

#[derive(Parser)]
#[command(name = "bench-kv", about = "etcd v3 key-value benchmark (etcd tools/benchmark workloads)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes random keys of the key space.
    Put {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        keys: KeyOpts,
        /// Value size in bytes.
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        /// Write keys 0, 1, 2, ... instead of random ones.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Reads single random keys of the key space (written beforehand with `fill`).
    Range {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        keys: KeyOpts,
        /// Serve from the member's local state (etcd's `--consistency=s`), not linearizably.
        #[arg(long)]
        serializable: bool,
    },
    /// Writes keys 0..N once each, then exits.
    Fill {
        #[command(flatten)]
        load: LoadOpts,
        /// Number of keys to write.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Key size in bytes (at least 8).
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 256)]
        val_size: usize,
    },
    /// Prints the JSON lines of two systems side by side as Markdown tables, with ratios.
    Report {
        /// Files of JSON lines written with `--json` (and RSS lines written by run.sh).
        files: Vec<PathBuf>,
        /// Label of the system measured (numerator of the ratios).
        #[arg(long, default_value = "rkube")]
        new: String,
        /// Label of the reference system (denominator of the ratios).
        #[arg(long, default_value = "etcd")]
        base: String,
    },
}

/// Flags shared by every load-generating command.
#[derive(Args, Clone, Debug)]
struct LoadOpts {
    /// Client addresses, host:port, comma-separated.
    #[arg(long, env = "BENCH_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// gRPC connections (HTTP/2), spread round-robin over the endpoints.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Requests to send in all (not used by `fill`, which sends --keys).
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Send only to the member that leads (asked with Maintenance.Status).
    #[arg(long)]
    target_leader: bool,
    /// Stop sending after this many seconds even if --total is not reached (0: no limit), so
    /// that a slow system still finishes; the output shows how many requests were sent.
    #[arg(long, default_value_t = 0)]
    max_secs: u64,
    /// A request not answered in this many seconds counts as an error.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Seed of the key choice (client i uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Name of the system measured, carried into the output (e.g. rkube, etcd).
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args, Clone, Debug)]
struct KeyOpts {
    /// Key size in bytes (at least 8: the key number fills the last 8).
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
}

/// A validated load: who to talk to and how hard.
#[derive(Debug, Clone)]
struct LoadConfig {
    endpoints: Vec<String>,
    clients: usize,
    conns: usize,
    total: u64,
    target_leader: bool,
    max_time: Option<Duration>,
    timeout: Duration,
    seed: u64,
    json: bool,
    label: String,
}

impl LoadOpts {
    fn validate(&self, total: u64) -> anyhow::Result<LoadConfig> {
        let endpoints: Vec<String> =
            self.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        ensure!(!endpoints.is_empty(), "--endpoints lists no address");
        ensure!(self.clients >= 1, "--clients must be at least 1");
        ensure!((1..=self.clients).contains(&self.conns), "--conns must be between 1 and --clients");
        ensure!(total >= 1, "--total must be at least 1");
        ensure!(self.timeout_secs >= 1, "--timeout-secs must be at least 1");
        Ok(LoadConfig {
            endpoints,
            clients: self.clients,
            conns: self.conns,
            total,
            target_leader: self.target_leader,
            max_time: (self.max_secs > 0).then(|| Duration::from_secs(self.max_secs)),
            timeout: Duration::from_secs(self.timeout_secs),
            seed: self.seed,
            json: self.json,
            label: self.label.clone(),
        })
    }
}

/// Which keys a run touches.
#[derive(Debug, Clone, Copy)]
enum KeyChoice {
    /// Uniformly at random in `0..space`.
    Random { space: u64 },
    /// The request number itself: every key once.
    Sequential,
}

/// One request kind of a run.
#[derive(Debug, Clone)]
enum Op {
    Put { value: Arc<Vec<u8>> },
    Range { serializable: bool },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Range { serializable: false } => "range-linearizable",
            Op::Range { serializable: true } => "range-serializable",
        }
    }
}

#[derive(Debug, Clone)]
struct Workload {
    name: &'static str,
    op: Op,
    keys: KeyChoice,
    key_size: usize,
}

/// Key number `n` as `size` bytes: zero padding, then `n` big-endian, so that keys sort by number.
fn encode_key(n: u64, size: usize) -> Vec<u8> {
    let mut key = vec![0u8; size];
    key[size - 8..].copy_from_slice(&n.to_be_bytes());
    key
}

/// What one client saw.
struct Tally {
    latencies_us: Histogram<u64>,
    ok: u64,
    /// Gets that found no key.
    misses: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            latencies_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("the histogram bounds are valid"),
            ok: 0,
            misses: 0,
            errors: BTreeMap::new(),
        }
    }

    /// Counts `n` errors with message `msg`, under a shared line once the kinds run out.
    fn error(&mut self, msg: String, n: u64) {
        let slot = if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&msg) {
            msg
        } else {
            OTHER_ERRORS.to_string()
        };
        *self.errors.entry(slot).or_default() += n;
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.add(&other.latencies_us).expect("histograms with the same bounds merge");
        self.ok += other.ok;
        self.misses += other.misses;
        for (msg, n) in other.errors {
            self.error(msg, n);
        }
    }
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(channel)
}

/// The endpoints whose member is the leader, as each reports in Maintenance.Status.
async fn leader_endpoints(endpoints: &[String]) -> anyhow::Result<Vec<String>> {
    let mut leaders = Vec::new();
    for addr in endpoints {
        let mut client = MaintenanceClient::new(connect(addr).await?);
        let status = client.status(StatusRequest {}).await.with_context(|| format!("status of {addr}"))?.into_inner();
        let member = status.header.map(|h| h.member_id).unwrap_or(0);
        if member != 0 && member == status.leader {
            leaders.push(addr.clone());
        }
    }
    ensure!(!leaders.is_empty(), "no endpoint among {endpoints:?} reports itself as leader");
    Ok(leaders)
}

/// When the clients stop taking requests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    total: u64,
    deadline: Option<Instant>,
    timeout: Duration,
}

/// One client: takes request numbers from `next` until `total` or the deadline, one request in
/// flight.
async fn client(mut kv: KvClient<Channel>, work: Workload, next: Arc<AtomicU64>, limits: Limits, seed: u64) -> Tally {
    let Limits { total, deadline, timeout } = limits;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total || deadline.is_some_and(|d| Instant::now() >= d) {
            return tally;
        }
        let n = match work.keys {
            KeyChoice::Random { space } => rng.gen_range(0..space),
            KeyChoice::Sequential => i,
        };
        let key = encode_key(n, work.key_size);
        let start = Instant::now();
        let answer = match &work.op {
            Op::Put { value } => {
                let req = PutRequest { key, value: value.to_vec(), ..Default::default() };
                tokio::time::timeout(timeout, kv.put(req)).await.map(|r| r.map(|_| true))
            }
            Op::Range { serializable } => {
                let req = RangeRequest { key, serializable: *serializable, ..Default::default() };
                tokio::time::timeout(timeout, kv.range(req)).await.map(|r| r.map(|resp| !resp.get_ref().kvs.is_empty()))
            }
        };
        let us = (start.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
        match answer {
            Ok(Ok(found)) => {
                tally.latencies_us.saturating_record(us);
                tally.ok += 1;
                if !found {
                    tally.misses += 1;
                }
            }
            Ok(Err(status)) => tally.error(format!("{:?}: {}", status.code(), status.message()), 1),
            Err(_) => tally.error(format!("no answer within {timeout:?}"), 1),
        }
    }
}

/// The figures of one run.
struct Outcome {
    tally: Tally,
    elapsed: Duration,
    endpoints: Vec<String>,
}

async fn run(cfg: &LoadConfig, work: &Workload) -> anyhow::Result<Outcome> {
    let endpoints = if cfg.target_leader { leader_endpoints(&cfg.endpoints).await? } else { cfg.endpoints.clone() };
    // Every connection is open before the clock starts: the run measures requests, not dials.
    let mut channels = Vec::with_capacity(cfg.conns);
    for c in 0..cfg.conns {
        channels.push(connect(&endpoints[c % endpoints.len()]).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let limits = Limits { total: cfg.total, deadline: cfg.max_time.map(|d| start + d), timeout: cfg.timeout };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cfg.clients {
        let kv = KvClient::new(channels[i % cfg.conns].clone());
        tasks.spawn(client(kv, work.clone(), next.clone(), limits, cfg.seed.wrapping_add(i as u64)));
    }
    let mut tally = Tally::new();
    while let Some(done) = tasks.join_next().await {
        tally.merge(done.context("a client task panicked")?);
    }
    Ok(Outcome { tally, elapsed: start.elapsed(), endpoints })
}

fn ms(us: f64) -> f64 {
    (us / 10.0).round() / 100.0
}

fn print(cfg: &LoadConfig, work: &Workload, out: &Outcome) {
    let t = &out.tally;
    let errors: u64 = t.errors.values().sum();
    let secs = out.elapsed.as_secs_f64();
    let rate = if secs > 0.0 { t.ok as f64 / secs } else { 0.0 };
    // Runs against the leader alone are a different workload from runs spread over members.
    let name = if cfg.target_leader { format!("{}-leader", work.name) } else { work.name.to_string() };
    let h = &t.latencies_us;
    let (mean, p50, p99) = if t.ok > 0 {
        (ms(h.mean()), ms(h.value_at_quantile(0.50) as f64), ms(h.value_at_quantile(0.99) as f64))
    } else {
        (0.0, 0.0, 0.0)
    };
    for (msg, n) in &t.errors {
        eprintln!("bench-kv: {} {name}: {n} × {msg}", cfg.label);
    }
    if cfg.json {
        let line = serde_json::json!({
            "label": cfg.label,
            "workload": name,
            "clients": cfg.clients,
            "conns": cfg.conns,
            "endpoints": out.endpoints,
            "total": cfg.total,
            "sent": t.ok + errors,
            "ok": t.ok,
            "errors": errors,
            "misses": t.misses,
            "elapsed_s": (secs * 1000.0).round() / 1000.0,
            "req_per_s": rate.round(),
            "mean_ms": mean,
            "p50_ms": p50,
            "p99_ms": p99,
        });
        println!("{line}");
    } else {
        println!(
            "{:<6} {:<19} clients={:<5} conns={:<4} ok={:<7} err={:<5} miss={:<5} of {:<7} {:>9.0} req/s  mean {:>7.2} ms  p50 {:>7.2} ms  p99 {:>7.2} ms",
            cfg.label, name, cfg.clients, cfg.conns, t.ok, errors, t.misses, cfg.total, rate, mean, p50, p99
        );
    }
}

/// One JSON record of a results file, keyed for the side-by-side join.
#[derive(Debug)]
struct Record {
    label: String,
    key: String,
    value: serde_json::Value,
}

fn read_records(files: &[PathBuf]) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| l.trim_start().starts_with('{')) {
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", f.display(), n + 1))?;
            let s = |k: &str| value.get(k).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
            let key = match s("workload").as_str() {
                "rss" => format!("rss {}", s("phase")),
                "group-commit" => format!("group-commit {}", s("member")),
                w => format!("{w} {} {}", s("clients"), s("conns")),
            };
            out.push(Record { label: s("label"), key, value });
        }
    }
    Ok(out)
}

fn num(v: &serde_json::Value, field: &str) -> Option<f64> {
    v.get(field).and_then(serde_json::Value::as_f64)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}")).unwrap_or_else(|| "-".into())
}

/// Prints the load runs and RSS samples of `new` and `base` side by side, then the issue's
/// targets with whether each is met.
fn report(files: &[PathBuf], new: &str, base: &str) -> anyhow::Result<()> {
    let records = read_records(files)?;
    let find =
        |label: &str, key: &str| records.iter().rev().find(|r| r.label == label && r.key == key).map(|r| &r.value);
    let mut keys: Vec<&str> = Vec::new();
    for r in &records {
        if !keys.contains(&r.key.as_str()) {
            keys.push(&r.key);
        }
    }
    if keys.is_empty() {
        bail!("no JSON records in {files:?}");
    }
    println!(
        "| workload | clients | conns | {new} req/s | {base} req/s | ratio | {new} p50 ms | {base} p50 ms | ratio \
         | {new} p99 ms | {base} p99 ms | ratio | ok {new}/{base} | errors {new}/{base} |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for key in keys.iter().filter(|k| !k.starts_with("rss ") && !k.starts_with("group-commit ")) {
        let (a, b) = (find(new, key), find(base, key));
        let any = a.or(b).expect("every key comes from a record");
        let f = |v: Option<&serde_json::Value>, field: &str| v.and_then(|v| num(v, field));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {}/{} |",
            any["workload"].as_str().unwrap_or("?"),
            any["clients"],
            any["conns"],
            cell(f(a, "req_per_s"), 0),
            cell(f(b, "req_per_s"), 0),
            ratio(f(a, "req_per_s"), f(b, "req_per_s")),
            cell(f(a, "p50_ms"), 2),
            cell(f(b, "p50_ms"), 2),
            ratio(f(a, "p50_ms"), f(b, "p50_ms")),
            cell(f(a, "p99_ms"), 2),
            cell(f(b, "p99_ms"), 2),
            ratio(f(a, "p99_ms"), f(b, "p99_ms")),
            cell(f(a, "ok"), 0),
            cell(f(b, "ok"), 0),
            cell(f(a, "errors"), 0),
            cell(f(b, "errors"), 0),
        );
    }
    let rss: Vec<&&str> = keys.iter().filter(|k| k.starts_with("rss ")).collect();
    if !rss.is_empty() {
        println!();
        println!("| RSS, sum of 3 members | {new} MiB | {base} MiB | ratio | {new} anon MiB | {base} anon MiB |");
        println!("|---|--:|--:|--:|--:|--:|");
        for key in rss {
            let (a, b) = (find(new, key), find(base, key));
            let mib = |v: Option<&serde_json::Value>, field: &str| v.and_then(|v| num(v, field)).map(|k| k / 1024.0);
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                key.trim_start_matches("rss "),
                cell(mib(a, "rss_kib"), 1),
                cell(mib(b, "rss_kib"), 1),
                ratio(mib(a, "rss_kib"), mib(b, "rss_kib")),
                cell(mib(a, "rss_anon_kib"), 1),
                cell(mib(b, "rss_anon_kib"), 1),
            );
        }
    }

    // A log entry may carry several client writes (rkube batches them), so the writes the
    // benchmark made in the run are shown per fsync too.
    let commits: Vec<&Record> = records.iter().filter(|r| r.key.starts_with("group-commit ")).collect();
    if !commits.is_empty() {
        println!();
        for label in [new, base] {
            let writes: f64 = records
                .iter()
                .filter(|r| r.label == label && (r.key.starts_with("put") || r.key.starts_with("fill ")))
                .filter_map(|r| num(&r.value, "ok"))
                .sum();
            let mine: Vec<&&Record> = commits.iter().filter(|r| r.label == label).collect();
            let per_sync = |what: &dyn Fn(&Record) -> Option<f64>| -> String {
                let each: Vec<String> = mine
                    .iter()
                    .filter_map(|r| Some(format!("{:.1}", what(r)? / num(&r.value, "syncs")?.max(1.0))))
                    .collect();
                each.join(", ")
            };
            if !mine.is_empty() {
                println!(
                    "- {label}, whole run, per member: Raft log entries per WAL fsync {}; client writes ({writes}) \
                     per WAL fsync {}",
                    per_sync(&|r| num(&r.value, "entries")),
                    per_sync(&|_| Some(writes)),
                );
            }
        }
    }

    println!();
    let verdict = |r: Option<f64>, ok: fn(f64) -> bool| match r {
        Some(r) if ok(r) => format!("{r:.2}, met"),
        Some(r) => format!("{r:.2}, NOT met"),
        None => "not measured".to_string(),
    };
    let rate_ratio = |key: &str| {
        let (a, b) = (find(new, key)?, find(base, key)?);
        Some(num(a, "req_per_s")? / num(b, "req_per_s")?)
    };
    // Keys are "workload clients conns"; puts are `put` (all members) and `put-leader`.
    for key in keys.iter().filter(|k| k.starts_with("put")) {
        let mut parts = key.split(' ');
        let (workload, clients) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let clients: u64 = clients.parse().unwrap_or(0);
        if clients >= 256 {
            let r = verdict(rate_ratio(key), |r| r >= 1.5);
            println!("- target: {workload} throughput at {clients} clients ≥ 1.5× {base}: {r}");
        }
        if clients == 1 {
            let p50 = (|| Some(num(find(new, key)?, "p50_ms")? / num(find(base, key)?, "p50_ms")?))();
            println!("- target: single-client {workload} p50 ≤ 0.7× {base}: {}", verdict(p50, |r| r <= 0.7));
        }
    }
    if let Some(key) = keys.iter().find(|k| k.starts_with("rss ") && k.contains("fill")) {
        let rss = (|| Some(num(find(new, key)?, "rss_kib")? / num(find(base, key)?, "rss_kib")?))();
        println!("- target: RSS {} ≤ 0.5× {base}: {}", key.trim_start_matches("rss "), verdict(rss, |r| r <= 0.5));
    }
    Ok(())
}

async fn load(cfg: LoadConfig, work: Workload) -> anyhow::Result<std::process::ExitCode> {
    let out = run(&cfg, &work).await?;
    print(&cfg, &work, &out);
    // A run in which nothing succeeded measured nothing: say so in the exit status.
    Ok(if out.tally.ok == 0 { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}

fn value(size: usize) -> Arc<Vec<u8>> {
    // Like etcd's tool: one value of random bytes, sent with every put.
    let mut rng = StdRng::seed_from_u64(0);
    Arc::new((0..size).map(|_| rng.gen()).collect())
}

fn check_key_size(size: usize) -> anyhow::Result<()> {
    ensure!(size >= 8, "--key-size must be at least 8 (the key number takes 8 bytes)");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Put { load: opts, keys, val_size, sequential_keys } => {
            check_key_size(keys.key_size)?;
            ensure!(keys.key_space >= 1, "--key-space must be at least 1");
            let choice =
                if sequential_keys { KeyChoice::Sequential } else { KeyChoice::Random { space: keys.key_space } };
            let op = Op::Put { value: value(val_size) };
            let work = Workload { name: op.name(), op, keys: choice, key_size: keys.key_size };
            load(opts.validate(opts.total)?, work).await
        }
        Cmd::Range { load: opts, keys, serializable } => {
            check_key_size(keys.key_size)?;
            ensure!(keys.key_space >= 1, "--key-space must be at least 1");
            let op = Op::Range { serializable };
            let work = Workload {
                name: op.name(),
                op,
                keys: KeyChoice::Random { space: keys.key_space },
                key_size: keys.key_size,
            };
            load(opts.validate(opts.total)?, work).await
        }
        Cmd::Fill { load: opts, keys, key_size, val_size } => {
            check_key_size(key_size)?;
            let work = Workload {
                name: "fill",
                op: Op::Put { value: value(val_size) },
                keys: KeyChoice::Sequential,
                key_size,
            };
            load(opts.validate(keys)?, work).await
        }
        Cmd::Report { files, new, base } => {
            report(&files, &new, &base)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_eight_bytes_and_sort_by_number() {
        assert_eq!(encode_key(1, 8), vec![0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(encode_key(258, 10), vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert!(encode_key(255, 8) < encode_key(256, 8));
    }

    #[test]
    fn merged_tallies_keep_every_error_count() {
        let mut a = Tally::new();
        let mut b = Tally::new();
        for i in 0..MAX_ERROR_KINDS + 3 {
            b.error(format!("e{i}"), 1);
            b.error(format!("e{i}"), 1);
        }
        a.error("e0".into(), 1);
        a.merge(b);
        let total: u64 = a.errors.values().sum();
        assert_eq!(total, 1 + 2 * (MAX_ERROR_KINDS as u64 + 3));
        assert_eq!(a.errors["e0"], 3);
    }
}
