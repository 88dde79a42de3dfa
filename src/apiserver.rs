//! The object API server: one generic registry that stores every kind in the replicated store
//! the way Kubernetes stores objects in etcd, and the `rkube.v1` gRPC services over it.
//!
//! Objects live under `/registry/<resource>/<namespace>/<name>` as protobuf; an object's
//! resourceVersion is its key's mod_revision. Every write is one store transaction guarded by
//! `create_revision == 0` (create) or `mod_revision == resourceVersion` (update, delete), so
//! nothing is lost to a concurrent writer and nothing partial is written. Keys that must be
//! unique across objects (a Service's ClusterIP and NodePorts) and the fencing records of
//! leader-election Leases are written in the same transaction as their object.
//!
//! Stateless: any master serves any call; writes go through Raft (forwarded to the leader),
//! reads are linearizable (read index) unless they name a resourceVersion.

mod alloc;
mod errors;
mod hooks;
mod services;
mod watch;

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::api::selector::Selector;
use crate::api::v1::ListMeta;
use crate::api::validation::invalid_message;
use crate::api::{self, Object};
use crate::pb::etcdserverpb as epb;
use crate::pb::mvccpb::KeyValue;
use crate::raft::RaftNode;
use crate::store::{ApplyError, Command, Response, Store};

pub use crate::api::fence::{fence_key, fence_record, Fence, FENCE_HEADER, REASON_HEADER};
pub use alloc::AllocConfig;
pub use errors::ApiError;
pub use hooks::Kind;
pub use services::router;

use epb::compare::{CompareResult, CompareTarget, TargetUnion};
use epb::request_op::Request as Op;

/// Options of a delete, as Kubernetes' DeleteOptions.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation: Propagation,
    pub precondition_uid: String,
    pub precondition_rv: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "" | "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::BadRequest(format!(
                "unsupported propagationPolicy {other:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
            ))),
        }
    }
}

/// What List and Watch select.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub namespace: String,
    pub labels: Selector,
    pub fields: Selector,
    pub limit: i64,
    pub continue_token: String,
    pub resource_version: String,
}

/// Configuration of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub alloc: AllocConfig,
    /// How often an idle watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How long an Event lives after its last write (`--event-ttl`): its key is attached to a
    /// store lease, so the store deletes it, as Kubernetes does over etcd.
    pub event_ttl: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            alloc: AllocConfig::default(),
            bookmark_interval: Duration::from_secs(1),
            event_ttl: Duration::from_secs(3600),
        }
    }
}

/// Events written within one window share a store lease (one grant a minute, not one per
/// event); the lease lasts the TTL plus the window, so an event lives between TTL and
/// TTL + window after its last write.
fn event_lease_window(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// A check every write passes first: the store's space quota (etcd's NOSPACE alarm), which
/// the etcd-compatible API owns; the server wires it in.
pub type WriteGate = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), ApiError>> + Send + Sync>;

/// The shared state of every rkube.v1 service on one master.
pub struct ApiServer {
    node: Arc<RaftNode>,
    store: Arc<Store>,
    cfg: ApiConfig,
    gate: Option<WriteGate>,
    /// Cancelled when this member shuts down: watches end (Unavailable) so that clients move on.
    stopping: CancellationToken,
    /// The store lease events are written under now, and when it was granted.
    event_lease: tokio::sync::Mutex<Option<(i64, std::time::Instant)>>,
}

/// Keys read from the store per List page when selectors filter results.
const LIST_BATCH: i64 = 500;
/// How often a write retries by itself when a concurrent writer won and the client did not ask
/// for a specific resourceVersion.
const WRITE_RETRIES: usize = 16;

impl ApiServer {
    pub fn new(node: Arc<RaftNode>, cfg: ApiConfig, gate: Option<WriteGate>, stopping: CancellationToken) -> Arc<Self> {
        let store = node.store().clone();
        Arc::new(ApiServer { node, store, cfg, gate, stopping, event_lease: Default::default() })
    }

    pub fn config(&self) -> &ApiConfig {
        &self.cfg
    }

    // ---- reading ----

    async fn barrier(&self) -> Result<(), ApiError> {
        self.node.read_barrier().await.map_err(ApiError::from_consensus)
    }

    /// One key's current value, read from this member's applied state.
    fn read_kv(&self, key: &[u8]) -> Result<Option<KeyValue>, ApiError> {
        let resp = self
            .store
            .range(&epb::RangeRequest { key: key.to_vec(), ..Default::default() })
            .map_err(ApiError::from_apply)?;
        Ok(resp.kvs.into_iter().next())
    }

    fn read_obj<K: Kind>(&self, key: &[u8]) -> Result<Option<K>, ApiError> {
        self.read_kv(key)?.map(|kv| decode::<K>(&kv)).transpose()
    }

    /// Get: a linearizable read of one object.
    pub async fn get<K: Kind>(&self, namespace: &str, name: &str) -> Result<K, ApiError> {
        let ns = scope::<K>(namespace);
        self.barrier().await?;
        self.read_obj::<K>(&api::key_of(K::RESOURCE, &ns, name))?.ok_or_else(|| ApiError::not_found::<K>(name))
    }

    /// List: one consistent snapshot of the store, paged with limit + continue; every page of
    /// one list reads at the same revision.
    pub async fn list<K: Kind>(&self, opts: &ListOptions) -> Result<(Vec<K>, ListMeta), ApiError> {
        check_fields::<K>(&opts.fields)?;
        let ns = list_scope::<K>(&opts.namespace);
        let prefix = api::prefix_of(K::RESOURCE, &ns);
        let range_end = prefix_end(&prefix);
        let (mut rev, mut start) = (0i64, prefix.clone());
        if !opts.continue_token.is_empty() {
            let (r, k) = decode_continue(&opts.continue_token)?;
            if !k.starts_with(&prefix) {
                return Err(ApiError::BadRequest("continue token does not belong to this list".into()));
            }
            (rev, start) = (r, k);
        } else if !opts.resource_version.is_empty() && opts.resource_version != "0" {
            rev = parse_rv(&opts.resource_version)?;
        } else {
            self.barrier().await?;
        }
        let limit = if opts.limit > 0 { opts.limit as usize } else { usize::MAX };
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::new();
        let mut next: Option<Vec<u8>> = None;
        loop {
            let batch = if filtered || limit == usize::MAX { LIST_BATCH.max(opts.limit) } else { opts.limit + 1 };
            let req = epb::RangeRequest {
                key: start.clone(),
                range_end: range_end.clone(),
                revision: rev,
                limit: batch,
                ..Default::default()
            };
            let store = self.store.clone();
            let resp = tokio::task::spawn_blocking(move || store.range(&req))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| match e {
                    crate::store::ApplyError::Compacted if !opts.continue_token.is_empty() => ApiError::Expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                    ),
                    crate::store::ApplyError::Compacted => ApiError::Expired(format!(
                        "too old resource version: {}",
                        opts.resource_version
                    )),
                    other => ApiError::from_apply(other),
                })?;
            if rev == 0 {
                rev = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
            }
            let n = resp.kvs.len();
            let mut last_key = None;
            for kv in resp.kvs {
                if items.len() >= limit {
                    next = Some(kv.key.clone());
                    break;
                }
                let obj = decode::<K>(&kv)?;
                last_key = Some(kv.key);
                if matches::<K>(&obj, &opts.labels, &opts.fields) {
                    items.push(obj);
                }
            }
            if next.is_some() || !resp.more || n == 0 {
                break;
            }
            let mut k = last_key.unwrap_or_default();
            k.push(0);
            start = k;
        }
        let meta = ListMeta {
            resource_version: rev.to_string(),
            r#continue: next.map(|k| encode_continue(rev, &k)).unwrap_or_default(),
            remaining_item_count: None,
        };
        Ok((items, meta))
    }

    // ---- writing ----

    async fn txn(&self, mut req: epb::TxnRequest) -> Result<epb::TxnResponse, ApiError> {
        if let Some(gate) = &self.gate {
            gate().await?;
        }
        let expiring = req.success.iter_mut().any(|op| event_put(op).is_some());
        for attempt in 0..2 {
            if expiring {
                let lease = self.event_lease(attempt > 0).await?;
                for op in req.success.iter_mut() {
                    if let Some(p) = event_put(op) {
                        p.lease = lease;
                    }
                }
            }
            match self.node.write(Command::Txn(req.clone())).await.map_err(ApiError::from_consensus)? {
                Response::Txn(r) => return Ok(r),
                // The events' lease went (revoked by hand, or this member was cut off for
                // longer than its TTL): take a new one.
                Response::Error(ApplyError::LeaseNotFound) if expiring && attempt == 0 => continue,
                Response::Error(e) => return Err(ApiError::from_apply(e)),
                other => return Err(ApiError::Internal(format!("unexpected store response {other:?}"))),
            }
        }
        Err(ApiError::Internal("the events' store lease vanished twice".into()))
    }

    /// The store lease for events written now: the current one while its window lasts, else a
    /// new grant.
    async fn event_lease(&self, renew: bool) -> Result<i64, ApiError> {
        let ttl = self.cfg.event_ttl;
        let window = event_lease_window(ttl);
        let mut current = self.event_lease.lock().await;
        if let Some((id, at)) = *current {
            if !renew && at.elapsed() < window {
                return Ok(id);
            }
        }
        let id = (rand::random::<u64>() >> 1).max(1) as i64;
        let secs = (ttl + window).as_secs().max(crate::etcd::lease::MIN_TTL as u64) as i64;
        match self.node.write(Command::LeaseGrant { id, ttl: secs }).await.map_err(ApiError::from_consensus)? {
            Response::LeaseGrant { id, .. } => {
                *current = Some((id, std::time::Instant::now()));
                Ok(id)
            }
            Response::Error(e) => Err(ApiError::from_apply(e)),
            other => Err(ApiError::Internal(format!("unexpected store response {other:?}"))),
        }
    }

    /// Create: defaulted, validated, named, stamped, and written only if no object of that name
    /// exists and its namespace does.
    pub async fn create<K: Kind>(&self, mut obj: K, fence: Option<&Fence>) -> Result<K, ApiError> {
        obj.set_type_meta();
        {
            let m = obj.meta_mut();
            if K::NAMESPACED && m.namespace.is_empty() {
                m.namespace = "default".into();
            }
            m.uid = uuid::Uuid::new_v4().to_string();
            m.resource_version.clear();
            m.creation_timestamp = api::time::now();
            m.deletion_timestamp.clear();
            m.deletion_grace_period_seconds = None;
            m.generation = 1;
            if m.name.is_empty() && !m.generate_name.is_empty() {
                m.name = format!("{}{}", m.generate_name, random_suffix());
            }
        }
        obj.apply_defaults();
        obj.prepare_create();
        self.check_valid(&obj, None)?;
        let ns = obj.meta().namespace.clone();
        let name = obj.meta().name.clone();
        let key = api::key_of(K::RESOURCE, &ns, &name);
        if K::NAMESPACED {
            self.ensure_namespace_open(&ns).await?;
        }
        for _ in 0..WRITE_RETRIES {
            let mut candidate = obj.clone();
            let exists = |k: &[u8]| self.read_kv(k).map(|kv| kv.is_some());
            if candidate.allocate(None, &self.cfg.alloc, &exists).is_err() {
                // This member may not have applied a delete that freed a value yet: catch up
                // with the leader and look again before refusing.
                self.barrier().await?;
                candidate = obj.clone();
                candidate.allocate(None, &self.cfg.alloc, &exists)?;
            }
            let mut compare = vec![cmp_create(&key, 0)];
            let mut success = vec![put(&key, encode(&candidate))];
            let mut failure = vec![get_op(&key)];
            if K::NAMESPACED {
                let ns_key = api::key_of("namespaces", "", &ns);
                compare.push(cmp_create_gt(&ns_key, 0));
                failure.push(get_op(&ns_key));
            }
            for s in candidate.side_records() {
                if s.exclusive {
                    compare.push(cmp_create(&s.key, 0));
                    failure.push(get_op(&s.key));
                }
                success.push(put(&s.key, s.value.clone()));
            }
            add_fence(fence, &mut compare, &mut failure);
            let resp = self.txn(epb::TxnRequest { compare, success, failure }).await?;
            if resp.succeeded {
                candidate.meta_mut().resource_version = revision_of(&resp).to_string();
                return Ok(candidate);
            }
            let found = range_results(&resp);
            if found.first().is_some_and(|r| !r.is_empty()) {
                return Err(ApiError::already_exists::<K>(&name));
            }
            if K::NAMESPACED && found.get(1).is_some_and(|r| r.is_empty()) {
                return Err(ApiError::NotFound(format!("namespaces {ns:?} not found")));
            }
            check_fence_result(fence, &found)?;
            // An allocated key was taken by a concurrent create: pick again.
        }
        Err(ApiError::Unavailable("too many concurrent allocations; try again".into()))
    }

    /// Creates a namespace that every cluster has the first time something is put in it, and
    /// refuses new objects in a namespace being deleted.
    async fn ensure_namespace_open(&self, ns: &str) -> Result<(), ApiError> {
        let ns_key = api::key_of("namespaces", "", ns);
        let existing = match self.read_obj::<api::v1::Namespace>(&ns_key)? {
            Some(n) => Some(n),
            None => {
                self.barrier().await?;
                self.read_obj::<api::v1::Namespace>(&ns_key)?
            }
        };
        match existing {
            Some(n) if !n.meta().deletion_timestamp.is_empty() => Err(ApiError::Forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ))),
            Some(_) => Ok(()),
            None if api::SYSTEM_NAMESPACES.contains(&ns) => {
                let mut n = api::v1::Namespace::default();
                n.meta_mut().name = ns.to_string();
                match Box::pin(self.create(n, None)).await {
                    Ok(_) | Err(ApiError::AlreadyExists(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            None => Ok(()), // the create's transaction reports it missing
        }
    }

    fn check_valid<K: Kind>(&self, obj: &K, old: Option<&K>) -> Result<(), ApiError> {
        let mut errs = obj.validate();
        if let Some(old) = old {
            let mut more = crate::api::validation::Errors::default();
            obj.validate_update(old, &mut more);
            errs.extend(more.0);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            let name = if obj.meta().name.is_empty() { &obj.meta().generate_name } else { &obj.meta().name };
            Err(ApiError::Invalid(invalid_message(K::KIND, K::API_VERSION, name, &errs)))
        }
    }

    /// The current object for an update, making sure it is at least as new as the client's
    /// resourceVersion (this member may be a little behind the leader).
    async fn current_for<K: Kind>(&self, key: &[u8], name: &str, client_rv: &str) -> Result<K, ApiError> {
        let mut cur = self.read_obj::<K>(key)?;
        let stale = match &cur {
            None => true,
            Some(c) => !client_rv.is_empty() && c.meta().resource_version != client_rv,
        };
        if stale {
            self.barrier().await?;
            cur = self.read_obj::<K>(key)?;
        }
        let cur = cur.ok_or_else(|| ApiError::not_found::<K>(name))?;
        if !client_rv.is_empty() && cur.meta().resource_version != client_rv {
            return Err(ApiError::conflict::<K>(name));
        }
        Ok(cur)
    }

    /// Update (or UpdateStatus when `status` is set): a compare-and-swap on the client's
    /// resourceVersion; without one, on the version read here, retried if another writer won.
    pub async fn update<K: Kind>(&self, obj: K, status: bool, fence: Option<&Fence>) -> Result<K, ApiError> {
        let ns = scope::<K>(&obj.meta().namespace);
        let name = obj.meta().name.clone();
        if name.is_empty() {
            return Err(ApiError::BadRequest("metadata.name: Required value: name is required".into()));
        }
        let key = api::key_of(K::RESOURCE, &ns, &name);
        let client_rv = obj.meta().resource_version.clone();
        for _ in 0..WRITE_RETRIES {
            let cur = self.current_for::<K>(&key, &name, &client_rv).await?;
            let new = self.merge_update(&obj, &cur, status)?;
            match self.write_over(&key, &cur, new, fence).await? {
                Some(done) => return Ok(done),
                None if !client_rv.is_empty() => return Err(ApiError::conflict::<K>(&name)),
                None => continue,
            }
        }
        Err(ApiError::conflict::<K>(&name))
    }

    /// The object an update would store: the client's changes where they are allowed, the
    /// server's fields from the stored object.
    fn merge_update<K: Kind>(&self, obj: &K, cur: &K, status: bool) -> Result<K, ApiError> {
        let mut new = if status {
            let mut n = cur.clone();
            n.copy_status_from(obj);
            n
        } else {
            let mut n = obj.clone();
            if K::has_status() {
                n.copy_status_from(cur);
            }
            n
        };
        new.set_type_meta();
        let old = cur.meta();
        let m = new.meta_mut();
        m.namespace = old.namespace.clone();
        m.uid = old.uid.clone();
        m.creation_timestamp = old.creation_timestamp.clone();
        m.deletion_timestamp = old.deletion_timestamp.clone();
        m.deletion_grace_period_seconds = old.deletion_grace_period_seconds;
        m.generation = old.generation;
        m.generate_name = old.generate_name.clone();
        m.resource_version = old.resource_version.clone();
        if !old.deletion_timestamp.is_empty() {
            let added: Vec<&String> = m.finalizers.iter().filter(|f| !old.finalizers.contains(f)).collect();
            if !added.is_empty() {
                return Err(ApiError::Forbidden(format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                )));
            }
        }
        if !status {
            new.apply_defaults();
            new.allocate(Some(cur), &self.cfg.alloc, &|k| self.read_kv(k).map(|kv| kv.is_some()))?;
        }
        self.check_valid(&new, Some(cur))?;
        if new.spec_differs(cur) {
            new.meta_mut().generation = cur.meta().generation + 1;
        }
        Ok(new)
    }

    /// Writes `new` over `cur` if the stored object is still `cur`; `None` when it was not.
    /// An object being deleted whose last finalizer goes is removed instead.
    async fn write_over<K: Kind>(
        &self,
        key: &[u8],
        cur: &K,
        mut new: K,
        fence: Option<&Fence>,
    ) -> Result<Option<K>, ApiError> {
        if new == *cur {
            return Ok(Some(new));
        }
        if new.ready_to_remove() {
            return self.remove(key, cur, fence).await.map(|r| r.map(|_| new));
        }
        let cur_rv = parse_rv(&cur.meta().resource_version)?;
        let side_new: Vec<SideRecord> = new.side_records();
        let side_old: Vec<SideRecord> = cur.side_records();
        let mut compare = vec![cmp_mod(key, cur_rv)];
        let mut success = vec![put(key, encode(&new))];
        let mut failure = vec![get_op(key)];
        for s in &side_new {
            let existed = side_old.iter().any(|o| o.key == s.key);
            if s.exclusive && !existed {
                compare.push(cmp_create(&s.key, 0));
                failure.push(get_op(&s.key));
            }
            success.push(put(&s.key, s.value.clone()));
        }
        for o in &side_old {
            if !side_new.iter().any(|s| s.key == o.key) {
                success.push(del(&o.key));
            }
        }
        add_fence(fence, &mut compare, &mut failure);
        let resp = self.txn(epb::TxnRequest { compare, success, failure }).await?;
        if resp.succeeded {
            new.meta_mut().resource_version = revision_of(&resp).to_string();
            return Ok(Some(new));
        }
        let found = range_results(&resp);
        check_fence_result(fence, &found)?;
        if found.first().is_some_and(|r| r.first().is_some_and(|kv| kv.mod_revision == cur_rv)) {
            return Err(ApiError::Invalid(format!(
                "{} {:?} is invalid: an allocated value is already in use",
                K::KIND,
                cur.meta().name
            )));
        }
        Ok(None)
    }

    /// Deletes the stored object `cur` (and its side records) if it is still that version.
    async fn remove<K: Kind>(&self, key: &[u8], cur: &K, fence: Option<&Fence>) -> Result<Option<K>, ApiError> {
        let cur_rv = parse_rv(&cur.meta().resource_version)?;
        let mut compare = vec![cmp_mod(key, cur_rv)];
        let mut success = vec![del(key)];
        let mut failure = vec![get_op(key)];
        for s in cur.side_records() {
            success.push(del(&s.key));
        }
        add_fence(fence, &mut compare, &mut failure);
        let resp = self.txn(epb::TxnRequest { compare, success, failure }).await?;
        if resp.succeeded {
            return Ok(Some(cur.clone()));
        }
        check_fence_result(fence, &range_results(&resp))?;
        Ok(None)
    }

    /// Patch: a JSON merge patch (RFC 7386) applied to the current object, then written as an
    /// update. A patch that names a resourceVersion is a compare-and-swap on it.
    pub async fn patch<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        patch: &str,
        status: bool,
        fence: Option<&Fence>,
    ) -> Result<K, ApiError> {
        let patch: serde_json::Value = serde_json::from_str(patch)
            .map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
        if !patch.is_object() {
            return Err(ApiError::BadRequest("a merge patch must be a JSON object".into()));
        }
        let ns = scope::<K>(namespace);
        let key = api::key_of(K::RESOURCE, &ns, name);
        let pinned =
            patch.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        for _ in 0..WRITE_RETRIES {
            let cur = self.current_for::<K>(&key, name, &pinned).await?;
            let mut doc = serde_json::to_value(&cur).map_err(|e| ApiError::Internal(e.to_string()))?;
            merge_patch(&mut doc, &patch);
            let mut obj: K = serde_json::from_value(doc)
                .map_err(|e| ApiError::BadRequest(format!("the patch does not fit a {}: {e}", K::KIND)))?;
            if obj.meta().name != name || scope::<K>(&obj.meta().namespace) != ns {
                return Err(ApiError::BadRequest("a patch may not change metadata.name or metadata.namespace".into()));
            }
            obj.meta_mut().resource_version = cur.meta().resource_version.clone();
            let new = self.merge_update(&obj, &cur, status)?;
            match self.write_over(&key, &cur, new, fence).await? {
                Some(done) => return Ok(done),
                None if !pinned.is_empty() => return Err(ApiError::conflict::<K>(name)),
                None => continue,
            }
        }
        Err(ApiError::conflict::<K>(name))
    }

    /// Delete, as Kubernetes does it: graceful for pods on a node, held by finalizers, with
    /// the propagation policy recorded as a finalizer for the garbage collector.
    pub async fn delete<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
        fence: Option<&Fence>,
    ) -> Result<K, ApiError> {
        let ns = scope::<K>(namespace);
        let key = api::key_of(K::RESOURCE, &ns, name);
        K::check_delete(name)?;
        self.barrier().await?;
        for _ in 0..WRITE_RETRIES {
            let cur = self.read_obj::<K>(&key)?.ok_or_else(|| ApiError::not_found::<K>(name))?;
            let m = cur.meta();
            if !opts.precondition_uid.is_empty() && opts.precondition_uid != m.uid {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                    opts.precondition_uid, m.uid
                )));
            }
            if !opts.precondition_rv.is_empty() && opts.precondition_rv != m.resource_version {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: ResourceVersion in precondition: {}, ResourceVersion in object meta: {}",
                    opts.precondition_rv, m.resource_version
                )));
            }
            let grace = cur.deletion_grace(opts.grace_period_seconds);
            let mut new = cur.clone();
            let nm = new.meta_mut();
            match opts.propagation {
                Propagation::Foreground if !nm.finalizers.iter().any(|f| f == FOREGROUND) => {
                    nm.finalizers.push(FOREGROUND.into())
                }
                Propagation::Orphan if !nm.finalizers.iter().any(|f| f == ORPHAN) => nm.finalizers.push(ORPHAN.into()),
                _ => {}
            }
            let terminating = !nm.deletion_timestamp.is_empty();
            if !terminating {
                let at = std::time::SystemTime::now() + Duration::from_secs(grace.unwrap_or(0).max(0) as u64);
                nm.deletion_timestamp = api::time::format(at);
                nm.deletion_grace_period_seconds = Some(grace.unwrap_or(0));
            } else if let Some(g) = grace {
                // A shorter grace period shortens a deletion in progress; a longer one does not
                // extend it.
                if nm.deletion_grace_period_seconds.is_none_or(|cur| g < cur) {
                    nm.deletion_grace_period_seconds = Some(g);
                    let at = std::time::SystemTime::now() + Duration::from_secs(g.max(0) as u64);
                    nm.deletion_timestamp = api::time::format(at);
                }
            } else {
                nm.deletion_grace_period_seconds = Some(0);
            }
            new.mark_terminating();
            let outcome = if new.ready_to_remove() {
                self.remove(&key, &cur, fence).await?
            } else {
                self.write_over(&key, &cur, new, fence).await?
            };
            if let Some(done) = outcome {
                return Ok(done);
            }
        }
        Err(ApiError::conflict::<K>(name))
    }

    // ---- extra verbs ----

    /// Pods/Bind: sets a pending pod's node, once. Fails with Conflict if it is bound already.
    pub async fn bind(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        uid: &str,
        fence: Option<&Fence>,
    ) -> Result<api::v1::Pod, ApiError> {
        use api::v1::Pod;
        if let Err(msg) = crate::api::validation::dns1123_subdomain(node) {
            return Err(ApiError::Invalid(format!(
                "Binding {name:?} is invalid: target.name: Invalid value: {node:?}: {msg}"
            )));
        }
        let ns = scope::<Pod>(namespace);
        let key = api::key_of(Pod::RESOURCE, &ns, name);
        for _ in 0..WRITE_RETRIES {
            let cur = self.current_for::<Pod>(&key, name, "").await?;
            if !uid.is_empty() && cur.meta().uid != uid {
                return Err(ApiError::Conflict(format!(
                    "Operation cannot be fulfilled on pods/binding {name:?}: pod {name} has uid {}, not {uid}",
                    cur.meta().uid
                )));
            }
            let bound = cur.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
            if !bound.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "Operation cannot be fulfilled on pods/binding {name:?}: pod {name} is already assigned to node {bound:?}"
                )));
            }
            if !cur.meta().deletion_timestamp.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "Operation cannot be fulfilled on pods/binding {name:?}: pod {name} is being deleted, cannot be assigned to a host"
                )));
            }
            let mut new = cur.clone();
            new.spec.get_or_insert_with(Default::default).node_name = node.to_string();
            hooks::set_pod_condition(&mut new, "PodScheduled", "True", "", "");
            if let Some(done) = self.write_over(&key, &cur, new, fence).await? {
                return Ok(done);
            }
        }
        Err(ApiError::conflict::<Pod>(name))
    }

    /// Deployments/Scale: sets spec.replicas.
    pub async fn scale(
        &self,
        namespace: &str,
        name: &str,
        replicas: i32,
        fence: Option<&Fence>,
    ) -> Result<api::v1::Deployment, ApiError> {
        use api::v1::Deployment;
        if replicas < 0 {
            return Err(ApiError::Invalid(format!(
                "Scale.autoscaling {name:?} is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
            )));
        }
        let ns = scope::<Deployment>(namespace);
        let key = api::key_of(Deployment::RESOURCE, &ns, name);
        for _ in 0..WRITE_RETRIES {
            let cur = self.current_for::<Deployment>(&key, name, "").await?;
            let mut obj = cur.clone();
            obj.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
            let new = self.merge_update(&obj, &cur, false)?;
            if let Some(done) = self.write_over(&key, &cur, new, fence).await? {
                return Ok(done);
            }
        }
        Err(ApiError::conflict::<Deployment>(name))
    }

    /// Creates the namespaces every cluster has (default, kube-system, ...), retrying until
    /// the store takes writes. Idempotent: every master runs it at start.
    pub async fn bootstrap(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        for ns in api::SYSTEM_NAMESPACES {
            loop {
                let mut n = api::v1::Namespace::default();
                n.meta_mut().name = ns.to_string();
                match self.create(n, None).await {
                    Ok(_) | Err(ApiError::AlreadyExists(_)) => break,
                    Err(e) => tracing::debug!(error = %e, ns, "creating a system namespace; will retry"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// A key written together with an object: unique allocations (exclusive) and fencing records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub exclusive: bool,
}

/// The namespaces a List or Watch covers: empty means every namespace (none for
/// cluster-scoped kinds).
fn list_scope<K: Object>(namespace: &str) -> String {
    if K::NAMESPACED {
        namespace.to_string()
    } else {
        String::new()
    }
}

/// The namespace a request addresses: none for cluster-scoped kinds.
fn scope<K: Object>(namespace: &str) -> String {
    if K::NAMESPACED {
        if namespace.is_empty() {
            "default".into()
        } else {
            namespace.to_string()
        }
    } else {
        String::new()
    }
}

fn encode<K: Object>(obj: &K) -> Vec<u8> {
    let mut stored = obj.clone();
    stored.meta_mut().resource_version.clear();
    stored.encode_to_vec()
}

fn decode<K: Object>(kv: &KeyValue) -> Result<K, ApiError> {
    let mut obj = K::decode(kv.value.as_slice()).map_err(|e| {
        ApiError::Internal(format!("stored object at {} does not decode: {e}", String::from_utf8_lossy(&kv.key)))
    })?;
    obj.set_type_meta();
    obj.meta_mut().resource_version = kv.mod_revision.to_string();
    Ok(obj)
}

fn parse_rv(rv: &str) -> Result<i64, ApiError> {
    rv.parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::BadRequest(format!("resourceVersion {rv:?} is not a valid resource version")))
}

fn matches<K: Kind>(obj: &K, labels: &Selector, fields: &Selector) -> bool {
    labels.matches_labels(&obj.meta().labels) && fields.matches(&|f| obj.field(f))
}

fn check_fields<K: Kind>(fields: &Selector) -> Result<(), ApiError> {
    for f in fields.keys() {
        if !K::supports_field(f) {
            return Err(ApiError::BadRequest(format!("field label not supported: {f}")));
        }
    }
    Ok(())
}

/// The end of the key range of every key with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn encode_continue(rev: i64, key: &[u8]) -> String {
    let mut s = format!("{rev}:");
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_continue(token: &str) -> Result<(i64, Vec<u8>), ApiError> {
    let bad = || ApiError::BadRequest(format!("continue token {token:?} is not valid"));
    let (rev, hex) = token.split_once(':').ok_or_else(bad)?;
    let rev: i64 = rev.parse().map_err(|_| bad())?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    Ok((rev, key))
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

// ---- transaction building ----

fn cmp_create(key: &[u8], rev: i64) -> epb::Compare {
    epb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
    }
}

fn cmp_create_gt(key: &[u8], rev: i64) -> epb::Compare {
    epb::Compare { result: CompareResult::Greater as i32, ..cmp_create(key, rev) }
}

fn cmp_mod(key: &[u8], rev: i64) -> epb::Compare {
    epb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::ModRevision(rev)),
    }
}

/// The put of an Event in a transaction's operations, which gets the events' lease.
fn event_put(op: &mut epb::RequestOp) -> Option<&mut epb::PutRequest> {
    match &mut op.request {
        Some(Op::RequestPut(p)) if p.key.starts_with(b"/registry/events/") => Some(p),
        _ => None,
    }
}

fn put(key: &[u8], value: Vec<u8>) -> epb::RequestOp {
    epb::RequestOp { request: Some(Op::RequestPut(epb::PutRequest { key: key.to_vec(), value, ..Default::default() })) }
}

fn del(key: &[u8]) -> epb::RequestOp {
    epb::RequestOp {
        request: Some(Op::RequestDeleteRange(epb::DeleteRangeRequest { key: key.to_vec(), ..Default::default() })),
    }
}

fn get_op(key: &[u8]) -> epb::RequestOp {
    epb::RequestOp { request: Some(Op::RequestRange(epb::RangeRequest { key: key.to_vec(), ..Default::default() })) }
}

/// Adds the fence's compare (and a read of its record, last, to explain a failure).
fn add_fence(fence: Option<&Fence>, compare: &mut Vec<epb::Compare>, failure: &mut Vec<epb::RequestOp>) {
    if let Some(f) = fence {
        let key = fence_key(&f.namespace, &f.lease);
        compare.push(epb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.clone(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Value(f.record())),
        });
        failure.push(get_op(&key));
    }
}

fn check_fence_result(fence: Option<&Fence>, found: &[Vec<KeyValue>]) -> Result<(), ApiError> {
    let Some(f) = fence else { return Ok(()) };
    let record = found.last().and_then(|r| r.first()).map(|kv| kv.value.clone());
    if record.as_deref() == Some(f.record().as_slice()) {
        return Ok(());
    }
    let now = record.map(|r| String::from_utf8_lossy(&r).into_owned()).unwrap_or_else(|| "nobody".into());
    Err(ApiError::Fenced(format!(
        "lease {}/{} has moved on: held by {now}, not {} {}; this writer is no longer the leader",
        f.namespace, f.lease, f.holder, f.transitions
    )))
}

fn revision_of(resp: &epb::TxnResponse) -> i64 {
    resp.header.as_ref().map(|h| h.revision).unwrap_or_default()
}

/// The key-values of each Range in a transaction's answer, in order.
fn range_results(resp: &epb::TxnResponse) -> Vec<Vec<KeyValue>> {
    resp.responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(epb::response_op::Response::ResponseRange(rr)) => Some(rr.kvs.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = serde_json::json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &serde_json::json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, serde_json::json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = serde_json::json!({"a": [1, 2]});
        merge_patch(&mut doc, &serde_json::json!({"a": [3]}));
        assert_eq!(doc, serde_json::json!({"a": [3]}));
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, b"/registry/pods/default/web\x00");
        assert_eq!(decode_continue(&t).expect("decodes"), (42, b"/registry/pods/default/web\x00".to_vec()));
        assert!(decode_continue("nonsense").is_err());
        assert!(decode_continue("1:zz").is_err());
    }
}
