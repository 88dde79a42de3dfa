//! One worker per pod bound to this node: sandbox → images → containers → status, restarts with
//! backoff, probes, and graceful termination. The worker is a loop over the latest Pod object
//! (a `watch` channel from the agent) and a 1 s tick that notices exits; each pass reads the
//! runtime, decides, acts, and posts the status when it changed. The decisions that need no
//! I/O (restart or not, the phase, container state reasons) are plain functions below.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::image::{ImageRef, ImageStore, PullPolicy};
use super::probe::{self, ProbeKind, ProbeState};
use super::runtime::{self as rt, Runtime, Sandbox, SandboxConfig, SandboxStatus};
use super::BackoffPolicy;
use crate::api::v1::*;
use crate::api::{self, Object};
use crate::client::{Api, Client, DeleteParams};

/// How often a worker looks at its containers when nothing else happens.
pub const TICK: Duration = Duration::from_secs(1);
/// Grace period when the pod spec gives none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What every worker of a node shares.
pub struct WorkerEnv {
    pub client: Client,
    pub runtime: Arc<dyn Runtime>,
    pub images: ImageStore,
    pub node_ip: Ipv4Addr,
    pub log_root: PathBuf,
    pub backoff: BackoffPolicy,
}

/// restartPolicy as the pod spec says it (empty means Always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: &str) -> RestartPolicy {
        match s {
            "OnFailure" => RestartPolicy::OnFailure,
            "Never" => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` runs again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// Where one container of the pod stands, for the phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Never started yet.
    NotStarted,
    Running,
    /// Exited and will run again.
    Restarting,
    /// Exited for good, with this exit code.
    Done(i32),
}

/// The pod phase from its containers (Kubernetes' rules).
pub fn phase(containers: &[Progress]) -> &'static str {
    if containers.is_empty() || containers.contains(&Progress::NotStarted) {
        return "Pending";
    }
    if containers.iter().all(|c| matches!(c, Progress::Done(_))) {
        if containers.iter().all(|c| *c == Progress::Done(0)) {
            return "Succeeded";
        }
        return "Failed";
    }
    "Running"
}

/// One container of the pod spec and what the worker knows of it.
#[derive(Default)]
struct Slot {
    /// The current attempt's container in the runtime.
    current: Option<rt::ContainerStatus>,
    /// The attempt before it, for lastState.
    previous: Option<rt::ContainerStatus>,
    /// Attempts created so far (the next attempt's number).
    attempts: u32,
    /// Consecutive failures, for the restart backoff.
    failures: u32,
    image_failures: u32,
    /// No new attempt before this.
    not_before: Option<Instant>,
    /// Why it is not running, when it is not.
    waiting: Option<(String, String)>,
    /// Exited and will not run again.
    done: bool,
    ready: bool,
    started: bool,
    probes: Vec<ProbeState>,
}

pub struct PodWorker {
    env: Arc<WorkerEnv>,
    uid: String,
    sandbox: Option<Sandbox>,
    slots: BTreeMap<String, Slot>,
    posted: Option<PodStatus>,
    start_time: String,
}

impl PodWorker {
    /// A worker for pod `uid`, adopting what the runtime already has of it.
    pub fn new(env: Arc<WorkerEnv>, uid: String, adopted: Option<SandboxStatus>) -> PodWorker {
        let mut w =
            PodWorker { env, uid, sandbox: None, slots: BTreeMap::new(), posted: None, start_time: String::new() };
        if let Some(s) = adopted {
            w.start_time = api::time::format(s.sandbox.created_at);
            w.sandbox = Some(s.sandbox);
            let mut by_name: BTreeMap<String, Vec<rt::ContainerStatus>> = BTreeMap::new();
            for c in s.containers {
                by_name.entry(c.name.clone()).or_default().push(c);
            }
            for (name, mut cs) in by_name {
                cs.sort_by_key(|c| c.attempt);
                let current = cs.pop();
                let slot = Slot {
                    attempts: current.as_ref().map_or(0, |c| c.attempt + 1),
                    previous: cs.pop(),
                    current,
                    ..Default::default()
                };
                w.slots.insert(name, slot);
            }
            tracing::info!(pod_uid = %w.uid, containers = w.slots.len(), "adopted a running pod");
        }
        w
    }

    /// Runs until the pod is gone from this node. `pods` carries the latest object, `None` once
    /// it was deleted from the API.
    pub async fn run(mut self, mut pods: watch::Receiver<Option<Arc<Pod>>>, stop: CancellationToken) {
        loop {
            let pod = pods.borrow_and_update().clone();
            let Some(pod) = pod else {
                self.terminate(None, Duration::from_secs(2), &stop).await;
                return;
            };
            if !pod.meta().deletion_timestamp.is_empty() {
                let grace = pod
                    .meta()
                    .deletion_grace_period_seconds
                    .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                    .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64));
                self.terminate(Some(&pod), grace, &stop).await;
                return;
            }
            self.sync(&pod).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                r = pods.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(self.next_wake()) => {}
            }
        }
    }

    fn next_wake(&self) -> Duration {
        let now = Instant::now();
        let mut wake = TICK;
        for s in self.slots.values() {
            if let Some(t) = s.not_before {
                wake = wake.min(t.saturating_duration_since(now));
            }
            for p in &s.probes {
                wake = wake.min(p.next_due().saturating_duration_since(now));
            }
        }
        wake.max(Duration::from_millis(20))
    }

    fn pod_name(pod: &Pod) -> String {
        format!("{}/{}", pod.meta().namespace, pod.meta().name)
    }

    /// One pass: make the runtime match the spec, then report.
    async fn sync(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.clone() else { return };
        let policy = RestartPolicy::parse(&spec.restart_policy);
        if self.start_time.is_empty() {
            self.start_time = api::time::now();
        }
        for c in &spec.containers {
            self.slots.entry(c.name.clone()).or_default();
        }
        if self.posted.is_none() && self.sandbox.is_none() {
            for s in self.slots.values_mut() {
                s.waiting = Some(("ContainerCreating".into(), String::new()));
            }
            self.post(pod, &spec, "").await;
        }
        let mut pod_message = String::new();
        if self.sandbox.is_none() {
            let cfg = SandboxConfig {
                uid: self.uid.clone(),
                name: pod.meta().name.clone(),
                namespace: pod.meta().namespace.clone(),
                host_network: spec.host_network,
            };
            match self.env.runtime.run_sandbox(&cfg).await {
                Ok(s) => self.sandbox = Some(s),
                Err(e) => {
                    tracing::warn!(pod = %Self::pod_name(pod), error = %e, "creating the pod sandbox");
                    pod_message = format!("creating the pod sandbox: {e}");
                }
            }
        }
        if let Some(sandbox) = self.sandbox.clone() {
            for c in &spec.containers {
                self.sync_container(pod, &sandbox, c, policy).await;
            }
        }
        self.post(pod, &spec, &pod_message).await;
    }

    async fn sync_container(&mut self, pod: &Pod, sandbox: &Sandbox, c: &Container, policy: RestartPolicy) {
        let env = self.env.clone();
        let pod_ip = self.pod_ip();
        let Some(slot) = self.slots.get_mut(&c.name) else { return };
        let now = Instant::now();
        // Refresh the current attempt and react to its exit.
        if let Some(cur) = slot.current.clone() {
            match env.runtime.container_status(&cur.id).await {
                Ok(st) => slot.current = Some(st),
                Err(rt::RuntimeError::NotFound { .. }) => slot.current = None,
                Err(e) => {
                    tracing::warn!(container = %c.name, error = %e, "reading a container's status");
                    return;
                }
            }
        }
        if let Some(cur) = &slot.current {
            match cur.state {
                rt::ContainerState::Running | rt::ContainerState::Created => {
                    slot.waiting = None;
                    if cur.state == rt::ContainerState::Running {
                        if slot.probes.is_empty() {
                            slot.probes = probe::for_container(c);
                            slot.ready = !slot.probes.iter().any(|p| p.kind == ProbeKind::Readiness);
                            slot.started = !slot.probes.iter().any(|p| p.kind == ProbeKind::Startup);
                        }
                        let verdict =
                            probe::run_due(&mut slot.probes, &env.runtime, cur, pod_ip, &mut slot.started).await;
                        slot.ready = verdict.ready.unwrap_or(slot.ready) && slot.started;
                        if verdict.kill {
                            tracing::info!(container = %c.name, "liveness or startup probe failed; restarting");
                            let _ = env.runtime.stop_container(&cur.id, Signal::SIGTERM, grace_of(pod)).await;
                        }
                    }
                    return;
                }
                rt::ContainerState::Exited | rt::ContainerState::Unknown => {}
            }
            slot.ready = false;
            slot.probes.clear();
            if slot.done {
                return;
            }
            let code = cur.exit_code.unwrap_or(if cur.state == rt::ContainerState::Unknown { 255 } else { 0 });
            if !policy.restarts(code) {
                slot.done = true;
                slot.waiting = None;
                return;
            }
            if slot.not_before.is_none() {
                let ran = match (cur.started_at, cur.finished_at) {
                    (Some(s), Some(f)) => f.duration_since(s).unwrap_or_default(),
                    _ => Duration::ZERO,
                };
                slot.failures = env.backoff.after_failure(slot.failures, ran);
                // The first restart is at once; later ones back off 10 s, 20 s, … 5 min.
                let delay = env.backoff.delay(slot.failures.saturating_sub(1));
                slot.not_before = Some(now + delay);
            }
        }
        if let Some(t) = slot.not_before {
            if now < t {
                if slot.image_failures > 0 {
                    // ErrImagePull stays visible for the first half of the wait.
                    let delay = env.backoff.delay(slot.image_failures);
                    if t.saturating_duration_since(now) > delay / 2 {
                        return;
                    }
                    slot.waiting = Some(("ImagePullBackOff".into(), format!("back-off pulling image {:?}", c.image)));
                } else {
                    let secs = env.backoff.delay(slot.failures.saturating_sub(1)).as_secs();
                    slot.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!("back-off {secs}s restarting failed container={} pod={}", c.name, pod.meta().name),
                    ));
                }
                return;
            }
        }
        // A new attempt: image, create, start.
        let image = match ImageRef::parse(&c.image) {
            Ok(r) => {
                let pull = match c.image_pull_policy.as_str() {
                    "Always" => PullPolicy::Always,
                    "IfNotPresent" => PullPolicy::IfNotPresent,
                    "Never" => PullPolicy::Never,
                    _ => PullPolicy::default_for(&r),
                };
                env.images.ensure(&r, pull).await
            }
            Err(e) => Err(e),
        };
        let image = match image {
            Ok(i) => {
                slot.image_failures = 0;
                i
            }
            Err(e) => {
                tracing::info!(container = %c.name, image = %c.image, error = %e, "image pull failed");
                slot.image_failures += 1;
                slot.not_before = Some(now + env.backoff.delay(slot.image_failures));
                let reason = match e {
                    super::ImageError::NeverPull { .. } => "ErrImageNeverPull",
                    super::ImageError::InvalidReference { .. } => "InvalidImageName",
                    _ => "ErrImagePull",
                };
                slot.waiting = Some((reason.into(), e.to_string()));
                return;
            }
        };
        let attempt = slot.attempts;
        let cfg = container_config(pod, c, attempt, &env.log_root);
        let created = env.runtime.create_container(&sandbox.id, &cfg, &image).await;
        let result = match created {
            Ok(id) => env.runtime.start_container(&id).await.map(|_| id),
            Err(e) => Err(e),
        };
        slot.attempts += 1;
        slot.not_before = None;
        match result {
            Ok(id) => {
                // Keep one earlier attempt (lastState, `logs --previous`); drop older ones.
                if let Some(old) = slot.previous.take() {
                    let _ = env.runtime.remove_container(&old.id).await;
                }
                slot.previous = slot.current.take();
                slot.waiting = None;
                slot.current = env.runtime.container_status(&id).await.ok();
                slot.probes.clear();
            }
            Err(e) => {
                tracing::info!(container = %c.name, error = %e, "starting a container failed");
                slot.failures = slot.failures.saturating_add(1);
                slot.not_before = Some(now + env.backoff.delay(slot.failures));
                slot.waiting = Some(("CreateContainerError".into(), e.to_string()));
            }
        }
    }

    fn pod_ip(&self) -> Ipv4Addr {
        self.sandbox.as_ref().and_then(|s| s.ip).unwrap_or(self.env.node_ip)
    }

    fn status(&self, pod: &Pod, spec: &PodSpec, message: &str) -> PodStatus {
        let mut progress = Vec::new();
        let mut statuses = Vec::new();
        let policy = RestartPolicy::parse(&spec.restart_policy);
        for c in &spec.containers {
            let Some(slot) = self.slots.get(&c.name) else { continue };
            let mut st = ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                restart_count: slot.attempts.saturating_sub(1) as i32,
                ready: false,
                started: Some(false),
                ..Default::default()
            };
            if let Some(prev) = &slot.previous {
                st.last_state = Some(ContainerState { terminated: Some(terminated(prev)), ..Default::default() });
            }
            let p = match (&slot.current, &slot.waiting) {
                (Some(cur), None) if cur.state == rt::ContainerState::Running => {
                    st.container_id = format!("{}://{}", self.env.runtime.name(), cur.id);
                    st.image_id = cur.image_id.clone();
                    st.ready = slot.ready;
                    st.started = Some(slot.started);
                    st.state = Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: cur.started_at.map(api::time::format).unwrap_or_default(),
                        }),
                        ..Default::default()
                    });
                    Progress::Running
                }
                (Some(cur), None) if matches!(cur.state, rt::ContainerState::Exited | rt::ContainerState::Unknown) => {
                    st.container_id = format!("{}://{}", self.env.runtime.name(), cur.id);
                    st.image_id = cur.image_id.clone();
                    st.state = Some(ContainerState { terminated: Some(terminated(cur)), ..Default::default() });
                    let code = cur.exit_code.unwrap_or(0);
                    if slot.done || !policy.restarts(code) {
                        Progress::Done(code)
                    } else {
                        Progress::Restarting
                    }
                }
                (cur, waiting) => {
                    let (reason, message) = waiting.clone().unwrap_or(("ContainerCreating".into(), String::new()));
                    st.state = Some(ContainerState {
                        waiting: Some(ContainerStateWaiting { reason, message }),
                        ..Default::default()
                    });
                    if slot.attempts == 0 && cur.is_none() {
                        Progress::NotStarted
                    } else {
                        Progress::Restarting
                    }
                }
            };
            progress.push(p);
            statuses.push(st);
        }
        let phase = phase(&progress);
        let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
        let old = pod.status.clone().unwrap_or_default();
        let mut conditions = old.conditions.clone();
        let now = api::time::now();
        let mut set = |kind: &str, ok: bool| {
            let status = if ok { "True" } else { "False" }.to_string();
            match conditions.iter_mut().find(|c| c.r#type == kind) {
                Some(c) if c.status == status => {}
                Some(c) => {
                    c.status = status;
                    c.last_transition_time = now.clone();
                }
                None => conditions.push(PodCondition {
                    r#type: kind.into(),
                    status,
                    last_transition_time: now.clone(),
                    ..Default::default()
                }),
            }
        };
        set("Initialized", true);
        set("ContainersReady", all_ready && phase == "Running");
        set("Ready", all_ready && phase == "Running");
        set("PodScheduled", true);
        PodStatus {
            phase: phase.into(),
            conditions,
            message: message.into(),
            reason: String::new(),
            host_ip: self.env.node_ip.to_string(),
            pod_ip: if self.sandbox.is_some() { self.pod_ip().to_string() } else { String::new() },
            start_time: self.start_time.clone(),
            container_statuses: statuses,
            nominated_node_name: old.nominated_node_name,
            qos_class: old.qos_class,
        }
    }

    async fn post(&mut self, pod: &Pod, spec: &PodSpec, message: &str) {
        let status = self.status(pod, spec, message);
        if self.posted.as_ref() == Some(&status) {
            return;
        }
        let value = match serde_json::to_value(&status) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "serializing a pod status");
                return;
            }
        };
        let api = Api::<Pod>::namespaced(&self.env.client, &pod.meta().namespace);
        match api.patch(&pod.meta().name, &serde_json::json!({ "status": value }), true).await {
            Ok(_) => self.posted = Some(status),
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(pod = %Self::pod_name(pod), error = %e, "posting pod status"),
        }
    }

    /// Stops the containers (SIGTERM, `grace`, SIGKILL), removes the sandbox, and deletes the
    /// pod object for good when it still exists. The object stays (Terminating) until the
    /// sandbox is gone: removal is retried with backoff, so a pod object never outlives what it
    /// held on the node unnoticed; if the agent stops first, its next start finishes the job.
    async fn terminate(&mut self, pod: Option<&Pod>, grace: Duration, stop: &CancellationToken) {
        let runtime = self.env.runtime.clone();
        let stops = self.slots.values().filter_map(|s| s.current.as_ref()).map(|c| {
            let runtime = runtime.clone();
            let id = c.id.clone();
            async move {
                if let Err(e) = runtime.stop_container(&id, Signal::SIGTERM, grace).await {
                    tracing::warn!(container = %id, error = %e, "stopping a container");
                }
            }
        });
        futures::future::join_all(stops).await;
        let mut retry = Duration::from_millis(200);
        loop {
            match self.remove_sandbox().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod_uid = %self.uid, error = %e, retry_in = ?retry, "removing a pod sandbox");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(10));
                }
            }
        }
        let uid = self.uid.clone();
        if let Err(e) = super::logs::remove_pod_logs_except(&self.env.log_root, &|u| u != uid) {
            tracing::warn!(pod_uid = %self.uid, error = %e, "removing the logs of a terminated pod");
        }
        if let Some(pod) = pod {
            let api = Api::<Pod>::namespaced(&self.env.client, &pod.meta().namespace);
            let p = DeleteParams {
                grace_period_seconds: Some(0),
                precondition_uid: self.uid.clone(),
                ..Default::default()
            };
            match api.delete(&pod.meta().name, &p).await {
                Ok(_) => tracing::info!(pod = %Self::pod_name(pod), "pod terminated and removed"),
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => tracing::warn!(pod = %Self::pod_name(pod), error = %e, "deleting a terminated pod"),
            }
        }
    }

    /// Removes this pod's sandbox, found by the pod's uid when the worker does not know it yet
    /// (one being created when the pod went). Nothing to remove is success.
    async fn remove_sandbox(&mut self) -> Result<(), rt::RuntimeError> {
        let id = match &self.sandbox {
            Some(s) => Some(s.id.clone()),
            None => self
                .env
                .runtime
                .list()
                .await?
                .into_iter()
                .find(|s| s.sandbox.config.uid == self.uid)
                .map(|s| s.sandbox.id),
        };
        if let Some(id) = id {
            self.env.runtime.remove_sandbox(&id).await?;
        }
        self.sandbox = None;
        Ok(())
    }
}

fn grace_of(pod: &Pod) -> Duration {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64))
}

fn terminated(c: &rt::ContainerStatus) -> ContainerStateTerminated {
    let code = c.exit_code.unwrap_or(if c.state == rt::ContainerState::Unknown { 255 } else { 0 });
    let reason = c.reason.clone().unwrap_or_else(|| {
        if c.oom_killed {
            "OOMKilled".into()
        } else if code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        }
    });
    ContainerStateTerminated {
        exit_code: code,
        signal: c.signal.unwrap_or(0),
        reason,
        message: c.message.clone().unwrap_or_default(),
        started_at: c.started_at.map(api::time::format).unwrap_or_default(),
        finished_at: c.finished_at.map(api::time::format).unwrap_or_default(),
        container_id: c.id.clone(),
    }
}

/// The runtime's view of one container attempt of the pod spec.
pub fn container_config(pod: &Pod, c: &Container, attempt: u32, log_root: &std::path::Path) -> rt::ContainerConfig {
    let limits = c.resources.as_ref().map(|r| r.limits.clone()).unwrap_or_default();
    let m = pod.meta();
    rt::ContainerConfig {
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        env: c.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect(),
        working_dir: (!c.working_dir.is_empty()).then(|| c.working_dir.clone()),
        cpu_millis: limits.get("cpu").and_then(|q| api::quantity::cpu_millis(q)).map(|v| v.max(1) as u64),
        memory_bytes: limits.get("memory").and_then(|q| api::quantity::bytes(q)).map(|v| v.max(0) as u64),
        log_path: super::logs::pod_log_path(log_root, &m.namespace, &m.name, &m.uid, &c.name, attempt),
        attempt,
    }
}

/// The newest log file of a container (or the one before it, `previous`).
pub fn find_log(log_root: &std::path::Path, pod: &Pod, container: &str, previous: bool) -> Option<PathBuf> {
    let m = pod.meta();
    let dir = super::logs::pod_log_path(log_root, &m.namespace, &m.name, &m.uid, container, 0).parent()?.to_path_buf();
    let mut attempts: Vec<u32> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    attempts.sort_unstable();
    let n = if previous { attempts.iter().rev().nth(1) } else { attempts.last() }?;
    Some(dir.join(format!("{n}.log")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_follows_kubernetes_rules() {
        use Progress::*;
        assert_eq!(phase(&[]), "Pending");
        assert_eq!(phase(&[NotStarted, Running]), "Pending");
        assert_eq!(phase(&[Running, Done(0)]), "Running");
        assert_eq!(phase(&[Restarting]), "Running");
        assert_eq!(phase(&[Done(0), Done(0)]), "Succeeded");
        assert_eq!(phase(&[Done(0), Done(1)]), "Failed");
    }

    #[test]
    fn restart_policy_decides_on_exit_codes() {
        assert!(RestartPolicy::parse("").restarts(0));
        assert!(RestartPolicy::parse("Always").restarts(1));
        assert!(!RestartPolicy::parse("OnFailure").restarts(0));
        assert!(RestartPolicy::parse("OnFailure").restarts(2));
        assert!(!RestartPolicy::parse("Never").restarts(1));
    }
}
