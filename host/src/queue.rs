//! The bounded, fail-open queue between ingest and the pipeline worker.
//!
//! In: whole batches of events from ingest connections (`push`, one lock per batch; it never
//! waits). Out: chunks for the pipeline worker (`pop`, async). When full, `on_full` decides
//! whether the oldest queued events or the newest arrivals are dropped; every drop is counted
//! as `queue_full`. Each admitted event gets a place in a running sequence so that a `flush`
//! can wait for "everything admitted before me". `close` lets the worker drain what is left and
//! then see the end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::OnFull;
use crate::event::Event;
use crate::metrics::{DropReason, Metrics};

/// A chunk taken by the worker: the events and the sequence range they covered.
pub struct Chunk {
    pub events: Vec<Event>,
    /// Every event admitted before this sequence number has now left the queue.
    pub upto: u64,
}

struct Inner {
    items: VecDeque<Event>,
    /// Events ever admitted (the sequence number of the next one).
    admitted: u64,
}

/// The bounded in-memory queue between ingest and the pipeline worker.
pub struct Queue {
    inner: Mutex<Inner>,
    capacity: AtomicUsize,
    on_full: Mutex<OnFull>,
    ready: Notify,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(capacity: usize, on_full: OnFull, metrics: Arc<Metrics>) -> Queue {
        metrics.queue_capacity.set(capacity as i64);
        Queue {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(capacity.min(1 << 16)),
                admitted: 0,
            }),
            capacity: AtomicUsize::new(capacity),
            on_full: Mutex::new(on_full),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            metrics,
        }
    }

    /// Applies new limits (a config reload). A smaller capacity takes effect on the next push.
    pub fn reconfigure(&self, capacity: usize, on_full: OnFull) {
        self.capacity.store(capacity, Ordering::Relaxed);
        *self.on_full.lock() = on_full;
        self.metrics.queue_capacity.set(capacity as i64);
    }

    /// Admits a batch without waiting. Returns how many of the batch's *last* events were
    /// refused (only with `drop_newest`); drops of older queued events are only counted.
    pub fn push(&self, mut events: Vec<Event>) -> usize {
        if events.is_empty() {
            return 0;
        }
        let cap = self.capacity.load(Ordering::Relaxed);
        let on_full = *self.on_full.lock();
        // Evicted events are freed after the lock is released, not while others wait on it.
        let mut evicted_events: Vec<Event> = Vec::new();
        let (refused, evicted, depth) = {
            let mut q = self.inner.lock();
            let mut refused = 0;
            let mut evicted = 0;
            match on_full {
                OnFull::DropNewest => {
                    let room = cap.saturating_sub(q.items.len());
                    if events.len() > room {
                        refused = events.len() - room;
                        evicted_events = events.split_off(room);
                    }
                }
                OnFull::DropOldest => {
                    if events.len() > cap {
                        // More than fits at all: only the newest `cap` survive.
                        let skip = events.len() - cap;
                        evicted += skip;
                        events.drain(..skip);
                        q.admitted += skip as u64;
                    }
                    let over = (q.items.len() + events.len()).saturating_sub(cap);
                    if over > 0 {
                        evicted_events.extend(q.items.drain(..over));
                        evicted += over;
                    }
                }
            }
            q.admitted += events.len() as u64;
            q.items.extend(events);
            (refused, evicted, q.items.len())
        };
        self.metrics
            .dropped(DropReason::QueueFull, (refused + evicted) as u64);
        self.metrics.queue_depth.set(depth as i64);
        self.ready.notify_one();
        drop(evicted_events);
        refused
    }

    /// The sequence number the next admitted event will get: a `flush` waits for this.
    pub fn admitted(&self) -> u64 {
        self.inner.lock().admitted
    }

    /// Takes up to `max` events, waiting while the queue is empty. `None` once closed and empty.
    pub async fn pop(&self, max: usize) -> Option<Chunk> {
        loop {
            let notified = self.ready.notified();
            if let Some(chunk) = self.try_pop(max) {
                return Some(chunk);
            }
            if self.closed.load(Ordering::Acquire) {
                // Re-check after seeing `closed`, so a last push is not missed.
                return self.try_pop(max);
            }
            notified.await;
        }
    }

    /// Takes up to `max` events without waiting.
    pub fn try_pop(&self, max: usize) -> Option<Chunk> {
        let mut q = self.inner.lock();
        if q.items.is_empty() {
            return None;
        }
        let n = max.min(q.items.len());
        let events: Vec<Event> = q.items.drain(..n).collect();
        let upto = q.admitted - q.items.len() as u64;
        self.metrics.queue_depth.set(q.items.len() as i64);
        Some(Chunk { events, upto })
    }

    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// No more pushes will come: the worker drains what is left and then gets `None`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Line, parse_owned};

    fn ev(i: usize) -> Event {
        match parse_owned(format!(r#"{{"type":"t","data":{i}}}"#).as_bytes(), 1024) {
            Ok(Line::Event(e)) => e,
            _ => unreachable!(),
        }
    }

    fn evs(r: std::ops::Range<usize>) -> Vec<Event> {
        r.map(ev).collect()
    }

    #[tokio::test]
    async fn drop_oldest_keeps_newest_and_counts() {
        let m = Arc::new(Metrics::new());
        let q = Queue::new(3, OnFull::DropOldest, m.clone());
        assert_eq!(q.push(evs(0..2)), 0);
        assert_eq!(q.push(evs(2..5)), 0);
        let c = q.pop(10).await.unwrap();
        let data: Vec<_> = c.events.iter().map(|e| e.data_str().to_string()).collect();
        assert_eq!(data, ["2", "3", "4"]);
        assert_eq!(c.upto, 5);
        assert_eq!(m.dropped_count(DropReason::QueueFull), 2);
    }

    #[tokio::test]
    async fn drop_newest_refuses_tail() {
        let m = Arc::new(Metrics::new());
        let q = Queue::new(3, OnFull::DropNewest, m.clone());
        assert_eq!(q.push(evs(0..2)), 0);
        assert_eq!(q.push(evs(2..5)), 2);
        let c = q.pop(10).await.unwrap();
        let data: Vec<_> = c.events.iter().map(|e| e.data_str().to_string()).collect();
        assert_eq!(data, ["0", "1", "2"]);
        assert_eq!(c.upto, 3);
        assert_eq!(q.admitted(), 3);
        assert_eq!(m.dropped_count(DropReason::QueueFull), 2);
    }

    #[tokio::test]
    async fn close_drains_then_ends() {
        let m = Arc::new(Metrics::new());
        let q = Arc::new(Queue::new(10, OnFull::DropOldest, m));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop(1).await.map(|c| c.events.len()) });
        tokio::task::yield_now().await;
        q.push(evs(0..2));
        assert_eq!(waiter.await.unwrap(), Some(1));
        q.close();
        assert_eq!(q.pop(10).await.map(|c| c.events.len()), Some(1));
        assert!(q.pop(10).await.is_none());
    }
}
