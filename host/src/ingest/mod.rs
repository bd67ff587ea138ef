//! Ingest: where events enter, and admission, the checks every entry point shares.
//!
//! In: NDJSON over the unix socket ([`socket`]), `POST /v1/events` ([`http`]) and OpenTelemetry
//! exports over OTLP/HTTP and OTLP/gRPC ([`otlp`]). Out: whole
//! batches admitted into the [`Queue`], and an answer for every line. Admission applies the kill
//! switch (accept and drop, counted `disabled`), counts what arrives and what is malformed
//! (`invalid`), checks breakpoints (`control::debug`), and never waits on the queue. Every listener stops on the shutdown token.

pub mod http;
pub mod otlp;
pub mod socket;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::control::debug::{DebugConn, Debugger, Hold};
use crate::event::Event;
use crate::metrics::{DropReason, Metrics};
use crate::pipeline::FlushRequests;
use crate::queue::Queue;
use crate::sinks::Progress;
use crate::wal::Wal;

/// Sees every admitted batch before it is queued (live tail, run views).
pub type Observer = Arc<dyn Fn(&[Event]) + Send + Sync>;

/// What every ingest path shares.
pub struct Admission {
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    /// The kill switch (`enabled`), live.
    pub enabled: AtomicBool,
    pub max_line_bytes: AtomicUsize,
    pub flush: Arc<FlushRequests>,
    pub progress: Arc<Progress>,
    /// Optional observer of every admitted batch (the live tail and run views).
    pub observer: Option<Observer>,
    /// The write-ahead log (`queue.durable`): with it, `admit` resolves once the batch is in
    /// the log, so that every path answers only then.
    pub wal: Option<Arc<Wal>>,
    /// Breakpoints: every admitted batch is checked while one is set.
    pub debugger: Option<Arc<Debugger>>,
}

/// The outcome of admitting a batch.
#[derive(Debug, Default)]
pub struct Admitted {
    /// How many of the batch's last events the queue refused (`drop_newest` when full).
    pub refused: usize,
    /// Why they were refused, when it is not the in-memory queue: the answer's text.
    pub reason: Option<&'static str>,
    /// The write-ahead log could not take the batch: every event not refused is answered
    /// with this error (it is queued all the same and may still be delivered).
    pub error: Option<String>,
}

impl Admitted {
    /// The answer for a refused event.
    pub fn refusal(&self) -> &'static str {
        self.reason.unwrap_or("queue full: event dropped")
    }
}

impl Admission {
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes.load(Ordering::Relaxed)
    }

    /// Counts and queues a batch from `source` (`socket`, `http`). Never waits on the queue;
    /// with a write-ahead log it resolves once the batch is in the log (by `fsync`), and the
    /// caller answers only then.
    pub async fn admit(&self, source: &prometheus::IntCounter, events: Vec<Event>) -> Admitted {
        let Some(events) = self.prepare(source, events) else {
            return Admitted::default();
        };
        if let Some(d) = &self.debugger {
            d.observe(&events);
        }
        self.enqueue(events).await
    }

    /// [`Admission::admit`] for a debug connection: also the holds of `pause` breakpoints on
    /// its events (their indices in `events`). The events are queued before anything waits.
    pub async fn admit_debug(
        &self,
        source: &prometheus::IntCounter,
        events: Vec<Event>,
        conn: &DebugConn,
    ) -> (Admitted, Vec<(usize, Hold)>) {
        let Some(events) = self.prepare(source, events) else {
            return (Admitted::default(), Vec::new());
        };
        let holds = match &self.debugger {
            Some(d) => d.holds(&events, conn),
            None => Vec::new(),
        };
        (self.enqueue(events).await, holds)
    }

    /// Ids, the source's count, the kill switch and the observer: what every batch goes
    /// through before it is queued. `None` when nothing is left to queue.
    fn prepare(
        &self,
        source: &prometheus::IntCounter,
        mut events: Vec<Event>,
    ) -> Option<Vec<Event>> {
        if events.is_empty() {
            return None;
        }
        crate::event::assign_ids(&mut events);
        source.inc_by(events.len() as u64);
        if !self.enabled.load(Ordering::Relaxed) {
            self.metrics
                .dropped(DropReason::Disabled, events.len() as u64);
            return None;
        }
        if let Some(obs) = &self.observer {
            obs(&events);
        }
        Some(events)
    }

    /// Into the write-ahead log (which queues once logged) or straight into the queue.
    async fn enqueue(&self, events: Vec<Event>) -> Admitted {
        if let Some(wal) = &self.wal {
            let a = wal.append(&self.queue, events).await;
            return Admitted {
                refused: a.refused,
                reason: a.reason,
                error: a.error,
            };
        }
        Admitted {
            refused: self.queue.push(events),
            ..Admitted::default()
        }
    }

    /// Counts malformed lines.
    pub fn invalid(&self, n: usize) {
        self.metrics.dropped(DropReason::Invalid, n as u64);
    }

    /// Waits until everything admitted so far has been delivered (or handled) by every sink.
    /// False when that took longer than `timeout`.
    pub async fn flush(&self, timeout: std::time::Duration) -> bool {
        let target = self.queue.admitted();
        self.flush.request(target);
        tokio::time::timeout(timeout, self.progress.wait_for(target))
            .await
            .is_ok()
    }
}
