//! rkctl's pure parts: what the `rkctl` binary decides without I/O. Manifests are parsed and
//! checked here (every document before anything is sent), tables are rendered as kubectl
//! renders them, pod status is derived as kubectl derives it, and objects are formatted as
//! JSON, YAML or names. The binary (`src/bin/rkctl.rs`) does the I/O through [`crate::client`].

pub mod apply;
pub mod config;
pub mod describe;
pub mod manifest;
pub mod output;
pub mod printers;
pub mod rollout;
pub mod table;

pub use manifest::{parse_manifests, Manifest, ManifestError};
pub use printers::Printable;
pub use table::Table;

use crate::api::KindInfo;

/// `pod`, `deployment.apps`, `lease.coordination.k8s.io`: how kubectl names a kind in
/// messages (`deployment.apps/web created`) and in `-o name`.
pub fn type_name(info: &KindInfo) -> String {
    match info.api_version.rsplit_once('/') {
        Some((group, _)) => format!("{}.{group}", info.singular),
        None => info.singular.to_string(),
    }
}

/// The `No resources found` line kubectl prints (on stderr) for an empty list.
pub fn no_resources(namespaced: bool, namespace: &str, all_namespaces: bool) -> String {
    if namespaced && !all_namespaces {
        format!("No resources found in {namespace} namespace.")
    } else {
        "No resources found".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::find_kind;

    #[test]
    fn kinds_are_named_with_their_group() {
        for (kind, want) in [
            ("po", "pod"),
            ("deploy", "deployment.apps"),
            ("rs", "replicaset.apps"),
            ("lease", "lease.coordination.k8s.io"),
            ("svc", "service"),
            ("no", "node"),
        ] {
            assert_eq!(type_name(find_kind(kind).expect("known kind")), want);
        }
    }

    #[test]
    fn empty_lists_say_where_nothing_was_found() {
        assert_eq!(no_resources(true, "default", false), "No resources found in default namespace.");
        assert_eq!(no_resources(true, "default", true), "No resources found");
        assert_eq!(no_resources(false, "default", false), "No resources found");
    }
}
