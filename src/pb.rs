//! Generated protobuf and gRPC code: etcd's v3 API (`etcdserverpb`, `mvccpb`) and rkube's own
//! peer protocol and object API (`v1`). Depends on nothing else in rkube.

#![allow(clippy::all, clippy::pedantic, missing_docs)] // generated code

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod raft {
    tonic::include_proto!("rkube.raft.v1");
}

/// The client API's descriptors (etcd v3), for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rkube_descriptor");

/// rkube's object API: the kinds (Pod, Deployment, ...) and one service per kind.
pub mod v1 {
    tonic::include_proto!("rkube.v1");
}

/// The object API's descriptors, for gRPC reflection.
pub const V1_FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rkube_v1_descriptor");
