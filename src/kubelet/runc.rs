//! The `runc` runtime backend: each container is an OCI bundle (`config.json` built with the
//! `oci-spec` crate by [`build_spec`], a pure function) whose root filesystem is an overlay of
//! the image's unpacked rootfs (read-only, shared) and a per-container upper directory. Containers
//! join their pod's network namespace and get their own pid, mount, uts and ipc namespaces and a
//! cgroup (`/rkube/<container id>`) with the cpu quota and memory limit; runc maps those to
//! cgroup v2 `cpu.max`/`memory.max` or their v1 equivalents. runc keeps its state under
//! `STATE/runc` (its `--root`), apart from any other runc user on the node.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::engine::{io_err, Backend, ContainerRecord};
use super::image::Image;
use super::logs::RotationPolicy;
use super::network::PodNetwork;
use super::runtime::{merge_env, resolve_argv, resolve_user, RuntimeConfig, RuntimeError, Sandbox, SandboxConfig};
use super::shim::{ShimMode, ShimSpec, Started};

/// The cpu quota period (100 ms, as Kubernetes uses).
pub const CPU_PERIOD_US: u64 = 100_000;

pub(crate) struct Runc {
    runc: PathBuf,
    root: PathBuf,
    version: String,
    network: Option<PodNetwork>,
}

impl Runc {
    pub(crate) fn new(config: &RuntimeConfig, version: String) -> Result<Runc, RuntimeError> {
        let root = config.state_dir.join("runc");
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        let network = match &config.network {
            Some(n) => Some(PodNetwork::new(n.clone(), &config.state_dir)?),
            None => None,
        };
        Ok(Runc { runc: config.runc.clone(), root, version, network })
    }

    async fn runc(&self, op: &'static str, id: &str, args: &[&str]) -> Result<(), RuntimeError> {
        let out = tokio::process::Command::new(&self.runc)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| RuntimeError::Runc { op, id: id.into(), message: format!("cannot run runc: {e}") })?;
        if out.status.success() {
            return Ok(());
        }
        Err(RuntimeError::Runc { op, id: id.into(), message: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// Everything `build_spec` needs.
#[derive(Clone, Debug, Default)]
pub struct SpecInput {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: Option<String>,
    pub rootfs: PathBuf,
    /// The pod's network namespace; `None` shares the node's network (and UTS) namespace.
    pub netns: Option<PathBuf>,
    pub cgroup: String,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    /// The open-files limit (the node's own hard limit: a container cannot be given more).
    pub nofile: u64,
}

/// This process's hard open-files limit.
pub fn nofile_hard_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        1024
    }
}

/// The capabilities a container gets (Docker's default set).
const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The OCI runtime config of one container.
pub fn build_spec(input: &SpecInput) -> Result<Spec, oci_spec::OciSpecError> {
    let caps: oci_spec::runtime::Capabilities = CAPABILITIES.into_iter().collect();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(input.uid).gid(input.gid).build()?)
        .args(input.argv.clone())
        .env(input.env.clone())
        .cwd(input.cwd.clone())
        .no_new_privileges(false)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps.clone())
                .build()?,
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(input.nofile)
            .soft(input.nofile)
            .build()?])
        .build()?;
    let mut namespaces = vec![
        LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Pid).build()?,
        LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Ipc).build()?,
        LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Mount).build()?,
    ];
    if let Some(netns) = &input.netns {
        namespaces.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(netns.clone()).build()?);
        namespaces.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Uts).build()?);
    }
    let mut resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?]);
    if let Some(bytes) = input.memory_bytes {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        resources = resources.memory(LinuxMemoryBuilder::default().limit(bytes).build()?);
    }
    if let Some(m) = input.cpu_millis {
        // At least 1 ms per period: the kernel's minimum quota.
        let quota = (m.saturating_mul(CPU_PERIOD_US) / 1000).max(1000);
        let quota = i64::try_from(quota).unwrap_or(i64::MAX);
        resources = resources.cpu(LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build()?);
    }
    let default_linux = oci_spec::runtime::Linux::default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&input.cgroup))
        .resources(resources.build()?)
        .masked_paths(default_linux.masked_paths().clone().unwrap_or_default())
        .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default())
        .build()?;
    let mut mounts = oci_spec::runtime::get_default_mounts();
    for (dest, src) in [("/etc/hosts", &input.hosts), ("/etc/resolv.conf", &input.resolv_conf)] {
        if let Some(src) = src {
            mounts.push(
                MountBuilder::default()
                    .destination(dest)
                    .typ("bind")
                    .source(src.clone())
                    .options(vec!["rbind".to_string(), "ro".to_string()])
                    .build()?,
            );
        }
    }
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path(input.rootfs.clone()).readonly(false).build()?)
        .process(process)
        .mounts(mounts)
        .linux(linux);
    if let (Some(h), Some(_)) = (&input.hostname, &input.netns) {
        spec = spec.hostname(h.clone());
    }
    let mut spec = spec.build()?;
    // The builder starts from `Spec::default()`, whose hostname needs a UTS namespace of its own.
    if input.netns.is_none() {
        spec.set_hostname(None);
    }
    Ok(spec)
}

fn spec_err(container: &str) -> impl FnOnce(oci_spec::OciSpecError) -> RuntimeError {
    let container = container.to_string();
    move |e| RuntimeError::InvalidConfig { container, field: "runtime spec", reason: e.to_string() }
}

fn unmount(path: &Path) -> Result<(), RuntimeError> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(RuntimeError::Io { path: path.to_path_buf(), source: e.into() }),
    }
}

#[async_trait::async_trait]
impl Backend for Runc {
    fn name(&self) -> &'static str {
        "runc"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    async fn setup_network(
        &self,
        id: &str,
        config: &SandboxConfig,
    ) -> Result<(Option<std::net::Ipv4Addr>, Option<PathBuf>), RuntimeError> {
        if config.host_network {
            return Ok((None, None));
        }
        let network = self.network.as_ref().ok_or_else(|| RuntimeError::Unavailable {
            kind: "runc",
            reason: "no pod network configured (no pod CIDR): only hostNetwork pods can run".into(),
        })?;
        let net = network.setup(id).await?;
        Ok((Some(net.ip), Some(net.netns)))
    }

    async fn teardown_network(&self, sandbox: &Sandbox) -> Result<(), RuntimeError> {
        if let (Some(network), false) = (&self.network, sandbox.config.host_network) {
            network.teardown(&sandbox.id).await?;
        }
        Ok(())
    }

    async fn prepare(
        &self,
        dir: &Path,
        sandbox: &Sandbox,
        sandbox_dir: &Path,
        record: &ContainerRecord,
        image: &Image,
        rotation: RotationPolicy,
    ) -> Result<ShimSpec, RuntimeError> {
        let c = &record.config;
        let argv = resolve_argv(&image.config, &c.command, &c.args);
        if argv.is_empty() {
            return Err(RuntimeError::NoCommand { container: c.name.clone() });
        }
        let read = |p: &str| std::fs::read_to_string(image.rootfs.join(p)).unwrap_or_default();
        let (uid, gid) =
            resolve_user(image.config.user.as_deref().unwrap_or(""), &read("etc/passwd"), &read("etc/group"))
                .map_err(|reason| RuntimeError::InvalidConfig { container: c.name.clone(), field: "user", reason })?;
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let options =
            format!("lowerdir={},upperdir={},workdir={}", image.rootfs.display(), upper.display(), work.display());
        nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| RuntimeError::Io { path: rootfs.clone(), source: e.into() })?;
        let cgroup = format!("/rkube/{}", record.id);
        let input = SpecInput {
            argv,
            env: merge_env(image.config.env.as_deref().unwrap_or_default(), &c.env),
            cwd: c
                .working_dir
                .clone()
                .or_else(|| image.config.working_dir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            uid,
            gid,
            hostname: Some(sandbox.config.name.clone()),
            rootfs: rootfs.clone(),
            netns: sandbox.netns.clone(),
            cgroup: cgroup.clone(),
            cpu_millis: c.cpu_millis,
            memory_bytes: c.memory_bytes,
            hosts: Some(sandbox_dir.join("hosts")).filter(|p| p.exists()),
            resolv_conf: Some(sandbox_dir.join("resolv.conf")).filter(|p| p.exists()),
            nofile: nofile_hard_limit(),
        };
        let spec = build_spec(&input).map_err(spec_err(&c.name))?;
        spec.save(bundle.join("config.json")).map_err(spec_err(&c.name))?;
        let pid_file = dir.join("pid");
        let runc_log = dir.join("runc.log");
        let s = |p: &Path| p.display().to_string();
        Ok(ShimSpec {
            id: record.id.clone(),
            argv: vec![
                s(&self.runc),
                "--root".into(),
                s(&self.root),
                "--log".into(),
                s(&runc_log),
                "--log-format".into(),
                "json".into(),
                "run".into(),
                "--detach".into(),
                "--pid-file".into(),
                s(&pid_file),
                "--bundle".into(),
                s(&bundle),
                record.id.clone(),
            ],
            env: vec![],
            cwd: dir.to_path_buf(),
            log_path: c.log_path.clone(),
            rotation,
            mode: ShimMode::Runc { pid_file, runc_log, cgroup },
        })
    }

    async fn signal(&self, record: &ContainerRecord, _started: &Started, signal: Signal) -> Result<(), RuntimeError> {
        let sig = signal.as_str().trim_start_matches("SIG");
        match self.runc("kill", &record.id, &["kill", &record.id, sig]).await {
            Ok(()) => Ok(()),
            // It exited in the meantime.
            Err(RuntimeError::Runc { message, .. })
                if message.contains("not running") || message.contains("does not exist") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn exec_command(
        &self,
        _dir: &Path,
        record: &ContainerRecord,
        argv: &[String],
    ) -> Result<tokio::process::Command, RuntimeError> {
        // runc exec starts from the container's own process spec: its user, environment and
        // working directory, in all of its namespaces and its cgroup.
        let mut cmd = tokio::process::Command::new(&self.runc);
        cmd.arg("--root").arg(&self.root).args(["exec", "--", &record.id]).args(argv);
        Ok(cmd)
    }

    async fn cleanup(&self, dir: &Path, record: &ContainerRecord) -> Result<(), RuntimeError> {
        match self.runc("delete", &record.id, &["delete", "--force", &record.id]).await {
            Ok(()) => {}
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => {}
            Err(e) => return Err(e),
        }
        unmount(&dir.join("bundle/rootfs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxNamespaceType as Ns;

    fn input() -> SpecInput {
        SpecInput {
            argv: vec!["/bin/busybox".into(), "httpd".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/www".into(),
            uid: 33,
            gid: 34,
            hostname: Some("web-1".into()),
            rootfs: PathBuf::from("/state/c/bundle/rootfs"),
            netns: Some(PathBuf::from("/var/run/netns/rkube-abc")),
            cgroup: "/rkube/abc".into(),
            cpu_millis: Some(250),
            memory_bytes: Some(64 << 20),
            nofile: 1024,
            ..Default::default()
        }
    }

    #[test]
    fn spec_joins_the_pod_netns_and_sets_limits() {
        let spec = build_spec(&input()).expect("spec");
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["process"]["args"], serde_json::json!(["/bin/busybox", "httpd"]));
        assert_eq!(json["process"]["cwd"], "/www");
        assert_eq!(json["process"]["user"]["uid"], 33);
        assert_eq!(json["hostname"], "web-1");
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["linux"]["cgroupsPath"], "/rkube/abc");
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 25_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        let ns = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).expect("namespaces");
        let net = ns.iter().find(|n| n.typ() == Ns::Network).expect("a network namespace");
        assert_eq!(net.path().as_deref(), Some(Path::new("/var/run/netns/rkube-abc")));
        for t in [Ns::Pid, Ns::Ipc, Ns::Mount, Ns::Uts] {
            assert!(ns.iter().any(|n| n.typ() == t && n.path().is_none()), "own {t:?} namespace");
        }
    }

    #[test]
    fn host_network_spec_has_no_network_namespace_and_no_limits_unless_asked() {
        let spec =
            build_spec(&SpecInput { netns: None, cpu_millis: None, memory_bytes: None, ..input() }).expect("spec");
        let json = serde_json::to_value(&spec).expect("json");
        let ns = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).expect("namespaces");
        assert!(!ns.iter().any(|n| n.typ() == Ns::Network || n.typ() == Ns::Uts));
        assert!(json.get("hostname").is_none());
        assert!(json["linux"]["resources"].get("memory").is_none());
        assert!(json["linux"]["resources"].get("cpu").is_none());
        let tiny = build_spec(&SpecInput { cpu_millis: Some(1), ..input() }).expect("spec");
        assert_eq!(serde_json::to_value(&tiny).expect("json")["linux"]["resources"]["cpu"]["quota"], 1000);
    }
}
