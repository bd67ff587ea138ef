//! One live instance of a plugin in its own store, and one bounded call into it.
//!
//! In: a compiled plugin and a batch of WIT events. Out: the plugin's verdicts (or sampler
//! decisions) and the events it emitted, or a [`PluginError`] naming what went wrong: `fuel`
//! (budget `fuel_per_event × batch length` spent), `memory` (a growth past `memory_mb` was
//! refused), `timeout` (the epoch deadline trapped a guest running in wasm, or the call was
//! still waiting in a host call such as a WASI sleep when its bound passed and was dropped; the
//! bound is `max(timeout, timeout_per_event × batch length)`, see
//! [`Settings::call_timeout`](super::load::Settings::call_timeout)),
//! `trap`, `bad_output`, or `init` (also when a granted directory cannot be opened). A
//! `wasi:http` request sent during a call is cut at the call's deadline. An instance that failed
//! is never called again: the caller drops it (and its store) and instantiates a new one.

use std::time::{Duration, Instant};

use wasmtime::Store;

use super::bindings::{self, Handler, Sampler};
use super::imports::State;
use super::load::{Plugin, World};
use super::runtime::TICK;
use super::{BadOutput, ErrorKind, PluginError};

/// Fuel and time for instantiation and `init`, in multiples of one event's budget.
const INIT_EVENTS: u64 = 1000;
/// `init` gets this many times the call timeout, and at least [`INIT_MIN_TIMEOUT`].
const INIT_TIMEOUT_FACTOR: u32 = 10;
const INIT_MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The typed exports of a live instance.
enum Exports {
    Handler(Handler),
    Sampler(Sampler),
}

/// What one call returned.
pub enum Output {
    Verdicts(Vec<bindings::Verdict>),
    Decisions(Vec<bool>),
}

/// A plugin instance with its store; owned by one worker's chain, never shared.
pub struct Live {
    store: Store<State>,
    exports: Exports,
    /// Linear memory right after `init`.
    baseline: usize,
}

impl Live {
    /// Instantiates the plugin in a new store and calls `init` with its config.
    pub async fn new(plugin: &Plugin) -> Result<Live, PluginError> {
        let state = State::new(plugin.ctx.clone(), plugin.settings.memory_bytes)
            .map_err(|e| PluginError::new(ErrorKind::Init, format!("{e:#}")))?;
        let mut store = Store::new(&plugin.runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        let timeout = plugin
            .settings
            .timeout
            .saturating_mul(INIT_TIMEOUT_FACTOR)
            .max(INIT_MIN_TIMEOUT);
        store.data_mut().set_deadline(deadline_after(timeout));
        let fuel = plugin.settings.fuel_per_event.saturating_mul(INIT_EVENTS);
        let _ticking = plugin.runtime.ticking();
        arm(&mut store, fuel, timeout)?;
        let config = plugin.config_json.as_str();
        let started = async {
            let exports = match &plugin.compiled.world {
                World::Handler(pre) => Exports::Handler(pre.instantiate_async(&mut store).await?),
                World::Sampler(pre) => Exports::Sampler(pre.instantiate_async(&mut store).await?),
            };
            let init = match &exports {
                Exports::Handler(h) => h.call_init(&mut store, config).await?,
                Exports::Sampler(s) => s.call_init(&mut store, config).await?,
            };
            Ok::<_, wasmtime::Error>((exports, init))
        };
        let result = tokio::time::timeout(timeout, started).await;
        store.data_mut().flush_anomalies();
        match result {
            Err(_) => Err(PluginError::new(
                ErrorKind::Timeout,
                format!("instantiation and init took over {timeout:?}"),
            )),
            Ok(Err(e)) => Err(classify(&e, &store)),
            Ok(Ok((_, Err(msg)))) => Err(PluginError::new(
                ErrorKind::Init,
                format!("init refused its config: {msg}"),
            )),
            Ok(Ok((exports, Ok(())))) => {
                let baseline = store.data().limits.used();
                Ok(Live {
                    store,
                    exports,
                    baseline,
                })
            }
        }
    }

    /// When the instance's linear memory has grown past half of the room `init` left it under
    /// `memory_mb`: the memory it holds now and right after `init`. Linear memory never shrinks,
    /// and some guests keep growing their heap across calls (a garbage collector that does not
    /// know the cap, or a leak); such an instance is replaced between batches before a batch
    /// runs out of memory.
    pub fn memory_pressed(&self) -> Option<(usize, usize)> {
        let limits = &self.store.data().limits;
        let room = limits.max_bytes.saturating_sub(self.baseline);
        (limits.used() > self.baseline + room / 2).then_some((limits.used(), self.baseline))
    }

    /// Calls the plugin with one batch under the per-call limits. Returns the output, the
    /// emitted events and the fuel consumed.
    pub async fn call(
        &mut self,
        plugin: &Plugin,
        events: &[EventRef<'_>],
    ) -> (Result<(Output, Vec<crate::event::Event>), PluginError>, u64) {
        let n = events.len() as u64;
        let fuel = plugin.settings.fuel_per_event.saturating_mul(n.max(1));
        // One bound for the epoch deadline, the tokio timeout and the `wasi:http` deadline.
        let timeout = plugin.settings.call_timeout(events.len());
        let _ticking = plugin.runtime.ticking();
        if let Err(e) = arm(&mut self.store, fuel, timeout) {
            return (Err(e), 0);
        }
        let state = self.store.data_mut();
        // A `wasi:http` request the call sends ends with it, connection included.
        state.set_deadline(deadline_after(timeout));
        state.emitted.clear();
        state.emit_cap = events.len().saturating_mul(10).saturating_add(1000);
        let call = async {
            // The typed functions of the generated bindings take owned `bindings::Event`s;
            // the same export, typed with the borrowed record, avoids copying every event.
            match &self.exports {
                Exports::Handler(h) => {
                    let f = h
                        .func_on_batch()
                        .func()
                        .typed::<(&[EventRef<'_>],), (Vec<bindings::Verdict>,)>(&self.store)?;
                    let (v,) = f.call_async(&mut self.store, (events,)).await?;
                    Ok(Output::Verdicts(v))
                }
                Exports::Sampler(s) => {
                    let f = s
                        .func_sample()
                        .func()
                        .typed::<(&[EventRef<'_>],), (Vec<bool>,)>(&self.store)?;
                    let (v,) = f.call_async(&mut self.store, (events,)).await?;
                    Ok(Output::Decisions(v))
                }
            }
        };
        let result = tokio::time::timeout(timeout, call).await;
        let consumed = fuel.saturating_sub(self.store.get_fuel().unwrap_or(0));
        self.store.data_mut().flush_anomalies();
        let result = match result {
            Err(_) => Err(PluginError::new(
                ErrorKind::Timeout,
                format!("call took over {timeout:?}"),
            )),
            Ok(Err(e)) => Err(match classify(&e, &self.store) {
                // The epoch deadline: name the bound, as the host's timeout does (the trap's
                // own text is only a wasm backtrace ending in `interrupt`).
                t if t.kind == ErrorKind::Timeout => PluginError::new(
                    ErrorKind::Timeout,
                    format!("call took over {timeout:?} (stopped in wasm)"),
                ),
                other => other,
            }),
            Ok(Ok(out)) => Ok((out, std::mem::take(&mut self.store.data_mut().emitted))),
        };
        (result, consumed)
    }
}

/// Sets the fuel and the epoch deadline for the next call.
fn arm(store: &mut Store<State>, fuel: u64, timeout: Duration) -> Result<(), PluginError> {
    store
        .set_fuel(fuel)
        .map_err(|e| PluginError::new(ErrorKind::Trap, format!("setting fuel: {e}")))?;
    let ticks = timeout
        .as_nanos()
        .div_ceil(TICK.as_nanos())
        .clamp(1, u64::MAX as u128) as u64;
    // One extra tick: the current epoch period may be almost over.
    store.set_epoch_deadline(ticks.saturating_add(1));
    Ok(())
}

/// `now + timeout`, or a year from now when `timeout` is too long for an `Instant` (a
/// per-event bound saturates rather than overflow).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Names what a failed call ran into.
fn classify(e: &wasmtime::Error, store: &Store<State>) -> PluginError {
    let memory_hit = store.data().limits.hit;
    let kind = if let Some(b) = e.downcast_ref::<BadOutput>() {
        return PluginError::new(ErrorKind::BadOutput, b.0.clone());
    } else {
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => ErrorKind::Fuel,
            Some(wasmtime::Trap::Interrupt) => ErrorKind::Timeout,
            _ if memory_hit => ErrorKind::Memory,
            _ => ErrorKind::Trap,
        }
    };
    let detail = match kind {
        ErrorKind::Memory => format!(
            "memory limit of {} MiB reached ({e})",
            store.data().limits.max_bytes >> 20
        ),
        _ => format!("{e:#}"),
    };
    PluginError::new(kind, first_lines(&detail, 6))
}

/// Trap messages carry a wasm backtrace; keep the head of it.
fn first_lines(s: &str, n: usize) -> String {
    let mut out: String = s.lines().take(n).collect::<Vec<_>>().join("\n");
    if out.len() > 2048 {
        out.truncate(out.floor_char_boundary(2048));
    }
    out
}

/// A WIT `event` lowered straight from a pipeline [`Event`]: the guest gets the same record as
/// `bindings::Event`, but the host copies nothing per event before writing it into guest memory.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
pub struct EventRef<'a> {
    kind: &'a str,
    #[component(name = "ts-ns")]
    ts_ns: u64,
    #[component(name = "run-id")]
    run_id: Option<&'a str>,
    attributes: &'a [(String, String)],
    payload: &'a str,
}

impl<'a> EventRef<'a> {
    /// Type and data, for a shadow's examples.
    pub fn shown(&self) -> super::shadow::Shown<'a> {
        super::shadow::Shown {
            kind: self.kind,
            data: self.payload,
        }
    }
}

/// Borrows pipeline events as WIT events for a call (one allocation per batch).
pub fn to_guest<'a>(events: impl Iterator<Item = &'a crate::event::Event>) -> Vec<EventRef<'a>> {
    events
        .map(|e| EventRef {
            kind: &e.kind,
            ts_ns: e.ts_ns,
            run_id: e.run_id.as_deref(),
            attributes: &e.attributes,
            payload: e.data_str(),
        })
        .collect()
}
