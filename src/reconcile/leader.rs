//! Leader election with Lease objects, as client-go does it, plus fencing: while it leads, the
//! component's client sends the Lease's holder and transition count with every write, and the
//! API server refuses the write once the Lease has moved on. A leader that was paused past its
//! lease and wakes up therefore cannot change anything, even before it notices.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::api::v1::{Lease, LeaseSpec};
use crate::api::{self, Object};
use crate::client::{Api, Client, ClientError, Fence};

#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// Kubernetes' defaults: 15 s lease, 10 s renew deadline, 2 s retry, in kube-system.
    pub fn new(name: &str, identity: &str) -> Self {
        ElectionConfig {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// A process-unique identity: host name and a random suffix.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "rkube".to_string() } else { host };
    format!("{host}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// What the elector knows of the lease's last change, by its own clock (never the holder's).
struct Observed {
    holder: String,
    renew_time: String,
    transitions: i32,
    at: Instant,
}

/// Runs the election until `shutdown`. Each time this process becomes leader, `lead` runs with
/// a client that carries the lease's fence and a token cancelled when leadership is lost.
pub async fn run_elected<F, Fut>(endpoints: &[String], cfg: ElectionConfig, shutdown: CancellationToken, lead: F)
where
    F: Fn(Client, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let lease_client = match Client::new(endpoints) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "leader election cannot start");
            return;
        }
    };
    let leases = Api::<Lease>::namespaced(&lease_client, &cfg.namespace);
    let mut observed: Option<Observed> = None;
    let mut leading: Option<(CancellationToken, Instant, tokio::task::JoinHandle<()>)> = None;
    loop {
        let outcome = try_acquire_or_renew(&leases, &cfg, &mut observed).await;
        match (outcome, leading.as_mut()) {
            (Ok(Some(transitions)), None) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, transitions, "became leader");
                let work_client = match Client::new(endpoints) {
                    Ok(c) => c,
                    Err(_) => continue,
                };
                work_client.set_fence(Some(Fence {
                    namespace: cfg.namespace.clone(),
                    lease: cfg.name.clone(),
                    holder: cfg.identity.clone(),
                    transitions,
                }));
                let token = shutdown.child_token();
                let task = tokio::spawn(lead(work_client, token.clone()));
                leading = Some((token, Instant::now(), task));
            }
            (Ok(Some(_)), Some((_, renewed, _))) => *renewed = Instant::now(),
            (result, Some((token, renewed, _))) => {
                if let Err(e) = &result {
                    tracing::debug!(lease = %cfg.name, error = %e, "renewing the lease failed");
                }
                let lost = matches!(result, Ok(None)) || renewed.elapsed() >= cfg.renew_deadline;
                if lost {
                    tracing::warn!(lease = %cfg.name, identity = %cfg.identity, "lost leadership");
                    token.cancel();
                    if let Some((_, _, task)) = leading.take() {
                        let _ = task.await;
                    }
                }
            }
            (_, None) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    if let Some((token, _, task)) = leading.take() {
        token.cancel();
        let _ = task.await;
        // Hand over at once rather than after the lease runs out.
        if let Ok(mut lease) = leases.get(&cfg.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity == cfg.identity {
                spec.holder_identity.clear();
                spec.lease_duration_seconds = Some(1);
                let _ = leases.update(&lease).await;
            }
        }
    }
}

/// One round: `Some(transitions)` when this process holds the lease afterwards.
async fn try_acquire_or_renew(
    leases: &Api<Lease>,
    cfg: &ElectionConfig,
    observed: &mut Option<Observed>,
) -> Result<Option<i32>, ClientError> {
    let now = api::time::now();
    let mine = |transitions: i32, acquire: String| LeaseSpec {
        holder_identity: cfg.identity.clone(),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
        acquire_time: acquire,
        renew_time: now.clone(),
        lease_transitions: Some(transitions),
    };
    let Some(mut lease) = leases.get_opt(&cfg.name).await? else {
        let mut lease = Lease::default();
        lease.meta_mut().name = cfg.name.clone();
        lease.meta_mut().namespace = cfg.namespace.clone();
        lease.spec = Some(mine(0, now.clone()));
        return match leases.create(&lease).await {
            Ok(_) => Ok(Some(0)),
            Err(e) if e.is_already_exists() => Ok(None),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    let changed = observed.as_ref().is_none_or(|o| {
        o.holder != spec.holder_identity || o.renew_time != spec.renew_time || o.transitions != transitions
    });
    if changed {
        *observed = Some(Observed {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            transitions,
            at: Instant::now(),
        });
    }
    let held_by_me = spec.holder_identity == cfg.identity;
    if !held_by_me && !spec.holder_identity.is_empty() {
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let seen = observed.as_ref().map(|o| o.at).unwrap_or_else(Instant::now);
        if seen.elapsed() < duration {
            return Ok(None);
        }
    }
    let new_spec =
        if held_by_me { mine(transitions, spec.acquire_time.clone()) } else { mine(transitions + 1, now.clone()) };
    let new_transitions = new_spec.lease_transitions.unwrap_or(0);
    lease.spec = Some(new_spec);
    match leases.update(&lease).await {
        Ok(_) => Ok(Some(new_transitions)),
        Err(e) if e.is_conflict() => Ok(None),
        Err(e) => Err(e),
    }
}
