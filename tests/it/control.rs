//! The control plane on real masters with hollow nodes: deployments become running pods spread
//! over nodes, scale, roll out within their limits, cascade on deletion; endpoints follow
//! readiness; namespaces empty out; nodes that stop renewing lose their pods; the leaders move
//! when their master dies.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rkube::api::v1::*;
use rkube::api::Object;
use rkube::client::{Api, Client, DeleteParams, ListParams, WatchEvent};

use crate::harness::{eventually, send_signal, Cluster, RKUBE};

/// A `rkube hollow-nodes` process, killed when dropped.
struct Hollow(Child);

impl Hollow {
    fn start(c: &Cluster, prefix: &str, count: usize) -> Hollow {
        let log = std::fs::File::create(c.dir.path().join(format!("hollow-{prefix}.log"))).expect("log file");
        Hollow(
            Command::new(RKUBE)
                .args(["hollow-nodes", "--server", &c.endpoints(), "--count", &count.to_string(), "--prefix", prefix])
                .args(["--lease-renew-seconds", "1"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting hollow nodes"),
        )
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(c: &Cluster) -> Client {
    Client::from_list(&c.endpoints()).expect("endpoints")
}

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "c", "image": image}],
                                  "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                                   "effect": "NoExecute", "tolerationSeconds": 2}]}}
        }
    }))
    .expect("deployment")
}

async fn wait_nodes(client: &Client, n: usize) {
    eventually(Duration::from_secs(30), "hollow nodes ready with pod subnets", || async {
        let (nodes, _) = Api::<Node>::all(client).list(&ListParams::default()).await.ok()?;
        let ready = nodes
            .iter()
            .filter(|n| n.spec.as_ref().is_some_and(|s| !s.pod_cidr.is_empty()))
            .filter(|n| {
                n.status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
            })
            .count();
        (ready >= n).then_some(())
    })
    .await;
}

fn running(p: &Pod) -> bool {
    p.meta().deletion_timestamp.is_empty() && p.status.as_ref().is_some_and(|s| s.phase == "Running")
}

/// Waits until `app` has exactly `n` running pods and nothing else alive; returns them.
async fn wait_running(client: &Client, ns: &str, app: &str, n: usize) -> Vec<Pod> {
    let pods = Api::<Pod>::namespaced(client, ns);
    eventually(Duration::from_secs(40), &format!("{n} running pods of {app}"), || async {
        let (items, _) = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.ok()?;
        let live: Vec<Pod> = items.into_iter().filter(|p| p.meta().deletion_timestamp.is_empty()).collect();
        (live.len() == n && live.iter().all(running)).then_some(live)
    })
    .await
}

/// Changes the image of a Deployment's first container: a rollout.
async fn roll_out(deploys: &Api<Deployment>, name: &str, image: &str) {
    let mut d = deploys.get(name).await.expect("get");
    d.spec.as_mut().expect("spec").template.as_mut().expect("template").spec.as_mut().expect("pod spec").containers
        [0]
    .image = image.into();
    deploys.update(&d).await.expect("roll out");
}

/// Applies one watch event to the pods seen so far.
fn apply(state: &mut HashMap<String, Pod>, ev: WatchEvent<Pod>) {
    match ev {
        WatchEvent::Added(p) | WatchEvent::Modified(p) => {
            state.insert(p.meta().name.clone(), p);
        }
        WatchEvent::Deleted(p) => {
            state.remove(&p.meta().name);
        }
        WatchEvent::Bookmark(_) => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_spread_over_nodes_and_scales() {
    let c = Cluster::start_with(3, &["--control-plane", "true"]).await;
    let _nodes = Hollow::start(&c, "w", 3);
    let client = client(&c);
    wait_nodes(&client, 3).await;
    let deploys = Api::<Deployment>::namespaced(&client, "default");
    deploys.create(&deployment("web", 5, "httpd:1")).await.expect("create");
    let pods = wait_running(&client, "default", "web", 5).await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        *per_node.entry(p.spec.as_ref().expect("spec").node_name.clone()).or_default() += 1;
        assert!(!p.status.as_ref().expect("status").pod_ip.is_empty());
    }
    assert_eq!(per_node.len(), 3, "5 pods of one owner spread over all 3 nodes: {per_node:?}");
    assert!(per_node.values().all(|n| *n <= 2), "{per_node:?}");

    deploys.scale("web", 8).await.expect("scale up");
    wait_running(&client, "default", "web", 8).await;
    deploys.scale("web", 2).await.expect("scale down");
    wait_running(&client, "default", "web", 2).await;
    let d = eventually(Duration::from_secs(20), "deployment status", || async {
        let d = deploys.get("web").await.ok()?;
        let s = d.status.clone()?;
        (s.ready_replicas == 2 && s.available_replicas == 2 && s.observed_generation == d.meta().generation)
            .then_some(d)
    })
    .await;
    let available =
        d.status.expect("status").conditions.into_iter().find(|c| c.r#type == "Available").expect("Available");
    assert_eq!(available.status, "True");

    // Events tell what happened.
    let (events, _) = Api::<Event>::namespaced(&client, "default").list(&ListParams::default()).await.expect("events");
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    for want in ["ScalingReplicaSet", "SuccessfulCreate", "Scheduled"] {
        assert!(reasons.contains(&want), "no {want} event in {reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_within_max_surge_and_max_unavailable_throughout() {
    let c = Cluster::start_with(1, &["--control-plane", "true"]).await;
    let _nodes = Hollow::start(&c, "w", 3);
    let client = client(&c);
    wait_nodes(&client, 3).await;
    let deploys = Api::<Deployment>::namespaced(&client, "default");
    deploys.create(&deployment("roll", 4, "httpd:1")).await.expect("create");
    wait_running(&client, "default", "roll", 4).await;

    // The pods now, then every change from here on.
    let pods = Api::<Pod>::namespaced(&client, "default");
    let (items, meta) = pods.list(&ListParams::default().labels("app=roll")).await.expect("list");
    let mut watch = pods.watch(&ListParams::default().labels("app=roll"), &meta.resource_version).await.expect("watch");
    roll_out(&deploys, "roll", "httpd:2").await;

    let mut state: HashMap<String, Pod> = items.into_iter().map(|p| (p.meta().name.clone(), p)).collect();
    let (mut max_total, mut min_ready) = (0usize, usize::MAX);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = tokio::time::timeout_at(deadline, watch.next()).await.expect("the rollout finishes in time");
        let ev = ev.expect("the watch goes on").expect("an event");
        if matches!(ev, WatchEvent::Bookmark(_)) {
            continue;
        }
        apply(&mut state, ev);
        let live: Vec<&Pod> = state.values().filter(|p| p.meta().deletion_timestamp.is_empty()).collect();
        let ready = live.iter().filter(|p| running(p)).count();
        max_total = max_total.max(live.len());
        min_ready = min_ready.min(ready);
        let done = live.len() == 4
            && live.iter().all(|p| running(p) && p.spec.as_ref().expect("spec").containers[0].image == "httpd:2");
        if done && state.len() == live.len() {
            break;
        }
    }
    assert!(max_total <= 5, "at most replicas + maxSurge = 5 pods at any moment, saw {max_total}");
    assert!(min_ready >= 3, "at least replicas - maxUnavailable = 3 running at any moment, saw {min_ready}");

    // History and rollback: two ReplicaSets, revisions 1 and 2; rolling back to 1 brings httpd:1.
    let rss = Api::<ReplicaSet>::namespaced(&client, "default");
    let (items, _) = rss.list(&ListParams::default().labels("app=roll")).await.expect("list rs");
    assert_eq!(items.len(), 2);
    let old = items
        .iter()
        .find(|r| r.meta().annotations.get("deployment.kubernetes.io/revision").map(String::as_str) == Some("1"))
        .expect("revision 1");
    let mut template = old.spec.clone().expect("spec").template.expect("template");
    template.metadata.as_mut().expect("meta").labels.remove("pod-template-hash");
    // A merge patch, as `rkctl rollout undo` does: no resourceVersion to race the controllers.
    let patch = serde_json::json!({"spec": {"template": template}});
    deploys.patch("roll", &patch, false).await.expect("undo");
    eventually(Duration::from_secs(40), "rollback to httpd:1", || async {
        let live = wait_running(&client, "default", "roll", 4).await;
        live.iter().all(|p| p.spec.as_ref().expect("spec").containers[0].image == "httpd:1").then_some(())
    })
    .await;
    let rev = rss
        .get(&old.meta().name)
        .await
        .expect("old rs")
        .meta()
        .annotations
        .get("deployment.kubernetes.io/revision")
        .cloned();
    assert_eq!(rev.as_deref(), Some("3"), "the rolled-back ReplicaSet is the newest revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_deployment_cascades_unless_orphaned() {
    let c = Cluster::start_with(1, &["--control-plane", "true"]).await;
    let _nodes = Hollow::start(&c, "w", 2);
    let client = client(&c);
    wait_nodes(&client, 2).await;
    let deploys = Api::<Deployment>::namespaced(&client, "default");
    let rss = Api::<ReplicaSet>::namespaced(&client, "default");
    let pods = Api::<Pod>::namespaced(&client, "default");

    deploys.create(&deployment("gone", 3, "httpd:1")).await.expect("create");
    wait_running(&client, "default", "gone", 3).await;
    deploys.delete("gone", &DeleteParams::default()).await.expect("delete");
    eventually(Duration::from_secs(30), "ReplicaSets and pods removed", || async {
        let (r, _) = rss.list(&ListParams::default().labels("app=gone")).await.ok()?;
        let (p, _) = pods.list(&ListParams::default().labels("app=gone")).await.ok()?;
        (r.is_empty() && p.is_empty()).then_some(())
    })
    .await;

    deploys.create(&deployment("kept", 2, "httpd:1")).await.expect("create");
    wait_running(&client, "default", "kept", 2).await;
    deploys
        .delete("kept", &DeleteParams { propagation_policy: "Orphan".into(), ..Default::default() })
        .await
        .expect("delete");
    eventually(Duration::from_secs(30), "the deployment gone, its ReplicaSet orphaned", || async {
        let gone = deploys.get("kept").await.err()?.is_not_found();
        let (r, _) = rss.list(&ListParams::default().labels("app=kept")).await.ok()?;
        (gone && r.len() == 1 && r[0].meta().owner_references.is_empty()).then_some(())
    })
    .await;
    // The orphaned ReplicaSet keeps its pods.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_running(&client, "default", "kept", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_pod_readiness_and_namespaces_empty_out_when_deleted() {
    let c = Cluster::start_with(1, &["--control-plane", "true"]).await;
    let _nodes = Hollow::start(&c, "w", 2);
    let client = client(&c);
    wait_nodes(&client, 2).await;
    let mut ns = Namespace::default();
    ns.meta_mut().name = "shop".into();
    Api::<Namespace>::all(&client).create(&ns).await.expect("namespace");
    Api::<Deployment>::namespaced(&client, "shop").create(&deployment("api", 3, "httpd:1")).await.expect("create");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "api"}, "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(&client, "shop").create(&svc).await.expect("service");
    let running_pods = wait_running(&client, "shop", "api", 3).await;
    let eps = Api::<Endpoints>::namespaced(&client, "shop");
    eventually(Duration::from_secs(20), "3 ready endpoints", || async {
        let e = eps.get("api").await.ok()?;
        let s = e.subsets.first()?;
        (s.addresses.len() == 3 && s.ports.first().map(|p| p.port) == Some(8080)).then_some(())
    })
    .await;
    // One pod stops being ready: it moves to notReadyAddresses.
    let mut p = running_pods[0].clone();
    for cond in &mut p.status.as_mut().expect("status").conditions {
        if cond.r#type == "Ready" {
            cond.status = "False".into();
        }
    }
    Api::<Pod>::namespaced(&client, "shop").update_status(&p).await.expect("not ready");
    let ip = p.status.as_ref().expect("status").pod_ip.clone();
    eventually(Duration::from_secs(20), "the pod listed as not ready", || async {
        let e = eps.get("api").await.ok()?;
        let s = e.subsets.first()?;
        (s.addresses.len() == 2 && s.not_ready_addresses.iter().any(|a| a.ip == ip)).then_some(())
    })
    .await;

    Api::<Namespace>::all(&client).delete("shop", &DeleteParams::default()).await.expect("delete namespace");
    eventually(Duration::from_secs(40), "the namespace and its content gone", || async {
        Api::<Namespace>::all(&client).get("shop").await.err()?.is_not_found().then_some(())
    })
    .await;
    let (left, _) = Api::<Pod>::namespaced(&client, "shop").list(&ListParams::default()).await.expect("list");
    assert!(left.is_empty(), "{} pods left", left.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_leave_a_node_that_stops_renewing_its_lease() {
    let c = Cluster::start_with(1, &["--control-plane", "true", "--node-monitor-grace-period", "3"]).await;
    let doomed = Hollow::start(&c, "a", 1);
    let client = client(&c);
    wait_nodes(&client, 1).await;
    Api::<Deployment>::namespaced(&client, "default").create(&deployment("mover", 2, "httpd:1")).await.expect("create");
    let pods = wait_running(&client, "default", "mover", 2).await;
    assert!(pods.iter().all(|p| p.spec.as_ref().expect("spec").node_name == "a-0"));
    let _healthy = Hollow::start(&c, "b", 2);
    wait_nodes(&client, 3).await;
    drop(doomed);
    let nodes = Api::<Node>::all(&client);
    eventually(Duration::from_secs(30), "a-0 NotReady and tainted", || async {
        let n = nodes.get("a-0").await.ok()?;
        let ready = n.status.as_ref()?.conditions.iter().find(|c| c.r#type == "Ready")?.status.clone();
        let tainted = n.spec.as_ref()?.taints.iter().any(|t| t.key == "node.kubernetes.io/unreachable");
        (ready == "Unknown" && tainted).then_some(())
    })
    .await;
    eventually(Duration::from_secs(40), "both pods running on healthy nodes", || async {
        let moved = wait_running(&client, "default", "mover", 2).await;
        moved.iter().all(|p| p.spec.as_ref().expect("spec").node_name.starts_with("b-")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_moves_when_its_master_dies() {
    let mut c = Cluster::start_with(
        3,
        &[
            "--control-plane",
            "true",
            "--leader-elect-lease-duration",
            "4",
            "--leader-elect-renew-deadline",
            "3",
            "--leader-elect-retry-period",
            "1",
        ],
    )
    .await;
    let _nodes = Hollow::start(&c, "w", 2);
    let client = client(&c);
    wait_nodes(&client, 2).await;
    let leases = Api::<Lease>::namespaced(&client, "kube-system");
    let holder = |l: &Lease| l.spec.as_ref().map(|s| s.holder_identity.clone()).unwrap_or_default();
    let before = eventually(Duration::from_secs(20), "a scheduler leader", || async {
        let l = leases.get("rkube-scheduler").await.ok()?;
        (!holder(&l).is_empty()).then_some(l)
    })
    .await;
    let cm_before = leases.get("rkube-controller-manager").await.expect("cm lease");
    // The master that runs the scheduler's leader says so in its log.
    let hosts = |h: &str| {
        (0..3).find(|i| c.members[*i].log_text().lines().any(|l| l.contains("became leader") && l.contains(h)))
    };
    let victim = hosts(&holder(&before)).expect("the scheduler leader's master");
    let cm_moves = hosts(&holder(&cm_before)) == Some(victim);
    c.kill(victim);
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(20), "the roles on the dead master move to a live one", || async {
        let s = leases.get("rkube-scheduler").await.ok()?;
        let m = leases.get("rkube-controller-manager").await.ok()?;
        let s_moved = !holder(&s).is_empty() && holder(&s) != holder(&before);
        let m_moved = !cm_moves || (!holder(&m).is_empty() && holder(&m) != holder(&cm_before));
        (s_moved && m_moved).then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    // Work goes on: a new deployment gets running pods.
    Api::<Deployment>::namespaced(&client, "default").create(&deployment("after", 2, "httpd:1")).await.expect("create");
    wait_running(&client, "default", "after", 2).await;
}

/// A `rkube scheduler` or `rkube controller-manager` process with short leader-election
/// periods, killed when dropped.
struct Component {
    child: Child,
    log: std::path::PathBuf,
}

impl Component {
    fn start(c: &Cluster, what: &str, n: usize) -> Component {
        let log = c.dir.path().join(format!("{what}-{n}.log"));
        let child = Command::new(RKUBE)
            .args([what, "--server", &c.endpoints()])
            .args(["--leader-elect-lease-duration", "3", "--leader-elect-renew-deadline", "2"])
            .args(["--leader-elect-retry-period", "1", "--node-monitor-grace-period", "30"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting a control-plane component");
        Component { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        assert!(send_signal(self.child.id(), sig), "kill {sig}");
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which of `components` holds `lease` now, once one does.
async fn holder_of(client: &Client, lease: &str, components: &[Component]) -> usize {
    let leases = Api::<Lease>::namespaced(client, "kube-system");
    eventually(Duration::from_secs(30), &format!("a holder of {lease}"), || async {
        let l = leases.get(lease).await.ok()?;
        let h = l.spec.as_ref()?.holder_identity.clone();
        if h.is_empty() {
            return None;
        }
        components.iter().position(|c| c.log_text().lines().any(|l| l.contains("became leader") && l.contains(&h)))
    })
    .await
}

fn bare_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "fenced"}},
        "spec": {"containers": [{"name": "c", "image": "httpd:1"}]}
    }))
    .expect("pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_scheduler_that_lost_its_lease_binds_nothing() {
    let c = Cluster::start(1).await;
    let _cm = Component::start(&c, "controller-manager", 0);
    let schedulers = [Component::start(&c, "scheduler", 0), Component::start(&c, "scheduler", 1)];
    let _nodes = Hollow::start(&c, "w", 3);
    let client = client(&c);
    wait_nodes(&client, 3).await;
    let pods = Api::<Pod>::namespaced(&client, "default");
    let (_, meta) = pods.list(&ListParams::default()).await.expect("list");
    let mut watch = pods.watch(&ListParams::default(), &meta.resource_version).await.expect("watch");

    let old = holder_of(&client, "rkube-scheduler", &schedulers).await;
    schedulers[old].signal("-STOP");
    // These reach the paused leader's watch too: they are in its queue when it wakes up.
    for i in 0..20 {
        pods.create(&bare_pod(&format!("p{i:02}"))).await.expect("create");
    }
    let new = holder_of(&client, "rkube-scheduler", &schedulers).await;
    let new = if new == old {
        // Its lease has not run out in the store's eyes yet; wait for the other to take it.
        eventually(Duration::from_secs(30), "the other scheduler takes over", || async {
            let n = holder_of(&client, "rkube-scheduler", &schedulers).await;
            (n != old).then_some(n)
        })
        .await
    } else {
        new
    };
    assert_ne!(new, old);

    // Every binding seen from here on: each pod gets a node once, and keeps it.
    let mut bound: HashMap<String, String> = HashMap::new();
    let check = |p: &Pod, bound: &mut HashMap<String, String>| {
        let node = p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
        if node.is_empty() {
            return;
        }
        if let Some(before) = bound.insert(p.meta().name.clone(), node.clone()) {
            assert_eq!(before, node, "{} was bound twice", p.meta().name);
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while bound.len() < 20 {
        let ev = tokio::time::timeout_at(deadline, watch.next()).await.expect("every pod is bound in time");
        if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev.expect("the watch goes on").expect("an event") {
            check(&p, &mut bound);
        }
    }

    // The deposed leader wakes with those pods in its queue, finds its lease gone and stops.
    schedulers[old].signal("-CONT");
    let more = [bare_pod("after-0"), bare_pod("after-1")];
    for p in &more {
        pods.create(p).await.expect("create");
    }
    eventually(Duration::from_secs(20), "the old leader notices", || async {
        schedulers[old].log_text().contains("lost leadership").then_some(())
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while bound.len() < 22 {
        let ev = tokio::time::timeout_at(deadline, watch.next()).await.expect("the new pods are bound in time");
        if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev.expect("the watch goes on").expect("an event") {
            check(&p, &mut bound);
        }
    }
    // Whatever the old leader still tried was refused: the final state is the new leader's.
    let (items, _) = pods.list(&ListParams::default()).await.expect("list");
    assert_eq!(items.len(), 22);
    for p in &items {
        assert_eq!(Some(&p.spec.as_ref().expect("spec").node_name), bound.get(&p.meta().name));
    }
    let holder = holder_of(&client, "rkube-scheduler", &schedulers).await;
    assert_eq!(holder, new, "the woken scheduler did not take the lease back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_controller_manager_cannot_push_a_rollout_past_its_surge() {
    let c = Cluster::start(1).await;
    let managers = [Component::start(&c, "controller-manager", 0), Component::start(&c, "controller-manager", 1)];
    let _scheduler = Component::start(&c, "scheduler", 0);
    let _nodes = Hollow::start(&c, "w", 3);
    let client = client(&c);
    wait_nodes(&client, 3).await;
    let deploys = Api::<Deployment>::namespaced(&client, "default");
    deploys.create(&deployment("fenced", 4, "httpd:1")).await.expect("create");
    wait_running(&client, "default", "fenced", 4).await;

    let pods = Api::<Pod>::namespaced(&client, "default");
    let (items, meta) = pods.list(&ListParams::default().labels("app=fenced")).await.expect("list");
    let mut watch =
        pods.watch(&ListParams::default().labels("app=fenced"), &meta.resource_version).await.expect("watch");
    let mut state: HashMap<String, Pod> = items.into_iter().map(|p| (p.meta().name.clone(), p)).collect();

    // Pause the leader just as a rollout starts; the other takes over and finishes it.
    let old = holder_of(&client, "rkube-controller-manager", &managers).await;
    roll_out(&deploys, "fenced", "httpd:2").await;
    managers[old].signal("-STOP");
    let leases = Api::<Lease>::namespaced(&client, "kube-system");
    let old_holder = leases.get("rkube-controller-manager").await.expect("lease").spec.expect("spec").holder_identity;
    let mut resumed = false;
    let mut max_live = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        // Wake the old leader as soon as the other has taken over: it wakes with the rollout's
        // work in its queue and a cache from before its pause.
        if !resumed {
            let l = leases.get("rkube-controller-manager").await.expect("lease");
            if l.spec.is_some_and(|s| !s.holder_identity.is_empty() && s.holder_identity != old_holder) {
                managers[old].signal("-CONT");
                resumed = true;
            }
        }
        match tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
            Ok(ev) => apply(&mut state, ev.expect("the watch goes on").expect("an event")),
            Err(_) => {
                if tokio::time::Instant::now() > deadline {
                    let summary: Vec<String> = state
                        .values()
                        .map(|p| {
                            let image = &p.spec.as_ref().expect("spec").containers[0].image;
                            let phase = p.status.as_ref().map(|s| s.phase.clone()).unwrap_or_default();
                            let deleting = !p.meta().deletion_timestamp.is_empty();
                            format!("{} {image} {phase} deleting={deleting}", p.meta().name)
                        })
                        .collect();
                    let logs: Vec<String> = managers.iter().map(Component::log_text).collect();
                    panic!(
                        "the rollout did not finish in time (resumed: {resumed}): {summary:#?}\n{}",
                        logs.join("\n-----\n")
                    );
                }
            }
        }
        let live: Vec<&Pod> = state.values().filter(|p| p.meta().deletion_timestamp.is_empty()).collect();
        max_live = max_live.max(live.len());
        if max_live > 5 {
            let summary: Vec<String> = live
                .iter()
                .map(|p| {
                    let image = &p.spec.as_ref().expect("spec").containers[0].image;
                    let owner = p.meta().owner_references.first().map(|o| o.name.clone()).unwrap_or_default();
                    let phase = p.status.as_ref().map(|s| s.phase.clone()).unwrap_or_default();
                    format!("{} {image} {owner} {phase} rv={}", p.meta().name, p.meta().resource_version)
                })
                .collect();
            let logs: Vec<String> = managers.iter().map(Component::log_text).collect();
            let (sets, _) = Api::<ReplicaSet>::namespaced(&client, "default")
                .list(&ListParams::default())
                .await
                .expect("list replica sets");
            let sets: Vec<String> = sets
                .iter()
                .map(|r| {
                    let spec = r.spec.as_ref().expect("spec");
                    let image =
                        &spec.template.as_ref().and_then(|t| t.spec.as_ref()).expect("template").containers[0].image;
                    format!("{} replicas={:?} {image} rv={}", r.meta().name, spec.replicas, r.meta().resource_version)
                })
                .collect();
            panic!(
                "at most replicas + maxSurge = 5 live pods at any moment, saw {max_live} (resumed: {resumed}): \
                 {summary:#?}\nreplica sets now: {sets:#?}\n{}",
                logs.join("\n-----\n")
            );
        }
        let done = live.len() == 4
            && live.iter().all(|p| running(p) && p.spec.as_ref().expect("spec").containers[0].image == "httpd:2");
        if resumed && done && state.len() == live.len() {
            break;
        }
    }
    let new = holder_of(&client, "rkube-controller-manager", &managers).await;
    assert_ne!(new, old, "the other controller manager finished the rollout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreate_rollout_stops_every_old_pod_before_starting_new_ones() {
    let c = Cluster::start_with(1, &["--control-plane", "true"]).await;
    let _nodes = Hollow::start(&c, "w", 2);
    let client = client(&c);
    wait_nodes(&client, 2).await;
    let deploys = Api::<Deployment>::namespaced(&client, "default");
    let mut d = deployment("recreate", 3, "httpd:1");
    d.spec.as_mut().expect("spec").strategy =
        Some(DeploymentStrategy { r#type: "Recreate".into(), rolling_update: None });
    deploys.create(&d).await.expect("create");
    wait_running(&client, "default", "recreate", 3).await;

    let pods = Api::<Pod>::namespaced(&client, "default");
    let (items, meta) = pods.list(&ListParams::default().labels("app=recreate")).await.expect("list");
    let mut watch =
        pods.watch(&ListParams::default().labels("app=recreate"), &meta.resource_version).await.expect("watch");
    roll_out(&deploys, "recreate", "httpd:2").await;

    // Pods of both templates never exist at once, terminating ones included.
    let image = |p: &Pod| p.spec.as_ref().expect("spec").containers[0].image.clone();
    let mut state: HashMap<String, Pod> = items.into_iter().map(|p| (p.meta().name.clone(), p)).collect();
    let mut old_deleted = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = tokio::time::timeout_at(deadline, watch.next()).await.expect("the rollout finishes in time");
        match ev.expect("the watch goes on").expect("an event") {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                state.insert(p.meta().name.clone(), p);
            }
            WatchEvent::Deleted(p) => {
                state.remove(&p.meta().name);
                old_deleted += usize::from(image(&p) == "httpd:1");
            }
            WatchEvent::Bookmark(_) => continue,
        }
        let old = state.values().filter(|p| image(p) == "httpd:1").count();
        let new = state.values().filter(|p| image(p) == "httpd:2").count();
        assert!(old == 0 || new == 0, "{old} old and {new} new pods at once");
        if new == 3 && state.values().all(running) {
            break;
        }
    }
    assert_eq!(old_deleted, 3, "every old pod went");
}
