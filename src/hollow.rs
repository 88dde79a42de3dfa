//! Hollow nodes (like kubemark): simulated kubelets for scale tests. Each registers a Node,
//! renews its Lease in kube-node-lease, reports the pods bound to it Running and Ready at once
//! (with an IP from its pod subnet), and removes pods being deleted. They share one process
//! and one watch.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::api::v1::*;
use crate::api::{self, Object};
use crate::client::{Api, Client, ClientError, DeleteParams};
use crate::reconcile::{key_of, Change, Informer};

#[derive(Debug, Clone)]
pub struct HollowConfig {
    pub count: usize,
    pub prefix: String,
    pub cpu: String,
    pub memory: String,
    pub lease_renew: Duration,
}

impl Default for HollowConfig {
    fn default() -> Self {
        HollowConfig {
            count: 3,
            prefix: "hollow".into(),
            cpu: "4".into(),
            memory: "16Gi".into(),
            lease_renew: Duration::from_secs(10),
        }
    }
}

pub fn node_name(cfg: &HollowConfig, i: usize) -> String {
    format!("{}-{i}", cfg.prefix)
}

fn node_object(cfg: &HollowConfig, name: &str) -> Node {
    let now = api::time::now();
    let mut n = Node {
        status: Some(NodeStatus {
            capacity: [("cpu", cfg.cpu.clone()), ("memory", cfg.memory.clone()), ("pods", "110".to_string())]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            allocatable: [("cpu", cfg.cpu.clone()), ("memory", cfg.memory.clone()), ("pods", "110".to_string())]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            conditions: vec![NodeCondition {
                r#type: "Ready".into(),
                status: "True".into(),
                last_heartbeat_time: now.clone(),
                last_transition_time: now,
                reason: "KubeletReady".into(),
                message: "hollow kubelet is posting ready status".into(),
            }],
            addresses: vec![NodeAddress { r#type: "InternalIP".into(), address: "127.0.0.1".into() }],
            node_info: Some(NodeSystemInfo {
                kubelet_version: format!("rkube-hollow/{}", env!("CARGO_PKG_VERSION")),
                container_runtime_version: "hollow://0".into(),
                operating_system: "linux".into(),
                architecture: std::env::consts::ARCH.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    n.meta_mut().name = name.to_string();
    n.meta_mut().labels.insert("kubernetes.io/hostname".into(), name.to_string());
    n.meta_mut().labels.insert("rkube.io/hollow".into(), "true".into());
    n
}

/// Registers the nodes (or takes over existing ones) and marks them Ready. While the masters
/// are unavailable (starting, electing a leader) it keeps trying, as a kubelet does; `false` if
/// `stop` came first.
async fn register(client: &Client, cfg: &HollowConfig, stop: &CancellationToken) -> Result<bool, ClientError> {
    let nodes = Api::<Node>::all(client);
    for i in 0..cfg.count {
        let name = node_name(cfg, i);
        let want = node_object(cfg, &name);
        let registered =
            crate::client::retry_while_unavailable(stop, "masters unavailable; registering again", || async {
                match nodes.create(&want).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_already_exists() => {
                        let mut cur = nodes.get(&name).await?;
                        cur.status = want.status.clone();
                        nodes.update_status(&cur).await.map(|_| ())
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        if registered.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn renew_leases(client: Client, cfg: HollowConfig, stop: CancellationToken) {
    let leases = Api::<Lease>::namespaced(&client, "kube-node-lease");
    loop {
        for i in 0..cfg.count {
            let name = node_name(&cfg, i);
            let now = api::time::now();
            let result = match leases.get_opt(&name).await {
                Ok(Some(mut l)) => {
                    let s = l.spec.get_or_insert_with(Default::default);
                    s.renew_time = now;
                    leases.update(&l).await.map(|_| ())
                }
                Ok(None) => {
                    let mut l = Lease {
                        spec: Some(LeaseSpec {
                            holder_identity: name.clone(),
                            lease_duration_seconds: Some(40),
                            renew_time: now,
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    l.meta_mut().name = name.clone();
                    l.meta_mut().namespace = "kube-node-lease".into();
                    leases.create(&l).await.map(|_| ())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::debug!(node = %name, error = %e, "renewing a hollow node's lease");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.lease_renew) => {}
        }
    }
}

/// The pod's status once a hollow kubelet "runs" it.
fn running_status(pod: &Pod, ip: &str) -> PodStatus {
    let now = api::time::now();
    let mut st = pod.status.clone().unwrap_or_default();
    st.phase = "Running".into();
    st.pod_ip = ip.into();
    st.host_ip = "127.0.0.1".into();
    st.start_time = now.clone();
    st.container_statuses = pod
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning { started_at: now.clone() }),
                        ..Default::default()
                    }),
                    ready: true,
                    image: c.image.clone(),
                    started: Some(true),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    for kind in ["Initialized", "Ready", "ContainersReady", "PodScheduled"] {
        match st.conditions.iter_mut().find(|c| c.r#type == kind) {
            Some(c) => c.status = "True".into(),
            None => st.conditions.push(PodCondition {
                r#type: kind.into(),
                status: "True".into(),
                last_transition_time: now.clone(),
                ..Default::default()
            }),
        }
    }
    st
}

/// Runs `cfg.count` hollow nodes until `stop`.
pub async fn run(client: Client, cfg: HollowConfig, stop: CancellationToken) -> Result<(), ClientError> {
    if !register(&client, &cfg, &stop).await? {
        return Ok(());
    }
    tokio::spawn(renew_leases(client.clone(), cfg.clone(), stop.clone()));
    let mine: HashSet<String> = (0..cfg.count).map(|i| node_name(&cfg, i)).collect();
    let pods = Informer::<Pod>::builder().start(&client, stop.clone());
    let nodes = Informer::<Node>::builder().start(&client, stop.clone());
    let mut changes = pods.subscribe();
    pods.wait_synced().await;
    nodes.wait_synced().await;
    // Next host number per node's subnet.
    let next_ip: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let sem = Arc::new(tokio::sync::Semaphore::new(128));
    let handled: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut backlog: Vec<Arc<Pod>> = pods.cache().list();
    loop {
        for p in backlog.drain(..) {
            let node = p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
            if !mine.contains(&node) {
                continue;
            }
            let key = key_of(p.as_ref());
            let deleting = !p.meta().deletion_timestamp.is_empty();
            let running = p.status.as_ref().is_some_and(|s| s.phase == "Running");
            if !deleting && running {
                continue;
            }
            let tag = format!("{key}/{}/{deleting}", p.meta().uid);
            if !handled.lock().insert(tag.clone()) {
                continue;
            }
            let ip = if deleting {
                String::new()
            } else {
                let subnet =
                    nodes.cache().get(&node).and_then(|n| n.spec.clone()).map(|s| s.pod_cidr).unwrap_or_default();
                let base = crate::api::validation::parse_cidr(&subnet)
                    .map(|(ip, _)| u32::from(ip))
                    .unwrap_or(u32::from(Ipv4Addr::new(10, 250, 0, 0)));
                let mut m = next_ip.lock();
                let n = m.entry(node.clone()).or_insert(1);
                *n = if *n >= 254 { 2 } else { *n + 1 };
                Ipv4Addr::from(base + *n).to_string()
            };
            let Ok(permit) = sem.clone().acquire_owned().await else { return Ok(()) };
            let (client, handled) = (client.clone(), handled.clone());
            tokio::spawn(async move {
                let api = Api::<Pod>::namespaced(&client, &p.meta().namespace);
                let result = if deleting {
                    api.delete(&p.meta().name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                        .await
                        .map(|_| ())
                } else {
                    let mut upd = (*p).clone();
                    upd.status = Some(running_status(&p, &ip));
                    api.update_status(&upd).await.map(|_| ())
                };
                drop(permit);
                if let Err(e) = result {
                    if !e.is_not_found() {
                        tracing::debug!(pod = %key_of(p.as_ref()), error = %e, "hollow kubelet update");
                        handled.lock().remove(&tag);
                    }
                }
            });
        }
        let change = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            c = changes.recv() => c,
        };
        match change {
            Ok(Change::Applied(p)) => backlog.push(p),
            Ok(Change::Deleted(_)) => {}
            Ok(Change::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                handled.lock().clear();
                backlog = pods.cache().list();
            }
            Err(_) => return Ok(()),
        }
        while let Ok(c) = changes.try_recv() {
            if let Change::Applied(p) = c {
                backlog.push(p);
            }
        }
    }
}
