//! The durable queue (`queue.durable`): answered events survive SIGKILL, and a damaged log is
//! set aside, not fatal.
//!
//! The kill loop runs a load generator (acknowledged socket lines, each carrying its own
//! number) while the daemon is killed with SIGKILL at random moments, 20 times, and restarted
//! each time; at the end every answered event is in the file sink at least once, duplicates are
//! counted (and bounded by what was replayed), and the last daemon's own counts agree. The
//! damaged-log tests write segments in the log's format before the daemon starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::harness::{Daemon, eventually};

const DURABLE: &str = r#"
queue: {durable: {dir: "{dir}/wal", fsync: batch, segment_bytes: 64KiB}}
"#;

/// The `data.n` of every line of the file sink (a line cut short by a kill is skipped).
fn delivered_numbers(d: &Daemon) -> Vec<u64> {
    let text = std::fs::read_to_string(&d.out).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["data"]["n"].as_u64())
        .collect()
}

/// Sends numbered events in groups of 20 lines on one connection, reconnecting after a kill;
/// records every number answered `{"success":true}`.
async fn generator(
    socket: std::path::PathBuf,
    base: u64,
    acked: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
) {
    let mut next = base;
    while !stop.load(Ordering::Relaxed) {
        let Ok(s) = UnixStream::connect(&socket).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::new(rd);
        'conn: while !stop.load(Ordering::Relaxed) {
            let mut body = String::new();
            for i in 0..20 {
                body.push_str(&format!(
                    "{{\"type\":\"kill_loop\",\"data\":{{\"n\":{}}}}}\n",
                    next + i
                ));
            }
            if wr.write_all(body.as_bytes()).await.is_err() {
                break;
            }
            for i in 0..20 {
                let mut answer = String::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut answer)).await;
                match read {
                    Ok(Ok(n)) if n > 0 => {
                        if answer.trim_end() == r#"{"success":true}"# {
                            acked.lock().push(next + i);
                        }
                    }
                    _ => {
                        next += 20;
                        break 'conn;
                    }
                }
            }
            next += 20;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_events_survive_twenty_sigkills() {
    let mut d = Daemon::start(DURABLE).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let gens: Vec<_> = (0..4u64)
        .map(|g| {
            tokio::spawn(generator(
                d.socket.clone(),
                g * 1_000_000_000,
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let random = std::collections::hash_map::RandomState::new();
    let mut replayed_total = 0.0;
    for kill in 0..20u64 {
        use std::hash::BuildHasher;
        let wait = 150 + random.hash_one(kill) % 900;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut child = d.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        d.launch();
        d.wait_ready().await;
        // The replay is over before the daemon is ready.
        replayed_total += d.metric("outrigger_wal_replayed_total", "").await;
    }
    // A last stretch of load on the last daemon, then stop the generators.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for g in gens {
        g.await.expect("generator");
    }
    let acked = acked.lock().clone();
    assert!(acked.len() > 1000, "too little load: {} acked", acked.len());

    // The last daemon delivers what it received and what it replayed, and nothing else.
    let ok = eventually(Duration::from_secs(60), async || {
        let received = d
            .metric("outrigger_events_received_total", "ingest=\"socket\"")
            .await;
        let replayed = d.metric("outrigger_wal_replayed_total", "").await;
        let delivered = d
            .metric("outrigger_events_delivered_total", "sink=\"file\"")
            .await;
        delivered == received + replayed && delivered > 0.0
    })
    .await;
    assert!(ok, "the last daemon's counts do not agree");
    let dropped = d.metric("outrigger_events_dropped_total", "").await;
    assert_eq!(dropped, 0.0, "nothing is dropped");

    let got = delivered_numbers(&d);
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for n in &got {
        *seen.entry(*n).or_default() += 1;
    }
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !seen.contains_key(n))
        .collect();
    let duplicates: u64 = seen.values().map(|c| (*c - 1) as u64).sum();
    eprintln!(
        "kill loop: {} answered, {} lines delivered, {} distinct, {} duplicates, {} replayed over 20 restarts",
        acked.len(),
        got.len(),
        seen.len(),
        duplicates,
        replayed_total
    );
    assert!(
        missing.is_empty(),
        "{} answered events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        duplicates as f64 <= replayed_total,
        "every duplicate comes from a replay: {duplicates} > {replayed_total}"
    );
    // Everything was confirmed: the log is trimmed to its current segment.
    let st = d.get_json("/v1/stats").await;
    assert_eq!(st["queue"]["durable"]["fsync"], "batch");
    assert!(d.stop().success());
}

/// Writes one segment of `n` events (`data.n` = 0..n, sequence 0..n) into `{dir}/wal`.
fn write_segment(d: &Daemon, n: usize) -> (std::path::PathBuf, Vec<u8>, Vec<usize>) {
    use outrigger::event::{Line, parse_owned};
    use outrigger::wal::segment;
    let events: Vec<_> = (0..n)
        .map(|i| {
            let line = format!(r#"{{"type":"old","data":{{"n":{i}}}}}"#);
            match parse_owned(line.as_bytes(), 1 << 20) {
                Ok(Line::Event(mut e)) => {
                    e.id = 0xabc000 + i as u128;
                    e
                }
                _ => unreachable!(),
            }
        })
        .collect();
    let mut buf = segment::MAGIC.to_vec();
    let starts = segment::encode(&events, &mut buf);
    for (i, s) in starts[..n].iter().enumerate() {
        segment::seal(&mut buf, *s, i as u64);
    }
    let dir = d.path("wal");
    std::fs::create_dir_all(&dir).expect("wal dir");
    let path = dir.join("00000000000000000001.wal");
    std::fs::write(&path, &buf).expect("segment");
    (path, buf, starts)
}

#[tokio::test]
async fn a_truncated_last_segment_replays_its_valid_records_and_says_what_it_set_aside() {
    let mut d = Daemon::prepare(DURABLE);
    let (path, buf, _) = write_segment(&d, 10);
    std::fs::write(&path, &buf[..buf.len() - 3]).expect("truncate");
    d.launch();
    d.wait_ready().await;
    assert_eq!(d.metric("outrigger_wal_replayed_total", "").await, 9.0);
    assert_eq!(
        d.metric("outrigger_wal_corrupt_records_total", "").await,
        1.0
    );
    let ok = eventually(Duration::from_secs(10), async || {
        delivered_numbers(&d).len() == 9
    })
    .await;
    assert!(ok, "the nine whole records are delivered");
    assert_eq!(delivered_numbers(&d), (0..9).collect::<Vec<u64>>());
    // Replayed events keep their ids.
    let first = &d.events()[0];
    assert_eq!(first["id"], format!("{:032x}", 0xabc000u128));
    let log = d.log_text();
    assert!(
        log.contains("set aside") && log.contains("truncated record"),
        "{log}"
    );
    assert!(path.with_extension("wal.corrupt").exists());
    // New events follow, after the replayed ones.
    let answers = d.send(&[r#"{"type":"new","data":{"n":100}}"#]).await;
    assert_eq!(answers, [r#"{"success":true}"#]);
    assert!(d.stop().success());
    assert_eq!(delivered_numbers(&d).last(), Some(&100));
}

#[tokio::test]
async fn a_flipped_byte_in_the_middle_keeps_the_records_before_it() {
    let mut d = Daemon::prepare(DURABLE);
    let (path, mut buf, starts) = write_segment(&d, 10);
    buf[starts[4] + 20] ^= 0x04;
    std::fs::write(&path, &buf).expect("flip");
    d.launch();
    d.wait_ready().await;
    assert_eq!(d.metric("outrigger_wal_replayed_total", "").await, 4.0);
    // The damaged record and the five intact ones after it, set aside (not replayed).
    assert_eq!(
        d.metric("outrigger_wal_corrupt_records_total", "").await,
        6.0
    );
    let ok = eventually(Duration::from_secs(10), async || {
        delivered_numbers(&d).len() == 4
    })
    .await;
    assert!(ok, "records 0 to 3 are delivered");
    let log = d.log_text();
    assert!(log.contains("checksum mismatch"), "{log}");
    let st = d.get_json("/v1/stats").await;
    let aside = st["queue"]["durable"]["set_aside"][0].as_str().unwrap();
    assert!(aside.ends_with(".wal.corrupt"), "{st}");
    assert_eq!(
        std::fs::metadata(aside).unwrap().len() as usize,
        buf.len() - starts[4]
    );
    assert!(d.stop().success());
}

#[tokio::test]
async fn http_answers_wait_for_the_log_and_reload_keeps_the_log_running() {
    let mut d = Daemon::start(DURABLE).await;
    let body: String = (0..5)
        .map(|i| format!("{{\"type\":\"h\",\"data\":{{\"n\":{i}}}}}\n"))
        .collect();
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/events", d.http))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 202);
    // Killed right after the answer: the restart delivers them (from the log if they had not
    // reached the sink yet).
    let mut child = d.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    d.launch();
    d.wait_ready().await;
    let ok = eventually(Duration::from_secs(10), async || {
        let mut got = delivered_numbers(&d);
        got.sort();
        got.dedup();
        got == [0, 1, 2, 3, 4]
    })
    .await;
    assert!(ok, "every answered HTTP event is delivered");

    // fsync reloads live; turning the log off needs a restart and is reported.
    crate::harness::rewrite_config(&d, "queue: {durable: {fsync: always}}");
    let (status, _) = d
        .send_json("POST", "/v1/reload", serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    let st = d.get_json("/v1/stats").await;
    assert_eq!(st["queue"]["durable"]["fsync"], "always", "{st}");
    crate::harness::rewrite_config(&d, "queue: {durable: null}");
    let (status, _) = d
        .send_json("POST", "/v1/reload", serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    assert!(
        d.log_text().contains("queue.durable"),
        "reported as restart-only"
    );
    let before = d.metric("outrigger_wal_appended_total", "").await;
    assert_eq!(
        d.send(&[r#"{"type":"after"}"#]).await,
        [r#"{"success":true}"#]
    );
    assert_eq!(
        d.metric("outrigger_wal_appended_total", "").await,
        before + 1.0,
        "the running log still takes every event"
    );
    assert!(d.stop().success());
}
