//! Events: what happened to an object, for `rkctl describe` and `rkctl get events`. Repeats of
//! one event (same object, reason and message) update a single Event's count and last
//! timestamp instead of piling up. The API server writes events under a store lease, so they
//! expire `--event-ttl` (an hour) after their last write.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::api::v1::{Event, EventSource, ObjectReference};
use crate::api::{self, Object};
use crate::client::{Api, Client};

/// How long events are kept.
pub const EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// (involved object uid, reason, message) -> the Event's name.
type Seen = HashMap<(String, String, String), String>;

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    /// (uid, reason, message) -> event name, for this process's repeats.
    seen: Arc<Mutex<Seen>>,
}

impl Recorder {
    pub fn new(client: &Client, component: &str) -> Self {
        Recorder { client: client.clone(), component: component.into(), seen: Default::default() }
    }

    pub async fn normal<K: Object>(&self, obj: &K, reason: &str, message: &str) {
        self.record(obj, "Normal", reason, message).await
    }

    pub async fn warning<K: Object>(&self, obj: &K, reason: &str, message: &str) {
        self.record(obj, "Warning", reason, message).await
    }

    /// Records an event; failures are logged, never returned: an event is never worth failing
    /// the work it describes.
    pub async fn record<K: Object>(&self, obj: &K, kind: &str, reason: &str, message: &str) {
        let meta = obj.meta();
        let ns = if meta.namespace.is_empty() { "default".to_string() } else { meta.namespace.clone() };
        let events = Api::<Event>::namespaced(&self.client, &ns);
        let id = (meta.uid.clone(), reason.to_string(), message.to_string());
        let existing = self.seen.lock().get(&id).cloned();
        let now = api::time::now();
        if let Some(name) = existing {
            if let Ok(Some(mut ev)) = events.get_opt(&name).await {
                ev.count += 1;
                ev.last_timestamp = now.clone();
                if events.update(&ev).await.is_ok() {
                    return;
                }
            }
        }
        let mut ev = Event {
            involved_object: Some(ObjectReference {
                kind: K::KIND.into(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
                api_version: K::API_VERSION.into(),
                resource_version: meta.resource_version.clone(),
                field_path: String::new(),
            }),
            reason: reason.into(),
            message: message.into(),
            source: Some(EventSource { component: self.component.clone(), host: String::new() }),
            first_timestamp: now.clone(),
            last_timestamp: now,
            count: 1,
            r#type: kind.into(),
            reporting_component: self.component.clone(),
            ..Default::default()
        };
        ev.meta_mut().namespace = ns;
        ev.meta_mut().generate_name = format!("{}.", meta.name);
        match events.create(&ev).await {
            Ok(made) => {
                let mut seen = self.seen.lock();
                if seen.len() > 10_000 {
                    seen.clear();
                }
                seen.insert(id, made.meta().name.clone());
            }
            Err(e) => tracing::debug!(reason, error = %e, "recording an event"),
        }
    }
}
