//! The control plane's components as processes: the scheduler and the controller manager,
//! each leader-elected with a fenced Lease in kube-system. `rkube server` runs both against its
//! own API; `rkube scheduler` and `rkube controller-manager` run one alone against `--server`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::controllers::{self, ControllerConfig};
use crate::reconcile::leader::{self, ElectionConfig};

/// Flags of the control plane, shared by `rkube server` and the standalone commands.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlPlaneOpts {
    /// Pod subnets for nodes are carved from this range.
    #[arg(long, env = "RKUBE_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// Size of each node's pod subnet (prefix length).
    #[arg(long, env = "RKUBE_NODE_CIDR_MASK_SIZE", default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Seconds without a node lease renewal before the node is NotReady.
    #[arg(long, env = "RKUBE_NODE_MONITOR_GRACE_PERIOD", default_value_t = 40)]
    pub node_monitor_grace_period: u64,
    /// Leader election: seconds a lease lasts without renewal.
    #[arg(long, env = "RKUBE_LEADER_ELECT_LEASE_DURATION", default_value_t = 15)]
    pub leader_elect_lease_duration: u64,
    /// Leader election: seconds a leader keeps trying to renew before it steps down.
    #[arg(long, env = "RKUBE_LEADER_ELECT_RENEW_DEADLINE", default_value_t = 10)]
    pub leader_elect_renew_deadline: u64,
    /// Leader election: seconds between attempts.
    #[arg(long, env = "RKUBE_LEADER_ELECT_RETRY_PERIOD", default_value_t = 2)]
    pub leader_elect_retry_period: u64,
}

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub controllers: ControllerConfig,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ControlPlaneOpts {
    pub fn validate(&self) -> Result<ControlPlaneConfig, String> {
        let (_, len) = crate::api::validation::parse_cidr(&self.cluster_cidr).ok_or_else(|| {
            format!("--cluster-cidr {:?} is not an IPv4 CIDR such as 10.244.0.0/16", self.cluster_cidr)
        })?;
        if self.node_cidr_mask_size < len || self.node_cidr_mask_size > 30 {
            return Err(format!(
                "--node-cidr-mask-size {} must be between the cluster CIDR's /{len} and /30",
                self.node_cidr_mask_size
            ));
        }
        if self.leader_elect_retry_period == 0
            || self.leader_elect_renew_deadline <= self.leader_elect_retry_period
            || self.leader_elect_lease_duration <= self.leader_elect_renew_deadline
        {
            return Err("leader election needs retry period < renew deadline < lease duration".into());
        }
        Ok(ControlPlaneConfig {
            controllers: ControllerConfig {
                cluster_cidr: self.cluster_cidr.clone(),
                node_mask: self.node_cidr_mask_size,
                node_monitor_grace: Duration::from_secs(self.node_monitor_grace_period.max(1)),
                ..ControllerConfig::default()
            },
            lease_duration: Duration::from_secs(self.leader_elect_lease_duration),
            renew_deadline: Duration::from_secs(self.leader_elect_renew_deadline),
            retry_period: Duration::from_secs(self.leader_elect_retry_period),
        })
    }
}

fn election(cfg: &ControlPlaneConfig, name: &str) -> ElectionConfig {
    ElectionConfig {
        lease_duration: cfg.lease_duration,
        renew_deadline: cfg.renew_deadline,
        retry_period: cfg.retry_period,
        ..ElectionConfig::new(name, &leader::identity())
    }
}

/// The scheduler, leader-elected on `kube-system/rkube-scheduler`.
pub async fn run_scheduler(endpoints: Vec<String>, cfg: ControlPlaneConfig, stop: CancellationToken) {
    leader::run_elected(&endpoints, election(&cfg, "rkube-scheduler"), stop, |client, token| {
        crate::scheduler::run(client, token)
    })
    .await
}

/// The controller manager, leader-elected on `kube-system/rkube-controller-manager`.
pub async fn run_controller_manager(endpoints: Vec<String>, cfg: ControlPlaneConfig, stop: CancellationToken) {
    let controllers = cfg.controllers.clone();
    leader::run_elected(&endpoints, election(&cfg, "rkube-controller-manager"), stop, move |client, token| {
        controllers::run(client, controllers.clone(), token)
    })
    .await
}
