//! Hot reload of the config while events stream: rate changes, sinks added and removed, a broken
//! config, SIGHUP and `POST /v1/reload`, rename-over saves. Every event is counted exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::harness::{Daemon, eventually, merge, read_ndjson, rewrite_config};

/// Streams numbered events of `kind` on one no-ack connection until `stop`; returns how many.
fn stream(
    d: &Daemon,
    kind: &'static str,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<u64> {
    let socket = d.socket.clone();
    tokio::spawn(async move {
        let s = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        let (_rd, mut wr) = s.into_split();
        wr.write_all(b"{\"hello\":{\"ack\":false}}\n")
            .await
            .expect("hello");
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut chunk = String::new();
            for _ in 0..50 {
                chunk.push_str(&format!("{{\"type\":\"{kind}\",\"data\":{{\"n\":{n}}}}}\n"));
                n += 1;
            }
            wr.write_all(chunk.as_bytes()).await.expect("write");
            sent.store(n, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        wr.shutdown().await.expect("shutdown");
        n
    })
}

fn numbers(events: &[Value], kind: &str) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == kind) {
        *seen.entry(e["data"]["n"].as_u64().unwrap()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_change_and_sink_swap_under_load_count_every_event_once() {
    let mut d = Daemon::start("sampling: {key: random}\nqueue: {capacity: 1000000}").await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let streamer = stream(&d, "load", stop.clone(), sent.clone());
    d.wait_metric("outrigger_events_received_total", "", 2000.0)
        .await;

    // 1. Drop every `load` event.
    rewrite_config(&d, "sampling: {rates: {load: 0.0}}");
    d.wait_metric("outrigger_reloads_total", r#"target="config""#, 1.0)
        .await;
    d.wait_metric(
        "outrigger_events_dropped_total",
        r#"reason="sampled_out""#,
        500.0,
    )
    .await;
    // 2. Keep them again, and add a second file sink.
    rewrite_config(
        &d,
        "sampling: {rates: {load: 1.0}}\nsinks: [{type: file, path: \"{dir}/out/events.ndjson\"}, {type: file, name: second, path: \"{dir}/out/second.ndjson\"}]",
    );
    d.wait_metric("outrigger_reloads_total", r#"result="ok""#, 2.0)
        .await;
    d.wait_metric(
        "outrigger_events_delivered_total",
        r#"sink="second""#,
        500.0,
    )
    .await;
    // 3. Remove the second sink again.
    rewrite_config(
        &d,
        "sinks: [{type: file, path: \"{dir}/out/events.ndjson\"}]",
    );
    d.wait_metric("outrigger_reloads_total", r#"result="ok""#, 3.0)
        .await;
    let before = d.metric("outrigger_events_received_total", "").await;
    d.wait_metric("outrigger_events_received_total", "", before + 1000.0)
        .await;

    stop.store(true, Ordering::Relaxed);
    let total = streamer.await.unwrap();
    d.wait_metric("outrigger_events_received_total", "", total as f64)
        .await;
    let sampled_out = d
        .metric("outrigger_events_dropped_total", r#"reason="sampled_out""#)
        .await;
    let queue_full = d
        .metric("outrigger_events_dropped_total", r#"reason="queue_full""#)
        .await;
    assert!(d.stop().success());

    let main = numbers(&d.events(), "load");
    assert!(main.values().all(|c| *c == 1), "an event was duplicated");
    assert_eq!(queue_full, 0.0);
    assert_eq!(
        main.len() as u64 + sampled_out as u64,
        total,
        "delivered + sampled_out = sent"
    );
    // The second sink saw a contiguous stretch, each once, and none after it was removed.
    let second = numbers(&read_ndjson(&d.path("out/second.ndjson")), "load");
    assert!(!second.is_empty() && second.values().all(|c| *c == 1));
    assert!(second.keys().all(|n| main.contains_key(n)));
    assert!(d.log_text().contains("sinks closed: second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_keeps_the_running_one_and_says_why() {
    let mut d = Daemon::start("").await;
    // A file written in two halves: the first half does not parse.
    std::fs::write(&d.config, "sampling:\n  default_rate: [").unwrap();
    d.wait_metric("outrigger_reloads_total", r#"result="error""#, 1.0)
        .await;
    assert_eq!(
        d.send(&[r#"{"type": "still_running"}"#]).await,
        [r#"{"success":true}"#]
    );
    // An explicit reload says what is wrong, and so does health until a reload succeeds.
    let (status, body) = d.send_json("POST", "/v1/reload", Value::Null).await;
    assert_eq!(status, 422, "{body}");
    let health = d.get_json("/v1/health").await;
    assert_eq!(
        health["components"]["reload"]["status"], "degraded",
        "{health}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("outrigger.yml"),
        "{body}"
    );
    // A valid but wrong value names its key.
    std::fs::write(&d.config, "sampling: {default_rate: 3.0}\n").unwrap();
    let (status, body) = d.send_json("POST", "/v1/reload", Value::Null).await;
    assert_eq!(status, 422);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("sampling.default_rate"),
        "{body}"
    );
    assert!(d.log_text().contains("reload refused"));
    assert!(d.stop().success());
    assert_eq!(d.events().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_and_restart_only_keys_are_reported() {
    let mut d = Daemon::start("").await;
    // Change the config without the watcher noticing a difference in timing: SIGHUP applies it.
    let text = std::fs::read_to_string(&d.config).unwrap();
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    merge(
        &mut cfg,
        serde_yaml::from_str("enabled: false\ningest: {socket: /tmp/elsewhere.sock}").unwrap(),
    );
    std::fs::write(&d.config, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    unsafe {
        libc::kill(d.child.as_ref().unwrap().id() as i32, libc::SIGHUP);
    }
    d.wait_metric("outrigger_reloads_total", r#"result="ok""#, 1.0)
        .await;
    assert!(
        eventually(Duration::from_secs(10), async || d
            .log_text()
            .contains("ingest.socket"))
        .await,
        "restart-only key not reported"
    );
    // The kill switch applied live; the socket stayed where it was.
    assert_eq!(d.send(&[r#"{"type": "x"}"#]).await.len(), 1);
    d.wait_metric(
        "outrigger_events_dropped_total",
        r#"reason="disabled""#,
        1.0,
    )
    .await;
    assert!(d.stop().success());
}

/// Writes `bytes` to `path` the way a copy does: a temp file, then a rename into place.
fn put(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn plugin_names(d: &Daemon) -> Vec<(String, bool)> {
    let v = d.get_json("/v1/plugins").await;
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["last_error"].is_null(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_added_changed_broken_and_removed_under_load_lose_nothing() {
    let dist = crate::wasm::dist();
    let redact = std::fs::read(dist.join("redact.wasm")).unwrap();
    let error_alert = std::fs::read(dist.join("error-alert.wasm")).unwrap();
    let mut d = Daemon::start("queue: {capacity: 1000000}").await;
    let plugins = d.path("plugins");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let streamer = {
        let socket = d.socket.clone();
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let s = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let (_rd, mut wr) = s.into_split();
            wr.write_all(b"{\"hello\":{\"ack\":false}}\n")
                .await
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut chunk = String::new();
                for _ in 0..20 {
                    chunk.push_str(&format!(
                        "{{\"type\":\"load\",\"data\":{{\"n\":{n},\"password\":\"hunter2\"}}}}\n"
                    ));
                    n += 1;
                }
                wr.write_all(chunk.as_bytes()).await.unwrap();
                sent.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            wr.shutdown().await.unwrap();
            n
        })
    };
    let live = async |d: &Daemon, want: &[(&str, bool)]| {
        let want: Vec<(String, bool)> = want.iter().map(|(n, ok)| (n.to_string(), *ok)).collect();
        let started = std::time::Instant::now();
        let ok = eventually(Duration::from_secs(30), async || {
            plugin_names(d).await == want
        })
        .await;
        assert!(
            ok,
            "plugins never became {want:?}: {:?}",
            plugin_names(d).await
        );
        started.elapsed()
    };
    d.wait_metric("outrigger_events_received_total", "", 500.0)
        .await;

    // Add: a new component (and its config) is compiled in the background and swapped in.
    std::fs::write(plugins.join("redact.yml"), "fields: [password]\n").unwrap();
    put(&plugins.join("redact.wasm"), &redact);
    let t_add = live(&d, &[("redact", true)]).await;
    let calls = d
        .wait_metric("outrigger_plugin_calls_total", r#"plugin="redact""#, 1.0)
        .await;

    // Change: a different component under the same name replaces it.
    put(&plugins.join("redact.wasm"), &error_alert);
    let before = d
        .metric("outrigger_reloads_total", r#"target="plugins""#)
        .await;
    d.wait_metric(
        "outrigger_reloads_total",
        r#"target="plugins""#,
        before + 1.0,
    )
    .await;
    d.wait_metric(
        "outrigger_plugin_calls_total",
        r#"plugin="redact""#,
        calls + 5.0,
    )
    .await;

    // Broken: a file that is not a component keeps the running one, and says why.
    let errors = d
        .metric("outrigger_reloads_total", r#"result="error""#)
        .await;
    put(
        &plugins.join("redact.wasm"),
        b"\0asm this is not a component",
    );
    d.wait_metric("outrigger_reloads_total", r#"result="error""#, errors + 1.0)
        .await;
    live(&d, &[("redact", false)]).await;
    let health = d.get_json("/v1/health").await;
    assert_eq!(
        health["components"]["plugins"]["status"], "degraded",
        "{health}"
    );
    assert!(
        health["components"]["plugins"]["reason"]
            .as_str()
            .unwrap()
            .contains("redact")
    );
    let calls = d
        .metric("outrigger_plugin_calls_total", r#"plugin="redact""#)
        .await;
    d.wait_metric(
        "outrigger_plugin_calls_total",
        r#"plugin="redact""#,
        calls + 5.0,
    )
    .await;

    // Remove: unloaded.
    std::fs::remove_file(plugins.join("redact.wasm")).unwrap();
    let t_remove = live(&d, &[]).await;

    stop.store(true, Ordering::Relaxed);
    let total = streamer.await.unwrap();
    d.wait_metric("outrigger_events_received_total", "", total as f64)
        .await;
    assert!(d.stop().success());
    let events = d.events();
    let seen = numbers(&events, "load");
    assert_eq!(seen.len() as u64, total, "every event delivered");
    assert!(seen.values().all(|c| *c == 1), "no event duplicated");
    let redacted = events
        .iter()
        .filter(|e| e["data"]["password"] == "***")
        .count();
    let clear = events
        .iter()
        .filter(|e| e["data"]["password"] == "hunter2")
        .count();
    assert!(
        redacted > 0 && clear > 0,
        "{redacted} redacted, {clear} in the clear"
    );
    eprintln!("plugin add live after {t_add:?} (poll), remove after {t_remove:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_change_live_degrade_and_recover() {
    let mut d = Daemon::start("profiling: {interval: 100ms}").await;
    let profiler = async |d: &Daemon| {
        d.get_json("/v1/health").await["components"]["profiler"]["status"].clone()
    };
    assert_eq!(profiler(&d).await, "healthy");
    // A memory budget the daemon cannot meet: degraded, and sampling is scaled down.
    rewrite_config(&d, "profiling: {budgets: {memory_mb: 1}}");
    let degraded = eventually(Duration::from_secs(20), async || {
        profiler(&d).await == "degraded"
    })
    .await;
    assert!(degraded, "{}", d.get_json("/v1/health").await);
    // Budgets off again: it recovers.
    rewrite_config(&d, "profiling: {budgets: {memory_mb: 0}}");
    let healthy = eventually(Duration::from_secs(20), async || {
        profiler(&d).await == "healthy"
    })
    .await;
    assert!(healthy, "{}", d.get_json("/v1/health").await);
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_directory_removed_and_recreated_is_watched_again() {
    let dist = crate::wasm::dist();
    let mut d = Daemon::start("").await;
    let plugins = d.path("plugins");
    put(
        &plugins.join("redact.wasm"),
        &std::fs::read(dist.join("redact.wasm")).unwrap(),
    );
    let names = async |d: &Daemon| {
        plugin_names(d)
            .await
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(30), async || names(&d).await
            == ["redact"])
        .await
    );
    // The directory goes away (a deploy tool replacing it): the plugin is unloaded.
    std::fs::remove_dir_all(&plugins).unwrap();
    assert!(eventually(Duration::from_secs(30), async || names(&d).await.is_empty()).await);
    // It comes back with a plugin in it: watched again, loaded again.
    std::fs::create_dir(&plugins).unwrap();
    put(
        &plugins.join("drop-debug.wasm"),
        &std::fs::read(dist.join("drop-debug.wasm")).unwrap(),
    );
    let back = eventually(Duration::from_secs(30), async || {
        names(&d).await == ["drop-debug"]
    })
    .await;
    assert!(back, "{:?}", names(&d).await);
    // And later changes in the new directory are seen too.
    put(
        &plugins.join("redact.wasm"),
        &std::fs::read(dist.join("redact.wasm")).unwrap(),
    );
    let both = eventually(Duration::from_secs(30), async || names(&d).await.len() == 2).await;
    assert!(both, "{:?}", names(&d).await);
    assert!(d.stop().success());
}

/// Waits until `/v1/plugins` lists exactly `want` (by name).
async fn plugins_become(d: &Daemon, want: &[&str]) {
    let ok = eventually(Duration::from_secs(30), async || {
        let names: Vec<String> = plugin_names(d).await.into_iter().map(|(n, _)| n).collect();
        names == want
    })
    .await;
    assert!(
        ok,
        "plugins never became {want:?}: {:?}",
        plugin_names(d).await
    );
}

/// Waits until the file sink at `path` holds `n` events and returns them.
async fn sink_events(path: &std::path::Path, n: usize) -> Vec<Value> {
    let ok = eventually(Duration::from_secs(10), async || {
        read_ndjson(path).len() >= n
    })
    .await;
    assert!(ok, "{} has {:?}", path.display(), read_ndjson(path));
    read_ndjson(path)
}

// The worker used to notice a new routing only after it had run the next chunk through the old
// one: on an idle daemon the first event after a reload missed a new redaction plugin (a leak)
// and still met a removed dropping plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_idle_daemon_the_first_event_after_a_plugin_reload_takes_the_new_chain() {
    let dist = crate::wasm::dist();
    let mut d = Daemon::start("").await;
    let plugins = d.path("plugins");
    put(
        &plugins.join("drop-debug.wasm"),
        &std::fs::read(dist.join("drop-debug.wasm")).unwrap(),
    );
    plugins_become(&d, &["drop-debug"]).await;
    // Idle: nothing has been sent, so no chunk can carry the change to the worker.
    tokio::time::sleep(Duration::from_millis(300)).await;

    std::fs::write(plugins.join("redact.yml"), "fields: [password]\n").unwrap();
    put(
        &plugins.join("redact.wasm"),
        &std::fs::read(dist.join("redact.wasm")).unwrap(),
    );
    plugins_become(&d, &["drop-debug", "redact"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = r#"{"success":true}"#;
    let line = r#"{"type": "login", "data": {"user": "ann", "password": "hunter2"}}"#;
    assert_eq!(d.send(&[line]).await, [ok]);
    let events = sink_events(&d.out, 1).await;
    assert_eq!(events[0]["data"]["password"], "***", "{events:?}");

    std::fs::remove_file(plugins.join("drop-debug.wasm")).unwrap();
    plugins_become(&d, &["redact"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.send(&[r#"{"type": "debug_log", "data": 1}"#]).await, [ok]);
    let events = sink_events(&d.out, 2).await;
    assert_eq!(events[1]["type"], "debug_log", "{events:?}");
    assert!(d.stop().success());
}

// A removed sink used to get the next batch: the worker held its sender until a chunk passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_idle_daemon_a_removed_sink_gets_nothing_after_the_reload() {
    let mut d = Daemon::start(
        r#"
sinks:
  - {type: file, path: "{dir}/out/events.ndjson"}
  - {type: file, name: extra, path: "{dir}/out/extra.ndjson"}
"#,
    )
    .await;
    let extra = d.path("out/extra.ndjson");
    let ok = r#"{"success":true}"#;
    assert_eq!(d.send(&[r#"{"type": "before", "data": 1}"#]).await, [ok]);
    sink_events(&extra, 1).await;
    sink_events(&d.out, 1).await;

    rewrite_config(
        &d,
        r#"sinks: [{type: file, path: "{dir}/out/events.ndjson"}]"#,
    );
    // The file watcher reloads; its log line is the report.
    let ok_reload = eventually(Duration::from_secs(10), async || {
        d.log_text().contains("sinks closed: extra")
    })
    .await;
    assert!(ok_reload, "{}", d.log_text());
    assert_eq!(d.send(&[r#"{"type": "after", "data": 2}"#]).await, [ok]);
    let events = sink_events(&d.out, 2).await;
    assert_eq!(events[1]["type"], "after");
    assert!(d.stop().success());
    let extra_events = read_ndjson(&extra);
    assert_eq!(extra_events.len(), 1, "removed sink got {extra_events:?}");
    let delivered = d.log_text();
    assert!(delivered.contains("outrigger stopped"), "{delivered}");
}
