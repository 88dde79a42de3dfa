//! Objects workload: Pods and Deployments through the rkube.v1 API. A few objects are created
//! first; then processes read them (a linearizable Get) and update them with a
//! compare-and-swap on the resourceVersion they read, writing a unique value into an
//! annotation. After healing, one linearizable read of every object, then each member's own
//! (serializable) read of the stored keys.
//!
//! Operations (key: `pods/NAME` or `deployments/NAME`):
//! - `obj_get`: value `{"rv": N, "val": V}` (V null before any update);
//! - `obj_update`: invoked with `{"from": RV, "val": V}`; ok with `rev` = the new
//!   resourceVersion; a Conflict is `fail`;
//! - `obj_final`: the final reads, value `{KEY: {"rv": N, "val": V}}`, key `linearizable` or
//!   `serializable` (one per member).

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};
use rkube::api::v1::{Deployment, Pod};
use rkube::api::Object;
use rkube::client::{Api, Client as ApiClient, ClientError, Remote};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{Ctx, Process};
use crate::checker::objects::{FINAL_READ, MEMBER_READ, VALUE_ANNOTATION};
use crate::history::{Kind, F};

const NAMESPACE: &str = "default";

/// The history outcome of an API write that failed.
pub fn write_outcome(e: &ClientError) -> Kind {
    use tonic::Code;
    match e {
        ClientError::Server {
            code:
                Code::Aborted
                | Code::AlreadyExists
                | Code::NotFound
                | Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::ResourceExhausted,
            ..
        } => Kind::Fail,
        ClientError::Server { .. } => Kind::Info,
        // Refused before anything was sent.
        ClientError::Connect(m) if m.contains("tcp connect error") || m.contains("refused") => Kind::Fail,
        ClientError::Local(_) => Kind::Fail,
        _ => Kind::Info,
    }
}

fn names(ctx: &Ctx, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{}-{i}", ctx.prefix.replace(['/', '_'], "-").to_ascii_lowercase())).collect()
}

/// Object `i`: even ones are Pods, odd ones Deployments (with no replicas).
fn key_of(i: usize, name: &str) -> String {
    if i.is_multiple_of(2) {
        format!("pods/{name}")
    } else {
        format!("deployments/{name}")
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"jepsen": "objects"}},
        "spec": {"containers": [{"name": "c", "image": "jepsen:1"}],
                 "nodeSelector": {"jepsen": "never-scheduled"}}
    }))
    .expect("a valid pod")
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"jepsen": name}},
                 "template": {"metadata": {"labels": {"jepsen": name}},
                              "spec": {"containers": [{"name": "c", "image": "jepsen:1"}]}}}
    }))
    .expect("a valid deployment")
}

fn value_of<K: Object>(o: &K) -> Value {
    o.meta().annotations.get(VALUE_ANNOTATION).and_then(|v| v.parse::<u64>().ok()).map_or(Value::Null, Value::from)
}

fn rv_of<K: Object>(o: &K) -> i64 {
    o.meta().resource_version.parse().unwrap_or(0)
}

fn api_client(ctx: &Ctx, member: usize) -> (String, ApiClient) {
    let (name, port) = &ctx.members[member % ctx.members.len()];
    // One master only: the process stays with its member, as the other workloads do.
    let client = ApiClient::from_list(&format!("127.0.0.1:{port}")).expect("a loopback address");
    (name.clone(), client)
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Server {
            code: tonic::Code::DeadlineExceeded,
            reason: "Timeout".into(),
            message: "the harness's timeout".into(),
        }),
    }
}

/// Creates the objects, retrying until each exists.
pub async fn setup(ctx: &Ctx, objects: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    for (i, name) in names(ctx, objects).iter().enumerate() {
        let mut attempt = i;
        loop {
            let (_, client) = api_client(ctx, attempt);
            attempt += 1;
            let r = if i.is_multiple_of(2) {
                Api::<Pod>::namespaced(&client, NAMESPACE).create(&pod(name)).await.map(|_| ())
            } else {
                Api::<Deployment>::namespaced(&client, NAMESPACE).create(&deployment(name)).await.map(|_| ())
            };
            match r {
                Ok(()) => break,
                Err(e) if e.is_already_exists() => break,
                Err(e) if Instant::now() > deadline => anyhow::bail!("creating {name}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }
    Ok(())
}

/// One read-or-update on object `name` of kind `K`.
async fn step<K: Remote>(ctx: &Ctx, p: &mut Process, key: &str, name: &str, update: Option<u64>) {
    let (member, client) = api_client(ctx, p.member);
    let api = Api::<K>::namespaced(&client, NAMESPACE);
    let pending = ctx.rec.invoke(p.id, F::ObjGet, Some(key.into()), Value::Null, &member);
    let cur = match bounded(ctx.op_timeout, api.get(name)).await {
        Ok(o) => {
            ctx.rec.complete(&pending, Kind::Ok, Some(json!({"rv": rv_of(&o), "val": value_of(&o)})), None, None);
            o
        }
        Err(e) => {
            // A read changes nothing: a failed one is simply a failure.
            ctx.rec.complete(&pending, Kind::Fail, None, None, Some(e.to_string()));
            p.after_error(Kind::Fail);
            return;
        }
    };
    let Some(val) = update else { return };
    let mut next = cur.clone();
    next.meta_mut().annotations.insert(VALUE_ANNOTATION.into(), val.to_string());
    let pending =
        ctx.rec.invoke(p.id, F::ObjUpdate, Some(key.into()), json!({"from": rv_of(&cur), "val": val}), &member);
    match bounded(ctx.op_timeout, api.update(&next)).await {
        Ok(o) => {
            ctx.rec.complete(&pending, Kind::Ok, None, Some(rv_of(&o)), None);
        }
        Err(e) => {
            let kind = write_outcome(&e);
            ctx.rec.complete(&pending, kind, None, None, Some(e.to_string()));
            p.after_error(kind);
        }
    }
}

pub async fn run(ctx: Ctx, workers: usize, objects: usize) {
    let names = names(&ctx, objects);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let ctx = ctx.clone();
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            let mut p = Process::new(w, workers, 6_000_000);
            let mut rng = StdRng::seed_from_u64(ctx.seed ^ ((w as u64 + 1) * 0x51ed));
            let mut n = 0u64;
            while ctx.think().await {
                let i = rng.gen_range(0..names.len());
                let key = key_of(i, &names[i]);
                // Unique values: worker w writes w + 1, w + 1 + workers, ...
                let update = rng.gen_bool(0.6).then(|| {
                    n += 1;
                    n * workers as u64 + w as u64 + 1
                });
                if i.is_multiple_of(2) {
                    step::<Pod>(&ctx, &mut p, &key, &names[i], update).await;
                } else {
                    step::<Deployment>(&ctx, &mut p, &key, &names[i], update).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Every object as a linearizable Get sees it, through any member that answers.
async fn read_all(ctx: &Ctx, names: &[String], member: usize) -> Result<BTreeMap<String, Value>, ClientError> {
    let (_, client) = api_client(ctx, member);
    let mut out = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let v = if i.is_multiple_of(2) {
            let o = Api::<Pod>::namespaced(&client, NAMESPACE).get(name).await?;
            json!({"rv": rv_of(&o), "val": value_of(&o)})
        } else {
            let o = Api::<Deployment>::namespaced(&client, NAMESPACE).get(name).await?;
            json!({"rv": rv_of(&o), "val": value_of(&o)})
        };
        out.insert(key_of(i, name), v);
    }
    Ok(out)
}

/// A member's own view: a serializable read of the stored keys, decoded.
async fn member_read(ctx: &Ctx, names: &[String], member: usize) -> anyhow::Result<BTreeMap<String, Value>> {
    let client = ctx.client(member);
    let mut out = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let key = format!("/registry/{}", key_of(i, name).replace('/', &format!("/{NAMESPACE}/")));
        let r = client.range(&key, false, true).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(kv) = r.kvs.first() else {
            out.insert(key_of(i, name), Value::Null);
            continue;
        };
        let val = if i.is_multiple_of(2) {
            let o: Pod = prost::Message::decode(kv.value.as_slice())?;
            value_of(&o)
        } else {
            let o: Deployment = prost::Message::decode(kv.value.as_slice())?;
            value_of(&o)
        };
        out.insert(key_of(i, name), json!({"rv": kv.mod_revision, "val": val}));
    }
    Ok(out)
}

/// The final reads, after the cluster healed: the linearizable one (retried for up to
/// `within`), then each member's own once it agrees or 15 s passed.
pub async fn final_reads(ctx: &Ctx, objects: usize, within: Duration) {
    let names = names(ctx, objects);
    let deadline = Instant::now() + within;
    let mut want = None;
    let mut attempt = 0usize;
    while want.is_none() && Instant::now() < deadline {
        let member = ctx.members[attempt % ctx.members.len()].0.clone();
        let pending = ctx.rec.invoke(6_900_000, F::ObjFinal, Some(FINAL_READ.into()), Value::Null, &member);
        match read_all(ctx, &names, attempt).await {
            Ok(all) => {
                ctx.rec.complete(&pending, Kind::Ok, Some(json!(all)), None, None);
                want = Some(all);
            }
            Err(e) => {
                ctx.rec.complete(&pending, Kind::Fail, None, None, Some(e.to_string()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        attempt += 1;
    }
    let Some(want) = want else { return };
    for (i, (member, _)) in ctx.members.iter().enumerate() {
        let member_deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = member_read(ctx, &names, i).await;
            let agrees = r.as_ref().is_ok_and(|got| {
                // Equal once caught up, leaving out writes the controllers made since (status).
                got.iter().all(|(k, v)| {
                    want.get(k).is_some_and(|w| w["val"] == v["val"] && v["rv"].as_i64() >= w["rv"].as_i64())
                })
            });
            if agrees || Instant::now() > member_deadline {
                let pending =
                    ctx.rec.invoke(6_900_001 + i as i64, F::ObjFinal, Some(MEMBER_READ.into()), Value::Null, member);
                match r {
                    Ok(got) => ctx.rec.complete(&pending, Kind::Ok, Some(json!(got)), None, None),
                    Err(e) => ctx.rec.complete(&pending, Kind::Fail, None, None, Some(e.to_string())),
                };
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}
