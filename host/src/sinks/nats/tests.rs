//! Unit tests of the `nats` sink that need no server: config checks and the message payloads.
//! The end-to-end tests (tests/e2e/nats.rs) run it against real `nats-server` clusters.

use super::*;
use crate::config::{Config, SinkConfig, parse, validate};
use crate::event::{Line, parse_owned};

fn nats(text: &str) -> Result<NatsSinkConfig, String> {
    let cfg: Config = parse(&format!("sinks:\n  - {text}\n")).map_err(|e| e.to_string())?;
    validate(&cfg).map_err(|e| e.to_string())?;
    match cfg.sinks.into_iter().next() {
        Some(SinkConfig::Nats(n)) => Ok(n),
        _ => unreachable!(),
    }
}

#[test]
fn defaults_follow_the_spec_example() {
    let n = nats(r#"{type: nats, url: "nats://127.0.0.1:4222"}"#).unwrap();
    assert_eq!(n.subject, "outrigger.events.{type}");
    assert!(n.jetstream);
    assert_eq!(n.stream, "OUTRIGGER");
    assert!(n.create_stream);
    assert_eq!(n.replicas, 1);
    assert!(n.credentials.is_none());
    assert_eq!(n.max_inflight, 4096);
    assert_eq!(n.duplicate_window.0, Duration::from_secs(120));
    assert_eq!(n.storage, NatsStorage::File);
}

#[test]
fn the_spec_example_is_valid() {
    let n = nats(
        r#"{type: nats, url: "nats://127.0.0.1:4222", subject: "outrigger.events.{type}",
     jetstream: true, stream: OUTRIGGER, create_stream: true, replicas: 1,
     credentials: null, max_inflight: 4096}"#,
    )
    .unwrap();
    assert_eq!(n.stream, "OUTRIGGER");
    let servers = servers("nats://a:4222, nats://b:4223,tls://c:4224").unwrap();
    assert_eq!(servers.len(), 3);
}

#[test]
fn config_errors_name_the_key() {
    for (sink, key, why) in [
        (
            r#"{type: nats, url: "http://x:4222"}"#,
            "sinks[0].url",
            "nats://",
        ),
        (
            r#"{type: nats, url: "nats://a:1,,nats://b:2"}"#,
            "sinks[0].url",
            "empty server",
        ),
        (
            r#"{type: nats, url: "nats://a:1", subject: "a..b"}"#,
            "sinks[0].subject",
            "empty token",
        ),
        (
            r#"{type: nats, url: "nats://a:1", subject: "a.>"}"#,
            "sinks[0].subject",
            "wildcards",
        ),
        (
            r#"{type: nats, url: "nats://a:1", subject: "a.{kind}"}"#,
            "sinks[0].subject",
            "{kind}",
        ),
        (
            r#"{type: nats, url: "nats://a:1", stream: "a.b"}"#,
            "sinks[0].stream",
            "not a stream name",
        ),
        (
            r#"{type: nats, url: "nats://a:1", stream: ""}"#,
            "sinks[0].stream",
            "not a stream name",
        ),
        (
            r#"{type: nats, url: "nats://a:1", replicas: 0}"#,
            "sinks[0].replicas",
            "1 to 5",
        ),
        (
            r#"{type: nats, url: "nats://a:1", replicas: 7}"#,
            "sinks[0].replicas",
            "1 to 5",
        ),
        (
            r#"{type: nats, url: "nats://a:1", max_inflight: 0}"#,
            "sinks[0].max_inflight",
            "at least 1",
        ),
        (
            r#"{type: nats, url: "nats://a:1", timeout: 0s}"#,
            "sinks[0].timeout",
            "more than 0",
        ),
        (
            r#"{type: nats, url: "nats://a:1", duplicate_window: 0s}"#,
            "sinks[0].duplicate_window",
            "more than 0",
        ),
        // Serde reports these at the sink (internally tagged enums lose the inner path).
        (
            r#"{type: nats, url: "nats://a:1", storage: disk}"#,
            "sinks[0]",
            "unknown variant `disk`",
        ),
        (
            r#"{type: nats, url: "nats://a:1", acks: true}"#,
            "sinks[0]",
            "unknown field `acks`",
        ),
    ] {
        let e = nats(sink).unwrap_err();
        assert!(e.contains(key) && e.contains(why), "{sink}: {e}");
    }
    // Core NATS has no stream: its keys are not checked.
    nats(r#"{type: nats, url: "nats://a:1", jetstream: false, stream: "a.b", replicas: 0}"#)
        .unwrap();
}

#[test]
fn a_missing_or_bad_credentials_file_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let m = Arc::new(Metrics::new());
    let mut cfg = nats(r#"{type: nats, url: "nats://a:1"}"#).unwrap();
    cfg.credentials = Some(dir.path().join("none.creds"));
    let e = NatsSink::new(&cfg, "nats", m.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("credentials") && e.contains("none.creds"), "{e}");
    let bad = dir.path().join("bad.creds");
    std::fs::write(&bad, "not a creds file").unwrap();
    cfg.credentials = Some(bad);
    let e = NatsSink::new(&cfg, "nats", m).err().unwrap().to_string();
    assert!(e.contains("not a NATS .creds file"), "{e}");
}

#[test]
fn payloads_are_native_lines_without_the_newline_and_keep_the_id() {
    let mut events: Vec<Event> = [
        r#"{"type":"a.b","data":{"x":1}}"#,
        r#"{"type":"c","data":[2]}"#,
    ]
    .iter()
    .map(|l| match parse_owned(l.as_bytes(), 1024) {
        Ok(Line::Event(e)) => e,
        _ => unreachable!(),
    })
    .collect();
    crate::event::assign_ids(&mut events);
    let p = encode(&events);
    assert_eq!(p.len(), 2);
    for (e, p) in events.iter().zip(&p) {
        assert!(!p.ends_with(b"\n"));
        let v: serde_json::Value = serde_json::from_slice(p).unwrap();
        assert_eq!(v["id"], crate::event::format_id(e.id));
        assert_eq!(v["type"], &*e.kind);
    }
    let v: serde_json::Value = serde_json::from_slice(&p[1]).unwrap();
    assert_eq!(v["data"], serde_json::json!([2]));
}

#[test]
fn the_created_stream_takes_the_subjects_with_the_configured_limits() {
    let cfg = nats(
        r#"{type: nats, url: "nats://a:1", stream: EV, replicas: 3, storage: memory, max_age: 1h, max_bytes: 1GiB, duplicate_window: 5m}"#,
    )
    .unwrap();
    let s = NatsSink::new(&cfg, "nats", Arc::new(Metrics::new())).unwrap();
    let c = s.stream_config();
    assert_eq!(c.name, "EV");
    assert_eq!(c.subjects, ["outrigger.events.*"]);
    assert_eq!(c.num_replicas, 3);
    assert_eq!(c.storage, stream::StorageType::Memory);
    assert_eq!(c.max_age, Duration::from_secs(3600));
    assert_eq!(c.max_bytes, 1 << 30);
    assert_eq!(c.duplicate_window, Duration::from_secs(300));
}

#[tokio::test]
async fn a_server_that_is_down_fails_the_attempt_as_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = nats(&format!(
        r#"{{type: nats, url: "nats://127.0.0.1:{port}", timeout: 1s}}"#
    ))
    .unwrap();
    let mut s = NatsSink::new(&cfg, "nats", Arc::new(Metrics::new())).unwrap();
    let batch = Batch {
        events: vec![],
        upto: 1,
        floor: 0,
    };
    match s.send(&batch).await {
        Err(SinkError::Retryable(e)) => assert!(e.contains("cannot connect"), "{e}"),
        other => panic!("{other:?}"),
    }
    let e = check(&cfg, "nats").await.unwrap_err().to_string();
    assert!(
        e.contains("cannot connect") || e.contains("no NATS server"),
        "{e}"
    );
}

fn reply(payload: &str, status: Option<async_nats::StatusCode>) -> async_nats::Message {
    async_nats::Message {
        subject: "_INBOX.x.1.0".into(),
        reply: None,
        payload: Bytes::from(payload.to_string()),
        headers: None,
        status,
        description: None,
        length: payload.len(),
    }
}

#[test]
fn acknowledgements_are_read_as_the_server_sends_them() {
    assert_eq!(
        read_ack(&reply(r#"{"stream":"EV","seq":7}"#, None)),
        Ack::Stored { duplicate: false }
    );
    assert_eq!(
        read_ack(&reply(
            r#"{"stream":"EV","domain":"d","seq":7,"duplicate":true}"#,
            None
        )),
        Ack::Stored { duplicate: true }
    );
    assert_eq!(
        read_ack(&reply("", Some(async_nats::StatusCode::NO_RESPONDERS))),
        Ack::NoStream
    );
    assert_eq!(
        read_ack(&reply(
            r#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
            None
        )),
        Ack::NoStream
    );
    match read_ack(&reply(
        r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        None,
    )) {
        Ack::Refused(why) => assert_eq!(why, "maximum messages exceeded"),
        other => panic!("{other:?}"),
    }
    for junk in ["", "{}", "not json", r#"{"seq":1}"#] {
        assert!(
            matches!(read_ack(&reply(junk, None)), Ack::Refused(_)),
            "{junk}"
        );
    }
}
