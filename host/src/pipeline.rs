//! The pipeline worker: queue → native sampler → plugin chain → batcher → sinks.
//!
//! In: chunks popped from the [`Queue`], and the current [`Routing`] (batch limits, sink
//! channels, plugin set) from a watch channel, picked up at a batch boundary so that a reload
//! never splits a batch. Out: `Arc<Batch>` to every sink, when the batch reaches
//! `max_events` or `max_bytes`, when `interval` has passed since its first event, or when a
//! `flush` asks for it. Ends when the queue is closed and drained: the last batch is sent and
//! the worker's sink senders are dropped, which lets the sinks finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::event::Event;
use crate::metrics::{DropReason, Metrics};
use crate::plugins::{Chain, PluginSet};
use crate::queue::Queue;
use crate::sampler::Sampler;
use crate::sinks::Batch;

/// Where batches go and how big they get; replaced as a whole on reload.
#[derive(Clone)]
pub struct Routing {
    pub batch: BatchConfig,
    pub sinks: Vec<mpsc::Sender<Arc<Batch>>>,
    pub plugins: Arc<PluginSet>,
}

/// Requests to deliver everything admitted before a sequence number (Weave `flush`).
#[derive(Default)]
pub struct FlushRequests {
    target: AtomicU64,
    wake: Notify,
}

impl FlushRequests {
    /// Asks the worker to send its open batch once it has taken everything before `seq`.
    pub fn request(&self, seq: u64) {
        self.target.fetch_max(seq, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

pub struct Worker {
    pub queue: Arc<Queue>,
    pub sampler: Arc<Sampler>,
    pub metrics: Arc<Metrics>,
    pub routing: watch::Receiver<Routing>,
    pub flush: Arc<FlushRequests>,
    /// Set while the daemon is over its resource budget: optional plugins are skipped.
    pub over_budget: Arc<AtomicBool>,
}

/// The open batch.
struct Open {
    events: Vec<Event>,
    bytes: usize,
    since: Option<Instant>,
}

impl Worker {
    /// Runs the worker on a thread of its own (with its own single-threaded runtime), so that
    /// busy ingest connections on the shared runtime cannot starve it. The returned receiver
    /// resolves when the worker has drained and ended.
    pub fn spawn(self) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("outrigger-pipeline".into())
            .spawn(move || {
                rt.block_on(self.run());
                let _ = done_tx.send(());
            })?;
        Ok(done_rx)
    }

    pub async fn run(mut self) {
        let mut routing = self.routing.borrow_and_update().clone();
        let mut chain = Chain::new(routing.plugins.clone()).await;
        let mut open = Open {
            events: Vec::with_capacity(routing.batch.max_events),
            bytes: 0,
            since: None,
        };
        // Everything admitted before `taken` has left the queue; before `sent` has gone to the sinks.
        let (mut taken, mut sent) = (0u64, 0u64);
        loop {
            let deadline = open.since.map(|t| t + routing.batch.interval.0);
            let chunk = tokio::select! {
                biased;
                c = self.queue.pop(routing.batch.max_events.min(4096)) => match c {
                    Some(c) => Some(c),
                    None => break,
                },
                _ = sleep_until(deadline) => None,
                _ = self.flush.wake.notified() => None,
            };
            let before = taken;
            if let Some(chunk) = chunk {
                taken = chunk.upto;
                let mut events = chunk.events;
                self.sampler.apply(&mut events);
                if !chain.is_empty() && !events.is_empty() {
                    chain.set_skip_optional(self.over_budget.load(Ordering::Relaxed));
                    events = chain.run(events).await;
                }
                for e in events {
                    open.bytes += e.encoded_len();
                    open.events.push(e);
                    if open.since.is_none() {
                        open.since = Some(Instant::now());
                    }
                    if open.events.len() >= routing.batch.max_events
                        || open.bytes >= routing.batch.max_bytes.0 as usize
                    {
                        // Events taken in this chunk may still be in the next batch.
                        sent = sent.max(before);
                        self.send(&routing, &mut open, before).await;
                    }
                }
            }
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            let asked = self.flush.target.load(Ordering::Acquire) > sent;
            if (due || asked) && (!open.events.is_empty() || taken > sent) {
                sent = taken;
                self.send(&routing, &mut open, taken).await;
            }
            if self.routing.has_changed().unwrap_or(false) {
                // Batch boundary: what is open goes to the sinks it was meant for, then swap.
                if !open.events.is_empty() {
                    sent = taken;
                    self.send(&routing, &mut open, taken).await;
                }
                routing = self.routing.borrow_and_update().clone();
                if !Arc::ptr_eq(&routing.plugins, chain.set()) {
                    chain = Chain::new(routing.plugins.clone()).await;
                }
            }
        }
        self.send(&routing, &mut open, taken).await;
        tracing::debug!("pipeline worker drained");
    }

    /// Sends the open batch (or, when empty, a progress marker) to every sink.
    async fn send(&self, routing: &Routing, open: &mut Open, upto: u64) {
        let events = std::mem::replace(
            &mut open.events,
            Vec::with_capacity(routing.batch.max_events),
        );
        open.bytes = 0;
        open.since = None;
        let n = events.len() as u64;
        let batch = Arc::new(Batch { events, upto });
        for tx in &routing.sinks {
            if tx.send(batch.clone()).await.is_err() {
                // A sink that has gone away cannot take the batch: say so in the counts.
                self.metrics.dropped(DropReason::Sink, n);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending::<()>().await,
    }
}

/// How long `flush` waits for delivery before answering with an error.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
