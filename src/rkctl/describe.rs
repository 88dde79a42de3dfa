//! `rkctl describe`: an object as readable text, kubectl's layout (`Name:`, `Labels:`, …,
//! then the object's Events, found through the field selector `involvedObject.name/kind`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::SystemTime;

use crate::api::v1::*;
use crate::api::Object;

use super::printers::{self, age_at, Printable};

/// Lines of `key: value`, the values aligned.
#[derive(Default)]
pub struct Lines {
    rows: Vec<(usize, String, String)>,
}

impl Lines {
    pub fn field(&mut self, key: &str, value: impl Into<String>) {
        self.at(0, key, value);
    }

    pub fn at(&mut self, indent: usize, key: &str, value: impl Into<String>) {
        let v: String = value.into();
        self.rows.push((indent, format!("{key}:"), if v.is_empty() { "<none>".into() } else { v }));
    }

    /// A key and a map under it, one `k=v` per line.
    pub fn map(&mut self, indent: usize, key: &str, map: &BTreeMap<String, String>) {
        if map.is_empty() {
            self.at(indent, key, "<none>");
            return;
        }
        for (i, (k, v)) in map.iter().enumerate() {
            let k0 = if i == 0 { key } else { "" };
            let cell = format!("{k}={v}");
            if k0.is_empty() {
                self.rows.push((indent, String::new(), cell));
            } else {
                self.at(indent, k0, cell);
            }
        }
    }

    /// A heading with nothing beside it (`Containers:`).
    pub fn heading(&mut self, indent: usize, key: &str) {
        self.rows.push((indent, format!("{key}:"), String::new()));
    }

    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|(i, k, _)| i * 2 + k.len()).max().unwrap_or(0) + 2;
        let mut out = String::new();
        for (indent, k, v) in &self.rows {
            let key = format!("{}{k}", "  ".repeat(*indent));
            if v.is_empty() {
                let _ = writeln!(out, "{key}");
            } else {
                let _ = writeln!(out, "{key:<width$}{v}");
            }
        }
        out
    }
}

/// The parts of `describe` that differ between kinds.
pub trait Describe: Printable {
    fn details(&self, _l: &mut Lines) {}
}

fn containers(l: &mut Lines, cs: &[Container], statuses: &[ContainerStatus]) {
    l.heading(0, "Containers");
    for c in cs {
        l.heading(1, &c.name);
        l.at(2, "Image", c.image.clone());
        let ports: Vec<String> = c
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.container_port, if p.protocol.is_empty() { "TCP" } else { &p.protocol }))
            .collect();
        l.at(2, "Port", ports.join(", "));
        if !c.command.is_empty() {
            l.at(2, "Command", c.command.join(" "));
        }
        if !c.args.is_empty() {
            l.at(2, "Args", c.args.join(" "));
        }
        if let Some(s) = statuses.iter().find(|s| s.name == c.name) {
            let state = s.state.clone().unwrap_or_default();
            let text = if let Some(w) = &state.waiting {
                format!("Waiting ({})", w.reason)
            } else if state.running.is_some() {
                "Running".into()
            } else if let Some(t) = &state.terminated {
                format!("Terminated ({}, exit code {})", t.reason, t.exit_code)
            } else {
                "Waiting".into()
            };
            l.at(2, "State", text);
            l.at(2, "Ready", if s.ready { "True" } else { "False" });
            l.at(2, "Restart Count", s.restart_count.to_string());
        }
        let env: BTreeMap<String, String> = c.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect();
        l.map(2, "Environment", &env);
    }
}

impl Describe for Pod {
    fn details(&self, l: &mut Lines) {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        l.field("Node", spec.node_name.clone());
        l.field("Start Time", st.start_time.clone());
        l.field("Status", printers::pod_status(self));
        l.field("IP", st.pod_ip.clone());
        containers(l, &spec.containers, &st.container_statuses);
        l.heading(0, "Conditions");
        for c in &st.conditions {
            l.at(1, &c.r#type, c.status.clone());
        }
        l.field("QoS Class", st.qos_class.clone());
        l.map(0, "Node-Selectors", &spec.node_selector);
    }
}

fn selector_text(s: Option<&LabelSelector>) -> String {
    s.and_then(|s| crate::api::selector::Selector::from_label_selector(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

impl Describe for Deployment {
    fn details(&self, l: &mut Lines) {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        l.field("Selector", selector_text(spec.selector.as_ref()));
        l.field(
            "Replicas",
            format!(
                "{} desired | {} updated | {} total | {} available | {} unavailable",
                spec.replicas.unwrap_or(1),
                st.updated_replicas,
                st.replicas,
                st.available_replicas,
                st.unavailable_replicas
            ),
        );
        let strategy = spec.strategy.clone().unwrap_or_default();
        l.field("StrategyType", strategy.r#type.clone());
        if let Some(ru) = strategy.rolling_update {
            l.field(
                "RollingUpdateStrategy",
                format!("{} max unavailable, {} max surge", ru.max_unavailable, ru.max_surge),
            );
        }
        let t = spec.template.unwrap_or_default();
        l.heading(0, "Pod Template");
        l.map(1, "Labels", &t.metadata.unwrap_or_default().labels);
        containers(l, &t.spec.unwrap_or_default().containers, &[]);
        l.heading(0, "Conditions");
        for c in &st.conditions {
            l.at(1, &c.r#type, format!("{} {}", c.status, c.reason));
        }
    }
}

impl Describe for ReplicaSet {
    fn details(&self, l: &mut Lines) {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        l.field("Selector", selector_text(spec.selector.as_ref()));
        if let Some(o) = crate::api::controller_of(self.meta()) {
            l.field("Controlled By", format!("{}/{}", o.kind, o.name));
        }
        l.field("Replicas", format!("{} current / {} desired", st.replicas, spec.replicas.unwrap_or(1)));
        let t = spec.template.unwrap_or_default();
        l.heading(0, "Pod Template");
        l.map(1, "Labels", &t.metadata.unwrap_or_default().labels);
        containers(l, &t.spec.unwrap_or_default().containers, &[]);
    }
}

impl Describe for Service {
    fn details(&self, l: &mut Lines) {
        let spec = self.spec.clone().unwrap_or_default();
        l.field("Selector", printers::labels_text(&spec.selector));
        l.field("Type", spec.r#type.clone());
        l.field("IP", spec.cluster_ip.clone());
        for p in &spec.ports {
            let name = if p.name.is_empty() { "<unset>" } else { &p.name };
            l.field("Port", format!("{name}  {}/{}", p.port, p.protocol));
            l.field("TargetPort", format!("{}/{}", p.target_port, p.protocol));
            if p.node_port != 0 {
                l.field("NodePort", format!("{name}  {}/{}", p.node_port, p.protocol));
            }
        }
        l.field("Session Affinity", spec.session_affinity.clone());
    }
}

impl Describe for Node {
    fn details(&self, l: &mut Lines) {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        l.field("Roles", printers::node_roles(self));
        let taints: Vec<String> = spec
            .taints
            .iter()
            .map(|t| {
                if t.value.is_empty() {
                    format!("{}:{}", t.key, t.effect)
                } else {
                    format!("{}={}:{}", t.key, t.value, t.effect)
                }
            })
            .collect();
        l.field("Taints", taints.join(", "));
        l.field("Unschedulable", spec.unschedulable.to_string());
        l.field("PodCIDR", spec.pod_cidr.clone());
        l.heading(0, "Conditions");
        for c in &st.conditions {
            l.at(1, &c.r#type, format!("{} {} {}", c.status, c.reason, c.message).trim().to_string());
        }
        l.heading(0, "Addresses");
        for a in &st.addresses {
            l.at(1, &a.r#type, a.address.clone());
        }
        l.map(0, "Capacity", &st.capacity);
        l.map(0, "Allocatable", &st.allocatable);
    }
}

impl Describe for ConfigMap {
    fn details(&self, l: &mut Lines) {
        l.heading(0, "Data");
        for (k, v) in &self.data {
            l.at(1, k, v.clone());
        }
    }
}

impl Describe for Namespace {
    fn details(&self, l: &mut Lines) {
        l.field("Status", self.status.clone().unwrap_or_default().phase);
    }
}

impl Describe for Endpoints {
    fn details(&self, l: &mut Lines) {
        l.field("Endpoints", printers::endpoints_text(self));
    }
}

impl Describe for Lease {
    fn details(&self, l: &mut Lines) {
        let s = self.spec.clone().unwrap_or_default();
        l.field("Holder Identity", s.holder_identity.clone());
        l.field("Lease Duration Seconds", s.lease_duration_seconds.map(|d| d.to_string()).unwrap_or_default());
        l.field("Renew Time", s.renew_time.clone());
        l.field("Lease Transitions", s.lease_transitions.map(|d| d.to_string()).unwrap_or_default());
    }
}

impl Describe for Event {
    fn details(&self, l: &mut Lines) {
        let o = self.involved_object.clone().unwrap_or_default();
        l.field("Involved Object", format!("{}/{}", o.kind, o.name));
        l.field("Type", self.r#type.clone());
        l.field("Reason", self.reason.clone());
        l.field("Message", self.message.clone());
        l.field("Count", self.count.to_string());
    }
}

/// The whole `describe` text of one object, with its events (oldest first).
pub fn describe<K: Describe>(obj: &K, events: &[Event], now: SystemTime) -> String {
    let m = obj.meta();
    let mut l = Lines::default();
    l.field("Name", m.name.clone());
    if K::NAMESPACED {
        l.field("Namespace", m.namespace.clone());
    }
    l.map(0, "Labels", &m.labels);
    let annotations: BTreeMap<String, String> = m
        .annotations
        .iter()
        .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.map(0, "Annotations", &annotations);
    l.field("CreationTimestamp", m.creation_timestamp.clone());
    if !m.deletion_timestamp.is_empty() {
        l.field("DeletionTimestamp", m.deletion_timestamp.clone());
    }
    obj.details(&mut l);
    let mut out = l.render();
    out.push_str(&events_section(events, now));
    out
}

/// `Events:` and a table of Type, Reason, Age, From, Message; `Events:  <none>` when empty.
pub fn events_section(events: &[Event], now: SystemTime) -> String {
    if events.is_empty() {
        return "Events:  <none>\n".into();
    }
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| {
        if e.last_timestamp.is_empty() {
            e.meta().creation_timestamp.clone()
        } else {
            e.last_timestamp.clone()
        }
    });
    let mut t = super::Table::new(&["Type", "Reason", "Age", "From", "Message"]);
    t.push(["----", "------", "----", "----", "-------"].iter().map(|s| s.to_string()).collect());
    for e in sorted {
        let from =
            e.source.clone().map(|s| s.component).filter(|c| !c.is_empty()).unwrap_or(e.reporting_component.clone());
        let age = if e.count > 1 {
            format!("{} (x{} over {})", printers::event_last_seen(e, now), e.count, age_at(&e.first_timestamp, now))
        } else {
            printers::event_last_seen(e, now)
        };
        t.push(vec![e.r#type.clone(), e.reason.clone(), age, from, e.message.trim().to_string()]);
    }
    let mut out = String::from("Events:\n");
    for line in t.render(true).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_described_with_its_events() {
        let mut p = Pod {
            spec: Some(PodSpec {
                containers: vec![Container { name: "c".into(), image: "httpd".into(), ..Default::default() }],
                node_name: "w1".into(),
                ..Default::default()
            }),
            status: Some(PodStatus { phase: "Pending".into(), ..Default::default() }),
            ..Default::default()
        };
        p.meta_mut().name = "web".into();
        p.meta_mut().namespace = "default".into();
        p.meta_mut().labels.insert("app".into(), "web".into());
        let text = describe(&p, &[], SystemTime::now());
        for want in [
            "Name:",
            "web\n",
            "Namespace:",
            "Labels:",
            "app=web\n",
            "Node:",
            "w1\n",
            "Status:",
            "Pending\n",
            "Containers:\n  c:\n",
            "Image:",
            "httpd\n",
            "Events:  <none>\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let e = Event {
            r#type: "Normal".into(),
            reason: "Scheduled".into(),
            message: "assigned to w1".into(),
            source: Some(EventSource { component: "default-scheduler".into(), host: String::new() }),
            last_timestamp: crate::api::time::format(SystemTime::now() - std::time::Duration::from_secs(10)),
            count: 1,
            ..Default::default()
        };
        let text = describe(&p, &[e], SystemTime::now());
        assert!(
            text.ends_with("Events:\n  Type     Reason      Age    From                Message\n  ----     ------      ----   ----                -------\n  Normal   Scheduled   10s    default-scheduler   assigned to w1\n"),
            "{text}"
        );
    }
}
