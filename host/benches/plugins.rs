//! Criterion benches for the plugin call cost per batch size: the Rust `redact` handler and the
//! `drop-debug` sampler from `plugins/dist/` (build them first with `bash plugins/build.sh`),
//! and the same `redact` in Python, JavaScript and C from `plugins/dist/lang/` when they are
//! built (`bash scripts/build-plugins`; a missing one is skipped with a note).
//!
//! `cargo bench -p outrigger --bench plugins`. Throughput is reported in events; each batch has
//! 10 % of events carrying a field to redact.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use outrigger::config::{Dur, PluginsConfig};
use outrigger::event::{Event, Line, parse_owned};
use outrigger::metrics::Metrics;
use outrigger::plugins::{Chain, PluginHost};

fn dist() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/dist"));
    assert!(
        d.join("redact.wasm").is_file(),
        "build the plugins first: bash plugins/build.sh"
    );
    d
}

fn batch(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let line = if i % 10 == 0 {
                format!(r#"{{"type":"login","run_id":"r{}","data":{{"user":"u{i}","password":"p{i}","n":{i}}}}}"#, i % 7)
            } else {
                format!(r#"{{"type":"api_call","run_id":"r{}","data":{{"path":"/v1/x","status":200,"n":{i}}}}}"#, i % 7)
            };
            match parse_owned(line.as_bytes(), 1 << 20) {
                Ok(Line::Event(e)) => e,
                _ => unreachable!(),
            }
        })
        .collect()
}

/// A chain of the one plugin `dist/{path}.wasm` (with its `.yml`), counting into `metrics`.
fn chain_for(rt: &tokio::runtime::Runtime, path: &str, metrics: &Arc<Metrics>) -> Chain {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let name = path.rsplit('/').next().expect("a name");
    std::fs::copy(
        dist().join(format!("{path}.wasm")),
        dir.join(format!("{name}.wasm")),
    )
    .expect("copy");
    let yml = dist().join(format!("{path}.yml"));
    if yml.is_file() {
        std::fs::copy(&yml, dir.join(format!("{name}.yml"))).expect("copy yml");
    }
    let mut cfg = PluginsConfig {
        dir: dir.clone(),
        cache_dir: Some(dir.join("cache")),
        ..Default::default()
    };
    // The JavaScript interpreter needs more than the default 1 M fuel per event in small
    // batches, and about 100 ms for a batch of 4000 (the default timeout); limits cost the same
    // whatever their size.
    cfg.defaults.fuel_per_event = 10_000_000;
    cfg.defaults.timeout = Dur(Duration::from_secs(5));
    let host =
        PluginHost::new(&cfg, metrics.clone(), Arc::new(|_: &str, _: &str| {})).expect("host");
    let set = host.load_set(&cfg).expect("load");
    assert_eq!(set.len(), 1, "{:?}", set.status());
    rt.block_on(Chain::new(set))
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for plugin in [
        "redact",
        "drop-debug",
        "lang/redact-c",
        "lang/redact-py",
        "lang/redact-js",
    ] {
        if !dist().join(format!("{plugin}.wasm")).is_file() {
            eprintln!("skipping {plugin}: not built (bash scripts/build-plugins)");
            continue;
        }
        let metrics = Arc::new(Metrics::new());
        let mut chain = chain_for(&rt, plugin, &metrics);
        let name = plugin.rsplit('/').next().expect("a name");
        let mut g = c.benchmark_group(format!("plugin_{name}"));
        for n in [1usize, 10, 100, 1000, 4000] {
            let events = batch(n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &events, |b, events| {
                b.iter_batched(
                    || events.clone(),
                    |batch| rt.block_on(chain.run(batch)),
                    BatchSize::SmallInput,
                )
            });
            // A failed call passes the batch through untouched and would be timed as a fast one.
            assert_no_errors(&format!("{plugin} in batches of {n}"), &metrics);
        }
        g.finish();
    }
}

/// Panics when a plugin call failed (fuel, memory, timeout, trap) during the bench.
fn assert_no_errors(plugin: &str, metrics: &Metrics) {
    let text = metrics.render();
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("outrigger_plugin_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(
        failed.is_empty(),
        "{plugin} failed during the bench, so its figures are not the plugin's: {failed:?}"
    );
}

criterion_group!(plugins, benches);
criterion_main!(plugins);
