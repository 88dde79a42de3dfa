//! What both runtimes share: the state directory (sandbox and container records), starting the
//! shim, reading status from the shim's records, stop with a grace period, removal, and listing
//! for adoption. A [`Backend`] supplies what differs (isolation, network, signalling, cleanup).
//!
//! Layout: `STATE/sandboxes/<id>/sandbox.json` (+ `hosts`, `resolv.conf`),
//! `STATE/containers/<id>/container.json` (+ the shim's `shim.json`, `started.json`,
//! `exit.json`, `shim.log`, and the backend's files).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use super::image::Image;
use super::logs::RotationPolicy;
use super::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, Runtime, RuntimeConfig, RuntimeError, Sandbox, SandboxConfig,
    SandboxStatus,
};
use super::shim::{self, Exited, ShimSpec, Started};

/// How often stop polls for the exit record.
const EXIT_POLL: Duration = Duration::from_millis(10);
/// How long after SIGKILL a container may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long the shim may take to report that the process runs.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A container as recorded when created.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    pub image_id: String,
    pub created_at: SystemTime,
}

/// What differs between runtimes.
#[async_trait::async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn version(&self) -> String;
    /// Network for a new sandbox: (pod IP, netns path), or none for the node's network.
    async fn setup_network(
        &self,
        id: &str,
        config: &SandboxConfig,
    ) -> Result<(Option<std::net::Ipv4Addr>, Option<PathBuf>), RuntimeError>;
    async fn teardown_network(&self, sandbox: &Sandbox) -> Result<(), RuntimeError>;
    /// Prepares the container's files; returns how the shim runs it.
    async fn prepare(
        &self,
        dir: &Path,
        sandbox: &Sandbox,
        sandbox_dir: &Path,
        record: &ContainerRecord,
        image: &Image,
        rotation: RotationPolicy,
    ) -> Result<ShimSpec, RuntimeError>;
    async fn signal(&self, record: &ContainerRecord, started: &Started, signal: Signal) -> Result<(), RuntimeError>;
    /// The command that runs `argv` inside the running container whose files are in `dir`.
    fn exec_command(
        &self,
        dir: &Path,
        record: &ContainerRecord,
        argv: &[String],
    ) -> Result<tokio::process::Command, RuntimeError>;
    /// Releases what `prepare` and the run left (runc state, mounts). Idempotent.
    async fn cleanup(&self, dir: &Path, record: &ContainerRecord) -> Result<(), RuntimeError>;
}

pub(crate) struct Engine<B> {
    state: PathBuf,
    shim: PathBuf,
    rotation: RotationPolicy,
    backend: B,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { path, source }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| RuntimeError::Corrupt { path: path.to_path_buf(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A container's status from its records (pure: `shim_alive` is passed in).
pub(crate) fn derive_status(
    record: &ContainerRecord,
    started: Option<&Started>,
    exited: Option<&Exited>,
    shim_alive: bool,
) -> ContainerStatus {
    let mut s = ContainerStatus {
        id: record.id.clone(),
        sandbox_id: record.sandbox_id.clone(),
        name: record.config.name.clone(),
        attempt: record.config.attempt,
        image: record.config.image.clone(),
        image_id: record.image_id.clone(),
        state: ContainerState::Created,
        pid: started.map(|s| s.pid),
        created_at: record.created_at,
        started_at: started.map(|s| s.started_at),
        finished_at: None,
        exit_code: None,
        signal: None,
        oom_killed: false,
        reason: None,
        message: None,
        log_path: record.config.log_path.clone(),
    };
    match (started, exited) {
        (_, Some(e)) => {
            s.state = ContainerState::Exited;
            s.pid = None;
            s.finished_at = Some(e.finished_at);
            s.exit_code = Some(e.exit_code);
            s.signal = e.signal;
            s.oom_killed = e.oom_killed;
            s.reason = Some(
                if e.start_error.is_some() {
                    "StartError"
                } else if e.oom_killed {
                    "OOMKilled"
                } else if e.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_string(),
            );
            s.message = e.start_error.clone();
        }
        (Some(_), None) if shim_alive => s.state = ContainerState::Running,
        (Some(_), None) => {
            s.state = ContainerState::Unknown;
            s.pid = None;
            s.message = Some("the container's supervisor exited without recording how the container ended".into());
        }
        (None, None) => {}
    }
    s
}

impl<B: Backend> Engine<B> {
    pub(crate) fn new(config: &RuntimeConfig, backend: B) -> Result<Self, RuntimeError> {
        for d in ["sandboxes", "containers"] {
            let p = config.state_dir.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Engine {
            state: config.state_dir.clone(),
            shim: config.shim.clone(),
            rotation: config.log_rotation,
            backend,
        })
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    fn valid_id(kind: &'static str, id: &str) -> Result<(), RuntimeError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(RuntimeError::NotFound { kind, id: id.to_string() });
        }
        Ok(())
    }

    fn sandbox(&self, id: &str) -> Result<Sandbox, RuntimeError> {
        Self::valid_id("sandbox", id)?;
        read_json(&self.sandbox_dir(id).join("sandbox.json"))?
            .ok_or_else(|| RuntimeError::NotFound { kind: "sandbox", id: id.to_string() })
    }

    fn record(&self, id: &str) -> Result<Option<ContainerRecord>, RuntimeError> {
        Self::valid_id("container", id)?;
        read_json(&self.container_dir(id).join("container.json"))
    }

    fn records(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        let dir = self.state.join("containers");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            if let Some(r) = read_json::<ContainerRecord>(&e.path().join("container.json"))? {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.created_at);
        Ok(out)
    }

    fn status_of(&self, record: &ContainerRecord) -> Result<(ContainerStatus, Option<Started>), RuntimeError> {
        let dir = self.container_dir(&record.id);
        // Read the exit record first: a container that exits between the two reads is then
        // seen running (and is found exited next time) rather than "unknown".
        let exited: Option<Exited> = read_json(&dir.join(shim::EXIT_FILE))?;
        let started: Option<Started> = read_json(&dir.join(shim::STARTED_FILE))?;
        let alive = started.as_ref().is_some_and(shim::shim_alive);
        let exited = match exited {
            Some(e) => Some(e),
            // It may have exited after we read the exit record and before the liveness check.
            None if started.is_some() && !alive => read_json(&dir.join(shim::EXIT_FILE))?,
            None => None,
        };
        Ok((derive_status(record, started.as_ref(), exited.as_ref(), alive), started))
    }

    async fn wait_exit(&self, record: &ContainerRecord, timeout: Duration) -> Result<ContainerStatus, RuntimeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, _) = self.status_of(record)?;
            if status.state != ContainerState::Running || Instant::now() >= deadline {
                return Ok(status);
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    async fn kill_and_wait(
        &self,
        record: &ContainerRecord,
        signal: Signal,
        grace: Duration,
    ) -> Result<ContainerStatus, RuntimeError> {
        let (status, started) = self.status_of(record)?;
        let Some(started) = started.filter(|_| status.state == ContainerState::Running) else {
            return Ok(status);
        };
        if signal != Signal::SIGKILL {
            tracing::debug!(container = %record.id, ?signal, ?grace, "stopping container");
            self.backend.signal(record, &started, signal).await?;
            let status = self.wait_exit(record, grace).await?;
            if status.state != ContainerState::Running {
                return Ok(status);
            }
            tracing::info!(container = %record.id, ?grace, "container outlived its grace period; killing it");
        }
        self.backend.signal(record, &started, Signal::SIGKILL).await?;
        let status = self.wait_exit(record, KILL_WAIT).await?;
        if status.state == ContainerState::Running {
            return Err(RuntimeError::StopTimeout { container: record.id.clone(), waited: KILL_WAIT });
        }
        Ok(status)
    }
}

#[async_trait::async_trait]
impl<B: Backend> Runtime for Engine<B> {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn version(&self) -> String {
        self.backend.version()
    }

    #[tracing::instrument(skip_all, fields(ns = %config.namespace, pod = %config.name))]
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
        let id = new_id();
        let dir = self.sandbox_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Recorded before the network exists, so a crash in between leaves a record that
        // remove_sandbox (or adoption) can clean up.
        let mut sandbox =
            Sandbox { id: id.clone(), config: config.clone(), ip: None, netns: None, created_at: SystemTime::now() };
        let path = dir.join("sandbox.json");
        shim::write_json_atomic(&path, &sandbox).map_err(io_err(&path))?;
        let res = async {
            let (ip, netns) = self.backend.setup_network(&id, config).await?;
            sandbox.ip = ip;
            sandbox.netns = netns;
            let hosts = format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                ip.map(|i| i.to_string()).unwrap_or_else(|| "127.0.1.1".into()),
                config.name
            );
            let hp = dir.join("hosts");
            std::fs::write(&hp, hosts).map_err(io_err(&hp))?;
            let rp = dir.join("resolv.conf");
            let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
            std::fs::write(&rp, resolv).map_err(io_err(&rp))?;
            shim::write_json_atomic(&path, &sandbox).map_err(io_err(&path))
        }
        .await;
        if let Err(e) = res {
            if let Err(c) = self.remove_sandbox(&id).await {
                tracing::warn!(sandbox = %id, error = %c, "cleaning up a sandbox that failed to start");
            }
            return Err(e);
        }
        tracing::info!(sandbox = %id, ip = ?sandbox.ip, "sandbox ready");
        Ok(sandbox)
    }

    #[tracing::instrument(skip_all, fields(sandbox = %sandbox_id))]
    async fn remove_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        let sandbox = match self.sandbox(sandbox_id) {
            Ok(s) => s,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        for r in self.records()?.into_iter().filter(|r| r.sandbox_id == sandbox_id) {
            self.remove_container(&r.id).await?;
        }
        self.backend.teardown_network(&sandbox).await?;
        let dir = self.sandbox_dir(sandbox_id);
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        tracing::info!("sandbox removed");
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(sandbox = %sandbox_id, container = %config.name))]
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        image: &Image,
    ) -> Result<String, RuntimeError> {
        let sandbox = self.sandbox(sandbox_id)?;
        if config.name.is_empty() {
            return Err(RuntimeError::InvalidConfig {
                container: config.name.clone(),
                field: "name",
                reason: "empty".into(),
            });
        }
        let record = ContainerRecord {
            id: new_id(),
            sandbox_id: sandbox_id.to_string(),
            config: config.clone(),
            image_id: image.id.clone(),
            created_at: SystemTime::now(),
        };
        let dir = self.container_dir(&record.id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join("container.json");
        shim::write_json_atomic(&path, &record).map_err(io_err(&path))?;
        let prepared = self
            .backend
            .prepare(&dir, &sandbox, &self.sandbox_dir(sandbox_id), &record, image, self.rotation)
            .await
            .and_then(|spec| {
                let p = dir.join(shim::SPEC_FILE);
                shim::write_json_atomic(&p, &spec).map_err(io_err(&p))
            });
        if let Err(e) = prepared {
            let _ = self.remove_container(&record.id).await;
            return Err(e);
        }
        Ok(record.id)
    }

    #[tracing::instrument(skip_all, fields(container = %id))]
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let record = self.record(id)?.ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.into() })?;
        let (status, _) = self.status_of(&record)?;
        if status.state != ContainerState::Created {
            return Err(RuntimeError::WrongState { container: id.into(), state: status.state, op: "start" });
        }
        let dir = self.container_dir(id);
        let log = dir.join("shim.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io_err(&log))?;
        let child = tokio::process::Command::new(&self.shim)
            .arg("shim")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| RuntimeError::StartFailed {
                container: id.into(),
                message: format!("cannot run the shim {}: {e}", self.shim.display()),
            })?;
        let out = tokio::time::timeout(START_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| RuntimeError::StartFailed {
                container: id.into(),
                message: format!("the shim did not report within {START_TIMEOUT:?}"),
            })?
            .map_err(io_err(&dir))?;
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match msg.strip_prefix("ok ") {
            Some(_) => {
                tracing::debug!("container started");
                Ok(())
            }
            None => Err(RuntimeError::StartFailed {
                container: record.config.name.clone(),
                message: msg.strip_prefix("error ").unwrap_or(&msg).to_string(),
            }),
        }
    }

    #[tracing::instrument(skip_all, fields(container = %id))]
    async fn stop_container(&self, id: &str, signal: Signal, grace: Duration) -> Result<ContainerStatus, RuntimeError> {
        let record = self.record(id)?.ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.into() })?;
        self.kill_and_wait(&record, signal, grace).await
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let record = self.record(id)?.ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.into() })?;
        Ok(self.status_of(&record)?.0)
    }

    #[tracing::instrument(skip_all, fields(container = %id))]
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(record) = self.record(id)? else { return Ok(()) };
        self.kill_and_wait(&record, Signal::SIGKILL, Duration::ZERO).await?;
        let dir = self.container_dir(id);
        self.backend.cleanup(&dir, &record).await?;
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        let dir = self.state.join("sandboxes");
        let records = self.records()?;
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let Some(sandbox) = read_json::<Sandbox>(&e.path().join("sandbox.json"))? else { continue };
            let mut containers = Vec::new();
            for r in records.iter().filter(|r| r.sandbox_id == sandbox.id) {
                containers.push(self.status_of(r)?.0);
            }
            out.push(SandboxStatus { sandbox, containers });
        }
        out.sort_by_key(|s| s.sandbox.created_at);
        Ok(out)
    }

    #[tracing::instrument(skip_all, fields(container = %id))]
    async fn exec(&self, id: &str, argv: &[String]) -> Result<tokio::process::Child, RuntimeError> {
        Self::valid_id("container", id)?;
        let record = self.record(id)?.ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.into() })?;
        let (status, _) = self.status_of(&record)?;
        if status.state != ContainerState::Running {
            return Err(RuntimeError::WrongState { container: record.config.name, state: status.state, op: "exec" });
        }
        if argv.is_empty() {
            return Err(RuntimeError::InvalidConfig {
                container: record.config.name,
                field: "command",
                reason: "an exec needs a command".into(),
            });
        }
        let dir = self.container_dir(id);
        let mut cmd = self.backend.exec_command(&dir, &record, argv)?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| RuntimeError::StartFailed {
            container: record.config.name.clone(),
            message: format!("exec {:?}: {e}", argv[0]),
        })?;
        tracing::debug!(argv = ?argv, "exec started");
        Ok(child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ContainerRecord {
        ContainerRecord {
            id: "c1".into(),
            sandbox_id: "s1".into(),
            config: ContainerConfig { name: "web".into(), ..Default::default() },
            image_id: "sha256:x".into(),
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    fn started() -> Started {
        Started { pid: 42, pid_start_ticks: 2, shim_pid: 41, shim_start_ticks: 1, started_at: SystemTime::UNIX_EPOCH }
    }

    fn exited(code: i32, signal: Option<i32>, oom: bool) -> Exited {
        Exited { exit_code: code, signal, oom_killed: oom, finished_at: SystemTime::UNIX_EPOCH, start_error: None }
    }

    #[test]
    fn status_follows_the_shim_records() {
        let r = record();
        assert_eq!(derive_status(&r, None, None, false).state, ContainerState::Created);
        let running = derive_status(&r, Some(&started()), None, true);
        assert_eq!((running.state, running.pid), (ContainerState::Running, Some(42)));
        let lost = derive_status(&r, Some(&started()), None, false);
        assert_eq!((lost.state, lost.pid), (ContainerState::Unknown, None));
        let cases = [
            (exited(0, None, false), "Completed"),
            (exited(1, None, false), "Error"),
            (exited(137, Some(9), true), "OOMKilled"),
            (exited(143, Some(15), false), "Error"),
        ];
        for (e, reason) in cases {
            let s = derive_status(&r, Some(&started()), Some(&e), false);
            assert_eq!(
                (s.state, s.exit_code, s.reason.as_deref()),
                (ContainerState::Exited, Some(e.exit_code), Some(reason))
            );
            assert_eq!(s.oom_killed, e.oom_killed);
        }
        let failed = Exited { start_error: Some("no such file".into()), ..exited(128, None, false) };
        let s = derive_status(&r, None, Some(&failed), false);
        assert_eq!((s.reason.as_deref(), s.message.as_deref()), (Some("StartError"), Some("no such file")));
    }
}
