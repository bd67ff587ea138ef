//! Sinks: the set of running sinks, each a task fed whole batches by the pipeline worker.
//!
//! In: [`Cut`]s from the batcher, given to the [`SinkSet`] the pipeline worker owns; and, on a
//! reload, a [`SinkPlan`] that keeps, opens and closes sinks. The set routes each event to the
//! sinks whose `types`/`when` admit it (an event no sink admits is counted `unrouted`) and hands
//! each sink an `Arc<Batch>` on its bounded channel. Every sink runs a [`delivery::Delivery`]
//! (retry, back-off, spool) over its writer (file, stdout, http, weave, otlp, nats) and records in
//! [`Progress`] the sequence it has delivered up to, which answers Weave `flush` requests.
//! Out: events written; `events_delivered_total{sink}`, `sink_batches_total{sink,result}`, the
//! ingest-to-sink latency. The set ends when the worker closes it ([`SinkSet::close`]): that
//! drops every sender, each sink finishes what it holds, and [`ClosingSinks::finish`] waits
//! for them (bounded by the shutdown grace period, after which `abort` stops the retrying).

pub mod delivery;
mod file;
mod http;
pub mod nats;
pub mod otlp;
mod spool;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batcher::Cut;
use crate::config::{DeliveryConfig, SinkConfig};
use crate::event::Event;
use crate::metrics::{DropReason, Metrics};

use delivery::{Deliver, Delivery};
pub use file::FileSink;
pub use http::{HttpSink, WeaveSink};
use spool::Spool;

/// A batch on its way to one sink.
pub struct Batch {
    pub events: Vec<Event>,
    /// Once this batch is delivered, everything admitted before this sequence is done.
    pub upto: u64,
    /// Once this batch is delivered or spooled, the write-ahead log no longer needs anything
    /// before this sequence (see [`Cut::floor`]).
    pub floor: u64,
}

/// How a delivery failed: whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth another attempt (a timeout, a 5xx, a full disk).
    #[error("{0} (will retry)")]
    Retryable(String),
    /// The sink refused the batch for good (a 4xx): it is dropped and counted.
    #[error("{0}")]
    Fatal(String),
}

/// One sink's writer.
enum Writer {
    File(FileSink),
    Stdout(StdoutSink),
    Http(HttpSink),
    Weave(WeaveSink),
    Otlp(otlp::OtlpSink),
    Nats(Box<nats::NatsSink>),
}

impl Writer {
    /// Opens the writer a sink config describes: what `run` and `check` both do.
    fn open(cfg: &SinkConfig, label: &str, metrics: &Arc<Metrics>) -> anyhow::Result<Writer> {
        Ok(match cfg {
            SinkConfig::File(c) => Writer::File(FileSink::open(c)?),
            SinkConfig::Stdout(_) => Writer::Stdout(StdoutSink { buf: Vec::new() }),
            SinkConfig::Http(c) => Writer::Http(HttpSink::new(c)?),
            SinkConfig::Weave(c) => Writer::Weave(WeaveSink::new(c, metrics.clone())?),
            SinkConfig::Otlp(c) => Writer::Otlp(otlp::OtlpSink::new(c, metrics.clone())?),
            SinkConfig::Nats(c) => {
                Writer::Nats(Box::new(nats::NatsSink::new(c, label, metrics.clone())?))
            }
        })
    }
}

impl Deliver for Writer {
    async fn deliver(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        match self {
            Writer::File(s) => s.write(batch),
            Writer::Stdout(s) => s.write(batch),
            Writer::Http(s) => s.send(batch).await,
            Writer::Weave(s) => s.send(batch).await,
            Writer::Otlp(s) => s.send(batch).await,
            Writer::Nats(s) => s.send(batch).await,
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

/// Checks that every sink of `cfg` can be opened, as `run` would open it (without starting it,
/// and without creating a file sink's file).
pub fn check(sinks: &[SinkConfig], metrics: &Arc<Metrics>) -> anyhow::Result<()> {
    for (i, s) in sinks.iter().enumerate() {
        let label = s.label(i);
        // A file sink is checked without creating its file or directories.
        if let SinkConfig::File(c) = s {
            FileSink::check(c).map_err(|e| anyhow::anyhow!("sink `{label}`: {e:#}"))?;
            continue;
        }
        // A nats sink is checked against its server: it answers, and the stream is there.
        if let SinkConfig::Nats(c) = s {
            block_on(nats::check(c, &label))
                .and_then(|r| r)
                .map_err(|e| anyhow::anyhow!("sink `{label}`: {e:#}"))?;
            continue;
        }
        let mut w = Writer::open(s, &label, metrics)
            .map_err(|e| anyhow::anyhow!("sink `{label}`: {e:#}"))?;
        w.close();
    }
    Ok(())
}

/// Runs `f` to completion from synchronous code: on the current runtime when there is one
/// (`check` runs inside `block_in_place`), else on a runtime of its own.
fn block_on<F>(f: F) -> anyhow::Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            Ok(tokio::task::block_in_place(|| h.block_on(f)))
        }
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join())
                .map_err(|_| anyhow::anyhow!("the check panicked"))?)
        }
    }
}

/// How far one sink has got.
pub struct SinkProgress {
    pub label: String,
    /// Everything admitted before this has been delivered (or refused for good, counted).
    done: AtomicU64,
    /// Nothing before this is needed by the write-ahead log for this sink: delivered, counted,
    /// or written to its on-disk spool (see [`Batch::floor`]).
    safe: AtomicU64,
}

impl SinkProgress {
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    pub fn safe(&self) -> u64 {
        self.safe.load(Ordering::Acquire)
    }
}

/// How far each sink has got, for `flush` answers and the write-ahead log's trim.
#[derive(Default)]
pub struct Progress {
    sinks: Mutex<Vec<Arc<SinkProgress>>>,
    /// The `safe` of the last sink to go (shutdown): the log's floor once no sink runs.
    retired: AtomicU64,
    changed: Notify,
}

impl Progress {
    /// A new sink starts where the others are: it only gets batches sent from now on.
    fn register(&self, label: &str) -> Arc<SinkProgress> {
        let mut sinks = self.sinks.lock();
        let start = sinks.iter().map(|d| d.done()).min().unwrap_or(0);
        let safe = sinks.iter().map(|d| d.safe()).min().unwrap_or(0);
        let p = Arc::new(SinkProgress {
            label: label.to_string(),
            done: AtomicU64::new(start),
            safe: AtomicU64::new(safe),
        });
        sinks.push(p.clone());
        p
    }

    fn unregister(&self, done: &Arc<SinkProgress>) {
        let mut sinks = self.sinks.lock();
        sinks.retain(|d| !Arc::ptr_eq(d, done));
        if sinks.is_empty() {
            self.retired.fetch_max(done.safe(), Ordering::AcqRel);
        }
        drop(sinks);
        self.changed.notify_waiters();
    }

    /// Everything admitted before this sequence has been handled by every sink.
    pub fn watermark(&self) -> u64 {
        self.sinks
            .lock()
            .iter()
            .map(|d| d.done())
            .min()
            .unwrap_or(u64::MAX)
    }

    /// What the write-ahead log may be trimmed to: the least `safe` of the running sinks (or,
    /// once none runs, of the last one). `None` before any sink has run.
    pub fn safe_floor(&self) -> Option<u64> {
        let sinks = self.sinks.lock();
        match sinks.iter().map(|d| d.safe()).min() {
            Some(f) => Some(f),
            None => Some(self.retired.load(Ordering::Acquire)).filter(|f| *f > 0),
        }
    }

    /// Each running sink's label and `safe` sequence (the write-ahead log's cursors).
    pub fn cursors(&self) -> Vec<(String, u64)> {
        self.sinks
            .lock()
            .iter()
            .map(|d| (d.label.clone(), d.safe()))
            .collect()
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

/// Everything a sink task needs besides its config.
#[derive(Clone)]
pub struct SinkContext {
    pub metrics: Arc<Metrics>,
    pub progress: Arc<Progress>,
    pub delivery: DeliveryConfig,
    /// Cancelled when the shutdown grace period is over: stop retrying, count the rest as lost.
    pub abort: CancellationToken,
}

/// A running sink: its label, routing, channel and task.
pub struct SinkHandle {
    pub label: String,
    pub config: SinkConfig,
    tx: mpsc::Sender<Arc<Batch>>,
    task: JoinHandle<()>,
}

impl SinkHandle {
    /// Opens a sink and starts its task. `observe_latency`: this sink feeds the latency
    /// histogram (the first sink does).
    pub fn spawn(
        label: String,
        cfg: SinkConfig,
        ctx: SinkContext,
        observe_latency: bool,
    ) -> anyhow::Result<SinkHandle> {
        let writer = Writer::open(&cfg, &label, &ctx.metrics)
            .map_err(|e| anyhow::anyhow!("sink `{label}`: {e:#}"))?;
        let (tx, rx) = mpsc::channel(4);
        let done = ctx.progress.register(&label);
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
        let delivery = Delivery::new(label.clone(), writer, ctx, done, spool, observe_latency);
        let task = tokio::spawn(async move {
            delivery.run(rx).await;
        });
        Ok(SinkHandle {
            label,
            config: cfg,
            tx,
            task,
        })
    }

    /// Closes the channel; the sink finishes what it was given. The task is returned to wait on.
    fn close(self) -> (String, JoinHandle<()>) {
        drop(self.tx);
        (self.label, self.task)
    }
}

/// What the sink set should become on a reload, in the new order.
pub struct SinkPlan {
    pub sinks: Vec<PlannedSink>,
}

/// One sink of a [`SinkPlan`].
pub enum PlannedSink {
    /// The running sink with this label stays as it is.
    Keep(String),
    /// A sink opened by the reloader, started and waiting for batches.
    Open(Box<SinkHandle>),
}

/// The running sinks, owned by the pipeline worker.
pub struct SinkSet {
    sinks: Vec<SinkHandle>,
    /// True when every sink takes every event: one shared batch, no filtering.
    all: bool,
    metrics: Arc<Metrics>,
    /// Sinks closed by a reload that may still be delivering.
    closing: Vec<(String, JoinHandle<()>)>,
}

impl SinkSet {
    /// A set of started sinks.
    pub fn new(sinks: Vec<SinkHandle>, metrics: Arc<Metrics>) -> SinkSet {
        let mut set = SinkSet {
            sinks,
            all: true,
            metrics,
            closing: Vec::new(),
        };
        set.all = set.sinks.iter().all(|s| s.config.route().is_all());
        set
    }

    /// Number of running sinks.
    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    /// True with no sink (never after a valid config, which needs one).
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Applies a plan: kept sinks stay, new ones join, the rest are closed (they deliver what
    /// they were given, then end).
    pub fn apply(&mut self, plan: SinkPlan) {
        let mut old: Vec<Option<SinkHandle>> = self.sinks.drain(..).map(Some).collect();
        for p in plan.sinks {
            match p {
                PlannedSink::Open(h) => self.sinks.push(*h),
                PlannedSink::Keep(label) => {
                    let found = old
                        .iter_mut()
                        .find(|h| h.as_ref().is_some_and(|h| h.label == label))
                        .and_then(Option::take);
                    match found {
                        Some(h) => self.sinks.push(h),
                        None => {
                            tracing::error!(sink = %label, "reload kept a sink that is not running")
                        }
                    }
                }
            }
        }
        for h in old.into_iter().flatten() {
            tracing::debug!(sink = %h.label, "sink closed by reload");
            self.closing.push(h.close());
        }
        self.closing.retain(|(_, t)| !t.is_finished());
        self.all = self.sinks.iter().all(|s| s.config.route().is_all());
    }

    /// Sends a cut to every sink that admits its events. An empty cut still moves every sink's
    /// progress. Waits while a sink's channel is full (pushing back on the pipeline).
    pub async fn send(&self, cut: Cut) {
        let Cut {
            mut events,
            upto,
            floor,
        } = cut;
        // Everything ingested has its id; this gives one to any event made inside the host.
        crate::event::assign_ids(&mut events);
        if self.all {
            let n = events.len() as u64;
            let batch = Arc::new(Batch {
                events,
                upto,
                floor,
            });
            for s in &self.sinks {
                if s.tx.send(batch.clone()).await.is_err() {
                    // A sink that has gone away cannot take the batch: say so in the counts.
                    self.metrics.dropped(DropReason::Sink, n);
                }
            }
            return;
        }
        let mut routed: Vec<Vec<Event>> = vec![Vec::new(); self.sinks.len()];
        let mut unrouted = 0u64;
        for e in events {
            let mut to: Option<usize> = None;
            for (i, s) in self.sinks.iter().enumerate() {
                if s.config.route().admits(&e, &self.metrics)
                    && let Some(prev) = to.replace(i)
                {
                    routed[prev].push(e.clone());
                }
            }
            match to {
                Some(i) => routed[i].push(e),
                None => unrouted += 1,
            }
        }
        self.metrics.dropped(DropReason::Unrouted, unrouted);
        for (s, events) in self.sinks.iter().zip(routed) {
            let n = events.len() as u64;
            let batch = Arc::new(Batch {
                events,
                upto,
                floor,
            });
            if s.tx.send(batch).await.is_err() {
                self.metrics.dropped(DropReason::Sink, n);
            }
        }
    }

    /// Closes every sink (their channels end once this set's senders are gone) and returns
    /// the tasks to wait for.
    pub fn close(self) -> ClosingSinks {
        let mut tasks = self.closing;
        tasks.extend(self.sinks.into_iter().map(SinkHandle::close));
        ClosingSinks { tasks }
    }
}

/// Sinks whose channels are closed, finishing what they hold.
pub struct ClosingSinks {
    tasks: Vec<(String, JoinHandle<()>)>,
}

impl ClosingSinks {
    /// Waits for every sink to finish.
    pub async fn finish(self) {
        for (label, t) in self.tasks {
            if let Err(e) = t.await {
                tracing::error!(sink = %label, error = %e, "sink task failed");
            }
        }
    }
}
