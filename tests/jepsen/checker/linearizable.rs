//! Linearizability of the register workload: a Wing–Gong search with Lowe's memoization (the
//! algorithm of porcupine and Knossos' `wgl`), split per key, over a model of one register
//! whose value is absent or a number.
//!
//! Operations that failed did not happen and are dropped. Indeterminate (`info`) writes and
//! compare-and-sets may or may not have happened: they return at infinity, so the search may
//! place them anywhere after their invocation or after everything else (which is the same as
//! never); an indeterminate compare-and-set whose comparison does not hold there is a no-op, as
//! it would be on the server. Reads that did not complete tell nothing and are dropped.

use std::collections::{HashMap, HashSet};

use super::Anomaly;
use crate::history::{pairs, Kind, Op, F};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Read(Option<u64>),
    Write(u64),
    Cas(u64, u64),
}

/// One operation of one key, ready for the search.
#[derive(Debug, Clone)]
pub struct RegOp {
    pub call: Call,
    pub invoke_us: u64,
    /// `u64::MAX` when the operation is indeterminate.
    pub return_us: u64,
    /// History index of the invocation, for reports.
    pub index: usize,
}

impl RegOp {
    fn definite(&self) -> bool {
        self.return_us != u64::MAX
    }
}

type State = Option<u64>;

/// The register model: whether `op` can take effect in `state`, and the state after it.
fn step(state: State, op: &RegOp) -> Option<State> {
    match op.call {
        Call::Read(v) => (v == state).then_some(state),
        Call::Write(v) => Some(Some(v)),
        Call::Cas(from, to) if state == Some(from) => Some(Some(to)),
        // An indeterminate compare-and-set whose comparison fails here failed on the server.
        Call::Cas(..) if !op.definite() => Some(state),
        Call::Cas(..) => None,
    }
}

/// The register operations of a history, grouped by key (in key order).
pub fn register_ops(ops: &[Op]) -> Vec<(String, Vec<RegOp>)> {
    let mut by_key: std::collections::BTreeMap<String, Vec<RegOp>> = Default::default();
    for (inv, done) in pairs(ops) {
        let Some(key) = inv.key.clone() else { continue };
        let kind = done.as_ref().map_or(Kind::Info, |d| d.kind);
        let call = match inv.f {
            F::Read => match (kind, &done) {
                (Kind::Ok, Some(d)) => Call::Read(d.value.as_u64()),
                _ => continue,
            },
            F::Write => match inv.value.as_u64() {
                Some(v) => Call::Write(v),
                None => continue,
            },
            F::Cas => match (inv.value.get(0).and_then(|v| v.as_u64()), inv.value.get(1).and_then(|v| v.as_u64())) {
                (Some(a), Some(b)) => Call::Cas(a, b),
                _ => continue,
            },
            _ => continue,
        };
        let return_us = match (kind, &done) {
            (Kind::Ok, Some(d)) => d.time_us,
            (Kind::Fail, _) => continue,
            _ => u64::MAX,
        };
        by_key.entry(key).or_default().push(RegOp { call, invoke_us: inv.time_us, return_us, index: inv.index });
    }
    by_key.into_iter().map(|(k, ops)| (k, drop_unobserved(ops))).collect()
}

/// Drops indeterminate writes whose value nobody observed (no read returned it, no
/// compare-and-set expected it). Such a write can only make later reads and comparisons harder
/// to explain, so "it never happened" is always an order at least as good: dropping it keeps
/// the verdict and spares the search from trying it at every position.
fn drop_unobserved(ops: Vec<RegOp>) -> Vec<RegOp> {
    let observed: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.call {
            Call::Read(v) => v,
            Call::Cas(from, _) => Some(from),
            Call::Write(_) => None,
        })
        .collect();
    ops.into_iter()
        .filter(|o| match o.call {
            Call::Write(v) | Call::Cas(_, v) => o.definite() || observed.contains(&v),
            Call::Read(_) => true,
        })
        .collect()
}

/// The outcome of a search over one key.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Linearizable,
    /// No order exists. `stuck` is the operation the deepest attempt could not place, `state`
    /// the register's value there, `placed` how many operations that attempt had placed.
    NotLinearizable {
        stuck: usize,
        state: State,
        placed: usize,
        concurrent: Vec<usize>,
    },
    /// The search gave up after `steps` steps.
    Unknown {
        steps: u64,
    },
}

#[derive(Clone, Copy)]
struct Node {
    prev: usize,
    next: usize,
    /// Index into the ops; calls and returns share it.
    op: usize,
    is_call: bool,
    /// For a call, its return node.
    ret: usize,
}

const NIL: usize = usize::MAX;

/// Searches for a linearization of one key's operations, within `max_steps`.
pub fn check_key(ops: &[RegOp], max_steps: u64) -> Outcome {
    let n = ops.len();
    // Events in time order; at equal times calls come first, so touching operations count as
    // concurrent (the lenient reading).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke_us, true, i));
        events.push((op.return_us, false, i));
    }
    events.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    // Node 0 is the head sentinel.
    let mut nodes = vec![Node { prev: NIL, next: NIL, op: NIL, is_call: false, ret: NIL }];
    let mut ret_node = vec![NIL; n];
    let mut call_node = vec![NIL; n];
    for &(_, is_call, i) in &events {
        let id = nodes.len();
        let prev = id - 1;
        nodes[prev].next = id;
        nodes.push(Node { prev, next: NIL, op: i, is_call, ret: NIL });
        if is_call {
            call_node[i] = id;
        } else {
            ret_node[i] = id;
        }
    }
    for i in 0..n {
        nodes[call_node[i]].ret = ret_node[i];
    }

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut entry = nodes[0].next;
    let mut steps = 0u64;
    let mut deepest = (0usize, NIL, None);

    let lift = |nodes: &mut Vec<Node>, c: usize| {
        let (p, nx) = (nodes[c].prev, nodes[c].next);
        nodes[p].next = nx;
        if nx != NIL {
            nodes[nx].prev = p;
        }
        let r = nodes[c].ret;
        let (p, nx) = (nodes[r].prev, nodes[r].next);
        nodes[p].next = nx;
        if nx != NIL {
            nodes[nx].prev = p;
        }
    };
    let unlift = |nodes: &mut Vec<Node>, c: usize| {
        let r = nodes[c].ret;
        let (p, nx) = (nodes[r].prev, nodes[r].next);
        nodes[p].next = r;
        if nx != NIL {
            nodes[nx].prev = r;
        }
        let (p, nx) = (nodes[c].prev, nodes[c].next);
        nodes[p].next = c;
        if nx != NIL {
            nodes[nx].prev = c;
        }
    };

    while nodes[0].next != NIL {
        steps += 1;
        if steps > max_steps {
            return Outcome::Unknown { steps };
        }
        if entry == NIL {
            // Only possible if every remaining entry was tried; treat as a dead end.
            entry = match calls.pop() {
                None => break,
                Some((c, s)) => {
                    state = s;
                    let i = nodes[c].op;
                    linearized[i / 64] &= !(1 << (i % 64));
                    unlift(&mut nodes, c);
                    nodes[c].next
                }
            };
            continue;
        }
        let node = nodes[entry];
        if node.is_call {
            let i = node.op;
            if let Some(next_state) = step(state, &ops[i]) {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.insert((lin.clone(), next_state)) {
                    calls.push((entry, state));
                    state = next_state;
                    linearized = lin;
                    lift(&mut nodes, entry);
                    entry = nodes[0].next;
                    continue;
                }
            }
            entry = node.next;
        } else {
            // A return whose call is not placed yet: this branch is dead; backtrack.
            if deepest.1 == NIL || calls.len() > deepest.0 {
                deepest = (calls.len(), node.op, state);
            }
            match calls.pop() {
                None => {
                    return not_linearizable(ops, deepest);
                }
                Some((c, s)) => {
                    state = s;
                    let i = nodes[c].op;
                    linearized[i / 64] &= !(1 << (i % 64));
                    unlift(&mut nodes, c);
                    entry = nodes[c].next;
                }
            }
        }
    }
    if nodes[0].next == NIL {
        Outcome::Linearizable
    } else {
        not_linearizable(ops, deepest)
    }
}

fn not_linearizable(ops: &[RegOp], (placed, stuck, state): (usize, usize, State)) -> Outcome {
    let stuck = if stuck == NIL { 0 } else { stuck };
    let s = &ops[stuck];
    let concurrent = ops
        .iter()
        .filter(|o| o.invoke_us <= s.return_us && o.return_us >= s.invoke_us && o.index != s.index)
        .map(|o| o.index)
        .take(12)
        .collect();
    Outcome::NotLinearizable { stuck: s.index, state, placed, concurrent }
}

/// Checks every key of a history; one anomaly per key that is not linearizable. Keys whose
/// search gave up are returned as `unknown`.
pub fn check(ops: &[Op], max_steps: u64) -> (Vec<Anomaly>, Vec<String>) {
    let mut anomalies = Vec::new();
    let mut unknown = Vec::new();
    let by_index: HashMap<usize, &Op> = ops.iter().map(|o| (o.index, o)).collect();
    for (key, reg) in register_ops(ops) {
        match check_key(&reg, max_steps) {
            Outcome::Linearizable => {}
            Outcome::Unknown { steps } => unknown.push(format!("{key}: gave up after {steps} steps")),
            Outcome::NotLinearizable { stuck, state, placed, concurrent } => {
                let what = by_index.get(&stuck).map(|o| describe(o, ops)).unwrap_or_default();
                anomalies.push(Anomaly {
                    checker: "linearizable",
                    kind: "not-linearizable".into(),
                    detail: format!(
                        "key {key}: no linearization of its {} operations; the deepest order placed {placed} and \
                         could not place {what} when the register held {}",
                        reg.len(),
                        state.map_or("nothing".to_string(), |v| v.to_string())
                    ),
                    ops: std::iter::once(stuck).chain(concurrent).collect(),
                });
            }
        }
    }
    (anomalies, unknown)
}

/// "read -> 5 (op 17, process 3 on m2, 12.345 s)", from the invocation and its completion.
fn describe(inv: &Op, ops: &[Op]) -> String {
    let done = ops.iter().find(|o| o.index > inv.index && o.process == inv.process && o.kind != Kind::Invoke);
    let result = match (inv.f, done) {
        (F::Read, Some(d)) => format!("read -> {}", d.value),
        (f, _) => format!("{f:?} {}", inv.value).to_lowercase(),
    };
    format!(
        "{result} (op {}, process {} on {}, {:.3} s)",
        inv.index,
        inv.process,
        inv.member.as_deref().unwrap_or("?"),
        inv.time_us as f64 / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, t0: u64, t1: Option<u64>) -> RegOp {
        RegOp { call, invoke_us: t0, return_us: t1.unwrap_or(u64::MAX), index: 0 }
    }
    use Call::*;

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(Write(1), 0, Some(1)),
            op(Read(Some(1)), 2, Some(3)),
            op(Cas(1, 2), 4, Some(5)),
            op(Read(Some(2)), 6, Some(7)),
        ];
        assert_eq!(check_key(&h, 1_000_000), Outcome::Linearizable);
    }

    #[test]
    fn stale_read_is_rejected() {
        // write 1, then write 2 completes, then a read that starts afterwards sees 1.
        let h = [op(Write(1), 0, Some(1)), op(Write(2), 2, Some(3)), op(Read(Some(1)), 4, Some(5))];
        assert!(matches!(check_key(&h, 1_000_000), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(10)),
            op(Read(Some(1)), 3, Some(4)),
            op(Read(Some(2)), 5, Some(6)),
        ];
        assert_eq!(check_key(&h, 1_000_000), Outcome::Linearizable);
        // ...but not go back once the new value was seen.
        let h = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(10)),
            op(Read(Some(2)), 3, Some(4)),
            op(Read(Some(1)), 5, Some(6)),
        ];
        assert!(matches!(check_key(&h, 1_000_000), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn lost_write_is_rejected() {
        // An acknowledged write that a later read does not see (the key reads as absent).
        let h = [op(Write(7), 0, Some(1)), op(Read(None), 2, Some(3))];
        assert!(matches!(check_key(&h, 1_000_000), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn indeterminate_write_may_or_may_not_have_happened() {
        let took_effect = [op(Write(1), 0, Some(1)), op(Write(2), 2, None), op(Read(Some(2)), 5, Some(6))];
        assert_eq!(check_key(&took_effect, 1_000_000), Outcome::Linearizable);
        let did_not = [op(Write(1), 0, Some(1)), op(Write(2), 2, None), op(Read(Some(1)), 5, Some(6))];
        assert_eq!(check_key(&did_not, 1_000_000), Outcome::Linearizable);
        // But it cannot take effect before it was invoked.
        let too_early = [op(Read(Some(2)), 0, Some(1)), op(Write(2), 2, None)];
        assert!(matches!(check_key(&too_early, 1_000_000), Outcome::NotLinearizable { .. }));
        // Nor flicker: seen, then unseen.
        let flicker = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, None),
            op(Read(Some(2)), 3, Some(4)),
            op(Read(Some(1)), 5, Some(6)),
        ];
        assert!(matches!(check_key(&flicker, 1_000_000), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn cas_needs_the_expected_value() {
        let ok = [op(Write(1), 0, Some(1)), op(Cas(1, 2), 2, Some(3)), op(Read(Some(2)), 4, Some(5))];
        assert_eq!(check_key(&ok, 1_000_000), Outcome::Linearizable);
        let bad = [op(Write(1), 0, Some(1)), op(Cas(3, 2), 2, Some(3))];
        assert!(matches!(check_key(&bad, 1_000_000), Outcome::NotLinearizable { .. }));
        // An indeterminate cas whose comparison cannot hold is a no-op, not a violation.
        let info = [op(Write(1), 0, Some(1)), op(Cas(3, 2), 2, None), op(Read(Some(1)), 4, Some(5))];
        assert_eq!(check_key(&info, 1_000_000), Outcome::Linearizable);
    }

    #[test]
    fn reads_and_failures_are_taken_from_a_history() {
        let mut h = Vec::new();
        let mut push = |process: i64, kind: Kind, f: F, value: serde_json::Value, t: u64| {
            let mut o = Op::new(process, kind, f);
            o.key = Some("k".into());
            o.value = value;
            o.time_us = t;
            o.index = h.len();
            h.push(o);
        };
        push(0, Kind::Invoke, F::Write, 1.into(), 0);
        push(0, Kind::Ok, F::Write, 1.into(), 1);
        // A failed write did not happen: a read of 2 afterwards is an anomaly.
        push(1, Kind::Invoke, F::Write, 2.into(), 2);
        push(1, Kind::Fail, F::Write, 2.into(), 3);
        push(2, Kind::Invoke, F::Read, serde_json::Value::Null, 4);
        push(2, Kind::Ok, F::Read, 2.into(), 5);
        let (anomalies, unknown) = check(&h, 1_000_000);
        assert!(unknown.is_empty());
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
        assert!(anomalies[0].detail.contains("read -> 2"), "{}", anomalies[0].detail);
        // The same with the write indeterminate is fine.
        h[3].kind = Kind::Info;
        assert!(check(&h, 1_000_000).0.is_empty());
    }

    #[test]
    fn many_concurrent_indeterminate_writes_finish_quickly() {
        let mut h: Vec<RegOp> = (0..10).map(|i| op(Write(i), i, None)).collect();
        for i in 0..200 {
            h.push(op(Read(Some(i % 10)), 100 + 2 * i, Some(101 + 2 * i)));
        }
        // Reads alternate between values already "overwritten": not linearizable, found fast.
        assert!(!matches!(check_key(&h, 5_000_000), Outcome::Unknown { .. }));
        let ok: Vec<RegOp> =
            (0..40).map(|i| op(Write(i), i, None)).chain([op(Read(Some(39)), 100, Some(101))]).collect();
        assert_eq!(check_key(&ok, 5_000_000), Outcome::Linearizable);
    }
}
