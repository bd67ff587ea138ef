//! API keys on HTTP requests: the one check the control API and HTTP ingest share.
//!
//! In: a request's headers and the configured key. Out: whether the request carries
//! `Authorization: Bearer KEY`, compared in time that depends only on the lengths, so that a
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

/// True when the request carries `key` as its bearer token.
pub fn has_key(headers: &HeaderMap, key: &str) -> bool {
    constant_time_eq(bearer(headers).as_bytes(), key.as_bytes())
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
        assert!(!constant_time_eq(b"ab", b"ac"));
    }
}
