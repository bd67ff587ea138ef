//! WASM plugins in the running daemon: the example plugins, misbehaving fixtures (spin, memory,
//! trap, wrong length, sleep) that the daemon stops, counts by kind, handles per `on_error`,
//! quarantines and recovers from while it keeps delivering, a handler and a sampler compiled
//! outside the repository, and the `plugin check` / `replay` commands.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, Daemon, eventually, merge};
use crate::wasm::{build_outside, dist, install};

/// Starts a daemon whose plugins dir is `plugins` (prepared before the start), with `extra`
/// YAML merged over the base config.
async fn daemon_with(plugins: &Path, extra: &str) -> Daemon {
    let mut cfg: serde_yaml::Value =
        serde_yaml::from_str(&format!("plugins: {{dir: \"{}\"}}", plugins.display())).unwrap();
    if !extra.trim().is_empty() {
        merge(
            &mut cfg,
            serde_yaml::from_str(extra).expect("extra is YAML"),
        );
    }
    Daemon::start(&serde_yaml::to_string(&cfg).unwrap()).await
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn ok_answers(answers: &[String]) {
    for a in answers {
        assert_eq!(a, r#"{"success":true}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plugins_redact_alert_and_sample() {
    let plugins = tempfile::tempdir().unwrap();
    install(
        plugins.path(),
        &[
            ("redact.wasm", "redact"),
            ("error-alert.wasm", "error-alert"),
            ("drop-debug.wasm", "drop-debug"),
            ("fixtures/emitter.wasm", "emitter"),
        ],
    );
    let mut d = daemon_with(
        plugins.path(),
        "plugins: {chain: [{name: emitter, types: [trigger]}]}",
    )
    .await;
    let answers = d
        .send(&[
            r#"{"type":"login","data":{"user":"ann","password":"hunter2","token":"abc"}}"#,
            r#"{"type":"debug.trace","data":{"x":1}}"#,
            r#"{"type":"job","run_id":"r1","data":{"status":"failed"}}"#,
            r#"{"type":"job","run_id":"r1","data":{"status":"ok"}}"#,
            r#"{"type":"trigger","ts_ns":7,"data":{}}"#,
        ])
        .await;
    ok_answers(&answers);
    d.wait_metric(
        "outrigger_plugin_counter_total",
        "name=\"redacted\",plugin=\"redact\"",
        2.0,
    )
    .await;
    d.wait_metric(
        "outrigger_plugin_counter_total",
        "name=\"alerts\",plugin=\"error-alert\"",
        1.0,
    )
    .await;
    d.wait_metric(
        "outrigger_events_dropped_total",
        "reason=\"sampled_out\"",
        1.0,
    )
    .await;
    assert_eq!(
        d.metric("outrigger_sampling_boost_active", "type=\"job\"")
            .await,
        1.0,
        "error-alert's report-anomaly boosts the native sampler"
    );
    let status = d.get_json("/v1/plugins").await;
    let list = status["plugins"].as_array().expect("plugins list");
    let worlds: Vec<(String, String)> = list
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["world"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        worlds,
        [
            ("drop-debug".to_string(), "sampler".to_string()),
            ("emitter".into(), "handler".into()),
            ("error-alert".into(), "handler".into()),
            ("redact".into(), "handler".into()),
        ]
    );
    assert!(d.stop().success());
    let events = d.events();
    let login = of_type(&events, "login");
    assert_eq!(login.len(), 1);
    assert_eq!(login[0]["data"]["password"], "***");
    assert_eq!(login[0]["data"]["token"], "***");
    assert_eq!(login[0]["data"]["user"], "ann");
    assert!(of_type(&events, "debug.trace").is_empty());
    assert_eq!(of_type(&events, "job").len(), 2);
    let derived = of_type(&events, "derived");
    assert_eq!(derived.len(), 1, "emitted event delivered: {events:?}");
    assert_eq!(derived[0]["data"]["from"], 7);
    let log = d.log_text();
    assert!(
        log.contains("emitter: stdout line at init") && log.contains("emitter"),
        "guest stdout goes to the host log"
    );
}

/// Every misbehaving mode in one daemon, each plugin on its own event type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_are_stopped_counted_and_quarantined() {
    let plugins = tempfile::tempdir().unwrap();
    let modes = [
        "spin",
        "spinfuel",
        "oom",
        "trap",
        "wrong_len",
        "sleep",
        "trapdrop",
    ];
    let files: Vec<(&str, &str)> = modes
        .iter()
        .map(|m| ("fixtures/misbehave.wasm", *m))
        .collect();
    install(plugins.path(), &files);
    let mut d = daemon_with(
        plugins.path(),
        r#"
plugins:
  defaults: {timeout: 200ms, memory_mb: 32, quarantine_after: 2, quarantine_initial: 30s, quarantine_max: 60s}
  chain:
    - {name: spin, types: [spin], fuel_per_event: 1000000000000, config: {mode: spin}}
    - {name: spinfuel, types: [spinfuel], config: {mode: spin}}
    - {name: oom, types: [oom], config: {mode: oom}}
    - {name: trap, types: [trap], config: {mode: trap}}
    - {name: wrong_len, types: [wrong_len], config: {mode: wrong_len}}
    - {name: sleep, types: [sleep], config: {mode: sleep}}
    - {name: trapdrop, types: [trapdrop], on_error: drop, config: {mode: trap}}
"#,
    )
    .await;
    let expect = [
        ("spin", "timeout"),
        ("spinfuel", "fuel"),
        ("oom", "memory"),
        ("trap", "trap"),
        ("wrong_len", "bad_output"),
        ("sleep", "timeout"),
        ("trapdrop", "trap"),
    ];
    // Two rounds: each plugin fails twice, which quarantines it.
    for round in 1..=2 {
        let lines: Vec<String> = modes
            .iter()
            .map(|m| format!(r#"{{"type":"{m}","data":{{"round":{round}}}}}"#))
            .chain([format!(r#"{{"type":"normal","data":{{"round":{round}}}}}"#)])
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        ok_answers(&d.send(&refs).await);
        for (name, kind) in expect {
            d.wait_metric(
                "outrigger_plugin_errors_total",
                &format!("kind=\"{kind}\",plugin=\"{name}\""),
                round as f64,
            )
            .await;
        }
    }
    for name in modes {
        assert_eq!(
            d.metric(
                "outrigger_plugin_quarantined",
                &format!("plugin=\"{name}\"")
            )
            .await,
            1.0,
            "{name} is quarantined after two failures in a row"
        );
    }
    // While quarantined, batches bypass the plugins: the third round is delivered as sent
    // (trapdrop's events too) and no new errors are counted.
    let errors_before = d.metric("outrigger_plugin_errors_total", "").await;
    let lines: Vec<String> = modes
        .iter()
        .map(|m| format!(r#"{{"type":"{m}","data":{{"round":3}}}}"#))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    ok_answers(&d.send(&refs).await);
    let health = d.get_json("/v1/health").await;
    assert_eq!(
        health["components"]["plugins"]["status"], "degraded",
        "{health}"
    );
    let status = d.get_json("/v1/plugins").await;
    for p in status["plugins"].as_array().expect("plugins") {
        assert_eq!(p["quarantined"], true, "{p}");
        assert!(p["quarantined_until"].is_number(), "{p}");
        assert!(p["last_error"].is_string(), "{p}");
    }
    let delivered = eventually(Duration::from_secs(30), async || {
        d.events()
            .iter()
            .filter(|e| e["data"]["round"] == 3)
            .count()
            == modes.len()
    })
    .await;
    assert!(delivered, "round 3 was not delivered: {:?}", d.events());
    assert_eq!(
        d.metric("outrigger_plugin_errors_total", "").await,
        errors_before
    );
    assert!(d.stop().success());
    let events = d.events();
    // on_error pass: failed batches continue unchanged; drop: dropped and counted.
    for m in modes.iter().filter(|m| **m != "trapdrop") {
        let got: Vec<&Value> = of_type(&events, m);
        assert_eq!(got.len(), 3, "{m}: {got:?}");
        assert!(
            got.iter().all(|e| e.get("attributes").is_none()),
            "{m}: {got:?}"
        );
    }
    let dropped = of_type(&events, "trapdrop");
    assert_eq!(
        dropped.len(),
        1,
        "only the bypassed round survives: {dropped:?}"
    );
    assert_eq!(dropped[0]["data"]["round"], 3);
    assert_eq!(
        of_type(&events, "normal").len(),
        2,
        "the daemon kept delivering"
    );
    let text = std::fs::read_to_string(d.path("daemon.log")).unwrap_or_default();
    assert!(text.contains("quarantined"), "quarantine is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_plugin_recovers_and_on_error_drop_is_counted() {
    let plugins = tempfile::tempdir().unwrap();
    install(plugins.path(), &[("fixtures/misbehave.wasm", "flaky")]);
    let d = daemon_with(
        plugins.path(),
        r#"
plugins:
  defaults: {quarantine_after: 2, quarantine_initial: 300ms, quarantine_max: 5s}
  chain: [{name: flaky, on_error: drop, config: {mode: trap}}]
"#,
    )
    .await;
    for i in 1..=2 {
        ok_answers(
            &d.send(&[&format!(r#"{{"type":"t","data":{{"n":{i}}}}}"#)])
                .await,
        );
        d.wait_metric(
            "outrigger_plugin_errors_total",
            "kind=\"trap\",plugin=\"flaky\"",
            i as f64,
        )
        .await;
    }
    assert_eq!(
        d.metric("outrigger_events_dropped_total", "reason=\"plugin\"")
            .await,
        2.0
    );
    d.wait_metric("outrigger_plugin_quarantined", "plugin=\"flaky\"", 1.0)
        .await;
    // Once the quarantine is over, a good batch (fail=no) runs on a new instance and the
    // plugin is healthy again.
    let recovered = eventually(Duration::from_secs(30), async || {
        let status = d.get_json("/v1/plugins").await;
        status["plugins"][0]["quarantined"] == false
    })
    .await;
    assert!(recovered, "quarantine never ended");
    ok_answers(
        &d.send(&[r#"{"type":"t","attributes":{"fail":"no"},"data":{"n":3}}"#])
            .await,
    );
    let ok = eventually(Duration::from_secs(30), async || {
        d.events()
            .iter()
            .any(|e| e["data"]["n"] == 3 && e["attributes"]["seen_by"] == "misbehave")
    })
    .await;
    assert!(
        ok,
        "the recovered plugin handled the batch: {:?}",
        d.events()
    );
    let status = d.get_json("/v1/plugins").await;
    assert_eq!(status["plugins"][0]["consecutive_failures"], 0, "{status}");
    assert_eq!(
        d.metric("outrigger_plugin_quarantined", "plugin=\"flaky\"")
            .await,
        0.0
    );
}

const OUTSIDE_SAMPLER: &str = r#"//! A sampler built outside the repository: drops events of type `noise`.
wit_bindgen::generate!({ world: "sampler", path: "wit" });

struct Plugin;

impl Guest for Plugin {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn sample(events: Vec<Event>) -> Vec<bool> {
        events.iter().map(|e| e.kind != "noise").collect()
    }
}

export!(Plugin);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_and_sampler_compiled_outside_the_repository_run_unchanged() {
    let outside = tempfile::tempdir().unwrap();
    let handler = build_outside(outside.path(), "outside-handler", None);
    let sampler = build_outside(outside.path(), "outside-sampler", Some(OUTSIDE_SAMPLER));
    for (file, world) in [(&handler, "handler"), (&sampler, "sampler")] {
        let out = Command::new(BIN)
            .args(["plugin", "check"])
            .arg(file)
            .output()
            .expect("plugin check");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(&format!("world:   {world}")), "{text}");
    }
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(&handler, plugins.path().join("outside-handler.wasm")).unwrap();
    std::fs::copy(&sampler, plugins.path().join("outside-sampler.wasm")).unwrap();
    let mut d = daemon_with(plugins.path(), "").await;
    ok_answers(
        &d.send(&[
            r#"{"type":"noise","data":1}"#,
            r#"{"type":"signal","data":2}"#,
            r#"{"type":"signal","data":3}"#,
        ])
        .await,
    );
    d.wait_metric(
        "outrigger_plugin_counter_total",
        "name=\"events\",plugin=\"outside-handler\"",
        2.0,
    )
    .await;
    assert!(d.stop().success());
    let events = d.events();
    assert!(of_type(&events, "noise").is_empty(), "{events:?}");
    assert_eq!(of_type(&events, "signal").len(), 2);
}

#[test]
fn plugin_check_names_the_world_or_the_mismatch() {
    let out = Command::new(BIN)
        .args(["plugin", "check"])
        .arg(dist().join("drop-debug.wasm"))
        .output()
        .expect("plugin check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "world:   sampler",
        "exports: init, sample",
        "outrigger:plugin/",
        "compile:",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").unwrap();
    let out = Command::new(BIN)
        .args(["plugin", "check"])
        .arg(&bogus)
        .output()
        .expect("plugin check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not a loadable WebAssembly component"),
        "{text}"
    );
}

#[test]
fn replay_prints_resulting_events_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        concat!(
            r#"{"type":"login","data":{"password":"p","user":"u"}}"#,
            "\n",
            r#"{"type":"debug","data":{}}"#,
            "\n",
            "not json\n",
            r#"{"method":"call_start","payload":{"token":"t"}}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("replay")
        .arg(&events)
        .arg("--plugin")
        .arg(dist().join("redact.wasm"))
        .arg("--plugin")
        .arg(dist().join("drop-debug.wasm"))
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .output()
        .expect("replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["type"], "login");
    assert_eq!(lines[0]["data"]["password"], "***");
    assert_eq!(lines[1]["type"], "call_start");
    assert_eq!(lines[1]["data"]["token"], "***");
    assert!(
        stderr.contains("3 events in, 2 out (1 lines skipped)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("drop-debug: calls=1 kept=2 dropped=1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("redact: calls=1 kept=2 dropped=0 replaced=2"),
        "{stderr}"
    );
}

/// `timeout_per_event`: a call's wall-clock bound grows with its batch, so a plugin whose cost
/// is per event passes a large batch that a flat `timeout` would fail; with the per-event part
/// off, the batch times out, is retried in halves, and (the halves too slow as well) counts one
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_bound_scales_with_the_batch() {
    for (per_event, passes) in [("5ms", true), ("0ms", false)] {
        let plugins = tempfile::tempdir().unwrap();
        install(plugins.path(), &[("fixtures/misbehave.wasm", "slow")]);
        std::fs::write(
            plugins.path().join("slow.yml"),
            "mode: busy\nms_per_event: 2\n",
        )
        .unwrap();
        let d = daemon_with(
            plugins.path(),
            &format!(
                "plugins: {{defaults: {{timeout: 20ms, timeout_per_event: {per_event}, quarantine_after: 100}}}}"
            ),
        )
        .await;
        let mut body = String::new();
        for i in 0..30 {
            body.push_str(&format!(r#"{{"type":"job","data":{{"i":{i}}}}}"#));
            body.push('\n');
        }
        d.send_noack(body.as_bytes()).await;
        let ok = eventually(Duration::from_secs(20), async || d.events().len() >= 30).await;
        assert!(ok, "{} events; log:\n{}", d.events().len(), d.log_text());
        let events = d.events();
        let tagged = events
            .iter()
            .filter(|e| e["attributes"]["seen_by"] == "misbehave")
            .count();
        let timeouts = d
            .metric(
                "outrigger_plugin_errors_total",
                "kind=\"timeout\",plugin=\"slow\"",
            )
            .await;
        if passes {
            assert_eq!(timeouts, 0.0, "timeout_per_event {per_event}");
            assert_eq!(tagged, 30, "every event handled");
        } else {
            assert!(timeouts >= 1.0, "timeout_per_event {per_event}");
            assert!(
                d.metric(
                    "outrigger_plugin_split_retries_total",
                    "plugin=\"slow\",result=\"failed\""
                )
                .await
                    >= 1.0
            );
            assert_eq!(
                events.len(),
                30,
                "on_error pass: the batch goes on unchanged"
            );
        }
    }
}
