//! HTTP delivery: the generic `http` sink and the Weave `upsert_batch` sink.
//!
//! In: batches. Out: one POST per batch. `http` sends a JSON array of native event objects
//! (`format: json`) or native NDJSON (`format: ndjson`). `weave` turns `call_start`/`call_end`
//! events into `{"batch": [{"mode": "start", "req": …}, …]}` at `{url}/call/upsert_batch` with
//! Basic auth (`api`, `api_key`); the events it cannot send (other types, calls without
//! `start`/`end`) are counted as dropped with reason `unsupported`, and each kind of refusal
//! is logged once. Connection errors, timeouts, 408, 429 and 5xx are retryable;
//! other 4xx answers are fatal for that batch.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Batch, SinkError};
use crate::config::{HttpFormat, HttpSinkConfig, WeaveSinkConfig};
use crate::metrics::{DropReason, Metrics};

pub(super) fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()?)
}

/// A sink's configured `headers`, checked.
pub(super) fn header_map(
    headers: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes())?,
            reqwest::header::HeaderValue::from_str(v)?,
        );
    }
    Ok(map)
}

/// Sends `req`; the body of a 2xx answer, or the error classified for retry.
pub(super) async fn post(
    req: reqwest::RequestBuilder,
    what: &str,
) -> Result<bytes::Bytes, SinkError> {
    let resp = req
        .send()
        .await
        .map_err(|e| SinkError::Retryable(format!("{what}: {e}")))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp.bytes().await.unwrap_or_default());
    }
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    let msg = format!("{what}: HTTP {status}: {body}");
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        Err(SinkError::Retryable(msg))
    } else {
        Err(SinkError::Fatal(msg))
    }
}

/// The `http` sink's writer.
pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    format: HttpFormat,
    headers: reqwest::header::HeaderMap,
}

impl HttpSink {
    pub fn new(cfg: &HttpSinkConfig) -> anyhow::Result<HttpSink> {
        Ok(HttpSink {
            client: client(cfg.timeout.0)?,
            url: cfg.url.clone(),
            format: cfg.format,
            headers: header_map(&cfg.headers)?,
        })
    }

    pub async fn send(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        let mut body = Vec::with_capacity(batch.events.iter().map(|e| e.encoded_len()).sum());
        let content_type = match self.format {
            HttpFormat::Ndjson => {
                for e in &batch.events {
                    e.write_native(&mut body);
                }
                "application/x-ndjson"
            }
            HttpFormat::Json => {
                body.push(b'[');
                for (i, e) in batch.events.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    e.write_native(&mut body);
                    body.pop(); // the newline
                }
                body.push(b']');
                "application/json"
            }
        };
        let req = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        post(req, &self.url).await?;
        Ok(batch.events.len())
    }
}

/// Why the Weave sink could not send an event; each is counted as dropped (`unsupported`) and
/// logged once per sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Neither `call_start` nor `call_end`: Weave has no place for it.
    NotACall,
    /// A `call_start` whose payload has no `start` object.
    NoStart,
    /// A `call_end` whose payload has no `end` object.
    NoEnd,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::NotACall, Refusal::NoStart, Refusal::NoEnd];

    fn why(self) -> &'static str {
        match self {
            Refusal::NotACall => {
                "the weave sink sends only call_start and call_end events; others are dropped \
                 (counted as unsupported): keep them away with sinks[].types"
            }
            Refusal::NoStart => {
                "a call_start event without payload.start cannot be sent to Weave; dropped \
                 (counted as unsupported)"
            }
            Refusal::NoEnd => {
                "a call_end event without payload.end cannot be sent to Weave; dropped \
                 (counted as unsupported)"
            }
        }
    }
}

/// An `upsert_batch` body and what was left out of it.
pub struct Encoded {
    pub body: Vec<u8>,
    /// Events in the body.
    pub calls: usize,
    /// Events left out, by [`Refusal`] (indexed as `Refusal as usize`).
    pub refused: [u64; 3],
}

/// The Weave `upsert_batch` sink.
pub struct WeaveSink {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    metrics: Arc<Metrics>,
    /// Which refusals have been logged already (each is logged once).
    warned: [bool; 3],
}

#[derive(Deserialize)]
struct CallPayload<'a> {
    #[serde(borrow, default)]
    start: Option<&'a RawValue>,
    #[serde(borrow, default)]
    end: Option<&'a RawValue>,
}

impl WeaveSink {
    pub fn new(cfg: &WeaveSinkConfig, metrics: Arc<Metrics>) -> anyhow::Result<WeaveSink> {
        Ok(WeaveSink {
            client: client(cfg.timeout.0)?,
            url: format!("{}/call/upsert_batch", cfg.url.trim_end_matches('/')),
            api_key: cfg.api_key.clone(),
            metrics,
            warned: [false; 3],
        })
    }

    /// The `upsert_batch` body for the batch's call events, and a tally of the others.
    pub fn encode(batch: &Batch) -> Encoded {
        let mut body = Vec::with_capacity(
            64 + batch
                .events
                .iter()
                .map(|e| e.data.len() + 32)
                .sum::<usize>(),
        );
        body.extend_from_slice(b"{\"batch\":[");
        let (mut calls, mut refused) = (0, [0u64; 3]);
        for e in &batch.events {
            let (mode, field, missing) = match &*e.kind {
                "call_start" => ("start", true, Refusal::NoStart),
                "call_end" => ("end", false, Refusal::NoEnd),
                _ => {
                    refused[Refusal::NotACall as usize] += 1;
                    continue;
                }
            };
            let req = serde_json::from_slice::<CallPayload>(&e.data)
                .ok()
                .and_then(|p| if field { p.start } else { p.end })
                .filter(|r| r.get().starts_with('{'));
            let Some(req) = req else {
                refused[missing as usize] += 1;
                continue;
            };
            if calls > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"mode\":\"");
            body.extend_from_slice(mode.as_bytes());
            body.extend_from_slice(b"\",\"req\":");
            body.extend_from_slice(req.get().as_bytes());
            body.push(b'}');
            calls += 1;
        }
        body.extend_from_slice(b"]}");
        Encoded {
            body,
            calls,
            refused,
        }
    }

    /// Posts the batch's calls. The events it cannot send are counted as dropped
    /// (`unsupported`) once the batch is done with, so that a retried batch counts them once.
    pub async fn send(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        let Encoded {
            body,
            calls,
            refused,
        } = Self::encode(batch);
        if calls > 0 {
            let mut req = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            if let Some(key) = &self.api_key {
                req = req.basic_auth("api", Some(key));
            }
            post(req, &self.url).await?;
        }
        self.count_refused(&refused);
        Ok(calls)
    }

    fn count_refused(&mut self, refused: &[u64; 3]) {
        for r in Refusal::ALL {
            let n = refused[r as usize];
            self.metrics.dropped(DropReason::Unsupported, n);
            if n > 0 && !std::mem::replace(&mut self.warned[r as usize], true) {
                tracing::warn!(url = %self.url, events = n, "{}", r.why());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Line, parse_owned};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn events(lines: &[&str]) -> Vec<crate::event::Event> {
        lines
            .iter()
            .map(|l| match parse_owned(l.as_bytes(), 1024) {
                Ok(Line::Event(e)) => e,
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn weave_body_shape() {
        let events = events(&[
            r#"{"method":"call_start","payload":{"start":{"id":"a","op_name":"f"}}}"#,
            r#"{"method":"call_end","payload":{"end":{"id":"a","output":1}}}"#,
            r#"{"type":"other","data":{}}"#,
        ]);
        let enc = WeaveSink::encode(&Batch {
            events,
            upto: 0,
            floor: 0,
        });
        assert_eq!(enc.calls, 2);
        assert_eq!(enc.refused, [1, 0, 0]);
        let v: serde_json::Value = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"batch": [
                {"mode": "start", "req": {"id": "a", "op_name": "f"}},
                {"mode": "end", "req": {"id": "a", "output": 1}}
            ]})
        );
    }

    /// A mix of every kind of event: 2 calls Weave takes, 5 it cannot.
    const MIX: [&str; 7] = [
        r#"{"method":"call_start","payload":{"start":{"id":"a"}}}"#,
        r#"{"method":"call_start","payload":{"end":{"id":"a"}}}"#,
        r#"{"method":"call_end","payload":{"end":{"id":"a"}}}"#,
        r#"{"method":"call_end","payload":{}}"#,
        r#"{"method":"call_end","payload":{"end":"not an object"}}"#,
        r#"{"type":"test_end","data":{"status":"failed"}}"#,
        r#"{"type":"log","data":"x"}"#,
    ];

    #[test]
    fn every_refusal_is_tallied() {
        let enc = WeaveSink::encode(&Batch {
            events: events(&MIX),
            upto: 0,
            floor: 0,
        });
        assert_eq!(enc.calls, 2);
        assert_eq!(enc.refused, [2, 1, 2]);
    }

    /// A Weave receiver that answers every post with the status in `status`, counting posts.
    async fn receiver(status: Arc<std::sync::atomic::AtomicU16>) -> (String, Arc<AtomicUsize>) {
        let posts = Arc::new(AtomicUsize::new(0));
        let p = posts.clone();
        let app = axum::Router::new().route(
            "/call/upsert_batch",
            axum::routing::post(move || {
                let (status, p) = (status.clone(), p.clone());
                async move {
                    p.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, posts)
    }

    fn sink(url: &str, m: &Arc<Metrics>) -> WeaveSink {
        let cfg: WeaveSinkConfig = serde_json::from_value(serde_json::json!({"url": url})).unwrap();
        WeaveSink::new(&cfg, m.clone()).unwrap()
    }

    #[tokio::test]
    async fn what_weave_cannot_take_is_counted_once() {
        let status = Arc::new(std::sync::atomic::AtomicU16::new(503));
        let (url, posts) = receiver(status.clone()).await;
        let m = Arc::new(Metrics::new());
        let mut s = sink(&url, &m);
        let batch = Batch {
            events: events(&MIX),
            upto: 0,
            floor: 0,
        };
        // A failed post counts nothing: the batch will be tried again.
        assert!(matches!(s.send(&batch).await, Err(SinkError::Retryable(_))));
        assert_eq!(m.dropped_count(DropReason::Unsupported), 0);
        status.store(200, Ordering::SeqCst);
        assert_eq!(s.send(&batch).await.unwrap(), 2);
        assert_eq!(m.dropped_count(DropReason::Unsupported), 5);
        assert_eq!(posts.load(Ordering::SeqCst), 2);
        assert_eq!(s.warned, [true; 3]);
        // A batch with no call is not posted, and is counted all the same.
        let others = Batch {
            events: events(&MIX[5..]),
            upto: 0,
            floor: 0,
        };
        assert_eq!(s.send(&others).await.unwrap(), 0);
        assert_eq!(m.dropped_count(DropReason::Unsupported), 7);
        assert_eq!(posts.load(Ordering::SeqCst), 2);
    }
}
