//! The `rkube.v1` gRPC services: one per kind, all the same generic code. A macro only
//! spells out each generated trait's methods; every method calls the generic registry.

use std::marker::PhantomData;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::watch::WATCH_QUEUE;
use super::{ApiError, ApiServer, DeleteOptions, Fence, Kind, ListOptions, Propagation, FENCE_HEADER};
use crate::api::selector::Selector;
use crate::api::v1::*;
use crate::api::Object;
use crate::pb::v1 as pb;

/// The service of one kind.
pub struct Svc<K> {
    api: Arc<ApiServer>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Svc<K> {
    fn new(api: Arc<ApiServer>) -> Self {
        Svc { api, _kind: PhantomData }
    }
}

fn fence_of<T>(req: &Request<T>) -> Result<Option<Fence>, Status> {
    match req.metadata().get(FENCE_HEADER) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().map_err(|_| Status::invalid_argument(format!("{FENCE_HEADER} header is not text")))?;
            Ok(Some(Fence::parse(s).map_err(Status::invalid_argument)?))
        }
    }
}

fn selector(s: &str, what: &str) -> Result<Selector, ApiError> {
    Selector::parse(s).map_err(|e| ApiError::BadRequest(format!("invalid {what} selector {s:?}: {e}")))
}

fn list_options(r: ListRequest) -> Result<ListOptions, ApiError> {
    if r.limit < 0 {
        return Err(ApiError::BadRequest(format!("limit {} must not be negative", r.limit)));
    }
    Ok(ListOptions {
        namespace: r.namespace,
        labels: selector(&r.label_selector, "label")?,
        fields: selector(&r.field_selector, "field")?,
        limit: r.limit,
        continue_token: r.r#continue,
        resource_version: r.resource_version,
    })
}

fn watch_options(r: &WatchRequest) -> Result<ListOptions, ApiError> {
    Ok(ListOptions {
        namespace: r.namespace.clone(),
        labels: selector(&r.label_selector, "label")?,
        fields: selector(&r.field_selector, "field")?,
        resource_version: r.resource_version.clone(),
        ..Default::default()
    })
}

fn delete_options(r: &DeleteRequest) -> Result<DeleteOptions, ApiError> {
    if r.grace_period_seconds.is_some_and(|g| g < 0) {
        return Err(ApiError::BadRequest("gracePeriodSeconds must not be negative".into()));
    }
    let pre = r.preconditions.clone().unwrap_or_default();
    Ok(DeleteOptions {
        grace_period_seconds: r.grace_period_seconds,
        propagation: Propagation::parse(&r.propagation_policy)?,
        precondition_uid: pre.uid,
        precondition_rv: pre.resource_version,
    })
}

impl ApiServer {
    fn start_watch<K: Kind>(
        self: &Arc<Self>,
        r: WatchRequest,
    ) -> Result<ReceiverStream<Result<K::WatchEvent, Status>>, Status> {
        let opts = watch_options(&r)?;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        tokio::spawn(self.clone().watch::<K>(opts, r.allow_bookmarks, tx));
        Ok(ReceiverStream::new(rx))
    }
}

macro_rules! service {
    ($module:ident :: $trait:ident, $ty:ident { $($extra:tt)* }) => {
        #[tonic::async_trait]
        impl pb::$module::$trait for Svc<$ty> {
            async fn create(&self, req: Request<$ty>) -> Result<Response<$ty>, Status> {
                let fence = fence_of(&req)?;
                Ok(Response::new(self.api.create(req.into_inner(), fence.as_ref()).await?))
            }

            async fn get(&self, req: Request<GetRequest>) -> Result<Response<$ty>, Status> {
                let r = req.into_inner();
                Ok(Response::new(self.api.get::<$ty>(&r.namespace, &r.name).await?))
            }

            async fn list(&self, req: Request<ListRequest>) -> Result<Response<<$ty as Object>::List>, Status> {
                let opts = list_options(req.into_inner())?;
                let (items, meta) = self.api.list::<$ty>(&opts).await?;
                Ok(Response::new(<$ty as Object>::make_list(items, meta)))
            }

            async fn update(&self, req: Request<$ty>) -> Result<Response<$ty>, Status> {
                let fence = fence_of(&req)?;
                Ok(Response::new(self.api.update(req.into_inner(), false, fence.as_ref()).await?))
            }

            async fn update_status(&self, req: Request<$ty>) -> Result<Response<$ty>, Status> {
                let fence = fence_of(&req)?;
                Ok(Response::new(self.api.update(req.into_inner(), true, fence.as_ref()).await?))
            }

            async fn patch(&self, req: Request<PatchRequest>) -> Result<Response<$ty>, Status> {
                let fence = fence_of(&req)?;
                let r = req.into_inner();
                let status = match r.subresource.as_str() {
                    "" => false,
                    "status" => true,
                    other => return Err(Status::invalid_argument(format!("unknown subresource {other:?}: want \"\" or \"status\""))),
                };
                Ok(Response::new(self.api.patch::<$ty>(&r.namespace, &r.name, &r.patch, status, fence.as_ref()).await?))
            }

            async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<$ty>, Status> {
                let fence = fence_of(&req)?;
                let r = req.into_inner();
                let opts = delete_options(&r)?;
                Ok(Response::new(self.api.delete::<$ty>(&r.namespace, &r.name, &opts, fence.as_ref()).await?))
            }

            type WatchStream = ReceiverStream<Result<<$ty as Object>::WatchEvent, Status>>;

            async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
                Ok(Response::new(self.api.start_watch::<$ty>(req.into_inner())?))
            }

            $($extra)*
        }
    };
}

service!(namespaces_server::Namespaces, Namespace {});
service!(replica_sets_server::ReplicaSets, ReplicaSet {});
service!(services_server::Services, Service {});
service!(endpoints_service_server::EndpointsService, Endpoints {});
service!(nodes_server::Nodes, Node {});
service!(config_maps_server::ConfigMaps, ConfigMap {});
service!(leases_server::Leases, Lease {});
service!(events_server::Events, Event {});
service!(deployments_server::Deployments, Deployment {
    async fn scale(&self, req: Request<ScaleRequest>) -> Result<Response<Deployment>, Status> {
        let fence = fence_of(&req)?;
        let r = req.into_inner();
        Ok(Response::new(self.api.scale(&r.namespace, &r.name, r.replicas, fence.as_ref()).await?))
    }
});
service!(pods_server::Pods, Pod {
    async fn bind(&self, req: Request<BindRequest>) -> Result<Response<Pod>, Status> {
        let fence = fence_of(&req)?;
        let r = req.into_inner();
        Ok(Response::new(self.api.bind(&r.namespace, &r.name, &r.node_name, &r.uid, fence.as_ref()).await?))
    }

    type LogsStream = ReceiverStream<Result<LogChunk, Status>>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let mut kubelet = kubelet_of_pod(&self.api, &r.namespace, &r.name, "no logs").await?;
        Ok(Response::new(relay(kubelet.logs(r).await?.into_inner())))
    }

    type ExecStream = ReceiverStream<Result<ExecOutput, Status>>;

    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<Self::ExecStream>, Status> {
        let r = req.into_inner();
        if r.command.is_empty() {
            return Err(ApiError::BadRequest("exec needs a command".into()).into());
        }
        let mut kubelet = kubelet_of_pod(&self.api, &r.namespace, &r.name, "nothing to exec in").await?;
        Ok(Response::new(relay(kubelet.exec(r).await?.into_inner())))
    }
});

/// A client of the kubelet that runs pod `namespace/name` (its node's InternalIP and kubelet
/// port). `unscheduled` says what an unscheduled pod lacks.
async fn kubelet_of_pod(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    unscheduled: &str,
) -> Result<pb::kubelet_client::KubeletClient<tonic::transport::Channel>, Status> {
    let pod = api.get::<Pod>(namespace, name).await?;
    let node = pod.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!("pod {name:?} is not scheduled to a node yet: {unscheduled}")).into());
    }
    let unavailable = |why: String| Status::from(ApiError::Unavailable(why));
    let n = api.get::<Node>("", &node).await?;
    let st = n.status.unwrap_or_default();
    let ip = st.addresses.iter().find(|a| a.r#type == "InternalIP").map(|a| a.address.clone());
    let port = st.daemon_endpoints.and_then(|d| d.kubelet_endpoint).map(|e| e.port).filter(|p| *p > 0);
    let (Some(ip), Some(port)) = (ip, port) else {
        return Err(unavailable(format!("node {node:?} reports no kubelet endpoint")));
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{ip}:{port}"))
        .map_err(|e| unavailable(format!("node {node:?} kubelet address: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel =
        endpoint.connect().await.map_err(|e| unavailable(format!("kubelet of node {node:?} is unreachable: {e}")))?;
    Ok(pb::kubelet_client::KubeletClient::new(channel))
}

/// Relays a kubelet's stream to the API's client; the upstream is dropped when the client goes.
fn relay<T: Send + 'static>(mut upstream: tonic::Streaming<T>) -> ReceiverStream<Result<T, Status>> {
    let (tx, rx) = mpsc::channel(WATCH_QUEUE);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                m = upstream.message() => match m {
                    Ok(Some(item)) => if tx.send(Ok(item)).await.is_err() { break },
                    Ok(None) => break,
                    Err(status) => { let _ = tx.send(Err(status)).await; break }
                },
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Every rkube.v1 service, for the API listener.
pub fn router(api: Arc<ApiServer>, max_message: usize) -> tonic::service::Routes {
    macro_rules! add {
        ($routes:expr, $($module:ident::$server:ident<$ty:ident>),*) => {
            $routes$(.add_service(pb::$module::$server::new(Svc::<$ty>::new(api.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(64 << 20)))*
        };
    }
    let routes = tonic::service::Routes::default();
    add!(
        routes,
        namespaces_server::NamespacesServer<Namespace>,
        pods_server::PodsServer<Pod>,
        replica_sets_server::ReplicaSetsServer<ReplicaSet>,
        deployments_server::DeploymentsServer<Deployment>,
        services_server::ServicesServer<Service>,
        endpoints_service_server::EndpointsServiceServer<Endpoints>,
        nodes_server::NodesServer<Node>,
        config_maps_server::ConfigMapsServer<ConfigMap>,
        leases_server::LeasesServer<Lease>,
        events_server::EventsServer<Event>
    )
}
