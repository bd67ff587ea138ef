//! OpenTelemetry in and out, with real clients: the OpenTelemetry Python SDK exports spans and
//! logs to the daemon over OTLP/HTTP and OTLP/gRPC (`otel/export.py`, which prints what it
//! sent); the `otlp` sink sends to a receiver built on the `opentelemetry-proto` Python
//! package's generated classes (`otel/receiver.py`, which writes what it decoded); and bad
//! input over HTTP and gRPC is refused with its reason while the daemon carries on.
//!
//! The Python side runs in `<repo>/.venv`, which `.ci/run` makes and fills from
//! `tests/e2e/otel/requirements.txt`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;
use serde_json::{Value, json};

use crate::harness::{Daemon, eventually, free_ports, read_ndjson};

const OTEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/otel");

fn python() -> PathBuf {
    let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python")).to_path_buf();
    assert!(
        p.exists(),
        "{} is missing: run `bash .ci/run`, or `python3 -m venv .venv && .venv/bin/pip install -r tests/e2e/otel/requirements.txt`",
        p.display()
    );
    p
}

/// A daemon with both OTLP receivers on free ports; `extra` is merged over it (its
/// `ingest.otlp` keys beside the ports).
async fn otlp_daemon(extra: &str) -> (Daemon, std::net::SocketAddr, std::net::SocketAddr) {
    let [http, grpc] = free_ports();
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&format!(
        "ingest: {{otlp: {{http: \"{http}\", grpc: \"{grpc}\"}}}}"
    ))
    .unwrap();
    if !extra.is_empty() {
        crate::harness::merge(&mut cfg, serde_yaml::from_str(extra).unwrap());
    }
    let d = Daemon::start(&serde_yaml::to_string(&cfg).unwrap()).await;
    (d, http, grpc)
}

/// Runs `export.py` with `args`; its manifest.
fn export(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(format!("{OTEL}/export.py"))
        .args(args)
        .output()
        .expect("export.py runs");
    assert!(
        out.status.success(),
        "export.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON manifest")
}

fn spans_of(manifest: &Value) -> Vec<(String, &Value)> {
    manifest["traces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            let id = t["trace_id"].as_str().unwrap().to_string();
            t["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |s| (id.clone(), s))
        })
        .collect()
}

/// Every span and log record of `manifest` is among `events`, mapped as docs/otlp.md says.
fn check_delivered(manifest: &Value, events: &[Value]) {
    let by_span: BTreeMap<&str, &Value> = events
        .iter()
        .filter(|e| e["type"] == "otel.span")
        .map(|e| (e["data"]["span_id"].as_str().unwrap(), e))
        .collect();
    let resource = &manifest["resource"];
    for (trace_id, s) in spans_of(manifest) {
        let sid = s["span_id"].as_str().unwrap();
        let e = by_span
            .get(sid)
            .unwrap_or_else(|| panic!("span {sid} not delivered"));
        let d = &e["data"];
        assert_eq!(e["run_id"], trace_id.as_str(), "the trace id is the run id");
        assert_eq!(d["trace_id"], trace_id.as_str());
        assert_eq!(d["name"], s["name"]);
        assert_eq!(d["status"], s["status"], "{sid}");
        assert_eq!(d["attributes"], s["attributes"]);
        assert_eq!(d["parent_span_id"].as_str(), s["parent_span_id"].as_str());
        assert_eq!(d["scope"]["name"], "e2e.tracer");
        assert_eq!(d["scope"]["version"], "1.0");
        assert_eq!(&d["resource"], resource, "resource attributes kept");
        assert_eq!(e["attributes"]["http.method"], "GET");
        assert_eq!(e["attributes"]["service.name"], resource["service.name"]);
        if s["status"] == "error" {
            assert_eq!(d["status_message"], "boom");
            assert_eq!(d["events"][0]["name"], "exception");
        }
        assert!(d["duration_ms"].as_f64().unwrap() >= 0.0);
    }
    let logs: Vec<&Value> = events.iter().filter(|e| e["type"] == "otel.log").collect();
    for l in manifest["logs"].as_array().unwrap() {
        let e = logs
            .iter()
            .find(|e| e["data"]["body"] == l["body"])
            .unwrap_or_else(|| panic!("log {} not delivered", l["body"]));
        let d = &e["data"];
        assert_eq!(d["attributes"], l["attributes"]);
        assert_eq!(d["severity_number"], l["severity_number"]);
        assert_eq!(d["severity_text"], l["severity_text"]);
        assert_eq!(&d["resource"], resource);
        match l["trace_id"].as_str() {
            Some(t) => {
                assert_eq!(e["run_id"], t);
                assert_eq!(d["span_id"], l["span_id"]);
            }
            None => assert!(e.get("run_id").is_none_or(Value::is_null), "{e}"),
        }
    }
    let want = spans_of(manifest).len() + manifest["logs"].as_array().unwrap().len();
    assert_eq!(events.len(), want, "nothing more, nothing less");
}

async fn wait_events(d: &Daemon, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(20), async || d.events().len() >= n).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more arrives
    d.events()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_exports_over_http_and_grpc() {
    let (mut d, http, grpc) = otlp_daemon("").await;
    let base = [
        "--traces",
        "6",
        "--spans-per-trace",
        "3",
        "--error-traces",
        "1",
        "--logs",
        "8",
    ];
    let h = format!("http://{http}");
    let g = format!("http://{grpc}");
    let runs: [(&str, &str, bool); 3] =
        [("http", &h, false), ("http", &h, true), ("grpc", &g, true)];
    let mut total = 0;
    for (i, (proto, endpoint, gzip)) in runs.into_iter().enumerate() {
        let service = format!("svc-{i}");
        let mut args = vec![
            "--protocol",
            proto,
            "--endpoint",
            endpoint,
            "--service",
            &service,
        ];
        args.extend(base);
        if gzip {
            args.push("--gzip");
        }
        let manifest = export(&args);
        total += spans_of(&manifest).len() + manifest["logs"].as_array().unwrap().len();
        let events = wait_events(&d, total).await;
        let mine: Vec<Value> = events
            .into_iter()
            .filter(|e| e["data"]["resource"]["service.name"] == service.as_str())
            .collect();
        check_delivered(&manifest, &mine);
    }
    let m = d.get("/metrics").await.1;
    let http_n = crate::harness::metric_value(
        &m,
        "outrigger_events_received_total",
        r#"ingest="otlp_http""#,
    );
    let grpc_n = crate::harness::metric_value(
        &m,
        "outrigger_events_received_total",
        r#"ingest="otlp_grpc""#,
    );
    assert_eq!((http_n + grpc_n) as usize, total);
    assert!(http_n > 0.0 && grpc_n > 0.0, "{http_n} {grpc_n}");
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sampling_keeps_error_traces_whole() {
    let (mut d, http, _) = otlp_daemon(
        "sampling: {tail: {enabled: true, else_rate: 0.3, idle: 2s}}\nbatch: {max_events: 500, interval: 50ms}",
    )
    .await;
    let manifest = export(&[
        "--protocol",
        "http",
        "--endpoint",
        &format!("http://{http}"),
        "--traces",
        "40",
        "--spans-per-trace",
        "4",
        "--error-traces",
        "5",
        "--logs",
        "0",
    ]);
    let traces = manifest["traces"].as_array().unwrap();
    let expect: BTreeSet<&str> = traces
        .iter()
        .filter(|t| {
            t["error"] == true || outrigger::tail::rate_keeps(t["trace_id"].as_str().unwrap(), 0.3)
        })
        .map(|t| t["trace_id"].as_str().unwrap())
        .collect();
    let want = expect.len() * 4;
    let events = wait_events(&d, want).await;
    let mut got: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for e in &events {
        got.entry(e["run_id"].as_str().unwrap())
            .or_default()
            .push(e);
    }
    assert_eq!(
        got.keys().copied().collect::<BTreeSet<_>>(),
        expect,
        "kept traces"
    );
    for t in traces {
        let id = t["trace_id"].as_str().unwrap();
        let Some(spans) = got.get(id) else { continue };
        assert_eq!(spans.len(), 4, "trace {id} whole");
        let by = if t["error"] == true { "failed" } else { "rate" };
        assert!(
            spans
                .iter()
                .all(|e| e["attributes"]["outrigger.kept_by"] == by),
            "{id}: {spans:?}"
        );
        assert!(
            spans.last().unwrap()["data"]
                .get("parent_span_id")
                .is_none(),
            "the root span closes it, last"
        );
    }
    let m = d.get("/metrics").await.1;
    let dropped = crate::harness::metric_value(
        &m,
        "outrigger_tail_decisions_total",
        r#"by="rate",result="dropped""#,
    ) + crate::harness::metric_value(
        &m,
        "outrigger_tail_decisions_total",
        r#"by="none",result="dropped""#,
    );
    assert_eq!(
        dropped as usize + expect.len(),
        40,
        "every trace decided at its root span:\n{m}"
    );
    assert!(d.stop().success());
}

/// Starts `receiver.py`; the child and the port.
fn receiver(out: &Path, fail_first: usize) -> (std::process::Child, u16) {
    let mut child = Command::new(python())
        .arg(format!("{OTEL}/receiver.py"))
        .args([
            "--out",
            out.to_str().unwrap(),
            "--fail-first",
            &fail_first.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("receiver.py runs");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .expect("listening PORT")
        .parse()
        .unwrap();
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_sink_delivers_to_a_real_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.ndjson");
    let (mut rx, port) = receiver(&out, 2);
    let (mut d, http, _) = otlp_daemon(&format!(
        "sinks: [{{type: otlp, url: \"http://127.0.0.1:{port}\"}}, {{type: file, path: \"{}\"}}]",
        dir.path().join("events.ndjson").display()
    ))
    .await;
    let mut lines = Vec::new();
    for i in 0..50 {
        lines.push(format!(
            r#"{{"type":"step","run_id":"run-{}","ts_ns":{},"attributes":{{"suite":"unit"}},"data":{{"i":{i},"ok":true,"tags":["a","b"],"x":1.5,"none":null}}}}"#,
            i % 5,
            1_700_000_000_000_000_000u64 + i as u64 * 1_000_000
        ));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    d.send(&refs).await;
    // One record through OTLP/HTTP too: its trace id comes back out.
    export(&[
        "--protocol",
        "http",
        "--endpoint",
        &format!("http://{http}"),
        "--no-traces",
        "--logs",
        "2",
        "--service",
        "in",
    ]);
    let ok = eventually(Duration::from_secs(30), async || {
        read_ndjson(&out).len() >= 52
    })
    .await;
    let records = read_ndjson(&out);
    assert!(
        ok,
        "{} records at the receiver; daemon log:\n{}",
        records.len(),
        d.log_text()
    );
    assert_eq!(records.len(), 52, "each once, after two refused attempts");
    for i in 0..50 {
        let r = records
            .iter()
            .find(|r| r["body"]["i"] == i)
            .unwrap_or_else(|| panic!("record {i}"));
        assert_eq!(r["event_name"], "step");
        assert_eq!(r["attributes"]["event.name"], "step");
        assert_eq!(
            r["attributes"]["outrigger.run_id"],
            format!("run-{}", i % 5)
        );
        assert_eq!(r["attributes"]["suite"], "unit");
        assert_eq!(
            r["body"],
            json!({"i": i, "ok": true, "tags": ["a", "b"], "x": 1.5, "none": null})
        );
        assert_eq!(
            r["time_unix_nano"].as_u64().unwrap() / 1_000_000,
            1_700_000_000_000 + i as u64
        );
        assert_eq!(r["resource"]["service.name"], "outrigger");
        assert_eq!(r["scope"]["name"], "outrigger");
    }
    let with_trace = records
        .iter()
        .find(|r| r["event_name"] == "otel.log" && r["trace_id"] != "");
    assert!(
        with_trace.is_none(),
        "the exported logs had no span: {with_trace:?}"
    );
    assert!(
        records
            .iter()
            .filter(|r| r["event_name"] == "otel.log")
            .all(|r| r["body"]["resource"]["service.name"] == "in")
    );
    let m = d.get("/metrics").await.1;
    assert!(
        crate::harness::metric_value(&m, "outrigger_sink_batches_total", r#"result="retry""#)
            >= 2.0,
        "the two 503s were retried:\n{m}"
    );
    assert_eq!(read_ndjson(&dir.path().join("events.ndjson")).len(), 52);
    assert!(d.stop().success());
    unsafe { libc::kill(rx.id() as i32, libc::SIGTERM) };
    rx.wait().unwrap();
}

fn request(records: usize, body: &str) -> ExportLogsServiceRequest {
    let rec = |i: usize| LogRecord {
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(format!("{body} {i}"))),
        }),
        severity_text: "INFO".into(),
        attributes: vec![KeyValue {
            key: "i".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(i as i64)),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: (0..records).map(rec).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

/// `google.rpc.Status.message` of an OTLP/HTTP protobuf error body.
fn status_message(body: &[u8]) -> String {
    #[derive(Clone, PartialEq, Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    RpcStatus::decode(body)
        .expect("a google.rpc.Status")
        .message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_otlp_input_is_refused_with_its_reason() {
    let (mut d, http, grpc) = otlp_daemon(
        "ingest: {otlp: {max_request_bytes: 65536}}\nqueue: {capacity: 100, on_full: drop_newest}",
    )
    .await;
    let url = format!("http://{http}/v1/logs");
    let c = reqwest::Client::new();
    let post = async |ctype: &str, enc: Option<&str>, body: Vec<u8>| {
        let mut r = c.post(&url).header("content-type", ctype);
        if let Some(e) = enc {
            r = r.header("content-encoding", e);
        }
        let resp = r.body(body).send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    };
    let good = request(3, "fine").encode_to_vec();

    // Truncated protobuf: 400 with the decoder's reason.
    let (s, b) = post(
        "application/x-protobuf",
        None,
        good[..good.len() - 3].to_vec(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        status_message(&b).contains("malformed protobuf"),
        "{}",
        status_message(&b)
    );
    // Wrong content type: 415, saying what to send.
    let (s, b) = post("text/plain", None, good.clone()).await;
    assert_eq!(s, 415);
    assert!(String::from_utf8_lossy(&b).contains("application/x-protobuf"));
    // Oversized body: 413 naming the bound.
    let (s, b) = post("application/x-protobuf", None, vec![0u8; 70_000]).await;
    assert_eq!(s, 413);
    assert!(status_message(&b).contains("max_request_bytes"));
    // A gzip bomb: 64 MiB of zeros in ~64 KiB stops at the bound.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 65536, "{}", bomb.len());
    let (s, b) = post("application/x-protobuf", Some("gzip"), bomb).await;
    assert_eq!(s, 413);
    assert!(
        status_message(&b).contains("decompressed"),
        "{}",
        status_message(&b)
    );
    // Invalid UTF-8 in a string field: 400.
    let mut bad = request(1, "AAAA").encode_to_vec();
    let at = bad.windows(4).position(|w| w == b"AAAA").unwrap();
    bad[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xff, 0xfe]);
    let (s, b) = post("application/x-protobuf", None, bad).await;
    assert_eq!(s, 400);
    assert!(
        status_message(&b).to_lowercase().contains("utf"),
        "{}",
        status_message(&b)
    );
    // Malformed OTLP/JSON: 400 in JSON.
    let (s, b) = post("application/json", None, b"{\"resourceLogs\": [".to_vec()).await;
    assert_eq!(s, 400);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("malformed OTLP/JSON"),
        "{v}"
    );
    // An unknown field is ignored, as protobuf does: 200, the records arrive.
    let mut unknown = good.clone();
    unknown.extend_from_slice(&[0xf8, 0x06, 0x01]); // field 111, varint 1
    let (s, b) = post("application/x-protobuf", None, unknown).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        ExportLogsServiceResponse::decode(&b[..])
            .unwrap()
            .partial_success,
        None
    );
    // OTLP/JSON with hex ids and an unknown key.
    let j = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"body": {"stringValue": "from json"}, "traceId": "5b8efff798038103d269b633813fc60c",
         "spanId": "eee19b7ec3c1b174", "timeUnixNano": "1700000000000000000", "future": 1}]}]}]});
    let (s, b) = post("application/json", None, serde_json::to_vec(&j).unwrap()).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert!(eventually(Duration::from_secs(10), async || d.events().len() >= 4).await);
    let events = d.events();
    let e = events
        .iter()
        .find(|e| e["data"]["body"] == "from json")
        .expect("the JSON record");
    assert_eq!(e["run_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(
        e["ts_ns"]
            .as_u64()
            .or(e["ts"].as_f64().map(|t| (t * 1e9) as u64))
            .map(|t| t / 1_000_000_000),
        Some(1_700_000_000)
    );
    // A queue that refuses some: 200 with partial_success naming how many and why.
    let (s, b) = post(
        "application/x-protobuf",
        None,
        request(300, "many").encode_to_vec(),
    )
    .await;
    assert_eq!(s, 200);
    let p = ExportLogsServiceResponse::decode(&b[..])
        .unwrap()
        .partial_success
        .expect("partial success");
    assert!(
        p.rejected_log_records > 0 && p.rejected_log_records <= 300,
        "{p:?}"
    );
    assert!(p.error_message.contains("queue"), "{p:?}");

    // gRPC: an oversized message is refused (tonic: OUT_OF_RANGE), and so is one that only
    // inflates past the bound (gzip); a good one is answered.
    let mut client = LogsServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let err = client
        .export(request(2000, &"x".repeat(64)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    let mut zipped = LogsServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let err = zipped
        .export(request(4000, &"x".repeat(200)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let ok = client
        .export(request(2, "grpc"))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.partial_success.is_none() || ok.partial_success.unwrap().rejected_log_records == 0);

    // The daemon still serves (health says unhealthy: the queue just refused events), and
    // counted the malformed requests.
    let (s, _) = d.get("/readyz").await;
    assert_eq!(s, 200);
    let m = d.get("/metrics").await.1;
    assert!(
        crate::harness::metric_value(&m, "outrigger_events_dropped_total", r#"reason="invalid""#)
            >= 3.0
    );
    assert!(d.stop().success());
}
