"""The test harness: real ``outrigger`` daemons on temporary sockets and free ports.

In: ``$OUTRIGGER_BIN``, the daemon binary (the suite refuses to run without it, rather than
skipping). ``Daemon(tmp_path, extra)`` writes a config like tests/e2e/harness.rs's base config
(socket, control API, a file sink, 50 ms batches, profiling budgets off) with ``extra`` merged
in, starts ``outrigger run -c`` on it and waits for ``/readyz``. Out: its socket, control URL,
the events in its file sink, and its log for failure messages. Stop: ``stop()`` (SIGTERM and
wait) or ``kill()`` (SIGKILL); the ``daemon`` fixture stops what it started.

The suite tests the installed package (``pip install ./clients/python``): it fails at once when
the installed copy differs from the source, so a stale install is never what passes.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

collect_ignore = ["sample_project"]

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "src" / "outrigger_client"


def pytest_configure(config):
    binary = os.environ.get("OUTRIGGER_BIN")
    if not binary or not os.access(binary, os.X_OK):
        raise pytest.UsageError(
            "OUTRIGGER_BIN must name the outrigger daemon binary (got %r); these tests run a real "
            "daemon, e.g. OUTRIGGER_BIN=target/debug/outrigger .venv/bin/python -m pytest "
            "clients/python/tests" % binary
        )
    import outrigger_client

    installed = Path(outrigger_client.__file__).resolve().parent
    if installed != SOURCE:
        stale = [
            p.name
            for p in sorted(SOURCE.glob("*.py"))
            if not (installed / p.name).exists() or (installed / p.name).read_bytes() != p.read_bytes()
        ]
        if stale:
            raise pytest.UsageError(
                "the installed outrigger_client (%s) differs from the source in %s: run "
                "`pip install ./clients/python` again" % (installed, ", ".join(stale))
            )


BIN = os.environ.get("OUTRIGGER_BIN", "outrigger")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra):
    """The environment without any OUTRIGGER_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTRIGGER_")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _yaml(value):
    """YAML flow style (JSON is YAML) for the config."""
    return json.dumps(value)


def eventually(fn, timeout=10.0, interval=0.02):
    """Polls ``fn`` until it returns something true; returns that, or the last value."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > end:
            return v
        time.sleep(interval)


class Daemon:
    def __init__(self, dir, extra=None, start=True):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "plugins").mkdir(exist_ok=True)
        # A short path: unix socket paths are limited to about 100 bytes.
        self.socket = str(self.dir / "o.sock")
        self.control_port = free_port()
        self.control_url = "http://127.0.0.1:%d" % self.control_port
        self.out = self.dir / "out" / "events.ndjson"
        self.log = self.dir / "daemon.log"
        cfg = {
            "ingest": {"socket": self.socket, "http": None},
            "batch": {"max_events": 500, "interval": "50ms"},
            "plugins": {"dir": str(self.dir / "plugins"), "cache_dir": str(self.dir / "cache")},
            "sinks": [{"type": "file", "path": str(self.out)}],
            "delivery": {"retry": {"initial": "20ms", "max": "200ms"}},
            "control": {"listen": "127.0.0.1:%d" % self.control_port},
            "profiling": {"budgets": {"cpu_percent": 0, "memory_mb": 0}},
            "log": {"level": "info"},
        }
        _merge(cfg, extra or {})
        self.config = self.dir / "outrigger.yml"
        self.config.write_text("\n".join("%s: %s" % (k, _yaml(v)) for k, v in cfg.items()) + "\n")
        self.proc = None
        if start:
            self.start()

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [BIN, "run", "-c", str(self.config)],
                cwd=self.dir,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout=60.0):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("the daemon exited with %s:\n%s" % (self.proc.returncode, self.log_text()))
            try:
                with urllib.request.urlopen(self.control_url + "/readyz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        assert eventually(ready, timeout), "the daemon never became ready:\n" + self.log_text()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc is not None else None

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def events(self):
        """Every event in the file sink, parsed (a line that does not parse fails the test)."""
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait_events(self, n, timeout=10.0):
        """The sink's events once there are at least ``n``."""
        eventually(lambda: len(self.events()) >= n, timeout)
        return self.events()

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")[-20000:]
        except OSError:
            return ""


def _merge(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v


@pytest.fixture
def short_tmp():
    """A temp dir with a short path (unix socket paths are limited), removed afterwards."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="orpy-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon_factory(short_tmp):
    started = []

    def make(extra=None, name="d", start=True):
        d = Daemon(short_tmp / name, extra, start=start)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()
