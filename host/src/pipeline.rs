//! The pipeline worker: queue → native sampler → tail sampler → plugin chain → batcher → sinks.
//!
//! In: chunks popped from the [`Queue`]; the data-plane [`Routing`] (plugin set, batch limits)
//! from a watch channel; [`SinkPlan`]s from the reloader; flush requests. The worker is woken by
//! data, the batch deadline, a flush, or a reload, and applies a reload as soon as it is
//! published: before it processes another chunk, and at once when idle, so that every event
//! admitted after a reload was reported goes through the new chain and the new sinks. What the
//! old routing had batched goes to the old sinks first (a reload never splits a batch between
//! two chains). The tail stage holds events of open runs and hands on whole kept runs, in
//! plugin batches that never split a run that fits in one; the worker also wakes at the tail's
//! deadlines (idle, max duration) and on its notice (a forced keep, a reload). Out: [`Cut`]s to the [`SinkSet`] the worker owns. Ends when the queue is closed
//! and drained: the tail decides every open run, the last batch is sent, the sink set is closed (its senders dropped), and the
//! closing sinks are handed back to be waited for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::batcher::{Batcher, Cut};
use crate::config::BatchConfig;
use crate::metrics::Metrics;
use crate::plugins::{Chain, PluginSet};
use crate::queue::{Chunk, Queue};
use crate::sampler::Sampler;
use crate::sinks::{ClosingSinks, SinkPlan, SinkSet};
use crate::tail::{Released, Tail};

/// The data-plane settings a reload publishes as one: the plugin set and the batch limits.
#[derive(Clone)]
pub struct Routing {
    pub batch: BatchConfig,
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

/// The pipeline worker and everything it reads.
pub struct Worker {
    pub queue: Arc<Queue>,
    pub sampler: Arc<Sampler>,
    pub tail: Tail,
    pub metrics: Arc<Metrics>,
    pub routing: watch::Receiver<Routing>,
    /// New sink sets from the reloader, applied in order.
    pub sink_plans: mpsc::UnboundedReceiver<SinkPlan>,
    /// The running sinks; the worker owns them and closes them when it ends.
    pub sinks: SinkSet,
    pub flush: Arc<FlushRequests>,
    /// Set while the daemon is over its resource budget: optional plugins are skipped.
    pub over_budget: Arc<AtomicBool>,
}

/// What woke the worker.
enum Wake {
    Chunk(Chunk),
    Plan(SinkPlan),
    Routing,
    /// The batch deadline, or the end of a hold.
    Timer,
    /// A flush request: stop holding, take what is queued.
    Flush,
    /// A tail deadline or notice.
    Tail,
    /// The queue is closed and drained.
    Closed,
}

/// The worker's own state: the current chain and the open batch.
struct Running {
    chain: Chain,
    batcher: Batcher,
    /// False once the reloader has gone (shutdown): its channels are no longer polled.
    control_open: bool,
    /// After a small chunk, the queue is left alone until then so that events arriving one by
    /// one are taken a few dozen at a time (one wake per chunk, not per event).
    hold_until: Option<Instant>,
}

/// The most events of released runs given to the plugins in one call.
const PLUGIN_BATCH: usize = 4096;

/// A chunk smaller than this is followed by a hold.
const HOLD_BELOW: usize = 256;
/// The longest hold; never past the open batch's deadline. Reloads and flushes end it at once.
const HOLD: Duration = Duration::from_millis(5);

impl Worker {
    /// Runs the worker on a thread of its own (with its own single-threaded runtime), so that
    /// busy ingest connections on the shared runtime cannot starve it. The receiver resolves
    /// when the worker has drained, with the sinks it closed.
    pub fn spawn(self) -> std::io::Result<oneshot::Receiver<ClosingSinks>> {
        let (done_tx, done_rx) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("outrigger-pipeline".into())
            .spawn(move || {
                let closing = rt.block_on(self.run());
                let _ = done_tx.send(closing);
            })?;
        Ok(done_rx)
    }

    /// Runs until the queue is closed and drained; returns the closed sinks.
    pub async fn run(mut self) -> ClosingSinks {
        let routing = self.routing.borrow_and_update().clone();
        let mut st = Running {
            chain: Chain::new(routing.plugins.clone()).await,
            batcher: Batcher::new(routing.batch),
            control_open: true,
            hold_until: None,
        };
        loop {
            match self.next(&mut st).await {
                Wake::Chunk(chunk) => {
                    // A reload published while this chunk was being taken applies to it.
                    self.apply_changes(&mut st, None, false).await;
                    let small = chunk.events.len() < HOLD_BELOW;
                    self.process(&mut st, chunk).await;
                    st.hold_until = small.then(|| hold_end(Instant::now(), st.batcher.deadline()));
                }
                Wake::Plan(plan) => self.apply_changes(&mut st, Some(plan), false).await,
                // `changed()` marked the new routing as seen: say so.
                Wake::Routing => self.apply_changes(&mut st, None, true).await,
                Wake::Timer => {}
                Wake::Flush => st.hold_until = None,
                Wake::Tail => {
                    let released = self.tail.poll();
                    self.forward(&mut st, released).await;
                }
                Wake::Closed => break,
            }
            self.hold_floor(&mut st);
            self.cut_if_due(&mut st).await;
        }
        // The tail decides its open runs a slice at a time, each forwarded before the next
        // is read back from the spill.
        loop {
            let (released, more) = self.tail.shutdown();
            self.forward(&mut st, released).await;
            if !more {
                break;
            }
        }
        self.hold_floor(&mut st);
        let last = st.batcher.take();
        self.sinks.send(last).await;
        tracing::debug!("pipeline worker drained");
        self.sinks.close()
    }

    /// Waits for data (after the hold, if any), a reload, the batch deadline or a flush
    /// request.
    async fn next(&mut self, st: &mut Running) -> Wake {
        let deadline = st.batcher.deadline();
        let hold = st.hold_until.take().filter(|t| *t > Instant::now());
        let max = st.batcher.config().max_events.min(4096);
        let open = st.control_open;
        let tail_at = self.tail.next_deadline();
        tokio::select! {
            biased;
            r = self.routing.changed(), if open => match r {
                Ok(()) => Wake::Routing,
                Err(_) => {
                    st.control_open = false;
                    Wake::Timer
                }
            },
            p = self.sink_plans.recv(), if open => match p {
                Some(plan) => Wake::Plan(plan),
                None => {
                    st.control_open = false;
                    Wake::Timer
                }
            },
            c = self.queue.pop(max), if hold.is_none() => match c {
                Some(c) => Wake::Chunk(c),
                None => Wake::Closed,
            },
            _ = sleep_until(deadline) => {
                st.hold_until = hold;
                Wake::Timer
            }
            _ = sleep_until(hold), if hold.is_some() => Wake::Timer,
            _ = self.flush.wake.notified() => Wake::Flush,
            _ = sleep_until(tail_at) => {
                st.hold_until = hold;
                Wake::Tail
            }
            _ = self.tail.notified() => {
                st.hold_until = hold;
                Wake::Tail
            }
        }
    }

    /// Applies every published change: the open batch goes to the sinks it was meant for, then
    /// the sink plans (in order) and the routing are swapped in. `routing_seen`: the caller
    /// already consumed the routing's change notice.
    async fn apply_changes(
        &mut self,
        st: &mut Running,
        plan: Option<SinkPlan>,
        routing_seen: bool,
    ) {
        let mut plans: Vec<SinkPlan> = plan.into_iter().collect();
        while let Ok(p) = self.sink_plans.try_recv() {
            plans.push(p);
        }
        let routing_changed = routing_seen || self.routing.has_changed().unwrap_or(false);
        if plans.is_empty() && !routing_changed {
            return;
        }
        if st.batcher.has_news() {
            self.sinks.send(st.batcher.take()).await;
        }
        for p in plans {
            self.sinks.apply(p);
        }
        if routing_changed {
            let r = self.routing.borrow_and_update().clone();
            st.batcher.reconfigure(r.batch);
            if !Arc::ptr_eq(&r.plugins, st.chain.set()) {
                st.chain = Chain::new(r.plugins).await;
            }
        }
    }

    /// Samples a chunk, passes it through the tail stage, runs what that releases through
    /// the plugins and into the batcher.
    async fn process(&mut self, st: &mut Running, chunk: Chunk) {
        let mut events = chunk.events;
        // With tail sampling on, events with a run id are decided with their run instead.
        let tail = self.tail.enabled();
        self.queue.set_lost_filter(self.tail.lost_filter());
        self.lost(st, chunk.lost_before).await;
        self.sampler.apply(&mut events, tail);
        if !tail || events.len() <= TAIL_SLICE {
            let released = self.tail.admit(events);
            self.forward(st, released).await;
        } else {
            // Each closing event can bring a whole run back from the spill: admit a slice at a
            // time, so that what is read back at once stays bounded.
            for slice in slices(events) {
                let released = self.tail.admit(slice);
                self.forward(st, released).await;
            }
        }
        self.lost(st, chunk.lost_after).await;
        st.batcher.settle(chunk.upto);
    }

    /// Shows the tail stage the marks of events the queue dropped, a slice at a time: each
    /// mark can close a run and bring it back from the spill, and a full queue can leave tens
    /// of thousands of marks in one chunk.
    async fn lost(&mut self, st: &mut Running, marks: Vec<crate::queue::Lost>) {
        for slice in slices(marks) {
            let released = self.tail.lost(slice);
            self.forward(st, released).await;
        }
    }

    /// Runs released events through the plugins (whole runs per call where they fit) and
    /// into the batcher.
    async fn forward(&mut self, st: &mut Running, released: Released) {
        if released.events.is_empty() {
            return;
        }
        let batches = if st.chain.is_empty() || released.runs.is_empty() {
            vec![released.events]
        } else {
            released.into_batches(st.batcher.config().max_events.min(PLUGIN_BATCH))
        };
        for mut events in batches {
            if !st.chain.is_empty() && !events.is_empty() {
                st.chain
                    .set_skip_optional(self.over_budget.load(Ordering::Relaxed));
                events = st.chain.run(events).await;
            }
            for e in events {
                if let Some(cut) = st.batcher.push(e) {
                    self.sinks.send(cut).await;
                }
            }
        }
    }

    /// Tells the batcher how far nothing is held before it: the oldest event the tail stage
    /// holds, else everything taken from the queue. Measured only here, between steps, when
    /// no released event is on its way to the batcher; a cut made during a later step carries
    /// this (older, so safe) value. The write-ahead log trims by it (see `wal`).
    fn hold_floor(&self, st: &mut Running) {
        let settled = st.batcher.settled();
        let held = self.tail.oldest_held_seq().unwrap_or(u64::MAX);
        st.batcher.hold_floor(held.min(settled));
    }

    /// Sends the open batch when its interval is over or a flush asked for it.
    async fn cut_if_due(&mut self, st: &mut Running) {
        let due = st.batcher.is_due(Instant::now());
        // A flush cuts once the worker has taken everything admitted before it, so that what
        // a client sent just before its flush goes out in the same batch.
        let target = self.flush.target.load(Ordering::Acquire);
        let asked =
            target > st.batcher.sent() && (st.batcher.settled() >= target || self.queue.is_empty());
        if (due || asked) && st.batcher.has_news() {
            let cut: Cut = st.batcher.take();
            self.sinks.send(cut).await;
        }
    }
}

/// When a hold that starts `now` ends: after [`HOLD`], or at the batch deadline if sooner.
fn hold_end(now: Instant, deadline: Option<Instant>) -> Instant {
    let end = now + HOLD;
    deadline.map_or(end, |d| d.min(end))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending::<()>().await,
    }
}

/// Events (or dropped-event marks) shown to the tail stage at once (see `process`).
const TAIL_SLICE: usize = 256;

/// `items` in slices of at most [`TAIL_SLICE`], in order.
fn slices<T>(items: Vec<T>) -> impl Iterator<Item = Vec<T>> {
    let mut rest = items.into_iter();
    std::iter::from_fn(move || {
        let slice: Vec<T> = rest.by_ref().take(TAIL_SLICE).collect();
        (!slice.is_empty()).then_some(slice)
    })
}

/// How long `flush` waits for delivery before answering with an error.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hold_never_outlasts_the_open_batch() {
        let now = Instant::now();
        assert_eq!(hold_end(now, None), now + HOLD);
        let soon = now + HOLD / 2;
        assert_eq!(hold_end(now, Some(soon)), soon);
        assert_eq!(hold_end(now, Some(now + HOLD * 10)), now + HOLD);
    }
}
