//! `outrigger send`: writes events to a running daemon's socket and reports every answer.
//!
//! In: one event built from flags (`--type`, `--data`, `--run-id`) or NDJSON lines from stdin
//! (`-`). Out: the lines written to the socket, the daemon's answers read back (every refused
//! line printed with its reason on stderr), and a one-line summary. Exit 1 when any line was
//! refused or the daemon closed the connection before answering every line.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// What to send: the flags of `outrigger send`.
pub struct SendArgs {
    pub kind: Option<String>,
    pub data: Option<String>,
    pub run_id: Option<String>,
    /// `-` reads NDJSON lines from stdin.
    pub input: Option<String>,
}

/// The lines `args` describe.
fn lines(args: SendArgs) -> anyhow::Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    match (args.input.as_deref(), args.kind) {
        (Some("-"), _) => {
            for l in std::io::stdin().lock().lines() {
                let l = l.context("reading stdin")?;
                if !l.trim().is_empty() {
                    lines.push(l);
                }
            }
        }
        (Some(other), _) => {
            anyhow::bail!("unexpected argument `{other}`: use `-` to read NDJSON from stdin")
        }
        (None, Some(kind)) => {
            let data: serde_json::Value = match args.data {
                Some(d) => serde_json::from_str(&d).context("--data is not valid JSON")?,
                None => serde_json::Value::Null,
            };
            let mut ev = serde_json::json!({"type": kind, "data": data});
            if let Some(r) = args.run_id {
                ev["run_id"] = r.into();
            }
            lines.push(ev.to_string());
        }
        (None, None) => {
            anyhow::bail!("nothing to send: give --type T (and --data JSON), or `-` for stdin")
        }
    }
    Ok(lines)
}

/// Sends events and reports every refusal; exit 1 if any line was refused.
pub async fn send(socket: &Path, args: SendArgs) -> anyhow::Result<ExitCode> {
    let lines = lines(args)?;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "cannot connect to {} (is the daemon running?)",
                socket.display()
            )
        })?;
    let (rd, mut wr) = stream.into_split();
    let expected = lines.len();
    let reader = tokio::spawn(async move {
        let mut rd = tokio::io::BufReader::new(rd).lines();
        let (mut ok, mut failed) = (0usize, 0usize);
        while ok + failed < expected {
            match rd.next_line().await {
                Ok(Some(answer)) => {
                    if answer.contains("\"success\":true") {
                        ok += 1;
                    } else {
                        failed += 1;
                        eprintln!("refused (line {}): {answer}", ok + failed);
                    }
                }
                _ => break,
            }
        }
        (ok, failed)
    });
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in &lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    wr.write_all(&buf).await.context("writing to the socket")?;
    let (ok, failed) = reader.await?;
    let _ = wr.shutdown().await;
    let mut err = std::io::stderr();
    let _ = writeln!(err, "sent {expected}: {ok} accepted, {failed} refused");
    Ok(if failed == 0 && ok == expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
