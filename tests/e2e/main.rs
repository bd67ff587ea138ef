//! End-to-end tests: the real `outrigger` binary, on temporary sockets and free ports.
//!
//! `harness` starts and drives daemons; each other module covers one capability.

mod clients;
mod console;
mod control;
mod debug;
mod deploy;
mod durable;
mod exec;
mod grants;
mod harness;
mod ingest;
mod languages;
mod nats;
mod node;
mod otlp;
mod pipeline;
mod plugins;
mod reload;
mod shadow;
mod tail;
mod wasm;
