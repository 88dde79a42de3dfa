//! `rkctl apply`: client-side apply as kubectl does it for JSON merge patches. The manifest
//! last applied is kept in the `kubectl.kubernetes.io/last-applied-configuration` annotation;
//! the patch sets what the new manifest changes against the live object and removes what the
//! last manifest had and the new one dropped. Fields the manifest never named (status, values
//! set by the server or by `rkctl scale`) are left alone.

use serde_json::{Map, Value};

pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The manifest as it is recorded in the annotation: as given, without the annotation itself.
pub fn last_applied_text(given: &Value) -> String {
    let mut v = given.clone();
    if let Some(a) = v.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            if let Some(m) = v.pointer_mut("/metadata").and_then(Value::as_object_mut) {
                m.remove("annotations");
            }
        }
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// `given` with the annotation that records it.
pub fn with_last_applied(given: &Value) -> Value {
    let text = last_applied_text(given);
    let mut v = given.clone();
    if let Some(obj) = v.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            let ann = meta.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
            if let Some(ann) = ann.as_object_mut() {
                ann.insert(LAST_APPLIED.into(), Value::String(text));
            }
        }
    }
    v
}

/// The JSON merge patch that takes `current` to `modified`, deleting what `original` (the last
/// applied manifest) had and `modified` does not. `{}` when there is nothing to do.
pub fn three_way_patch(original: &Value, modified: &Value, current: &Value) -> Value {
    let mut patch = Map::new();
    let (Some(m), c) = (modified.as_object(), current.as_object()) else { return modified.clone() };
    let empty = Map::new();
    let c = c.unwrap_or(&empty);
    let o = original.as_object().unwrap_or(&empty);
    for (k, mv) in m {
        match (mv, c.get(k)) {
            (Value::Object(_), Some(cv @ Value::Object(_))) => {
                let sub = three_way_patch(o.get(k).unwrap_or(&Value::Null), mv, cv);
                if sub.as_object().is_some_and(|s| !s.is_empty()) {
                    patch.insert(k.clone(), sub);
                }
            }
            (mv, Some(cv)) if mv == cv => {}
            // Lists are replaced whole by a merge patch. One the manifest did not change, and
            // that the live list holds with only server defaults added, is left alone.
            (Value::Array(_), Some(cv)) if o.get(k) == Some(mv) && contains(cv, mv) => {}
            (mv, _) => {
                patch.insert(k.clone(), mv.clone());
            }
        }
    }
    for k in o.keys() {
        if !m.contains_key(k) && c.get(k).is_some_and(|v| !v.is_null()) {
            patch.insert(k.clone(), Value::Null);
        }
    }
    Value::Object(patch)
}

/// Whether `big` has everything `small` has (objects may have more keys; lists must be as long).
pub fn contains(big: &Value, small: &Value) -> bool {
    match (big, small) {
        (Value::Object(b), Value::Object(s)) => s.iter().all(|(k, sv)| b.get(k).is_some_and(|bv| contains(bv, sv))),
        (Value::Array(b), Value::Array(s)) => b.len() == s.len() && b.iter().zip(s).all(|(bv, sv)| contains(bv, sv)),
        (b, s) => b == s,
    }
}

/// RFC 7386: applies a merge patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_patch_changes_what_the_manifest_changed_and_nothing_else() {
        let original =
            json!({"metadata": {"name": "w", "labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 2, "paused": true}});
        let modified = json!({"metadata": {"name": "w", "labels": {"a": "1"}}, "spec": {"replicas": 3}});
        let current = json!({"metadata": {"name": "w", "labels": {"a": "1", "b": "2", "c": "mine"}, "uid": "u"},
                             "spec": {"replicas": 2, "paused": true, "minReadySeconds": 5}, "status": {"replicas": 2}});
        let patch = three_way_patch(&original, &modified, &current);
        assert_eq!(patch, json!({"metadata": {"labels": {"b": null}}, "spec": {"replicas": 3, "paused": null}}));
        let mut after = current.clone();
        merge_patch(&mut after, &patch);
        assert_eq!(
            after,
            json!({"metadata": {"name": "w", "labels": {"a": "1", "c": "mine"}, "uid": "u"},
                   "spec": {"replicas": 3, "minReadySeconds": 5}, "status": {"replicas": 2}})
        );
        assert_eq!(three_way_patch(&modified, &modified, &after), json!({}));

        // Lists: left alone while the live one only adds defaults, replaced when the manifest
        // changes them.
        let list = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        let live = json!({"spec": {"containers": [{"name": "c", "image": "a", "imagePullPolicy": "Always"}]}});
        assert_eq!(three_way_patch(&list, &list, &live), json!({}));
        let changed = json!({"spec": {"containers": [{"name": "c", "image": "b"}]}});
        assert_eq!(three_way_patch(&list, &changed, &live), changed);
        let dropped = json!({"spec": {"containers": [{"name": "c"}]}});
        assert_eq!(three_way_patch(&list, &dropped, &live), dropped);
    }

    #[test]
    fn the_annotation_records_the_manifest_without_itself() {
        let given = json!({"kind": "ConfigMap", "metadata": {"name": "c"}});
        let v = with_last_applied(&given);
        let text = v.pointer("/metadata/annotations").and_then(|a| a.get(LAST_APPLIED)).and_then(Value::as_str);
        assert_eq!(text, Some("{\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"c\"}}\n"));
        assert_eq!(last_applied_text(&v), last_applied_text(&given));
    }
}
