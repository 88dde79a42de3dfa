//! `jepsen`: runs workloads against a three-member cluster in Docker while a nemesis injects
//! faults, records the history, and checks it. See tests/jepsen/README.md.
//!
//! # Layout
//! - [`history`]: operations (invoke / ok / fail / info) and their JSON-lines form.
//! - [`client`]: the etcd v3 client the workloads use, and what an error means for a write.
//! - [`db`]: the cluster (Compose, containers, iptables in their namespaces, member replace).
//! - [`nemesis`]: the faults and their schedule.
//! - [`workload`]: register, set and watch clients.
//! - [`checker`]: linearizability, lost writes, watch guarantees, recovery.
//! - [`plot`]: the latency-over-time PNG.
//! - [`report`]: the summary of a run and the figures.

mod checker;
mod client;
mod db;
mod history;
mod nemesis;
mod plot;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use db::{Cluster, Guard, System};
use history::Recorder;
use nemesis::{Fault, Schedule};
use workload::Ctx;

#[derive(Parser)]
#[command(name = "jepsen", about = "Fault-injection tests of rkube's store (and etcd's) with history checkers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a suite of scenarios, one fresh cluster each; prints one line per scenario.
    Run {
        /// `full`, `smoke`, `broken` (needs the test-only stale-read switch: expects anomalies).
        suite: String,
        /// Which store to test.
        #[arg(long, value_enum, default_value = "rkube")]
        system: System,
        /// Run only the scenarios whose names contain this.
        #[arg(long)]
        only: Option<String>,
        /// Where run folders go.
        #[arg(long, default_value = "target/jepsen")]
        out: PathBuf,
        /// Multiplies every scenario's fault phase (0.5 halves the suite's time).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Host port of the first member's client API; the others use the next two.
        #[arg(long)]
        base_port: Option<u16>,
        /// Seed of the nemesis schedule and the workloads' choices (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Checks a recorded history again (a run folder's history.jsonl).
    Check { history: PathBuf },
}

#[derive(Clone, Copy, Default)]
pub struct Workloads {
    pub register: bool,
    pub set: bool,
    pub watch: bool,
    /// Pods and Deployments through the rkube.v1 API (rkube only: etcd has no such API).
    pub objects: bool,
}

pub struct Scenario {
    pub name: &'static str,
    pub workloads: Workloads,
    pub faults: Vec<Fault>,
    /// Seconds of faults; a quiet recovery phase follows.
    pub seconds: u64,
    /// The broken build: the run passes only if the checkers find anomalies.
    pub expect_anomalies: bool,
    /// Extra Compose files.
    pub overrides: Vec<String>,
}

impl Workloads {
    /// Whether any of these workloads can run against `system`.
    fn any_for(&self, system: System) -> bool {
        self.register || self.set || self.watch || (self.objects && system == System::Rkube)
    }
}

const ALL: Workloads = Workloads { register: true, set: true, watch: true, objects: true };
const REGISTER: Workloads = Workloads { register: true, set: false, watch: false, objects: false };

fn suite(name: &str, system: System) -> Result<Vec<Scenario>> {
    let s = |name, workloads, faults, seconds| Scenario {
        name,
        workloads,
        faults,
        seconds,
        expect_anomalies: false,
        overrides: vec![],
    };
    let mut all_faults: Vec<Fault> = [Fault::kills(), Fault::pauses(), Fault::partitions()].concat();
    all_faults.push(Fault::ReplaceMember);
    Ok(match name {
        "smoke" => vec![s(
            "smoke-mixed",
            ALL,
            vec![Fault::KillLeader, Fault::PartitionLeader, Fault::PauseRandom, Fault::PartitionRing],
            50,
        )],
        "full" => vec![
            s("register-kill", REGISTER, Fault::kills(), 90),
            s("register-partition", REGISTER, Fault::partitions(), 90),
            s("register-pause", REGISTER, Fault::pauses(), 60),
            s(
                "set-kill-pause",
                Workloads { set: true, ..Default::default() },
                [Fault::kills(), Fault::pauses()].concat(),
                90,
            ),
            s(
                "watch-partition-kill",
                Workloads { watch: true, ..Default::default() },
                [Fault::partitions(), Fault::kills()].concat(),
                90,
            ),
            s(
                "objects-kill-partition",
                Workloads { objects: true, ..Default::default() },
                [Fault::kills(), Fault::partitions()].concat(),
                90,
            ),
            s("mixed-replace", ALL, vec![Fault::ReplaceMember, Fault::KillLeader, Fault::PartitionRandom], 90),
            s("mixed-all", ALL, all_faults, 120),
        ]
        .into_iter()
        // etcd has no object API: its suite leaves out the scenario of objects alone.
        .filter(|sc| sc.workloads.any_for(system))
        .collect(),
        "broken" => {
            anyhow::ensure!(system == System::Rkube, "the broken build is rkube's; --system etcd has none");
            vec![Scenario {
                name: "broken-stale-reads-partition",
                workloads: REGISTER,
                faults: vec![Fault::PartitionLeader, Fault::PartitionRandom],
                seconds: 45,
                expect_anomalies: true,
                overrides: vec!["tests/jepsen/unsafe-stale-reads.yml".into()],
            }]
        }
        other => anyhow::bail!("unknown suite {other:?}: full, smoke or broken"),
    })
}

/// The outcome of one scenario.
pub struct Outcome {
    pub line: String,
    pub passed: bool,
}

async fn run_scenario(
    sc: &Scenario,
    system: System,
    out_dir: &Path,
    base_port: u16,
    time_scale: f64,
    seed: u64,
) -> Result<Outcome> {
    std::fs::create_dir_all(out_dir)?;
    let project = format!(
        "rkube-jepsen-{}",
        match system {
            System::Rkube => "rkube",
            System::Etcd => "etcd",
        }
    );
    let cluster = Cluster::new(system, &project, base_port, &sc.overrides);
    let guard = Guard(&cluster);
    cluster.up().await.context("starting the cluster")?;

    let rec = Recorder::new();
    let stop = CancellationToken::new();
    let ctx = Ctx {
        rec: rec.clone(),
        members: cluster.members().iter().map(|m| (m.name.clone(), m.port)).collect(),
        stop: stop.clone(),
        prefix: format!("jepsen/{seed:x}"),
        op_timeout: Duration::from_millis(1500),
        think: Duration::from_millis(10),
        seed,
    };
    let mut tasks = Vec::new();
    if sc.workloads.register {
        let opts = workload::register::Opts { workers: 6, keys: 3, ops_per_key: 300 };
        tasks.push(tokio::spawn(workload::register::run(ctx.clone(), opts)));
    }
    if sc.workloads.set {
        tasks.push(tokio::spawn(workload::set::run(ctx.clone(), 3)));
    }
    const OBJECTS: usize = 6;
    let objects = sc.workloads.objects && system == System::Rkube;
    if objects {
        workload::objects::setup(&ctx, OBJECTS, Duration::from_secs(30)).await.context("creating the objects")?;
        tasks.push(tokio::spawn(workload::objects::run(ctx.clone(), 4, OBJECTS)));
    }
    let target = Arc::new(AtomicI64::new(0));
    let mut watchers = Vec::new();
    let mut watch_from = 0;
    if sc.workloads.watch {
        watch_from = workload::watch::start_revision(&ctx).await?;
        for i in 0..ctx.members.len() {
            watchers.push(tokio::spawn(workload::watch::watcher(
                ctx.clone(),
                3_000_000 + i as i64,
                i,
                watch_from,
                target.clone(),
                true,
                false,
                Duration::from_secs(30),
            )));
        }
        tasks.push(tokio::spawn(workload::watch::writers(ctx.clone(), 2)));
    }

    let schedule = Schedule { faults: sc.faults.clone(), fault_ms: (5000, 10000), quiet_ms: (2000, 5000), seed };
    let nemesis_stop = CancellationToken::new();
    let fault_phase = Duration::from_secs_f64(sc.seconds as f64 * time_scale);
    let timer = {
        let t = nemesis_stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(fault_phase).await;
            t.cancel();
        })
    };
    let healed = nemesis::run(&cluster, &rec, &schedule, nemesis_stop).await;
    timer.abort();
    let heal_us = rec.elapsed_us();
    // Recovery: the first leader every answering member agrees on, measured from the heal.
    let mut leader_ms = None;
    let probe_until = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < probe_until {
        if cluster.leader().await.is_some() {
            leader_ms = Some((rec.elapsed_us() - heal_us) / 1000);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The quiet phase: workloads keep running on a healed cluster.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    if sc.workloads.set {
        workload::set::final_reads(&ctx, Duration::from_secs(30)).await;
    }
    if objects {
        workload::objects::final_reads(&ctx, OBJECTS, Duration::from_secs(30)).await;
    }
    if sc.workloads.watch {
        if let Some(rev) = workload::watch::sentinel(&ctx, Duration::from_secs(30)).await {
            target.store(rev, std::sync::atomic::Ordering::SeqCst);
        }
        for w in watchers {
            let _ = w.await;
        }
        let refs: Vec<_> = (0..ctx.members.len())
            .map(|i| {
                tokio::spawn(workload::watch::watcher(
                    ctx.clone(),
                    4_000_000 + i as i64,
                    i,
                    watch_from,
                    target.clone(),
                    false,
                    true,
                    Duration::from_secs(30),
                ))
            })
            .collect();
        for r in refs {
            let _ = r.await;
        }
    }
    std::fs::write(out_dir.join("members.log"), cluster.logs().await)?;
    drop(guard);

    let ops = rec.snapshot();
    let report = report::Report::build(sc.name, system, &ops, leader_ms, healed.err().map(|e| format!("{e:#}")));
    report.write(out_dir, &ops)?;
    let passed = report.passed() != sc.expect_anomalies;
    let verdict = match (report.anomalies.is_empty(), sc.expect_anomalies, passed) {
        (_, _, false) if sc.expect_anomalies => "FAIL (the broken build was not caught)",
        (_, _, false) => "FAIL",
        (_, true, true) => "PASS (the broken build was caught)",
        _ => "PASS",
    };
    let line = format!(
        "{:<30} {:>6} {:>7} ops (ok {}, fail {}, info {}), {} anomalies, {}  [{}]",
        sc.name,
        format!("{system:?}").to_lowercase(),
        report.ops,
        report.ok,
        report.fail,
        report.info,
        report.anomalies.len(),
        verdict,
        out_dir.display()
    );
    Ok(Outcome { line, passed })
}

async fn run(
    suite_name: &str,
    system: System,
    only: Option<String>,
    out: &Path,
    time_scale: f64,
    base_port: Option<u16>,
    seed: Option<u64>,
) -> Result<bool> {
    let scenarios: Vec<Scenario> =
        suite(suite_name, system)?.into_iter().filter(|s| only.as_deref().is_none_or(|o| s.name.contains(o))).collect();
    anyhow::ensure!(!scenarios.is_empty(), "no scenario matches");
    let stamp = utc_stamp(std::time::SystemTime::now());
    let run_dir = out.join(format!("{stamp}-{}-{suite_name}", format!("{system:?}").to_lowercase()));
    let base_port = base_port.unwrap_or(match system {
        System::Rkube => 16443,
        System::Etcd => 12379,
    });
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "jepsen: {} scenario(s) against {system:?}, seed {seed}, output in {}",
        scenarios.len(),
        run_dir.display()
    );
    let mut all_passed = true;
    for (i, sc) in scenarios.iter().enumerate() {
        let dir = run_dir.join(sc.name);
        match run_scenario(sc, system, &dir, base_port, time_scale, seed.wrapping_add(i as u64)).await {
            Ok(o) => {
                println!("{}", o.line);
                all_passed &= o.passed;
            }
            Err(e) => {
                println!("{:<30} ERROR: {e:#}", sc.name);
                all_passed = false;
            }
        }
    }
    Ok(all_passed)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_env("JEPSEN_LOG")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { suite, system, only, out, time_scale, base_port, seed } => {
            // An interrupt stops the run; the cluster guard removes the containers on the way out.
            tokio::select! {
                r = run(&suite, system, only, &out, time_scale, base_port, seed) => r,
                _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Cmd::Check { history } => check_file(&history),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `20250101T120000Z` for a run folder's name.
fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn check_file(path: &Path) -> Result<bool> {
    let ops = history::read_jsonl(path)?;
    let report = report::Report::build_with("recheck", System::Rkube, &ops, None, false, None);
    println!("{}", report.text());
    Ok(report.anomalies.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_folders_are_named_by_utc_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3_723);
        assert_eq!(super::utc_stamp(t), "20000229T010203Z");
    }

    #[test]
    fn etcds_full_suite_leaves_out_only_the_objects_alone() {
        use crate::db::System;
        let names = |system| super::suite("full", system).unwrap().iter().map(|s| s.name).collect::<Vec<_>>();
        let rkube = names(System::Rkube);
        let etcd = names(System::Etcd);
        assert!(rkube.contains(&"objects-kill-partition"), "{rkube:?}");
        let without: Vec<_> = rkube.iter().copied().filter(|n| *n != "objects-kill-partition").collect();
        assert_eq!(etcd, without);
    }
}
