//! The example clients in `examples/clients/` against a real daemon, and without one.

use std::process::Command;

use serde_json::Value;

use crate::harness::Daemon;

fn python_client(socket: &std::path::Path, n: usize) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/clients/python/outrigger_client.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(socket)
        .env("N", n.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_delivers_and_flushes() {
    let mut d = Daemon::start("").await;
    let report = python_client(&d.socket, 1000);
    assert_eq!(report["flushed"], true, "{report}");
    assert_eq!(report["lost"], 0);
    // flush answered: all 1000 are already in the file.
    assert_eq!(d.events().len(), 1000);
    assert!(d.stop().success());
}

#[test]
fn python_client_carries_on_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let report = python_client(&dir.path().join("nobody.sock"), 50);
    assert_eq!(report["flushed"], false);
    assert_eq!(report["lost"], 50);
}
