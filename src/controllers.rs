//! The controller manager: the control loops that make the cluster's state follow its objects.
//! Each is level-triggered (a reconcile reads the current state and acts on the difference, so
//! running it twice is harmless) and talks only to the API through the client.
//!
//! - [`replicaset`]: pods to match a ReplicaSet's replicas; adoption, release, replacement.
//! - [`deployment`]: one ReplicaSet per pod template; rolling updates, recreate, history.
//! - [`gc`]: ownerReferences: background, foreground and orphan deletion.
//! - [`endpoints`]: each Service's ready and not-ready pod addresses.
//! - [`namespace`]: a deleted namespace is emptied, then removed.
//! - [`nodes`]: pod subnets for nodes (IPAM) and node lifecycle (NotReady, taints, eviction).
//! - [`events`]: the event recorder.

pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod namespace;
pub mod nodes;
pub mod replicaset;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::v1::*;
use crate::api::Object;
use crate::client::Client;
use crate::reconcile::Informer;

/// Settings of the controller manager.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Pod subnets are carved from this (`--cluster-cidr`).
    pub cluster_cidr: String,
    /// Subnet size per node.
    pub node_mask: u8,
    /// A node whose lease is not renewed for this long is NotReady (`--node-monitor-grace-period`).
    pub node_monitor_grace: Duration,
    /// Default wait before pods leave an unreachable node when they carry no toleration.
    pub pod_eviction_timeout: Duration,
    pub workers: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            cluster_cidr: "10.244.0.0/16".into(),
            node_mask: 24,
            node_monitor_grace: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            workers: 4,
        }
    }
}

/// The informers the controllers share.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub pods: Informer<Pod>,
    pub replicasets: Informer<ReplicaSet>,
    pub deployments: Informer<Deployment>,
    pub services: Informer<Service>,
    pub nodes: Informer<Node>,
    pub namespaces: Informer<Namespace>,
    pub leases: Informer<Lease>,
    pub recorder: events::Recorder,
}

/// Index of objects by the uid of their controlling owner.
pub const BY_OWNER: &str = "owner";
/// Index of pods by node name.
pub const BY_NODE: &str = "node";

fn owner_index<K: Object>(o: &K) -> Vec<String> {
    o.meta().owner_references.iter().map(|r| r.uid.clone()).collect()
}

/// Index of objects by their own uid (to find owners).
pub const BY_UID: &str = "uid";

fn uid_index<K: Object>(o: &K) -> Vec<String> {
    vec![o.meta().uid.clone()]
}

/// Runs every controller with `client` (fenced when leader-elected) until `stop`.
pub async fn run(client: Client, cfg: ControllerConfig, stop: CancellationToken) {
    let shared = Shared {
        client: client.clone(),
        pods: Informer::<Pod>::builder()
            .index(BY_OWNER, owner_index)
            .index(BY_NODE, |p: &Pod| {
                p.spec.as_ref().map(|s| s.node_name.clone()).filter(|n| !n.is_empty()).into_iter().collect()
            })
            .start(&client, stop.clone()),
        replicasets: Informer::<ReplicaSet>::builder()
            .index(BY_OWNER, owner_index)
            .index(BY_UID, uid_index)
            .start(&client, stop.clone()),
        deployments: Informer::<Deployment>::builder().index(BY_UID, uid_index).start(&client, stop.clone()),
        services: Informer::<Service>::builder().start(&client, stop.clone()),
        nodes: Informer::<Node>::builder().start(&client, stop.clone()),
        namespaces: Informer::<Namespace>::builder().start(&client, stop.clone()),
        leases: Informer::<Lease>::builder().namespace("kube-node-lease").start(&client, stop.clone()),
        recorder: events::Recorder::new(&client, "controller-manager"),
    };
    // Every cache first (client-go's WaitForCacheSync): a ReplicaSet reconciled before the pod
    // cache is filled sees too few pods and creates more. After a leader change that made a
    // rollout go past its surge.
    let synced = async {
        shared.pods.wait_synced().await;
        shared.replicasets.wait_synced().await;
        shared.deployments.wait_synced().await;
        shared.services.wait_synced().await;
        shared.nodes.wait_synced().await;
        shared.namespaces.wait_synced().await;
        shared.leases.wait_synced().await;
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = synced => {}
    }
    let tasks = vec![
        tokio::spawn(replicaset::run(shared.clone(), cfg.clone(), stop.clone())),
        tokio::spawn(deployment::run(shared.clone(), cfg.clone(), stop.clone())),
        tokio::spawn(gc::run(shared.clone(), stop.clone())),
        tokio::spawn(endpoints::run(shared.clone(), cfg.clone(), stop.clone())),
        tokio::spawn(namespace::run(shared.clone(), stop.clone())),
        tokio::spawn(nodes::run(shared.clone(), cfg.clone(), stop.clone())),
    ];
    for t in tasks {
        let _ = t.await;
    }
}

/// Whether a pod counts as running or about to (not finished, not being deleted).
pub fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
    p.meta().deletion_timestamp.is_empty() && phase != "Succeeded" && phase != "Failed"
}

pub fn is_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
}

/// An owner reference to `owner` marking it as the controller.
pub fn controller_ref<K: Object>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::API_VERSION.into(),
        kind: K::KIND.into(),
        name: owner.meta().name.clone(),
        uid: owner.meta().uid.clone(),
        controller: true,
        block_owner_deletion: true,
    }
}
