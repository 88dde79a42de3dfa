//! Compiles `proto/` with tonic/prost. protoc comes from the `protoc-bin-vendored` crate, so
//! building rkube needs no system protoc.

use std::path::PathBuf;

use prost_types::field_descriptor_proto::{Label, Type};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;

    // The client API. Its descriptor set feeds gRPC reflection on --listen-api. The etcd
    // messages travel inside Raft log entries, which are serialized with serde.
    let etcd = ["proto/etcd/kv.proto", "proto/etcd/rpc.proto"];
    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    config.type_attribute(".etcdserverpb", "#[derive(serde::Serialize, serde::Deserialize)]");
    config.type_attribute(".mvccpb", "#[derive(serde::Serialize, serde::Deserialize)]");
    // serde sees a `Vec<u8>` as a sequence, so bincode would write and read keys and values one
    // byte per call; as bytes they are copied whole (the encoding is the same: length, bytes).
    let fds = config.load_fds(&etcd, &["proto"])?;
    for file in &fds.file {
        for msg in &file.message_type {
            for field in &msg.field {
                let plain_bytes =
                    field.r#type() == Type::Bytes && field.label() != Label::Repeated && field.oneof_index.is_none();
                if plain_bytes {
                    config.field_attribute(
                        format!(".{}.{}.{}", file.package(), msg.name(), field.name()),
                        "#[serde(with = \"serde_bytes\")]",
                    );
                }
            }
        }
    }
    tonic_prost_build::configure().file_descriptor_set_path(out_dir.join("rkube_descriptor.bin")).compile_with_config(
        config,
        &etcd,
        &["proto"],
    )?;

    // rkube's object API. Objects travel as protobuf (gRPC, store values) and as YAML/JSON
    // (manifests, rkctl output); serde uses the same JSON names as the protobuf JSON mapping,
    // which are Kubernetes' names (`podIP` comes from the field's `json_name`).
    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    let v1 = ["proto/rkube/v1/objects.proto", "proto/rkube/v1/api.proto", "proto/rkube/v1/kubelet.proto"];
    let fds = config.load_fds(&v1, &["proto"])?;
    std::fs::write(out_dir.join("rkube_v1_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    config.btree_map(["."]);
    config.type_attribute(
        ".rkube.v1",
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, rename_all = \"camelCase\")]",
    );
    for file in &fds.file {
        for msg in &file.message_type {
            for field in &msg.field {
                let (name, json) = (field.name(), field.json_name());
                if json != lower_camel(name) {
                    config.field_attribute(
                        format!(".rkube.v1.{}.{name}", msg.name()),
                        format!("#[serde(rename = \"{json}\")]"),
                    );
                }
            }
        }
    }
    for field in INT_OR_STRING {
        config.field_attribute(field, "#[serde(with = \"crate::api::int_or_string\")]");
    }
    tonic_prost_build::configure().compile_fds_with_config(fds, config)?;
    for f in v1 {
        println!("cargo:rerun-if-changed={f}");
    }

    // The peer protocol, served only on --listen-peer and not advertised to clients.
    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure().compile_with_config(config, &["proto/rkube/raft.proto"], &["proto"])?;
    Ok(())
}

/// Fields that Kubernetes types as IntOrString: strings here, but manifests may give a number.
const INT_OR_STRING: &[&str] = &[
    ".rkube.v1.HTTPGetAction.port",
    ".rkube.v1.TCPSocketAction.port",
    ".rkube.v1.ServicePort.target_port",
    ".rkube.v1.RollingUpdateDeployment.max_surge",
    ".rkube.v1.RollingUpdateDeployment.max_unavailable",
];

/// protoc's default JSON name of a field: `pod_ip` -> `podIp`.
fn lower_camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
