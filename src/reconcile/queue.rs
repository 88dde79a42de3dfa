//! A work queue of object keys, as client-go's: a key waiting is queued once however often it is
//! added; a key being reconciled is not handed to a second worker, and if it is added meanwhile
//! it runs again afterwards; failed keys come back after a per-key exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// First retry delay of a failing key, doubled per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(5);
const MAX_RETRY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    waiting: HashSet<String>,
    processing: HashSet<String>,
    /// Added while processing: queue again when done.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
}

#[derive(Clone, Default)]
pub struct WorkQueue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

impl WorkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&self, key: &str) {
        let mut s = self.state.lock();
        if s.processing.contains(key) {
            s.dirty.insert(key.to_string());
            return;
        }
        if s.waiting.insert(key.to_string()) {
            s.queue.push_back(key.to_string());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Adds `key` after `delay`.
    pub fn add_after(&self, key: &str, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let (q, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(&key);
        });
    }

    /// Adds `key` again after its backoff, which doubles with each failure in a row.
    pub fn retry(&self, key: &str) {
        let n = {
            let mut s = self.state.lock();
            let n = s.failures.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = FIRST_RETRY.saturating_mul(1 << (n - 1).min(20)).min(MAX_RETRY);
        self.add_after(key, delay);
    }

    /// Clears `key`'s failure count.
    pub fn forget(&self, key: &str) {
        self.state.lock().failures.remove(key);
    }

    /// Waits for the next key and marks it as being processed; call [`WorkQueue::done`] after.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock();
                if let Some(k) = s.queue.pop_front() {
                    s.waiting.remove(&k);
                    s.processing.insert(k.clone());
                    if !s.queue.is_empty() {
                        self.notify.notify_one();
                    }
                    return k;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` finished; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let again = {
            let mut s = self.state.lock();
            s.processing.remove(key);
            s.dirty.remove(key)
        };
        if again {
            self.add(key);
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_merged_and_never_processed_twice_at_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2, "a duplicate key waits once");
        let k = q.next().await;
        assert_eq!(k, "a");
        q.add("a"); // changed while being reconciled
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty(), "a is not handed out while in flight");
        q.done("a");
        assert_eq!(q.next().await, "a", "a runs again after it is done");
        q.done("a");
        q.done("b");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially() {
        let q = WorkQueue::new();
        q.retry("k");
        q.retry("k");
        q.retry("k"); // third failure: 20 ms
        tokio::time::sleep(Duration::from_millis(4)).await;
        assert!(q.is_empty());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(q.next().await, "k");
    }
}
