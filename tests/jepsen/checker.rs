//! Checkers: each reads a history and returns the anomalies it finds, with the operations
//! involved. A run passes when no checker finds any.
//!
//! - [`linearizable`]: the register workload is linearizable, key by key.
//! - [`set`]: no acknowledged add is lost; nothing appears that was not added; members agree.
//! - [`watch`]: watch streams are ordered, without duplicates or gaps, atomic per revision,
//!   resumable, the same on every member, and agree with the acknowledged writes.
//! - [`objects`]: resourceVersions never go back, no update is lost, members converge.
//! - [`recovery`]: after the last heal, a leader and successful writes within a bound.

pub mod linearizable;
pub mod objects;
pub mod recovery;
pub mod set;
pub mod watch;

use serde::Serialize;

/// Something a checker found wrong.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Anomaly {
    pub checker: &'static str,
    /// A short class: `not-linearizable`, `lost`, `duplicate`, ...
    pub kind: String,
    pub detail: String,
    /// History indices of the operations involved.
    pub ops: Vec<usize>,
}
