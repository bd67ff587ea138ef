//! Outrigger: a sidecar daemon that observes an application.
//!
//! Module map, in the order an event flows:
//! - [`ingest`]: unix socket NDJSON and HTTP `POST /v1/events`; answers every line.
//! - [`event`]: the event type and the wire formats (native and Weave lines).
//! - [`queue`]: the bounded fail-open queue between ingest and the pipeline.
//! - [`sampler`]: native sampling (per-type rates, whole runs, adaptive boost).
//! - [`plugins`]: WASM components (samplers, then handlers) on wasmtime.
//! - [`pipeline`]: the worker that pulls from the queue, samples, runs plugins and batches.
//! - [`sinks`]: file, stdout, HTTP, Weave delivery with retry.
//! - [`profiler`]: the daemon's own CPU and memory, watched pids, budgets that degrade sampling.
//! - [`control`]: the control API (metrics, health, stats, sampling, reload, live tail, runs).
//! - [`reload`]: the file watcher and live reload of config and plugins.
//! - [`metrics`], [`config`], [`condition`] (CEL `when` expressions): shared by all of the above.
//! - [`app`]: wires the stages together and runs them until shutdown.
//! - [`logging`]: text or JSON logs whose level can change live.
//! - [`cli`]: `outrigger status` and `outrigger tail`, clients of the control API.
//! - [`bench`]: `outrigger bench`, the load generator.

pub mod app;
pub mod bench;
pub mod cli;
pub mod condition;
pub mod config;
pub mod control;
pub mod event;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod profiler;
pub mod queue;
pub mod reload;
pub mod sampler;
pub mod sinks;
