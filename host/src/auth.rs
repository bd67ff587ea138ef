//! API keys on HTTP requests: the one check the control API and HTTP ingest share.
//!
//! In: a request's headers (and, for browser routes, its query) and the configured key. Out:
//! whether the request carries it as `Authorization: Bearer KEY` or `X-API-Key: KEY` (or
//! `?api_key=KEY` where allowed), compared in time that depends only on the lengths, so that a
//! client cannot find the key a byte at a time. Pure functions.

use axum::http::{HeaderMap, header};

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key given as `Authorization: Bearer KEY`, or `""` when there is none.
pub fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// The key given as `X-API-Key: KEY`, if any.
pub fn x_api_key(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// True when the request carries `key` as its bearer token or as `X-API-Key`. Both are
/// compared, whatever the first gives; a header that is absent matches nothing.
pub fn has_key(headers: &HeaderMap, key: &str) -> bool {
    let k = key.as_bytes();
    let x = x_api_key(headers).is_some_and(|x| constant_time_eq(x.as_bytes(), k));
    constant_time_eq(bearer(headers).as_bytes(), k) | x
}

/// [`has_key`], or `key` as the query parameter `api_key` (the WebSocket tail and the console:
/// a browser cannot set headers there).
pub fn has_key_or_query(headers: &HeaderMap, uri: &axum::http::Uri, key: &str) -> bool {
    let from_query = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .ok()
        .and_then(|q| q.0.into_iter().find(|(k, _)| k == "api_key"))
        .is_some_and(|(_, v)| constant_time_eq(v.as_bytes(), key.as_bytes()));
    has_key(headers, key) | from_query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_keys() {
        let mut h = HeaderMap::new();
        assert!(!has_key(&h, "k"));
        h.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        assert!(has_key(&h, "k"));
        assert!(!has_key(&h, "kk"));
        assert!(!has_key(&h, ""));
        h.insert(header::AUTHORIZATION, "Basic k".parse().unwrap());
        assert!(!has_key(&h, "k"));
        assert!(constant_time_eq(b"", b""));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k".parse().unwrap());
        assert!(has_key(&h, "k"));
        assert!(!has_key(&h, "j"));
        let uri: axum::http::Uri = "/v1/ws/tail?type=a&api_key=k%2B1".parse().unwrap();
        assert!(has_key_or_query(&HeaderMap::new(), &uri, "k+1"));
        assert!(!has_key_or_query(&HeaderMap::new(), &uri, "k"));
        assert!(!constant_time_eq(b"ab", b"ac"));
    }
}
