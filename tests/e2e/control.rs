//! Self-observability and control end to end: every control route with and without the API key,
//! the refusal of an open listener without a key, the rate limit, JSON errors, the live tail
//! (filtered, redacted; also through `outrigger tail`), the per-run ring, `outrigger status`
//! (also on an unhealthy daemon, whose `/v1/health` answers 503),
//! the live log level, the profiler on a watched process (from the config and `--watch-pid`),
//! the over-budget degrade path, and Debian's real Prometheus scraping the daemon.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{BIN, Daemon, eventually, free_port, free_ports, merge};

const KEY: &str = "s3cret-key";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A request to the control API with an optional bearer key: status and JSON body (`Null`
/// when the body is not JSON).
async fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = client().request(m, format!("http://{}{path}", d.control));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Starts the daemon binary with extra command-line arguments after `run -c CONFIG`, on the
/// same base config as `Daemon::start`, and waits until it is ready.
async fn start_with_args(extra: &str, args: &[String]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    let socket = dir.path().join("outrigger.sock");
    let [http, control] = free_ports();
    let mut cfg = Daemon::base_config(dir.path(), &socket, http, control);
    if !extra.trim().is_empty() {
        merge(&mut cfg, serde_yaml::from_str(extra).unwrap());
    }
    let config = dir.path().join("outrigger.yml");
    std::fs::write(&config, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let log = dir.path().join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .args(args)
        .current_dir(dir.path())
        .env_remove("OUTRIGGER_CONFIG")
        .env_remove("OUTRIGGER_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn outrigger");
    let d = Daemon {
        child: Some(child),
        out: dir.path().join("out/events.ndjson"),
        dir,
        socket,
        http,
        control,
        config,
        log,
        api_key: cfg["control"]["api_key"].as_str().map(str::to_string),
        env: Vec::new(),
    };
    d.wait_ready().await;
    d
}

/// A child process killed (and reaped) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_key_except_probes_and_metrics() {
    let mut d = Daemon::start(&format!("control: {{api_key: {KEY}}}")).await;
    assert_eq!(
        d.send(&[r#"{"type":"t","run_id":"r1","data":{"x":1}}"#])
            .await,
        [r#"{"success":true}"#]
    );

    // Open without a key.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = client()
            .get(format!("http://{}{path}", d.control))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} is open");
    }

    let routes: Vec<(&str, &str, Option<Value>, u16)> = vec![
        ("GET", "/v1/health", None, 200),
        ("GET", "/v1/stats", None, 200),
        ("GET", "/v1/stats?window=5s", None, 200),
        ("GET", "/v1/plugins", None, 200),
        ("GET", "/v1/sampling", None, 200),
        (
            "PUT",
            "/v1/sampling",
            Some(json!({"rates": {"x": 0.5}})),
            200,
        ),
        (
            "POST",
            "/v1/anomaly",
            Some(json!({"type": "t", "reason": "test"})),
            202,
        ),
        ("POST", "/v1/reload", None, 200),
        ("GET", "/v1/runs/r1", None, 200),
        ("GET", "/v1/runs/unknown", None, 404),
        ("GET", "/v1/log", None, 200),
        (
            "PUT",
            "/v1/log",
            Some(json!({"level": "info,outrigger=debug"})),
            200,
        ),
    ];
    for (method, path, body, want) in &routes {
        let (status, err) = call(&d, method, path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a key: {err}");
        assert!(err["error"].as_str().unwrap().contains("API key"), "{err}");
        let (status, _) = call(&d, method, path, Some("wrong-key-0"), body.clone()).await;
        assert_eq!(status, 401, "{method} {path} with a wrong key");
        let (status, v) = call(&d, method, path, Some(KEY), body.clone()).await;
        assert_eq!(status, *want, "{method} {path} with the key: {v}");
        assert!(v.is_object(), "{method} {path} answers JSON: {v}");
    }

    // The tail: 401 without, an event stream with the key.
    let url = format!("http://{}/v1/tail", d.control);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    drop(r);

    // A few answers in detail.
    let (_, h) = call(&d, "GET", "/v1/health", Some(KEY), None).await;
    for c in ["ingest", "queue", "sampler", "sinks", "plugins", "profiler"] {
        assert!(h["components"][c]["status"].is_string(), "{c}: {h}");
    }
    let (_, s) = call(&d, "GET", "/v1/stats", Some(KEY), None).await;
    assert_eq!(s["events"]["received"], 1, "{s}");
    assert_eq!(s["profile"]["enabled"], true, "{s}");
    assert_eq!(s["profile"]["window_seconds"], 60.0, "{s}");
    let (_, r) = call(&d, "GET", "/v1/runs/r1", Some(KEY), None).await;
    assert_eq!(r["events"][0]["data"], json!({"x": 1}), "{r}");
    // Shutdown is not held up by anything the API did.
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_v1_routes_are_open() {
    let d = Daemon::start("").await;
    for path in [
        "/v1/health",
        "/v1/stats",
        "/v1/plugins",
        "/v1/sampling",
        "/v1/log",
    ] {
        let (status, v) = call(&d, "GET", path, None, None).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listener_without_a_key_is_refused_at_start() {
    let port = free_port().port();
    let mut d = Daemon::spawn(&format!("control: {{listen: \"0.0.0.0:{port}\"}}"));
    let status = d.exit_status(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "{}", d.log_text());
    let log = d.log_text();
    assert!(
        log.contains("control.listen") && log.contains("not loopback") && log.contains("api_key"),
        "{log}"
    );
    // `check` says the same.
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&d.config)
        .env_remove("OUTRIGGER_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not loopback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_per_client_but_not_probes() {
    let d = Daemon::start("control: {rate_limit: 5}").await;
    let mut limited = None;
    for _ in 0..50 {
        let r = client()
            .get(format!("http://{}/v1/stats", d.control))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some((
                r.headers().get("retry-after").cloned(),
                r.json::<Value>().await.unwrap(),
            ));
            break;
        }
    }
    let (retry_after, body) = limited.expect("50 requests at once were never limited to 5/s");
    assert!(retry_after.is_some(), "429 says when to retry");
    assert!(
        body["error"].as_str().unwrap().contains("rate limit"),
        "{body}"
    );
    // Liveness and readiness probes are never limited.
    for _ in 0..30 {
        let (status, _) = call(&d, "GET", "/healthz", None, None).await;
        assert_eq!(status, 200);
    }
    // The bucket refills.
    let ok = eventually(Duration::from_secs(10), async || {
        call(&d, "GET", "/v1/stats", None, None).await.0 == 200
    })
    .await;
    assert!(ok, "the limit never lifted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_everywhere() {
    let d = Daemon::start("").await;
    let cases: Vec<(&str, &str, u16)> = vec![
        ("GET", "/no/such/route", 404),
        ("GET", "/v1/nothing", 404),
        ("DELETE", "/v1/sampling", 405),
        ("POST", "/metrics", 405),
        ("GET", "/v1/stats?window=forever", 400),
        ("GET", "/v1/tail?typo=x", 400),
    ];
    for (method, path, want) in cases {
        let (status, v) = call(&d, method, path, None, None).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {v}"
        );
    }
    let r = client()
        .put(format!("http://{}/v1/sampling", d.control))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = client()
        .put(format!("http://{}/v1/sampling", d.control))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"rates\": {{\"x\": 1.0}}, \"pad\": \"{}\"}}",
            "x".repeat(2 << 20)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "a body over 1 MiB");
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let (status, v) = call(&d, "PUT", "/v1/log", None, Some(json!({"level": "=="}))).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("log filter"), "{v}");
}

/// Reads Server-Sent Events from `resp` until `want` data messages arrived (or 30 s passed).
async fn read_sse(resp: &mut reqwest::Response, want: usize) -> Vec<Value> {
    let mut parser = outrigger::cli::SseParser::default();
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < want {
        let chunk = tokio::time::timeout_at(end, resp.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {want} tailed events arrived: {got:?}",
                    got.len()
                )
            })
            .expect("read the stream")
            .expect("the stream ended");
        for m in parser.push(&chunk) {
            if m.event.is_none() {
                got.push(serde_json::from_str(&m.data).expect("JSON event"));
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_filtered_redacted_events() {
    let mut d = Daemon::start(&format!(
        "control: {{api_key: {KEY}, redact_fields: [password, token]}}"
    ))
    .await;
    let url = format!("http://{}/v1/tail", d.control);
    let mut logins = client()
        .get(format!("{url}?type=login&type=job.*"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(logins.status(), 200);
    let mut everything = client().get(&url).bearer_auth(KEY).send().await.unwrap();
    // The same through the CLI (reads the key from the environment, the address from --addr).
    let mut cli = Guard(
        Command::new(BIN)
            .args(["tail", "--json", "--type", "login", "--addr"])
            .arg(d.control.to_string())
            .env("OUTRIGGER_API_KEY", KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = cli.0.stdout.take().unwrap();
    let cli_lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(2)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    // The CLI is subscribed once the daemon counts three subscribers.
    let ok = eventually(Duration::from_secs(30), async || {
        let (_, s) = call(&d, "GET", "/v1/stats", Some(KEY), None).await;
        s["tail"]["subscribers"] == 3
    })
    .await;
    assert!(ok, "outrigger tail never subscribed");

    let answers = d
        .send(&[
            r#"{"type":"login","run_id":"r1","data":{"user":"ann","password":"hunter2"},"attributes":{"token":"t0","k":"v"}}"#,
            r#"{"type":"noise","data":1}"#,
            r#"{"type":"job.done","data":{"token":"abc","n":2}}"#,
            r#"{"type":"login","data":{"user":"bob","password":"pw","nested":{"password":"inner"}}}"#,
        ])
        .await;
    assert!(answers.iter().all(|a| a == r#"{"success":true}"#));

    let got = read_sse(&mut logins, 3).await;
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["login", "job.done", "login"], "filtered: {got:?}");
    assert_eq!(got[0]["data"], json!({"user": "ann", "password": "***"}));
    assert_eq!(got[0]["attributes"], json!({"token": "***", "k": "v"}));
    assert_eq!(got[0]["run_id"], "r1");
    assert_eq!(got[1]["data"], json!({"token": "***", "n": 2}));
    assert_eq!(
        got[2]["data"]["nested"]["password"], "inner",
        "only top-level fields are redacted"
    );
    let all = read_sse(&mut everything, 4).await;
    assert_eq!(all[1]["type"], "noise");
    assert_eq!(all[1]["data"], 1);

    let lines = cli_lines.join().unwrap();
    let cli_events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cli_events[0]["data"]["password"], "***");
    assert_eq!(cli_events[1]["data"]["user"], "bob");

    // The sinks get the events as they were: redaction is for the views only.
    let ok = eventually(Duration::from_secs(30), async || d.events().len() == 4).await;
    assert!(ok);
    assert_eq!(d.events()[0]["data"]["password"], "hunter2");

    // Streams end with the daemon: shutdown is not held up by tail clients.
    drop(cli);
    assert!(d.stop().success());
    assert!(
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(_)) = logins.chunk().await {}
        })
        .await
        .is_ok(),
        "the tail stream outlived the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_ring_is_bounded_and_redacted() {
    let d = Daemon::start("control: {runs: 2, run_events: 3, redact_fields: [token]}").await;
    let mut lines = Vec::new();
    for run in ["a", "b", "c"] {
        for i in 0..5 {
            lines.push(format!(
                r#"{{"type":"step","run_id":"{run}","data":{{"i":{i},"token":"t{i}"}}}}"#
            ));
        }
    }
    lines.push(r#"{"type":"no_run"}"#.to_string());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let answers = d.send(&refs).await;
    assert!(answers.iter().all(|a| a == r#"{"success":true}"#));
    // Answered means queued; the worker records the runs a moment later.
    assert!(
        eventually(Duration::from_secs(10), async || {
            call(&d, "GET", "/v1/runs/c", None, None).await.1["count"] == 3
        })
        .await
    );

    let (status, v) = call(&d, "GET", "/v1/runs/a", None, None).await;
    assert_eq!(status, 404, "the oldest run is evicted: {v}");
    assert!(v["error"].as_str().unwrap().contains("run `a`"), "{v}");
    for run in ["b", "c"] {
        let (status, v) = call(&d, "GET", &format!("/v1/runs/{run}"), None, None).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["run_id"], run);
        assert_eq!(v["count"], 3);
        let is: Vec<u64> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["data"]["i"].as_u64().unwrap())
            .collect();
        assert_eq!(is, [2, 3, 4], "the most recent three, oldest first");
        assert!(
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["data"]["token"] == "***")
        );
        assert_eq!(v["events"][0]["type"], "step");
    }
    let s = d.get_json("/v1/stats").await;
    assert_eq!(s["runs"]["remembered_runs"], 2, "{s}");
    assert_eq!(s["runs"]["enabled"], false, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_reads_health_and_stats() {
    let d = Daemon::start(&format!("control: {{api_key: {KEY}}}")).await;
    d.send(&[r#"{"type":"t"}"#]).await;
    let addr = d.control.to_string();
    let out = Command::new(BIN)
        .args(["status", "--addr", &addr, "--api-key", KEY])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("outrigger at http://{addr}: ")),
        "{text}"
    );
    for needle in [
        "ingest",
        "queue",
        "sinks",
        "profiler",
        "events:   received 1",
        "budget:",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }

    // --json, with the address and key from the config file.
    let out = Command::new(BIN)
        .args(["status", "--json", "-c"])
        .arg(&d.config)
        .env_remove("OUTRIGGER_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["health"]["status"].is_string(), "{v}");
    assert_eq!(v["stats"]["events"]["received"], 1, "{v}");

    // Without the key: a clear refusal.
    let out = Command::new(BIN)
        .args(["status", "--addr", &addr])
        .env_remove("OUTRIGGER_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("--api-key"), "{err}");

    // Nothing listening: a clear error too.
    let out = Command::new(BIN)
        .args(["status", "--addr", &free_port().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the control API"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_live() {
    let d = Daemon::start("log: {format: json}").await;
    let marker = |n: u32| json!({"rates": {format!("marker_{n}"): 0.5}});
    let (status, v) = call(&d, "PUT", "/v1/log", None, Some(json!({"level": "warn"}))).await;
    assert_eq!((status, &v["level"]), (200, &json!("warn")), "{v}");
    // Changing sampling logs at info: not shown at warn.
    assert_eq!(
        call(&d, "PUT", "/v1/sampling", None, Some(marker(1)))
            .await
            .0,
        200
    );
    let (status, _) = call(&d, "PUT", "/v1/log", None, Some(json!({"level": "info"}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&d, "PUT", "/v1/sampling", None, Some(marker(2)))
            .await
            .0,
        200
    );
    let (_, v) = call(&d, "GET", "/v1/log", None, None).await;
    assert_eq!(v["level"], "info");
    let ok = eventually(Duration::from_secs(10), async || {
        d.log_text().contains("sampling rates changed over the API")
    })
    .await;
    assert!(ok, "{}", d.log_text());
    let changes: Vec<Value> = d
        .log_text()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .filter(|v| v["fields"]["message"] == "sampling rates changed over the API")
        .collect();
    assert_eq!(
        changes.len(),
        1,
        "only the change made at info is logged: {changes:?}"
    );
}

/// Waits until `path` on the control API satisfies `f`, returning the last answer.
async fn wait_json(d: &Daemon, path: &str, what: &str, mut f: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(30), async || {
        last = d.get_json(path).await;
        f(&last)
    })
    .await;
    assert!(ok, "{what}: last {path}: {last}\nlog:\n{}", d.log_text());
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profiler_reports_watched_processes() {
    // One process burns CPU (watched through the config), one sleeps (through --watch-pid).
    let mut busy = Guard(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap(),
    );
    let sleeper = Guard(Command::new("sleep").arg("60").spawn().unwrap());
    let (busy_pid, sleep_pid) = (busy.0.id(), sleeper.0.id());
    let d = start_with_args(
        &format!("profiling: {{interval: 200ms, watch_pids: [{busy_pid}]}}"),
        &["--watch-pid".into(), sleep_pid.to_string()],
    )
    .await;
    let busy_label = format!("pid=\"{busy_pid}\"");
    let sleep_label = format!("pid=\"{sleep_pid}\"");
    let ok = eventually(Duration::from_secs(30), async || {
        d.metric("outrigger_watched_cpu_percent", &busy_label).await > 5.0
            && d.metric("outrigger_watched_memory_bytes", &sleep_label)
                .await
                > 0.0
            && d.metric("outrigger_process_memory_bytes", "").await > 0.0
            && d.metric("outrigger_process_threads", "").await >= 2.0
    })
    .await;
    assert!(
        ok,
        "metrics never showed the processes:\n{}",
        d.get("/metrics").await.1
    );

    let s = wait_json(
        &d,
        "/v1/stats?window=30s",
        "the busy process in the summary",
        |s| {
            s["profile"]["watched"][busy_pid.to_string()]["cpu_percent"]["max"]
                .as_f64()
                .is_some_and(|c| c > 5.0)
        },
    )
    .await;
    let p = &s["profile"];
    assert_eq!(p["window_seconds"], 30.0);
    assert!(p["samples"].as_u64().unwrap() >= 2, "{p}");
    let w = &p["watched"][sleep_pid.to_string()];
    assert_eq!(w["alive"], true, "{p}");
    assert!(w["memory_bytes"]["last"].as_u64().unwrap() > 0, "{p}");
    assert!(
        p["self"]["memory_bytes"]["max"].as_u64().unwrap() > 0,
        "{p}"
    );
    assert!(p["self"]["threads"].as_u64().unwrap() >= 2, "{p}");
    assert!(p["self"]["memory_bytes"]["growth"].is_i64(), "{p}");
    let h = d.get_json("/v1/health").await;
    assert_eq!(h["components"]["profiler"]["watched"], 2, "{h}");

    // The busy process ends: its series go, and the summary says it is gone.
    let _ = busy.0.kill();
    let _ = busy.0.wait();
    let ok = eventually(Duration::from_secs(30), async || {
        !d.get("/metrics").await.1.contains(&busy_label)
    })
    .await;
    assert!(ok, "the series of an exited process stayed");
    wait_json(
        &d,
        "/v1/stats?window=30s",
        "the exited process marked gone",
        |s| s["profile"]["watched"][busy_pid.to_string()]["alive"] == false,
    )
    .await;
    assert!(d.log_text().contains("watched process not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_degrades_sampling_and_skips_optional_plugins() {
    let plugins = tempfile::tempdir().unwrap();
    crate::wasm::install(plugins.path(), &[("drop-debug.wasm", "drop-debug")]);
    // Any daemon is over a 1 MB memory budget; the CPU budget is off.
    let d = Daemon::start(&format!(
        r#"
plugins: {{dir: "{}", chain: [{{name: drop-debug, optional: true}}]}}
profiling: {{interval: 100ms, budgets: {{memory_mb: 1, cpu_percent: 0}}}}
"#,
        plugins.path().display()
    ))
    .await;
    let h = wait_json(&d, "/v1/health", "health reports the budget", |h| {
        h["components"]["profiler"]["status"] == "degraded"
    })
    .await;
    assert_eq!(h["status"], "degraded", "{h}");
    let reason = h["components"]["profiler"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("memory") && reason.contains("budget of 1 MB"),
        "{reason}"
    );
    assert_eq!(h["components"]["sampler"]["status"], "degraded", "{h}");
    let factor = h["components"]["sampler"]["degrade_factor"]
        .as_f64()
        .unwrap();
    assert!((0.0..1.0).contains(&factor), "{h}");
    let s = d.get_json("/v1/stats").await;
    assert!(s["profile"]["budget"]["over"].is_string(), "{s}");

    // 500 events the optional drop-debug plugin would drop every one of.
    let body: String = (0..500)
        .map(|i| format!("{{\"type\":\"debug.trace\",\"data\":{{\"i\":{i}}}}}\n"))
        .collect();
    d.send_noack(body.as_bytes()).await;
    d.wait_metric("outrigger_events_received_total", "", 500.0)
        .await;
    let ok = eventually(Duration::from_secs(30), async || {
        let delivered = d.metric("outrigger_events_delivered_total", "").await;
        let sampled = d
            .metric("outrigger_events_dropped_total", r#"reason="sampled_out""#)
            .await;
        delivered + sampled >= 500.0
    })
    .await;
    assert!(ok, "events unaccounted for\n{}", d.get("/metrics").await.1);
    let sampled = d
        .metric("outrigger_events_dropped_total", r#"reason="sampled_out""#)
        .await;
    let delivered = d.events().len();
    assert!(sampled > 0.0, "sampling was not scaled down");
    assert!(
        delivered > 0,
        "optional plugin not skipped: every debug event was dropped"
    );
    assert_eq!(delivered as f64 + sampled, 500.0);
    assert_eq!(
        d.metric("outrigger_plugin_calls_total", r#"plugin="drop-debug""#)
            .await,
        0.0,
        "the optional plugin was called while over budget"
    );
    assert!(
        d.log_text().contains("over resource budget"),
        "{}",
        d.log_text()
    );
}

/// Debian's `prometheus` binary (the `prometheus` package, installed by `.ci/run`).
const PROMETHEUS: &str = "/usr/bin/prometheus";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_daemon() {
    assert!(
        Path::new(PROMETHEUS).is_file(),
        "{PROMETHEUS} is missing: install Debian's `prometheus` package (`apt-get install prometheus`, as .ci/run does)"
    );
    let d = Daemon::start("").await;
    let lines: Vec<String> = (0..7)
        .map(|i| format!(r#"{{"type":"p","data":{i}}}"#))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    d.send(&refs).await;

    let dir = tempfile::tempdir().unwrap();
    let web = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: outrigger\n    static_configs:\n      - targets: [\"{}\"]\n",
            d.control
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Guard(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus"),
    );
    let url = format!("http://{web}/api/v1/query");
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(90), async || {
        let r = client()
            .get(&url)
            .query(&[(
                "query",
                r#"outrigger_events_received_total{job="outrigger",ingest="socket"}"#,
            )])
            .send()
            .await;
        let Ok(r) = r else { return false };
        last = r.json().await.unwrap_or(Value::Null);
        last["status"] == "success" && last["data"]["result"][0]["value"][1] == "7"
    })
    .await;
    assert!(
        ok,
        "Prometheus never returned the count: last answer {last}\nprometheus log:\n{}",
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
    let series = &last["data"]["result"][0]["metric"];
    assert_eq!(series["__name__"], "outrigger_events_received_total");
    assert_eq!(series["instance"], d.control.to_string());
    // Prometheus sees the target as up.
    let r: Value = client()
        .get(&url)
        .query(&[("query", r#"up{job="outrigger"}"#)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"]["result"][0]["value"][1], "1", "{r}");

    // Every query of the Grafana dashboard is valid PromQL for this Prometheus, names only
    // metrics the daemon defines, and the core panels find data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::wasm::root().join("examples/grafana/outrigger.json"))
            .unwrap(),
    )
    .expect("the dashboard is JSON");
    let metrics_rs =
        std::fs::read_to_string(crate::wasm::root().join("host/src/metrics.rs")).unwrap();
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap().to_string();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("outrigger_") {
                let name: String = rest[i + "outrigger_".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    metrics_rs.contains(&format!("\"{base}\"")),
                    "{title}: outrigger_{name} is not a metric of the daemon"
                );
                rest = &rest[i + 1..];
            }
            let q = expr
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            queries.push((title.clone(), q));
        }
    }
    // Rates need two scrapes: wait until the core panels have data.
    let core = [
        "Throughput",
        "Queue fill",
        "CPU",
        "Memory",
        "Latency p50 / p95 / p99",
    ];
    let mut with_data = Vec::new();
    let ok = eventually(Duration::from_secs(60), async || {
        with_data.clear();
        for (title, q) in &queries {
            let r: Value = client()
                .get(&url)
                .query(&[("query", q.as_str())])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(r["status"], "success", "{title}: {q}: {r}");
            if r["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                with_data.push(title.clone());
            }
        }
        core.iter().all(|c| with_data.iter().any(|t| t == c))
    })
    .await;
    assert!(ok, "core panels without data; with data: {with_data:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_unhealthy_and_status_still_prints_it() {
    // The only sink points where nothing listens: every delivery fails, none succeeds.
    let dead = free_port();
    let d = Daemon::start(&format!(
        "sinks: [{{type: http, url: \"http://{dead}/ingest\", timeout: 1s}}]"
    ))
    .await;
    let (status, body) = d.get("/v1/health").await;
    assert_eq!(status, 200, "healthy at first: {body}");
    d.send(&[r#"{"type":"t"}"#]).await;
    let mut last = (0, String::new());
    let unhealthy = eventually(Duration::from_secs(30), async || {
        last = d.get("/v1/health").await;
        last.0 == 503
    })
    .await;
    assert!(unhealthy, "never 503: {last:?}");
    let v: Value = serde_json::from_str(&last.1).unwrap();
    assert_eq!(v["status"], "unhealthy", "{v}");
    assert_eq!(v["components"]["sinks"]["status"], "unhealthy", "{v}");

    let addr = d.control.to_string();
    let out = Command::new(BIN)
        .args(["status", "--addr", &addr])
        .env_remove("OUTRIGGER_API_KEY")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("outrigger at http://{addr}: unhealthy")),
        "the report is printed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("sinks"), "{text}");
    let out = Command::new(BIN)
        .args(["status", "--json", "--addr", &addr])
        .env_remove("OUTRIGGER_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["health"]["status"], "unhealthy", "{v}");
}

// Anomaly types used to make a metric series and a boost entry each, without bound, and a
// boost was logged for every report. Past 256 types, new ones share `_other`; a boost is
// logged when it starts, not when a report extends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_types_are_capped_and_a_boost_is_logged_when_it_starts() {
    let mut d = Daemon::start("control: {rate_limit: 0}").await;
    for i in 0..300 {
        let (status, v) = d
            .send_json(
                "POST",
                "/v1/anomaly",
                json!({"type": format!("kind{i}"), "reason": "test"}),
            )
            .await;
        assert_eq!(status, 202, "{v}");
    }
    for _ in 0..5 {
        let (status, _) = d
            .send_json(
                "POST",
                "/v1/anomaly",
                json!({"type": "kind0", "reason": "again"}),
            )
            .await;
        assert_eq!(status, 202);
    }
    // A type longer than an event's may be is refused, saying so; so is an empty one.
    for kind in ["x".repeat(257), String::new()] {
        let (status, v) = d
            .send_json("POST", "/v1/anomaly", json!({"type": kind}))
            .await;
        assert_eq!(status, 400, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("1 to 256 bytes"),
            "{v}"
        );
    }
    let (_, text) = d.get("/metrics").await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("outrigger_sampling_boost_active{"))
        .collect();
    assert!(series.len() <= 257, "{} series", series.len());
    assert!(
        series.iter().any(|l| l.contains("\"_other\"")),
        "{series:?}"
    );
    let log = d.log_text();
    assert_eq!(
        log.matches("too many distinct anomaly types").count(),
        1,
        "{log}"
    );
    let started = log.matches("sampling boost started").count();
    // 256 types of their own, and `_other` once.
    assert_eq!(started, 257, "{log}");
    assert!(d.stop().success());
}
