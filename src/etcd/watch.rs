//! etcd's Watch service: one bidirectional stream carries many watchers.
//!
//! Each watcher reads events from the store's revision log from its next revision on, so it
//! is never out of step with history: no gaps, no duplicates, in revision order, from any
//! revision still in history, on any member. When it has caught up it sleeps until the
//! applied revision moves.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::pb::etcdserverpb as epb;
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::mvccpb::event::EventType;
use crate::store::ApplyError;

/// Events read from the store per batch sent to a watcher (whole revisions, so a few more at times).
const EVENTS_PER_BATCH: usize = 256;
/// Responses queued for one stream before watchers wait for the client.
const STREAM_QUEUE: usize = 128;

pub struct WatchService {
    api: Arc<Api>,
    progress_interval: Duration,
    stopping: CancellationToken,
}

impl WatchService {
    /// `stopping` ends every stream with etcd's "server stopped" (Unavailable), so that clients
    /// move their watches to another member at once instead of holding this one's shutdown up.
    pub fn new(api: Arc<Api>, progress_interval: Duration, stopping: CancellationToken) -> Self {
        WatchService { api, progress_interval, stopping }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<epb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<epb::WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let api = self.api.clone();
        let progress = self.progress_interval;
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut watchers: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
            let mut next_id = 0i64;
            loop {
                let msg = tokio::select! {
                    msg = incoming.next() => msg,
                    _ = stopping.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("etcdserver: server stopped"))).await;
                        break;
                    }
                };
                let Some(Ok(msg)) = msg else { break };
                match msg.request_union {
                    Some(RequestUnion::CreateRequest(create)) => {
                        watchers.retain(|_, h| !h.is_finished());
                        let id = if create.watch_id > 0 {
                            create.watch_id
                        } else {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        if watchers.contains_key(&id) {
                            let resp = epb::WatchResponse {
                                header: api.header(api.store.revisions().current),
                                watch_id: id,
                                created: true,
                                canceled: true,
                                cancel_reason: "etcdserver: duplicate watch ID".into(),
                                ..Default::default()
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        let w = Watcher { api: api.clone(), id, req: create, out: tx.clone(), progress };
                        watchers.insert(id, tokio::spawn(w.run()));
                    }
                    Some(RequestUnion::CancelRequest(cancel)) => {
                        if let Some(h) = watchers.remove(&cancel.watch_id) {
                            h.abort();
                            let resp = epb::WatchResponse {
                                header: api.header(api.store.revisions().current),
                                watch_id: cancel.watch_id,
                                canceled: true,
                                ..Default::default()
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        // etcd answers a progress request with watch id -1 and the current
                        // revision; every watcher here is caught up to what it has been sent.
                        let resp = epb::WatchResponse {
                            header: api.header(api.store.revisions().current),
                            watch_id: -1,
                            ..Default::default()
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            break;
                        }
                    }
                    None => {}
                }
            }
            for (_, h) in watchers {
                h.abort();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    api: Arc<Api>,
    id: i64,
    req: epb::WatchCreateRequest,
    out: mpsc::Sender<Result<epb::WatchResponse, Status>>,
    progress: Duration,
}

impl Watcher {
    fn response(&self, revision: i64) -> epb::WatchResponse {
        epb::WatchResponse { header: self.api.header(revision), watch_id: self.id, ..Default::default() }
    }

    async fn send(&self, resp: epb::WatchResponse) -> bool {
        self.out.send(Ok(resp)).await.is_ok()
    }

    async fn compacted(&self) {
        let revs = self.api.store.revisions();
        let mut resp = self.response(revs.current);
        resp.canceled = true;
        resp.compact_revision = revs.compacted;
        resp.cancel_reason = ApplyError::Compacted.to_string();
        self.send(resp).await;
    }

    async fn fail(&self, current: i64, reason: String) {
        tracing::warn!(watch_id = self.id, error = %reason, "watch read failed");
        let mut resp = self.response(current);
        resp.canceled = true;
        resp.cancel_reason = reason;
        self.send(resp).await;
    }

    async fn run(self) {
        let mut revs_rx = self.api.store.subscribe();
        let start = revs_rx.borrow_and_update().current;
        let mut next = if self.req.start_revision > 0 { self.req.start_revision } else { start + 1 };
        let mut created = self.response(start);
        created.created = true;
        if !self.send(created).await {
            return;
        }
        let no_put = self.req.filters.contains(&(FilterType::Noput as i32));
        let no_delete = self.req.filters.contains(&(FilterType::Nodelete as i32));
        let mut progress = tokio::time::interval(self.progress);
        progress.tick().await;
        // The watched range, shared with the store's reads so that only its events are copied.
        let range: Arc<(Vec<u8>, Vec<u8>)> = Arc::new((self.req.key.clone(), self.req.range_end.clone()));
        loop {
            let current = self.api.store.revisions().current;
            if next <= current {
                let range = range.clone();
                let keep = move |ev: &crate::pb::mvccpb::Event| {
                    let is_put = ev.r#type == EventType::Put as i32;
                    ev.kv.as_ref().is_some_and(|kv| crate::store::in_range(&kv.key, &range.0, &range.1))
                        && !((is_put && no_put) || (!is_put && no_delete))
                };
                let batch = match self.api.store.watch_events(next, EVENTS_PER_BATCH, keep).await {
                    Ok(b) => b,
                    Err(ApplyError::Compacted) => return self.compacted().await,
                    Err(e) => return self.fail(current, e.to_string()).await,
                };
                next = batch.next;
                let mut selected = Vec::new();
                for mut ev in batch.events {
                    let Some(kv) = ev.kv.as_ref() else { continue };
                    if self.req.prev_kv {
                        let (key, rev) = (kv.key.clone(), kv.mod_revision);
                        ev.prev_kv = self.api.store.prev_kv(&key, rev).ok().flatten();
                    }
                    selected.push(ev);
                }
                if !selected.is_empty() {
                    let mut resp = self.response(batch.revs.current);
                    resp.events = selected;
                    if !self.send(resp).await {
                        return;
                    }
                }
                continue;
            }
            tokio::select! {
                changed = revs_rx.changed() => if changed.is_err() { return },
                _ = progress.tick(), if self.req.progress_notify => {
                    if !self.send(self.response(current)).await {
                        return;
                    }
                }
                _ = self.out.closed() => return,
            }
        }
    }
}
