//! Set workload: each process adds unique elements (one key per element under the run's
//! prefix, put in a Txn). After the run, one linearizable read of the whole prefix, then each
//! member's own (serializable) read once the members agree or a deadline passes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{Ctx, Process};
use crate::checker::set::{FINAL_READ, MEMBER_READ};
use crate::client::{put_op, revision, Client};
use crate::history::{Kind, F};
use rkube::pb::etcdserverpb as epb;

fn key(ctx: &Ctx, e: u64) -> String {
    format!("{}/set/{e:010}", ctx.prefix)
}

pub async fn run(ctx: Ctx, workers: usize) {
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let ctx = ctx.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut p = Process::new(w, workers, 1_000_000);
            while ctx.think().await {
                let e = next.fetch_add(1, Ordering::Relaxed);
                let client = ctx.client(p.member);
                let pending = ctx.rec.invoke(p.id, F::Add, None, json!(e), &client.member);
                let req =
                    epb::TxnRequest { success: vec![put_op(&key(&ctx, e), &e.to_string())], ..Default::default() };
                match client.txn(req).await {
                    Ok(r) => {
                        ctx.rec.complete(&pending, Kind::Ok, None, Some(revision(&r.header)), None);
                    }
                    Err(err) => {
                        let kind = err.write_outcome();
                        ctx.rec.complete(&pending, kind, None, None, Some(err.to_string()));
                        p.after_error(kind);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn elements(r: &epb::RangeResponse) -> Vec<u64> {
    r.kvs.iter().filter_map(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok()).collect()
}

/// The final reads, after the cluster healed: retried for up to `within`.
pub async fn final_reads(ctx: &Ctx, within: Duration) {
    let prefix = format!("{}/set/", ctx.prefix);
    let deadline = Instant::now() + within;
    let mut linearizable: Option<Vec<u64>> = None;
    let mut attempt = 0usize;
    while linearizable.is_none() && Instant::now() < deadline {
        let client: Client = ctx.client(attempt);
        attempt += 1;
        let pending = ctx.rec.invoke(5_000_000, F::ReadAll, Some(FINAL_READ.into()), json!(null), &client.member);
        match client.range(&prefix, true, false).await {
            Ok(r) => {
                let els = elements(&r);
                ctx.rec.complete(&pending, Kind::Ok, Some(json!(els)), Some(revision(&r.header)), None);
                linearizable = Some(els);
            }
            Err(e) => {
                ctx.rec.complete(&pending, Kind::Fail, None, None, Some(e.to_string()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let Some(want) = linearizable else { return };
    for (i, _) in ctx.members.iter().enumerate() {
        let client = ctx.client(i);
        // A member may trail the leader for a moment after healing; it must catch up.
        let member_deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = client.range(&prefix, true, true).await;
            let done = match &r {
                Ok(r) => elements(r) == want || Instant::now() > member_deadline,
                Err(_) => Instant::now() > member_deadline,
            };
            if done {
                let pending = ctx.rec.invoke(
                    5_000_001 + i as i64,
                    F::ReadAll,
                    Some(MEMBER_READ.into()),
                    json!(null),
                    &client.member,
                );
                match r {
                    Ok(r) => {
                        ctx.rec.complete(&pending, Kind::Ok, Some(json!(elements(&r))), Some(revision(&r.header)), None)
                    }
                    Err(e) => ctx.rec.complete(&pending, Kind::Fail, None, None, Some(e.to_string())),
                };
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}
