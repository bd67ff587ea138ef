//! `redact`: an Outrigger handler that hides secrets in event payloads.
//!
//! In: batches of events and, at `init`, a config `{"fields": ["password", "token"]}`. Out: one
//! verdict per event: `replace` with every top-level payload field named in `fields` set to
//! `"***"`, or `keep` when the event has none of them (or its payload is not a JSON object).
//! Counts redacted fields as `outrigger_plugin_counter_total{plugin="redact", name="redacted"}`.
//!
//! A redacted payload is re-serialised by [`json`]: compact, keys sorted, numbers exactly as
//! written. This plugin is the reference of "The redact contract" (docs/plugins.md) that the
//! Python, JavaScript and C versions follow byte for byte.

mod json;

use std::cell::RefCell;

use outrigger::plugin::host;
use outrigger::plugin::types::Level;

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {
    fields: Vec<String>,
}

thread_local! {
    static FIELDS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct Redact;

impl Guest for Redact {
    fn init(config: String) -> Result<(), String> {
        let cfg: Config = match config.trim() {
            "" | "null" => Config::default(),
            text => serde_json::from_str(text).map_err(|e| format!("redact config: {e}"))?,
        };
        if cfg.fields.is_empty() {
            host::log(
                Level::Warn,
                "no `fields` configured: nothing will be redacted",
            );
        }
        FIELDS.with(|f| *f.borrow_mut() = cfg.fields);
        Ok(())
    }

    fn on_batch(events: Vec<Event>) -> Vec<Verdict> {
        FIELDS.with(|fields| {
            let fields = fields.borrow();
            let mut redacted = 0u64;
            let verdicts = events
                .into_iter()
                .map(|mut ev| {
                    // Cheap pre-check: most payloads name none of the fields.
                    if !fields.iter().any(|f| ev.payload.contains(f.as_str())) {
                        return Verdict::Keep;
                    }
                    let Some(json::Json::Object(mut map)) = json::parse(&ev.payload) else {
                        return Verdict::Keep;
                    };
                    let mut n = 0;
                    for f in fields.iter() {
                        if let Some(v) = map.get_mut(f) {
                            *v = json::Json::String("***".into());
                            n += 1;
                        }
                    }
                    if n == 0 {
                        return Verdict::Keep;
                    }
                    redacted += n;
                    let mut payload = String::with_capacity(ev.payload.len());
                    json::write(&json::Json::Object(map), &mut payload);
                    ev.payload = payload;
                    Verdict::Replace(ev)
                })
                .collect();
            if redacted > 0 {
                host::counter_add("redacted", redacted);
            }
            verdicts
        })
    }
}

export!(Redact);
