//! OTLP ingest: OpenTelemetry log records and spans as events (SPEC "OpenTelemetry").
//!
//! In: decoded OTLP export requests (`ExportLogsServiceRequest`, `ExportTraceServiceRequest`)
//! from [`http`] (`POST /v1/logs`, `/v1/traces`: protobuf or JSON, gzip) and [`grpc`] (the logs
//! and trace services). Out: one [`Event`] per log record or span, admitted as one batch per
//! request, and the count the queue refused (the OTLP `partial_success`). The mapping, field by
//! field, is in `docs/otlp.md`: a log record is an event of type `otel.log` (or its `event.name`),
//! a span one of type `otel.span`; `data` is JSON written directly from the decoded message;
//! `run_id` is the trace id in hex unless an `outrigger.run_id` attribute names one. Both
//! listeners stop on the shutdown token.

pub mod grpc;
pub mod http;

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};

use super::Admission;
use crate::event::{Event, MAX_TYPE_BYTES, now_ns};

/// The attribute that names a run explicitly (on the record or span, else on the resource).
pub const RUN_ID_ATTRIBUTE: &str = "outrigger.run_id";

static LOG_TYPE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("otel.log"));
static SPAN_TYPE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("otel.span"));

/// What became of one export request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Records (or spans) admitted.
    pub accepted: usize,
    /// Records (or spans) the queue refused.
    pub rejected: usize,
    /// The write-ahead log could not take them (`queue.durable`): answered as unavailable,
    /// so that the exporter retries.
    pub error: Option<String>,
}

impl Outcome {
    /// The `partial_success` message, when some were rejected.
    pub fn message(&self) -> String {
        if self.rejected == 0 {
            String::new()
        } else {
            format!(
                "{} of {} refused: the queue is full (queue.on_full: drop_newest)",
                self.rejected,
                self.accepted + self.rejected
            )
        }
    }
}

/// Maps and admits the log records of `req`, counted under `source`.
pub async fn admit_logs(
    adm: &Admission,
    source: &prometheus::IntCounter,
    req: &ExportLogsServiceRequest,
) -> Outcome {
    admit(adm, source, logs_to_events(req, Instant::now())).await
}

/// Maps and admits the spans of `req`, counted under `source`.
pub async fn admit_traces(
    adm: &Admission,
    source: &prometheus::IntCounter,
    req: &ExportTraceServiceRequest,
) -> Outcome {
    admit(adm, source, spans_to_events(req, Instant::now())).await
}

async fn admit(adm: &Admission, source: &prometheus::IntCounter, events: Vec<Event>) -> Outcome {
    let n = events.len();
    let a = adm.admit(source, events).await;
    Outcome {
        accepted: n - a.refused,
        rejected: a.refused,
        error: a.error,
    }
}

/// One event per log record.
pub fn logs_to_events(req: &ExportLogsServiceRequest, received: Instant) -> Vec<Event> {
    let mut out = Vec::with_capacity(
        req.resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum(),
    );
    for rl in &req.resource_logs {
        let resource = rl.resource.as_ref();
        let res_attrs = resource.map_or(&[][..], |r| &r.attributes[..]);
        for sl in &rl.scope_logs {
            let scope = sl.scope.as_ref();
            for rec in &sl.log_records {
                let kind = str_attr(&rec.attributes, "event.name")
                    .or((!rec.event_name.is_empty()).then_some(rec.event_name.as_str()))
                    .filter(|n| !n.is_empty() && n.len() <= MAX_TYPE_BYTES)
                    .map_or_else(|| LOG_TYPE.clone(), Arc::from);
                let ts = [rec.time_unix_nano, rec.observed_time_unix_nano]
                    .into_iter()
                    .find(|t| *t != 0)
                    .unwrap_or_else(now_ns);
                let data = serde_json::to_vec(&LogData {
                    rec,
                    resource,
                    scope,
                })
                .unwrap_or_else(|_| b"null".to_vec());
                out.push(Event {
                    id: 0,
                    seq: 0,
                    kind,
                    ts_ns: ts,
                    run_id: run_id(&rec.attributes, res_attrs, &rec.trace_id),
                    attributes: flat_attributes(&rec.attributes, res_attrs),
                    data: Bytes::from(data),
                    received,
                });
            }
        }
    }
    out
}

/// One event per span.
pub fn spans_to_events(req: &ExportTraceServiceRequest, received: Instant) -> Vec<Event> {
    let mut out = Vec::with_capacity(
        req.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum(),
    );
    for rs in &req.resource_spans {
        let resource = rs.resource.as_ref();
        let res_attrs = resource.map_or(&[][..], |r| &r.attributes[..]);
        for ss in &rs.scope_spans {
            let scope = ss.scope.as_ref();
            for span in &ss.spans {
                let ts = [span.start_time_unix_nano, span.end_time_unix_nano]
                    .into_iter()
                    .find(|t| *t != 0)
                    .unwrap_or_else(now_ns);
                let data = serde_json::to_vec(&SpanData {
                    span,
                    resource,
                    scope,
                })
                .unwrap_or_else(|_| b"null".to_vec());
                out.push(Event {
                    id: 0,
                    seq: 0,
                    kind: SPAN_TYPE.clone(),
                    ts_ns: ts,
                    run_id: run_id(&span.attributes, res_attrs, &span.trace_id),
                    attributes: flat_attributes(&span.attributes, res_attrs),
                    data: Bytes::from(data),
                    received,
                });
            }
        }
    }
    out
}

/// `outrigger.run_id` on the record, then on the resource, else the trace id in hex.
fn run_id(attrs: &[KeyValue], resource: &[KeyValue], trace_id: &[u8]) -> Option<Arc<str>> {
    if let Some(id) =
        str_attr(attrs, RUN_ID_ATTRIBUTE).or_else(|| str_attr(resource, RUN_ID_ATTRIBUTE))
        && !id.is_empty()
    {
        return Some(Arc::from(id));
    }
    (!trace_id.is_empty() && trace_id.iter().any(|b| *b != 0)).then(|| Arc::from(hex(trace_id)))
}

/// The string value of attribute `key`, if it has one.
fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().rev().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The event's string attributes: the record's (or span's) scalar attributes as text, and the
/// resource's `service.name` when the record does not name one.
fn flat_attributes(attrs: &[KeyValue], resource: &[KeyValue]) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(attrs.len() + 1);
    for kv in attrs {
        let Some(v) = kv.value.as_ref().and_then(|v| v.value.as_ref()) else {
            continue;
        };
        let text = match v {
            any_value::Value::StringValue(s) => s.clone(),
            any_value::Value::BoolValue(b) => b.to_string(),
            any_value::Value::IntValue(i) => i.to_string(),
            any_value::Value::DoubleValue(d) => d.to_string(),
            _ => continue,
        };
        out.push((kv.key.clone(), text));
    }
    if !out.iter().any(|(k, _)| k == "service.name")
        && let Some(s) = str_attr(resource, "service.name")
    {
        out.push(("service.name".into(), s.to_string()));
    }
    out
}

/// Lower-case hex of `bytes` (trace and span ids).
pub fn hex(bytes: &[u8]) -> String {
    const_hex::encode(bytes)
}

// ---- `data`, written straight from the decoded message --------------------------------------

/// An `AnyValue` as JSON: strings, booleans, numbers as they are, bytes as base64, arrays and
/// key-value lists as arrays and objects, an empty value as null.
struct Any<'a>(Option<&'a AnyValue>);

impl Serialize for Any<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use any_value::Value as V;
        match self.0.and_then(|v| v.value.as_ref()) {
            None => s.serialize_unit(),
            Some(V::StringValue(v)) => s.serialize_str(v),
            Some(V::BoolValue(v)) => s.serialize_bool(*v),
            Some(V::IntValue(v)) => s.serialize_i64(*v),
            Some(V::DoubleValue(v)) if v.is_finite() => s.serialize_f64(*v),
            Some(V::DoubleValue(v)) => s.serialize_str(&v.to_string()),
            Some(V::BytesValue(v)) => s.serialize_str(&base64(v)),
            Some(V::ArrayValue(a)) => {
                let mut seq = s.serialize_seq(Some(a.values.len()))?;
                for v in &a.values {
                    seq.serialize_element(&Any(Some(v)))?;
                }
                seq.end()
            }
            Some(V::KvlistValue(l)) => Attrs(&l.values).serialize(s),
            // An index into a profile's string table (profiles only): kept as the number.
            Some(V::StringValueStrindex(i)) => s.serialize_i32(*i),
        }
    }
}

/// Key-value pairs as one JSON object, in their order (a repeated key is written twice; JSON
/// readers, the daemon's own included, take the last).
struct Attrs<'a>(&'a [KeyValue]);

impl Serialize for Attrs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for kv in self.0 {
            m.serialize_entry(&kv.key, &Any(kv.value.as_ref()))?;
        }
        m.end()
    }
}

struct Scope<'a>(&'a InstrumentationScope);

impl Serialize for Scope<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sc = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &sc.name)?;
        if !sc.version.is_empty() {
            m.serialize_entry("version", &sc.version)?;
        }
        if !sc.attributes.is_empty() {
            m.serialize_entry("attributes", &Attrs(&sc.attributes))?;
        }
        m.end()
    }
}

/// The resource's attributes and the scope, shared by logs and spans.
fn context<M: SerializeMap>(
    m: &mut M,
    resource: Option<&Resource>,
    scope: Option<&InstrumentationScope>,
) -> Result<(), M::Error> {
    m.serialize_entry(
        "resource",
        &Attrs(resource.map_or(&[][..], |r| &r.attributes[..])),
    )?;
    if let Some(sc) = scope {
        m.serialize_entry("scope", &Scope(sc))?;
    }
    Ok(())
}

struct LogData<'a> {
    rec: &'a opentelemetry_proto::tonic::logs::v1::LogRecord,
    resource: Option<&'a Resource>,
    scope: Option<&'a InstrumentationScope>,
}

impl Serialize for LogData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.rec;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("body", &Any(r.body.as_ref()))?;
        if r.severity_number != 0 {
            m.serialize_entry("severity_number", &r.severity_number)?;
        }
        if !r.severity_text.is_empty() {
            m.serialize_entry("severity_text", &r.severity_text)?;
        }
        if !r.event_name.is_empty() {
            m.serialize_entry("event_name", &r.event_name)?;
        }
        m.serialize_entry("attributes", &Attrs(&r.attributes))?;
        if !r.trace_id.is_empty() {
            m.serialize_entry("trace_id", &hex(&r.trace_id))?;
        }
        if !r.span_id.is_empty() {
            m.serialize_entry("span_id", &hex(&r.span_id))?;
        }
        if r.flags != 0 {
            m.serialize_entry("flags", &r.flags)?;
        }
        if r.time_unix_nano != 0 {
            m.serialize_entry("time_unix_nano", &r.time_unix_nano)?;
        }
        if r.observed_time_unix_nano != 0 {
            m.serialize_entry("observed_time_unix_nano", &r.observed_time_unix_nano)?;
        }
        if r.dropped_attributes_count != 0 {
            m.serialize_entry("dropped_attributes_count", &r.dropped_attributes_count)?;
        }
        context(&mut m, self.resource, self.scope)?;
        m.end()
    }
}

struct SpanData<'a> {
    span: &'a opentelemetry_proto::tonic::trace::v1::Span,
    resource: Option<&'a Resource>,
    scope: Option<&'a InstrumentationScope>,
}

/// The span kinds by their OTLP number, as `data.kind` names them.
const SPAN_KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];

impl Serialize for SpanData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sp = self.span;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &sp.name)?;
        m.serialize_entry(
            "kind",
            SPAN_KINDS.get(sp.kind as usize).unwrap_or(&"unspecified"),
        )?;
        m.serialize_entry("trace_id", &hex(&sp.trace_id))?;
        m.serialize_entry("span_id", &hex(&sp.span_id))?;
        if !sp.parent_span_id.is_empty() && sp.parent_span_id.iter().any(|b| *b != 0) {
            m.serialize_entry("parent_span_id", &hex(&sp.parent_span_id))?;
        }
        if !sp.trace_state.is_empty() {
            m.serialize_entry("trace_state", &sp.trace_state)?;
        }
        m.serialize_entry("start_time_unix_nano", &sp.start_time_unix_nano)?;
        m.serialize_entry("end_time_unix_nano", &sp.end_time_unix_nano)?;
        let ns = sp
            .end_time_unix_nano
            .saturating_sub(sp.start_time_unix_nano);
        m.serialize_entry("duration_ms", &(ns as f64 / 1e6))?;
        let (status, message) = match &sp.status {
            Some(st) => (
                match st.code {
                    1 => "ok",
                    2 => "error",
                    _ => "unset",
                },
                st.message.as_str(),
            ),
            None => ("unset", ""),
        };
        m.serialize_entry("status", status)?;
        if !message.is_empty() {
            m.serialize_entry("status_message", message)?;
        }
        m.serialize_entry("attributes", &Attrs(&sp.attributes))?;
        if !sp.events.is_empty() {
            m.serialize_entry("events", &SpanEvents(&sp.events))?;
        }
        if !sp.links.is_empty() {
            m.serialize_entry("links", &SpanLinks(&sp.links))?;
        }
        for (key, n) in [
            ("dropped_attributes_count", sp.dropped_attributes_count),
            ("dropped_events_count", sp.dropped_events_count),
            ("dropped_links_count", sp.dropped_links_count),
        ] {
            if n != 0 {
                m.serialize_entry(key, &n)?;
            }
        }
        context(&mut m, self.resource, self.scope)?;
        m.end()
    }
}

struct SpanEvents<'a>(&'a [opentelemetry_proto::tonic::trace::v1::span::Event]);

impl Serialize for SpanEvents<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for ev in self.0 {
            seq.serialize_element(&SpanEvent(ev))?;
        }
        seq.end()
    }
}

struct SpanEvent<'a>(&'a opentelemetry_proto::tonic::trace::v1::span::Event);

impl Serialize for SpanEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("name", &self.0.name)?;
        m.serialize_entry("time_unix_nano", &self.0.time_unix_nano)?;
        m.serialize_entry("attributes", &Attrs(&self.0.attributes))?;
        m.end()
    }
}

struct SpanLinks<'a>(&'a [opentelemetry_proto::tonic::trace::v1::span::Link]);

impl Serialize for SpanLinks<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for l in self.0 {
            seq.serialize_element(&SpanLink(l))?;
        }
        seq.end()
    }
}

struct SpanLink<'a>(&'a opentelemetry_proto::tonic::trace::v1::span::Link);

impl Serialize for SpanLink<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("trace_id", &hex(&self.0.trace_id))?;
        m.serialize_entry("span_id", &hex(&self.0.span_id))?;
        m.serialize_entry("attributes", &Attrs(&self.0.attributes))?;
        m.end()
    }
}

/// Standard base64 with padding (OTLP bytes values, as OTLP/JSON writes them).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests;
