//! The garbage collector: dependents (pods of a ReplicaSet, ReplicaSets of a Deployment) follow
//! their owners. Background: an owner that is gone takes its dependents with it. Foreground:
//! an owner marked `foregroundDeletion` waits until its dependents are gone. Orphan: an owner
//! marked `orphan` lets go of its dependents (their ownerReferences to it are removed).
//!
//! An owner missing from the cache may just be too new for it: before deleting a dependent the
//! collector asks the API whether the owner really is gone.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Shared, BY_OWNER};
use crate::api::v1::*;
use crate::api::Object;
use crate::apiserver::{FOREGROUND, ORPHAN};
use crate::client::{Api, ClientError, DeleteParams, Remote};
use crate::reconcile::{feed, key_of, run_workers, Change, WorkQueue};

/// Keys in the GC queue: `<Kind>/<namespace>/<name>`.
fn gc_key<K: Object>(o: &K) -> String {
    format!("{}/{}", K::KIND, key_of(o))
}

/// Whether the owner `r` of an object in `ns` still exists with that uid (asked of the API).
async fn owner_exists(shared: &Shared, ns: &str, r: &OwnerReference) -> Result<bool, ClientError> {
    async fn check<K: Remote>(shared: &Shared, ns: &str, r: &OwnerReference) -> Result<bool, ClientError> {
        Ok(Api::<K>::namespaced(&shared.client, ns).get_opt(&r.name).await?.is_some_and(|o| o.meta().uid == r.uid))
    }
    // Seen in the cache: it exists (the cache can lag, but never invents objects).
    let cached = match r.kind.as_str() {
        "ReplicaSet" => !shared.replicasets.cache().by_index(super::BY_UID, &r.uid).is_empty(),
        "Deployment" => !shared.deployments.cache().by_index(super::BY_UID, &r.uid).is_empty(),
        _ => false,
    };
    if cached {
        return Ok(true);
    }
    match r.kind.as_str() {
        "ReplicaSet" => check::<ReplicaSet>(shared, ns, r).await,
        "Deployment" => check::<Deployment>(shared, ns, r).await,
        "Pod" => check::<Pod>(shared, ns, r).await,
        "Service" => check::<Service>(shared, ns, r).await,
        "Node" => check::<Node>(shared, "", r).await,
        "Namespace" => check::<Namespace>(shared, "", r).await,
        // An owner of a kind rkube does not serve is left alone.
        _ => Ok(true),
    }
}

/// Background deletion: a dependent whose owners are all gone is deleted.
async fn collect_orphans<K: Remote>(shared: &Shared, obj: &K) -> Result<(), ClientError> {
    let m = obj.meta();
    if m.owner_references.is_empty() || !m.deletion_timestamp.is_empty() {
        return Ok(());
    }
    for r in &m.owner_references {
        if owner_exists(shared, &m.namespace, r).await? {
            return Ok(());
        }
    }
    match Api::<K>::namespaced(&shared.client, &m.namespace)
        .delete(&m.name, &DeleteParams { precondition_uid: m.uid.clone(), ..Default::default() })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Foreground and orphan deletion of an owner being deleted.
async fn finish_owner<K: Remote>(shared: &Shared, owner: &K) -> Result<Option<Duration>, ClientError> {
    let m = owner.meta();
    if m.deletion_timestamp.is_empty() {
        return Ok(None);
    }
    let foreground = m.finalizers.iter().any(|f| f == FOREGROUND);
    let orphan = m.finalizers.iter().any(|f| f == ORPHAN);
    if !foreground && !orphan {
        return Ok(None);
    }
    let pods = shared.pods.cache().by_index(BY_OWNER, &m.uid);
    let rss = shared.replicasets.cache().by_index(BY_OWNER, &m.uid);
    if orphan {
        for p in &pods {
            release(&Api::<Pod>::namespaced(&shared.client, &p.meta().namespace), p.as_ref(), &m.uid).await?;
        }
        for rs in &rss {
            release(&Api::<ReplicaSet>::namespaced(&shared.client, &rs.meta().namespace), rs.as_ref(), &m.uid).await?;
        }
        return remove_finalizer(shared, owner, ORPHAN).await;
    }
    // Foreground: dependents go first (foreground themselves, so grandchildren go before them).
    if pods.is_empty() && rss.is_empty() {
        return remove_finalizer(shared, owner, FOREGROUND).await;
    }
    let fg = DeleteParams { propagation_policy: "Foreground".into(), ..Default::default() };
    for p in pods.iter().filter(|p| p.meta().deletion_timestamp.is_empty()) {
        let _ = Api::<Pod>::namespaced(&shared.client, &p.meta().namespace)
            .delete(&p.meta().name, &DeleteParams::default())
            .await;
    }
    for rs in rss.iter().filter(|r| r.meta().deletion_timestamp.is_empty()) {
        let _ = Api::<ReplicaSet>::namespaced(&shared.client, &rs.meta().namespace).delete(&rs.meta().name, &fg).await;
    }
    Ok(Some(Duration::from_millis(500)))
}

async fn release<K: Remote>(api: &Api<K>, obj: &K, owner_uid: &str) -> Result<(), ClientError> {
    let refs: Vec<_> = obj.meta().owner_references.iter().filter(|r| r.uid != owner_uid).cloned().collect();
    let patch = serde_json::json!({"metadata": {"ownerReferences": refs}});
    match api.patch(&obj.meta().name, &patch, false).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

async fn remove_finalizer<K: Remote>(
    shared: &Shared,
    owner: &K,
    finalizer: &str,
) -> Result<Option<Duration>, ClientError> {
    let m = owner.meta();
    let rest: Vec<&String> = m.finalizers.iter().filter(|f| *f != finalizer).collect();
    let patch = serde_json::json!({"metadata": {"finalizers": rest, "resourceVersion": m.resource_version}});
    match Api::<K>::namespaced(&shared.client, &m.namespace).patch(&m.name, &patch, false).await {
        Ok(_) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) if e.is_conflict() => Ok(Some(Duration::from_millis(50))),
        Err(e) => Err(e),
    }
}

async fn reconcile(shared: Shared, key: String) -> Result<Option<Duration>, ClientError> {
    let (kind, rest) = key.split_once('/').unwrap_or(("", ""));
    match kind {
        "Pod" => {
            if let Some(p) = shared.pods.cache().get(rest) {
                collect_orphans(&shared, p.as_ref()).await?;
            }
            Ok(None)
        }
        "ReplicaSet" => {
            let Some(rs) = shared.replicasets.cache().get(rest) else {
                return Ok(None);
            };
            collect_orphans(&shared, rs.as_ref()).await?;
            finish_owner(&shared, rs.as_ref()).await
        }
        "Deployment" => match shared.deployments.cache().get(rest) {
            Some(d) => finish_owner(&shared, d.as_ref()).await,
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

pub async fn run(shared: Shared, stop: CancellationToken) {
    let queue = WorkQueue::new();
    // An owner's change (deleted, or marked for foreground/orphan deletion) concerns its
    // dependents and itself; a dependent's change concerns itself.
    let s = shared.clone();
    feed(
        &shared.pods,
        &queue,
        stop.clone(),
        |c| match c {
            Change::Applied(p) => vec![gc_key(p.as_ref())],
            _ => vec![],
        },
        {
            let s = s.clone();
            move || {
                s.pods
                    .cache()
                    .list()
                    .iter()
                    .filter(|p| !p.meta().owner_references.is_empty())
                    .map(|p| gc_key(p.as_ref()))
                    .collect()
            }
        },
    );
    let s2 = s.clone();
    feed(
        &shared.replicasets,
        &queue,
        stop.clone(),
        move |c| match c {
            Change::Applied(rs) => vec![gc_key(rs.as_ref())],
            Change::Deleted(rs) => {
                s2.pods.cache().by_index(BY_OWNER, &rs.meta().uid).iter().map(|p| gc_key(p.as_ref())).collect()
            }
            Change::Resync => vec![],
        },
        {
            let s = s.clone();
            move || s.replicasets.cache().list().iter().map(|r| gc_key(r.as_ref())).collect()
        },
    );
    let s3 = s.clone();
    feed(
        &shared.deployments,
        &queue,
        stop.clone(),
        move |c| match c {
            Change::Applied(d) => vec![gc_key(d.as_ref())],
            Change::Deleted(d) => {
                s3.replicasets.cache().by_index(BY_OWNER, &d.meta().uid).iter().map(|r| gc_key(r.as_ref())).collect()
            }
            Change::Resync => vec![],
        },
        {
            let s = s.clone();
            move || s.deployments.cache().list().iter().map(|d| gc_key(d.as_ref())).collect()
        },
    );
    run_workers(queue, 4, stop, move |key| reconcile(shared.clone(), key)).await;
}
