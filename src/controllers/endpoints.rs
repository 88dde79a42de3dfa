//! The Endpoints controller: for each Service with a selector, an Endpoints object of the same
//! name listing the matching pods' IPs (ready ones as addresses, the others as
//! notReadyAddresses) and the service's target ports resolved against each pod.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{is_ready, ControllerConfig, Shared};
use crate::api::v1::*;
use crate::api::Object;
use crate::client::{Api, ClientError, DeleteParams};
use crate::reconcile::{feed, key_of, run_workers, split_key, Change, WorkQueue};

/// The container port a service's targetPort names on `pod` (numbers are themselves).
fn resolve_port(target: &str, pod: &Pod) -> Option<i32> {
    if let Ok(n) = target.parse::<i32>() {
        return Some(n);
    }
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .find(|p| p.name == target)
        .map(|p| p.container_port)
}

/// The Endpoints subsets for a service over the given pods (pure).
pub fn subsets(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    // Pods grouped by their resolved port list, as Kubernetes groups subsets.
    let mut groups: BTreeMap<Vec<(String, i32, String)>, EndpointSubset> = BTreeMap::new();
    for pod in pods {
        let ip = pod.status.as_ref().map(|s| s.pod_ip.clone()).unwrap_or_default();
        if ip.is_empty() || !pod.meta().deletion_timestamp.is_empty() {
            continue;
        }
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .iter()
            .filter_map(|p| resolve_port(&p.target_port, pod).map(|n| (p.name.clone(), n, p.protocol.clone())))
            .collect();
        if ports.is_empty() && !spec.ports.is_empty() {
            continue;
        }
        let subset = groups.entry(ports.clone()).or_insert_with(|| EndpointSubset {
            ports: ports
                .iter()
                .map(|(name, port, protocol)| EndpointPort {
                    name: name.clone(),
                    port: *port,
                    protocol: protocol.clone(),
                })
                .collect(),
            ..Default::default()
        });
        let address = EndpointAddress {
            ip,
            hostname: String::new(),
            node_name: pod.spec.as_ref().map(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            target_ref: Some(ObjectReference {
                kind: "Pod".into(),
                namespace: pod.meta().namespace.clone(),
                name: pod.meta().name.clone(),
                uid: pod.meta().uid.clone(),
                ..Default::default()
            }),
        };
        if is_ready(pod) {
            subset.addresses.push(address);
        } else {
            subset.not_ready_addresses.push(address);
        }
    }
    let mut out: Vec<EndpointSubset> = groups.into_values().collect();
    for s in &mut out {
        s.addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
        s.not_ready_addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
    }
    out
}

async fn reconcile(shared: Shared, key: String) -> Result<Option<Duration>, ClientError> {
    let (ns, name) = split_key(&key);
    let eps = Api::<Endpoints>::namespaced(&shared.client, ns);
    let Some(svc) = shared.services.cache().get(&key) else {
        match eps.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        return Ok(None);
    };
    let selector = svc.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
    if selector.is_empty() {
        return Ok(None); // endpoints of a selector-less service are the user's
    }
    let pods = shared.pods.cache().in_namespace(ns);
    let matching: Vec<&Pod> = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| selector.iter().all(|(k, v)| p.meta().labels.get(k) == Some(v)))
        .collect();
    let subsets = subsets(&svc, &matching);
    match eps.get_opt(name).await? {
        Some(cur) if cur.subsets == subsets => Ok(None),
        Some(mut cur) => {
            cur.subsets = subsets;
            match eps.update(&cur).await {
                Ok(_) => Ok(None),
                Err(e) if e.is_conflict() => Ok(Some(Duration::from_millis(20))),
                Err(e) => Err(e),
            }
        }
        None => {
            let mut e = Endpoints { subsets, ..Default::default() };
            e.meta_mut().name = name.to_string();
            e.meta_mut().namespace = ns.to_string();
            e.meta_mut().labels = svc.meta().labels.clone();
            match eps.create(&e).await {
                Ok(_) => Ok(None),
                Err(e) if e.is_already_exists() => Ok(Some(Duration::from_millis(20))),
                Err(e) => Err(e),
            }
        }
    }
}

pub async fn run(shared: Shared, cfg: ControllerConfig, stop: CancellationToken) {
    let queue = WorkQueue::new();
    let all = {
        let s = shared.services.clone();
        move || s.cache().list().iter().map(|o| key_of(o.as_ref())).collect::<Vec<_>>()
    };
    feed(
        &shared.services,
        &queue,
        stop.clone(),
        |c| match c {
            Change::Applied(o) | Change::Deleted(o) => vec![key_of(o.as_ref())],
            Change::Resync => vec![],
        },
        all.clone(),
    );
    let services = shared.services.clone();
    feed(
        &shared.pods,
        &queue,
        stop.clone(),
        move |c| match c {
            Change::Applied(p) | Change::Deleted(p) => services
                .cache()
                .in_namespace(&p.meta().namespace)
                .iter()
                .filter(|s| {
                    let sel = s.spec.as_ref().map(|x| x.selector.clone()).unwrap_or_default();
                    !sel.is_empty() && sel.iter().all(|(k, v)| p.meta().labels.get(k) == Some(v))
                })
                .map(|s| key_of(s.as_ref()))
                .collect(),
            Change::Resync => vec![],
        },
        all,
    );
    run_workers(queue, cfg.workers, stop, move |key| reconcile(shared.clone(), key)).await;
}
