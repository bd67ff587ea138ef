//! OTLP/HTTP: `POST /v1/logs` and `POST /v1/traces` on `ingest.otlp.http`.
//!
//! In: an export request as `application/x-protobuf` or `application/json` (OTLP/JSON: hex
//! ids, camelCase keys), optionally `Content-Encoding: gzip`. Out: `200` with the export
//! response in the request's encoding (`partial_success` with the count the queue refused and
//! why), or, per the OTLP specification, an error with a `google.rpc.Status` body in the
//! request's encoding: `400` for a body that does not decode (with the decoder's reason), `413`
//! for a body (or its decompressed form: a gzip bomb stops at the bound) over
//! `ingest.otlp.max_request_bytes`, `415` for another content type or encoding, `401` without
//! the ingest key when `ingest.api_key` is set. Unknown fields are ignored, as protobuf does.
//! The server stops on the shutdown token.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{Outcome, admit_logs, admit_traces};
use crate::ingest::Admission;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// What the handlers share.
#[derive(Clone)]
struct Ctx {
    adm: Arc<Admission>,
    max_bytes: usize,
}

/// The two encodings OTLP/HTTP has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// The OTLP/HTTP routes. With `api_key`, every request needs it (`Authorization: Bearer`).
pub fn router(adm: Arc<Admission>, api_key: Option<String>, max_bytes: usize) -> Router {
    let mut app = Router::new()
        .route("/v1/logs", post(logs))
        .route("/v1/traces", post(traces));
    if let Some(key) = api_key {
        app = app.route_layer(axum::middleware::from_fn_with_state(
            Arc::<str>::from(key),
            crate::ingest::http::require_key,
        ));
    }
    app.with_state(Ctx { adm, max_bytes })
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    adm: Arc<Admission>,
    api_key: Option<String>,
    max_bytes: usize,
    stop: CancellationToken,
) {
    let app = router(adm, api_key, max_bytes);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "OTLP/HTTP ingest server failed");
    }
}

async fn logs(State(cx): State<Ctx>, headers: HeaderMap, body: Body) -> Response {
    let (enc, req) = match read::<ExportLogsServiceRequest>(&cx, &headers, body).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let source = cx
        .adm
        .metrics
        .events_received
        .with_label_values(&["otlp_http"]);
    let o = admit_logs(&cx.adm, &source, &req).await;
    if let Some(e) = &o.error {
        return unavailable(e);
    }
    answer(
        enc,
        ExportLogsServiceResponse {
            partial_success: partial(&o, |rejected, error_message| ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message,
            }),
        },
    )
}

async fn traces(State(cx): State<Ctx>, headers: HeaderMap, body: Body) -> Response {
    let (enc, req) = match read::<ExportTraceServiceRequest>(&cx, &headers, body).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let source = cx
        .adm
        .metrics
        .events_received
        .with_label_values(&["otlp_http"]);
    let o = admit_traces(&cx.adm, &source, &req).await;
    if let Some(e) = &o.error {
        return unavailable(e);
    }
    answer(
        enc,
        ExportTraceServiceResponse {
            partial_success: partial(&o, |rejected, error_message| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message,
            }),
        },
    )
}

/// 503: the events are not in the write-ahead log (the exporter retries).
fn unavailable(e: &str) -> Response {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({"error": e})),
    )
        .into_response()
}

/// `partial_success` when something was refused (absent otherwise, as the spec asks).
pub(super) fn partial<P>(o: &Outcome, make: impl FnOnce(i64, String) -> P) -> Option<P> {
    (o.rejected > 0).then(|| make(o.rejected as i64, o.message()))
}

/// The request's encoding, body (decompressed, bounded) and decoded message, or the answer
/// that refuses it.
async fn read<T: Message + Default + DeserializeOwned>(
    cx: &Ctx,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Encoding, T), Response> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    let enc = if mime.eq_ignore_ascii_case(PROTOBUF) {
        Encoding::Protobuf
    } else if mime.eq_ignore_ascii_case(JSON) {
        Encoding::Json
    } else {
        return Err(refuse(
            Encoding::Json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {ctype:?} is not supported: send {PROTOBUF} or {JSON}"),
        ));
    };
    let max = cx.max_bytes;
    let too_big = |what: &str| {
        refuse(
            enc,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is over {max} bytes (ingest.otlp.max_request_bytes)"),
        )
    };
    let raw = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_big("the request body"))?;
    let coding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim();
    let bytes = if coding.eq_ignore_ascii_case("gzip") {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(max));
        // Reads one byte past the bound, so a body that inflates beyond it is refused without
        // inflating the rest.
        let read = flate2::read::GzDecoder::new(&raw[..])
            .take(max as u64 + 1)
            .read_to_end(&mut out);
        match read {
            Ok(_) if out.len() > max => return Err(too_big("the decompressed body")),
            Ok(_) => Bytes::from(out),
            Err(e) => {
                cx.adm.invalid(1);
                return Err(refuse(
                    enc,
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid gzip: {e}"),
                ));
            }
        }
    } else if coding.eq_ignore_ascii_case("identity") || coding.is_empty() {
        raw
    } else {
        return Err(refuse(
            enc,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {coding:?} is not supported: send gzip or identity"),
        ));
    };
    decode(enc, bytes).map(|m| (enc, m)).map_err(|msg| {
        cx.adm.invalid(1);
        refuse(enc, StatusCode::BAD_REQUEST, msg)
    })
}

/// Decodes an export request body (already decompressed) in `enc`; the error is the text of
/// the `400` answer. Public for the fuzz targets (fuzz/).
pub fn decode<T: Message + Default + DeserializeOwned>(
    enc: Encoding,
    bytes: Bytes,
) -> Result<T, String> {
    match enc {
        Encoding::Protobuf => T::decode(bytes).map_err(|e| format!("malformed protobuf: {e}")),
        Encoding::Json => {
            serde_json::from_slice(&bytes).map_err(|e| format!("malformed OTLP/JSON: {e}"))
        }
    }
}

/// `200` with `msg` in the request's encoding.
fn answer<M: Message + Serialize>(enc: Encoding, msg: M) -> Response {
    match enc {
        Encoding::Protobuf => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROTOBUF)],
            msg.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, JSON)],
            serde_json::to_vec(&msg).unwrap_or_else(|_| b"{}".to_vec()),
        )
            .into_response(),
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// An error answer: `google.rpc.Status` (code from the HTTP status) in the request's encoding.
fn refuse(enc: Encoding, status: StatusCode, message: String) -> Response {
    // gRPC codes: INVALID_ARGUMENT 3, RESOURCE_EXHAUSTED 8, UNIMPLEMENTED 12.
    let code = match status {
        StatusCode::BAD_REQUEST => 3,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        _ => 12,
    };
    tracing::debug!(%status, %message, "OTLP/HTTP request refused");
    match enc {
        Encoding::Protobuf => (
            status,
            [(header::CONTENT_TYPE, PROTOBUF)],
            RpcStatus { code, message }.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            status,
            axum::Json(serde_json::json!({"code": code, "message": message})),
        )
            .into_response(),
    }
}

/// Binds `addr`; the error names the key.
pub async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}"))
}
