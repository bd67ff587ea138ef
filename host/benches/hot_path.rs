//! Criterion benches for the hot path: envelope parse, sampler decision, the tail stage, batch
//! encode.
//!
//! `cargo bench -p outrigger --bench hot_path`. Each bench works on a batch of 2000 events of
//! about 160 bytes, the default `batch.max_events`; throughput is reported in events.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outrigger::config::SamplingConfig;
use outrigger::event::{Event, Interner, Line, parse_line, parse_line_with};
use outrigger::metrics::Metrics;
use outrigger::sampler::Sampler;

const N: usize = 2000;

fn chunk() -> Bytes {
    let mut s = String::new();
    for i in 0..N {
        s.push_str(&format!(
            "{{\"type\":\"test_end\",\"run_id\":\"run_{}\",\"ts\":1732290000.123,\"attributes\":{{\"suite\":\"unit\"}},\"data\":{{\"i\":{i},\"status\":\"passed\",\"duration_ms\":12.5,\"name\":\"tests::case_{i}\"}}}}\n",
            i % 50
        ));
    }
    Bytes::from(s)
}

fn parse_all(buf: &Bytes) -> Vec<Event> {
    let mut out = Vec::with_capacity(N);
    let mut interner = Interner::default();
    for line in buf
        .strip_suffix(b"\n")
        .unwrap_or(buf)
        .split(|b| *b == b'\n')
    {
        if let Ok(Line::Event(e)) = parse_line_with(buf, line, 1 << 20, Some(&mut interner)) {
            out.push(e);
        }
    }
    out
}

/// The same without the interner: every `type` and `run_id` allocated.
fn parse_all_uninterned(buf: &Bytes) -> Vec<Event> {
    let mut out = Vec::with_capacity(N);
    for line in buf
        .strip_suffix(b"\n")
        .unwrap_or(buf)
        .split(|b| *b == b'\n')
    {
        if let Ok(Line::Event(e)) = parse_line(buf, line, 1 << 20) {
            out.push(e);
        }
    }
    out
}

fn benches(c: &mut Criterion) {
    let buf = chunk();
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("envelope_parse_2000", |b| b.iter(|| parse_all(&buf)));
    g.bench_function("envelope_parse_2000_uninterned", |b| {
        b.iter(|| parse_all_uninterned(&buf))
    });

    let events = parse_all(&buf);
    let cfg: SamplingConfig = serde_yaml::from_str("default_rate: 0.5\nkey: run_id\n").unwrap();
    let sampler = Sampler::new(cfg, Arc::new(Metrics::new()));
    g.bench_function("sampler_run_id_0.5_2000", |b| {
        b.iter_batched(
            || events.clone(),
            |mut batch| sampler.apply(&mut batch, false),
            criterion::BatchSize::LargeInput,
        )
    });

    // The tail stage: 2000 events of 50 runs, each closed by its last event (`run_end`), so
    // that every iteration holds, decides and releases 50 new runs (fresh run ids each time).
    let tail_cfg =
        outrigger::config::parse("sampling: {tail: {enabled: true, else_rate: 0.1}}").unwrap();
    let tail = outrigger::tail::Tail::new(&tail_cfg, Arc::new(Metrics::new()));
    let shaped: Vec<Event> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            if i >= N - 50 {
                e.kind = Arc::from("run_end");
            }
            e
        })
        .collect();
    let mut round = 0u64;
    g.bench_function("tail_admit_50_runs_2000", |b| {
        b.iter_batched(
            || {
                round += 1;
                let mut batch = shaped.clone();
                for e in &mut batch {
                    let id = format!("{}-{round}", e.run_id.as_deref().unwrap_or(""));
                    e.run_id = Some(Arc::from(id));
                }
                batch
            },
            |batch| tail.admit(batch).events.len(),
            criterion::BatchSize::LargeInput,
        )
    });

    let mut out = Vec::with_capacity(1 << 20);
    g.bench_function("batch_encode_native_2000", |b| {
        b.iter(|| {
            out.clear();
            for e in &events {
                e.write_native(&mut out);
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(hot, benches);
criterion_main!(hot);
