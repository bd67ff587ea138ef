//! Delivery: one task per configured sink, fed whole batches by the pipeline worker.
//!
//! In: `Arc<Batch>` on a bounded channel per sink. Out: the events written by the sink;
//! `events_delivered_total{sink}`, `sink_batches_total{sink,result}` and the ingest-to-sink
//! latency. A retryable failure sends the batch, and every later one, to the sink's on-disk
//! spool (`delivery.spool`), which is retried from the front with exponential back-off
//! (`delivery.retry`) so order holds and the pipeline keeps moving; without a spool the batch is
//! retried in place, which pushes back on the pipeline, lets the queue fill and drop (the
//! application is never blocked). Every sink records the sequence number it has delivered up to
//! in [`Progress`], which answers Weave `flush` requests. A sink task ends when its channel
//! closes and its spool is empty, or when the shutdown grace period ends: an in-place batch is
//! then dropped (counted `sink`), a spool stays on disk for the next start.

mod file;
mod http;
mod spool;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{DeliveryConfig, SinkConfig};
use crate::event::Event;
use crate::metrics::{DropReason, Metrics};

pub use file::FileSink;
pub use http::{HttpSink, WeaveSink};
use spool::Spool;

/// A batch on its way to the sinks.
pub struct Batch {
    pub events: Vec<Event>,
    /// Once this batch is delivered, everything admitted before this sequence is done.
    pub upto: u64,
}

/// How a delivery failed: whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0} (will retry)")]
    Retryable(String),
    #[error("{0}")]
    Fatal(String),
}

/// One sink's writer.
enum Writer {
    File(FileSink),
    Stdout(StdoutSink),
    Http(HttpSink),
    Weave(WeaveSink),
}

impl Writer {
    fn open(cfg: &SinkConfig, metrics: &Arc<Metrics>) -> anyhow::Result<Writer> {
        Ok(match cfg {
            SinkConfig::File(c) => Writer::File(FileSink::open(c)?),
            SinkConfig::Stdout(_) => Writer::Stdout(StdoutSink { buf: Vec::new() }),
            SinkConfig::Http(c) => Writer::Http(HttpSink::new(c)?),
            SinkConfig::Weave(c) => Writer::Weave(WeaveSink::new(c, metrics.clone())?),
            SinkConfig::Nats(_) => anyhow::bail!(
                "the nats sink is not implemented in this build; use file, stdout, http or weave"
            ),
        })
    }

    /// Writes a batch; returns how many events it delivered (a Weave sink skips non-call events).
    async fn deliver(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        match self {
            Writer::File(s) => s.write(batch),
            Writer::Stdout(s) => s.write(batch),
            Writer::Http(s) => s.send(batch).await,
            Writer::Weave(s) => s.send(batch).await,
        }
    }

    fn close(&mut self) {
        if let Writer::File(s) = self {
            s.close();
        }
    }
}

struct StdoutSink {
    buf: Vec<u8>,
}

impl StdoutSink {
    fn write(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        use std::io::Write;
        self.buf.clear();
        for e in &batch.events {
            e.write_native(&mut self.buf);
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf)
            .and_then(|_| out.flush())
            .map_err(|e| SinkError::Retryable(format!("stdout: {e}")))?;
        Ok(batch.events.len())
    }
}

/// How far each sink has got, for `flush` answers.
#[derive(Default)]
pub struct Progress {
    sinks: Mutex<Vec<Arc<AtomicU64>>>,
    changed: Notify,
}

impl Progress {
    /// A new sink starts where the others are: it only gets batches sent from now on.
    fn register(&self) -> Arc<AtomicU64> {
        let mut sinks = self.sinks.lock();
        let start = sinks
            .iter()
            .map(|d| d.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        let done = Arc::new(AtomicU64::new(start));
        sinks.push(done.clone());
        done
    }

    fn unregister(&self, done: &Arc<AtomicU64>) {
        self.sinks.lock().retain(|d| !Arc::ptr_eq(d, done));
        self.changed.notify_waiters();
    }

    /// Everything admitted before this sequence has been handled by every sink.
    pub fn watermark(&self) -> u64 {
        self.sinks
            .lock()
            .iter()
            .map(|d| d.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Waits until the watermark reaches `seq`.
    pub async fn wait_for(&self, seq: u64) {
        loop {
            let changed = self.changed.notified();
            if self.watermark() >= seq {
                return;
            }
            changed.await;
        }
    }
}

/// A running sink: its channel and task.
pub struct SinkHandle {
    pub label: String,
    pub config: SinkConfig,
    pub tx: mpsc::Sender<Arc<Batch>>,
    task: JoinHandle<()>,
}

impl SinkHandle {
    /// Closes the channel and waits for the sink to finish what it has.
    pub async fn finish(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            tracing::error!(sink = %self.label, error = %e, "sink task failed");
        }
    }
}

/// Everything a sink task needs besides its config.
#[derive(Clone)]
pub struct SinkContext {
    pub metrics: Arc<Metrics>,
    pub progress: Arc<Progress>,
    pub delivery: DeliveryConfig,
    /// Cancelled when the shutdown grace period is over: stop retrying, count the rest as lost.
    pub abort: CancellationToken,
}

/// Opens a sink and starts its task. `observe_latency`: this sink feeds the latency histogram.
pub fn spawn(
    label: String,
    cfg: SinkConfig,
    ctx: SinkContext,
    observe_latency: bool,
) -> anyhow::Result<SinkHandle> {
    let writer =
        Writer::open(&cfg, &ctx.metrics).map_err(|e| anyhow::anyhow!("sink `{label}`: {e:#}"))?;
    let (tx, rx) = mpsc::channel(4);
    let done = ctx.progress.register();
    let m = &ctx.metrics;
    let c = SinkMetrics {
        delivered: m.events_delivered.with_label_values(&[&label]),
        ok: m.sink_batches.with_label_values(&[&label, "ok"]),
        retry: m.sink_batches.with_label_values(&[&label, "retry"]),
        failed: m.sink_batches.with_label_values(&[&label, "error"]),
    };
    let spool_cfg = &ctx.delivery.spool;
    let spool = match spool_cfg.max_bytes.0 {
        0 => None,
        max => match Spool::open(&spool_cfg.dir, &label, max, ctx.metrics.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(sink = %label, dir = %spool_cfg.dir.display(), error = %e, "no spool: a failing sink will hold up the pipeline");
                None
            }
        },
    };
    let task = SinkTask {
        label: label.clone(),
        writer,
        backoff: ctx.delivery.retry.initial.0,
        ctx,
        done,
        observe_latency,
        c,
        spool,
        attempts: 0,
    };
    let task = tokio::spawn(task.run(rx));
    Ok(SinkHandle {
        label,
        config: cfg,
        tx,
        task,
    })
}

/// Counters for one sink, resolved once.
struct SinkMetrics {
    delivered: prometheus::IntCounter,
    ok: prometheus::IntCounter,
    retry: prometheus::IntCounter,
    failed: prometheus::IntCounter,
}

/// One sink task: delivers batches in order; a failing sink spools (or, without a spool,
/// retries in place, which pushes back on the pipeline).
struct SinkTask {
    label: String,
    writer: Writer,
    ctx: SinkContext,
    done: Arc<AtomicU64>,
    observe_latency: bool,
    c: SinkMetrics,
    spool: Option<Spool>,
    backoff: Duration,
    attempts: u32,
}

/// What became of one delivery attempt.
enum Attempt {
    Done,
    Retry,
}

impl SinkTask {
    /// One attempt; counts success and fatal refusal (the batch is then dropped).
    async fn attempt(&mut self, batch: &Batch) -> Attempt {
        match self.writer.deliver(batch).await {
            Ok(n) => {
                self.c.delivered.inc_by(n as u64);
                self.c.ok.inc();
                if self.attempts > 0 {
                    tracing::info!(sink = %self.label, attempts = self.attempts, "sink recovered");
                }
                self.attempts = 0;
                self.backoff = self.ctx.delivery.retry.initial.0;
                if self.observe_latency {
                    for e in &batch.events {
                        self.ctx
                            .metrics
                            .processing_latency
                            .observe(e.received.elapsed().as_secs_f64());
                    }
                }
                Attempt::Done
            }
            Err(SinkError::Fatal(e)) => {
                self.c.failed.inc();
                self.ctx
                    .metrics
                    .dropped(DropReason::Sink, batch.events.len() as u64);
                tracing::error!(sink = %self.label, events = batch.events.len(), error = %e, "batch refused by sink, dropped");
                Attempt::Done
            }
            Err(SinkError::Retryable(e)) => {
                self.c.retry.inc();
                self.attempts += 1;
                if self.attempts == 1 || self.attempts.is_power_of_two() {
                    tracing::warn!(sink = %self.label, attempts = self.attempts, error = %e, backoff_ms = self.backoff.as_millis() as u64, "delivery failed, retrying");
                }
                Attempt::Retry
            }
        }
    }

    fn next_backoff(&mut self) -> Duration {
        let now = self.backoff;
        self.backoff = (self.backoff * 2)
            .min(self.ctx.delivery.retry.max.0)
            .max(Duration::from_millis(1));
        now
    }

    fn mark_done(&self, upto: u64) {
        self.done.fetch_max(upto, Ordering::AcqRel);
        self.ctx.progress.changed.notify_waiters();
    }

    /// Retries one batch in place until it is delivered or the grace period ends.
    async fn deliver_in_place(&mut self, batch: &Batch) {
        while let Attempt::Retry = self.attempt(batch).await {
            let wait = self.next_backoff();
            let aborted = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = self.ctx.abort.cancelled() => true,
            };
            if aborted {
                self.c.failed.inc();
                self.ctx
                    .metrics
                    .dropped(DropReason::Sink, batch.events.len() as u64);
                tracing::error!(sink = %self.label, events = batch.events.len(), "shutdown grace period over, batch dropped");
                return;
            }
        }
    }

    fn spooling(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Puts a batch at the back of the spool; false when the spool cannot take it.
    fn spool_push(&mut self, batch: &Batch) -> bool {
        let Some(spool) = self.spool.as_mut() else {
            return false;
        };
        match spool.push(batch) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(sink = %self.label, error = %e, "cannot write the spool; retrying in place");
                false
            }
        }
    }

    /// Delivers from the front of the spool until it is empty or a delivery fails.
    async fn drain_spool(&mut self, marker: u64) -> Option<tokio::time::Instant> {
        loop {
            let Some(batch) = self.spool.as_mut().and_then(|s| s.front()) else {
                self.mark_done(marker);
                return None;
            };
            match self.attempt(&batch).await {
                Attempt::Done => {
                    if let Some(s) = self.spool.as_mut() {
                        s.pop_front();
                    }
                    self.mark_done(batch.upto);
                }
                Attempt::Retry => return Some(tokio::time::Instant::now() + self.next_backoff()),
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Arc<Batch>>) {
        let mut retry_at = self.spooling().then(tokio::time::Instant::now);
        // The newest `upto` handed over while the spool was busy: done once it drains.
        let mut marker = 0u64;
        let mut open = true;
        while open || retry_at.is_some() {
            tokio::select! {
                b = rx.recv(), if open => match b {
                    None => open = false,
                    Some(batch) if self.spooling() => {
                        if !batch.events.is_empty() && !self.spool_push(&batch) {
                            self.deliver_in_place(&batch).await;
                        }
                        marker = marker.max(batch.upto);
                    }
                    Some(batch) if batch.events.is_empty() => self.mark_done(batch.upto),
                    Some(batch) => match self.attempt(&batch).await {
                        Attempt::Done => self.mark_done(batch.upto),
                        Attempt::Retry if self.spool_push(&batch) => {
                            marker = batch.upto;
                            retry_at = Some(tokio::time::Instant::now() + self.next_backoff());
                        }
                        Attempt::Retry => {
                            self.deliver_in_place(&batch).await;
                            self.mark_done(batch.upto);
                        }
                    },
                },
                _ = sleep_until(retry_at) => retry_at = self.drain_spool(marker).await,
                _ = self.ctx.abort.cancelled(), if !open => break,
            }
        }
        if let Some(s) = self.spool.as_ref().filter(|s| !s.is_empty()) {
            tracing::warn!(sink = %self.label, events = s.events(), "sink still failing at exit: events stay in the spool for the next start");
        }
        self.writer.close();
        self.ctx.progress.unregister(&self.done);
        tracing::debug!(sink = %self.label, "sink closed");
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
