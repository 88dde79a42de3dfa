//! Watch guarantees as etcd states them, checked on every watcher's stream:
//!
//! - ordered: revisions never go back; events of one revision arrive in one response (atomic);
//! - no duplicates: an event (revision, key) arrives once, across reconnects too;
//! - resumable: a watch resumed from revision r delivers nothing before r;
//! - no gaps: from its first start revision up to the end of the run, a watcher's events are
//!   exactly the reference stream: a fresh watch opened from the first revision on each member
//!   after the run (those must be identical too: the same events on every member);
//! - the reference agrees with the writes: every acknowledged transaction appears at its
//!   revision with its keys and values; every event belongs to some attempted transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Anomaly;
use crate::history::{pairs, Kind, Op, F};

/// `key` of the reference watchers' operations.
pub const REFERENCE: &str = "reference";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Event {
    pub rev: i64,
    pub key: String,
    /// None for a delete.
    pub value: Option<String>,
}

/// A watcher's stream: its (re)opens and the responses it got, in order.
#[derive(Debug, Default)]
struct Stream {
    member: String,
    /// (history index, start revision) of each open.
    opens: Vec<(usize, i64)>,
    /// (history index of the response, start revision in force, event).
    events: Vec<(usize, i64, Event)>,
}

pub fn events_of(v: &serde_json::Value) -> Vec<Event> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some(Event {
                        rev: e.get(0)?.as_i64()?,
                        key: e.get(1)?.as_str()?.to_string(),
                        value: e.get(2).and_then(|v| v.as_str()).map(str::to_string),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn streams(ops: &[Op], reference: bool) -> BTreeMap<i64, Stream> {
    let mut out: BTreeMap<i64, Stream> = BTreeMap::new();
    for o in ops.iter().filter(|o| (o.key.as_deref() == Some(REFERENCE)) == reference && o.kind == Kind::Ok) {
        match o.f {
            F::WatchOpen => {
                let s = out.entry(o.process).or_default();
                s.member = o.member.clone().unwrap_or_default();
                s.opens.push((o.index, o.rev.unwrap_or(0)));
            }
            F::WatchEvents => {
                let s = out.entry(o.process).or_default();
                let start = s.opens.last().map_or(0, |(_, r)| *r);
                for e in events_of(&o.value) {
                    s.events.push((o.index, start, e));
                }
            }
            _ => {}
        }
    }
    out
}

fn anomaly(kind: &str, detail: String, ops: Vec<usize>) -> Anomaly {
    Anomaly { checker: "watch", kind: kind.into(), detail, ops }
}

/// Order, duplicates, atomicity and resumption within one stream.
fn check_stream(name: &str, s: &Stream, out: &mut Vec<Anomaly>) {
    let mut seen: HashMap<(i64, String), usize> = HashMap::new();
    let mut last: Option<&(usize, i64, Event)> = None;
    for item @ (resp, start, e) in &s.events {
        if e.rev < *start {
            out.push(anomaly(
                "before-start",
                format!("{name}: event at revision {} of {} delivered by a watch started at {start}", e.rev, e.key),
                vec![*resp],
            ));
        }
        if let Some(first) = seen.insert((e.rev, e.key.clone()), *resp) {
            out.push(anomaly(
                "duplicate",
                format!("{name}: event {} at revision {} delivered twice", e.key, e.rev),
                vec![first, *resp],
            ));
        }
        if let Some((lresp, _, le)) = last {
            if e.rev < le.rev {
                out.push(anomaly(
                    "reordered",
                    format!("{name}: revision {} ({}) arrived after revision {} ({})", e.rev, e.key, le.rev, le.key),
                    vec![*lresp, *resp],
                ));
            } else if e.rev == le.rev && lresp != resp {
                out.push(anomaly(
                    "split-revision",
                    format!("{name}: the events of revision {} arrived in two responses", e.rev),
                    vec![*lresp, *resp],
                ));
            }
        }
        last = Some(item);
    }
}

pub fn check(ops: &[Op]) -> (Vec<Anomaly>, WatchStats) {
    let mut out = Vec::new();
    let refs = streams(ops, true);
    let watchers = streams(ops, false);
    let mut stats = WatchStats {
        watchers: watchers.len(),
        reopens: watchers.values().map(|s| s.opens.len().saturating_sub(1)).sum(),
        events: watchers.values().map(|s| s.events.len()).sum(),
        ..Default::default()
    };
    for (p, s) in refs.iter() {
        check_stream(&format!("reference watch on {} (process {p})", s.member), s, &mut out);
    }
    for (p, s) in watchers.iter() {
        check_stream(&format!("watcher {p}"), s, &mut out);
    }
    let Some((_, reference)) = refs.iter().next() else {
        if !watchers.is_empty() {
            out.push(anomaly("no-reference", "no reference watch completed after the run".into(), vec![]));
        }
        return (out, stats);
    };
    let ref_events: Vec<Event> = reference.events.iter().map(|(_, _, e)| e.clone()).collect();
    stats.reference_events = ref_events.len();
    let end = ref_events.last().map_or(0, |e| e.rev);
    for (p, s) in refs.iter().skip(1) {
        let theirs: Vec<Event> = s.events.iter().map(|(_, _, e)| e.clone()).collect();
        if theirs != ref_events {
            out.push(diff(
                "members-differ",
                &format!("the reference watch on {} (process {p}) and on {}", s.member, reference.member),
                &ref_events,
                &theirs,
                s.opens.first().map(|o| o.0),
            ));
        }
    }
    for (p, s) in watchers.iter() {
        let Some((open_index, from)) = s.opens.first().copied() else { continue };
        let want: Vec<Event> = ref_events.iter().filter(|e| e.rev >= from).cloned().collect();
        let got: Vec<Event> = s.events.iter().map(|(_, _, e)| e.clone()).filter(|e| e.rev <= end).collect();
        if got != want {
            out.push(diff("gap", &format!("watcher {p} (last on {})", s.member), &want, &got, Some(open_index)));
        }
    }

    // The reference against the writes.
    let mut by_rev: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
    for e in &ref_events {
        by_rev.entry(e.rev).or_default().push(e);
    }
    let mut claimed: HashSet<i64> = HashSet::new();
    let mut attempted: HashMap<(String, Option<String>), usize> = HashMap::new();
    let first_rev = ref_events.first().map_or(i64::MAX, |e| e.rev);
    for (inv, done) in pairs(ops).into_iter().filter(|(i, _)| i.f == F::Txn) {
        let writes = events_of_txn(&inv.value);
        for w in &writes {
            attempted.insert(w.clone(), inv.index);
        }
        let Some(d) = done.filter(|d| d.kind == Kind::Ok) else { continue };
        let Some(rev) = d.rev else { continue };
        if rev < first_rev || rev > end {
            continue;
        }
        claimed.insert(rev);
        let at: HashSet<(String, Option<String>)> =
            by_rev.get(&rev).map(|v| v.iter().map(|e| (e.key.clone(), e.value.clone())).collect()).unwrap_or_default();
        // Every put must be there; a delete of an absent key leaves no event.
        let missing: Vec<&(String, Option<String>)> =
            writes.iter().filter(|w| w.1.is_some() && !at.contains(w)).collect();
        if !missing.is_empty() {
            out.push(anomaly(
                "lost-write",
                format!("acknowledged transaction at revision {rev} is not in the watch history: missing {missing:?}"),
                vec![inv.index, d.index],
            ));
        }
    }
    for (rev, evs) in &by_rev {
        for e in evs {
            if e.value.is_some() && !attempted.contains_key(&(e.key.clone(), e.value.clone())) {
                out.push(anomaly(
                    "phantom",
                    format!("event {} = {:?} at revision {rev} matches no write", e.key, e.value),
                    vec![],
                ));
            }
        }
    }
    stats.acknowledged_checked = claimed.len();
    (out, stats)
}

fn events_of_txn(v: &serde_json::Value) -> Vec<(String, Option<String>)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| {
                    Some((w.get(0)?.as_str()?.to_string(), w.get(1).and_then(|x| x.as_str()).map(str::to_string)))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn diff(kind: &str, who: &str, want: &[Event], got: &[Event], op: Option<usize>) -> Anomaly {
    let w: HashSet<&Event> = want.iter().collect();
    let g: HashSet<&Event> = got.iter().collect();
    let mut missing: Vec<&&Event> = w.difference(&g).collect();
    let mut extra: Vec<&&Event> = g.difference(&w).collect();
    missing.sort();
    extra.sort();
    let first_diff = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
    anomaly(
        kind,
        format!(
            "{who}: {} events where {} were expected; first difference at position {first_diff}; missing {:?}; \
             extra {:?}",
            got.len(),
            want.len(),
            missing.iter().take(5).map(|e| (e.rev, &e.key)).collect::<Vec<_>>(),
            extra.iter().take(5).map(|e| (e.rev, &e.key)).collect::<Vec<_>>()
        ),
        op.into_iter().collect(),
    )
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WatchStats {
    pub watchers: usize,
    pub reopens: usize,
    pub events: usize,
    pub reference_events: usize,
    pub acknowledged_checked: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(Vec<Op>);
    impl H {
        fn push(&mut self, mut o: Op) {
            o.index = self.0.len();
            self.0.push(o);
        }
        fn txn(&mut self, p: i64, writes: &[(&str, &str)], rev: i64) {
            let mut inv = Op::new(p, Kind::Invoke, F::Txn);
            inv.value = writes.iter().map(|(k, v)| serde_json::json!([k, v])).collect();
            let mut done = inv.clone();
            done.kind = Kind::Ok;
            done.rev = Some(rev);
            self.push(inv);
            self.push(done);
        }
        fn open(&mut self, p: i64, rev: i64, reference: bool) {
            let mut o = Op::new(p, Kind::Ok, F::WatchOpen);
            o.rev = Some(rev);
            o.member = Some(format!("m{}", p % 10));
            o.key = reference.then(|| REFERENCE.to_string());
            self.push(o);
        }
        fn events(&mut self, p: i64, evs: &[(i64, &str, &str)], reference: bool) {
            let mut o = Op::new(p, Kind::Ok, F::WatchEvents);
            o.value = evs.iter().map(|(r, k, v)| serde_json::json!([r, k, v])).collect();
            o.key = reference.then(|| REFERENCE.to_string());
            self.push(o);
        }
    }

    /// Writes at revisions 2 (a), 3 (b and c in one transaction), 4 (a); a reference on two
    /// members; and one watcher, whose responses `watcher` builds.
    fn run(watcher: impl FnOnce(&mut H)) -> Vec<String> {
        let mut h = H(Vec::new());
        h.txn(0, &[("a", "1")], 2);
        h.txn(1, &[("b", "2"), ("c", "3")], 3);
        h.txn(0, &[("a", "4")], 4);
        for p in [101, 102] {
            h.open(p, 2, true);
            h.events(p, &[(2, "a", "1"), (3, "b", "2"), (3, "c", "3")], true);
            h.events(p, &[(4, "a", "4")], true);
        }
        watcher(&mut h);
        check(&h.0).0.into_iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_correct_stream_with_a_resume_passes() {
        let kinds = run(|h| {
            h.open(1, 2, false);
            h.events(1, &[(2, "a", "1")], false);
            h.open(1, 3, false);
            h.events(1, &[(3, "b", "2"), (3, "c", "3")], false);
            h.events(1, &[(4, "a", "4")], false);
        });
        assert!(kinds.is_empty(), "{kinds:?}");
    }

    #[test]
    fn reordered_watch_is_rejected() {
        let kinds = run(|h| {
            h.open(1, 2, false);
            h.events(1, &[(3, "b", "2"), (3, "c", "3")], false);
            h.events(1, &[(2, "a", "1")], false);
            h.events(1, &[(4, "a", "4")], false);
        });
        assert!(kinds.contains(&"reordered".to_string()), "{kinds:?}");
        assert!(kinds.contains(&"gap".to_string()), "{kinds:?}");
    }

    #[test]
    fn duplicate_event_is_rejected() {
        // A resume from the wrong revision redelivers revision 3.
        let kinds = run(|h| {
            h.open(1, 2, false);
            h.events(1, &[(2, "a", "1"), (3, "b", "2"), (3, "c", "3")], false);
            h.open(1, 3, false);
            h.events(1, &[(3, "b", "2"), (3, "c", "3")], false);
            h.events(1, &[(4, "a", "4")], false);
        });
        assert!(kinds.contains(&"duplicate".to_string()), "{kinds:?}");
    }

    #[test]
    fn gap_and_split_revision_are_rejected() {
        let gap = run(|h| {
            h.open(1, 2, false);
            h.events(1, &[(2, "a", "1")], false);
            h.events(1, &[(4, "a", "4")], false);
        });
        assert_eq!(gap, ["gap"]);
        let split = run(|h| {
            h.open(1, 2, false);
            h.events(1, &[(2, "a", "1"), (3, "b", "2")], false);
            h.events(1, &[(3, "c", "3"), (4, "a", "4")], false);
        });
        assert_eq!(split, ["split-revision"]);
        let early = run(|h| {
            h.open(1, 3, false);
            h.events(1, &[(2, "a", "1"), (3, "b", "2"), (3, "c", "3"), (4, "a", "4")], false);
        });
        assert!(early.contains(&"before-start".to_string()), "{early:?}");
    }

    #[test]
    fn members_that_differ_and_lost_writes_are_rejected() {
        let mut h = H(Vec::new());
        h.txn(0, &[("a", "1")], 2);
        h.txn(0, &[("a", "4")], 3);
        h.open(101, 2, true);
        h.events(101, &[(2, "a", "1"), (3, "a", "4")], true);
        h.open(102, 2, true);
        h.events(102, &[(2, "a", "1")], true);
        h.open(103, 2, true);
        h.events(103, &[(2, "a", "1"), (3, "a", "5")], true);
        let kinds: Vec<String> = check(&h.0).0.into_iter().map(|a| a.kind).collect();
        assert_eq!(kinds, ["members-differ", "members-differ"]);
        // The first reference itself missing an acknowledged write, and showing a phantom.
        let mut h = H(Vec::new());
        h.txn(0, &[("a", "1")], 2);
        h.txn(0, &[("a", "4")], 3);
        h.open(101, 2, true);
        h.events(101, &[(2, "a", "1"), (3, "a", "9")], true);
        let kinds: Vec<String> = check(&h.0).0.into_iter().map(|a| a.kind).collect();
        assert_eq!(kinds, ["lost-write", "phantom"]);
    }
}
