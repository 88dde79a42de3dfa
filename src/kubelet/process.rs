//! The `process` runtime backend: containers are plain host processes (like Nomad's raw_exec),
//! for machines without root or runc. No filesystem, network, pid or resource isolation: the
//! image only supplies the default command and environment, pods share the node's network
//! (their IP is the node's), and cpu/memory limits are not enforced (a warning says so).

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::engine::{read_json, Backend, ContainerRecord};
use super::image::Image;
use super::logs::RotationPolicy;
use super::runtime::{merge_env, resolve_argv, RuntimeError, Sandbox, SandboxConfig};
use super::shim::{proc_start_ticks, ShimMode, ShimSpec, Started, SPEC_FILE, STARTED_FILE};

pub(crate) struct Process;

#[async_trait::async_trait]
impl Backend for Process {
    fn name(&self) -> &'static str {
        "process"
    }

    fn version(&self) -> String {
        "process (no isolation)".into()
    }

    async fn setup_network(
        &self,
        _id: &str,
        _config: &SandboxConfig,
    ) -> Result<(Option<std::net::Ipv4Addr>, Option<PathBuf>), RuntimeError> {
        Ok((None, None))
    }

    async fn teardown_network(&self, _sandbox: &Sandbox) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn prepare(
        &self,
        dir: &Path,
        _sandbox: &Sandbox,
        _sandbox_dir: &Path,
        record: &ContainerRecord,
        image: &Image,
        rotation: RotationPolicy,
    ) -> Result<ShimSpec, RuntimeError> {
        let c = &record.config;
        let argv = resolve_argv(&image.config, &c.command, &c.args);
        if argv.is_empty() {
            return Err(RuntimeError::NoCommand { container: c.name.clone() });
        }
        if c.cpu_millis.is_some() || c.memory_bytes.is_some() {
            tracing::warn!(container = %c.name, "the process runtime does not enforce cpu or memory limits");
        }
        let cwd = match &c.working_dir {
            Some(w) => PathBuf::from(w),
            None => dir.to_path_buf(),
        };
        Ok(ShimSpec {
            id: record.id.clone(),
            argv,
            env: merge_env(image.config.env.as_deref().unwrap_or_default(), &c.env),
            cwd,
            log_path: c.log_path.clone(),
            rotation,
            mode: ShimMode::Process,
        })
    }

    async fn signal(&self, _record: &ContainerRecord, started: &Started, signal: Signal) -> Result<(), RuntimeError> {
        // The shim is alive (checked by the caller), so it has not reaped the process group's
        // leader yet and the pid cannot have been reused.
        match nix::sys::signal::killpg(Pid::from_raw(started.pid as i32), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(RuntimeError::Io { path: PathBuf::from(format!("/proc/{}", started.pid)), source: e.into() }),
        }
    }

    fn exec_command(
        &self,
        dir: &Path,
        _record: &ContainerRecord,
        argv: &[String],
    ) -> Result<tokio::process::Command, RuntimeError> {
        // The container's environment and working directory, as its shim started it.
        let path = dir.join(SPEC_FILE);
        let spec: ShimSpec =
            read_json(&path)?.ok_or_else(|| RuntimeError::Corrupt { path, reason: "no shim spec".into() })?;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear().current_dir(&spec.cwd);
        cmd.envs(spec.env.iter().filter_map(|kv| kv.split_once('=')));
        Ok(cmd)
    }

    async fn cleanup(&self, dir: &Path, _record: &ContainerRecord) -> Result<(), RuntimeError> {
        // A process whose shim died (killed, or the node's init reaped it) is not supervised
        // any more: kill its group here, if it is still the process we started.
        if let Some(started) = read_json::<Started>(&dir.join(STARTED_FILE))? {
            if started.pid_start_ticks != 0 && proc_start_ticks(started.pid) == Some(started.pid_start_ticks) {
                tracing::warn!(pid = started.pid, "killing a container process whose supervisor is gone");
                let _ = nix::sys::signal::killpg(Pid::from_raw(started.pid as i32), Signal::SIGKILL);
            }
        }
        Ok(())
    }
}
