//! The daemon's own clients: `outrigger status`, `outrigger runs` and `outrigger tail` read a
//! running daemon's control API; [`send`] writes events to its socket; [`exec`] runs a command
//! under a daemon of its own.
//!
//! In: the control address (`--addr`, else the config's `control.listen`) and the API key
//! (`--api-key`, else `$OUTRIGGER_API_KEY`). `status` reads `/v1/health` (whose report comes
//! with 503 when the daemon is unhealthy) and `/v1/stats` and prints them for people (or as one JSON object with `--json`); it exits 1 when the daemon is
//! unhealthy or unreachable. `tail` follows `/v1/tail` (Server-Sent Events) and prints one line
//! per event (the native JSON line with `--json`) until the daemon closes the stream, the
//! output is closed, or the user interrupts it. [`debug`] sets a breakpoint and serves its
//! sessions from the terminal.

pub mod debug;
pub mod exec;
pub mod send;

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

/// Where the control API is (`status`, `tail` flags).
#[derive(clap::Args)]
pub struct ControlArgs {
    /// `host:port` or URL of the control API (default: the config's control.listen).
    #[arg(long)]
    pub addr: Option<String>,
    /// The API key (default: $OUTRIGGER_API_KEY, else the config's control.api_key).
    #[arg(long, env = "OUTRIGGER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The daemon's config, for the defaults of --addr and --api-key.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

impl ControlArgs {
    /// A client for the address and key given, or else those of the config (`-c`,
    /// `$OUTRIGGER_CONFIG`, `./outrigger.yml`, built-in defaults).
    pub fn client(self) -> anyhow::Result<ControlClient> {
        let (addr, key) = match self.addr {
            Some(a) => (a, self.api_key),
            None => {
                let path = crate::config::locate(self.config.as_deref());
                let cfg =
                    crate::config::load(path.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
                let addr = cfg.control.listen.ok_or_else(|| {
                    anyhow::anyhow!("control.listen is off in the config: give --addr")
                })?;
                (addr.to_string(), self.api_key.or(cfg.control.api_key))
            }
        };
        ControlClient::new(&addr, key)
    }
}

/// Where the control API is and how to authenticate.
pub struct ControlClient {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl ControlClient {
    /// `addr` is `host:port` or a URL (`http://host:port`).
    pub fn new(addr: &str, api_key: Option<String>) -> anyhow::Result<ControlClient> {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(ControlClient {
            base,
            api_key: api_key.filter(|k| !k.is_empty()),
            http,
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.get(format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends the request; a non-success answer becomes an error carrying the API's message.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        self.send_accepting(req, what, None).await
    }

    /// Like `send`, but `also` (a status with a meaningful body) is an answer, not an error.
    async fn send_accepting(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        also: Option<reqwest::StatusCode>,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the control API at {} (is the daemon running? see --addr)",
                self.base
            )
        })?;
        let status = resp.status();
        if status.is_success() || Some(status) == also {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (pass --api-key or set OUTRIGGER_API_KEY)"
        } else {
            ""
        };
        anyhow::bail!("{what}: {status}: {message}{hint}")
    }

    /// POSTs with an empty body and returns the JSON answer.
    pub async fn post_json(&self, path: &str, what: &str) -> anyhow::Result<Value> {
        let r = self.http.post(format!("{}{path}", self.base));
        let r = match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        };
        let resp = self.send(r, what).await?;
        resp.json()
            .await
            .with_context(|| format!("{what}: the answer is not JSON"))
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.get(path), &format!("GET {path}"))
            .await?
            .json()
            .await
            .with_context(|| format!("GET {path}: the answer is not JSON"))
    }

    /// `GET /v1/health`: the report, also when it comes with 503 (the daemon is unhealthy).
    async fn health(&self) -> anyhow::Result<Value> {
        let path = "/v1/health";
        let unavailable = reqwest::StatusCode::SERVICE_UNAVAILABLE;
        let resp = self
            .send_accepting(self.get(path), &format!("GET {path}"), Some(unavailable))
            .await?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<Value>(&body) {
            Ok(v) if v["status"].is_string() => Ok(v),
            _ if status == unavailable => anyhow::bail!("GET {path}: {status}: {body}"),
            _ => anyhow::bail!("GET {path}: the answer is not a health report: {body}"),
        }
    }
}

/// `outrigger status`: health and stats. Exit 1 when unhealthy.
pub async fn status(client: &ControlClient, window: &str, json: bool) -> anyhow::Result<ExitCode> {
    let health = client.health().await?;
    let stats = client
        .get_json(&format!("/v1/stats?window={window}"))
        .await?;
    let unhealthy = health["status"] == "unhealthy";
    let text = if json {
        serde_json::to_string_pretty(&serde_json::json!({"health": health, "stats": stats}))?
    } else {
        render_status(&client.base, &health, &stats)
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    Ok(if unhealthy {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / (1024.0 * 1024.0))
}

fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `k=v` pairs of an object, in key order.
fn pairs(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_u64().map_or(v.to_string(), |n| n.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => "none".into(),
    }
}

/// The readable form of `status`.
pub fn render_status(addr: &str, health: &Value, stats: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "outrigger at {addr}: {} (up {})",
        health["status"].as_str().unwrap_or("unknown"),
        duration(num(&stats["uptime_seconds"]))
    );
    if let Some(components) = health["components"].as_object() {
        for (name, c) in components {
            let numbers: Vec<String> = c
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "status" && *k != "reason")
                .map(|(k, v)| match v.as_f64() {
                    Some(f) if f.fract() != 0.0 => format!("{k}={f:.3}"),
                    _ => format!("{k}={v}"),
                })
                .collect();
            let _ = writeln!(
                o,
                "  {name:<9} {:<9} {}{}",
                c["status"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or(""),
                if numbers.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", numbers.join(" "))
                }
            );
        }
    }
    let ev = &stats["events"];
    let _ = writeln!(
        o,
        "events:   received {}, delivered {}, dropped {}",
        ev["received"],
        pairs(&ev["delivered"]),
        match ev["dropped"].as_object() {
            Some(m) => {
                let nonzero: serde_json::Map<String, Value> = m
                    .iter()
                    .filter(|(_, v)| v.as_u64() != Some(0))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                pairs(&Value::Object(nonzero))
            }
            None => "none".into(),
        }
    );
    let q = &stats["queue"];
    let _ = writeln!(o, "queue:    {} / {}", q["depth"], q["capacity"]);
    let s = &stats["sampling"];
    let boosts = s["boosts"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        o,
        "sampling: default {} {}{}",
        s["default_rate"],
        match s["rates"].as_object() {
            Some(m) if !m.is_empty() => format!("rates {}", pairs(&s["rates"])),
            _ => String::new(),
        },
        if boosts > 0 {
            format!(", {boosts} boost(s) active")
        } else {
            String::new()
        }
    );
    let p = &stats["profile"];
    if p["enabled"] == true {
        let me = &p["self"];
        let _ = writeln!(
            o,
            "profile:  last {}: CPU avg {:.1}% max {:.1}%, memory {} (growth {}), threads {}",
            duration(num(&p["window_seconds"])),
            num(&me["cpu_percent"]["avg"]),
            num(&me["cpu_percent"]["max"]),
            mb(num(&me["memory_bytes"]["last"])),
            mb(num(&me["memory_bytes"]["growth"])),
            me["threads"]
        );
        if let Some(w) = p["watched"].as_object() {
            for (pid, s) in w {
                let _ = writeln!(
                    o,
                    "  pid {pid}: {} CPU avg {:.1}% max {:.1}%, memory {} (growth {})",
                    if s["alive"] == true {
                        "alive,"
                    } else {
                        "gone, "
                    },
                    num(&s["cpu_percent"]["avg"]),
                    num(&s["cpu_percent"]["max"]),
                    mb(num(&s["memory_bytes"]["last"])),
                    mb(num(&s["memory_bytes"]["growth"])),
                );
            }
        }
        let b = &p["budget"];
        let _ = writeln!(
            o,
            "budget:   CPU {}%, memory {} MB: {}",
            b["cpu_percent"],
            b["memory_mb"],
            match b["over"].as_str() {
                Some(r) => format!("OVER ({r}); sampling x{:.2}", num(&b["degrade_factor"])),
                None => "within".to_string(),
            }
        );
    } else {
        let _ = writeln!(o, "profile:  disabled");
    }
    let r = &stats["runs"];
    let _ = writeln!(
        o,
        "runs:     {}",
        if r["enabled"] == true {
            format!(
                "tail sampling on: {} open ({} held, {} spilled); {} remembered ({})",
                r["open_runs"],
                mb(num(&r["buffered_bytes"])),
                mb(num(&r["spilled_bytes"])),
                r["remembered_runs"],
                mb(num(&r["remembered_bytes"]))
            )
        } else {
            format!(
                "tail sampling off; {} remembered ({})",
                r["remembered_runs"],
                mb(num(&r["remembered_bytes"]))
            )
        }
    );
    let _ = write!(
        o,
        "tail:     {} subscriber(s)",
        stats["tail"]["subscribers"]
    );
    o
}

/// `outrigger plugin promote NAME`: the shadow of NAME becomes the live version
/// (`POST /v1/plugins/{name}/promote`).
pub async fn promote(client: &ControlClient, name: &str) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/plugins/{}/promote", urlencoding_path(name));
    let v = client.post_json(&path, "promote").await?;
    println!(
        "{name}: its shadow is live now (the previous version is kept as {}); {}",
        v["previous"].as_str().unwrap_or("?"),
        v["summary"].as_str().unwrap_or("reloaded")
    );
    Ok(ExitCode::SUCCESS)
}

/// A plugin name as one path segment (names are file stems: escape what a URL cannot hold).
fn urlencoding_path(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `outrigger runs`: the daemon's runs, most recent first (`GET /v1/runs`).
pub async fn runs(
    client: &ControlClient,
    state: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/runs?limit={limit}");
    if let Some(s) = state {
        path.push_str("&state=");
        path.push_str(s);
    }
    let v = client.get_json(&path).await?;
    let text = if json {
        serde_json::to_string_pretty(&v["runs"])?
    } else {
        render_runs(&v)
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    Ok(ExitCode::SUCCESS)
}

/// The readable form of `runs`: one row per run, the widest run id shown whole up to 48
/// characters (longer ones keep their end, where a test's name is).
pub fn render_runs(v: &Value) -> String {
    let empty = Vec::new();
    let runs = v["runs"].as_array().unwrap_or(&empty);
    if runs.is_empty() {
        return "no runs".into();
    }
    let id = |r: &Value| {
        let s = r["run_id"].as_str().unwrap_or("");
        let n = s.chars().count();
        if n > 48 {
            format!("…{}", s.chars().skip(n - 47).collect::<String>())
        } else {
            s.to_string()
        }
    };
    let width = runs
        .iter()
        .map(|r| id(r).chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<width$}  {:<7}  {:<16}  {:>7}  {:>9}  {:>8}  TYPES",
        "RUN", "STATE", "KEPT BY", "EVENTS", "BYTES", "SPAN"
    );
    for r in runs {
        let span_s = (num(&r["last_ts_ns"]) - num(&r["first_ts_ns"])).max(0.0) / 1e9;
        let span = if span_s < 10.0 {
            format!("{span_s:.2}s")
        } else {
            duration(span_s)
        };
        let mut types: Vec<(String, u64)> = r["types"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect();
        types.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let shown: Vec<String> = types
            .iter()
            .take(4)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let more = if types.len() > 4 { " …" } else { "" };
        let _ = writeln!(
            o,
            "{:<width$}  {:<7}  {:<16}  {:>7}  {:>9}  {:>8}  {}{more}",
            id(r),
            r["state"].as_str().unwrap_or("?"),
            r["kept_by"].as_str().unwrap_or("-"),
            r["events"],
            bytes(num(&r["bytes"])),
            span,
            shown.join(" "),
        );
    }
    let _ = write!(o, "{} run(s)", runs.len());
    o
}

fn bytes(n: f64) -> String {
    match n {
        n if n < 1024.0 => format!("{n} B"),
        n if n < 1024.0 * 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{:.1} MiB", n / (1024.0 * 1024.0)),
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq)]
pub struct SseMessage {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a Server-Sent Events byte stream into messages; feed it chunks as they arrive.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    current: SseMessage,
    has_data: bool,
}

impl SseParser {
    /// Adds a chunk and returns the messages it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.current));
                }
                self.current = SseMessage::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment (keep-alive)
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                "event" => self.current.event = Some(value.to_string()),
                _ => {}
            }
        }
        out
    }
}

/// `HH:MM:SS.mmm` (UTC) of a unix time in nanoseconds.
pub fn clock(ts_ns: u64) -> String {
    let ms = ts_ns / 1_000_000;
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        (day_ms / 60_000) % 60,
        (day_ms / 1000) % 60,
        day_ms % 1000
    )
}

/// The readable line for one tailed event.
pub fn render_event_line(ev: &Value) -> String {
    let mut line = format!(
        "{}Z {}",
        clock(ev["ts_ns"].as_u64().unwrap_or(0)),
        ev["type"].as_str().unwrap_or("?")
    );
    if let Some(r) = ev["run_id"].as_str() {
        let _ = write!(line, " run={r}");
    }
    if let Some(a) = ev["attributes"].as_object() {
        for (k, v) in a {
            let _ = write!(line, " {k}={}", v.as_str().unwrap_or(""));
        }
    }
    if !ev["data"].is_null() {
        let _ = write!(line, " {}", ev["data"]);
    }
    line
}

/// The filters of `outrigger tail` (those of `GET /v1/tail`).
#[derive(Default)]
pub struct TailArgs {
    pub types: Vec<String>,
    pub run_ids: Vec<String>,
    pub when: Option<String>,
}

/// `outrigger tail`: prints events until the stream ends or stdout is closed.
pub async fn tail(
    client: &ControlClient,
    filter: &TailArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut query: Vec<(&str, &str)> = filter.types.iter().map(|t| ("type", t.as_str())).collect();
    query.extend(filter.run_ids.iter().map(|r| ("run_id", r.as_str())));
    if let Some(w) = &filter.when {
        query.push(("when", w.as_str()));
    }
    let mut resp = client
        .send(client.get("/v1/tail").query(&query), "GET /v1/tail")
        .await?;
    let mut parser = SseParser::default();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = resp.chunk().await.context("reading the event stream")? {
        for m in parser.push(&chunk) {
            let line = match m.event.as_deref() {
                None | Some("message") => {
                    if json {
                        m.data
                    } else {
                        match serde_json::from_str::<Value>(&m.data) {
                            Ok(v) => render_event_line(&v),
                            Err(_) => m.data,
                        }
                    }
                }
                Some("lagged") => {
                    eprintln!("outrigger tail: too slow, missed some events: {}", m.data);
                    continue;
                }
                Some(_) => continue,
            };
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                // stdout closed (`| head`): a normal way to stop.
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    eprintln!("outrigger tail: the daemon closed the stream");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_comments_and_events() {
        let mut p = SseParser::default();
        assert!(p.push(b": outrigger tail\n\nda").is_empty());
        let got =
            p.push(b"ta: {\"type\":\"a\"}\n\nevent: lagged\r\ndata: {\"missed_batches\":3}\n\n");
        assert_eq!(
            got,
            vec![
                SseMessage {
                    event: None,
                    data: r#"{"type":"a"}"#.into()
                },
                SseMessage {
                    event: Some("lagged".into()),
                    data: r#"{"missed_batches":3}"#.into()
                },
            ]
        );
    }

    #[test]
    fn readable_event_line() {
        let v = serde_json::json!({"type": "test_end", "ts_ns": 1_732_290_000_123_000_000u64,
            "run_id": "r1", "attributes": {"k": "v"}, "data": {"ok": true}});
        assert_eq!(
            render_event_line(&v),
            r#"15:40:00.123Z test_end run=r1 k=v {"ok":true}"#
        );
    }

    #[test]
    fn readable_status_mentions_every_component_and_budget() {
        let health = serde_json::json!({"status": "degraded", "components": {
            "profiler": {"status": "degraded", "reason": "memory 20.0 MB over the budget of 1 MB", "degrade_factor": 0.1},
            "queue": {"status": "healthy", "reason": "flowing", "depth": 0, "capacity": 10}}});
        let stats = serde_json::json!({"uptime_seconds": 65.0,
            "events": {"received": 5, "delivered": {"file": 4}, "dropped": {"sampled_out": 1, "sink": 0}},
            "queue": {"depth": 0, "capacity": 10},
            "sampling": {"default_rate": 1.0, "rates": {}, "boosts": []},
            "profile": {"enabled": true, "window_seconds": 60.0, "self": {"cpu_percent": {"avg": 1.0, "max": 2.0},
                "memory_bytes": {"last": 20971520, "growth": 0}, "threads": 9},
                "watched": {"42": {"alive": true, "cpu_percent": {"avg": 99.0, "max": 100.0}, "memory_bytes": {"last": 1048576, "growth": 0}}},
                "budget": {"cpu_percent": 5.0, "memory_mb": 1.0, "over": "memory 20.0 MB over the budget of 1 MB", "degrade_factor": 0.1}},
            "tail": {"subscribers": 0}, "runs": {"enabled": true, "open_runs": 3, "buffered_bytes": 1048576,
                "spilled_bytes": 0, "remembered_runs": 7, "remembered_bytes": 2048}});
        let text = render_status("http://127.0.0.1:9464", &health, &stats);
        assert!(
            text.starts_with("outrigger at http://127.0.0.1:9464: degraded (up 1m05s)"),
            "{text}"
        );
        assert!(
            text.contains("profiler  degraded  memory 20.0 MB over"),
            "{text}"
        );
        assert!(
            text.contains("delivered file=4, dropped sampled_out=1"),
            "{text}"
        );
        assert!(text.contains("pid 42: alive, CPU avg 99.0%"), "{text}");
        assert!(text.contains("OVER (memory"), "{text}");
        assert!(
            text.contains("tail sampling on: 3 open (1.0 MB held, 0.0 MB spilled); 7 remembered"),
            "{text}"
        );
    }

    #[test]
    fn readable_runs_table() {
        let long = format!("session/{}::test_it", "x".repeat(60));
        let v = serde_json::json!({"runs": [
            {"run_id": "r1", "state": "kept", "kept_by": "failed", "events": 3, "bytes": 2048,
             "first_ts_ns": 1_000_000_000u64, "last_ts_ns": 1_500_000_000u64,
             "types": {"test_start": 1, "log": 1, "test_end": 1}},
            {"run_id": long, "state": "open", "kept_by": null, "events": 1, "bytes": 100,
             "first_ts_ns": 5, "last_ts_ns": 5, "types": {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}}
        ], "count": 2});
        let text = render_runs(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("RUN"), "{text}");
        assert!(lines[1].starts_with("r1 "), "{text}");
        assert!(lines[1].contains("kept     failed"), "{text}");
        assert!(lines[1].contains("2.0 KiB"), "{text}");
        assert!(lines[1].contains("0.50s"), "{text}");
        assert!(lines[1].contains("log=1 test_end=1 test_start=1"), "{text}");
        assert!(
            lines[2].starts_with('…') && lines[2].contains("::test_it"),
            "{text}"
        );
        assert!(lines[2].contains("open     -"), "{text}");
        assert!(lines[2].ends_with(" …"), "{text}");
        assert_eq!(lines[3], "2 run(s)");
        assert_eq!(render_runs(&serde_json::json!({"runs": []})), "no runs");
    }
}
