//! Compiles `proto/` with tonic/prost. protoc comes from the `protoc-bin-vendored` crate, so
//! building rkube needs no system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;

    // The client API. Its descriptor set feeds gRPC reflection on --listen-api. The etcd
    // messages travel inside Raft log entries, which are serialized with serde.
    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    config.type_attribute(".etcdserverpb", "#[derive(serde::Serialize, serde::Deserialize)]");
    config.type_attribute(".mvccpb", "#[derive(serde::Serialize, serde::Deserialize)]");
    tonic_prost_build::configure().file_descriptor_set_path(out_dir.join("rkube_descriptor.bin")).compile_with_config(
        config,
        &["proto/etcd/kv.proto", "proto/etcd/rpc.proto"],
        &["proto"],
    )?;

    // The peer protocol, served only on --listen-peer and not advertised to clients.
    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure().compile_with_config(config, &["proto/rkube/raft.proto"], &["proto"])?;
    Ok(())
}
