//! The live tail of the events passing through admission, and how events are shown.
//!
//! In: every admitted batch, through [`EventViews::observe`] (the ingest `Observer`), before
//! sampling and plugins. Out: batches broadcast to `GET /v1/tail` subscribers, only while one
//! is connected (the ingest side then costs one atomic load per batch). [`render`] shows an
//! event as native JSON with `control.redact_fields` replaced by `"***"` (top-level `data`
//! fields and attributes), applied when the event is read, so a change of the list applies at
//! once; the runs view (`tail::runs`) renders with it too. Holds no task; tail streams end with
//! their client or on shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use tokio::sync::broadcast;

use crate::event::Event;

/// Batches kept for a slow tail subscriber before it is told it missed some.
const TAIL_BACKLOG: usize = 256;

/// The live tail and the redaction list.
pub struct EventViews {
    tail: broadcast::Sender<Arc<[Event]>>,
    /// Live [`TailSubscription`]s: checked without a lock on every batch.
    subscribers: Arc<AtomicUsize>,
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

impl EventViews {
    /// The tail, and events shown with `redact_fields` hidden.
    pub fn new(redact_fields: &[String]) -> EventViews {
        let (tail, _) = broadcast::channel(TAIL_BACKLOG);
        EventViews {
            tail,
            subscribers: Arc::new(AtomicUsize::new(0)),
            redact: RwLock::new(redact_fields.into()),
        }
    }

    /// Applies a reloaded `control.redact_fields`.
    pub fn reconfigure(&self, redact_fields: &[String]) {
        *self.redact.write() = redact_fields.into();
    }

    /// The ingest observer: sees every admitted batch.
    pub fn observe(&self, events: &[Event]) {
        if self.subscribers.load(Ordering::Relaxed) > 0 {
            // No subscriber can miss this: a send fails only when all have gone.
            let _ = self.tail.send(events.into());
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

/// An event's parts as native JSON, with `redact` fields hidden (see [`render_event`]).
pub fn render(
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

    #[test]
    fn tail_gets_batches_only_while_subscribed() {
        let v = EventViews::new(&[]);
        v.observe(&[ev(r#"{"type":"before"}"#)]);
        let mut sub = v.subscribe();
        assert_eq!(v.subscribers(), 1);
        v.observe(&[ev(r#"{"type":"after","run_id":"r"}"#)]);
        let got = sub.rx.try_recv().unwrap();
        assert_eq!(&*got[0].kind, "after");
        assert!(sub.rx.try_recv().is_err());
        drop(sub);
        assert_eq!(v.subscribers(), 0);
    }
}
