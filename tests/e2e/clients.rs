//! The client packages' own suites, run against this build's daemon, and the example client
//! in `examples/clients/` against a real daemon and without one.
//!
//! `clients/python`: `<repo>/.venv/bin/python -m pytest clients/python/tests` with
//! `OUTRIGGER_BIN` set to the binary under test. `.ci/run` creates `.venv` and installs pytest
//! and the package into it; without it this test fails and says how to make it.

use std::path::Path;
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

#[test]
fn python_package_suite_passes() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash .ci/run`, or `python3 -m venv .venv && .venv/bin/pip install pytest ./clients/python` at the repository's root",
        python.display()
    );
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pytest",
        "clients/python/tests",
        "-q",
        "-p",
        "no:cacheprovider",
    ])
    .current_dir(root);
    // The suite sets what its daemons and clients need; nothing from the caller's shell.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OUTRIGGER_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("OUTRIGGER_BIN", env!("CARGO_BIN_EXE_outrigger"));
    let out = cmd.output().expect("the venv's python runs");
    assert!(
        out.status.success(),
        "the Python client suite failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
