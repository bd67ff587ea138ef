//! `error-alert`: an Outrigger handler that raises an anomaly for failed work.
//!
//! In: batches of events (config unused). For every event whose payload has
//! `"status": "failed"`, it calls `report-anomaly(type, "failed")`, which makes the native
//! sampler keep more of that type for a while, and counts
//! `outrigger_plugin_counter_total{plugin="error-alert", name="alerts"}`. Out: `keep` for
//! every event.

use outrigger::plugin::host;

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

#[derive(serde::Deserialize)]
struct Status<'a> {
    #[serde(borrow, default)]
    status: Option<&'a str>,
}

struct ErrorAlert;

impl Guest for ErrorAlert {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_batch(events: Vec<Event>) -> Vec<Verdict> {
        let mut alerts = 0u64;
        for ev in &events {
            if !ev.payload.contains("failed") {
                continue;
            }
            let failed = serde_json::from_str::<Status>(&ev.payload)
                .is_ok_and(|s| s.status == Some("failed"));
            if failed {
                host::report_anomaly(&ev.kind, "failed");
                alerts += 1;
            }
        }
        if alerts > 0 {
            host::counter_add("alerts", alerts);
        }
        events.iter().map(|_| Verdict::Keep).collect()
    }
}

export!(ErrorAlert);
