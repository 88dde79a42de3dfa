//! The scheduler: binds pending pods to nodes.
//!
//! The decision is [`plan`], a pure function of a [`Snapshot`] of the nodes (what each can
//! still take) and the pending pods: filters (node ready, not cordoned, resources, pod count,
//! nodeSelector, taints and tolerations, host ports), then scores (least allocated, balanced
//! allocation, spreading one owner's pods), placing pods one after another so that each
//! decision sees the previous ones. [`run`] is the driver: informers for pods and nodes, binds
//! through Pods/Bind (a compare-and-swap that fails if the pod is bound already), events for
//! pods that fit nowhere, and retries with backoff and whenever nodes change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::api::quantity;
use crate::api::v1::{Node, Pod, Taint, Toleration};
use crate::api::Object;
use crate::client::{Api, Client};
use crate::controllers::events::Recorder;
use crate::reconcile::{key_of, Change, Informer};

/// What one node can take, and what it already runs.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub cpu_millis: i64,
    pub memory: i64,
    pub max_pods: i64,
    pub used_cpu: i64,
    pub used_memory: i64,
    pub pods: i64,
    pub host_ports: HashSet<(i32, String)>,
    /// Pods per owner uid, for spreading.
    pub owners: HashMap<String, i64>,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub pod: String,
    pub node: String,
}

/// A pod that fits nowhere, with kubectl's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub pod: String,
    pub message: String,
}

/// cpu millicores and memory bytes a pod requests.
pub fn requests(pod: &Pod) -> (i64, i64) {
    let mut cpu = 0;
    let mut mem = 0;
    for c in pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default() {
        if let Some(r) = &c.resources {
            cpu += r.requests.get("cpu").and_then(|q| quantity::cpu_millis(q)).unwrap_or(0);
            mem += r.requests.get("memory").and_then(|q| quantity::bytes(q)).unwrap_or(0);
        }
    }
    (cpu, mem)
}

fn host_ports(pod: &Pod) -> Vec<(i32, String)> {
    pod.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter())
                .filter(|p| p.host_port != 0)
                .map(|p| (p.host_port, if p.protocol.is_empty() { "TCP".into() } else { p.protocol.clone() }))
                .collect()
        })
        .unwrap_or_default()
}

fn owner_uid(pod: &Pod) -> Option<String> {
    crate::api::controller_of(pod.meta()).map(|o| o.uid.clone())
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> NodeInfo {
        let meta = Object::meta(node);
        let spec = node.spec.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let alloc = if status.allocatable.is_empty() { &status.capacity } else { &status.allocatable };
        let ready = status.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True");
        NodeInfo {
            name: meta.name.clone(),
            ready,
            unschedulable: spec.unschedulable,
            labels: meta.labels.clone(),
            taints: spec.taints,
            cpu_millis: alloc.get("cpu").and_then(|q| quantity::cpu_millis(q)).unwrap_or(0),
            memory: alloc.get("memory").and_then(|q| quantity::bytes(q)).unwrap_or(0),
            max_pods: alloc.get("pods").and_then(|q| q.parse().ok()).unwrap_or(110),
            ..Default::default()
        }
    }

    /// Counts a pod bound to this node.
    pub fn add_pod(&mut self, pod: &Pod) {
        let (cpu, mem) = requests(pod);
        self.used_cpu += cpu;
        self.used_memory += mem;
        self.pods += 1;
        self.host_ports.extend(host_ports(pod));
        if let Some(o) = owner_uid(pod) {
            *self.owners.entry(o).or_default() += 1;
        }
    }
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        (t.effect.is_empty() || t.effect == taint.effect)
            && (t.key.is_empty() && t.operator == "Exists"
                || t.key == taint.key && (t.operator == "Exists" || t.value == taint.value))
    })
}

/// What the filters and scores need of one pod, worked out once per pod rather than once per
/// node: with 1,000 nodes, parsing quantities and cloning the spec for every (pod, node) pair
/// cost more than everything else the scheduler does.
struct PodFacts<'a> {
    cpu: i64,
    mem: i64,
    host_ports: Vec<(i32, String)>,
    owner: Option<String>,
    node_selector: &'a BTreeMap<String, String>,
    tolerations: &'a [Toleration],
    tolerates_not_ready: bool,
}

static NO_SELECTOR: BTreeMap<String, String> = BTreeMap::new();

impl<'a> PodFacts<'a> {
    fn of(pod: &'a Pod) -> Self {
        let (cpu, mem) = requests(pod);
        let (node_selector, tolerations) = match &pod.spec {
            Some(s) => (&s.node_selector, s.tolerations.as_slice()),
            None => (&NO_SELECTOR, &[][..]),
        };
        PodFacts {
            cpu,
            mem,
            host_ports: host_ports(pod),
            owner: owner_uid(pod),
            node_selector,
            tolerations,
            tolerates_not_ready: tolerations
                .iter()
                .any(|t| t.key == "node.kubernetes.io/not-ready" && t.effect == "NoSchedule"),
        }
    }
}

/// Why a node cannot take a pod, in the scheduler's words; `None` if it can.
fn filter(node: &NodeInfo, pod: &PodFacts) -> Option<String> {
    if !node.ready && !pod.tolerates_not_ready {
        return Some("node(s) were not ready".into());
    }
    if node.unschedulable {
        return Some("node(s) were unschedulable".into());
    }
    for (k, v) in pod.node_selector {
        if node.labels.get(k) != Some(v) {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    for taint in &node.taints {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute") && !tolerates(pod.tolerations, taint) {
            return Some(format!("node(s) had untolerated taint {{{}: {}}}", taint.key, taint.value));
        }
    }
    if node.pods + 1 > node.max_pods {
        return Some("Too many pods".into());
    }
    if pod.cpu > 0 && node.used_cpu + pod.cpu > node.cpu_millis {
        return Some("Insufficient cpu".into());
    }
    if pod.mem > 0 && node.used_memory + pod.mem > node.memory {
        return Some("Insufficient memory".into());
    }
    if pod.host_ports.iter().any(|p| node.host_ports.contains(p)) {
        return Some("node(s) didn't have free ports for the requested pod ports".into());
    }
    None
}

/// Higher is better: least allocated + balanced allocation + spread of the pod's owner.
fn score(node: &NodeInfo, pod: &PodFacts) -> i64 {
    let frac = |used: i64, cap: i64| if cap <= 0 { 1.0 } else { (used as f64 / cap as f64).min(1.0) };
    let cpu_f = frac(node.used_cpu + pod.cpu, node.cpu_millis);
    let mem_f = frac(node.used_memory + pod.mem, node.memory);
    let pods_f = frac(node.pods + 1, node.max_pods);
    let least = ((1.0 - cpu_f) + (1.0 - mem_f) + (1.0 - pods_f)) / 3.0 * 100.0;
    let balanced = (1.0 - (cpu_f - mem_f).abs()) * 100.0;
    let spread = match &pod.owner {
        Some(o) => {
            let n = node.owners.get(o).copied().unwrap_or(0);
            100.0 / (1.0 + n as f64)
        }
        None => 0.0,
    };
    (least + balanced + 2.0 * spread) as i64
}

/// Places `pending` pods one by one. Each placement is counted in `snapshot`, so later pods see
/// it. Returns the bindings and, for pods that fit nowhere, kubectl's explanation.
pub fn plan(snapshot: &mut Snapshot, pending: &[Arc<Pod>]) -> (Vec<Binding>, Vec<Unschedulable>) {
    let mut bindings = Vec::new();
    let mut failed = Vec::new();
    for pod in pending {
        let facts = PodFacts::of(pod);
        let mut best: Option<(i64, usize)> = None;
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for (i, node) in snapshot.nodes.iter().enumerate() {
            match filter(node, &facts) {
                Some(r) => *reasons.entry(r).or_default() += 1,
                None => {
                    let s = score(node, &facts);
                    // Ties go to the node with fewer pods, then by name: deterministic.
                    let better = match best {
                        None => true,
                        Some((bs, bi)) => {
                            s > bs
                                || (s == bs
                                    && (node.pods, &node.name) < (snapshot.nodes[bi].pods, &snapshot.nodes[bi].name))
                        }
                    };
                    if better {
                        best = Some((s, i));
                    }
                }
            }
        }
        let key = key_of(pod.as_ref());
        match best {
            Some((_, i)) => {
                snapshot.nodes[i].add_pod(pod);
                bindings.push(Binding { pod: key, node: snapshot.nodes[i].name.clone() });
            }
            None => {
                let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                let message = if detail.is_empty() {
                    format!("0/{} nodes are available.", snapshot.nodes.len())
                } else {
                    format!("0/{} nodes are available: {}.", snapshot.nodes.len(), detail.join(", "))
                };
                failed.push(Unschedulable { pod: key, message });
            }
        }
    }
    (bindings, failed)
}

/// Whether the scheduler should place this pod.
fn is_pending(pod: &Pod) -> bool {
    let meta = Object::meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    spec.node_name.is_empty()
        && meta.deletion_timestamp.is_empty()
        && (spec.scheduler_name.is_empty() || spec.scheduler_name == "default-scheduler")
}

fn is_terminal(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
    phase == "Succeeded" || phase == "Failed"
}

/// Binds in flight at once.
const BIND_CONCURRENCY: usize = 256;
/// Events waiting to be written. When it is full further events are dropped (as client-go's
/// event broadcaster drops them): an event is never worth slowing down binding.
const EVENT_QUEUE: usize = 4096;
/// Events written at once.
const EVENT_CONCURRENCY: usize = 16;

/// One event for the recorder task: the pod, whether it is a warning, reason, message.
type PodEvent = (Arc<Pod>, bool, &'static str, String);

/// Writes the events queued by the scheduler loop, a few at a time, until `stop`.
async fn record_events(recorder: Recorder, rx: tokio::sync::mpsc::Receiver<PodEvent>, stop: CancellationToken) {
    use futures::StreamExt;
    let write = tokio_stream::wrappers::ReceiverStream::new(rx).for_each_concurrent(
        EVENT_CONCURRENCY,
        |(pod, warning, reason, message)| {
            let recorder = recorder.clone();
            async move {
                if warning {
                    recorder.warning(pod.as_ref(), reason, &message).await
                } else {
                    recorder.normal(pod.as_ref(), reason, &message).await
                }
            }
        },
    );
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = write => {}
    }
}

/// Queues an event without waiting; drops it when the queue is full.
fn queue_event(events: &tokio::sync::mpsc::Sender<PodEvent>, event: PodEvent) {
    if let Err(tokio::sync::mpsc::error::TrySendError::Full((pod, _, reason, _))) = events.try_send(event) {
        tracing::debug!(pod = %key_of(pod.as_ref()), reason, "event queue full: event dropped");
    }
}

/// Runs the scheduler loop with `client` (fenced when leader-elected) until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let pods = Informer::<Pod>::builder().start(&client, stop.clone());
    let nodes = Informer::<Node>::builder().start(&client, stop.clone());
    let (events, events_rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    tokio::spawn(record_events(Recorder::new(&client, "default-scheduler"), events_rx, stop.clone()));
    pods.wait_synced().await;
    nodes.wait_synced().await;
    let mut pod_changes = pods.subscribe();
    let mut node_changes = nodes.subscribe();
    // Pods bound by this scheduler that the informer may not show bound yet.
    let mut assumed: HashMap<String, (String, Instant)> = HashMap::new();
    // Pods that fit nowhere: when to try again.
    let mut backoff: HashMap<String, (Duration, Instant)> = HashMap::new();
    let api = Api::<Pod>::all(&client);
    let sem = Arc::new(tokio::sync::Semaphore::new(BIND_CONCURRENCY));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, Result<(), String>)>();
    let mut in_flight: HashSet<String> = HashSet::new();
    loop {
        let now = Instant::now();
        assumed.retain(|k, (_, at)| {
            pods.cache().get(k).is_some_and(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_empty()))
                && now.duration_since(*at) < Duration::from_secs(30)
        });
        let all = pods.cache().list();
        let mut snapshot = Snapshot { nodes: nodes.cache().list().iter().map(|n| NodeInfo::from_node(n)).collect() };
        let index: HashMap<String, usize> =
            snapshot.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        let mut pending = Vec::new();
        for p in &all {
            let key = key_of(p.as_ref());
            let bound_to = p.spec.as_ref().map(|s| s.node_name.clone()).filter(|n| !n.is_empty());
            let node = bound_to.or_else(|| assumed.get(&key).map(|(n, _)| n.clone()));
            match node {
                Some(n) if !is_terminal(p) => {
                    if let Some(i) = index.get(&n) {
                        snapshot.nodes[*i].add_pod(p);
                    }
                }
                Some(_) => {}
                None if is_pending(p)
                    && !in_flight.contains(&key)
                    && backoff.get(&key).is_none_or(|(_, at)| *at <= now) =>
                {
                    pending.push(p.clone());
                }
                None => {}
            }
        }
        pending.sort_by(|a, b| {
            Object::meta(a.as_ref()).creation_timestamp.cmp(&Object::meta(b.as_ref()).creation_timestamp)
        });
        let (bindings, failed) = plan(&mut snapshot, &pending);
        for b in bindings {
            let Ok(permit) = sem.clone().acquire_owned().await else { return };
            in_flight.insert(b.pod.clone());
            assumed.insert(b.pod.clone(), (b.node.clone(), Instant::now()));
            let (api, done) = (api.clone(), done_tx.clone());
            let uid = pods.cache().get(&b.pod).map(|p| Object::meta(p.as_ref()).uid.clone()).unwrap_or_default();
            tokio::spawn(async move {
                let (ns, name) = crate::reconcile::split_key(&b.pod);
                let r = Api::<Pod>::namespaced(api.client(), ns).bind(name, &b.node, &uid).await;
                drop(permit);
                let _ = done.send((b.pod.clone(), b.node.clone(), r.map(|_| ()).map_err(|e| e.to_string())));
            });
        }
        for f in failed {
            let (delay, _) = backoff.get(&f.pod).copied().unwrap_or((Duration::from_millis(500), now));
            backoff.insert(f.pod.clone(), ((delay * 2).min(Duration::from_secs(10)), now + delay));
            if let Some(p) = pods.cache().get(&f.pod) {
                queue_event(&events, (p, true, "FailedScheduling", f.message));
            }
        }
        // Wait for something to change: a pod, a node, a bind finishing, or a backoff expiring.
        let next_retry = backoff.values().map(|(_, at)| *at).min();
        let sleep = next_retry.map(|at| at.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = stop.cancelled() => return,
            c = pod_changes.recv() => {
                if let Ok(Change::Deleted(p)) = &c {
                    backoff.remove(&key_of(p.as_ref()));
                }
            }
            _ = node_changes.recv() => {
                // New room may have appeared: try unschedulable pods again now.
                backoff.clear();
            }
            Some(first) = done_rx.recv() => {
                let mut done = Some(first);
                while let Some((pod, node, result)) = done.take().or_else(|| done_rx.try_recv().ok()) {
                    in_flight.remove(&pod);
                    match result {
                        Ok(()) => {
                            backoff.remove(&pod);
                            if let Some(p) = pods.cache().get(&pod) {
                                let message = format!("Successfully assigned {pod} to {node}");
                                queue_event(&events, (p, false, "Scheduled", message));
                            }
                        }
                        Err(e) => {
                            tracing::debug!(pod, node, error = %e, "bind failed");
                            assumed.remove(&pod);
                        }
                    }
                }
            }
            _ = tokio::time::sleep(sleep) => {}
        }
        // Take every change that queued up meanwhile in one go.
        while pod_changes.try_recv().is_ok() {}
        while node_changes.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            ready: true,
            cpu_millis: quantity::cpu_millis(cpu).expect("cpu"),
            memory: 16 << 30,
            max_pods: 110,
            ..Default::default()
        }
    }

    fn pod(name: &str, cpu: &str, owner: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default",
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": owner, "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}
            }))
            .expect("pod"),
        )
    }

    #[test]
    fn one_owners_pods_spread_over_nodes() {
        let mut snap = Snapshot { nodes: vec![node("a", "4"), node("b", "4"), node("c", "4")] };
        let pods: Vec<_> = (0..6).map(|i| pod(&format!("p{i}"), "100m", "rs1")).collect();
        let (b, f) = plan(&mut snap, &pods);
        assert!(f.is_empty());
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for x in &b {
            *per.entry(x.node.clone()).or_default() += 1;
        }
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{b:?}");
    }

    #[test]
    fn pods_that_fit_nowhere_get_kubectls_message() {
        let mut cordoned = node("b", "4");
        cordoned.unschedulable = true;
        let mut c2 = node("c", "4");
        c2.unschedulable = true;
        let mut snap = Snapshot { nodes: vec![node("a", "500m"), cordoned, c2] };
        let (b, f) = plan(&mut snap, &[pod("big", "1", "o")]);
        assert!(b.is_empty());
        assert_eq!(f[0].message, "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) were unschedulable.");
    }

    #[test]
    fn taints_need_tolerations_and_selectors_need_labels() {
        let mut tainted = node("t", "4");
        tainted.taints.push(Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        let mut snap = Snapshot { nodes: vec![tainted] };
        let (_, f) = plan(&mut snap, &[pod("p", "100m", "o")]);
        assert_eq!(f[0].message, "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: db}.");
        let mut p = (*pod("q", "100m", "o")).clone();
        p.spec.as_mut().expect("spec").tolerations.push(Toleration {
            key: "dedicated".into(),
            operator: "Equal".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
            toleration_seconds: None,
        });
        let (b, _) = plan(&mut snap, &[Arc::new(p)]);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn capacity_is_used_up_in_order() {
        let mut snap = Snapshot { nodes: vec![node("a", "1")] };
        let pods: Vec<_> = (0..3).map(|i| pod(&format!("p{i}"), "400m", "o")).collect();
        let (b, f) = plan(&mut snap, &pods);
        assert_eq!(b.len(), 2);
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("Insufficient cpu"));
    }
}
