//! The `nats` sink against real `nats-server` JetStream clusters (Debian's package; `.ci/run`
//! installs it): a stream leader killed mid-stream and started again, the whole cluster gone
//! and back, `outrigger check`, and core NATS. A consumer in the test reads the stream back
//! and checks every event is there exactly once.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    BIN, Daemon, NatsCluster, eventually, metric_value, nats_server_available, read_stream,
};

/// A daemon whose only sink is a nats sink on `cluster` with the stream `EV`.
async fn daemon(cluster: &NatsCluster, replicas: usize) -> Daemon {
    Daemon::start(&format!(
        r#"
queue: {{capacity: 300000}}
batch: {{max_events: 1000, interval: 20ms}}
sinks:
  - {{type: nats, url: "{urls}", subject: "outrigger.ev.{{type}}", stream: EV, replicas: {replicas}, timeout: 2s}}
"#,
        urls = cluster.urls()
    ))
    .await
}

/// NDJSON for events `range` (their `data` is the number), types alternating so the subject
/// mapping is exercised (`a.b` becomes the token `a_b`).
fn lines(range: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in range {
        let kind = if i % 2 == 0 { "a.b" } else { "plain" };
        out.extend_from_slice(format!(r#"{{"type":"{kind}","data":{i}}}"#).as_bytes());
        out.push(b'\n');
    }
    out
}

/// Checks that the stream holds events 0..n exactly once each (ids unique, id header = id in
/// the payload); with `ordered`, also in order.
fn assert_exactly_once(got: &[(String, Value)], n: u64, ordered: bool) {
    let mut seen = HashSet::new();
    let mut ids = HashSet::new();
    for (hdr, v) in got {
        let i = v["data"].as_u64().expect("data is the number");
        assert!(seen.insert(i), "event {i} is in the stream twice");
        let id = v["id"].as_str().expect("id");
        assert_eq!(hdr, id, "Nats-Msg-Id is the event id");
        assert!(ids.insert(id.to_string()), "id {id} twice");
        let want = if i % 2 == 0 { "a.b" } else { "plain" };
        assert_eq!(v["type"], want);
    }
    let missing: Vec<u64> = (0..n).filter(|i| !seen.contains(i)).take(10).collect();
    assert!(missing.is_empty(), "missing events, first: {missing:?}");
    assert_eq!(got.len() as u64, n);
    if ordered {
        let data: Vec<u64> = got
            .iter()
            .map(|(_, v)| v["data"].as_u64().unwrap())
            .collect();
        if let Some(at) = data.windows(2).position(|w| w[0] > w[1]) {
            let from = at.saturating_sub(3);
            panic!(
                "out of order at stream position {at}: {:?}",
                &data[from..(at + 5).min(data.len())]
            );
        }
    }
}

async fn stream_leader(js: &async_nats::jetstream::Context) -> Option<String> {
    let mut s = js.get_stream("EV").await.ok()?;
    let info = s.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

// 200k events through a 3-node cluster, stream of 3 replicas; the stream leader is killed while
// they flow and started again later. The stream holds each event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_leader_killed_mid_stream_costs_no_event_and_no_duplicate() {
    if !nats_server_available() {
        return;
    }
    const N: u64 = 200_000;
    let mut cluster = NatsCluster::start(3);
    let js = cluster.jetstream().await;
    let d = daemon(&cluster, 3).await;
    let chunk = 10_000;
    let mut killed: Option<usize> = None;
    for start in (0..N).step_by(chunk) {
        d.send_noack(&lines(start..start + chunk as u64)).await;
        if start == 50_000 {
            // Some have landed; now take the stream's leader away.
            d.wait_metric(
                "outrigger_events_delivered_total",
                r#"sink="nats""#,
                20_000.0,
            )
            .await;
            let leader = stream_leader(&js).await.expect("the stream has a leader");
            let i = cluster.index_of(&leader);
            cluster.nodes[i].kill();
            killed = Some(i);
            eprintln!("killed stream leader {leader}");
        }
        if start == 120_000 {
            let i = killed.expect("a node was killed");
            cluster.nodes[i].start();
            eprintln!("restarted {}", cluster.nodes[i].name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = eventually(Duration::from_secs(180), async || {
        d.metric("outrigger_events_delivered_total", r#"sink="nats""#)
            .await
            >= N as f64
    })
    .await;
    assert!(
        delivered,
        "not everything delivered; log:\n{}",
        d.log_text()
    );
    assert_eq!(d.metric("outrigger_events_dropped_total", "").await, 0.0);
    let retried = d
        .metric("outrigger_sink_batches_total", r#"result="retry""#)
        .await;
    eprintln!(
        "retried batches: {retried}, duplicates answered: {}",
        d.metric("outrigger_nats_publishes_total", r#"result="duplicate""#)
            .await
    );
    let js = cluster.jetstream().await;
    let got = read_stream(&js, "EV", N as usize, Duration::from_secs(120)).await;
    assert_exactly_once(&got, N, false);
    // The subjects carry the mapped type.
    let mut s = js.get_stream("EV").await.unwrap();
    assert_eq!(s.info().await.unwrap().config.subjects, ["outrigger.ev.*"]);
    assert_eq!(s.info().await.unwrap().config.num_replicas, 3);
}

// The whole cluster goes away: the sink spools, the pipeline keeps taking events, and when
// the cluster is back everything arrives, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_whole_cluster_down_the_sink_spools_and_delivers_in_order_when_it_returns() {
    if !nats_server_available() {
        return;
    }
    let mut cluster = NatsCluster::start(3);
    cluster.jetstream().await;
    let d = daemon(&cluster, 3).await;
    d.send_noack(&lines(0..5_000)).await;
    d.wait_metric(
        "outrigger_events_delivered_total",
        r#"sink="nats""#,
        5_000.0,
    )
    .await;
    for n in &mut cluster.nodes {
        n.kill();
    }
    d.send_noack(&lines(5_000..15_000)).await;
    // Spooled, not held up: the pipeline took every event and the spool has them.
    d.wait_metric("outrigger_spool_bytes", r#"sink="nats""#, 1.0)
        .await;
    assert!(
        d.metric("outrigger_events_delivered_total", r#"sink="nats""#)
            .await
            < 15_000.0
    );
    d.send_noack(&lines(15_000..20_000)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in &mut cluster.nodes {
        n.start();
    }
    let delivered = eventually(Duration::from_secs(120), async || {
        d.metric("outrigger_events_delivered_total", r#"sink="nats""#)
            .await
            >= 20_000.0
    })
    .await;
    assert!(
        delivered,
        "not delivered after the cluster returned; log:\n{}",
        d.log_text()
    );
    // The spool file of the last batch goes after its ack is counted: the gauge follows.
    let emptied = eventually(Duration::from_secs(10), async || {
        d.metric("outrigger_spool_bytes", r#"sink="nats""#).await == 0.0
    })
    .await;
    assert!(
        emptied,
        "spool not emptied after delivery: {} bytes",
        d.metric("outrigger_spool_bytes", r#"sink="nats""#).await
    );
    let (_, text) = d.get("/metrics").await;
    if metric_value(&text, "outrigger_events_dropped_total", "") != 0.0 {
        let series: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("outrigger_events_dropped_total")
                    || l.starts_with("outrigger_sink")
                    || l.starts_with("outrigger_nats")
                    || l.starts_with("outrigger_events_")
            })
            .collect();
        panic!(
            "events dropped:\n{}\nlog:\n{}",
            series.join("\n"),
            d.log_text()
        );
    }
    let js = cluster.jetstream().await;
    let got = read_stream(&js, "EV", 20_000, Duration::from_secs(60)).await;
    assert_exactly_once(&got, 20_000, true);
}

fn check(cfg: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outrigger.yml");
    std::fs::write(
        &path,
        format!(
            "ingest: {{socket: \"{}/s.sock\"}}\nplugins: {{dir: \"{}/plugins\"}}\nsinks: [{cfg}]\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// `outrigger check` asks the server: it must answer, and with `create_stream: false` the stream
// must exist and take the subject. Check creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verifies_the_server_and_the_stream() {
    if !nats_server_available() {
        return;
    }
    let cluster = NatsCluster::start(1);
    let js = cluster.jetstream().await;
    let url = cluster.urls();
    let sink = |extra: &str| format!(r#"{{type: nats, url: "{url}", stream: EV, {extra}}}"#);

    let (ok, out) = check(&sink("create_stream: false"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("stream `EV` does not exist and create_stream is false"),
        "{out}"
    );
    let (ok, out) = check(&sink("create_stream: true"));
    assert!(ok, "{out}");
    assert!(
        js.get_stream("EV").await.is_err(),
        "check created the stream"
    );

    js.create_stream(async_nats::jetstream::stream::Config {
        name: "EV".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let (ok, out) = check(&sink("create_stream: false"));
    assert!(!ok && out.contains("does not take"), "{out}");
    let (ok, out) = check(&sink(r#"create_stream: false, subject: "other.{type}""#));
    assert!(ok, "{out}");

    let down = crate::harness::free_port();
    let (ok, out) = check(&format!(
        r#"{{type: nats, url: "nats://{down}", timeout: 1s}}"#
    ));
    assert!(!ok && out.contains("cannot connect"), "{out}");
}

// Core NATS (`jetstream: false`): at most once, to whoever is subscribed; the header still
// carries the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_publishes_to_subscribers() {
    use futures_util::StreamExt;
    if !nats_server_available() {
        return;
    }
    let cluster = NatsCluster::start(1);
    let client = async_nats::connect(cluster.urls()).await.unwrap();
    let mut sub = client.subscribe("core.>").await.unwrap();
    client.flush().await.unwrap();
    let d = Daemon::start(&format!(
        r#"sinks: [{{type: nats, url: "{}", subject: "core.{{type}}", jetstream: false}}]"#,
        cluster.urls()
    ))
    .await;
    d.send_noack(&lines(0..100)).await;
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while got.len() < 100 && Instant::now() < end {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .unwrap()
                .to_string();
            assert_eq!(v["id"].as_str(), Some(id.as_str()));
            let want = if v["data"].as_u64().unwrap().is_multiple_of(2) {
                "core.a_b"
            } else {
                "core.plain"
            };
            assert_eq!(m.subject.as_str(), want);
            got.push(v["data"].as_u64().unwrap());
        }
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

// `bench --nats-direct`, the server's own ceiling that the sink's benchmark is set beside:
// every message acknowledged, the figure reported, and its stream deleted after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_nats_direct_measures_the_server_and_cleans_up() {
    if !nats_server_available() {
        return;
    }
    let cluster = NatsCluster::start(1);
    let js = cluster.jetstream().await;
    let out = tokio::process::Command::new(BIN)
        .args([
            "bench",
            "--nats-direct",
            &cluster.urls(),
            "-n",
            "3000",
            "--size",
            "100",
            "--nats-inflight",
            "256",
            "--json",
        ])
        .output()
        .await
        .expect("outrigger bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(v["messages"], 3000, "{v}");
    assert_eq!(v["inflight"], 256, "{v}");
    assert!(v["messages_per_second"].as_f64().unwrap() > 0.0, "{v}");
    use futures_util::StreamExt;
    let mut names = js.stream_names();
    let mut left = Vec::new();
    while let Some(n) = names.next().await {
        left.push(n.expect("stream name"));
    }
    assert!(
        left.iter().all(|n| !n.starts_with("BENCH_DIRECT")),
        "the bench stream was not deleted: {left:?}"
    );
}
