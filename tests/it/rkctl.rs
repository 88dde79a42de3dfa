//! rkctl against real `rkube server` processes, checked on what it prints: kubectl's tables and
//! columns, manifests in every shape, bad manifests that write nothing, the write verbs, edit
//! through $EDITOR, rollouts from ReplicaSets, nodes, the config file of `rkube dev`, and the
//! store commands. Controllers and kubelets do not exist yet, so statuses a kubelet would
//! write are set here through UpdateStatus.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use rkube::api::v1::*;
use rkube::api::Object;
use rkube::client::{Api, Client};
use serde_json::Value;

use crate::harness::*;

/// An rkctl command that cannot pick up the caller's config or environment.
fn cmd(servers: &str) -> Command {
    rkctl_cmd(servers)
}

fn rkctl(servers: &str, args: &[&str]) -> (bool, String, String) {
    run(cmd(servers).args(args))
}

/// Runs rkctl and requires success; returns stdout.
fn ok(servers: &str, args: &[&str]) -> String {
    let (ok, out, err) = rkctl(servers, args);
    assert!(ok, "rkctl {args:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

/// Runs rkctl and requires failure with exit code 1; returns stderr.
fn fails(servers: &str, args: &[&str]) -> String {
    let out = cmd(servers).args(args).output().expect("running rkctl");
    assert_eq!(
        out.status.code(),
        Some(1),
        "rkctl {args:?} should exit 1\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn with_stdin(servers: &str, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = cmd(servers)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting rkctl");
    child.stdin.take().expect("piped").write_all(input.as_bytes()).expect("writing stdin");
    let out = child.wait_with_output().expect("waiting for rkctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The cells of the table row whose first cell is `name`.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split("   ").map(str::trim).filter(|c| !c.is_empty()).collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{table}"))
}

fn header(table: &str) -> Vec<&str> {
    table.lines().next().unwrap_or_default().split("   ").map(str::trim).filter(|c| !c.is_empty()).collect()
}

/// An AGE cell: a number of seconds (the objects were just made).
fn is_young(age: &str) -> bool {
    age.strip_suffix('s').is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n < 120))
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a manifest");
    p.display().to_string()
}

const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec:
  containers: [{name: c, image: httpd}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, labels: {app: web}}
spec:
  containers: [{name: c, image: httpd}]
---
apiVersion: v1
kind: Pod
metadata: {name: batch, labels: {app: batch}}
spec:
  restartPolicy: Never
  containers: [{name: c, image: busybox}]
";

fn container_status(state: ContainerState, ready: bool) -> ContainerStatus {
    ContainerStatus { name: "c".into(), state: Some(state), ready, image: "httpd".into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rkctl_get_prints_pods_as_kubectl_does() {
    let c = Cluster::start(1).await;
    let s = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");

    let (good, out, err) = rkctl(&s, &["get", "pods"]);
    assert!(good, "{err}");
    assert_eq!((out.as_str(), err.as_str()), ("", "No resources found in default namespace.\n"));
    let err = fails(&s, &["get", "pod", "nope"]);
    assert_eq!(err, "Error from server (NotFound): pods \"nope\" not found\n");
    let err = fails(&s, &["get", "widgets"]);
    assert_eq!(err, "error: the server doesn't have a resource type \"widgets\"\n");

    let f = write(dir.path(), "pods.yaml", PODS);
    assert_eq!(ok(&s, &["create", "-f", &f]), "pod/web-1 created\npod/web-2 created\npod/batch created\n");

    // What a scheduler and kubelets would write.
    let client = Client::from_list(&s).expect("client");
    let pods: Api<Pod> = Api::namespaced(&client, "default");
    pods.bind("web-1", "w1", "").await.expect("bind");
    let mut p = pods.get("web-1").await.expect("get");
    let st = p.status.get_or_insert_with(Default::default);
    st.phase = "Running".into();
    st.pod_ip = "10.244.1.5".into();
    st.container_statuses =
        vec![container_status(ContainerState { running: Some(Default::default()), ..Default::default() }, true)];
    pods.update_status(&p).await.expect("status of web-1");
    let mut p = pods.get("web-2").await.expect("get");
    p.status.get_or_insert_with(Default::default).container_statuses = vec![container_status(
        ContainerState {
            waiting: Some(ContainerStateWaiting { reason: "ContainerCreating".into(), ..Default::default() }),
            ..Default::default()
        },
        false,
    )];
    pods.update_status(&p).await.expect("status of web-2");
    let mut p = pods.get("batch").await.expect("get");
    let st = p.status.get_or_insert_with(Default::default);
    st.phase = "Succeeded".into();
    st.container_statuses = vec![container_status(
        ContainerState {
            terminated: Some(ContainerStateTerminated { reason: "Completed".into(), ..Default::default() }),
            ..Default::default()
        },
        false,
    )];
    pods.update_status(&p).await.expect("status of batch");

    let out = ok(&s, &["get", "pods"]);
    assert_eq!(header(&out), ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert!(out.starts_with("NAME    READY   STATUS              RESTARTS   AGE\n"), "{out}");
    for (name, ready, status) in
        [("web-1", "1/1", "Running"), ("web-2", "0/1", "ContainerCreating"), ("batch", "0/1", "Completed")]
    {
        let r = row(&out, name);
        assert_eq!(r[..4], [name, ready, status, "0"], "{out}");
        assert!(is_young(r[4]), "{out}");
    }

    let out = ok(&s, &["get", "po", "-o", "wide"]);
    assert_eq!(
        header(&out),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    );
    assert_eq!(row(&out, "web-1")[5..], ["10.244.1.5", "w1", "<none>", "<none>"]);
    assert_eq!(row(&out, "web-2")[5..], ["<none>", "<none>", "<none>", "<none>"]);

    assert_eq!(ok(&s, &["get", "pods", "-l", "app=web", "-o", "name"]), "pod/web-1\npod/web-2\n");
    assert_eq!(ok(&s, &["get", "pods", "-l", "app!=web", "-o", "name"]), "pod/batch\n");
    assert_eq!(ok(&s, &["get", "pods", "--field-selector", "status.phase=Running", "-o", "name"]), "pod/web-1\n");
    let out = ok(&s, &["get", "pods", "--show-labels"]);
    assert_eq!(header(&out).last(), Some(&"LABELS"));
    assert_eq!(row(&out, "batch").last(), Some(&"app=batch"));
    let out = ok(&s, &["get", "pods", "-A"]);
    assert_eq!(header(&out)[..2], ["NAMESPACE", "NAME"]);
    assert!(out.lines().any(|l| l.split_whitespace().take(2).eq(["default", "web-1"])), "{out}");
    let (good, out, err) = rkctl(&s, &["get", "pods", "-n", "kube-system"]);
    assert!(good && out.is_empty(), "{out}");
    assert_eq!(err, "No resources found in kube-system namespace.\n");

    let one: Value = serde_json::from_str(&ok(&s, &["get", "pod", "web-1", "-o", "json"])).expect("JSON");
    assert_eq!((one["kind"].as_str(), one["metadata"]["name"].as_str()), (Some("Pod"), Some("web-1")));
    assert_eq!(one["status"]["podIP"], "10.244.1.5");
    assert_eq!(one["spec"]["nodeName"], "w1");
    let list: Value = serde_json::from_str(&ok(&s, &["get", "pods", "-o", "json"])).expect("JSON");
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
    let y: Value = serde_yaml::from_str(&ok(&s, &["get", "pod/web-2", "-o", "yaml"])).expect("YAML");
    assert_eq!(y["metadata"]["labels"]["app"], "web");
    assert_eq!(y["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating");

    // Deletion of a pod on a node is graceful: Terminating until its kubelet removes it.
    let out = ok(&s, &["delete", "pod", "web-1", "--wait=false"]);
    assert_eq!(out, "pod \"web-1\" deleted\n");
    assert_eq!(row(&ok(&s, &["get", "pods"]), "web-1")[2], "Terminating");

    // Logs come from the node's kubelet: none runs, and rkctl says what the server said.
    let err = fails(&s, &["logs", "web-2"]);
    assert!(err.starts_with("Error from server ("), "{err}");
    assert!(err.contains("not scheduled to a node yet"), "{err}");

    let out = ok(&s, &["describe", "pod", "web-2"]);
    for want in [
        "Name:",
        "web-2",
        "Namespace:",
        "default",
        "Labels:",
        "app=web",
        "Status:",
        "ContainerCreating",
        "Events:  <none>",
    ] {
        assert!(out.contains(want), "{want:?} missing from describe:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rkctl_tables_of_every_kind_have_kubectls_columns() {
    let c = Cluster::start(1).await;
    let s = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");

    assert_eq!(
        ok(&s, &["run", "httpd", "--image=httpd", "--replicas=2", "--port=80", "--env=A=1"]),
        "deployment.apps/httpd created\n"
    );
    let out = ok(&s, &["get", "deploy"]);
    assert_eq!(header(&out), ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert_eq!(row(&out, "httpd")[..4], ["httpd", "0/2", "0", "0"]);
    let out = ok(&s, &["get", "deployments", "-o", "wide"]);
    assert_eq!(row(&out, "httpd")[5..], ["httpd", "httpd", "run=httpd"]);
    let d: Value = serde_json::from_str(&ok(&s, &["get", "deploy", "httpd", "-o", "json"])).expect("JSON");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"], "A");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80);

    assert_eq!(ok(&s, &["scale", "deployment", "httpd", "--replicas=5"]), "deployment.apps/httpd scaled\n");
    assert_eq!(row(&ok(&s, &["get", "deploy", "httpd"]), "httpd")[1], "0/5");
    let err = fails(&s, &["scale", "deploy/httpd", "--replicas=-1"]);
    assert!(err.contains("spec.replicas: Invalid value: -1: must be greater than or equal to 0"), "{err}");

    assert_eq!(
        ok(&s, &["expose", "deployment", "httpd", "--port=80", "--target-port=8080"]),
        "service/httpd exposed\n"
    );
    assert_eq!(
        ok(&s, &["expose", "deployment", "httpd", "--name=httpd-np", "--port=80", "--type=NodePort"]),
        "service/httpd-np exposed\n"
    );
    let out = ok(&s, &["get", "svc"]);
    assert_eq!(header(&out), ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]);
    let r = row(&out, "httpd");
    assert_eq!((r[1], r[3], r[4]), ("ClusterIP", "<none>", "80/TCP"));
    assert!(r[2].starts_with("10."), "{out}");
    let r = row(&out, "httpd-np");
    assert_eq!(r[1], "NodePort");
    assert!(r[4].starts_with("80:3") && r[4].ends_with("/TCP"), "{out}");
    let svc: Value = serde_json::from_str(&ok(&s, &["get", "service", "httpd", "-o", "json"])).expect("JSON");
    assert_eq!(svc["spec"]["selector"]["run"], "httpd");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);

    let out = ok(&s, &["get", "ns"]);
    assert_eq!(header(&out), ["NAME", "STATUS", "AGE"]);
    assert_eq!(row(&out, "kube-system")[1], "Active");

    let other = write(
        dir.path(),
        "other.yaml",
        "\
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: '1', b: '2'}
---
apiVersion: v1
kind: Endpoints
metadata: {name: httpd}
subsets:
- addresses: [{ip: 10.244.1.2}, {ip: 10.244.2.3}]
  ports: [{port: 80}]
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: kube-scheduler}
spec: {holderIdentity: m1, leaseDurationSeconds: 15}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: httpd-abc}
spec:
  replicas: 2
  selector: {matchLabels: {run: httpd}}
  template:
    metadata: {labels: {run: httpd}}
    spec: {containers: [{name: c, image: httpd}]}
---
apiVersion: v1
kind: Event
metadata: {name: httpd.1}
involvedObject: {kind: Deployment, name: httpd, namespace: default}
reason: ScalingReplicaSet
type: Normal
message: Scaled up replica set httpd-abc to 2
source: {component: deployment-controller}
---
apiVersion: v1
kind: Node
metadata: {name: w1, labels: {node-role.kubernetes.io/worker: ''}}
status:
  conditions: [{type: Ready, status: 'True'}]
  nodeInfo: {kubeletVersion: v0.1.0}
",
    );
    assert_eq!(
        ok(&s, &["create", "-f", &other]),
        "configmap/settings created\nendpoints/httpd created\nlease.coordination.k8s.io/kube-scheduler created\nreplicaset.apps/httpd-abc created\nevent/httpd.1 created\nnode/w1 created\n"
    );
    let out = ok(&s, &["get", "cm"]);
    assert_eq!(header(&out), ["NAME", "DATA", "AGE"]);
    assert_eq!(row(&out, "settings")[1], "2");
    let out = ok(&s, &["get", "ep"]);
    assert_eq!(header(&out), ["NAME", "ENDPOINTS", "AGE"]);
    assert_eq!(row(&out, "httpd")[1], "10.244.1.2:80,10.244.2.3:80");
    let out = ok(&s, &["get", "leases"]);
    assert_eq!(header(&out), ["NAME", "HOLDER", "AGE"]);
    assert_eq!(row(&out, "kube-scheduler")[1], "m1");
    let out = ok(&s, &["get", "rs"]);
    assert_eq!(header(&out), ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    assert_eq!(row(&out, "httpd-abc")[1..4], ["2", "0", "0"]);
    let out = ok(&s, &["get", "ev"]);
    assert_eq!(header(&out), ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    let line = out.lines().nth(1).expect("an event row");
    assert!(
        line.contains("   Normal   ScalingReplicaSet   deployment/httpd   Scaled up replica set httpd-abc to 2"),
        "{out}"
    );
    let out = ok(&s, &["describe", "deploy", "httpd"]);
    assert!(
        out.contains("Replicas:") && out.contains("5 desired | 0 updated | 0 total | 0 available | 0 unavailable"),
        "{out}"
    );
    assert!(out.contains("ScalingReplicaSet") && out.contains("deployment-controller"), "events missing:\n{out}");

    // Nodes: cordon, uncordon, drain.
    let out = ok(&s, &["get", "nodes"]);
    assert_eq!(header(&out), ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    let r = row(&out, "w1");
    assert_eq!((r[1], r[2], r[4]), ("Ready", "worker", "v0.1.0"));
    assert_eq!(ok(&s, &["cordon", "w1"]), "node/w1 cordoned\n");
    assert_eq!(ok(&s, &["cordon", "w1"]), "node/w1 already cordoned\n");
    assert_eq!(row(&ok(&s, &["get", "no"]), "w1")[1], "Ready,SchedulingDisabled");
    assert_eq!(ok(&s, &["uncordon", "w1"]), "node/w1 uncordoned\n");
    assert_eq!(row(&ok(&s, &["get", "no"]), "w1")[1], "Ready");

    ok(&s, &["run", "lonely", "--image=busybox", "--restart=Never"]);
    let client = Client::from_list(&s).expect("client");
    Api::<Pod>::namespaced(&client, "default").bind("lonely", "w1", "").await.expect("bind");
    let err = fails(&s, &["drain", "w1"]);
    assert!(
        err.contains("cannot delete Pods that declare no controller (use --force to override): default/lonely"),
        "{err}"
    );
    let out = ok(&s, &["drain", "w1", "--force", "--grace-period=0", "--timeout=30s"]);
    assert_eq!(out, "node/w1 already cordoned\nevicting pod default/lonely\npod/lonely evicted\nnode/w1 drained\n");
    assert_eq!(ok(&s, &["get", "pods", "-o", "name"]), "");
    assert_eq!(row(&ok(&s, &["get", "no"]), "w1")[1], "Ready,SchedulingDisabled");
}

/// Each case: a manifest whose first document is good and a later one bad.
fn bad_manifests() -> Vec<(&'static str, String, &'static str)> {
    let good = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first}\ndata: {a: b}\n---\n";
    let deploy = |replicas: &str, image: &str, name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: x}}}}\n  template:\n    metadata: {{labels: {{app: x}}}}\n    spec: {{containers: [{{name: c{image}}}]}}\n"
        )
    };
    vec![
        (
            "unknown kind",
            format!("{good}apiVersion: v1\nkind: Widget\nmetadata: {{name: w}}\n"),
            "error: unable to recognize \"FILE\" (document 2): no matches for kind \"Widget\" in version \"v1\"\n",
        ),
        (
            "bad name",
            format!("{good}{}", deploy("1", ", image: httpd", "Bad_Name")),
            "error: error validating \"FILE\" (document 2): Deployment.apps \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')\n",
        ),
        (
            "missing image",
            format!("{good}{}", deploy("1", "", "web")),
            "error: error validating \"FILE\" (document 2): Deployment.apps \"web\" is invalid: spec.template.spec.containers[0].image: Required value\n",
        ),
        (
            "negative replicas",
            format!("{good}{}", deploy("-1", ", image: httpd", "web")),
            "error: error validating \"FILE\" (document 2): Deployment.apps \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0\n",
        ),
        (
            "wrong type",
            format!("{good}{}", deploy("three", ", image: httpd", "web")),
            "error: error validating \"FILE\" (document 2): Deployment.spec.replicas: invalid type: string \"three\", expected i32\n",
        ),
        (
            "unknown field",
            format!("{good}{}", deploy("1", ", image: httpd, imagePolicy: Always", "web")),
            "error: error validating \"FILE\" (document 2): unknown field \"spec.template.spec.containers[0].imagePolicy\" in Deployment\n",
        ),
        (
            "malformed YAML",
            format!("{good}apiVersion: v1\nkind: ConfigMap\n  metadata: {{name: x\n"),
            "error: error parsing \"FILE\": document 2: ",
        ),
        (
            "malformed JSON",
            "{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"first\"}}\n{\"apiVersion\": \"v1\",".into(),
            "error: error parsing \"FILE\": document 2: EOF while parsing",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rkctl_rejects_every_bad_manifest_and_writes_nothing() {
    let c = Cluster::start(1).await;
    let s = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (what, text, want)) in bad_manifests().into_iter().enumerate() {
        let f = write(dir.path(), &format!("bad{i}.yaml"), &text);
        for verb in ["create", "apply"] {
            let err = fails(&s, &[verb, "-f", &f]);
            let want = want.replace("FILE", &f);
            if want.ends_with('\n') {
                assert_eq!(err, want, "{what} ({verb})");
            } else {
                assert!(err.starts_with(&want), "{what} ({verb}): {err}");
            }
        }
    }
    // Through stdin too.
    let (good, _, err) = with_stdin(&s, &["create", "-f", "-"], &bad_manifests()[0].1);
    assert!(!good);
    assert_eq!(
        err,
        "error: unable to recognize STDIN (document 2): no matches for kind \"Widget\" in version \"v1\"\n"
    );
    // Nothing was written: no API object, no key in the store besides the system namespaces.
    for kind in ["configmaps", "deployments", "pods"] {
        let (good, out, err) = rkctl(&s, &["get", kind]);
        assert!(good && out.is_empty(), "{kind}: {out}{err}");
    }
    let (good, keys, err) = run(Command::new("/usr/bin/etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={s}"))
        .args(["get", "/registry/", "--prefix", "--keys-only"]));
    assert!(good, "{err}");
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert!(keys.iter().all(|k| k.starts_with("/registry/namespaces/")), "unexpected keys: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rkctl_creates_from_yaml_json_stdin_and_lists_then_deletes_every_way() {
    let c = Cluster::start(1).await;
    let s = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");

    let yaml = write(
        dir.path(),
        "team.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: team, labels: {tier: x}}\n",
    );
    assert_eq!(ok(&s, &["create", "-f", &yaml]), "namespace/team created\nconfigmap/a created\n");
    let json = write(
        dir.path(),
        "b.json",
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "labels": {"tier": "x"}}, "data": {"k": "v"}}"#,
    );
    assert_eq!(ok(&s, &["create", "-n", "team", "-f", &json]), "configmap/b created\n");
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"tier": "y"}}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d", "labels": {"tier": "y"}}}]}"#;
    let (good, out, err) = with_stdin(&s, &["create", "-n", "team", "-f", "-"], list);
    assert!(good, "{err}");
    assert_eq!(out, "configmap/c created\nconfigmap/d created\n");
    let yaml_list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: e}\n";
    let (good, out, err) = with_stdin(&s, &["create", "-n", "team", "-f", "-"], yaml_list);
    assert!(good && out == "configmap/e created\n", "{out}{err}");
    assert_eq!(
        ok(&s, &["get", "cm", "-n", "team", "-o", "name"]),
        "configmap/a\nconfigmap/b\nconfigmap/c\nconfigmap/d\nconfigmap/e\n"
    );
    // A namespace in the manifest that differs from -n is refused before anything is sent.
    let err = fails(&s, &["create", "-n", "other", "-f", &yaml]);
    assert!(
        err.starts_with(
            "error: the namespace from the provided object \"team\" does not match the namespace \"other\""
        ),
        "{err}"
    );
    // Creating again: the server's AlreadyExists, said for each object, exit 1.
    let err = fails(&s, &["create", "-f", &yaml]);
    assert!(
        err.contains(&format!("Error from server (AlreadyExists): error when creating {yaml:?} (document 1): namespaces \"team\" already exists")),
        "{err}"
    );

    // Delete by name, by label, by file.
    assert_eq!(ok(&s, &["delete", "cm", "e", "-n", "team"]), "configmap \"e\" deleted\n");
    assert_eq!(
        ok(&s, &["delete", "cm", "-n", "team", "-l", "tier=y"]),
        "configmap \"c\" deleted\nconfigmap \"d\" deleted\n"
    );
    assert_eq!(ok(&s, &["delete", "-n", "team", "-f", &json]), "configmap \"b\" deleted\n");
    assert_eq!(ok(&s, &["get", "cm", "-n", "team", "-o", "name"]), "configmap/a\n");
    let err = fails(&s, &["delete", "cm", "e", "-n", "team"]);
    assert_eq!(err, "Error from server (NotFound): configmaps \"e\" not found\n");
    ok(&s, &["delete", "cm", "e", "-n", "team", "--ignore-not-found"]);

    // Cascade options reach the server: orphan leaves a finalizer for the garbage collector.
    ok(&s, &["run", "web", "--image=httpd"]);
    assert_eq!(
        ok(&s, &["delete", "deploy", "web", "--cascade=orphan", "--wait=false"]),
        "deployment.apps \"web\" deleted\n"
    );
    let d: Value = serde_json::from_str(&ok(&s, &["get", "deploy", "web", "-o", "json"])).expect("JSON");
    assert_eq!(d["metadata"]["finalizers"][0], "orphan");
    assert!(d["metadata"]["deletionTimestamp"].is_string(), "{d}");
    assert!(fails(&s, &["delete", "deploy", "web", "--cascade=sideways"]).contains("invalid cascade value (sideways)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rkctl_edit_round_trips_through_the_editor_and_reports_conflicts() {
    let c = Cluster::start(1).await;
    let s = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");
    ok(&s, &["run", "web", "--image=httpd:1", "--replicas=2"]);

    let script = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\nset -e\n{body}\n")).expect("writing the editor");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        p.display().to_string()
    };
    let edit = |editor: &str| {
        run(cmd(&s).env("EDITOR", editor).env_remove("KUBE_EDITOR").env_remove("RKUBE_EDITOR").args([
            "edit",
            "deployment",
            "web",
        ]))
    };

    let (good, out, err) = edit(&script("noop", "true"));
    assert!(good, "{err}");
    assert_eq!(out, "Edit cancelled, no changes made.\n");

    let (good, out, err) =
        edit(&script("bump", "sed -i -e 's/replicas: 2/replicas: 3/' -e 's/httpd:1/httpd:2/' \"$1\""));
    assert!(good, "{err}");
    assert_eq!(out, "deployment.apps/web edited\n");
    let d: Value = serde_json::from_str(&ok(&s, &["get", "deploy", "web", "-o", "json"])).expect("JSON");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "httpd:2");

    // Someone else changes the deployment while the editor is open: the edit is refused.
    let racer = format!(
        "env -u RKUBE_SERVER {RKCTL} --server {s} scale deployment web --replicas=7 >/dev/null\nsed -i 's/replicas: 3/replicas: 4/' \"$1\""
    );
    let (good, _, err) = edit(&script("racer", &racer));
    assert!(!good);
    assert!(
        err.contains("error: Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified; please apply your changes to the latest version and try again"),
        "{err}"
    );
    assert!(err.contains("A copy of your changes has been stored to"), "{err}");
    let d: Value = serde_json::from_str(&ok(&s, &["get", "deploy", "web", "-o", "json"])).expect("JSON");
    assert_eq!(d["spec"]["replicas"], 7, "the racing write stands");

    // An edit that breaks the object is checked like a manifest.
    let (good, _, err) = edit(&script("breaks", "sed -i 's/replicas: 7/replicas: -7/' \"$1\""));
    assert!(!good);
    assert!(err.contains("spec.replicas: Invalid value: -7: must be greater than or equal to 0"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rkctl_apply_and_rollout_history_undo_status_follow_kubernetes() {
    let c = Cluster::start(1).await;
    let s = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = |replicas: u32, image: &str, extra_label: bool| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {{app: web{}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, image: '{image}'}}]}}\n",
            if extra_label { ", tier: front" } else { "" }
        )
    };
    let f = dir.path().join("web.yaml");
    let fs = f.display().to_string();
    std::fs::write(&f, manifest(2, "httpd:1", true)).expect("write");
    assert_eq!(ok(&s, &["apply", "-f", &fs]), "deployment.apps/web created\n");
    assert_eq!(ok(&s, &["apply", "-f", &fs]), "deployment.apps/web unchanged\n");
    std::fs::write(&f, manifest(3, "httpd:1", false)).expect("write");
    assert_eq!(ok(&s, &["apply", "-f", &fs]), "deployment.apps/web configured\n");
    let d: Value = serde_json::from_str(&ok(&s, &["get", "deploy", "web", "-o", "json"])).expect("JSON");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["labels"], serde_json::json!({"app": "web"}), "the dropped label is removed");
    assert!(d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());

    // Two revisions, as the Deployment controller would keep them.
    let client = Client::from_list(&s).expect("client");
    let deploys: Api<Deployment> = Api::namespaced(&client, "default");
    let sets: Api<ReplicaSet> = Api::namespaced(&client, "default");
    let dep = deploys.get("web").await.expect("get");
    for (rev, image, cause) in [(1, "httpd:1", None), (2, "httpd:2", Some("image to 2"))] {
        let mut rs = ReplicaSet::default();
        rs.meta_mut().name = format!("web-{rev}");
        rs.meta_mut().annotations.insert("deployment.kubernetes.io/revision".into(), rev.to_string());
        if let Some(cause) = cause {
            rs.meta_mut().annotations.insert("kubernetes.io/change-cause".into(), cause.into());
        }
        rs.meta_mut().owner_references.push(OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            uid: dep.meta().uid.clone(),
            controller: true,
            block_owner_deletion: true,
        });
        let labels: std::collections::BTreeMap<String, String> =
            [("app".into(), "web".into()), ("pod-template-hash".into(), format!("h{rev}"))].into();
        rs.spec = Some(ReplicaSetSpec {
            replicas: Some(0),
            selector: Some(LabelSelector { match_labels: labels.clone(), ..Default::default() }),
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta { labels, ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container { name: "c".into(), image: image.into(), ..Default::default() }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        });
        sets.create(&rs).await.expect("create rs");
    }
    ok(&s, &["scale", "deploy", "web", "--replicas=3"]);
    let mut dep = deploys.get("web").await.expect("get");
    dep.spec.as_mut().expect("spec").template.as_mut().expect("template").spec.as_mut().expect("pod spec").containers
        [0]
    .image = "httpd:2".into();
    deploys.update(&dep).await.expect("update to revision 2");

    assert_eq!(
        ok(&s, &["rollout", "history", "deployment/web"]),
        "deployment.apps/web\nREVISION   CHANGE-CAUSE\n1          <none>\n2          image to 2\n"
    );
    assert_eq!(ok(&s, &["rollout", "undo", "deployment/web"]), "deployment.apps/web rolled back\n");
    let d: Value = serde_json::from_str(&ok(&s, &["get", "deploy", "web", "-o", "json"])).expect("JSON");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "httpd:1");
    assert!(d["spec"]["template"]["metadata"]["labels"].get("pod-template-hash").is_none());
    assert_eq!(
        ok(&s, &["rollout", "undo", "deployment", "web", "--to-revision=1"]),
        "deployment.apps/web skipped rollback (current template already matches revision 1)\n"
    );
    assert_eq!(
        fails(&s, &["rollout", "undo", "deployment/web", "--to-revision=9"]),
        "error: unable to find specified revision 9 in history\n"
    );

    // Status: nothing has observed the spec yet; then a controller reports it done.
    assert_eq!(
        ok(&s, &["rollout", "status", "deployment/web", "--watch=false"]),
        "Waiting for deployment spec update to be observed...\n"
    );
    let mut dep = deploys.get("web").await.expect("get");
    dep.status = Some(DeploymentStatus {
        observed_generation: dep.meta().generation,
        replicas: 3,
        updated_replicas: 3,
        ready_replicas: 3,
        available_replicas: 2,
        ..Default::default()
    });
    let dep = deploys.update_status(&dep).await.expect("status");
    let mut status = cmd(&s)
        .args(["rollout", "status", "deploy/web", "--timeout=30s"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("rollout status");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut done = dep.clone();
    done.status.as_mut().expect("status").available_replicas = 3;
    deploys.update_status(&done).await.expect("status");
    let out = tokio::task::spawn_blocking(move || {
        let _ = status.wait();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut status.stdout.take().expect("piped"), &mut s).expect("read");
        s
    })
    .await
    .expect("join");
    assert_eq!(
        out,
        "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...\ndeployment \"web\" successfully rolled out\n"
    );
    let out = ok(&s, &["get", "deploy", "web"]);
    assert_eq!(row(&out, "web")[1..4], ["3/3", "3", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rkctl_finds_the_server_through_flag_env_and_the_config_rkube_dev_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, peer) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("dev.log")).expect("log");
    let dev = Command::new(RKUBE)
        .args(["dev", "--no-kubelet", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-api", &format!("127.0.0.1:{api}"), "--listen-peer", &format!("127.0.0.1:{peer}")])
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting rkube dev");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(dev);
    let config = dir.path().join("config/rkube/config");
    let plain = || {
        let mut c = Command::new(RKCTL);
        c.env_remove("RKUBE_SERVER").env("XDG_CONFIG_HOME", dir.path().join("config"));
        c
    };
    let out = eventually(Duration::from_secs(20), "plain rkctl to reach rkube dev", || async {
        let (good, out, _) = run(plain().args(["get", "ns"]));
        (good && out.contains("kube-system")).then_some(out)
    })
    .await;
    assert_eq!(header(&out), ["NAME", "STATUS", "AGE"]);
    assert_eq!(
        std::fs::read_to_string(&config).expect("config").lines().last(),
        Some(format!("server: 127.0.0.1:{api}").as_str())
    );
    let dev_log = std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default();
    assert!(dev_log.contains("rkctl get pods"), "rkube dev says how to use rkctl:\n{dev_log}");

    // The environment beats the config file, and the flag beats both.
    let bogus = format!("127.0.0.1:{}", free_port());
    let (good, _, err) = run(plain().env("RKUBE_SERVER", &bogus).args(["get", "ns"]));
    assert!(!good && err.starts_with("Unable to connect to the server: "), "{err}");
    let (good, out, err) = run(plain().env("RKUBE_SERVER", &bogus).args([
        "--server",
        &format!("127.0.0.1:{api}"),
        "get",
        "ns",
        "default",
    ]));
    assert!(good, "{err}");
    assert_eq!(row(&out, "default")[1], "Active");
    // A config file that is not rkctl's is reported, not ignored.
    std::fs::write(&config, "servers: [x]\n").expect("write");
    let (good, _, err) = run(plain().args(["get", "ns"]));
    assert!(!good && err.contains("is not an rkctl config"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcurl_lists_the_object_services_and_its_pods_show_in_rkctl() {
    let c = Cluster::start(1).await;
    let addr = c.members[0].api();
    let grpcurl = || {
        let mut g = Command::new("grpcurl");
        g.args(["-connect-timeout", "5", "-max-time", "10", "-plaintext"]);
        g
    };
    let (good, out, err) = run(grpcurl().args([addr.as_str(), "list"]));
    assert!(good, "{err}");
    for svc in ["rkube.v1.Pods", "rkube.v1.Deployments", "rkube.v1.Services", "rkube.v1.Nodes", "rkube.v1.Namespaces"] {
        assert!(out.lines().any(|l| l == svc), "{svc} missing from grpcurl list:\n{out}");
    }
    let pod = r#"{"metadata": {"name": "from-grpcurl", "namespace": "default", "labels": {"via": "grpcurl"}},
                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}"#;
    let (good, out, err) = run(grpcurl().args(["-d", pod, addr.as_str(), "rkube.v1.Pods/Create"]));
    assert!(good, "{out}{err}");
    let out = ok(&c.endpoints(), &["get", "pods"]);
    let r = row(&out, "from-grpcurl");
    assert_eq!(r[1..4], ["0/1", "Pending", "0"]);
    assert_eq!(ok(&c.endpoints(), &["get", "pods", "-l", "via=grpcurl", "-o", "name"]), "pod/from-grpcurl\n");
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
    assert!(lines[0].starts_with("ID    NAME   PEER ADDRS"), "{out}");
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

    // The object API fails over the same way.
    let out = rkctl(&servers, &["get", "ns", "default"]).1;
    assert_eq!(row(&out, "default")[1], "Active");

    let (ok, _, err) = rkctl(&servers, &["member", "remove", "9"]);
    assert!(!ok);
    assert_eq!(err.trim(), "Error from server (NotFound): etcdserver: member not found");
    let (ok, _, err) = rkctl(&format!("127.0.0.1:{}", free_port()), &["member", "list"]);
    assert!(!ok);
    assert!(err.starts_with("Unable to connect to the server: "), "{err}");
}

/// `rkctl get pods -w` prints the table, then one row per change as it happens, in the same
/// columns, until it is stopped; `-o name -w` prints names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rkctl_get_watch_prints_a_row_per_change() {
    let c = Cluster::start(1).await;
    let s = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "pods.yaml", PODS);
    ok(&s, &["create", "-f", &f]);

    // Lines of a running rkctl, as they come.
    struct Watching {
        child: std::process::Child,
        lines: std::sync::mpsc::Receiver<String>,
    }
    impl Watching {
        fn start(s: &str, args: &[&str]) -> Watching {
            let mut child = cmd(s).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("rkctl");
            let lines = crate::harness::stdout_lines(&mut child);
            Watching { child, lines }
        }
        fn next(&self) -> String {
            self.lines.recv_timeout(Duration::from_secs(20)).expect("a line from rkctl get -w within 20 s")
        }
    }
    impl Drop for Watching {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    let w = Watching::start(&s, &["get", "pods", "-w"]);
    let n = Watching::start(&s, &["get", "pods", "-w", "-o", "name", "-l", "app=web"]);
    let mut table = vec![w.next()];
    for _ in 0..3 {
        table.push(w.next());
    }
    let table = table.join("\n");
    assert_eq!(header(&table), ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    for name in ["web-1", "web-2", "batch"] {
        assert_eq!(row(&table, name)[1..3], ["0/1", "Pending"], "{table}");
    }
    let mut names = vec![n.next(), n.next()];
    names.sort();
    assert_eq!(names, ["pod/web-1", "pod/web-2"]);

    // A new pod, then a deletion (an unbound pod goes at once): a row each.
    ok(&s, &["run", "late", "--image=busybox", "--restart=Never", "--labels=app=web"]);
    let line = w.next();
    assert_eq!(row(&line, "late")[1..3], ["0/1", "Pending"], "{line}");
    assert_eq!(n.next(), "pod/late");
    ok(&s, &["delete", "pod", "web-2"]);
    let line = w.next();
    assert_eq!(row(&line, "web-2")[0], "web-2", "{line}");
    assert_eq!(n.next(), "pod/web-2");
    assert!(w.lines.recv_timeout(Duration::from_millis(300)).is_err(), "nothing else changed");
}
