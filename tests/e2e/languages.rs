//! The same `redact` handler written in other languages gives byte-identical output to the
//! Rust one, offline (`outrigger replay`) and in a running daemon.
//!
//! Languages covered: Rust (`plugins/redact`) and Python (`plugins/python/redact`, built with
//! componentize-py). JavaScript and C are not built yet (issue 7).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::{BIN, Daemon};
use crate::wasm;

/// Builds the Python redact component once; fails with the build's output (for example when
/// componentize-py is missing: `pip install componentize-py==0.25.1`, as `.ci/run` does).
fn python_redact() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("bash")
            .arg(wasm::root().join("plugins/python/redact/build.sh"))
            .output()
            .expect("run plugins/python/redact/build.sh");
        assert!(
            out.status.success(),
            "building the Python plugin failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wasm::root().join("plugins/dist/lang/redact-py.wasm")
    })
}

const EVENTS: &str = r#"{"type":"login","run_id":"r1","ts_ns":1,"data":{"user":"ann","password":"hunter2","n":1,"z":{"b":1,"a":[1,2.5]}}}
{"type":"api_call","ts_ns":2,"data":{"path":"/v1/x","status":200}}
{"type":"login","ts_ns":3,"attributes":{"k":"v"},"data":{"token":"abc","password":"p","ünï":"çødé","esc":"a\"b\n","big":12345678901234567890}}
{"type":"text","ts_ns":4,"data":"password is not a field here"}
{"type":"arr","ts_ns":5,"data":[{"password":"x"}]}
{"type":"nested","ts_ns":6,"data":{"inner":{"password":"stays"},"token":null}}
"#;

fn replay(plugin: &Path, cache: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, EVENTS).unwrap();
    let config = dir.path().join("outrigger.yml");
    std::fs::write(
        &config,
        format!("plugins: {{cache_dir: \"{}\"}}\n", cache.display()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("replay")
        .arg(&events)
        .arg("--plugin")
        .arg(plugin)
        .arg("-c")
        .arg(&config)
        .output()
        .expect("run outrigger replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn python_redact_matches_rust_byte_for_byte() {
    let cache = tempfile::tempdir().unwrap();
    let rust = replay(&wasm::dist().join("redact.wasm"), cache.path());
    let python = replay(python_redact(), cache.path());
    assert_eq!(rust.lines().count(), 6, "{rust}");
    assert!(
        rust.contains(r#""password":"***""#) && rust.contains(r#""token":"***""#),
        "{rust}"
    );
    assert!(
        rust.contains(r#""inner":{"password":"stays"}"#),
        "only top-level fields: {rust}"
    );
    assert_eq!(python, rust, "Python and Rust redact differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_redact_runs_in_the_daemon() {
    let py = python_redact();
    let mut d = Daemon::spawn("plugins: {defaults: {timeout: 2s}}");
    std::fs::copy(py, d.path("plugins/redact-py.wasm")).unwrap();
    std::fs::write(d.path("plugins/redact-py.yml"), "fields: [password]\n").unwrap();
    // The daemon was started before the plugin was there: it arrives by hot reload.
    d.wait_ready().await;
    let loaded = crate::harness::eventually(std::time::Duration::from_secs(120), async || {
        d.get_json("/v1/plugins").await["plugins"][0]["world"] == "handler"
    })
    .await;
    assert!(loaded, "{}", d.get_json("/v1/plugins").await);
    let answers = d
        .send(&[r#"{"type": "login", "data": {"user": "a", "password": "p"}}"#])
        .await;
    assert_eq!(answers, [r#"{"success":true}"#]);
    d.wait_metric("outrigger_plugin_counter_total", r#"name="redacted""#, 1.0)
        .await;
    assert!(d.stop().success());
    let events = d.events();
    assert_eq!(events[0]["data"]["password"], "***", "{events:?}");
}
