//! The live tail's two transports and their shared filters: `GET /v1/ws/tail` (WebSocket) and
//! `GET /v1/tail` (Server-Sent Events).
//!
//! In: a subscription to the admitted batches ([`super::views::TailSubscription`], bounded per
//! subscriber) and the query: `type=T` (repeatable or comma-separated; `prefix*` matches a
//! prefix), `run_id=R` (repeatable), `when=EXPR` (a CEL condition, SPEC "Conditions"; a bad
//! one is 400 with its position), `rate=N` (at most N events a second to this subscriber; the
//! rest are skipped and counted: the console asks for this so that a browser stays usable at
//! any rate). Out: one message per matching event, the native JSON with
//! `control.redact_fields` hidden. Told in-band: a slow subscriber whose buffer overflowed gets
//! `{"lagged": {"missed_events": N}}` (SSE: `event: lagged`), one whose `rate` skipped events
//! gets `{"sampled": {"skipped_events": N}}` once a second (SSE: `event: sampled`). The
//! WebSocket starts with `{"subscribed": {…filters}}` and checks the browser's `Origin`
//! (same host, or `control.cors`). A stream ends when its client goes, or on shutdown (the
//! WebSocket is closed with 1001).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::views::{self, TailSubscription};
use super::{ApiError, ControlState, TailStop};
use crate::condition::Condition;
use crate::event::Event;
use crate::metrics::Metrics;

/// What a tail subscriber asked to see.
#[derive(Debug, Default)]
pub struct TailFilter {
    types: Vec<String>,
    run_ids: Vec<String>,
    when: Option<Condition>,
    rate: Option<u32>,
}

/// True when `kind` matches one of the filters (exact, or a prefix ending in `*`); no filter
/// matches everything.
pub fn type_matches(filters: &[String], kind: &str) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| match f.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => f == kind,
        })
}

impl TailFilter {
    /// Reads `type`, `run_id`, `when` and `rate`; `api_key` is passed over (the key check has
    /// read it). Anything else is refused, naming it.
    pub fn parse(params: Vec<(String, String)>) -> Result<TailFilter, String> {
        let mut f = TailFilter::default();
        for (k, v) in params {
            match k.as_str() {
                "type" => f.types.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_string),
                ),
                "run_id" if !v.is_empty() => f.run_ids.push(v),
                "run_id" => {}
                "when" if v.trim().is_empty() => {}
                "when" => {
                    let c = Condition::compile(&v).map_err(|e| format!("when: {e}"))?;
                    f.when = Some(c);
                }
                "rate" if v.is_empty() => {}
                "rate" => {
                    let r: u32 = v.parse().ok().filter(|r| *r > 0).ok_or_else(|| {
                        format!("rate `{v}`: a whole number of events a second, at least 1")
                    })?;
                    f.rate = Some(r);
                }
                "api_key" => {}
                other => {
                    return Err(format!(
                        "unknown parameter `{other}` (type, run_id, when and rate are understood)"
                    ));
                }
            }
        }
        Ok(f)
    }

    pub fn matches(&self, e: &Event, m: &Metrics) -> bool {
        type_matches(&self.types, &e.kind)
            && (self.run_ids.is_empty()
                || e.run_id
                    .as_deref()
                    .is_some_and(|r| self.run_ids.iter().any(|w| w == r)))
            && self.when.as_ref().is_none_or(|c| c.matches(e, m, "tail"))
    }

    /// No filter: every event matches.
    fn is_empty(&self) -> bool {
        self.types.is_empty() && self.run_ids.is_empty() && self.when.is_none()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "type": self.types,
            "run_id": self.run_ids,
            "when": self.when.as_ref().map(|c| c.source()),
            "rate": self.rate,
        })
    }
}

/// `rate`: a token bucket of one second's worth, counting what it skips.
struct RateGate {
    per_sec: Option<f64>,
    tokens: f64,
    last: Instant,
    skipped: u64,
}

impl RateGate {
    fn new(rate: Option<u32>) -> RateGate {
        let per_sec = rate.map(f64::from);
        RateGate {
            per_sec,
            tokens: per_sec.unwrap_or(0.0),
            last: Instant::now(),
            skipped: 0,
        }
    }

    /// Adds the tokens earned since the last refill (once per batch: no clock read per event).
    fn refill(&mut self) {
        let Some(r) = self.per_sec else { return };
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * r).min(r);
        self.last = now;
    }

    /// Skips a whole batch of matching events when no token is left (a subscriber without
    /// filters then costs nothing per event past its rate); false when some may go out.
    fn skip_all(&mut self, matching: usize) -> bool {
        let spent = self.per_sec.is_some() && self.tokens < 1.0;
        if spent {
            self.skipped += matching as u64;
        }
        spent
    }

    /// True when the next event may go out.
    fn admit(&mut self) -> bool {
        if self.per_sec.is_none() {
            return true;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.skipped += 1;
            false
        }
    }
}

/// The `Origin` of a browser request is allowed: none (not a browser), the control API's own
/// host, or one of `control.cors`.
pub fn origin_allowed(headers: &HeaderMap, cors: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let same = host.is_some_and(|h| {
        origin.strip_prefix("http://") == Some(h) || origin.strip_prefix("https://") == Some(h)
    });
    same || cors.iter().any(|c| c == "*" || c == origin)
}

/// `GET /v1/ws/tail`: the live tail over WebSocket.
pub(crate) async fn ws_tail(
    State(st): State<Arc<ControlState>>,
    Extension(TailStop(stop)): Extension<TailStop>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let filter = TailFilter::parse(params).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    if !origin_allowed(&headers, &st.cors.read()) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "this Origin may not open the tail: add it to control.cors".into(),
        ));
    }
    let upgrade = upgrade.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let sub = st
        .views
        .subscribe(st.metrics.live_tail_dropped.with_label_values(&["ws"]));
    tracing::debug!(filter = ?filter, subscribers = st.views.subscribers(), "WebSocket tail client connected");
    Ok(upgrade
        .on_upgrade(move |socket| ws_stream(socket, sub, filter, st, stop))
        .into_response())
}

fn text(v: &serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

async fn ws_stream(
    socket: WebSocket,
    mut sub: TailSubscription,
    filter: TailFilter,
    st: Arc<ControlState>,
    stop: CancellationToken,
) {
    let (mut tx, mut rx) = socket.split();
    if tx
        .send(text(&serde_json::json!({"subscribed": filter.describe()})))
        .await
        .is_err()
    {
        return;
    }
    let mut gate = RateGate::new(filter.rate);
    let mut notices = tokio::time::interval(Duration::from_secs(1));
    notices.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let close = CloseFrame { code: 1001, reason: "the daemon is shutting down".into() };
                let _ = tx.send(Message::Close(Some(close))).await;
                return;
            }
            m = rx.next() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            b = sub.recv() => {
                let Some(batch) = b else { return };
                let missed = sub.take_missed();
                if missed > 0 && tx.feed(text(&serde_json::json!({"lagged": {"missed_events": missed}}))).await.is_err() {
                    return;
                }
                let redact = st.views.redact_fields();
                gate.refill();
                let all = filter.is_empty() && gate.skip_all(batch.len());
                for e in batch.iter().take(if all { 0 } else { batch.len() }) {
                    if filter.matches(e, &st.metrics) && gate.admit() {
                        let v = views::render_event(e, &redact);
                        if tx.feed(text(&v)).await.is_err() {
                            return;
                        }
                    }
                }
                if tx.flush().await.is_err() {
                    return;
                }
            }
            _ = notices.tick() => {
                let missed = sub.take_missed();
                if missed > 0 && tx.feed(text(&serde_json::json!({"lagged": {"missed_events": missed}}))).await.is_err() {
                    return;
                }
                if gate.skipped > 0 {
                    let n = std::mem::take(&mut gate.skipped);
                    if tx.feed(text(&serde_json::json!({"sampled": {"skipped_events": n, "rate": filter.rate}}))).await.is_err() {
                        return;
                    }
                }
                if tx.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

struct SseTail {
    sub: TailSubscription,
    pending: VecDeque<SseEvent>,
    filter: TailFilter,
    gate: RateGate,
    st: Arc<ControlState>,
    stop: CancellationToken,
}

impl SseTail {
    fn lagged(&mut self) {
        let missed = self.sub.take_missed();
        if missed > 0 {
            self.pending.push_back(
                SseEvent::default()
                    .event("lagged")
                    .data(serde_json::json!({"missed_events": missed}).to_string()),
            );
        }
        if self.gate.skipped > 0 {
            let n = std::mem::take(&mut self.gate.skipped);
            self.pending
                .push_back(SseEvent::default().event("sampled").data(
                    serde_json::json!({"skipped_events": n, "rate": self.filter.rate}).to_string(),
                ));
        }
    }
}

/// `GET /v1/tail?type=T&run_id=R&when=EXPR&rate=N`: admitted events as Server-Sent Events, one
/// native JSON event per `data:`, with the same filters and in-band notices as the WebSocket.
pub(crate) async fn sse_tail(
    State(st): State<Arc<ControlState>>,
    Extension(TailStop(stop)): Extension<TailStop>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let filter = TailFilter::parse(params).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let sub = st
        .views
        .subscribe(st.metrics.live_tail_dropped.with_label_values(&["sse"]));
    tracing::debug!(filter = ?filter, subscribers = st.views.subscribers(), "tail client connected");
    let mut pending = VecDeque::new();
    // Lets the client know the subscription is live before the first event.
    pending.push_back(SseEvent::default().comment("outrigger tail"));
    let state = SseTail {
        sub,
        pending,
        gate: RateGate::new(filter.rate),
        filter,
        st,
        stop,
    };
    let stream = futures_util::stream::unfold(state, |mut t| async move {
        loop {
            if let Some(ev) = t.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), t));
            }
            tokio::select! {
                _ = t.stop.cancelled() => return None,
                got = t.sub.recv() => {
                    let batch = got?;
                    t.lagged();
                    let redact = t.st.views.redact_fields();
                    t.gate.refill();
                    let all = t.filter.is_empty() && t.gate.skip_all(batch.len());
                    for e in batch.iter().take(if all { 0 } else { batch.len() }) {
                        if t.filter.matches(e, &t.st.metrics) && t.gate.admit() {
                            let v = views::render_event(e, &redact);
                            t.pending.push_back(SseEvent::default().data(v.to_string()));
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => t.lagged(),
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn type_filters() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(type_matches(&[], "anything"));
        assert!(type_matches(&f(&["a", "job.*"]), "job.done"));
        assert!(type_matches(&f(&["a", "job.*"]), "a"));
        assert!(!type_matches(&f(&["a", "job.*"]), "ab"));
        assert!(!type_matches(&f(&["a", "job.*"]), "jobs"));
    }

    #[test]
    fn filters_parse_and_refuse() {
        let f = TailFilter::parse(params(&[
            ("type", "a,b"),
            ("run_id", "r"),
            ("when", "data.n > 1"),
            ("api_key", "k"),
        ]))
        .unwrap();
        assert_eq!(f.types, ["a", "b"]);
        let e = TailFilter::parse(params(&[("when", "data.n >")])).unwrap_err();
        assert!(e.starts_with("when: line 1, column"), "{e}");
        let e = TailFilter::parse(params(&[("typo", "x")])).unwrap_err();
        assert!(e.contains("`typo`"), "{e}");
        assert!(TailFilter::parse(params(&[("rate", "0")])).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_gate_lets_a_second_worth_through() {
        let mut g = RateGate::new(Some(10));
        let passed = (0..100).filter(|_| g.admit()).count();
        assert_eq!(passed, 10);
        assert_eq!(g.skipped, 90);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            (0..100).filter(|_| g.admit()).count(),
            0,
            "refilled once per batch"
        );
        g.refill();
        assert!(!g.skip_all(100), "tokens left");
        assert_eq!((0..100).filter(|_| g.admit()).count(), 5);
        assert!(g.skip_all(1000));
        assert_eq!(g.skipped, 90 + 95 + 100 + 1000);
        let mut open = RateGate::new(None);
        assert!((0..1000).all(|_| open.admit()));
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&h, &[]), "not a browser");
        h.insert(header::HOST, "127.0.0.1:9464".parse().unwrap());
        h.insert(header::ORIGIN, "http://127.0.0.1:9464".parse().unwrap());
        assert!(origin_allowed(&h, &[]), "the console itself");
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["http://evil.example".into()]));
        assert!(origin_allowed(&h, &["*".into()]));
    }
}
