//! The control API on `control.listen`: metrics, health, readiness, stats, sampling, anomalies,
//! plugins, reload, the live tail (SSE and WebSocket), runs, breakpoints and debug sessions,
//! the log level, and the web console at `/`.
//!
//! In: HTTP requests. Out: JSON (Prometheus text on `/metrics`, Server-Sent Events on
//! `/v1/tail`, a WebSocket on `/v1/ws/tail`, HTML on `/`). With an API key set, every `/v1/`
//! route needs `Authorization: Bearer KEY` or `X-API-Key: KEY`, and the WebSocket tail and the
//! console also take `?api_key=KEY` (browsers cannot set headers there), all compared in
//! constant time; `/metrics`, `/healthz` and `/readyz` stay open. A browser `Origin` listed in
//! `control.cors` gets CORS headers (and preflights answered); none is listed by default. Every client (peer
//! IP) gets `control.rate_limit` requests per second, then 429 (`/healthz` and `/readyz` are
//! exempt, so probes never fail for it). Bodies are limited to 1 MiB. Every error is JSON
//! `{"error": …}`. Reads the daemon's shared state ([`ControlState`]); changes go through the
//! sampler, the reload channel and the log handle. The server stops on the shutdown token, and
//! tail streams end with it.

pub mod breakpoints;
pub mod console;
pub mod debug;
pub mod health;
pub mod limit;
pub mod views;
pub mod ws;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::logging::LogControl;
use crate::metrics::Metrics;
use crate::pipeline::Routing;
use crate::queue::Queue;
use crate::sampler::Sampler;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The `/v1/stats` window when none is asked for.
pub const DEFAULT_STATS_WINDOW: Duration = Duration::from_secs(60);

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
    /// The live tail and the per-run rings (fed by the ingest observer).
    pub views: Arc<views::EventViews>,
    /// The tail sampler: open runs, decided runs, forced keeps.
    pub tail: crate::tail::Tail,
    pub limiter: Arc<limit::RateLimiter>,
    /// Changes the log filter live (`PUT /v1/log`); `None` when logging was set up elsewhere.
    pub log: Option<LogControl>,
    /// The write-ahead log, with `queue.durable`.
    pub wal: Option<Arc<crate::wal::Wal>>,
    /// Breakpoints and debug sessions.
    pub debugger: Arc<debug::Debugger>,
    /// `control.cors`, live.
    pub cors: Arc<CorsOrigins>,
}

/// `control.cors`: the browser origins allowed from other pages; reloaded live.
#[derive(Default)]
pub struct CorsOrigins(parking_lot::RwLock<Vec<String>>);

impl CorsOrigins {
    pub fn new(origins: &[String]) -> CorsOrigins {
        CorsOrigins(parking_lot::RwLock::new(origins.to_vec()))
    }

    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, Vec<String>> {
        self.0.read()
    }

    fn allows(&self, origin: &str) -> bool {
        self.0.read().iter().any(|o| o == "*" || o == origin)
    }
}

impl crate::reload::Reconfigure for CorsOrigins {
    fn reconfigure(&self, cfg: &crate::config::Config) {
        *self.0.write() = cfg.control.cors.clone();
    }
}

/// A body that could not be read as JSON: 413 when too large, 415 without a JSON content type,
/// 400 otherwise.
fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError(e.status(), e.body_text())
}

/// An API error: a status and a JSON body that says why.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

/// Cancelled on shutdown: tail streams end with it.
#[derive(Clone)]
pub(crate) struct TailStop(pub(crate) CancellationToken);

/// Every control route; tail streams end when `stop` is cancelled.
pub fn router_until(state: Arc<ControlState>, stop: CancellationToken) -> Router {
    let v1 = Router::new()
        .route("/health", get(health_route))
        .route("/stats", get(stats))
        .route("/plugins", get(plugins))
        .route("/plugins/{name}/promote", post(promote))
        .route("/reload", post(reload))
        .route("/sampling", get(get_sampling).put(put_sampling))
        .route("/anomaly", post(anomaly))
        .route("/tail", get(ws::sse_tail))
        .route("/runs", get(list_runs))
        .route("/runs/{*run}", get(run_events).post(keep_run))
        .route("/log", get(get_log).put(put_log))
        .route(
            "/breakpoints",
            get(breakpoints::list).post(breakpoints::add),
        )
        .route("/breakpoints/{id}", delete(breakpoints::delete))
        .route("/debug", get(breakpoints::sessions))
        .route("/debug/{id}", get(breakpoints::session))
        .route("/debug/{id}/{action}", post(breakpoints::act))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    // Browsers cannot set headers on a WebSocket or a page load: these also take `?api_key=`.
    let v1_browser = Router::new()
        .route("/ws/tail", get(ws::ws_tail))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_key_or_query,
        ));
    let console =
        Router::new()
            .route("/", get(console::page))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                console::require_key,
            ));
    let limited = Router::new()
        .route("/metrics", get(metrics))
        .nest("/v1", v1.merge(v1_browser))
        .merge(console)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "alive"})) }),
        )
        .route("/readyz", get(readyz))
        .merge(limited)
        .layer(middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(Extension(TailStop(stop)))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ControlState>,
    stop: CancellationToken,
) {
    let app = router_until(state, stop.clone());
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await
    {
        tracing::error!(error = %e, "control API server failed");
    }
}

/// Turns any error response that is not JSON (axum's own rejections, 405) into `{"error": …}`.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let mut out = ApiError(status, message).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// The per-client rate limit: 429 with `Retry-After` once a client's bucket is empty.
async fn rate_limit(State(st): State<Arc<ControlState>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Err(wait) = st.limiter.check(peer) {
        let mut resp = ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "rate limit exceeded for {peer}: retry in {} ms",
                wait.as_millis().max(1)
            ),
        )
        .into_response();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = header::HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    next.run(req).await
}

/// The answer to a request without the key.
fn unauthorized() -> Response {
    let mut resp = ApiError(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key (Authorization: Bearer KEY, or X-API-Key: KEY)".into(),
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

async fn require_key(State(st): State<Arc<ControlState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key
        && !crate::auth::has_key(req.headers(), key)
    {
        return unauthorized();
    }
    next.run(req).await
}

/// [`require_key`], or the key as `?api_key=KEY`.
async fn require_key_or_query(
    State(st): State<Arc<ControlState>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = &st.api_key
        && !crate::auth::has_key_or_query(req.headers(), req.uri(), key)
    {
        return unauthorized();
    }
    next.run(req).await
}

/// `control.cors`: an allowed `Origin` gets `Access-Control-Allow-Origin` (and a preflight its
/// answer, before any key check: browsers send preflights without credentials).
async fn cors(State(st): State<Arc<ControlState>>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| o.to_str().is_ok_and(|o| st.cors.allows(o)))
        .cloned();
    let Some(origin) = origin else {
        return next.run(req).await;
    };
    let preflight = req.method() == axum::http::Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static("GET, POST, PUT, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::HeaderValue::from_static("authorization, x-api-key, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            header::HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, header::HeaderValue::from_static("origin"));
    resp
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

/// `GET /v1/health`: the report; 503 when unhealthy (probes and load balancers read the code),
/// 200 when healthy or degraded.
async fn health_route(State(st): State<Arc<ControlState>>) -> Response {
    let report = st.health.check();
    let code = if report.status == health::Status::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(report)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    /// Like `60s`, `5m`, `500ms`.
    window: Option<String>,
}

async fn stats(
    State(st): State<Arc<ControlState>>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let window = match q.window.as_deref() {
        None => DEFAULT_STATS_WINDOW,
        Some(w) => {
            w.parse::<crate::config::Dur>()
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("window: {e}")))?
                .0
        }
    };
    let m = &st.metrics;
    let received: BTreeMap<String, u64> = counter_values(&m.events_received);
    let delivered: BTreeMap<String, u64> = counter_values(&m.events_delivered);
    let dropped: BTreeMap<&str, u64> = crate::metrics::DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), m.dropped_count(*r)))
        .collect();
    let rates = st.sampler.rates();
    Ok(Json(serde_json::json!({
        "uptime_seconds": st.started.elapsed().as_secs_f64(),
        "events": {
            "received": received.values().sum::<u64>(),
            "received_by_ingest": received,
            "delivered": delivered,
            "dropped": dropped,
        },
        "queue": {
            "depth": st.queue.len(),
            "capacity": st.queue.capacity(),
            "durable": st.wal.as_ref().map(|w| w.status()),
        },
        "sampling": {"default_rate": rates.default_rate, "rates": rates.rates, "boosts": st.sampler.boosts()},
        "profile": st.health.profile_summary(window),
        "tail": {"subscribers": st.views.subscribers()},
        "runs": st.tail.stats(),
    }))
    .into_response())
}

/// Every series of a one-label counter, by label value.
fn counter_values(v: &prometheus::IntCounterVec) -> BTreeMap<String, u64> {
    use prometheus::core::Collector;
    v.collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .filter_map(|m| {
            let label = m.get_label().first()?.value().to_string();
            Some((label, m.get_counter().get_value() as u64))
        })
        .collect()
}

async fn plugins(State(st): State<Arc<ControlState>>) -> Response {
    let set = st.routing.borrow().plugins.clone();
    Json(serde_json::json!({"plugins": set.status()})).into_response()
}

async fn reload(State(st): State<Arc<ControlState>>) -> Result<Response, ApiError> {
    let summary = run_reload(&st).await?;
    Ok(Json(serde_json::json!({"result": "ok", "summary": summary})).into_response())
}

/// Asks the reloader to reload everything and waits for its answer.
async fn run_reload(st: &ControlState) -> Result<String, ApiError> {
    let (tx, rx) = oneshot::channel();
    st.reload.send(tx).await.map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down".into(),
        )
    })?;
    match rx.await {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(e)) => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, e)),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload was abandoned".into(),
        )),
    }
}

/// `POST /v1/plugins/{name}/promote`: the shadow's file (and its `NAME.shadow.yml`, if any)
/// replaces NAME's, the old ones kept as `NAME.wasm.prev` (`NAME.yml.prev`), and the plugins
/// are reloaded; the pipeline swaps chains between batches, so every event goes through one
/// version or the other. NAME.wasm is replaced by a rename: it never goes missing.
async fn promote(
    State(st): State<Arc<ControlState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let set = st.routing.borrow().plugins.clone();
    let not_found = |m: String| ApiError(StatusCode::NOT_FOUND, m);
    let live = set
        .plugin(&name)
        .cloned()
        .ok_or_else(|| not_found(format!("no plugin {name} is loaded")))?;
    let shadow = set
        .shadow_path(&name)
        .ok_or_else(|| not_found(format!("{name} has no shadow ({name}.shadow.wasm)")))?;
    if set.shadow_of(&name).is_none() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("the shadow of {name} is not loaded: see GET /v1/plugins for why"),
        ));
    }
    let previous = crate::plugins::promote_files(&live.path, &shadow)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    tracing::info!(plugin = %name, previous = %previous.display(), "shadow promoted: reloading");
    let summary = run_reload(&st).await?;
    Ok(Json(serde_json::json!({
        "result": "ok",
        "promoted": name,
        "previous": previous,
        "summary": summary,
    }))
    .into_response())
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
    let Json(u) = body.map_err(json_rejection)?;
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
    let Json(a) = body.map_err(json_rejection)?;
    if a.kind.is_empty() || a.kind.len() > crate::event::MAX_TYPE_BYTES {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "`type` must be 1 to {} bytes, as an event's type is",
                crate::event::MAX_TYPE_BYTES
            ),
        ));
    }
    if a.reason.len() > 4096 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`reason` must be at most 4096 bytes".into(),
        ));
    }
    st.sampler.report_anomaly(&a.kind, &a.reason);
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"boosted": a.kind, "boosts": st.sampler.boosts()})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// Runs listed when no `limit` is given, and the most one request may ask for.
const RUNS_LIMIT: usize = 100;
const RUNS_MAX_LIMIT: usize = 10_000;

/// `GET /v1/runs?state=open|kept|dropped|seen&limit=N`: run summaries, most recent first.
async fn list_runs(
    State(st): State<Arc<ControlState>>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let state = match q.state.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s @ ("open" | "kept" | "dropped" | "seen")) => Some(s),
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("state `{other}`: use open, kept, dropped or seen"),
            ));
        }
    };
    let limit = q.limit.unwrap_or(RUNS_LIMIT).min(RUNS_MAX_LIMIT);
    let runs = st.tail.list(state, limit);
    Ok(Json(serde_json::json!({"runs": runs, "count": runs.len()})).into_response())
}

/// `GET /v1/runs/{run_id}`: a run's summary and its most recent events, oldest first,
/// redacted. A run id may contain `/` (the pytest plugin's do); percent-encoded or not.
async fn run_events(
    State(st): State<Arc<ControlState>>,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    let limit = RUNS_MAX_LIMIT;
    match st.tail.get(&run_id, limit) {
        Some((summary, events)) => {
            // The summary's `events` (its count) becomes `events_total`; `events` is the list.
            let mut v = serde_json::to_value(&summary).unwrap_or_default();
            v["events_total"] = v["events"].take();
            v["count"] = events.len().into();
            v["events"] = events.into();
            Ok(Json(v).into_response())
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no run `{run_id}` (unknown, or no longer remembered: control.runs, control.run_bytes)"
            ),
        )),
    }
}

/// `POST /v1/runs/{run_id}/keep`: keeps an open run whole, whatever the policies say.
async fn keep_run(
    State(st): State<Arc<ControlState>>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    use crate::tail::KeepOutcome;
    let Some(run_id) = path.strip_suffix("/keep").filter(|r| !r.is_empty()) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "POST /v1/runs/{run_id}/keep is the only run action".into(),
        ));
    };
    let (status, message) = match st.tail.keep(run_id) {
        KeepOutcome::Keeping => (
            StatusCode::ACCEPTED,
            "kept: the run is released to the sinks",
        ),
        KeepOutcome::AlreadyKept => (StatusCode::OK, "already decided: kept"),
        KeepOutcome::AlreadyDropped => (
            StatusCode::CONFLICT,
            "already decided: dropped (its events are gone)",
        ),
        KeepOutcome::Unknown => (StatusCode::NOT_FOUND, "no open run has this id"),
        KeepOutcome::Disabled => (
            StatusCode::CONFLICT,
            "tail sampling is off (sampling.tail.enabled): runs are not held",
        ),
    };
    if status.is_client_error() {
        return Err(ApiError(status, format!("run `{run_id}`: {message}")));
    }
    Ok((
        status,
        Json(serde_json::json!({"run_id": run_id, "result": message})),
    )
        .into_response())
}

async fn get_log(State(st): State<Arc<ControlState>>) -> Result<Response, ApiError> {
    let log = st.log.as_ref().ok_or_else(log_unavailable)?;
    Ok(Json(serde_json::json!({"level": log.level()})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogUpdate {
    level: String,
}

/// `PUT /v1/log {"level": "debug"}`: changes the log filter until the next change (a config
/// reload that changes `log.level` applies it again).
async fn put_log(
    State(st): State<Arc<ControlState>>,
    body: Result<Json<LogUpdate>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(u) = body.map_err(json_rejection)?;
    let log = st.log.as_ref().ok_or_else(log_unavailable)?;
    log.set_level(&u.level)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(serde_json::json!({"level": log.level()})).into_response())
}

fn log_unavailable() -> ApiError {
    ApiError(
        StatusCode::NOT_IMPLEMENTED,
        "the log level cannot change in this process".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BatchConfig, OnFull, ProfilingConfig};
    use crate::plugins::PluginSet;
    use crate::profiler::ProfileHistory;
    use serde_json::Value;

    /// A control API on a free port over fresh state; the reload receiver is kept alive.
    async fn start(
        api_key: Option<&str>,
        rate: u32,
    ) -> (SocketAddr, Arc<ControlState>, mpsc::Receiver<ReloadRequest>) {
        let metrics = Arc::new(Metrics::new());
        let queue = Arc::new(Queue::new(10, OnFull::DropOldest, metrics.clone()));
        let (_tx, routing) = watch::channel(Routing {
            batch: BatchConfig::default(),
            plugins: Arc::new(PluginSet::empty()),
        });
        let profile = Arc::new(ProfileHistory::new(&ProfilingConfig::default()));
        let (reload, reload_rx) = mpsc::channel(1);
        let st = Arc::new(ControlState {
            sampler: Arc::new(Sampler::new(Default::default(), metrics.clone())),
            health: Arc::new(health::HealthMonitor::new(
                metrics.clone(),
                queue.clone(),
                routing.clone(),
                profile,
                Default::default(),
                None,
            )),
            metrics,
            queue,
            routing,
            ready: AtomicBool::new(true),
            api_key: api_key.map(str::to_string),
            reload,
            started: Instant::now(),
            views: Arc::new(views::EventViews::new(&[])),
            tail: crate::tail::Tail::new(&Default::default(), Arc::new(Metrics::new())),
            limiter: Arc::new(limit::RateLimiter::new(rate)),
            log: None,
            wal: None,
            debugger: Arc::new(debug::Debugger::new(
                &Default::default(),
                Arc::new(Metrics::new()),
            )),
            cors: Arc::new(CorsOrigins::new(&["http://allowed.example".to_string()])),
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, st.clone(), CancellationToken::new()));
        (addr, st, reload_rx)
    }

    async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut r = reqwest::Client::new().get(format!("http://{addr}{path}"));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn keys_probes_and_json_errors() {
        let (addr, _st, _rx) = start(Some("k"), 0).await;
        assert_eq!(get(addr, "/v1/health", None).await.0, 401);
        assert_eq!(get(addr, "/v1/health", Some("kk")).await.0, 401);
        let (status, h) = get(addr, "/v1/health", Some("k")).await;
        assert_eq!(status, 200);
        assert_eq!(h["components"]["profiler"]["status"], "healthy", "{h}");
        assert_eq!(get(addr, "/healthz", None).await.0, 200);
        assert_eq!(get(addr, "/readyz", None).await.0, 200);
        let (status, e) = get(addr, "/v1/log", Some("k")).await;
        assert_eq!(status, 501, "no log handle in this process");
        assert!(e["error"].is_string());
        let (status, e) = get(addr, "/v1/runs/none", Some("k")).await;
        assert_eq!(status, 404);
        assert!(e["error"].as_str().unwrap().contains("none"));
        let (status, e) = get(addr, "/v1/stats?window=nope", Some("k")).await;
        assert_eq!(status, 400);
        assert!(e["error"].as_str().unwrap().starts_with("window:"), "{e}");
    }

    #[tokio::test]
    async fn health_answers_503_only_when_unhealthy() {
        let (addr, st, _rx) = start(None, 0).await;
        let (status, h) = get(addr, "/v1/health", None).await;
        assert_eq!(
            (status, h["status"].as_str()),
            (200, Some("healthy")),
            "{h}"
        );
        // A failed delivery and none that succeeded: the sinks are unhealthy.
        let batches = &st.metrics.sink_batches;
        batches.with_label_values(&["s", "retry"]).inc();
        let (status, h) = get(addr, "/v1/health", None).await;
        assert_eq!(status, 503, "{h}");
        assert_eq!(h["status"], "unhealthy", "the body is the report: {h}");
        assert_eq!(h["components"]["sinks"]["status"], "unhealthy", "{h}");
        // Retried but also delivering: degraded, still 200.
        batches.with_label_values(&["s", "ok"]).inc();
        let (status, h) = get(addr, "/v1/health", None).await;
        assert_eq!(
            (status, h["status"].as_str()),
            (200, Some("degraded")),
            "{h}"
        );
    }

    #[tokio::test]
    async fn rate_limit_spares_probes() {
        let (addr, _st, _rx) = start(None, 2).await;
        let mut codes = Vec::new();
        for _ in 0..5 {
            codes.push(get(addr, "/v1/stats", None).await.0);
        }
        assert!(codes.contains(&429), "{codes:?}");
        for _ in 0..5 {
            assert_eq!(get(addr, "/healthz", None).await.0, 200);
        }
    }
}
