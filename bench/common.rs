//! What the pod benchmarks (`bench-pods`, `bench-scheduler`) share: one pod watch that resumes
//! where it broke off, and the benchmark namespace. Pulled into each with `#[path]`.

use std::time::Duration;

use anyhow::{bail, Context};
use rkube::api::v1::{Namespace, Pod};
use rkube::api::Object;
use rkube::client::{Api, Client, ListParams, WatchEvent};
use tokio::time::Instant;

/// Watches pods from `rv` until the task is dropped, resuming from the last event's
/// resourceVersion when the stream breaks. Calls `observe(at, pod, deleted)` for every event (at
/// = time since `start`), then `changed()`. Fails only if the watch expires: events were lost.
pub fn spawn_pod_watch(
    api: Api<Pod>,
    params: ListParams,
    mut rv: String,
    start: Instant,
    mut observe: impl FnMut(Duration, &Pod, bool) + Send + 'static,
    changed: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        loop {
            let mut stream = match api.watch(&params, &rv).await {
                Ok(s) => s,
                Err(e) if e.is_expired() => bail!("the pod watch expired at resourceVersion {rv}"),
                Err(e) => {
                    eprintln!("watch: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while let Some(ev) = stream.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) if e.is_expired() => bail!("the pod watch expired at resourceVersion {rv}"),
                    Err(e) => {
                        eprintln!("watch broke: {e}; resuming");
                        break;
                    }
                };
                let at = start.elapsed();
                rv = ev.resource_version().to_string();
                match &ev {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => observe(at, p, false),
                    WatchEvent::Deleted(p) => observe(at, p, true),
                    WatchEvent::Bookmark(_) => continue,
                }
                changed();
            }
        }
    })
}

/// Creates namespace `ns` unless it exists.
pub async fn ensure_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let mut obj = Namespace::default();
    obj.meta_mut().name = ns.to_string();
    match Api::<Namespace>::all(client).create(&obj).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => Ok(()),
        Err(e) => Err(e).context("creating the namespace"),
    }
}
