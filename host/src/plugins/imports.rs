//! What a plugin's store holds, and the host side of the `outrigger:plugin/host` imports.
//!
//! In: calls from the guest (`log`, `counter-add`, `gauge-set`, `emit`, `report-anomaly`,
//! `now-ns`) and the guest's stdout/stderr bytes. Out: tracing records tagged with the plugin,
//! Prometheus metrics with a `plugin` label, anomaly reports to the native sampler, and emitted
//! events collected in the store until the chain takes them after the call. Also the
//! [`Limits`] that cap a store's linear memory, and the WASI and `wasi:http` contexts a store
//! gets from the plugin's grants. A store lives as long as its instance.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::{self, Level};
use super::grants::{HttpHooks, PluginGrants};
use super::{AnomalyFn, BadOutput};
use crate::event::{Event, MAX_TYPE_BYTES};
use crate::metrics::Metrics;

/// Longest guest log message or output line kept; the rest is cut.
const MAX_LOG_BYTES: usize = 4096;
/// Distinct anomalies passed on per call; more are ignored.
const MAX_ANOMALIES_PER_CALL: usize = 64;
/// Distinct counter and gauge names one plugin may create (metric label cardinality).
const MAX_METRIC_NAMES: usize = 64;

/// Per-plugin context shared by all of its stores.
pub struct PluginCtx {
    pub name: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub anomaly: AnomalyFn,
    /// What the plugin may reach beyond its sandbox (`plugins.chain[].grants`).
    pub grants: PluginGrants,
    /// Counter and gauge names created so far (bounded by [`MAX_METRIC_NAMES`]).
    metric_names: Mutex<std::collections::HashSet<String>>,
}

impl PluginCtx {
    pub fn new(
        name: Arc<str>,
        metrics: Arc<Metrics>,
        anomaly: AnomalyFn,
        grants: PluginGrants,
    ) -> PluginCtx {
        PluginCtx {
            name,
            metrics,
            anomaly,
            grants,
            metric_names: Mutex::new(Default::default()),
        }
    }

    /// Whether `name` may be used as a metric label (known, or room for a new one).
    fn admit_metric_name(&self, name: &str) -> bool {
        let mut names = self.metric_names.lock();
        if names.contains(name) {
            return true;
        }
        if names.len() >= MAX_METRIC_NAMES {
            tracing::warn!(plugin = %self.name, metric = name, "too many plugin metric names: ignored");
            return false;
        }
        names.insert(name.to_string());
        true
    }
}

/// Caps a store's linear memory (all memories together) at `max_bytes`.
pub struct Limits {
    pub max_bytes: usize,
    used: usize,
    /// Set when a growth was refused: a trap that follows is a `memory` error.
    pub hit: bool,
}

impl Limits {
    pub fn new(max_bytes: usize) -> Limits {
        Limits {
            max_bytes,
            used: 0,
            hit: false,
        }
    }

    /// Bytes of linear memory the store holds (memories never shrink).
    pub fn used(&self) -> usize {
        self.used
    }
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        if self.used.saturating_add(grow) > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.used += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The data of one plugin instance's store.
pub struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpHooks,
    table: ResourceTable,
    pub limits: Limits,
    pub ctx: Arc<PluginCtx>,
    /// Events emitted during the current call, in order.
    pub emitted: Vec<Event>,
    /// How many events the current call may emit.
    pub emit_cap: usize,
    /// Distinct anomalies reported during the current call, passed on after it.
    pub anomalies: Vec<(String, String)>,
    counters: HashMap<String, prometheus::IntCounter>,
}

impl State {
    /// A new store's data. WASI gets no arguments and no sockets of any kind (`wasi:sockets`
    /// is refused at load too); only the granted variables and directories. Fails when a
    /// granted directory cannot be opened.
    pub fn new(ctx: Arc<PluginCtx>, max_memory_bytes: usize) -> anyhow::Result<State> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(LogStream::new(ctx.name.clone(), "stdout"))
            .stderr(LogStream::new(ctx.name.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        ctx.grants.apply(&mut wasi).context("applying the grants")?;
        let hooks = ctx.grants.hooks();
        Ok(State {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks,
            table: ResourceTable::new(),
            limits: Limits::new(max_memory_bytes),
            ctx,
            emitted: Vec::new(),
            emit_cap: 0,
            anomalies: Vec::new(),
            counters: HashMap::new(),
        })
    }

    /// Sets when the call about to start must be over: `wasi:http` requests it sends end then.
    pub fn set_deadline(&mut self, at: Instant) {
        self.hooks.set_deadline(at);
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Linked only for plugins granted `http`; the hooks check every request.
impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Checks an event a plugin produced (`emit` or `replace`): type length, JSON payload.
pub fn validate(ev: &bindings::Event) -> Result<(), BadOutput> {
    if ev.kind.is_empty() || ev.kind.len() > MAX_TYPE_BYTES {
        return Err(BadOutput(format!(
            "event type must be 1 to {MAX_TYPE_BYTES} bytes, got {}",
            ev.kind.len()
        )));
    }
    if let Err(e) = serde_json::from_str::<&serde_json::value::RawValue>(&ev.payload) {
        return Err(BadOutput(format!(
            "payload of a `{}` event is not JSON: {e}",
            cut(&ev.kind, 64)
        )));
    }
    Ok(())
}

/// Checks an event a plugin produced and turns it into a pipeline event.
pub fn from_guest(ev: bindings::Event, received: Instant) -> Result<Event, BadOutput> {
    validate(&ev)?;
    Ok(Event::from_parts(
        ev.kind,
        ev.ts_ns,
        ev.run_id,
        ev.attributes,
        ev.payload,
        received,
    ))
}

impl bindings::Host for State {
    fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.ctx.name;
        let message = cut(&message, MAX_LOG_BYTES);
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        if let Some(c) = self.counters.get(&name) {
            c.inc_by(delta);
            return;
        }
        if !self.ctx.admit_metric_name(&name) {
            return;
        }
        let c = self
            .ctx
            .metrics
            .plugin_counter
            .with_label_values(&[&*self.ctx.name, &name]);
        c.inc_by(delta);
        self.counters.insert(name, c);
    }

    fn gauge_set(&mut self, name: String, value: f64) {
        if self.ctx.admit_metric_name(&name) {
            self.ctx
                .metrics
                .plugin_gauge
                .with_label_values(&[&*self.ctx.name, &name])
                .set(value);
        }
    }

    fn emit(&mut self, ev: bindings::Event) -> wasmtime::Result<()> {
        if self.emitted.len() >= self.emit_cap {
            return Err(wasmtime::Error::new(BadOutput(format!(
                "emitted more than {} events in one call",
                self.emit_cap
            ))));
        }
        let mut ev = from_guest(ev, Instant::now()).map_err(wasmtime::Error::new)?;
        ev.id = crate::event::new_id();
        self.emitted.push(ev);
        Ok(())
    }

    fn report_anomaly(&mut self, kind: String, reason: String) {
        // Collected and passed on once per distinct (kind, reason) after the call, so that a
        // plugin reporting per event does not cost the sampler a lock per event.
        let seen = self
            .anomalies
            .iter()
            .any(|(k, r)| *k == kind && *r == reason);
        if !seen && self.anomalies.len() < MAX_ANOMALIES_PER_CALL {
            let kind = cut(&kind, MAX_TYPE_BYTES).to_string();
            let reason = cut(&reason, MAX_LOG_BYTES).to_string();
            self.anomalies.push((kind, reason));
        }
    }

    fn now_ns(&mut self) -> u64 {
        crate::event::now_ns()
    }
}

impl State {
    /// Passes the anomalies reported during the last call to the sampler.
    pub fn flush_anomalies(&mut self) {
        for (kind, reason) in self.anomalies.drain(..) {
            tracing::debug!(plugin = %self.ctx.name, kind = %kind, reason = %reason, "plugin reported an anomaly");
            (self.ctx.anomaly)(&kind, &reason);
        }
    }
}

impl bindings::handler::outrigger::plugin::types::Host for State {}

/// A guest's stdout or stderr: complete lines go to the host log, tagged with the plugin.
struct LogStream {
    plugin: Arc<str>,
    stream: &'static str,
}

impl LogStream {
    fn new(plugin: Arc<str>, stream: &'static str) -> LogStream {
        LogStream { plugin, stream }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.plugin.clone(), self.stream))
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.plugin.clone(), self.stream))
    }
}

/// Buffers bytes until a newline (or [`MAX_LOG_BYTES`]), then logs the line.
struct LineWriter {
    plugin: Arc<str>,
    stream: &'static str,
    buf: Vec<u8>,
}

impl LineWriter {
    fn new(plugin: Arc<str>, stream: &'static str) -> LineWriter {
        LineWriter {
            plugin,
            stream,
            buf: Vec::new(),
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(i) = memchr::memchr(b'\n', bytes) {
            self.buf.extend_from_slice(&bytes[..i]);
            self.line();
            bytes = &bytes[i + 1..];
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= MAX_LOG_BYTES {
            self.line();
        }
    }

    fn line(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = cut(text.trim_end_matches('\r'), MAX_LOG_BYTES);
        if self.stream == "stderr" {
            tracing::warn!(plugin = %self.plugin, stream = self.stream, "{text}");
        } else {
            tracing::info!(plugin = %self.plugin, stream = self.stream, "{text}");
        }
        self.buf.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.line();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
