//! The set workload: every acknowledged add is in the final read, no failed add is, nothing
//! is there that was never added, and every member holds the same elements once healed.
//! Indeterminate adds may be present or not; they are counted.

use std::collections::{BTreeMap, BTreeSet};

use super::Anomaly;
use crate::history::{pairs, Kind, Op, F};

/// Key of the final linearizable read; the members' own reads use [`MEMBER_READ`].
pub const FINAL_READ: &str = "linearizable";
pub const MEMBER_READ: &str = "serializable";

#[derive(Debug, Default, Clone, Serialize)]
pub struct SetStats {
    pub acknowledged: usize,
    pub failed: usize,
    pub indeterminate: usize,
    /// Indeterminate adds found in the final read.
    pub indeterminate_present: usize,
    pub final_size: usize,
}
use serde::Serialize;

fn elements(v: &serde_json::Value) -> BTreeSet<u64> {
    v.as_array().map(|a| a.iter().filter_map(|e| e.as_u64()).collect()).unwrap_or_default()
}

pub fn check(ops: &[Op]) -> (Vec<Anomaly>, SetStats) {
    let mut stats = SetStats::default();
    let mut anomalies = Vec::new();
    // element -> (outcome, invocation index)
    let mut adds: BTreeMap<u64, (Kind, usize)> = BTreeMap::new();
    for (inv, done) in pairs(ops).into_iter().filter(|(i, _)| i.f == F::Add) {
        let Some(e) = inv.value.as_u64() else { continue };
        let kind = done.map_or(Kind::Info, |d| d.kind);
        match kind {
            Kind::Ok => stats.acknowledged += 1,
            Kind::Fail => stats.failed += 1,
            _ => stats.indeterminate += 1,
        }
        adds.insert(e, (kind, inv.index));
    }
    let reads: Vec<&Op> = ops.iter().filter(|o| o.f == F::ReadAll && o.kind == Kind::Ok).collect();
    let Some(final_read) = reads.iter().rev().find(|o| o.key.as_deref() == Some(FINAL_READ)) else {
        if !adds.is_empty() {
            anomalies.push(Anomaly {
                checker: "set",
                kind: "no-final-read".into(),
                detail: "the final read never succeeded, so nothing can be said about lost adds".into(),
                ops: vec![],
            });
        }
        return (anomalies, stats);
    };
    let present = elements(&final_read.value);
    stats.final_size = present.len();
    let lost: Vec<(u64, usize)> =
        adds.iter().filter(|(e, (k, _))| *k == Kind::Ok && !present.contains(e)).map(|(e, (_, i))| (*e, *i)).collect();
    if !lost.is_empty() {
        anomalies.push(Anomaly {
            checker: "set",
            kind: "lost".into(),
            detail: format!(
                "{} acknowledged adds are missing from the final read (op {}): {:?}",
                lost.len(),
                final_read.index,
                lost.iter().map(|(e, _)| e).take(20).collect::<Vec<_>>()
            ),
            ops: lost.iter().map(|(_, i)| *i).chain([final_read.index]).take(50).collect(),
        });
    }
    let failed_present: Vec<usize> =
        adds.iter().filter(|(e, (k, _))| *k == Kind::Fail && present.contains(e)).map(|(_, (_, i))| *i).collect();
    if !failed_present.is_empty() {
        anomalies.push(Anomaly {
            checker: "set",
            kind: "failed-add-present".into(),
            detail: format!("{} adds that failed definitely are in the final read", failed_present.len()),
            ops: failed_present.into_iter().take(50).collect(),
        });
    }
    let unexpected: Vec<u64> = present.iter().filter(|e| !adds.contains_key(e)).copied().collect();
    if !unexpected.is_empty() {
        anomalies.push(Anomaly {
            checker: "set",
            kind: "unexpected".into(),
            detail: format!(
                "elements never added are in the final read: {:?}",
                &unexpected[..unexpected.len().min(20)]
            ),
            ops: vec![final_read.index],
        });
    }
    stats.indeterminate_present =
        adds.iter().filter(|(e, (k, _))| !matches!(k, Kind::Ok | Kind::Fail) && present.contains(e)).count();
    for r in reads.iter().filter(|o| o.key.as_deref() == Some(MEMBER_READ)) {
        let theirs = elements(&r.value);
        if theirs != present {
            let missing = present.difference(&theirs).count();
            let extra = theirs.difference(&present).count();
            anomalies.push(Anomaly {
                checker: "set",
                kind: "members-disagree".into(),
                detail: format!(
                    "member {} holds {} elements, {missing} fewer and {extra} more than the linearizable read",
                    r.member.as_deref().unwrap_or("?"),
                    theirs.len()
                ),
                ops: vec![r.index, final_read.index],
            });
        }
    }
    (anomalies, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(adds: &[(u64, Kind)], final_read: &[u64], member_read: Option<&[u64]>) -> Vec<Op> {
        let mut h = Vec::new();
        for (p, (e, k)) in adds.iter().enumerate() {
            let mut inv = Op::new(p as i64, Kind::Invoke, F::Add);
            inv.value = (*e).into();
            let mut done = inv.clone();
            done.kind = *k;
            h.push(inv);
            h.push(done);
        }
        let mut r = Op::new(100, Kind::Ok, F::ReadAll);
        r.key = Some(FINAL_READ.into());
        r.value = final_read.into();
        h.push(r);
        if let Some(m) = member_read {
            let mut r = Op::new(101, Kind::Ok, F::ReadAll);
            r.key = Some(MEMBER_READ.into());
            r.member = Some("m2".into());
            r.value = m.into();
            h.push(r);
        }
        for (i, o) in h.iter_mut().enumerate() {
            o.index = i;
        }
        h
    }

    #[test]
    fn every_acknowledged_add_present_passes() {
        let h = history(&[(1, Kind::Ok), (2, Kind::Info), (3, Kind::Info), (4, Kind::Fail)], &[1, 2], Some(&[1, 2]));
        let (a, stats) = check(&h);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!((stats.acknowledged, stats.indeterminate, stats.indeterminate_present), (1, 2, 1));
    }

    #[test]
    fn lost_write_is_rejected() {
        let h = history(&[(1, Kind::Ok), (2, Kind::Ok)], &[1], None);
        let (a, _) = check(&h);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, "lost");
        assert!(a[0].detail.contains("[2]"), "{}", a[0].detail);
    }

    #[test]
    fn failed_unexpected_and_diverging_members_are_rejected() {
        let h = history(&[(1, Kind::Ok), (2, Kind::Fail)], &[1, 2, 9], Some(&[1]));
        let kinds: Vec<String> = check(&h).0.into_iter().map(|a| a.kind).collect();
        assert_eq!(kinds, ["failed-add-present", "unexpected", "members-disagree"]);
    }
}
