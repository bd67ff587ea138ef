//! Rust bindings for the WIT contract in `wit/outrigger.wit`: the only place that calls
//! `wasmtime::component::bindgen!`.
//!
//! In: the WIT package `outrigger:plugin@0.1.0`. Out: the `types` records (`Event`, `Verdict`,
//! `Level`), the `host` import trait with its `add_to_linker`, and typed export wrappers for the
//! two worlds (`Handler`/`HandlerPre`, `Sampler`/`SamplerPre`) whose calls are async so that a
//! guest waiting in WASI can be cancelled. Nothing here runs on its own.

/// The `handler` world; also owns the shared `types` and `host` interface bindings.
pub mod handler {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit",
        imports: {
            "outrigger:plugin/host.emit": trappable,
        },
        exports: { default: async },
    });
}

/// The `sampler` world, reusing the interface bindings generated for `handler`.
pub mod sampler {
    wasmtime::component::bindgen!({
        world: "sampler",
        path: "../wit",
        exports: { default: async },
        with: {
            "outrigger:plugin/types": super::handler::outrigger::plugin::types,
            "outrigger:plugin/host": super::handler::outrigger::plugin::host,
        },
    });
}

pub use handler::outrigger::plugin::host::{Host, add_to_linker};
pub use handler::outrigger::plugin::types::{Event, Level, Verdict};
pub use handler::{Handler, HandlerPre};
pub use sampler::{Sampler, SamplerPre};
