//! The web console at `GET /`: one HTML page with its CSS and JavaScript, embedded in the
//! binary (`include_str!`), no framework, no build step, nothing fetched from elsewhere.
//!
//! In: a page load, with the key as `?api_key=KEY` (or a header) when `control.api_key` is set.
//! Out: the page; its script then reads the same control API as any client (`X-API-Key` on
//! every request, `?api_key=` on the WebSocket): `/v1/health`, `/v1/stats`, `/v1/plugins`,
//! `/v1/runs`, `/v1/ws/tail`, `/v1/breakpoints`, `/v1/debug`. What it renders is sampled so
//! that it stays usable at any event rate: the live tail asks the daemon for at most
//! `rate=` events a second and keeps the last few hundred rows; the overview polls every two
//! seconds; a run's timeline shows its most recent events. Holds no state and no task.

use std::sync::{Arc, LazyLock};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use super::ControlState;

const HTML: &str = include_str!("index.html");
const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// The page with its style and script inlined: one request loads everything.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    HTML.replacen("/*{{CSS}}*/", CSS, 1)
        .replacen("/*{{JS}}*/", JS, 1)
});

/// `GET /`.
pub async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(PAGE.as_str()),
    )
        .into_response()
}

/// The key rule of the console: a header or `?api_key=`; without it, a page that says how.
pub async fn require_key(
    State(st): State<Arc<ControlState>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = &st.api_key
        && !crate::auth::has_key_or_query(req.headers(), req.uri(), key)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Html(
                "<!doctype html><meta charset=utf-8><title>Outrigger: key needed</title>\
                 <p>This console needs the control API key: open <code>/?api_key=KEY</code>.</p>",
            ),
        )
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_inlines_its_assets_and_fetches_nothing_from_elsewhere() {
        let page = super::PAGE.as_str();
        assert!(!page.contains("{{CSS}}") && !page.contains("{{JS}}"));
        assert!(page.contains("/v1/ws/tail"));
        for outside in ["http://", "https://", "//cdn"] {
            assert!(!page.contains(outside), "the page refers to {outside}");
        }
    }
}
