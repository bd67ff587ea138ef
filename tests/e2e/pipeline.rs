//! The native pipeline end to end: ingest (socket and HTTP), answers, sampling, batching,
//! sinks (file, http, weave) with retry, shutdown drain, config checking, socket handling.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{BIN, Daemon, Recorder, eventually, read_ndjson};

const OK: &str = r#"{"success":true}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_weave_lines_are_answered_and_delivered() {
    let mut d = Daemon::start("").await;
    let answers = d
        .send(&[
            r#"{"type": "test_end", "data": {"b": 2,   "a": [1, 2.50]}, "run_id": "run_001", "ts": 1732290000.123, "attributes": {"k": "v"}}"#,
            r#"{"method": "call_start", "payload": {"start": {"id": "c1", "op_name": "f"}}}"#,
            r#"{"type": "no_data"}"#,
            r#"{"method": "flush", "payload": {}}"#,
        ])
        .await;
    assert_eq!(answers, [OK, OK, OK, OK]);
    // flush answered: everything before it is already in the file.
    let events = d.events();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["type"], "test_end");
    assert_eq!(events[0]["run_id"], "run_001");
    assert_eq!(events[0]["ts_ns"], 1_732_290_000_123_000_000u64);
    assert_eq!(events[0]["attributes"], json!({"k": "v"}));
    // data is kept byte for byte, not re-encoded.
    let raw = std::fs::read_to_string(&d.out).unwrap();
    assert!(
        raw.contains(r#""data":{"b": 2,   "a": [1, 2.50]}"#),
        "{raw}"
    );
    assert_eq!(events[1]["type"], "call_start");
    assert_eq!(
        events[1]["data"],
        json!({"start": {"id": "c1", "op_name": "f"}})
    );
    assert_eq!(events[2]["data"], Value::Null);
    assert!(
        events[2]["ts_ns"].as_u64().unwrap() > 1_700_000_000_000_000_000,
        "ts filled at ingest"
    );
    assert_eq!(
        d.metric("outrigger_events_received_total", r#"ingest="socket""#)
            .await,
        3.0
    );
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_answered_and_the_connection_goes_on() {
    let mut d = Daemon::start("ingest: {max_line_bytes: 200}").await;
    let long = format!(r#"{{"type": "big", "data": "{}"}}"#, "x".repeat(300));
    let answers = d
        .send(&[
            "not json at all",
            r#"{"data": {"no": "type"}}"#,
            r#"{"type": ""}"#,
            r#"{"type": "t", "attributes": {"n": 1}}"#,
            &long,
            r#"{"type": "fine", "data": 1}"#,
        ])
        .await;
    for a in &answers[..5] {
        let v: Value = serde_json::from_str(a).unwrap();
        assert_eq!(v["success"], false, "{a}");
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
    assert!(answers[0].contains("invalid JSON"), "{}", answers[0]);
    assert!(
        answers[1].contains("missing \\\"type\\\""),
        "{}",
        answers[1]
    );
    assert!(answers[2].contains("1 to 256 bytes"), "{}", answers[2]);
    assert!(answers[3].contains("string"), "{}", answers[3]);
    assert!(answers[4].contains("max_line_bytes"), "{}", answers[4]);
    assert_eq!(answers[5], OK);

    // A line far beyond the limit, arriving in pieces without a newline, is skipped whole.
    let mut c = d.connect().await;
    let huge = format!(r#"{{"type": "huge", "data": "{}"}}"#, "y".repeat(1 << 20));
    let a = c.send(&huge).await;
    assert!(a.contains("max_line_bytes"), "{a}");
    assert_eq!(c.send(r#"{"type": "after_huge"}"#).await, OK);

    d.wait_metric("outrigger_events_dropped_total", r#"reason="invalid""#, 6.0)
        .await;
    assert!(d.stop().success());
    let kinds: Vec<_> = d
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["fine", "after_huge"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_mode_answers_only_malformed_lines() {
    let mut d = Daemon::start("").await;
    let mut c = d.connect().await;
    use tokio::io::AsyncWriteExt;
    c.wr.write_all(b"{\"hello\": {\"ack\": false}}\n{\"type\": \"a\"}\n{\"type\": \"b\"}\nbroken\n{\"type\": \"c\"}\n")
        .await
        .unwrap();
    let a = c.answer().await;
    assert!(
        a.contains("\"success\":false") && a.contains("invalid JSON"),
        "{a}"
    );
    c.wr.write_all(b"{\"method\": \"flush\", \"payload\": {}}\n")
        .await
        .unwrap();
    assert_eq!(c.answer().await, OK, "flush is always answered");
    assert_eq!(d.events().len(), 3);
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_takes_objects_arrays_and_ndjson() {
    let mut d = Daemon::start("").await;
    let url = format!("http://{}/v1/events", d.http);
    let client = reqwest::Client::new();
    let r = client
        .post(&url)
        .json(&json!({"type": "one", "data": {"x": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"accepted": 1, "rejected": 0, "errors": []})
    );

    let r = client
        .post(&url)
        .json(&json!([{"type": "arr", "data": 1}, {"nope": true}, {"type": "arr", "data": 2}]))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected"], 1);
    assert_eq!(v["errors"][0]["index"], 1);

    let r = client
        .post(&url)
        .header("content-type", "application/x-ndjson")
        .body("{\"type\": \"nd\", \"data\": 1}\n{\"type\": \"nd\", \"data\": 2}\nbad\n")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );

    let r = client.post(&url).body("42").send().await.unwrap();
    assert_eq!(r.status(), 400);

    assert_eq!(
        d.metric("outrigger_events_received_total", r#"ingest="http""#)
            .await,
        5.0
    );
    assert!(d.stop().success());
    let kinds: Vec<_> = d
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["one", "arr", "arr", "nd", "nd"]);
}

fn run_lines(runs: usize, per_run: usize) -> String {
    let mut body = String::new();
    for r in 0..runs {
        for i in 0..per_run {
            body.push_str(&format!(
                "{{\"type\": \"step\", \"run_id\": \"run_{r}\", \"data\": {i}}}\n"
            ));
        }
    }
    body
}

fn kept_runs(events: &[Value]) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for e in events {
        *runs
            .entry(e["run_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_sampled_whole_and_the_same_after_a_restart() {
    let extra = "sampling: {default_rate: 0.5, key: run_id}";
    let mut d = Daemon::start(extra).await;
    d.send_noack(run_lines(100, 10).as_bytes()).await;
    d.wait_metric("outrigger_events_received_total", "", 1000.0)
        .await;
    assert!(d.stop().success());
    let first = kept_runs(&d.events());
    assert!(
        first.values().all(|n| *n == 10),
        "a run was split: {first:?}"
    );
    assert!(
        (20..=80).contains(&first.len()),
        "{} of 100 runs kept at rate 0.5",
        first.len()
    );

    // Restart on the same config: the same runs are kept.
    std::fs::remove_file(&d.out).unwrap();
    d.launch();
    d.wait_ready().await;
    d.send_noack(run_lines(100, 10).as_bytes()).await;
    d.wait_metric("outrigger_events_received_total", "", 1000.0)
        .await;
    // Every event decided: sampled out or delivered (the sampled-out count grows chunk by
    // chunk; read at its first rise it could be short).
    let sampled_out = async || {
        d.metric("outrigger_events_dropped_total", r#"reason="sampled_out""#)
            .await
    };
    let settled = eventually(Duration::from_secs(30), async || {
        sampled_out().await + d.metric("outrigger_events_delivered_total", "").await >= 1000.0
    })
    .await;
    assert!(settled, "not every event was decided");
    let dropped = sampled_out().await;
    assert!(d.stop().success());
    let second = kept_runs(&d.events());
    assert_eq!(
        first.keys().collect::<HashSet<_>>(),
        second.keys().collect::<HashSet<_>>(),
        "different runs kept after restart"
    );
    assert_eq!(
        dropped as usize + second.len() * 10,
        1000,
        "kept + sampled_out = received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_rates_and_adaptive_boost() {
    let mut d = Daemon::start(
        "sampling: {default_rate: 1.0, key: random, rates: {noisy: 0.0}, adaptive: {boost_factor: 5.0, boost_duration: 60s, on: [test_failed]}}",
    )
    .await;
    d.send_noack(b"{\"type\": \"noisy\"}\n{\"type\": \"kept\"}\n")
        .await;
    d.wait_metric(
        "outrigger_events_dropped_total",
        r#"reason="sampled_out""#,
        1.0,
    )
    .await;
    // A zero rate stays zero under boost; a boost lifts 0.2 to 1.0 for every type.
    let (status, v) = d
        .send_json("PUT", "/v1/sampling", json!({"rates": {"noisy": 0.2}}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rates"]["noisy"], 0.2);
    d.send_noack(b"{\"type\": \"test_failed\"}\n").await;
    d.wait_metric("outrigger_events_received_total", "", 3.0)
        .await;
    let mut body = String::new();
    for i in 0..200 {
        body.push_str(&format!("{{\"type\": \"noisy\", \"data\": {i}}}\n"));
    }
    d.send_noack(body.as_bytes()).await;
    d.wait_metric("outrigger_events_received_total", "", 203.0)
        .await;
    // Received counts at admission; the worker samples (and boosts) a moment later.
    let boost = d
        .wait_metric("outrigger_sampling_boost_active", r#"type="*""#, 1.0)
        .await;
    assert_eq!(boost, 1.0, "{}", d.log_text());
    assert!(d.stop().success());
    let noisy = d.events().iter().filter(|e| e["type"] == "noisy").count();
    assert_eq!(noisy, 200, "boosted 0.2 x 5 keeps every event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_retries_until_the_server_recovers() {
    // The server fails the first three requests, then accepts.
    let server = Recorder::start(|n| if n < 3 { 503 } else { 200 }).await;
    let mut d = Daemon::start(&format!(
        "sinks: [{{type: http, url: \"http://{}/ingest\", format: json, timeout: 5s}}]",
        server.addr
    ))
    .await;
    let lines: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"type": "t", "data": {{"i": {i}}}}}"#))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let answers = d.send(&refs).await;
    assert!(answers.iter().all(|a| a == OK));
    d.wait_metric("outrigger_events_delivered_total", r#"sink="http""#, 50.0)
        .await;
    assert!(
        d.metric("outrigger_sink_batches_total", r#"result="retry""#)
            .await
            >= 3.0
    );
    assert!(d.stop().success());
    let mut got = Vec::new();
    for (_, body) in server.bodies() {
        let arr: Vec<Value> = serde_json::from_str(&body).expect("a JSON array");
        got.extend(arr.into_iter().map(|e| e["data"]["i"].as_u64().unwrap()));
    }
    assert_eq!(
        got,
        (0..50).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(server.hits.load(std::sync::atomic::Ordering::SeqCst) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weave_sink_posts_upsert_batch_with_basic_auth() {
    let server = Recorder::start(|n| if n == 0 { 500 } else { 200 }).await;
    let mut d = Daemon::start(&format!(
        "sinks: [{{type: weave, url: \"http://{}\", api_key: secret}}, {{type: file, path: \"{{dir}}/out/events.ndjson\"}}]",
        server.addr
    ))
    .await;
    let answers = d
        .send(&[
            r#"{"method": "call_start", "payload": {"start": {"id": "c1", "op_name": "f"}}}"#,
            r#"{"method": "call_end", "payload": {"end": {"id": "c1", "output": 2}}}"#,
            r#"{"method": "flush", "payload": {}}"#,
        ])
        .await;
    assert_eq!(answers, [OK, OK, OK]);
    let bodies = server.bodies();
    assert_eq!(
        bodies.len(),
        1,
        "flush answered after the retried batch was delivered: {bodies:?}"
    );
    let (auth, body) = &bodies[0];
    // base64("api:secret")
    assert_eq!(auth, "Basic YXBpOnNlY3JldA==");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        v,
        json!({"batch": [
            {"mode": "start", "req": {"id": "c1", "op_name": "f"}},
            {"mode": "end", "req": {"id": "c1", "output": 2}}
        ]})
    );
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weave_sink_counts_the_events_it_cannot_send() {
    let server = Recorder::start(|_| 200).await;
    let mut d = Daemon::start(&format!(
        "sinks: [{{type: weave, url: \"http://{}\"}}]",
        server.addr
    ))
    .await;
    let mix = [
        r#"{"method": "call_start", "payload": {"start": {"id": "c1", "op_name": "f"}}}"#,
        r#"{"method": "call_start", "payload": {"end": {"id": "c1"}}}"#,
        r#"{"method": "call_end", "payload": {"end": {"id": "c1", "output": 2}}}"#,
        r#"{"method": "call_end", "payload": {}}"#,
        r#"{"type": "test_end", "data": {"status": "failed"}}"#,
        r#"{"type": "log", "data": "text"}"#,
        r#"{"method": "flush", "payload": {}}"#,
    ];
    // Twice, in two batches: each kind of refusal is logged once, every event is counted.
    for _ in 0..2 {
        assert_eq!(d.send(&mix).await, [OK; 7]);
    }
    let sent = 2.0 * 6.0;
    let delivered = d
        .metric("outrigger_events_delivered_total", "sink=\"weave\"")
        .await;
    let unsupported = d
        .metric("outrigger_events_dropped_total", "reason=\"unsupported\"")
        .await;
    assert_eq!(delivered, 4.0, "{}", d.log_text());
    assert_eq!(unsupported, 8.0, "{}", d.log_text());
    assert_eq!(delivered + unsupported, sent);
    let posted: usize = server
        .bodies()
        .iter()
        .map(|(_, b)| {
            serde_json::from_str::<Value>(b).unwrap()["batch"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(posted, 4);
    let log = d.log_text();
    assert_eq!(
        log.matches("the weave sink sends only call_start and call_end events")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("without payload.start").count(), 1, "{log}");
    assert_eq!(log.matches("without payload.end").count(), 1, "{log}");
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_events_then_sigterm_all_reach_the_file() {
    let mut d =
        Daemon::start("queue: {capacity: 200000}\nbatch: {max_events: 2000, interval: 1s}").await;
    let mut body = Vec::with_capacity(100_000 * 48);
    for i in 0..100_000 {
        body.extend_from_slice(
            format!("{{\"type\": \"bulk\", \"data\": {{\"i\": {i}}}}}\n").as_bytes(),
        );
    }
    d.send_noack(&body).await;
    d.wait_metric("outrigger_events_received_total", "", 100_000.0)
        .await;
    // SIGTERM right away: the queue and the open batch are drained, not lost.
    assert!(d.stop().success());
    let events = d.events();
    assert_eq!(events.len(), 100_000);
    let mut seen = vec![false; 100_000];
    for e in &events {
        seen[e["data"]["i"].as_u64().unwrap() as usize] = true;
    }
    assert!(seen.iter().all(|s| *s), "every event exactly once");
    assert!(!d.socket.exists(), "socket removed on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_and_counts_without_blocking_the_client() {
    // Without a spool, a sink that never succeeds backs the pipeline up; the queue fills and drops.
    let server = Recorder::start(|_| 503).await;
    let mut d = Daemon::start(&format!(
        "queue: {{capacity: 100, on_full: drop_newest}}\nbatch: {{max_events: 10, interval: 10ms}}\nsinks: [{{type: http, url: \"http://{}/x\"}}]\nshutdown: {{grace: 500ms}}\ndelivery: {{spool: {{max_bytes: 0}}}}",
        server.addr
    ))
    .await;
    let mut body = String::new();
    for i in 0..5000 {
        body.push_str(&format!("{{\"type\": \"t\", \"data\": {i}}}\n"));
    }
    d.send_noack(body.as_bytes()).await;
    let dropped = d
        .wait_metric(
            "outrigger_events_dropped_total",
            r#"reason="queue_full""#,
            1.0,
        )
        .await;
    assert!(dropped > 4000.0, "{dropped}");
    assert!(d.stop().success());
    // Nothing silently lost: after shutdown, received = delivered + dropped (all reasons).
    let log = d.log_text();
    assert!(log.contains("grace period over"), "{log}");
    let last = log
        .lines()
        .find(|l| l.contains("outrigger stopped"))
        .expect("final summary");
    let field = |name: &str| -> u64 {
        let start = last.find(&format!("{name}=")).expect(name) + name.len() + 1;
        last[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("received"), 5000, "{last}");
    assert_eq!(field("dropped") + field("http"), 5000, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_accepts_and_drops() {
    let mut d = Daemon::start("enabled: false").await;
    assert_eq!(
        d.send(&[r#"{"type": "a"}"#, r#"{"type": "b"}"#]).await,
        [OK, OK]
    );
    d.wait_metric(
        "outrigger_events_dropped_total",
        r#"reason="disabled""#,
        2.0,
    )
    .await;
    assert!(d.stop().success());
    assert!(d.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_cut_by_count_and_files_rotate() {
    let server = Recorder::start(|_| 200).await;
    let mut d = Daemon::start(&format!(
        "batch: {{max_events: 7, interval: 10s}}\nsinks: [{{type: http, url: \"http://{}/x\", format: ndjson}}, {{type: file, path: \"{{dir}}/out/events.ndjson\", rotate_bytes: 2KiB, keep: 50}}]",
        server.addr
    ))
    .await;
    let mut body = String::new();
    for i in 0..70 {
        body.push_str(&format!(
            "{{\"type\": \"t\", \"data\": {{\"i\": {i}, \"pad\": \"{}\"}}}}\n",
            "p".repeat(40)
        ));
    }
    d.send_noack(body.as_bytes()).await;
    // 70 events at max_events 7 are 10 batches, sent without waiting for the 10 s interval.
    assert!(
        eventually(Duration::from_secs(5), async || server.bodies().len() == 10).await,
        "{} batches",
        server.bodies().len()
    );
    for (_, b) in server.bodies() {
        assert_eq!(b.lines().count(), 7);
    }
    assert!(d.stop().success());
    let mut total = d.events().len();
    let mut n = 1;
    loop {
        let p = d.path(&format!("out/events.ndjson.{n}"));
        if !p.exists() {
            break;
        }
        assert!(std::fs::metadata(&p).unwrap().len() <= 2048 + 1024);
        total += read_ndjson(&p).len();
        n += 1;
    }
    assert!(n > 2, "rotated into {} files", n - 1);
    assert_eq!(total, 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_private_stale_replaced_live_refused() {
    let mut d = Daemon::start("").await;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A second daemon on the same socket is refused with a clear message.
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&d.config)
        .env("OUTRIGGER_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by a running daemon"), "{err}");

    // A daemon killed without cleanup leaves a stale socket; the next start replaces it.
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(d.socket.exists());
    d.launch();
    d.wait_ready().await;
    assert_eq!(d.send(&[r#"{"type": "after_restart"}"#]).await, [OK]);
    assert!(d.stop().success());
    assert!(d.log_text().contains("replaced a stale socket"));
}

#[test]
fn check_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "queue:\n  capacity: 10\nsampling:\n  default_rate: 1.0\n  ratez: {a: 0.1}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yml:5") && err.contains("ratez"), "{err}");

    std::fs::write(&bad, "sampling:\n  rates:\n    a: 0.1\n    b: 1.5\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("bad.yml:4") && err.contains("sampling.rates.b"),
        "{err}"
    );

    std::fs::write(&bad, "batch: {interval: soon}\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("batch.interval") && err.contains("not a duration"),
        "{err}"
    );

    let good = dir.path().join("good.yml");
    std::fs::write(&good, "sinks: [{type: stdout}]\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `outrigger run` with no config: the default socket, `./outrigger-data/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_config_uses_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let socket = std::path::PathBuf::from("/tmp/outrigger.sock");
    let mut child = Command::new(BIN)
        .arg("run")
        .current_dir(dir.path())
        .env_remove("OUTRIGGER_CONFIG")
        .env_remove("OUTRIGGER_SOCKET")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || {
            tokio::net::UnixStream::connect(&socket).await.is_ok()
        })
        .await,
        "default socket never appeared"
    );
    let out = Command::new(BIN)
        .args([
            "send",
            "--type",
            "hello",
            "--data",
            r#"{"from": "default"}"#,
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let events = read_ndjson(&dir.path().join("outrigger-data/events.ndjson"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["from"], "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_spools_and_the_next_start_delivers_the_spool() {
    let down = Recorder::start(|_| 503).await;
    let mut d = Daemon::start(&format!(
        "queue: {{capacity: 1000}}\nbatch: {{max_events: 100, interval: 10ms}}\nsinks: [{{type: http, name: api, url: \"http://{}/x\"}}]\nshutdown: {{grace: 300ms}}\ndelivery: {{spool: {{dir: \"{{dir}}/spool\"}}}}",
        down.addr
    ))
    .await;
    let lines: Vec<String> = (0..3000)
        .map(|i| format!("{{\"type\": \"t\", \"data\": {i}}}\n"))
        .collect();
    // Bursts of 500 into a queue of 1000, three times its size in all: with the sink down, the
    // batches go to the spool and the queue keeps draining, so nothing is dropped.
    for (k, burst) in lines.chunks(500).enumerate() {
        d.send_noack(burst.concat().as_bytes()).await;
        d.wait_metric(
            "outrigger_events_received_total",
            "",
            (500 * (k + 1)) as f64,
        )
        .await;
        assert!(
            eventually(Duration::from_secs(10), async || d
                .metric("outrigger_queue_depth", "")
                .await
                == 0.0)
            .await,
            "the queue stopped draining"
        );
    }
    assert!(d.metric("outrigger_spool_bytes", r#"sink="api""#).await > 0.0);
    assert_eq!(d.metric("outrigger_events_dropped_total", "").await, 0.0);
    assert!(d.stop().success());
    assert!(d.log_text().contains("events stay in the spool"));

    // Next start, the endpoint is back: the spool goes first, in order, each event once.
    let up = Recorder::start(|_| 200).await;
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        text.replace(&down.addr.to_string(), &up.addr.to_string()),
    )
    .unwrap();
    d.launch();
    d.wait_ready().await;
    d.wait_metric("outrigger_events_delivered_total", r#"sink="api""#, 3000.0)
        .await;
    // The last spool file goes after its delivery is counted: the gauge follows.
    let emptied = eventually(Duration::from_secs(10), async || {
        d.metric("outrigger_spool_bytes", r#"sink="api""#).await == 0.0
    })
    .await;
    assert!(emptied, "spool not emptied after delivery");
    assert!(d.stop().success());
    let mut got = Vec::new();
    for (_, b) in up.bodies() {
        let arr: Vec<Value> = serde_json::from_str(&b).unwrap();
        got.extend(arr.iter().map(|e| e["data"].as_u64().unwrap()));
    }
    assert_eq!(got, (0..3000).collect::<Vec<_>>());
}

// `check` used to validate the config and plugins only: a config that `run` refuses (a nats
// sink whose credentials file is missing, a file sink that cannot open) passed it.
#[test]
fn check_refuses_what_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("outrigger.yml");
    let socket = dir.path().join("s.sock");
    let cases = [
        (
            r#"[{type: nats, url: "nats://127.0.0.1:4222", subject: "x", credentials: "/nonexistent/x.creds"}]"#,
            "/nonexistent/x.creds",
        ),
        (
            r#"[{type: file, path: "/dev/null/no/events.ndjson"}]"#,
            "/dev/null/no",
        ),
    ];
    for (sinks, why) in cases {
        std::fs::write(
            &cfg,
            format!(
                "ingest: {{socket: \"{}\"}}\nplugins: {{dir: \"{}/plugins\"}}\nsinks: {sinks}\n",
                socket.display(),
                dir.path().display()
            ),
        )
        .unwrap();
        for cmd in ["check", "run"] {
            let out = Command::new(BIN)
                .args([cmd, "-c"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd} {sinks}: {err}");
            assert!(err.contains(why), "{cmd} {sinks}: {err}");
        }
    }
}

// Per-sink routing: `types` and `when` choose a sink's events; an event no sink takes is
// counted as dropped (`unrouted`), and nothing is lost between the sinks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_take_only_their_types_and_conditions_and_the_rest_is_counted_unrouted() {
    let mut d = Daemon::start(
        r#"
sinks:
  - {type: file, name: ends, path: "{dir}/out/events.ndjson", types: [test_end]}
  - {type: file, name: failed, path: "{dir}/out/failed.ndjson", when: 'data.status == "failed"'}
"#,
    )
    .await;
    let lines = [
        r#"{"type": "test_end", "data": {"status": "passed"}}"#,
        r#"{"type": "test_end", "data": {"status": "failed"}}"#,
        r#"{"type": "log", "data": {"status": "failed"}}"#,
        r#"{"type": "log", "data": {"status": "passed"}}"#,
        r#"{"type": "log", "data": "no status: the condition errors, counted, false"}"#,
    ];
    assert_eq!(d.send(&lines).await, [OK; 5]);
    d.wait_metric("outrigger_events_dropped_total", "reason=\"unrouted\"", 2.0)
        .await;
    d.wait_metric("outrigger_events_delivered_total", "sink=\"failed\"", 2.0)
        .await;
    d.wait_metric("outrigger_events_delivered_total", "sink=\"ends\"", 2.0)
        .await;
    let errors = d
        .metric(
            "outrigger_condition_errors_total",
            "where=\"sinks[1].when\"",
        )
        .await;
    assert_eq!(errors, 1.0, "{}", d.log_text());
    assert!(d.stop().success());
    let ends = read_ndjson(&d.out);
    let failed = read_ndjson(&d.path("out/failed.ndjson"));
    let kinds = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| format!("{}/{}", e["type"].as_str().unwrap(), e["data"]["status"]))
            .collect()
    };
    assert_eq!(kinds(&ends), ["test_end/\"passed\"", "test_end/\"failed\""]);
    assert_eq!(kinds(&failed), ["test_end/\"failed\"", "log/\"failed\""]);
    let log = d.log_text();
    assert!(log.contains("outrigger stopped"), "{log}");
}
