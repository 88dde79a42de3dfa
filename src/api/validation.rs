//! Validation with Kubernetes' messages and field paths: every problem of an object is found
//! and reported together (`spec.replicas: Invalid value: -1: must be greater than or equal to 0`),
//! so a user fixes a manifest in one round.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::quantity;
use super::selector::Selector;
use super::v1::*;
use super::Object;

/// One problem, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    Required(String),
    /// The value as Kubernetes quotes it (strings in quotes, numbers bare) and why it is wrong.
    Invalid(String, String),
    NotSupported(String, Vec<String>),
    Duplicate(String),
    Forbidden(String),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Required(detail) if detail.is_empty() => write!(f, "{}: Required value", self.path),
            ErrorKind::Required(detail) => write!(f, "{}: Required value: {detail}", self.path),
            ErrorKind::Invalid(value, detail) => write!(f, "{}: Invalid value: {value}: {detail}", self.path),
            ErrorKind::NotSupported(value, supported) => {
                let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                write!(f, "{}: Unsupported value: {value}: supported values: {}", self.path, list.join(", "))
            }
            ErrorKind::Duplicate(value) => write!(f, "{}: Duplicate value: {value}", self.path),
            ErrorKind::Forbidden(detail) => write!(f, "{}: Forbidden: {detail}", self.path),
        }
    }
}

/// Every problem found, rendered as Kubernetes renders an Invalid status:
/// `Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: ...`.
pub fn invalid_message(kind: &str, api_version: &str, name: &str, errors: &[FieldError]) -> String {
    let group = api_version.rsplit_once('/').map(|(g, _)| format!(".{g}")).unwrap_or_default();
    let body = if errors.len() == 1 {
        errors[0].to_string()
    } else {
        format!("[{}]", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "))
    };
    format!("{kind}{group} {name:?} is invalid: {body}")
}

/// Collects errors under a path.
#[derive(Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn required(&mut self, path: impl Into<String>, detail: &str) {
        self.0.push(FieldError { path: path.into(), kind: ErrorKind::Required(detail.into()) });
    }
    pub fn invalid(&mut self, path: impl Into<String>, value: impl fmt::Debug, detail: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), kind: ErrorKind::Invalid(quote(value), detail.into()) });
    }
    pub fn invalid_num(&mut self, path: impl Into<String>, value: impl fmt::Display, detail: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), kind: ErrorKind::Invalid(value.to_string(), detail.into()) });
    }
    pub fn not_supported(&mut self, path: impl Into<String>, value: &str, supported: &[&str]) {
        self.0.push(FieldError {
            path: path.into(),
            kind: ErrorKind::NotSupported(format!("{value:?}"), supported.iter().map(|s| s.to_string()).collect()),
        });
    }
    pub fn duplicate(&mut self, path: impl Into<String>, value: &str) {
        self.0.push(FieldError { path: path.into(), kind: ErrorKind::Duplicate(format!("{value:?}")) });
    }
    pub fn forbidden(&mut self, path: impl Into<String>, detail: &str) {
        self.0.push(FieldError { path: path.into(), kind: ErrorKind::Forbidden(detail.into()) });
    }
}

fn quote(v: impl fmt::Debug) -> String {
    format!("{v:?}")
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// RFC 1123 label: at most 63 characters, lowercase alphanumerics and '-', alphanumeric ends.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    let ok = !s.is_empty() && s.chars().all(is_label_char) && !s.starts_with('-') && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(DNS1123_LABEL_MSG.into())
    }
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated labels.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    let ok = !s.is_empty() && s.split('.').all(|l| dns1123_label(l).is_ok());
    if ok {
        Ok(())
    } else {
        Err(DNS1123_SUBDOMAIN_MSG.into())
    }
}

/// DNS-1035 label (Service names): like an RFC 1123 label but starting with a letter.
pub fn dns1035_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if dns1123_label(s).is_ok() && s.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(DNS1035_LABEL_MSG.into())
    }
}

/// How a kind's names are checked.
#[derive(Clone, Copy)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
}

fn name_rule<K: Object>() -> NameRule {
    match K::RESOURCE {
        "namespaces" => NameRule::Label,
        "services" => NameRule::Dns1035,
        _ => NameRule::Subdomain,
    }
}

fn check_name(rule: NameRule, s: &str) -> Result<(), String> {
    match rule {
        NameRule::Subdomain => dns1123_subdomain(s),
        NameRule::Label => dns1123_label(s),
        NameRule::Dns1035 => dns1035_label(s),
    }
}

/// A label or annotation key: an optional DNS subdomain prefix and a name of at most 63
/// alphanumerics, '-', '_' or '.'.
fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() || dns1123_subdomain(p).is_err() {
            return Err("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
        }
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into())
    }
}

fn label_value(s: &str) -> Result<(), String> {
    let ok = s.is_empty()
        || (s.len() <= 63
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
    }
}

fn validate_labels(errs: &mut Errors, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if let Err(m) = qualified_name(k) {
            errs.invalid(path, k, m);
        }
        if let Err(m) = label_value(v) {
            errs.invalid(path, v, m);
        }
    }
}

/// Checks the metadata every object has. `name` may be empty when generateName is set (the
/// server fills it in before validating again).
pub fn validate_meta<K: Object>(obj: &K) -> Vec<FieldError> {
    let mut errs = Errors::default();
    meta_errors(&mut errs, "metadata", obj.meta(), name_rule::<K>(), K::NAMESPACED);
    errs.0
}

fn meta_errors(errs: &mut Errors, path: &str, m: &ObjectMeta, rule: NameRule, namespaced: bool) {
    if m.name.is_empty() && m.generate_name.is_empty() {
        errs.required(format!("{path}.name"), "name or generateName is required");
    } else if !m.name.is_empty() {
        if let Err(msg) = check_name(rule, &m.name) {
            errs.invalid(format!("{path}.name"), &m.name, msg);
        }
    } else if let Err(msg) = check_name(rule, &format!("{}a", m.generate_name)) {
        errs.invalid(format!("{path}.generateName"), &m.generate_name, msg);
    }
    if namespaced {
        if m.namespace.is_empty() {
            errs.required(format!("{path}.namespace"), "");
        } else if let Err(msg) = dns1123_label(&m.namespace) {
            errs.invalid(format!("{path}.namespace"), &m.namespace, msg);
        }
    } else if !m.namespace.is_empty() {
        errs.forbidden(format!("{path}.namespace"), "not allowed on this type");
    }
    validate_labels(errs, &format!("{path}.labels"), &m.labels);
    for k in m.annotations.keys() {
        if let Err(msg) = qualified_name(k) {
            errs.invalid(format!("{path}.annotations"), k, msg);
        }
    }
    for (i, f) in m.finalizers.iter().enumerate() {
        if let Err(msg) = qualified_name(f) {
            errs.invalid(format!("{path}.finalizers[{i}]"), f, msg);
        }
    }
    for (i, o) in m.owner_references.iter().enumerate() {
        let p = format!("{path}.ownerReferences[{i}]");
        if o.kind.is_empty() {
            errs.required(format!("{p}.kind"), "");
        }
        if o.name.is_empty() {
            errs.required(format!("{p}.name"), "");
        }
        if o.uid.is_empty() {
            errs.required(format!("{p}.uid"), "");
        }
    }
    if m.owner_references.iter().filter(|o| o.controller).count() > 1 {
        errs.invalid(format!("{path}.ownerReferences"), "", "Only one reference can have Controller set to true");
    }
}

fn non_negative(errs: &mut Errors, path: &str, v: i64) {
    if v < 0 {
        errs.invalid_num(path, v, "must be greater than or equal to 0");
    }
}

fn port_number(errs: &mut Errors, path: &str, p: i32) {
    if !(1..=65535).contains(&p) {
        errs.invalid_num(path, p, "must be between 1 and 65535, inclusive");
    }
}

/// A port given as a number or an IANA service name (IntOrString).
fn named_or_number_port(errs: &mut Errors, path: &str, p: &str) {
    match p.parse::<i64>() {
        Ok(n) if (1..=65535).contains(&n) => {}
        Ok(n) => errs.invalid_num(path, n, "must be between 1 and 65535, inclusive"),
        Err(_) => {
            let ok = !p.is_empty()
                && p.len() <= 15
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && p.chars().any(|c| c.is_ascii_lowercase());
            if !ok {
                errs.invalid(path, p, "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
            }
        }
    }
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn validate_protocol(errs: &mut Errors, path: &str, p: &str) {
    if !PROTOCOLS.contains(&p) {
        errs.not_supported(path, p, PROTOCOLS);
    }
}

fn validate_resources(errs: &mut Errors, path: &str, r: &ResourceRequirements) {
    for (which, map) in [("limits", &r.limits), ("requests", &r.requests)] {
        for (name, value) in map {
            if quantity::parse_milli(value).is_none() {
                errs.invalid(
                    format!("{path}.{which}[{name}]"),
                    value,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                );
            }
        }
    }
    for (name, req) in &r.requests {
        if let (Some(req_v), Some(lim_v)) =
            (quantity::parse_milli(req), r.limits.get(name).and_then(|l| quantity::parse_milli(l)))
        {
            if req_v > lim_v {
                errs.invalid(
                    format!("{path}.requests"),
                    req,
                    format!("must be less than or equal to {name} limit of {}", r.limits[name]),
                );
            }
        }
    }
}

fn validate_probe(errs: &mut Errors, path: &str, p: &Probe) {
    let handlers = p.exec.is_some() as u8 + p.http_get.is_some() as u8 + p.tcp_socket.is_some() as u8;
    if handlers == 0 {
        errs.required(path, "must specify a handler type");
    } else if handlers > 1 {
        errs.forbidden(path, "may not specify more than 1 handler type");
    }
    if let Some(e) = &p.exec {
        if e.command.is_empty() {
            errs.required(format!("{path}.exec.command"), "");
        }
    }
    if let Some(h) = &p.http_get {
        named_or_number_port(errs, &format!("{path}.httpGet.port"), &h.port);
        if !h.scheme.is_empty() && h.scheme != "HTTP" && h.scheme != "HTTPS" {
            errs.not_supported(format!("{path}.httpGet.scheme"), &h.scheme, &["HTTP", "HTTPS"]);
        }
    }
    if let Some(t) = &p.tcp_socket {
        named_or_number_port(errs, &format!("{path}.tcpSocket.port"), &t.port);
    }
    for (f, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        non_negative(errs, &format!("{path}.{f}"), v.into());
    }
}

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const TAINT_EFFECTS: &[&str] = &["NoExecute", "NoSchedule", "PreferNoSchedule"];

/// Checks a pod spec at `path` (`spec`, or `spec.template.spec` inside a workload).
pub fn validate_pod_spec(errs: &mut Errors, path: &str, s: &PodSpec) {
    if s.containers.is_empty() {
        errs.required(format!("{path}.containers"), "");
    }
    let mut names = HashSet::new();
    let mut host_ports = HashSet::new();
    for (i, c) in s.containers.iter().enumerate() {
        let p = format!("{path}.containers[{i}]");
        if c.name.is_empty() {
            errs.required(format!("{p}.name"), "");
        } else if let Err(m) = dns1123_label(&c.name) {
            errs.invalid(format!("{p}.name"), &c.name, m);
        } else if !names.insert(c.name.as_str()) {
            errs.duplicate(format!("{p}.name"), &c.name);
        }
        if c.image.trim().is_empty() {
            errs.required(format!("{p}.image"), "");
        }
        if !c.image_pull_policy.is_empty() && !PULL_POLICIES.contains(&c.image_pull_policy.as_str()) {
            errs.not_supported(format!("{p}.imagePullPolicy"), &c.image_pull_policy, PULL_POLICIES);
        }
        let mut port_names = HashSet::new();
        for (j, port) in c.ports.iter().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            port_number(errs, &format!("{pp}.containerPort"), port.container_port);
            if port.host_port != 0 {
                port_number(errs, &format!("{pp}.hostPort"), port.host_port);
                if !host_ports.insert((port.host_port, port.protocol.clone())) {
                    errs.duplicate(format!("{pp}.hostPort"), &port.host_port.to_string());
                }
            }
            if !port.protocol.is_empty() {
                validate_protocol(errs, &format!("{pp}.protocol"), &port.protocol);
            }
            if !port.name.is_empty() {
                named_or_number_port(errs, &format!("{pp}.name"), &port.name);
                if !port_names.insert(port.name.as_str()) {
                    errs.duplicate(format!("{pp}.name"), &port.name);
                }
            }
        }
        for (j, e) in c.env.iter().enumerate() {
            if e.name.is_empty() {
                errs.required(format!("{p}.env[{j}].name"), "");
            } else if e.name.contains('=') {
                errs.invalid(
                    format!("{p}.env[{j}].name"),
                    &e.name,
                    "a valid environment variable name must not contain '='",
                );
            }
        }
        if let Some(r) = &c.resources {
            validate_resources(errs, &format!("{p}.resources"), r);
        }
        for (f, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if let Some(pr) = probe {
                validate_probe(errs, &format!("{p}.{f}"), pr);
                if f != "readinessProbe" && pr.success_threshold > 1 {
                    errs.invalid_num(format!("{p}.{f}.successThreshold"), pr.success_threshold, "must be 1");
                }
            }
        }
    }
    if !s.restart_policy.is_empty() && !RESTART_POLICIES.contains(&s.restart_policy.as_str()) {
        errs.not_supported(format!("{path}.restartPolicy"), &s.restart_policy, RESTART_POLICIES);
    }
    if let Some(g) = s.termination_grace_period_seconds {
        non_negative(errs, &format!("{path}.terminationGracePeriodSeconds"), g);
    }
    if !s.node_name.is_empty() {
        if let Err(m) = dns1123_subdomain(&s.node_name) {
            errs.invalid(format!("{path}.nodeName"), &s.node_name, m);
        }
    }
    validate_labels(errs, &format!("{path}.nodeSelector"), &s.node_selector);
    for (i, t) in s.tolerations.iter().enumerate() {
        let p = format!("{path}.tolerations[{i}]");
        match t.operator.as_str() {
            "" | "Equal" => {
                if t.key.is_empty() {
                    errs.invalid(
                        format!("{p}.operator"),
                        &t.operator,
                        "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
                    );
                }
            }
            "Exists" => {
                if !t.value.is_empty() {
                    errs.invalid(format!("{p}.operator"), &t.value, "value must be empty when `operator` is 'Exists'");
                }
            }
            op => errs.not_supported(format!("{p}.operator"), op, &["Equal", "Exists"]),
        }
        if !t.effect.is_empty() && !TAINT_EFFECTS.contains(&t.effect.as_str()) {
            errs.not_supported(format!("{p}.effect"), &t.effect, TAINT_EFFECTS);
        }
        if t.toleration_seconds.is_some() && t.effect != "NoExecute" {
            errs.invalid(
                format!("{p}.effect"),
                &t.effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            );
        }
    }
}

fn validate_template(errs: &mut Errors, selector: Option<&LabelSelector>, template: Option<&PodTemplateSpec>) {
    let sel = match selector {
        None => {
            errs.required("spec.selector", "");
            None
        }
        Some(s) if s.match_labels.is_empty() && s.match_expressions.is_empty() => {
            errs.invalid("spec.selector", "", "empty selector is invalid for deployment");
            None
        }
        Some(s) => match Selector::from_label_selector(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                errs.invalid("spec.selector", "", e.to_string());
                None
            }
        },
    };
    let Some(t) = template else {
        errs.required("spec.template", "");
        return;
    };
    let labels = t.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
    validate_labels(errs, "spec.template.metadata.labels", &labels);
    if let Some(sel) = sel {
        if !sel.matches_labels(&labels) {
            errs.invalid(
                "spec.template.metadata.labels",
                format_map(&labels),
                "`selector` does not match template `labels`",
            );
        }
    }
    match &t.spec {
        None => errs.required("spec.template.spec", ""),
        Some(spec) => {
            validate_pod_spec(errs, "spec.template.spec", spec);
            if !spec.restart_policy.is_empty() && spec.restart_policy != "Always" {
                errs.not_supported("spec.template.spec.restartPolicy", &spec.restart_policy, &["Always"]);
            }
        }
    }
}

/// A map as Go's fmt prints it, the way Kubernetes quotes one in messages.
struct GoMap(String);

impl fmt::Debug for GoMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn format_map(m: &BTreeMap<String, String>) -> GoMap {
    GoMap(format!("map[{}]", m.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" ")))
}

fn validate_replicas(errs: &mut Errors, r: Option<i32>) {
    if let Some(r) = r {
        non_negative(errs, "spec.replicas", r.into());
    }
}

/// Percent (`25%`) or count (`1`) of an IntOrString rollout parameter.
fn validate_int_or_percent(errs: &mut Errors, path: &str, v: &str) {
    if v.is_empty() {
        return;
    }
    if let Some(p) = v.strip_suffix('%') {
        match p.parse::<i64>() {
            Ok(n) if (0..=100).contains(&n) => {}
            Ok(_) => errs.invalid(path, v, "must not be greater than 100%"),
            Err(_) => errs.invalid(path, v, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"),
        }
    } else {
        match v.parse::<i64>() {
            Ok(n) => non_negative(errs, path, n),
            Err(_) => errs.invalid(path, v, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"),
        }
    }
}

fn is_zero(v: &str) -> bool {
    v.is_empty() || v == "0" || v == "0%"
}

/// Kind-specific validation of a whole object (metadata included).
pub trait Validate: Object {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Errors(validate_meta(self));
        self.validate_kind(&mut errs);
        errs.0
    }
    fn validate_kind(&self, _errs: &mut Errors) {}
    /// Rules about what an update may change.
    fn validate_update(&self, _old: &Self, _errs: &mut Errors) {}
}

impl Validate for Namespace {}
impl Validate for ConfigMap {
    fn validate_kind(&self, errs: &mut Errors) {
        for k in self.data.keys() {
            let ok =
                !k.is_empty() && k.len() <= 253 && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                errs.invalid("data", k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
            }
        }
    }
}
impl Validate for Endpoints {}
impl Validate for Event {}

impl Validate for Pod {
    fn validate_kind(&self, errs: &mut Errors) {
        match &self.spec {
            None => errs.required("spec", ""),
            Some(s) => validate_pod_spec(errs, "spec", s),
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        // Like Kubernetes: a pod's spec is fixed once created, except container images and
        // added tolerations; the node is set once, by binding.
        let (Some(new), Some(prev)) = (&self.spec, &old.spec) else { return };
        let mut a = new.clone();
        let mut b = prev.clone();
        for c in a.containers.iter_mut().chain(b.containers.iter_mut()) {
            c.image.clear();
        }
        a.tolerations.clear();
        b.tolerations.clear();
        if !prev.node_name.is_empty() || new.node_name.is_empty() {
            a.node_name.clear();
            b.node_name.clear();
        }
        if a != b || (!prev.node_name.is_empty() && new.node_name != prev.node_name) {
            errs.forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.tolerations` (only additions to existing tolerations) or `spec.nodeName` (once, by binding)");
        }
    }
}

impl Validate for ReplicaSet {
    fn validate_kind(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        validate_replicas(errs, s.replicas);
        non_negative(errs, "spec.minReadySeconds", s.min_ready_seconds.into());
        validate_template(errs, s.selector.as_ref(), s.template.as_ref());
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let sel = |o: &Self| o.spec.as_ref().and_then(|s| s.selector.clone());
        if sel(self) != sel(old) {
            errs.invalid("spec.selector", "", "field is immutable");
        }
    }
}

impl Validate for Deployment {
    fn validate_kind(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        validate_replicas(errs, s.replicas);
        non_negative(errs, "spec.minReadySeconds", s.min_ready_seconds.into());
        if let Some(r) = s.revision_history_limit {
            non_negative(errs, "spec.revisionHistoryLimit", r.into());
        }
        if let Some(p) = s.progress_deadline_seconds {
            if p <= s.min_ready_seconds {
                errs.invalid_num("spec.progressDeadlineSeconds", p, "must be greater than minReadySeconds");
            }
        }
        validate_template(errs, s.selector.as_ref(), s.template.as_ref());
        if let Some(st) = &s.strategy {
            match st.r#type.as_str() {
                "" | "RollingUpdate" => {
                    if let Some(ru) = &st.rolling_update {
                        validate_int_or_percent(errs, "spec.strategy.rollingUpdate.maxSurge", &ru.max_surge);
                        validate_int_or_percent(
                            errs,
                            "spec.strategy.rollingUpdate.maxUnavailable",
                            &ru.max_unavailable,
                        );
                        if is_zero(&ru.max_surge) && is_zero(&ru.max_unavailable) {
                            errs.invalid(
                                "spec.strategy.rollingUpdate.maxUnavailable",
                                &ru.max_unavailable,
                                "may not be 0 when `maxSurge` is 0",
                            );
                        }
                    }
                }
                "Recreate" => {
                    if st.rolling_update.is_some() {
                        errs.forbidden(
                            "spec.strategy.rollingUpdate",
                            "may not be specified when strategy `type` is 'Recreate'",
                        );
                    }
                }
                t => errs.not_supported("spec.strategy.type", t, &["Recreate", "RollingUpdate"]),
            }
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let sel = |o: &Self| o.spec.as_ref().and_then(|s| s.selector.clone());
        if sel(self) != sel(old) {
            errs.invalid("spec.selector", "", "field is immutable");
        }
    }
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort"];

impl Validate for Service {
    fn validate_kind(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        let headless = s.cluster_ip == "None";
        if !s.r#type.is_empty() && !SERVICE_TYPES.contains(&s.r#type.as_str()) {
            errs.not_supported("spec.type", &s.r#type, SERVICE_TYPES);
        }
        if headless && s.r#type == "NodePort" {
            errs.invalid("spec.clusterIPs[0]", "None", "may not be set to 'None' for NodePort services");
        }
        if !headless && !s.cluster_ip.is_empty() && s.cluster_ip.parse::<std::net::Ipv4Addr>().is_err() {
            errs.invalid(
                "spec.clusterIPs[0]",
                &s.cluster_ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            );
        }
        if s.ports.is_empty() && !headless {
            errs.required("spec.ports", "");
        }
        let mut names = HashSet::new();
        let mut ports = HashSet::new();
        for (i, p) in s.ports.iter().enumerate() {
            let pp = format!("spec.ports[{i}]");
            if s.ports.len() > 1 && p.name.is_empty() {
                errs.required(format!("{pp}.name"), "");
            } else if !p.name.is_empty() {
                if let Err(m) = dns1123_label(&p.name) {
                    errs.invalid(format!("{pp}.name"), &p.name, m);
                } else if !names.insert(p.name.as_str()) {
                    errs.duplicate(format!("{pp}.name"), &p.name);
                }
            }
            port_number(errs, &format!("{pp}.port"), p.port);
            if !p.protocol.is_empty() {
                validate_protocol(errs, &format!("{pp}.protocol"), &p.protocol);
            }
            if !ports.insert((p.port, p.protocol.clone())) {
                errs.duplicate(pp.clone(), &format!("{}/{}", p.port, p.protocol));
            }
            if !p.target_port.is_empty() {
                named_or_number_port(errs, &format!("{pp}.targetPort"), &p.target_port);
            }
            if p.node_port != 0 {
                if s.r#type != "NodePort" {
                    errs.forbidden(format!("{pp}.nodePort"), "may not be used when `type` is 'ClusterIP'");
                } else if !(30000..=32767).contains(&p.node_port) {
                    errs.invalid_num(
                        format!("{pp}.nodePort"),
                        p.node_port,
                        "provided port is not in the valid range. The range of valid ports is 30000-32767",
                    );
                }
            }
        }
        validate_labels(errs, "spec.selector", &s.selector);
        if !s.session_affinity.is_empty() && s.session_affinity != "None" && s.session_affinity != "ClientIP" {
            errs.not_supported("spec.sessionAffinity", &s.session_affinity, &["ClientIP", "None"]);
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let ip = |o: &Self| o.spec.as_ref().map(|s| s.cluster_ip.clone()).unwrap_or_default();
        let new_ip = ip(self);
        if !new_ip.is_empty() && new_ip != ip(old) {
            errs.invalid("spec.clusterIPs[0]", &new_ip, "may not change once set");
        }
    }
}

impl Validate for Node {
    fn validate_kind(&self, errs: &mut Errors) {
        if let Some(s) = &self.spec {
            if !s.pod_cidr.is_empty() && parse_cidr(&s.pod_cidr).is_none() {
                errs.invalid(
                    "spec.podCIDR",
                    &s.pod_cidr,
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                );
            }
            for (i, t) in s.taints.iter().enumerate() {
                if t.key.is_empty() {
                    errs.required(format!("spec.taints[{i}].key"), "");
                } else if let Err(m) = qualified_name(&t.key) {
                    errs.invalid(format!("spec.taints[{i}].key"), &t.key, m);
                }
                if !TAINT_EFFECTS.contains(&t.effect.as_str()) {
                    errs.not_supported(format!("spec.taints[{i}].effect"), &t.effect, TAINT_EFFECTS);
                }
            }
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let cidr = |o: &Self| o.spec.as_ref().map(|s| s.pod_cidr.clone()).unwrap_or_default();
        if !cidr(old).is_empty() && cidr(self) != cidr(old) {
            errs.forbidden("spec.podCIDR", "node updates may not change podCIDR except from \"\" to valid");
        }
    }
}

impl Validate for Lease {
    fn validate_kind(&self, errs: &mut Errors) {
        if let Some(s) = &self.spec {
            if let Some(d) = s.lease_duration_seconds {
                if d <= 0 {
                    errs.invalid_num("spec.leaseDurationSeconds", d, "must be greater than 0");
                }
            }
            if let Some(t) = s.lease_transitions {
                non_negative(errs, "spec.leaseTransitions", t.into());
            }
        }
    }
}

/// An IPv4 CIDR as (network, prefix length).
pub fn parse_cidr(s: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("test manifest parses")
    }

    #[test]
    fn names_follow_dns_rules() {
        assert!(dns1123_subdomain("web-1.example").is_ok());
        assert!(dns1123_subdomain("Web").is_err());
        assert!(dns1123_subdomain("-web").is_err());
        assert!(dns1123_label("a.b").is_err());
        assert!(dns1035_label("1abc").is_err());
        assert!(dns1035_label("abc-1").is_ok());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn a_bad_pod_reports_every_problem_with_its_path() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "Bad_Name", "namespace": "default"},
            "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "x", "ports": [{"containerPort": 70000}]}],
                     "restartPolicy": "Sometimes"}
        }));
        let msgs: Vec<String> = p.validate().iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain")),
            "{msgs:?}"
        );
        assert!(msgs.contains(&"spec.containers[0].image: Required value".to_string()), "{msgs:?}");
        assert!(msgs.contains(&"spec.containers[1].name: Duplicate value: \"c\"".to_string()), "{msgs:?}");
        assert!(msgs.contains(&"spec.containers[1].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()), "{msgs:?}");
        assert!(msgs.contains(&"spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"".to_string()), "{msgs:?}");
    }

    #[test]
    fn negative_replicas_are_rejected_in_kubernetes_words() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": -1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
        }))
        .expect("parses");
        let errs = d.validate();
        assert_eq!(
            invalid_message("Deployment", "apps/v1", "web", &errs),
            "Deployment.apps \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
    }

    #[test]
    fn a_template_must_match_its_selector() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
        }))
        .expect("parses");
        let msgs: Vec<String> = d.validate().iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs, vec!["spec.template.metadata.labels: Invalid value: map[app:db]: `selector` does not match template `labels`"]);
    }

    #[test]
    fn pod_specs_are_immutable_but_images() {
        let a = pod(serde_json::json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x:1"}]}}));
        let mut b = a.clone();
        b.spec.as_mut().expect("spec").containers[0].image = "x:2".into();
        let mut errs = Errors::default();
        b.validate_update(&a, &mut errs);
        assert!(errs.0.is_empty());
        b.spec.as_mut().expect("spec").containers[0].command = vec!["sh".into()];
        b.validate_update(&a, &mut errs);
        assert_eq!(errs.0.len(), 1);
    }
}
