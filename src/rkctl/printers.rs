//! The columns of `rkctl get` for every kind, as kubectl prints them, and the derived values
//! in them: a pod's STATUS (Running, ContainerCreating, CrashLoopBackOff, Terminating, …), its
//! READY and RESTARTS, a node's STATUS with SchedulingDisabled, a service's PORT(S).

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::api::time::{human_age, parse};
use crate::api::v1::*;
use crate::api::Object;

/// A kind that `rkctl get` can print as a table row.
pub trait Printable: Object {
    /// The column headers; the first is always NAME.
    fn columns(wide: bool) -> Vec<&'static str>;
    /// One row, the same length as [`Printable::columns`].
    fn cells(&self, wide: bool, now: SystemTime) -> Vec<String>;
}

/// How long before `now` the timestamp `ts` was, as kubectl prints it (`<unknown>` if unset).
pub fn age_at(ts: &str, now: SystemTime) -> String {
    match parse(ts) {
        Some(t) => human_age(now.duration_since(t).unwrap_or_default()),
        None => "<unknown>".into(),
    }
}

fn age(o: &impl Object, now: SystemTime) -> String {
    age_at(&o.meta().creation_timestamp, now)
}

/// `a=1,b=2`, or `<none>`.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        "<none>".into()
    } else {
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

fn none_if_empty(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// A pod's STATUS column, derived as kubectl derives it: the phase (or the status reason),
/// overridden by a container's waiting or terminated reason, `Terminating` once the pod has a
/// deletion timestamp.
pub fn pod_status(pod: &Pod) -> String {
    let st = pod.status.clone().unwrap_or_default();
    let mut reason = if st.reason.is_empty() { st.phase.clone() } else { st.reason.clone() };
    if let Some(c) = st
        .conditions
        .iter()
        .find(|c| c.r#type == "PodScheduled" && c.status == "False" && c.reason == "SchedulingGated")
    {
        reason = c.reason.clone();
    }
    let mut has_running = false;
    for c in st.container_statuses.iter().rev() {
        let state = c.state.clone().unwrap_or_default();
        match (&state.waiting, &state.terminated) {
            (Some(w), _) if !w.reason.is_empty() => reason = w.reason.clone(),
            (_, Some(t)) if !t.reason.is_empty() => reason = t.reason.clone(),
            (_, Some(t)) if t.signal != 0 => reason = format!("Signal:{}", t.signal),
            (_, Some(t)) => reason = format!("ExitCode:{}", t.exit_code),
            _ => {
                if c.ready && state.running.is_some() {
                    has_running = true;
                }
            }
        }
    }
    if reason == "Completed" && has_running {
        let ready = st.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True");
        reason = if ready { "Running".into() } else { "NotReady".into() };
    }
    if !pod.meta().deletion_timestamp.is_empty() {
        reason = if st.reason == "NodeLost" { "Unknown".into() } else { "Terminating".into() };
    }
    if reason.is_empty() {
        reason = "Pending".into();
    }
    reason
}

/// READY: containers ready and running, out of the pod's containers.
pub fn pod_ready(pod: &Pod) -> String {
    let total = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let ready = pod.status.as_ref().map_or(0, |s| {
        s.container_statuses.iter().filter(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some())).count()
    });
    format!("{ready}/{total}")
}

/// RESTARTS: the sum over containers, with how long ago the last one restarted.
pub fn pod_restarts(pod: &Pod, now: SystemTime) -> String {
    let statuses = pod.status.as_ref().map(|s| s.container_statuses.as_slice()).unwrap_or_default();
    let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
    let last = statuses
        .iter()
        .filter_map(|c| c.last_state.as_ref()?.terminated.as_ref())
        .filter_map(|t| parse(&t.finished_at))
        .max();
    match last {
        Some(t) if restarts > 0 => {
            format!("{restarts} ({} ago)", human_age(now.duration_since(t).unwrap_or_default()))
        }
        _ => restarts.to_string(),
    }
}

impl Printable for Pod {
    fn columns(wide: bool) -> Vec<&'static str> {
        let mut c = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
        if wide {
            c.extend(["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]);
        }
        c
    }
    fn cells(&self, wide: bool, now: SystemTime) -> Vec<String> {
        let mut row =
            vec![self.meta().name.clone(), pod_ready(self), pod_status(self), pod_restarts(self, now), age(self, now)];
        if wide {
            let st = self.status.clone().unwrap_or_default();
            let spec = self.spec.clone().unwrap_or_default();
            row.extend([
                none_if_empty(&st.pod_ip),
                none_if_empty(&spec.node_name),
                none_if_empty(&st.nominated_node_name),
                "<none>".into(),
            ]);
        }
        row
    }
}

fn template_wide(t: Option<&PodTemplateSpec>, selector: Option<&LabelSelector>) -> Vec<String> {
    let containers = t.and_then(|t| t.spec.as_ref()).map(|s| s.containers.clone()).unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers.iter().map(|c| c.image.as_str()).collect();
    let sel = selector
        .and_then(|s| crate::api::selector::Selector::from_label_selector(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    vec![names.join(","), images.join(","), none_if_empty(&sel)]
}

impl Printable for Deployment {
    fn columns(wide: bool) -> Vec<&'static str> {
        let mut c = vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"];
        if wide {
            c.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
        }
        c
    }
    fn cells(&self, wide: bool, now: SystemTime) -> Vec<String> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let mut row = vec![
            self.meta().name.clone(),
            format!("{}/{}", st.ready_replicas, spec.replicas.unwrap_or(1)),
            st.updated_replicas.to_string(),
            st.available_replicas.to_string(),
            age(self, now),
        ];
        if wide {
            row.extend(template_wide(spec.template.as_ref(), spec.selector.as_ref()));
        }
        row
    }
}

impl Printable for ReplicaSet {
    fn columns(wide: bool) -> Vec<&'static str> {
        let mut c = vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"];
        if wide {
            c.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
        }
        c
    }
    fn cells(&self, wide: bool, now: SystemTime) -> Vec<String> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let mut row = vec![
            self.meta().name.clone(),
            spec.replicas.unwrap_or(1).to_string(),
            st.replicas.to_string(),
            st.ready_replicas.to_string(),
            age(self, now),
        ];
        if wide {
            row.extend(template_wide(spec.template.as_ref(), spec.selector.as_ref()));
        }
        row
    }
}

/// PORT(S): `80/TCP`, `80:30080/TCP` for a node port, comma-separated; `<none>` without ports.
pub fn service_ports(spec: &ServiceSpec) -> String {
    if spec.ports.is_empty() {
        return "<none>".into();
    }
    let proto = |p: &ServicePort| if p.protocol.is_empty() { "TCP".to_string() } else { p.protocol.clone() };
    spec.ports
        .iter()
        .map(|p| {
            if p.node_port != 0 {
                format!("{}:{}/{}", p.port, p.node_port, proto(p))
            } else {
                format!("{}/{}", p.port, proto(p))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Printable for Service {
    fn columns(wide: bool) -> Vec<&'static str> {
        let mut c = vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"];
        if wide {
            c.push("SELECTOR");
        }
        c
    }
    fn cells(&self, wide: bool, now: SystemTime) -> Vec<String> {
        let spec = self.spec.clone().unwrap_or_default();
        let external = if spec.external_ips.is_empty() { "<none>".into() } else { spec.external_ips.join(",") };
        let mut row = vec![
            self.meta().name.clone(),
            if spec.r#type.is_empty() { "ClusterIP".into() } else { spec.r#type.clone() },
            none_if_empty(&spec.cluster_ip),
            external,
            service_ports(&spec),
            age(self, now),
        ];
        if wide {
            row.push(labels_text(&spec.selector));
        }
        row
    }
}

/// ENDPOINTS: `ip:port` pairs, at most three, then `+ N more...`; `<none>` when empty.
pub fn endpoints_text(ep: &Endpoints) -> String {
    let mut all = Vec::new();
    for s in &ep.subsets {
        for a in &s.addresses {
            if s.ports.is_empty() {
                all.push(a.ip.clone());
            }
            for p in &s.ports {
                all.push(format!("{}:{}", a.ip, p.port));
            }
        }
    }
    match all.len() {
        0 => "<none>".into(),
        1..=3 => all.join(","),
        n => format!("{} + {} more...", all[..3].join(","), n - 3),
    }
}

impl Printable for Endpoints {
    fn columns(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "ENDPOINTS", "AGE"]
    }
    fn cells(&self, _wide: bool, now: SystemTime) -> Vec<String> {
        vec![self.meta().name.clone(), endpoints_text(self), age(self, now)]
    }
}

/// A node's STATUS: its Ready condition (`Ready`, `NotReady`, `Unknown`), then
/// `SchedulingDisabled` when it is cordoned.
pub fn node_status(node: &Node) -> String {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
        .map(|c| match c.status.as_str() {
            "True" => "Ready",
            "False" => "NotReady",
            _ => "Unknown",
        })
        .unwrap_or("Unknown");
    let mut out = vec![ready];
    if node.spec.as_ref().is_some_and(|s| s.unschedulable) {
        out.push("SchedulingDisabled");
    }
    out.join(",")
}

/// ROLES: from `node-role.kubernetes.io/<role>` labels (and the older `kubernetes.io/role`).
pub fn node_roles(node: &Node) -> String {
    let mut roles: Vec<String> = Vec::new();
    for (k, v) in &node.meta().labels {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.push(role.to_string());
            }
        } else if k == "kubernetes.io/role" && !v.is_empty() {
            roles.push(v.clone());
        }
    }
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

impl Printable for Node {
    fn columns(wide: bool) -> Vec<&'static str> {
        let mut c = vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"];
        if wide {
            c.extend(["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]);
        }
        c
    }
    fn cells(&self, wide: bool, now: SystemTime) -> Vec<String> {
        let st = self.status.clone().unwrap_or_default();
        let info = st.node_info.clone().unwrap_or_default();
        let mut row = vec![
            self.meta().name.clone(),
            node_status(self),
            node_roles(self),
            age(self, now),
            none_if_empty(&info.kubelet_version),
        ];
        if wide {
            let addr = |t: &str| {
                st.addresses.iter().find(|a| a.r#type == t).map(|a| a.address.clone()).unwrap_or("<none>".into())
            };
            row.extend([
                addr("InternalIP"),
                addr("ExternalIP"),
                none_if_empty(&info.os_image),
                none_if_empty(&info.kernel_version),
                none_if_empty(&info.container_runtime_version),
            ]);
        }
        row
    }
}

impl Printable for Namespace {
    fn columns(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "STATUS", "AGE"]
    }
    fn cells(&self, _wide: bool, now: SystemTime) -> Vec<String> {
        let phase = self.status.as_ref().map(|s| s.phase.clone()).unwrap_or_default();
        vec![self.meta().name.clone(), phase, age(self, now)]
    }
}

impl Printable for ConfigMap {
    fn columns(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "DATA", "AGE"]
    }
    fn cells(&self, _wide: bool, now: SystemTime) -> Vec<String> {
        vec![self.meta().name.clone(), self.data.len().to_string(), age(self, now)]
    }
}

impl Printable for Lease {
    fn columns(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "HOLDER", "AGE"]
    }
    fn cells(&self, _wide: bool, now: SystemTime) -> Vec<String> {
        let holder = self.spec.as_ref().map(|s| s.holder_identity.clone()).unwrap_or_default();
        vec![self.meta().name.clone(), holder, age(self, now)]
    }
}

/// When an event was last seen: its lastTimestamp, else firstTimestamp, else its creation.
pub fn event_last_seen(e: &Event, now: SystemTime) -> String {
    let ts = [&e.last_timestamp, &e.first_timestamp, &e.meta().creation_timestamp]
        .into_iter()
        .find(|t| !t.is_empty())
        .cloned()
        .unwrap_or_default();
    age_at(&ts, now)
}

impl Printable for Event {
    /// Events have no NAME column; the name is kept as the first cell for `-o name` and
    /// `kind/name` prefixes and dropped when printed (see [`Printable`] users).
    fn columns(wide: bool) -> Vec<&'static str> {
        let mut c = vec!["LAST SEEN", "TYPE", "REASON", "OBJECT"];
        if wide {
            c.extend(["SUBOBJECT", "SOURCE"]);
        }
        c.push("MESSAGE");
        if wide {
            c.extend(["FIRST SEEN", "COUNT", "NAME"]);
        }
        c
    }
    fn cells(&self, wide: bool, now: SystemTime) -> Vec<String> {
        let o = self.involved_object.clone().unwrap_or_default();
        let mut row = vec![
            event_last_seen(self, now),
            self.r#type.clone(),
            self.reason.clone(),
            format!("{}/{}", o.kind.to_ascii_lowercase(), o.name),
        ];
        if wide {
            let src = self.source.clone().unwrap_or_default();
            let source = if src.host.is_empty() { src.component } else { format!("{}, {}", src.component, src.host) };
            row.extend([o.field_path.clone(), source]);
        }
        row.push(self.message.trim().to_string());
        if wide {
            row.extend([age_at(&self.first_timestamp, now), self.count.to_string(), self.meta().name.clone()]);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs_ago: u64) -> String {
        crate::api::time::format(SystemTime::now() - Duration::from_secs(secs_ago))
    }

    fn pod(phase: &str, statuses: Vec<ContainerStatus>) -> Pod {
        let mut p = Pod {
            spec: Some(PodSpec {
                containers: vec![Container { name: "c".into(), image: "img".into(), ..Default::default() }],
                ..Default::default()
            }),
            status: Some(PodStatus { phase: phase.into(), container_statuses: statuses, ..Default::default() }),
            ..Default::default()
        };
        p.meta_mut().name = "p".into();
        p.meta_mut().creation_timestamp = at(30);
        p
    }

    fn waiting(reason: &str, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            restart_count: restarts,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting { reason: reason.into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running(ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            ready,
            state: Some(ContainerState { running: Some(Default::default()), ..Default::default() }),
            ..Default::default()
        }
    }

    fn terminated(reason: &str, code: i32, signal: i32) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    reason: reason.into(),
                    exit_code: code,
                    signal,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_status_is_derived_as_kubectl_derives_it() {
        let cases: Vec<(&str, Pod, &str, &str)> = vec![
            ("new pod", pod("Pending", vec![]), "Pending", "0/1"),
            ("creating", pod("Pending", vec![waiting("ContainerCreating", 0)]), "ContainerCreating", "0/1"),
            ("pulling failed", pod("Pending", vec![waiting("ErrImagePull", 0)]), "ErrImagePull", "0/1"),
            ("crash looping", pod("Running", vec![waiting("CrashLoopBackOff", 4)]), "CrashLoopBackOff", "0/1"),
            ("running", pod("Running", vec![running(true)]), "Running", "1/1"),
            ("running, not ready", pod("Running", vec![running(false)]), "Running", "0/1"),
            ("completed", pod("Succeeded", vec![terminated("Completed", 0, 0)]), "Completed", "0/1"),
            ("failed", pod("Failed", vec![terminated("Error", 1, 0)]), "Error", "0/1"),
            ("no reason, code", pod("Failed", vec![terminated("", 3, 0)]), "ExitCode:3", "0/1"),
            ("no reason, signal", pod("Failed", vec![terminated("", 0, 9)]), "Signal:9", "0/1"),
            ("no status at all", Pod { spec: pod("", vec![]).spec, ..Default::default() }, "Pending", "0/1"),
        ];
        for (what, p, status, ready) in cases {
            assert_eq!(pod_status(&p), status, "{what}");
            assert_eq!(pod_ready(&p), ready, "{what}");
        }
        let mut p = pod("Running", vec![running(true)]);
        p.meta_mut().deletion_timestamp = at(0);
        assert_eq!(pod_status(&p), "Terminating");
        let mut p = pod("Running", vec![running(true)]);
        p.status.as_mut().expect("status").reason = "Evicted".into();
        p.status.as_mut().expect("status").container_statuses.clear();
        assert_eq!(pod_status(&p), "Evicted");
    }

    #[test]
    fn restarts_say_when_the_last_one_was() {
        let mut c = waiting("CrashLoopBackOff", 3);
        c.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated { finished_at: at(125), ..Default::default() }),
            ..Default::default()
        });
        let p = pod("Running", vec![c]);
        assert_eq!(pod_restarts(&p, SystemTime::now()), "3 (2m5s ago)");
        assert_eq!(pod_restarts(&pod("Running", vec![waiting("x", 2)]), SystemTime::now()), "2");
        assert_eq!(pod_restarts(&pod("Pending", vec![]), SystemTime::now()), "0");
    }

    #[test]
    fn rows_have_one_cell_per_column() {
        let now = SystemTime::now();
        let p = pod("Running", vec![running(true)]);
        for wide in [false, true] {
            assert_eq!(p.cells(wide, now).len(), Pod::columns(wide).len());
            assert_eq!(Deployment::default().cells(wide, now).len(), Deployment::columns(wide).len());
            assert_eq!(ReplicaSet::default().cells(wide, now).len(), ReplicaSet::columns(wide).len());
            assert_eq!(Service::default().cells(wide, now).len(), Service::columns(wide).len());
            assert_eq!(Node::default().cells(wide, now).len(), Node::columns(wide).len());
            assert_eq!(Event::default().cells(wide, now).len(), Event::columns(wide).len());
        }
        assert_eq!(p.cells(false, now), ["p", "1/1", "Running", "0", "30s"]);
        assert_eq!(p.cells(true, now)[5..], ["<none>", "<none>", "<none>", "<none>"]);
    }

    #[test]
    fn nodes_show_readiness_cordoning_and_roles() {
        let mut n = Node::default();
        assert_eq!(node_status(&n), "Unknown");
        n.status = Some(NodeStatus {
            conditions: vec![NodeCondition { r#type: "Ready".into(), status: "True".into(), ..Default::default() }],
            ..Default::default()
        });
        assert_eq!(node_status(&n), "Ready");
        n.spec = Some(NodeSpec { unschedulable: true, ..Default::default() });
        assert_eq!(node_status(&n), "Ready,SchedulingDisabled");
        assert_eq!(node_roles(&n), "<none>");
        n.meta_mut().labels.insert("node-role.kubernetes.io/control-plane".into(), "".into());
        assert_eq!(node_roles(&n), "control-plane");
    }

    #[test]
    fn services_and_endpoints_print_their_ports() {
        let spec = ServiceSpec {
            ports: vec![
                ServicePort { port: 80, protocol: "TCP".into(), ..Default::default() },
                ServicePort { port: 53, node_port: 30053, protocol: "UDP".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        assert_eq!(service_ports(&spec), "80/TCP,53:30053/UDP");
        assert_eq!(service_ports(&ServiceSpec::default()), "<none>");
        let addr = |ip: &str| EndpointAddress { ip: ip.into(), ..Default::default() };
        let mut ep = Endpoints {
            subsets: vec![EndpointSubset {
                addresses: vec![addr("10.0.0.1"), addr("10.0.0.2")],
                ports: vec![EndpointPort { port: 80, ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(endpoints_text(&ep), "10.0.0.1:80,10.0.0.2:80");
        ep.subsets[0].addresses.extend([addr("10.0.0.3"), addr("10.0.0.4"), addr("10.0.0.5")]);
        assert_eq!(endpoints_text(&ep), "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 2 more...");
        assert_eq!(endpoints_text(&Endpoints::default()), "<none>");
    }

    #[test]
    fn events_name_their_object_in_lower_case() {
        let e = Event {
            involved_object: Some(ObjectReference { kind: "Pod".into(), name: "web-1".into(), ..Default::default() }),
            reason: "Scheduled".into(),
            r#type: "Normal".into(),
            message: "Successfully assigned default/web-1 to w1".into(),
            last_timestamp: at(65),
            ..Default::default()
        };
        assert_eq!(
            e.cells(false, SystemTime::now()),
            ["65s", "Normal", "Scheduled", "pod/web-1", "Successfully assigned default/web-1 to w1"]
        );
    }
}
