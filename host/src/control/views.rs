//! Views of the events passing through admission: the live tail and the recent events per run.
//!
//! In: every admitted batch, through [`EventViews::observe`] (the ingest `Observer`), before
//! sampling and plugins. Out: batches broadcast to `GET /v1/tail` subscribers (only while one
//! is connected), and a bounded ring of recent events per run for `GET /v1/runs/{id}`: at most
//! `control.runs` runs of `control.run_events` events, the least recently active run evicted
//! first. Events are rendered as native JSON with `control.redact_fields` replaced by `"***"`
//! (top-level `data` fields and attributes) when they are read, so a change of the list applies
//! at once. The ingest side takes one lock per batch and does nothing when there is neither a
//! subscriber nor a run ring. Holds no task; tail streams end with their client or on shutdown.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

use crate::event::{Event, Fnv};

/// Batches kept for a slow tail subscriber before it is told it missed some.
const TAIL_BACKLOG: usize = 256;

/// An event kept in a run's ring: its own copy of the data, not a slice of a receive buffer.
#[derive(Clone, Debug)]
struct Stored {
    kind: Arc<str>,
    ts_ns: u64,
    attributes: Vec<(String, String)>,
    data: Bytes,
}

struct Run {
    events: VecDeque<Stored>,
    /// Position in `RunRing::order`.
    touched: u64,
}

/// The per-run rings. Recency is kept the cheap way (the ingest path touches a run per event):
/// a touch only stamps the run; `order` holds runs in the order they were queued with the stamp
/// they had then, and eviction gives a run touched since then a second chance at the back.
/// That evicts the least recently active run, or one close to it, in O(1) amortized.
#[derive(Default)]
struct RunRing {
    runs: HashMap<Arc<str>, Run, BuildHasherDefault<Fnv>>,
    order: VecDeque<(u64, Arc<str>)>,
    seq: u64,
    max_runs: usize,
    max_events: usize,
}

impl RunRing {
    /// Marks `run` as the most recently active, creating it (and evicting the least recently
    /// active run when full) if needed.
    fn touch(&mut self, run: &Arc<str>) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(r) = self.runs.get_mut(run) {
            r.touched = seq;
            return;
        }
        self.evict_to(self.max_runs.saturating_sub(1));
        self.runs.insert(
            run.clone(),
            Run {
                events: VecDeque::new(),
                touched: seq,
            },
        );
        self.order.push_back((seq, run.clone()));
    }

    /// Evicts the least recently active runs until at most `keep` remain.
    fn evict_to(&mut self, keep: usize) {
        while self.runs.len() > keep {
            let Some((stamp, old)) = self.order.pop_front() else {
                break;
            };
            match self.runs.get(&old) {
                // Touched since it was queued: a second chance, at the back.
                Some(r) if r.touched != stamp => self.order.push_back((r.touched, old)),
                Some(_) => {
                    self.runs.remove(&old);
                }
                None => {}
            }
        }
    }

    fn resize(&mut self, max_runs: usize, max_events: usize) {
        self.max_runs = max_runs;
        self.max_events = max_events;
        self.evict_to(max_runs);
        for r in self.runs.values_mut() {
            while r.events.len() > max_events {
                r.events.pop_front();
            }
        }
    }
}

/// The live tail and the per-run rings.
pub struct EventViews {
    tail: broadcast::Sender<Arc<[Event]>>,
    /// Live [`TailSubscription`]s: checked without a lock on every batch.
    subscribers: Arc<AtomicUsize>,
    runs: Mutex<RunRing>,
    runs_enabled: AtomicBool,
    redact: RwLock<Arc<[String]>>,
}

/// A tail client's receiver; counted while it lives.
pub struct TailSubscription {
    pub rx: broadcast::Receiver<Arc<[Event]>>,
    count: Arc<AtomicUsize>,
}

impl Drop for TailSubscription {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One run's recent events, for `GET /v1/runs/{id}`.
#[derive(serde::Serialize)]
pub struct RunView {
    pub run_id: String,
    /// Events kept, oldest first (at most `control.run_events`).
    pub events: Vec<serde_json::Value>,
}

impl EventViews {
    /// Views keeping `runs` runs of `run_events` events each (0 turns the run rings off).
    pub fn new(runs: usize, run_events: usize, redact_fields: &[String]) -> EventViews {
        let (tail, _) = broadcast::channel(TAIL_BACKLOG);
        EventViews {
            tail,
            subscribers: Arc::new(AtomicUsize::new(0)),
            runs: Mutex::new(RunRing {
                max_runs: runs,
                max_events: run_events,
                ..RunRing::default()
            }),
            runs_enabled: AtomicBool::new(runs > 0 && run_events > 0),
            redact: RwLock::new(redact_fields.into()),
        }
    }

    /// Applies reloaded `control` settings: ring bounds (shrinking evicts at once) and the
    /// redacted fields.
    pub fn reconfigure(&self, runs: usize, run_events: usize, redact_fields: &[String]) {
        self.runs.lock().resize(runs, run_events);
        self.runs_enabled
            .store(runs > 0 && run_events > 0, Ordering::Relaxed);
        *self.redact.write() = redact_fields.into();
    }

    /// The ingest observer: sees every admitted batch.
    pub fn observe(&self, events: &[Event]) {
        if self.subscribers.load(Ordering::Relaxed) > 0 {
            // No subscriber can miss this: a send fails only when all have gone.
            let _ = self.tail.send(events.into());
        }
        self.keep_runs(events);
    }

    fn keep_runs(&self, events: &[Event]) {
        // The common cases cost no lock: rings off, or no event of the batch has a run.
        if !self.runs_enabled.load(Ordering::Relaxed) || !events.iter().any(|e| e.run_id.is_some())
        {
            return;
        }
        let mut ring = self.runs.lock();
        if ring.max_runs == 0 || ring.max_events == 0 {
            return;
        }
        // One allocation for the whole batch's data; each stored event slices it.
        let total: usize = events
            .iter()
            .filter(|e| e.run_id.is_some())
            .map(|e| e.data.len())
            .sum();
        let mut buf = BytesMut::with_capacity(total);
        for e in events.iter().filter(|e| e.run_id.is_some()) {
            buf.extend_from_slice(&e.data);
        }
        let mut data = buf.freeze();
        let max_events = ring.max_events;
        let mut last: Option<Arc<str>> = None;
        for e in events {
            let Some(run) = &e.run_id else { continue };
            let stored = Stored {
                kind: e.kind.clone(),
                ts_ns: e.ts_ns,
                attributes: e.attributes.clone(),
                data: data.split_to(e.data.len()),
            };
            // Consecutive events of one run are the norm: touch it once.
            let same = last
                .as_ref()
                .is_some_and(|l| Arc::ptr_eq(l, run) || l == run);
            if !same {
                last = Some(run.clone());
                ring.touch(run);
            }
            let Some(r) = ring.runs.get_mut(run) else {
                continue;
            };
            if r.events.len() >= max_events {
                r.events.pop_front();
            }
            r.events.push_back(stored);
        }
    }

    /// A new tail subscription.
    pub fn subscribe(&self) -> TailSubscription {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        TailSubscription {
            rx: self.tail.subscribe(),
            count: self.subscribers.clone(),
        }
    }

    /// How many tail clients are connected.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// The fields redacted now.
    pub fn redact_fields(&self) -> Arc<[String]> {
        self.redact.read().clone()
    }

    /// The recent events of `run_id`, redacted; `None` when the run is not (or no longer) kept.
    pub fn run(&self, run_id: &str) -> Option<RunView> {
        let events: Vec<Stored> = {
            let ring = self.runs.lock();
            ring.runs.get(run_id)?.events.iter().cloned().collect()
        };
        let redact = self.redact_fields();
        Some(RunView {
            run_id: run_id.to_string(),
            events: events
                .iter()
                .map(|s| {
                    render(
                        &s.kind,
                        s.ts_ns,
                        Some(run_id),
                        &s.attributes,
                        &s.data,
                        &redact,
                    )
                })
                .collect(),
        })
    }

    /// Runs kept now, and events across them.
    pub fn run_counts(&self) -> (usize, usize) {
        let ring = self.runs.lock();
        (
            ring.runs.len(),
            ring.runs.values().map(|r| r.events.len()).sum(),
        )
    }
}

/// An event as native JSON (`type`, `ts_ns`, `run_id`, `attributes`, `data`), with `redact`
/// fields of `data` (top level) and of the attributes replaced by `"***"`.
pub fn render_event(e: &Event, redact: &[String]) -> serde_json::Value {
    render(
        &e.kind,
        e.ts_ns,
        e.run_id.as_deref(),
        &e.attributes,
        &e.data,
        redact,
    )
}

fn render(
    kind: &str,
    ts_ns: u64,
    run_id: Option<&str>,
    attributes: &[(String, String)],
    data: &[u8],
    redact: &[String],
) -> serde_json::Value {
    const HIDDEN: &str = "***";
    let mut out = serde_json::Map::new();
    out.insert("type".into(), kind.into());
    out.insert("ts_ns".into(), ts_ns.into());
    if let Some(r) = run_id {
        out.insert("run_id".into(), r.into());
    }
    if !attributes.is_empty() {
        let attrs: serde_json::Map<String, serde_json::Value> = attributes
            .iter()
            .map(|(k, v)| {
                let v = if redact.iter().any(|f| f == k) {
                    HIDDEN
                } else {
                    v.as_str()
                };
                (k.clone(), v.into())
            })
            .collect();
        out.insert("attributes".into(), attrs.into());
    }
    let mut data: serde_json::Value =
        serde_json::from_slice(data).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut data {
        for f in redact {
            if let Some(v) = m.get_mut(f.as_str()) {
                *v = HIDDEN.into();
            }
        }
    }
    out.insert("data".into(), data);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Line, parse_owned};

    fn ev(line: &str) -> Event {
        match parse_owned(line.as_bytes(), 4096) {
            Ok(Line::Event(e)) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn runs_are_bounded_and_least_recently_active_is_evicted() {
        let v = EventViews::new(2, 3, &[]);
        let batch: Vec<Event> = (0..5)
            .map(|i| {
                ev(&format!(
                    r#"{{"type":"t","run_id":"a","data":{{"i":{i}}}}}"#
                ))
            })
            .collect();
        v.observe(&batch);
        let a = v.run("a").unwrap();
        let is: Vec<i64> = a
            .events
            .iter()
            .map(|e| e["data"]["i"].as_i64().unwrap())
            .collect();
        assert_eq!(is, [2, 3, 4], "the most recent 3, oldest first");
        v.observe(&[ev(r#"{"type":"t","run_id":"b"}"#)]);
        // `a` is active again: `b` is now the least recently active.
        v.observe(&[ev(r#"{"type":"t","run_id":"a","data":{"i":5}}"#)]);
        v.observe(&[ev(r#"{"type":"t","run_id":"c"}"#)]);
        assert!(v.run("b").is_none(), "b evicted");
        assert!(v.run("a").is_some() && v.run("c").is_some());
        assert_eq!(v.run_counts(), (2, 4));
        // Events without a run are not kept.
        v.observe(&[ev(r#"{"type":"t"}"#)]);
        assert_eq!(v.run_counts(), (2, 4));
        v.reconfigure(1, 1, &[]);
        assert_eq!(v.run_counts(), (1, 1));
        assert!(v.run("c").is_some());
    }

    #[test]
    fn interleaved_runs_in_one_batch() {
        let v = EventViews::new(10, 10, &[]);
        let batch = vec![
            ev(r#"{"type":"x","run_id":"a","data":"first"}"#),
            ev(r#"{"type":"y","run_id":"b","data":[1,2]}"#),
            ev(r#"{"type":"z","run_id":"a","data":{"k":"second"}}"#),
        ];
        v.observe(&batch);
        let a = v.run("a").unwrap();
        assert_eq!(a.events.len(), 2);
        assert_eq!(a.events[0]["data"], "first");
        assert_eq!(a.events[1]["data"]["k"], "second");
        assert_eq!(a.events[1]["type"], "z");
        assert_eq!(v.run("b").unwrap().events[0]["data"][1], 2);
    }

    #[test]
    fn redaction_of_data_fields_and_attributes() {
        let v = EventViews::new(10, 10, &["password".to_string(), "token".to_string()]);
        let e = ev(
            r#"{"type":"login","run_id":"r","data":{"user":"ann","password":"hunter2","nested":{"password":"kept"}},"attributes":{"token":"t","k":"v"}}"#,
        );
        v.observe(std::slice::from_ref(&e));
        let out = &v.run("r").unwrap().events[0];
        assert_eq!(out["data"]["password"], "***");
        assert_eq!(out["data"]["user"], "ann");
        assert_eq!(out["data"]["nested"]["password"], "kept", "top level only");
        assert_eq!(out["attributes"]["token"], "***");
        assert_eq!(out["attributes"]["k"], "v");
        assert_eq!(out["run_id"], "r");
        let tail = render_event(&e, &v.redact_fields());
        assert_eq!(tail, *out);
        v.reconfigure(10, 10, &[]);
        assert_eq!(v.run("r").unwrap().events[0]["data"]["password"], "hunter2");
    }

    #[test]
    fn tail_gets_batches_only_while_subscribed() {
        let v = EventViews::new(0, 0, &[]);
        v.observe(&[ev(r#"{"type":"before"}"#)]);
        let mut sub = v.subscribe();
        assert_eq!(v.subscribers(), 1);
        v.observe(&[ev(r#"{"type":"after","run_id":"r"}"#)]);
        let got = sub.rx.try_recv().unwrap();
        assert_eq!(&*got[0].kind, "after");
        assert!(sub.rx.try_recv().is_err());
        assert!(v.run("r").is_none(), "run rings off");
        drop(sub);
        assert_eq!(v.subscribers(), 0);
    }
}
