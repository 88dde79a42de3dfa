//! rkube: a Kubernetes-style container orchestrator in which etcd is replaced by Raft consensus
//! built into the masters.
//!
//! # Layout
//! - [`pb`]: generated protobuf/gRPC code (etcd v3 API, peer protocol); depends on nothing.
//! - [`store`]: the MVCC key-value state machine in RocksDB, with etcd's semantics.
//! - [`raft`]: openraft over the store: log, snapshots, peer transport, leases, membership.
//! - [`etcd`]: the etcd-v3-compatible gRPC services (KV, Watch, Lease, Cluster, Maintenance).
//! - [`api`]: the object model (Pod, Deployment, ...): defaulting, validation, selectors.
//! - [`apiserver`]: the `rkube.v1` services: every kind stored in the store, one generic registry.
//! - [`client`]: the API client: typed access to every kind, failover across masters, fencing.
//! - [`reconcile`]: informers, work queues, leader election with fencing: what control loops use.
//! - [`controllers`]: the controller manager's loops (ReplicaSet, Deployment, GC, Endpoints, ...).
//! - [`controlplane`]: the scheduler and controller manager as leader-elected components.
//! - [`hollow`]: simulated kubelets (hollow nodes) for scale tests.
//! - [`scheduler`]: binds pending pods to nodes; `plan` is a pure function of a snapshot.
//! - [`rkctl`]: rkctl's pure parts: manifests, kubectl's tables and pod status, output formats.
//! - [`kubelet`]: the node-local kubelet: runtimes (runc, process), images, pod network, logs.
//! - [`server`]: `rkube server`: configuration, start-up and shutdown of a master.

pub mod api;
pub mod apiserver;
pub mod client;
pub mod controllers;
pub mod controlplane;
pub mod etcd;
pub mod hollow;
pub mod kubelet;
pub mod pb;
pub mod raft;
pub mod reconcile;
pub mod rkctl;
pub mod scheduler;
pub mod server;
pub mod store;
