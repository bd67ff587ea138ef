//! The bounded, fail-open queue between ingest and the pipeline worker.
//!
//! In: whole batches of events from ingest connections (`push`, one lock per batch; it never
//! waits). Out: chunks for the pipeline worker (`pop`, async). When full, `on_full` decides
//! whether the oldest queued events or the newest arrivals are dropped; every drop is counted
//! as `queue_full`. Each admitted event gets a place in a running sequence so that a `flush`
//! can wait for "everything admitted before me"; the number is kept in [`Event::seq`]. With the
//! durable queue ([`crate::wal`]) the sequence continues across restarts ([`Queue::start_at`])
//! and events read back from the log keep theirs ([`Queue::push_replayed`], which waits for
//! room instead of dropping). `close` lets the worker drain what is left and then see the end.
//!
//! With a [`LostFilter`] set ([`Queue::set_lost_filter`], by tail sampling), each dropped event
//! is shown to the filter (on the ingest thread that dropped it, outside the queue's lock);
//! what it says matters (a run's closing event, one that matched a keep policy) comes out as
//! a small [`Lost`] mark with the chunk it would have been in (`Chunk::lost_before` and
//! `lost_after`, at most four queues' worth of marks), so that the tail stage can still close or keep
//! the run instead of holding it open until `idle`. The events stay counted as `queue_full`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::OnFull;
use crate::event::Event;
use crate::metrics::{DropReason, Metrics};

/// Room for marks kept allocated between bursts.
const MARKS_KEPT: usize = 1024;

/// What the tail needs to know of a dropped event of a run.
#[derive(Debug)]
pub struct Lost {
    pub run: Arc<str>,
    /// The first `keep` policy it matched, by name.
    pub policy: Option<Arc<str>>,
    /// It matched `end_when`.
    pub ends: bool,
    pub received: std::time::Instant,
}

/// Says which dropped events matter, and what of them (see the module docs).
pub trait LostFilter: Send + Sync {
    fn classify(&self, e: &Event) -> Option<Lost>;
}

/// Where [`Queue::push_seq`] put a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The sequence number of the batch's first event.
    pub first: u64,
    /// How many of the batch's first events were dropped at once (`drop_oldest`, a batch
    /// larger than the whole queue); counted `queue_full`.
    pub skipped: usize,
    /// How many of the batch's last events were refused (`drop_newest`).
    pub refused: usize,
}

/// A chunk taken by the worker: the events and the sequence range they covered.
pub struct Chunk {
    pub events: Vec<Event>,
    /// Marks of dropped events that came before `events`, oldest first.
    pub lost_before: Vec<Lost>,
    /// Marks of dropped events that came after `events` (refused by `drop_newest`).
    pub lost_after: Vec<Lost>,
    /// Every event admitted before this sequence number has now left the queue.
    pub upto: u64,
}

struct Inner {
    items: VecDeque<Event>,
    /// Events ever admitted (the sequence number of the next one).
    admitted: u64,
    /// Marks of dropped events, each with the number of admitted events before it.
    lost: VecDeque<(u64, Lost)>,
}

/// The bounded in-memory queue between ingest and the pipeline worker.
pub struct Queue {
    inner: Mutex<Inner>,
    capacity: AtomicUsize,
    on_full: Mutex<OnFull>,
    ready: Notify,
    closed: AtomicBool,
    lost_filter: parking_lot::RwLock<Option<Arc<dyn LostFilter>>>,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(capacity: usize, on_full: OnFull, metrics: Arc<Metrics>) -> Queue {
        metrics.queue_capacity.set(capacity as i64);
        Queue {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(capacity.min(1 << 16)),
                admitted: 0,
                lost: VecDeque::new(),
            }),
            capacity: AtomicUsize::new(capacity),
            on_full: Mutex::new(on_full),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            lost_filter: parking_lot::RwLock::new(None),
            metrics,
        }
    }

    /// Applies new limits (a config reload). A smaller capacity takes effect on the next push.
    pub fn reconfigure(&self, capacity: usize, on_full: OnFull) {
        self.capacity.store(capacity, Ordering::Relaxed);
        *self.on_full.lock() = on_full;
        self.metrics.queue_capacity.set(capacity as i64);
    }

    /// Sets (or, with `None`, removes) the filter that dropped events are shown to.
    pub fn set_lost_filter(&self, f: Option<Arc<dyn LostFilter>>) {
        let same = match (&*self.lost_filter.read(), &f) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let off = f.is_none();
        *self.lost_filter.write() = f;
        if off {
            self.inner.lock().lost.clear();
        }
    }

    /// Admits a batch without waiting. Returns how many of the batch's *last* events were
    /// refused (only with `drop_newest`); drops of older queued events are only counted.
    pub fn push(&self, events: Vec<Event>) -> usize {
        self.push_seq(events).refused
    }

    /// [`Queue::push`], saying which sequence numbers the batch got: event `i` of the batch
    /// got `first + i`; those in `skipped..len - refused` are queued.
    pub fn push_seq(&self, mut events: Vec<Event>) -> Pushed {
        if events.is_empty() {
            return Pushed {
                first: self.admitted(),
                skipped: 0,
                refused: 0,
            };
        }
        let cap = self.capacity.load(Ordering::Relaxed);
        let on_full = *self.on_full.lock();
        let filter = self.lost_filter.read().clone();
        // Evicted events are freed (and shown to the filter) after the lock is released, not
        // while others wait on it; with a filter, each with its place in the sequence.
        let mut evicted_events: Vec<(u64, Event)> = Vec::new();
        let (refused, evicted, depth, first, skipped) = {
            let mut q = self.inner.lock();
            let q = &mut *q;
            let first = q.admitted;
            for (i, e) in events.iter_mut().enumerate() {
                e.seq = first + i as u64;
            }
            let mut refused = 0;
            let mut evicted = 0;
            let mut skipped = 0;
            match on_full {
                OnFull::DropNewest => {
                    let room = cap.saturating_sub(q.items.len());
                    if events.len() > room {
                        refused = events.len() - room;
                        let at = q.admitted + room as u64;
                        for e in events.split_off(room) {
                            evicted_events.push((at, e));
                        }
                    }
                }
                OnFull::DropOldest => {
                    // Oldest first: the queued events, then the batch's head.
                    let skip = events.len().saturating_sub(cap);
                    skipped = skip;
                    let over = (q.items.len() + events.len() - skip).saturating_sub(cap);
                    for e in q.items.drain(..over) {
                        evicted_events.push((e.seq, e));
                    }
                    // More than fits at all: only the newest `cap` of the batch survive.
                    for (i, e) in events.drain(..skip).enumerate() {
                        evicted_events.push((q.admitted + i as u64, e));
                    }
                    q.admitted += skip as u64;
                    evicted += over + skip;
                }
            }
            q.admitted += events.len() as u64;
            q.items.extend(events);
            (refused, evicted, q.items.len(), first, skipped)
        };
        self.metrics
            .dropped(DropReason::QueueFull, (refused + evicted) as u64);
        self.metrics.queue_depth.set(depth as i64);
        self.ready.notify_one();
        if let Some(f) = filter {
            let marks: Vec<(u64, Lost)> = evicted_events
                .iter()
                .filter(|(_, e)| e.run_id.is_some())
                .filter_map(|(at, e)| Some((*at, f.classify(e)?)))
                .collect();
            drop(evicted_events);
            if !marks.is_empty() {
                let mut q = self.inner.lock();
                let room = (cap * 4).max(4096).saturating_sub(q.lost.len());
                q.lost.extend(marks.into_iter().take(room));
            }
        } else {
            drop(evicted_events);
        }
        Pushed {
            first,
            skipped,
            refused,
        }
    }

    /// Queues events read back from the write-ahead log, keeping their sequence numbers
    /// (ascending, above everything queued; gaps are fine). Waits for room instead of
    /// dropping: a replay is never lost to a full queue.
    pub async fn push_replayed(&self, events: Vec<Event>) {
        let mut rest = events.into_iter().peekable();
        while rest.peek().is_some() {
            let room = self.capacity().saturating_sub(self.len());
            if room == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
            let depth = {
                let mut q = self.inner.lock();
                for e in rest.by_ref().take(room) {
                    q.admitted = q.admitted.max(e.seq + 1);
                    q.items.push_back(e);
                }
                q.items.len()
            };
            self.metrics.queue_depth.set(depth as i64);
            self.ready.notify_one();
        }
    }

    /// Continues the sequence at `seq` (never backwards): the write-ahead log's next record.
    pub fn start_at(&self, seq: u64) {
        let mut q = self.inner.lock();
        q.admitted = q.admitted.max(seq);
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
        let start = q.items.front().map_or(q.admitted, |e| e.seq);
        let n = max.min(q.items.len());
        let events: Vec<Event> = q.items.drain(..n).collect();
        let upto = q.items.front().map_or(q.admitted, |e| e.seq);
        self.metrics.queue_depth.set(q.items.len() as i64);
        // Before the chunk (`Some(true)`), after it (`Some(false)`), or not yet. Counted
        // first, so that each vector is allocated once at its size (a burst is tens of
        // thousands of marks).
        let side = |at: u64| (at <= upto).then_some(at <= start);
        let (mut before, mut after) = (0, 0);
        for b in q.lost.iter().map_while(|(at, _)| side(*at)) {
            if b { before += 1 } else { after += 1 }
        }
        let (mut lost_before, mut lost_after) =
            (Vec::with_capacity(before), Vec::with_capacity(after));
        while let Some(b) = q.lost.front().and_then(|(at, _)| side(*at)) {
            let to = if b { &mut lost_before } else { &mut lost_after };
            to.push(q.lost.pop_front().unwrap().1);
        }
        if q.lost.is_empty() && q.lost.capacity() > MARKS_KEPT {
            // A burst of marks (many runs' closing events dropped at once) leaves no room
            // behind it.
            q.lost = VecDeque::new();
        }
        Some(Chunk {
            events,
            lost_before,
            lost_after,
            upto,
        })
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

    fn run_ev(i: usize) -> Event {
        let line = format!(r#"{{"type":"t","run_id":"r{i}","data":{i}}}"#);
        match parse_owned(line.as_bytes(), 1024) {
            Ok(Line::Event(e)) => e,
            _ => unreachable!(),
        }
    }

    fn data(v: &[Event]) -> Vec<String> {
        v.iter().map(|e| e.data_str().to_string()).collect()
    }

    /// Marks every dropped event of a run as closing it.
    struct Every;
    impl LostFilter for Every {
        fn classify(&self, e: &Event) -> Option<Lost> {
            Some(Lost {
                run: e.run_id.clone()?,
                policy: None,
                ends: true,
                received: e.received,
            })
        }
    }

    fn runs(v: &[Lost]) -> Vec<String> {
        v.iter().map(|l| l.run.to_string()).collect()
    }

    #[tokio::test]
    async fn marks_of_dropped_events_come_out_in_order_when_asked_for() {
        let m = Arc::new(Metrics::new());
        let q = Queue::new(3, OnFull::DropOldest, m.clone());
        q.set_lost_filter(Some(Arc::new(Every)));
        q.push((0..2).map(run_ev).collect());
        // 0 and 1 are evicted, then 2 of this batch is skipped (more than fits): all three
        // come before the chunk, oldest first; an event without a run is only counted.
        let mut b: Vec<Event> = (2..6).map(run_ev).collect();
        b.insert(1, ev(99));
        q.push(b);
        let c = q.pop(10).await.unwrap();
        assert_eq!(runs(&c.lost_before), ["r0", "r1", "r2"]);
        assert!(c.lost_after.is_empty());
        assert_eq!(data(&c.events), ["3", "4", "5"]);
        assert_eq!(m.dropped_count(DropReason::QueueFull), 4);

        let q = Queue::new(3, OnFull::DropNewest, m.clone());
        q.set_lost_filter(Some(Arc::new(Every)));
        q.push((0..2).map(run_ev).collect());
        q.push((2..5).map(run_ev).collect());
        // 3 and 4 were refused after 2: they come after the chunk that ends with 2.
        let c = q.pop(2).await.unwrap();
        assert!(c.lost_before.is_empty() && c.lost_after.is_empty());
        let c = q.pop(2).await.unwrap();
        assert_eq!(data(&c.events), ["2"]);
        assert_eq!(runs(&c.lost_after), ["r3", "r4"]);

        // A burst of marks, once taken, leaves no room allocated.
        let q = Queue::new(10_000, OnFull::DropOldest, m.clone());
        q.set_lost_filter(Some(Arc::new(Every)));
        q.push((0..30_000).map(run_ev).collect());
        assert!(q.inner.lock().lost.capacity() >= 20_000);
        let c = q.pop(10).await.unwrap();
        assert_eq!(c.lost_before.len(), 20_000);
        assert_eq!(q.inner.lock().lost.capacity(), 0);

        // Without a filter nothing is kept.
        let q = Queue::new(1, OnFull::DropOldest, m);
        q.push((0..3).map(run_ev).collect());
        let c = q.pop(10).await.unwrap();
        assert!(c.lost_before.is_empty());
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
