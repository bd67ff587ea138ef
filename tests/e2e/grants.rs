//! Plugin grants in the running daemon (`plugins.chain[].grants`): an `http` grant lets the
//! `http-poster` fixture reach a real local server and nothing else (a request to another
//! authority gets `HttpRequestDenied`, and every request is counted by result); a request still
//! in flight when the call's timeout passes is cut, connection included; a component importing
//! `wasi:filesystem` or `wasi:http` without the grant is refused at load with a message naming
//! the import and the grant, loads once granted and stops again when the grant is revoked; and
//! the `fs-probe` fixture shows that a `dirs` grant is read-only unless it says otherwise and
//! that only granted variables are visible.
//!
//! And a project made with `outrigger plugin new NAME --lang rust --http` builds, says in
//! `plugin check` that it needs `grants.http`, and posts to a local server with the grant.
//!
//! The fixtures come from `plugins/dist/fixtures/` (`plugins/build.sh` builds them).

use std::io::Read as _;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{BIN, Daemon, Recorder, eventually, rewrite_config};
use crate::wasm::{build_outside_http, dist, install};

/// Copies fixtures into the daemon's plugins dir: `(fixture file name, plugin name)`.
fn install_fixtures(d: &Daemon, files: &[(&str, &str)]) {
    for (file, _) in files {
        let path = dist().join("fixtures").join(file);
        assert!(
            path.is_file(),
            "{} is missing: plugins/build.sh builds the grant fixtures",
            path.display()
        );
    }
    let files: Vec<(String, &str)> = files
        .iter()
        .map(|(f, n)| (format!("fixtures/{f}"), *n))
        .collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(f, n)| (f.as_str(), *n)).collect();
    install(&d.path("plugins"), &files);
}

/// The `GET /v1/plugins` entry of plugin `name`.
async fn plugin_status(d: &Daemon, name: &str) -> Value {
    let all = d.get_json("/v1/plugins").await;
    all["plugins"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no plugin {name} in {all}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_grant_reaches_its_authorities_and_nothing_else() {
    let server = Recorder::start(|_| 200).await;
    // Something listens at the authority that is not granted: nothing may connect to it.
    let stray = TcpListener::bind("127.0.0.1:0").unwrap();
    stray.set_nonblocking(true).unwrap();
    let granted = server.addr.to_string();
    let elsewhere = stray.local_addr().unwrap();
    let mut d = Daemon::prepare(&format!(
        r#"
plugins:
  chain:
    - {{name: poster, config: {{url: "http://{granted}/hook"}}, grants: {{http: ["{granted}"]}}}}
    - {{name: stray, config: {{url: "http://{elsewhere}/hook"}}, grants: {{http: ["{granted}"]}}}}
"#
    ));
    install_fixtures(
        &d,
        &[
            ("http-poster.wasm", "poster"),
            ("http-poster.wasm", "stray"),
        ],
    );
    d.launch();
    d.wait_ready().await;
    let lines: Vec<String> = (0..3)
        .map(|i| format!(r#"{{"type":"job","data":{{"n":{i}}}}}"#))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    for a in d.send(&lines).await {
        assert_eq!(a, r#"{"success":true}"#);
    }
    let requests = "outrigger_plugin_http_requests_total";
    d.wait_metric(requests, "plugin=\"poster\",result=\"ok\"", 3.0)
        .await;
    d.wait_metric(requests, "plugin=\"stray\",result=\"denied\"", 3.0)
        .await;
    let counters = "outrigger_plugin_counter_total";
    d.wait_metric(counters, "name=\"http_ok\",plugin=\"poster\"", 3.0)
        .await;
    d.wait_metric(counters, "name=\"http_err\",plugin=\"stray\"", 3.0)
        .await;
    assert_eq!(
        d.metric(requests, "plugin=\"stray\",result=\"ok\"").await,
        0.0
    );
    assert_eq!(
        d.metric(requests, "plugin=\"poster\",result=\"denied\"")
            .await,
        0.0
    );
    let mut bodies: Vec<String> = server.bodies().into_iter().map(|(_, b)| b).collect();
    bodies.sort();
    assert_eq!(bodies, [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#]);
    assert!(
        matches!(stray.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "something connected to the authority that was not granted"
    );
    assert!(
        d.log_text().contains("ErrorCode::HttpRequestDenied"),
        "{}",
        d.log_text()
    );
    assert!(d.stop().success());
    let jobs = d.events().iter().filter(|e| e["type"] == "job").count();
    assert_eq!(jobs, 3, "both posters keep every event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_ends_with_the_call() {
    // Accepts connections and never answers; reports how long each stayed open.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in silent.incoming() {
            let Ok(mut conn) = conn else { return };
            let opened = Instant::now();
            let mut buf = [0u8; 4096];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            if tx.send(opened.elapsed()).is_err() {
                return;
            }
        }
    });
    let mut d = Daemon::prepare(&format!(
        r#"
plugins:
  chain:
    - {{name: poster, timeout: 300ms, config: {{url: "http://{addr}/hook"}}, grants: {{http: ["{addr}"]}}}}
"#
    ));
    install_fixtures(&d, &[("http-poster.wasm", "poster")]);
    d.launch();
    d.wait_ready().await;
    d.send(&[r#"{"type":"job","data":{}}"#]).await;
    d.wait_metric(
        "outrigger_plugin_errors_total",
        "kind=\"timeout\",plugin=\"poster\"",
        1.0,
    )
    .await;
    d.wait_metric(
        "outrigger_plugin_http_requests_total",
        "plugin=\"poster\",result=\"timeout\"",
        1.0,
    )
    .await;
    // Without the bound the host's HTTP client would wait ten minutes for an answer.
    let open = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the host closed the connection of the request it cut");
    println!("the silent server's connection was open for {open:?} (call timeout 300ms)");
    assert!(d.stop().success());
    assert_eq!(
        d.events().iter().filter(|e| e["type"] == "job").count(),
        1,
        "on_error: pass lets the batch through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_without_their_grant_are_refused_at_load_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let mut d = Daemon::prepare("");
    install_fixtures(
        &d,
        &[("fs-probe.wasm", "probe"), ("http-poster.wasm", "poster")],
    );
    let fs_refusal = "which needs grants.dirs: [{host: DIR, guest: /PATH}]";
    let http_refusal = r#"which needs grants.http: ["host:port"]"#;

    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&d.config)
        .current_dir(d.dir.path())
        .output()
        .expect("outrigger check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("plugin probe: FAILED: imports wasi:filesystem/"),
        "{text}"
    );
    assert!(text.contains(fs_refusal), "{text}");
    assert!(
        text.contains("plugin poster: FAILED: imports wasi:http/"),
        "{text}"
    );
    assert!(text.contains(http_refusal), "{text}");

    d.launch();
    d.wait_ready().await;
    for (name, import, refusal) in [
        ("probe", "imports wasi:filesystem/", fs_refusal),
        ("poster", "imports wasi:http/", http_refusal),
    ] {
        let st = plugin_status(&d, name).await;
        assert_eq!(st["state"], "failed", "{st}");
        let err = st["last_error"].as_str().unwrap_or_default();
        assert!(err.starts_with(import) && err.ends_with(refusal), "{st}");
    }
    assert!(d.log_text().contains(fs_refusal), "{}", d.log_text());

    // Granted, it loads on reload.
    rewrite_config(
        &d,
        &format!(
            "plugins: {{chain: [{{name: probe, grants: {{dirs: [{{host: \"{}\", guest: /data}}]}}}}]}}",
            data.path().display()
        ),
    );
    let active = eventually(Duration::from_secs(30), async || {
        plugin_status(&d, "probe").await["state"] == "active"
    })
    .await;
    assert!(active, "{}", d.log_text());

    // Revoked, it stops: the version loaded under the grant does not keep running.
    rewrite_config(&d, "plugins: {chain: [{name: probe}]}");
    let mut st = Value::Null;
    let refused = eventually(Duration::from_secs(30), async || {
        st = plugin_status(&d, "probe").await;
        st["state"] == "failed"
    })
    .await;
    assert!(refused, "{st}\n{}", d.log_text());
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.ends_with(fs_refusal)),
        "{st}"
    );
    assert!(d.stop().success());
}

/// The data of the first `fs_probe` event whose `read` is `read`.
fn probe_reading<'a>(events: &'a [Value], read: &str) -> Option<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "fs_probe")
        .map(|e| &e["data"])
        .find(|d| d["read"] == read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirs_grant_is_read_only_unless_it_says_so_and_only_granted_variables_are_seen() {
    let host = tempfile::tempdir().unwrap();
    let (ro, rw) = (host.path().join("ro"), host.path().join("rw"));
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("in.txt"), "hello from the host").unwrap();
    std::fs::write(rw.join("marker.txt"), "rw").unwrap();
    let unset = "OUTRIGGER_TEST_GRANTS_UNSET";
    assert!(std::env::var_os(unset).is_none());
    let mut d = Daemon::prepare(&format!(
        r#"
plugins:
  chain:
    - name: ro-probe
      config: {{read: /data/in.txt, write: /data/out.txt, env: [GRANTED_VAR, HIDDEN_VAR, {unset}]}}
      grants: {{dirs: [{{host: "{ro}", guest: /data}}], env: [GRANTED_VAR, {unset}]}}
    - name: rw-probe
      config: {{read: /rw/marker.txt, write: /rw/out.txt, env: [GRANTED_VAR]}}
      grants: {{dirs: [{{host: "{rw}", guest: /rw, read_only: false}}]}}
"#,
        ro = ro.display(),
        rw = rw.display(),
    ));
    d.env.push(("GRANTED_VAR".into(), "granted".into()));
    d.env.push(("HIDDEN_VAR".into(), "secret".into()));
    install_fixtures(
        &d,
        &[("fs-probe.wasm", "ro-probe"), ("fs-probe.wasm", "rw-probe")],
    );
    d.launch();
    d.wait_ready().await;
    d.send(&[r#"{"type":"tick","data":{}}"#]).await;
    let both = eventually(Duration::from_secs(30), async || {
        let events = d.events();
        probe_reading(&events, "hello from the host").is_some()
            && probe_reading(&events, "rw").is_some()
    })
    .await;
    assert!(both, "{:?}\n{}", d.events(), d.log_text());
    let events = d.events();

    let read_only = probe_reading(&events, "hello from the host").unwrap();
    println!("read-only probe: {read_only}");
    assert_eq!(read_only["read_error"], Value::Null, "{read_only}");
    assert_eq!(read_only["write_ok"], false, "{read_only}");
    assert!(read_only["write_error"].is_string(), "{read_only}");
    assert!(
        !ro.join("out.txt").exists(),
        "a read-only grant wrote a file"
    );
    assert_eq!(
        read_only["env"],
        json!({"GRANTED_VAR": "granted", "HIDDEN_VAR": null, unset: null})
    );

    let writable = probe_reading(&events, "rw").unwrap();
    println!("read-write probe: {writable}");
    assert_eq!(writable["write_ok"], true, "{writable}");
    assert_eq!(
        std::fs::read_to_string(rw.join("out.txt")).unwrap(),
        "probe"
    );
    assert_eq!(
        writable["env"],
        json!({"GRANTED_VAR": null}),
        "no env grant, no variables"
    );
    assert!(d.stop().success());
}

/// `outrigger check` refuses bad grants naming the key and the line, and accepts good ones.
#[test]
fn granted_paths_are_checked_like_the_rest_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outrigger.yml");
    let write = |grants: &str| {
        std::fs::write(
            &config,
            format!(
                "plugins:\n  dir: {}\n  chain:\n    - name: p\n      enabled: false\n      grants:\n        {grants}\n",
                dir.path().display()
            ),
        )
        .unwrap();
    };
    let check = || {
        let out = Command::new(BIN)
            .args(["check", "-c"])
            .arg(&config)
            .current_dir(dir.path())
            .output()
            .expect("outrigger check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    for (grants, says) in [
        (
            "dirs: [{host: ./nowhere, guest: /data}]".to_string(),
            "`plugins.chain[0].grants.dirs[0].host`: ./nowhere",
        ),
        (
            format!("dirs: [{{host: {}, guest: data}}]", dir.path().display()),
            "`plugins.chain[0].grants.dirs[0].guest`: `data` must be an absolute path",
        ),
        (
            "http: [\"https://hooks.example.com\"]".to_string(),
            "`plugins.chain[0].grants.http[0]`: `https://hooks.example.com` is not host:port",
        ),
    ] {
        write(&grants);
        let (code, text) = check();
        assert_eq!(code, Some(1), "{grants}: {text}");
        assert!(text.contains(says), "{grants}: {text}");
        assert!(text.contains("outrigger.yml:7:"), "{grants}: {text}");
    }
    write(&format!(
        "{{http: [\"hooks.example.com:443\"], env: [HOME], dirs: [{{host: {}, guest: /data}}]}}",
        dir.path().display()
    ));
    let (code, text) = check();
    assert_eq!(code, Some(0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_made_with_plugin_new_http_posts_with_its_grant() {
    let outside = tempfile::tempdir().unwrap();
    let wasm = build_outside_http(outside.path(), "my-hook");
    let out = Command::new(BIN)
        .args(["plugin", "check"])
        .arg(&wasm)
        .output()
        .expect("plugin check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "world:   handler",
        "grants:  needs http (plugins.chain[].grants)",
        "needs grants.http: [\"host:port\"]",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("wasi:filesystem") && !text.contains("wasi:sockets"),
        "{text}"
    );

    let server = Recorder::start(|_| 200).await;
    let addr = server.addr;
    let mut d = Daemon::prepare(&format!(
        r#"
plugins:
  chain:
    - {{name: my-hook, timeout: 1s, grants: {{http: ["{addr}"]}}}}
"#
    ));
    std::fs::copy(&wasm, d.path("plugins/my-hook.wasm")).unwrap();
    // The project's own config, pointed at the test's server.
    let yml = std::fs::read_to_string(outside.path().join("my-hook/my-hook.yml")).unwrap();
    assert!(yml.contains("url: http://127.0.0.1:9000/events"), "{yml}");
    std::fs::write(
        d.path("plugins/my-hook.yml"),
        yml.replace("127.0.0.1:9000", &addr.to_string()),
    )
    .unwrap();
    d.launch();
    d.wait_ready().await;
    d.send(&[
        r#"{"type":"job","data":{"n":1}}"#,
        r#"{"type":"job","data":{"n":2}}"#,
    ])
    .await;
    d.wait_metric(
        "outrigger_plugin_counter_total",
        "name=\"posted\",plugin=\"my-hook\"",
        2.0,
    )
    .await;
    d.wait_metric(
        "outrigger_plugin_http_requests_total",
        "plugin=\"my-hook\",result=\"ok\"",
        2.0,
    )
    .await;
    let mut bodies: Vec<String> = server.bodies().into_iter().map(|(_, b)| b).collect();
    bodies.sort();
    assert_eq!(bodies, [r#"{"n":1}"#, r#"{"n":2}"#]);
    assert!(d.stop().success());
}

/// The `webhook-alert` example: one alert per failed event to a real local server; with the
/// server gone the pipeline keeps flowing and the failures are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_alert_posts_one_alert_per_failed_event_and_survives_a_dead_endpoint() {
    let server = Recorder::start(|_| 200).await;
    let up = server.addr.to_string();
    // An address nothing listens on: bound, then closed.
    let down = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut d = Daemon::prepare(&format!(
        r#"
plugins:
  defaults: {{timeout: 2s}}
  chain:
    - {{name: alert, config: {{url: "http://{up}/alert", timeout_ms: 500}}, grants: {{http: ["{up}"]}}}}
    - {{name: dead, config: {{url: "http://{down}/alert", timeout_ms: 500}}, grants: {{http: ["{down}"]}}}}
"#
    ));
    install(
        &d.path("plugins"),
        &[
            ("webhook-alert.wasm", "alert"),
            ("webhook-alert.wasm", "dead"),
        ],
    );
    d.launch();
    d.wait_ready().await;
    let lines: Vec<String> = (0..10)
        .map(|i| {
            let status = if i % 3 == 0 { "failed" } else { "passed" };
            format!(r#"{{"type":"test_end","run_id":"r{i}","data":{{"name":"t{i}","status":"{status}"}}}}"#)
        })
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    for a in d.send(&lines).await {
        assert_eq!(a, r#"{"success":true}"#);
    }
    let counters = "outrigger_plugin_counter_total";
    d.wait_metric(counters, "name=\"alerts_sent\",plugin=\"alert\"", 4.0)
        .await;
    d.wait_metric(counters, "name=\"alerts_failed\",plugin=\"dead\"", 1.0)
        .await;
    let ok = eventually(Duration::from_secs(10), async || d.events().len() >= 10).await;
    assert!(ok, "the pipeline kept flowing: {} events", d.events().len());
    let bodies = server.bodies();
    assert_eq!(bodies.len(), 4, "one alert per failed event: {bodies:?}");
    for (_, b) in &bodies {
        let v: Value = serde_json::from_str(b).unwrap();
        assert_eq!(v["status"], "failed", "{v}");
        assert_eq!(v["type"], "test_end");
    }
    let mut runs: Vec<String> = bodies
        .iter()
        .map(|(_, b)| serde_json::from_str::<Value>(b).unwrap()["run_id"].to_string())
        .collect();
    runs.sort();
    assert_eq!(runs, [r#""r0""#, r#""r3""#, r#""r6""#, r#""r9""#]);
    assert!(
        d.metric(
            "outrigger_plugin_http_requests_total",
            "plugin=\"dead\",result=\"error\""
        )
        .await
            >= 1.0
    );
    assert_eq!(d.metric("outrigger_events_dropped_total", "").await, 0.0);
    assert!(d.stop().success());
    assert_eq!(d.events().len(), 10, "every event delivered once");
}
