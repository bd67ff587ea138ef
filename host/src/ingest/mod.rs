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
    /// Breakpoints: every admitted batch is checked while one is set.
    pub debugger: Option<Arc<Debugger>>,
}

/// The outcome of admitting a batch.
pub struct Admitted {
    /// How many of the batch's last events the queue refused (`drop_newest` when full).
    pub refused: usize,
}

impl Admission {
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes.load(Ordering::Relaxed)
    }

    /// Counts and queues a batch from `source` (`socket`, `http`). Never waits.
    pub fn admit(&self, source: &prometheus::IntCounter, mut events: Vec<Event>) -> Admitted {
        if events.is_empty() {
            return Admitted { refused: 0 };
        }
        crate::event::assign_ids(&mut events);
        source.inc_by(events.len() as u64);
        if !self.enabled.load(Ordering::Relaxed) {
            self.metrics
                .dropped(DropReason::Disabled, events.len() as u64);
            return Admitted { refused: 0 };
        }
        if let Some(obs) = &self.observer {
            obs(&events);
        }
        if let Some(d) = &self.debugger {
            d.observe(&events);
        }
        Admitted {
            refused: self.queue.push(events),
        }
    }

    /// [`Admission::admit`] for a debug connection: also the holds of `pause` breakpoints on
    /// its events (their indices in `events`). The events are queued before anything waits.
    pub fn admit_debug(
        &self,
        source: &prometheus::IntCounter,
        mut events: Vec<Event>,
        conn: &DebugConn,
    ) -> (Admitted, Vec<(usize, Hold)>) {
        if events.is_empty() {
            return (Admitted { refused: 0 }, Vec::new());
        }
        crate::event::assign_ids(&mut events);
        source.inc_by(events.len() as u64);
        if !self.enabled.load(Ordering::Relaxed) {
            self.metrics
                .dropped(DropReason::Disabled, events.len() as u64);
            return (Admitted { refused: 0 }, Vec::new());
        }
        if let Some(obs) = &self.observer {
            obs(&events);
        }
        let holds = match &self.debugger {
            Some(d) => d.holds(&events, conn),
            None => Vec::new(),
        };
        let refused = self.queue.push(events);
        (Admitted { refused }, holds)
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
