//! `outrigger bench --nats-direct URL`: what a NATS server takes from a bare client, to set the
//! `nats` sink's figures beside.
//!
//! In: the server URL(s), a message count and size, the window of unacknowledged messages and
//! the replicas of the stream. Out: messages per second from the first publish to the last
//! acknowledgement, published with async-nats's JetStream context (`publish` with a
//! `Nats-Msg-Id`, at most `inflight` waiting) to a stream of its own, created for the run and
//! deleted after. No daemon, no socket, no encoding: only the client and the server. Ends when
//! every message is acknowledged, or with the first error.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;

/// What `--nats-direct` measured.
#[derive(Debug, Serialize)]
pub struct DirectReport {
    pub messages: u64,
    pub message_bytes: usize,
    pub replicas: usize,
    pub inflight: usize,
    pub seconds: f64,
    pub messages_per_second: f64,
}

/// Publishes `n` messages of about `size` bytes to a fresh stream and waits for every ack.
pub async fn direct(
    url: &str,
    n: u64,
    size: usize,
    inflight: usize,
    replicas: usize,
) -> anyhow::Result<DirectReport> {
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("`{url}` is not a list of NATS server addresses"))?;
    let client = async_nats::ConnectOptions::new()
        .client_capacity(inflight.max(2048) * 2)
        .connect(servers.as_slice())
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(inflight + 1)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let tag = format!("{:x}", crate::event::now_ns());
    let name = format!("BENCH_DIRECT_{tag}");
    let subject = format!("benchdirect.{tag}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{subject}.>")],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create stream {name}"))?;
    let line = bytes::Bytes::from(
        crate::bench::event_line("bench", size, 0)
            .trim_end()
            .to_string(),
    );
    let subject = format!("{subject}.bench");
    let start = Instant::now();
    let mut waiting = FuturesUnordered::new();
    let result = async {
        for i in 0..n {
            while waiting.len() >= inflight {
                let ack: Result<_, _> = waiting.next().await.expect("not empty");
                ack.context("no acknowledgement")?;
            }
            let msg = jetstream::message::PublishMessage::build()
                .payload(line.clone())
                .message_id(format!("{tag}-{i}"));
            waiting.push(
                js.send_publish(subject.clone(), msg)
                    .await
                    .context("publish")?
                    .into_future(),
            );
        }
        while let Some(ack) = waiting.next().await {
            ack.context("no acknowledgement")?;
        }
        anyhow::Ok(())
    }
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let _ = js.delete_stream(&name).await;
    result?;
    Ok(DirectReport {
        messages: n,
        message_bytes: line.len(),
        replicas,
        inflight,
        seconds,
        messages_per_second: n as f64 / seconds,
    })
}
