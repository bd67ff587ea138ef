"""The pytest plugin: tests/sample_project run under `outrigger exec -- python -m pytest --outrigger`
gives exactly the expected events in the file sink; without a daemon the run is unharmed."""

import subprocess
import sys
import time

from conftest import BIN, HERE, Daemon, clean_env

SAMPLE = HERE / "sample_project"
SESSION = "sess-1"

# (node, status) in the order the sample project runs.
EXPECTED = [
    ("test_passes", "passed"),
    ("test_fails", "failed"),
    ("test_errors_in_setup", "error"),
    ("test_errors_in_teardown", "error"),
    ("test_skipped", "skipped"),
    ("test_xfails", "skipped"),
    ("test_observes_into_its_run", "passed"),
    ("test_xpasses", "passed"),
    ("test_fails_with_a_huge_message", "failed"),
]


def pytest_cmd(*extra):
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *extra]


def test_a_test_run_under_outrigger_exec_gives_exactly_the_expected_events(short_tmp):
    d = Daemon(short_tmp / "exec", start=False)
    out = subprocess.run(
        [BIN, "exec", "-q", "-c", str(d.config), "--", *pytest_cmd("--outrigger")],
        cwd=SAMPLE,
        env=clean_env(OUTRIGGER_SESSION_ID=SESSION),
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = "stdout:\n%s\nstderr:\n%s" % (out.stdout, out.stderr)
    assert out.returncode == 1, report  # pytest's "some tests failed", passed through by exec
    assert "outrigger: session sess-1: 22 events accepted, 0 refused, 0 lost" in out.stdout, report
    events = d.events()

    want = [("test_session_start", SESSION, None)]
    for node, status in EXPECTED:
        run = "%s/test_sample.py::%s" % (SESSION, node)
        want.append(("test_start", run, None))
        if node == "test_observes_into_its_run":
            want += [("step", run, None), ("step", run, None)]
        want.append(("test_end", run, status))
    want.append(("test_session_end", SESSION, None))
    got = [(e["type"], e.get("run_id"), (e.get("data") or {}).get("status")) for e in events]
    assert got == want, report

    ends = {e["data"]["nodeid"].split("::")[1]: e["data"] for e in events if e["type"] == "test_end"}
    assert all(isinstance(v["duration_ms"], float) and v["duration_ms"] >= 0 for v in ends.values())
    assert "FAILURE-MARKER" in ends["test_fails"]["longrepr"]
    assert "SETUP-ERROR-MARKER" in ends["test_errors_in_setup"]["longrepr"]
    assert "TEARDOWN-ERROR-MARKER" in ends["test_errors_in_teardown"]["longrepr"]
    huge = ends["test_fails_with_a_huge_message"]
    assert "HUGE-MARKER" in huge["longrepr"] and huge["longrepr_truncated"] is True
    assert len(huge["longrepr"].encode()) == 64 * 1024
    assert "longrepr" not in ends["test_passes"] and "longrepr" not in ends["test_skipped"]
    assert ends["test_skipped"]["reason"] == "SKIP-MARKER"
    assert ends["test_xfails"]["xfail"] == {"outcome": "xfailed", "reason": "XFAIL-MARKER"}
    assert ends["test_xpasses"]["xfail"] == {"outcome": "xpassed", "reason": "XPASS-MARKER"}
    steps = [e["data"]["n"] for e in events if e["type"] == "step"]
    assert steps == [1, 2]

    start = events[0]["data"]
    assert start["session_id"] == SESSION and "--outrigger" in start["args"]
    end = events[-1]["data"]
    assert end["counts"] == {"passed": 3, "failed": 2, "skipped": 2, "error": 2}
    assert (end["tests"], end["xfailed"], end["xpassed"], end["collect_errors"]) == (9, 1, 1, 0)
    assert end["exitstatus"] == 1 and end["duration_ms"] > 0


def test_without_the_option_or_the_socket_the_plugin_stays_out(short_tmp):
    out = subprocess.run(pytest_cmd(), cwd=SAMPLE, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "outrigger:" not in out.stdout
    assert "3 passed" in out.stdout or "4 passed" in out.stdout  # pytest counts a teardown error's pass


def test_with_no_daemon_the_test_run_carries_on(short_tmp):
    t0 = time.monotonic()
    out = subprocess.run(
        pytest_cmd("--outrigger", "--outrigger-flush-timeout", "1"),
        cwd=SAMPLE,
        env=clean_env(OUTRIGGER_SOCKET=str(short_tmp / "nobody.sock"), OUTRIGGER_CONTROL_URL="http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert out.returncode == 1, out.stdout + out.stderr
    assert "0 events accepted, 0 refused, 22 lost (delivery not confirmed" in out.stdout, out.stdout
    assert "1 xfailed" in out.stdout and "1 xpassed" in out.stdout
    assert elapsed < 30, elapsed  # a generous bound: no per-test waiting on the daemon
