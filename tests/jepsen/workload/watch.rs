//! Watch workload: writers put unique values on a few keys under a prefix (single puts,
//! two-key transactions, deletes) while one watcher per member follows the prefix from the
//! first revision. A watcher reconnects on any error and also, every few seconds, on purpose,
//! to the next member, resuming from the revision after the last one it saw.
//!
//! At the end a sentinel write marks the last revision; every watcher must reach it. Then a
//! fresh reference watch from the first revision on each member records what the store's
//! history holds, for the checker.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};
use rkube::pb::etcdserverpb as epb;
use serde_json::json;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use super::{Ctx, Process};
use crate::checker::watch::REFERENCE;
use crate::client::{delete_op, prefix_end, put_op, revision};
use crate::history::{Kind, Op, F};

const KEYS: usize = 8;

pub fn prefix(ctx: &Ctx) -> String {
    format!("{}/watch/", ctx.prefix)
}

/// The revision to watch from: the store's current revision + 1, read before any write.
pub async fn start_revision(ctx: &Ctx) -> anyhow::Result<i64> {
    for i in 0..20 {
        if let Ok(r) = ctx.client(i).range(&prefix(ctx), true, false).await {
            return Ok(revision(&r.header) + 1);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("could not read the start revision")
}

pub async fn writers(ctx: Ctx, workers: usize) {
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let ctx = ctx.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(ctx.seed ^ ((w as u64 + 7) * 0x51ed));
            let mut p = Process::new(w, workers, 2_000_000);
            let key = |i: usize| format!("{}{i}", prefix(&ctx));
            while ctx.think().await {
                let roll: f64 = rng.gen();
                let a = rng.gen_range(0..KEYS);
                let b = (a + rng.gen_range(1..KEYS)) % KEYS;
                let value = |k: usize| (key(k), format!("v{}", next.fetch_add(1, Ordering::Relaxed)));
                let writes: Vec<(String, Option<String>)> = if roll < 0.65 {
                    let (k, v) = value(a);
                    vec![(k, Some(v))]
                } else if roll < 0.9 {
                    let (k1, v1) = value(a);
                    let (k2, v2) = value(b);
                    vec![(k1, Some(v1)), (k2, Some(v2))]
                } else {
                    vec![(key(a), None)]
                };
                write(&ctx, &mut p, writes).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One transaction of puts and deletes, recorded; returns its revision when acknowledged.
async fn write(ctx: &Ctx, p: &mut Process, writes: Vec<(String, Option<String>)>) -> Option<i64> {
    let client = ctx.client(p.member);
    let value = json!(writes.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>());
    let ops = writes
        .iter()
        .map(|(k, v)| match v {
            Some(v) => put_op(k, v),
            None => delete_op(k),
        })
        .collect();
    let pending = ctx.rec.invoke(p.id, F::Txn, None, value, &client.member);
    match client.txn(epb::TxnRequest { success: ops, ..Default::default() }).await {
        Ok(r) => {
            let rev = revision(&r.header);
            ctx.rec.complete(&pending, Kind::Ok, None, Some(rev), None);
            Some(rev)
        }
        Err(e) => {
            let kind = e.write_outcome();
            ctx.rec.complete(&pending, kind, None, None, Some(e.to_string()));
            p.after_error(kind);
            None
        }
    }
}

/// Process ids of the sentinel writer: below the watchers' (3,000,000 on).
pub const SENTINEL_PROCESSES: std::ops::Range<i64> = 2_900_000..3_000_000;

/// Writes the sentinel after the writers stopped; its revision is the end of the run.
pub async fn sentinel(ctx: &Ctx, within: Duration) -> Option<i64> {
    let deadline = Instant::now() + within;
    let mut p = Process::new(0, 1, SENTINEL_PROCESSES.start);
    while Instant::now() < deadline {
        let w = vec![(format!("{}~end", prefix(ctx)), Some(format!("end-{}", ctx.seed)))];
        if let Some(rev) = write(ctx, &mut p, w).await {
            return Some(rev);
        }
        p.member += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

/// Encodes a response's events as `[[rev, key, value or null], ...]`.
fn events_json(events: &[rkube::pb::mvccpb::Event]) -> (serde_json::Value, i64) {
    let mut last = 0;
    let v = events
        .iter()
        .filter_map(|e| {
            let kv = e.kv.as_ref()?;
            last = last.max(kv.mod_revision);
            let key = String::from_utf8_lossy(&kv.key).to_string();
            let value = (e.r#type == rkube::pb::mvccpb::event::EventType::Put as i32)
                .then(|| String::from_utf8_lossy(&kv.value).to_string());
            Some(json!([kv.mod_revision, key, value]))
        })
        .collect();
    (v, last)
}

/// A watcher: follows the prefix from `from`, reconnecting and resuming, until it has seen
/// revision `target` (set once the sentinel is written) or `give_up` passes after stop.
/// `rotate`: reconnect to the next member every few seconds even without an error.
#[allow(clippy::too_many_arguments)] // one call site per kind of watcher; a struct would only rename them
pub async fn watcher(
    ctx: Ctx,
    process: i64,
    first_member: usize,
    from: i64,
    target: Arc<AtomicI64>,
    rotate: bool,
    reference: bool,
    give_up: Duration,
) {
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ process as u64);
    let mut next = from;
    let mut member = first_member;
    let key = reference.then(|| REFERENCE.to_string());
    let mut stop_deadline: Option<Instant> = None;
    let done = |next: i64| {
        let t = target.load(Ordering::SeqCst);
        t > 0 && next > t
    };
    'outer: loop {
        if done(next) {
            return;
        }
        if reference {
            // A reference watch speaks for its member only.
            member = first_member;
        }
        if ctx.stop.is_cancelled() || reference {
            let d = *stop_deadline.get_or_insert_with(|| Instant::now() + give_up);
            if Instant::now() > d {
                return;
            }
        }
        let client = ctx.client(member);
        let (tx, rx) = tokio::sync::mpsc::channel::<epb::WatchRequest>(4);
        let create = epb::WatchRequest {
            request_union: Some(epb::watch_request::RequestUnion::CreateRequest(epb::WatchCreateRequest {
                key: prefix(&ctx).into_bytes(),
                range_end: prefix_end(&prefix(&ctx)),
                start_revision: next,
                ..Default::default()
            })),
        };
        if tx.send(create).await.is_err() {
            continue;
        }
        let mut open = Op::new(process, Kind::Ok, F::WatchOpen);
        open.member = Some(client.member.clone());
        open.rev = Some(next);
        open.key = key.clone();
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            client.watch.clone().watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let mut stream = match stream {
            Ok(Ok(s)) => s.into_inner(),
            _ => {
                member += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        ctx.rec.event(open);
        let rotate_at = Instant::now() + Duration::from_millis(rng.gen_range(3000..8000));
        loop {
            let wait_until = if rotate && !ctx.stop.is_cancelled() {
                rotate_at
            } else {
                Instant::now() + Duration::from_millis(500)
            };
            let msg = tokio::time::timeout_at(wait_until, stream.next()).await;
            match msg {
                Err(_) => {
                    if done(next) {
                        return;
                    }
                    if rotate && !ctx.stop.is_cancelled() {
                        // Time to move on: resume on the next member.
                        member += 1;
                        continue 'outer;
                    }
                    if let Some(d) = stop_deadline {
                        if Instant::now() > d {
                            return;
                        }
                    } else if ctx.stop.is_cancelled() || reference {
                        stop_deadline = Some(Instant::now() + give_up);
                    }
                }
                Ok(None) | Ok(Some(Err(_))) => {
                    member += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'outer;
                }
                Ok(Some(Ok(resp))) => {
                    if resp.canceled || resp.compact_revision > 0 {
                        let mut o = Op::new(process, Kind::Fail, F::WatchOpen);
                        o.member = Some(client.member.clone());
                        o.rev = Some(next);
                        o.key = key.clone();
                        o.error = Some(format!(
                            "watch canceled: {} (compacted at {})",
                            resp.cancel_reason, resp.compact_revision
                        ));
                        ctx.rec.event(o);
                        return;
                    }
                    if resp.events.is_empty() {
                        continue;
                    }
                    let (value, last) = events_json(&resp.events);
                    let mut o = Op::new(process, Kind::Ok, F::WatchEvents);
                    o.member = Some(client.member.clone());
                    o.value = value;
                    o.key = key.clone();
                    o.rev = Some(revision(&resp.header));
                    ctx.rec.event(o);
                    next = next.max(last + 1);
                    if done(next) {
                        return;
                    }
                }
            }
        }
    }
}
