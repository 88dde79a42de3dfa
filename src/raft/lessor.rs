//! Lease expiry, decided by the leader alone and replicated as a `LeaseRevoke` entry.
//!
//! Only the leader keeps deadlines. A member that becomes leader gives every lease a full TTL
//! from that moment (as etcd does), so a lease never expires early because leadership moved.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RaftNode;
use crate::store::{Command, Response};

/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Lessor {
    deadlines: parking_lot::Mutex<HashMap<i64, Instant>>,
}

impl Lessor {
    /// Gives a lease a full TTL from now.
    pub fn touch(&self, id: i64, ttl: i64) {
        self.deadlines.lock().insert(id, Instant::now() + Duration::from_secs(ttl.max(0) as u64));
    }

    /// Seconds left before the lease expires, rounded up, as this member (the leader) sees it.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let d = *self.deadlines.lock().get(&id)?;
        let left = d.saturating_duration_since(Instant::now());
        Some(left.as_millis().div_ceil(1000) as i64)
    }
}

pub(crate) async fn run_expiry(node: Arc<RaftNode>, shutdown: CancellationToken) {
    let mut led_term: Option<u64> = None;
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = node.status();
        if !status.is_leader {
            if led_term.take().is_some() {
                node.lessor.deadlines.lock().clear();
            }
            continue;
        }
        let leases = match node.store.leases() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading leases");
                continue;
            }
        };
        let now = Instant::now();
        let expired: Vec<i64> = {
            let mut deadlines = node.lessor.deadlines.lock();
            if led_term != Some(status.term) {
                deadlines.clear();
                led_term = Some(status.term);
            }
            deadlines.retain(|id, _| leases.iter().any(|(l, _)| l == id));
            for (id, rec) in &leases {
                deadlines.entry(*id).or_insert_with(|| now + Duration::from_secs(rec.ttl.max(0) as u64));
            }
            deadlines.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect()
        };
        for id in expired {
            match node.write(Command::LeaseRevoke { id }).await {
                Ok(Response::Error(_)) | Ok(_) => {
                    tracing::debug!(lease = id, "lease expired and revoked");
                    node.lessor.deadlines.lock().remove(&id);
                }
                Err(e) => tracing::warn!(lease = id, error = %e, "revoking expired lease"),
            }
        }
    }
}
