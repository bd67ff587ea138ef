//! One blocking HTTP POST through `wasi:http/outgoing-handler` (WASI 0.2), for plugins.
//!
//! In: a [`Target`] parsed once from a URL, the request headers, the body and an optional
//! per-request timeout. Out: the response status, or a [`PostError`] saying why no response
//! came: an `ErrorCode` from the host (refused, unreachable, timed out, or denied because the
//! plugin's `http` grant does not list the authority), or a part of the request the host
//! refused. Nothing here traps on a network error.
//!
//! The order follows the WASI HTTP contract: the body resource is taken before `handle`, the
//! body is written and `finish`ed after it (writing first could fill the body pipe before
//! anyone reads it), the stream is dropped before `finish`, and the response body is read and
//! discarded (at most [`DRAIN_LIMIT`] bytes) so the exchange completes. Everything blocks on
//! the host's pollables; the host bounds the whole call with the plugin's timeout.
//!
//! Shared with `plugins/fixtures/http-poster`, which includes this file, so the fixture posts
//! exactly as the example does.

use std::fmt;

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, FutureIncomingResponse, HeaderError, IncomingBody, IncomingResponse, Method,
    OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::streams::StreamError;

/// How much of a response body is read before the rest is left unread.
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// The largest write `blocking-write-and-flush` accepts.
const WRITE_CHUNK: usize = 4096;

/// Where requests go: an `http` or `https` URL split as `wasi:http` wants it.
#[derive(Debug, PartialEq)]
pub struct Target {
    https: bool,
    /// `host[:port]` exactly as written in the URL; the host checks it against the grant.
    pub authority: String,
    /// The path and query, `/` when the URL has none; a `#fragment` is not sent.
    pub path_with_query: String,
}

impl Target {
    /// Parses `scheme://authority[/path][?query][#fragment]`; refuses other schemes, an empty
    /// authority and user info (`user@host`).
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("url `{url}`: expected http://host:port/path"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(format!("url `{url}`: scheme must be http or https")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.is_empty() {
            return Err(format!("url `{url}`: no host"));
        }
        if authority.contains('@') {
            return Err(format!(
                "url `{url}`: user info is not supported (send credentials in `headers`)"
            ));
        }
        let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
        let path_with_query = match tail.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{tail}"),
            Some(_) => tail.to_string(),
        };
        Ok(Target {
            https,
            authority: authority.to_string(),
            path_with_query,
        })
    }

    fn scheme(&self) -> Scheme {
        if self.https {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }
}

/// Why a POST got no response.
pub enum PostError {
    /// The host's error code: from `handle`, the response, or the body stream.
    Http(ErrorCode),
    /// The host refused a header (`Forbidden` for `host`, `connection` and the like).
    Header(HeaderError),
    /// The host refused this part of the request.
    Refused(&'static str),
    /// The body stream failed without an HTTP error code.
    Stream(String),
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The Debug text names the variant (`ErrorCode::ConnectionRefused`), which is
            // what an operator searches for.
            PostError::Http(code) => write!(f, "{code:?}"),
            PostError::Header(e) => write!(f, "header refused: {e:?}"),
            PostError::Refused(what) => write!(f, "the host refused the request's {what}"),
            PostError::Stream(text) => write!(f, "body stream: {text}"),
        }
    }
}

/// Checks that the host accepts these headers, without sending anything.
pub fn check_headers(headers: &[(String, Vec<u8>)]) -> Result<(), PostError> {
    wasi::http::types::Fields::from_list(headers)
        .map(drop)
        .map_err(PostError::Header)
}

/// POSTs `body` to `target` with `headers` (and a `content-length` this adds) and returns the
/// response status once the response headers arrived. `timeout`, in nanoseconds, bounds the
/// connect, the wait for the first response byte and each gap between bytes.
pub fn post(
    target: &Target,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
    timeout: Option<u64>,
) -> Result<u16, PostError> {
    let mut fields = headers.to_vec();
    fields.push(("content-length".into(), body.len().to_string().into_bytes()));
    let fields = wasi::http::types::Fields::from_list(&fields).map_err(PostError::Header)?;
    let request = OutgoingRequest::new(fields);
    request
        .set_method(&Method::Post)
        .map_err(|()| PostError::Refused("method"))?;
    request
        .set_scheme(Some(&target.scheme()))
        .map_err(|()| PostError::Refused("scheme"))?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|()| PostError::Refused("authority"))?;
    request
        .set_path_with_query(Some(&target.path_with_query))
        .map_err(|()| PostError::Refused("path"))?;
    let outgoing = request.body().map_err(|()| PostError::Refused("body"))?;
    let future =
        outgoing_handler::handle(request, timeout.map(options)).map_err(PostError::Http)?;

    if let Err(write_error) = send_body(outgoing, body) {
        // A body that could not be sent usually means the connection failed; the response
        // future then holds the error code that says why.
        return match wait(&future) {
            Err(PostError::Http(code)) => Err(PostError::Http(code)),
            _ => Err(write_error),
        };
    }
    let response = wait(&future)?;
    let status = response.status();
    drain(response);
    Ok(status)
}

fn options(timeout_ns: u64) -> RequestOptions {
    let options = RequestOptions::new();
    // A host that does not support a timeout refuses to set it; the call's own timeout
    // still bounds the request.
    let _ = options.set_connect_timeout(Some(timeout_ns));
    let _ = options.set_first_byte_timeout(Some(timeout_ns));
    let _ = options.set_between_bytes_timeout(Some(timeout_ns));
    options
}

/// Writes all of `body`, drops the stream (a child of the body) and finishes the body.
fn send_body(outgoing: OutgoingBody, body: &[u8]) -> Result<(), PostError> {
    let stream = outgoing
        .write()
        .map_err(|()| PostError::Refused("body stream"))?;
    for chunk in body.chunks(WRITE_CHUNK) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(stream_error)?;
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).map_err(PostError::Http)
}

/// Blocks until the response headers arrived or the request failed.
fn wait(future: &FutureIncomingResponse) -> Result<IncomingResponse, PostError> {
    let ready = future.subscribe();
    ready.block();
    drop(ready);
    match future.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(code))) => Err(PostError::Http(code)),
        Some(Err(())) => Err(PostError::Refused("response (taken twice)")),
        None => Err(PostError::Refused(
            "response (not ready after its pollable)",
        )),
    }
}

/// Reads and discards up to [`DRAIN_LIMIT`] bytes of the response body, then finishes it.
/// A failure here does not change the outcome: the status already arrived.
fn drain(response: IncomingResponse) {
    let Ok(body) = response.consume() else {
        return;
    };
    if let Ok(stream) = body.stream() {
        let mut read = 0;
        while read < DRAIN_LIMIT {
            match stream.blocking_read(WRITE_CHUNK as u64) {
                Ok(chunk) if !chunk.is_empty() => read += chunk.len(),
                _ => break,
            }
        }
        drop(stream);
    }
    drop(IncomingBody::finish(body));
    drop(response);
}

fn stream_error(e: StreamError) -> PostError {
    match e {
        StreamError::Closed => PostError::Stream("closed".into()),
        StreamError::LastOperationFailed(err) => match wasi::http::types::http_error_code(&err) {
            Some(code) => PostError::Http(code),
            None => PostError::Stream(err.to_debug_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    fn parts(url: &str) -> (bool, String, String) {
        let t = Target::parse(url).unwrap();
        (t.https, t.authority, t.path_with_query)
    }

    #[test]
    fn splits_urls_as_wasi_http_wants_them() {
        let p = |https, a: &str, p: &str| (https, a.to_string(), p.to_string());
        assert_eq!(
            parts("http://127.0.0.1:9000/alert"),
            p(false, "127.0.0.1:9000", "/alert")
        );
        assert_eq!(parts("HTTPS://example.com"), p(true, "example.com", "/"));
        assert_eq!(parts("http://h:1?x=1"), p(false, "h:1", "/?x=1"));
        assert_eq!(
            parts("http://h:1/a/b?x=1#frag"),
            p(false, "h:1", "/a/b?x=1")
        );
        assert_eq!(parts("http://[::1]:8080/x"), p(false, "[::1]:8080", "/x"));
    }

    #[test]
    fn refuses_what_it_cannot_send() {
        for url in [
            "127.0.0.1:9000/alert",
            "ftp://h/x",
            "http:///x",
            "http://u:p@h/x",
        ] {
            assert!(Target::parse(url).is_err(), "{url}");
        }
    }
}
