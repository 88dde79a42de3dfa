//! `rkctl rollout status|history|undo`, decided from a Deployment and its ReplicaSets as
//! Kubernetes keeps them: each revision is a ReplicaSet controlled by the Deployment, numbered
//! by its `deployment.kubernetes.io/revision` annotation.

use crate::api::v1::*;
use crate::api::{controller_of, Object};

use super::table::Table;

pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
/// The label the Deployment controller adds to each ReplicaSet's pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Where a rollout stands: a line to print, and whether it is done. An error when it cannot
/// finish (its progress deadline passed). Follows kubectl's rollout status.
pub fn status(d: &Deployment) -> Result<(String, bool), String> {
    let name = &d.meta().name;
    let st = d.status.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    if d.meta().generation > st.observed_generation {
        return Ok(("Waiting for deployment spec update to be observed...".into(), false));
    }
    let progressing = st.conditions.iter().find(|c| c.r#type == "Progressing");
    if progressing.is_some_and(|c| c.reason == "ProgressDeadlineExceeded") {
        return Err(format!("deployment {name:?} exceeded its progress deadline"));
    }
    let want = spec.replicas.unwrap_or(1);
    if st.updated_replicas < want {
        return Ok((
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} out of {want} new replicas have been updated...",
                st.updated_replicas
            ),
            false,
        ));
    }
    if st.replicas > st.updated_replicas {
        return Ok((
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
                st.replicas - st.updated_replicas
            ),
            false,
        ));
    }
    if st.available_replicas < st.updated_replicas {
        return Ok((
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} of {} updated replicas are available...",
                st.available_replicas, st.updated_replicas
            ),
            false,
        ));
    }
    Ok((format!("deployment {name:?} successfully rolled out"), true))
}

/// A ReplicaSet's revision number, if it has one.
pub fn revision(rs: &ReplicaSet) -> Option<i64> {
    rs.meta().annotations.get(REVISION_ANNOTATION)?.parse().ok()
}

/// The ReplicaSets that `d` controls, with their revisions, oldest first.
pub fn revisions<'a>(d: &Deployment, sets: &'a [ReplicaSet]) -> Vec<(i64, &'a ReplicaSet)> {
    let mut out: Vec<(i64, &ReplicaSet)> = sets
        .iter()
        .filter(|rs| {
            controller_of(rs.meta()).is_some_and(|o| {
                o.kind == "Deployment" && o.name == d.meta().name && (o.uid.is_empty() || o.uid == d.meta().uid)
            })
        })
        .filter_map(|rs| Some((revision(rs)?, rs)))
        .collect();
    out.sort_by_key(|(r, _)| *r);
    out
}

/// `rollout history`: REVISION and CHANGE-CAUSE of every revision.
pub fn history(d: &Deployment, sets: &[ReplicaSet]) -> Table {
    let mut t = Table::new(&["REVISION", "CHANGE-CAUSE"]);
    for (rev, rs) in revisions(d, sets) {
        let cause = rs.meta().annotations.get(CHANGE_CAUSE_ANNOTATION).cloned().unwrap_or_else(|| "<none>".into());
        t.push(vec![rev.to_string(), cause]);
    }
    t
}

/// What `rollout undo` does to `d`.
#[derive(Debug, Clone, PartialEq)]
pub enum Undo {
    /// Put this template back.
    RollBack(Box<PodTemplateSpec>),
    /// The deployment already runs that revision's template.
    Skip(i64),
}

/// The template of revision `to` (0: the one before the current), without the
/// pod-template-hash label.
pub fn undo(d: &Deployment, sets: &[ReplicaSet], to: i64) -> Result<Undo, String> {
    let name = &d.meta().name;
    let revs = revisions(d, sets);
    if revs.is_empty() {
        return Err(format!("no rollout history found for deployment {name:?}"));
    }
    let target = if to == 0 {
        match revs.len() {
            1 => return Err(format!("no rollout history found for deployment {name:?}: only one revision")),
            n => revs[n - 2],
        }
    } else {
        *revs
            .iter()
            .find(|(r, _)| *r == to)
            .ok_or_else(|| format!("unable to find specified revision {to} in history"))?
    };
    let mut template = target.1.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    if let Some(m) = template.metadata.as_mut() {
        m.labels.remove(POD_TEMPLATE_HASH);
    }
    let current = d.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    if current == template {
        return Ok(Undo::Skip(target.0));
    }
    Ok(Undo::RollBack(Box::new(template)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, observed: i64, replicas: i32, st: DeploymentStatus) -> Deployment {
        let mut d = Deployment {
            spec: Some(DeploymentSpec { replicas: Some(replicas), ..Default::default() }),
            status: Some(DeploymentStatus { observed_generation: observed, ..st }),
            ..Default::default()
        };
        d.meta_mut().name = "web".into();
        d.meta_mut().uid = "u1".into();
        d.meta_mut().generation = generation;
        d
    }

    #[test]
    fn rollout_status_follows_kubectl() {
        let st = |replicas, updated, available| DeploymentStatus {
            replicas,
            updated_replicas: updated,
            available_replicas: available,
            ..Default::default()
        };
        let cases = [
            (deployment(2, 1, 3, st(3, 3, 3)), "Waiting for deployment spec update to be observed...", false),
            (
                deployment(2, 2, 3, st(3, 1, 1)),
                "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...",
                false,
            ),
            (
                deployment(2, 2, 3, st(4, 3, 3)),
                "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...",
                false,
            ),
            (
                deployment(2, 2, 3, st(3, 3, 2)),
                "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...",
                false,
            ),
            (deployment(2, 2, 3, st(3, 3, 3)), "deployment \"web\" successfully rolled out", true),
        ];
        for (d, msg, done) in cases {
            assert_eq!(status(&d), Ok((msg.to_string(), done)));
        }
        let mut d = deployment(1, 1, 1, st(1, 0, 0));
        d.status.as_mut().expect("status").conditions.push(DeploymentCondition {
            r#type: "Progressing".into(),
            reason: "ProgressDeadlineExceeded".into(),
            ..Default::default()
        });
        assert_eq!(status(&d), Err("deployment \"web\" exceeded its progress deadline".into()));
    }

    fn rs(name: &str, rev: i64, owner_uid: &str, image: &str) -> ReplicaSet {
        let mut r = ReplicaSet {
            spec: Some(ReplicaSetSpec {
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: [("app".to_string(), "web".to_string()), (POD_TEMPLATE_HASH.into(), name.into())]
                            .into(),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container { name: "c".into(), image: image.into(), ..Default::default() }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        r.meta_mut().name = name.into();
        r.meta_mut().annotations.insert(REVISION_ANNOTATION.into(), rev.to_string());
        r.meta_mut().owner_references.push(OwnerReference {
            kind: "Deployment".into(),
            name: "web".into(),
            uid: owner_uid.into(),
            controller: true,
            ..Default::default()
        });
        r
    }

    #[test]
    fn history_and_undo_use_the_owned_replica_sets() {
        let mut d = deployment(3, 3, 1, DeploymentStatus::default());
        let mut r2 = rs("web-b", 2, "u1", "httpd:2");
        r2.meta_mut().annotations.insert(CHANGE_CAUSE_ANNOTATION.into(), "set image to 2".into());
        let sets = vec![r2.clone(), rs("web-a", 1, "u1", "httpd:1"), rs("other", 7, "u2", "x")];
        assert_eq!(
            history(&d, &sets).render(true),
            "REVISION   CHANGE-CAUSE\n1          <none>\n2          set image to 2\n"
        );
        let Ok(Undo::RollBack(t)) = undo(&d, &sets, 0) else { panic!("expected a rollback") };
        assert_eq!(t.spec.as_ref().expect("spec").containers[0].image, "httpd:1");
        assert!(!t.metadata.as_ref().expect("meta").labels.contains_key(POD_TEMPLATE_HASH));
        d.spec.as_mut().expect("spec").template = Some(*t);
        assert_eq!(undo(&d, &sets, 1), Ok(Undo::Skip(1)));
        assert_eq!(undo(&d, &sets, 7), Err("unable to find specified revision 7 in history".into()));
        assert!(undo(&d, &[], 0).expect_err("no history").contains("no rollout history found"));
    }
}
