//! The web console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, spoken to as plain HTTP) against a running daemon. The overview loads with
//! the key, a kept run shows in the runs page and its timeline shows its events, the live tail
//! shows events as they arrive, and a `pause` breakpoint set from the page holds an opted-in
//! client's answer until the page's Continue button is pressed. The test takes the screenshot
//! of the console (`docs/console.png` when `OUTRIGGER_UPDATE_SCREENSHOT=1`).
//!
//! Without `chromium` and `chromedriver` (`.ci/run` installs both) the test says so and
//! passes, except under CI (`CI` set), where it fails.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::harness::{Daemon, eventually, free_port};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver and one browser session; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort: ending the session ends Chromium; killing chromedriver ends the rest.
        let _ = delete_session(&self.base);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE` without an async runtime (from `Drop`).
fn delete_session(url: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` when they are not here.
    async fn start() -> Option<Browser> {
        let have = |bin: &str| {
            Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !have("chromedriver") || !have("chromium") {
            assert!(
                std::env::var_os("CI").is_none(),
                "chromium and chromedriver are needed (bash .ci/run installs them)"
            );
            eprintln!("skipped: chromium and chromedriver are not installed");
            return None;
        }
        let port = free_port().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let up = eventually(Duration::from_secs(20), async || {
            matches!(http.get(format!("{root}/status")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(up, "chromedriver did not start");
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let v: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"));
        Some(Browser {
            driver,
            base: format!("{root}/session/{id}"),
            http,
            _profile: profile,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("JSON");
        if v["value"]["error"].is_string() {
            panic!("webdriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body, `return …`) in the page.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Waits until `script` returns something truthy; its value.
    async fn wait(&self, what: &str, script: &str) -> Value {
        let mut got = Value::Null;
        let ok = eventually(Duration::from_secs(30), async || {
            got = self.js(script, json!([])).await;
            !(got.is_null() || got == false || got == "" || got == 0)
        })
        .await;
        let body = self.js("return document.body.innerText", json!([])).await;
        assert!(ok, "{what}: never; the page says:\n{body}");
        got
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        match v[ELEMENT].as_str() {
            Some(e) => e.to_string(),
            None => panic!("no element {css}: {v}"),
        }
    }

    /// A real click (WebDriver's, not a script's).
    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("PNG")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser() {
    let d = Daemon::start(
        r#"
control: {api_key: c0nsole}
sampling: {tail: {enabled: true, idle: 60s, keep: [{name: failed, when: 'has(data.status) && data.status == "failed"'}]}}
"#,
    )
    .await;
    // The page itself needs the key.
    let r = reqwest::get(format!("http://{}/", d.control))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let Some(b) = Browser::start().await else {
        return;
    };
    let home = format!("http://{}/?api_key=c0nsole", d.control);

    // Overview: health of each stage, with the key.
    b.goto(&home).await;
    b.wait(
        "the overview shows every stage",
        "return document.querySelectorAll('#components tbody tr').length >= 5 && document.getElementById('status').textContent",
    )
    .await;
    let status = b
        .js(
            "return document.getElementById('status').textContent",
            json!([]),
        )
        .await;
    assert!(status == "healthy" || status == "degraded", "{status}");
    b.wait(
        "events per second",
        "return document.getElementById('rate-in').textContent !== '–'",
    )
    .await;

    // Runs: a failed run is kept, listed, and its timeline shows its events.
    d.send(&[
        r#"{"type":"run_start","run_id":"order-1"}"#,
        r#"{"type":"step","run_id":"order-1","data":{"n":1}}"#,
        r#"{"type":"step","run_id":"order-1","data":{"n":2}}"#,
        r#"{"type":"charge","run_id":"order-1","data":{"amount":12.5}}"#,
        r#"{"type":"run_end","run_id":"order-1","data":{"status":"failed"}}"#,
    ])
    .await;
    b.click("#nav-runs").await;
    b.wait(
        "the kept run in the runs page",
        "const r = document.querySelector('#runs tr[data-run=\"order-1\"]'); return r && r.textContent.includes('kept') && r.textContent.includes('failed')",
    )
    .await;
    b.click("#runs tr[data-run=\"order-1\"]").await;
    b.wait(
        "its timeline",
        "return document.querySelectorAll('#timeline li').length === 5",
    )
    .await;
    b.click("#timeline li:nth-child(4)").await;
    let shown = b.wait("the event's JSON on click", "const t = document.getElementById('run-event').textContent; return t.includes('amount') && t").await;
    assert!(shown.as_str().unwrap().contains("12.5"), "{shown}");
    assert!(
        shown.as_str().unwrap().contains("\"id\": \""),
        "the event's id: {shown}"
    );

    // Live tail: events show as they arrive.
    b.click("#nav-tail").await;
    b.type_into("#tail-type", "tick").await;
    b.click("#tail-start").await;
    b.wait(
        "the tail follows",
        "return document.getElementById('tail-info').textContent.startsWith('Following')",
    )
    .await;
    d.send(&[
        r#"{"type":"noise"}"#,
        r#"{"type":"tick","data":{"i":1}}"#,
        r#"{"type":"tick","data":{"i":2}}"#,
    ])
    .await;
    b.wait(
        "the tail shows the ticks",
        "const rows = [...document.querySelectorAll('#tail tbody tr')]; return rows.length === 2 && rows.every(r => r.textContent.includes('tick') && r.cells[1].title.length === 32)",
    )
    .await;

    // Breakpoints: set a pause from the page; an opted-in client waits until Continue.
    b.click("#nav-debug").await;
    b.type_into("#bp-when", "type == \"checkout\" && data.total > 100")
        .await;
    b.click("#bp-add").await;
    b.wait(
        "the breakpoint is listed",
        "return document.querySelectorAll('#breakpoints tbody tr[data-id]').length === 1",
    )
    .await;
    let mut c = d.connect().await;
    c.wr.write_all(b"{\"hello\":{\"ack\":true,\"debug\":true}}\n")
        .await
        .unwrap();
    assert_eq!(
        c.send(r#"{"type":"cart","run_id":"order-2","data":{"items":3}}"#)
            .await,
        r#"{"success":true}"#
    );
    c.wr.write_all(b"{\"type\":\"checkout\",\"run_id\":\"order-2\",\"data\":{\"total\":250,\"user\":\"ann\"}}\n")
        .await
        .unwrap();
    b.wait(
        "the paused session",
        "return [...document.querySelectorAll('#sessions tbody tr')].some(r => r.textContent.includes('paused'))",
    )
    .await;
    b.click("#sessions tbody tr[data-session]").await;
    b.wait(
        "Continue is enabled",
        "const x = document.getElementById('btn-continue'); return x && !x.disabled",
    )
    .await;
    b.type_into("#eval-expr", "data.total * 2").await;
    b.click("#btn-eval").await;
    b.wait(
        "evaluate",
        "return document.getElementById('eval-out').textContent.trim() === '500'",
    )
    .await;
    let mut line = String::new();
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::io::AsyncBufReadExt::read_line(&mut c.rd, &mut line),
    )
    .await;
    assert!(early.is_err(), "answered while paused: {line}");

    // The screenshot: the debugger holding a client, its event and its run.
    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dest = if std::env::var_os("OUTRIGGER_UPDATE_SCREENSHOT").is_some() {
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/console.png"))
    } else {
        d.path("console.png")
    };
    std::fs::write(&dest, &png).expect("write the screenshot");
    println!("console screenshot: {}", dest.display());

    b.click("#btn-continue").await;
    assert_eq!(
        c.answer().await,
        r#"{"success":true}"#,
        "Continue released the client"
    );
    b.wait(
        "the session shows released",
        "return [...document.querySelectorAll('#sessions tbody tr')].some(r => r.textContent.includes('released continue'))",
    )
    .await;
}
