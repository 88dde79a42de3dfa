//! rkctl's store commands against a real cluster, checked on the printed output.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const RKCTL: &str = env!("CARGO_BIN_EXE_rkctl");

fn rkctl(servers: &str, args: &[&str]) -> (bool, String, String) {
    run(Command::new(RKCTL).arg("--server").arg(servers).args(args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rkctl_lists_members_and_cluster_status_trying_the_next_server() {
    let c = Cluster::start(3).await;
    // The first server is down: rkctl moves on to the next.
    let servers = format!("127.0.0.1:{},{}", free_port(), c.members[1].api());
    let out = eventually(Duration::from_secs(10), "every member to publish its name", || async {
        let (ok, out, _) = rkctl(&servers, &["member", "list"]);
        (ok && out.lines().filter(|l| l.contains("voter")).count() == 3 && !out.contains("<unstarted>")).then_some(out)
    })
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID   NAME   PEER ADDRS"), "{out}");
    for m in &c.members {
        let want =
            [m.id.to_string(), format!("m{}", m.id), format!("http://{}", m.peer()), format!("http://{}", m.api())];
        assert!(
            lines.iter().any(|l| l.split_whitespace().take(4).eq(want.iter().map(String::as_str))),
            "member {} missing:\n{out}",
            m.id
        );
    }
    let (ok, status, err) = rkctl(&servers, &["cluster", "status"]);
    assert!(ok, "{err}");
    assert_eq!(status.lines().count(), 4, "{status}");
    assert_eq!(status.lines().filter(|l| l.contains("   true   ")).count(), 1, "exactly one leader:\n{status}");

    let (ok, _, err) = rkctl(&servers, &["member", "remove", "9"]);
    assert!(!ok);
    assert_eq!(err.trim(), "Error from server (NotFound): etcdserver: member not found");
    let (ok, _, err) = rkctl(&format!("127.0.0.1:{}", free_port()), &["member", "list"]);
    assert!(!ok);
    assert!(err.starts_with("Unable to connect to the server: "), "{err}");
}
