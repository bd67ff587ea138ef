//! The `nats` sink: every event as one NATS message, through JetStream with acknowledgements
//! (the default) or as a core NATS publish.
//!
//! In: batches from the sink's [`Delivery`](super::delivery::Delivery). Out: one message per
//! event on the subject its type gives ([`subject`]), whose payload is the native JSON line
//! (without the newline) and whose header `Nats-Msg-Id` is the event id, the same across
//! retries, spool and replays, so the stream stores each event once within its duplicate
//! window. With `jetstream`, a batch is delivered when every message of it is acknowledged;
//! at most `max_inflight` messages wait for an acknowledgement at a time. A message that gets
//! no acknowledgement (timeout, lost connection, no stream leader) fails the attempt as
//! retryable, so the delivery's retry and spool take over; the acknowledged messages of the
//! batch are remembered and only the others are sent again. After a failure the next attempt
//! publishes one message and waits for its acknowledgement before it sends the rest, so that
//! a stream coming back (refusing at first, then storing) keeps the events in order; a leader
//! change in the middle of a window can still store the messages of that window out of order
//! (each once). A message larger than the server
//! takes is dropped and counted (`sink`). With `jetstream: false` messages are published and
//! flushed to the server with no acknowledgement: at most once.
//!
//! The connection is made on the first attempt (a server that is down fails the attempt and
//! the batch is spooled, never the start), then kept by the client, which reconnects by
//! itself; while it is away, attempts fail at once. The stream is looked up (and created,
//! with `create_stream`) once per connection. Nothing runs on its own besides the client's
//! connection task, which ends when the sink is dropped.

pub mod subject;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, ServerAddr};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::{Batch, SinkError};
use crate::config::{NatsSinkConfig, NatsStorage};
use crate::event::{self, Event};
use crate::metrics::{DropReason, Metrics};
use subject::SubjectTemplate;

/// Checks what can be checked of a `nats` sink without a server: the key that is wrong and
/// why.
pub fn validate(cfg: &NatsSinkConfig) -> Result<(), (&'static str, String)> {
    servers(&cfg.url).map_err(|e| ("url", e))?;
    SubjectTemplate::parse(&cfg.subject).map_err(|e| ("subject", e))?;
    if cfg.jetstream {
        let bad = |c: char| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace();
        if cfg.stream.is_empty() || cfg.stream.chars().any(bad) {
            return Err((
                "stream",
                format!(
                    "`{}` is not a stream name (letters, digits, `-` and `_`; no `.`, `*`, `>`, slashes or spaces)",
                    cfg.stream
                ),
            ));
        }
        if !(1..=5).contains(&cfg.replicas) {
            return Err(("replicas", "must be 1 to 5".into()));
        }
        if cfg.duplicate_window.0.is_zero() {
            return Err((
                "duplicate_window",
                "must be more than 0 (it is what makes resent events land once)".into(),
            ));
        }
    }
    if cfg.max_inflight == 0 {
        return Err(("max_inflight", "must be at least 1".into()));
    }
    if cfg.timeout.0.is_zero() {
        return Err(("timeout", "must be more than 0".into()));
    }
    Ok(())
}

/// The comma-separated `url` as server addresses.
fn servers(url: &str) -> Result<Vec<ServerAddr>, String> {
    let mut out = Vec::new();
    for u in url.split(',').map(str::trim) {
        if u.is_empty() {
            return Err(format!("`{url}` has an empty server between commas"));
        }
        if !(u.starts_with("nats://") || u.starts_with("tls://")) {
            return Err(format!("`{u}` must start with nats:// (or tls://)"));
        }
        out.push(
            u.parse::<ServerAddr>()
                .map_err(|e| format!("`{u}` is not a server address: {e}"))?,
        );
    }
    Ok(out)
}

/// Per-sink counters, resolved once.
struct NatsMetrics {
    acked: prometheus::IntCounter,
    duplicate: prometheus::IntCounter,
    unacked: prometheus::IntCounter,
    dropped: prometheus::IntCounter,
    sent: prometheus::IntCounter,
}

/// A live connection and what was learnt on it.
struct Conn {
    client: Client,
    js: Option<jetstream::Context>,
    /// The stream is known to take our subjects (looked up or created on this connection).
    stream_ready: bool,
    /// Bumped by the client's event callback on every disconnect.
    disconnects: watch::Receiver<u64>,
    /// With JetStream: where the acknowledgements arrive (subscribed once per connection; the
    /// client subscribes again by itself after a reconnect).
    acks: Option<AckInbox>,
}

/// The one subscription (`INBOX.>`) that receives the acknowledgements of every publish on a
/// connection; a message's reply subject is `INBOX.ATTEMPT.INDEX`.
struct AckInbox {
    prefix: String,
    sub: async_nats::Subscriber,
}

/// The acknowledged messages of the batch being retried.
struct Resume {
    key: (u64, usize, u128, u128),
    acked: Vec<bool>,
}

impl Resume {
    fn key(batch: &Batch) -> (u64, usize, u128, u128) {
        let ids = |e: Option<&Event>| e.map_or(0, |e| e.id);
        (
            batch.upto,
            batch.events.len(),
            ids(batch.events.first()),
            ids(batch.events.last()),
        )
    }
}

/// The `nats` sink's writer.
pub struct NatsSink {
    label: String,
    cfg: NatsSinkConfig,
    servers: Vec<ServerAddr>,
    /// The `.creds` file's text, read when the sink opens.
    creds: Option<String>,
    subjects: SubjectTemplate,
    conn: Option<Conn>,
    resume: Option<Resume>,
    /// After a failed attempt (and before the first), the next attempt publishes one message
    /// and waits for its acknowledgement before it opens the window: while a stream comes
    /// back (no leader yet), a window of messages could see the first refused and later ones
    /// stored, which would put the stream out of order.
    probe: bool,
    /// Attempts so far: the middle token of reply subjects, so that a late answer to an
    /// earlier attempt is not taken for one of this attempt.
    attempt: u64,
    metrics: Arc<Metrics>,
    m: NatsMetrics,
}

impl NatsSink {
    /// Opens the sink: checks the config and reads the credentials file. Connects nothing.
    pub fn new(
        cfg: &NatsSinkConfig,
        label: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<NatsSink> {
        let servers = servers(&cfg.url).map_err(|e| anyhow::anyhow!("url: {e}"))?;
        let subjects =
            SubjectTemplate::parse(&cfg.subject).map_err(|e| anyhow::anyhow!("subject: {e}"))?;
        let creds = match &cfg.credentials {
            None => None,
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("credentials: cannot read {}: {e}", p.display())
                })?;
                // Parsed now so that a bad file is refused at start, not at the first batch.
                ConnectOptions::with_credentials(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "credentials: {} is not a NATS .creds file: {e}",
                        p.display()
                    )
                })?;
                Some(text)
            }
        };
        let c = |result| metrics.nats_publishes.with_label_values(&[label, result]);
        let m = NatsMetrics {
            acked: c("acked"),
            duplicate: c("duplicate"),
            unacked: c("unacked"),
            dropped: c("dropped"),
            sent: c("sent"),
        };
        Ok(NatsSink {
            label: label.to_string(),
            cfg: cfg.clone(),
            servers,
            creds,
            subjects,
            conn: None,
            resume: None,
            probe: true,
            attempt: 0,
            metrics,
            m,
        })
    }

    /// Connects to the first server that answers (the client then keeps the connection).
    async fn connect(&self) -> Result<Conn, String> {
        let mut opts = match &self.creds {
            Some(text) => ConnectOptions::with_credentials(text).map_err(|e| e.to_string())?,
            None => ConnectOptions::new(),
        };
        let (tx, disconnects) = watch::channel(0u64);
        let label = self.label.clone();
        let timeout = self.cfg.timeout.0;
        opts = opts
            .name(format!("outrigger {}", self.label))
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .max_reconnects(None)
            // Room for a whole window of publishes in the client's queue.
            .client_capacity(self.cfg.max_inflight.max(2048) * 2)
            // Room for a whole window of acknowledgements in the subscription's queue (a full
            // one drops messages: the attempt would then wait for its timeout).
            .subscription_capacity(self.cfg.max_inflight.max(2048) * 2)
            .event_callback(move |ev| {
                let label = label.clone();
                let tx = tx.clone();
                async move {
                    match ev {
                        async_nats::Event::Disconnected => {
                            tx.send_modify(|n| *n += 1);
                            tracing::warn!(sink = %label, "NATS connection lost; the client reconnects");
                        }
                        async_nats::Event::Connected => {
                            tracing::info!(sink = %label, "NATS connection (re)established")
                        }
                        other => tracing::warn!(sink = %label, event = %other, "NATS client event"),
                    }
                }
            });
        let client = opts
            .connect(self.servers.as_slice())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.cfg.url))?;
        tracing::info!(sink = %self.label, url = %self.cfg.url, server = %client.server_info().host, "connected to NATS");
        let js = self.cfg.jetstream.then(|| {
            // Only for the JetStream API (the stream's lookup and creation): publishes go
            // through the client and `AckInbox`.
            jetstream::ContextBuilder::new()
                .timeout(timeout)
                .build(client.clone())
        });
        Ok(Conn {
            client,
            js,
            stream_ready: false,
            disconnects,
            acks: None,
        })
    }

    /// The stream config the sink creates.
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.cfg.stream.clone(),
            subjects: vec![self.subjects.stream_subject()],
            num_replicas: self.cfg.replicas,
            duplicate_window: self.cfg.duplicate_window.0,
            storage: match self.cfg.storage {
                NatsStorage::File => stream::StorageType::File,
                NatsStorage::Memory => stream::StorageType::Memory,
            },
            max_age: self.cfg.max_age.map_or(Duration::ZERO, |d| d.0),
            max_bytes: self.cfg.max_bytes.map_or(-1, |s| s.0 as i64),
            description: Some("events from outrigger".into()),
            ..Default::default()
        }
    }

    /// Makes sure the stream exists and takes the sink's subjects.
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), String> {
        let name = &self.cfg.stream;
        let info = match js.get_stream(name).await {
            Ok(mut s) => s
                .info()
                .await
                .map_err(|e| format!("stream `{name}`: {e}"))?
                .clone(),
            Err(e) if stream_missing(&e) => {
                if !self.cfg.create_stream {
                    return Err(missing_stream_message(name));
                }
                let mut s = js
                    .create_stream(self.stream_config())
                    .await
                    .map_err(|e| format!("cannot create stream `{name}`: {e}"))?;
                tracing::info!(sink = %self.label, stream = %name, replicas = self.cfg.replicas, subjects = %self.subjects.stream_subject(), "created the JetStream stream");
                s.info()
                    .await
                    .map_err(|e| format!("stream `{name}`: {e}"))?
                    .clone()
            }
            Err(e) => return Err(format!("stream `{name}`: {e}")),
        };
        if !self.subjects.covered_by(&info.config.subjects) {
            return Err(format!(
                "stream `{name}` listens on {:?}, which does not take `{}`: change the stream's subjects or the sink's `subject`",
                info.config.subjects, self.cfg.subject
            ));
        }
        Ok(())
    }

    /// The connection, made (and the stream checked) when there is none.
    async fn ready(&mut self) -> Result<(), SinkError> {
        if self.conn.is_none() {
            let c = self.connect().await.map_err(SinkError::Retryable)?;
            self.conn = Some(c);
        }
        let conn = self.conn.as_ref().expect("connected above");
        if conn.client.connection_state() != async_nats::connection::State::Connected {
            return Err(SinkError::Retryable(format!(
                "not connected to NATS ({}); the client is reconnecting",
                self.cfg.url
            )));
        }
        if conn.js.is_some() && conn.acks.is_none() {
            let prefix = conn.client.new_inbox();
            let sub = conn
                .client
                .subscribe(format!("{prefix}.>"))
                .await
                .map_err(|e| {
                    SinkError::Retryable(format!("subscribe for acknowledgements: {e}"))
                })?;
            if let Some(c) = self.conn.as_mut() {
                c.acks = Some(AckInbox { prefix, sub });
            }
        }
        let conn = self.conn.as_ref().expect("connected above");
        if let Some(js) = &conn.js
            && !conn.stream_ready
        {
            self.ensure_stream(js).await.map_err(SinkError::Retryable)?;
            if let Some(c) = self.conn.as_mut() {
                c.stream_ready = true;
            }
        }
        Ok(())
    }

    /// One attempt at a batch.
    pub async fn send(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        if let Err(e) = self.ready().await {
            self.probe = true;
            return Err(e);
        }
        let payloads = encode(&batch.events);
        if self.cfg.jetstream {
            self.publish_acked(batch, &payloads).await
        } else {
            self.publish_core(batch, &payloads).await
        }
    }

    /// Core NATS: publish everything, then a flush (a round trip) so that an attempt that
    /// returns `Ok` has reached the server.
    async fn publish_core(
        &mut self,
        batch: &Batch,
        payloads: &[Bytes],
    ) -> Result<usize, SinkError> {
        let client = self.conn.as_ref().expect("ready").client.clone();
        for (e, p) in batch.events.iter().zip(payloads) {
            let subject = self.subjects.subject(&e.kind);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                event::format_id(e.id).as_str(),
            );
            client
                .publish_with_headers(subject, headers, p.clone())
                .await
                .map_err(|e| SinkError::Retryable(format!("publish: {e}")))?;
        }
        tokio::time::timeout(self.cfg.timeout.0, client.flush())
            .await
            .map_err(|_| SinkError::Retryable("flush: no answer from the server".into()))?
            .map_err(|e| SinkError::Retryable(format!("flush: {e}")))?;
        self.m.sent.inc_by(batch.events.len() as u64);
        Ok(batch.events.len())
    }

    /// JetStream: publish every message not yet acknowledged, at most `max_inflight` waiting,
    /// and wait for the acknowledgements. Stops publishing at the first failure and returns it
    /// once the messages in flight are answered, the connection is lost or no answer came for
    /// `timeout`.
    ///
    /// Each message is a core publish whose reply subject is `INBOX.ATTEMPT.INDEX` on the
    /// connection's one acknowledgement subscription ([`AckInbox`]): no request, timer or
    /// channel per message (what a JetStream context's `publish` costs), one deadline for the
    /// whole window. Answers to an earlier attempt are ignored (the message was sent again and
    /// the stream answers `duplicate`).
    async fn publish_acked(
        &mut self,
        batch: &Batch,
        payloads: &[Bytes],
    ) -> Result<usize, SinkError> {
        let key = Resume::key(batch);
        let mut resume = match self.resume.take() {
            Some(r) if r.key == key => r,
            _ => Resume {
                key,
                acked: vec![false; batch.events.len()],
            },
        };
        self.attempt += 1;
        let attempt = self.attempt;
        let timeout = self.cfg.timeout.0;
        let max = self.cfg.max_inflight;
        let conn = self.conn.as_mut().expect("ready");
        let client = conn.client.clone();
        let mut disconnects = conn.disconnects.clone();
        disconnects.mark_unchanged();
        let inbox = conn
            .acks
            .as_mut()
            .expect("ready subscribes for acknowledgements");
        let prefix = format!("{}.{attempt}.", inbox.prefix);
        // 0: not sent in this attempt, 1: waiting for its answer, 2: answered.
        let mut state = vec![0u8; batch.events.len()];
        let mut probing = self.probe;
        let mut waiting = 0usize;
        let mut next = 0usize;
        let mut failure: Option<String> = None;
        let mut dropped = 0usize;
        let mut lost_stream = false;
        // Acknowledgements of this attempt, added to the counters once at the end.
        let (mut acked, mut duplicates) = (0u64, 0u64);
        let mut deadline = tokio::time::Instant::now() + timeout;

        loop {
            let window = if probing { 1 } else { max };
            while failure.is_none() && waiting < window && next < batch.events.len() {
                let i = next;
                next += 1;
                if resume.acked[i] {
                    continue;
                }
                let e = &batch.events[i];
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    event::format_id(e.id).as_str(),
                );
                let subject = self.subjects.subject(&e.kind);
                match client
                    .publish_with_reply_and_headers(
                        subject,
                        format!("{prefix}{i}"),
                        headers,
                        payloads[i].clone(),
                    )
                    .await
                {
                    Ok(()) => {
                        if waiting == 0 {
                            deadline = tokio::time::Instant::now() + timeout;
                        }
                        state[i] = 1;
                        waiting += 1;
                    }
                    Err(err)
                        if err.kind()
                            == async_nats::client::PublishErrorKind::MaxPayloadExceeded =>
                    {
                        resume.acked[i] = true;
                        dropped += 1;
                        tracing::warn!(sink = %self.label, bytes = payloads[i].len(), error = %err, "event larger than the NATS server takes, dropped (counted as sink)");
                    }
                    Err(err) => failure = Some(format!("publish: {err}")),
                }
            }
            if waiting == 0 {
                break;
            }
            let msg = tokio::select! {
                m = inbox.sub.next() => m,
                _ = disconnects.changed() => {
                    failure.get_or_insert_with(|| "connection lost while waiting for acknowledgements".into());
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    failure.get_or_insert_with(|| format!("no acknowledgement within {timeout:?}"));
                    break;
                }
            };
            let Some(msg) = msg else {
                failure.get_or_insert_with(|| "the acknowledgement subscription ended".into());
                break;
            };
            let Some(i) = msg
                .subject
                .as_str()
                .strip_prefix(prefix.as_str())
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|i| state.get(*i) == Some(&1))
            else {
                continue; // an answer to an earlier attempt, or a second answer
            };
            state[i] = 2;
            waiting -= 1;
            deadline = tokio::time::Instant::now() + timeout;
            match read_ack(&msg) {
                Ack::Stored { duplicate } => {
                    resume.acked[i] = true;
                    probing = false;
                    if duplicate {
                        duplicates += 1;
                    } else {
                        acked += 1;
                    }
                }
                Ack::NoStream => {
                    lost_stream = true;
                    failure.get_or_insert_with(|| {
                        format!(
                            "no stream takes subject of `{}` (was stream `{}` deleted?)",
                            self.cfg.subject, self.cfg.stream
                        )
                    });
                }
                Ack::Refused(why) => {
                    failure.get_or_insert_with(|| format!("no acknowledgement: {why}"));
                }
            }
        }
        self.m.acked.inc_by(acked);
        self.m.duplicate.inc_by(duplicates);
        self.probe = failure.is_some();
        if lost_stream && let Some(c) = self.conn.as_mut() {
            c.stream_ready = false;
        }
        if dropped > 0 {
            self.m.dropped.inc_by(dropped as u64);
            self.metrics.dropped(DropReason::Sink, dropped as u64);
        }
        match failure {
            None => Ok(batch.events.len() - dropped),
            Some(why) => {
                let done = resume.acked.iter().filter(|a| **a).count();
                self.m.unacked.inc_by((batch.events.len() - done) as u64);
                self.resume = Some(resume);
                Err(SinkError::Retryable(format!(
                    "{why} ({done} of {} events acknowledged; the others are sent again)",
                    batch.events.len()
                )))
            }
        }
    }
}

/// What JetStream answered to one publish.
#[derive(Debug, PartialEq)]
enum Ack {
    /// `{"stream": …, "seq": …}`, with `"duplicate": true` when the stream already had the
    /// message id.
    Stored { duplicate: bool },
    /// No stream takes the subject (the server's `503 No Responders`).
    NoStream,
    /// `{"error": …}` or an answer that is not an acknowledgement.
    Refused(String),
}

/// Reads a JetStream publish acknowledgement.
fn read_ack(msg: &async_nats::Message) -> Ack {
    if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return Ack::NoStream;
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        // Present in every acknowledgement; only whether it is there matters (no allocation
        // per acknowledgement).
        #[serde(default)]
        stream: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        duplicate: bool,
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Reply>(&msg.payload) {
        Ok(Reply {
            error: Some(err), ..
        }) => {
            let code = err.get("err_code").and_then(|c| c.as_u64());
            if code == Some(STREAM_NOT_FOUND) {
                return Ack::NoStream;
            }
            Ack::Refused(
                err.get("description")
                    .and_then(|d| d.as_str())
                    .map_or_else(|| err.to_string(), str::to_string),
            )
        }
        Ok(Reply {
            stream: Some(_),
            duplicate,
            ..
        }) => Ack::Stored { duplicate },
        _ => Ack::Refused(match msg.status {
            Some(s) => format!("status {s} {}", msg.description.as_deref().unwrap_or("")),
            None => format!(
                "not an acknowledgement: {}",
                String::from_utf8_lossy(&msg.payload[..msg.payload.len().min(200)])
            ),
        }),
    }
}

/// JetStream's error code for a stream that does not exist.
const STREAM_NOT_FOUND: u64 = 10059;

/// Asks the JetStream API for the account's info and takes any answer that is not an error.
/// Not `Context::query_account`: its reply type wants fields that servers before 2.10 (Debian
/// bookworm has 2.9) do not send, so it fails on a healthy server.
pub async fn jetstream_answers(js: &jetstream::Context) -> Result<(), String> {
    match js
        .request::<_, _, jetstream::response::Response<serde_json::Value>>("INFO", b"")
        .await
    {
        Ok(jetstream::response::Response::Ok(_)) => Ok(()),
        Ok(jetstream::response::Response::Err { error }) => Err(error.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// True when a stream lookup failed because there is no such stream.
fn stream_missing(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

fn missing_stream_message(name: &str) -> String {
    format!(
        "stream `{name}` does not exist and create_stream is false: create it (nats stream add {name}) or set create_stream: true"
    )
}

/// Every event as its native JSON line without the newline, all in one buffer.
fn encode(events: &[Event]) -> Vec<Bytes> {
    let mut buf = Vec::with_capacity(events.iter().map(|e| e.encoded_len()).sum());
    let mut ends = Vec::with_capacity(events.len());
    for e in events {
        e.write_native(&mut buf);
        buf.pop(); // the newline
        ends.push(buf.len());
    }
    let buf = Bytes::from(buf);
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let b = buf.slice(start..end);
            start = end;
            b
        })
        .collect()
}

/// `outrigger check` for a `nats` sink: a server answers and, with JetStream, JetStream is
/// enabled; with `create_stream: false` the stream exists and takes the subjects. Changes
/// nothing on the server.
pub async fn check(cfg: &NatsSinkConfig, label: &str) -> anyhow::Result<()> {
    let sink = NatsSink::new(cfg, label, Arc::new(Metrics::new()))?;
    let conn = tokio::time::timeout(cfg.timeout.0 * 2, sink.connect())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no NATS server answered at {} within {:?}",
                cfg.url,
                cfg.timeout.0 * 2
            )
        })?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let result = async {
        let Some(js) = &conn.js else {
            return Ok(());
        };
        jetstream_answers(js)
            .await
            .map_err(|e| anyhow::anyhow!("JetStream is not available on {}: {e}", cfg.url))?;
        if !cfg.create_stream {
            sink.ensure_stream(js)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }
    .await;
    let _ = conn.client.drain().await;
    result
}

#[cfg(test)]
mod tests;
