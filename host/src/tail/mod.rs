//! Run-level tail sampling (SPEC "Run-level tail sampling"): hold each run until it closes,
//! then keep it whole or drop it whole.
//!
//! In: the events the native sampler kept, one chunk at a time, from the pipeline worker
//! ([`Tail::admit`]); forced keeps from the control API ([`Tail::keep`]); reloaded settings
//! ([`Reconfigure`]). An event with a `run_id` is held with the rest of its run until the run
//! closes: its `end_when` event, `idle`, `max_duration`, a forced keep, turning tail sampling
//! off, or shutdown. The run is then decided once: kept when any of its events matched a `keep`
//! policy (the first in order names why), else kept at `else_rate` by a hash of the run id
//! (the same run gets the same answer in every process), else dropped whole (counted
//! `sampled_out`). Events of a decided run that arrive later follow the remembered decision.
//! Out: [`Released`] events, in arrival order within each run, each kept event carrying
//! `outrigger.kept_by`; events without a run pass straight through.
//!
//! Memory is bounded by the bytes actually held (the held events' blocks in the tail's own
//! [`pool`] and its resident free pages, the run records and indexes in [`open`], the
//! remembered decisions and the runs view): past
//! `max_bytes` the largest open runs are written to spill segments ([`spill`]), one chain per
//! run, and read back in order when decided; when the spill is off,
//! full or failing, the oldest open runs are decided early (`kept_by` gets `/early`). A run
//! past `max_run_bytes` is decided early on its own. Decided runs go to the [`runs::RunsView`]
//! for `GET /v1/runs`. Holds no task: the worker calls [`Tail::poll`] at
//! [`Tail::next_deadline`] and when [`Tail::notified`] fires, and [`Tail::shutdown`] at the
//! end, which decides every open run by what it holds.

pub mod open;
pub mod pool;
pub mod runs;
pub mod spill;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Maps keyed by run id (or its hash): foldhash, a fast seeded hash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::condition::Condition;
use crate::config::{Config, TailConfig};
use crate::event::{Event, Line};
use crate::memory::Trimmer;
use crate::metrics::{DropReason, Metrics};
use crate::queue::{Lost, LostFilter};
use crate::reload::Reconfigure;
use crate::sampler::{fnv1a, unit};
use open::{OpenRuns, Record, RunId};
use pool::{Blocks, Pool};
use runs::{RunSummary, RunsBounds, RunsView, Stored, TypeCounts};
use spill::{Chain, SpillError, SpillStore};

/// The attribute on every event of a kept run: why it was kept.
pub const KEPT_BY: &str = "outrigger.kept_by";

/// Why a run is decided now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// Its `end_when` event.
    End,
    Idle,
    MaxDuration,
    Forced,
    /// Memory: over `max_run_bytes`, or the oldest open run past `max_bytes`.
    Early,
    Shutdown,
    /// Tail sampling was turned off by a reload.
    Off,
}

/// What one open run may hold in memory whatever the config (see `hold`).
const MAX_HELD_BYTES: usize = 1 << 31;

/// Lines written to the spill per system call, at most (a spill of many small runs is one
/// write per this many bytes, not one per run).
const SPILL_WRITE_BYTES: usize = 256 << 10;
/// Events one call releases, about (a run goes whole), from runs closed by time, by stopping
/// or by turning the stage off. A hundred thousand runs closing at once (the daemon stopping,
/// `idle` after a burst) would otherwise come back from the spill into memory together; the
/// worker calls again at once for the rest.
const RELEASE_EVENTS: usize = 4096;

/// Events the tail stage hands on, in order, and where each whole kept run lies in them.
#[derive(Default, Debug)]
pub struct Released {
    pub events: Vec<Event>,
    /// The kept runs (index ranges into `events`); the other events pass through on their own.
    pub runs: Vec<Range<usize>>,
}

impl Released {
    /// Plugin batches of at most `max` events that never split a run that fits in one.
    pub fn into_batches(self, max: usize) -> Vec<Vec<Event>> {
        let max = max.max(1);
        let mut out = Vec::new();
        let mut cur: Vec<Event> = Vec::new();
        let mut it = self.events.into_iter();
        let mut pos = 0usize;
        let mut take = |n: usize, cur: &mut Vec<Event>, out: &mut Vec<Vec<Event>>| {
            for e in it.by_ref().take(n) {
                cur.push(e);
                if cur.len() >= max {
                    out.push(std::mem::take(cur));
                }
            }
        };
        for r in self.runs {
            take(r.start.saturating_sub(pos), &mut cur, &mut out);
            if !cur.is_empty() && cur.len() + r.len() > max {
                out.push(std::mem::take(&mut cur));
            }
            take(r.len(), &mut cur, &mut out);
            pos = r.end;
        }
        take(usize::MAX, &mut cur, &mut out);
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }
}

/// What `POST /v1/runs/{id}/keep` did.
#[derive(Debug, PartialEq, Eq)]
pub enum KeepOutcome {
    /// The run was open: it is released, kept, at once.
    Keeping,
    /// Decided already, and kept.
    AlreadyKept,
    /// Decided already, and dropped: its events are gone.
    AlreadyDropped,
    /// No open run has this id, nor a remembered decision.
    Unknown,
    /// Tail sampling is off.
    Disabled,
}

struct OpenRun {
    /// The run id, kept by the tail (see [`OpenRuns`]).
    id: RunId,
    /// Open order (the age index's key).
    seq: u64,
    /// The queue sequence of the run's first event: runs open in queue order, so the oldest
    /// open run holds the oldest event the tail holds (what the write-ahead log keeps).
    first_seq: u64,
    /// The events held in memory, in blocks of the tail's pool.
    held: Blocks,
    held_events: u32,
    /// What the run takes in memory now, as counted in `State::mem`.
    mem: usize,
    /// Spilled chunks (they come before `held`): the last one's place and their segments.
    chain: Option<Chain>,
    spilled_events: u64,
    spilled_bytes: u64,
    events: u64,
    /// Encoded size of every event of the run (held and spilled), for `max_run_bytes`.
    bytes: u64,
    first_ts_ns: u64,
    last_ts_ns: u64,
    opened: Instant,
    last_seen: Instant,
    /// The first policy (in order) that matched any event so far.
    matched: Option<usize>,
    types: TypeCounts,
    /// When the closing event arrived (for the decision latency).
    closing: Option<std::time::Instant>,
    /// Events of the run the queue dropped (`queue_full`), seen by [`Tail::lost`].
    lost: u32,
}

/// What the allocator takes for `n` bytes: glibc's chunks have an 8-byte header and are
/// multiples of 16, at least 32 bytes.
const fn chunk(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let c = (n + 8).next_multiple_of(16);
    if c < 32 { 32 } else { c }
}

impl Record for OpenRun {
    fn id(&self) -> &str {
        self.id.as_str()
    }
    fn id_is(&self, id: &str) -> bool {
        self.id.as_bytes() == id.as_bytes()
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// Bytes of the open runs' records and indexes as the system holds them: the slab of run
/// records, the id and age indexes ([`OpenRuns::bytes`]) and the deadline heap (by capacity).
/// They stay as large as the most runs open at once until [`compact`] shrinks them.
fn index_bytes(st: &State) -> usize {
    st.open.bytes() + deadline_bytes(st)
}

/// What spilling takes while it runs, on top of what it spills from: an entry per open run to
/// choose the largest by, and the lines of a write.
fn spill_work_bytes(st: &State) -> usize {
    if st.spill.is_none() {
        return 0;
    }
    st.open.len() * std::mem::size_of::<(u32, u32)>() + 2 * SPILL_WRITE_BYTES
}

/// The deadline heap, by capacity.
fn deadline_bytes(st: &State) -> usize {
    st.deadlines.capacity() * std::mem::size_of::<Reverse<(Instant, u64)>>()
}

/// Shrinks the open-run indexes after many runs have closed: the deadline heap keeps an entry
/// of a decided run until its time comes (so a million short runs leave a million entries for
/// `idle`), and the slab and the id table keep the size of their largest moment.
fn compact(st: &mut State, now: Instant) {
    if st.deadlines.len() > 2 * st.open.len() + 1024 {
        rebuild_deadlines(st);
    }
    st.open.compact(now);
}

/// One deadline entry per open run, at its current deadline.
fn rebuild_deadlines(st: &mut State) {
    let entries: Vec<Reverse<(Instant, u64)>> = st
        .open
        .iter()
        .map(|(_, r)| Reverse((r.deadline(&st.cfg), r.seq)))
        .collect();
    st.deadlines = entries.into();
}

impl OpenRun {
    /// What the run takes outside its record in the slab (counted with the indexes): its id,
    /// held events, type counts and spill chain.
    fn footprint(&self) -> usize {
        chunk(self.id.heap_bytes())
            + self.held.bytes()
            + chunk(self.types.heap_bytes())
            + self.chain.as_ref().map_or(0, |c| chunk(c.heap_bytes()))
    }

    /// When the run closes by `idle` or `max_duration` if nothing more arrives.
    fn deadline(&self, cfg: &TailConfig) -> Instant {
        (self.last_seen + cfg.idle.0).min(self.opened + cfg.max_duration.0)
    }

    /// Bytes that spilling the run would free.
    fn spillable(&self) -> usize {
        self.held.bytes()
    }

    fn summary(&self) -> RunSummary {
        RunSummary {
            run_id: self.id.as_str().to_string(),
            state: "open",
            kept_by: None,
            events: self.events,
            bytes: self.bytes,
            first_ts_ns: self.first_ts_ns,
            last_ts_ns: self.last_ts_ns,
            types: self.types.to_map(),
            spilled_events: Some(self.spilled_events),
            spilled_bytes: Some(self.spilled_bytes),
            lost_events: (self.lost > 0).then_some(self.lost.into()),
        }
    }
}

/// The tail's policies as the queue's [`LostFilter`]: a dropped event of a run that closes it
/// or matches a keep policy becomes a [`Lost`] mark; the others need nothing.
pub struct LostMarks {
    end_when: Condition,
    keep: Vec<(Arc<str>, Condition)>,
    metrics: Arc<Metrics>,
}

impl LostMarks {
    fn new(cfg: &TailConfig, metrics: &Arc<Metrics>) -> Option<Arc<LostMarks>> {
        cfg.enabled.then(|| {
            Arc::new(LostMarks {
                end_when: cfg.end_when.clone(),
                keep: cfg
                    .keep
                    .iter()
                    .map(|p| (Arc::from(p.name.as_str()), p.when.clone()))
                    .collect(),
                metrics: metrics.clone(),
            })
        })
    }
}

impl LostFilter for LostMarks {
    fn classify(&self, e: &Event) -> Option<Lost> {
        let run = e.run_id.clone()?;
        let m = &*self.metrics;
        let ends = self.end_when.matches(e, m, "sampling.tail.end_when");
        let policy = self
            .keep
            .iter()
            .find(|(_, c)| c.matches(e, m, "sampling.tail.keep"))
            .map(|(n, _)| n.clone());
        (ends || policy.is_some()).then_some(Lost {
            run,
            policy,
            ends,
            received: e.received,
        })
    }
}

/// A condition and, when it reads only the type, its answers per type.
struct Compiled {
    cond: Condition,
    site: String,
    memo: Option<HashMap<Arc<str>, bool>>,
}

impl Compiled {
    fn new(cond: &Condition, site: String) -> Compiled {
        Compiled {
            memo: cond.uses_only_type().then(HashMap::default),
            cond: cond.clone(),
            site,
        }
    }

    fn matches(&mut self, e: &Event, m: &Metrics) -> bool {
        let Some(memo) = &mut self.memo else {
            return self.cond.matches(e, m, &self.site);
        };
        if let Some(b) = memo.get(&e.kind) {
            return *b;
        }
        let b = self.cond.matches(e, m, &self.site);
        if memo.len() >= 4096 {
            memo.clear();
        }
        memo.insert(e.kind.clone(), b);
        b
    }
}

struct Policies {
    end_when: Compiled,
    keep: Vec<(Arc<str>, Compiled)>,
}

impl Policies {
    fn new(cfg: &TailConfig) -> Policies {
        Policies {
            end_when: Compiled::new(&cfg.end_when, "sampling.tail.end_when".into()),
            keep: cfg
                .keep
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        Arc::from(p.name.as_str()),
                        Compiled::new(&p.when, format!("sampling.tail.keep[{i}].when")),
                    )
                })
                .collect(),
        }
    }

    /// Lowers `matched` to the first policy `e` matches, if it comes before.
    fn evaluate(&mut self, e: &Event, matched: &mut Option<usize>, m: &Metrics) {
        let upto = matched.unwrap_or(self.keep.len());
        for (i, (_, c)) in self.keep[..upto].iter_mut().enumerate() {
            if c.matches(e, m) {
                *matched = Some(i);
                return;
            }
        }
    }
}

/// Remembered decisions, by a hash of the run id (so a long id costs no more than a short
/// one), oldest forgotten first.
struct Decisions {
    map: HashMap<u64, Option<Arc<str>>>,
    order: VecDeque<u64>,
    max: usize,
}

impl Decisions {
    fn remember(&mut self, key: u64, kept_by: Option<Arc<str>>) {
        if self.max == 0 {
            return;
        }
        if self.map.insert(key, kept_by).is_none() {
            self.order.push_back(key);
        }
        self.trim();
    }

    /// Heap bytes of the map and the order queue (their allocated slots).
    fn bytes(&self) -> usize {
        // A hashbrown table allocates 8 slots per 7 it can hold, each with a control byte.
        self.map.capacity() * 8 / 7 * (std::mem::size_of::<(u64, Option<Arc<str>>)>() + 1)
            + self.order.capacity() * std::mem::size_of::<u64>()
    }

    fn trim(&mut self) {
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => break,
            }
        }
    }
}

/// The key of a run in [`Decisions`]: a second, independent hash beside the sampling one.
fn decision_key(run_id: &str) -> u64 {
    crate::sampler::fnv1a_prefixed(0x5a, run_id.as_bytes())
}

/// What open runs may take (their events, records and index entries) when the rest of the
/// tail's bookkeeping takes `other` bytes of `max_bytes`; at least half of it, so that a large
/// runs view cannot starve the runs themselves.
fn budget(max_bytes: usize, other: usize) -> usize {
    max_bytes.saturating_sub(other).max(max_bytes / 2)
}

/// Gives a kept event its `outrigger.kept_by`: one more attribute slot, not the four a push
/// into an empty list takes (192 bytes for each kept event on its way to the sinks).
fn mark_kept(e: &mut Event, by: String) {
    e.attributes.reserve_exact(1);
    e.attributes.push((KEPT_BY.to_string(), by));
}

/// Hands the pages of spilled and decided runs back to the system (see [`crate::memory`]).
fn trim_heap() {
    let took = crate::memory::release();
    tracing::debug!(
        took_us = took.as_micros() as u64,
        "returned free heap to the system"
    );
}

/// Hands the pages of the pool's free blocks back when a quarter of it is free, at most ten
/// times a second: when many runs close at once, their blocks' memory goes back to the system
/// before the runs view and the new runs take theirs. (Blocks freed by spilling are mostly
/// taken again at once, and scattered: trimming for them would only fault pages back in.)
fn trim_pool(st: &mut State, now: Instant) {
    if st.pool.free_bytes() > (st.pool.bytes() / 4).max(4 << 20)
        && st.pool_trim_at.is_none_or(|t| now >= t)
    {
        st.pool.trim();
        st.pool_trim_at = Some(now + std::time::Duration::from_millis(100));
    }
}

/// Whether a run that no policy kept is kept at `rate`: the native sampler's hash, so a run
/// gets the same answer in every process.
pub fn rate_keeps(run_id: &str, rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && unit(fnv1a(run_id.as_bytes())) < rate)
}

struct State {
    cfg: TailConfig,
    pending: Option<TailConfig>,
    policies: Policies,
    /// The open runs. A run's id is copied into its record, not taken from the event (whose
    /// id the ingest thread allocated among short-lived event data: a run open for seconds
    /// would keep that page from going back to the system).
    open: OpenRuns<OpenRun>,
    /// Where held events are.
    pool: Pool,
    /// What held events' receive times count from.
    epoch: std::time::Instant,
    /// The pool's free pages are not trimmed again before then.
    pool_trim_at: Option<Instant>,
    /// When to look at a run again (idle, max_duration); one entry per open run, re-pushed
    /// when its deadline has moved.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    seq: u64,
    /// Memory of every open run together.
    mem: usize,
    spill: Option<SpillStore>,
    /// After a spill error, spilling waits until then.
    spill_retry: Option<Instant>,
    spill_warned: Option<Instant>,
    decisions: Decisions,
    forced: Vec<Arc<str>>,
    /// Set while every open run is being decided (the daemon is stopping, or the stage was
    /// turned off), a slice of [`RELEASE_EVENTS`] per call.
    draining: Option<Close>,
    names: Names,
    /// `tail_decisions_total` by (kept, by), looked up once.
    counters: HashMap<(bool, Arc<str>), prometheus::IntCounter>,
    /// Bytes spilled or decided since the last `malloc_trim` (see [`crate::memory`]).
    trim: Trimmer,
}

/// The `by` and `kept_by` names that are not policies, allocated once.
struct Names {
    rate: Arc<str>,
    early: Arc<str>,
    shutdown: Arc<str>,
    forced: Arc<str>,
}

impl Default for Names {
    fn default() -> Names {
        Names {
            rate: Arc::from("rate"),
            early: Arc::from("early"),
            shutdown: Arc::from("shutdown"),
            forced: Arc::from("forced"),
        }
    }
}

struct Inner {
    state: Mutex<State>,
    /// The policies, for the queue to classify dropped events with (see [`Tail::lost`]).
    lost: RwLock<Option<Arc<LostMarks>>>,
    runs: Mutex<RunsView>,
    redact: RwLock<Arc<[String]>>,
    wake: Notify,
    metrics: Arc<Metrics>,
    enabled: AtomicBool,
    /// Unix ms of the last early decision (0: none), for health.
    early_at_ms: AtomicU64,
}

/// The tail stage; cheap to clone (the worker, the control API and the reloader share one).
#[derive(Clone)]
pub struct Tail {
    inner: Arc<Inner>,
}

fn bounds(cfg: &Config) -> RunsBounds {
    RunsBounds {
        runs: cfg.control.runs,
        events: cfg.control.run_events,
        bytes: cfg.control.run_bytes.0 as usize,
    }
}

fn spill_store(cfg: &TailConfig) -> Option<SpillStore> {
    match &cfg.spill {
        Some(s) if cfg.enabled => Some(SpillStore::new(&s.dir, s.max_bytes.0)),
        _ => None,
    }
}

impl Tail {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Tail {
        let t = &cfg.sampling.tail;
        Tail {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    policies: Policies::new(t),
                    spill: spill_store(t),
                    decisions: Decisions {
                        map: HashMap::default(),
                        order: VecDeque::new(),
                        max: t.decisions,
                    },
                    cfg: t.clone(),
                    pending: None,
                    open: OpenRuns::default(),
                    pool: Pool::default(),
                    epoch: std::time::Instant::now(),
                    pool_trim_at: None,
                    deadlines: BinaryHeap::new(),
                    seq: 0,
                    mem: 0,
                    spill_retry: None,
                    spill_warned: None,
                    forced: Vec::new(),
                    draining: None,
                    names: Names::default(),
                    counters: HashMap::default(),
                    trim: Trimmer::default(),
                }),
                runs: Mutex::new(RunsView::new(bounds(cfg))),
                lost: RwLock::new(LostMarks::new(t, &metrics)),
                redact: RwLock::new(cfg.control.redact_fields.as_slice().into()),
                wake: Notify::new(),
                metrics,
                enabled: AtomicBool::new(t.enabled),
                early_at_ms: AtomicU64::new(0),
            }),
        }
    }

    /// Whether runs are held (the native sampler then leaves events with a run id alone).
    pub fn enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// Fires when the worker should [`Tail::poll`]: a forced keep or a reload.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.wake.notified()
    }

    /// The next idle or max-duration deadline (possibly early: polling then is harmless).
    pub fn next_deadline(&self) -> Option<Instant> {
        let st = self.inner.state.lock();
        if st.draining.is_some() {
            return Some(Instant::now());
        }
        st.deadlines.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes a chunk: holds what belongs to open runs, releases what is decided.
    pub fn admit(&self, events: Vec<Event>) -> Released {
        let inner = &*self.inner;
        let mut st = inner.state.lock();
        let mut out = Released::default();
        self.apply_pending(&mut st, &mut out);
        if !st.cfg.enabled {
            if st.draining.is_some() {
                // Runs still open from before the stage was turned off go out before any
                // new event of theirs.
                for e in &events {
                    if let Some(slot) = e.run_id.as_deref().and_then(|r| st.open.find(r)) {
                        self.decide(&mut st, slot, Close::Off, &mut out);
                    }
                }
                self.drain_some(&mut st, &mut out);
                self.publish(&st);
            }
            drop(st);
            inner.runs.lock().seen(&events);
            out.events.extend(events);
            return out;
        }
        let now = Instant::now();
        let mut late = Vec::new();
        for mut e in events {
            let Some(run) = e.run_id.clone() else {
                out.events.push(e);
                continue;
            };
            let slot = st.open.find(&run);
            if slot.is_none()
                && let Some(d) = st.decisions.map.get(&decision_key(&run))
            {
                match d {
                    Some(by) => {
                        mark_kept(&mut e, by.to_string());
                        late.push(out.events.len());
                        out.events.push(e);
                    }
                    None => inner.metrics.dropped(DropReason::SampledOut, 1),
                }
                continue;
            }
            self.hold(&mut st, slot, &run, e, now, &mut out);
        }
        // Runs whose time has come close here too: a worker busy with chunks polls late.
        self.close_due(&mut st, now, &mut out);
        self.enforce(&mut st, now, &mut out);
        self.finish(st, now);
        if !late.is_empty() {
            // Late events of kept runs update what the runs view shows of them.
            let mut v = inner.runs.lock();
            for i in late {
                v.seen(std::slice::from_ref(&out.events[i]));
            }
        }
        out
    }

    /// Marks of events the queue dropped (already counted `queue_full`; never delivered): a
    /// dropped event that matched a `keep` policy still marks its open run, and one that
    /// matched `end_when` still closes it. Without this a run that lost its closing event
    /// would stay open until `idle`, holding memory while the daemon is already behind. The
    /// conditions were evaluated by the ingest thread that dropped the event ([`LostMarks`]).
    pub fn lost(&self, marks: Vec<Lost>) -> Released {
        let mut out = Released::default();
        if marks.is_empty() {
            return out;
        }
        let mut st = self.inner.state.lock();
        self.apply_pending(&mut st, &mut out);
        if !st.cfg.enabled {
            return out;
        }
        for l in marks {
            let State { open, policies, .. } = &mut *st;
            let Some(slot) = open.find(&l.run) else {
                continue;
            };
            let Some(r) = open.get_mut(slot) else {
                continue;
            };
            r.lost = r.lost.saturating_add(1);
            if let Some(p) = &l.policy
                && let Some(i) = policies.keep.iter().position(|(n, _)| n == p)
                && r.matched.is_none_or(|m| i < m)
            {
                r.matched = Some(i);
            }
            if l.ends {
                r.closing = Some(l.received);
                self.decide(&mut st, slot, Close::End, &mut out);
            }
        }
        self.publish(&st);
        out
    }

    /// The queue sequence of the oldest event held (in memory or spilled) by an open run;
    /// `None` when no run is open. The pipeline keeps the write-ahead log from trimming past
    /// it.
    pub fn oldest_held_seq(&self) -> Option<u64> {
        let st = self.inner.state.lock();
        st.open.get(st.open.oldest()?).map(|r| r.first_seq)
    }

    /// What the queue should show dropped events to (`None` while tail sampling is off).
    pub fn lost_filter(&self) -> Option<Arc<dyn LostFilter>> {
        self.inner
            .lost
            .read()
            .clone()
            .map(|f| f as Arc<dyn LostFilter>)
    }

    /// Holds `e` in its run; decides the run when `e` closes it or makes it too big.
    fn hold(
        &self,
        st: &mut State,
        slot: Option<u32>,
        run: &str,
        e: Event,
        now: Instant,
        out: &mut Released,
    ) {
        let m = &*self.inner.metrics;
        let slot = match slot {
            Some(s) => s,
            None => {
                st.seq += 1;
                let deadline = now + st.cfg.idle.0.min(st.cfg.max_duration.0);
                st.deadlines.push(Reverse((deadline, st.seq)));
                st.open.insert(OpenRun {
                    id: RunId::new(run),
                    seq: st.seq,
                    first_seq: e.seq,
                    held: Blocks::default(),
                    held_events: 0,
                    mem: 0,
                    chain: None,
                    spilled_events: 0,
                    spilled_bytes: 0,
                    events: 0,
                    bytes: 0,
                    first_ts_ns: e.ts_ns,
                    last_ts_ns: e.ts_ns,
                    opened: now,
                    last_seen: now,
                    matched: None,
                    types: TypeCounts::default(),
                    closing: None,
                    lost: 0,
                })
            }
        };
        let State {
            open,
            policies,
            mem,
            cfg,
            pool,
            epoch,
            ..
        } = st;
        let Some(r) = open.get_mut(slot) else { return };
        if r.matched != Some(0) {
            policies.evaluate(&e, &mut r.matched, m);
        }
        let closes = policies.end_when.matches(&e, m);
        r.events += 1;
        r.bytes += e.encoded_len() as u64;
        r.first_ts_ns = r.first_ts_ns.min(e.ts_ns);
        r.last_ts_ns = r.last_ts_ns.max(e.ts_ns);
        r.last_seen = now;
        r.types.add(&e.kind, 1);
        if closes {
            r.closing = Some(e.received);
        }
        let received = e.received.saturating_duration_since(*epoch).as_nanos() as u64;
        pool.push(&mut r.held, &e, received);
        r.held_events += 1;
        drop(e);
        let before = r.mem;
        r.mem = r.footprint();
        *mem = *mem + r.mem - before;
        // The pool counts a run's held bytes in 32 bits: a run holding 2 GiB in memory (only
        // possible with `max_run_bytes` and `max_bytes` set that high) is decided early too.
        let too_big = r.bytes > cfg.max_run_bytes.0 || r.held.bytes() > MAX_HELD_BYTES;
        let spillable = r.spillable();
        open.set_size(slot, spillable);
        if closes {
            self.decide(st, slot, Close::End, out);
        } else if too_big {
            self.decide(st, slot, Close::Early, out);
        }
    }

    /// Keeps memory within `max_bytes`: spills the largest runs, then decides the oldest
    /// early, down to seven eighths of the bound (so that this does not run on every event).
    fn enforce(&self, st: &mut State, now: Instant, out: &mut Released) {
        // The remembered decisions and the runs view live as long as the tail does and grow
        // with the number of runs: they count against `max_bytes` too (lock order: state,
        // then the view, as in `decide`).
        let view = self.inner.runs.lock().counts().1;
        compact(st, now);
        // What deciding runs does not shrink: the decisions, the view, the indexes' slack and
        // the deadline heap; and what spilling takes while it runs. The open runs get the rest
        // (at least half of `max_bytes`), their records and index entries included.
        let other = st.decisions.bytes()
            + view
            + st.open.slack_bytes()
            + deadline_bytes(st)
            + spill_work_bytes(st);
        let max = budget(st.cfg.max_bytes.0 as usize, other);
        let records = |st: &State| st.open.len() * OpenRuns::<OpenRun>::per_run();
        // The pool's resident pages without a block in use count too (blocks freed by
        // spilling stay in memory until their page is handed back).
        if st.mem + records(st) + st.pool.idle_bytes() <= max {
            return;
        }
        let target = max - max / 8;
        if st.spill.is_some() && st.spill_retry.is_none_or(|t| now >= t) {
            self.spill_largest(st, target.saturating_sub(records(st)), now);
        }
        st.pool.trim();
        while st.mem + records(st) > target {
            let Some(oldest) = st.open.oldest() else {
                break;
            };
            self.decide(st, oldest, Close::Early, out);
        }
    }

    /// Spills the largest open runs until memory is down to `target`, writing many runs per
    /// system call (about [`SPILL_WRITE_BYTES`] of lines at a time).
    fn spill_largest(&self, st: &mut State, target: usize, now: Instant) {
        let mut cands: Vec<(u32, u32)> = st
            .open
            .sizes()
            .iter()
            .enumerate()
            .filter(|(_, s)| **s > 0)
            .map(|(i, s)| (*s, i as u32))
            .collect();
        // Only the largest few are needed: sort those that would free twice what is asked
        // (the rest, all smaller, follow unsorted if it is not enough).
        let total: u64 = cands.iter().map(|c| c.0 as u64).sum();
        let avg = (total / cands.len().max(1) as u64).max(1) as usize;
        let k = (st.mem.saturating_sub(target) / avg * 2 + 64).min(cands.len());
        if k < cands.len() {
            cands.select_nth_unstable_by_key(k, |a| Reverse(a.0));
        }
        cands[..k].sort_unstable_by_key(|a| Reverse(a.0));
        let mut cands = cands.into_iter();
        // Spilling happens when memory is at its bound: the lines of a write are built in a
        // buffer of about one write (a run larger than that grows it for itself).
        let mut lines: Vec<u8> = Vec::with_capacity(2 * SPILL_WRITE_BYTES);
        let mut scratch: Vec<u8> = Vec::new();
        let mut group: Vec<(u32, u32, u32)> = Vec::new();
        while st.mem > target {
            // A group: runs until their bytes would bring memory to the target, or a write's
            // worth of lines.
            let mut pending = 0usize;
            for (size, slot) in cands.by_ref() {
                let size = size as usize;
                let Some(r) = st.open.get(slot) else { continue };
                let start = lines.len();
                lines.extend_from_slice(&spill::chunk_header(r.chain.as_ref()));
                scratch.clear();
                st.pool.read_into(&r.held, &mut scratch);
                Pool::decode(&scratch, |h| {
                    crate::event::write_native_parts(
                        &mut lines,
                        h.id,
                        h.kind,
                        h.ts_ns,
                        Some(r.id.as_str()),
                        &h.attributes,
                        &scratch[h.data],
                    )
                });
                let len = (lines.len() - start) as u32;
                group.push((slot, len, r.held_events));
                pending += size;
                if lines.len() >= SPILL_WRITE_BYTES || st.mem.saturating_sub(pending) <= target {
                    break;
                }
            }
            if group.is_empty() || !self.spill_group(st, &lines, &mut group, now) {
                return;
            }
            lines.clear();
        }
    }

    /// Writes one group of runs' lines; on success their in-memory events go. False when the
    /// spill refused (full, or an I/O error: then it is not tried again for a while).
    fn spill_group(
        &self,
        st: &mut State,
        lines: &[u8],
        group: &mut Vec<(u32, u32, u32)>,
        now: Instant,
    ) -> bool {
        let m = &self.inner.metrics;
        let parts: Vec<u32> = group.iter().map(|(_, l, _)| *l).collect();
        let Some(store) = st.spill.as_mut() else {
            return false;
        };
        match store.write_many(lines, &parts) {
            Ok(exts) => {
                let State {
                    open,
                    mem,
                    trim,
                    pool,
                    ..
                } = &mut *st;
                for ((slot, _, count), ext) in group.drain(..).zip(exts) {
                    let Some(r) = open.get_mut(slot) else {
                        continue;
                    };
                    m.tail_spilled_events.inc_by(count as u64);
                    r.spilled_events += count as u64;
                    r.spilled_bytes += ext.bytes();
                    Chain::extend(&mut r.chain, ext);
                    pool.release(&mut r.held);
                    r.held_events = 0;
                    let before = r.mem;
                    r.mem = r.footprint();
                    trim.freed(before - r.mem);
                    *mem = *mem + r.mem - before;
                    open.set_size(slot, 0);
                }
                // Their pages go back now, group by group: spilling starts at the bound, and
                // its own buffers are on top of it until then.
                pool.trim();
                true
            }
            Err(e) => {
                group.clear();
                let full = matches!(e, SpillError::Full { .. });
                if !full {
                    m.tail_spill_errors.with_label_values(&["write"]).inc();
                    st.spill_retry = Some(now + std::time::Duration::from_secs(10));
                }
                if st
                    .spill_warned
                    .is_none_or(|t| now.duration_since(t).as_secs() >= 60)
                {
                    st.spill_warned = Some(now);
                    tracing::warn!(error = %e, "tail sampling cannot spill: deciding the oldest open runs early");
                }
                false
            }
        }
    }

    /// Decides the open run at `slot` and releases it when kept.
    fn decide(&self, st: &mut State, slot: u32, how: Close, out: &mut Released) {
        let inner = &*self.inner;
        let m = &*inner.metrics;
        let Some(mut r) = st.open.remove(slot) else {
            return;
        };
        let id: &Arc<str> = &Arc::from(r.id.as_str());
        st.mem -= r.mem;
        st.trim.freed(r.mem);
        let policy = r
            .matched
            .and_then(|i| st.policies.keep.get(i))
            .map(|p| p.0.clone());
        let n = &st.names;
        let kept_by: Option<Arc<str>> = match how {
            Close::Forced => Some(n.forced.clone()),
            _ => policy.or_else(|| rate_keeps(id, st.cfg.else_rate).then(|| n.rate.clone())),
        };
        let by: Arc<str> = match (how, &kept_by) {
            (Close::Early, _) => n.early.clone(),
            (Close::Shutdown, _) => n.shutdown.clone(),
            (Close::Forced, _) => n.forced.clone(),
            (_, Some(k)) => k.clone(),
            (_, None) => n.rate.clone(),
        };
        let attr: Option<Arc<str>> = match (how, kept_by) {
            (Close::Early, Some(k)) => Some(Arc::from(format!("{k}/early"))),
            (_, k) => k,
        };
        st.counters
            .entry((attr.is_some(), by))
            .or_insert_with_key(|(kept, by)| {
                m.tail_decisions
                    .with_label_values(&[if *kept { "kept" } else { "dropped" }, by])
            })
            .inc();
        if how == Close::Early {
            inner
                .early_at_ms
                .store(crate::event::now_ns() / 1_000_000, Ordering::Relaxed);
        }
        // When stopping, the queue is already drained: no late event can follow.
        if how != Close::Shutdown {
            st.decisions.remember(decision_key(id), attr.clone());
        }
        let summary = (r.events, r.bytes, r.first_ts_ns, r.last_ts_ns);
        let types = std::mem::take(&mut r.types);
        let Some(attr) = attr else {
            m.dropped(DropReason::SampledOut, r.events);
            r.chain = None;
            st.pool.release(&mut r.held);
            if let Some(s) = st.spill.as_mut() {
                s.release_idle();
            }
            inner.runs.lock().decided(
                id,
                None,
                summary.0,
                summary.1,
                summary.2,
                summary.3,
                types,
                std::iter::empty(),
            );
            return;
        };
        let start = out.events.len();
        if let Some(chain) = r.chain.take() {
            read_back(&chain, r.spilled_events, &mut out.events, m);
        }
        if let Some(s) = st.spill.as_mut() {
            s.release_idle();
        }
        let epoch = st.epoch;
        out.events.extend(st.pool.events(&r.held, id, |ns| {
            epoch + std::time::Duration::from_nanos(ns)
        }));
        st.pool.release(&mut r.held);
        let attr_s = attr.to_string();
        for e in &mut out.events[start..] {
            mark_kept(e, attr_s.clone());
        }
        out.runs.push(start..out.events.len());
        if let Some(t) = r.closing {
            m.tail_decision_latency.observe(t.elapsed().as_secs_f64());
        }
        let keep_recent = inner.runs.lock().bounds_events();
        let from = out.events.len().saturating_sub(keep_recent).max(start);
        let recent = out.events[from..].iter().map(Stored::of);
        inner.runs.lock().decided(
            id,
            Some(attr),
            summary.0,
            summary.1,
            summary.2,
            summary.3,
            types,
            recent,
        );
    }

    /// Forced keeps, reloads, idle and max-duration deadlines.
    pub fn poll(&self) -> Released {
        let mut st = self.inner.state.lock();
        let mut out = Released::default();
        self.apply_pending(&mut st, &mut out);
        for id in std::mem::take(&mut st.forced) {
            if let Some(slot) = st.open.find(&id) {
                self.decide(&mut st, slot, Close::Forced, &mut out);
            }
        }
        self.drain_some(&mut st, &mut out);
        let now = Instant::now();
        self.close_due(&mut st, now, &mut out);
        // After a load, the last runs close by their deadlines: the indexes shrink here too.
        compact(&mut st, now);
        self.finish(st, now);
        out
    }

    /// The end of a call that changed the open runs: publishes the gauges, hands back the
    /// pool's free pages and, when enough was freed, the heap's (after letting go of the
    /// state: a trim takes milliseconds).
    fn finish(&self, mut st: parking_lot::MutexGuard<'_, State>, now: Instant) {
        self.publish(&st);
        trim_pool(&mut st, now);
        let trim = st.trim.due(now);
        drop(st);
        if trim {
            trim_heap();
        }
    }

    /// Closes the runs whose `idle` or `max_duration` has passed, until [`RELEASE_EVENTS`]
    /// are released (the rest stay due: the worker polls again at once).
    fn close_due(&self, st: &mut State, now: Instant, out: &mut Released) {
        while out.events.len() < RELEASE_EVENTS
            && let Some(Reverse((t, seq))) = st.deadlines.peek().copied()
            && t <= now
        {
            st.deadlines.pop();
            let Some(slot) = st.open.by_seq(seq) else {
                continue;
            };
            let Some(r) = st.open.get(slot) else { continue };
            if r.opened + st.cfg.max_duration.0 <= now {
                self.decide(st, slot, Close::MaxDuration, out);
            } else if r.last_seen + st.cfg.idle.0 <= now {
                self.decide(st, slot, Close::Idle, out);
            } else {
                let at = r.deadline(&st.cfg);
                st.deadlines.push(Reverse((at, seq)));
            }
        }
    }

    /// Decides open runs by what they hold (the daemon is stopping), oldest first, about
    /// [`RELEASE_EVENTS`] at a time; true while runs remain (call again after forwarding
    /// these).
    pub fn shutdown(&self) -> (Released, bool) {
        let mut st = self.inner.state.lock();
        let mut out = Released::default();
        self.apply_pending(&mut st, &mut out);
        if st.draining.is_none() && !st.open.is_empty() {
            st.draining = Some(Close::Shutdown);
        }
        self.drain_some(&mut st, &mut out);
        let more = st.draining.is_some();
        if !more {
            st.spill = None;
        }
        self.publish(&st);
        (out, more)
    }

    /// While every open run is to be decided ([`State::draining`]): decides the oldest until
    /// about [`RELEASE_EVENTS`] are released, and ends the draining when none is left.
    fn drain_some(&self, st: &mut State, out: &mut Released) {
        let Some(how) = st.draining else { return };
        while out.events.len() < RELEASE_EVENTS
            && let Some(slot) = st.open.oldest()
        {
            self.decide(st, slot, how, out);
        }
        if st.open.is_empty() {
            st.draining = None;
            st.deadlines.clear();
        }
    }

    /// Applies a reloaded `sampling.tail` (the worker's side of [`Reconfigure`]).
    fn apply_pending(&self, st: &mut State, out: &mut Released) {
        let Some(new) = st.pending.take() else { return };
        if new == st.cfg {
            return;
        }
        let was_on = st.cfg.enabled;
        if new.keep != st.cfg.keep || new.end_when != st.cfg.end_when {
            let old_names: Vec<Arc<str>> =
                st.policies.keep.iter().map(|(n, _)| n.clone()).collect();
            st.policies = Policies::new(&new);
            st.counters.clear();
            let State {
                open,
                policies,
                pool,
                ..
            } = &mut *st;
            let m = &*self.inner.metrics;
            for r in open.iter_mut() {
                // A match stays under its name; the events still in memory are evaluated
                // against the new policies (spilled ones are not read back for it).
                r.matched = r
                    .matched
                    .and_then(|i| old_names.get(i))
                    .and_then(|n| policies.keep.iter().position(|(p, _)| p == n));
                let now = std::time::Instant::now();
                let id: Arc<str> = Arc::from(r.id.as_str());
                for e in pool.events(&r.held, &id, |_| now) {
                    policies.evaluate(&e, &mut r.matched, m);
                }
            }
        }
        let new_dir = new.spill.as_ref().map(|s| s.dir.clone());
        match (&mut st.spill, &new.spill) {
            (Some(store), Some(s)) if Some(store.dir().to_path_buf()) == new_dir => {
                store.set_max_bytes(s.max_bytes.0)
            }
            // A new place or none: spilled runs keep their segments until they are decided.
            _ => st.spill = spill_store(&new),
        }
        st.spill_retry = None;
        st.decisions.max = new.decisions;
        st.decisions.trim();
        let timing_changed = new.idle != st.cfg.idle || new.max_duration != st.cfg.max_duration;
        st.cfg = new;
        if st.cfg.enabled && st.draining == Some(Close::Off) {
            // Turned on again before every run was let go: the rest stay open.
            st.draining = None;
        }
        if was_on && !st.cfg.enabled {
            tracing::info!(
                open = st.open.len(),
                "tail sampling turned off: every open run is decided, a slice at a time"
            );
            st.draining = Some(Close::Off);
            self.drain_some(st, out);
        } else if timing_changed {
            rebuild_deadlines(st);
        }
        self.inner.enabled.store(st.cfg.enabled, Ordering::Relaxed);
        *self.inner.lost.write() = LostMarks::new(&st.cfg, &self.inner.metrics);
        self.enforce(st, Instant::now(), out);
    }

    fn publish(&self, st: &State) {
        let m = &self.inner.metrics;
        m.tail_open_runs.set(st.open.len() as i64);
        m.tail_buffered_bytes.set(st.mem as i64);
        m.tail_spilled_bytes
            .set(st.spill.as_ref().map_or(0, |s| s.disk_bytes()) as i64);
    }

    /// `POST /v1/runs/{id}/keep`: an open run is released, kept, on the worker's next poll.
    pub fn keep(&self, run_id: &str) -> KeepOutcome {
        let mut st = self.inner.state.lock();
        if !st.cfg.enabled {
            return KeepOutcome::Disabled;
        }
        if let Some(r) = st.open.find(run_id).and_then(|s| st.open.get(s)) {
            let id: Arc<str> = Arc::from(r.id.as_str());
            // A keep already asked for (the pipeline applies it on its next turn) counts as
            // kept: a second request is answered as one after the decision would be.
            if st.forced.contains(&id) {
                return KeepOutcome::AlreadyKept;
            }
            st.forced.push(id);
            drop(st);
            self.inner.wake.notify_one();
            return KeepOutcome::Keeping;
        }
        match st.decisions.map.get(&decision_key(run_id)) {
            Some(Some(_)) => KeepOutcome::AlreadyKept,
            Some(None) => KeepOutcome::AlreadyDropped,
            None => KeepOutcome::Unknown,
        }
    }

    /// Run summaries in `state` (`open`, `kept`, `dropped`, `seen`; all when `None`), most
    /// recent first.
    pub fn list(&self, state: Option<&str>, limit: usize) -> Vec<RunSummary> {
        let mut out: Vec<(u64, RunSummary)> = Vec::new();
        if state.is_none_or(|s| s == "open") {
            let st = self.inner.state.lock();
            let mut recent: Vec<(u64, &OpenRun)> =
                st.open.iter().map(|(_, r)| (r.last_ts_ns, r)).collect();
            if recent.len() > limit && limit > 0 {
                recent.select_nth_unstable_by(limit - 1, |a, b| b.0.cmp(&a.0));
            }
            recent.truncate(limit);
            out.extend(recent.into_iter().map(|(t, r)| (t, r.summary())));
        }
        if state != Some("open") {
            out.extend(self.inner.runs.lock().list(state, limit));
        }
        out.sort_by_key(|a| std::cmp::Reverse(a.0));
        out.truncate(limit);
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// A run's summary and its most recent events (redacted, oldest first): of an open run
    /// the ones still in memory.
    pub fn get(&self, run_id: &str, limit: usize) -> Option<(RunSummary, Vec<serde_json::Value>)> {
        let redact = self.inner.redact.read().clone();
        {
            let st = self.inner.state.lock();
            if let Some(r) = st.open.find(run_id).and_then(|s| st.open.get(s)) {
                let buf = st.pool.read(&r.held);
                let mut events = Vec::new();
                Pool::decode(&buf, |h| {
                    events.push(crate::control::views::render(
                        h.id,
                        h.kind,
                        h.ts_ns,
                        Some(run_id),
                        &h.attributes,
                        &buf[h.data],
                        &redact,
                    ))
                });
                let skip = events.len().saturating_sub(limit);
                events.drain(..skip);
                return Some((r.summary(), events));
            }
        }
        let (s, stored) = self.inner.runs.lock().get(run_id)?;
        let events = stored.iter().map(|e| e.render(run_id, &redact)).collect();
        Some((s, events))
    }

    /// Open runs, their memory, and the runs view's size: for `/v1/stats`.
    pub fn stats(&self) -> serde_json::Value {
        let (open, mem, spilled, enabled, pool, pool_free, pool_idle, index, decisions) = {
            let st = self.inner.state.lock();
            (
                st.open.len(),
                st.mem,
                st.spill.as_ref().map_or(0, |s| s.disk_bytes()),
                st.cfg.enabled,
                st.pool.bytes(),
                st.pool.free_bytes(),
                st.pool.idle_bytes(),
                index_bytes(&st),
                st.decisions.bytes(),
            )
        };
        let (remembered, bytes) = self.inner.runs.lock().counts();
        serde_json::json!({
            "enabled": enabled,
            "open_runs": open,
            "buffered_bytes": mem,
            "spilled_bytes": spilled,
            "remembered_runs": remembered,
            "remembered_bytes": bytes,
            // Where `max_bytes` goes beside the open runs, and the block pool their events
            // are in (its free blocks included).
            "index_bytes": index,
            "decisions_bytes": decisions,
            "pool_bytes": pool,
            "pool_free_bytes": pool_free,
            // Free blocks' pages still in memory (counted against `max_bytes`).
            "pool_idle_bytes": pool_idle,
        })
    }

    /// Whether a run was decided early within the last `within` (health is degraded then).
    pub fn decided_early_within(&self, within: std::time::Duration) -> bool {
        let at = self.inner.early_at_ms.load(Ordering::Relaxed);
        at > 0 && crate::event::now_ns() / 1_000_000 < at + within.as_millis() as u64
    }
}

/// Reads a run's spilled chunks back into `out`, in order; the events of `spilled` that
/// cannot be read are counted (`spill`).
fn read_back(chain: &Chain, spilled: u64, out: &mut Vec<Event>, m: &Metrics) {
    let (parts, err) = chain.read();
    let mut got = 0u64;
    for buf in parts {
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(Line::Event(e)) = crate::event::parse_line(&buf, line, usize::MAX) {
                got += 1;
                out.push(e);
            }
        }
    }
    let lost = spilled.saturating_sub(got);
    if lost > 0 || err.is_some() {
        m.tail_spill_errors.with_label_values(&["read"]).inc();
        m.dropped(DropReason::Spill, lost);
        match err {
            Some(e) => tracing::warn!(error = %e, lost, "cannot read spilled events back"),
            None => tracing::warn!(lost, "spilled events did not read back whole"),
        }
    }
}

impl Reconfigure for Tail {
    fn reconfigure(&self, cfg: &Config) {
        self.inner.runs.lock().reconfigure(bounds(cfg));
        *self.inner.redact.write() = cfg.control.redact_fields.as_slice().into();
        self.inner.state.lock().pending = Some(cfg.sampling.tail.clone());
        self.inner.wake.notify_one();
    }
}

#[cfg(test)]
mod tests;
