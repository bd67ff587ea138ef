//! Shadow runs in the running daemon: `NAME.shadow.wasm` beside `NAME.wasm` runs on the same
//! batches with no effect, its differing verdicts are shown in `/v1/plugins` and counted,
//! `POST /v1/plugins/{name}/promote` (and `outrigger plugin promote`) swaps it in with every
//! event handled once by one version or the other, and a shadow that spins is stopped and
//! quarantined (by fuel or its timeout) while the live plugin goes on. Plus `outrigger replay --against`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, Daemon, eventually};
use crate::wasm::{dist, install};

/// A plugins dir with `emitter` live (keeps its triggers) and, as its shadow, `shadow_src`
/// configured by `shadow_yml`.
fn emitter_with_shadow(dir: &Path, shadow_src: &str, shadow_yml: &str) {
    install(dir, &[("fixtures/emitter.wasm", "emitter")]);
    std::fs::write(dir.join("emitter.yml"), "drop_trigger: false\n").unwrap();
    std::fs::copy(dist().join(shadow_src), dir.join("emitter.shadow.wasm")).unwrap();
    std::fs::write(dir.join("emitter.shadow.yml"), shadow_yml).unwrap();
}

/// A daemon on `plugins`, with `more` added to the `plugins` map (`, key: value`).
async fn start(plugins: &Path, more: &str) -> Daemon {
    Daemon::start(&format!(
        "plugins: {{dir: \"{}\"{more}}}",
        plugins.display()
    ))
    .await
}

fn emitter_status(v: &Value) -> Value {
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "emitter")
        .cloned()
        .unwrap_or(Value::Null)
}

fn lines(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            let kind = if i % 4 == 0 { "trigger" } else { "step" };
            format!(r#"{{"type":"{kind}","ts_ns":{i},"data":{{"seq":{i}}}}}"#)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_runs_on_the_same_batches_and_only_its_differences_are_shown() {
    let plugins = tempfile::tempdir().unwrap();
    emitter_with_shadow(
        plugins.path(),
        "fixtures/emitter.wasm",
        "drop_trigger: true\n",
    );
    let mut d = start(plugins.path(), "").await;
    let sent = lines(0, 40);
    let refs: Vec<&str> = sent.iter().map(String::as_str).collect();
    for a in d.send(&refs).await {
        assert_eq!(a, r#"{"success":true}"#);
    }
    d.wait_metric(
        "outrigger_plugin_shadow_diffs_total",
        "plugin=\"emitter\"",
        10.0,
    )
    .await;
    let ok = eventually(Duration::from_secs(10), async || d.events().len() >= 50).await;
    assert!(ok, "events: {}", d.events().len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = d.events();
    // The live version's output only: every event kept, one derived per trigger (the
    // shadow's drops and its own derived events went nowhere).
    assert_eq!(events.len(), 50, "{events:?}");
    assert_eq!(events.iter().filter(|e| e["type"] == "trigger").count(), 10);
    assert_eq!(events.iter().filter(|e| e["type"] == "derived").count(), 10);
    assert_eq!(
        d.metric("outrigger_events_dropped_total", "reason=\"plugin\"")
            .await,
        0.0
    );
    let st = emitter_status(&d.get_json("/v1/plugins").await);
    let sh = &st["shadow"];
    assert_eq!(sh["name"], "emitter.shadow", "{st}");
    assert_eq!(sh["state"], "active");
    let c = &sh["comparison"];
    assert_eq!(c["events"], 40, "{c}");
    assert_eq!(c["differing"], 10, "{c}");
    assert_eq!(c["errors"], 0);
    assert_eq!(c["emitted_live"], c["emitted_shadow"]);
    assert!(c["batches"].as_u64().unwrap() >= 1);
    assert!(c["shadow_us_per_event"].as_f64().unwrap() > 0.0);
    let ex = c["examples"].as_array().unwrap();
    assert!(!ex.is_empty() && ex.len() <= 5, "{c}");
    for e in ex {
        assert_eq!(e["type"], "trigger");
        assert_eq!(e["live"], "keep");
        assert_eq!(e["shadow"], "drop");
    }
    assert_eq!(
        d.metric("outrigger_plugin_shadow_diffs_total", "plugin=\"emitter\"")
            .await,
        10.0
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_swaps_versions_at_a_batch_boundary_and_every_event_is_counted_once() {
    let plugins = tempfile::tempdir().unwrap();
    emitter_with_shadow(
        plugins.path(),
        "fixtures/emitter.wasm",
        "drop_trigger: true\n",
    );
    let mut d = start(plugins.path(), "").await;
    // Refused: no such plugin, or no shadow.
    let (status, _) = d
        .send_json("POST", "/v1/plugins/nope/promote", Value::Null)
        .await;
    assert_eq!(status, 404);

    let total = 4000usize;
    let sender = {
        let socket = d.socket.clone();
        tokio::spawn(async move {
            let mut body = String::new();
            for l in lines(0, total) {
                body.push_str(&l);
                body.push('\n');
            }
            // Acked lines over one connection, a chunk at a time, so the promotion lands
            // somewhere in the middle.
            let s = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut rd = tokio::io::BufReader::new(rd);
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let all: Vec<&str> = body.lines().collect();
            let mut ok = 0;
            for chunk in all.chunks(100) {
                let mut b = chunk.join("\n");
                b.push('\n');
                wr.write_all(b.as_bytes()).await.unwrap();
                for _ in chunk {
                    let mut a = String::new();
                    rd.read_line(&mut a).await.unwrap();
                    ok += (a.trim() == r#"{"success":true}"#) as usize;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ok
        })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    let out = Command::new(BIN)
        .args(["plugin", "promote", "emitter", "--addr"])
        .arg(d.control.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("emitter.wasm.prev"));
    assert_eq!(sender.await.unwrap(), total, "every line acknowledged");

    // Wait until everything is delivered or counted.
    let triggers = total / 4;
    let ok = eventually(Duration::from_secs(20), async || {
        let dropped = d
            .metric("outrigger_events_dropped_total", "reason=\"plugin\"")
            .await as usize;
        let ev = d.events();
        let derived = ev.iter().filter(|e| e["type"] == "derived").count();
        ev.len() - derived + dropped == total && derived == triggers
    })
    .await;
    let events = d.events();
    let dropped = d
        .metric("outrigger_events_dropped_total", "reason=\"plugin\"")
        .await as usize;
    assert!(ok, "{} events, {dropped} dropped", events.len());
    // Each input once: steps all delivered; each trigger either kept (old version) or
    // dropped (new version), never both, and derived once by whichever handled it.
    let mut seen = vec![0u32; total];
    for e in events.iter().filter(|e| e["type"] != "derived") {
        seen[e["data"]["seq"].as_u64().unwrap() as usize] += 1;
    }
    let kept_triggers = (0..total).filter(|i| i % 4 == 0 && seen[*i] == 1).count();
    assert!((0..total).all(|i| seen[i] <= 1), "an event delivered twice");
    assert!(
        (0..total).filter(|i| i % 4 != 0).all(|i| seen[i] == 1),
        "a step lost"
    );
    assert_eq!(kept_triggers + dropped, triggers);
    assert!(
        kept_triggers > 0,
        "the old version handled the first events"
    );
    assert!(dropped > 0, "the new version handled the last events");
    // The switch happened once: kept triggers all come before dropped ones.
    let last_kept = (0..total)
        .rev()
        .find(|i| i % 4 == 0 && seen[*i] == 1)
        .unwrap();
    let first_dropped = (0..total).find(|i| i % 4 == 0 && seen[*i] == 0).unwrap();
    assert!(last_kept < first_dropped, "{last_kept} >= {first_dropped}");

    // The files moved; the shadow is gone from /v1/plugins.
    assert!(plugins.path().join("emitter.wasm.prev").is_file());
    assert!(!plugins.path().join("emitter.shadow.wasm").exists());
    assert_eq!(
        std::fs::read_to_string(plugins.path().join("emitter.yml")).unwrap(),
        "drop_trigger: true\n"
    );
    let st = emitter_status(&d.get_json("/v1/plugins").await);
    assert!(st["shadow"].is_null(), "{st}");
    let (status, v) = d
        .send_json("POST", "/v1/plugins/emitter/promote", Value::Null)
        .await;
    assert_eq!(status, 404, "{v}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_spins_is_stopped_and_quarantined_while_the_live_one_runs() {
    let plugins = tempfile::tempdir().unwrap();
    emitter_with_shadow(plugins.path(), "fixtures/misbehave.wasm", "mode: spin\n");
    let mut d = start(
        plugins.path(),
        ", defaults: {timeout: 100ms, quarantine_after: 2, quarantine_initial: 60s}",
    )
    .await;
    for round in 0..4 {
        let sent = lines(round * 8, 8);
        let refs: Vec<&str> = sent.iter().map(String::as_str).collect();
        d.send(&refs).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    d.wait_metric(
        "outrigger_plugin_errors_total",
        "plugin=\"emitter.shadow\"",
        2.0,
    )
    .await;
    let ok = eventually(Duration::from_secs(10), async || d.events().len() >= 40).await;
    assert!(ok, "{} events", d.events().len());
    let events = d.events();
    assert_eq!(
        events.len(),
        40,
        "32 events and 8 derived, all from the live plugin"
    );
    let st = emitter_status(&d.get_json("/v1/plugins").await);
    assert_eq!(st["state"], "active", "{st}");
    assert_eq!(st["errors"], 0, "{st}");
    let sh = &st["shadow"];
    assert_eq!(sh["state"], "quarantined", "{st}");
    assert!(sh["comparison"]["errors"].as_u64().unwrap() >= 2, "{st}");
    assert!(sh["comparison"]["skipped"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(
        d.metric("outrigger_events_dropped_total", "").await,
        0.0,
        "nothing lost"
    );
    d.stop();
}

#[test]
fn replay_against_prints_the_comparison_offline() {
    let corpus = crate::wasm::root().join("tests/e2e/data/redact-corpus.ndjson");
    let out = Command::new(BIN)
        .arg("replay")
        .arg("--plugin")
        .arg(dist().join("redact.wasm"))
        .arg("--against")
        .arg(dist().join("fixtures/misbehave.wasm"))
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // misbehave (mode ok) tags every event: every verdict differs from redact's.
    let n = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert!(
        err.contains(&format!("{n} events, {n} verdicts differ")),
        "{err}"
    );
    assert!(err.contains("cost per event"), "{err}");
    // The events written are the live plugin's.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("seen_by"), "{stdout}");
    assert!(stdout.contains(r#""password":"***""#));
    // A shadow of the other kind is refused with the reason.
    let out = Command::new(BIN)
        .arg("replay")
        .arg("--plugin")
        .arg(dist().join("redact.wasm"))
        .arg("--against")
        .arg(dist().join("drop-debug.wasm"))
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("same kind of plugin"));
}
