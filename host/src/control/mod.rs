//! The control API on `control.listen`: metrics, health, readiness, sampling, anomalies, plugins.
//!
//! In: HTTP requests. Out: JSON (and Prometheus text on `/metrics`). With an API key set, every
//! `/v1/` route needs `Authorization: Bearer KEY`, compared in constant time; errors are JSON
//! `{"error": …}`. Reads the daemon's shared state ([`ControlState`]); changes go through the
//! sampler and the reload channel. The server stops on the shutdown token.

pub mod health;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pipeline::Routing;
use crate::queue::Queue;
use crate::sampler::Sampler;

/// A reload asked for over the API (or SIGHUP); the answer says what happened.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// What the control API reads and acts on.
pub struct ControlState {
    pub metrics: Arc<Metrics>,
    pub sampler: Arc<Sampler>,
    pub queue: Arc<Queue>,
    pub routing: watch::Receiver<Routing>,
    /// True once ingest listens and plugins are loaded.
    pub ready: AtomicBool,
    pub api_key: Option<String>,
    pub reload: mpsc::Sender<ReloadRequest>,
    pub started: Instant,
    pub health: Arc<health::HealthMonitor>,
}

/// An API error: a status and a JSON body that says why.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

/// Every control route.
pub fn router(state: Arc<ControlState>) -> Router {
    let v1 = Router::new()
        .route("/health", get(health_route))
        .route("/stats", get(stats))
        .route("/plugins", get(plugins))
        .route("/reload", post(reload))
        .route("/sampling", get(get_sampling).put(put_sampling))
        .route("/anomaly", post(anomaly))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "alive"})) }),
        )
        .route("/readyz", get(readyz))
        .nest("/v1", v1)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(state)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ControlState>,
    stop: CancellationToken,
) {
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "control API server failed");
    }
}

/// Compares in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_key(State(st): State<Arc<ControlState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            let mut resp = ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key (Authorization: Bearer KEY)".into(),
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
    }
    next.run(req).await
}

async fn metrics(State(st): State<Arc<ControlState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(st): State<Arc<ControlState>>) -> Response {
    if st.ready.load(Ordering::Acquire) {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "starting"})),
        )
            .into_response()
    }
}

async fn health_route(State(st): State<Arc<ControlState>>) -> Response {
    Json(st.health.check()).into_response()
}

async fn stats(State(st): State<Arc<ControlState>>) -> Response {
    let m = &st.metrics;
    let received: u64 = ["socket", "http"]
        .iter()
        .map(|s| m.events_received.with_label_values(&[s]).get())
        .sum();
    let dropped: BTreeMap<&str, u64> = crate::metrics::DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), m.dropped_count(*r)))
        .collect();
    Json(serde_json::json!({
        "uptime_seconds": st.started.elapsed().as_secs_f64(),
        "events": {"received": received, "dropped": dropped},
        "queue": {"depth": st.queue.len(), "capacity": st.queue.capacity()},
        "sampling": {"boosts": st.sampler.boosts()},
        "profile": st.health.profile_summary(),
    }))
    .into_response()
}

async fn plugins(State(st): State<Arc<ControlState>>) -> Response {
    let set = st.routing.borrow().plugins.clone();
    Json(serde_json::json!({"plugins": set.status()})).into_response()
}

async fn reload(State(st): State<Arc<ControlState>>) -> Result<Response, ApiError> {
    let (tx, rx) = oneshot::channel();
    st.reload.send(tx).await.map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down".into(),
        )
    })?;
    match rx.await {
        Ok(Ok(summary)) => {
            Ok(Json(serde_json::json!({"result": "ok", "summary": summary})).into_response())
        }
        Ok(Err(e)) => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, e)),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload was abandoned".into(),
        )),
    }
}

async fn get_sampling(State(st): State<Arc<ControlState>>) -> Response {
    let r = st.sampler.rates();
    Json(serde_json::json!({"default_rate": r.default_rate, "rates": r.rates, "boosts": st.sampler.boosts()}))
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplingUpdate {
    default_rate: Option<f64>,
    #[serde(default)]
    rates: BTreeMap<String, f64>,
}

async fn put_sampling(
    State(st): State<Arc<ControlState>>,
    body: Result<Json<SamplingUpdate>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(u) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let ok = |r: f64| (0.0..=1.0).contains(&r);
    if let Some(d) = u.default_rate
        && !ok(d)
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "default_rate must be between 0.0 and 1.0".into(),
        ));
    }
    if let Some((t, _)) = u.rates.iter().find(|(_, r)| !ok(**r)) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("rates.{t} must be between 0.0 and 1.0"),
        ));
    }
    st.sampler.merge_rates(u.default_rate, &u.rates);
    tracing::info!(default_rate = ?u.default_rate, types = u.rates.len(), "sampling rates changed over the API");
    Ok(get_sampling(State(st)).await)
}

#[derive(Deserialize)]
struct AnomalyReport {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    reason: String,
}

async fn anomaly(
    State(st): State<Arc<ControlState>>,
    body: Result<Json<AnomalyReport>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(a) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    if a.kind.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`type` must not be empty".into(),
        ));
    }
    st.sampler.report_anomaly(&a.kind, &a.reason);
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"boosted": a.kind, "boosts": st.sampler.boosts()})),
    )
        .into_response())
}
