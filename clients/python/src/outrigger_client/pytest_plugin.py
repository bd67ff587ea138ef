"""The ``outrigger`` pytest plugin: a test session observed as runs, one per test.

Active with ``--outrigger``, or when ``OUTRIGGER_SOCKET`` is set (as ``outrigger exec -- pytest``
sets it), unless ``--no-outrigger``; inactive it registers nothing but the option and a fixture
that observes nothing. In: pytest's hooks. Out, through an :class:`~outrigger_client.Outrigger`
client (so every fail-open promise holds: a missing daemon costs the run nothing):

- ``test_session_start`` and, at the end, ``test_session_end`` with run id = the session id
  (``$OUTRIGGER_SESSION_ID``, else a random one); the end carries ``counts`` per status,
  ``tests``, ``xfailed``, ``xpassed``, ``collect_errors``, ``exitstatus`` and ``duration_ms``.
- per test, with run id = session id + ``/`` + node id: ``test_start`` (``nodeid``, ``location``)
  and ``test_end`` (``nodeid``, ``status``, ``duration_ms``, and ``longrepr`` cut at 64 KiB
  for ``failed`` and ``error``, ``reason`` for ``skipped``).
- ``test_collect_error`` (``nodeid``, ``longrepr``) in the session's run for a file that could
  not be collected.

Status of a test: ``error`` when its setup failed, ``skipped`` when setup or the test skipped,
``failed`` when the test body failed, else ``passed``; a failing teardown makes a passed or
skipped test ``error`` (a failed one stays ``failed``, the teardown's report appended to its
``longrepr``). xfail: an expected failure is ``skipped`` with ``xfail: {"outcome": "xfailed",
"reason"}``; an unexpected pass is ``passed`` with ``xfail: {"outcome": "xpassed", …}``
(``failed`` under ``strict``, as pytest reports it).

The fixture ``outrigger_run`` gives a :class:`~outrigger_client.Run` into the current test's
run. Stop: the session end is flushed (``--outrigger-flush-timeout``, default 5 s) and the
client closed at unconfigure. Under pytest-xdist only the controller reports.
"""

import os
import sys
import time
import uuid

import pytest

from .client import Outrigger, Run

LONGREPR_MAX_BYTES = 64 * 1024
STATUSES = ("passed", "failed", "skipped", "error")
PLUGIN_NAME = "outrigger-session"


def pytest_addoption(parser):
    group = parser.getgroup("outrigger", "Outrigger: observe the test run")
    group.addoption(
        "--outrigger",
        action="store_true",
        default=False,
        help="send each test as a run to the Outrigger daemon ($OUTRIGGER_SOCKET, else "
        "/tmp/outrigger.sock); on by itself when OUTRIGGER_SOCKET is set",
    )
    group.addoption(
        "--no-outrigger",
        action="store_true",
        default=False,
        help="do not report to Outrigger even when OUTRIGGER_SOCKET is set",
    )
    group.addoption(
        "--outrigger-flush-timeout",
        type=float,
        default=5.0,
        help="seconds to wait at the end for the daemon to confirm delivery (default 5)",
    )


def _active(config):
    if config.getoption("no_outrigger"):
        return False
    if hasattr(config, "workerinput"):  # an xdist worker: its controller reports
        return False
    return bool(config.getoption("outrigger") or os.environ.get("OUTRIGGER_SOCKET"))


def pytest_configure(config):
    if _active(config):
        config.pluginmanager.register(OutriggerSession(config), PLUGIN_NAME)


def _cut(text):
    raw = text.encode("utf-8", "replace")
    if len(raw) <= LONGREPR_MAX_BYTES:
        return text, False
    return raw[:LONGREPR_MAX_BYTES].decode("utf-8", "ignore"), True


class _Test:
    __slots__ = ("status", "longrepr", "reason", "duration", "xfail")

    def __init__(self):
        self.status = None
        self.longrepr = []
        self.reason = None
        self.duration = 0.0
        self.xfail = None


class _NullRun:
    """The fixture's value when the plugin is inactive: observes nothing."""

    run_id = None

    def observe(self, type, data=None, attributes=None, ts=None):
        return False


class OutriggerSession:
    """The plugin while active: one client, one session run, one run per test."""

    def __init__(self, config):
        self.config = config
        self.session_id = os.environ.get("OUTRIGGER_SESSION_ID") or uuid.uuid4().hex[:16]
        self.client = Outrigger()
        self.tests = {}
        self.counts = dict.fromkeys(STATUSES, 0)
        self.xfailed = 0
        self.xpassed = 0
        self.collect_errors = 0
        self.started = time.monotonic()
        self.flushed = None

    def run_id(self, nodeid):
        return "%s/%s" % (self.session_id, nodeid)

    # -- session ---------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session):
        self.started = time.monotonic()
        self.client.observe(
            "test_session_start",
            {
                "session_id": self.session_id,
                "args": [str(a) for a in self.config.invocation_params.args],
                "rootdir": str(self.config.rootpath),
                "pytest": pytest.__version__,
                "python": sys.version.split()[0],
            },
            run_id=self.session_id,
        )

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors += 1
            text, cut = _cut(report.longreprtext)
            data = {"nodeid": report.nodeid, "longrepr": text}
            if cut:
                data["longrepr_truncated"] = True
            self.client.observe("test_collect_error", data, run_id=self.session_id)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        self.client.observe(
            "test_session_end",
            {
                "session_id": self.session_id,
                "counts": dict(self.counts),
                "tests": sum(self.counts.values()),
                "xfailed": self.xfailed,
                "xpassed": self.xpassed,
                "collect_errors": self.collect_errors,
                "exitstatus": int(exitstatus),
                "duration_ms": round((time.monotonic() - self.started) * 1000.0, 3),
            },
            run_id=self.session_id,
        )
        self.flushed = self.client.flush(self.config.getoption("outrigger_flush_timeout"))

    def pytest_terminal_summary(self, terminalreporter):
        s = self.client.stats
        terminalreporter.write_line(
            "outrigger: session %s: %d events accepted, %d refused, %d lost%s"
            % (
                self.session_id,
                s["accepted"],
                s["errors"],
                s["lost"] + s["dropped"],
                "" if self.flushed else " (delivery not confirmed: %s)" % (s["last_error"] or "no answer"),
            )
        )

    def pytest_unconfigure(self, config):
        self.client.close(timeout=1.0)

    # -- tests -----------------------------------------------------------------------------

    def pytest_runtest_logstart(self, nodeid, location):
        self.tests[nodeid] = _Test()
        fspath, line, domain = location
        self.client.observe(
            "test_start",
            {"nodeid": nodeid, "location": {"file": fspath, "line": line, "name": domain}},
            run_id=self.run_id(nodeid),
        )

    def pytest_runtest_logreport(self, report):
        t = self.tests.get(report.nodeid)
        if t is None:
            t = self.tests[report.nodeid] = _Test()
        t.duration += report.duration or 0.0
        wasxfail = getattr(report, "wasxfail", None)
        if report.when == "setup":
            if report.failed:
                t.status = "error"
                t.longrepr.append(report.longreprtext)
            elif report.skipped:
                t.status = "skipped"
                t.reason = _skip_reason(report)
                if wasxfail is not None:
                    t.xfail = {"outcome": "xfailed", "reason": wasxfail}
        elif report.when == "call":
            if report.failed:
                t.status = "failed"
                t.longrepr.append(report.longreprtext)
            elif report.skipped:
                t.status = "skipped"
                if wasxfail is not None:
                    t.xfail = {"outcome": "xfailed", "reason": wasxfail}
                    t.reason = wasxfail or "xfail"
                else:
                    t.reason = _skip_reason(report)
            else:
                t.status = "passed"
                if wasxfail is not None:
                    t.xfail = {"outcome": "xpassed", "reason": wasxfail}
        elif report.when == "teardown" and report.failed:
            if t.status != "failed":
                t.status = "error"
            t.longrepr.append(report.longreprtext)

    def pytest_runtest_logfinish(self, nodeid, location):
        t = self.tests.pop(nodeid, None) or _Test()
        status = t.status or "passed"
        self.counts[status] += 1
        if t.xfail is not None:
            if t.xfail["outcome"] == "xfailed":
                self.xfailed += 1
            else:
                self.xpassed += 1
        data = {"nodeid": nodeid, "status": status, "duration_ms": round(t.duration * 1000.0, 3)}
        if status in ("failed", "error") and t.longrepr:
            text, cut = _cut("\n\n".join(t.longrepr))
            data["longrepr"] = text
            if cut:
                data["longrepr_truncated"] = True
        if status == "skipped" and t.reason is not None:
            data["reason"] = t.reason
        if t.xfail is not None:
            data["xfail"] = t.xfail
        self.client.observe("test_end", data, run_id=self.run_id(nodeid))


def _skip_reason(report):
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        reason = str(lr[2])
        return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
    return report.longreprtext or None


@pytest.fixture
def outrigger_run(request):
    """A :class:`~outrigger_client.Run` into the current test's run (``run.observe(type,
    data)``); observes nothing when the plugin is inactive."""
    plugin = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    if plugin is None:
        return _NullRun()
    return Run(plugin.client, plugin.run_id(request.node.nodeid), frame=False)
