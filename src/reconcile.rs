//! The machinery every control loop stands on, as kube-runtime and client-go provide it:
//! [`Informer`] (list + watch into a local cache, re-listing when the watch expires, with
//! indexes), [`WorkQueue`] (deduplicating, one reconcile in flight per key, rate-limited
//! retries), [`run_workers`], and [`leader`] election with fencing. Controllers and the
//! scheduler see only the API client, never the store.

pub mod leader;
mod queue;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::api::Object;
use crate::client::{Api, Client, ListParams, Remote, WatchEvent};

pub use queue::WorkQueue;

/// `namespace/name`, or `name` for cluster-scoped objects: the key of caches and queues.
pub fn key_of<K: Object>(obj: &K) -> String {
    crate::api::full_name(obj.meta())
}

/// Splits a key into (namespace, name).
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// A change the informer saw. `Resync` follows a re-list: everything may have changed.
#[derive(Debug, Clone)]
pub enum Change<K> {
    Applied(Arc<K>),
    Deleted(Arc<K>),
    Resync,
}

type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

struct CacheInner<K> {
    objects: BTreeMap<String, Arc<K>>,
    /// index name -> index value -> keys
    indexes: HashMap<&'static str, HashMap<String, BTreeSet<String>>>,
}

/// The informer's local copy of every object it watches, with named indexes.
pub struct Cache<K> {
    inner: RwLock<CacheInner<K>>,
    indexers: Vec<(&'static str, IndexFn<K>)>,
}

impl<K: Object> Cache<K> {
    fn new(indexers: Vec<(&'static str, IndexFn<K>)>) -> Self {
        let indexes = indexers.iter().map(|(n, _)| (*n, HashMap::new())).collect();
        Cache { inner: RwLock::new(CacheInner { objects: BTreeMap::new(), indexes }), indexers }
    }

    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.inner.read().objects.get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.inner.read().objects.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.inner.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects in one namespace.
    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        let prefix = format!("{ns}/");
        self.inner
            .read()
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Objects whose index `index` has `value`.
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        let inner = self.inner.read();
        let Some(keys) = inner.indexes.get(index).and_then(|i| i.get(value)) else { return Vec::new() };
        keys.iter().filter_map(|k| inner.objects.get(k).cloned()).collect()
    }

    fn insert(&self, obj: Arc<K>) {
        let key = key_of(obj.as_ref());
        let mut inner = self.inner.write();
        if let Some(old) = inner.objects.remove(&key) {
            Self::unindex(&mut inner, &self.indexers, &key, &old);
        }
        for (name, f) in &self.indexers {
            for v in f(&obj) {
                inner.indexes.entry(name).or_default().entry(v).or_default().insert(key.clone());
            }
        }
        inner.objects.insert(key, obj);
    }

    fn remove(&self, key: &str) -> Option<Arc<K>> {
        let mut inner = self.inner.write();
        let old = inner.objects.remove(key)?;
        Self::unindex(&mut inner, &self.indexers, key, &old);
        Some(old)
    }

    fn unindex(inner: &mut CacheInner<K>, indexers: &[(&'static str, IndexFn<K>)], key: &str, old: &K) {
        for (name, f) in indexers {
            if let Some(idx) = inner.indexes.get_mut(name) {
                for v in f(old) {
                    if let Some(set) = idx.get_mut(&v) {
                        set.remove(key);
                        if set.is_empty() {
                            idx.remove(&v);
                        }
                    }
                }
            }
        }
    }

    /// Replaces the whole content (after a list); returns the objects that went away.
    fn replace(&self, objs: Vec<K>) -> Vec<Arc<K>> {
        let fresh: BTreeMap<String, Arc<K>> = objs.into_iter().map(|o| (key_of(&o), Arc::new(o))).collect();
        let gone: Vec<Arc<K>> = {
            let inner = self.inner.read();
            inner.objects.iter().filter(|(k, _)| !fresh.contains_key(*k)).map(|(_, v)| v.clone()).collect()
        };
        for g in &gone {
            self.remove(&key_of(g.as_ref()));
        }
        for (_, o) in fresh {
            self.insert(o);
        }
        gone
    }
}

/// Changes queued for each subscriber before it is told to resync instead.
const CHANGE_BUFFER: usize = 4096;
/// Longest wait between attempts after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// List + watch of one kind into a [`Cache`], feeding subscribers with changes.
pub struct Informer<K: Object> {
    cache: Arc<Cache<K>>,
    changes: broadcast::Sender<Change<K>>,
    synced: watch::Receiver<bool>,
}

impl<K: Object> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer { cache: self.cache.clone(), changes: self.changes.clone(), synced: self.synced.clone() }
    }
}

/// Builds an informer.
pub struct InformerBuilder<K: Object> {
    params: ListParams,
    namespace: String,
    indexers: Vec<(&'static str, IndexFn<K>)>,
}

impl<K: Remote> Informer<K> {
    pub fn builder() -> InformerBuilder<K> {
        InformerBuilder { params: ListParams::default(), namespace: String::new(), indexers: Vec::new() }
    }

    pub fn cache(&self) -> &Arc<Cache<K>> {
        &self.cache
    }

    /// Changes from now on. A subscriber that falls behind receives `Resync`.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.changes.subscribe()
    }

    /// Waits until the first list is in the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

impl<K: Remote> InformerBuilder<K> {
    pub fn params(mut self, p: ListParams) -> Self {
        self.params = p;
        self
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_string();
        self
    }

    pub fn index(mut self, name: &'static str, f: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) -> Self {
        self.indexers.push((name, Arc::new(f)));
        self
    }

    /// Starts the list + watch loop; it runs until `shutdown`.
    pub fn start(self, client: &Client, shutdown: CancellationToken) -> Informer<K> {
        let cache = Arc::new(Cache::new(self.indexers));
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let (synced_tx, synced) = watch::channel(false);
        let informer = Informer { cache: cache.clone(), changes: changes.clone(), synced };
        let api =
            if self.namespace.is_empty() { Api::<K>::all(client) } else { Api::namespaced(client, &self.namespace) };
        tokio::spawn(run_informer(api, self.params, cache, changes, synced_tx, shutdown));
        informer
    }
}

async fn run_informer<K: Remote>(
    api: Api<K>,
    params: ListParams,
    cache: Arc<Cache<K>>,
    changes: broadcast::Sender<Change<K>>,
    synced: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    'relist: loop {
        if shutdown.is_cancelled() {
            return;
        }
        let (items, meta) = match api.list(&params).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(kind = K::KIND, error = %e, "list failed; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        for gone in cache.replace(items) {
            let _ = changes.send(Change::Deleted(gone));
        }
        let _ = changes.send(Change::Resync);
        let _ = synced.send(true);
        let mut rv = meta.resource_version;
        loop {
            let mut stream = match api.watch(&params, &rv).await {
                Ok(s) => s,
                Err(e) if e.is_expired() => continue 'relist,
                Err(e) => {
                    tracing::debug!(kind = K::KIND, error = %e, "watch failed; retrying");
                    tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = stream.next() => n,
                };
                match next {
                    Some(Ok(ev)) => {
                        backoff = Duration::from_millis(100);
                        rv = ev.resource_version().to_string();
                        match ev {
                            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                                let o = Arc::new(o);
                                cache.insert(o.clone());
                                let _ = changes.send(Change::Applied(o));
                            }
                            WatchEvent::Deleted(o) => {
                                cache.remove(&key_of(&o));
                                let _ = changes.send(Change::Deleted(Arc::new(o)));
                            }
                            WatchEvent::Bookmark(_) => {}
                        }
                    }
                    Some(Err(e)) if e.is_expired() => continue 'relist,
                    Some(Err(e)) => {
                        tracing::debug!(kind = K::KIND, error = %e, "watch broke; resuming");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(Duration::from_millis(50)) => {} }
        }
    }
}

/// Runs `workers` loops that take keys from `queue` and reconcile them. A reconcile that fails
/// is retried with backoff; one that asks for a requeue is run again after that delay.
pub async fn run_workers<F, Fut>(queue: WorkQueue, workers: usize, shutdown: CancellationToken, reconcile: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<Duration>, crate::client::ClientError>> + Send,
{
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (queue, shutdown, reconcile) = (queue.clone(), shutdown.clone(), reconcile.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let key = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    k = queue.next() => k,
                };
                match reconcile(key.clone()).await {
                    Ok(None) => queue.forget(&key),
                    Ok(Some(after)) => {
                        queue.forget(&key);
                        queue.add_after(&key, after);
                    }
                    Err(e) => {
                        tracing::debug!(key, error = %e, "reconcile failed; will retry");
                        queue.retry(&key);
                    }
                }
                queue.done(&key);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Feeds a queue from an informer's changes with `keys` (the objects to reconcile for a
/// change); on `Resync`, every key `all` gives.
pub fn feed<K, F, A>(informer: &Informer<K>, queue: &WorkQueue, shutdown: CancellationToken, keys: F, all: A)
where
    K: Remote,
    F: Fn(&Change<K>) -> Vec<String> + Send + 'static,
    A: Fn() -> Vec<String> + Send + 'static,
{
    let mut rx = informer.subscribe();
    let queue = queue.clone();
    let informer = informer.clone();
    tokio::spawn(async move {
        // Whatever was listed before this subscription began.
        informer.wait_synced().await;
        for k in all() {
            queue.add(&k);
        }
        loop {
            let change = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = rx.recv() => c,
            };
            match change {
                Ok(Change::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    for k in all() {
                        queue.add(&k);
                    }
                }
                Ok(c) => {
                    for k in keys(&c) {
                        queue.add(&k);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}
