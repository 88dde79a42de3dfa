//! Integration tests: real `rkube server` processes on 127.0.0.1, driven by real clients
//! (rkube's own gRPC client types, etcdctl, grpcurl). Cases are grouped by area.

mod harness;

mod bad_input;
mod cluster;
mod control;
mod etcdctl;
mod kubelet_node;
mod kubelet_runtime;
mod kv;
mod objects;
mod rkctl;
