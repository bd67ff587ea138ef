//! The debugger's routes: `/v1/breakpoints` and `/v1/debug` (SPEC "Debugging and the console").
//!
//! In: JSON requests. Out: JSON answers over the [`Debugger`](super::debug::Debugger) held in
//! [`ControlState`]: breakpoints set, listed and deleted; sessions listed newest first, one
//! session with its (redacted) event and its run's recent events (from the runs view); a paused
//! session continued or stepped; a CEL expression evaluated over a session's event, as the
//! views show it (redacted fields read `"***"`). Holds nothing itself.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::debug::{BreakpointError, BreakpointSpec, Release, ReleaseError};
use super::{ApiError, ControlState, json_rejection, views};
use crate::condition::EvalError;

/// Events of the session's run shown with it.
const RUN_EVENTS: usize = 50;
/// Sessions listed when no `limit` is given.
const SESSIONS_LIMIT: usize = 100;

/// `POST /v1/breakpoints {"when", "run_id"?, "action"?, "hits"?}`: 201 `{"id", …}`.
pub async fn add(
    State(st): State<Arc<ControlState>>,
    body: Result<Json<BreakpointSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = body.map_err(json_rejection)?;
    let bp = st.debugger.add(spec).map_err(|e| {
        let code = match e {
            BreakpointError::TooMany => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(code, e.to_string())
    })?;
    let v = st
        .debugger
        .breakpoints()
        .into_iter()
        .find(|b| b["id"] == bp.id.as_str())
        .unwrap_or_else(|| serde_json::json!({"id": bp.id}));
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /v1/breakpoints`.
pub async fn list(State(st): State<Arc<ControlState>>) -> Response {
    let bps = st.debugger.breakpoints();
    Json(serde_json::json!({"count": bps.len(), "breakpoints": bps})).into_response()
}

/// `DELETE /v1/breakpoints/{id}`: also releases the connections its sessions hold.
pub async fn delete(
    State(st): State<Arc<ControlState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if st.debugger.delete(&id) {
        Ok(Json(serde_json::json!({"deleted": id})).into_response())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no breakpoint `{id}`"),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    breakpoint: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/debug?breakpoint=ID&state=paused|captured|unheld|released&limit=N`: sessions,
/// newest first, and the store's fill.
pub async fn sessions(
    State(st): State<Arc<ControlState>>,
    query: Result<Query<SessionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    if let Some(s) = q.state.as_deref()
        && !matches!(s, "paused" | "captured" | "unheld" | "released")
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("state `{s}`: use paused, captured, unheld or released"),
        ));
    }
    let limit = q.limit.unwrap_or(SESSIONS_LIMIT);
    let (list, stored, bytes) =
        st.debugger
            .sessions(q.breakpoint.as_deref(), q.state.as_deref(), limit);
    Ok(Json(serde_json::json!({
        "count": list.len(),
        "sessions": list,
        "stored": stored,
        "stored_bytes": bytes,
        "max_pause_ms": st.debugger.max_pause().as_millis() as u64,
    }))
    .into_response())
}

fn session_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("no debug session `{id}`")))
}

fn not_found(id: u64) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        ReleaseError::NotFound(id).to_string(),
    )
}

/// `GET /v1/debug/{id}`: the session, its event, its run's recent events and, for a pause,
/// the connection it holds.
pub async fn session(
    State(st): State<Arc<ControlState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let (mut v, event) = st.debugger.session(id).ok_or_else(|| not_found(id))?;
    let redact = st.views.redact_fields();
    v["event"] = views::render_event(&event, &redact);
    v["run"] = match event.run_id.as_deref() {
        Some(run) => match st.tail.get(run, RUN_EVENTS) {
            Some((summary, events)) => serde_json::json!({"summary": summary, "events": events}),
            None => serde_json::Value::Null,
        },
        None => serde_json::Value::Null,
    };
    Ok(Json(v).into_response())
}

/// `POST /v1/debug/{id}/continue|step|evaluate`.
pub async fn act(
    State(st): State<Arc<ControlState>>,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let why = match action.as_str() {
        "continue" => Release::Continue,
        "step" => Release::Step,
        "evaluate" => return evaluate(&st, id, &body),
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("`{other}`: a session takes continue, step or evaluate"),
            ));
        }
    };
    st.debugger.release(id, why).map_err(|e| {
        let code = match e {
            ReleaseError::NotFound(_) => StatusCode::NOT_FOUND,
            ReleaseError::NotPaused(_) => StatusCode::CONFLICT,
        };
        ApiError(code, e.to_string())
    })?;
    Ok(Json(serde_json::json!({"id": id.to_string(), "released": why})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateBody {
    expr: String,
}

/// The value of `{"expr"}` over the session's event as the views show it.
fn evaluate(st: &ControlState, id: u64, body: &[u8]) -> Result<Response, ApiError> {
    let b: EvaluateBody = serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"expr\": EXPR}}: {e}"),
        )
    })?;
    let (_, mut event) = st.debugger.session(id).ok_or_else(|| not_found(id))?;
    let redact = st.views.redact_fields();
    if !redact.is_empty() {
        let shown = views::render_event(&event, &redact);
        event.data = bytes::Bytes::from(shown["data"].to_string());
        if let Some(attrs) = shown["attributes"].as_object() {
            event.attributes = attrs
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
        }
    }
    match crate::condition::evaluate(&b.expr, &event) {
        Ok(value) => Ok(Json(serde_json::json!({"expr": b.expr, "value": value})).into_response()),
        Err(e @ EvalError::Compile(_)) => {
            Err(ApiError(StatusCode::BAD_REQUEST, format!("expr: {e}")))
        }
        Err(e @ EvalError::Eval(_)) => Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("expr: {e}"),
        )),
    }
}
