//! Who may write events, end to end: the HTTP ingest key (401 without it or with a wrong one,
//! 202 with it), the refusal of a non-loopback `ingest.http` without a key by `run` and `check`,
//! and the socket file's mode and group.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{BIN, Daemon, eventually, free_port};

const KEY: &str = "ingest-s3cret";

/// `POST /v1/events` with an optional bearer key: status and JSON body.
async fn post_event(d: &Daemon, key: Option<&str>, kind: &str) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("http://{}/v1/events", d.http))
        .json(&json!({"type": kind}));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await.expect("POST /v1/events");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_needs_the_key_when_one_is_set() {
    let mut d = Daemon::start(&format!("ingest: {{api_key: {KEY}}}")).await;
    let (status, v) = post_event(&d, None, "no_key").await;
    assert_eq!(status, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("ingest.api_key"),
        "{v}"
    );
    let (status, v) = post_event(&d, Some("ingest-s3cre"), "wrong_key").await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = post_event(&d, Some(&format!("{KEY}x")), "wrong_key").await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = post_event(&d, Some(KEY), "with_key").await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["accepted"], 1, "{v}");
    // The socket is guarded by its mode, not the key.
    assert_eq!(
        d.send(&[r#"{"type":"on_socket"}"#]).await[0],
        r#"{"success":true}"#
    );
    let arrived = eventually(Duration::from_secs(30), async || d.events().len() >= 2).await;
    assert!(arrived, "events never reached the sink");
    assert_eq!(
        d.metric("outrigger_events_received_total", r#"ingest="http""#)
            .await,
        1.0,
        "refused requests are not counted as received"
    );
    assert!(d.stop().success());
    let kinds: Vec<Value> = d.events().iter().map(|e| e["type"].clone()).collect();
    assert_eq!(kinds.len(), 2, "only the authorised events: {kinds:?}");
    assert!(kinds.contains(&json!("with_key")) && kinds.contains(&json!("on_socket")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_ingest_listener_without_a_key_is_refused() {
    let port = free_port().port();
    let mut d = Daemon::spawn(&format!("ingest: {{http: \"0.0.0.0:{port}\"}}"));
    let mut child = d.child.take().unwrap();
    let mut status = None;
    let done = eventually(Duration::from_secs(30), async || {
        status = child.try_wait().unwrap();
        status.is_some()
    })
    .await;
    if !done {
        let _ = child.kill();
    }
    assert!(done, "the daemon kept running; log:\n{}", d.log_text());
    assert_eq!(status.unwrap().code(), Some(1), "{}", d.log_text());
    let log = d.log_text();
    assert!(
        log.contains("ingest.http")
            && log.contains("not loopback")
            && log.contains("ingest.api_key"),
        "{log}"
    );
    let check = |key: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(["check", "-c"])
            .arg(&d.config)
            .current_dir(d.dir.path())
            .env_remove("OUTRIGGER_API_KEY")
            .env_remove("OUTRIGGER_INGEST_KEY");
        if let Some(k) = key {
            c.env("OUTRIGGER_INGEST_KEY", k);
        }
        c.output().unwrap()
    };
    let out = check(None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ingest.api_key") && err.contains("OUTRIGGER_INGEST_KEY"),
        "{err}"
    );
    // The key from the environment is enough.
    let out = check(Some(KEY));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
