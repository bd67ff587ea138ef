//! The live tail of the events passing through admission, and how events are shown.
//!
//! In: every admitted batch, through [`EventViews::observe`] (the ingest `Observer`), before
//! sampling and plugins. Out: batches handed to each live-tail subscriber (`GET /v1/tail`,
//! `GET /v1/ws/tail`), only while one is connected (the ingest side then costs one atomic load
//! per batch). Each subscriber has its own bounded buffer ([`TAIL_BACKLOG`] batches and
//! [`TAIL_BACKLOG_EVENTS`] events): a batch that does not fit is not given to that subscriber, its events are counted (for the
//! subscriber, which tells its client in-band, and in `outrigger_live_tail_dropped_total`), and
//! ingest never waits for a subscriber. [`render`] shows an event as native JSON with
//! `control.redact_fields` replaced by `"***"` (top-level `data` fields and attributes), applied
//! when the event is read, so a change of the list applies at once; the runs view
//! (`tail::runs`) and debug sessions render with it too. Holds no task; a subscription ends
//! when its stream (and so its [`TailSubscription`]) is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::event::Event;

/// Batches, and events in them, buffered for one tail subscriber; past either, batches are
/// dropped for that subscriber.
pub const TAIL_BACKLOG: usize = 256;
pub const TAIL_BACKLOG_EVENTS: usize = 65_536;

/// One subscriber as the ingest side sees it.
struct Slot {
    id: u64,
    tx: mpsc::Sender<Arc<[Event]>>,
    /// Events not handed to this subscriber since it last asked.
    missed: AtomicU64,
    /// Events in its buffer now.
    queued: AtomicUsize,
    dropped: prometheus::IntCounter,
}

type Slots = Arc<RwLock<Arc<[Arc<Slot>]>>>;

/// The live tail and the redaction list.
pub struct EventViews {
    slots: Slots,
    /// Live [`TailSubscription`]s: checked without a lock on every batch.
    subscribers: Arc<AtomicUsize>,
    next: AtomicU64,
    redact: RwLock<Arc<[String]>>,
}

/// A tail client's receiver; counted while it lives, removed when dropped.
pub struct TailSubscription {
    rx: mpsc::Receiver<Arc<[Event]>>,
    slot: Arc<Slot>,
    slots: Slots,
    count: Arc<AtomicUsize>,
}

impl TailSubscription {
    /// The next batch; `None` once the views are gone.
    pub async fn recv(&mut self) -> Option<Arc<[Event]>> {
        let b = self.rx.recv().await?;
        self.slot.queued.fetch_sub(b.len(), Ordering::Relaxed);
        Some(b)
    }

    /// Events this subscriber was not given (its buffer was full) since the last call.
    pub fn take_missed(&self) -> u64 {
        self.slot.missed.swap(0, Ordering::Relaxed)
    }
}

impl Drop for TailSubscription {
    fn drop(&mut self) {
        let mut slots = self.slots.write();
        let kept: Vec<Arc<Slot>> = slots
            .iter()
            .filter(|s| s.id != self.slot.id)
            .cloned()
            .collect();
        *slots = kept.into();
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventViews {
    /// The tail, and events shown with `redact_fields` hidden.
    pub fn new(redact_fields: &[String]) -> EventViews {
        EventViews {
            slots: Arc::new(RwLock::new(Arc::from(Vec::new()))),
            subscribers: Arc::new(AtomicUsize::new(0)),
            next: AtomicU64::new(0),
            redact: RwLock::new(redact_fields.into()),
        }
    }

    /// Applies a reloaded `control.redact_fields`.
    pub fn reconfigure(&self, redact_fields: &[String]) {
        *self.redact.write() = redact_fields.into();
    }

    /// The ingest observer: sees every admitted batch. Never waits.
    pub fn observe(&self, events: &[Event]) {
        if self.subscribers.load(Ordering::Relaxed) == 0 || events.is_empty() {
            return;
        }
        let slots = self.slots.read().clone();
        let batch: Arc<[Event]> = events.into();
        let n = batch.len();
        for s in slots.iter() {
            let room = s.queued.load(Ordering::Relaxed) + n <= TAIL_BACKLOG_EVENTS;
            if room && s.tx.try_send(batch.clone()).is_ok() {
                s.queued.fetch_add(n, Ordering::Relaxed);
            } else {
                s.missed.fetch_add(n as u64, Ordering::Relaxed);
                s.dropped.inc_by(n as u64);
            }
        }
    }

    /// A new tail subscription; events it misses count in `dropped`.
    pub fn subscribe(&self, dropped: prometheus::IntCounter) -> TailSubscription {
        let (tx, rx) = mpsc::channel(TAIL_BACKLOG);
        let slot = Arc::new(Slot {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            tx,
            missed: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            dropped,
        });
        {
            let mut slots = self.slots.write();
            let mut v: Vec<Arc<Slot>> = slots.iter().cloned().collect();
            v.push(slot.clone());
            *slots = v.into();
        }
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        TailSubscription {
            rx,
            slot,
            slots: self.slots.clone(),
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
}

/// An event as native JSON (`id`, `type`, `ts_ns`, `run_id`, `attributes`, `data`), with
/// `redact` fields of `data` (top level) and of the attributes replaced by `"***"`.
pub fn render_event(e: &Event, redact: &[String]) -> serde_json::Value {
    render(
        e.id,
        &e.kind,
        e.ts_ns,
        e.run_id.as_deref(),
        &e.attributes,
        &e.data,
        redact,
    )
}

/// An event's parts as native JSON, with `redact` fields hidden (see [`render_event`]). An
/// `id` of 0 (not assigned yet) is left out.
pub fn render(
    id: u128,
    kind: &str,
    ts_ns: u64,
    run_id: Option<&str>,
    attributes: &[(String, String)],
    data: &[u8],
    redact: &[String],
) -> serde_json::Value {
    const HIDDEN: &str = "***";
    let mut out = serde_json::Map::new();
    if id != 0 {
        out.insert("id".into(), crate::event::format_id(id).into());
    }
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
    fn redaction_of_data_fields_and_attributes() {
        let v = EventViews::new(&["password".to_string(), "token".to_string()]);
        let e = ev(
            r#"{"type":"login","run_id":"r","data":{"user":"ann","password":"hunter2","nested":{"password":"kept"}},"attributes":{"token":"t","k":"v"}}"#,
        );
        let out = render_event(&e, &v.redact_fields());
        assert_eq!(out["data"]["password"], "***");
        assert_eq!(out["data"]["user"], "ann");
        assert_eq!(out["data"]["nested"]["password"], "kept", "top level only");
        assert_eq!(out["attributes"]["token"], "***");
        assert_eq!(out["attributes"]["k"], "v");
        assert_eq!(out["run_id"], "r");
        v.reconfigure(&[]);
        assert_eq!(
            render_event(&e, &v.redact_fields())["data"]["password"],
            "hunter2"
        );
    }

    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::new("c", "c").unwrap()
    }

    #[test]
    fn tail_gets_batches_only_while_subscribed() {
        let v = EventViews::new(&[]);
        v.observe(&[ev(r#"{"type":"before"}"#)]);
        let mut sub = v.subscribe(counter());
        assert_eq!(v.subscribers(), 1);
        v.observe(&[ev(r#"{"type":"after","run_id":"r"}"#)]);
        let got = sub.rx.try_recv().unwrap();
        sub.slot.queued.fetch_sub(got.len(), Ordering::Relaxed);
        assert_eq!(&*got[0].kind, "after");
        assert!(sub.rx.try_recv().is_err());
        drop(sub);
        assert_eq!(v.subscribers(), 0);
        v.observe(&[ev(r#"{"type":"nobody"}"#)]);
    }

    #[tokio::test]
    async fn a_full_subscriber_misses_batches_and_others_do_not() {
        let v = EventViews::new(&[]);
        let dropped = counter();
        let slow = v.subscribe(dropped.clone());
        let mut fast = v.subscribe(counter());
        let two = [ev(r#"{"type":"a"}"#), ev(r#"{"type":"b"}"#)];
        for _ in 0..TAIL_BACKLOG + 3 {
            v.observe(&two);
            let got = fast.recv().await;
            assert!(got.is_some(), "a reading subscriber gets every batch");
        }
        assert_eq!(slow.take_missed(), 6, "three batches of two events");
        assert_eq!(slow.take_missed(), 0);
        assert_eq!(dropped.get(), 6);
        // A bound in events too: one big batch that does not fit.
        let mut roomy = v.subscribe(counter());
        let big: Vec<Event> = (0..TAIL_BACKLOG_EVENTS + 1)
            .map(|_| ev(r#"{"type":"x"}"#))
            .collect();
        v.observe(&big);
        assert_eq!(roomy.take_missed(), big.len() as u64);
        v.observe(&two);
        assert_eq!(roomy.recv().await.unwrap().len(), 2);
    }
}
