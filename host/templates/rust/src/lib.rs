//! `{name}`: an Outrigger handler plugin.
//!
//! Outrigger calls `init` once per instance with the plugin's config (JSON text, from
//! `{name}.yml` beside the .wasm or `plugins.chain[].config`), then `on_batch` with whole
//! batches. Return one verdict per event, in order: `Keep`, `Drop`, or `Replace(event)`.
//! State kept in statics survives between batches of the same instance.

use std::sync::atomic::{AtomicU64, Ordering};

use outrigger::plugin::host;
use outrigger::plugin::types::Level;

wit_bindgen::generate!({ world: "handler", path: "wit" });

static BATCHES: AtomicU64 = AtomicU64::new(0);

struct Plugin;

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        host::log(Level::Info, &format!("{name} starting with config {config}"));
        Ok(())
    }

    fn on_batch(events: Vec<Event>) -> Vec<Verdict> {
        BATCHES.fetch_add(1, Ordering::Relaxed);
        // Shows up as outrigger_plugin_counter_total{plugin="{name}", name="events"}.
        host::counter_add("events", events.len() as u64);
        events.iter().map(|_| Verdict::Keep).collect()
    }
}

export!(Plugin);
