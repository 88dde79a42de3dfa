//! The nemesis: injects one fault at a time on a schedule (a fault lasts 5-10 s, then the
//! cluster is healthy for a few seconds), records each fault and heal in the history, and heals
//! everything at the end.

use std::time::Duration;

use anyhow::Result;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::db::Cluster;
use crate::history::{Kind, Op, Recorder, F, NEMESIS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// kill -9 a random member; restart it at heal.
    KillRandom,
    /// kill -9 the leader; restart it at heal.
    KillLeader,
    /// Freeze a random member (docker pause); resume at heal.
    PauseRandom,
    PauseLeader,
    /// The leader cut off from both others, both ways.
    PartitionLeader,
    /// A random member (a minority of one) cut off from the majority.
    PartitionRandom,
    /// Each member hears only one other, each a different one: every member sees a majority,
    /// no two see the same.
    PartitionRing,
    /// The followers stop hearing the leader; the leader still hears them.
    OneWayFromLeader,
    /// The leader stops hearing the followers; they still hear it.
    OneWayToLeader,
    /// A random member is killed, removed, and replaced by a new member with an empty data
    /// directory at the same address (member remove + member add).
    ReplaceMember,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillRandom => "kill-random",
            Fault::KillLeader => "kill-leader",
            Fault::PauseRandom => "pause-random",
            Fault::PauseLeader => "pause-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionRandom => "partition-random",
            Fault::PartitionRing => "partition-ring",
            Fault::OneWayFromLeader => "one-way-from-leader",
            Fault::OneWayToLeader => "one-way-to-leader",
            Fault::ReplaceMember => "replace-member",
        }
    }

    pub fn kills() -> Vec<Fault> {
        vec![Fault::KillRandom, Fault::KillLeader]
    }
    pub fn pauses() -> Vec<Fault> {
        vec![Fault::PauseRandom, Fault::PauseLeader]
    }
    pub fn partitions() -> Vec<Fault> {
        vec![
            Fault::PartitionLeader,
            Fault::PartitionRandom,
            Fault::PartitionRing,
            Fault::OneWayFromLeader,
            Fault::OneWayToLeader,
        ]
    }
}

/// What undoes an active fault.
enum Undo {
    Start(String),
    Unpause(String),
    Network,
    Nothing,
}

pub struct Schedule {
    pub faults: Vec<Fault>,
    /// A fault lasts a random time in this range (ms); so does the quiet time between faults,
    /// scaled by `quiet`.
    pub fault_ms: (u64, u64),
    pub quiet_ms: (u64, u64),
    pub seed: u64,
}

fn record(rec: &Recorder, f: F, kind: Kind, value: serde_json::Value, error: Option<String>) {
    let mut op = Op::new(NEMESIS, kind, f);
    op.value = value;
    op.error = error;
    rec.event(op);
}

/// Runs faults until `stop`, then heals everything and records the final heal.
pub async fn run(cluster: &Cluster, rec: &Recorder, schedule: &Schedule, stop: CancellationToken) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(schedule.seed);
    let sleep = |ms: u64| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
            }
        }
    };
    if !schedule.faults.is_empty() {
        loop {
            if !sleep(rng.gen_range(schedule.quiet_ms.0..=schedule.quiet_ms.1)).await {
                break;
            }
            let fault = *schedule.faults.choose(&mut rng).expect("faults is not empty");
            let member = {
                let names: Vec<String> = cluster.members().into_iter().map(|m| m.name).collect();
                names.choose(&mut rng).cloned().expect("three members")
            };
            record(rec, F::Fault, Kind::Invoke, json!({"fault": fault.name()}), None);
            let undo = match apply(cluster, fault, &member).await {
                Ok((undo, detail)) => {
                    record(rec, F::Fault, Kind::Ok, json!({"fault": fault.name(), "detail": detail}), None);
                    undo
                }
                Err(e) => {
                    // A fault that could not be applied (no leader to target, say) is recorded
                    // and skipped; whatever part of it took effect is healed below.
                    record(rec, F::Fault, Kind::Fail, json!({"fault": fault.name()}), Some(format!("{e:#}")));
                    Undo::Network
                }
            };
            let cont = sleep(rng.gen_range(schedule.fault_ms.0..=schedule.fault_ms.1)).await;
            if !cont {
                break;
            }
            record(rec, F::Heal, Kind::Invoke, json!({"fault": fault.name()}), None);
            let healed = match undo {
                Undo::Start(m) => cluster.start(&m).await,
                Undo::Unpause(m) => cluster.unpause(&m).await,
                Undo::Network => cluster.heal_network().await,
                Undo::Nothing => Ok(()),
            };
            record(rec, F::Heal, Kind::Ok, json!({"fault": fault.name()}), healed.err().map(|e| format!("{e:#}")));
        }
    }
    record(rec, F::Heal, Kind::Invoke, json!({"fault": "all"}), None);
    let healed = cluster.heal_all().await;
    record(rec, F::Heal, Kind::Ok, json!({"fault": "all"}), healed.as_ref().err().map(|e| format!("{e:#}")));
    healed
}

async fn leader_or(cluster: &Cluster, fallback: &str) -> Result<String> {
    for _ in 0..10 {
        if let Some(l) = cluster.leader().await {
            return Ok(l);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    anyhow::bail!("no leader to target (fallback {fallback} not used)")
}

async fn apply(cluster: &Cluster, fault: Fault, random: &str) -> Result<(Undo, String)> {
    let names: Vec<String> = cluster.members().into_iter().map(|m| m.name).collect();
    let others = |x: &str| names.iter().filter(|n| *n != x).cloned().collect::<Vec<_>>();
    Ok(match fault {
        Fault::KillRandom | Fault::KillLeader => {
            let m = if fault == Fault::KillLeader { leader_or(cluster, random).await? } else { random.to_string() };
            cluster.kill(&m).await?;
            (Undo::Start(m.clone()), format!("killed {m}"))
        }
        Fault::PauseRandom | Fault::PauseLeader => {
            let m = if fault == Fault::PauseLeader { leader_or(cluster, random).await? } else { random.to_string() };
            cluster.pause(&m).await?;
            (Undo::Unpause(m.clone()), format!("paused {m}"))
        }
        Fault::PartitionLeader | Fault::PartitionRandom => {
            let m =
                if fault == Fault::PartitionLeader { leader_or(cluster, random).await? } else { random.to_string() };
            let rest = others(&m);
            cluster.drop_from(&m, &rest).await?;
            for o in &rest {
                cluster.drop_from(o, std::slice::from_ref(&m)).await?;
            }
            (Undo::Network, format!("isolated {m} from {}", rest.join(",")))
        }
        Fault::PartitionRing => {
            // m_i drops what comes from m_{i-1}: m1 hears m2, m2 hears m3, m3 hears m1.
            let mut detail = Vec::new();
            for (i, m) in names.iter().enumerate() {
                let prev = &names[(i + names.len() - 1) % names.len()];
                cluster.drop_from(m, std::slice::from_ref(prev)).await?;
                detail.push(format!("{prev}-x->{m}"));
            }
            (Undo::Network, detail.join(" "))
        }
        Fault::OneWayFromLeader => {
            let l = leader_or(cluster, random).await?;
            for o in others(&l) {
                cluster.drop_from(&o, std::slice::from_ref(&l)).await?;
            }
            (Undo::Network, format!("followers drop packets from leader {l}"))
        }
        Fault::OneWayToLeader => {
            let l = leader_or(cluster, random).await?;
            cluster.drop_from(&l, &others(&l)).await?;
            (Undo::Network, format!("leader {l} drops packets from followers"))
        }
        Fault::ReplaceMember => {
            let id = cluster.replace(random).await?;
            (Undo::Nothing, format!("replaced {random} by new member {id:x} with an empty data dir"))
        }
    })
}
