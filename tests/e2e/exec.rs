//! `outrigger exec -- CMD`: the command's environment, its exit code as the daemon's, signals
//! forwarded to it, and every event it sent in the sink once it has exited (also lines it
//! wrote and never read the answers of).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Daemon};

fn exec(d: &Daemon, script: &str) -> Output {
    Command::new(BIN)
        .args(["exec", "-q", "-c"])
        .arg(&d.config)
        .args(["--", "sh", "-c", script])
        .current_dir(d.dir.path())
        .env_remove("OUTRIGGER_SOCKET")
        .env_remove("OUTRIGGER_CONTROL_URL")
        .env("OUTRIGGER_BIN", BIN)
        .stdin(Stdio::null())
        .output()
        .expect("outrigger exec runs")
}

#[test]
fn the_commands_exit_code_is_outriggers() {
    let d = Daemon::prepare("");
    for (script, code) in [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137)] {
        let out = exec(&d, script);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(BIN)
        .args(["exec", "-q", "-c"])
        .arg(&d.config)
        .args(["--", "/nonexistent/command"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot run /nonexistent/command"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A config the daemon cannot start with: the command is not run, and the reason is given.
    let bad = Daemon::prepare("sampling: {default_rate: 7}");
    let out = exec(&bad, "touch ran");
    assert_eq!(out.status.code(), Some(1));
    assert!(!bad.path("ran").exists());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sampling.default_rate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_event_the_command_sent_is_in_the_sink_after_it_exits() {
    // A queue that holds every line: the client sends faster than a busy machine's worker may
    // take them, and a full queue drops (counted `queue_full`) by design.
    let d = Daemon::prepare("queue: {capacity: 100000}");
    // One event with `outrigger send`, then 50 000 lines written in ack mode by a client that
    // exits without reading a single answer; and the control URL it was given answers. (The
    // daemon keeps reading while the answers wait: before, 20 000 lines hung at times, the
    // client blocked in its send and the daemon in writing answers nobody read.)
    let script = r#"
set -e
"$OUTRIGGER_BIN" send --socket "$OUTRIGGER_SOCKET" --type first --data '{"n": 0}' >/dev/null
python3 - <<'PY'
import os, socket, urllib.request
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["OUTRIGGER_SOCKET"])
s.sendall(b"".join(b'{"type": "bulk", "data": {"n": %d}}\n' % i for i in range(50000)))
s.close()
with urllib.request.urlopen(os.environ["OUTRIGGER_CONTROL_URL"] + "/readyz") as r:
    open("control-status", "w").write(str(r.status))
PY
"#;
    let out = exec(&d, script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = d.events();
    assert_eq!(events[0]["type"], "first");
    let bulk = events.iter().filter(|e| e["type"] == "bulk").count();
    assert_eq!(bulk, 50_000, "{} events in the sink", events.len());
    assert_eq!(
        std::fs::read_to_string(d.path("control-status")).unwrap(),
        "200"
    );
}

#[test]
fn sigterm_reaches_the_command_and_its_code_comes_back() {
    let d = Daemon::prepare("");
    let mut child = Command::new(BIN)
        .args(["exec", "-q", "-c"])
        .arg(&d.config)
        .args([
            "--",
            "sh",
            "-c",
            "trap 'echo term > got; exit 5' TERM; touch started; while :; do sleep 0.05; done",
        ])
        .current_dir(d.dir.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while !d.path("started").exists() {
        assert!(Instant::now() < end, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: the pid of a child we have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("outrigger exec did not exit after its command did");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(5));
    assert_eq!(
        std::fs::read_to_string(d.path("got")).unwrap().trim(),
        "term"
    );
}
