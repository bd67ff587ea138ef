//! `drop-debug`: an Outrigger sampler that drops noisy event types.
//!
//! In: batches of events and, at `init`, a config `{"prefixes": ["debug", "trace."]}` (default
//! `["debug"]`). Out: one decision per event: `false` (drop) when its type starts with any of the
//! prefixes, `true` (keep) otherwise. Dropped events are counted by the host as `sampled_out`.

use std::cell::RefCell;

wit_bindgen::generate!({ world: "sampler", path: "../../wit" });

#[derive(serde::Deserialize)]
#[serde(default)]
struct Config {
    prefixes: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefixes: vec!["debug".into()],
        }
    }
}

thread_local! {
    static PREFIXES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct DropDebug;

impl Guest for DropDebug {
    fn init(config: String) -> Result<(), String> {
        let cfg: Config = match config.trim() {
            "" | "null" => Config::default(),
            text => serde_json::from_str(text).map_err(|e| format!("drop-debug config: {e}"))?,
        };
        PREFIXES.with(|p| *p.borrow_mut() = cfg.prefixes);
        Ok(())
    }

    fn sample(events: Vec<Event>) -> Vec<bool> {
        PREFIXES.with(|p| {
            let prefixes = p.borrow();
            events
                .iter()
                .map(|ev| !prefixes.iter().any(|pre| ev.kind.starts_with(pre.as_str())))
                .collect()
        })
    }
}

export!(DropDebug);
