//! The rkube.v1 object API against real servers: every verb of every kind, compare-and-swap,
//! watch resumption and expiry, consistent paging, graceful deletion, finalizers, allocations
//! under concurrency, fencing, and the API through the loss of a master.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use rkube::api::v1::*;
use rkube::api::Object;
use rkube::client::{Api, Client, ClientError, DeleteParams, ListParams, Remote, WatchEvent};
use rkube::pb::etcdserverpb as epb;

use crate::harness::{eventually, Cluster};

fn client(c: &Cluster) -> Client {
    Client::from_list(&c.endpoints()).expect("valid endpoints")
}

fn from_json<K: Object>(v: serde_json::Value) -> K {
    serde_json::from_value(v).expect("test manifest parses")
}

fn pod(name: &str) -> Pod {
    from_json(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "httpd:2"}]}
    }))
}

/// A minimal valid object of every kind, named `name`.
fn sample<K: Object>(name: &str) -> K {
    let template = serde_json::json!({
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "httpd:2"}]}
    });
    let v = match K::KIND {
        "Namespace" => serde_json::json!({"metadata": {"name": name}}),
        "Pod" => {
            serde_json::json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "httpd:2"}]}})
        }
        "ReplicaSet" | "Deployment" => serde_json::json!({
            "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": template}
        }),
        "Service" => {
            serde_json::json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}})
        }
        "Endpoints" => {
            serde_json::json!({"metadata": {"name": name}, "subsets": [{"addresses": [{"ip": "10.244.1.5"}], "ports": [{"port": 80}]}]})
        }
        "Node" => serde_json::json!({"metadata": {"name": name}, "spec": {"podCIDR": "10.244.7.0/24"}}),
        "ConfigMap" => serde_json::json!({"metadata": {"name": name}, "data": {"k": "v"}}),
        "Lease" => {
            serde_json::json!({"metadata": {"name": name}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
        }
        "Event" => {
            serde_json::json!({"metadata": {"name": name}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}, "reason": "Tested", "message": "hello"})
        }
        other => panic!("no sample for {other}"),
    };
    from_json(v)
}

async fn crud<K: Remote + std::fmt::Debug>(client: &Client) {
    let api = Api::<K>::namespaced(client, "default");
    let name = format!("x-{}", K::RESOURCE);
    let created = api.create(&sample::<K>(&name)).await.unwrap_or_else(|e| panic!("create {}: {e}", K::KIND));
    let m = created.meta();
    assert!(!m.uid.is_empty() && !m.creation_timestamp.is_empty(), "{}: server fields set", K::KIND);
    assert_eq!(m.namespace, if K::NAMESPACED { "default" } else { "" }, "{}", K::KIND);
    let rv: i64 = m.resource_version.parse().expect("numeric resourceVersion");

    let again = api.create(&sample::<K>(&name)).await.expect_err("a second create of one name fails");
    assert!(again.is_already_exists(), "{}: {again}", K::KIND);

    let got = api.get(&name).await.expect("get");
    assert_eq!(got, created, "{}: get returns what create returned", K::KIND);

    let (items, meta) = api.list(&ListParams::default()).await.expect("list");
    assert!(items.iter().any(|o| o.meta().name == name), "{}: listed", K::KIND);
    assert!(meta.resource_version.parse::<i64>().expect("list rv") >= rv);

    let mut changed = got.clone();
    changed.meta_mut().labels.insert("changed".into(), "yes".into());
    let updated = api.update(&changed).await.expect("update");
    assert!(updated.meta().resource_version.parse::<i64>().expect("rv") > rv, "{}: rv moves on update", K::KIND);
    assert_eq!(updated.meta().labels.get("changed").map(String::as_str), Some("yes"));

    // The old resourceVersion no longer matches.
    let stale = api.update(&changed).await.expect_err("an update with a stale resourceVersion fails");
    assert!(stale.is_conflict(), "{}: {stale}", K::KIND);
    assert!(
        stale
            .to_string()
            .contains("the object has been modified; please apply your changes to the latest version and try again"),
        "{stale}"
    );

    let patched = api
        .patch(&name, &serde_json::json!({"metadata": {"annotations": {"note": "patched"}}}), false)
        .await
        .expect("patch");
    assert_eq!(patched.meta().annotations.get("note").map(String::as_str), Some("patched"));
    assert_eq!(
        patched.meta().labels.get("changed").map(String::as_str),
        Some("yes"),
        "a merge patch keeps other fields"
    );

    api.delete(&name, &DeleteParams::default()).await.expect("delete");
    if K::KIND != "Namespace" {
        let gone = api.get(&name).await.expect_err("deleted");
        assert!(gone.is_not_found(), "{}: {gone}", K::KIND);
        let msg = gone.to_string();
        assert!(
            msg.starts_with("Error from server (NotFound): ") && msg.contains(&format!("{name:?} not found")),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_supports_every_verb() {
    let c = Cluster::start(1).await;
    let client = client(&c);
    crud::<Namespace>(&client).await;
    crud::<Pod>(&client).await;
    crud::<ReplicaSet>(&client).await;
    crud::<Deployment>(&client).await;
    crud::<Service>(&client).await;
    crud::<Endpoints>(&client).await;
    crud::<Node>(&client).await;
    crud::<ConfigMap>(&client).await;
    crud::<Lease>(&client).await;
    crud::<Event>(&client).await;

    // Objects are stored where Kubernetes stores them, readable with etcd's API.
    let pods = Api::<Pod>::namespaced(&client, "default");
    pods.create(&pod("stored")).await.expect("create");
    let mut kv = c.kv(0).await;
    let resp = kv.range(crate::harness::prefix("/registry/")).await.expect("range").into_inner();
    let keys: Vec<String> = resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect();
    for want in [
        "/registry/pods/default/stored",
        "/registry/namespaces/default",
        "/registry/namespaces/kube-system",
        "/registry/namespaces/kube-node-lease",
    ] {
        assert!(keys.iter().any(|k| k == want), "{want} missing from {keys:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_defaults_validates_and_writes_nothing_bad() {
    let c = Cluster::start(1).await;
    let client = client(&c);
    let deploys = Api::<Deployment>::namespaced(&client, "default");
    let mut d = sample::<Deployment>("web");
    d.spec.as_mut().expect("spec").replicas = Some(-1);
    let err = deploys.create(&d).await.expect_err("negative replicas");
    assert_eq!(
        err.to_string(),
        "Error from server (Invalid): Deployment.apps \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    );
    assert!(deploys.get("web").await.expect_err("nothing written").is_not_found());

    let created = deploys.create(&sample::<Deployment>("web")).await.expect("valid deployment");
    let s = created.spec.as_ref().expect("spec");
    assert_eq!(s.revision_history_limit, Some(10));
    assert_eq!(s.strategy.as_ref().map(|st| st.r#type.as_str()), Some("RollingUpdate"));
    assert_eq!(created.meta().generation, 1);

    // A spec change bumps generation; a label change does not; status from a client is ignored.
    let mut spec_change = created.clone();
    spec_change.spec.as_mut().expect("spec").replicas = Some(3);
    spec_change.status = Some(DeploymentStatus { replicas: 99, ..Default::default() });
    let updated = deploys.update(&spec_change).await.expect("update");
    assert_eq!(updated.meta().generation, 2);
    assert_eq!(updated.status.clone().unwrap_or_default().replicas, 0, "status is not written by Update");
    let mut label_change = updated.clone();
    label_change.meta_mut().labels.insert("x".into(), "y".into());
    assert_eq!(deploys.update(&label_change).await.expect("update").meta().generation, 2);

    // UpdateStatus writes status only.
    let mut status = deploys.get("web").await.expect("get");
    status.status = Some(DeploymentStatus { replicas: 3, observed_generation: 2, ..Default::default() });
    status.spec.as_mut().expect("spec").replicas = Some(7);
    let st = deploys.update_status(&status).await.expect("update status");
    assert_eq!(st.status.clone().unwrap_or_default().replicas, 3);
    assert_eq!(st.spec.as_ref().expect("spec").replicas, Some(3), "spec is not written by UpdateStatus");

    // A namespace that does not exist.
    let err = Api::<Pod>::namespaced(&client, "nowhere").create(&pod("p")).await.expect_err("no such namespace");
    assert!(err.is_not_found() && err.to_string().contains("namespaces \"nowhere\" not found"), "{err}");

    // Bad names, selectors and continue tokens are the client's fault and say so.
    let err = Api::<Pod>::namespaced(&client, "default").create(&pod("Bad_Name")).await.expect_err("bad name");
    assert!(err.to_string().contains("metadata.name: Invalid value: \"Bad_Name\""), "{err}");
    let err = Api::<Pod>::all(&client).list(&ListParams::default().labels("a=b c")).await.expect_err("bad selector");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err =
        Api::<Pod>::all(&client).list(&ListParams::default().fields("spec.color=red")).await.expect_err("bad field");
    assert!(err.to_string().contains("field label not supported: spec.color"), "{err}");

    // A list without a namespace covers every namespace; with one, only that one.
    let mut other = pod("elsewhere");
    other.meta_mut().namespace = "kube-system".into();
    Api::<Pod>::namespaced(&client, "kube-system").create(&other).await.expect("create in kube-system");
    let names = |items: Vec<Pod>| items.into_iter().map(|p| p.meta().name.clone()).collect::<Vec<_>>();
    let all = names(Api::<Pod>::all(&client).list(&ListParams::default()).await.expect("list all").0);
    assert!(all.contains(&"elsewhere".to_string()), "{all:?}");
    let default_only =
        names(Api::<Pod>::namespaced(&client, "default").list(&ListParams::default()).await.expect("list").0);
    assert!(!default_only.contains(&"elsewhere".to_string()), "{default_only:?}");

    // generateName gives a fresh name.
    let mut g = pod("");
    g.meta_mut().generate_name = "web-".into();
    let made = Api::<Pod>::namespaced(&client, "default").create(&g).await.expect("generateName");
    assert!(made.meta().name.starts_with("web-") && made.meta().name.len() == 9, "{}", made.meta().name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_have_one_winner_and_one_conflict() {
    let c = Cluster::start(3).await;
    let client = client(&c);
    let cms = Api::<ConfigMap>::namespaced(&client, "default");
    let base = cms.create(&sample::<ConfigMap>("shared")).await.expect("create");
    // Two writers from the same version, through different masters.
    let a_client = Client::from_list(&c.members[0].api()).expect("client");
    let b_client = Client::from_list(&c.members[1].api()).expect("client");
    for round in 0..10 {
        let cur = cms.get("shared").await.expect("get");
        let mut a = cur.clone();
        a.data.insert("writer".into(), format!("a{round}"));
        let mut b = cur.clone();
        b.data.insert("writer".into(), format!("b{round}"));
        let api_a = Api::<ConfigMap>::namespaced(&a_client, "default");
        let api_b = Api::<ConfigMap>::namespaced(&b_client, "default");
        let (ra, rb) = tokio::join!(api_a.update(&a), api_b.update(&b));
        let results = [&ra, &rb];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results.iter().filter(|r| r.as_ref().is_err_and(ClientError::is_conflict)).count();
        assert_eq!((wins, conflicts), (1, 1), "round {round}: {ra:?} / {rb:?}");
        let winner = ra.as_ref().or(rb.as_ref()).expect("one won");
        let stored = cms.get("shared").await.expect("get");
        assert_eq!(stored.data, winner.data, "the stored object is the winner's");
    }
    assert!(base.meta().resource_version != cms.get("shared").await.expect("get").meta().resource_version);
}

/// Collects events until `n` non-bookmark events arrived.
async fn take_events<K: Remote>(w: &mut rkube::client::WatchStream<K>, n: usize) -> Vec<WatchEvent<K>> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap_or_else(|_| panic!("timed out with {} of {n} events", out.len()))
            .expect("the watch goes on")
            .expect("an event");
        if !matches!(ev, WatchEvent::Bookmark(_)) {
            out.push(ev);
        }
    }
    out
}

fn describe<K: Object>(ev: &WatchEvent<K>) -> (String, String, String) {
    match ev {
        WatchEvent::Added(o) => ("ADDED".into(), o.meta().name.clone(), o.meta().resource_version.clone()),
        WatchEvent::Modified(o) => ("MODIFIED".into(), o.meta().name.clone(), o.meta().resource_version.clone()),
        WatchEvent::Deleted(o) => ("DELETED".into(), o.meta().name.clone(), o.meta().resource_version.clone()),
        WatchEvent::Bookmark(rv) => ("BOOKMARK".into(), String::new(), rv.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_resource_version_without_missing_or_repeating() {
    let mut c = Cluster::start(3).await;
    let client = client(&c);
    let cms = Api::<ConfigMap>::namespaced(&client, "default");
    let start_rv = cms.list(&ListParams::default()).await.expect("list").1.resource_version;

    // Writes before and during the first watch.
    let mut expected = Vec::new();
    for i in 0..5 {
        let o = cms.create(&sample::<ConfigMap>(&format!("w{i}"))).await.expect("create");
        expected.push(("ADDED".to_string(), o.meta().name.clone(), o.meta().resource_version.clone()));
    }
    let follower = (c.wait_leader(Duration::from_secs(10)).await + 1) % 3;
    let on_follower = Client::from_list(&c.members[follower].api()).expect("client");
    let mut w = Api::<ConfigMap>::namespaced(&on_follower, "default")
        .watch(&ListParams::default(), &start_rv)
        .await
        .expect("watch");
    let mut seen: Vec<_> = take_events(&mut w, 5).await.iter().map(describe).collect();
    let mut cur = cms.get("w0").await.expect("get");
    cur.data.insert("k".into(), "v2".into());
    let m = cms.update(&cur).await.expect("update");
    expected.push(("MODIFIED".into(), "w0".into(), m.meta().resource_version.clone()));
    let d = cms.delete("w1", &DeleteParams::default()).await.expect("delete");
    let _ = d;
    seen.extend(take_events(&mut w, 2).await.iter().map(describe));
    drop(w);
    let resume_from = seen.last().expect("events").2.clone();

    // Writes while nobody watches, then a resume on another member.
    for i in 5..8 {
        let o = cms.create(&sample::<ConfigMap>(&format!("w{i}"))).await.expect("create");
        expected.push(("ADDED".into(), o.meta().name.clone(), o.meta().resource_version.clone()));
    }
    let other = Client::from_list(&c.members[(follower + 1) % 3].api()).expect("client");
    let mut w = Api::<ConfigMap>::namespaced(&other, "default")
        .watch(&ListParams::default(), &resume_from)
        .await
        .expect("watch");
    seen.extend(take_events(&mut w, 3).await.iter().map(describe));

    // The deletion's event carries the deletion's revision; fill it in from what was seen.
    let del = seen.iter().find(|e| e.0 == "DELETED").expect("a DELETED event").clone();
    assert_eq!(del.1, "w1");
    expected.insert(6, del);
    assert_eq!(seen, expected, "events in order, none missed, none repeated");
    let revs: Vec<i64> = seen.iter().map(|e| e.2.parse().expect("rv")).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "resourceVersions strictly increase: {revs:?}");
}

/// Writes of some kinds change two keys in one revision (a Lease and its fence record, a Service
/// and its cluster IP). A watch reading the revision log in batches once took a batch holding
/// fewer revisions than events for the end of the log and skipped the rest: a pod created after
/// many node-lease renewals never reached the scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_many_two_key_revisions_still_sees_every_event() {
    let c = Cluster::start(1).await;
    let client = client(&c);
    let pods = Api::<Pod>::namespaced(&client, "default");
    let leases = Api::<Lease>::namespaced(&client, "default");
    let from = pods.create(&pod("before")).await.expect("create").meta().resource_version.clone();
    let creates = (0..300).map(|i| {
        let leases = leases.clone();
        async move { leases.create(&sample::<Lease>(&format!("l{i}"))).await.expect("create lease") }
    });
    futures::future::join_all(creates).await;
    let after = pods.create(&pod("after")).await.expect("create");

    let mut w = pods.watch(&ListParams::default(), &from).await.expect("watch");
    let seen: Vec<_> = take_events(&mut w, 1).await.iter().map(describe).collect();
    assert_eq!(seen, vec![("ADDED".to_string(), "after".to_string(), after.meta().resource_version.clone())]);
    // Live as well: a pod created behind another burst of leases while the watch waits.
    let more = (300..600).map(|i| {
        let leases = leases.clone();
        async move { leases.create(&sample::<Lease>(&format!("l{i}"))).await.expect("create lease") }
    });
    futures::future::join_all(more).await;
    pods.delete("after", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("delete");
    let seen: Vec<_> = take_events(&mut w, 1).await.iter().map(describe).collect();
    assert_eq!((seen[0].0.as_str(), seen[0].1.as_str()), ("DELETED", "after"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_resource_version_is_expired() {
    let c = Cluster::start(1).await;
    let client = client(&c);
    let cms = Api::<ConfigMap>::namespaced(&client, "default");
    let first = cms.create(&sample::<ConfigMap>("a")).await.expect("create");
    for i in 0..5 {
        cms.create(&sample::<ConfigMap>(&format!("b{i}"))).await.expect("create");
    }
    let now: i64 = cms.list(&ListParams::default()).await.expect("list").1.resource_version.parse().expect("rv");
    let mut kv = c.kv(0).await;
    kv.compact(epb::CompactionRequest { revision: now, physical: true }).await.expect("compact");

    let mut w = cms.watch(&ListParams::default(), &first.meta().resource_version).await.expect("watch opens");
    let err = match tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("an answer") {
        Some(Err(e)) => e,
        other => panic!("expected an expired error, got {other:?}"),
    };
    assert!(err.is_expired(), "{err}");
    assert!(err.to_string().contains("too old resource version"), "{err}");

    // Re-listing gives a resourceVersion to watch from.
    let rv = cms.list(&ListParams::default()).await.expect("re-list").1.resource_version;
    let mut w = cms.watch(&ListParams::default(), &rv).await.expect("watch");
    cms.create(&sample::<ConfigMap>("after")).await.expect("create");
    let evs = take_events(&mut w, 1).await;
    assert_eq!(describe(&evs[0]).1, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_with_a_selector_sees_objects_enter_and_leave_it() {
    let c = Cluster::start(1).await;
    let client = client(&c);
    let pods = Api::<Pod>::namespaced(&client, "default");
    let mut w = pods.watch(&ListParams::default().fields("spec.nodeName=w1"), "").await.expect("watch");
    let p = pods.create(&pod("p1")).await.expect("create");
    pods.bind("p1", "w1", &p.meta().uid).await.expect("bind");
    let evs = take_events(&mut w, 1).await;
    assert_eq!(describe(&evs[0]).0, "ADDED", "binding brings the pod into the node's watch");
    pods.delete("p1", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("delete");
    let evs = take_events(&mut w, 1).await;
    assert_eq!(describe(&evs[0]).0, "DELETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_stay_consistent_while_writes_happen() {
    let c = Cluster::start(1).await;
    let client = client(&c);
    let cms = Api::<ConfigMap>::namespaced(&client, "default");
    for i in 0..40 {
        cms.create(&sample::<ConfigMap>(&format!("page-{i:02}"))).await.expect("create");
    }
    // The first page fixes the revision; writes start only after it.
    let mut params = ListParams::default().limit(7);
    let (items, meta) = cms.list(&params).await.expect("first page");
    let mut names: Vec<String> = items.iter().map(|o| o.meta().name.clone()).collect();
    let mut rvs = BTreeSet::from([meta.resource_version.clone()]);
    params.continue_token = meta.r#continue;
    let (progress, mut written) = tokio::sync::mpsc::channel(64);
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                cms.create(&sample::<ConfigMap>(&format!("late-{i:02}"))).await.expect("create");
                cms.delete(&format!("page-{i:02}"), &DeleteParams::default()).await.expect("delete");
                let _ = progress.send(i).await;
            }
        })
    };
    while !params.continue_token.is_empty() {
        // Every page is read after more of the listed objects were deleted and others created.
        for _ in 0..5 {
            written.recv().await.expect("the writer goes on");
        }
        let (items, meta) = cms.list(&params).await.expect("page");
        assert!(items.len() <= 7);
        names.extend(items.iter().map(|o| o.meta().name.clone()));
        rvs.insert(meta.resource_version.clone());
        params.continue_token = meta.r#continue;
    }
    writer.await.expect("writer");
    assert_eq!(rvs.len(), 1, "every page reads at one revision: {rvs:?}");
    let want: Vec<String> = (0..40).map(|i| format!("page-{i:02}")).collect();
    assert_eq!(names, want, "the list is the store as of the first page, each object once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_pod_terminates_gracefully_and_an_unbound_one_goes_at_once() {
    let c = Cluster::start(1).await;
    let client = client(&c);
    let pods = Api::<Pod>::namespaced(&client, "default");
    let p = pods.create(&pod("bound")).await.expect("create");
    let bound = pods.bind("bound", "w1", &p.meta().uid).await.expect("bind");
    assert_eq!(bound.spec.as_ref().expect("spec").node_name, "w1");
    let again = pods.bind("bound", "w2", "").await.expect_err("bound twice");
    assert!(again.is_conflict() && again.to_string().contains("already assigned to node \"w1\""), "{again}");

    let deleted = pods.delete("bound", &DeleteParams::default()).await.expect("delete");
    assert!(!deleted.meta().deletion_timestamp.is_empty());
    assert_eq!(deleted.meta().deletion_grace_period_seconds, Some(30));
    let still = pods.get("bound").await.expect("a terminating pod stays until its kubelet is done");
    assert!(!still.meta().deletion_timestamp.is_empty());
    // The kubelet finishes with a zero grace period.
    pods.delete("bound", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .expect("final delete");
    assert!(pods.get("bound").await.expect_err("gone").is_not_found());

    pods.create(&pod("unbound")).await.expect("create");
    pods.delete("unbound", &DeleteParams::default()).await.expect("delete");
    assert!(pods.get("unbound").await.expect_err("gone at once").is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_until_removed() {
    let c = Cluster::start(1).await;
    let client = client(&c);
    let cms = Api::<ConfigMap>::namespaced(&client, "default");
    let mut cm = sample::<ConfigMap>("held");
    cm.meta_mut().finalizers = vec!["example.com/hold".into()];
    cms.create(&cm).await.expect("create");
    cms.delete("held", &DeleteParams::default()).await.expect("delete");
    let held = cms.get("held").await.expect("held by its finalizer");
    assert!(!held.meta().deletion_timestamp.is_empty());
    let mut more = held.clone();
    more.meta_mut().finalizers.push("example.com/another".into());
    let err = cms.update(&more).await.expect_err("no new finalizers while deleting");
    assert!(err.to_string().contains("no new finalizers"), "{err}");
    let mut release = held.clone();
    release.meta_mut().finalizers.clear();
    cms.update(&release).await.expect("remove the finalizer");
    assert!(cms.get("held").await.expect_err("gone once released").is_not_found());

    // Orphan and foreground deletion are recorded as finalizers for the garbage collector.
    let rs = Api::<ReplicaSet>::namespaced(&client, "default");
    rs.create(&sample::<ReplicaSet>("fg")).await.expect("create");
    rs.delete("fg", &DeleteParams { propagation_policy: "Foreground".into(), ..Default::default() })
        .await
        .expect("delete");
    assert_eq!(rs.get("fg").await.expect("held").meta().finalizers, vec!["foregroundDeletion".to_string()]);

    // System namespaces cannot be deleted.
    let err = Api::<Namespace>::all(&client).delete("default", &DeleteParams::default()).await.expect_err("forbidden");
    assert!(err.to_string().contains("this namespace may not be deleted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_and_node_ports_never_collide_under_concurrent_creates() {
    // 30 usable addresses in a /27: creating 30 services at once through three masters must
    // give 30 different IPs, and a 31st must be refused.
    let c = Cluster::start_with(3, &["--service-cidr", "10.0.0.0/27"]).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let member = c.members[i % 3].api();
        tasks.push(tokio::spawn(async move {
            let client = Client::from_list(&member).expect("client");
            let mut svc = sample::<Service>(&format!("s{i}"));
            if i % 2 == 0 {
                svc.spec.as_mut().expect("spec").r#type = "NodePort".into();
            }
            Api::<Service>::namespaced(&client, "default").create(&svc).await
        }));
    }
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for t in tasks {
        let svc = t.await.expect("task").expect("every service gets an address");
        let spec = svc.spec.expect("spec");
        assert!(ips.insert(spec.cluster_ip.clone()), "{} given twice", spec.cluster_ip);
        for p in spec.ports.iter().filter(|p| p.node_port != 0) {
            assert!((30000..=32767).contains(&p.node_port));
            assert!(ports.insert(p.node_port), "node port {} given twice", p.node_port);
        }
    }
    assert_eq!(ips.len(), 30);
    assert_eq!(ports.len(), 15);
    let client = client(&c);
    let svcs = Api::<Service>::namespaced(&client, "default");
    let err = svcs.create(&sample::<Service>("one-too-many")).await.expect_err("range full");
    assert!(err.to_string().contains("range is full"), "{err}");
    // Deleting a service frees its address for the next.
    svcs.delete("s0", &DeleteParams::default()).await.expect("delete");
    svcs.create(&sample::<Service>("fits-now")).await.expect("a freed address is reused");
    // An address that is taken cannot be asked for.
    let mut taken = sample::<Service>("wants-taken");
    taken.spec.as_mut().expect("spec").cluster_ip = svcs.get("s1").await.expect("get").spec.expect("spec").cluster_ip;
    let err = svcs.create(&taken).await.expect_err("taken");
    assert!(err.to_string().contains("provided IP is already allocated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_lease_holder_cannot_write() {
    let c = Cluster::start(1).await;
    let client = client(&c);
    let leases = Api::<Lease>::namespaced(&client, "kube-system");
    let mut lease: Lease = from_json(serde_json::json!({
        "metadata": {"name": "rkube-scheduler", "namespace": "kube-system"},
        "spec": {"holderIdentity": "old", "leaseDurationSeconds": 15, "leaseTransitions": 0}
    }));
    lease = leases.create(&lease).await.expect("create lease");
    let old = Client::from_list(&c.endpoints()).expect("client");
    old.set_fence(Some(rkube::client::Fence {
        namespace: "kube-system".into(),
        lease: "rkube-scheduler".into(),
        holder: "old".into(),
        transitions: 0,
    }));
    let old_pods = Api::<Pod>::namespaced(&old, "default");
    old_pods.create(&pod("by-old-leader")).await.expect("the holder writes");

    // Another candidate takes the lease over.
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = "new".into();
    spec.lease_transitions = Some(1);
    leases.update(&lease).await.expect("take over");

    let err = old_pods.create(&pod("too-late")).await.expect_err("the deposed holder is fenced");
    assert!(err.is_fenced() && err.to_string().contains("has moved on"), "{err}");
    let err = old_pods.bind("by-old-leader", "w1", "").await.expect_err("fenced bind");
    assert!(err.is_fenced(), "{err}");
    let pods = Api::<Pod>::namespaced(&client, "default");
    assert!(pods.get("too-late").await.expect_err("nothing written").is_not_found());
    assert!(pods.get("by-old-leader").await.expect("exists").spec.expect("spec").node_name.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_working_through_the_kill_of_a_master() {
    let mut c = Cluster::start(3).await;
    let client = client(&c);
    let cms = Api::<ConfigMap>::namespaced(&client, "default");
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..120 {
                let name = format!("k{i:03}");
                // A write that failed during the failover is retried, as a client would.
                for _ in 0..50 {
                    match cms.create(&sample::<ConfigMap>(&name)).await {
                        Ok(_) => {
                            acked.push(name.clone());
                            break;
                        }
                        Err(e) if e.is_already_exists() => {
                            acked.push(name.clone());
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    c.kill(leader);
    let acked = writer.await.expect("writer");
    assert_eq!(acked.len(), 120, "every write eventually succeeded");
    c.wait_leader(Duration::from_secs(20)).await;
    let names: HashSet<String> = eventually(Duration::from_secs(20), "a list after failover", || async {
        cms.list(&ListParams::default())
            .await
            .ok()
            .map(|(items, _)| items.into_iter().map(|o| o.meta().name.clone()).collect())
    })
    .await;
    for n in &acked {
        assert!(names.contains(n), "acknowledged {n} is missing after the failover");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_after_their_ttl_and_other_objects_stay() {
    let c = Cluster::start_with(1, &["--event-ttl", "2"]).await;
    let client = client(&c);
    let events = Api::<Event>::namespaced(&client, "default");
    let cms = Api::<ConfigMap>::namespaced(&client, "default");
    cms.create(&sample::<ConfigMap>("stays")).await.expect("create configmap");
    let (_, meta) = events.list(&ListParams::default()).await.expect("list");
    let mut watch = events.watch(&ListParams::default(), &meta.resource_version).await.expect("watch");
    let mut ev = events.create(&sample::<Event>("seen")).await.expect("create event");
    // A repeat (count + 1) keeps it under a lease too.
    ev.count = 2;
    events.update(&ev).await.expect("update event");
    assert_eq!(events.get("seen").await.expect("still there").count, 2);
    // The store deletes it: a watcher sees it go, and it is gone for readers.
    let deleted = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match watch.next().await.expect("the watch goes on").expect("an event") {
                WatchEvent::Deleted(e) => break e,
                _ => continue,
            }
        }
    })
    .await
    .expect("the event expires within its TTL and the lease window");
    assert_eq!(deleted.meta().name, "seen");
    assert!(events.get("seen").await.expect_err("expired").is_not_found());
    assert_eq!(cms.get("stays").await.expect("other kinds do not expire").data["k"], "v");
}
