//! rkube: a Kubernetes-style container orchestrator in which etcd is replaced by Raft consensus
//! built into the masters.
//!
//! # Layout
//! - [`pb`]: generated protobuf/gRPC code (etcd v3 API, peer protocol); depends on nothing.
//! - [`store`]: the MVCC key-value state machine in RocksDB, with etcd's semantics.
//! - [`raft`]: openraft over the store: log, snapshots, peer transport, leases, membership.
//! - [`etcd`]: the etcd-v3-compatible gRPC services (KV, Watch, Lease, Cluster, Maintenance).
//! - [`kubelet`]: the node-local kubelet: runtimes (runc, process), images, pod network, logs.
//! - [`server`]: `rkube server`: configuration, start-up and shutdown of a master.

pub mod etcd;
pub mod kubelet;
pub mod pb;
pub mod raft;
pub mod server;
pub mod store;
