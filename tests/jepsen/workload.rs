//! Workloads: clients that run operations against the members while the nemesis acts, and
//! record them. Each logical process talks to one member; after an indeterminate operation the
//! process is retired (its operation may still be running) and a new one, on the next member,
//! takes its place.
//!
//! - [`register`]: read, write and compare-and-set on a few keys (linearizability);
//! - [`set`]: unique adds, then a final read (no lost acknowledged writes);
//! - [`watch`]: writes under a prefix while watchers on every member follow it, reconnect and
//!   resume (watch guarantees).
//!
//! - [`objects`]: Pods and Deployments through the rkube.v1 API, read and updated with
//!   resourceVersion compare-and-swap (no lost update, members converge).

pub mod objects;
pub mod register;
pub mod set;
pub mod watch;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::history::Recorder;

/// What every workload gets.
#[derive(Clone)]
pub struct Ctx {
    pub rec: Recorder,
    /// (member name, host port), in member order.
    pub members: Vec<(String, u16)>,
    /// Stops issuing new operations.
    pub stop: CancellationToken,
    /// Keys of this run start with it.
    pub prefix: String,
    pub op_timeout: Duration,
    /// Pause between one process's operations.
    pub think: Duration,
    pub seed: u64,
}

impl Ctx {
    pub fn client(&self, i: usize) -> Client {
        let (name, port) = &self.members[i % self.members.len()];
        Client::new(name, *port, self.op_timeout)
    }

    /// Sleeps for the think time unless stopped; false when stopped.
    pub async fn think(&self) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(self.think) => true,
        }
    }
}

/// Process numbering: worker `w` of `n` uses processes w, w + n, w + 2n, ...
pub struct Process {
    pub id: i64,
    stride: i64,
    /// Which member the process talks to (an index into the members).
    pub member: usize,
}

impl Process {
    pub fn new(worker: usize, workers: usize, base: i64) -> Process {
        Process { id: base + worker as i64, stride: workers as i64, member: worker }
    }

    /// After an error: an indeterminate operation retires the process (a successor takes
    /// over on the next member); a definite failure (say, the member is down) moves the same
    /// process to the next member, as a client with several endpoints would.
    pub fn after_error(&mut self, outcome: crate::history::Kind) {
        if outcome == crate::history::Kind::Info {
            self.id += self.stride;
        }
        self.member += 1;
    }
}
