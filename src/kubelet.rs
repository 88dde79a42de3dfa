//! The node-local half of the kubelet: container runtimes, the image store, the pod network on
//! the node and container log files.
//!
//! What it owns: a state directory per node (sandboxes, containers, their shims' records, IP
//! allocations) and an image store directory. Who it talks to: the `runc` binary, the kernel
//! over rtnetlink, `iptables`, OCI registries over HTTP(S), and the pod worker that maps
//! Kubernetes Pod objects onto [`SandboxConfig`] and [`ContainerConfig`] and drives a
//! [`Runtime`].
//!
//! - [`runtime`]: the [`Runtime`] trait and its types, and [`build_runtime`] (`auto` picks runc
//!   when it can run it, else plain processes).
//! - `runc`, `process`: the two implementations; both run each container under a small
//!   supervisor process ([`shim`]) that owns the container's stdout/stderr and records how it
//!   exited, so containers outlive a kubelet restart and are adopted by the next one.
//! - [`image`]: references, pull policy, the content-addressed store, registry pulls, imports.
//! - [`network`], [`ipam`]: netns + veth on bridge `rkube0`, host-local IP allocation, masquerade;
//!   `netlink`: the rtnetlink requests they are made with.
//! - [`logs`]: CRI-format log files with size-based rotation, and their reader (tail, follow).
//! - [`backoff`]: CrashLoopBackOff / ImagePullBackOff delays (10 s doubling to 5 min).
//! - [`cli`]: `rkube image import|ls|pull`.
//! - [`agent`]: the node agent (`rkube node`): Node registration, lease, pod watch, workers.
//! - [`pod_worker`], [`probe`]: one pod's lifecycle on the node; liveness/readiness/startup.
//! - `service`: the kubelet API on the kubelet port (container logs).

pub mod agent;
pub mod backoff;
pub mod cli;
mod engine;
pub mod image;
pub mod ipam;
pub mod logs;
mod netlink;
pub mod network;
pub mod pod_worker;
pub mod probe;
mod process;
mod runc;
pub mod runtime;
mod service;
pub mod shim;

pub use backoff::BackoffPolicy;
pub use image::{Image, ImageConfig, ImageError, ImageRef, ImageStore, PullPolicy, RegistryConfig};
pub use ipam::Ipv4Net;
pub use logs::{pod_log_path, LogLine, RotationPolicy, Stream};
pub use network::NetworkConfig;
pub use runtime::{
    build_runtime, ContainerConfig, ContainerState, ContainerStatus, Runtime, RuntimeConfig, RuntimeError, RuntimeKind,
    Sandbox, SandboxConfig, SandboxStatus,
};
