//! Register workload: each process reads (a linearizable Range), writes (a Txn with one put)
//! or compare-and-sets (a Txn comparing the value) one of a few keys. Values are unique
//! numbers. Each key takes a bounded number of operations, then the workers move to a fresh
//! key, which keeps the per-key linearizability search small.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::{rngs::StdRng, Rng, SeedableRng};
use rkube::pb::etcdserverpb as epb;
use serde_json::json;

use super::{Ctx, Process};
use crate::client::{put_op, revision};
use crate::history::{Kind, F};

pub struct Opts {
    pub workers: usize,
    /// Keys in use at once.
    pub keys: usize,
    /// Operations per key before it is retired.
    pub ops_per_key: u64,
}

pub async fn run(ctx: Ctx, opts: Opts) {
    let next_value = Arc::new(AtomicU64::new(1));
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..opts.keys).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for w in 0..opts.workers {
        let ctx = ctx.clone();
        let next_value = next_value.clone();
        let counters = counters.clone();
        let (keys, per_key, workers) = (opts.keys, opts.ops_per_key, opts.workers);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(ctx.seed ^ ((w as u64 + 1) * 0x9e37));
            let mut p = Process::new(w, workers, 0);
            let mut last_seen: HashMap<String, u64> = HashMap::new();
            while ctx.think().await {
                let slot = w % keys;
                let generation = counters[slot].fetch_add(1, Ordering::Relaxed) / per_key;
                let key = format!("{}/register/{slot}/{generation}", ctx.prefix);
                let client = ctx.client(p.member);
                let roll: f64 = rng.gen();
                if roll < 0.5 {
                    let pending = ctx.rec.invoke(p.id, F::Read, Some(key.clone()), json!(null), &client.member);
                    match client.range(&key, false, false).await {
                        Ok(r) => {
                            let v =
                                r.kvs.first().and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok());
                            if let Some(v) = v {
                                last_seen.insert(key.clone(), v);
                            }
                            ctx.rec.complete(&pending, Kind::Ok, Some(json!(v)), Some(revision(&r.header)), None);
                        }
                        Err(e) => {
                            // A read changes nothing; an unanswered one is no evidence either way.
                            ctx.rec.complete(&pending, e.write_outcome(), None, None, Some(e.to_string()));
                            p.after_error(e.write_outcome());
                        }
                    }
                } else {
                    let to = next_value.fetch_add(1, Ordering::Relaxed);
                    let from = last_seen.get(&key).copied();
                    let (f, value, req) = match from {
                        Some(from) if roll >= 0.8 => (
                            F::Cas,
                            json!([from, to]),
                            epb::TxnRequest {
                                compare: vec![epb::Compare {
                                    result: epb::compare::CompareResult::Equal as i32,
                                    target: epb::compare::CompareTarget::Value as i32,
                                    key: key.as_bytes().to_vec(),
                                    target_union: Some(epb::compare::TargetUnion::Value(from.to_string().into_bytes())),
                                    ..Default::default()
                                }],
                                success: vec![put_op(&key, &to.to_string())],
                                failure: vec![],
                            },
                        ),
                        _ => (
                            F::Write,
                            json!(to),
                            epb::TxnRequest { success: vec![put_op(&key, &to.to_string())], ..Default::default() },
                        ),
                    };
                    let pending = ctx.rec.invoke(p.id, f, Some(key.clone()), value, &client.member);
                    match client.txn(req).await {
                        Ok(r) if r.succeeded => {
                            last_seen.insert(key.clone(), to);
                            ctx.rec.complete(&pending, Kind::Ok, None, Some(revision(&r.header)), None);
                        }
                        Ok(r) => {
                            last_seen.remove(&key);
                            ctx.rec.complete(
                                &pending,
                                Kind::Fail,
                                None,
                                Some(revision(&r.header)),
                                Some("compare failed".into()),
                            );
                        }
                        Err(e) => {
                            let kind = e.write_outcome();
                            ctx.rec.complete(&pending, kind, None, None, Some(e.to_string()));
                            p.after_error(kind);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
