//! HTTP delivery: the generic `http` sink and the Weave `upsert_batch` sink.
//!
//! In: batches. Out: one POST per batch. `http` sends a JSON array of native event objects
//! (`format: json`) or native NDJSON (`format: ndjson`). `weave` turns `call_start`/`call_end`
//! events into `{"batch": [{"mode": "start", "req": …}, …]}` at `{url}/call/upsert_batch` with
//! Basic auth (`api`, `api_key`). Connection errors, timeouts, 408, 429 and 5xx are retryable;
//! other 4xx answers are fatal for that batch.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Batch, SinkError};
use crate::config::{HttpFormat, HttpSinkConfig, WeaveSinkConfig};

fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()?)
}

async fn post(req: reqwest::RequestBuilder, what: &str) -> Result<(), SinkError> {
    let resp = req
        .send()
        .await
        .map_err(|e| SinkError::Retryable(format!("{what}: {e}")))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
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

pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    format: HttpFormat,
    headers: reqwest::header::HeaderMap,
}

impl HttpSink {
    pub fn new(cfg: &HttpSinkConfig) -> anyhow::Result<HttpSink> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes())?,
                reqwest::header::HeaderValue::from_str(v)?,
            );
        }
        Ok(HttpSink {
            client: client(cfg.timeout.0)?,
            url: cfg.url.clone(),
            format: cfg.format,
            headers,
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

pub struct WeaveSink {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
}

#[derive(Deserialize)]
struct CallPayload<'a> {
    #[serde(borrow, default)]
    start: Option<&'a RawValue>,
    #[serde(borrow, default)]
    end: Option<&'a RawValue>,
}

impl WeaveSink {
    pub fn new(cfg: &WeaveSinkConfig) -> anyhow::Result<WeaveSink> {
        Ok(WeaveSink {
            client: client(cfg.timeout.0)?,
            url: format!("{}/call/upsert_batch", cfg.url.trim_end_matches('/')),
            api_key: cfg.api_key.clone(),
        })
    }

    /// The `upsert_batch` body, and how many events it carries.
    pub fn encode(batch: &Batch) -> (Vec<u8>, usize) {
        let mut body = Vec::with_capacity(
            64 + batch
                .events
                .iter()
                .map(|e| e.data.len() + 32)
                .sum::<usize>(),
        );
        body.extend_from_slice(b"{\"batch\":[");
        let mut n = 0;
        for e in &batch.events {
            let (mode, field) = match &*e.kind {
                "call_start" => ("start", true),
                "call_end" => ("end", false),
                _ => continue,
            };
            let Ok(p) = serde_json::from_slice::<CallPayload>(&e.data) else {
                continue;
            };
            let Some(req) = (if field { p.start } else { p.end }) else {
                continue;
            };
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"mode\":\"");
            body.extend_from_slice(mode.as_bytes());
            body.extend_from_slice(b"\",\"req\":");
            body.extend_from_slice(req.get().as_bytes());
            body.push(b'}');
            n += 1;
        }
        body.extend_from_slice(b"]}");
        (body, n)
    }

    pub async fn send(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        let (body, n) = Self::encode(batch);
        if n == 0 {
            return Ok(0);
        }
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            req = req.basic_auth("api", Some(key));
        }
        post(req, &self.url).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Line, parse_owned};

    #[test]
    fn weave_body_shape() {
        let lines = [
            r#"{"method":"call_start","payload":{"start":{"id":"a","op_name":"f"}}}"#,
            r#"{"method":"call_end","payload":{"end":{"id":"a","output":1}}}"#,
            r#"{"type":"other","data":{}}"#,
        ];
        let events = lines
            .iter()
            .map(|l| match parse_owned(l.as_bytes(), 1024) {
                Ok(Line::Event(e)) => e,
                _ => unreachable!(),
            })
            .collect();
        let (body, n) = WeaveSink::encode(&Batch { events, upto: 0 });
        assert_eq!(n, 2);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"batch": [
                {"mode": "start", "req": {"id": "a", "op_name": "f"}},
                {"mode": "end", "req": {"id": "a", "output": 1}}
            ]})
        );
    }
}
