//! HTTP ingest: `POST /v1/events` with one JSON object, an array, or NDJSON.
//!
//! In: a request body (one `Bytes`; every event's `data` stays a slice of it). Out: the events
//! admitted as one batch and `202 {"accepted": N, "rejected": M, "errors": [{"index", "error"}]}`.
//! A body that is not JSON at all is a 400 with the parser's reason. With `ingest.api_key` set,
//! a request without `Authorization: Bearer KEY` (compared in constant time, before the body is
//! read) is a 401 with a JSON error. The server stops on the shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::Admission;
use crate::event::{self, Line};

#[derive(Serialize)]
struct LineFailure {
    index: usize,
    error: String,
}

#[derive(Serialize)]
struct IngestAnswer {
    accepted: usize,
    rejected: usize,
    errors: Vec<LineFailure>,
}

/// The ingest routes, for the ingest listener (and for tests with `oneshot`). With `api_key`,
/// every request needs it as a bearer token.
pub fn router(adm: Arc<Admission>, api_key: Option<String>) -> Router {
    let limit = (adm.max_line_bytes() * 64).max(64 << 20);
    let mut app = Router::new().route("/v1/events", post(ingest));
    if let Some(key) = api_key {
        app = app.route_layer(middleware::from_fn_with_state(
            Arc::<str>::from(key),
            require_key,
        ));
    }
    app.layer(DefaultBodyLimit::max(limit)).with_state(adm)
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    adm: Arc<Admission>,
    api_key: Option<String>,
    stop: CancellationToken,
) {
    let app = router(adm, api_key);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "HTTP ingest server failed");
    }
}

/// Binds the ingest listener; the error names the key.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (ingest.http): {e}"))
}

async fn ingest(State(adm): State<Arc<Admission>>, headers: HeaderMap, body: Bytes) -> Response {
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("ndjson") || v.contains("jsonlines"));
    let max = adm.max_line_bytes();
    let mut events = Vec::new();
    // The request index of each parsed event, to name the ones the queue refuses.
    let mut indexes = Vec::new();
    let mut errors = Vec::new();
    let mut push =
        |index: usize, raw: &[u8], events: &mut Vec<event::Event>| match event::parse_line(
            &body, raw, max,
        ) {
            Ok(Line::Event(e)) => {
                events.push(e);
                indexes.push(index);
            }
            Ok(Line::Hello { .. } | Line::Flush) => errors.push(LineFailure {
                index,
                error: "control lines (hello, flush) belong on the socket".into(),
            }),
            Err(e) => errors.push(LineFailure {
                index,
                error: e.to_string(),
            }),
        };
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if ndjson {
        for (i, raw) in body
            .split(|b| *b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
            .enumerate()
        {
            push(i, raw, &mut events);
        }
    } else if first == Some(b'[') {
        match serde_json::from_slice::<Vec<&RawValue>>(&body) {
            Ok(items) => {
                for (i, raw) in items.iter().enumerate() {
                    push(i, raw.get().as_bytes(), &mut events);
                }
            }
            Err(e) => return bad_request(&format!("body is not a JSON array: {e}")),
        }
    } else if first == Some(b'{') {
        push(0, &body, &mut events);
    } else {
        return bad_request(
            "body must be a JSON object, an array of objects, or NDJSON (Content-Type: application/x-ndjson)",
        );
    }
    let source = adm.metrics.events_received.with_label_values(&["http"]);
    adm.invalid(errors.len());
    let n = events.len();
    let admitted = adm.admit(&source, events).await;
    let refused = admitted.refused;
    if let Some(e) = &admitted.error {
        // Not in the write-ahead log: not a 2xx (the events may still be delivered).
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": e})),
        )
            .into_response();
    }
    for &index in &indexes[n - refused..] {
        errors.push(LineFailure {
            index,
            error: admitted.refusal().into(),
        });
    }
    let answer = IngestAnswer {
        accepted: n - refused,
        rejected: errors.len(),
        errors,
    };
    (StatusCode::ACCEPTED, axum::Json(answer)).into_response()
}

/// 401 unless the request carries the key; runs before the body is read.
pub(crate) async fn require_key(State(key): State<Arc<str>>, req: Request, next: Next) -> Response {
    if crate::auth::has_key(req.headers(), &key) {
        return next.run(req).await;
    }
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({
            "error": "missing or wrong ingest key (Authorization: Bearer KEY, see ingest.api_key)"
        })),
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

fn bad_request(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({"error": msg})),
    )
        .into_response()
}
