//! The API client: typed access to every kind over gRPC, with failover across masters.
//!
//! `Client::connect(&["m1:6443", "m2:6443"])` gives a client that sends each call to its
//! current master and moves to the next when one cannot be reached. `Api::<Pod>::namespaced(
//! &client, "default")` is the typed handle (as in kube-rs); [`with_kind!`] runs generic code
//! for a kind named at run time (rkctl). A leader-elected component sets its [`Fence`] on the
//! client, and every write then carries it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

pub use crate::api::fence::Fence;
use crate::api::fence::{FENCE_HEADER, REASON_HEADER};
use crate::api::v1::*;
use crate::api::Object;
use crate::pb::v1 as pb;

/// An error as a user should read it: `Error from server (NotFound): pods "x" not found`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("Error from server ({reason}): {message}")]
    Server { code: Code, reason: String, message: String },
    #[error("Unable to connect to the server: {0}")]
    Connect(String),
    #[error("{0}")]
    Local(String),
}

/// Runs `op` until it answers something other than "unavailable" ([`ClientError::is_unavailable`]:
/// masters starting, electing a leader), pausing 200 ms doubling to 5 s in between and logging
/// `waiting` each time, as a kubelet keeps registering. `None` if `stop` came first.
pub async fn retry_while_unavailable<T, Fut>(
    stop: &tokio_util::sync::CancellationToken,
    waiting: &str,
    mut op: impl FnMut() -> Fut,
) -> Result<Option<T>, ClientError>
where
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match op().await {
            Err(e) if e.is_unavailable() => tracing::info!(error = %e, "{waiting}"),
            done => return done.map(Some),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

impl ClientError {
    pub fn code(&self) -> Code {
        match self {
            ClientError::Server { code, .. } => *code,
            ClientError::Connect(_) => Code::Unavailable,
            ClientError::Local(_) => Code::InvalidArgument,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Code::NotFound
    }

    pub fn is_conflict(&self) -> bool {
        self.code() == Code::Aborted
    }

    pub fn is_already_exists(&self) -> bool {
        self.code() == Code::AlreadyExists
    }

    /// The resourceVersion is older than the store's history: re-list.
    pub fn is_expired(&self) -> bool {
        self.code() == Code::OutOfRange
    }

    /// The masters could not be reached or answered "try again" (no leader, leader changed,
    /// timeout): worth retrying after a pause.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.code(), Code::Unavailable | Code::DeadlineExceeded)
    }

    pub fn is_fenced(&self) -> bool {
        self.code() == Code::FailedPrecondition
    }

    pub fn message(&self) -> String {
        match self {
            ClientError::Server { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// Whether a status means the request never reached a server (so it is safe to send it to
/// another, even if it writes).
/// The call failed before a request went out: no connection could be made.
pub fn never_sent(s: &Status) -> bool {
    if s.code() != Code::Unavailable && s.code() != Code::Unknown {
        return false;
    }
    let m = s.message().to_ascii_lowercase();
    let mut src = std::error::Error::source(s);
    let mut chain = m.clone();
    while let Some(e) = src {
        chain.push_str(&e.to_string().to_ascii_lowercase());
        src = e.source();
    }
    chain.contains("tcp connect error") || chain.contains("connection refused") || chain.contains("dns error")
}

fn unreachable(s: &Status) -> bool {
    if s.code() != Code::Unavailable && s.code() != Code::Unknown {
        return false;
    }
    let m = s.message().to_ascii_lowercase();
    m.contains("connect") || m.contains("connection refused") || m.contains("dns error") || m.contains("transport")
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        if unreachable(&s) {
            return ClientError::Connect(s.message().to_string());
        }
        let reason = s
            .metadata()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| default_reason(s.code()).to_string());
        ClientError::Server { code: s.code(), reason, message: s.message().to_string() }
    }
}

fn default_reason(code: Code) -> &'static str {
    match code {
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::Aborted => "Conflict",
        Code::InvalidArgument => "BadRequest",
        Code::FailedPrecondition => "Forbidden",
        Code::OutOfRange => "Expired",
        Code::Unavailable => "ServiceUnavailable",
        Code::DeadlineExceeded => "Timeout",
        _ => "InternalError",
    }
}

/// A connection to the masters.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    fence: RwLock<Option<Fence>>,
}

/// Splits `m1:6443,m2:6443` (with or without `http://`) into addresses.
pub fn parse_servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().trim_start_matches("http://").trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Client {
    /// A client for these masters. Connections are made on first use, so this fails only on
    /// malformed addresses. Call it inside a tokio runtime.
    pub fn new(servers: &[String]) -> Result<Client, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::Local("no server given".into()));
        }
        let mut channels = Vec::new();
        for s in servers {
            let ep = Endpoint::from_shared(format!("http://{s}"))
                .map_err(|e| ClientError::Local(format!("server address {s:?}: {e}")))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            channels.push(ep.connect_lazy());
        }
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: servers.to_vec(),
                channels,
                current: AtomicUsize::new(0),
                fence: RwLock::new(None),
            }),
        })
    }

    /// A client for a comma-separated list of masters.
    pub fn from_list(list: &str) -> Result<Client, ClientError> {
        Client::new(&parse_servers(list))
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The master calls go to now.
    pub fn current_endpoint(&self) -> &str {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        &self.inner.endpoints[i]
    }

    /// Every later write carries this fence (or none).
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.inner.fence.write() = fence;
    }

    pub fn fence(&self) -> Option<Fence> {
        self.inner.fence.read().clone()
    }

    /// A channel to the current master, for services without a typed wrapper here.
    pub fn channel(&self) -> Channel {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len();
        self.inner.channels[i].clone()
    }

    fn rotate(&self, from: usize) {
        let _ = self.inner.current.compare_exchange(
            from,
            (from + 1) % self.inner.channels.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Runs `call` against the current master, moving on to the next ones when a master cannot
    /// be reached (or, for `idempotent` calls, is unavailable).
    async fn call<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let n = self.inner.channels.len();
        let mut last = None;
        // Two rounds over the masters: one may be restarting.
        for attempt in 0..(2 * n) {
            let i = self.inner.current.load(Ordering::Relaxed) % n;
            match call(self.inner.channels[i].clone()).await {
                Ok(v) => return Ok(v),
                Err(s) => {
                    // A write goes to the next master only when it certainly never left: a
                    // connection that broke after sending may have carried it, and a retry
                    // would then answer Conflict or AlreadyExists for a write that happened.
                    let retry =
                        if idempotent { unreachable(&s) || s.code() == Code::Unavailable } else { never_sent(&s) };
                    if !retry {
                        return Err(s.into());
                    }
                    tracing::debug!(server = %self.inner.endpoints[i], error = %s, "trying the next master");
                    last = Some(s);
                    self.rotate(i);
                    if attempt + 1 >= n {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        Err(last.map(ClientError::from).unwrap_or_else(|| ClientError::Connect("no server answered".into())))
    }

    fn request<T>(&self, msg: T, write: bool) -> Request<T> {
        let mut req = Request::new(msg);
        req.set_timeout(Duration::from_secs(30));
        if write {
            if let Some(f) = self.inner.fence.read().as_ref() {
                if let Ok(v) = f.header_value().parse() {
                    req.metadata_mut().insert(FENCE_HEADER, v);
                }
            }
        }
        req
    }
}

type Rpc<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;

/// The gRPC calls of one kind, so that [`Api`] can be generic.
pub trait Remote: Object {
    fn rpc_create(ch: Channel, r: Request<Self>) -> Rpc<Self>;
    fn rpc_get(ch: Channel, r: Request<GetRequest>) -> Rpc<Self>;
    fn rpc_list(ch: Channel, r: Request<ListRequest>) -> Rpc<Self::List>;
    fn rpc_update(ch: Channel, r: Request<Self>) -> Rpc<Self>;
    fn rpc_update_status(ch: Channel, r: Request<Self>) -> Rpc<Self>;
    fn rpc_patch(ch: Channel, r: Request<PatchRequest>) -> Rpc<Self>;
    fn rpc_delete(ch: Channel, r: Request<DeleteRequest>) -> Rpc<Self>;
    fn rpc_watch(ch: Channel, r: Request<WatchRequest>) -> Rpc<Streaming<Self::WatchEvent>>;
}

macro_rules! remote {
    ($ty:ident, $module:ident :: $client:ident) => {
        impl Remote for $ty {
            fn rpc_create(ch: Channel, r: Request<Self>) -> Rpc<Self> {
                Box::pin(async move { Ok(pb::$module::$client::new(ch).create(r).await?.into_inner()) })
            }
            fn rpc_get(ch: Channel, r: Request<GetRequest>) -> Rpc<Self> {
                Box::pin(async move { Ok(pb::$module::$client::new(ch).get(r).await?.into_inner()) })
            }
            fn rpc_list(ch: Channel, r: Request<ListRequest>) -> Rpc<Self::List> {
                Box::pin(async move {
                    Ok(pb::$module::$client::new(ch).max_decoding_message_size(256 << 20).list(r).await?.into_inner())
                })
            }
            fn rpc_update(ch: Channel, r: Request<Self>) -> Rpc<Self> {
                Box::pin(async move { Ok(pb::$module::$client::new(ch).update(r).await?.into_inner()) })
            }
            fn rpc_update_status(ch: Channel, r: Request<Self>) -> Rpc<Self> {
                Box::pin(async move { Ok(pb::$module::$client::new(ch).update_status(r).await?.into_inner()) })
            }
            fn rpc_patch(ch: Channel, r: Request<PatchRequest>) -> Rpc<Self> {
                Box::pin(async move { Ok(pb::$module::$client::new(ch).patch(r).await?.into_inner()) })
            }
            fn rpc_delete(ch: Channel, r: Request<DeleteRequest>) -> Rpc<Self> {
                Box::pin(async move { Ok(pb::$module::$client::new(ch).delete(r).await?.into_inner()) })
            }
            fn rpc_watch(ch: Channel, r: Request<WatchRequest>) -> Rpc<Streaming<Self::WatchEvent>> {
                Box::pin(async move { Ok(pb::$module::$client::new(ch).watch(r).await?.into_inner()) })
            }
        }
    };
}

remote!(Namespace, namespaces_client::NamespacesClient);
remote!(Pod, pods_client::PodsClient);
remote!(ReplicaSet, replica_sets_client::ReplicaSetsClient);
remote!(Deployment, deployments_client::DeploymentsClient);
remote!(Service, services_client::ServicesClient);
remote!(Endpoints, endpoints_service_client::EndpointsServiceClient);
remote!(Node, nodes_client::NodesClient);
remote!(ConfigMap, config_maps_client::ConfigMapsClient);
remote!(Lease, leases_client::LeasesClient);
remote!(Event, events_client::EventsClient);

/// Runs `$body` with `$k` bound to the type of the kind named `$name` (a `KindInfo::kind`),
/// or evaluates `$missing` for an unknown kind.
#[macro_export]
macro_rules! with_kind {
    ($name:expr, $k:ident => $body:expr, _ => $missing:expr) => {{
        use $crate::api::v1 as __v1;
        match $name {
            "Namespace" => {
                type $k = __v1::Namespace;
                $body
            }
            "Pod" => {
                type $k = __v1::Pod;
                $body
            }
            "ReplicaSet" => {
                type $k = __v1::ReplicaSet;
                $body
            }
            "Deployment" => {
                type $k = __v1::Deployment;
                $body
            }
            "Service" => {
                type $k = __v1::Service;
                $body
            }
            "Endpoints" => {
                type $k = __v1::Endpoints;
                $body
            }
            "Node" => {
                type $k = __v1::Node;
                $body
            }
            "ConfigMap" => {
                type $k = __v1::ConfigMap;
                $body
            }
            "Lease" => {
                type $k = __v1::Lease;
                $body
            }
            "Event" => {
                type $k = __v1::Event;
                $body
            }
            _ => $missing,
        }
    }};
}

/// What to list or watch.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub label_selector: String,
    pub field_selector: String,
    pub limit: i64,
    pub continue_token: String,
    pub resource_version: String,
}

impl ListParams {
    pub fn labels(mut self, s: &str) -> Self {
        self.label_selector = s.to_string();
        self
    }
    pub fn fields(mut self, s: &str) -> Self {
        self.field_selector = s.to_string();
        self
    }
    pub fn limit(mut self, n: i64) -> Self {
        self.limit = n;
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeleteParams {
    pub grace_period_seconds: Option<i64>,
    /// Background (default), Foreground or Orphan.
    pub propagation_policy: String,
    pub precondition_uid: String,
    pub precondition_resource_version: String,
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    /// Everything up to this resourceVersion has been sent.
    Bookmark(String),
}

impl<K: Object> WatchEvent<K> {
    fn from_parts(kind: &str, obj: K) -> Result<Self, ClientError> {
        Ok(match kind {
            "ADDED" => WatchEvent::Added(obj),
            "MODIFIED" => WatchEvent::Modified(obj),
            "DELETED" => WatchEvent::Deleted(obj),
            "BOOKMARK" => WatchEvent::Bookmark(obj.meta().resource_version.clone()),
            other => return Err(ClientError::Local(format!("unknown watch event type {other:?}"))),
        })
    }

    pub fn resource_version(&self) -> &str {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => &o.meta().resource_version,
            WatchEvent::Bookmark(rv) => rv,
        }
    }
}

/// A watch's stream of events.
pub struct WatchStream<K: Object> {
    inner: Streaming<K::WatchEvent>,
}

impl<K: Object> WatchStream<K> {
    /// The next event; `None` when the server ended the watch.
    pub async fn next(&mut self) -> Option<Result<WatchEvent<K>, ClientError>> {
        match self.inner.message().await {
            Ok(Some(ev)) => {
                let (kind, obj) = K::event_parts(ev);
                Some(WatchEvent::from_parts(&kind, obj))
            }
            Ok(None) => None,
            Err(s) => Some(Err(s.into())),
        }
    }
}

/// Typed access to one kind, in one namespace or across all.
#[derive(Clone)]
pub struct Api<K> {
    client: Client,
    namespace: String,
    _kind: std::marker::PhantomData<fn() -> K>,
}

impl<K: Remote> Api<K> {
    /// Objects in one namespace (ignored for cluster-scoped kinds).
    pub fn namespaced(client: &Client, namespace: &str) -> Self {
        Api { client: client.clone(), namespace: namespace.to_string(), _kind: Default::default() }
    }

    /// Every namespace (lists and watches), or a cluster-scoped kind.
    pub fn all(client: &Client) -> Self {
        Api::namespaced(client, "")
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn ns_for(&self, obj_ns: &str) -> String {
        if !K::NAMESPACED {
            String::new()
        } else if !obj_ns.is_empty() {
            obj_ns.to_string()
        } else if self.namespace.is_empty() {
            "default".into()
        } else {
            self.namespace.clone()
        }
    }

    fn prepared(&self, obj: &K) -> K {
        let mut o = obj.clone();
        let ns = self.ns_for(&o.meta().namespace);
        o.meta_mut().namespace = ns;
        o
    }

    pub async fn create(&self, obj: &K) -> Result<K, ClientError> {
        let o = self.prepared(obj);
        self.client.call(false, |ch| K::rpc_create(ch, self.client.request(o.clone(), true))).await
    }

    pub async fn get(&self, name: &str) -> Result<K, ClientError> {
        let r = GetRequest { namespace: self.ns_for(""), name: name.to_string() };
        self.client.call(true, |ch| K::rpc_get(ch, self.client.request(r.clone(), false))).await
    }

    /// Get, or `None` when it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>, ClientError> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page (or all, without a limit) of the list.
    pub async fn list(&self, p: &ListParams) -> Result<(Vec<K>, ListMeta), ClientError> {
        let r = ListRequest {
            namespace: if K::NAMESPACED { self.namespace.clone() } else { String::new() },
            label_selector: p.label_selector.clone(),
            field_selector: p.field_selector.clone(),
            limit: p.limit,
            r#continue: p.continue_token.clone(),
            resource_version: p.resource_version.clone(),
        };
        let list = self.client.call(true, |ch| K::rpc_list(ch, self.client.request(r.clone(), false))).await?;
        Ok(K::list_items(list))
    }

    pub async fn update(&self, obj: &K) -> Result<K, ClientError> {
        let o = self.prepared(obj);
        self.client.call(false, |ch| K::rpc_update(ch, self.client.request(o.clone(), true))).await
    }

    pub async fn update_status(&self, obj: &K) -> Result<K, ClientError> {
        let o = self.prepared(obj);
        self.client.call(false, |ch| K::rpc_update_status(ch, self.client.request(o.clone(), true))).await
    }

    /// A JSON merge patch of the object (`status` for its status subresource).
    pub async fn patch(&self, name: &str, patch: &serde_json::Value, status: bool) -> Result<K, ClientError> {
        let r = PatchRequest {
            namespace: self.ns_for(""),
            name: name.to_string(),
            patch: patch.to_string(),
            subresource: if status { "status".into() } else { String::new() },
        };
        self.client.call(false, |ch| K::rpc_patch(ch, self.client.request(r.clone(), true))).await
    }

    pub async fn delete(&self, name: &str, p: &DeleteParams) -> Result<K, ClientError> {
        let r = DeleteRequest {
            namespace: self.ns_for(""),
            name: name.to_string(),
            grace_period_seconds: p.grace_period_seconds,
            propagation_policy: p.propagation_policy.clone(),
            preconditions: if p.precondition_uid.is_empty() && p.precondition_resource_version.is_empty() {
                None
            } else {
                Some(Preconditions {
                    uid: p.precondition_uid.clone(),
                    resource_version: p.precondition_resource_version.clone(),
                })
            },
        };
        self.client.call(false, |ch| K::rpc_delete(ch, self.client.request(r.clone(), true))).await
    }

    /// Watches from `resource_version` (empty: the current objects as ADDED first).
    pub async fn watch(&self, p: &ListParams, resource_version: &str) -> Result<WatchStream<K>, ClientError> {
        let r = WatchRequest {
            namespace: if K::NAMESPACED { self.namespace.clone() } else { String::new() },
            label_selector: p.label_selector.clone(),
            field_selector: p.field_selector.clone(),
            resource_version: resource_version.to_string(),
            allow_bookmarks: true,
        };
        let inner = self.client.call(true, |ch| K::rpc_watch(ch, Request::new(r.clone()))).await?;
        Ok(WatchStream { inner })
    }
}

impl Api<Pod> {
    pub async fn bind(&self, name: &str, node: &str, uid: &str) -> Result<Pod, ClientError> {
        let r = BindRequest { namespace: self.ns_for(""), name: name.into(), node_name: node.into(), uid: uid.into() };
        self.client
            .call(false, |ch| {
                let req = self.client.request(r.clone(), true);
                async move { Ok(pb::pods_client::PodsClient::new(ch).bind(req).await?.into_inner()) }
            })
            .await
    }

    pub async fn logs(&self, r: LogsRequest) -> Result<Streaming<LogChunk>, ClientError> {
        let mut r = r;
        r.namespace = self.ns_for(&r.namespace);
        self.client
            .call(true, |ch| {
                let req = Request::new(r.clone());
                async move { Ok(pb::pods_client::PodsClient::new(ch).logs(req).await?.into_inner()) }
            })
            .await
    }

    /// Runs a command in a running container of the pod; the stream ends with its exit code.
    /// Not retried on another master once sent (the command may have run).
    pub async fn exec(&self, r: ExecRequest) -> Result<Streaming<ExecOutput>, ClientError> {
        let mut r = r;
        r.namespace = self.ns_for(&r.namespace);
        self.client
            .call(false, |ch| {
                let req = Request::new(r.clone());
                async move { Ok(pb::pods_client::PodsClient::new(ch).exec(req).await?.into_inner()) }
            })
            .await
    }
}

impl Api<Deployment> {
    pub async fn scale(&self, name: &str, replicas: i32) -> Result<Deployment, ClientError> {
        let r = ScaleRequest { namespace: self.ns_for(""), name: name.into(), replicas };
        self.client
            .call(false, |ch| {
                let req = self.client.request(r.clone(), true);
                async move { Ok(pb::deployments_client::DeploymentsClient::new(ch).scale(req).await?.into_inner()) }
            })
            .await
    }
}
