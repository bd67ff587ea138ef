//! One sink's delivery state machine: attempt, retry with back-off, spool, give up.
//!
//! In: `Arc<Batch>` from the sink's channel, in order, and a writer ([`Deliver`]) that makes one
//! attempt at a time. Out: every batch delivered, refused for good (counted `sink`), or, when the
//! shutdown grace period is over, counted `sink` (in-place batch) or left in the spool for the
//! next start. A retryable failure moves the batch, and every later one, to the spool
//! (`delivery.spool`), which is retried from its front with exponential back-off
//! (`delivery.retry`) so that order holds and the pipeline keeps moving; without a spool (or when
//! it cannot be written) the batch is retried in place, which pushes back on the pipeline.
//! Progress (the sequence delivered up to) is published after every batch. The machine ends when
//! its channel closes and the spool is empty, or on `abort` once the channel has closed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::spool::Spool;
use super::{Batch, SinkContext, SinkError, SinkProgress};
use crate::metrics::DropReason;

/// One attempt at writing a batch somewhere.
pub trait Deliver: Send {
    /// Writes the batch; `Ok` carries how many events were delivered (the rest, if any, the
    /// writer has counted as dropped itself).
    fn deliver(
        &mut self,
        batch: &Batch,
    ) -> impl std::future::Future<Output = Result<usize, SinkError>> + Send;

    /// Called once when delivery ends (flush and sync).
    fn close(&mut self) {}
}

/// Counters for one sink, resolved once.
struct SinkMetrics {
    delivered: prometheus::IntCounter,
    ok: prometheus::IntCounter,
    retry: prometheus::IntCounter,
    failed: prometheus::IntCounter,
}

/// What became of one attempt.
enum Attempt {
    Done,
    Retry,
}

/// The state of one sink's delivery.
pub struct Delivery<W: Deliver> {
    label: String,
    writer: W,
    ctx: SinkContext,
    done: Arc<SinkProgress>,
    observe_latency: bool,
    c: SinkMetrics,
    spool: Option<Spool>,
    backoff: Duration,
    attempts: u32,
}

impl<W: Deliver> Delivery<W> {
    /// A delivery for the sink `label`, publishing progress into `done`.
    pub fn new(
        label: String,
        writer: W,
        ctx: SinkContext,
        done: Arc<SinkProgress>,
        spool: Option<Spool>,
        observe_latency: bool,
    ) -> Delivery<W> {
        let m = &ctx.metrics;
        let c = SinkMetrics {
            delivered: m.events_delivered.with_label_values(&[&label]),
            ok: m.sink_batches.with_label_values(&[&label, "ok"]),
            retry: m.sink_batches.with_label_values(&[&label, "retry"]),
            failed: m.sink_batches.with_label_values(&[&label, "error"]),
        };
        Delivery {
            label,
            writer,
            backoff: ctx.delivery.retry.initial.0,
            ctx,
            done,
            observe_latency,
            c,
            spool,
            attempts: 0,
        }
    }

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
                    let h = &self.ctx.metrics.processing_latency;
                    for e in &batch.events {
                        h.observe(e.received.elapsed().as_secs_f64());
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

    /// The wait before the next attempt; doubles up to `retry.max`.
    fn next_backoff(&mut self) -> Duration {
        let now = self.backoff;
        self.backoff = (self.backoff * 2)
            .min(self.ctx.delivery.retry.max.0)
            .max(Duration::from_millis(1));
        now
    }

    /// Everything before `upto` is delivered (or counted), and before `floor` no longer
    /// needed by the write-ahead log.
    fn mark_done(&self, upto: u64, floor: u64) {
        self.done.done.fetch_max(upto, Ordering::AcqRel);
        self.mark_safe(floor);
        self.ctx.progress.changed.notify_waiters();
    }

    /// Nothing before `floor` is needed by the write-ahead log for this sink any more (it is
    /// delivered, counted or in the spool, which outlives a crash).
    fn mark_safe(&self, floor: u64) {
        self.done.safe.fetch_max(floor, Ordering::AcqRel);
    }

    /// Retries one batch in place until it is delivered or the grace period ends.
    /// `failed`: an attempt has just failed, so the first retry waits its back-off.
    async fn deliver_in_place(&mut self, batch: &Batch, mut failed: bool) {
        loop {
            if failed {
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
            match self.attempt(batch).await {
                Attempt::Done => return,
                Attempt::Retry => failed = true,
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

    /// Delivers from the front of the spool until it is empty (then `None`) or an attempt
    /// fails (then the time of the next try).
    async fn drain_spool(&mut self, marker: u64) -> Option<Instant> {
        loop {
            let Some(batch) = self.spool.as_mut().and_then(|s| s.front()) else {
                // What was spooled was marked safe when it was written.
                self.mark_done(marker, 0);
                return None;
            };
            match self.attempt(&batch).await {
                Attempt::Done => {
                    if let Some(s) = self.spool.as_mut() {
                        s.pop_front();
                    }
                    self.mark_done(batch.upto, batch.floor);
                }
                Attempt::Retry => return Some(Instant::now() + self.next_backoff()),
            }
        }
    }

    /// A batch from the channel. Returns the time of the next spool retry, if one is due.
    async fn accept(&mut self, batch: &Batch, marker: &mut u64) -> Option<Instant> {
        if self.spooling() {
            // Behind a spool: keep order by queueing behind it.
            if !batch.events.is_empty() && !self.spool_push(batch) {
                self.deliver_in_place(batch, false).await;
            }
            *marker = (*marker).max(batch.upto);
            self.mark_safe(batch.floor);
            return None;
        }
        if batch.events.is_empty() {
            self.mark_done(batch.upto, batch.floor);
            return None;
        }
        match self.attempt(batch).await {
            Attempt::Done => self.mark_done(batch.upto, batch.floor),
            Attempt::Retry if self.spool_push(batch) => {
                *marker = batch.upto;
                self.mark_safe(batch.floor);
                return Some(Instant::now() + self.next_backoff());
            }
            Attempt::Retry => {
                self.deliver_in_place(batch, true).await;
                self.mark_done(batch.upto, batch.floor);
            }
        }
        None
    }

    /// Runs until the channel is closed and everything is delivered, or `abort` after the
    /// channel closed. Returns the writer, closed.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Arc<Batch>>) -> W {
        let mut retry_at = self.spooling().then(Instant::now);
        // The newest `upto` handed over while the spool was busy: done once it drains.
        let mut marker = 0u64;
        let mut open = true;
        while open || retry_at.is_some() {
            tokio::select! {
                b = rx.recv(), if open => match b {
                    None => open = false,
                    Some(batch) => {
                        if let Some(at) = self.accept(&batch, &mut marker).await {
                            retry_at = Some(at);
                        }
                    }
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
        self.writer
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DeliveryConfig, Dur};
    use crate::event::{Line, parse_owned};
    use crate::metrics::Metrics;
    use crate::sinks::Progress;
    use std::collections::VecDeque;
    use tokio_util::sync::CancellationToken;

    /// A writer that answers from a script of outcomes (then succeeds), recording what it
    /// delivered and when.
    struct Scripted {
        script: VecDeque<Result<(), SinkError>>,
        delivered: Vec<(Duration, Vec<String>)>,
        attempts: Vec<Duration>,
        start: Instant,
        closed: bool,
    }

    impl Scripted {
        fn new(script: Vec<Result<(), SinkError>>) -> Scripted {
            Scripted {
                script: script.into(),
                delivered: Vec::new(),
                attempts: Vec::new(),
                start: Instant::now(),
                closed: false,
            }
        }
    }

    impl Deliver for Scripted {
        async fn deliver(&mut self, batch: &Batch) -> Result<usize, SinkError> {
            let at = self.start.elapsed();
            self.attempts.push(at);
            self.script.pop_front().unwrap_or(Ok(()))?;
            let data = batch.events.iter().map(|e| e.data_str().to_string());
            self.delivered.push((at, data.collect()));
            Ok(batch.events.len())
        }

        fn close(&mut self) {
            self.closed = true;
        }
    }

    fn batch(range: std::ops::Range<u64>) -> Arc<Batch> {
        let events = range
            .clone()
            .map(|i| {
                let line = format!(r#"{{"type":"t","data":{i}}}"#);
                match parse_owned(line.as_bytes(), 1024) {
                    Ok(Line::Event(e)) => e,
                    _ => unreachable!(),
                }
            })
            .collect();
        Arc::new(Batch {
            events,
            upto: range.end,
            floor: range.end,
        })
    }

    struct Rig {
        ctx: SinkContext,
        metrics: Arc<Metrics>,
        progress: Arc<Progress>,
        abort: CancellationToken,
        _dir: tempfile::TempDir,
        spool_dir: std::path::PathBuf,
    }

    fn rig() -> Rig {
        let metrics = Arc::new(Metrics::new());
        let progress = Arc::new(Progress::default());
        let abort = CancellationToken::new();
        let mut delivery = DeliveryConfig::default();
        delivery.retry.initial = Dur(Duration::from_millis(100));
        delivery.retry.max = Dur(Duration::from_millis(800));
        let dir = tempfile::tempdir().unwrap();
        Rig {
            ctx: SinkContext {
                metrics: metrics.clone(),
                progress: progress.clone(),
                delivery,
                abort: abort.clone(),
            },
            metrics,
            progress,
            abort,
            spool_dir: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    fn retry(n: usize) -> Vec<Result<(), SinkError>> {
        (0..n)
            .map(|_| Err(SinkError::Retryable("down".into())))
            .collect()
    }

    fn ms(d: &[Duration]) -> Vec<u128> {
        d.iter().map(|d| d.as_millis()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_spool_a_batch_is_retried_in_place_with_doubling_backoff() {
        let r = rig();
        let done = r.progress.register("s");
        let d = Delivery::new(
            "s".into(),
            Scripted::new(retry(5)),
            r.ctx.clone(),
            done,
            None,
            false,
        );
        let (tx, rx) = mpsc::channel(4);
        tx.send(batch(0..3)).await.unwrap();
        tx.send(batch(3..4)).await.unwrap();
        drop(tx);
        let w = d.run(rx).await;
        // 100, 200, 400, 800, then capped at 800.
        assert_eq!(ms(&w.attempts), [0, 100, 300, 700, 1500, 2300, 2300]);
        assert_eq!(w.delivered.len(), 2);
        assert_eq!(w.delivered[1].1, ["3"]);
        assert!(w.closed);
        let retries = r.metrics.sink_batches.with_label_values(&["s", "retry"]);
        assert_eq!(retries.get(), 5);
        assert_eq!(
            r.metrics.events_delivered.with_label_values(&["s"]).get(),
            4
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_spool_later_batches_queue_behind_it_and_arrive_in_order() {
        let r = rig();
        let done = r.progress.register("s");
        let spool = Spool::open(&r.spool_dir, "s", 1 << 20, r.metrics.clone()).unwrap();
        let d = Delivery::new(
            "s".into(),
            Scripted::new(retry(2)),
            r.ctx.clone(),
            done.clone(),
            Some(spool),
            false,
        );
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(d.run(rx));
        tx.send(batch(0..2)).await.unwrap();
        tx.send(batch(2..3)).await.unwrap();
        tx.send(batch(3..5)).await.unwrap();
        // The channel is not held up by the failing sink: all three were taken at once.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(tx.capacity(), 4);
        assert_eq!(done.done(), 0, "nothing delivered yet");
        drop(tx);
        let w = task.await.unwrap();
        let order: Vec<String> = w.delivered.iter().flat_map(|(_, d)| d.clone()).collect();
        assert_eq!(order, ["0", "1", "2", "3", "4"]);
        // First try at 0, spool retries at 100 and 300 (the second fails again), then drains.
        assert_eq!(ms(&w.attempts), [0, 100, 300, 300, 300]);
        assert_eq!(done.done(), 5);
        assert_eq!(std::fs::read_dir(r.spool_dir.join("s")).unwrap().count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_refusal_drops_the_batch_and_counts_it() {
        let r = rig();
        let done = r.progress.register("s");
        let script = vec![Err(SinkError::Fatal("400 bad request".into()))];
        let d = Delivery::new(
            "s".into(),
            Scripted::new(script),
            r.ctx.clone(),
            done.clone(),
            None,
            false,
        );
        let (tx, rx) = mpsc::channel(4);
        tx.send(batch(0..3)).await.unwrap();
        tx.send(batch(3..4)).await.unwrap();
        drop(tx);
        let w = d.run(rx).await;
        assert_eq!(w.delivered.len(), 1);
        assert_eq!(r.metrics.dropped_count(DropReason::Sink), 3);
        assert_eq!(done.done(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn abort_after_close_drops_an_in_place_batch_and_keeps_a_spool() {
        let r = rig();
        let done = r.progress.register("s");
        let d = Delivery::new(
            "s".into(),
            Scripted::new(retry(1000)),
            r.ctx.clone(),
            done,
            None,
            false,
        );
        let (tx, rx) = mpsc::channel(4);
        tx.send(batch(0..3)).await.unwrap();
        drop(tx);
        let abort = r.abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            abort.cancel();
        });
        d.run(rx).await;
        assert_eq!(r.metrics.dropped_count(DropReason::Sink), 3);

        // With a spool, an abort leaves the batch on disk for the next start.
        let r = rig();
        let done = r.progress.register("s");
        let spool = Spool::open(&r.spool_dir, "s", 1 << 20, r.metrics.clone()).unwrap();
        let d = Delivery::new(
            "s".into(),
            Scripted::new(retry(1000)),
            r.ctx.clone(),
            done,
            Some(spool),
            false,
        );
        let (tx, rx) = mpsc::channel(4);
        tx.send(batch(0..3)).await.unwrap();
        drop(tx);
        r.abort.cancel();
        d.run(rx).await;
        assert_eq!(r.metrics.dropped_count(DropReason::Sink), 0);
        let reopened = Spool::open(&r.spool_dir, "s", 1 << 20, r.metrics.clone()).unwrap();
        assert_eq!(reopened.events(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn empty_batches_only_move_progress() {
        let r = rig();
        let done = r.progress.register("s");
        let d = Delivery::new(
            "s".into(),
            Scripted::new(vec![]),
            r.ctx.clone(),
            done.clone(),
            None,
            false,
        );
        let (tx, rx) = mpsc::channel(4);
        tx.send(Arc::new(Batch {
            events: vec![],
            upto: 7,
            floor: 7,
        }))
        .await
        .unwrap();
        drop(tx);
        let w = d.run(rx).await;
        assert!(w.attempts.is_empty());
        assert_eq!(done.done(), 7);
    }
}
