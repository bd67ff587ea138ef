//! The plugin's config: `webhook-alert.yml` beside the `.wasm`, or `plugins.chain[].config`,
//! handed to `init` as JSON. Unknown keys are refused, so a misspelt one is not ignored.

use std::collections::BTreeMap;

use crate::http::Target;

/// What `init` receives, as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// Where alerts are POSTed, `http://host:port/path`.
    url: Option<String>,
    /// Extra request headers (e.g. `authorization`); `content-type` defaults to
    /// `application/json`, `content-length` is always set by the plugin.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The payload field whose value `"failed"` raises an alert; `status` by default.
    #[serde(default)]
    status_field: Option<String>,
    /// Bound on connecting, on the first response byte and on each gap between bytes.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// The config, checked and ready for every batch.
pub struct Config {
    pub url: String,
    pub target: Target,
    /// Lower-case names, in a stable order, with `content-type`.
    pub headers: Vec<(String, Vec<u8>)>,
    pub status_field: String,
    pub timeout_ns: Option<u64>,
}

impl Config {
    /// Parses and checks `text`; the error names the key at fault.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: Raw = match text.trim() {
            "" | "null" => return Err("`url` is required".into()),
            text => serde_json::from_str(text).map_err(|e| e.to_string())?,
        };
        let url = raw.url.ok_or("`url` is required")?;
        let target = Target::parse(&url)?;
        let mut headers: Vec<(String, Vec<u8>)> = Vec::with_capacity(raw.headers.len() + 1);
        for (name, value) in raw.headers {
            let name = name.to_ascii_lowercase();
            if name == "content-length" {
                return Err("headers: `content-length` is set by the plugin".into());
            }
            if headers.iter().any(|(n, _)| *n == name) {
                return Err(format!("headers: `{name}` is given twice"));
            }
            headers.push((name, value.into_bytes()));
        }
        if !headers.iter().any(|(n, _)| n == "content-type") {
            headers.push(("content-type".into(), b"application/json".to_vec()));
        }
        let status_field = match raw.status_field {
            Some(f) if f.is_empty() => return Err("status_field: empty".into()),
            Some(f) => f,
            None => "status".into(),
        };
        let timeout_ns = match raw.timeout_ms {
            Some(0) => return Err("timeout_ms: must be above 0".into()),
            ms => ms.map(|ms| ms.saturating_mul(1_000_000)),
        };
        Ok(Config {
            url,
            target,
            headers,
            status_field,
            timeout_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn defaults_and_headers() {
        let c = Config::parse(r#"{"url": "http://127.0.0.1:9000/alert"}"#).unwrap();
        assert_eq!(c.target.authority, "127.0.0.1:9000");
        assert_eq!(c.status_field, "status");
        assert_eq!(c.timeout_ns, None);
        assert_eq!(
            c.headers,
            [("content-type".into(), b"application/json".to_vec())]
        );

        let c = Config::parse(
            r#"{"url": "http://h:1/", "headers": {"Authorization": "Bearer x", "Content-Type": "text/plain"},
                "status_field": "state", "timeout_ms": 250}"#,
        )
        .unwrap();
        let names: Vec<_> = c.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["authorization", "content-type"]);
        assert_eq!(c.status_field, "state");
        assert_eq!(c.timeout_ns, Some(250_000_000));
    }

    #[test]
    fn refuses_bad_configs_naming_the_key() {
        for (text, expect) in [
            ("{}", "url"),
            ("", "url"),
            (r#"{"url": "h:1"}"#, "url"),
            (r#"{"url": "http://h:1", "urll": 1}"#, "urll"),
            (
                r#"{"url": "http://h:1", "headers": {"Content-Length": "1"}}"#,
                "content-length",
            ),
            (
                r#"{"url": "http://h:1", "headers": {"A": "1", "a": "2"}}"#,
                "twice",
            ),
            (r#"{"url": "http://h:1", "timeout_ms": 0}"#, "timeout_ms"),
        ] {
            let err = Config::parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"));
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
