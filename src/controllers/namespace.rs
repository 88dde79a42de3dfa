//! The Namespace controller: a namespace being deleted is emptied (every namespaced object in
//! it deleted), then its `kubernetes` finalizer is removed and the API server removes it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::api::v1::*;
use crate::api::Object;
use crate::client::{Api, ClientError, DeleteParams, ListParams, Remote};
use crate::reconcile::{feed, key_of, run_workers, Change, WorkQueue};

/// Deletes every object of kind `K` in `ns`; returns how many remain.
async fn empty<K: Remote>(shared: &Shared, ns: &str) -> Result<usize, ClientError> {
    let api = Api::<K>::namespaced(&shared.client, ns);
    let (items, _) = api.list(&ListParams::default()).await?;
    for o in items.iter().filter(|o| o.meta().deletion_timestamp.is_empty()) {
        match api.delete(&o.meta().name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(items.len())
}

async fn reconcile(shared: Shared, key: String) -> Result<Option<Duration>, ClientError> {
    let Some(ns) = shared.namespaces.cache().get(&key) else { return Ok(None) };
    if ns.meta().deletion_timestamp.is_empty() {
        return Ok(None);
    }
    let name = ns.meta().name.clone();
    let mut remaining = 0;
    remaining += empty::<Deployment>(&shared, &name).await?;
    remaining += empty::<ReplicaSet>(&shared, &name).await?;
    remaining += empty::<Pod>(&shared, &name).await?;
    remaining += empty::<Service>(&shared, &name).await?;
    remaining += empty::<Endpoints>(&shared, &name).await?;
    remaining += empty::<ConfigMap>(&shared, &name).await?;
    remaining += empty::<Lease>(&shared, &name).await?;
    remaining += empty::<Event>(&shared, &name).await?;
    if remaining > 0 {
        return Ok(Some(Duration::from_millis(500)));
    }
    let mut done = (*ns).clone();
    done.spec.get_or_insert_with(Default::default).finalizers.retain(|f| f != "kubernetes");
    match Api::<Namespace>::all(&shared.client).update(&done).await {
        Ok(_) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) if e.is_conflict() => Ok(Some(Duration::from_millis(50))),
        Err(e) => Err(e),
    }
}

pub async fn run(shared: Shared, stop: CancellationToken) {
    let queue = WorkQueue::new();
    let nss = shared.namespaces.clone();
    feed(
        &shared.namespaces,
        &queue,
        stop.clone(),
        |c| match c {
            Change::Applied(o) => vec![key_of(o.as_ref())],
            _ => vec![],
        },
        move || nss.cache().list().iter().map(|o| key_of(o.as_ref())).collect(),
    );
    run_workers(queue, 2, stop, move |key| reconcile(shared.clone(), key)).await;
}
