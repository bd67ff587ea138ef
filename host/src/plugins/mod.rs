//! The WASM plugin runtime: samplers and handlers as WebAssembly components on wasmtime.
//!
//! In: the `plugins` config and the files in `plugins.dir`; then, per pipeline worker, batches
//! of events. Out: the events that continue (kept, replaced, emitted), drops counted by reason,
//! plugin metrics, anomaly reports to the native sampler, and a status per plugin for health
//! and `GET /v1/plugins`. Nothing runs on its own except the epoch ticker thread, which stops
//! when the [`PluginHost`] and every [`PluginSet`] it loaded are gone.
//!
//! Map (only this module touches wasmtime; only [`bindings`] calls `bindgen!`):
//! - [`bindings`]: Rust types for `wit/outrigger.wit` (`outrigger:plugin@0.1.0`).
//! - [`runtime`]: engine config (fuel, epochs), the epoch ticker, the linkers (WASI p2 and the
//!   `host` interface; the same plus `wasi:http`), the precompiled-component cache.
//! - [`grants`]: `plugins.chain[].grants`: the import check at load, the environment and
//!   preopens of a store, the `wasi:http` hooks (allowed authorities, counting, deadline).
//! - [`imports`]: store data, the host functions, guest stdout/stderr into the log, memory limits.
//! - [`load`]: [`PluginHost`] loads a directory into a [`PluginSet`]: order, overrides,
//!   configs, health and quarantine state shared by all workers.
//! - [`instance`]: one live instance and one bounded call (fuel, memory, timeout).
//! - [`chain`]: a worker's [`Chain`]: routing by type, verdicts, `on_error`, bypass.
//! - [`cli`]: `outrigger plugin check`, `outrigger plugin new`, `outrigger replay`.
//!
//! Failure policy: a plugin error (`fuel`, `memory`, `timeout`, `trap`, `bad_output`, `init`)
//! makes the batch follow `on_error` (`pass`: unchanged; `drop`: dropped and counted as
//! `plugin`), replaces the instance, and after `quarantine_after` failures in a row quarantines
//! the plugin for `quarantine_initial`, doubling up to `quarantine_max` on each new quarantine.
//! While quarantined, batches bypass the plugin (as if it were absent: they pass unchanged,
//! whatever `on_error` says). A success resets the count and the back-off.

mod bindings;
mod chain;
pub mod cli;
mod grants;
mod imports;
mod instance;
mod load;
mod runtime;
pub mod scaffold;
pub mod shadow;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use chain::{Chain, SlotStats};
pub use load::{PluginHost, PluginSet, PluginState, PluginStatus};
pub use shadow::promote_files;

/// Called when a plugin reports an anomaly: `(event type, reason)`.
pub type AnomalyFn = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What kind of failure a plugin call ran into (`plugin_errors_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The fuel budget (`fuel_per_event × batch length`) ran out.
    Fuel,
    /// Linear memory would have grown past `memory_mb`.
    Memory,
    /// The call ran past its bound, `max(timeout, timeout_per_event × batch length)`.
    Timeout,
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access …).
    Trap,
    /// Wrong number of results, or an invalid replaced or emitted event.
    BadOutput,
    /// `init` refused the config.
    Init,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Fuel => "fuel",
            ErrorKind::Memory => "memory",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Trap => "trap",
            ErrorKind::BadOutput => "bad_output",
            ErrorKind::Init => "init",
        }
    }
}

/// A failed plugin call or instantiation.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct PluginError {
    pub kind: ErrorKind,
    pub message: String,
}

impl PluginError {
    pub fn new(kind: ErrorKind, message: String) -> PluginError {
        PluginError { kind, message }
    }
}

/// A plugin produced something the host refuses (raised from host functions as a trap).
#[derive(Debug, thiserror::Error)]
#[error("bad output: {0}")]
pub struct BadOutput(pub String);
