//! Manifests: YAML or JSON, one or several documents, `kind: List` with items. Every document
//! is parsed, typed, checked for unknown fields, defaulted and validated with the server's own
//! rules before rkctl sends anything, so a bad document anywhere writes nothing anywhere. Errors
//! say where: the source, the document (and List item) and the field.

use serde::Deserialize;
use serde_json::Value;

use crate::api::defaults::Defaults;
use crate::api::validation::{invalid_message, Validate};
use crate::api::{KindInfo, Object, KINDS};

/// One object of a manifest, checked and ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub kind: &'static KindInfo,
    /// Where it came from: `"pod.yaml" (document 2)`.
    pub location: String,
    pub name: String,
    /// The effective namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// The object as the manifest gives it (namespace filled in), for apply's
    /// last-applied-configuration.
    pub given: Value,
    /// The typed object as JSON, every field present.
    pub object: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML or JSON at all.
    #[error("error parsing {file}: {detail}")]
    Parse { file: String, detail: String },
    /// A kind rkube does not serve.
    #[error("unable to recognize {location}: no matches for kind {kind:?} in version {api_version:?}")]
    UnknownKind { location: String, kind: String, api_version: String },
    /// YAML that is not a valid object of its kind: wrong types, unknown fields, invalid values.
    #[error("error validating {location}: {detail}")]
    Invalid { location: String, detail: String },
    #[error("no objects passed to {verb}")]
    Empty { verb: String },
}

/// Parses every document of `text` (from `source`, a file name or `-` for stdin), each in
/// `namespace` unless it names its own. Nothing is returned unless every document is good.
pub fn parse_manifests(source: &str, text: &str, namespace: &str) -> Result<Vec<Manifest>, ManifestError> {
    let quoted = if source == "-" { "STDIN".to_string() } else { format!("{source:?}") };
    let docs = split_documents(&quoted, text)?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let location = format!("{quoted} (document {})", i + 1);
        let item_location = |j: usize| format!("{quoted} (document {}, items[{j}])", i + 1);
        if doc.get("kind").and_then(Value::as_str).is_some_and(|k| k == "List" || k.ends_with("List")) {
            let items = match doc.get("items") {
                Some(Value::Array(items)) => items.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => {
                    return Err(ManifestError::Invalid { location, detail: "items: expected a list of objects".into() })
                }
            };
            for (j, item) in items.into_iter().enumerate() {
                out.push(check_object(&item_location(j), item, namespace)?);
            }
        } else {
            out.push(check_object(&location, doc, namespace)?);
        }
    }
    Ok(out)
}

/// The documents of a YAML or JSON text, empty documents left out.
fn split_documents(quoted: &str, text: &str) -> Result<Vec<Value>, ManifestError> {
    let parse_err = |detail: String| ManifestError::Parse { file: quoted.to_string(), detail };
    let mut docs = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        for (i, v) in serde_json::Deserializer::from_str(text).into_iter::<Value>().enumerate() {
            let v = v.map_err(|e| parse_err(format!("document {}: {e}", i + 1)))?;
            match v {
                Value::Array(items) => docs.extend(items),
                v => docs.push(v),
            }
        }
    } else {
        for (i, d) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = Value::deserialize(d).map_err(|e| parse_err(format!("document {}: {e}", i + 1)))?;
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    Ok(docs)
}

fn check_object(location: &str, mut doc: Value, namespace: &str) -> Result<Manifest, ManifestError> {
    let invalid = |detail: String| ManifestError::Invalid { location: location.to_string(), detail };
    if !doc.is_object() {
        return Err(invalid(format!("expected an object, found {}", json_type(&doc))));
    }
    let text = |field: &str| -> Result<String, ManifestError> {
        match doc.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            None | Some(Value::Null) => Err(invalid(format!("{field} not set"))),
            Some(Value::String(_)) => Err(invalid(format!("{field} not set"))),
            Some(other) => Err(invalid(format!("{field}: expected a string, found {}", json_type(other)))),
        }
    };
    let kind = text("kind")?;
    let api_version = text("apiVersion")?;
    let info = KINDS.iter().find(|k| k.kind == kind && k.api_version == api_version).ok_or_else(|| {
        ManifestError::UnknownKind {
            location: location.to_string(),
            kind: kind.clone(),
            api_version: api_version.clone(),
        }
    })?;
    if let Some(meta) = doc.get("metadata") {
        if !meta.is_object() && !meta.is_null() {
            return Err(invalid(format!("metadata: expected an object, found {}", json_type(meta))));
        }
    }
    // The effective namespace goes into the object, so that validation sees what the server will.
    let meta = doc.as_object_mut().expect("checked to be an object").entry("metadata").or_insert(Value::Null);
    if meta.is_null() {
        *meta = Value::Object(Default::default());
    }
    let meta = meta.as_object_mut().expect("metadata is an object");
    if info.namespaced {
        let given = meta.get("namespace").and_then(Value::as_str).unwrap_or_default();
        if given.is_empty() {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        }
    } else {
        meta.remove("namespace");
    }
    crate::with_kind!(info.kind, K => typed::<K>(location, info, doc), _ => unreachable!("every entry of KINDS has a type"))
}

fn typed<K: Object + Defaults + Validate>(
    location: &str,
    info: &'static KindInfo,
    given: Value,
) -> Result<Manifest, ManifestError> {
    let invalid = |detail: String| ManifestError::Invalid { location: location.to_string(), detail };
    let obj: K = serde_path_to_error::deserialize(given.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            invalid(format!("{}: {inner}", info.kind))
        } else {
            invalid(format!("{}.{path}: {inner}", info.kind))
        }
    })?;
    let object = serde_json::to_value(&obj).map_err(|e| invalid(e.to_string()))?;
    if let Some(path) = unknown_field(&given, &object, "") {
        return Err(invalid(format!("unknown field {path:?} in {}", info.kind)));
    }
    let mut checked = obj.clone();
    checked.apply_defaults();
    let errors = checked.validate();
    let name = obj.meta().name.clone();
    if !errors.is_empty() {
        return Err(invalid(invalid_message(info.kind, info.api_version, &name, &errors)));
    }
    Ok(Manifest {
        kind: info,
        location: location.to_string(),
        name,
        namespace: obj.meta().namespace.clone(),
        given,
        object,
    })
}

/// The first field of `given` that the typed object does not have (typed objects serialize
/// every field they know, so a missing key is one the kind does not have).
pub fn unknown_field(given: &Value, typed: &Value, path: &str) -> Option<String> {
    match (given, typed) {
        (Value::Object(g), Value::Object(t)) => {
            for (k, v) in g {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match t.get(k) {
                    None => return Some(p),
                    Some(tv) => {
                        if let Some(u) = unknown_field(v, tv, &p) {
                            return Some(u);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(g), Value::Array(t)) => {
            g.iter().zip(t).enumerate().find_map(|(i, (gv, tv))| unknown_field(gv, tv, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str =
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: httpd\n";

    fn deploy(replicas: &str) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: c\n        image: httpd\n"
        )
    }

    #[test]
    fn good_manifests_in_every_shape() {
        let m = parse_manifests("pod.yaml", POD, "default").expect("one pod");
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].kind.kind, m[0].name.as_str(), m[0].namespace.as_str()), ("Pod", "web", "default"));
        assert_eq!(m[0].location, "\"pod.yaml\" (document 1)");

        let two = format!("---\n{POD}---\n{}\n---\n", deploy("2"));
        let m = parse_manifests("-", &two, "team").expect("two documents");
        assert_eq!(m.iter().map(|m| m.kind.kind).collect::<Vec<_>>(), ["Pod", "Deployment"]);
        assert!(m.iter().all(|m| m.namespace == "team"));
        assert_eq!(m[1].location, "STDIN (document 2)");

        let json = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"x"},"data":{"k":"v"}},
            {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}]}"#;
        let m = parse_manifests("l.json", json, "default").expect("a List");
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].namespace.as_str(), m[1].namespace.as_str()), ("x", ""));
        assert_eq!(m[1].location, "\"l.json\" (document 1, items[1])");

        let stream = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}} {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"b"}}"#;
        assert_eq!(parse_manifests("s.json", stream, "default").expect("a JSON stream").len(), 2);
        assert!(parse_manifests("e.yaml", "---\n# nothing\n", "default").expect("nothing").is_empty());
    }

    #[test]
    fn bad_manifests_say_what_and_where() {
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "unknown kind",
                format!("{POD}---\napiVersion: v1\nkind: Widget\nmetadata: {{name: w}}\n"),
                "unable to recognize \"f.yaml\" (document 2): no matches for kind \"Widget\" in version \"v1\"",
            ),
            (
                "wrong group",
                "apiVersion: v1\nkind: Deployment\nmetadata: {name: w}\n".into(),
                "no matches for kind \"Deployment\" in version \"v1\"",
            ),
            (
                "bad name",
                POD.replace("name: web", "name: Web_1"),
                "error validating \"f.yaml\" (document 1): Pod \"Web_1\" is invalid: metadata.name: Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain",
            ),
            (
                "missing image",
                POD.replace("    image: httpd\n", ""),
                "Pod \"web\" is invalid: spec.containers[0].image: Required value",
            ),
            (
                "negative replicas",
                format!("{POD}---\n{}", deploy("-1")),
                "error validating \"f.yaml\" (document 2): Deployment.apps \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                "wrong type",
                deploy("three"),
                "error validating \"f.yaml\" (document 1): Deployment.spec.replicas: invalid type: string \"three\", expected i32",
            ),
            (
                "list instead of map",
                POD.replace("  name: web\n", "  name: web\n  labels: [a, b]\n"),
                "Pod.metadata.labels: invalid type: sequence, expected a map",
            ),
            (
                "unknown field",
                POD.replace("    image: httpd\n", "    image: httpd\n    imagePolicy: Always\n"),
                "error validating \"f.yaml\" (document 1): unknown field \"spec.containers[0].imagePolicy\" in Pod",
            ),
            ("no kind", "apiVersion: v1\nmetadata: {name: x}\n".into(), "(document 1): kind not set"),
            (
                "malformed YAML",
                format!("{POD}---\nkind: Pod\n  metadata: [\n"),
                "error parsing \"f.yaml\": document 2: ",
            ),
            ("malformed JSON", "{\"kind\": \"Pod\",".into(), "error parsing \"f.yaml\": document 1: EOF while parsing"),
            ("not an object", "- a\n- b\n".into(), "expected an object, found a list"),
        ];
        for (what, text, want) in cases {
            let err = parse_manifests("f.yaml", &text, "default").expect_err(what).to_string();
            assert!(err.contains(want), "{what}: got {err:?}, want {want:?}");
        }
    }
}
