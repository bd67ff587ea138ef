//! Who may write events, end to end: the HTTP ingest key (401 without it or with a wrong one,
//! 202 with it; `outrigger bench --http` sends it), the refusal of a non-loopback `ingest.http` without a key by `run` and `check`,
//! the socket file's mode and group (and a missing group or a bad mode refused at start), and a
//! socket client that sends everything before it reads a single answer.

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
    let status = d.exit_status(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "{}", d.log_text());
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

/// A group this process may give a file, other than its own when it can: (name, gid).
fn a_group_to_give() -> (String, u32) {
    // SAFETY: plain libc queries; getgrgid's result is read before any other call.
    unsafe {
        let egid = libc::getegid();
        let mut gid = egid;
        if libc::geteuid() == 0 {
            gid = 1;
        } else {
            let mut groups = [0 as libc::gid_t; 64];
            let n = libc::getgroups(groups.len() as i32, groups.as_mut_ptr());
            if let Some(g) = groups[..n.max(0) as usize].iter().find(|g| **g != egid) {
                gid = *g;
            }
        }
        let g = libc::getgrgid(gid);
        let name = if g.is_null() {
            gid.to_string()
        } else {
            std::ffi::CStr::from_ptr((*g).gr_name)
                .to_string_lossy()
                .into_owned()
        };
        (name, gid)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_has_the_configured_mode_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |d: &Daemon| std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o7777;

    // The default: the daemon's user only.
    let mut d = Daemon::start("").await;
    assert_eq!(mode(&d), 0o600);
    assert!(d.stop().success());

    // An unquoted 0660 (a string to this YAML parser) and a group by name.
    let (name, gid) = a_group_to_give();
    let mut d = Daemon::start(&format!(
        "ingest: {{socket_mode: 0660, socket_group: \"{name}\"}}"
    ))
    .await;
    assert_eq!(mode(&d), 0o660, "{}", d.log_text());
    assert_eq!(std::fs::metadata(&d.socket).unwrap().gid(), gid);
    assert_eq!(d.send(&[r#"{"type":"t"}"#]).await[0], r#"{"success":true}"#);
    assert!(d.stop().success());

    // An integer mode and a numeric gid.
    let mut d = Daemon::start(&format!(
        "ingest: {{socket_mode: 640, socket_group: {gid}}}"
    ))
    .await;
    assert_eq!(mode(&d), 0o640);
    assert_eq!(std::fs::metadata(&d.socket).unwrap().gid(), gid);
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_socket_group_or_a_bad_mode_stops_the_start() {
    let mut d =
        Daemon::spawn("ingest: {socket_mode: \"0660\", socket_group: outrigger-no-such-group}");
    let status = d.exit_status(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
    let log = d.log_text();
    assert!(
        log.contains("outrigger-no-such-group") && log.contains("does not exist"),
        "{log}"
    );
    assert!(!d.socket.exists(), "no socket is left behind");

    // A mode that locks out the owner is refused by `check`, naming the key.
    let text = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace("'0660'", "'0440'");
    std::fs::write(&d.config, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&d.config)
        .current_dir(d.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ingest.socket_mode") && err.contains("0600"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_over_http_sends_the_ingest_key() {
    let d = Daemon::start(&format!("ingest: {{api_key: {KEY}}}")).await;
    let bench = |dir: &std::path::Path, key: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(["bench", "-n", "200", "--batch", "100", "--http"])
            .arg(d.http.to_string())
            .arg("--control")
            .arg(d.control.to_string())
            .current_dir(dir)
            .env_remove("OUTRIGGER_CONFIG")
            .env_remove("OUTRIGGER_API_KEY")
            .env_remove("OUTRIGGER_INGEST_KEY");
        if let Some(k) = key {
            c.args(["--ingest-key", k]);
        }
        c.output().unwrap()
    };
    let elsewhere = tempfile::tempdir().unwrap();
    let out = bench(elsewhere.path(), None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("--ingest-key"), "{err}");
    let out = bench(elsewhere.path(), Some(KEY));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon's own config (./outrigger.yml) gives the key too.
    let out = bench(d.dir.path(), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_metric("outrigger_events_received_total", r#"ingest="http""#, 400.0)
        .await;
}

// A client that writes every line before it reads any answer: the daemon keeps reading while
// the answers wait (before, both sides blocked in their writes once about 20 000 unread
// answers filled the socket, and the client's write timed out here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_everything_before_reading_gets_every_answer() {
    use std::io::{Read, Write};
    const LINES: usize = 200_000;
    let d = Daemon::start("").await;
    let socket = d.socket.clone();
    let (answers, bad) = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut body = Vec::new();
        for i in 0..LINES {
            body.extend_from_slice(
                format!("{{\"type\":\"bulk\",\"data\":{{\"n\":{i}}}}}\n").as_bytes(),
            );
            if i == LINES / 2 {
                body.extend_from_slice(b"not json\n");
            }
        }
        s.write_all(&body).expect("the daemon stopped reading");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let ok = text.lines().filter(|l| *l == r#"{"success":true}"#).count();
        let bad = text
            .lines()
            .filter(|l| l.contains(r#""success":false"#))
            .count();
        (ok, bad)
    })
    .await
    .unwrap();
    assert_eq!((answers, bad), (LINES, 1));
    d.wait_metric(
        "outrigger_events_received_total",
        r#"ingest="socket""#,
        LINES as f64,
    )
    .await;
}
