//! The summary of a run: counts of operations by outcome, every checker's anomalies with the
//! operations involved, and the figures (throughput during faults and outside them, the
//! longest time without an acknowledged operation, recovery after the last heal). Written as
//! summary.json and summary.txt beside history.jsonl and latency.png.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::checker::{self, Anomaly};
use crate::db::System;
use crate::history::{self, pairs, Kind, Op, F};
use crate::plot;

/// Per-key search budget of the linearizability checker.
const MAX_STEPS: u64 = 20_000_000;
/// Recovery bound after the last heal.
const RECOVERY_MS: u64 = 10_000;

#[derive(Serialize, Debug)]
pub struct Figures {
    pub seconds: f64,
    pub fault_seconds: f64,
    /// Acknowledged operations per second while a fault was active.
    pub ok_per_s_faults: f64,
    /// ... and while none was.
    pub ok_per_s_healthy: f64,
    /// The longest time without any acknowledged client operation, and when it began.
    pub longest_unavailable_ms: u64,
    pub longest_unavailable_at_s: f64,
    /// Per kind of fault: the longest time without an acknowledged operation while it was on.
    pub worst_gap_ms_by_fault: BTreeMap<String, u64>,
}

#[derive(Serialize)]
pub struct Report {
    pub scenario: String,
    pub system: System,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// Per operation kind: [ok, fail, info].
    pub by_f: BTreeMap<String, [usize; 3]>,
    pub faults: Vec<(String, f64, f64)>,
    pub anomalies: Vec<Anomaly>,
    /// Keys whose linearizability search gave up (neither pass nor fail).
    pub unknown: Vec<String>,
    pub set: Option<checker::set::SetStats>,
    pub watch: Option<checker::watch::WatchStats>,
    pub recovery: checker::recovery::RecoveryStats,
    pub figures: Figures,
    /// Set when the nemesis could not heal the cluster at the end.
    pub heal_error: Option<String>,
}

impl Report {
    /// `leader_ms`: the probe's time to a leader after the last heal; `None` with
    /// `probed == false` skips the recovery check (re-checking an old history).
    pub fn build(
        scenario: &str,
        system: System,
        ops: &[Op],
        leader_ms: Option<u64>,
        heal_error: Option<String>,
    ) -> Report {
        Self::build_with(scenario, system, ops, leader_ms, true, heal_error)
    }

    pub fn build_with(
        scenario: &str,
        system: System,
        ops: &[Op],
        leader_ms: Option<u64>,
        probed: bool,
        heal_error: Option<String>,
    ) -> Report {
        let mut by_f: BTreeMap<String, [usize; 3]> = BTreeMap::new();
        let (mut ok, mut fail, mut info) = (0, 0, 0);
        let all = pairs(ops);
        for (inv, done) in &all {
            let slot = by_f.entry(format!("{:?}", inv.f).to_lowercase()).or_default();
            match done.as_ref().map_or(Kind::Info, |d| d.kind) {
                Kind::Ok => {
                    ok += 1;
                    slot[0] += 1
                }
                Kind::Fail => {
                    fail += 1;
                    slot[1] += 1
                }
                _ => {
                    info += 1;
                    slot[2] += 1
                }
            }
        }
        let mut anomalies = Vec::new();
        let (lin, unknown) = checker::linearizable::check(ops, MAX_STEPS);
        anomalies.extend(lin);
        let has = |f: F| all.iter().any(|(i, _)| i.f == f);
        let set = has(F::Add).then(|| {
            let (a, s) = checker::set::check(ops);
            anomalies.extend(a);
            s
        });
        let watch = (has(F::Txn) || ops.iter().any(|o| o.f == F::WatchOpen)).then(|| {
            let (a, s) = checker::watch::check(ops);
            anomalies.extend(a);
            s
        });
        if has(F::ObjGet) || has(F::ObjUpdate) {
            anomalies.extend(checker::objects::check(ops));
        }
        let (rec_anomalies, recovery) = checker::recovery::check(ops, leader_ms, RECOVERY_MS);
        if probed {
            anomalies.extend(rec_anomalies);
        }
        let end_us = ops.iter().map(|o| o.time_us).max().unwrap_or(0);
        let periods = plot::fault_periods(ops, end_us);
        let figures = figures(ops, &periods, end_us);
        Report {
            scenario: scenario.to_string(),
            system,
            ops: all.len(),
            ok,
            fail,
            info,
            by_f,
            faults: periods.iter().map(|(n, a, b)| (n.clone(), *a as f64 / 1e6, *b as f64 / 1e6)).collect(),
            anomalies,
            unknown,
            set,
            watch,
            recovery,
            figures,
            heal_error,
        }
    }

    pub fn passed(&self) -> bool {
        self.anomalies.is_empty() && self.unknown.is_empty() && self.heal_error.is_none()
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "scenario {} against {:?}: {} operations: ok {}, fail {}, info {}\n",
            self.scenario, self.system, self.ops, self.ok, self.fail, self.info
        );
        for (f, [o, fl, i]) in &self.by_f {
            s.push_str(&format!("  {f:<13} ok {o:>6}  fail {fl:>5}  info {i:>5}\n"));
        }
        s.push_str(&format!("faults ({}):\n", self.faults.len()));
        for (n, a, b) in &self.faults {
            s.push_str(&format!("  {a:>7.1}s - {b:>7.1}s  {n}\n"));
        }
        let f = &self.figures;
        s.push_str(&format!(
            "figures: {:.0} s in all, {:.0} s under faults; acknowledged ops/s: {:.0} under faults, {:.0} healthy; \
             longest time without an acknowledged op: {} ms (from {:.1} s)\n",
            f.seconds,
            f.fault_seconds,
            f.ok_per_s_faults,
            f.ok_per_s_healthy,
            f.longest_unavailable_ms,
            f.longest_unavailable_at_s
        ));
        let gaps: Vec<String> = f.worst_gap_ms_by_fault.iter().map(|(k, v)| format!("{k} {v} ms")).collect();
        s.push_str(&format!("longest time without an acknowledged op, by fault: {}\n", gaps.join(", ")));
        s.push_str(&format!(
            "recovery after the last heal: leader after {}, first acknowledged write after {}\n",
            self.recovery.leader_ms.map_or("-".into(), |m| format!("{m} ms")),
            self.recovery.write_ms.map_or("-".into(), |m| format!("{m} ms"))
        ));
        if let Some(st) = &self.set {
            s.push_str(&format!(
                "set: {} acknowledged, {} failed, {} indeterminate ({} of them present), final read {} elements\n",
                st.acknowledged, st.failed, st.indeterminate, st.indeterminate_present, st.final_size
            ));
        }
        if let Some(w) = &self.watch {
            s.push_str(&format!(
                "watch: {} watchers, {} reconnects/resumes, {} events received, reference {} events, {} \
                 acknowledged transactions matched\n",
                w.watchers, w.reopens, w.events, w.reference_events, w.acknowledged_checked
            ));
        }
        if let Some(e) = &self.heal_error {
            s.push_str(&format!("HEAL ERROR: {e}\n"));
        }
        for u in &self.unknown {
            s.push_str(&format!("UNKNOWN (search budget exhausted): {u}\n"));
        }
        s.push_str(&format!("anomalies: {}\n", self.anomalies.len()));
        for a in &self.anomalies {
            s.push_str(&format!("  [{}] {}: {}\n    operations: {:?}\n", a.checker, a.kind, a.detail, a.ops));
        }
        s
    }

    pub fn write(&self, dir: &Path, ops: &[Op]) -> anyhow::Result<()> {
        history::write_jsonl(ops, &dir.join("history.jsonl"))?;
        std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("summary.txt"), self.text())?;
        let title = format!("{} ({:?}): latency of each operation, faults shaded", self.scenario, self.system);
        plot::plot(ops, &title, &dir.join("latency.png"))?;
        Ok(())
    }
}

/// The watch workload's sentinel write, made after the workloads stopped: not part of the run.
fn after_the_run(o: &Op) -> bool {
    crate::workload::watch::SENTINEL_PROCESSES.contains(&o.process)
}

fn figures(ops: &[Op], periods: &[(String, u64, u64)], end_us: u64) -> Figures {
    let mut oks: Vec<u64> = ops
        .iter()
        .filter(|o| o.kind == Kind::Ok && o.f.is_client_op() && !after_the_run(o))
        .map(|o| o.time_us)
        .collect();
    oks.sort_unstable();
    let first_invoke = ops.iter().find(|o| o.kind == Kind::Invoke && o.f.is_client_op()).map_or(0, |o| o.time_us);
    let last_invoke = ops
        .iter()
        .rev()
        .find(|o| o.kind == Kind::Invoke && o.f.is_client_op() && !after_the_run(o))
        .map_or(0, |o| o.time_us);
    let in_fault = |t: u64| periods.iter().any(|(_, a, b)| t >= *a && t < *b);
    let fault_us: u64 = periods.iter().map(|(_, a, b)| b - a).sum();
    let span_us = last_invoke.saturating_sub(first_invoke).max(1);
    let ok_faults = oks.iter().filter(|t| in_fault(**t)).count();
    let mut longest = (0u64, first_invoke);
    let mut prev = first_invoke;
    for &t in oks.iter().filter(|t| **t >= first_invoke && **t <= last_invoke) {
        if t - prev > longest.0 {
            longest = (t - prev, prev);
        }
        prev = t;
    }
    if last_invoke.saturating_sub(prev) > longest.0 {
        longest = (last_invoke - prev, prev);
    }
    let _ = end_us;
    let mut worst_gap_ms_by_fault: BTreeMap<String, u64> = BTreeMap::new();
    for (name, a, b) in periods {
        let mut prev = *a;
        let mut gap = 0;
        for &t in oks.iter().filter(|t| **t >= *a && **t <= *b) {
            gap = gap.max(t - prev);
            prev = t;
        }
        gap = gap.max(b.saturating_sub(prev));
        let slot = worst_gap_ms_by_fault.entry(name.clone()).or_default();
        *slot = (*slot).max(gap / 1000);
    }
    Figures {
        worst_gap_ms_by_fault,
        seconds: span_us as f64 / 1e6,
        fault_seconds: fault_us as f64 / 1e6,
        ok_per_s_faults: if fault_us > 0 { ok_faults as f64 / (fault_us as f64 / 1e6) } else { 0.0 },
        ok_per_s_healthy: (oks.len() - ok_faults) as f64 / ((span_us.saturating_sub(fault_us)).max(1) as f64 / 1e6),
        longest_unavailable_ms: longest.0 / 1000,
        longest_unavailable_at_s: longest.1 as f64 / 1e6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: i64, kind: Kind, f: F, ms: u64) -> Op {
        let mut o = Op::new(process, kind, f);
        o.time_us = ms * 1000;
        o
    }

    #[test]
    fn object_operations_count_in_the_figures() {
        let mut ops = Vec::new();
        for i in 0..10u64 {
            let f = if i % 2 == 0 { F::ObjGet } else { F::ObjUpdate };
            ops.push(op(6_000_000, Kind::Invoke, f, i * 1000));
            ops.push(op(6_000_000, Kind::Ok, f, i * 1000 + 10));
        }
        // A fault from 2.5 s to 6.5 s during which nothing is acknowledged after 3 s.
        ops.retain(|o| !(o.time_us > 3_100_000 && o.time_us < 6_500_000));
        let periods = vec![("kill-leader".to_string(), 2_500_000, 6_500_000)];
        let f = figures(&ops, &periods, 10_000_000);
        assert!(f.ok_per_s_healthy > 0.0, "{f:?}");
        assert_eq!(f.worst_gap_ms_by_fault["kill-leader"], 3490, "from the ok at 3.01 s to the fault's end");
        assert_eq!(f.longest_unavailable_ms, 4000, "from 3.01 s to the next ok at 7.01 s");
    }
}
