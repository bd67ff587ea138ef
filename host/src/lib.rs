//! Outrigger: a sidecar daemon that observes an application.
//!
//! Module map, in the order an event flows:
//! - [`ingest`]: unix socket NDJSON and HTTP `POST /v1/events`; answers every line.
//! - [`event`]: the event type and the wire formats (native and Weave lines).
//! - [`queue`]: the bounded fail-open queue between ingest and the pipeline.
//! - [`wal`]: the durable queue (`queue.durable`): a write-ahead log in front of the queue,
//!   replayed on start, trimmed as the sinks confirm.
//! - [`sampler`]: native sampling (per-type rates, whole runs, adaptive boost).
//! - [`tail`]: run-level tail sampling: runs held until they close, kept or dropped whole,
//!   spilled to disk past their memory bound; the runs view.
//! - [`plugins`]: WASM components (samplers, then handlers) on wasmtime.
//! - [`pipeline`]: the worker that pulls from the queue, samples, runs plugins and batches,
//!   woken by data, the batch deadline, a flush or a reload.
//! - [`batcher`]: cuts batches by events, bytes and interval.
//! - [`sinks`]: the sink set (per-sink routing), file, stdout, HTTP and Weave writers, and the
//!   delivery state machine (retry, back-off, spool).
//! - [`profiler`]: the daemon's own CPU and memory, watched pids, budgets that degrade sampling.
//! - [`control`]: the control API (metrics, health, stats, sampling, reload, live tail over SSE
//!   and WebSocket, runs), breakpoints and debug sessions (`control::debug`), the web console.
//! - [`reload`]: the file watcher and live reload of config and plugins.
//! - [`metrics`], [`config`], [`auth`], [`condition`] (CEL `when` expressions): shared by all
//!   of the above.
//! - [`app`]: builds the stages and binds the listeners, runs them, drains them at shutdown.
//! - [`logging`]: text or JSON logs whose level can change live.
//! - [`cli`]: the daemon's clients: `outrigger status`, `tail`, `runs`, `debug` and `send`.
//! - [`bench`]: `outrigger bench`, the load generator.

pub mod app;
pub mod auth;
pub mod batcher;
pub mod bench;
pub mod cli;
pub mod condition;
pub mod config;
pub mod control;
pub mod event;
pub mod ingest;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod profiler;
pub mod queue;
pub mod reload;
pub mod sampler;
pub mod sinks;
pub mod tail;
pub mod wal;
