//! Container log files in the CRI format (`<RFC 3339 nanos> <stdout|stderr> <F|P> <text>`, one
//! record a line; `P` marks a piece of a longer line) with size-based rotation: `PATH` is the
//! live file, `PATH.1` the one before, up to `PATH.<max_files-1>`. [`LogWriter`] is used by the
//! container's shim; [`read_log`] and [`follow_log`] by the kubelet's log service. The kubelet
//! keeps one file per container attempt (`.../<container>/<restart>.log`), so "previous" is the
//! previous attempt's path.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// Where the kubelet keeps a container attempt's log, as Kubernetes lays it out:
/// `ROOT/<namespace>_<pod>_<uid>/<container>/<attempt>.log` (ROOT is `/var/log/pods` on a node).
/// The previous attempt's log (`kubectl logs --previous`) is the same path with `attempt - 1`.
pub fn pod_log_path(root: &Path, namespace: &str, pod: &str, uid: &str, container: &str, attempt: u32) -> PathBuf {
    root.join(format!("{namespace}_{pod}_{uid}")).join(container).join(format!("{attempt}.log"))
}

/// Removes the log directories of every pod whose uid `keep` does not hold (the logs of pods
/// that are gone, as the kubelet's garbage collection does). Returns the directories removed.
pub fn remove_pod_logs_except(root: &Path, keep: &dyn Fn(&str) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<namespace>_<pod>_<uid>`: names and namespaces are DNS labels, so the uid is after
        // the last `_`.
        let Some((_, uid)) = name.rsplit_once('_') else { continue };
        if !keep(uid) {
            std::fs::remove_dir_all(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// The longest piece written as one record; longer lines are split into `P` records.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// How many parsed lines a follower buffers before waiting for its reader.
pub const FOLLOW_CHANNEL_BOUND: usize = 256;
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RotationPolicy {
    /// Rotate when the live file would grow beyond this.
    pub max_bytes: u64,
    /// Files kept, the live one included (at least 1).
    pub max_files: u32,
}

impl Default for RotationPolicy {
    /// The kubelet's defaults (containerLogMaxSize 10Mi, containerLogMaxFiles 5).
    fn default() -> Self {
        RotationPolicy { max_bytes: 10 * 1024 * 1024, max_files: 5 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no log at {path}")]
    NotFound { path: PathBuf },
}

/// One log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub time: SystemTime,
    pub stream: Stream,
    /// A piece of a longer line; the line goes on in the next record of this stream.
    pub partial: bool,
    pub content: Vec<u8>,
}

impl LogLine {
    /// Parses one record; `None` for a line that is not in the CRI format.
    pub fn parse(line: &[u8]) -> Option<LogLine> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let mut parts = line.splitn(4, |b| *b == b' ');
        let time = humantime::parse_rfc3339(std::str::from_utf8(parts.next()?).ok()?).ok()?;
        let stream = match parts.next()? {
            b"stdout" => Stream::Stdout,
            b"stderr" => Stream::Stderr,
            _ => return None,
        };
        let partial = match parts.next()? {
            b"F" => false,
            b"P" => true,
            _ => return None,
        };
        Some(LogLine { time, stream, partial, content: parts.next().unwrap_or_default().to_vec() })
    }

    /// The record as written to the file, newline included.
    pub fn format(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} {} ",
            humantime::format_rfc3339_nanos(self.time),
            self.stream.as_str(),
            if self.partial { "P" } else { "F" }
        )
        .into_bytes();
        out.extend_from_slice(&self.content);
        out.push(b'\n');
        out
    }
}

/// Appends records to a log file, rotating it by size.
pub struct LogWriter {
    path: PathBuf,
    policy: RotationPolicy,
    file: File,
    size: u64,
}

impl LogWriter {
    pub fn open(path: &Path, policy: RotationPolicy) -> Result<LogWriter, LogError> {
        let io = |source| LogError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok(LogWriter { path: path.to_path_buf(), policy, file, size })
    }

    /// Writes one line (without its newline) as one or more records.
    pub fn write_line(&mut self, stream: Stream, line: &[u8], ends_line: bool) -> Result<(), LogError> {
        let mut chunks = line.chunks(MAX_RECORD_BYTES).peekable();
        if line.is_empty() {
            return self.write_record(&LogLine {
                time: SystemTime::now(),
                stream,
                partial: !ends_line,
                content: vec![],
            });
        }
        while let Some(chunk) = chunks.next() {
            let partial = chunks.peek().is_some() || !ends_line;
            self.write_record(&LogLine { time: SystemTime::now(), stream, partial, content: chunk.to_vec() })?;
        }
        Ok(())
    }

    fn write_record(&mut self, record: &LogLine) -> Result<(), LogError> {
        let bytes = record.format();
        if self.size > 0 && self.size + bytes.len() as u64 > self.policy.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&bytes).map_err(|source| LogError::Io { path: self.path.clone(), source })?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogError::Io { path, source }
        };
        let keep = self.policy.max_files.max(1);
        if keep == 1 {
            self.file.set_len(0).map_err(io(&self.path))?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..keep - 1).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1)).map_err(io(&from))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1)).map_err(io(&self.path))?;
        self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(io(&self.path))?;
        self.size = 0;
        Ok(())
    }
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The files of one log, oldest first (rotated ones, then the live one).
fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut n = 1;
    while rotated(path, n).exists() {
        files.push(rotated(path, n));
        n += 1;
    }
    files.reverse();
    files.push(path.to_path_buf());
    files
}

/// Keeps the records of the last `n` lines (a line being records up to one that is not partial).
fn keep_tail(records: Vec<LogLine>, n: usize) -> Vec<LogLine> {
    let mut ends = 0;
    let mut start = records.len();
    for (i, r) in records.iter().enumerate().rev() {
        if !r.partial {
            if ends == n {
                break;
            }
            ends += 1;
        }
        start = i;
    }
    if n == 0 {
        return Vec::new();
    }
    records.into_iter().skip(start).collect()
}

/// Reads a container's log, rotated files included; `tail` keeps only the last lines.
pub fn read_log(path: &Path, tail: Option<usize>) -> Result<Vec<LogLine>, LogError> {
    if !path.exists() {
        return Err(LogError::NotFound { path: path.to_path_buf() });
    }
    let mut records = Vec::new();
    for file in log_files(path) {
        let f = match File::open(&file) {
            Ok(f) => f,
            // Rotated away between listing and opening.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(LogError::Io { path: file, source }),
        };
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(|source| LogError::Io { path: file.clone(), source })?;
            records.extend(LogLine::parse(&line));
        }
    }
    Ok(match tail {
        Some(n) => keep_tail(records, n),
        None => records,
    })
}

/// Sends the log (the last `tail` lines first, if given) and then new records as they are
/// written, following rotation, until `stop` is cancelled; after the cancellation it drains
/// what is already written. Runs on a blocking thread; the receiver ends with the stream.
pub fn follow_log(
    path: &Path,
    tail: Option<usize>,
    stop: CancellationToken,
) -> Result<tokio::sync::mpsc::Receiver<Result<LogLine, LogError>>, LogError> {
    let initial = read_log(path, tail)?;
    let (tx, rx) = tokio::sync::mpsc::channel(FOLLOW_CHANNEL_BOUND);
    let path = path.to_path_buf();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LogError::Io { path, source }
    };
    let mut file = File::open(&path).map_err(io(&path))?;
    let mut pos = file.seek(SeekFrom::End(0)).map_err(io(&path))?;
    tokio::task::spawn_blocking(move || {
        for r in initial {
            if tx.blocking_send(Ok(r)).is_err() {
                return;
            }
        }
        let mut pending = Vec::new();
        let mut switch = false;
        loop {
            let stopping = stop.is_cancelled();
            let mut buf = Vec::new();
            if let Err(e) = file.read_to_end(&mut buf) {
                let _ = tx.blocking_send(Err(LogError::Io { path: path.clone(), source: e }));
                return;
            }
            pos += buf.len() as u64;
            pending.extend_from_slice(&buf);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                if let Some(r) = LogLine::parse(&line) {
                    if tx.blocking_send(Ok(r)).is_err() {
                        return;
                    }
                }
            }
            if switch {
                // The old file was drained after the rotation was seen: move on to the new one.
                switch = false;
                match File::open(&path) {
                    Ok(f) => {
                        file = f;
                        pos = 0;
                        pending.clear();
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(LogError::Io { path: path.clone(), source: e }));
                        return;
                    }
                }
            }
            if stopping {
                return;
            }
            // Rotated: the path now names a new file. Read what is left of the old one first.
            switch = match (std::fs::metadata(&path), file.metadata()) {
                (Ok(now), Ok(open)) => {
                    use std::os::unix::fs::MetadataExt;
                    now.ino() != open.ino() || now.len() < pos
                }
                _ => false,
            };
            if switch {
                continue;
            }
            std::thread::sleep(FOLLOW_POLL);
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logs_of_pods_that_are_gone_are_removed_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let live = pod_log_path(dir.path(), "default", "web", "u-1", "c", 0);
        let gone = pod_log_path(dir.path(), "kube-system", "old", "u-2", "c", 3);
        for p in [&live, &gone] {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        let removed = remove_pod_logs_except(dir.path(), &|uid| uid == "u-1").unwrap();
        assert_eq!(removed, vec![dir.path().join("kube-system_old_u-2")]);
        assert!(live.exists() && !gone.exists());
        assert!(remove_pod_logs_except(&dir.path().join("absent"), &|_| false).unwrap().is_empty());
    }

    fn text(lines: &[LogLine]) -> Vec<String> {
        lines.iter().map(|l| String::from_utf8_lossy(&l.content).into_owned()).collect()
    }

    #[test]
    fn pod_logs_are_laid_out_like_kubernetes() {
        let p = pod_log_path(Path::new("/var/log/pods"), "default", "web", "u1", "httpd", 2);
        assert_eq!(p, Path::new("/var/log/pods/default_web_u1/httpd/2.log"));
    }

    #[test]
    fn records_round_trip_in_cri_format() {
        let r = LogLine {
            time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            stream: Stream::Stderr,
            partial: true,
            content: b"hello world".to_vec(),
        };
        let bytes = r.format();
        assert_eq!(bytes, b"2023-11-14T22:13:20.123456789Z stderr P hello world\n");
        assert_eq!(LogLine::parse(&bytes), Some(r));
        assert_eq!(LogLine::parse(b"not a record"), None);
    }

    #[test]
    fn rotation_keeps_max_files_and_tail_spans_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let mut w = LogWriter::open(&path, RotationPolicy { max_bytes: 200, max_files: 3 }).expect("open");
        for i in 0..40 {
            w.write_line(Stream::Stdout, format!("line {i}").as_bytes(), true).expect("write");
        }
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists(), "only max_files files are kept");
        for f in log_files(&path) {
            assert!(std::fs::metadata(&f).expect("stat").len() <= 200);
        }
        let all = read_log(&path, None).expect("read");
        assert_eq!(all.last().map(|l| l.content.clone()), Some(b"line 39".to_vec()));
        let contents = text(&all);
        let first: usize = contents[0].trim_start_matches("line ").parse().expect("number");
        assert_eq!(contents, (first..40).map(|i| format!("line {i}")).collect::<Vec<_>>(), "in order, no gaps");
        assert_eq!(text(&read_log(&path, Some(2)).expect("tail")), vec!["line 38", "line 39"]);
        assert!(read_log(&path, Some(0)).expect("tail 0").is_empty());
    }

    #[test]
    fn long_lines_are_split_and_tail_counts_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, RotationPolicy::default()).expect("open");
        w.write_line(Stream::Stdout, b"short", true).expect("write");
        w.write_line(Stream::Stdout, &vec![b'x'; MAX_RECORD_BYTES * 2 + 1], true).expect("write");
        let tail = read_log(&path, Some(1)).expect("tail");
        assert_eq!(tail.iter().map(|l| l.partial).collect::<Vec<_>>(), vec![true, true, false]);
        assert_eq!(tail.iter().map(|l| l.content.len()).sum::<usize>(), MAX_RECORD_BYTES * 2 + 1);
        assert!(matches!(read_log(&dir.path().join("none.log"), None), Err(LogError::NotFound { .. })));
    }

    #[tokio::test]
    async fn follow_sees_new_lines_across_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, RotationPolicy { max_bytes: 300, max_files: 2 }).expect("open");
        w.write_line(Stream::Stdout, b"before", true).expect("write");
        let stop = CancellationToken::new();
        let mut rx = follow_log(&path, Some(1), stop.clone()).expect("follow");
        let mut got = Vec::new();
        let first = rx.recv().await.expect("a line").expect("ok");
        got.push(String::from_utf8_lossy(&first.content).into_owned());
        for i in 0..20 {
            w.write_line(Stream::Stderr, format!("after {i}").as_bytes(), true).expect("write");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        stop.cancel();
        while let Some(r) = rx.recv().await {
            got.push(String::from_utf8_lossy(&r.expect("ok").content).into_owned());
        }
        let mut want = vec!["before".to_string()];
        want.extend((0..20).map(|i| format!("after {i}")));
        assert_eq!(got, want);
    }
}
