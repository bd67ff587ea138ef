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
//! - [`control`]: the control API (metrics, health, sampling, reload).
//! - [`reload`]: the file watcher and live reload of config and plugins.
//! - [`metrics`], [`config`]: shared by all of the above.
//! - [`app`]: wires the stages together and runs them until shutdown.
//! - [`bench`]: `outrigger bench`, the load generator.

pub mod app;
pub mod bench;
pub mod config;
pub mod control;
pub mod event;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod queue;
pub mod reload;
pub mod sampler;
pub mod sinks;
