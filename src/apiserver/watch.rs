//! Watch: the store's revision log turned into ADDED / MODIFIED / DELETED events of one kind.
//!
//! A watcher reads the log from the revision after its resourceVersion, in order, on whichever
//! master it is connected to, so it never misses or repeats an event and can resume from any
//! resourceVersion still in history; older ones fail with Expired (Kubernetes' 410 Gone) and the
//! client re-lists. With a selector, an object that stops matching is sent as DELETED and one
//! that starts matching as ADDED, as Kubernetes does.

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;

use super::{decode, matches, ApiError, ApiServer, Kind, ListOptions};
use crate::api::{self, Object};
use crate::pb::mvccpb::event::EventType;
use crate::store::ApplyError;

/// Events read from the store per step (whole revisions, so a step may hold a few more).
const EVENTS_PER_STEP: usize = 256;
/// Events queued for one watcher before it waits for its client.
pub const WATCH_QUEUE: usize = 256;

pub type Sender<K> = mpsc::Sender<Result<<K as Object>::WatchEvent, Status>>;

impl ApiServer {
    /// Runs one watch until the client goes away or the watch expires.
    pub async fn watch<K: Kind>(self: Arc<Self>, opts: ListOptions, bookmarks: bool, tx: Sender<K>) {
        if let Err(e) = self.run_watch::<K>(&opts, bookmarks, &tx).await {
            let _ = tx.send(Err(e.into())).await;
        }
    }

    async fn run_watch<K: Kind>(&self, opts: &ListOptions, bookmarks: bool, tx: &Sender<K>) -> Result<(), ApiError> {
        super::check_fields::<K>(&opts.fields)?;
        let ns = super::list_scope::<K>(&opts.namespace);
        let prefix = api::prefix_of(K::RESOURCE, &ns);
        let mut from = if opts.resource_version.is_empty() || opts.resource_version == "0" {
            // Start with the current state as ADDED events, then follow from there.
            let list_opts = ListOptions { limit: 0, continue_token: String::new(), ..opts.clone() };
            let (items, meta) = self.list::<K>(&list_opts).await?;
            for obj in items {
                if tx.send(Ok(K::make_event("ADDED", obj))).await.is_err() {
                    return Ok(());
                }
            }
            super::parse_rv(&meta.resource_version)? + 1
        } else {
            super::parse_rv(&opts.resource_version)? + 1
        };
        let mut applied = self.store.subscribe();
        let mut last_bookmark = tokio::time::Instant::now();
        let prefix: Arc<[u8]> = prefix.into();
        loop {
            let wanted = prefix.clone();
            let keep =
                move |ev: &crate::pb::mvccpb::Event| ev.kv.as_ref().is_some_and(|kv| kv.key.starts_with(&wanted));
            let batch = match self.store.watch_events(from, EVENTS_PER_STEP, keep).await {
                Ok(x) => x,
                Err(ApplyError::Compacted) => {
                    return Err(ApiError::Expired(format!(
                        "too old resource version: {} ({})",
                        from - 1,
                        self.store.revisions().compacted
                    )))
                }
                Err(e) => return Err(ApiError::from_apply(e)),
            };
            for ev in &batch.events {
                if let Some(out) = self.translate::<K>(ev, opts)? {
                    if tx.send(Ok(out)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            from = batch.next;
            if from <= batch.revs.current {
                // The batch filled up before the end of what was applied: read on at once.
                continue;
            }
            if bookmarks && last_bookmark.elapsed() >= self.cfg.bookmark_interval {
                let mut obj = K::default();
                obj.meta_mut().resource_version = (from - 1).to_string();
                if tx.send(Ok(K::make_event("BOOKMARK", obj))).await.is_err() {
                    return Ok(());
                }
                last_bookmark = tokio::time::Instant::now();
            }
            let wait = self.cfg.bookmark_interval;
            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(ApiError::Unavailable("the store is shutting down".into()));
                    }
                }
                _ = tx.closed() => return Ok(()),
                _ = self.stopping.cancelled() => {
                    return Err(ApiError::Unavailable("the server is shutting down".into()));
                }
                _ = tokio::time::sleep(wait), if bookmarks => {}
            }
        }
    }

    fn translate<K: Kind>(
        &self,
        ev: &crate::pb::mvccpb::Event,
        opts: &ListOptions,
    ) -> Result<Option<K::WatchEvent>, ApiError> {
        let kv = ev.kv.as_ref().expect("checked by the caller");
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        let is_delete = ev.r#type == EventType::Delete as i32;
        let prev = if is_delete || (filtered && kv.create_revision != kv.mod_revision) {
            self.store.prev_kv(&kv.key, kv.mod_revision).map_err(ApiError::from_apply)?
        } else {
            None
        };
        let prev_obj = prev.as_ref().map(decode::<K>).transpose()?;
        let prev_match = prev_obj.as_ref().is_some_and(|o| matches(o, &opts.labels, &opts.fields));
        if is_delete {
            let Some(mut obj) = prev_obj else { return Ok(None) };
            if filtered && !prev_match {
                return Ok(None);
            }
            obj.meta_mut().resource_version = kv.mod_revision.to_string();
            return Ok(Some(K::make_event("DELETED", obj)));
        }
        let obj = decode::<K>(kv)?;
        let created = kv.create_revision == kv.mod_revision;
        if !filtered {
            return Ok(Some(K::make_event(if created { "ADDED" } else { "MODIFIED" }, obj)));
        }
        let now_match = matches(&obj, &opts.labels, &opts.fields);
        Ok(match (prev_match && !created, now_match) {
            (true, true) => Some(K::make_event("MODIFIED", obj)),
            (false, true) => Some(K::make_event("ADDED", obj)),
            (true, false) => {
                let mut gone = prev_obj.expect("matched, so present");
                gone.meta_mut().resource_version = kv.mod_revision.to_string();
                Some(K::make_event("DELETED", gone))
            }
            (false, false) => None,
        })
    }
}
