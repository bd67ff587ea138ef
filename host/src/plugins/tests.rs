//! Runtime tests against the example and fixture plugins, built from source once per test
//! binary (`plugins/build.sh`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::*;
use crate::config::PluginsConfig;
use crate::event::{Event, Line};
use crate::metrics::{DropReason, Metrics};

/// `plugins/dist`, built once.
fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new("bash")
            .arg(root.join("plugins/build.sh"))
            .output()
            .expect("run plugins/build.sh");
        assert!(
            out.status.success(),
            "plugins/build.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        root.join("plugins/dist")
    })
}

struct Fixture {
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
    metrics: Arc<Metrics>,
    anomalies: Arc<Mutex<Vec<(String, String)>>>,
    host: PluginHost,
}

impl Fixture {
    /// A plugins dir holding `files` (paths relative to `plugins/dist`, e.g.
    /// `fixtures/misbehave.wasm`, optionally renamed `as`).
    fn new(files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for (src, name) in files {
            std::fs::copy(dist().join(src), dir.path().join(format!("{name}.wasm"))).unwrap();
        }
        let cache = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let anomalies: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen = anomalies.clone();
        let host = PluginHost::new(
            &PluginsConfig {
                cache_dir: Some(cache.path().to_path_buf()),
                ..Default::default()
            },
            metrics.clone(),
            Arc::new(move |k: &str, r: &str| seen.lock().push((k.into(), r.into()))),
        )
        .unwrap();
        Fixture {
            dir,
            cache,
            metrics,
            anomalies,
            host,
        }
    }

    fn config(&self, yaml: &str) -> PluginsConfig {
        let mut cfg: PluginsConfig = serde_yaml::from_str(yaml).unwrap();
        cfg.dir = self.dir.path().to_path_buf();
        cfg.cache_dir = Some(self.cache.path().to_path_buf());
        cfg
    }

    fn load(&self, yaml: &str) -> Arc<PluginSet> {
        self.host.load_set(&self.config(yaml)).unwrap()
    }

    /// The value of the series `name` whose labels include all of `labels` (0 if absent).
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics.render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (n, ls) = series.split_once('{').unwrap_or((series, ""));
            if n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.contains(&format!("{k}=\"{v}\"")))
            {
                return value.parse().unwrap();
            }
        }
        0.0
    }
}

fn ev(line: &str) -> Event {
    match crate::event::parse_owned(line.as_bytes(), 1 << 20).unwrap() {
        Line::Event(e) => e,
        _ => panic!("not an event: {line}"),
    }
}

fn data(e: &Event) -> serde_json::Value {
    serde_json::from_slice(&e.data).unwrap()
}

/// True when the `misbehave` fixture handled `e` as in its `ok` mode.
fn seen_by_misbehave(e: &Event) -> bool {
    e.attributes
        .contains(&("seen_by".into(), "misbehave".into()))
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| &*e.kind).collect()
}

#[tokio::test]
async fn redact_replaces_fields_and_counts() {
    let f = Fixture::new(&[("redact.wasm", "redact")]);
    std::fs::copy(dist().join("redact.yml"), f.dir.path().join("redact.yml")).unwrap();
    let set = f.load("{}");
    assert_eq!(set.len(), 1);
    let mut chain = Chain::new(set.clone()).await;
    let out = chain
        .run(vec![
            ev(r#"{"type":"login","data":{"user":"a","password":"hunter2","token":"t"}}"#),
            ev(r#"{"type":"other","data":{"user":"b"}}"#),
            ev(r#"{"type":"login","data":[1,2]}"#),
        ])
        .await;
    assert_eq!(kinds(&out), ["login", "other", "login"]);
    assert_eq!(data(&out[0])["password"], "***");
    assert_eq!(data(&out[0])["token"], "***");
    assert_eq!(data(&out[0])["user"], "a");
    assert_eq!(out[1].data_str(), r#"{"user":"b"}"#);
    assert_eq!(
        f.metric(
            "outrigger_plugin_counter_total",
            &[("plugin", "redact"), ("name", "redacted")]
        ),
        2.0
    );
    assert_eq!(
        f.metric("outrigger_plugin_calls_total", &[("plugin", "redact")]),
        1.0
    );
    assert!(
        f.metric(
            "outrigger_plugin_fuel_consumed_total",
            &[("plugin", "redact")]
        ) > 0.0
    );
    let st = &set.status()[0];
    assert_eq!(st.world, "handler");
    assert_eq!(st.calls, 1);
}

#[tokio::test]
async fn types_routing_keeps_order_and_chain_config_overrides_yml() {
    let f = Fixture::new(&[("redact.wasm", "redact")]);
    std::fs::copy(dist().join("redact.yml"), f.dir.path().join("redact.yml")).unwrap();
    let set = f.load("chain: [{name: redact, types: [api_call], config: {fields: [secret]}}]");
    let mut chain = Chain::new(set).await;
    let out = chain
        .run(vec![
            ev(r#"{"type":"a","data":{"secret":1}}"#),
            ev(r#"{"type":"api_call","data":{"secret":2,"password":"p"}}"#),
            ev(r#"{"type":"b","data":{"secret":3}}"#),
        ])
        .await;
    assert_eq!(kinds(&out), ["a", "api_call", "b"]);
    assert_eq!(data(&out[0])["secret"], 1);
    assert_eq!(data(&out[1])["secret"], "***");
    assert_eq!(
        data(&out[1])["password"],
        "p",
        "chain config replaces the yml"
    );
    assert_eq!(data(&out[2])["secret"], 3);
}

#[tokio::test]
async fn sampler_runs_first_and_drops_count_as_sampled_out() {
    let f = Fixture::new(&[
        ("drop-debug.wasm", "drop-debug"),
        ("error-alert.wasm", "error-alert"),
    ]);
    // error-alert named first in the chain, but the sampler still runs first.
    let set = f.load("chain: [{name: error-alert}, {name: drop-debug}]");
    let names: Vec<String> = set.status().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["drop-debug", "error-alert"]);
    let mut chain = Chain::new(set).await;
    let out = chain
        .run(vec![
            ev(r#"{"type":"debug.x","data":{"status":"failed"}}"#),
            ev(r#"{"type":"job","data":{"status":"failed"}}"#),
            ev(r#"{"type":"job","data":{"status":"ok"}}"#),
        ])
        .await;
    assert_eq!(kinds(&out), ["job", "job"]);
    assert_eq!(f.metrics.dropped_count(DropReason::SampledOut), 1);
    assert_eq!(
        f.anomalies.lock().clone(),
        vec![("job".to_string(), "failed".to_string())]
    );
    assert_eq!(
        f.metric(
            "outrigger_plugin_counter_total",
            &[("plugin", "error-alert"), ("name", "alerts")]
        ),
        1.0
    );
}

#[tokio::test]
async fn emitted_events_pass_through_later_plugins() {
    let f = Fixture::new(&[
        ("fixtures/emitter.wasm", "a-emitter"),
        ("fixtures/misbehave.wasm", "b-tagger"),
    ]);
    let set = f.load(
        "chain: [{name: a-emitter, config: {drop_trigger: true}}, {name: b-tagger, config: {mode: ok}}]",
    );
    let mut chain = Chain::new(set).await;
    let out = chain
        .run(vec![
            ev(r#"{"type":"trigger","run_id":"r1","ts_ns":42,"data":{}}"#),
            ev(r#"{"type":"plain","data":{}}"#),
        ])
        .await;
    assert_eq!(kinds(&out), ["plain", "derived"]);
    let derived = &out[1];
    assert_eq!(data(derived)["from"], 42);
    assert_eq!(derived.run_id.as_deref(), Some("r1"));
    assert!(
        seen_by_misbehave(derived),
        "the emitted event went through the later plugin: {:?}",
        derived.attributes
    );
    assert_eq!(f.metrics.dropped_count(DropReason::Plugin), 1);
    assert_eq!(
        f.metric(
            "outrigger_plugin_gauge",
            &[("plugin", "a-emitter"), ("name", "last_batch")]
        ),
        2.0
    );
}

/// Loads `misbehave` in `mode` with quarantine after `after` failures.
fn misbehave(mode: &str, extra: &str) -> (Fixture, Arc<PluginSet>) {
    let f = Fixture::new(&[("fixtures/misbehave.wasm", "bad")]);
    let set = f.load(&format!(
        "defaults: {{quarantine_after: 100, {extra}}}\nchain: [{{name: bad, config: {{mode: {mode}}}}}]"
    ));
    assert_eq!(set.len(), 1, "{:?}", set.status());
    (f, set)
}

async fn assert_error(mode: &str, kind: &str, extra: &str) {
    let (f, set) = misbehave(mode, extra);
    let mut chain = Chain::new(set.clone()).await;
    let input = vec![
        ev(r#"{"type":"x","data":{"n":1}}"#),
        ev(r#"{"type":"y","data":{"n":2}}"#),
    ];
    let start = Instant::now();
    let out = chain.run(input).await;
    let took = start.elapsed();
    assert_eq!(
        kinds(&out),
        ["x", "y"],
        "on_error pass keeps the batch ({mode})"
    );
    assert!(out.iter().all(|e| e.attributes.is_empty()));
    assert_eq!(
        f.metric(
            "outrigger_plugin_errors_total",
            &[("plugin", "bad"), ("kind", kind)]
        ),
        1.0,
        "mode {mode}: {:?} (took {took:?})",
        set.status()
    );
    let last = set.status()[0].last_error.clone().unwrap_or_default();
    assert!(last.starts_with(kind), "{last}");
    // The failed instance was replaced: the next batch gets a fresh one and behaves.
    let out = chain
        .run(vec![ev(
            r#"{"type":"x","attributes":{"fail":"no"},"data":{}}"#,
        )])
        .await;
    assert!(
        seen_by_misbehave(&out[0]),
        "mode {mode}: {:?}",
        set.status()
    );
}

#[tokio::test]
async fn spin_is_stopped_by_the_timeout() {
    assert_error("spin", "timeout", "fuel_per_event: 100000000000").await;
}

#[tokio::test]
async fn spin_with_default_fuel_runs_out_of_fuel() {
    assert_error("spin", "fuel", "timeout: 10s").await;
}

#[tokio::test]
async fn memory_growth_is_capped() {
    assert_error("oom", "memory", "memory_mb: 16").await;
}

/// A guest whose heap only grows (a leak, or a collector that does not know the cap) is given
/// a fresh instance between batches before it runs out of memory: no batch fails.
#[tokio::test]
async fn an_instance_whose_memory_keeps_growing_is_replaced_between_batches() {
    let (f, set) = misbehave("leak", "memory_mb: 16");
    let mut chain = Chain::new(set.clone()).await;
    // 1 MiB a batch: without replacement the 16 MiB cap is reached within 16 batches.
    for i in 0..40 {
        let out = chain
            .run(vec![ev(&format!(r#"{{"type":"x","data":{{"n":{i}}}}}"#))])
            .await;
        assert!(
            seen_by_misbehave(&out[0]),
            "batch {i} was not handled: {:?}",
            set.status()
        );
    }
    let recycled = f.metric("outrigger_plugin_recycled_total", &[("plugin", "bad")]);
    assert!(recycled >= 2.0, "recycled {recycled} times");
    let stats = &chain.stats()[0].1;
    assert_eq!(stats.recycled as f64, recycled);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
}

#[tokio::test]
async fn trap_is_a_trap() {
    assert_error("trap", "trap", "").await;
}

#[tokio::test]
async fn wrong_length_is_bad_output() {
    assert_error("wrong_len", "bad_output", "").await;
}

#[tokio::test]
async fn bad_replacement_is_bad_output() {
    assert_error("bad_replace", "bad_output", "").await;
}

#[tokio::test]
async fn sleeping_in_wasi_is_cancelled_at_the_timeout() {
    let start = Instant::now();
    assert_error("sleep", "timeout", "timeout: 200ms").await;
    // The guest asked for 10 s; it was cut off (generous bound: no timing precision implied).
    assert!(start.elapsed() < Duration::from_secs(9));
}

#[test]
fn the_call_timeout_scales_with_the_batch() {
    let settings = |timeout_ms: u64, per_event_us: u64| load::Settings {
        fuel_per_event: 1,
        memory_bytes: 1 << 20,
        timeout: Duration::from_millis(timeout_ms),
        timeout_per_event: Duration::from_micros(per_event_us),
        on_error: crate::config::OnError::Pass,
        quarantine_after: 3,
        quarantine_initial: Duration::from_secs(1),
        quarantine_max: Duration::from_secs(1),
    };
    let ms = Duration::from_millis;
    // The defaults: `timeout` is the floor up to 100 events, then 1 ms an event.
    let d = settings(100, 1000);
    assert_eq!(d.call_timeout(0), ms(100));
    assert_eq!(d.call_timeout(1), ms(100));
    assert_eq!(d.call_timeout(100), ms(100));
    assert_eq!(d.call_timeout(101), ms(101));
    assert_eq!(d.call_timeout(1000), ms(1000));
    // 0 turns the per-event part off.
    assert_eq!(settings(100, 0).call_timeout(1_000_000), ms(100));
    assert_eq!(settings(5, 1000).call_timeout(1000), ms(1000));
    assert_eq!(settings(5, 250).call_timeout(10), ms(5));
    assert_eq!(
        settings(5, 250).call_timeout(40),
        Duration::from_micros(10_000)
    );
    // Saturates instead of overflowing.
    let huge = load::Settings {
        timeout_per_event: Duration::MAX,
        ..settings(5, 0)
    };
    assert_eq!(
        huge.call_timeout(usize::MAX),
        Duration::from_nanos(u64::MAX)
    );
}

#[tokio::test]
async fn timeout_per_event_comes_from_the_defaults_and_the_chain() {
    let f = Fixture::new(&[
        ("fixtures/misbehave.wasm", "a"),
        ("fixtures/misbehave.wasm", "b"),
        ("fixtures/misbehave.wasm", "c"),
    ]);
    let set = f.load(
        "defaults: {timeout: 20ms, timeout_per_event: 2ms}\n\
         chain: [{name: a}, {name: b, timeout_per_event: 0}, {name: c, timeout: 1s, timeout_per_event: 500us}]",
    );
    let bounds: Vec<_> = set
        .plugins
        .iter()
        .map(|p| (p.settings.call_timeout(1), p.settings.call_timeout(1000)))
        .collect();
    let ms = Duration::from_millis;
    assert_eq!(
        bounds,
        [(ms(20), ms(2000)), (ms(20), ms(20)), (ms(1000), ms(1000))]
    );
    let d = f.load("{}");
    assert_eq!(d.plugins[0].settings.timeout_per_event, ms(1));
}

/// `misbehave` in `mode` (`busy`: spinning in wasm, so the epoch deadline stops it; `slow`: in
/// a WASI sleep, so the host's timeout does) taking `ms_per_event` per event, under `limits`.
fn slow_plugin(mode: &str, ms_per_event: u64, limits: &str) -> (Fixture, Arc<PluginSet>) {
    let f = Fixture::new(&[("fixtures/misbehave.wasm", "slow")]);
    let set = f.load(&format!(
        "defaults: {{fuel_per_event: 100000000000, quarantine_after: 100, {limits}}}\n\
         chain: [{{name: slow, types: [x], config: {{mode: {mode}, ms_per_event: {ms_per_event}}}}}]"
    ));
    assert_eq!(set.len(), 1, "{:?}", set.status());
    (f, set)
}

fn xs(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| ev(&format!(r#"{{"type":"x","data":{{"i":{i}}}}}"#)))
        .collect()
}

/// A batch of 50 events needing 4 ms each (200 ms) runs past `timeout: 50ms` but within
/// `timeout_per_event: 10ms` × 50; with `timeout_per_event: 0` it fails, halves included.
#[tokio::test]
async fn a_long_batch_passes_within_timeout_per_event() {
    for mode in ["busy", "slow"] {
        let (f, set) = slow_plugin(mode, 4, "timeout: 50ms, timeout_per_event: 10ms");
        let mut chain = Chain::new(set.clone()).await;
        let out = chain.run(xs(50)).await;
        assert!(
            out.iter().all(seen_by_misbehave),
            "{mode}: {:?}",
            set.status()
        );
        assert_eq!(set.status()[0].errors, 0, "{mode}");
        assert_eq!(
            f.metric("outrigger_plugin_calls_total", &[("plugin", "slow")]),
            1.0,
            "{mode}: one call, no retry"
        );

        let (f, set) = slow_plugin(mode, 4, "timeout: 50ms, timeout_per_event: 0");
        let mut chain = Chain::new(set.clone()).await;
        let out = chain.run(xs(50)).await;
        assert!(!out.iter().any(seen_by_misbehave), "{mode}: on_error pass");
        assert_eq!(
            f.metric(
                "outrigger_plugin_errors_total",
                &[("plugin", "slow"), ("kind", "timeout")]
            ),
            1.0,
            "{mode}: {:?}",
            set.status()
        );
        assert_eq!(
            f.metric(
                "outrigger_plugin_split_retries_total",
                &[("plugin", "slow"), ("result", "failed")]
            ),
            1.0,
            "{mode}"
        );
        let last = set.status()[0].last_error.clone().unwrap_or_default();
        assert!(last.contains("over 50ms"), "{mode}: {last}");
    }
}

/// A batch that runs out of time whole but fits in halves passes, in order, with events
/// the plugin is not routed kept in place, and nothing is counted as an error.
#[tokio::test]
async fn a_batch_that_times_out_passes_in_halves() {
    // 4 routed events at 100 ms: 400 ms whole, over `timeout`; 200 ms a half, within it.
    let (f, set) = slow_plugin("slow", 100, "timeout: 300ms, timeout_per_event: 0");
    let mut chain = Chain::new(set.clone()).await;
    let input = vec![
        ev(r#"{"type":"y","data":{"i":0}}"#),
        ev(r#"{"type":"x","data":{"i":1}}"#),
        ev(r#"{"type":"x","data":{"i":2}}"#),
        ev(r#"{"type":"y","data":{"i":3}}"#),
        ev(r#"{"type":"x","data":{"i":4}}"#),
        ev(r#"{"type":"x","data":{"i":5}}"#),
    ];
    let out = chain.run(input).await;
    let order: Vec<_> = out
        .iter()
        .map(|e| (data(e)["i"].as_u64().unwrap(), seen_by_misbehave(e)))
        .collect();
    assert_eq!(
        order,
        [
            (0, false),
            (1, true),
            (2, true),
            (3, false),
            (4, true),
            (5, true)
        ],
        "{:?}",
        set.status()
    );
    let st = &set.status()[0];
    assert_eq!((st.errors, st.consecutive_failures), (0, 0), "{st:?}");
    assert_eq!(
        f.metric("outrigger_plugin_calls_total", &[("plugin", "slow")]),
        3.0,
        "the whole batch, then each half"
    );
    assert_eq!(
        f.metric(
            "outrigger_plugin_split_retries_total",
            &[("plugin", "slow"), ("result", "passed")]
        ),
        1.0
    );
    let stats = &chain.stats()[0].1;
    assert_eq!(
        (stats.calls, stats.failed_batches, stats.replaced),
        (3, 0, 4)
    );
}

/// A plugin that spins is still stopped: the batch and its first half time out, the second
/// half is not tried, and the batch counts one error (one step towards quarantine).
#[tokio::test]
async fn a_spinning_plugin_is_stopped_and_counted_once_after_the_halves() {
    let (f, set) = misbehave("spin", "fuel_per_event: 100000000000");
    let mut chain = Chain::new(set.clone()).await;
    let start = Instant::now();
    let out = chain.run(xs(4)).await;
    let took = start.elapsed();
    assert_eq!(out.len(), 4);
    assert!(!out.iter().any(seen_by_misbehave));
    let st = &set.status()[0];
    assert_eq!((st.errors, st.consecutive_failures), (1, 1), "{st:?}");
    let last = st.last_error.clone().unwrap_or_default();
    assert!(
        last.starts_with("timeout") && last.contains("retried in halves"),
        "{last}"
    );
    assert_eq!(
        f.metric("outrigger_plugin_calls_total", &[("plugin", "bad")]),
        2.0
    );
    assert_eq!(
        f.metric(
            "outrigger_plugin_split_retries_total",
            &[("plugin", "bad"), ("result", "failed")]
        ),
        1.0
    );
    // Two 100 ms bounds and a new instance (generous: no timing precision implied).
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn init_error_is_counted_and_the_batch_passes() {
    let (f, set) = misbehave("init_error", "");
    let mut chain = Chain::new(set.clone()).await;
    let out = chain.run(vec![ev(r#"{"type":"x","data":{}}"#)]).await;
    assert_eq!(kinds(&out), ["x"]);
    // Once at Chain::new, once more when the batch tried a new instance.
    assert_eq!(
        f.metric(
            "outrigger_plugin_errors_total",
            &[("plugin", "bad"), ("kind", "init")]
        ),
        2.0
    );
}

#[tokio::test]
async fn on_error_drop_drops_and_counts() {
    let f = Fixture::new(&[("fixtures/misbehave.wasm", "bad")]);
    let set = f.load("chain: [{name: bad, on_error: drop, types: [x], config: {mode: trap}}]");
    let mut chain = Chain::new(set).await;
    let out = chain
        .run(vec![
            ev(r#"{"type":"x","data":{}}"#),
            ev(r#"{"type":"y","data":{}}"#),
            ev(r#"{"type":"x","data":{}}"#),
        ])
        .await;
    assert_eq!(kinds(&out), ["y"], "only the routed events were dropped");
    assert_eq!(f.metrics.dropped_count(DropReason::Plugin), 2);
}

#[tokio::test]
async fn repeated_failures_quarantine_then_recover() {
    let f = Fixture::new(&[("fixtures/misbehave.wasm", "bad")]);
    let set = f.load(
        "defaults: {quarantine_after: 2, quarantine_initial: 200ms, quarantine_max: 1s}\n\
         chain: [{name: bad, config: {mode: trap}}]",
    );
    let mut chain = Chain::new(set.clone()).await;
    let batch = || vec![ev(r#"{"type":"x","data":{}}"#)];
    chain.run(batch()).await;
    assert!(!set.status()[0].quarantined);
    chain.run(batch()).await;
    let st = &set.status()[0];
    assert!(st.quarantined, "{st:?}");
    assert!(st.quarantined_until.is_some());
    assert_eq!(
        f.metric("outrigger_plugin_quarantined", &[("plugin", "bad")]),
        1.0
    );
    // While quarantined, batches bypass it: no more calls, no more errors.
    let calls = f.metric("outrigger_plugin_calls_total", &[("plugin", "bad")]);
    let out = chain.run(batch()).await;
    assert_eq!(kinds(&out), ["x"]);
    assert_eq!(
        f.metric("outrigger_plugin_calls_total", &[("plugin", "bad")]),
        calls
    );
    // Wait for the quarantine to end, then a good batch recovers it.
    let end = Instant::now() + Duration::from_secs(10);
    while set.status()[0].quarantined {
        assert!(Instant::now() < end, "quarantine never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = chain
        .run(vec![ev(
            r#"{"type":"x","attributes":{"fail":"no"},"data":{}}"#,
        )])
        .await;
    assert!(seen_by_misbehave(&out[0]));
    let st = &set.status()[0];
    assert_eq!(st.consecutive_failures, 0);
    assert!(!st.quarantined);
    assert_eq!(
        f.metric("outrigger_plugin_quarantined", &[("plugin", "bad")]),
        0.0
    );
}

#[tokio::test]
async fn optional_plugins_are_skipped_over_budget() {
    let f = Fixture::new(&[("fixtures/misbehave.wasm", "tagger")]);
    let set = f.load("chain: [{name: tagger, optional: true, config: {mode: ok}}]");
    let mut chain = Chain::new(set).await;
    chain.set_skip_optional(true);
    let out = chain.run(vec![ev(r#"{"type":"x","data":{}}"#)]).await;
    assert!(out[0].attributes.is_empty());
    chain.set_skip_optional(false);
    let out = chain.run(vec![ev(r#"{"type":"x","data":{}}"#)]).await;
    assert_eq!(
        out[0].attributes,
        vec![("seen_by".into(), "misbehave".into())]
    );
}

#[tokio::test]
async fn disabled_missing_and_broken_plugins() {
    let f = Fixture::new(&[("redact.wasm", "redact"), ("drop-debug.wasm", "off")]);
    std::fs::write(f.dir.path().join("broken.wasm"), b"not wasm").unwrap();
    std::fs::write(f.dir.path().join("redact.yml"), "fields: [unclosed").unwrap();
    let set = f.load("chain: [{name: off, enabled: false}, {name: ghost}]");
    assert_eq!(set.len(), 0);
    let st = set.status();
    let names: Vec<&str> = st.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["broken", "redact", "ghost"]);
    assert!(
        st.iter()
            .all(|s| s.last_error.is_some() && s.world == "unknown")
    );
    assert!(st[1].last_error.as_deref().unwrap().contains("redact.yml"));
    assert_eq!(
        f.metric(
            "outrigger_reloads_total",
            &[("target", "plugin"), ("result", "error")]
        ),
        3.0
    );
}

#[test]
fn the_runtime_is_made_with_the_first_plugin() {
    let f = Fixture::new(&[]);
    assert!(f.load("{}").is_empty());
    assert!(!f.host.runtime_made(), "no plugin, no engine");
    std::fs::copy(dist().join("redact.wasm"), f.dir.path().join("redact.wasm")).unwrap();
    assert_eq!(f.load("{}").len(), 1);
    assert!(f.host.runtime_made());
}

#[tokio::test]
async fn missing_dir_is_an_empty_set() {
    let f = Fixture::new(&[]);
    let mut cfg = f.config("{}");
    cfg.dir = f.dir.path().join("nope");
    let set = f.host.load_set(&cfg).unwrap();
    assert!(set.is_empty());
}

#[test]
fn cache_is_used_and_a_corrupt_entry_is_rebuilt() {
    let f = Fixture::new(&[("redact.wasm", "redact")]);
    let first = f.load("{}");
    assert_eq!(first.status()[0].from_cache, Some(false));
    // A new host (as after a restart) finds the artifact in the cache.
    let host = PluginHost::new(
        &f.config("{}"),
        f.metrics.clone(),
        Arc::new(|_: &str, _: &str| {}),
    )
    .unwrap();
    let second = host.load_set(&f.config("{}")).unwrap();
    assert_eq!(second.status()[0].from_cache, Some(true));
    // Corrupt every entry: it is ignored, recompiled and rewritten.
    let dir = f.cache.path().join("components");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
    }
    let host = PluginHost::new(
        &f.config("{}"),
        f.metrics.clone(),
        Arc::new(|_: &str, _: &str| {}),
    )
    .unwrap();
    let third = host.load_set(&f.config("{}")).unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third.status()[0].from_cache, Some(false));
    let host = PluginHost::new(
        &f.config("{}"),
        f.metrics.clone(),
        Arc::new(|_: &str, _: &str| {}),
    )
    .unwrap();
    assert_eq!(
        host.load_set(&f.config("{}")).unwrap().status()[0].from_cache,
        Some(true)
    );
}

#[test]
fn reload_reuses_unchanged_components() {
    let f = Fixture::new(&[("redact.wasm", "redact")]);
    let a = f.load("{}");
    let b = f.load("{}");
    assert!(Arc::ptr_eq(&a.plugins[0].compiled, &b.plugins[0].compiled));
    assert!(Arc::ptr_eq(&a.plugins[0].health, &b.plugins[0].health));
}

#[test]
fn check_accepts_components_and_names_mismatches() {
    assert!(cli::check(&dist().join("redact.wasm")).unwrap());
    assert!(cli::check(&dist().join("drop-debug.wasm")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap();
    assert!(!cli::check(&junk).unwrap());
    assert!(cli::check(&dir.path().join("absent.wasm")).is_err());
}

/// `plugins/dist/fixtures/NAME.wasm`, which `plugins/build.sh` builds (the grant fixtures).
fn grant_fixture(name: &str) -> String {
    let rel = format!("fixtures/{name}.wasm");
    assert!(
        dist().join(&rel).is_file(),
        "plugins/dist/{rel} is missing: plugins/build.sh builds it"
    );
    rel
}

#[tokio::test]
async fn grants_decide_what_loads_and_a_revoked_grant_is_not_kept() {
    let http = grant_fixture("http-poster");
    let fs = grant_fixture("fs-probe");
    let f = Fixture::new(&[(http.as_str(), "poster"), (fs.as_str(), "probe")]);
    let set = f.load("{}");
    assert!(set.is_empty());
    let st = set.status();
    let err = |name: &str| {
        st.iter()
            .find(|s| s.name == name)
            .and_then(|s| s.last_error.clone())
            .unwrap_or_default()
    };
    assert!(
        err("poster").starts_with("imports wasi:http/types@")
            && err("poster").ends_with(r#"which needs grants.http: ["host:port"]"#),
        "{}",
        err("poster")
    );
    assert!(
        err("probe").ends_with("which needs grants.dirs: [{host: DIR, guest: /PATH}]"),
        "{}",
        err("probe")
    );

    let data = tempfile::tempdir().unwrap();
    let granted = format!(
        "chain: [{{name: poster, config: {{url: \"http://127.0.0.1:9/x\"}}, grants: {{http: [\"127.0.0.1:9\"]}}}}, \
         {{name: probe, grants: {{dirs: [{{host: \"{}\", guest: /data}}]}}}}]",
        data.path().display()
    );
    let set = f.load(&granted);
    assert_eq!(set.len(), 2, "{:?}", set.status());
    let poster = set.plugins.iter().find(|p| &*p.name == "poster").unwrap();
    assert!(poster.compiled.http, "linked with wasi:http");
    let probe = set.plugins.iter().find(|p| &*p.name == "probe").unwrap();
    assert!(!probe.compiled.http, "dirs alone do not link wasi:http");
    // Reloading with the same grants reuses both components.
    let again = f.load(&granted);
    for p in &again.plugins {
        let before = set.plugins.iter().find(|q| q.name == p.name).unwrap();
        assert!(Arc::ptr_eq(&p.compiled, &before.compiled), "{}", p.name);
    }

    // A broken new file under the same grants: the previous version keeps running.
    let probe_file = f.dir.path().join("probe.wasm");
    let good = std::fs::read(&probe_file).unwrap();
    std::fs::write(&probe_file, b"not wasm").unwrap();
    let set = f.load(&granted);
    let state = |set: &PluginSet, name: &str| {
        set.status()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| (s.state, s.last_error.unwrap_or_default()))
            .unwrap()
    };
    assert_eq!(state(&set, "probe").0, PluginState::KeptPrevious);
    std::fs::write(&probe_file, good).unwrap();
    assert_eq!(state(&f.load(&granted), "probe").0, PluginState::Active);

    // Revoked: refused again, and the version loaded under the grant is not kept.
    let set = f.load("chain: [{name: probe}]");
    assert!(set.is_empty(), "{:?}", set.status());
    let (st, err) = state(&set, "probe");
    assert_eq!(st, PluginState::Failed);
    assert!(
        err.ends_with("which needs grants.dirs: [{host: DIR, guest: /PATH}]"),
        "{err}"
    );
    assert_eq!(state(&set, "poster").0, PluginState::Failed);
}

#[tokio::test]
async fn a_denied_request_fails_in_the_guest_and_is_counted() {
    let http = grant_fixture("http-poster");
    let f = Fixture::new(&[(http.as_str(), "poster")]);
    let set = f.load(
        "chain: [{name: poster, config: {url: \"http://127.0.0.1:9/x\"}, grants: {http: [\"127.0.0.1:10\"]}}]",
    );
    let mut chain = Chain::new(set).await;
    let out = chain.run(vec![ev(r#"{"type":"a","data":{}}"#)]).await;
    assert_eq!(out.len(), 1, "the plugin keeps the event");
    let m = |result: &str| {
        f.metric(
            "outrigger_plugin_http_requests_total",
            &[("plugin", "poster"), ("result", result)],
        )
    };
    assert_eq!(m("denied"), 1.0);
    assert_eq!(m("ok") + m("error") + m("timeout"), 0.0);
    assert_eq!(
        f.metric(
            "outrigger_plugin_counter_total",
            &[("plugin", "poster"), ("name", "http_err")]
        ),
        1.0
    );
}

/// What a call of a plugin granted `http` costs when it POSTs once to a server on the same
/// machine (a new connection per request: the host keeps none open between calls), next to the
/// same plugin denied by its grant (no connection) and to `redact` on one event (no request).
/// Printed, never asserted (`cargo test -p outrigger --lib http_granted_call_cost --
/// --nocapture`); docs/plugins.md quotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_granted_call_cost() {
    let http = grant_fixture("http-poster");
    // Reads the whole body before answering, as a real endpoint does (answering first races
    // the rest of the upload: the server may close while the client still writes).
    let app = axum::Router::new().fallback(axum::routing::post(|body: String| async move {
        format!("{} bytes", body.len())
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let f = Fixture::new(&[
        (http.as_str(), "granted"),
        (http.as_str(), "denied"),
        ("redact.wasm", "redact"),
    ]);
    std::fs::copy(dist().join("redact.yml"), f.dir.path().join("redact.yml")).unwrap();
    let cfg = f.config(&format!(
        "chain: [{{name: granted, timeout: 5s, config: {{url: \"http://{addr}/hook\"}}, grants: {{http: [\"{addr}\"]}}}}, \
         {{name: denied, timeout: 5s, config: {{url: \"http://127.0.0.1:9/hook\"}}, grants: {{http: [\"{addr}\"]}}}}]"
    ));
    const CALLS: u32 = 300;
    let mut report = Vec::new();
    for name in ["granted", "denied", "redact"] {
        let file = f.dir.path().join(format!("{name}.wasm"));
        let set = Arc::new(f.host.load_files(&cfg, vec![(name.to_string(), file)]));
        assert_eq!(set.len(), 1, "{:?}", set.status());
        let mut chain = Chain::new(set).await;
        let one = || vec![ev(r#"{"type":"login","data":{"user":"u","password":"p"}}"#)];
        for _ in 0..30 {
            chain.run(one()).await;
        }
        let start = Instant::now();
        for _ in 0..CALLS {
            assert_eq!(chain.run(one()).await.len(), 1);
        }
        report.push((name, start.elapsed() / CALLS));
    }
    let requests = |result: &str| {
        f.metric(
            "outrigger_plugin_http_requests_total",
            &[("plugin", "granted"), ("result", result)],
        )
    };
    let results: Vec<(&str, f64)> = ["ok", "error", "timeout", "denied"]
        .into_iter()
        .map(|r| (r, requests(r)))
        .collect();
    println!("http_granted_call_cost: granted requests by result: {results:?}");
    assert_eq!(results[0].1, f64::from(CALLS + 30), "{results:?}");
    for (name, per_call) in report {
        println!("http_granted_call_cost: {name}: {per_call:?} per call of one event");
    }
}

/// `plugins/dist/lang/redact-py.wasm`, built from source once per test binary (needs
/// componentize-py, as the end-to-end language tests do).
fn redact_py() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new("bash")
            .arg(root.join("plugins/python/redact/build.sh"))
            .output()
            .expect("run plugins/python/redact/build.sh");
        assert!(
            out.status.success(),
            "plugins/python/redact/build.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        root.join("plugins/dist/lang/redact-py.wasm")
    })
}

/// The Python `redact` takes about 60 µs an event of this shape on an idle machine: 60 ms for
/// a batch of `outrigger replay`, over a 5 ms `timeout` whole and in halves. With
/// `timeout_per_event: 1ms` (and on the defaults) the batch gets 1 s and passes; with
/// `timeout_per_event: 0` it fails, once.
#[tokio::test]
async fn python_redact_on_a_replay_batch_needs_timeout_per_event() {
    let py = redact_py();
    let f = Fixture::new(&[]);
    for name in ["scaled", "defaults", "flat"] {
        std::fs::copy(py, f.dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    let set = f.load(
        "chain:\n\
         - {name: scaled, timeout: 5ms, timeout_per_event: 1ms, config: {fields: [password]}}\n\
         - {name: defaults, config: {fields: [token]}}\n\
         - {name: flat, timeout: 5ms, timeout_per_event: 0, config: {fields: [user]}}\n",
    );
    assert_eq!(set.len(), 3, "{:?}", set.status());
    let mut chain = Chain::new(set.clone()).await;
    let n = cli::REPLAY_BATCH;
    let batch: Vec<Event> = (0..n)
        .map(|i| {
            ev(&format!(
                r#"{{"type":"login","data":{{"user":"u{i}","password":"p","token":"t","z":{{"a":[1,2.5,{{"b":[{{"c":{{"d":"e"}}}}]}}],"x":{{"y":{{"z":[true,null,"s"]}}}}}}}}}}"#
            ))
        })
        .collect();
    let out = chain.run(batch).await;
    assert_eq!(out.len(), n);
    let d = data(&out[n - 1]);
    assert_eq!(
        (&d["password"], &d["token"]),
        (&"***".into(), &"***".into())
    );
    assert_eq!(
        d["user"],
        format!("u{}", n - 1),
        "flat failed and passed the batch"
    );
    let status = set.status();
    let errors: Vec<_> = status.iter().map(|s| (s.name.as_str(), s.errors)).collect();
    assert_eq!(
        errors,
        [("scaled", 0), ("defaults", 0), ("flat", 1)],
        "{status:?}"
    );
    let last = status[2].last_error.clone().unwrap_or_default();
    assert!(last.starts_with("timeout"), "{last}");
}
