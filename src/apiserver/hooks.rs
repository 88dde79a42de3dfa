//! What differs between kinds on the server: status on create, graceful deletion, unique
//! allocations, fencing records, supported field selectors. Everything else is generic.

use super::alloc::{self, AllocConfig};
use super::{fence_key, fence_record, ApiError, SideRecord};
use crate::api::defaults::{Defaults, DEFAULT_GRACE_SECONDS};
use crate::api::v1::*;
use crate::api::validation::Validate;
use crate::api::{self, Object};

/// Whether a key exists (a local read, used to pick allocations; the write's own
/// transaction is what guarantees uniqueness).
pub type Exists<'a> = &'a dyn Fn(&[u8]) -> Result<bool, ApiError>;

pub trait Kind: Object + Validate + Defaults {
    /// Status a new object starts with (clients do not set it on create).
    fn prepare_create(&mut self) {
        if Self::has_status() {
            self.copy_status_from(&Self::default());
        }
    }

    /// Picks values that must be unique across objects (a Service's ClusterIP, NodePorts).
    fn allocate(&mut self, _old: Option<&Self>, _cfg: &AllocConfig, _exists: Exists) -> Result<(), ApiError> {
        Ok(())
    }

    /// Keys written and deleted together with the object.
    fn side_records(&self) -> Vec<SideRecord> {
        Vec::new()
    }

    /// The grace period a delete starts, or `None` to delete at once.
    fn deletion_grace(&self, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Changes a delete makes beyond the deletion timestamp.
    fn mark_terminating(&mut self) {}

    /// Whether an object being deleted may now leave the store.
    fn ready_to_remove(&self) -> bool {
        let m = self.meta();
        !m.deletion_timestamp.is_empty() && m.finalizers.is_empty() && m.deletion_grace_period_seconds.unwrap_or(0) == 0
    }

    fn check_delete(_name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// The fields a field selector may use, beyond metadata.name and metadata.namespace.
    fn kind_fields() -> &'static [&'static str] {
        &[]
    }

    fn kind_field(&self, _path: &str) -> Option<String> {
        None
    }

    fn supports_field(path: &str) -> bool {
        path == "metadata.name" || path == "metadata.namespace" || Self::kind_fields().contains(&path)
    }

    fn field(&self, path: &str) -> Option<String> {
        match path {
            "metadata.name" => Some(self.meta().name.clone()),
            "metadata.namespace" => Some(self.meta().namespace.clone()),
            other => self.kind_field(other),
        }
    }
}

/// Sets (or adds) a pod condition, moving its transition time only when its status changes.
pub fn set_pod_condition(pod: &mut Pod, kind: &str, status: &str, reason: &str, message: &str) {
    let st = pod.status.get_or_insert_with(Default::default);
    let now = api::time::now();
    match st.conditions.iter_mut().find(|c| c.r#type == kind) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
        }
        None => st.conditions.push(PodCondition {
            r#type: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_probe_time: String::new(),
            last_transition_time: now,
        }),
    }
}

impl Kind for Pod {
    fn prepare_create(&mut self) {
        let qos = self.spec.as_ref().map(crate::api::defaults::qos_class).unwrap_or("BestEffort");
        self.status = Some(PodStatus { phase: "Pending".into(), qos_class: qos.into(), ..Default::default() });
        if self.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()) {
            set_pod_condition(self, "PodScheduled", "True", "", "");
        }
    }

    fn deletion_grace(&self, requested: Option<i64>) -> Option<i64> {
        let spec = self.spec.as_ref()?;
        let phase = self.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
        // Only a pod that a kubelet may be running needs time to stop.
        if spec.node_name.is_empty() || phase == "Succeeded" || phase == "Failed" {
            return None;
        }
        let g = requested.or(spec.termination_grace_period_seconds).unwrap_or(DEFAULT_GRACE_SECONDS);
        (g > 0).then_some(g)
    }

    fn kind_fields() -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]
    }

    fn kind_field(&self, path: &str) -> Option<String> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        Some(match path {
            "spec.nodeName" => spec.node_name,
            "spec.restartPolicy" => spec.restart_policy,
            "spec.schedulerName" => spec.scheduler_name,
            "status.phase" => status.phase,
            "status.podIP" => status.pod_ip,
            "status.nominatedNodeName" => status.nominated_node_name,
            _ => return None,
        })
    }
}

impl Kind for Namespace {
    fn prepare_create(&mut self) {
        self.status = Some(NamespaceStatus { phase: "Active".into() });
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.finalizers.is_empty() {
            spec.finalizers.push("kubernetes".into());
        }
    }

    fn mark_terminating(&mut self) {
        self.status.get_or_insert_with(Default::default).phase = "Terminating".into();
    }

    fn ready_to_remove(&self) -> bool {
        let m = self.meta();
        !m.deletion_timestamp.is_empty()
            && m.finalizers.is_empty()
            && self.spec.as_ref().is_none_or(|s| s.finalizers.is_empty())
    }

    fn check_delete(name: &str) -> Result<(), ApiError> {
        if api::SYSTEM_NAMESPACES.contains(&name) {
            return Err(ApiError::Forbidden(format!(
                "namespaces {name:?} is forbidden: this namespace may not be deleted"
            )));
        }
        Ok(())
    }

    fn kind_fields() -> &'static [&'static str] {
        &["status.phase"]
    }

    fn kind_field(&self, path: &str) -> Option<String> {
        (path == "status.phase").then(|| self.status.clone().unwrap_or_default().phase)
    }
}

impl Kind for Service {
    fn allocate(&mut self, old: Option<&Self>, cfg: &AllocConfig, exists: Exists) -> Result<(), ApiError> {
        let name = self.meta().name.clone();
        let old_spec = old.and_then(|o| o.spec.clone()).unwrap_or_default();
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.cluster_ip.is_empty() && !old_spec.cluster_ip.is_empty() {
            spec.cluster_ip = old_spec.cluster_ip.clone();
        }
        if spec.cluster_ip.is_empty() {
            spec.cluster_ip = alloc::pick_ip(cfg, exists)?.to_string();
        } else if spec.cluster_ip != "None" && spec.cluster_ip != old_spec.cluster_ip {
            alloc::check_ip(cfg, &spec.cluster_ip, exists, &name)?;
        }
        spec.cluster_ips = vec![spec.cluster_ip.clone()];
        if spec.r#type == "NodePort" {
            let taken_by_me: Vec<i32> = old_spec.ports.iter().map(|p| p.node_port).filter(|p| *p != 0).collect();
            let mut used: Vec<i32> = spec.ports.iter().map(|p| p.node_port).filter(|p| *p != 0).collect();
            for (i, p) in spec.ports.iter_mut().enumerate() {
                if p.node_port == 0 {
                    // Keep the port this service had at this position, if it still has one.
                    let prev = old_spec.ports.get(i).map(|o| o.node_port).filter(|n| *n != 0 && !used.contains(n));
                    p.node_port = match prev {
                        Some(n) => n,
                        None => alloc::pick_port(cfg, &used, exists)?,
                    };
                    used.push(p.node_port);
                } else if !taken_by_me.contains(&p.node_port) {
                    alloc::check_port(cfg, p.node_port, exists, &name)?;
                }
            }
        } else {
            for p in &mut spec.ports {
                p.node_port = 0;
            }
        }
        Ok(())
    }

    fn side_records(&self) -> Vec<SideRecord> {
        let owner = api::full_name(self.meta()).into_bytes();
        let mut out = Vec::new();
        if let Some(spec) = &self.spec {
            if !spec.cluster_ip.is_empty() && spec.cluster_ip != "None" {
                out.push(SideRecord { key: alloc::ip_key(&spec.cluster_ip), value: owner.clone(), exclusive: true });
            }
            for p in spec.ports.iter().filter(|p| p.node_port != 0) {
                out.push(SideRecord { key: alloc::port_key(p.node_port), value: owner.clone(), exclusive: true });
            }
        }
        out
    }
}

impl Kind for Lease {
    fn side_records(&self) -> Vec<SideRecord> {
        let spec = self.spec.clone().unwrap_or_default();
        vec![SideRecord {
            key: fence_key(&self.meta().namespace, &self.meta().name),
            value: fence_record(&spec.holder_identity, spec.lease_transitions.unwrap_or(0)),
            exclusive: false,
        }]
    }
}

impl Kind for Node {
    fn prepare_create(&mut self) {}

    fn kind_fields() -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    fn kind_field(&self, path: &str) -> Option<String> {
        (path == "spec.unschedulable").then(|| self.spec.clone().unwrap_or_default().unschedulable.to_string())
    }
}

impl Kind for Event {
    fn kind_fields() -> &'static [&'static str] {
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.fieldPath",
            "reason",
            "type",
            "source",
            "reportingComponent",
        ]
    }

    fn kind_field(&self, path: &str) -> Option<String> {
        let o = self.involved_object.clone().unwrap_or_default();
        Some(match path {
            "involvedObject.kind" => o.kind,
            "involvedObject.namespace" => o.namespace,
            "involvedObject.name" => o.name,
            "involvedObject.uid" => o.uid,
            "involvedObject.apiVersion" => o.api_version,
            "involvedObject.fieldPath" => o.field_path,
            "reason" => self.reason.clone(),
            "type" => self.r#type.clone(),
            "source" => self.source.clone().unwrap_or_default().component,
            "reportingComponent" => self.reporting_component.clone(),
            _ => return None,
        })
    }
}

impl Kind for ReplicaSet {
    fn kind_fields() -> &'static [&'static str] {
        &["status.replicas"]
    }

    fn kind_field(&self, path: &str) -> Option<String> {
        (path == "status.replicas").then(|| self.status.clone().unwrap_or_default().replicas.to_string())
    }
}

impl Kind for Deployment {}
impl Kind for Endpoints {}
impl Kind for ConfigMap {}
