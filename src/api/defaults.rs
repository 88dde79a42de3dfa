//! Defaulting, as Kubernetes does it before validation: what a user may leave out of a
//! manifest and what the stored object then says.

use super::v1::*;
use super::Object;

pub trait Defaults: Object {
    fn apply_defaults(&mut self) {}
}

pub const DEFAULT_GRACE_SECONDS: i64 = 30;
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

fn default_probe(p: &mut Option<Probe>) {
    if let Some(p) = p {
        if p.timeout_seconds == 0 {
            p.timeout_seconds = 1;
        }
        if p.period_seconds == 0 {
            p.period_seconds = 10;
        }
        if p.success_threshold == 0 {
            p.success_threshold = 1;
        }
        if p.failure_threshold == 0 {
            p.failure_threshold = 3;
        }
        if let Some(h) = &mut p.http_get {
            if h.path.is_empty() {
                h.path = "/".into();
            }
            if h.scheme.is_empty() {
                h.scheme = "HTTP".into();
            }
        }
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`, as Kubernetes defaults it.
pub fn default_pull_policy(image: &str) -> &'static str {
    let name = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match name.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

pub fn default_pod_spec(s: &mut PodSpec) {
    if s.restart_policy.is_empty() {
        s.restart_policy = "Always".into();
    }
    if s.termination_grace_period_seconds.is_none() {
        s.termination_grace_period_seconds = Some(DEFAULT_GRACE_SECONDS);
    }
    if s.scheduler_name.is_empty() {
        s.scheduler_name = "default-scheduler".into();
    }
    for c in &mut s.containers {
        if c.image_pull_policy.is_empty() {
            c.image_pull_policy = default_pull_policy(&c.image).into();
        }
        for p in &mut c.ports {
            if p.protocol.is_empty() {
                p.protocol = "TCP".into();
            }
        }
        default_probe(&mut c.liveness_probe);
        default_probe(&mut c.readiness_probe);
        default_probe(&mut c.startup_probe);
    }
    // The DefaultTolerationSeconds admission plugin: pods stay 5 minutes on a node that stops
    // answering before they are evicted.
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        if !s.tolerations.iter().any(|t| t.key == key && t.effect == "NoExecute") {
            s.tolerations.push(Toleration {
                key: key.into(),
                operator: "Exists".into(),
                value: String::new(),
                effect: "NoExecute".into(),
                toleration_seconds: Some(DEFAULT_TOLERATION_SECONDS),
            });
        }
    }
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(s: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in &s.containers {
        let r = c.resources.clone().unwrap_or_default();
        if !r.requests.is_empty() || !r.limits.is_empty() {
            any = true;
        }
        for res in ["cpu", "memory"] {
            match (r.limits.get(res), r.requests.get(res)) {
                (Some(l), Some(q)) if l == q => {}
                (Some(_), None) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

impl Defaults for Pod {
    fn apply_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_pod_spec(spec);
        // Kubernetes copies limits into unset requests.
        for c in &mut spec.containers {
            if let Some(r) = &mut c.resources {
                for (k, v) in r.limits.clone() {
                    r.requests.entry(k).or_insert(v);
                }
            }
        }
    }
}

fn default_template(t: &mut Option<PodTemplateSpec>) {
    if let Some(t) = t {
        default_pod_spec(t.spec.get_or_insert_with(Default::default));
    }
}

impl Defaults for ReplicaSet {
    fn apply_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        default_template(&mut spec.template);
    }
}

impl Defaults for Deployment {
    fn apply_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        let strategy = spec.strategy.get_or_insert_with(Default::default);
        if strategy.r#type.is_empty() {
            strategy.r#type = "RollingUpdate".into();
        }
        if strategy.r#type == "RollingUpdate" {
            let ru = strategy.rolling_update.get_or_insert_with(Default::default);
            if ru.max_surge.is_empty() {
                ru.max_surge = "25%".into();
            }
            if ru.max_unavailable.is_empty() {
                ru.max_unavailable = "25%".into();
            }
        }
        default_template(&mut spec.template);
    }
}

impl Defaults for Service {
    fn apply_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.r#type.is_empty() {
            spec.r#type = "ClusterIP".into();
        }
        if spec.session_affinity.is_empty() {
            spec.session_affinity = "None".into();
        }
        for p in &mut spec.ports {
            if p.protocol.is_empty() {
                p.protocol = "TCP".into();
            }
            if p.target_port.is_empty() || p.target_port == "0" {
                p.target_port = p.port.to_string();
            }
        }
    }
}

impl Defaults for Namespace {
    // The `kubernetes` finalizer is set on create only (apiserver hooks): the namespace
    // controller removes it when the namespace is empty, and defaulting must not put it back.
    fn apply_defaults(&mut self) {
        let status = self.status.get_or_insert_with(Default::default);
        if status.phase.is_empty() {
            status.phase = "Active".into();
        }
    }
}

impl Defaults for Node {}
impl Defaults for ConfigMap {}
impl Defaults for Endpoints {}
impl Defaults for Lease {}
impl Defaults for Event {
    fn apply_defaults(&mut self) {
        if self.count == 0 {
            self.count = 1;
        }
        if self.r#type.is_empty() {
            self.r#type = "Normal".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_deployment_gets_kubernetes_defaults() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "httpd"}]}}}
        }))
        .expect("parses");
        d.apply_defaults();
        let s = d.spec.as_ref().expect("spec");
        assert_eq!(s.replicas, Some(1));
        assert_eq!(s.revision_history_limit, Some(10));
        let ru = s.strategy.as_ref().and_then(|st| st.rolling_update.as_ref()).expect("rolling update");
        assert_eq!((ru.max_surge.as_str(), ru.max_unavailable.as_str()), ("25%", "25%"));
        let pod = s.template.as_ref().and_then(|t| t.spec.as_ref()).expect("pod spec");
        assert_eq!(pod.restart_policy, "Always");
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
        assert_eq!(pod.containers[0].image_pull_policy, "Always");
        assert_eq!(pod.tolerations.len(), 2);
    }

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("httpd"), "Always");
        assert_eq!(default_pull_policy("httpd:latest"), "Always");
        assert_eq!(default_pull_policy("httpd:2.4"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/httpd"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/httpd:1"), "IfNotPresent");
    }
}
