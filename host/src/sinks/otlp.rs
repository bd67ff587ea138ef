//! The `otlp` sink: every event as an OTLP log record, OTLP/HTTP protobuf.
//!
//! In: batches. Out: one `POST {url}/v1/logs` per batch (`application/x-protobuf`, gzip unless
//! `compression: none`) holding one `ExportLogsServiceRequest`: one resource
//! (`service.name: outrigger`), one scope (`outrigger`, the daemon's version), one log record
//! per event: `time_unix_nano` the event's `ts_ns`, `event_name` and the attribute `event.name`
//! its type, the attribute `outrigger.run_id` its run id, its attributes as string attributes,
//! and `data` as the body (JSON objects as key-value lists, arrays as arrays, numbers as int or
//! double). Events that came in over OTLP get their trace and span ids and severity back from
//! `data` (`trace_id`, `span_id`, `severity_number`, `severity_text`). Retry and spool are the delivery's; connection errors, timeouts,
//! 408, 429 and 5xx are retryable, other 4xx fatal. Records the receiver reports as rejected in
//! `partial_success` are counted as dropped (`sink`) and logged.

use std::io::Write;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use std::sync::Arc;

use super::{Batch, SinkError, http};
use crate::config::{OtlpCompression, OtlpSinkConfig};
use crate::event::Event;
use crate::metrics::{DropReason, Metrics};

/// The `otlp` sink's writer.
pub struct OtlpSink {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    gzip: bool,
    metrics: Arc<Metrics>,
}

impl OtlpSink {
    pub fn new(cfg: &OtlpSinkConfig, metrics: Arc<Metrics>) -> anyhow::Result<OtlpSink> {
        let base = cfg.url.trim_end_matches('/');
        let url = if base.ends_with("/v1/logs") {
            base.to_string()
        } else {
            format!("{base}/v1/logs")
        };
        Ok(OtlpSink {
            client: http::client(cfg.timeout.0)?,
            url,
            headers: http::header_map(&cfg.headers)?,
            gzip: cfg.compression == OtlpCompression::Gzip,
            metrics,
        })
    }

    pub async fn send(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        let body = encode(&batch.events).encode_to_vec();
        let mut req = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
        req = if self.gzip {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            gz.write_all(&body)
                .map_err(|e| SinkError::Retryable(format!("gzip: {e}")))?;
            let zipped = gz
                .finish()
                .map_err(|e| SinkError::Retryable(format!("gzip: {e}")))?;
            req.header(reqwest::header::CONTENT_ENCODING, "gzip")
                .body(zipped)
        } else {
            req.body(body)
        };
        let bytes = http::post(req, &self.url).await?;
        let n = batch.events.len();
        let rejected = ExportLogsServiceResponse::decode(bytes)
            .ok()
            .and_then(|r| r.partial_success)
            .filter(|p| p.rejected_log_records > 0);
        if let Some(p) = rejected {
            let r = (p.rejected_log_records as usize).min(n);
            self.metrics.dropped(DropReason::Sink, r as u64);
            tracing::warn!(url = %self.url, rejected = r, message = %p.error_message,
                "the OTLP receiver rejected some log records (counted as dropped, reason sink)");
            return Ok(n - r);
        }
        Ok(n)
    }
}

/// One export request for `events`.
pub fn encode(events: &[Event]) -> ExportLogsServiceRequest {
    let observed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", string("outrigger"))],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "outrigger".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: events.iter().map(|e| record(e, observed)).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn record(e: &Event, observed: u64) -> LogRecord {
    let data: serde_json::Value =
        serde_json::from_slice(&e.data).unwrap_or(serde_json::Value::Null);
    let mut attributes = Vec::with_capacity(e.attributes.len() + 2);
    attributes.push(kv("event.name", string(&e.kind)));
    if let Some(r) = &e.run_id {
        attributes.push(kv(crate::ingest::otlp::RUN_ID_ATTRIBUTE, string(r)));
    }
    for (k, v) in &e.attributes {
        attributes.push(kv(k, string(v)));
    }
    let field = |k: &str| data.get(k);
    let hex_field = |k: &str, len: usize| {
        field(k)
            .and_then(|v| v.as_str())
            .filter(|s| s.len() == len * 2)
            .and_then(unhex)
            .filter(|id| id.len() == len)
            .unwrap_or_default()
    };
    LogRecord {
        time_unix_nano: e.ts_ns,
        observed_time_unix_nano: observed,
        severity_number: field("severity_number")
            .and_then(|v| v.as_i64())
            .filter(|n| (1..=24).contains(n))
            .unwrap_or(0) as i32,
        severity_text: field("severity_text")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string(),
        trace_id: hex_field("trace_id", 16),
        span_id: hex_field("span_id", 8),
        event_name: e.kind.to_string(),
        attributes,
        body: Some(any(data)),
        ..Default::default()
    }
}

fn kv(k: &str, v: AnyValue) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(v),
        ..Default::default()
    }
}

fn string(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    }
}

/// JSON as an `AnyValue`.
fn any(v: serde_json::Value) -> AnyValue {
    use serde_json::Value as J;
    let value = match v {
        J::Null => None,
        J::Bool(b) => Some(any_value::Value::BoolValue(b)),
        J::Number(n) => Some(match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        }),
        J::String(s) => Some(any_value::Value::StringValue(s)),
        J::Array(a) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: a.into_iter().map(any).collect(),
        })),
        J::Object(o) => Some(any_value::Value::KvlistValue(KeyValueList {
            values: o
                .into_iter()
                .map(|(k, v)| KeyValue {
                    key: k,
                    value: Some(any(v)),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    AnyValue { value }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    const_hex::decode(s).ok()
}
