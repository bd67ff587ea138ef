//! The tail sampler on its own: decisions, closes, bounds, spill, reload (paused time).

use std::time::Duration;

use super::*;
use crate::event::parse_owned;

fn config(tail_yaml: &str) -> Config {
    let text = format!("sampling:\n  tail:\n{}", indent(tail_yaml));
    let cfg = crate::config::parse(&text).unwrap();
    crate::config::validate(&cfg).unwrap();
    cfg
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

fn tail(tail_yaml: &str) -> (Tail, Arc<Metrics>) {
    let m = Arc::new(Metrics::new());
    (Tail::new(&config(tail_yaml), m.clone()), m)
}

fn ev(run: &str, kind: &str, data: &str) -> Event {
    let line = format!(r#"{{"type":"{kind}","run_id":"{run}","data":{data}}}"#);
    match parse_owned(line.as_bytes(), 1 << 20) {
        Ok(Line::Event(e)) => e,
        other => panic!("not an event: {other:?}"),
    }
}

fn kept_by(e: &Event) -> Option<&str> {
    e.attributes
        .iter()
        .find(|(k, _)| k == KEPT_BY)
        .map(|(_, v)| v.as_str())
}

fn decisions(m: &Metrics, result: &str, by: &str) -> u64 {
    m.tail_decisions.with_label_values(&[result, by]).get()
}

/// A run of `n` steps and its end, `status` on the end event.
fn run(id: &str, n: usize, status: &str) -> Vec<Event> {
    let mut v: Vec<Event> = (0..n)
        .map(|i| ev(id, "step", &format!(r#"{{"i":{i}}}"#)))
        .collect();
    v.push(ev(id, "test_end", &format!(r#"{{"status":"{status}"}}"#)));
    v
}

/// Every event the tail releases as the daemon stops (it answers a slice per call).
fn shutdown_all(t: &Tail) -> Vec<Event> {
    let mut all = Vec::new();
    loop {
        let (out, more) = t.shutdown();
        all.extend(out.events);
        if !more {
            return all;
        }
    }
}

/// `n` open runs of three steps each, every one of them kept when decided.
fn open_runs(n: usize, extra: &str) -> Tail {
    let (t, _) = tail(&format!(
        "enabled: true\nelse_rate: 1.0\nspill: null\n{extra}"
    ));
    for step in 0..3 {
        let evs = (0..n)
            .map(|r| ev(&format!("r{r}"), "step", &step.to_string()))
            .collect();
        assert!(t.admit(evs).events.is_empty());
    }
    t
}

/// Checks that `events` are whole runs of three steps, each run's in order and together.
fn whole_runs(events: &[Event]) -> usize {
    assert_eq!(events.len() % 3, 0);
    for run in events.chunks(3) {
        let id = run[0].run_id.as_deref();
        assert!(
            run.iter().all(|e| e.run_id.as_deref() == id),
            "{id:?} split"
        );
        let steps: Vec<&[u8]> = run.iter().map(|e| &e.data[..]).collect();
        assert_eq!(steps, [b"0", b"1", b"2"]);
    }
    events.len() / 3
}

/// Runs in one call's release, which must be about [`RELEASE_EVENTS`] at most (whole runs of
/// three over it).
fn one_slice(out: &Released) -> usize {
    assert!(
        out.events.len() < RELEASE_EVENTS + 3,
        "{}",
        out.events.len()
    );
    whole_runs(&out.events)
}

const ON: &str = "enabled: true\nelse_rate: 0.0\nspill: null\n";

#[tokio::test(start_paused = true)]
async fn kept_by_takes_one_attribute_slot_not_four() {
    let (t, _) = tail(ON);
    let out = t.admit(run("a", 2, "failed"));
    assert_eq!(out.events.len(), 3);
    for e in &out.events {
        assert_eq!(kept_by(e), Some("failed"));
        // A push into an empty list would take room for four (192 bytes per kept event).
        assert_eq!(e.attributes.capacity(), 1);
    }
    // A late event of the kept run too.
    let late = t.admit(vec![ev("a", "step", "9")]);
    assert_eq!(late.events[0].attributes.capacity(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_run_is_kept_whole_in_order_and_a_passing_one_dropped_whole() {
    let (t, m) = tail(ON);
    // Interleaved: the two runs arrive mixed, plus an event without a run.
    let mut a = run("a", 3, "failed").into_iter();
    let mut b = run("b", 3, "passed").into_iter();
    let mut batch = Vec::new();
    for _ in 0..4 {
        batch.extend(a.next());
        batch.extend(b.next());
    }
    batch.insert(2, {
        let line = br#"{"type":"free"}"#;
        match parse_owned(line, 1024) {
            Ok(Line::Event(e)) => e,
            _ => unreachable!(),
        }
    });
    let out = t.admit(batch);
    let kinds: Vec<(&str, Option<&str>)> = out
        .events
        .iter()
        .map(|e| (e.run_id.as_deref().unwrap_or("-"), kept_by(e)))
        .collect();
    assert_eq!(
        kinds,
        [
            ("-", None),
            ("a", Some("failed")),
            ("a", Some("failed")),
            ("a", Some("failed")),
            ("a", Some("failed")),
        ]
    );
    let is: Vec<&str> = out.events[1..].iter().map(|e| e.data_str()).collect();
    assert_eq!(
        is,
        [
            r#"{"i":0}"#,
            r#"{"i":1}"#,
            r#"{"i":2}"#,
            r#"{"status":"failed"}"#
        ]
    );
    assert_eq!(out.runs, vec![1..5]);
    assert_eq!(m.dropped_count(DropReason::SampledOut), 4);
    assert_eq!(decisions(&m, "kept", "failed"), 1);
    assert_eq!(decisions(&m, "dropped", "rate"), 1);
    assert_eq!(m.tail_open_runs.get(), 0);
    assert_eq!(m.tail_buffered_bytes.get(), 0);
    let kept = t.list(Some("kept"), 10);
    assert_eq!(kept[0].run_id, "a");
    assert_eq!(kept[0].events, 4);
    assert_eq!(kept[0].types["step"], 3);
    assert_eq!(t.list(Some("dropped"), 10)[0].run_id, "b");
}

#[tokio::test(start_paused = true)]
async fn else_rate_is_a_stable_share_of_whole_runs() {
    let (t, m) = tail("enabled: true\nelse_rate: 0.3\nspill: null\n");
    let mut kept = 0;
    for i in 0..1000 {
        let id = format!("run-{i}");
        let out = t.admit(run(&id, 2, "passed"));
        match out.events.len() {
            0 => assert!(!rate_keeps(&id, 0.3)),
            3 => {
                kept += 1;
                assert!(rate_keeps(&id, 0.3));
                assert!(out.events.iter().all(|e| kept_by(e) == Some("rate")));
            }
            n => panic!("run split: {n}"),
        }
    }
    assert!((240..360).contains(&kept), "{kept} of 1000 at 0.3");
    assert_eq!(decisions(&m, "kept", "rate"), kept);
}

#[tokio::test(start_paused = true)]
async fn late_events_follow_the_decision() {
    let (t, m) = tail(ON);
    assert_eq!(t.admit(run("a", 1, "failed")).events.len(), 2);
    assert_eq!(t.admit(run("b", 1, "passed")).events.len(), 0);
    let out = t.admit(vec![ev("a", "late", "1"), ev("b", "late", "2")]);
    assert_eq!(out.events.len(), 1);
    assert_eq!(kept_by(&out.events[0]), Some("failed"));
    assert_eq!(m.dropped_count(DropReason::SampledOut), 3);
    assert_eq!(m.tail_open_runs.get(), 0, "late events open no run");
    assert_eq!(t.get("a", 10).unwrap().0.events, 3);
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_closing_or_failing_event_the_queue_dropped_is_still_decided() {
    let (t, m) = tail(ON);
    let mut a = run("a", 2, "failed");
    let a_end = a.pop().unwrap();
    let mut b = run("b", 2, "passed");
    let b_end = b.pop().unwrap();
    a.append(&mut b);
    assert!(t.admit(a).events.is_empty());
    assert_eq!(m.tail_open_runs.get(), 2);
    assert_eq!(t.get("a", 10).unwrap().0.lost_events, None);
    // The queue dropped both closing events (one of them the failing one): both runs close
    // now, not at `idle`; the failed one is kept with what is left of it.
    let f = t.lost_filter().expect("a filter while tail sampling is on");
    let marks: Vec<Lost> = [a_end, b_end, ev("gone", "test_end", "{}")]
        .iter()
        .map(|e| f.classify(e).expect("a closing event is marked"))
        .collect();
    assert!(
        f.classify(&ev("a", "step", "{}")).is_none(),
        "a plain step needs no mark"
    );
    let out = t.lost(marks);
    assert_eq!(m.tail_open_runs.get(), 0);
    assert_eq!(out.events.len(), 2);
    assert!(out.events.iter().all(|e| e.run_id.as_deref() == Some("a")));
    assert!(out.events.iter().all(|e| kept_by(e) == Some("failed")));
    assert_eq!(decisions(&m, "kept", "failed"), 1);
    assert_eq!(decisions(&m, "dropped", "rate"), 1);
    // Lost events are counted by the queue, not again here: only b's two held events.
    assert_eq!(m.dropped_count(DropReason::SampledOut), 2);
    // A dropped failing step of a run that stays open marks it, and is in its summary.
    t.admit(vec![ev("c", "step", "{}")]);
    let failed = f
        .classify(&ev("c", "step", r#"{"status":"failed"}"#))
        .unwrap();
    assert_eq!(failed.policy.as_deref(), Some("failed"));
    assert!(t.lost(vec![failed]).events.is_empty());
    assert_eq!(t.get("c", 10).unwrap().0.lost_events, Some(1));
    let out = t.admit(vec![ev("c", "test_end", "{}")]);
    assert_eq!(out.events.len(), 2);
    assert_eq!(kept_by(&out.events[0]), Some("failed"));
}

#[tokio::test(start_paused = true)]
async fn idle_and_max_duration_close_runs() {
    let (t, m) = tail("enabled: true\nelse_rate: 1.0\nidle: 10s\nmax_duration: 25s\nspill: null\n");
    assert!(t.admit(vec![ev("idle", "step", "1")]).events.is_empty());
    assert!(t.admit(vec![ev("busy", "step", "1")]).events.is_empty());
    // `busy` stays active; `idle` does not.
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(6)).await;
        let mut out = t.admit(vec![ev("busy", "step", "2")]);
        out.events.extend(t.poll().events);
        let runs: Vec<&str> = out
            .events
            .iter()
            .filter_map(|e| e.run_id.as_deref())
            .collect();
        if runs.contains(&"idle") {
            assert!(t.next_deadline().is_some());
        }
    }
    assert_eq!(
        decisions(&m, "kept", "rate"),
        2,
        "idle after 10s, busy after 25s"
    );
    assert_eq!(m.tail_open_runs.get(), 0);
    assert!(t.next_deadline().is_none() || t.poll().events.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_forced_keep_releases_an_open_run() {
    let (t, m) = tail(ON);
    t.admit(vec![ev("r", "step", "1"), ev("r", "step", "2")]);
    assert_eq!(t.keep("r"), KeepOutcome::Keeping);
    assert_eq!(t.keep("nobody"), KeepOutcome::Unknown);
    let out = t.poll();
    assert_eq!(out.events.len(), 2);
    assert!(out.events.iter().all(|e| kept_by(e) == Some("forced")));
    assert_eq!(decisions(&m, "kept", "forced"), 1);
    assert_eq!(t.keep("r"), KeepOutcome::AlreadyKept);
    t.admit(run("p", 0, "passed"));
    assert_eq!(t.keep("p"), KeepOutcome::AlreadyDropped);
}

#[tokio::test(start_paused = true)]
async fn a_run_over_max_run_bytes_is_decided_early() {
    let (t, m) =
        tail("enabled: true\nelse_rate: 0.0\nmax_bytes: 1MiB\nmax_run_bytes: 4KiB\nspill: null\n");
    let mut out = t.admit(vec![ev("big", "step", r#"{"status":"error"}"#)]);
    for i in 0..100 {
        out.events.extend(
            t.admit(vec![ev(
                "big",
                "step",
                &format!(r#""{}""#, "x".repeat(100 + i)),
            )])
            .events,
        );
    }
    assert_eq!(decisions(&m, "kept", "early"), 1);
    assert!(
        out.events
            .iter()
            .all(|e| e.run_id.as_deref() == Some("big"))
    );
    assert_eq!(kept_by(&out.events[0]), Some("failed/early"));
    let late = out
        .events
        .iter()
        .filter(|e| kept_by(e) == Some("failed/early"))
        .count();
    assert_eq!(late, 101, "the rest follow the early decision");
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_and_spilled_runs_come_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "enabled: true\nelse_rate: 1.0\nmax_bytes: 256KiB\nmax_run_bytes: 256KiB\nspill: {{dir: {}, max_bytes: 64MiB}}\n",
        dir.path().display()
    );
    let (t, m) = tail(&yaml);
    let runs = 200;
    let per = 40;
    for i in 0..per {
        let batch: Vec<Event> = (0..runs)
            .map(|r| {
                ev(
                    &format!("r{r}"),
                    "step",
                    &format!(r#"{{"i":{i},"pad":"{}"}}"#, "p".repeat(60)),
                )
            })
            .collect();
        assert!(t.admit(batch).events.is_empty(), "nothing is decided early");
        assert!(
            m.tail_buffered_bytes.get() <= 256 << 10,
            "{}",
            m.tail_buffered_bytes.get()
        );
    }
    assert!(m.tail_spilled_bytes.get() > 0, "spilled");
    assert_eq!(decisions(&m, "kept", "early"), 0);
    let ends: Vec<Event> = (0..runs)
        .map(|r| ev(&format!("r{r}"), "test_end", "{}"))
        .collect();
    let out = t.admit(ends);
    assert_eq!(out.events.len(), runs * (per + 1));
    for (k, r) in out.runs.iter().enumerate() {
        let evs = &out.events[r.clone()];
        assert_eq!(evs.len(), per + 1, "run {k} whole");
        let id = evs[0].run_id.clone();
        for (i, e) in evs[..per].iter().enumerate() {
            assert_eq!(e.run_id, id);
            assert!(
                e.data_str().starts_with(&format!(r#"{{"i":{i},"#)),
                "in order"
            );
            assert_eq!(kept_by(e), Some("rate"));
        }
    }
    assert_eq!(
        m.tail_spilled_bytes.get(),
        0,
        "segments removed once read back"
    );
    assert_eq!(m.dropped_count(DropReason::Spill), 0);
}

#[tokio::test(start_paused = true)]
async fn without_spill_the_oldest_runs_are_decided_early_and_counted() {
    let (t, m) = tail(
        "enabled: true\nelse_rate: 0.0\nmax_bytes: 64KiB\nmax_run_bytes: 64KiB\nspill: null\n",
    );
    let mut delivered = 0u64;
    let n = 5000u64;
    for r in 0..n {
        let status = if r % 10 == 0 { "failed" } else { "passed" };
        let out = t.admit(vec![ev(
            &format!("run-{r}"),
            "step",
            &format!(r#"{{"status":"{status}"}}"#),
        )]);
        delivered += out.events.len() as u64;
        assert!(m.tail_buffered_bytes.get() <= 64 << 10);
    }
    let early = decisions(&m, "kept", "early") + decisions(&m, "dropped", "early");
    assert!(early > 1000, "{early}");
    delivered += shutdown_all(&t).len() as u64;
    assert_eq!(
        delivered,
        n / 10,
        "every failing run kept, early or at shutdown"
    );
    assert_eq!(
        delivered + m.dropped_count(DropReason::SampledOut),
        n,
        "nothing unseen"
    );
    assert!(t.decided_early_within(Duration::from_secs(60)));
}

#[tokio::test(start_paused = true)]
async fn tiny_runs_cannot_escape_the_bound_through_bookkeeping() {
    let (t, m) = tail("enabled: true\nmax_bytes: 128KiB\nmax_run_bytes: 128KiB\nspill: null\n");
    for r in 0..20_000 {
        t.admit(vec![ev(&format!("{r}"), "s", "1")]);
    }
    assert!(m.tail_buffered_bytes.get() <= 128 << 10);
    // The per-run bookkeeping is counted: far fewer than 20k runs fit in 128 KiB.
    assert!(m.tail_open_runs.get() < 1000, "{}", m.tail_open_runs.get());
}

#[tokio::test(start_paused = true)]
async fn remembered_decisions_count_against_max_bytes() {
    // 1 MiB for the runs; the decisions of 8 000 closed runs take about half of it.
    let (t, m) = tail(
        "enabled: true\nelse_rate: 0.0\nmax_bytes: 1MiB\nmax_run_bytes: 64KiB\nspill: null\ndecisions: 8000\n",
    );
    for r in 0..8_000 {
        t.admit(vec![ev(&format!("closed-{r}"), "test_end", "{}")]);
    }
    let decided = t.inner.state.lock().decisions.bytes();
    assert!(decided > 300 << 10 && decided < 700 << 10, "{decided}");
    for r in 0..20_000 {
        t.admit(vec![ev(&format!("open-{r}"), "step", r#"{"i":1}"#)]);
    }
    let view = t.inner.runs.lock().counts().1;
    let held = m.tail_buffered_bytes.get() as usize;
    assert!(
        held + decided + view <= 1 << 20 || held <= 1 << 19,
        "held {held} + decisions {decided} + view {view} over 1 MiB"
    );
    assert!(
        held < (1 << 20) - decided / 2,
        "the decisions ({decided}) took no room from the open runs ({held})"
    );
}

#[test]
fn the_runs_keep_at_least_half_of_max_bytes() {
    assert_eq!(budget(100, 30), 70);
    assert_eq!(budget(100, 80), 50);
    assert_eq!(budget(100, 0), 100);
}

#[tokio::test(start_paused = true)]
async fn shutdown_decides_every_open_run_by_what_it_holds() {
    let (t, m) = tail(ON);
    t.admit(vec![
        ev("f", "step", r#"{"status":"failed"}"#),
        ev("p", "step", "{}"),
    ]);
    let out = shutdown_all(&t);
    assert_eq!(out.len(), 1);
    assert_eq!(kept_by(&out[0]), Some("failed"));
    assert_eq!(decisions(&m, "kept", "shutdown"), 1);
    assert_eq!(decisions(&m, "dropped", "shutdown"), 1);
}

#[tokio::test(start_paused = true)]
async fn stopping_releases_open_runs_a_slice_at_a_time() {
    let t = open_runs(3000, "");
    let mut runs = 0;
    let mut calls = 0;
    loop {
        let (out, more) = t.shutdown();
        calls += 1;
        runs += one_slice(&out);
        if !more {
            break;
        }
    }
    assert_eq!(runs, 3000);
    assert!(calls >= 3, "{calls}");
    assert_eq!(t.shutdown().0.events.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn runs_closed_by_idle_come_out_a_slice_at_a_time() {
    let t = open_runs(3000, "idle: 10s\n");
    tokio::time::advance(Duration::from_secs(11)).await;
    let mut runs = 0;
    let mut calls = 0;
    while runs < 3000 {
        let out = t.poll();
        calls += 1;
        runs += one_slice(&out);
        if runs < 3000 {
            let due = t.next_deadline().expect("runs left");
            assert!(due <= Instant::now(), "the rest are due at once");
        }
        assert!(calls < 100);
    }
    assert!(calls >= 3, "{calls}");
    assert_eq!(t.poll().events.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn turning_off_lets_open_runs_go_a_slice_at_a_time_and_before_their_new_events() {
    let t = open_runs(3000, "");
    t.reconfigure(&config("enabled: false\nelse_rate: 1.0\nspill: null\n"));
    let mut runs = one_slice(&t.poll());
    assert!(runs < 3000);
    assert!(t.next_deadline().is_some_and(|d| d <= Instant::now()));
    // The newest run is still open: a new event of it comes after its held three.
    let out = t.admit(vec![ev("r2999", "step", "3")]);
    let last = out.events.last().unwrap();
    assert_eq!(
        (last.run_id.as_deref(), &last.data[..]),
        (Some("r2999"), &b"3"[..])
    );
    let held: Vec<&Event> = out
        .events
        .iter()
        .filter(|e| e.run_id.as_deref() == Some("r2999"))
        .collect();
    assert_eq!(held.len(), 4);
    runs += whole_runs(&out.events[..out.events.len() - 1]);
    while t.next_deadline().is_some_and(|d| d <= Instant::now()) {
        runs += whole_runs(&t.poll().events);
    }
    assert_eq!(runs, 3000);
    assert_eq!(t.admit(vec![ev("r1", "step", "4")]).events.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reload_changes_policies_live_and_turning_off_releases_open_runs() {
    let (t, m) = tail(ON);
    t.admit(vec![
        ev("slow", "step", r#"{"ms":5000}"#),
        ev("fast", "step", r#"{"ms":1}"#),
    ]);
    t.reconfigure(&config(
        "enabled: true\nelse_rate: 0.0\nspill: null\nkeep:\n  - {name: slow, when: 'data.ms > 1000'}\n",
    ));
    assert!(t.poll().events.is_empty(), "open runs stay open");
    t.reconfigure(&config(
        "enabled: false\nelse_rate: 0.0\nkeep:\n  - {name: slow, when: 'data.ms > 1000'}\n",
    ));
    let out = t.poll();
    assert_eq!(out.events.len(), 1);
    assert_eq!(
        kept_by(&out.events[0]),
        Some("slow"),
        "re-evaluated against the new policies"
    );
    assert_eq!(decisions(&m, "dropped", "rate"), 1);
    assert!(!t.enabled());
    // Off: events pass through, and the runs view sees them.
    let out = t.admit(vec![ev("x", "step", "1")]);
    assert_eq!(out.events.len(), 1);
    assert_eq!(t.get("x", 10).unwrap().0.state, "seen");
}

#[test]
fn plugin_batches_never_split_a_run_that_fits() {
    let evs: Vec<Event> = (0..10).map(|i| ev("r", "s", &i.to_string())).collect();
    let r = Released {
        events: evs,
        // 0,1 pass; run 2..6; 6 passes; run 7..10
        runs: vec![2..6, 7..10],
    };
    let sizes: Vec<usize> = r.into_batches(5).iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 5, 3]);
    let evs: Vec<Event> = (0..12).map(|i| ev("r", "s", &i.to_string())).collect();
    let r = Released {
        events: evs,
        runs: std::iter::once(0..12).collect(),
    };
    let sizes: Vec<usize> = r.into_batches(5).iter().map(Vec::len).collect();
    assert_eq!(sizes, [5, 5, 2], "a run over the limit is split");
}

#[test]
fn a_policy_that_does_not_compile_names_its_key() {
    let err = crate::config::parse(
        "sampling:\n  tail:\n    keep:\n      - {name: x, when: 'data.status ==='}\n",
    )
    .unwrap_err();
    assert_eq!(err.path, "sampling.tail.keep[0].when", "{err}");
    assert_eq!(err.line, Some(4), "{err}");
    assert!(err.message.contains("column"), "{err}");
    let err = crate::config::parse("sampling:\n  tail:\n    end_when: 'type =='\n").unwrap_err();
    assert_eq!(err.path, "sampling.tail.end_when", "{err}");
    assert_eq!(err.line, Some(3), "{err}");
}

#[tokio::test(start_paused = true)]
async fn closed_runs_leave_no_index_behind() {
    let (t, _m) = tail("enabled: true\nelse_rate: 0.0\nmax_bytes: 64MiB\nspill: null\n");
    let n = 20_000;
    t.admit((0..n).map(|r| ev(&format!("r{r}"), "step", "{}")).collect());
    {
        let st = t.inner.state.lock();
        assert_eq!(st.open.len(), n);
        assert!(index_bytes(&st) > n * 100, "the indexes are counted");
    }
    t.admit(
        (0..n)
            .map(|r| ev(&format!("r{r}"), "test_end", "{}"))
            .collect(),
    );
    // The next admissions find every run closed, and compact once that has lasted.
    t.admit(vec![ev("next", "step", "{}")]);
    tokio::time::advance(open::COMPACT_AFTER).await;
    t.admit(vec![ev("next", "step", "{}")]);
    let st = t.inner.state.lock();
    assert_eq!(st.open.len(), 1);
    assert!(
        st.deadlines.len() <= 1024 + 3,
        "deadlines of closed runs: {}",
        st.deadlines.len()
    );
    assert!(index_bytes(&st) < 64 << 10, "{}", index_bytes(&st));
}
