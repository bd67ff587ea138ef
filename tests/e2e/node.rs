//! The Node package `clients/node` (`@outrigger/client`): its own `node --test` suite, run by
//! `npm test` against this build's binary (`OUTRIGGER_BIN`). It covers the fail-open client
//! (sink contents, absent, stopped and killed daemons) and the supervisor (ready, kill -9 and
//! restart, gave-up, stop). `.ci/run` installs the package first (`npm ci`, which compiles it);
//! without `node_modules` this test installs it the same way.

use std::path::Path;
use std::process::{Command, Output};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/node");

fn npm(args: &[&str]) -> Output {
    Command::new("npm")
        .args(args)
        .current_dir(DIR)
        .env("OUTRIGGER_BIN", env!("CARGO_BIN_EXE_outrigger"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run npm {}: {e} (is Node.js 18+ installed?)",
                args.join(" ")
            )
        })
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn node_client_and_supervisor_pass_their_tests() {
    if !Path::new(DIR).join("node_modules/.bin/tsc").exists() {
        assert_ok("npm ci", &npm(&["ci", "--no-audit", "--no-fund"]));
    }
    let out = npm(&["test"]);
    assert_ok("npm test (clients/node)", &out);
    // node --test ends with its counts ("# pass N" from the TAP reporter, "ℹ pass N" from the
    // spec one); a run that executed nothing is a failure here.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let passed = stdout
        .lines()
        .filter_map(|l| {
            l.trim_start_matches(|c: char| c == '#' || c == 'ℹ' || c.is_whitespace())
                .strip_prefix("pass ")
        })
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    assert!(passed > 0, "npm test ran no test:\n{stdout}");
}
