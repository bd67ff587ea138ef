//! `outrigger bench`: a load generator against a running daemon.
//!
//! In: options (transport, connections, event size, fixed rate or flat out, ack or no-ack).
//! Out: a report of events/s, the ack round trip p50/p95/p99, and the delivered and dropped
//! counts read from the daemon's `/metrics` before and after (waiting for the pipeline to
//! settle), and the daemon's CPU per event and wake-ups from `/proc` ([`procstat`]; the pid
//! comes from the socket's peer credentials). One OS thread per connection with blocking I/O, so that the generator itself adds
//! as little jitter as possible to the round trips it measures. Ends when every connection has
//! sent its share.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

pub mod nats;
pub mod procstat;
use serde::Serialize;

/// What to send and how.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub socket: PathBuf,
    /// Send over HTTP `POST /v1/events` to this address instead of the socket.
    pub http: Option<SocketAddr>,
    /// The control API, for `/metrics`.
    pub control: Option<SocketAddr>,
    pub api_key: Option<String>,
    /// Sent as `Authorization: Bearer KEY` on HTTP ingest (`ingest.api_key`).
    pub ingest_key: Option<String>,
    pub connections: usize,
    pub events: u64,
    /// Approximate bytes of `data` per event.
    pub size: usize,
    /// Total events per second across connections; 0 = as fast as possible.
    pub rate: u64,
    /// Wait for every line's answer (and measure it); otherwise `hello {ack:false}`.
    pub ack: bool,
    /// Lines per write (no-ack) or per HTTP request.
    pub batch: usize,
    pub event_type: String,
    /// The daemon's pid, to report its CPU over the run (`None`: not measured).
    pub pid: Option<u32>,
    /// A run-shaped load instead of independent events (for tail sampling).
    pub runs: Option<RunShape>,
    /// Send OTLP/HTTP protobuf export requests of `batch` records to this address instead.
    pub otlp: Option<SocketAddr>,
    /// With `otlp`: spans (`POST /v1/traces`) instead of log records (`POST /v1/logs`).
    pub spans: bool,
}

/// `--runs N --run-events M --failing F`: each connection keeps its share of N runs open at
/// once, sends event k of each of them before event k+1 of any (`run_start`, `step`s,
/// `run_end`), then starts N new runs; a share F of the runs has a step with `status: failed`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RunShape {
    pub concurrent: usize,
    pub events_per_run: usize,
    pub failing: f64,
}

impl RunShape {
    /// Whether run `i` of round `round` fails (spread evenly, the same on every run).
    fn fails(&self, round: u64, i: u64) -> bool {
        let h = (round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9))
            >> 11;
        (h % 1_000_000) < (self.failing * 1_000_000.0) as u64
    }

    /// Writes event `seq` of run `i` of `round` on connection `c` (`run` = `(c, round, i)`).
    fn line(&self, out: &mut Vec<u8>, kind: &str, size: usize, run: (usize, u64, u64), seq: usize) {
        let (c, round, i) = run;
        let t = match seq {
            0 => "run_start",
            s if s + 1 == self.events_per_run => "run_end",
            _ => kind,
        };
        let status = match (seq, self.fails(round, i)) {
            (1, true) => "failed",
            _ => "passed",
        };
        let pad = size.saturating_sub(80);
        let _ = write!(
            out,
            "{{\"type\":\"{t}\",\"run_id\":\"bench-{c}-{round}-{i}\",\"data\":{{\"seq\":{seq},\"status\":\"{status}\",\"pad\":\""
        );
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(b"\"}}\n");
    }
}

/// What the tail stage did over a run-shaped load.
#[derive(Debug, Default, Serialize)]
pub struct RunsReport {
    pub shape: Option<RunShape>,
    /// Runs decided (kept and dropped) over the run, from `outrigger_tail_decisions_total`.
    pub decided: u64,
    pub kept: u64,
    /// From the closing event at the tail stage to its run's release, from
    /// `outrigger_tail_decision_latency_seconds` (bucket upper bounds).
    pub decision_p50_ms: Option<f64>,
    pub decision_p99_ms: Option<f64>,
    /// The daemon's peak resident memory (`VmHWM`) at the end.
    pub daemon_peak_rss_bytes: Option<u64>,
    /// The most the tail held in memory and on disk, sampled while the load ran.
    pub max_buffered_bytes: u64,
    pub max_spilled_bytes: u64,
    pub max_open_runs: u64,
}

/// What `outrigger bench` measured.
#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    pub transport: String,
    pub connections: usize,
    pub event_bytes: usize,
    pub sent: u64,
    pub failed: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub mib_per_second: f64,
    pub ack: bool,
    pub ack_p50_us: Option<f64>,
    pub ack_p95_us: Option<f64>,
    pub ack_p99_us: Option<f64>,
    pub ack_max_us: Option<f64>,
    /// From `/metrics`: deltas over the run, once the pipeline settled.
    pub received: Option<u64>,
    pub delivered: Option<u64>,
    pub dropped: Option<u64>,
    pub dropped_by_reason: std::collections::BTreeMap<String, u64>,
    pub settle_seconds: Option<f64>,
    /// Events delivered by the (first) sink per second, from the first event sent until the
    /// pipeline settled: the sink's throughput when the sink, not the ingest, is the limit.
    pub delivered_per_second: Option<f64>,
    /// The daemon's CPU and wake-ups from the first event sent until the pipeline settled.
    pub daemon: Option<procstat::Usage>,
    /// Daemon CPU per event sent, in microseconds.
    pub daemon_cpu_us_per_event: Option<f64>,
    /// With `--runs`: what the tail stage did.
    pub runs: Option<RunsReport>,
}

pub(crate) fn event_line(kind: &str, size: usize, i: u64) -> String {
    let pad = size.saturating_sub(40);
    format!(
        "{{\"type\":\"{kind}\",\"run_id\":\"bench-{}\",\"data\":{{\"i\":{i},\"status\":\"passed\",\"pad\":\"{}\"}}}}\n",
        i % 1000,
        "x".repeat(pad)
    )
}

/// Runs the load and returns the report.
pub fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let before = opts
        .control
        .map(|c| scrape(c, opts.api_key.as_deref()))
        .transpose()?;
    let cpu_before = opts.pid.map(procstat::sample).transpose()?;
    anyhow::ensure!(
        opts.runs.is_none() || (opts.http.is_none() && opts.otlp.is_none() && !opts.ack),
        "--runs sends over the socket without acks: drop --http, --otlp and --ack"
    );
    anyhow::ensure!(
        opts.otlp.is_none() || opts.http.is_none(),
        "--otlp and --http are two ways to send: pick one"
    );
    let per_conn = opts.events / opts.connections as u64;
    let rate_per_conn = opts.rate as f64 / opts.connections as f64;
    let started = Instant::now();
    // With --runs, the tail's gauges are sampled while the load runs (their peaks).
    let done = Arc::new(AtomicBool::new(false));
    let gauges = match (opts.runs, opts.control) {
        (Some(_), Some(control)) => {
            let (done, key) = (done.clone(), opts.api_key.clone());
            Some(std::thread::spawn(move || {
                let mut peak = (0u64, 0u64, 0u64);
                while !done.load(Ordering::Relaxed) {
                    if let Ok(s) = scrape(control, key.as_deref()) {
                        peak.0 = peak.0.max(s.tail_buffered);
                        peak.1 = peak.1.max(s.tail_spilled);
                        peak.2 = peak.2.max(s.tail_open);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak
            }))
        }
        _ => None,
    };
    let mut threads = Vec::new();
    for c in 0..opts.connections {
        let o = opts.clone();
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<(u64, u64, Vec<u32>)> {
                match (o.http, o.ack) {
                    _ if o.runs.is_some() => runs_conn(&o, c, per_conn, rate_per_conn),
                    _ if o.otlp.is_some() => otlp_conn(&o, c, per_conn, rate_per_conn),
                    (Some(addr), _) => http_conn(&o, addr, per_conn, rate_per_conn),
                    (None, true) => ack_conn(&o, c, per_conn, rate_per_conn),
                    (None, false) => noack_conn(&o, c, per_conn, rate_per_conn),
                }
            },
        ));
    }
    let (mut sent, mut failed, mut rtts) = (0u64, 0u64, Vec::new());
    for t in threads {
        let (s, f, r) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        sent += s;
        failed += f;
        rtts.extend(r);
    }
    let seconds = started.elapsed().as_secs_f64();
    let event_bytes = match opts.otlp {
        Some(_) => otlp_body(opts, 0).len() / opts.batch.max(1),
        None => event_line(&opts.event_type, opts.size, 0).len(),
    };
    let mut report = BenchReport {
        transport: match (opts.otlp, opts.spans, opts.http) {
            (Some(_), true, _) => "otlp/http spans".into(),
            (Some(_), false, _) => "otlp/http logs".into(),
            (None, _, Some(_)) => "http".into(),
            _ => "unix".into(),
        },
        connections: opts.connections,
        event_bytes,
        sent,
        failed,
        seconds,
        events_per_second: sent as f64 / seconds,
        mib_per_second: (sent as f64 * event_bytes as f64) / seconds / (1024.0 * 1024.0),
        ack: opts.ack,
        ..Default::default()
    };
    if !rtts.is_empty() {
        rtts.sort_unstable();
        let pct =
            |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)] as f64 / 1000.0;
        report.ack_p50_us = Some(pct(0.50));
        report.ack_p95_us = Some(pct(0.95));
        report.ack_p99_us = Some(pct(0.99));
        report.ack_max_us = Some(*rtts.last().unwrap_or(&0) as f64 / 1000.0);
    }
    let mut runs_report = opts.runs.map(|shape| RunsReport {
        shape: Some(shape),
        ..Default::default()
    });
    if let (Some(control), Some(before)) = (opts.control, before) {
        // Wait until everything received has been delivered or dropped (or 30 s pass).
        let settle = Instant::now();
        let mut after = scrape(control, opts.api_key.as_deref())?;
        while settle.elapsed() < Duration::from_secs(30) {
            let received = after.received - before.received;
            let handled = (after.delivered - before.delivered)
                + (after.dropped_total() - before.dropped_total());
            if received >= sent && handled >= received {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            after = scrape(control, opts.api_key.as_deref())?;
        }
        report.settle_seconds = Some(settle.elapsed().as_secs_f64());
        report.received = Some(after.received - before.received);
        report.delivered = Some(after.delivered - before.delivered);
        report.delivered_per_second = Some(
            (after.delivered - before.delivered) as f64
                / (report.seconds + report.settle_seconds.unwrap_or(0.0)),
        );
        report.dropped = Some(after.dropped_total() - before.dropped_total());
        for (k, v) in &after.dropped {
            let d = v - before.dropped.get(k).copied().unwrap_or(0);
            if d > 0 {
                report.dropped_by_reason.insert(k.clone(), d);
            }
        }
        if let Some(r) = runs_report.as_mut() {
            r.decided = after.decided - before.decided;
            r.kept = after.kept - before.kept;
            let buckets: Vec<(f64, u64)> = after
                .decision_buckets
                .iter()
                .map(|(le, n)| {
                    let was = before
                        .decision_buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0, |(_, n)| *n);
                    (*le, n - was)
                })
                .collect();
            r.decision_p50_ms = percentile(&buckets, 0.50).map(|s| s * 1e3);
            r.decision_p99_ms = percentile(&buckets, 0.99).map(|s| s * 1e3);
        }
    }
    done.store(true, Ordering::Relaxed);
    if let (Some(g), Some(r)) = (gauges, runs_report.as_mut()) {
        let (buffered, spilled, open) = g.join().unwrap_or_default();
        r.max_buffered_bytes = buffered;
        r.max_spilled_bytes = spilled;
        r.max_open_runs = open;
    }
    if let (Some(r), Some(pid)) = (runs_report.as_mut(), opts.pid) {
        r.daemon_peak_rss_bytes = procstat::peak_rss(pid).ok();
    }
    report.runs = runs_report;
    if let (Some(pid), Some(before)) = (opts.pid, cpu_before) {
        let u = procstat::usage(pid, &before, &procstat::sample(pid)?);
        report.daemon_cpu_us_per_event = Some(u.cpu_seconds * 1e6 / sent.max(1) as f64);
        report.daemon = Some(u);
    }
    Ok(report)
}

/// Sleeps until the `n`-th event is due at `rate` per second (no-op when flat out).
fn pace(start: Instant, n: u64, rate: f64) {
    if rate <= 0.0 {
        return;
    }
    let due = start + Duration::from_secs_f64(n as f64 / rate);
    let now = Instant::now();
    if due > now {
        let wait = due - now;
        // Sleep most of the way, spin the rest: sleep alone overshoots by ~50-100 µs.
        if wait > Duration::from_micros(200) {
            std::thread::sleep(wait - Duration::from_micros(100));
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
    }
}

fn noack_conn(
    o: &BenchOptions,
    c: usize,
    n: u64,
    rate: f64,
) -> anyhow::Result<(u64, u64, Vec<u32>)> {
    let mut s = UnixStream::connect(&o.socket)
        .with_context(|| format!("connecting to {}", o.socket.display()))?;
    s.write_all(b"{\"hello\":{\"ack\":false}}\n")?;
    let batch = o.batch.max(1) as u64;
    // One pre-built chunk, written again and again: the generator should cost almost nothing.
    let mut chunk = Vec::new();
    for i in 0..batch {
        chunk.extend_from_slice(
            event_line(&o.event_type, o.size, c as u64 * 1_000_000 + i).as_bytes(),
        );
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let k = batch.min(n - sent);
        pace(start, sent, rate);
        if k == batch {
            s.write_all(&chunk)?;
        } else {
            let cut = chunk
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .nth(k as usize - 1)
                .map_or(0, |(i, _)| i + 1);
            s.write_all(&chunk[..cut])?;
        }
        sent += k;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Malformed-line answers would come back here; there should be none.
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    let failed = rest.lines().count() as u64;
    Ok((sent, failed, Vec::new()))
}

/// The run-shaped load on one connection, without acks (see [`RunShape`]).
fn runs_conn(
    o: &BenchOptions,
    c: usize,
    n: u64,
    rate: f64,
) -> anyhow::Result<(u64, u64, Vec<u32>)> {
    let shape = o.runs.context("a run shape")?;
    let mut s = UnixStream::connect(&o.socket)
        .with_context(|| format!("connecting to {}", o.socket.display()))?;
    s.write_all(b"{\"hello\":{\"ack\":false}}\n")?;
    let open = (shape.concurrent / o.connections).max(1) as u64;
    let per_run = shape.events_per_run.max(2);
    let shape = RunShape {
        events_per_run: per_run,
        ..shape
    };
    let batch = o.batch.max(1);
    let mut chunk = Vec::with_capacity(batch * (o.size + 96));
    let (start, mut sent, mut in_chunk) = (Instant::now(), 0u64, 0usize);
    let mut round = 0u64;
    // Whole rounds only (the last may go past `n`): every run sent is closed.
    while sent < n {
        for seq in 0..per_run {
            for i in 0..open {
                shape.line(&mut chunk, &o.event_type, o.size, (c, round, i), seq);
                sent += 1;
                in_chunk += 1;
                if in_chunk == batch {
                    pace(start, sent, rate);
                    s.write_all(&chunk)?;
                    chunk.clear();
                    in_chunk = 0;
                }
            }
        }
        round += 1;
    }
    s.write_all(&chunk)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    Ok((sent, rest.lines().count() as u64, Vec::new()))
}

fn ack_conn(o: &BenchOptions, c: usize, n: u64, rate: f64) -> anyhow::Result<(u64, u64, Vec<u32>)> {
    let s = UnixStream::connect(&o.socket)
        .with_context(|| format!("connecting to {}", o.socket.display()))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let line = event_line(&o.event_type, o.size, c as u64);
    let mut rtts = Vec::with_capacity(n as usize);
    let (mut failed, mut answer) = (0u64, String::new());
    let start = Instant::now();
    for i in 0..n {
        pace(start, i, rate);
        let t0 = Instant::now();
        w.write_all(line.as_bytes())?;
        answer.clear();
        if r.read_line(&mut answer)? == 0 {
            anyhow::bail!("the daemon closed the connection");
        }
        rtts.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        if !answer.starts_with("{\"success\":true") {
            failed += 1;
        }
    }
    Ok((n, failed, rtts))
}

/// One OTLP export request of `--batch` log records (or spans), encoded once and sent again and
/// again: a body of about `--size` bytes, two attributes, a trace id per record.
fn otlp_body(o: &BenchOptions, c: usize) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    let s = |v: &str| AnyValue {
        value: Some(any_value::Value::StringValue(v.to_string())),
    };
    let kv = |k: &str, v: AnyValue| KeyValue {
        key: k.into(),
        value: Some(v),
        ..Default::default()
    };
    let n = o.batch.max(1);
    let now = crate::event::now_ns();
    let trace = |i: usize| {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&(c as u64).to_be_bytes());
        t[8..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        t.to_vec()
    };
    let resource = Some(Resource {
        attributes: vec![kv("service.name", s("bench"))],
        ..Default::default()
    });
    let pad = "x".repeat(o.size.saturating_sub(60));
    if o.spans {
        let spans = (0..n)
            .map(|i| Span {
                trace_id: trace(i),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: o.event_type.clone(),
                kind: 2,
                start_time_unix_nano: now,
                end_time_unix_nano: now + 1_500_000,
                attributes: vec![kv("http.method", s("GET")), kv("pad", s(&pad))],
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource,
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    } else {
        let log_records = (0..n)
            .map(|i| LogRecord {
                time_unix_nano: now,
                severity_number: 9,
                severity_text: "INFO".into(),
                body: Some(s(&format!("{} {i} {pad}", o.event_type))),
                attributes: vec![kv("i", s(&i.to_string())), kv("http.method", s("GET"))],
                trace_id: trace(i),
                ..Default::default()
            })
            .collect();
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource,
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }
}

/// `--otlp`: export requests of `--batch` records over one keep-alive connection.
fn otlp_conn(
    o: &BenchOptions,
    c: usize,
    n: u64,
    rate: f64,
) -> anyhow::Result<(u64, u64, Vec<u32>)> {
    let addr = o.otlp.context("no --otlp address")?;
    let batch = o.batch.max(1) as u64;
    let body = otlp_body(o, c);
    let path = if o.spans { "/v1/traces" } else { "/v1/logs" };
    let (mut s, mut r, auth) = http_connect(o, addr)?;
    let (mut sent, mut failed, mut rtts) = (0u64, 0u64, Vec::new());
    let start = Instant::now();
    // Whole requests only: `-n` is rounded up to a multiple of `--batch`.
    while sent < n {
        pace(start, sent, rate);
        let t0 = Instant::now();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\n{auth}Content-Length: {}\r\n\r\n",
            body.len()
        )?;
        s.write_all(&body)?;
        let (status, text) = read_response(&mut r)?;
        if status == 401 {
            anyhow::bail!("OTLP ingest at {addr} refused the key (401): pass --ingest-key");
        }
        anyhow::ensure!(
            status != 404,
            "{addr}{path} answered 404: is it ingest.otlp.http?"
        );
        if status != 200 {
            anyhow::ensure!(
                failed > 0 || status != 400,
                "the daemon refused the request: {text}"
            );
            failed += batch;
        }
        rtts.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        sent += batch;
    }
    Ok((sent, failed, if o.ack { rtts } else { Vec::new() }))
}

/// A keep-alive connection for HTTP load, its reader, and the `Authorization` header line to
/// send (empty without `--ingest-key`).
fn http_connect(
    o: &BenchOptions,
    addr: SocketAddr,
) -> anyhow::Result<(TcpStream, BufReader<TcpStream>, String)> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let r = BufReader::new(s.try_clone()?);
    let auth = match &o.ingest_key {
        Some(k) => format!("Authorization: Bearer {k}\r\n"),
        None => String::new(),
    };
    Ok((s, r, auth))
}

fn http_conn(
    o: &BenchOptions,
    addr: SocketAddr,
    n: u64,
    rate: f64,
) -> anyhow::Result<(u64, u64, Vec<u32>)> {
    let batch = o.batch.max(1) as u64;
    let mut body = Vec::new();
    for i in 0..batch {
        body.extend_from_slice(event_line(&o.event_type, o.size, i).as_bytes());
    }
    let (mut s, mut r, auth) = http_connect(o, addr)?;
    let (mut sent, mut failed, mut rtts) = (0u64, 0u64, Vec::new());
    let start = Instant::now();
    while sent < n {
        pace(start, sent, rate);
        let k = batch.min(n - sent);
        let cut = if k == batch {
            body.len()
        } else {
            body.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .nth(k as usize - 1)
                .map_or(0, |(i, _)| i + 1)
        };
        let t0 = Instant::now();
        write!(
            s,
            "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\n{auth}Content-Length: {cut}\r\n\r\n"
        )?;
        s.write_all(&body[..cut])?;
        let (status, _) = read_response(&mut r)?;
        if status == 401 {
            anyhow::bail!(
                "HTTP ingest at {addr} refused the key (401): pass --ingest-key or set OUTRIGGER_INGEST_KEY"
            );
        }
        rtts.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        if status != 202 {
            failed += k;
        }
        sent += k;
    }
    Ok((sent, failed, if o.ack { rtts } else { Vec::new() }))
}

/// The unix socket's own ceiling on this machine: a minimal server that only counts lines and
/// (with `ack`) answers each with the same 17 bytes the daemon sends. Returns its socket path;
/// the server threads live until the process exits.
pub fn baseline_server(ack: bool) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!(
        "outrigger-bench-baseline-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 256 * 1024];
                let mut out = Vec::new();
                let mut first = true;
                loop {
                    let n = match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut lines = memchr::memchr_iter(b'\n', &buf[..n]).count();
                    if first && buf.starts_with(b"{\"hello\"") {
                        lines = lines.saturating_sub(1);
                    }
                    first = false;
                    if ack {
                        out.clear();
                        for _ in 0..lines {
                            out.extend_from_slice(b"{\"success\":true}\n");
                        }
                        if conn.write_all(&out).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(path)
}

/// Reads one HTTP/1.1 response with a Content-Length body.
fn read_response(r: &mut impl BufRead) -> anyhow::Result<(u16, String)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad HTTP status line")?;
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The counters the report needs, from `/metrics`.
#[derive(Default)]
struct Scrape {
    received: u64,
    delivered: u64,
    dropped: std::collections::BTreeMap<String, u64>,
    decided: u64,
    kept: u64,
    decision_buckets: Vec<(f64, u64)>,
    tail_buffered: u64,
    tail_spilled: u64,
    tail_open: u64,
}

impl Scrape {
    fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

fn scrape(addr: SocketAddr, key: Option<&str>) -> anyhow::Result<Scrape> {
    let mut s = TcpStream::connect(addr)
        .with_context(|| format!("connecting to the control API at {addr}"))?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n"
    )?;
    let (status, body) = read_response(&mut BufReader::new(s))?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}");
    let mut out = Scrape::default();
    // With several sinks, "delivered" is the first sink's count (each sink gets every event).
    let mut first_sink: Option<String> = None;
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let v = value.parse::<f64>().unwrap_or(0.0) as u64;
        if series.starts_with("outrigger_events_received_total") {
            out.received += v;
        } else if let Some(rest) = series.strip_prefix("outrigger_events_delivered_total{sink=\"") {
            let sink = rest.trim_end_matches("\"}").to_string();
            if first_sink.get_or_insert_with(|| sink.clone()) == &sink {
                out.delivered += v;
            }
        } else if let Some(rest) = series.strip_prefix("outrigger_events_dropped_total{reason=\"") {
            out.dropped
                .insert(rest.trim_end_matches("\"}").to_string(), v);
        } else if series.starts_with("outrigger_tail_decisions_total") {
            out.decided += v;
            if series.contains("result=\"kept\"") {
                out.kept += v;
            }
        } else if let Some(rest) =
            series.strip_prefix("outrigger_tail_decision_latency_seconds_bucket{le=\"")
        {
            let le = rest.trim_end_matches("\"}");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            out.decision_buckets.push((le, v));
        } else if series == "outrigger_tail_buffered_bytes" {
            out.tail_buffered = v;
        } else if series == "outrigger_tail_spilled_bytes" {
            out.tail_spilled = v;
        } else if series == "outrigger_tail_open_runs" {
            out.tail_open = v;
        }
    }
    Ok(out)
}

/// The upper bound of the bucket that holds quantile `q` of a cumulative histogram.
fn percentile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.iter().map(|(_, n)| *n).max()?;
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    buckets.iter().find(|(_, n)| *n >= want).map(|(le, _)| *le)
}

/// The report for people.
pub fn print(r: &BenchReport) {
    println!(
        "{} events over {} ({} conn), {} B each, in {:.3}s: {:.0} events/s ({:.1} MiB/s), {} failed",
        r.sent,
        r.transport,
        r.connections,
        r.event_bytes,
        r.seconds,
        r.events_per_second,
        r.mib_per_second,
        r.failed
    );
    if let (Some(p50), Some(p95), Some(p99), Some(max)) =
        (r.ack_p50_us, r.ack_p95_us, r.ack_p99_us, r.ack_max_us)
    {
        println!(
            "ack round trip: p50 {p50:.1} µs, p95 {p95:.1} µs, p99 {p99:.1} µs, max {max:.1} µs"
        );
    }
    if let (Some(rec), Some(del), Some(drop)) = (r.received, r.delivered, r.dropped) {
        let pct = if rec > 0 {
            drop as f64 * 100.0 / rec as f64
        } else {
            0.0
        };
        println!(
            "daemon: received {rec}, delivered {del}, dropped {drop} ({pct:.2}%) {:?}, settled in {:.2}s",
            r.dropped_by_reason,
            r.settle_seconds.unwrap_or(0.0)
        );
    }
    if let Some(d) = r.delivered_per_second {
        println!("delivered: {d:.0} events/s (first event sent to pipeline settled)");
    }
    if let (Some(u), Some(per)) = (&r.daemon, r.daemon_cpu_us_per_event) {
        println!(
            "daemon CPU: {:.1} ms in all, {per:.2} µs per event, {:.1}% of a core, {:.0} wake-ups/s, RSS {:.1} MB",
            u.cpu_seconds * 1000.0,
            u.cpu_percent,
            u.wakeups_per_second,
            u.rss_bytes as f64 / 1e6
        );
    }
    if let Some(t) = &r.runs {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("≤{v:.2} ms"));
        println!(
            "tail: {} runs decided ({} kept); decision latency p50 {} p99 {}; peak open runs {}, held {:.1} MB, spilled {:.1} MB; daemon peak RSS {}",
            t.decided,
            t.kept,
            ms(t.decision_p50_ms),
            ms(t.decision_p99_ms),
            t.max_open_runs,
            t.max_buffered_bytes as f64 / 1e6,
            t.max_spilled_bytes as f64 / 1e6,
            t.daemon_peak_rss_bytes
                .map_or("-".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
        );
    }
}
