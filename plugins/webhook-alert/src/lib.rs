//! `webhook-alert`: an Outrigger handler that POSTs a JSON alert for failed work.
//!
//! In: batches of events and, at `init`, a config `{"url": "http://127.0.0.1:9000/alert",
//! "headers": {...}, "status_field": "status", "timeout_ms": 1000}` (only `url` required; see
//! [`config`]). For every event whose payload has `"<status_field>": "failed"` it POSTs
//! `{"type", "run_id", "ts_ns", "status", "data"}` (the payload as it arrived) to `url` through
//! `wasi:http/outgoing-handler`, which the host links only with a grant such as
//! `grants: {http: ["127.0.0.1:9000"]}`.
//!
//! Out: `keep` for every event, whatever happened to the alerts. A 2xx response counts
//! `alerts_sent`; any other status, or no response, counts `alerts_failed` and one warning
//! per batch goes to the host log with the first error (`ErrorCode::ConnectionRefused`,
//! `ErrorCode::HttpRequestDenied`, `HTTP status 500`, ...). After a request fails without a
//! response, the rest of that batch's alerts are counted as failed without being tried, so an
//! endpoint that is down costs one attempt per batch, not one per event. Never traps on a
//! network error.

mod config;
mod http;

use std::cell::RefCell;

use outrigger::plugin::host;
use outrigger::plugin::types::Level;
use serde_json::value::RawValue;

use crate::config::Config;

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

/// The alert's body.
#[derive(serde::Serialize)]
struct Alert<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    run_id: Option<&'a str>,
    ts_ns: u64,
    status: &'a str,
    data: &'a RawValue,
}

/// The payload of a failed event, or `None`.
fn failed<'a>(payload: &'a str, status_field: &str) -> Option<&'a RawValue> {
    // A cheap test first: most events are not failures. (A value spelt with escapes, such as
    // "\u0066ailed", is not seen as a failure.)
    if !payload.contains("failed") {
        return None;
    }
    let fields: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_str(payload).ok()?;
    let status = fields.get(status_field)?;
    if serde_json::from_str::<&str>(status.get()).ok()? != "failed" {
        return None;
    }
    serde_json::from_str(payload).ok()
}

/// What one batch's alerts came to.
#[derive(Default)]
struct Outcome {
    sent: u64,
    failed: u64,
    not_tried: u64,
    first_error: Option<String>,
}

fn alert(config: &Config, events: &[Event]) -> Outcome {
    let mut out = Outcome::default();
    let mut endpoint_down = false;
    for ev in events {
        let Some(data) = failed(&ev.payload, &config.status_field) else {
            continue;
        };
        if endpoint_down {
            out.failed += 1;
            out.not_tried += 1;
            continue;
        }
        let alert = Alert {
            kind: &ev.kind,
            run_id: ev.run_id.as_deref(),
            ts_ns: ev.ts_ns,
            status: "failed",
            data,
        };
        // Serialising borrowed strings and a RawValue cannot fail.
        let body = serde_json::to_vec(&alert).unwrap_or_default();
        match http::post(&config.target, &config.headers, &body, config.timeout_ns) {
            Ok(status) if (200..300).contains(&status) => out.sent += 1,
            Ok(status) => {
                out.failed += 1;
                out.first_error
                    .get_or_insert_with(|| format!("HTTP status {status}"));
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
                endpoint_down = true;
            }
        }
    }
    out
}

struct WebhookAlert;

impl Guest for WebhookAlert {
    fn init(config: String) -> Result<(), String> {
        let config = Config::parse(&config).map_err(|e| format!("webhook-alert config: {e}"))?;
        http::check_headers(&config.headers)
            .map_err(|e| format!("webhook-alert config: headers: {e}"))?;
        CONFIG.with(|c| *c.borrow_mut() = Some(config));
        Ok(())
    }

    fn on_batch(events: Vec<Event>) -> Vec<Verdict> {
        CONFIG.with(|c| {
            if let Some(config) = c.borrow().as_ref() {
                report(&alert(config, &events), &config.url);
            }
        });
        events.iter().map(|_| Verdict::Keep).collect()
    }
}

/// Counts the batch's alerts and, when some failed, logs one warning.
fn report(out: &Outcome, url: &str) {
    if out.sent > 0 {
        host::counter_add("alerts_sent", out.sent);
    }
    if out.failed == 0 {
        return;
    }
    host::counter_add("alerts_failed", out.failed);
    let error = out.first_error.as_deref().unwrap_or("unknown");
    host::log(
        Level::Warn,
        &format!(
            "failed={} sent={} not_tried={} error={error} url={url}: alert POST failed",
            out.failed, out.sent, out.not_tried
        ),
    );
}

export!(WebhookAlert);

#[cfg(test)]
mod tests {
    use super::failed;

    #[test]
    fn finds_failed_events_by_the_configured_field() {
        let p = r#"{"status": "failed", "n": 1}"#;
        assert_eq!(failed(p, "status").map(|r| r.get()), Some(p));
        assert!(failed(r#"{"status": "ok", "note": "failed"}"#, "status").is_none());
        assert!(failed(r#"{"state": "failed"}"#, "status").is_none());
        assert!(failed(r#"{"state": "failed"}"#, "state").is_some());
        assert!(failed(r#"{"status": ["failed"]}"#, "status").is_none());
        assert!(failed(r#"["failed"]"#, "status").is_none());
        assert!(failed("failed", "status").is_none());
    }
}
