//! The history of a run: every operation's invocation and completion (ok, fail, info), with the
//! time since the run began, the logical process that ran it and the member it talked to, as
//! JSON lines. Nemesis actions are operations of process -1.
//!
//! Semantics follow Jepsen: `ok` happened, `fail` did not happen, `info` may or may not have
//! happened (a timeout, a lost connection). A process whose operation ended in `info` is never
//! used again: it may still be running, so its successor gets a new process number.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The process number of the nemesis.
pub const NEMESIS: i64 = -1;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What an operation does. Workloads put their arguments and results in [`Op::value`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum F {
    /// Register: read a key (value: the value read, null if absent).
    Read,
    /// Register: write a unique value.
    Write,
    /// Register: compare-and-set, value `[from, to]`.
    Cas,
    /// Set: add one unique element (value: the element).
    Add,
    /// Set: the final read of every element (value: the elements), on `member`.
    ReadAll,
    /// Watch: writes under the watched prefix (value: `[[key, value or null], ...]`, one
    /// transaction; null deletes); `rev` is the revision the store gave it.
    Txn,
    /// Watch: a watcher (re)opens its watch from `rev` on `member`.
    WatchOpen,
    /// Watch: one response's events (value: `[[rev, key, value or null], ...]`).
    WatchEvents,
    /// Objects: a linearizable Get of `key` (value: `{"rv", "val"}`).
    ObjGet,
    /// Objects: a compare-and-swap update of `key` (value: `{"from": rv, "val"}`; `rev`: the
    /// new resourceVersion).
    ObjUpdate,
    /// Objects: the final reads of every object (value: `{key: {"rv", "val"}}`).
    ObjFinal,
    /// Nemesis: a fault begins (value: `{"fault": name, "detail": ...}`).
    Fault,
    /// Nemesis: the fault ends.
    Heal,
}

impl F {
    /// A workload's single operation on the system (not a final read, a watch or the nemesis):
    /// what the availability figures count.
    pub fn is_client_op(self) -> bool {
        self.is_write() || matches!(self, F::Read | F::ObjGet)
    }

    /// An operation that changes the system: what recovery after healing waits for.
    pub fn is_write(self) -> bool {
        matches!(self, F::Write | F::Cas | F::Add | F::Txn | F::ObjUpdate)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Op {
    /// Position in the history.
    pub index: usize,
    /// Microseconds since the run began.
    pub time_us: u64,
    pub process: i64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub f: F,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub value: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The store revision of a completed write or watch start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// A bare operation, for tests and builders.
    pub fn new(process: i64, kind: Kind, f: F) -> Op {
        Op {
            index: 0,
            time_us: 0,
            process,
            kind,
            f,
            key: None,
            value: serde_json::Value::Null,
            member: None,
            rev: None,
            error: None,
        }
    }
}

/// Records a history shared by every task of a run.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

/// An invoked operation that still has to complete.
pub struct Pending {
    pub op: Op,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { start: Instant::now(), ops: Arc::new(Mutex::new(Vec::new())) }
    }

    pub fn elapsed_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn push(&self, mut op: Op) -> Op {
        let mut ops = self.ops.lock();
        op.time_us = self.elapsed_us();
        op.index = ops.len();
        ops.push(op.clone());
        op
    }

    /// Records an invocation.
    pub fn invoke(&self, process: i64, f: F, key: Option<String>, value: serde_json::Value, member: &str) -> Pending {
        let mut op = Op::new(process, Kind::Invoke, f);
        op.key = key;
        op.value = value;
        op.member = Some(member.to_string());
        Pending { op: self.push(op) }
    }

    /// Records the completion of `p`; `value` replaces the invocation's when given.
    pub fn complete(
        &self,
        p: &Pending,
        kind: Kind,
        value: Option<serde_json::Value>,
        rev: Option<i64>,
        error: Option<String>,
    ) -> Op {
        let mut op = p.op.clone();
        op.kind = kind;
        if let Some(v) = value {
            op.value = v;
        }
        op.rev = rev;
        op.error = error;
        self.push(op)
    }

    /// Records an operation as it is (a nemesis step, watch events).
    pub fn event(&self, op: Op) -> Op {
        self.push(op)
    }

    pub fn snapshot(&self) -> Vec<Op> {
        self.ops.lock().clone()
    }
}

pub fn write_jsonl(ops: &[Op], path: &Path) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Op>> {
    let text = std::fs::read_to_string(path)?;
    let mut ops = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let op: Op = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        ops.push(op);
    }
    Ok(ops)
}

/// Pairs each invocation with its completion (by process, in order). An invocation without a
/// completion (the run ended first) is paired with nothing and counts as `info`.
pub fn pairs(ops: &[Op]) -> Vec<(Op, Option<Op>)> {
    let mut open: std::collections::HashMap<i64, usize> = Default::default();
    let mut out: Vec<(Op, Option<Op>)> = Vec::new();
    for op in ops.iter().filter(|o| o.process != NEMESIS && !matches!(o.f, F::WatchEvents)) {
        if op.kind == Kind::Invoke {
            open.insert(op.process, out.len());
            out.push((op.clone(), None));
        } else if let Some(i) = open.remove(&op.process) {
            out[i].1 = Some(op.clone());
        }
    }
    out
}
