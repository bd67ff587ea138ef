//! Run-level tail sampling end to end: runs held until they close and decided once, kept whole
//! (in order, with `outrigger.kept_by`) or dropped whole; the same answer after a restart;
//! forced keeps, late events, idle and max-duration closes, shutdown; memory bounded by bytes
//! with spill (and early decisions without it); the runs API and `outrigger runs`; reloads.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{BIN, Daemon, eventually, rewrite_config};

const KEPT_BY: &str = "outrigger.kept_by";

/// `runs` runs of `per_run` events each (`run_start`, steps, `run_end`), interleaved in blocks
/// of `open` runs at a time; run `i` fails (a step with `status: failed`) when `failing(i)`.
/// `pad` bytes of filler per event. Returns the NDJSON body.
fn runs_body(
    prefix: &str,
    runs: usize,
    per_run: usize,
    open: usize,
    pad: usize,
    failing: impl Fn(usize) -> bool,
) -> Vec<u8> {
    let filler = "x".repeat(pad);
    let mut body = Vec::new();
    for block in (0..runs).step_by(open) {
        for seq in 0..per_run {
            for i in block..(block + open).min(runs) {
                let kind = match seq {
                    0 => "run_start",
                    s if s + 1 == per_run => "run_end",
                    _ => "step",
                };
                let status = match (seq, failing(i)) {
                    (1, true) => "failed",
                    (s, _) if s + 1 == per_run => "passed",
                    _ => "running",
                };
                let line = json!({"type": kind, "run_id": format!("{prefix}{i}"),
                    "data": {"seq": seq, "status": status, "pad": filler}});
                body.extend_from_slice(line.to_string().as_bytes());
                body.push(b'\n');
            }
        }
    }
    body
}

/// Waits until every event sent is delivered or dropped as `sampled_out` (the tail's drops).
async fn settle(d: &Daemon, sent: usize) {
    let mut last = (0.0, 0.0);
    let ok = eventually(Duration::from_secs(60), async || {
        let (_, text) = d.get("/metrics").await;
        let delivered = crate::harness::metric_value(&text, "outrigger_events_delivered_total", "");
        let dropped = crate::harness::metric_value(
            &text,
            "outrigger_events_dropped_total",
            r#"reason="sampled_out""#,
        );
        last = (delivered, dropped);
        delivered + dropped >= sent as f64
    })
    .await;
    assert!(
        ok,
        "delivered {} + sampled out {} never reached {sent}",
        last.0, last.1
    );
}

/// Delivered events by run id, in file order.
fn by_run(events: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events {
        if let Some(r) = e["run_id"].as_str() {
            m.entry(r.to_string()).or_default().push(e.clone());
        }
    }
    m
}

/// Checks that every run is whole and in order; returns the passing runs kept at the rate.
fn check_runs(
    runs: &BTreeMap<String, Vec<Value>>,
    prefix: &str,
    n: usize,
    per_run: usize,
    failing: impl Fn(usize) -> bool,
) -> BTreeSet<String> {
    let mut rate_kept = BTreeSet::new();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let evs = runs.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        if failing(i) {
            assert_eq!(evs.len(), per_run, "failing run {id} is not whole: {evs:?}");
        } else {
            assert!(
                evs.is_empty() || evs.len() == per_run,
                "passing run {id} is neither whole nor absent: {} events",
                evs.len()
            );
        }
        for (seq, e) in evs.iter().enumerate() {
            assert_eq!(e["data"]["seq"], seq, "run {id} out of order: {evs:?}");
            let by = e["attributes"][KEPT_BY].as_str();
            assert_eq!(by, Some(if failing(i) { "failed" } else { "rate" }), "{e}");
        }
        if !failing(i) && !evs.is_empty() {
            rate_kept.insert(id);
        }
    }
    rate_kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_runs_are_kept_whole_and_the_rest_at_else_rate_the_same_after_a_restart() {
    const RUNS: usize = 3000;
    const PER: usize = 6;
    let failing = |i: usize| i % 33 == 7;
    let mut d = Daemon::start(
        "sampling: {tail: {enabled: true, else_rate: 0.1}}\nqueue: {capacity: 100000}",
    )
    .await;
    let body = runs_body("run-", RUNS, PER, 200, 0, failing);
    d.send_noack(&body).await;
    settle(&d, RUNS * PER).await;
    let first = by_run(&d.events());
    let kept = check_runs(&first, "run-", RUNS, PER, failing);
    let passing = (0..RUNS).filter(|i| !failing(*i)).count();
    let share = kept.len() as f64 / passing as f64;
    assert!(
        (0.07..0.13).contains(&share),
        "{} of {passing} passing runs kept: {share}",
        kept.len()
    );
    let failed = d
        .metric(
            "outrigger_tail_decisions_total",
            r#"by="failed",result="kept""#,
        )
        .await;
    assert_eq!(failed as usize, (0..RUNS).filter(|i| failing(*i)).count());
    let dropped = d
        .metric("outrigger_tail_decisions_total", r#"result="dropped""#)
        .await;
    assert_eq!(dropped as usize, passing - kept.len());
    assert_eq!(d.metric("outrigger_tail_open_runs", "").await, 0.0);

    // A late event follows its run's decision: kept runs take it, dropped ones drop it.
    let dropped_run = (0..RUNS)
        .map(|i| format!("run-{i}"))
        .find(|id| !first.contains_key(id))
        .expect("a dropped run");
    let late = format!(
        "{}\n{}\n",
        json!({"type": "late", "run_id": "run-7", "data": {"seq": 6}}),
        json!({"type": "late", "run_id": dropped_run, "data": {"seq": 0}})
    );
    d.send_noack(late.as_bytes()).await;
    settle(&d, RUNS * PER + 2).await;
    let after = by_run(&d.events());
    let run7 = &after["run-7"];
    assert_eq!(run7.len(), PER + 1);
    assert_eq!(run7[PER]["type"], "late");
    assert_eq!(run7[PER]["attributes"][KEPT_BY], "failed");
    assert!(!after.contains_key(&dropped_run));

    // After a restart nothing is remembered, and the hash gives the same runs.
    assert!(d.stop().success());
    let before = d.events().len();
    d.launch();
    d.wait_ready().await;
    d.send_noack(&body).await;
    settle(&d, RUNS * PER).await;
    let second = by_run(&d.events()[before..]);
    let kept_again = check_runs(&second, "run-", RUNS, PER, failing);
    assert_eq!(
        kept, kept_again,
        "else_rate kept other runs after a restart"
    );
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_keeps_idle_and_max_duration_closes_and_shutdown() {
    let mut d = Daemon::start(
        "sampling: {tail: {enabled: true, else_rate: 0.0, idle: 400ms, max_duration: 2s}}",
    )
    .await;
    let ev = |kind: &str, run: &str, status: &str, seq: u64| {
        json!({"type": kind, "run_id": run, "data": {"status": status, "seq": seq}}).to_string()
    };
    // `forced`: open, nothing failed, kept by the API.
    let mut c = d.connect().await;
    for seq in 0..3 {
        assert_eq!(
            c.send(&ev("step", "forced", "running", seq)).await,
            r#"{"success":true}"#
        );
    }
    // Answered means queued: wait until the tail holds the three.
    assert!(
        eventually(Duration::from_secs(10), async || {
            let (status, body) = d.get("/v1/runs/forced").await;
            status == 200 && serde_json::from_str::<Value>(&body).unwrap()["events_total"] == 3
        })
        .await
    );
    let (status, body) = d
        .send_json("POST", "/v1/runs/forced/keep", Value::Null)
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = d
        .send_json("POST", "/v1/runs/forced/keep", Value::Null)
        .await;
    assert_eq!(status, 200, "already kept");
    let (status, body) = d
        .send_json("POST", "/v1/runs/nobody/keep", Value::Null)
        .await;
    assert_eq!(status, 404, "{body}");
    // `quiet`: one passing event, then nothing: closed by `idle` and dropped.
    c.send(&ev("step", "quiet", "running", 0)).await;
    // `busy`: fails at once, then an event every 100 ms for 3 s: closed by `max_duration`.
    c.send(&ev("step", "busy", "failed", 0)).await;
    for seq in 1..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.send(&ev("step", "busy", "running", seq)).await;
    }
    // By now: `forced` kept, `quiet` dropped (idle), `busy` kept by max_duration at ~2 s and
    // its later events followed the decision.
    let runs = d.get_json("/v1/runs?state=dropped").await;
    let ids: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["quiet"], "{runs}");
    assert!(
        eventually(Duration::from_secs(10), async || d.events().len() == 33).await,
        "{:?}",
        d.events()
    );
    let events = by_run(&d.events());
    assert!(
        events["forced"]
            .iter()
            .all(|e| e["attributes"][KEPT_BY] == "forced")
    );
    let busy = &events["busy"];
    assert_eq!(busy.len(), 30);
    assert!(busy.iter().all(|e| e["attributes"][KEPT_BY] == "failed"));
    assert_eq!(
        d.metric("outrigger_tail_decisions_total", r#"by="forced""#)
            .await,
        1.0
    );
    // The run view: summary and events of a kept run; `outrigger runs` shows it.
    let run = d.get_json("/v1/runs/busy").await;
    assert_eq!(run["state"], "kept", "{run}");
    assert_eq!(run["kept_by"], "failed");
    assert_eq!(run["events_total"], 30);
    assert_eq!(run["count"], 30);
    assert_eq!(run["types"]["step"], 30);
    let out = Command::new(BIN)
        .args(["runs", "--addr", &d.control.to_string(), "--state", "kept"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.starts_with("RUN"), "{table}");
    assert!(
        table.contains("busy") && table.contains("forced"),
        "{table}"
    );
    assert!(!table.contains("quiet"), "{table}");
    let bad = Command::new(BIN)
        .args(["runs", "--addr", &d.control.to_string(), "--state", "odd"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("use open, kept, dropped or seen"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Shutdown decides what is open: `open-failed` is kept, `open-passing` is dropped.
    c.send(&ev("step", "open-failed", "error", 0)).await;
    c.send(&ev("step", "open-failed", "running", 1)).await;
    c.send(&ev("step", "open-passing", "running", 0)).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            d.get_json("/v1/runs?state=open").await["count"] == 2
        })
        .await
    );
    drop(c);
    assert!(d.stop().success());
    let events = by_run(&d.events());
    let open_failed = &events["open-failed"];
    assert_eq!(open_failed.len(), 2);
    assert!(
        open_failed
            .iter()
            .all(|e| e["attributes"][KEPT_BY] == "failed")
    );
    assert!(!events.contains_key("open-passing"));
    let log = d.log_text();
    assert!(log.contains("outrigger stopped"), "{log}");
}

/// Peak and current resident memory of a process, in bytes (`VmHWM`, `VmRSS`).
fn memory(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_open_runs_spill_within_max_bytes_and_come_back_whole() {
    // 8000 runs of 10 events of ~1 KiB, all open at once: ~85 MB held by runs that have not
    // ended, against a 12 MiB memory bound (their bookkeeping, ~300 B a run, stays in memory,
    // and the runs view's 2 MiB and the remembered decisions count against it too).
    // Every run fails, so every event must come back. Sent in slices that the queue takes
    // without dropping, so that what is measured is the tail's memory, not the queue's.
    const RUNS: usize = 8000;
    const PER: usize = 10;
    let mut d = Daemon::start(
        "sampling: {tail: {enabled: true, max_bytes: 12MiB, max_run_bytes: 256KiB, spill: {dir: '{dir}/spill', max_bytes: 1GiB}}}\nqueue: {capacity: 20000}\ncontrol: {run_bytes: 2MiB}",
    )
    .await;
    let pid = d.child.as_ref().unwrap().id();
    let (_, rss_ready) = memory(pid);
    let body = runs_body("big-", RUNS, PER, RUNS, 1000, |_| true);
    let sent_bytes = body.len() as u64;
    for slice in body
        .chunk_by(|a, _| *a != b'\n')
        .collect::<Vec<_>>()
        .chunks(2000)
    {
        d.send_noack(&slice.concat()).await;
        assert!(
            eventually(Duration::from_secs(30), async || {
                d.metric("outrigger_queue_depth", "").await < 2000.0
            })
            .await
        );
    }
    settle(&d, RUNS * PER).await;
    let (peak, _) = memory(pid);
    let runs = by_run(&d.events());
    let kept = check_runs(&runs, "big-", RUNS, PER, |_| true);
    assert!(kept.is_empty());
    assert!(
        d.metric("outrigger_tail_decisions_total", r#"by="failed""#)
            .await as usize
            == RUNS
    );
    assert_eq!(
        d.metric("outrigger_tail_decisions_total", r#"by="early""#)
            .await,
        0.0,
        "nothing needed an early decision"
    );
    assert_eq!(d.metric("outrigger_tail_spilled_bytes", "").await, 0.0);
    let spilled = d.metric("outrigger_tail_spilled_events_total", "").await;
    assert!(
        spilled as usize > RUNS * PER / 2,
        "only {spilled} events went through the spill"
    );
    // Bounded: the daemon grew by at most max_bytes plus 30 MB (the benchmark's target: the
    // queue, batches, runs being read back, the runs view's 2 MiB), far less than it took in.
    let growth = peak.saturating_sub(rss_ready);
    assert!(
        growth < (12 << 20) + 30_000_000 && growth < sent_bytes / 2,
        "RSS grew by {growth} bytes while {sent_bytes} bytes of open runs came in (peak {peak})"
    );
    let spilled = d
        .metric("outrigger_events_dropped_total", r#"reason="spill""#)
        .await;
    assert_eq!(spilled, 0.0, "nothing lost in the spill");
    assert!(d.stop().success());
    let left: Vec<_> = std::fs::read_dir(d.path("spill"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "segments left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spill_the_oldest_runs_are_decided_early_and_counted() {
    const RUNS: usize = 1000;
    const PER: usize = 10;
    let failing = |i: usize| i.is_multiple_of(2);
    let mut d = Daemon::start(
        "sampling: {tail: {enabled: true, else_rate: 0.0, max_bytes: 256KiB, max_run_bytes: 64KiB, spill: null}}\nqueue: {capacity: 100000}",
    )
    .await;
    let body = runs_body("e-", RUNS, PER, RUNS, 500, failing);
    d.send_noack(&body).await;
    settle(&d, RUNS * PER).await;
    let early = d
        .metric("outrigger_tail_decisions_total", r#"by="early""#)
        .await;
    assert!(early > 0.0, "no early decisions");
    let health = d.get_json("/v1/health").await;
    assert_eq!(
        health["components"]["tail"]["status"], "degraded",
        "{health}"
    );
    // A run decided early is decided by what it held then: a run that had already failed is
    // kept (`failed/early`) with everything after it; one decided before its failure came is
    // dropped whole (else_rate is 0), and so are the passing runs. Nothing is cut in the middle.
    let runs = by_run(&d.events());
    let mut suffixed = 0;
    for i in 0..RUNS {
        let id = format!("e-{i}");
        let Some(evs) = runs.get(&id) else { continue };
        assert!(failing(i), "passing run {id} kept");
        assert_eq!(evs.len(), PER, "kept run {id} is not whole");
        let by = evs[0]["attributes"][KEPT_BY].as_str().unwrap();
        assert!(by == "failed" || by == "failed/early", "{by}");
        assert!(evs.iter().all(|e| e["attributes"][KEPT_BY] == by));
        suffixed += usize::from(by == "failed/early");
    }
    assert!(suffixed > 0, "no run was kept early by its policy");
    let kept = d
        .metric("outrigger_tail_decisions_total", r#"result="kept""#)
        .await;
    assert_eq!(kept as usize, runs.len());
    let dropped = d
        .metric("outrigger_tail_decisions_total", r#"result="dropped""#)
        .await;
    assert_eq!((kept + dropped) as usize, RUNS);
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_reload_without_losing_open_runs_and_a_bad_one_is_refused() {
    let mut d = Daemon::start("sampling: {tail: {enabled: true, else_rate: 0.0}}").await;
    let mut c = d.connect().await;
    let ev = |kind: &str, run: &str, ms: u64| {
        json!({"type": kind, "run_id": run, "data": {"status": "passed", "ms": ms}}).to_string()
    };
    c.send(&ev("step", "slow", 5000)).await;
    c.send(&ev("step", "fast", 10)).await;
    rewrite_config(
        &d,
        "sampling: {tail: {keep: [{name: failed, when: 'has(data.status) && data.status == \"failed\"'}, {name: slow, when: 'has(data.ms) && data.ms > 1000'}]}}",
    );
    d.wait_metric("outrigger_reloads_total", r#"result="ok""#, 1.0)
        .await;
    c.send(&ev("run_end", "slow", 1)).await;
    c.send(&ev("run_end", "fast", 1)).await;
    assert!(eventually(Duration::from_secs(10), async || d.events().len() == 2).await);
    let events = d.events();
    assert!(events.iter().all(|e| e["run_id"] == "slow"), "{events:?}");
    assert!(events.iter().all(|e| e["attributes"][KEPT_BY] == "slow"));

    // A policy that does not compile: refused with its key and line; the old ones stay.
    rewrite_config(
        &d,
        "sampling: {tail: {keep: [{name: broken, when: 'data.status ==='}]}}",
    );
    let (status, body) = d.send_json("POST", "/v1/reload", Value::Null).await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("sampling.tail.keep[0].when"), "{error}");
    assert!(error.contains("line"), "{error}");
    c.send(&ev("step", "slow2", 5000)).await;
    c.send(&ev("run_end", "slow2", 1)).await;
    assert!(eventually(Duration::from_secs(10), async || d.events().len() == 4).await);
    assert_eq!(d.events()[3]["attributes"][KEPT_BY], "slow");

    // Turning tail sampling off releases every open run as its policies decide.
    c.send(&ev("step", "held-slow", 5000)).await;
    c.send(&ev("step", "held-fast", 1)).await;
    rewrite_config(
        &d,
        "sampling: {tail: {enabled: false, keep: [{name: slow, when: 'has(data.ms) && data.ms > 1000'}]}}",
    );
    assert!(eventually(Duration::from_secs(10), async || d.events().len() == 5).await);
    let last = &d.events()[4];
    assert_eq!(last["run_id"], "held-slow");
    assert_eq!(last["attributes"][KEPT_BY], "slow");
    // Off: events with a run id pass as they come, and the view still shows the run.
    c.send(&ev("step", "after", 1)).await;
    assert!(eventually(Duration::from_secs(10), async || d.events().len() == 6).await);
    let run = d.get_json("/v1/runs/after").await;
    assert_eq!(run["state"], "seen", "{run}");
    drop(c);
    assert!(d.stop().success());

    // At start, a bad policy is refused by `check` and `run` with its key and line.
    rewrite_config(
        &d,
        "sampling: {tail: {keep: [{name: broken, when: 'data.status ==='}]}}",
    );
    let check = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("sampling.tail.keep[0].when"), "{err}");
    assert!(err.contains("line"), "{err}");
    d.launch();
    let status = d.exit_status(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(
        d.log_text().contains("sampling.tail.keep[0].when"),
        "{}",
        d.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spill_that_cannot_be_written_is_counted_and_runs_are_decided_early() {
    const RUNS: usize = 500;
    const PER: usize = 10;
    // The spill "directory" is a file: every segment fails to open.
    let mut d = Daemon::start(
        "sampling: {tail: {enabled: true, else_rate: 1.0, max_bytes: 256KiB, max_run_bytes: 64KiB, spill: {dir: '{dir}/not-a-dir/tail'}}}\nqueue: {capacity: 100000}",
    )
    .await;
    std::fs::write(d.path("not-a-dir"), b"a file").unwrap();
    let body = runs_body("w-", RUNS, PER, RUNS, 500, |_| false);
    d.send_noack(&body).await;
    settle(&d, RUNS * PER).await;
    assert!(
        d.metric("outrigger_tail_spill_errors_total", r#"op="write""#)
            .await
            > 0.0
    );
    assert!(
        d.metric("outrigger_tail_decisions_total", r#"by="early""#)
            .await
            > 0.0
    );
    // else_rate 1.0: every run is kept, whole, early or not; nothing is lost.
    let runs = by_run(&d.events());
    assert_eq!(runs.len(), RUNS);
    for (id, evs) in &runs {
        assert_eq!(evs.len(), PER, "run {id}");
        let by = evs[0]["attributes"][KEPT_BY].as_str().unwrap();
        assert!(by == "rate" || by == "rate/early", "{by}");
    }
    assert!(
        d.log_text().contains("not-a-dir"),
        "the spill error is logged"
    );
    assert!(d.stop().success());
}
