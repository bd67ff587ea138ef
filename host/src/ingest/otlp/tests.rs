use std::time::Instant;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value as V,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use serde_json::{Value, json};

use super::*;

fn av(v: V) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn kv(k: &str, v: V) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: av(v),
        ..Default::default()
    }
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", V::StringValue("checkout".into())),
            kv("host.cores", V::IntValue(2)),
        ],
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "lib".into(),
        version: "1.2".into(),
        ..Default::default()
    })
}

fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn data(e: &Event) -> Value {
    serde_json::from_slice(&e.data).unwrap()
}

#[test]
fn a_log_record_maps_field_by_field() {
    let trace = [0xab; 16];
    let rec = LogRecord {
        time_unix_nano: 1_700_000_000_000_000_123,
        severity_number: 17,
        severity_text: "ERROR".into(),
        body: av(V::KvlistValue(KeyValueList {
            values: vec![
                kv("msg", V::StringValue("boom \"quoted\"".into())),
                kv("n", V::DoubleValue(1.5)),
                kv("raw", V::BytesValue(vec![0, 1, 2, 255])),
                kv(
                    "list",
                    V::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(V::BoolValue(true)),
                            },
                            AnyValue { value: None },
                        ],
                    }),
                ),
            ],
        })),
        attributes: vec![
            kv("http.method", V::StringValue("GET".into())),
            kv("retries", V::IntValue(3)),
        ],
        trace_id: trace.to_vec(),
        span_id: vec![0xcd; 8],
        ..Default::default()
    };
    let events = logs_to_events(&logs(vec![rec]), Instant::now());
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(&*e.kind, "otel.log");
    assert_eq!(e.ts_ns, 1_700_000_000_000_000_123);
    assert_eq!(e.run_id.as_deref(), Some("ab".repeat(16).as_str()));
    assert_eq!(
        e.attributes,
        vec![
            ("http.method".to_string(), "GET".to_string()),
            ("retries".to_string(), "3".to_string()),
            ("service.name".to_string(), "checkout".to_string()),
        ]
    );
    assert_eq!(
        data(e),
        json!({
            "body": {"msg": "boom \"quoted\"", "n": 1.5, "raw": "AAEC/w==", "list": [true, null]},
            "severity_number": 17,
            "severity_text": "ERROR",
            "attributes": {"http.method": "GET", "retries": 3},
            "trace_id": "ab".repeat(16),
            "span_id": "cd".repeat(8),
            "time_unix_nano": 1_700_000_000_000_000_123u64,
            "resource": {"service.name": "checkout", "host.cores": 2},
            "scope": {"name": "lib", "version": "1.2"},
        })
    );
}

#[test]
fn event_names_run_ids_and_times() {
    let named = LogRecord {
        attributes: vec![
            kv("event.name", V::StringValue("checkout.failed".into())),
            kv(RUN_ID_ATTRIBUTE, V::StringValue("job-7".into())),
        ],
        trace_id: vec![1; 16],
        observed_time_unix_nano: 42,
        ..Default::default()
    };
    let field = LogRecord {
        event_name: "login".into(),
        body: av(V::StringValue("plain".into())),
        ..Default::default()
    };
    let too_long = LogRecord {
        event_name: "x".repeat(300),
        trace_id: vec![0; 16],
        ..Default::default()
    };
    let before = now_ns();
    let ev = logs_to_events(&logs(vec![named, field, too_long]), Instant::now());
    assert_eq!(&*ev[0].kind, "checkout.failed");
    assert_eq!(
        ev[0].run_id.as_deref(),
        Some("job-7"),
        "the attribute wins over the trace id"
    );
    assert_eq!(ev[0].ts_ns, 42, "observed time when the record has none");
    assert_eq!(&*ev[1].kind, "login");
    assert_eq!(data(&ev[1])["body"], "plain");
    assert_eq!(ev[1].run_id, None);
    assert!(ev[1].ts_ns >= before, "no time at all: now");
    assert_eq!(
        &*ev[2].kind, "otel.log",
        "an event name over 256 bytes falls back"
    );
    assert_eq!(data(&ev[2])["event_name"], "x".repeat(300));
    assert_eq!(ev[2].run_id, None, "an all-zero trace id is no trace");
}

fn trace(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[test]
fn spans_map_with_status_parent_and_duration() {
    let child = Span {
        trace_id: vec![7; 16],
        span_id: vec![2; 8],
        parent_span_id: vec![1; 8],
        name: "db".into(),
        kind: 3,
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 1_002_500_000,
        attributes: vec![kv("db.system", V::StringValue("pg".into()))],
        events: vec![span::Event {
            name: "exception".into(),
            time_unix_nano: 1_001_000_000,
            attributes: vec![kv("exception.message", V::StringValue("boom".into()))],
            ..Default::default()
        }],
        status: Some(Status {
            code: 2,
            message: "boom".into(),
        }),
        ..Default::default()
    };
    let root = Span {
        trace_id: vec![7; 16],
        span_id: vec![1; 8],
        name: "GET /".into(),
        kind: 2,
        start_time_unix_nano: 999_000_000,
        end_time_unix_nano: 1_003_000_000,
        ..Default::default()
    };
    let ev = spans_to_events(&trace(vec![child, root]), Instant::now());
    assert!(ev.iter().all(|e| &*e.kind == "otel.span"));
    assert_eq!(ev[0].run_id.as_deref(), Some("07".repeat(16).as_str()));
    assert_eq!(ev[0].ts_ns, 1_000_000_000);
    let d = data(&ev[0]);
    assert_eq!(d["status"], "error");
    assert_eq!(d["status_message"], "boom");
    assert_eq!(d["kind"], "client");
    assert_eq!(d["parent_span_id"], "01".repeat(8));
    assert_eq!(d["duration_ms"], 2.5);
    assert_eq!(d["events"][0]["name"], "exception");
    assert_eq!(d["events"][0]["attributes"]["exception.message"], "boom");
    assert_eq!(d["resource"]["service.name"], "checkout");
    let r = data(&ev[1]);
    assert_eq!(r["status"], "unset");
    assert_eq!(r["kind"], "server");
    assert!(
        r.get("parent_span_id").is_none(),
        "a root span has no parent"
    );
    // The default policies: the error span keeps the trace, the root span ends it.
    let cfg = crate::config::TailConfig::default();
    let m = crate::metrics::Metrics::new();
    assert!(cfg.keep[0].when.matches(&ev[0], &m, "keep"));
    assert!(!cfg.keep[0].when.matches(&ev[1], &m, "keep"));
    assert!(!cfg.end_when.matches(&ev[0], &m, "end_when"));
    assert!(cfg.end_when.matches(&ev[1], &m, "end_when"));
}

#[test]
fn the_otlp_sink_encodes_what_ingest_maps_back() {
    let rec = LogRecord {
        time_unix_nano: 5,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: av(V::StringValue("hello".into())),
        trace_id: vec![0x11; 16],
        span_id: vec![0x22; 8],
        ..Default::default()
    };
    let events = logs_to_events(&logs(vec![rec]), Instant::now());
    let req = crate::sinks::otlp::encode(&events);
    let out = &req.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(out.time_unix_nano, 5);
    assert_eq!(out.event_name, "otel.log");
    assert_eq!(out.trace_id, vec![0x11; 16]);
    assert_eq!(out.span_id, vec![0x22; 8]);
    assert_eq!(out.severity_number, 9);
    assert_eq!(out.severity_text, "INFO");
    let again = logs_to_events(&req, Instant::now());
    assert_eq!(
        again[0].run_id, events[0].run_id,
        "the run id survives the round trip"
    );
    assert_eq!(
        data(&again[0])["body"],
        data(&events[0]),
        "data is the body"
    );
}

#[test]
fn base64_and_hex() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(hex(&[0, 0xff, 0x1a]), "00ff1a");
}
