//! Compiles `proto/` with tonic/prost. protoc comes from the `protoc-bin-vendored` crate, so
//! building rkube needs no system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The etcd messages travel inside Raft log entries, which are serialized with serde.
    config.type_attribute(".etcdserverpb", "#[derive(serde::Serialize, serde::Deserialize)]");
    config.type_attribute(".mvccpb", "#[derive(serde::Serialize, serde::Deserialize)]");
    tonic_prost_build::configure().file_descriptor_set_path(out_dir.join("rkube_descriptor.bin")).compile_with_config(
        config,
        &["proto/etcd/kv.proto", "proto/etcd/rpc.proto", "proto/rkube/raft.proto"],
        &["proto"],
    )?;
    Ok(())
}
