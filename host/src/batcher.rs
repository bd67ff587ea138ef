//! The batcher: cuts the events that leave the plugins into batches for the sinks.
//!
//! In: events one at a time ([`Batcher::push`]) and, after each chunk taken from the queue, the
//! sequence number that chunk reached ([`Batcher::settle`]). Out: a [`Cut`] when the open batch
//! reaches `max_events` or `max_bytes` (returned by `push`), or when the pipeline asks for one
//! because `interval` has passed since its first event, a flush was requested, the routing is
//! about to change, or the pipeline is ending ([`Batcher::take`]). Every cut carries `upto`:
//! everything admitted before it has either been cut or dropped, which is what sink progress
//! (and so Weave `flush`) is measured by. It owns no task and no timer: the pipeline sleeps
//! until [`Batcher::deadline`].

use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::event::Event;

/// A batch cut for the sinks.
#[derive(Debug)]
pub struct Cut {
    /// The events, in the order they were pushed.
    pub events: Vec<Event>,
    /// Once this batch is delivered, everything admitted before this sequence is done.
    pub upto: u64,
    /// Once this batch is delivered (or safely spooled), nothing admitted before this
    /// sequence is needed any more: not in the pipeline, not held by the tail stage. At most
    /// `upto`; what the write-ahead log may be trimmed to (see [`Batcher::hold_floor`]).
    pub floor: u64,
}

/// The open batch and the limits that cut it.
pub struct Batcher {
    cfg: BatchConfig,
    events: Vec<Event>,
    bytes: usize,
    /// When the open batch got its first event.
    since: Option<Instant>,
    /// Everything admitted before this has been pushed (or dropped before the batcher).
    settled: u64,
    /// The `upto` of the last cut.
    sent: u64,
    /// Nothing before this is held anywhere before the batcher (see [`Batcher::hold_floor`]).
    floor: u64,
}

impl Batcher {
    /// An empty batcher with these limits.
    pub fn new(cfg: BatchConfig) -> Batcher {
        Batcher {
            events: Vec::with_capacity(cfg.max_events.min(1 << 16)),
            cfg,
            bytes: 0,
            since: None,
            settled: 0,
            sent: 0,
            floor: 0,
        }
    }

    /// New limits; they apply to the open batch too (its deadline moves with `interval`).
    pub fn reconfigure(&mut self, cfg: BatchConfig) {
        self.cfg = cfg;
    }

    /// The limits in force.
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Adds one event; returns the batch when this event filled it. A batch cut in the middle
    /// of a chunk only settles what was settled before that chunk began.
    pub fn push(&mut self, event: Event) -> Option<Cut> {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.bytes += event.encoded_len();
        self.events.push(event);
        let full =
            self.events.len() >= self.cfg.max_events || self.bytes as u64 >= self.cfg.max_bytes.0;
        full.then(|| self.cut(self.settled))
    }

    /// Everything admitted before `upto` has now been pushed (the end of a chunk).
    pub fn settle(&mut self, upto: u64) {
        self.settled = self.settled.max(upto);
    }

    /// When the open batch is due by `interval`; `None` while it is empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|t| t + self.cfg.interval.0)
    }

    /// True when the open batch has waited `interval`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// True when a cut would carry something: events, or progress the sinks have not heard of
    /// (events admitted and then dropped before the batcher still move a `flush` along).
    pub fn has_news(&self) -> bool {
        !self.events.is_empty() || self.settled > self.sent
    }

    /// Everything admitted before this has been pushed (or dropped before the batcher).
    pub fn settled(&self) -> u64 {
        self.settled
    }

    /// The `upto` of the last cut: everything before it has gone to the sinks.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Number of events in the open batch.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when the open batch has no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Says that no event before `floor` is held before the batcher any more (the pipeline
    /// measures it between steps: the oldest event the tail stage holds, else `settled`).
    /// Every later cut carries at most this as its `floor`. It never goes back.
    pub fn hold_floor(&mut self, floor: u64) {
        self.floor = self.floor.max(floor);
    }

    /// Cuts the open batch now (possibly empty: then it only carries progress).
    pub fn take(&mut self) -> Cut {
        self.cut(self.settled)
    }

    fn cut(&mut self, upto: u64) -> Cut {
        let cap = self.cfg.max_events.min(1 << 16);
        let events = std::mem::replace(&mut self.events, Vec::with_capacity(cap));
        self.bytes = 0;
        self.since = None;
        self.sent = self.sent.max(upto);
        Cut {
            events,
            upto: self.sent,
            floor: self.floor.min(self.sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, Size};
    use crate::event::{Line, parse_owned};
    use std::time::Duration;

    fn ev(data: &str) -> Event {
        let line = format!(r#"{{"type":"t","data":"{data}"}}"#);
        match parse_owned(line.as_bytes(), 1 << 20) {
            Ok(Line::Event(e)) => e,
            _ => unreachable!(),
        }
    }

    fn cfg(max_events: usize, max_bytes: u64, interval_ms: u64) -> BatchConfig {
        BatchConfig {
            max_events,
            max_bytes: Size(max_bytes),
            interval: Dur(Duration::from_millis(interval_ms)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_by_count_and_settles_only_finished_chunks() {
        let mut b = Batcher::new(cfg(2, 1 << 20, 1000));
        b.settle(10);
        assert!(b.push(ev("a")).is_none());
        let cut = b.push(ev("b")).expect("full at 2");
        assert_eq!(cut.events.len(), 2);
        // The chunk that is being pushed (up to 12) is not finished: only 10 is settled.
        assert_eq!(cut.upto, 10);
        assert!(b.push(ev("c")).is_none());
        b.settle(12);
        let cut = b.take();
        assert_eq!((cut.events.len(), cut.upto), (1, 12));
        assert!(!b.has_news());
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_by_bytes() {
        let one = ev(&"x".repeat(100)).encoded_len() as u64;
        let mut b = Batcher::new(cfg(1000, one * 3, 1000));
        assert!(b.push(ev(&"x".repeat(100))).is_none());
        assert!(b.push(ev(&"x".repeat(100))).is_none());
        let cut = b.push(ev(&"x".repeat(100))).expect("full by bytes");
        assert_eq!(cut.events.len(), 3);
        assert!(b.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_runs_from_the_first_event_and_follows_reconfigure() {
        let mut b = Batcher::new(cfg(100, 1 << 20, 1000));
        assert_eq!(b.deadline(), None);
        tokio::time::advance(Duration::from_millis(500)).await;
        let first = Instant::now();
        b.push(ev("a"));
        tokio::time::advance(Duration::from_millis(400)).await;
        b.push(ev("b"));
        assert_eq!(b.deadline(), Some(first + Duration::from_millis(1000)));
        assert!(!b.is_due(Instant::now()));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(b.is_due(Instant::now()));
        // A shorter interval applies to the open batch.
        b.reconfigure(cfg(100, 1 << 20, 100));
        assert_eq!(b.deadline(), Some(first + Duration::from_millis(100)));
        b.take();
        assert_eq!(b.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_without_events_is_news() {
        let mut b = Batcher::new(cfg(100, 1 << 20, 1000));
        assert!(!b.has_news());
        // Events admitted and sampled out before the batcher still count for a flush.
        b.settle(5);
        assert!(b.has_news());
        let cut = b.take();
        assert!(cut.events.is_empty());
        assert_eq!((cut.upto, b.sent()), (5, 5));
        assert!(!b.has_news());
    }
}
