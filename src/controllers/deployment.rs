//! The Deployment controller: one ReplicaSet per pod template (named and labelled with the
//! template's hash, `pod-template-hash`), scaled so that a rollout keeps at least
//! `replicas - maxUnavailable` pods available and at most `replicas + maxSurge` pods in all
//! (RollingUpdate), or replaces all at once (Recreate). Old ReplicaSets stay, scaled to zero,
//! as the revision history (`deployment.kubernetes.io/revision`), trimmed to
//! revisionHistoryLimit; `rkctl rollout undo` puts an old template back.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{controller_ref, ControllerConfig, Shared, BY_OWNER};
use crate::api::v1::*;
use crate::api::{self, Object};
use crate::client::{Api, ClientError, DeleteParams};
use crate::reconcile::{feed, key_of, run_workers, split_key, Change, WorkQueue};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

/// A stable short hash of a pod template (FNV-1a of its JSON), as the name suffix and label.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    // No metadata and empty metadata are one template.
    let mut t = t.clone();
    t.metadata.get_or_insert_with(Default::default).labels.remove(HASH_LABEL);
    let json = serde_json::to_vec(&t).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in json {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    // Kubernetes' "safe" alphabet: no vowels, so hashes never spell words.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    for _ in 0..10 {
        out.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
        h /= ALPHABET.len() as u64;
    }
    out
}

/// maxSurge / maxUnavailable against `replicas`: surge rounds up, unavailable down; both zero
/// means one unavailable, as in Kubernetes.
pub fn resolve(replicas: i32, surge: &str, unavailable: &str) -> (i32, i32) {
    let value = |v: &str, round_up: bool| -> i32 {
        if let Some(p) = v.strip_suffix('%') {
            let p: i64 = p.parse().unwrap_or(0);
            let x = replicas as i64 * p;
            (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
        } else {
            v.parse().unwrap_or(0)
        }
    };
    let s = value(surge, true);
    let mut u = value(unavailable, false);
    if s == 0 && u == 0 {
        u = 1;
    }
    (s, u.min(replicas.max(0)))
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.meta().annotations.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.available_replicas).unwrap_or(0)
}

/// One step of a rollout: the replica counts to set now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub new: i32,
    /// (index into old, replicas)
    pub old: Vec<(usize, i32)>,
}

/// The rolling update as a pure function: from the desired replicas, the limits, the new
/// ReplicaSet's (spec, available) and the old ones' (spec, available), oldest first, and how
/// many pods exist now (a scaled-down ReplicaSet's pods go a moment after its spec changes:
/// counting them keeps the total within the surge at every moment, not only on paper).
pub fn rolling_step(
    replicas: i32,
    surge: i32,
    unavailable: i32,
    new: (i32, i32),
    old: &[(i32, i32)],
    existing: i32,
) -> Step {
    let total: i32 = (new.0 + old.iter().map(|o| o.0).sum::<i32>()).max(existing);
    let max_total = replicas + surge;
    // Scale the new one up as far as the surge allows.
    let mut new_target = new.0;
    if new.0 < replicas && total < max_total {
        new_target = (new.0 + (max_total - total)).min(replicas);
    }
    if new.0 > replicas {
        new_target = replicas;
    }
    // Scale old ones down as far as availability allows. The budget is bounded twice: by the
    // specs (which this controller wrote, so they are never stale: all pods asked for, less the
    // minimum available, less the new ones not yet available) and by the available counts
    // the ReplicaSets report (which lag a scale-down by a moment).
    let min_available = replicas - unavailable;
    let all_spec: i32 = new.0 + old.iter().map(|o| o.0).sum::<i32>();
    let new_unavailable = (new.0 - new.1).max(0);
    let mut max_down = (all_spec - min_available - new_unavailable).max(0);
    let mut targets: Vec<i32> = old.iter().map(|o| o.0).collect();
    // Old pods that are not available cost no availability to remove: they go first.
    for (t, (spec, avail)) in targets.iter_mut().zip(old) {
        let cut = (spec - avail).max(0).min(max_down);
        *t -= cut;
        max_down -= cut;
    }
    let total_available: i32 = new.1 + old.iter().zip(&targets).map(|((_, avail), t)| (*avail).min(*t)).sum::<i32>();
    let mut budget = (total_available - min_available).max(0).min(max_down);
    for t in targets.iter_mut() {
        let more = (*t).min(budget);
        *t -= more;
        budget -= more;
    }
    let steps = targets.iter().enumerate().filter(|(i, t)| **t != old[*i].0).map(|(i, t)| (i, *t)).collect();
    Step { new: new_target, old: steps }
}

async fn set_replicas(
    shared: &Shared,
    rs: &ReplicaSet,
    n: i32,
    extra_annotations: &[(&str, String)],
) -> Result<(), ClientError> {
    // On the version this decision was made from: a stale cache gets a Conflict and a retry.
    let mut patch =
        serde_json::json!({"metadata": {"resourceVersion": rs.meta().resource_version}, "spec": {"replicas": n}});
    for (k, v) in extra_annotations {
        patch["metadata"]["annotations"][*k] = serde_json::Value::String(v.clone());
    }
    Api::<ReplicaSet>::namespaced(&shared.client, &rs.meta().namespace).patch(&rs.meta().name, &patch, false).await?;
    Ok(())
}

async fn reconcile(shared: Shared, key: String) -> Result<Option<Duration>, ClientError> {
    let Some(d) = shared.deployments.cache().get(&key) else { return Ok(None) };
    if !d.meta().deletion_timestamp.is_empty() {
        return Ok(None);
    }
    let (ns, name) = split_key(&key);
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let template = spec.template.clone().unwrap_or_default();
    let hash = template_hash(&template);
    let mut owned: Vec<Arc<ReplicaSet>> = shared
        .replicasets
        .cache()
        .by_index(BY_OWNER, &d.meta().uid)
        .into_iter()
        .filter(|rs| crate::api::controller_of(rs.meta()).is_some_and(|c| c.uid == d.meta().uid))
        .collect();
    owned.sort_by_key(|rs| revision(rs));
    let max_rev = owned.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let rs_api = Api::<ReplicaSet>::namespaced(&shared.client, ns);
    let new_rs = owned.iter().find(|rs| rs.meta().labels.get(HASH_LABEL) == Some(&hash)).cloned();
    let new_rs = match new_rs {
        Some(rs) => {
            // A rollback to an old template makes that ReplicaSet the newest revision.
            if revision(&rs) < max_rev && !spec.paused {
                set_replicas(&shared, &rs, spec_replicas(&rs), &[(REVISION, (max_rev + 1).to_string())]).await?;
                return Ok(Some(Duration::from_millis(50)));
            }
            rs
        }
        None if spec.paused => return update_status(&shared, &d, &owned, None).await,
        None => {
            let mut t = template.clone();
            t.metadata.get_or_insert_with(Default::default).labels.insert(HASH_LABEL.into(), hash.clone());
            let mut selector = spec.selector.clone().unwrap_or_default();
            selector.match_labels.insert(HASH_LABEL.into(), hash.clone());
            let first = owned.is_empty();
            let mut rs = ReplicaSet {
                spec: Some(ReplicaSetSpec {
                    replicas: Some(if first { replicas } else { 0 }),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector: Some(selector),
                    template: Some(t.clone()),
                }),
                ..Default::default()
            };
            let m = rs.meta_mut();
            m.name = format!("{name}-{hash}");
            m.namespace = ns.to_string();
            m.labels = t.metadata.clone().unwrap_or_default().labels;
            m.annotations.insert(REVISION.into(), (max_rev + 1).to_string());
            m.owner_references = vec![controller_ref(d.as_ref())];
            match rs_api.create(&rs).await {
                Ok(made) => {
                    shared
                        .recorder
                        .normal(
                            d.as_ref(),
                            "ScalingReplicaSet",
                            &format!("Scaled up replica set {} to {}", made.meta().name, spec_replicas(&made)),
                        )
                        .await;
                }
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e),
            }
            return Ok(Some(Duration::from_millis(50)));
        }
    };
    let old: Vec<Arc<ReplicaSet>> = owned.iter().filter(|rs| rs.meta().uid != new_rs.meta().uid).cloned().collect();
    if spec.paused {
        return update_status(&shared, &d, &owned, Some(&new_rs)).await;
    }
    let recreate = spec.strategy.as_ref().is_some_and(|s| s.r#type == "Recreate");
    let mut changed = false;
    if recreate {
        for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
            set_replicas(&shared, rs, 0, &[]).await?;
            shared
                .recorder
                .normal(d.as_ref(), "ScalingReplicaSet", &format!("Scaled down replica set {} to 0", rs.meta().name))
                .await;
            changed = true;
        }
        let old_running: i32 = old.iter().map(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)).sum();
        if !changed && old_running == 0 && spec_replicas(&new_rs) != replicas {
            set_replicas(&shared, &new_rs, replicas, &[]).await?;
            shared
                .recorder
                .normal(
                    d.as_ref(),
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {} to {replicas}", new_rs.meta().name),
                )
                .await;
            changed = true;
        }
    } else {
        let ru = spec.strategy.clone().unwrap_or_default().rolling_update.unwrap_or_default();
        let (surge, unavailable) = resolve(replicas, &ru.max_surge, &ru.max_unavailable);
        let old_counts: Vec<(i32, i32)> = old.iter().map(|rs| (spec_replicas(rs), available(rs))).collect();
        // Pods that exist now (not being deleted), whatever the specs say.
        let existing: i32 = owned
            .iter()
            .map(|rs| {
                shared.pods.cache().by_index(BY_OWNER, &rs.meta().uid).iter().filter(|p| super::is_active(p)).count()
                    as i32
            })
            .sum();
        let step = rolling_step(
            replicas,
            surge,
            unavailable,
            (spec_replicas(&new_rs), available(&new_rs)),
            &old_counts,
            existing,
        );
        if step.new != spec_replicas(&new_rs) {
            set_replicas(&shared, &new_rs, step.new, &[]).await?;
            let verb = if step.new > spec_replicas(&new_rs) { "up" } else { "down" };
            shared
                .recorder
                .normal(
                    d.as_ref(),
                    "ScalingReplicaSet",
                    &format!("Scaled {verb} replica set {} to {}", new_rs.meta().name, step.new),
                )
                .await;
            changed = true;
        }
        for (i, n) in step.old {
            set_replicas(&shared, &old[i], n, &[]).await?;
            shared
                .recorder
                .normal(
                    d.as_ref(),
                    "ScalingReplicaSet",
                    &format!("Scaled down replica set {} to {n}", old[i].meta().name),
                )
                .await;
            changed = true;
        }
    }
    // History beyond the limit goes, oldest first.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let idle: Vec<&Arc<ReplicaSet>> =
        old.iter().filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0)).collect();
    if idle.len() > limit {
        for rs in &idle[..idle.len() - limit] {
            let _ = rs_api.delete(&rs.meta().name, &DeleteParams::default()).await;
        }
    }
    let requeue = update_status(&shared, &d, &owned, Some(&new_rs)).await?;
    Ok(if changed { Some(Duration::from_millis(100)) } else { requeue })
}

async fn update_status(
    shared: &Shared,
    d: &Deployment,
    owned: &[Arc<ReplicaSet>],
    new_rs: Option<&Arc<ReplicaSet>>,
) -> Result<Option<Duration>, ClientError> {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let sum =
        |f: fn(&ReplicaSetStatus) -> i32| owned.iter().map(|rs| rs.status.as_ref().map(f).unwrap_or(0)).sum::<i32>();
    let total = sum(|s| s.replicas);
    let ready = sum(|s| s.ready_replicas);
    let avail = sum(|s| s.available_replicas);
    let updated = new_rs.and_then(|rs| rs.status.as_ref()).map(|s| s.replicas).unwrap_or(0);
    let ru = spec.strategy.clone().unwrap_or_default().rolling_update.unwrap_or_default();
    let (_, unavailable) = resolve(replicas, &ru.max_surge, &ru.max_unavailable);
    let old = d.status.clone().unwrap_or_default();
    let complete = updated == replicas && total == replicas && avail == replicas;
    let now = api::time::now();
    let condition = |kind: &str, status: &str, reason: &str, message: String| {
        let prev = old.conditions.iter().find(|c| c.r#type == kind);
        let same = prev.is_some_and(|p| p.status == status);
        DeploymentCondition {
            r#type: kind.into(),
            status: status.into(),
            last_update_time: if prev.is_some_and(|p| p.reason == reason) {
                prev.map(|p| p.last_update_time.clone()).unwrap_or_default()
            } else {
                now.clone()
            },
            last_transition_time: if same {
                prev.map(|p| p.last_transition_time.clone()).unwrap_or_default()
            } else {
                now.clone()
            },
            reason: reason.into(),
            message,
        }
    };
    let available_ok = avail >= replicas - unavailable;
    let new_name = new_rs.map(|rs| rs.meta().name.clone()).unwrap_or_default();
    let conditions = vec![
        if available_ok {
            condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into())
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        },
        if complete {
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            )
        } else {
            condition("Progressing", "True", "ReplicaSetUpdated", format!("ReplicaSet \"{new_name}\" is progressing."))
        },
    ];
    let status = DeploymentStatus {
        observed_generation: d.meta().generation,
        replicas: total,
        updated_replicas: updated,
        ready_replicas: ready,
        available_replicas: avail,
        unavailable_replicas: (replicas - avail).max(0),
        conditions,
        collision_count: old.collision_count,
    };
    let mut cmp_old = old.clone();
    let mut cmp_new = status.clone();
    for c in cmp_old.conditions.iter_mut().chain(cmp_new.conditions.iter_mut()) {
        c.last_update_time.clear();
        c.last_transition_time.clear();
    }
    if cmp_old != cmp_new {
        let mut upd = d.clone();
        upd.status = Some(status);
        match Api::<Deployment>::namespaced(&shared.client, &d.meta().namespace).update_status(&upd).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() || e.is_not_found() => return Ok(Some(Duration::from_millis(50))),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

pub async fn run(shared: Shared, cfg: ControllerConfig, stop: CancellationToken) {
    let queue = WorkQueue::new();
    let all = {
        let d = shared.deployments.clone();
        move || d.cache().list().iter().map(|o| key_of(o.as_ref())).collect::<Vec<_>>()
    };
    feed(
        &shared.deployments,
        &queue,
        stop.clone(),
        |c| match c {
            Change::Applied(o) | Change::Deleted(o) => vec![key_of(o.as_ref())],
            Change::Resync => vec![],
        },
        all.clone(),
    );
    let deps = shared.deployments.clone();
    feed(
        &shared.replicasets,
        &queue,
        stop.clone(),
        move |c| match c {
            Change::Applied(rs) | Change::Deleted(rs) => match crate::api::controller_of(rs.meta()) {
                Some(o) if o.kind == "Deployment" => {
                    deps.cache().by_index(super::BY_UID, &o.uid).iter().map(|d| key_of(d.as_ref())).collect()
                }
                _ => vec![],
            },
            Change::Resync => vec![],
        },
        all,
    );
    run_workers(queue, cfg.workers, stop, move |key| {
        let shared = shared.clone();
        async move {
            match reconcile(shared, key).await {
                // Decided on a stale ReplicaSet: look again once the cache has caught up.
                Err(e) if e.is_conflict() => Ok(Some(Duration::from_millis(50))),
                other => other,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_and_unavailable_resolve_like_kubernetes() {
        assert_eq!(resolve(10, "25%", "25%"), (3, 2));
        assert_eq!(resolve(4, "0", "0"), (0, 1));
        assert_eq!(resolve(5, "1", "0"), (1, 0));
        assert_eq!(resolve(3, "100%", "0%"), (3, 0));
    }

    #[test]
    fn a_rolling_update_stays_within_its_limits() {
        // 4 replicas, surge 1, unavailable 1: simulate until done; pods become available at
        // once. At every step: total <= 5 and available >= 3.
        let (replicas, surge, unavailable) = (4, 1, 1);
        let mut new = (0, 0);
        let mut old = vec![(4, 4)];
        for _ in 0..20 {
            let step = rolling_step(replicas, surge, unavailable, new, &old, 0);
            new.0 = step.new;
            for (i, n) in step.old {
                old[i].0 = n;
            }
            let total = new.0 + old.iter().map(|o| o.0).sum::<i32>();
            assert!(total <= replicas + surge, "{total} pods");
            // Scale-downs take effect; scale-ups become available.
            for o in old.iter_mut() {
                o.1 = o.1.min(o.0);
            }
            let avail = new.1 + old.iter().map(|o| o.1).sum::<i32>();
            assert!(avail >= replicas - unavailable, "{avail} available");
            new.1 = new.0;
        }
        assert_eq!(new, (4, 4));
        assert_eq!(old[0].0, 0);
    }

    #[test]
    fn a_stale_available_count_does_not_scale_down_twice() {
        // Old scaled 4 -> 3 a moment ago but still reports 4 available; the new one has 2 pods,
        // 1 available. Really available: 3 + 1 = 4; the minimum is 3, so one more may go.
        let step = rolling_step(4, 1, 1, (2, 1), &[(3, 4)], 5);
        assert_eq!(step.old, vec![(0, 2)]);
        // Nothing available yet on the new side and the old one at the minimum: nothing goes.
        let step = rolling_step(4, 1, 1, (1, 0), &[(3, 4)], 4);
        assert_eq!(step.old, vec![]);
    }

    #[test]
    fn template_hashes_are_stable_and_ignore_their_own_label() {
        let mut t = PodTemplateSpec::default();
        let a = template_hash(&t);
        t.metadata.get_or_insert_with(Default::default).labels.insert(HASH_LABEL.into(), a.clone());
        assert_eq!(template_hash(&t), a);
        t.spec.get_or_insert_with(Default::default).hostname = "x".into();
        assert_ne!(template_hash(&t), a);
        assert_eq!(a.len(), 10);
    }
}
