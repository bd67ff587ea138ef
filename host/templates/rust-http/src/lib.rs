//! `{name}`: an Outrigger handler plugin that POSTs through `wasi:http`.
//!
//! Outrigger calls `init` once per instance with the plugin's config (JSON text, from
//! `{name}.yml` beside the .wasm or `plugins.chain[].config`), then `on_batch` with whole
//! batches. Return one verdict per event, in order: `Keep`, `Drop`, or `Replace(event)`.
//!
//! This one POSTs every event's payload to config `url` and keeps every event. It counts
//! `posted` (2xx) and `post_failed` (anything else) and logs the first failure of a batch.
//! The daemon links `wasi:http` only for a plugin whose `plugins.chain` entry grants the URL's
//! `host:port` (`grants: {http: ["127.0.0.1:9000"]}`); a request to anything else fails with
//! `ErrorCode::HttpRequestDenied`. Never trap on a network error: count it and go on.

use std::cell::RefCell;

use outrigger::plugin::host;
use outrigger::plugin::types::Level;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};

wit_bindgen::generate!({ world: "handler", path: "wit" });

#[derive(serde::Deserialize)]
struct Config {
    /// `http://host:port/path`: write the port, as the grant does.
    url: String,
}

/// The URL, split as `wasi:http` wants it.
struct Target {
    scheme: Scheme,
    authority: String,
    path: String,
}

thread_local! {
    static TARGET: RefCell<Option<Target>> = const { RefCell::new(None) };
}

fn parse_url(url: &str) -> Result<Target, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(format!("url `{url}`: expected http://host:port/path")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("url `{url}`: no host"));
    }
    Ok(Target {
        scheme,
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// POSTs `body` and returns the response status, or the host's error code.
fn post(target: &Target, body: &[u8]) -> Result<u16, ErrorCode> {
    let refused = |what: &str| ErrorCode::InternalError(Some(format!("{what} refused")));
    let headers = Fields::from_list(&[
        ("content-type".into(), b"application/json".to_vec()),
        ("content-length".into(), body.len().to_string().into_bytes()),
    ])
    .map_err(|e| ErrorCode::InternalError(Some(format!("headers: {e:?}"))))?;
    let request = OutgoingRequest::new(headers);
    request
        .set_method(&Method::Post)
        .map_err(|()| refused("method"))?;
    request
        .set_scheme(Some(&target.scheme))
        .map_err(|()| refused("scheme"))?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|()| refused("authority"))?;
    request
        .set_path_with_query(Some(&target.path))
        .map_err(|()| refused("path"))?;
    let outgoing = request.body().map_err(|()| refused("body"))?;

    // Hand the request over first, then write the body: the host reads it as it sends.
    let response = outgoing_handler::handle(request, None)?;
    let stream = outgoing.write().map_err(|()| refused("body stream"))?;
    let written = body
        .chunks(4096)
        .try_for_each(|c| stream.blocking_write_and_flush(c));
    drop(stream); // a child of `outgoing`: dropped before `finish`
    let sent = match written {
        Ok(()) => OutgoingBody::finish(outgoing, None),
        Err(_) => Err(refused("body write")),
    };

    // Wait for the response headers. A failed connection shows here with its own code
    // (`ConnectionRefused`, `HttpRequestDenied`, ...), more telling than the write's.
    response.subscribe().block();
    let response = match response.get() {
        Some(Ok(result)) => result?,
        _ => return Err(refused("response")),
    };
    sent?;
    let status = response.status();

    // Read the response body (up to 64 KiB) so the exchange completes, then drop it.
    if let Ok(body) = response.consume() {
        if let Ok(stream) = body.stream() {
            let mut read = 0;
            while read < 64 * 1024 {
                match stream.blocking_read(4096) {
                    Ok(chunk) if !chunk.is_empty() => read += chunk.len(),
                    _ => break,
                }
            }
        }
        drop(IncomingBody::finish(body));
    }
    Ok(status)
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        let cfg: Config =
            serde_json::from_str(&config).map_err(|e| format!("{name} config: {e}"))?;
        let target = parse_url(&cfg.url).map_err(|e| format!("{name} config: {e}"))?;
        TARGET.with(|t| *t.borrow_mut() = Some(target));
        Ok(())
    }

    fn on_batch(events: Vec<Event>) -> Vec<Verdict> {
        TARGET.with(|t| {
            let target = t.borrow();
            let Some(target) = target.as_ref() else {
                return;
            };
            let (mut posted, mut failed, mut first_error) = (0, 0, None);
            for ev in &events {
                match post(target, ev.payload.as_bytes()) {
                    Ok(status) if (200..300).contains(&status) => posted += 1,
                    Ok(status) => {
                        failed += 1;
                        first_error.get_or_insert(format!("HTTP status {status}"));
                    }
                    Err(code) => {
                        failed += 1;
                        first_error.get_or_insert(format!("{code:?}"));
                    }
                }
            }
            // Shows up as outrigger_plugin_counter_total{plugin="{name}", name="posted"}.
            if posted > 0 {
                host::counter_add("posted", posted);
            }
            if let Some(error) = first_error {
                host::counter_add("post_failed", failed);
                host::log(
                    Level::Warn,
                    &format!("failed={failed} error={error}: POST failed"),
                );
            }
        });
        events.iter().map(|_| Verdict::Keep).collect()
    }
}

export!(Plugin);
