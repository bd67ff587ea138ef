//! The live tail over WebSocket (filters, redaction, keys, a stalled subscriber), breakpoints
//! and debug sessions (pause holds only opted-in connections; continue, step, max_pause and
//! disconnect release; the store stays bounded), and `outrigger debug` in a terminal.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{BIN, Conn, Daemon, eventually};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/ws/tail?{query}`; the HTTP status when the upgrade is refused.
async fn ws(d: &Daemon, query: &str) -> Result<Ws, u16> {
    let url = format!("ws://{}/v1/ws/tail?{query}", d.control);
    match tokio_tungstenite::connect_async(url).await {
        Ok((s, _)) => Ok(s),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket connect: {e}"),
    }
}

/// The next text message as JSON (30 s at most).
async fn next_json(s: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("a message within 30 s")
            .expect("the stream is open")
            .expect("a message");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("JSON message");
        }
    }
}

/// Reads messages until one that is an event (not a notice) comes.
async fn next_event(s: &mut Ws) -> Value {
    loop {
        let v = next_json(s).await;
        if v.get("type").is_some() {
            return v;
        }
    }
}

/// A socket connection that opted in to debugging.
async fn debug_conn(d: &Daemon) -> Conn {
    let mut c = d.connect().await;
    c.wr.write_all(b"{\"hello\":{\"ack\":true,\"debug\":true}}\n")
        .await
        .expect("hello");
    c
}

/// Writes one line without waiting for its answer.
async fn write_line(c: &mut Conn, line: &str) {
    c.wr.write_all(format!("{line}\n").as_bytes())
        .await
        .expect("write");
}

/// The answer to come, or `None` when none comes within `wait`.
async fn answer_within(c: &mut Conn, wait: Duration) -> Option<String> {
    let mut line = String::new();
    match tokio::time::timeout(wait, c.rd.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Some(line.trim_end().to_string()),
        Ok(_) => panic!("the daemon closed the connection"),
        Err(_) => None,
    }
}

async fn set_breakpoint(d: &Daemon, body: Value) -> String {
    let (status, bp) = d.send_json("POST", "/v1/breakpoints", body).await;
    assert_eq!(status, 201, "{bp}");
    bp["id"].as_str().expect("an id").to_string()
}

/// Waits for the single paused session; its summary.
async fn paused_session(d: &Daemon) -> Value {
    let mut found = Value::Null;
    let ok = eventually(Duration::from_secs(30), async || {
        let v = d.get_json("/v1/debug?state=paused").await;
        found = v["sessions"][0].clone();
        !found.is_null()
    })
    .await;
    assert!(ok, "no paused session");
    found
}

#[tokio::test]
async fn ws_tail_filters_redacts_and_needs_the_key() {
    let d = Daemon::start("control: {api_key: k3y, redact_fields: [password]}").await;
    assert_eq!(ws(&d, "").await.err(), Some(401), "no key");
    assert_eq!(ws(&d, "api_key=wrong").await.err(), Some(401));
    assert_eq!(
        ws(&d, "api_key=k3y&when=data.n%20%3E").await.err(),
        Some(400),
        "a condition that does not compile"
    );
    // Every /v1 route takes X-API-Key too.
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/breakpoints", d.control))
        .header("X-API-Key", "k3y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut by_when = ws(&d, "api_key=k3y&type=login&when=data.n%20%3E%201")
        .await
        .unwrap();
    let hello = next_json(&mut by_when).await;
    assert_eq!(hello["subscribed"]["when"], "data.n > 1", "{hello}");
    let mut by_run = ws(&d, "api_key=k3y&run_id=r2").await.unwrap();
    next_json(&mut by_run).await;
    d.send(&[
        r#"{"type":"login","run_id":"r1","data":{"n":1,"password":"a"}}"#,
        r#"{"type":"other","run_id":"r1","data":{"n":5}}"#,
        r#"{"type":"login","run_id":"r2","data":{"n":2,"password":"hunter2"}}"#,
        r#"{"type":"login","run_id":"r1","data":{"n":3}}"#,
    ])
    .await;
    let first = next_event(&mut by_when).await;
    assert_eq!(
        (first["data"]["n"].as_i64(), first["run_id"].as_str()),
        (Some(2), Some("r2"))
    );
    assert_eq!(first["data"]["password"], "***", "redacted: {first}");
    let id = first["id"].as_str().unwrap_or_default();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "the event's id: {first}"
    );
    assert_eq!(next_event(&mut by_when).await["data"]["n"], 3);
    let only = next_event(&mut by_run).await;
    assert_eq!(only["data"]["n"], 2, "{only}");
    // The SSE tail takes the same filters.
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/tail?run_id=r9&when=data.n%20%3E%3D%2010",
            d.control
        ))
        .bearer_auth("k3y")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp;
    let _ = tokio::time::timeout(Duration::from_secs(10), body.chunk()).await; // the comment
    d.send(&[
        r#"{"type":"x","run_id":"r9","data":{"n":1}}"#,
        r#"{"type":"x","run_id":"r8","data":{"n":11}}"#,
        r#"{"type":"x","run_id":"r9","data":{"n":12}}"#,
    ])
    .await;
    let mut got = String::new();
    while !got.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.chunk())
            .await
            .expect("an SSE event")
            .expect("bytes")
            .expect("open");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        got.contains("\"n\":12") && !got.contains("\"n\":11") && !got.contains("\"n\":1}"),
        "{got}"
    );
}

/// Sends `n` small events on one connection without acks, then waits until they are delivered;
/// the events a second it took.
async fn ingest_rate(d: &Daemon, n: usize, tag: &str, delivered_before: f64) -> f64 {
    let body: String = (0..n)
        .map(|i| format!("{{\"type\":\"load\",\"data\":{{\"i\":{i},\"tag\":\"{tag}\"}}}}\n"))
        .collect();
    let t = Instant::now();
    d.send_noack(body.as_bytes()).await;
    d.wait_metric(
        "outrigger_events_delivered_total",
        "",
        delivered_before + n as f64,
    )
    .await;
    n as f64 / t.elapsed().as_secs_f64()
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_slow_ingest() {
    let d =
        Daemon::start("queue: {capacity: 500000}\nbatch: {max_events: 5000, interval: 20ms}").await;
    const N: usize = 200_000;
    let free = ingest_rate(&d, N, "alone", 0.0).await;
    // A subscriber that never reads: its TCP buffers fill, then its own buffer.
    let mut stalled = ws(&d, "").await.unwrap();
    next_json(&mut stalled).await;
    let with_stalled = ingest_rate(&d, N, "stalled", N as f64).await;
    println!(
        "ingest with no subscriber: {free:.0} events/s; with a stalled WebSocket subscriber: {with_stalled:.0} events/s ({:.0} %)",
        100.0 * with_stalled / free
    );
    // Every event reached the sink both times: nothing waited for the subscriber...
    assert_eq!(
        d.metric("outrigger_events_delivered_total", "").await,
        2.0 * N as f64
    );
    assert_eq!(d.metric("outrigger_events_dropped_total", "").await, 0.0);
    // ...which lost events, counted, and is told so when it reads again.
    let lost = d
        .metric("outrigger_live_tail_dropped_total", "transport=\"ws\"")
        .await;
    assert!(lost > 0.0, "the stalled subscriber's buffer never filled");
    let told = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let v = next_json(&mut stalled).await;
            if let Some(n) = v["lagged"]["missed_events"].as_f64() {
                return n;
            }
        }
    })
    .await
    .expect("a lagged notice");
    assert!(told > 0.0 && told <= lost, "told {told}, counted {lost}");
}

#[tokio::test]
async fn pause_holds_only_an_opted_in_connection_until_continue_and_step() {
    let d = Daemon::start("").await;
    let bp = set_breakpoint(
        &d,
        json!({"when": "type == \"checkout\" && data.total > 100", "action": "pause"}),
    )
    .await;
    // A connection that did not opt in is never held: a session, nothing waits.
    let plain = d
        .send(&[r#"{"type":"checkout","run_id":"p","data":{"total":500}}"#])
        .await;
    assert_eq!(plain, [r#"{"success":true}"#]);
    let list = d.get_json("/v1/debug").await;
    assert_eq!(list["sessions"][0]["state"], "unheld", "{list}");
    assert!(
        list["sessions"][0]["note"]
            .as_str()
            .unwrap()
            .contains("did not opt in")
    );

    // An opted-in one: the line before is answered, the matching one waits.
    let mut c = debug_conn(&d).await;
    assert_eq!(
        c.send(r#"{"type":"cart","run_id":"o1","data":{"items":3}}"#)
            .await,
        r#"{"success":true}"#
    );
    write_line(
        &mut c,
        r#"{"type":"checkout","run_id":"o1","data":{"total":250,"user":"ann"}}"#,
    )
    .await;
    let s = paused_session(&d).await;
    let sid = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["breakpoint"], bp.as_str());
    assert_eq!(s["connection"]["held"], true, "{s}");
    assert!(
        answer_within(&mut c, Duration::from_millis(300))
            .await
            .is_none(),
        "held"
    );
    // Nothing else waits: another connection is answered, the held event reaches the sink.
    assert_eq!(
        d.send(&[r#"{"type":"other"}"#]).await,
        [r#"{"success":true}"#]
    );
    let ok = eventually(Duration::from_secs(20), async || {
        d.events().iter().any(|e| e["data"]["user"] == "ann")
    })
    .await;
    assert!(ok, "the held line's event was admitted at once");
    // The session shows the event and its run; evaluate reads it.
    let detail = d.get_json(&format!("/v1/debug/{sid}")).await;
    assert_eq!(detail["event"]["data"]["total"], 250, "{detail}");
    let at_sink = d
        .events()
        .into_iter()
        .find(|e| e["data"]["user"] == "ann")
        .expect("at the sink");
    assert!(detail["event"]["id"].is_string(), "{detail}");
    assert_eq!(
        detail["event"]["id"], at_sink["id"],
        "the session shows the id the sink got"
    );
    let run_types: Vec<&str> = detail["run"]["events"]
        .as_array()
        .map(|v| v.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert!(run_types.contains(&"cart"), "the run around it: {detail}");
    let (status, v) = d
        .send_json(
            "POST",
            &format!("/v1/debug/{sid}/evaluate"),
            json!({"expr": "data.total * 2 + size(run_id)"}),
        )
        .await;
    assert_eq!((status, v["value"].as_i64()), (200, Some(502)), "{v}");
    let (status, _) = d
        .send_json(
            "POST",
            &format!("/v1/debug/{sid}/evaluate"),
            json!({"expr": "data.("}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        d.metric("outrigger_breakpoint_hits_total", "action=\"pause\"")
            .await,
        2.0
    );

    // Step: this line is answered, the connection's next line is held.
    let (status, _) = d
        .send_json("POST", &format!("/v1/debug/{sid}/step"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer_within(&mut c, Duration::from_secs(30))
            .await
            .as_deref(),
        Some(r#"{"success":true}"#)
    );
    write_line(&mut c, r#"{"type":"receipt","run_id":"o1"}"#).await;
    let stepped = paused_session(&d).await;
    assert_eq!(
        (stepped["step"].as_bool(), stepped["type"].as_str()),
        (Some(true), Some("receipt")),
        "{stepped}"
    );
    assert!(
        answer_within(&mut c, Duration::from_millis(300))
            .await
            .is_none(),
        "held by the step"
    );
    let (status, _) = d
        .send_json(
            "POST",
            &format!("/v1/debug/{}/continue", stepped["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer_within(&mut c, Duration::from_secs(30))
            .await
            .as_deref(),
        Some(r#"{"success":true}"#)
    );
    // Continued: the next lines flow.
    assert_eq!(c.send(r#"{"type":"after"}"#).await, r#"{"success":true}"#);
    let (status, _) = d
        .send_json("POST", &format!("/v1/debug/{sid}/continue"), json!({}))
        .await;
    assert_eq!(status, 409, "no longer paused");
    // Deleting the breakpoint: nothing more pauses.
    let (status, _) = d
        .send_json("DELETE", &format!("/v1/breakpoints/{bp}"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        c.send(r#"{"type":"checkout","data":{"total":900}}"#).await,
        r#"{"success":true}"#
    );
}

#[tokio::test]
async fn max_pause_and_disconnect_release() {
    let d = Daemon::start("control: {max_pause: 1s}").await;
    set_breakpoint(&d, json!({"when": "type == \"hold\"", "run_id": "r"})).await;
    let mut c = debug_conn(&d).await;
    let t = Instant::now();
    assert_eq!(
        c.send(r#"{"type":"hold","run_id":"r"}"#).await,
        r#"{"success":true}"#
    );
    assert!(t.elapsed() >= Duration::from_secs(1), "held for max_pause");
    let s = d.get_json("/v1/debug").await["sessions"][0].clone();
    assert_eq!(
        (s["state"].as_str(), s["released"].as_str()),
        (Some("released"), Some("max_pause")),
        "{s}"
    );
    // Another run is not matched.
    assert_eq!(
        c.send(r#"{"type":"hold","run_id":"other"}"#).await,
        r#"{"success":true}"#
    );

    let d = Daemon::start("").await;
    set_breakpoint(&d, json!({"when": "type == \"hold\""})).await;
    let mut c = debug_conn(&d).await;
    write_line(&mut c, r#"{"type":"hold"}"#).await;
    let s = paused_session(&d).await;
    assert_eq!(
        d.metric("outrigger_debug_paused_connections", "").await,
        1.0
    );
    drop(c);
    let id = s["id"].as_str().unwrap().to_string();
    let ok = eventually(Duration::from_secs(30), async || {
        let v = d.get_json(&format!("/v1/debug/{id}")).await;
        v["released"] == "disconnect"
    })
    .await;
    assert!(ok, "a disconnect releases the hold");
    assert_eq!(
        d.metric("outrigger_debug_paused_connections", "").await,
        0.0
    );
}

#[tokio::test]
async fn ten_thousand_capture_hits_stay_within_the_store() {
    let d = Daemon::start("control: {debug_sessions: 500, debug_bytes: 256KiB}").await;
    set_breakpoint(&d, json!({"when": "data.i >= 0", "action": "capture"})).await;
    let pad = "x".repeat(200);
    let body: String = (0..10_000)
        .map(|i| {
            format!(
                "{{\"type\":\"c\",\"run_id\":\"r{}\",\"data\":{{\"i\":{i},\"pad\":\"{pad}\"}}}}\n",
                i % 50
            )
        })
        .collect();
    d.send_noack(body.as_bytes()).await;
    d.wait_metric(
        "outrigger_breakpoint_hits_total",
        "action=\"capture\"",
        10_000.0,
    )
    .await;
    let v = d.get_json("/v1/debug?limit=1000").await;
    let stored = v["stored"].as_u64().unwrap();
    let bytes = v["stored_bytes"].as_u64().unwrap();
    assert!(
        stored <= 500 && bytes <= 256 * 1024,
        "{stored} sessions, {bytes} bytes"
    );
    assert_eq!(v["sessions"][0]["state"], "captured");
    // Newest first: the last event sent is the first listed.
    let first = v["sessions"][0]["id"].as_str().unwrap().to_string();
    let detail = d.get_json(&format!("/v1/debug/{first}")).await;
    assert_eq!(detail["event"]["data"]["i"], 9999, "{detail}");
    assert!(d.metric("outrigger_debug_session_bytes", "").await <= 256.0 * 1024.0);
}

#[tokio::test]
async fn outrigger_debug_in_a_terminal() {
    let d = Daemon::start("").await;
    let mut cli = tokio::process::Command::new(BIN)
        .args([
            "debug",
            "--addr",
            &d.control.to_string(),
            "--when",
            "type == \"job\"",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("outrigger debug");
    let mut stdin = cli.stdin.take().unwrap();
    let mut out = BufReader::new(cli.stdout.take().unwrap());
    let mut seen = String::new();
    // Reads the CLI's output until `want` shows after byte `from` of what it said (its prompt
    // has no newline: read bytes). Earlier sessions printed the same prompts, so a wait for the
    // next one must not be met by an old one.
    async fn until_after(
        out: &mut BufReader<tokio::process::ChildStdout>,
        seen: &mut String,
        from: usize,
        want: &str,
    ) {
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            while !seen[from..].contains(want) {
                let mut b = [0u8; 4096];
                let n = tokio::io::AsyncReadExt::read(out, &mut b)
                    .await
                    .expect("read");
                assert!(n > 0, "the CLI exited; it said:\n{seen}");
                seen.push_str(&String::from_utf8_lossy(&b[..n]));
            }
        })
        .await;
        assert!(r.is_ok(), "`{want}` never showed; the CLI said:\n{seen}");
    }
    async fn until(
        out: &mut BufReader<tokio::process::ChildStdout>,
        seen: &mut String,
        want: &str,
    ) {
        until_after(out, seen, 0, want).await
    }
    until(&mut out, &mut seen, "waiting for a hit").await;
    let mut c = debug_conn(&d).await;
    assert_eq!(
        c.send(r#"{"type":"setup","run_id":"j1"}"#).await,
        r#"{"success":true}"#
    );
    write_line(&mut c, r#"{"type":"job","run_id":"j1","data":{"n":41}}"#).await;
    until(&mut out, &mut seen, "[c]ontinue").await;
    assert!(
        seen.contains("\"n\": 41") && seen.contains("setup"),
        "the event and its run:\n{seen}"
    );
    stdin.write_all(b"e data.n + 1\n").await.unwrap();
    until(&mut out, &mut seen, "= 42").await;
    assert!(
        answer_within(&mut c, Duration::from_millis(200))
            .await
            .is_none()
    );
    stdin.write_all(b"s\n").await.unwrap();
    assert_eq!(
        answer_within(&mut c, Duration::from_secs(30))
            .await
            .as_deref(),
        Some(r#"{"success":true}"#)
    );
    write_line(&mut c, r#"{"type":"next","run_id":"j1"}"#).await;
    // The second session shows the next event, then its own prompt (the first session's
    // prompt may still be on its way when the step is answered: wait past the new event).
    let before = seen.len();
    until_after(&mut out, &mut seen, before, "== session 2 (pause, step)").await;
    let at = before + seen[before..].find("== session 2").unwrap();
    until_after(&mut out, &mut seen, at, "\"type\": \"next\"").await;
    let at = at + seen[at..].find("\"type\": \"next\"").unwrap();
    until_after(&mut out, &mut seen, at, "[c]ontinue").await;
    stdin.write_all(b"c\n").await.unwrap();
    assert_eq!(
        answer_within(&mut c, Duration::from_secs(30))
            .await
            .as_deref(),
        Some(r#"{"success":true}"#)
    );
    stdin.write_all(b"q\n").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), cli.wait())
        .await
        .expect("the CLI exits on q")
        .unwrap();
    assert!(status.success());
    let bps = d.get_json("/v1/breakpoints").await;
    assert_eq!(bps["count"], 0, "the breakpoint is deleted on exit: {bps}");
}

#[tokio::test]
async fn cors_origins_and_max_pause_reload_live() {
    let d = Daemon::start("control: {cors: [\"http://app.example:8080\"]}").await;
    let http = reqwest::Client::new();
    let preflight = async |origin: &str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("http://{}/v1/breakpoints", d.control),
        )
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "x-api-key, content-type")
        .send()
        .await
        .unwrap()
    };
    let r = preflight("http://app.example:8080").await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example:8080"
    );
    let r = preflight("http://other.example").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // A page of another origin cannot open the WebSocket tail.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/v1/ws/tail", d.control),
    )
    .unwrap();
    req.headers_mut()
        .insert("Origin", "http://other.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a foreign origin opened the tail: {:?}", other.map(|_| ())),
    }
    // Both reload without a restart.
    crate::harness::rewrite_config(&d, "control: {cors: [], max_pause: 1s}");
    let (status, v) = d.send_json("POST", "/v1/reload", json!({})).await;
    assert_eq!(status, 200, "{v}");
    let r = preflight("http://app.example:8080").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    set_breakpoint(&d, json!({"when": "true"})).await;
    let mut c = debug_conn(&d).await;
    assert_eq!(
        c.send(r#"{"type":"x"}"#).await,
        r#"{"success":true}"#,
        "released by the new max_pause"
    );
    let s = d.get_json("/v1/debug").await["sessions"][0].clone();
    assert_eq!(s["released"], "max_pause", "{s}");
}
