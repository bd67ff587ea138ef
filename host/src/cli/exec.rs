//! `outrigger exec -- CMD…`: the daemon wrapped around one command (a test run, a job).
//!
//! In: a config and a command line. The daemon is built first (socket, HTTP, control API bound,
//! plugins loaded), so that nothing the command sends is lost to a socket not yet listening;
//! then the command runs with `OUTRIGGER_SOCKET` and `OUTRIGGER_CONTROL_URL` in its environment,
//! its pid watched by the profiler. SIGINT and SIGTERM sent to `outrigger` are forwarded to the
//! command, once: the command runs in its own process group, which is made the terminal's
//! foreground group when there is a terminal (so a Ctrl-C reaches it directly, and it can read
//! the terminal). When the command exits, the daemon stops ingest, admits what the command left
//! in the socket, decides every open run and drains to the sinks (bounded by
//! `shutdown.grace`; a signal during the drain cuts it short). Out: the command's exit code, or
//! 128 + the signal that killed it; 127 when it cannot be started.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::app::{self, RunOptions, Stopped};
use crate::config::Config;

/// Runs `cmd` under a daemon built from `cfg`; see the module docs.
pub async fn exec(
    cfg: Config,
    config_path: Option<PathBuf>,
    cmd: &[String],
    opts: RunOptions,
) -> anyhow::Result<ExitCode> {
    let (program, args) = cmd
        .split_first()
        .context("exec needs a command after `--`")?;
    let daemon = app::build(cfg, config_path, opts)
        .await
        .context("the daemon did not start, so the command was not run")?;
    let addrs = daemon.addrs().clone();
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("OUTRIGGER_SOCKET", &addrs.socket)
        .process_group(0);
    match addrs.control {
        Some(a) => command.env("OUTRIGGER_CONTROL_URL", format!("http://{a}")),
        None => command.env_remove("OUTRIGGER_CONTROL_URL"),
    };
    let (stop, force) = (CancellationToken::new(), CancellationToken::new());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outrigger exec: cannot run {program}: {e}");
            stop.cancel();
            let _ = daemon.run(stop, force).await;
            return Ok(ExitCode::from(127));
        }
    };
    let pid = child.id().context("the command's pid")?;
    let terminal = Terminal::hand_to(pid);
    daemon.watch_pid(pid);
    tracing::info!(pid, command = %program, "command started");
    let running = tokio::spawn(daemon.run(stop.clone(), force.clone()));
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let status = loop {
        let sig = tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        };
        tracing::info!(pid, signal = sig, "forwarding the signal to the command");
        // SAFETY: kill(2) with a pid we started and have not reaped yet.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    };
    drop(terminal);
    let code = exit_code(status);
    tracing::info!(pid, code, "command exited: draining");
    stop.cancel();
    // A signal while draining stops waiting for the sinks (what they hold is counted).
    let forced = tokio::spawn({
        let force = force.clone();
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            force.cancel();
        }
    });
    let outcome = running.await.context("the daemon task")?;
    forced.abort();
    match outcome {
        Ok(Stopped::Drained) => {}
        Ok(Stopped::Forced) => eprintln!("outrigger exec: the drain was cut short"),
        Err(e) => eprintln!("outrigger exec: the daemon failed: {e:#}"),
    }
    Ok(ExitCode::from(code))
}

/// The shell's convention: the exit code, or 128 + the signal that ended the process.
pub fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => (c & 0xff) as u8,
        (None, Some(s)) => (128 + s).min(255) as u8,
        (None, None) => 1,
    }
}

/// The controlling terminal handed to the command's process group, and given back on drop.
struct Terminal {
    fd: i32,
}

impl Terminal {
    /// Makes `pgid` the foreground group of stdin's terminal, if stdin is one we own.
    fn hand_to(pgid: u32) -> Option<Terminal> {
        let fd = libc::STDIN_FILENO;
        // SAFETY: plain syscalls on stdin; SIGTTOU is ignored around tcsetpgrp so that a
        // background caller is not stopped by it.
        unsafe {
            if libc::isatty(fd) != 1 || libc::tcgetpgrp(fd) != libc::getpgrp() {
                return None;
            }
            let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            let ok = libc::tcsetpgrp(fd, pgid as i32) == 0;
            libc::signal(libc::SIGTTOU, old);
            // It may have tried the terminal before it was its own: let it go on.
            libc::kill(-(pgid as i32), libc::SIGCONT);
            ok.then_some(Terminal { fd })
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // SAFETY: as in `hand_to`; our own group takes the terminal back.
        unsafe {
            let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::tcsetpgrp(self.fd, libc::getpgrp());
            libc::signal(libc::SIGTTOU, old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let code = |s: &str| {
            let st = std::process::Command::new("sh")
                .args(["-c", s])
                .status()
                .unwrap();
            exit_code(st)
        };
        assert_eq!(code("exit 0"), 0);
        assert_eq!(code("exit 3"), 3);
        assert_eq!(code("kill -9 $$"), 137);
        assert_eq!(code("kill -15 $$"), 143);
    }
}
