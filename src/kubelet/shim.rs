//! The per-container supervisor, `rkube shim DIR` (like containerd's shim or conmon). The
//! runtime writes `DIR/shim.json` and runs the shim; the shim detaches (fork, new session,
//! child subreaper), starts the container's process (`runc run --detach …` or the command
//! itself) with stdout/stderr on pipes, tells the runtime "ok PID" or "error MESSAGE" on its
//! stdout, writes `DIR/started.json`, copies the output into the rotated log file, reaps the
//! process, and writes `DIR/exit.json` (exit code, signal, OOM kill, time) before it exits. It
//! does not depend on the kubelet staying up: a restarted kubelet reads the same files.
//!
//! The shim is synchronous code and forks before any thread exists.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::logs::{LogWriter, RotationPolicy, Stream, MAX_RECORD_BYTES};

pub const SPEC_FILE: &str = "shim.json";
pub const STARTED_FILE: &str = "started.json";
pub const EXIT_FILE: &str = "exit.json";
/// How long the shim waits for the output pipes to close after the process exited (a
/// grandchild that escaped the process group may hold them).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ShimSpec {
    pub id: String,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE`s, the whole environment.
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub log_path: PathBuf,
    pub rotation: RotationPolicy,
    pub mode: ShimMode,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum ShimMode {
    /// A host process in its own process group; leftovers of the group are killed on exit.
    Process,
    /// `argv` is `runc … run --detach --pid-file PID_FILE …`; the container's init is read
    /// from `pid_file` and reaped as an orphan; its cgroup says whether it was OOM-killed.
    Runc { pid_file: PathBuf, runc_log: PathBuf, cgroup: String },
}

/// Written once the process runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Started {
    pub pid: u32,
    /// The process's start time in clock ticks since boot (0 if unknown).
    #[serde(default)]
    pub pid_start_ticks: u64,
    pub shim_pid: u32,
    /// The shim's start time in clock ticks since boot (tells it from a reused pid).
    pub shim_start_ticks: u64,
    pub started_at: SystemTime,
}

/// Written when the process is gone (or could not start).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exited {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: SystemTime,
    /// Set when the process never ran.
    pub start_error: Option<String>,
}

/// The start time (clock ticks since boot) of a process, field 22 of `/proc/PID/stat`.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that recorded `started` is still alive.
pub fn shim_alive(started: &Started) -> bool {
    proc_start_ticks(started.shim_pid) == Some(started.shim_start_ticks)
}

pub(crate) fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(value).expect("shim records serialize"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `rkube shim DIR`. Prints `ok PID` or `error MESSAGE` and returns; the supervisor carries on
/// in a detached child.
pub fn main(dir: &Path) -> ExitCode {
    let spec: ShimSpec = match std::fs::read(dir.join(SPEC_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            println!("error reading {}: {e}", dir.join(SPEC_FILE).display());
            return ExitCode::FAILURE;
        }
    };
    let (mut sync_r, sync_w) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            println!("error creating a pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: called from `main` before any other thread is started; the child only uses
    // async-signal-safe calls until it has become a normal single-threaded process again.
    match unsafe { fork() } {
        Err(e) => {
            println!("error forking the shim: {e}");
            ExitCode::FAILURE
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(sync_w);
            let mut msg = String::new();
            let _ = sync_r.read_to_string(&mut msg);
            let msg = msg.trim();
            if msg.is_empty() {
                println!("error the shim exited without reporting");
                return ExitCode::FAILURE;
            }
            println!("{msg}");
            if msg.starts_with("ok ") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(ForkResult::Child) => {
            drop(sync_r);
            supervise(dir, spec, sync_w);
            ExitCode::SUCCESS
        }
    }
}

fn supervise(dir: &Path, spec: ShimSpec, mut sync: std::io::PipeWriter) {
    let _ = nix::unistd::setsid();
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    // Our stdout is the runtime's pipe: release it so the runtime sees its end.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
    let fail = |sync: &mut std::io::PipeWriter, message: String| {
        let exited = Exited {
            exit_code: 128,
            signal: None,
            oom_killed: false,
            finished_at: SystemTime::now(),
            start_error: Some(message.clone()),
        };
        let _ = write_json_atomic(&dir.join(EXIT_FILE), &exited);
        let _ = writeln!(sync, "error {}", message.replace('\n', " "));
    };
    let writer = match LogWriter::open(&spec.log_path, spec.rotation) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => return fail(&mut sync, e.to_string()),
    };
    let (out_r, out_w) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(&mut sync, format!("creating the stdout pipe: {e}")),
    };
    let (err_r, err_w) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(&mut sync, format!("creating the stderr pipe: {e}")),
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return fail(&mut sync, "empty command".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out_w).stderr(err_w).current_dir(&spec.cwd);
    if matches!(spec.mode, ShimMode::Process) {
        cmd.env_clear();
        for kv in &spec.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            cmd.env(k, v);
        }
        cmd.process_group(0);
    }
    let spawned = cmd.spawn();
    // The pipes' write ends live in `cmd`: drop it so only the container holds them.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return fail(&mut sync, format!("cannot run {program}: {e}")),
    };
    let pid = match &spec.mode {
        ShimMode::Process => child.id(),
        ShimMode::Runc { pid_file, runc_log, .. } => {
            let status = child.wait();
            if !matches!(&status, Ok(s) if s.success()) {
                let detail = runc_error(runc_log).unwrap_or_else(|| format!("runc run exited with {status:?}"));
                return fail(&mut sync, detail);
            }
            match std::fs::read_to_string(pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
                Some(p) => p,
                None => return fail(&mut sync, format!("runc wrote no pid to {}", pid_file.display())),
            }
        }
    };
    let started = Started {
        pid,
        pid_start_ticks: proc_start_ticks(pid).unwrap_or(0),
        shim_pid: std::process::id(),
        shim_start_ticks: proc_start_ticks(std::process::id()).unwrap_or(0),
        started_at: SystemTime::now(),
    };
    if let Err(e) = write_json_atomic(&dir.join(STARTED_FILE), &started) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        return fail(&mut sync, format!("writing {STARTED_FILE}: {e}"));
    }
    let _ = writeln!(sync, "ok {pid}");
    drop(sync);

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for (reader, stream) in [(out_r, Stream::Stdout), (err_r, Stream::Stderr)] {
        let writer = writer.clone();
        let done = done_tx.clone();
        std::thread::spawn(move || {
            copy_lines(reader, stream, &writer);
            let _ = done.send(());
        });
    }
    drop(done_tx);

    let (exit_code, signal) = reap(pid);
    let finished_at = SystemTime::now();
    let oom_killed = match &spec.mode {
        ShimMode::Process => {
            // No isolation: whatever is left of the process group goes with its leader.
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            false
        }
        ShimMode::Runc { cgroup, .. } => oom_kills(cgroup) > 0,
    };
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let exited = Exited { exit_code, signal, oom_killed, finished_at, start_error: None };
    if let Err(e) = write_json_atomic(&dir.join(EXIT_FILE), &exited) {
        eprintln!("shim {}: writing {EXIT_FILE}: {e}", spec.id);
    }
}

/// Reaps children (we are a subreaper) until `pid` is among them; returns (exit code, signal).
fn reap(pid: u32) -> (i32, Option<i32>) {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() as u32 == pid => return (code, None),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() as u32 == pid => {
                return (128 + sig as i32, Some(sig as i32));
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // ECHILD: the process is not ours (cannot happen when runc ran as our child and
                // we are a subreaper); wait for it to vanish instead.
                eprintln!("shim: waitpid: {e}");
                while Path::new(&format!("/proc/{pid}")).exists() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return (255, None);
            }
        }
    }
}

fn copy_lines(reader: impl Read, stream: Stream, writer: &Mutex<LogWriter>) {
    let mut r = BufReader::with_capacity(MAX_RECORD_BYTES, reader);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        // Read at most one record's worth: a longer line goes out in pieces.
        match (&mut r).take(MAX_RECORD_BYTES as u64).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                let ends = line.last() == Some(&b'\n');
                if ends {
                    line.pop();
                }
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = w.write_line(stream, &line, ends) {
                    eprintln!("shim: log: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The last error runc logged (its `--log-format json` lines carry `level` and `msg`).
fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v.get("level").and_then(|l| l.as_str()), Some("error" | "fatal")))
        .find_map(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
}

/// How many times the kernel OOM-killed in a cgroup (v2 `memory.events`, v1 `memory.oom_control`).
pub fn oom_kills(cgroup: &str) -> u64 {
    let rel = cgroup.trim_start_matches('/');
    let candidates = [
        (format!("/sys/fs/cgroup/{rel}/memory.events"), "oom_kill "),
        (format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"), "oom_kill "),
    ];
    for (path, key) in candidates {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text.lines().find_map(|l| l.strip_prefix(key)).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
        }
    }
    0
}
