//! Real etcd clients against a three-member rkube cluster: `etcdctl` (etcd 3.4, API v3) and
//! `grpcurl` (through server reflection). Each case asserts what a user of those tools sees
//! printed. Commands go to a follower where that matters, because a follower must answer (or
//! forward) exactly as the leader would.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{eventually, get, run, Cluster};

const ETCDCTL: &str = "/usr/bin/etcdctl";
const GRPCURL: &str = "grpcurl";
const PATIENCE: Duration = Duration::from_secs(15);

/// An `etcdctl` command for the given endpoints, with bounded timeouts so that a hung server
/// fails the test instead of stalling it.
fn etcdctl(endpoints: &str) -> Command {
    let mut cmd = Command::new(ETCDCTL);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s");
    cmd
}

/// Runs `etcdctl` with `args`, requires success and returns what it printed on stdout.
fn ctl(endpoints: &str, args: &[&str]) -> String {
    let (ok, out, err) = run(etcdctl(endpoints).args(args));
    assert!(ok, "etcdctl {args:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

/// Runs `etcdctl txn`, feeding `script` (compares, success ops, failure ops) on stdin.
fn ctl_txn(endpoint: &str, script: &str) -> String {
    let mut child = etcdctl(endpoint)
        .arg("txn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting etcdctl txn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(script.as_bytes()).expect("writing the txn script");
    }
    let out = child.wait_with_output().expect("waiting for etcdctl txn");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "etcdctl txn failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A `grpcurl` command whose calls give up after a while rather than hang the test.
fn grpcurl() -> Command {
    let mut cmd = Command::new(GRPCURL);
    cmd.args(["-connect-timeout", "5", "-max-time", "10"]);
    cmd
}

/// A child process that is killed and reaped when the guard drops, also when a test panics.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The index of a member that is not the leader.
async fn follower(c: &mut Cluster) -> usize {
    let leader = c.wait_leader(PATIENCE).await;
    (leader + 1) % c.members.len()
}

#[tokio::test]
async fn put_get_and_del_print_what_etcd_prints() {
    let mut c = Cluster::start(3).await;
    let f = follower(&mut c).await;
    let on_follower = c.members[f].api();
    let all = c.endpoints();

    assert_eq!(ctl(&on_follower, &["put", "greeting", "hello"]), "OK\n");
    assert_eq!(ctl(&all, &["get", "greeting"]), "greeting\nhello\n");
    assert_eq!(ctl(&on_follower, &["put", "greeting", "bonjour"]), "OK\n");
    assert_eq!(ctl(&on_follower, &["put", "greet2", "hi"]), "OK\n");
    assert_eq!(ctl(&on_follower, &["get", "greeting", "--print-value-only"]), "bonjour\n");
    assert_eq!(ctl(&all, &["get", "greet", "--prefix"]), "greet2\nhi\ngreeting\nbonjour\n");

    assert_eq!(ctl(&on_follower, &["del", "greeting"]), "1\n");
    assert_eq!(ctl(&all, &["get", "greeting"]), "", "a deleted key prints nothing");
    assert_eq!(ctl(&on_follower, &["del", "greeting"]), "0\n", "deleting a missing key deletes nothing");
    assert_eq!(ctl(&on_follower, &["del", "greet", "--prefix"]), "1\n");
    assert_eq!(ctl(&all, &["get", "greet", "--prefix"]), "");
}

#[tokio::test]
async fn txn_runs_the_success_branch_when_compares_hold_and_the_failure_branch_otherwise() {
    let mut c = Cluster::start(3).await;
    let f = follower(&mut c).await;
    let ep = c.members[f].api();
    assert_eq!(ctl(&ep, &["put", "door", "closed"]), "OK\n");

    // Compares, a blank line, success ops, a blank line, failure ops, a blank line.
    let script = "value(\"door\") = \"closed\"\n\nput door open\nget door\n\nput door jammed\nget door\n\n";
    assert_eq!(ctl_txn(&ep, script), "SUCCESS\n\nOK\n\ndoor\nopen\n");
    assert_eq!(ctl(&c.endpoints(), &["get", "door", "--print-value-only"]), "open\n");

    // The door is open now, so the same transaction takes the failure branch.
    assert_eq!(ctl_txn(&ep, script), "FAILURE\n\nOK\n\ndoor\njammed\n");
    assert_eq!(ctl(&c.endpoints(), &["get", "door", "--print-value-only"]), "jammed\n");
}

#[tokio::test]
async fn watch_prints_every_event_in_order() {
    let mut c = Cluster::start(3).await;
    let f = follower(&mut c).await;
    let leader = (f + c.members.len() - 1) % c.members.len();
    // Watching from the next revision makes the watch see every later write, however long
    // etcdctl takes to connect.
    let mut kv = c.kv(leader).await;
    let rev = kv.range(get("any")).await.expect("range").into_inner().header.expect("header").revision;
    let child = etcdctl(&c.members[f].api())
        .args(["watch", "w/", "--prefix", "--rev", &(rev + 1).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcdctl watch");
    let mut watch = ChildGuard(child);
    let printed = Arc::new(Mutex::new(String::new()));
    let mut stdout = watch.0.stdout.take().expect("stdout is piped");
    let sink = printed.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });

    assert_eq!(ctl(&c.members[leader].api(), &["put", "w/a", "1"]), "OK\n");
    assert_eq!(ctl(&c.members[f].api(), &["put", "other", "x"]), "OK\n");
    assert_eq!(ctl(&c.members[f].api(), &["put", "w/b", "2"]), "OK\n");
    assert_eq!(ctl(&c.members[leader].api(), &["del", "w/a"]), "1\n");
    // The last write marks the end: once it is printed, everything before it must have been.
    assert_eq!(ctl(&c.members[f].api(), &["put", "w/z", "end"]), "OK\n");

    // etcdctl prints an event as its type, the key and the value (empty for a delete).
    let want = "PUT\nw/a\n1\nPUT\nw/b\n2\nDELETE\nw/a\n\nPUT\nw/z\nend\n";
    let seen = eventually(PATIENCE, "etcdctl watch to print the last write", || {
        let printed = printed.clone();
        async move {
            let s = printed.lock().unwrap().clone();
            s.ends_with("w/z\nend\n").then_some(s)
        }
    })
    .await;
    assert_eq!(seen, want, "the watch printed other events than the writes under w/");
    assert!(watch.0.try_wait().expect("polling etcdctl watch").is_none(), "etcdctl watch exited early");
}

/// The lease id etcdctl printed for `lease grant`: `lease <hex> granted with TTL(<n>s)`.
fn granted_lease(out: &str) -> String {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        words.len() == 5 && words[0] == "lease" && words[2] == "granted" && words[4] == "TTL(60s)",
        "unexpected lease grant output: {out:?}"
    );
    words[1].to_string()
}

#[tokio::test]
async fn lease_grant_keep_alive_time_to_live_and_revoke() {
    let mut c = Cluster::start(3).await;
    let f = follower(&mut c).await;
    let ep = c.members[f].api();

    let id = granted_lease(&ctl(&ep, &["lease", "grant", "60"]));
    assert_eq!(ctl(&ep, &["put", &format!("--lease={id}"), "session", "alive"]), "OK\n");
    assert_eq!(ctl(&ep, &["put", &format!("--lease={id}"), "session2", "alive"]), "OK\n");
    assert_eq!(ctl(&ep, &["lease", "keep-alive", "--once", &id]), format!("lease {id} keepalived with TTL(60)\n"));

    let ttl = ctl(&ep, &["lease", "timetolive", "--keys", &id]);
    let prefix = format!("lease {id} granted with TTL(60s), remaining(");
    assert!(ttl.starts_with(&prefix), "unexpected timetolive output: {ttl:?}");
    assert!(ttl.ends_with("s), attached keys([session session2])\n"), "unexpected timetolive output: {ttl:?}");
    let remaining: i64 = ttl[prefix.len()..].split('s').next().and_then(|n| n.parse().ok()).expect("a remaining TTL");
    assert!((50..=60).contains(&remaining), "a fresh 60s lease has {remaining}s left");

    assert_eq!(ctl(&ep, &["lease", "revoke", &id]), format!("lease {id} revoked\n"));
    assert_eq!(ctl(&c.endpoints(), &["get", "session", "--prefix"]), "", "keys of a revoked lease are deleted");
    assert_eq!(ctl(&ep, &["lease", "timetolive", &id]), format!("lease {id} already expired\n"));
}

#[tokio::test]
async fn member_list_shows_every_started_member_with_its_urls() {
    let mut c = Cluster::start(3).await;
    let f = follower(&mut c).await;
    let want: String = c
        .members
        .iter()
        .map(|m| format!("{}, started, m{}, http://{}, http://{}, false\n", m.id, m.id, m.peer(), m.api()))
        .collect();
    let ep = c.members[f].api();
    // Members publish their names and client URLs through Raft once they run, so a member
    // list right after start-up may still show one as unstarted.
    let seen = eventually(PATIENCE, "every member to be listed as started", || {
        let out = ctl(&ep, &["member", "list"]);
        let want = want.clone();
        async move { (out == want).then_some(out) }
    })
    .await;
    assert_eq!(seen, want);
}

#[tokio::test]
async fn endpoint_status_shows_one_leader_and_the_etcd_api_version() {
    let mut c = Cluster::start(3).await;
    c.wait_leader(PATIENCE).await;
    let out = ctl(&c.endpoints(), &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let entries = status.as_array().unwrap_or_else(|| panic!("not a JSON array: {out}"));
    assert_eq!(entries.len(), 3, "{out}");

    let mut endpoints = Vec::new();
    let mut leaders = Vec::new();
    for e in entries {
        endpoints.push(e["Endpoint"].as_str().expect("an Endpoint").to_string());
        let s = &e["Status"];
        leaders.push(s["leader"].as_u64().expect("a leader id"));
        let version = s["version"].as_str().expect("a version");
        assert!(version.starts_with("3.4."), "etcdctl 3.4 expects a 3.4 server, got {version}");
        assert!(s["dbSize"].as_u64().unwrap_or(0) > 0, "{out}");
    }
    let mut want: Vec<String> = c.members.iter().map(|m| m.api()).collect();
    want.sort();
    endpoints.sort();
    assert_eq!(endpoints, want);
    assert!(leaders.iter().all(|l| *l == leaders[0]), "members disagree on the leader: {leaders:?}");
    assert!(c.members.iter().any(|m| m.id == leaders[0]), "the leader {} is not a member", leaders[0]);
}

#[tokio::test]
async fn snapshot_save_writes_the_snapshot_to_a_file() {
    let mut c = Cluster::start(3).await;
    let f = follower(&mut c).await;
    let ep = c.members[f].api();
    for i in 0..20 {
        assert_eq!(ctl(&ep, &["put", &format!("k{i}"), "v"]), "OK\n");
    }
    let file = c.dir.path().join("backup.db");
    let path = file.display().to_string();
    assert_eq!(ctl(&ep, &["snapshot", "save", &path]), format!("Snapshot saved at {path}\n"));
    let saved = std::fs::read(&file).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(saved.len() > 32, "the snapshot file holds {} bytes", saved.len());
    // Like etcd's, the snapshot ends with the SHA-256 of what comes before it, which
    // `etcdctl snapshot restore` checks.
    let (body, sum) = saved.split_at(saved.len() - 32);
    use sha2::Digest;
    assert_eq!(sha2::Sha256::digest(body).as_slice(), sum, "the snapshot's checksum does not match");
}

#[tokio::test]
async fn grpcurl_lists_the_etcd_services_through_reflection() {
    let c = Cluster::start(3).await;
    let (ok, out, err) = run(grpcurl().args(["-plaintext", &c.members[0].api(), "list"]));
    assert!(ok, "grpcurl list failed\nstdout: {out}\nstderr: {err}");
    let services: Vec<&str> = out.lines().collect();
    for want in [
        "etcdserverpb.KV",
        "etcdserverpb.Watch",
        "etcdserverpb.Lease",
        "etcdserverpb.Cluster",
        "etcdserverpb.Maintenance",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&want), "{want} is missing from grpcurl list:\n{out}");
    }
    // The peer protocol is served on the peer port only, and not advertised to clients.
    assert!(!out.contains("rkube.raft"), "the peer service is advertised on the client port:\n{out}");
}

#[tokio::test]
async fn grpcurl_put_is_seen_by_etcdctl() {
    let mut c = Cluster::start(3).await;
    let f = follower(&mut c).await;
    // "foo" and "bar" in base64, as grpcurl's JSON spells bytes fields.
    let (ok, out, err) = run(grpcurl().args([
        "-plaintext",
        "-d",
        r#"{"key":"Zm9v","value":"YmFy"}"#,
        &c.members[f].api(),
        "etcdserverpb.KV/Put",
    ]));
    assert!(ok, "grpcurl KV/Put failed\nstdout: {out}\nstderr: {err}");
    let resp: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(resp["header"]["revision"].as_str().is_some(), "no revision in the Put response: {out}");
    assert_eq!(ctl(&c.endpoints(), &["get", "foo"]), "foo\nbar\n");
}
