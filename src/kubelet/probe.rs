//! Container probes (liveness, readiness, startup) as Kubernetes runs them: exec, httpGet and
//! tcpSocket handlers, each probe with its initial delay, period, timeout and thresholds. The
//! pod worker calls [`run_due`] on each pass for a running container and acts on the verdict.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::runtime::{ContainerStatus, Runtime};
use crate::api::v1::{Container, Probe};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

/// One probe of a running container and its consecutive results.
pub struct ProbeState {
    pub kind: ProbeKind,
    probe: Probe,
    /// Named ports of the container, for `port: http`.
    ports: Vec<(String, u16)>,
    next: Instant,
    successes: u32,
    failures: u32,
}

impl ProbeState {
    pub fn next_due(&self) -> Instant {
        self.next
    }
    fn period(&self) -> Duration {
        Duration::from_secs(if self.probe.period_seconds > 0 { self.probe.period_seconds as u64 } else { 10 })
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(if self.probe.timeout_seconds > 0 { self.probe.timeout_seconds as u64 } else { 1 })
    }
    fn success_threshold(&self) -> u32 {
        self.probe.success_threshold.max(1) as u32
    }
    fn failure_threshold(&self) -> u32 {
        if self.probe.failure_threshold > 0 {
            self.probe.failure_threshold as u32
        } else {
            3
        }
    }
}

/// The probes of a container that just started running.
pub fn for_container(c: &Container) -> Vec<ProbeState> {
    let ports: Vec<(String, u16)> = c
        .ports
        .iter()
        .filter(|p| !p.name.is_empty())
        .filter_map(|p| Some((p.name.clone(), u16::try_from(p.container_port).ok()?)))
        .collect();
    let now = Instant::now();
    [
        (ProbeKind::Startup, &c.startup_probe),
        (ProbeKind::Liveness, &c.liveness_probe),
        (ProbeKind::Readiness, &c.readiness_probe),
    ]
    .into_iter()
    .filter_map(|(kind, p)| {
        let p = p.clone()?;
        Some(ProbeState {
            kind,
            next: now + Duration::from_secs(p.initial_delay_seconds.max(0) as u64),
            probe: p,
            ports: ports.clone(),
            successes: 0,
            failures: 0,
        })
    })
    .collect()
}

/// What the due probes concluded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The readiness result once its threshold is met.
    pub ready: Option<bool>,
    /// Liveness or startup failed: restart the container.
    pub kill: bool,
}

/// Runs the probes that are due. Liveness and readiness wait for the startup probe.
pub async fn run_due(
    probes: &mut [ProbeState],
    runtime: &Arc<dyn Runtime>,
    container: &ContainerStatus,
    pod_ip: Ipv4Addr,
    started: &mut bool,
) -> Verdict {
    let mut verdict = Verdict::default();
    let now = Instant::now();
    for p in probes.iter_mut() {
        if now < p.next || (p.kind != ProbeKind::Startup && !*started) || (p.kind == ProbeKind::Startup && *started) {
            continue;
        }
        p.next = now + p.period();
        let ok = tokio::time::timeout(p.timeout(), check(&p.probe, &p.ports, runtime, container, pod_ip))
            .await
            .unwrap_or(false);
        if ok {
            p.successes += 1;
            p.failures = 0;
        } else {
            p.failures += 1;
            p.successes = 0;
        }
        match p.kind {
            ProbeKind::Startup if p.successes >= 1 => *started = true,
            ProbeKind::Readiness if p.successes >= p.success_threshold() => verdict.ready = Some(true),
            ProbeKind::Readiness if p.failures >= p.failure_threshold() => verdict.ready = Some(false),
            ProbeKind::Startup | ProbeKind::Liveness if p.failures >= p.failure_threshold() => verdict.kill = true,
            _ => {}
        }
    }
    verdict
}

fn port_of(port: &str, named: &[(String, u16)]) -> Option<u16> {
    port.parse().ok().or_else(|| named.iter().find(|(n, _)| n == port).map(|(_, p)| *p))
}

async fn check(
    probe: &Probe,
    ports: &[(String, u16)],
    runtime: &Arc<dyn Runtime>,
    c: &ContainerStatus,
    pod_ip: Ipv4Addr,
) -> bool {
    if let Some(exec) = &probe.exec {
        return exec_in(runtime.name(), c.pid, &exec.command).await;
    }
    if let Some(h) = &probe.http_get {
        let Some(port) = port_of(&h.port, ports) else { return false };
        let host = if h.host.is_empty() { pod_ip.to_string() } else { h.host.clone() };
        return http_get(&host, port, if h.path.is_empty() { "/" } else { &h.path }).await;
    }
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = port_of(&t.port, ports) else { return false };
        let host = if t.host.is_empty() { pod_ip.to_string() } else { t.host.clone() };
        return tokio::net::TcpStream::connect((host.as_str(), port)).await.is_ok();
    }
    false
}

/// Runs `command` where the container runs: in its namespaces (runc, through `nsenter`), or as
/// a plain host process (the process runtime has no namespaces).
async fn exec_in(runtime: &str, pid: Option<u32>, command: &[String]) -> bool {
    let Some((program, args)) = command.split_first() else { return false };
    let mut cmd = if runtime == "process" {
        let mut c = tokio::process::Command::new(program);
        c.args(args);
        c
    } else {
        let Some(pid) = pid else { return false };
        let mut c = tokio::process::Command::new("nsenter");
        c.arg("-t").arg(pid.to_string()).args(["-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"]).arg(program).args(args);
        c
    };
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd.status().await.is_ok_and(|s| s.success())
}

/// An HTTP/1.0 GET; success is a 2xx or 3xx status.
async fn http_get(host: &str, port: u16, path: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect((host, port)).await else { return false };
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: rkube-probe\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    code.is_some_and(|c| (200..400).contains(&c))
}
