//! The ReplicaSet controller: creates and deletes pods so that each ReplicaSet has as many
//! active pods as it asks for. It adopts orphans its selector matches and releases pods that no
//! longer match; when it deletes, it picks unscheduled, then not-ready, then the newest pods;
//! failed pods are replaced.
//!
//! The informer shows a pod a moment after it was created, so the controller remembers what it
//! created and deleted (expectations) and does not act on a ReplicaSet again until the cache
//! has caught up: otherwise it would create the same pods twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::{controller_ref, is_active, is_ready, ControllerConfig, Shared};
use crate::api::selector::Selector;
use crate::api::v1::*;
use crate::api::Object;
use crate::client::{Api, ClientError, DeleteParams};
use crate::reconcile::{feed, key_of, run_workers, split_key, Change, WorkQueue};

/// Creates (and deletes) issued at once per ReplicaSet per round.
const BURST: usize = 500;
/// After this long, expectations that were never seen are dropped (the watch may have missed
/// nothing: the write may have failed).
const EXPECTATION_TTL: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Expectation {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    at: Option<Instant>,
}

#[derive(Clone, Default)]
pub struct Expectations(Arc<Mutex<HashMap<String, Expectation>>>);

impl Expectations {
    /// Whether the cache reflects every create and delete done for `key`.
    fn satisfied(&self, key: &str, pods: &[Arc<Pod>]) -> bool {
        let mut all = self.0.lock();
        let Some(e) = all.get_mut(key) else { return true };
        let present: HashSet<&str> = pods.iter().map(|p| p.meta().name.as_str()).collect();
        e.creates.retain(|n| !present.contains(n.as_str()));
        e.deletes.retain(|n| pods.iter().any(|p| p.meta().name == *n && p.meta().deletion_timestamp.is_empty()));
        let done =
            (e.creates.is_empty() && e.deletes.is_empty()) || e.at.is_some_and(|t| t.elapsed() > EXPECTATION_TTL);
        if done {
            all.remove(key);
        }
        done
    }

    fn expect(&self, key: &str, creates: Vec<String>, deletes: Vec<String>) {
        let mut all = self.0.lock();
        let e = all.entry(key.to_string()).or_default();
        e.creates.extend(creates);
        e.deletes.extend(deletes);
        e.at = Some(Instant::now());
    }
}

/// The pods a controller with `uid` and `selector` owns, adopting and releasing as needed.
pub async fn claim_pods(
    shared: &Shared,
    owner_ns: &str,
    owner_ref: &OwnerReference,
    selector: &Selector,
) -> Result<Vec<Arc<Pod>>, ClientError> {
    let pods = Api::<Pod>::namespaced(&shared.client, owner_ns);
    let mut owned = Vec::new();
    for p in shared.pods.cache().in_namespace(owner_ns) {
        let matches = selector.matches_labels(&p.meta().labels);
        match crate::api::controller_of(p.meta()) {
            Some(c) if c.uid == owner_ref.uid => {
                if matches {
                    owned.push(p);
                } else if p.meta().deletion_timestamp.is_empty() {
                    // Release: the pod no longer matches.
                    let refs: Vec<_> =
                        p.meta().owner_references.iter().filter(|r| r.uid != owner_ref.uid).cloned().collect();
                    let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": p.meta().resource_version}});
                    let _ = pods.patch(&p.meta().name, &patch, false).await;
                }
            }
            None if matches && p.meta().deletion_timestamp.is_empty() && !selector.is_empty() => {
                let mut refs = p.meta().owner_references.clone();
                refs.push(owner_ref.clone());
                let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": p.meta().resource_version}});
                if let Ok(adopted) = pods.patch(&p.meta().name, &patch, false).await {
                    owned.push(Arc::new(adopted));
                }
            }
            _ => {}
        }
    }
    Ok(owned)
}

/// Deletion order: unscheduled, pending, not ready, then newer first.
fn deletion_rank(p: &Pod) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty());
    let running = p.status.as_ref().is_some_and(|s| s.phase == "Running");
    (scheduled as u8, running as u8, is_ready(p) as u8, std::cmp::Reverse(p.meta().creation_timestamp.clone()))
}

pub fn new_pod(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let mut pod = Pod { spec: template.spec, ..Default::default() };
    let meta = pod.meta_mut();
    let tm = template.metadata.unwrap_or_default();
    meta.labels = tm.labels;
    meta.annotations = tm.annotations;
    meta.namespace = rs.meta().namespace.clone();
    meta.generate_name = format!("{}-", rs.meta().name);
    meta.owner_references = vec![controller_ref(rs)];
    pod
}

async fn reconcile(shared: Shared, exp: Expectations, key: String) -> Result<Option<Duration>, ClientError> {
    let Some(rs) = shared.replicasets.cache().get(&key) else { return Ok(None) };
    if !rs.meta().deletion_timestamp.is_empty() {
        return Ok(None);
    }
    let (ns, _) = split_key(&key);
    let spec = rs.spec.clone().unwrap_or_default();
    let selector = Selector::from_label_selector(&spec.selector.clone().unwrap_or_default())
        .map_err(|e| ClientError::Local(e.to_string()))?;
    let pods = claim_pods(&shared, ns, &controller_ref(rs.as_ref()), &selector).await?;
    let api = Api::<Pod>::namespaced(&shared.client, ns);
    if !exp.satisfied(&key, &pods) {
        return Ok(Some(Duration::from_millis(200)));
    }
    // Failed pods are gone for good: delete them so they are replaced.
    for p in pods
        .iter()
        .filter(|p| p.status.as_ref().is_some_and(|s| s.phase == "Failed") && p.meta().deletion_timestamp.is_empty())
    {
        let _ = api.delete(&p.meta().name, &DeleteParams::default()).await;
    }
    let mut active: Vec<Arc<Pod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let mut requeue = None;
    if active.len() < want {
        let n = (want - active.len()).min(BURST);
        let template = new_pod(&rs);
        let creates = (0..n).map(|_| {
            let (api, t) = (api.clone(), template.clone());
            async move { api.create(&t).await }
        });
        let results = futures::future::join_all(creates).await;
        let mut made = Vec::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => made.push(p.meta().name.clone()),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if !made.is_empty() {
            shared
                .recorder
                .normal(rs.as_ref(), "SuccessfulCreate", &format!("Created {} pod(s): {}", made.len(), preview(&made)))
                .await;
        }
        exp.expect(&key, made, Vec::new());
        if let Some(e) = first_err {
            shared.recorder.warning(rs.as_ref(), "FailedCreate", &format!("Error creating: {}", e.message())).await;
            return Err(e);
        }
        if want - active.len() > n {
            requeue = Some(Duration::from_millis(10));
        }
    } else if active.len() > want {
        active.sort_by_key(|p| deletion_rank(p));
        let victims: Vec<Arc<Pod>> = active.iter().take(active.len() - want).cloned().collect();
        let deletes = victims.iter().map(|p| {
            let (api, name) = (api.clone(), p.meta().name.clone());
            async move { (name.clone(), api.delete(&name, &DeleteParams::default()).await) }
        });
        let results = futures::future::join_all(deletes).await;
        let gone: Vec<String> = results
            .iter()
            .filter(|(_, r)| r.is_ok() || r.as_ref().is_err_and(|e| e.is_not_found()))
            .map(|(n, _)| n.clone())
            .collect();
        if !gone.is_empty() {
            shared
                .recorder
                .normal(rs.as_ref(), "SuccessfulDelete", &format!("Deleted {} pod(s): {}", gone.len(), preview(&gone)))
                .await;
        }
        exp.expect(&key, Vec::new(), gone);
    }
    // Status, from what the cache shows.
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_active(p)).collect();
    let labelled = active.iter().filter(|p| {
        let tl = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).map(|m| m.labels.clone()).unwrap_or_default();
        tl.iter().all(|(k, v)| p.meta().labels.get(k) == Some(v))
    });
    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: labelled.count() as i32,
        ready_replicas: ready,
        available_replicas: ready,
        observed_generation: rs.meta().generation,
        conditions: rs.status.clone().unwrap_or_default().conditions,
    };
    if rs.status.as_ref() != Some(&status) {
        let mut updated = (*rs).clone();
        updated.status = Some(status);
        match Api::<ReplicaSet>::namespaced(&shared.client, ns).update_status(&updated).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() || e.is_not_found() => return Ok(Some(Duration::from_millis(50))),
            Err(e) => return Err(e),
        }
    }
    Ok(requeue)
}

fn preview(names: &[String]) -> String {
    if names.len() <= 3 {
        names.join(", ")
    } else {
        format!("{}, ... and {} more", names[..3].join(", "), names.len() - 3)
    }
}

pub async fn run(shared: Shared, cfg: ControllerConfig, stop: CancellationToken) {
    let queue = WorkQueue::new();
    let rss = shared.replicasets.clone();
    feed(
        &shared.replicasets,
        &queue,
        stop.clone(),
        |c| match c {
            Change::Applied(o) | Change::Deleted(o) => vec![key_of(o.as_ref())],
            Change::Resync => vec![],
        },
        {
            let rss = rss.clone();
            move || rss.cache().list().iter().map(|o| key_of(o.as_ref())).collect()
        },
    );
    let by_uid = shared.replicasets.clone();
    feed(
        &shared.pods,
        &queue,
        stop.clone(),
        move |c| match c {
            Change::Applied(p) | Change::Deleted(p) => owners_of(&by_uid, p),
            Change::Resync => vec![],
        },
        move || rss.cache().list().iter().map(|o| key_of(o.as_ref())).collect(),
    );
    // Orphans matching a selector are found when their ReplicaSet is reconciled; a pod change
    // wakes the ReplicaSets in its namespace only when it has no owner.
    let exp = Expectations::default();
    run_workers(queue, cfg.workers, stop, move |key| reconcile(shared.clone(), exp.clone(), key)).await;
}

/// The ReplicaSets a pod change concerns: its controller, or, for an orphan, every ReplicaSet
/// in its namespace (one may adopt it).
fn owners_of(rss: &crate::reconcile::Informer<ReplicaSet>, p: &Pod) -> Vec<String> {
    match crate::api::controller_of(p.meta()) {
        Some(c) if c.kind == "ReplicaSet" => {
            rss.cache().by_index(super::BY_UID, &c.uid).iter().map(|o| key_of(o.as_ref())).collect()
        }
        Some(_) => vec![],
        None => rss.cache().in_namespace(&p.meta().namespace).iter().map(|o| key_of(o.as_ref())).collect(),
    }
}
