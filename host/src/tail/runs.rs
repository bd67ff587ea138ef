//! The runs view: what `GET /v1/runs` shows of runs that are no longer open.
//!
//! In: each run the tail sampler decided (its summary and its events, [`RunsView::decided`]),
//! and, while tail sampling is off (or for events that follow a kept run), the events with a
//! `run_id` that pass the tail stage ([`RunsView::seen`]). Out: run summaries, most recently
//! active first, and a run's most recent events, rendered with `control.redact_fields` replaced
//! by `"***"` when they are read. Bounded three ways: `control.runs` runs, `control.run_events`
//! events per run, and `control.run_bytes` for everything it holds (summaries, run ids, events);
//! the least recently active run goes first. Open runs are not here: the tail stage answers for
//! them. No task, no I/O.

use std::collections::{BTreeMap, VecDeque};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use smallvec::SmallVec;

use crate::event::Event;

/// Distinct types counted per run; the rest are counted together as `_other`.
pub const MAX_TYPES_PER_RUN: usize = 32;

/// Per-type event counts of one run, bounded by [`MAX_TYPES_PER_RUN`].
#[derive(Clone, Debug, Default)]
pub struct TypeCounts(SmallVec<[(Arc<str>, u64); 3]>);

impl TypeCounts {
    pub fn add(&mut self, kind: &Arc<str>, n: u64) {
        if let Some(c) = self
            .0
            .iter_mut()
            .find(|(k, _)| Arc::ptr_eq(k, kind) || k == kind)
        {
            c.1 += n;
        } else if self.0.len() < MAX_TYPES_PER_RUN {
            // Up to three inside (most runs have one to three types: no allocation of their
            // own, so deciding many runs frees nothing into the heap); then exactly as many.
            self.0.reserve_exact(1);
            self.0.push((kind.clone(), n));
        } else {
            let other: Arc<str> = Arc::from("_other");
            match self.0.iter_mut().find(|(k, _)| **k == *other) {
                Some(c) => c.1 += n,
                None => {
                    // The last slot becomes `_other`.
                    if let Some(last) = self.0.last_mut() {
                        let moved = last.1;
                        *last = (other, moved + n);
                    }
                }
            }
        }
    }

    pub fn to_map(&self) -> BTreeMap<String, u64> {
        self.0.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    /// Heap bytes taken (the type strings are shared with the events).
    pub fn heap_bytes(&self) -> usize {
        if self.0.spilled() {
            self.0.capacity() * std::mem::size_of::<(Arc<str>, u64)>()
        } else {
            0
        }
    }
}

/// A run as `GET /v1/runs` lists it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    /// `open`, `kept`, `dropped`, or `seen` (passed with tail sampling off).
    pub state: &'static str,
    pub kept_by: Option<String>,
    pub events: u64,
    pub bytes: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    pub types: BTreeMap<String, u64>,
    /// Open runs only: events and bytes of it spilled to disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spilled_events: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spilled_bytes: Option<u64>,
    /// Open runs only, when some: events of it the queue dropped (`queue_full`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_events: Option<u64>,
}

/// An event kept for the view: its own copy of the data (not a slice of a receive buffer) and
/// its attributes, packed in one allocation (the view churns through runs at ingest rates; the
/// attributes are decoded again only when someone asks to see the event).
#[derive(Clone, Debug)]
pub struct Stored {
    /// The event's id as two halves (a `u128` would add padding; see the tail's `Held`).
    id: [u64; 2],
    pub kind: Arc<str>,
    pub ts_ns: u64,
    /// The data, then (when there are any) the attributes as JSON `[[k, v], …]`.
    packed: Bytes,
    data_len: u32,
}

impl Stored {
    pub fn of(e: &Event) -> Stored {
        let attrs: usize = e
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum();
        let mut buf = Vec::with_capacity(e.data.len() + attrs + 2);
        buf.extend_from_slice(&e.data);
        if !e.attributes.is_empty() {
            let _ = serde_json::to_writer(&mut buf, &e.attributes);
        }
        Stored {
            id: [(e.id >> 64) as u64, e.id as u64],
            kind: e.kind.clone(),
            ts_ns: e.ts_ns,
            packed: Bytes::from(buf),
            data_len: e.data.len() as u32,
        }
    }

    fn bytes(&self) -> usize {
        std::mem::size_of::<Stored>() + self.packed.len()
    }

    fn data(&self) -> &[u8] {
        &self.packed[..self.data_len as usize]
    }

    fn attributes(&self) -> Vec<(String, String)> {
        let rest = &self.packed[self.data_len as usize..];
        if rest.is_empty() {
            Vec::new()
        } else {
            serde_json::from_slice(rest).unwrap_or_default()
        }
    }

    /// The event as native JSON with `redact` fields hidden.
    pub fn render(&self, run_id: &str, redact: &[String]) -> serde_json::Value {
        crate::control::views::render(
            ((self.id[0] as u128) << 64) | self.id[1] as u128,
            &self.kind,
            self.ts_ns,
            Some(run_id),
            &self.attributes(),
            self.data(),
            redact,
        )
    }
}

struct Recent {
    state: &'static str,
    kept_by: Option<Arc<str>>,
    events: u64,
    bytes: u64,
    first_ts_ns: u64,
    last_ts_ns: u64,
    types: TypeCounts,
    recent: VecDeque<Stored>,
    /// What this entry takes, for `control.run_bytes`.
    held: usize,
    touched: u64,
}

/// Overhead of one remembered run beyond its id and events (map entry, order entry, struct).
const RUN_OVERHEAD: usize = std::mem::size_of::<Recent>() + 96;

/// The bounds of the view.
#[derive(Clone, Copy, Debug)]
pub struct RunsBounds {
    pub runs: usize,
    pub events: usize,
    pub bytes: usize,
}

/// Recently decided (or seen) runs, bounded by count and bytes.
pub struct RunsView {
    runs: HashMap<Arc<str>, Recent>,
    /// Least recently active first (lazily: a touch re-stamps; eviction skips stale stamps).
    order: VecDeque<(u64, Arc<str>)>,
    seq: u64,
    held: usize,
    bounds: RunsBounds,
}

impl RunsView {
    pub fn new(bounds: RunsBounds) -> RunsView {
        RunsView {
            runs: HashMap::default(),
            order: VecDeque::new(),
            seq: 0,
            held: 0,
            bounds,
        }
    }

    pub fn reconfigure(&mut self, bounds: RunsBounds) {
        self.bounds = bounds;
        for r in self.runs.values_mut() {
            while r.recent.len() > bounds.events {
                if let Some(s) = r.recent.pop_front() {
                    r.held -= s.bytes();
                    self.held -= s.bytes();
                }
            }
        }
        self.evict();
    }

    /// Events kept per run.
    pub fn bounds_events(&self) -> usize {
        if self.enabled() {
            self.bounds.events
        } else {
            0
        }
    }

    fn enabled(&self) -> bool {
        self.bounds.runs > 0 && self.bounds.bytes > 0
    }

    /// A decided run: replaces what was remembered of it.
    #[allow(clippy::too_many_arguments)]
    pub fn decided(
        &mut self,
        run_id: &Arc<str>,
        kept_by: Option<Arc<str>>,
        events: u64,
        bytes: u64,
        first_ts_ns: u64,
        last_ts_ns: u64,
        types: TypeCounts,
        recent: impl Iterator<Item = Stored>,
    ) {
        if !self.enabled() {
            return;
        }
        self.remove(run_id);
        let mut r = Recent {
            state: if kept_by.is_some() { "kept" } else { "dropped" },
            kept_by,
            events,
            bytes,
            first_ts_ns,
            last_ts_ns,
            types,
            recent: VecDeque::new(),
            held: RUN_OVERHEAD + run_id.len(),
            touched: 0,
        };
        r.held += r.types.heap_bytes();
        for s in recent {
            if r.recent.len() >= self.bounds.events
                && let Some(old) = r.recent.pop_front()
            {
                r.held -= old.bytes();
            }
            r.held += s.bytes();
            r.recent.push_back(s);
        }
        self.insert(run_id, r);
    }

    /// Events with a run id that passed the tail stage undecided (tail sampling off), or that
    /// followed a run kept earlier.
    pub fn seen(&mut self, events: &[Event]) {
        if !self.enabled() || !events.iter().any(|e| e.run_id.is_some()) {
            return;
        }
        let max_events = self.bounds.events;
        for e in events {
            let Some(run) = &e.run_id else { continue };
            let stored = (max_events > 0).then(|| Stored::of(e));
            let add = stored.as_ref().map_or(0, Stored::bytes);
            self.seq += 1;
            let seq = self.seq;
            let r = match self.runs.get_mut(run) {
                Some(r) => r,
                None => {
                    let r = Recent {
                        state: "seen",
                        kept_by: None,
                        events: 0,
                        bytes: 0,
                        first_ts_ns: e.ts_ns,
                        last_ts_ns: e.ts_ns,
                        types: TypeCounts::default(),
                        recent: VecDeque::new(),
                        held: RUN_OVERHEAD + run.len(),
                        touched: 0,
                    };
                    self.insert(run, r);
                    match self.runs.get_mut(run) {
                        Some(r) => r,
                        None => continue,
                    }
                }
            };
            r.touched = seq;
            r.events += 1;
            r.bytes += e.encoded_len() as u64;
            r.first_ts_ns = r.first_ts_ns.min(e.ts_ns);
            r.last_ts_ns = r.last_ts_ns.max(e.ts_ns);
            let before = r.types.heap_bytes();
            r.types.add(&e.kind, 1);
            let mut delta = r.types.heap_bytes() as isize - before as isize;
            if let Some(s) = stored {
                if r.recent.len() >= max_events
                    && let Some(old) = r.recent.pop_front()
                {
                    delta -= old.bytes() as isize;
                }
                r.recent.push_back(s);
                delta += add as isize;
            }
            r.held = (r.held as isize + delta) as usize;
            self.held = (self.held as isize + delta) as usize;
            self.order.push_back((seq, run.clone()));
            self.evict();
        }
    }

    fn insert(&mut self, run_id: &Arc<str>, mut r: Recent) {
        self.seq += 1;
        r.touched = self.seq;
        self.held += r.held;
        self.order.push_back((self.seq, run_id.clone()));
        self.runs.insert(run_id.clone(), r);
        self.evict();
    }

    fn remove(&mut self, run_id: &str) {
        if let Some(r) = self.runs.remove(run_id) {
            self.held -= r.held;
        }
    }

    /// Evicts the least recently active runs until every bound holds.
    fn evict(&mut self) {
        while self.runs.len() > self.bounds.runs || self.held > self.bounds.bytes {
            let Some((stamp, old)) = self.order.pop_front() else {
                break;
            };
            if self.runs.get(&old).is_some_and(|r| r.touched == stamp) {
                self.remove(&old);
            }
        }
        // Stale order entries (re-stamped runs) must not pile up.
        if self.order.len() > 4 * self.runs.len() + 1024 {
            let runs = &self.runs;
            self.order
                .retain(|(s, id)| runs.get(id).is_some_and(|r| r.touched == *s));
        }
    }

    /// Summaries, most recently active first, of runs in `state` (every state when `None`).
    pub fn list(&self, state: Option<&str>, limit: usize) -> Vec<(u64, RunSummary)> {
        let mut out: Vec<(u64, &Arc<str>, &Recent)> = self
            .runs
            .iter()
            .filter(|(_, r)| state.is_none_or(|s| s == r.state))
            .map(|(id, r)| (r.touched, id, r))
            .collect();
        out.sort_unstable_by_key(|a| std::cmp::Reverse(a.0));
        out.truncate(limit);
        out.into_iter()
            .map(|(_, id, r)| (r.last_ts_ns, summary(id, r)))
            .collect()
    }

    /// A run's summary and its most recent events (oldest first).
    pub fn get(&self, run_id: &str) -> Option<(RunSummary, Vec<Stored>)> {
        let (id, r) = self.runs.get_key_value(run_id)?;
        Some((summary(id, r), r.recent.iter().cloned().collect()))
    }

    /// Runs remembered, and the bytes they take.
    pub fn counts(&self) -> (usize, usize) {
        (self.runs.len(), self.held)
    }
}

fn summary(id: &str, r: &Recent) -> RunSummary {
    RunSummary {
        run_id: id.to_string(),
        state: r.state,
        kept_by: r.kept_by.as_deref().map(str::to_string),
        events: r.events,
        bytes: r.bytes,
        first_ts_ns: r.first_ts_ns,
        last_ts_ns: r.last_ts_ns,
        types: r.types.to_map(),
        spilled_events: None,
        lost_events: None,
        spilled_bytes: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Line, parse_owned};

    fn ev(line: &str) -> Event {
        match parse_owned(line.as_bytes(), 1 << 20) {
            Ok(Line::Event(e)) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    fn bounds(runs: usize, events: usize, bytes: usize) -> RunsBounds {
        RunsBounds {
            runs,
            events,
            bytes,
        }
    }

    #[test]
    fn seen_runs_keep_their_most_recent_events_and_the_least_recent_run_goes() {
        let mut v = RunsView::new(bounds(2, 3, 1 << 20));
        let batch: Vec<Event> = (0..5)
            .map(|i| {
                ev(&format!(
                    r#"{{"type":"t","run_id":"a","data":{{"i":{i}}}}}"#
                ))
            })
            .collect();
        v.seen(&batch);
        let (s, events) = v.get("a").unwrap();
        assert_eq!(s.events, 5);
        assert_eq!(s.state, "seen");
        let is: Vec<u8> = events.iter().map(|e| e.data()[5]).collect();
        assert_eq!(is, [b'2', b'3', b'4'], "the most recent 3, oldest first");
        v.seen(&[ev(r#"{"type":"t","run_id":"b"}"#)]);
        v.seen(&[ev(r#"{"type":"t","run_id":"a"}"#)]);
        v.seen(&[ev(r#"{"type":"t","run_id":"c"}"#)]);
        assert!(v.get("b").is_none(), "b was the least recently active");
        assert!(v.get("a").is_some() && v.get("c").is_some());
        let listed: Vec<String> = v
            .list(None, 10)
            .into_iter()
            .map(|(_, s)| s.run_id)
            .collect();
        assert_eq!(listed, ["c", "a"]);
    }

    #[test]
    fn the_byte_bound_holds_whatever_the_run_ids() {
        let mut v = RunsView::new(bounds(1_000_000, 100, 256 << 10));
        for i in 0..2000 {
            let id = format!("{i}-{}", "x".repeat(1000));
            let data = "y".repeat(500);
            v.seen(&[ev(&format!(
                r#"{{"type":"t","run_id":"{id}","data":"{data}"}}"#
            ))]);
            let (_, held) = v.counts();
            assert!(held <= 256 << 10, "{held}");
        }
        assert!(v.counts().0 > 50);
    }

    #[test]
    fn decided_runs_replace_their_seen_entry_and_filter_by_state() {
        let mut v = RunsView::new(bounds(10, 10, 1 << 20));
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let mut types = TypeCounts::default();
        types.add(&Arc::from("test_end"), 2);
        v.decided(
            &a,
            Some(Arc::from("failed")),
            2,
            100,
            1,
            2,
            types,
            std::iter::empty(),
        );
        v.decided(
            &b,
            None,
            1,
            10,
            1,
            1,
            TypeCounts::default(),
            std::iter::empty(),
        );
        let kept = v.list(Some("kept"), 10);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1.kept_by.as_deref(), Some("failed"));
        assert_eq!(kept[0].1.types["test_end"], 2);
        assert_eq!(v.list(Some("dropped"), 10)[0].1.run_id, "b");
    }

    #[test]
    fn type_counts_are_bounded() {
        let mut t = TypeCounts::default();
        for i in 0..100 {
            t.add(&Arc::from(format!("t{i}")), 1);
        }
        let m = t.to_map();
        assert_eq!(m.len(), MAX_TYPES_PER_RUN);
        assert_eq!(m.values().sum::<u64>(), 100);
        assert!(m["_other"] > 1);
    }
}
