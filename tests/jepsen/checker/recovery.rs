//! Recovery after the last heal: the cluster must have a leader and acknowledge writes within
//! a bound. The harness probes both after healing and records what it saw as history events
//! (`heal` of the nemesis, then the first `ok` write invoked after it).

use super::Anomaly;
use crate::history::{Kind, Op, F, NEMESIS};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RecoveryStats {
    /// Milliseconds from the last heal to the first leader every reachable member agreed on.
    pub leader_ms: Option<u64>,
    /// Milliseconds from the last heal to the first acknowledged write invoked after it.
    pub write_ms: Option<u64>,
}

/// `leader_ms` comes from the harness's probe (it is not in the history).
pub fn check(ops: &[Op], leader_ms: Option<u64>, bound_ms: u64) -> (Vec<Anomaly>, RecoveryStats) {
    let mut out = Vec::new();
    let heal = ops.iter().rev().find(|o| o.process == NEMESIS && o.f == F::Heal);
    let Some(heal) = heal else {
        return (out, RecoveryStats { leader_ms, write_ms: None });
    };
    // The first write completion acknowledged after the heal whose invocation came after it too.
    let mut invoked_after: std::collections::HashSet<(i64, usize)> = Default::default();
    let mut first_ok: Option<&Op> = None;
    for o in ops.iter().filter(|o| o.index > heal.index && o.f.is_write()) {
        match o.kind {
            Kind::Invoke => {
                invoked_after.insert((o.process, 0));
            }
            Kind::Ok if invoked_after.contains(&(o.process, 0)) => {
                first_ok = Some(o);
                break;
            }
            _ => {}
        }
    }
    let write_ms = first_ok.map(|o| (o.time_us.saturating_sub(heal.time_us)) / 1000);
    match write_ms {
        Some(ms) if ms <= bound_ms => {}
        _ => out.push(Anomaly {
            checker: "recovery",
            kind: "slow-recovery".into(),
            detail: format!(
                "no write acknowledged within {bound_ms} ms of the last heal (first after {})",
                write_ms.map_or("never".to_string(), |m| format!("{m} ms"))
            ),
            ops: std::iter::once(heal.index).chain(first_ok.map(|o| o.index)).collect(),
        }),
    }
    match leader_ms {
        Some(ms) if ms <= bound_ms => {}
        _ => out.push(Anomaly {
            checker: "recovery",
            kind: "no-leader".into(),
            detail: format!(
                "no leader within {bound_ms} ms of the last heal (first after {})",
                leader_ms.map_or("never".to_string(), |m| format!("{m} ms"))
            ),
            ops: vec![heal.index],
        }),
    }
    (out, RecoveryStats { leader_ms, write_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(process: i64, kind: Kind, f: F, ms: u64, index: usize) -> Op {
        let mut o = Op::new(process, kind, f);
        o.time_us = ms * 1000;
        o.index = index;
        o
    }

    #[test]
    fn quick_recovery_passes_and_slow_one_fails() {
        let h = vec![
            at(NEMESIS, Kind::Ok, F::Heal, 1000, 0),
            at(1, Kind::Invoke, F::Write, 1100, 1),
            at(1, Kind::Ok, F::Write, 3000, 2),
        ];
        let (a, s) = check(&h, Some(1500), 10_000);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(s.write_ms, Some(2000));
        let slow = vec![
            at(NEMESIS, Kind::Ok, F::Heal, 1000, 0),
            at(1, Kind::Invoke, F::Write, 1100, 1),
            at(1, Kind::Info, F::Write, 3000, 2),
            at(2, Kind::Invoke, F::Write, 3100, 3),
            at(2, Kind::Ok, F::Write, 12_500, 4),
        ];
        let kinds: Vec<String> = check(&slow, None, 10_000).0.into_iter().map(|a| a.kind).collect();
        assert_eq!(kinds, ["slow-recovery", "no-leader"]);
    }

    #[test]
    fn an_object_update_counts_as_a_write() {
        let h = vec![
            at(NEMESIS, Kind::Ok, F::Heal, 1000, 0),
            at(1, Kind::Invoke, F::ObjGet, 1100, 1),
            at(1, Kind::Ok, F::ObjGet, 1200, 2),
            at(1, Kind::Invoke, F::ObjUpdate, 1300, 3),
            at(1, Kind::Ok, F::ObjUpdate, 1400, 4),
        ];
        let (a, s) = check(&h, Some(5), 10_000);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(s.write_ms, Some(400));
    }
}
