//! The objects workload (Pods and Deployments through the rkube.v1 API):
//!
//! - **resourceVersion never goes back**: per object, an operation that began after another
//!   ended never sees an older resourceVersion (a Get's, or the one an update produced);
//! - **no lost update**: two acknowledged compare-and-swap updates never start from the same
//!   resourceVersion, and the final read holds the value of the acknowledged update with the
//!   highest resourceVersion (or of an indeterminate update that may have followed it);
//! - no Get returns a value that no update wrote, or that a failed (Conflict) update wrote;
//! - **members converge**: once healed, every member's own read holds the final values.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Anomaly;
use crate::history::{pairs, Kind, Op, F};

pub const FINAL_READ: &str = "linearizable";
pub const MEMBER_READ: &str = "serializable";
/// The annotation the updates write their value into.
pub const VALUE_ANNOTATION: &str = "jepsen.rkube.dev/value";

fn anomaly(kind: &str, detail: String, ops: Vec<usize>) -> Anomaly {
    Anomaly { checker: "objects", kind: kind.into(), detail, ops }
}

/// One completed operation on one object.
struct Done {
    key: String,
    f: F,
    kind: Kind,
    invoked_us: u64,
    completed_us: u64,
    /// The resourceVersion seen (a Get) or made (an acknowledged update).
    rv: Option<i64>,
    /// Get: the value read; update: the value written.
    val: Value,
    /// Update: the resourceVersion it compared against.
    from: Option<i64>,
    index: usize,
}

pub fn check(ops: &[Op]) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let mut done: Vec<Done> = Vec::new();
    for (inv, end) in pairs(ops).into_iter().filter(|(i, _)| matches!(i.f, F::ObjGet | F::ObjUpdate)) {
        let Some(key) = inv.key.clone() else { continue };
        let kind = end.as_ref().map_or(Kind::Info, |e| e.kind);
        let completed_us = end.as_ref().map_or(u64::MAX, |e| e.time_us);
        let d = match inv.f {
            F::ObjGet => {
                let v = end.as_ref().map(|e| e.value.clone()).unwrap_or(Value::Null);
                Done {
                    key,
                    f: F::ObjGet,
                    kind,
                    invoked_us: inv.time_us,
                    completed_us,
                    rv: v["rv"].as_i64(),
                    val: v["val"].clone(),
                    from: None,
                    index: inv.index,
                }
            }
            _ => Done {
                key,
                f: F::ObjUpdate,
                kind,
                invoked_us: inv.time_us,
                completed_us,
                rv: end.as_ref().and_then(|e| e.rev),
                val: inv.value["val"].clone(),
                from: inv.value["from"].as_i64(),
                index: inv.index,
            },
        };
        done.push(d);
    }
    let keys: BTreeSet<String> = done.iter().map(|d| d.key.clone()).collect();
    for key in &keys {
        let mine: Vec<&Done> = done.iter().filter(|d| &d.key == key).collect();
        let updates: Vec<&&Done> = mine.iter().filter(|d| d.f == F::ObjUpdate).collect();
        let written: BTreeMap<String, &Done> =
            updates.iter().filter(|u| u.kind != Kind::Fail).map(|u| (u.val.to_string(), **u)).collect();
        let failed: BTreeMap<String, &Done> =
            updates.iter().filter(|u| u.kind == Kind::Fail).map(|u| (u.val.to_string(), **u)).collect();

        // resourceVersion never goes back (real-time order).
        let seen: Vec<&&Done> = mine.iter().filter(|d| d.kind == Kind::Ok && d.rv.is_some()).collect();
        for a in &seen {
            if let Some(b) =
                seen.iter().filter(|b| b.invoked_us > a.completed_us && b.rv < a.rv).min_by_key(|b| b.invoked_us)
            {
                anomalies.push(anomaly(
                    "resource-version-went-back",
                    format!(
                        "{key}: {:?} saw resourceVersion {} after {:?} had ended with {}",
                        b.f,
                        b.rv.unwrap_or(0),
                        a.f,
                        a.rv.unwrap_or(0)
                    ),
                    vec![a.index, b.index],
                ));
                break;
            }
        }

        // Two acknowledged compare-and-swaps from one version: one of them was lost.
        let mut from: BTreeMap<i64, &Done> = BTreeMap::new();
        for u in updates.iter().filter(|u| u.kind == Kind::Ok) {
            if let Some(f) = u.from {
                if let Some(other) = from.insert(f, u) {
                    anomalies.push(anomaly(
                        "lost-update",
                        format!(
                            "{key}: updates writing {} and {} both succeeded from resourceVersion {f}",
                            other.val, u.val
                        ),
                        vec![other.index, u.index],
                    ));
                }
            }
        }

        // Reads see only values that were written, and never a refused write's.
        for g in mine.iter().filter(|d| d.f == F::ObjGet && d.kind == Kind::Ok && !d.val.is_null()) {
            let v = g.val.to_string();
            if let Some(f) = failed.get(&v) {
                anomalies.push(anomaly(
                    "failed-update-visible",
                    format!("{key}: a Get read {v}, written by an update that was refused"),
                    vec![f.index, g.index],
                ));
            } else if !written.contains_key(&v) {
                anomalies.push(anomaly(
                    "phantom-value",
                    format!("{key}: a Get read {v}, which no update wrote"),
                    vec![g.index],
                ));
            }
        }
    }

    // The final state.
    let finals: Vec<&Op> = ops.iter().filter(|o| o.f == F::ObjFinal && o.kind == Kind::Ok).collect();
    let Some(last) = finals.iter().rev().find(|o| o.key.as_deref() == Some(FINAL_READ)) else {
        if !done.is_empty() {
            anomalies.push(anomaly(
                "no-final-read",
                "the final read never succeeded, so nothing can be said about lost updates".into(),
                vec![],
            ));
        }
        return anomalies;
    };
    for key in &keys {
        let final_val = &last.value[key.as_str()]["val"];
        let acked: Vec<&Done> =
            done.iter().filter(|d| &d.key == key && d.f == F::ObjUpdate && d.kind == Kind::Ok).collect();
        let Some(newest) = acked.iter().max_by_key(|d| d.rv) else { continue };
        let later_unknown = done.iter().any(|d| {
            &d.key == key
                && d.f == F::ObjUpdate
                && d.kind == Kind::Info
                && d.val == *final_val
                && d.completed_us > newest.invoked_us
        });
        if *final_val != newest.val && !later_unknown {
            anomalies.push(anomaly(
                "lost-update",
                format!(
                    "{key}: the final read holds {final_val}, not {} from the last acknowledged update (resourceVersion {})",
                    newest.val,
                    newest.rv.unwrap_or(0)
                ),
                vec![newest.index, last.index],
            ));
        }
    }
    for m in finals.iter().filter(|o| o.key.as_deref() == Some(MEMBER_READ)) {
        for key in &keys {
            let want = &last.value[key.as_str()]["val"];
            let got = &m.value[key.as_str()]["val"];
            if got != want {
                anomalies.push(anomaly(
                    "members-diverge",
                    format!("{key}: member {} holds {got}, the cluster {want}", m.member.clone().unwrap_or_default()),
                    vec![m.index, last.index],
                ));
            }
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct H(Vec<Op>);

    impl H {
        fn op(&mut self, p: i64, kind: Kind, f: F, key: &str, value: Value, rev: Option<i64>) -> &mut Self {
            let mut o = Op::new(p, kind, f);
            o.index = self.0.len();
            o.time_us = self.0.len() as u64 * 10;
            o.key = Some(key.into());
            o.value = value;
            o.rev = rev;
            o.member = Some("m1".into());
            self.0.push(o);
            self
        }
        fn get(&mut self, p: i64, rv: i64, val: Value) -> &mut Self {
            self.op(p, Kind::Invoke, F::ObjGet, "pods/a", Value::Null, None).op(
                p,
                Kind::Ok,
                F::ObjGet,
                "pods/a",
                json!({"rv": rv, "val": val}),
                None,
            )
        }
        fn update(&mut self, p: i64, from: i64, val: u64, outcome: Kind, rv: Option<i64>) -> &mut Self {
            let v = json!({"from": from, "val": val});
            self.op(p, Kind::Invoke, F::ObjUpdate, "pods/a", v.clone(), None).op(
                p,
                outcome,
                F::ObjUpdate,
                "pods/a",
                v,
                rv,
            )
        }
        fn finals(&mut self, val: u64, member_val: u64) -> &mut Self {
            self.op(9, Kind::Invoke, F::ObjFinal, FINAL_READ, Value::Null, None)
                .op(9, Kind::Ok, F::ObjFinal, FINAL_READ, json!({"pods/a": {"rv": 100, "val": val}}), None)
                .op(10, Kind::Invoke, F::ObjFinal, MEMBER_READ, Value::Null, None)
                .op(10, Kind::Ok, F::ObjFinal, MEMBER_READ, json!({"pods/a": {"rv": 100, "val": member_val}}), None)
        }
    }

    fn kinds(h: &H) -> Vec<String> {
        check(&h.0).into_iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_correct_history_passes() {
        let mut h = H(vec![]);
        h.get(1, 5, Value::Null).update(1, 5, 1, Kind::Ok, Some(7)).get(2, 7, json!(1));
        h.update(2, 5, 2, Kind::Fail, None).update(2, 7, 3, Kind::Info, None).get(1, 9, json!(3));
        h.finals(3, 3);
        assert_eq!(kinds(&h), Vec::<String>::new());
    }

    #[test]
    fn two_winners_from_one_version_are_a_lost_update() {
        let mut h = H(vec![]);
        h.update(1, 5, 1, Kind::Ok, Some(7)).update(2, 5, 2, Kind::Ok, Some(8)).finals(2, 2);
        assert_eq!(kinds(&h), vec!["lost-update"]);
    }

    #[test]
    fn a_resource_version_going_back_is_caught() {
        let mut h = H(vec![]);
        h.update(1, 5, 1, Kind::Ok, Some(9)).get(2, 5, Value::Null).finals(1, 1);
        assert_eq!(kinds(&h), vec!["resource-version-went-back"]);
    }

    #[test]
    fn a_final_state_without_the_last_acknowledged_write_is_caught() {
        let mut h = H(vec![]);
        h.update(1, 5, 1, Kind::Ok, Some(7)).update(1, 7, 2, Kind::Ok, Some(9)).finals(1, 1);
        assert_eq!(kinds(&h), vec!["lost-update"]);
    }

    #[test]
    fn refused_and_phantom_values_and_diverging_members_are_caught() {
        let mut h = H(vec![]);
        h.update(1, 5, 1, Kind::Fail, None).get(2, 6, json!(1)).get(2, 6, json!(42));
        h.update(1, 6, 2, Kind::Ok, Some(8)).finals(2, 1);
        assert_eq!(kinds(&h), vec!["failed-update-visible", "phantom-value", "members-diverge"]);
    }
}
