//! Delivery: one task per configured sink, fed whole batches by the pipeline worker.
//!
//! In: `Arc<Batch>` on a bounded channel per sink (a slow sink pushes back on the worker, which
//! lets the queue fill and drop: the application is never blocked). Out: the events written by
//! the sink; `events_delivered_total{sink}`, `sink_batches_total{sink,result}` and the ingest-to-
//! sink latency. A retryable failure is retried with exponential back-off (`delivery.retry`)
//! until it succeeds or the shutdown grace period ends (then counted as dropped `sink`). Every
//! sink records the sequence number it has finished up to in [`Progress`], which answers Weave
//! `flush` requests. A sink task ends when its channel closes, after flushing and closing.

mod file;
mod http;

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
    fn open(cfg: &SinkConfig) -> anyhow::Result<Writer> {
        Ok(match cfg {
            SinkConfig::File(c) => Writer::File(FileSink::open(c)?),
            SinkConfig::Stdout(_) => Writer::Stdout(StdoutSink { buf: Vec::new() }),
            SinkConfig::Http(c) => Writer::Http(HttpSink::new(c)?),
            SinkConfig::Weave(c) => Writer::Weave(WeaveSink::new(c)?),
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
    let writer = Writer::open(&cfg).map_err(|e| anyhow::anyhow!("sink `{label}`: {e:#}"))?;
    let (tx, rx) = mpsc::channel(4);
    let done = ctx.progress.register();
    let task = tokio::spawn(run(label.clone(), writer, rx, ctx, done, observe_latency));
    Ok(SinkHandle {
        label,
        config: cfg,
        tx,
        task,
    })
}

async fn run(
    label: String,
    mut writer: Writer,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    ctx: SinkContext,
    done: Arc<AtomicU64>,
    observe_latency: bool,
) {
    let m = &ctx.metrics;
    let delivered = m.events_delivered.with_label_values(&[&label]);
    let ok = m.sink_batches.with_label_values(&[&label, "ok"]);
    let retry = m.sink_batches.with_label_values(&[&label, "retry"]);
    let failed = m.sink_batches.with_label_values(&[&label, "error"]);
    while let Some(batch) = rx.recv().await {
        if !batch.events.is_empty() {
            let mut backoff = ctx.delivery.retry.initial.0;
            let mut attempts = 0u32;
            loop {
                match writer.deliver(&batch).await {
                    Ok(n) => {
                        delivered.inc_by(n as u64);
                        ok.inc();
                        if attempts > 0 {
                            tracing::info!(sink = %label, attempts, "sink recovered");
                        }
                        if observe_latency {
                            for e in &batch.events {
                                m.processing_latency
                                    .observe(e.received.elapsed().as_secs_f64());
                            }
                        }
                        break;
                    }
                    Err(SinkError::Fatal(e)) => {
                        failed.inc();
                        m.dropped(DropReason::Sink, batch.events.len() as u64);
                        tracing::error!(sink = %label, events = batch.events.len(), error = %e, "batch refused by sink, dropped");
                        break;
                    }
                    Err(SinkError::Retryable(e)) => {
                        retry.inc();
                        attempts += 1;
                        if attempts == 1 || attempts.is_power_of_two() {
                            tracing::warn!(sink = %label, attempts, error = %e, backoff_ms = backoff.as_millis() as u64, "delivery failed, retrying");
                        }
                        let aborted = tokio::select! {
                            _ = tokio::time::sleep(backoff) => false,
                            _ = ctx.abort.cancelled() => true,
                        };
                        if aborted {
                            failed.inc();
                            m.dropped(DropReason::Sink, batch.events.len() as u64);
                            tracing::error!(sink = %label, events = batch.events.len(), "shutdown grace period over, batch dropped");
                            break;
                        }
                        backoff = (backoff * 2)
                            .min(ctx.delivery.retry.max.0)
                            .max(Duration::from_millis(1));
                    }
                }
            }
        }
        done.fetch_max(batch.upto, Ordering::AcqRel);
        ctx.progress.changed.notify_waiters();
    }
    writer.close();
    ctx.progress.unregister(&done);
    tracing::debug!(sink = %label, "sink closed");
}
