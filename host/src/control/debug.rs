//! Breakpoints and debug sessions (SPEC "Debugging and the console").
//!
//! In: breakpoints set over the control API ([`Debugger::add`]: a CEL `when`, an optional
//! `run_id`, an action, an optional hit count), and every admitted batch: from admission for
//! every ingest path ([`Debugger::observe`]; one atomic load per batch while no breakpoint is
//! set), and from a socket connection that opted in with `{"hello": {"ack": true, "debug":
//! true}}` ([`Debugger::holds`]). Out: a debug session per hit, kept in a store bounded by count
//! and bytes (`control.debug_sessions`, `control.debug_bytes`; the oldest go first), listed
//! newest first; and, for a `pause` hit on an opted-in connection, a [`Hold`] that the
//! connection awaits before it writes the answer to the matching line ([`Debugger::wait`]).
//! A hold ends on `continue`, `step` (the connection then pauses at its next line), after
//! `control.max_pause`, when the client disconnects, on shutdown, when its session is evicted
//! or its breakpoint deleted. Nothing else waits: the event was admitted before the hold, other
//! connections and the pipeline go on. A `pause` hit on any other connection (or HTTP, OTLP)
//! is kept as an `unheld` session and holds nothing; `capture` never holds. A breakpoint with
//! `hits: N` stops after its N-th hit. Holds no task.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::condition::Condition;
use crate::config::Config;
use crate::event::{Event, now_ns};
use crate::metrics::Metrics;

/// Breakpoints that may be set at once.
pub const MAX_BREAKPOINTS: usize = 256;
/// What a session costs beyond its event's bytes (its bookkeeping), for the byte bound.
const SESSION_OVERHEAD: usize = 256;

/// What a breakpoint does on a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Keep the event and its run in a session; never holds anything.
    Capture,
    /// Also hold the answer of an opted-in connection until released.
    Pause,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Capture => "capture",
            Action::Pause => "pause",
        }
    }
}

/// Why a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    Continue,
    /// Released, and the connection pauses at its next line.
    Step,
    MaxPause,
    Disconnect,
    Shutdown,
    /// The session left the bounded store.
    Evicted,
    /// Its breakpoint was deleted.
    Deleted,
}

/// A breakpoint as asked for: `POST /v1/breakpoints`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakpointSpec {
    pub when: Option<String>,
    pub run_id: Option<String>,
    #[serde(default = "pause")]
    pub action: Action,
    /// Stop after this many hits; none: until deleted.
    pub hits: Option<u64>,
}

fn pause() -> Action {
    Action::Pause
}

/// Why a breakpoint was refused.
#[derive(Debug, thiserror::Error)]
pub enum BreakpointError {
    #[error("`when`: {0}")]
    Condition(crate::condition::ConditionError),
    #[error("a breakpoint needs `when` or `run_id`")]
    Empty,
    #[error("`hits` must be at least 1")]
    ZeroHits,
    #[error("at most {MAX_BREAKPOINTS} breakpoints may be set; delete some first")]
    TooMany,
}

/// A breakpoint that is set.
pub struct Breakpoint {
    pub id: String,
    when: Option<Condition>,
    run_id: Option<String>,
    pub action: Action,
    limit: Option<u64>,
    hits: AtomicU64,
    created_ns: u64,
    /// False once its hit count is reached (it is then no longer evaluated).
    active: AtomicBool,
}

impl Breakpoint {
    fn matches(&self, e: &Event, m: &Metrics) -> bool {
        if let Some(r) = &self.run_id
            && e.run_id.as_deref() != Some(r.as_str())
        {
            return false;
        }
        self.when
            .as_ref()
            .is_none_or(|c| c.matches(e, m, "breakpoint"))
    }

    /// Counts a hit; false when the hit count was already reached (by another thread).
    fn take_hit(&self) -> bool {
        let before = self.hits.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Some(l) if before >= l => {
                self.hits.fetch_sub(1, Ordering::Relaxed);
                false
            }
            Some(l) => {
                if before + 1 == l {
                    self.active.store(false, Ordering::Relaxed);
                }
                true
            }
            None => true,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "when": self.when.as_ref().map(|c| c.source()),
            "run_id": self.run_id,
            "action": self.action,
            "hits": self.limit,
            "hit_count": self.hits.load(Ordering::Relaxed),
            "active": self.active.load(Ordering::Relaxed),
            "created_ns": self.created_ns,
        })
    }
}

/// A debug connection: a socket connection that sent `{"hello": {"debug": true}}`.
#[derive(Clone, Debug, Serialize)]
pub struct DebugConn {
    pub id: u64,
    pub ingest: &'static str,
    /// The client's process id, when the socket tells it.
    pub pid: Option<i32>,
}

/// Where a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Captured,
    /// A `pause` hit on a connection that did not opt in: nothing was held.
    Unheld,
    Paused,
    Released(Release),
}

struct Session {
    id: u64,
    breakpoint: String,
    action: Action,
    step: bool,
    event: Event,
    opened_ns: u64,
    opened: Instant,
    state: State,
    conn: Option<DebugConn>,
    release: Option<oneshot::Sender<Release>>,
    released_ns: Option<u64>,
    bytes: usize,
}

impl Session {
    fn summary(&self, max_pause: Duration) -> serde_json::Value {
        let (state, released) = match self.state {
            State::Captured => ("captured", None),
            State::Unheld => ("unheld", None),
            State::Paused => ("paused", None),
            State::Released(r) => ("released", Some(r)),
        };
        let mut v = serde_json::json!({
            "id": self.id.to_string(),
            "breakpoint": self.breakpoint,
            "action": self.action,
            "state": state,
            "released": released,
            "step": self.step,
            "event_id": (self.event.id != 0).then(|| crate::event::format_id(self.event.id)),
            "type": &*self.event.kind,
            "run_id": self.event.run_id.as_deref(),
            "ts_ns": self.event.ts_ns,
            "opened_ns": self.opened_ns,
            "released_ns": self.released_ns,
            "connection": null,
        });
        if let Some(c) = &self.conn {
            let held = self.state == State::Paused;
            v["connection"] = serde_json::json!({
                "id": c.id,
                "ingest": c.ingest,
                "pid": c.pid,
                "held": held,
                "held_ms": held.then(|| self.opened.elapsed().as_millis() as u64),
                "max_pause_ms": held.then_some(max_pause.as_millis() as u64),
            });
        }
        if self.state == State::Unheld {
            v["note"] = "the connection did not opt in ({\"hello\": {\"ack\": true, \"debug\": true}}): nothing was held".into();
        }
        v
    }
}

/// The answer a paused connection waits for; see [`Debugger::wait`].
pub struct Hold {
    pub session: u64,
    /// The breakpoint whose hit this is (a `step` pauses again in its name).
    pub breakpoint: String,
    rx: oneshot::Receiver<Release>,
}

/// Why a release was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("no debug session {0} (unknown, or no longer kept: control.debug_sessions)")]
    NotFound(u64),
    #[error("debug session {0} holds nothing (it is not paused)")]
    NotPaused(u64),
}

#[derive(Default)]
struct Store {
    sessions: VecDeque<Session>,
    bytes: usize,
}

/// Breakpoints, the session store and the holds. One per daemon, shared by admission, the
/// socket ingest and the control API.
pub struct Debugger {
    /// Any active breakpoint: the only thing a batch checks when there is none.
    armed: AtomicBool,
    breakpoints: RwLock<Arc<[Arc<Breakpoint>]>>,
    store: Mutex<Store>,
    next_breakpoint: AtomicU64,
    next_session: AtomicU64,
    next_conn: AtomicU64,
    max_pause_ms: AtomicU64,
    max_sessions: AtomicUsize,
    max_bytes: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Debugger {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Debugger {
        let d = Debugger {
            armed: AtomicBool::new(false),
            breakpoints: RwLock::new(Arc::from(Vec::new())),
            store: Mutex::new(Store::default()),
            next_breakpoint: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            max_pause_ms: AtomicU64::new(0),
            max_sessions: AtomicUsize::new(0),
            max_bytes: AtomicUsize::new(0),
            metrics,
        };
        d.reconfigure(cfg);
        d
    }

    /// Applies `control.max_pause` (to holds that start from now), `control.debug_sessions`
    /// and `control.debug_bytes` (the store is trimmed at once).
    pub fn reconfigure(&self, cfg: &Config) {
        let c = &cfg.control;
        self.max_pause_ms
            .store(c.max_pause.0.as_millis() as u64, Ordering::Relaxed);
        self.max_sessions.store(c.debug_sessions, Ordering::Relaxed);
        self.max_bytes
            .store(c.debug_bytes.0 as usize, Ordering::Relaxed);
        let mut st = self.store.lock();
        self.trim(&mut st);
    }

    /// The longest a hold lasts.
    pub fn max_pause(&self) -> Duration {
        Duration::from_millis(self.max_pause_ms.load(Ordering::Relaxed))
    }

    /// A new debug connection's identity.
    pub fn connection(&self, ingest: &'static str, pid: Option<i32>) -> DebugConn {
        DebugConn {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            ingest,
            pid,
        }
    }

    /// Sets a breakpoint.
    pub fn add(&self, spec: BreakpointSpec) -> Result<Arc<Breakpoint>, BreakpointError> {
        let when = spec
            .when
            .as_deref()
            .filter(|w| !w.trim().is_empty())
            .map(Condition::compile)
            .transpose()
            .map_err(BreakpointError::Condition)?;
        if when.is_none() && spec.run_id.is_none() {
            return Err(BreakpointError::Empty);
        }
        if spec.hits == Some(0) {
            return Err(BreakpointError::ZeroHits);
        }
        let mut bps = self.breakpoints.write();
        if bps.len() >= MAX_BREAKPOINTS {
            return Err(BreakpointError::TooMany);
        }
        let bp = Arc::new(Breakpoint {
            id: format!(
                "bp-{}",
                self.next_breakpoint.fetch_add(1, Ordering::Relaxed)
            ),
            when,
            run_id: spec.run_id,
            action: spec.action,
            limit: spec.hits,
            hits: AtomicU64::new(0),
            created_ns: now_ns(),
            active: AtomicBool::new(true),
        });
        let mut v: Vec<_> = bps.iter().cloned().collect();
        v.push(bp.clone());
        *bps = v.into();
        self.armed.store(true, Ordering::Release);
        tracing::info!(id = %bp.id, action = bp.action.as_str(), "breakpoint set");
        Ok(bp)
    }

    /// Every breakpoint, oldest first, with its hit count.
    pub fn breakpoints(&self) -> Vec<serde_json::Value> {
        self.breakpoints
            .read()
            .iter()
            .map(|b| b.to_json())
            .collect()
    }

    /// Deletes a breakpoint and releases the connections its sessions hold. False when unknown.
    pub fn delete(&self, id: &str) -> bool {
        {
            let mut bps = self.breakpoints.write();
            if !bps.iter().any(|b| b.id == id) {
                return false;
            }
            let v: Vec<_> = bps.iter().filter(|b| b.id != id).cloned().collect();
            self.armed.store(
                v.iter().any(|b| b.active.load(Ordering::Relaxed)),
                Ordering::Release,
            );
            *bps = v.into();
        }
        let mut st = self.store.lock();
        for s in st.sessions.iter_mut().filter(|s| s.breakpoint == id) {
            self.end(s, Release::Deleted);
        }
        tracing::info!(id, "breakpoint deleted");
        true
    }

    /// The active breakpoints, or `None` (cheaply) when there is none.
    fn active(&self) -> Option<Arc<[Arc<Breakpoint>]>> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        Some(self.breakpoints.read().clone())
    }

    /// Every admitted batch from a connection that did not opt in: hits open sessions, none
    /// holds anything.
    pub fn observe(&self, events: &[Event]) {
        let Some(bps) = self.active() else { return };
        for e in events {
            for bp in bps.iter() {
                if bp.active.load(Ordering::Relaxed) && bp.matches(e, &self.metrics) {
                    self.hit(bp, e, None, false);
                }
            }
        }
        self.disarm_if_done(&bps);
    }

    /// A debug connection's batch: hits open sessions like [`Debugger::observe`], and the first
    /// `pause` hit on each event holds it: the index of the event and its hold.
    pub fn holds(&self, events: &[Event], conn: &DebugConn) -> Vec<(usize, Hold)> {
        let mut out = Vec::new();
        let Some(bps) = self.active() else {
            return out;
        };
        for (i, e) in events.iter().enumerate() {
            let mut held = false;
            for bp in bps.iter() {
                if bp.active.load(Ordering::Relaxed) && bp.matches(e, &self.metrics) {
                    let hold = bp.action == Action::Pause && !held;
                    if let Some(h) = self.hit(bp, e, hold.then_some(conn), false) {
                        held = true;
                        out.push((i, h));
                    }
                }
            }
        }
        self.disarm_if_done(&bps);
        out
    }

    /// After a `step`: holds the connection's next event, in a session of `breakpoint`.
    pub fn step_hold(&self, e: &Event, conn: &DebugConn, breakpoint: &str) -> Hold {
        self.metrics
            .breakpoint_hits
            .with_label_values(&["pause"])
            .inc();
        let (tx, rx) = oneshot::channel();
        let id = self.open(breakpoint, Action::Pause, true, e, Some(conn), Some(tx));
        Hold {
            session: id,
            breakpoint: breakpoint.to_string(),
            rx,
        }
    }

    fn disarm_if_done(&self, bps: &[Arc<Breakpoint>]) {
        if bps.iter().all(|b| !b.active.load(Ordering::Relaxed)) {
            self.armed.store(false, Ordering::Release);
        }
    }

    /// One hit of `bp` on `e`: a session, and a hold when `conn` is given.
    fn hit(
        &self,
        bp: &Breakpoint,
        e: &Event,
        conn: Option<&DebugConn>,
        step: bool,
    ) -> Option<Hold> {
        if !bp.take_hit() {
            return None;
        }
        self.metrics
            .breakpoint_hits
            .with_label_values(&[bp.action.as_str()])
            .inc();
        match conn {
            Some(c) => {
                let (tx, rx) = oneshot::channel();
                let id = self.open(&bp.id, bp.action, step, e, Some(c), Some(tx));
                Some(Hold {
                    session: id,
                    breakpoint: bp.id.clone(),
                    rx,
                })
            }
            None => {
                self.open(&bp.id, bp.action, step, e, None, None);
                None
            }
        }
    }

    /// Stores a new session (the oldest others go past the store's bounds); its id.
    fn open(
        &self,
        breakpoint: &str,
        action: Action,
        step: bool,
        e: &Event,
        conn: Option<&DebugConn>,
        release: Option<oneshot::Sender<Release>>,
    ) -> u64 {
        // The event's data is copied: it is a slice of its connection's read buffer, which the
        // store must not keep alive.
        let mut event = e.clone();
        event.data = Bytes::copy_from_slice(&e.data);
        let bytes = SESSION_OVERHEAD
            + event.data.len()
            + event.kind.len()
            + event.run_id.as_deref().map_or(0, str::len)
            + event
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>();
        let state = match (action, &release) {
            (Action::Capture, _) => State::Captured,
            (Action::Pause, Some(_)) => State::Paused,
            (Action::Pause, None) => State::Unheld,
        };
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        if state == State::Paused {
            self.metrics.debug_paused.inc();
        }
        let mut st = self.store.lock();
        st.bytes += bytes;
        st.sessions.push_back(Session {
            id,
            breakpoint: breakpoint.to_string(),
            action,
            step,
            event,
            opened_ns: now_ns(),
            opened: Instant::now(),
            state,
            conn: conn.cloned(),
            release,
            released_ns: None,
            bytes,
        });
        self.trim(&mut st);
        id
    }

    /// Drops the oldest sessions past the bounds, the ones that hold nothing first.
    fn trim(&self, st: &mut Store) {
        let max = self.max_sessions.load(Ordering::Relaxed).max(1);
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        while st.sessions.len() > max || (st.bytes > max_bytes && st.sessions.len() > 1) {
            let at = st
                .sessions
                .iter()
                .position(|s| s.state != State::Paused)
                .unwrap_or(0);
            if let Some(mut s) = st.sessions.remove(at) {
                self.end(&mut s, Release::Evicted);
                st.bytes -= s.bytes;
            }
        }
        self.metrics.debug_sessions.set(st.sessions.len() as i64);
        self.metrics.debug_session_bytes.set(st.bytes as i64);
    }

    /// Ends a paused session's hold (idempotent).
    fn end(&self, s: &mut Session, why: Release) {
        if s.state != State::Paused {
            return;
        }
        s.state = State::Released(why);
        s.released_ns = Some(now_ns());
        self.metrics.debug_paused.dec();
        if let Some(tx) = s.release.take() {
            let _ = tx.send(why);
        }
    }

    /// `continue` or `step` on a paused session.
    pub fn release(&self, id: u64, why: Release) -> Result<(), ReleaseError> {
        let mut st = self.store.lock();
        let s = st
            .sessions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(ReleaseError::NotFound(id))?;
        if s.state != State::Paused {
            return Err(ReleaseError::NotPaused(id));
        }
        self.end(s, why);
        Ok(())
    }

    /// Waits for a hold to end: released over the API, `max_pause`, `disconnected` (the
    /// client went away), or `stop`. Says why.
    pub async fn wait(
        &self,
        hold: Hold,
        disconnected: impl std::future::Future<Output = ()>,
        stop: &CancellationToken,
    ) -> Release {
        let Hold { session, rx, .. } = hold;
        let why = tokio::select! {
            r = rx => return r.unwrap_or(Release::Evicted),
            _ = tokio::time::sleep(self.max_pause()) => Release::MaxPause,
            _ = disconnected => Release::Disconnect,
            _ = stop.cancelled() => Release::Shutdown,
        };
        let mut st = self.store.lock();
        if let Some(s) = st.sessions.iter_mut().find(|s| s.id == session) {
            self.end(s, why);
        }
        why
    }

    /// Sessions, newest first: of one breakpoint, in one state, at most `limit`.
    pub fn sessions(
        &self,
        breakpoint: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> (Vec<serde_json::Value>, usize, usize) {
        let max_pause = self.max_pause();
        let st = self.store.lock();
        let list = st
            .sessions
            .iter()
            .rev()
            .filter(|s| breakpoint.is_none_or(|b| s.breakpoint == b))
            .map(|s| s.summary(max_pause))
            .filter(|v| state.is_none_or(|want| v["state"] == want))
            .take(limit)
            .collect();
        (list, st.sessions.len(), st.bytes)
    }

    /// One session: its summary and its event.
    pub fn session(&self, id: u64) -> Option<(serde_json::Value, Event)> {
        let max_pause = self.max_pause();
        let st = self.store.lock();
        let s = st.sessions.iter().find(|s| s.id == id)?;
        Some((s.summary(max_pause), s.event.clone()))
    }

    /// Releases every hold (shutdown).
    pub fn release_all(&self) {
        let mut st = self.store.lock();
        for s in st.sessions.iter_mut() {
            self.end(s, Release::Shutdown);
        }
    }
}

impl crate::reload::Reconfigure for Debugger {
    fn reconfigure(&self, cfg: &Config) {
        Debugger::reconfigure(self, cfg);
    }
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

    fn debugger(extra: impl FnOnce(&mut Config)) -> Debugger {
        let mut cfg = Config::default();
        extra(&mut cfg);
        Debugger::new(&cfg, Arc::new(Metrics::new()))
    }

    fn spec(when: &str, action: Action, hits: Option<u64>) -> BreakpointSpec {
        BreakpointSpec {
            when: Some(when.into()),
            run_id: None,
            action,
            hits,
        }
    }

    #[test]
    fn capture_hits_open_sessions_newest_first_until_the_hit_count() {
        let d = debugger(|_| {});
        d.add(spec("data.n > 1", Action::Capture, Some(2))).unwrap();
        let evs: Vec<Event> = (0..5)
            .map(|n| ev(&format!(r#"{{"type":"t","data":{{"n":{n}}}}}"#)))
            .collect();
        d.observe(&evs);
        let (list, count, _) = d.sessions(None, None, 10);
        assert_eq!(count, 2, "hits: 2 stops after two");
        assert_eq!(list[0]["state"], "captured");
        assert!(list[0]["id"].as_str() > list[1]["id"].as_str());
        assert!(
            !d.armed.load(Ordering::Relaxed),
            "a spent breakpoint is not evaluated"
        );
        assert_eq!(d.breakpoints()[0]["hit_count"], 2);
    }

    #[test]
    fn the_store_is_bounded_by_count_and_bytes() {
        let d = debugger(|c| {
            c.control.debug_sessions = 100;
            c.control.debug_bytes = crate::config::Size(64 * 1024);
        });
        d.add(spec("true", Action::Capture, None)).unwrap();
        let small = ev(r#"{"type":"t","data":1}"#);
        for _ in 0..10_000 {
            d.observe(std::slice::from_ref(&small));
        }
        assert_eq!(d.sessions(None, None, 1000).1, 100);
        let big = ev(&format!(r#"{{"type":"t","data":"{}"}}"#, "x".repeat(3000)));
        for _ in 0..1000 {
            d.observe(std::slice::from_ref(&big));
        }
        let (_, count, bytes) = d.sessions(None, None, 1000);
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert!(count < 100 && count > 1, "{count}");
    }

    #[test]
    fn pause_holds_only_debug_connections() {
        let d = debugger(|_| {});
        d.add(spec("type == \"p\"", Action::Pause, None)).unwrap();
        let e = ev(r#"{"type":"p"}"#);
        d.observe(std::slice::from_ref(&e));
        let (list, _, _) = d.sessions(None, None, 10);
        assert_eq!(list[0]["state"], "unheld", "{}", list[0]);
        let conn = d.connection("socket", None);
        let holds = d.holds(&[ev(r#"{"type":"q"}"#), e], &conn);
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].0, 1, "the second event is held");
        let (list, _, _) = d.sessions(None, Some("paused"), 10);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["connection"]["held"], true);
    }

    #[tokio::test(start_paused = true)]
    async fn max_pause_releases() {
        let d = debugger(|c| c.control.max_pause = crate::config::Dur(Duration::from_secs(5)));
        d.add(spec("true", Action::Pause, None)).unwrap();
        let conn = d.connection("socket", None);
        let (_, hold) = d.holds(&[ev(r#"{"type":"p"}"#)], &conn).pop().unwrap();
        let id = hold.session;
        let started = Instant::now();
        let stop = CancellationToken::new();
        let why = d.wait(hold, std::future::pending(), &stop).await;
        assert_eq!(why, Release::MaxPause);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let (s, _) = d.session(id).unwrap();
        assert_eq!(
            (s["state"].as_str(), s["released"].as_str()),
            (Some("released"), Some("max_pause"))
        );
        assert_eq!(
            d.release(id, Release::Continue),
            Err(ReleaseError::NotPaused(id))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn continue_disconnect_and_delete_release() {
        let d = Arc::new(debugger(|_| {}));
        let bp = d.add(spec("true", Action::Pause, None)).unwrap();
        let conn = d.connection("socket", None);
        let stop = CancellationToken::new();
        // Continue, one second in.
        let (_, hold) = d.holds(&[ev(r#"{"type":"p"}"#)], &conn).pop().unwrap();
        let id = hold.session;
        let d2 = d.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            d2.release(id, Release::Step).unwrap();
        });
        assert_eq!(
            d.wait(hold, std::future::pending(), &stop).await,
            Release::Step
        );
        // The client goes away.
        let (_, hold) = d.holds(&[ev(r#"{"type":"p"}"#)], &conn).pop().unwrap();
        let gone = tokio::time::sleep(Duration::from_secs(2));
        assert_eq!(d.wait(hold, gone, &stop).await, Release::Disconnect);
        // The breakpoint is deleted.
        let (_, hold) = d.holds(&[ev(r#"{"type":"p"}"#)], &conn).pop().unwrap();
        assert!(d.delete(&bp.id));
        assert_eq!(
            d.wait(hold, std::future::pending(), &stop).await,
            Release::Deleted
        );
        assert!(d.holds(&[ev(r#"{"type":"p"}"#)], &conn).is_empty());
        // A step hold with no breakpoint left, then shutdown.
        let hold = d.step_hold(&ev(r#"{"type":"next"}"#), &conn, &bp.id);
        stop.cancel();
        assert_eq!(
            d.wait(hold, std::future::pending(), &stop).await,
            Release::Shutdown
        );
        assert_eq!(d.metrics.debug_paused.get(), 0);
    }
}
