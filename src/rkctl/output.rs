//! `-o json|yaml|name` and the messages of write verbs (`deployment.apps/web created`).
//! Objects are printed as Kubernetes prints them: keys sorted, empty fields left out.

use serde_json::Value;

/// The output format of `rkctl get` and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
    Name,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        Ok(match s {
            "" => Format::Table,
            "wide" => Format::Wide,
            "json" => Format::Json,
            "yaml" => Format::Yaml,
            "name" => Format::Name,
            other => {
                return Err(format!(
                    "unable to match a printer suitable for the output format {other:?}, allowed formats are: json,name,wide,yaml"
                ))
            }
        })
    }
}

/// Fields whose zero (or false) is said rather than left out: the `optional` ones of the object
/// model, where unset and zero differ (`replicas: 0`, `terminationGracePeriodSeconds: 0`), and
/// those Kubernetes always prints.
const KEEP_ZERO: &[&str] = &[
    "deletionGracePeriodSeconds",
    "tolerationSeconds",
    "terminationGracePeriodSeconds",
    "replicas",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "collisionCount",
    "leaseDurationSeconds",
    "leaseTransitions",
    "started",
    "immutable",
    "restartCount",
    "exitCode",
    "ready",
    "containerPort",
    "port",
];

/// Leaves out what Kubernetes' `omitempty` leaves out: nulls, empty strings, lists and maps,
/// zeros and false (recursively), except in the fields of [`KEEP_ZERO`]. What is printed reads
/// back as the same object.
pub fn prune(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (_, child) in map.iter_mut() {
                prune(child);
            }
            map.retain(|key, child| !is_empty(child) && (KEEP_ZERO.contains(&key.as_str()) || !is_zero(child)));
        }
        Value::Array(items) => {
            for child in items.iter_mut() {
                prune(child);
            }
        }
        _ => {}
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// An object as JSON for printing: pruned, keys sorted.
pub fn printable<T: serde::Serialize>(obj: &T) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    prune(&mut v);
    v
}

/// Several objects as kubectl prints a list of them: `kind: List`.
pub fn list_of(items: Vec<Value>) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": {"resourceVersion": ""},
    })
}

/// JSON as kubectl indents it (four spaces), with a final newline.
pub fn to_json(v: &Value) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    if serde::Serialize::serialize(v, &mut ser).is_err() {
        return String::new();
    }
    let mut s = String::from_utf8(buf).unwrap_or_default();
    s.push('\n');
    s
}

/// YAML as kubectl prints it (no leading `---`).
pub fn to_yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default()
}

/// `pod/web`, `deployment.apps/web`: the `-o name` form.
pub fn name_of(type_name: &str, name: &str) -> String {
    format!("{type_name}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1::*;
    use crate::api::Object;

    #[test]
    fn formats_are_the_ones_kubectl_knows() {
        assert_eq!(Format::parse("wide"), Ok(Format::Wide));
        assert_eq!(Format::parse(""), Ok(Format::Table));
        assert!(Format::parse("xml").expect_err("unknown").contains("allowed formats are: json,name,wide,yaml"));
    }

    #[test]
    fn printed_objects_leave_out_empty_fields_but_keep_zeros() {
        let mut d =
            Deployment { spec: Some(DeploymentSpec { replicas: Some(0), ..Default::default() }), ..Default::default() };
        d.set_type_meta();
        d.meta_mut().name = "web".into();
        let v = printable(&d);
        assert_eq!(
            to_yaml(&v),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 0\n"
        );
        assert!(to_json(&v).starts_with("{\n    \"apiVersion\": \"apps/v1\",\n"));
        // What is printed reads back as the same object.
        let back: Deployment = serde_yaml::from_str(&to_yaml(&v)).expect("round trip");
        assert_eq!(back, d);
    }
}
