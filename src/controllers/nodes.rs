//! Nodes: pod subnets (IPAM) and lifecycle.
//!
//! IPAM gives each Node a `/24` (by default) of the cluster CIDR that no other node has; a
//! deleted node's subnet is free again. Only the leader-elected controller manager allocates,
//! one node at a time, so two nodes never get one subnet.
//!
//! Lifecycle: a node renews its Lease in kube-node-lease; when no renewal has been seen for the
//! grace period (by this process's clock), its Ready condition becomes Unknown and it gets the
//! NoExecute taint `node.kubernetes.io/unreachable`; pods on it are deleted once their
//! toleration of that taint runs out (300 s by default), so their controllers replace them.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::{ControllerConfig, Shared, BY_NODE};
use crate::api::v1::*;
use crate::api::{self, Object};
use crate::client::{Api, ClientError, DeleteParams};
use crate::reconcile::{feed, key_of, run_workers, Change, WorkQueue};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The first free subnet of size `/mask` in `cidr`, given the subnets in use (pure).
pub fn next_subnet(cidr: &str, mask: u8, used: &HashSet<String>) -> Option<String> {
    let (net, len) = crate::api::validation::parse_cidr(cidr)?;
    if mask < len || mask > 30 {
        return None;
    }
    let base = u32::from(net) & (u32::MAX << (32 - len));
    let count = 1u32 << (mask - len);
    (0..count).map(|i| format!("{}/{mask}", Ipv4Addr::from(base + (i << (32 - mask))))).find(|s| !used.contains(s))
}

#[derive(Default)]
struct Seen {
    /// node -> (renewTime last seen, when this process saw it change)
    renewals: HashMap<String, (String, Instant)>,
}

async fn reconcile(
    shared: Shared,
    cfg: ControllerConfig,
    seen: Arc<Mutex<Seen>>,
    assigned: Arc<Mutex<HashMap<String, String>>>,
    key: String,
) -> Result<Option<Duration>, ClientError> {
    let Some(node) = shared.nodes.cache().get(&key) else {
        assigned.lock().remove(&key);
        return Ok(None);
    };
    let nodes = Api::<Node>::all(&shared.client);
    // IPAM.
    let spec = node.spec.clone().unwrap_or_default();
    if spec.pod_cidr.is_empty() {
        let subnet = {
            let mut a = assigned.lock();
            let mut used: HashSet<String> = shared
                .nodes
                .cache()
                .list()
                .iter()
                .filter_map(|n| n.spec.as_ref().map(|s| s.pod_cidr.clone()))
                .collect();
            used.extend(a.iter().filter(|(n, _)| **n != key).map(|(_, s)| s.clone()));
            match a.get(&key) {
                Some(s) => Some(s.clone()),
                None => {
                    let s = next_subnet(&cfg.cluster_cidr, cfg.node_mask, &used);
                    if let Some(s) = &s {
                        a.insert(key.clone(), s.clone());
                    }
                    s
                }
            }
        };
        let Some(subnet) = subnet else {
            shared
                .recorder
                .warning(node.as_ref(), "CIDRNotAvailable", "no pod subnet is left in the cluster CIDR")
                .await;
            return Ok(Some(Duration::from_secs(10)));
        };
        let patch = serde_json::json!({"spec": {"podCIDR": subnet, "podCIDRs": [subnet]}});
        nodes.patch(&key, &patch, false).await?;
        shared
            .recorder
            .normal(node.as_ref(), "CIDRAssignmentSucceeded", &format!("Node {key} got pod subnet {subnet}"))
            .await;
        return Ok(None);
    }
    // Lifecycle.
    let lease = shared.leases.cache().get(&format!("kube-node-lease/{key}"));
    let renew = lease.and_then(|l| l.spec.clone()).map(|s| s.renew_time).unwrap_or_default();
    let since = {
        let mut s = seen.lock();
        let e = s.renewals.entry(key.clone()).or_insert_with(|| (renew.clone(), Instant::now()));
        if e.0 != renew {
            *e = (renew.clone(), Instant::now());
        }
        e.1.elapsed()
    };
    let status = node.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().find(|c| c.r#type == "Ready").map(|c| c.status.clone()).unwrap_or_default();
    let tainted = spec.taints.iter().any(|t| t.key == UNREACHABLE);
    if since >= cfg.node_monitor_grace {
        if ready != "Unknown" {
            let mut n = (*node).clone();
            let st = n.status.get_or_insert_with(Default::default);
            let now = api::time::now();
            match st.conditions.iter_mut().find(|c| c.r#type == "Ready") {
                Some(c) => {
                    c.status = "Unknown".into();
                    c.reason = "NodeStatusUnknown".into();
                    c.message = "Kubelet stopped posting node status.".into();
                    c.last_transition_time = now;
                }
                None => st.conditions.push(NodeCondition {
                    r#type: "Ready".into(),
                    status: "Unknown".into(),
                    reason: "NodeStatusUnknown".into(),
                    message: "Kubelet stopped posting node status.".into(),
                    last_transition_time: now,
                    ..Default::default()
                }),
            }
            nodes.update_status(&n).await?;
            shared
                .recorder
                .normal(node.as_ref(), "NodeNotReady", &format!("Node {key} status is now: NodeNotReady"))
                .await;
            return Ok(Some(Duration::from_millis(100)));
        }
        if !tainted {
            let mut n = (*node).clone();
            n.spec.get_or_insert_with(Default::default).taints.push(Taint {
                key: UNREACHABLE.into(),
                value: String::new(),
                effect: "NoExecute".into(),
                time_added: api::time::now(),
            });
            nodes.update(&n).await?;
            return Ok(Some(Duration::from_millis(100)));
        }
        // Evict pods whose toleration ran out.
        let taint_age = spec
            .taints
            .iter()
            .find(|t| t.key == UNREACHABLE)
            .and_then(|t| api::time::age(&t.time_added))
            .unwrap_or_default();
        let mut next = cfg.pod_eviction_timeout;
        for p in shared.pods.cache().by_index(BY_NODE, &key) {
            if !p.meta().deletion_timestamp.is_empty() {
                continue;
            }
            let tol = p.spec.as_ref().and_then(|s| {
                s.tolerations
                    .iter()
                    .find(|t| {
                        (t.key == UNREACHABLE || (t.key.is_empty() && t.operator == "Exists"))
                            && (t.effect.is_empty() || t.effect == "NoExecute")
                    })
                    .cloned()
            });
            let limit = match tol {
                Some(t) => match t.toleration_seconds {
                    Some(s) => Duration::from_secs(s.max(0) as u64),
                    None => continue, // tolerates forever
                },
                None => Duration::ZERO,
            };
            if taint_age >= limit {
                let pods = Api::<Pod>::namespaced(&shared.client, &p.meta().namespace);
                let _ = pods.delete(&p.meta().name, &DeleteParams::default()).await;
                shared
                    .recorder
                    .normal(
                        p.as_ref(),
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {}", key_of(p.as_ref())),
                    )
                    .await;
            } else {
                next = next.min(limit - taint_age);
            }
        }
        return Ok(Some(next.max(Duration::from_secs(1))));
    }
    if tainted && ready == "True" {
        // The kubelet is back: lift the taint.
        let mut n = (*node).clone();
        n.spec.get_or_insert_with(Default::default).taints.retain(|t| t.key != UNREACHABLE);
        nodes.update(&n).await?;
    }
    // Look again when the grace period would run out.
    Ok(Some(cfg.node_monitor_grace.saturating_sub(since) + Duration::from_millis(100)))
}

pub async fn run(shared: Shared, cfg: ControllerConfig, stop: CancellationToken) {
    let queue = WorkQueue::new();
    let all = {
        let n = shared.nodes.clone();
        move || n.cache().list().iter().map(|o| key_of(o.as_ref())).collect::<Vec<_>>()
    };
    feed(
        &shared.nodes,
        &queue,
        stop.clone(),
        |c| match c {
            Change::Applied(o) | Change::Deleted(o) => vec![key_of(o.as_ref())],
            Change::Resync => vec![],
        },
        all.clone(),
    );
    feed(
        &shared.leases,
        &queue,
        stop.clone(),
        |c| match c {
            Change::Applied(l) => vec![l.meta().name.clone()],
            _ => vec![],
        },
        all,
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let assigned = Arc::new(Mutex::new(HashMap::new()));
    // IPAM must not give one subnet twice: one worker.
    run_workers(queue, 1, stop, move |key| reconcile(shared.clone(), cfg.clone(), seen.clone(), assigned.clone(), key))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_handed_out_in_order_and_never_twice() {
        let mut used = HashSet::new();
        for want in ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"] {
            let s = next_subnet("10.244.0.0/16", 24, &used).expect("room");
            assert_eq!(s, want);
            used.insert(s);
        }
        used.remove("10.244.1.0/24");
        assert_eq!(next_subnet("10.244.0.0/16", 24, &used).as_deref(), Some("10.244.1.0/24"));
        let full: HashSet<String> = (0..4).map(|i| format!("10.0.0.{}/26", i * 64)).collect();
        assert_eq!(next_subnet("10.0.0.0/24", 26, &full), None);
    }
}
