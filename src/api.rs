//! The object model: the kinds (from `proto/rkube/v1/`), what every kind has in common
//! ([`Object`]), and the pure rules about objects: defaulting, validation, selectors,
//! quantities, names. Depends only on [`crate::pb`]; the API server, the client and the
//! controllers build on it.

pub mod defaults;
pub mod fence;
pub mod int_or_string;
pub mod quantity;
pub mod selector;
pub mod time;
pub mod validation;

use std::sync::LazyLock;

pub use crate::pb::v1;
use v1::*;

/// Everything the API server needs to know about a kind to store and serve it generically.
pub trait Object:
    prost::Message + Default + Clone + PartialEq + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
    /// `Pod`
    const KIND: &'static str;
    /// `v1`, `apps/v1`, `coordination.k8s.io/v1`
    const API_VERSION: &'static str;
    /// The plural resource name: `pods`. Also the store's key segment.
    const RESOURCE: &'static str;
    const NAMESPACED: bool;

    type List: prost::Message + Default + serde::Serialize + Send + 'static;
    type WatchEvent: prost::Message + Default + Send + 'static;

    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// Sets apiVersion and kind to this kind's.
    fn set_type_meta(&mut self);
    fn make_list(items: Vec<Self>, meta: ListMeta) -> Self::List;
    fn list_items(list: Self::List) -> (Vec<Self>, ListMeta);
    fn make_event(kind: &str, object: Self) -> Self::WatchEvent;
    fn event_parts(event: Self::WatchEvent) -> (String, Self);

    /// Whether the kind has a status subresource: then updates of the object keep the stored
    /// status, and status updates keep everything else.
    fn has_status() -> bool;
    /// Replaces this object's status with `other`'s.
    fn copy_status_from(&mut self, _other: &Self) {}
    /// Whether the parts that `generation` counts (spec, for most kinds) differ.
    fn spec_differs(&self, _other: &Self) -> bool {
        false
    }
}

static EMPTY_META: LazyLock<ObjectMeta> = LazyLock::new(ObjectMeta::default);

macro_rules! object {
    ($ty:ident, $list:ident, $event:ident, $api:literal, $res:literal, namespaced: $ns:literal, status: $st:tt) => {
        impl Object for $ty {
            const KIND: &'static str = stringify!($ty);
            const API_VERSION: &'static str = $api;
            const RESOURCE: &'static str = $res;
            const NAMESPACED: bool = $ns;
            type List = $list;
            type WatchEvent = $event;

            fn meta(&self) -> &ObjectMeta {
                self.metadata.as_ref().unwrap_or(&EMPTY_META)
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                self.metadata.get_or_insert_with(Default::default)
            }
            fn set_type_meta(&mut self) {
                self.api_version = $api.to_string();
                self.kind = stringify!($ty).to_string();
            }
            fn make_list(items: Vec<Self>, meta: ListMeta) -> $list {
                $list {
                    api_version: $api.to_string(),
                    kind: concat!(stringify!($ty), "List").to_string(),
                    metadata: Some(meta),
                    items,
                }
            }
            fn list_items(list: $list) -> (Vec<Self>, ListMeta) {
                (list.items, list.metadata.unwrap_or_default())
            }
            fn make_event(kind: &str, object: Self) -> $event {
                $event { r#type: kind.to_string(), object: Some(object) }
            }
            fn event_parts(event: $event) -> (String, Self) {
                (event.r#type, event.object.unwrap_or_default())
            }
            object!(@status $st);
        }
    };
    (@status yes) => {
        fn has_status() -> bool {
            true
        }
        fn copy_status_from(&mut self, other: &Self) {
            self.status = other.status.clone();
        }
        fn spec_differs(&self, other: &Self) -> bool {
            self.spec != other.spec
        }
    };
    (@status no) => {
        fn has_status() -> bool {
            false
        }
    };
}

object!(Namespace, NamespaceList, NamespaceWatchEvent, "v1", "namespaces", namespaced: false, status: yes);
object!(Pod, PodList, PodWatchEvent, "v1", "pods", namespaced: true, status: yes);
object!(ReplicaSet, ReplicaSetList, ReplicaSetWatchEvent, "apps/v1", "replicasets", namespaced: true, status: yes);
object!(Deployment, DeploymentList, DeploymentWatchEvent, "apps/v1", "deployments", namespaced: true, status: yes);
object!(Service, ServiceList, ServiceWatchEvent, "v1", "services", namespaced: true, status: yes);
object!(Endpoints, EndpointsList, EndpointsWatchEvent, "v1", "endpoints", namespaced: true, status: no);
object!(Node, NodeList, NodeWatchEvent, "v1", "nodes", namespaced: false, status: yes);
object!(ConfigMap, ConfigMapList, ConfigMapWatchEvent, "v1", "configmaps", namespaced: true, status: no);
object!(Lease, LeaseList, LeaseWatchEvent, "coordination.k8s.io/v1", "leases", namespaced: true, status: no);
object!(Event, EventList, EventWatchEvent, "v1", "events", namespaced: true, status: no);

/// A kind as users name it on the command line and in manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub resource: &'static str,
    pub singular: &'static str,
    pub short: &'static [&'static str],
    pub namespaced: bool,
}

/// Every kind rkube serves, in the order `rkctl get all` would list them.
pub const KINDS: &[KindInfo] = &[
    info::<Pod>("pod", &["po"]),
    info::<Service>("service", &["svc"]),
    info::<Deployment>("deployment", &["deploy"]),
    info::<ReplicaSet>("replicaset", &["rs"]),
    info::<Endpoints>("endpoints", &["ep"]),
    info::<Node>("node", &["no"]),
    info::<Namespace>("namespace", &["ns"]),
    info::<ConfigMap>("configmap", &["cm"]),
    info::<Lease>("lease", &[]),
    info::<Event>("event", &["ev"]),
];

const fn info<K: Object>(singular: &'static str, short: &'static [&'static str]) -> KindInfo {
    KindInfo {
        kind: K::KIND,
        api_version: K::API_VERSION,
        resource: K::RESOURCE,
        singular,
        short,
        namespaced: K::NAMESPACED,
    }
}

/// Finds a kind by any of its names: `pods`, `pod`, `po`, `Pod`, `pods.v1`.
pub fn find_kind(name: &str) -> Option<&'static KindInfo> {
    let lower = name.to_ascii_lowercase();
    let base = lower.split('.').next().unwrap_or_default();
    KINDS.iter().find(|k| {
        k.resource == base || k.singular == base || k.kind.eq_ignore_ascii_case(base) || k.short.contains(&base)
    })
}

/// The store key of an object: `/registry/<resource>/<namespace>/<name>`, or
/// `/registry/<resource>/<name>` for cluster-scoped kinds.
pub fn key_of(resource: &str, namespace: &str, name: &str) -> Vec<u8> {
    if namespace.is_empty() {
        format!("/registry/{resource}/{name}").into_bytes()
    } else {
        format!("/registry/{resource}/{namespace}/{name}").into_bytes()
    }
}

/// The key prefix of every object of a resource in `namespace` (all namespaces when empty).
pub fn prefix_of(resource: &str, namespace: &str) -> Vec<u8> {
    if namespace.is_empty() {
        format!("/registry/{resource}/").into_bytes()
    } else {
        format!("/registry/{resource}/{namespace}/").into_bytes()
    }
}

/// Namespaces that exist from a cluster's first start.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-node-lease", "kube-public"];

/// An object's `namespace/name` (or `name`), for messages and queues.
pub fn full_name(meta: &ObjectMeta) -> String {
    if meta.namespace.is_empty() {
        meta.name.clone()
    } else {
        format!("{}/{}", meta.namespace, meta.name)
    }
}

/// The owner reference marked as controller, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().find(|o| o.controller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_found_by_every_name_kubectl_accepts() {
        for (name, kind) in [
            ("pods", "Pod"),
            ("po", "Pod"),
            ("Pod", "Pod"),
            ("deploy", "Deployment"),
            ("deployments.apps", "Deployment"),
            ("svc", "Service"),
            ("ep", "Endpoints"),
            ("endpoints", "Endpoints"),
            ("no", "Node"),
            ("ns", "Namespace"),
            ("cm", "ConfigMap"),
            ("ev", "Event"),
            ("rs", "ReplicaSet"),
            ("leases", "Lease"),
        ] {
            assert_eq!(find_kind(name).map(|k| k.kind), Some(kind), "{name}");
        }
        assert_eq!(find_kind("widgets"), None);
    }

    #[test]
    fn manifests_use_kubernetes_json_names() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "httpd", "ports": [{"containerPort": 80}]}],
                     "nodeName": "w1", "terminationGracePeriodSeconds": 5},
            "status": {"podIP": "10.244.1.2", "hostIP": "10.0.0.1"}
        }))
        .expect("a Kubernetes pod manifest parses");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name, "w1");
        assert_eq!(spec.termination_grace_period_seconds, Some(5));
        assert_eq!(spec.containers[0].ports[0].container_port, 80);
        assert_eq!(pod.status.as_ref().expect("status").pod_ip, "10.244.1.2");
        let back = serde_json::to_value(&pod).expect("serializes");
        assert_eq!(back["status"]["podIP"], "10.244.1.2");
        assert_eq!(back["spec"]["nodeName"], "w1");
    }

    #[test]
    fn int_or_string_fields_accept_numbers_and_names() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 81, "targetPort": "http"}]}
        }))
        .expect("parses");
        let ports = &svc.spec.as_ref().expect("spec").ports;
        assert_eq!(ports[0].target_port, "8080");
        assert_eq!(ports[1].target_port, "http");
        let back = serde_json::to_value(&svc).expect("serializes");
        assert_eq!(back["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(back["spec"]["ports"][1]["targetPort"], "http");
    }
}
