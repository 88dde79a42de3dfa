//! Bad input. Every limit and every invalid request gets etcd's gRPC code and message (etcd
//! clients match on them) and writes nothing: the store revision does not move and no key
//! appears. And `rkube server` refuses bad flags and data directories it must not use: it exits
//! non-zero, says why on stderr, and leaves the directory as it found it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rkube::pb::etcdserverpb as epb;
use rkube::pb::etcdserverpb::request_op::Request as Op;
use tonic::Code;

use crate::harness::{free_port, get, put, run, Cluster, RKUBE};

const PATIENCE: Duration = Duration::from_secs(15);

/// Asserts that `result` failed with exactly `code` and `message`.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, message: &str) {
    match result {
        Ok(r) => panic!("expected {code:?} {message:?}, but the request succeeded: {:?}", r.into_inner()),
        Err(s) => {
            assert_eq!((s.code(), s.message()), (code, message), "wrong status: {s:?}");
        }
    }
}

/// The store revision as member `i` sees it after a linearizable read.
async fn revision(c: &Cluster, i: usize) -> i64 {
    let resp = c.kv(i).await.range(get("any")).await.expect("range for the revision").into_inner();
    resp.header.expect("a response header").revision
}

/// Asserts that no key at all starts with `prefix`.
async fn assert_no_keys(c: &Cluster, prefix: &str) {
    let resp = c.kv(0).await.range(crate::harness::prefix(prefix)).await.expect("range").into_inner();
    assert_eq!(resp.count, 0, "a refused request wrote keys: {:?}", resp.kvs);
}

fn put_op(key: &str, value: &str) -> epb::RequestOp {
    epb::RequestOp { request: Some(Op::RequestPut(put(key, value))) }
}

fn del_op(key: &str, range_end: &str) -> epb::RequestOp {
    epb::RequestOp {
        request: Some(Op::RequestDeleteRange(epb::DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        })),
    }
}

fn txn(success: Vec<epb::RequestOp>) -> epb::TxnRequest {
    epb::TxnRequest { success, ..Default::default() }
}

#[tokio::test]
async fn a_request_over_max_request_bytes_is_refused() {
    let c = Cluster::start_with(1, &["--max-request-bytes", "1024"]).await;
    let mut kv = c.kv(0).await;
    let rev = revision(&c, 0).await;
    let big = "x".repeat(2000);
    let too_large = "etcdserver: request is too large";

    assert_refused(kv.put(put("big/put", &big)).await, Code::InvalidArgument, too_large);
    assert_refused(kv.txn(txn(vec![put_op("big/txn", &big)])).await, Code::InvalidArgument, too_large);
    assert_refused(
        kv.delete_range(epb::DeleteRangeRequest { key: big.clone().into(), ..Default::default() }).await,
        Code::InvalidArgument,
        too_large,
    );
    assert_eq!(revision(&c, 0).await, rev, "a refused request moved the revision");
    assert_no_keys(&c, "big/").await;

    // The limit is the flag's: a request under it is accepted.
    kv.put(put("big/small", &"x".repeat(500))).await.expect("a put under the limit");
    assert_eq!(revision(&c, 0).await, rev + 1);
}

#[tokio::test]
async fn a_txn_with_more_than_128_operations_is_refused() {
    let c = Cluster::start(1).await;
    let mut kv = c.kv(0).await;
    let rev = revision(&c, 0).await;
    let ops = |n: usize| (0..n).map(|i| put_op(&format!("ops/{i}"), "v")).collect::<Vec<_>>();

    assert_refused(
        kv.txn(txn(ops(129))).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let failure = epb::TxnRequest { failure: ops(129), ..Default::default() };
    assert_refused(kv.txn(failure).await, Code::InvalidArgument, "etcdserver: too many operations in txn request");
    assert_eq!(revision(&c, 0).await, rev);
    assert_no_keys(&c, "ops/").await;

    // 128 is still allowed, and writes all its keys in one revision.
    assert!(kv.txn(txn(ops(128))).await.expect("a txn of 128 ops").into_inner().succeeded);
    assert_eq!(revision(&c, 0).await, rev + 1);
    assert_eq!(kv.range(crate::harness::prefix("ops/")).await.expect("range").into_inner().count, 128);
}

#[tokio::test]
async fn a_txn_writing_one_key_twice_is_refused() {
    let c = Cluster::start(1).await;
    let mut kv = c.kv(0).await;
    let rev = revision(&c, 0).await;
    let duplicate = "etcdserver: duplicate key given in txn request";

    assert_refused(
        kv.txn(txn(vec![put_op("dup/a", "1"), put_op("dup/a", "2")])).await,
        Code::InvalidArgument,
        duplicate,
    );
    // A put inside a deleted range writes the key twice as well.
    assert_refused(
        kv.txn(txn(vec![put_op("dup/ab", "1"), del_op("dup/a", "dup/b")])).await,
        Code::InvalidArgument,
        duplicate,
    );
    let in_failure =
        epb::TxnRequest { failure: vec![put_op("dup/c", "1"), put_op("dup/c", "2")], ..Default::default() };
    assert_refused(kv.txn(in_failure).await, Code::InvalidArgument, duplicate);
    assert_eq!(revision(&c, 0).await, rev);
    assert_no_keys(&c, "dup/").await;
}

#[tokio::test]
async fn an_empty_key_is_refused() {
    let c = Cluster::start(1).await;
    let mut kv = c.kv(0).await;
    let rev = revision(&c, 0).await;
    let no_key = "etcdserver: key is not provided";

    assert_refused(kv.put(put("", "v")).await, Code::InvalidArgument, no_key);
    assert_refused(kv.range(get("")).await, Code::InvalidArgument, no_key);
    assert_refused(kv.delete_range(epb::DeleteRangeRequest::default()).await, Code::InvalidArgument, no_key);
    assert_refused(kv.txn(txn(vec![put_op("", "v")])).await, Code::InvalidArgument, no_key);
    assert_eq!(revision(&c, 0).await, rev);
}

#[tokio::test]
async fn a_put_with_an_unknown_lease_is_refused() {
    let c = Cluster::start(1).await;
    let mut kv = c.kv(0).await;
    let rev = revision(&c, 0).await;
    let not_found = "etcdserver: requested lease not found";

    let mut req = put("leased/a", "v");
    req.lease = 0x1234_5678;
    assert_refused(kv.put(req.clone()).await, Code::NotFound, not_found);
    let in_txn = txn(vec![epb::RequestOp { request: Some(Op::RequestPut(req)) }]);
    assert_refused(kv.txn(in_txn).await, Code::NotFound, not_found);
    assert_eq!(revision(&c, 0).await, rev);
    assert_no_keys(&c, "leased/").await;
}

#[tokio::test]
async fn reads_and_compactions_below_the_compacted_revision_are_refused() {
    let c = Cluster::start(1).await;
    let mut kv = c.kv(0).await;
    for v in ["1", "2", "3", "4"] {
        kv.put(put("hist", v)).await.expect("put");
    }
    let current = revision(&c, 0).await;
    let compact_at = current - 1;
    kv.compact(epb::CompactionRequest { revision: compact_at, physical: true }).await.expect("compact");
    let compacted = "etcdserver: mvcc: required revision has been compacted";

    let at = |revision| epb::RangeRequest { revision, ..get("hist") };
    assert_refused(kv.range(at(compact_at - 1)).await, Code::OutOfRange, compacted);
    let kept = kv.range(at(compact_at)).await.expect("a range at the compacted revision").into_inner();
    assert_eq!(kept.kvs[0].value, b"3", "the compacted revision itself stays readable");

    // Compacting again at (or below) the same revision is refused and changes nothing.
    let rev = revision(&c, 0).await;
    assert_refused(
        kv.compact(epb::CompactionRequest { revision: compact_at, physical: false }).await,
        Code::OutOfRange,
        compacted,
    );
    assert_refused(
        kv.compact(epb::CompactionRequest { revision: compact_at - 1, physical: false }).await,
        Code::OutOfRange,
        compacted,
    );
    assert_eq!(revision(&c, 0).await, rev);
    assert_eq!(kv.range(at(compact_at)).await.expect("range").into_inner().kvs[0].value, b"3");
}

#[tokio::test]
async fn reads_and_compactions_at_a_future_revision_are_refused() {
    let c = Cluster::start(1).await;
    let mut kv = c.kv(0).await;
    kv.put(put("now", "v")).await.expect("put");
    let rev = revision(&c, 0).await;
    let future = "etcdserver: mvcc: required revision is a future revision";

    assert_refused(kv.range(epb::RangeRequest { revision: rev + 1, ..get("now") }).await, Code::OutOfRange, future);
    assert_refused(
        kv.compact(epb::CompactionRequest { revision: rev + 1, physical: false }).await,
        Code::OutOfRange,
        future,
    );
    assert_eq!(revision(&c, 0).await, rev);
    // Nothing was compacted: the first revision is still readable.
    kv.range(epb::RangeRequest { revision: 1, ..get("now") }).await.expect("range at revision 1");
}

#[tokio::test]
async fn a_lease_ttl_over_etcds_maximum_is_refused() {
    let c = Cluster::start(1).await;
    let mut lease = c.lease(0).await;
    let rev = revision(&c, 0).await;

    let grant = |ttl| epb::LeaseGrantRequest { ttl, id: 0 };
    assert_refused(lease.lease_grant(grant(9_000_000_001)).await, Code::OutOfRange, "etcdserver: too large lease TTL");
    let leases = lease.lease_leases(epb::LeaseLeasesRequest {}).await.expect("lease list").into_inner();
    assert!(leases.leases.is_empty(), "a refused grant created a lease: {:?}", leases.leases);
    assert_eq!(revision(&c, 0).await, rev);

    // The maximum itself is allowed.
    let granted = lease.lease_grant(grant(9_000_000_000)).await.expect("a grant at the maximum TTL").into_inner();
    assert_eq!(granted.ttl, 9_000_000_000);
}

#[tokio::test]
async fn writes_past_the_backend_quota_raise_nospace_and_are_refused() {
    let c = Cluster::start_with(1, &["--quota-backend-bytes", "1"]).await;
    let mut kv = c.kv(0).await;
    let rev = revision(&c, 0).await;
    let no_space = "etcdserver: mvcc: database space exceeded";

    assert_refused(kv.put(put("full/a", "v")).await, Code::ResourceExhausted, no_space);
    assert_refused(kv.txn(txn(vec![put_op("full/b", "v")])).await, Code::ResourceExhausted, no_space);
    assert_refused(
        c.lease(0).await.lease_grant(epb::LeaseGrantRequest { ttl: 60, id: 0 }).await,
        Code::ResourceExhausted,
        no_space,
    );
    assert_eq!(revision(&c, 0).await, rev);
    assert_no_keys(&c, "full/").await;

    let alarms = c
        .maintenance(0)
        .await
        .alarm(epb::AlarmRequest { action: epb::alarm_request::AlarmAction::Get as i32, member_id: 0, alarm: 0 })
        .await
        .expect("alarm list")
        .into_inner()
        .alarms;
    let nospace = epb::AlarmType::Nospace as i32;
    assert_eq!(alarms, vec![epb::AlarmMember { member_id: 1, alarm: nospace }]);

    let (ok, out, err) = run(Command::new("/usr/bin/etcdctl").env("ETCDCTL_API", "3").args([
        "--endpoints",
        &c.members[0].api(),
        "alarm",
        "list",
    ]));
    assert!(ok, "etcdctl alarm list failed: {err}");
    assert_eq!(out, "memberID:1 alarm:NOSPACE \n");
}

// ---- start-up refusals ----

/// A `rkube server` process that is killed when the guard drops, also when a test panics.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `rkube server` with `args` (plus free ports) until it exits; returns its exit code and
/// stderr. Fails the test if it is still running after a while: it should have refused.
fn refused_start(args: &[&str], scratch: &Path) -> (i32, String) {
    let stderr_path = scratch.join(format!("stderr-{}", free_port()));
    let stderr = std::fs::File::create(&stderr_path).expect("creating the stderr file");
    let (api, peer) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let child = Command::new(RKUBE)
        .arg("server")
        .args(["--listen-api", &api, "--listen-peer", &peer])
        .args(args)
        .env("RKUBE_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting rkube server");
    let mut server = Server(child);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("polling rkube server") {
            break status;
        }
        let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        assert!(Instant::now() < deadline, "rkube server {args:?} did not refuse to start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&stderr_path).expect("reading stderr");
    (status.code().expect("rkube exited rather than died from a signal"), text)
}

/// Every file under `dir` with its size and a checksum of its contents, leaving out RocksDB's
/// informational log (`LOG`, `LOG.old.*`): RocksDB rotates it on every open attempt, and it
/// holds no data.
fn contents(dir: &Path) -> BTreeMap<PathBuf, (u64, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u64, u32)>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
            if path.is_dir() {
                walk(root, &path, out);
            } else if name != "LOG" && !name.starts_with("LOG.old.") {
                let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let rel = path.strip_prefix(root).expect("under the root").to_path_buf();
                out.insert(rel, (bytes.len() as u64, crc32fast::hash(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the copy");
    for entry in std::fs::read_dir(from).expect("reading the directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copying a file");
        }
    }
}

/// A stopped one-member cluster whose data dir holds some keys, flushed into SST files.
async fn stopped_member() -> Cluster {
    let mut c = Cluster::start(1).await;
    let mut kv = c.kv(0).await;
    for i in 0..50 {
        kv.put(put(&format!("data/{i:02}"), &"v".repeat(100))).await.expect("put");
    }
    // Defragmenting compacts every column family, which flushes the memtables to SST files.
    c.maintenance(0).await.defragment(epb::DefragmentRequest {}).await.expect("defragment");
    c.stop(0);
    c
}

fn data_dir_args(id: &str, dir: &Path) -> Vec<String> {
    vec!["--id".into(), id.into(), "--data-dir".into(), dir.display().to_string()]
}

fn args_ref(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn start_up_refuses_a_data_dir_holding_unrelated_files() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let dir = scratch.path().join("data");
    std::fs::create_dir(&dir).expect("creating the data dir");
    std::fs::write(dir.join("thesis.tex"), "\\documentclass{article}").expect("writing a file");
    std::fs::create_dir(dir.join("photos")).expect("creating a subdirectory");
    std::fs::write(dir.join("photos/cat.jpg"), [0xff, 0xd8, 0xff]).expect("writing a file");
    let before = contents(&dir);

    let (code, stderr) = refused_start(&args_ref(&data_dir_args("1", &dir)), scratch.path());
    assert_eq!(code, 1, "{stderr}");
    let want = format!(
        "error: data dir {}: not empty and holds no rkube database (expected {}/db); refusing to use it",
        dir.display(),
        dir.display()
    );
    assert!(stderr.contains(&want), "stderr does not say why:\n{stderr}");
    assert_eq!(contents(&dir), before, "the refused data dir was modified");
    assert!(!dir.join("db").exists(), "a database was created in the refused data dir");
}

#[tokio::test]
async fn start_up_refuses_another_members_data_dir_and_leaves_it_intact() {
    let mut c = stopped_member().await;
    let dir = c.members[0].data_dir.clone();
    let before = contents(&dir);

    let (code, stderr) = refused_start(&args_ref(&data_dir_args("2", &dir)), c.dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("error: data dir {}: belongs to member 1 of cluster ", dir.display())),
        "{stderr}"
    );
    assert!(stderr.contains("not to member 2; refusing to start"), "{stderr}");
    assert_eq!(contents(&dir), before, "the refused data dir was modified");

    // Its own member still starts from it, with every key.
    c.restart(0);
    c.wait_leader(PATIENCE).await;
    let resp = c.kv(0).await.range(crate::harness::prefix("data/")).await.expect("range").into_inner();
    assert_eq!(resp.count, 50);
}

#[tokio::test]
async fn start_up_refuses_a_damaged_database() {
    let c = stopped_member().await;
    let pristine = c.members[0].data_dir.clone();
    let files: Vec<String> = std::fs::read_dir(pristine.join("db"))
        .expect("reading the db dir")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    let manifest = files.iter().find(|f| f.starts_with("MANIFEST-")).expect("a MANIFEST file").clone();
    let sst = files.iter().find(|f| f.ends_with(".sst")).expect("an SST file after defragment").clone();

    // What was damaged, how, and what the message must name.
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, String)> = vec![
        (
            "garbled CURRENT",
            Box::new(|db: &Path| std::fs::write(db.join("CURRENT"), "MANIFEST-garbage\n").unwrap()),
            "CURRENT".to_string(),
        ),
        (
            "garbled MANIFEST",
            Box::new({
                let manifest = manifest.clone();
                move |db: &Path| {
                    let path = db.join(&manifest);
                    let len = std::fs::metadata(&path).unwrap().len() as usize;
                    std::fs::write(path, vec![0x5a; len]).unwrap();
                }
            }),
            manifest,
        ),
        (
            "truncated SST",
            Box::new({
                let sst = sst.clone();
                move |db: &Path| {
                    let path = db.join(&sst);
                    let len = std::fs::metadata(&path).unwrap().len();
                    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len / 2).unwrap();
                }
            }),
            sst,
        ),
    ];
    for (what, damage, names) in cases {
        let dir = c.dir.path().join(what.replace(' ', "-"));
        copy_dir(&pristine, &dir);
        damage(&dir.join("db"));
        let before = contents(&dir);

        let (code, stderr) = refused_start(&args_ref(&data_dir_args("1", &dir)), c.dir.path());
        assert_eq!(code, 1, "{what}: {stderr}");
        let want = format!("error: data dir {}: the database is damaged or unreadable: ", dir.display());
        assert!(stderr.contains(&want), "{what}: stderr does not say the database is damaged:\n{stderr}");
        assert!(stderr.contains(&names), "{what}: stderr does not name {names}:\n{stderr}");
        assert!(stderr.contains("refusing to start"), "{what}: {stderr}");
        assert_eq!(contents(&dir), before, "{what}: the refused data dir was modified");
    }
}

#[tokio::test]
async fn start_up_refuses_a_data_dir_that_is_a_regular_file() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let file = scratch.path().join("data");
    std::fs::write(&file, "not a directory").expect("writing the file");

    let (code, stderr) = refused_start(&args_ref(&data_dir_args("1", &file)), scratch.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("error: data dir {}: ", file.display())), "{stderr}");
    assert!(stderr.contains("Not a directory"), "stderr does not say why:\n{stderr}");
    assert_eq!(std::fs::read_to_string(&file).expect("reading the file"), "not a directory");
}

#[tokio::test]
async fn start_up_refuses_bad_flags_with_exit_code_2() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let dir = scratch.path().join("data");
    let cases: &[(&[&str], &str)] = &[
        (&["--initial-cluster", "1=x"], "error: --initial-cluster: entry \"1=x\" is not id=host:port"),
        (&["--initial-cluster", "1=127.0.0.1:1,one=127.0.0.1:2"], "entry \"one=127.0.0.1:2\" is not id=host:port"),
        (&["--initial-cluster", "2=127.0.0.1:1"], "error: --initial-cluster does not list this member (--id 1)"),
        (&["--initial-cluster", "1=127.0.0.1:1,1=127.0.0.1:2"], "error: --initial-cluster: member 1 is listed twice"),
        (&["--id", "0"], "error: --id must be a positive integer"),
        (&["--id", "one"], "invalid value 'one' for '--id <ID>'"),
        (&["--initial-cluster-state", "old"], "error: --initial-cluster-state must be new or existing, not \"old\""),
        (&["--auto-compaction-mode", "sometimes", "--auto-compaction-retention", "5"], "must be periodic or revision"),
        (&["--heartbeat-interval", "100", "--election-timeout", "200"], "--election-timeout at least five times it"),
        (&["--max-request-bytes", "0"], "error: --max-request-bytes must be between 1 and 64 MiB"),
        (&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
    ];
    for (flags, want) in cases {
        // --id defaults to 1; the cases that set it set it themselves.
        let mut args = vec!["--data-dir".to_string(), dir.display().to_string()];
        args.extend(flags.iter().map(|s| s.to_string()));
        let (code, stderr) = refused_start(&args_ref(&args), scratch.path());
        assert_eq!(code, 2, "{flags:?}: {stderr}");
        assert!(stderr.contains(want), "{flags:?}: stderr does not say {want:?}:\n{stderr}");
        assert!(!dir.exists(), "{flags:?}: the data dir was created despite bad flags");
    }
}
