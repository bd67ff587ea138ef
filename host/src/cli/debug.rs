//! `outrigger debug`: a breakpoint from the terminal.
//!
//! In: a running daemon's control API and the breakpoint to set (`--when`, `--run-id`,
//! `--action`, `--hits`); then commands on stdin while a session is paused: `c` (continue),
//! `s` (step: release, and pause at that connection's next line), `e EXPR` (evaluate a CEL
//! expression over the held event), `q` (quit). Out: for every hit, the session, its event
//! (pretty JSON) and its run's recent events, one line each. Polls `GET /v1/debug` for new
//! sessions of its breakpoint. Stops on `q`, at the end of stdin, on Ctrl-C, or once the
//! breakpoint's hit count is spent and nothing is paused; on the way out the breakpoint is
//! deleted, which releases whatever it still holds.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::ControlClient;

/// How often new sessions are looked for.
const POLL: Duration = Duration::from_millis(200);

/// What to set.
pub struct DebugArgs {
    pub when: Option<String>,
    pub run_id: Option<String>,
    pub action: String,
    pub hits: Option<u64>,
    /// Leave the breakpoint set on exit.
    pub keep: bool,
}

impl ControlClient {
    /// Any method, a JSON body or none; the JSON answer, or the API's error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(k) = &self.api_key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = self.send(r, &format!("{method} {path}")).await?;
        resp.json()
            .await
            .with_context(|| format!("{method} {path}: the answer is not JSON"))
    }
}

/// `outrigger debug`.
pub async fn debug(client: &ControlClient, args: DebugArgs) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({
        "when": args.when,
        "run_id": args.run_id,
        "action": args.action,
        "hits": args.hits,
    });
    let bp = client
        .call(reqwest::Method::POST, "/v1/breakpoints", Some(body))
        .await?;
    let id = bp["id"].as_str().unwrap_or_default().to_string();
    println!(
        "breakpoint {id} set ({}{}{}): waiting for a hit; Ctrl-C stops",
        bp["action"].as_str().unwrap_or("?"),
        bp["when"]
            .as_str()
            .map(|w| format!(", when {w}"))
            .unwrap_or_default(),
        bp["run_id"]
            .as_str()
            .map(|r| format!(", run {r}"))
            .unwrap_or_default(),
    );
    let result = tokio::select! {
        r = follow(client, &id) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    if !args.keep {
        let _ = client
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/breakpoints/{id}"),
                None,
            )
            .await;
        println!("breakpoint {id} deleted");
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// Prints every new session of `bp` and serves the paused ones from stdin.
async fn follow(client: &ControlClient, bp: &str) -> anyhow::Result<()> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut seen: u64 = 0;
    loop {
        let list = client
            .call(
                reqwest::Method::GET,
                &format!("/v1/debug?breakpoint={bp}&limit=1000"),
                None,
            )
            .await?;
        let mut fresh: Vec<&Value> = list["sessions"]
            .as_array()
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        fresh.retain(|s| session_num(s) > seen);
        fresh.reverse(); // oldest first
        for s in fresh {
            seen = seen.max(session_num(s));
            let sid = s["id"].as_str().unwrap_or_default().to_string();
            let detail = client
                .call(reqwest::Method::GET, &format!("/v1/debug/{sid}"), None)
                .await?;
            print_session(&detail);
            if detail["state"] == "paused" && !serve(client, &sid, &mut stdin).await? {
                return Ok(());
            }
        }
        let bps = client
            .call(reqwest::Method::GET, "/v1/breakpoints", None)
            .await?;
        let active = bps["breakpoints"]
            .as_array()
            .and_then(|v| v.iter().find(|b| b["id"] == bp))
            .is_some_and(|b| b["active"] == true);
        if !active
            && list["sessions"]
                .as_array()
                .is_none_or(|v| v.iter().all(|s| s["state"] != "paused"))
        {
            println!("breakpoint {bp} is spent (its hit count is reached)");
            return Ok(());
        }
        // Nothing is paused: `q` (or the end of input) still quits.
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            line = stdin.next_line() => match line? {
                None => return Ok(()),
                Some(l) if matches!(l.trim(), "q" | "quit") => return Ok(()),
                Some(l) if l.trim().is_empty() => {}
                Some(_) => println!("nothing is paused: waiting for a hit (q quits)"),
            },
        }
    }
}

fn session_num(s: &Value) -> u64 {
    s["id"].as_str().and_then(|i| i.parse().ok()).unwrap_or(0)
}

fn print_session(s: &Value) {
    let mut out = std::io::stdout().lock();
    let conn = &s["connection"];
    let held = if conn["held"] == true {
        format!(
            " holding connection {} (pid {}) for at most {} ms",
            conn["id"], conn["pid"], conn["max_pause_ms"]
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "\n== session {} ({}{}): {}{}",
        s["id"].as_str().unwrap_or("?"),
        s["action"].as_str().unwrap_or("?"),
        if s["step"] == true { ", step" } else { "" },
        s["state"].as_str().unwrap_or("?"),
        held,
    );
    if let Some(note) = s["note"].as_str() {
        let _ = writeln!(out, "   {note}");
    }
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&s["event"]).unwrap_or_default()
    );
    if let Some(events) = s["run"]["events"].as_array() {
        let _ = writeln!(
            out,
            "-- run {} ({} events, most recent last):",
            s["run_id"].as_str().unwrap_or("?"),
            events.len()
        );
        for e in events {
            let _ = writeln!(out, "   {}", super::render_event_line(e));
        }
    }
    let _ = out.flush();
}

/// Reads commands for a paused session until it is released. False on `q` or end of input.
async fn serve(
    client: &ControlClient,
    sid: &str,
    stdin: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
) -> anyhow::Result<bool> {
    loop {
        print!("[c]ontinue, [s]tep, e EXPR, [q]uit> ");
        let _ = std::io::stdout().flush();
        let Some(line) = stdin.next_line().await? else {
            let _ = release(client, sid, "continue").await;
            return Ok(false);
        };
        let line = line.trim();
        match line {
            "c" | "continue" => {
                release(client, sid, "continue").await?;
                return Ok(true);
            }
            "s" | "step" => {
                release(client, sid, "step").await?;
                return Ok(true);
            }
            "q" | "quit" => return Ok(false),
            "" => {}
            _ => {
                let Some(expr) = line
                    .strip_prefix("e ")
                    .or_else(|| line.strip_prefix("evaluate "))
                else {
                    println!("unknown command `{line}`");
                    continue;
                };
                let body = serde_json::json!({"expr": expr});
                match client
                    .call(
                        reqwest::Method::POST,
                        &format!("/v1/debug/{sid}/evaluate"),
                        Some(body),
                    )
                    .await
                {
                    Ok(v) => println!("= {}", v["value"]),
                    Err(e) => println!("{e:#}"),
                }
            }
        }
    }
}

async fn release(client: &ControlClient, sid: &str, how: &str) -> anyhow::Result<()> {
    match client
        .call(
            reqwest::Method::POST,
            &format!("/v1/debug/{sid}/{how}"),
            None,
        )
        .await
    {
        Ok(v) => {
            println!("released ({})", v["released"].as_str().unwrap_or(how));
            Ok(())
        }
        // Released meanwhile (max_pause, the client went away): say so and go on.
        Err(e) => {
            println!("{e:#}");
            Ok(())
        }
    }
}
