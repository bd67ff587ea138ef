"""Sidecar: starts an ``outrigger run`` daemon and keeps it running (SPEC's OutriggerSidecar).

In: a config file (optional), the binary, and limits. ``start()`` spawns ``outrigger run [-c
config]`` and waits for ``GET /readyz`` to answer 200 within ``ready_timeout`` (raising
:class:`SidecarError` when it does not). A supervisor thread then checks every
``check_interval``: the process has exited; ``GET /healthz`` failed ``failure_threshold`` times
in a row (checked every ``health_interval``); its RSS (``VmRSS`` in ``/proc/PID/status``) is over
``max_memory_mb``. Any of them ends the process (SIGKILL) and restarts it after an exponential
back-off, ``restart_delay`` doubling up to 30 s, at most ``max_restarts`` times in a row (the
count starts again once a daemon has been ready for ``stable_after`` seconds); past that it
gives up.

Out: callbacks registered with ``on(event, fn)``, each called with one dict from the
supervisor thread: ``ready`` (pid, restarts), ``exit`` (pid, code, signal, reason: exited,
unhealthy or memory), ``restart`` (pid, attempt, delay, reason), ``gave-up`` (restarts,
reason). ``is_healthy()`` answers from a cache of 5 s. ``client()`` gives an :class:`Outrigger`
for this daemon's socket and control API.

Stop: ``stop()`` (or leaving ``with Sidecar(...)``, or interpreter exit) ends supervision, sends
SIGTERM (the daemon drains its queue and flushes its sinks), and SIGKILL after
``stop_timeout``. The daemon runs in its own session, so a Ctrl-C meant for the application
does not also stop it mid-drain; if the application itself is killed with SIGKILL, the daemon
is left running.
"""

import logging
import os
import re
import signal
import subprocess
import threading
import time
import weakref

from ._control import DEFAULT_CONTROL_URL, Control
from . import client as _client
from .client import DEFAULT_SOCKET, Outrigger

__all__ = ["Sidecar", "SidecarError", "read_config_value"]

log = logging.getLogger("outrigger_client")

EVENTS = ("ready", "exit", "restart", "gave-up")
MAX_RESTART_DELAY = 30.0
HEALTH_CACHE_SECONDS = 5.0


class SidecarError(Exception):
    """The daemon could not be started or did not become ready in time."""


class Sidecar:
    """Starts and supervises one Outrigger daemon; see the module doc."""

    def __init__(
        self,
        config=None,
        binary="outrigger",
        *,
        control_url=None,
        socket=None,
        api_key=None,
        ready_timeout=30.0,
        restart_delay=1.0,
        max_restarts=5,
        failure_threshold=3,
        max_memory_mb=None,
        stop_timeout=10.0,
        check_interval=0.5,
        health_interval=5.0,
        health_timeout=2.0,
        stable_after=30.0,
        env=None,
        cwd=None,
        log_file=None,
    ):
        self.config = os.fspath(config) if config is not None else None
        self.binary = binary
        self.ready_timeout = ready_timeout
        self.restart_delay = restart_delay
        self.max_restarts = max_restarts
        self.failure_threshold = failure_threshold
        self.max_memory_mb = max_memory_mb
        self.stop_timeout = stop_timeout
        self.check_interval = check_interval
        self.health_interval = health_interval
        self.stable_after = stable_after
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.log_file = log_file
        text = None
        if self.config is not None:
            try:
                with open(self.config, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise SidecarError("cannot read the config %s: %s" % (self.config, e)) from e
        if control_url is None:
            listen = read_config_value(text, "control", "listen") if text else None
            if listen is _NULL:
                raise SidecarError("control.listen is null in %s: the sidecar needs the control API" % self.config)
            control_url = "http://" + listen if listen else DEFAULT_CONTROL_URL
        self.control_url = control_url
        if socket is None:
            # The daemon's own order: $OUTRIGGER_SOCKET over the file over the default.
            socket = self.env.get("OUTRIGGER_SOCKET")
            if not socket and text:
                value = read_config_value(text, "ingest", "socket")
                socket = value if value and value is not _NULL else None
            if not socket:
                socket = DEFAULT_SOCKET
        self.socket = socket
        self.api_key = api_key if api_key is not None else self.env.get("OUTRIGGER_API_KEY")
        self._control = Control(self.control_url, self.api_key, timeout=health_timeout)
        self._callbacks = {e: [] for e in EVENTS}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._proc = None
        self._stopping = False
        self._supervisor = None
        self._state = "stopped"
        self._in_row = 0
        self._restarts = 0
        self._ready_at = None
        self._healthy = False
        self._health_at = -HEALTH_CACHE_SECONDS
        self._log = None

    # -- public ----------------------------------------------------------------------------

    def on(self, event, fn):
        """Calls ``fn(info)`` on ``event`` (ready, exit, restart, gave-up); returns ``fn``."""
        if event not in self._callbacks:
            raise ValueError("unknown sidecar event %r (one of %s)" % (event, ", ".join(EVENTS)))
        self._callbacks[event].append(fn)
        return fn

    def start(self):
        """Spawns the daemon and waits until it is ready; raises SidecarError otherwise."""
        with self._lock:
            if self._supervisor is not None:
                return self
            self._stopping = False
            self._wake.clear()
            self._state = "starting"
        if self.log_file is not None and self._log is None:
            self._log = open(self.log_file, "ab")
        try:
            self._spawn()
        except OSError as e:
            self._state = "stopped"
            raise SidecarError("cannot start %s: %s" % (self.binary, e)) from e
        why = self._wait_ready(self.ready_timeout)
        if why is not None:
            self._end_process(self._proc, 0.0)
            self._state = "stopped"
            raise SidecarError("the daemon did not become ready: %s" % why)
        self._became_ready()
        self._supervisor = threading.Thread(target=self._supervise, name="outrigger-sidecar", daemon=True)
        self._supervisor.start()
        _sidecars.add(self)
        return self

    def stop(self, timeout=None):
        """Ends supervision and the daemon: SIGTERM, then SIGKILL after ``stop_timeout``.
        Returns the daemon's exit code (None when it was not running)."""
        with self._lock:
            self._stopping = True
            proc = self._proc
        self._wake.set()
        sup = self._supervisor
        if sup is not None and sup is not threading.current_thread():
            sup.join(timeout=self.stop_timeout + 5.0)
        self._supervisor = None
        code = self._end_process(proc, self.stop_timeout if timeout is None else timeout)
        self._state = "stopped"
        if self._log is not None:
            self._log.close()
            self._log = None
        _sidecars.discard(self)
        return code

    def is_healthy(self):
        """True when the daemon is running and its ``/healthz`` answers; cached for 5 s."""
        if time.monotonic() - self._health_at < HEALTH_CACHE_SECONDS:
            return self._healthy
        return self._check_health()

    def client(self, **kwargs):
        """An :class:`Outrigger` for this daemon's socket and control API."""
        kwargs.setdefault("control_url", self.control_url)
        kwargs.setdefault("api_key", self.api_key)
        return Outrigger(self.socket, **kwargs)

    @property
    def pid(self):
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def state(self):
        """stopped, starting, running, restarting or gave-up."""
        return self._state

    @property
    def restarts(self):
        """Restarts since start()."""
        return self._restarts

    def rss_mb(self):
        """The daemon's resident memory in MiB (``VmRSS``), or None."""
        pid = self.pid
        return _rss_mb(pid) if pid is not None else None

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        return False

    # -- process ---------------------------------------------------------------------------

    def _spawn(self):
        args = [self.binary, "run"]
        if self.config is not None:
            args += ["-c", self.config]
        out = self._log if self._log is not None else None
        with self._lock:
            if self._stopping:
                return None
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
            self._healthy, self._health_at = False, -HEALTH_CACHE_SECONDS
            return self._proc

    def _wait_ready(self, timeout):
        """None once ``/readyz`` answers 200; else why not (exited, timed out, stopping)."""
        proc = self._proc
        deadline = time.monotonic() + timeout
        while True:
            if proc is None or self._stopping:
                return "stopping"
            code = proc.poll()
            if code is not None:
                return "it exited with %s" % _describe(code)
            r = self._control.get("/readyz", timeout=min(1.0, max(0.05, deadline - time.monotonic())))
            if r is not None and r[0] == 200:
                return None
            if time.monotonic() >= deadline:
                return "no 200 from %s/readyz within %.1fs" % (self.control_url, timeout)
            if self._wake.wait(0.05) and self._stopping:
                return "stopping"

    @staticmethod
    def _end_process(proc, grace):
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
            except OSError:
                pass
        try:
            return proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            return None

    def _check_health(self):
        proc = self._proc
        ok = proc is not None and proc.poll() is None
        if ok:
            r = self._control.get("/healthz")
            ok = r is not None and r[0] == 200
        self._healthy, self._health_at = ok, time.monotonic()
        return ok

    def _became_ready(self):
        self._ready_at = time.monotonic()
        self._state = "running"
        self._healthy, self._health_at = True, time.monotonic()
        self._emit("ready", {"pid": self._proc.pid, "restarts": self._restarts})

    # -- supervision -----------------------------------------------------------------------

    def _supervise(self):
        failures = 0
        next_health = time.monotonic() + self.health_interval
        while not self._wake.wait(self.check_interval):
            proc = self._proc
            reason = None
            code = proc.poll()
            if code is not None:
                reason = "exited"
            else:
                now = time.monotonic()
                if now >= next_health:
                    next_health = now + self.health_interval
                    failures = 0 if self._check_health() else failures + 1
                    if failures >= self.failure_threshold:
                        reason = "unhealthy"
                if reason is None and self.max_memory_mb is not None:
                    rss = _rss_mb(proc.pid)
                    if rss is not None and rss > self.max_memory_mb:
                        reason = "memory"
                if reason is None and self._in_row and self._ready_at is not None:
                    if now - self._ready_at >= self.stable_after:
                        self._in_row = 0  # stayed up: the next failure starts a new series
            if reason is None:
                continue
            if self._stopping:
                return
            self._healthy, self._health_at = False, time.monotonic()
            if code is None:
                proc.kill()
                code = proc.wait()
            self._emit("exit", {"pid": proc.pid, "code": code if code >= 0 else None,
                                "signal": -code if code < 0 else None, "reason": reason})
            failures = 0
            if not self._restart(reason):
                return
            next_health = time.monotonic() + self.health_interval

    def _restart(self, reason):
        """Restarts with back-off until a daemon is ready (True), or gives up / stops (False)."""
        self._state = "restarting"
        while True:
            if self._in_row >= self.max_restarts:
                self._state = "gave-up"
                self._emit("gave-up", {"restarts": self._in_row, "reason": reason})
                return False
            delay = min(MAX_RESTART_DELAY, self.restart_delay * (2 ** self._in_row))
            self._in_row += 1
            if self._wake.wait(delay) or self._stopping:
                return False
            try:
                proc = self._spawn()
            except OSError as e:
                reason = "cannot start %s: %s" % (self.binary, e)
                continue
            if proc is None:
                return False
            self._restarts += 1
            self._emit("restart", {"pid": proc.pid, "attempt": self._in_row, "delay": delay, "reason": reason})
            why = self._wait_ready(self.ready_timeout)
            if why is None:
                self._became_ready()
                return True
            if self._stopping:
                return False
            code = self._end_process(proc, 0.0)
            self._emit("exit", {"pid": proc.pid, "code": code if code is not None and code >= 0 else None,
                                "signal": -code if code is not None and code < 0 else None,
                                "reason": "not ready: " + why})
            reason = "not ready: " + why

    def _emit(self, event, info):
        log.info("outrigger sidecar: %s %s", event, info)
        for fn in list(self._callbacks[event]):
            try:
                fn(info)
            except Exception:
                log.exception("outrigger sidecar: a %r callback raised", event)


def _describe(code):
    return "signal %d" % -code if code < 0 else "code %d" % code


def _rss_mb(pid):
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Null:
    def __repr__(self):
        return "null"


_NULL = _Null()  # an explicit YAML null, as opposed to an absent key


def read_config_value(text, section, key):
    """The scalar ``section.key`` of an Outrigger YAML config (block or flow mapping), as a
    string; ``_NULL`` for an explicit null; None when absent. Enough YAML for two addresses,
    not a YAML parser."""
    lines = text.splitlines()
    for i, raw in enumerate(lines):
        line = _strip_comment(raw)
        m = re.match(r"^([\"']?)%s\1\s*:(.*)$" % re.escape(section), line)
        if not m:
            continue
        rest = m.group(2).strip()
        if rest.startswith("{"):
            flow = rest
            j = i
            while flow.count("{") > flow.count("}") and j + 1 < len(lines):
                j += 1
                flow += " " + _strip_comment(lines[j]).strip()
            # Nested mappings ({… {…} …}) are skipped: the keys wanted are scalars at depth 1.
            flow = re.sub(r"\{[^{}]*\}", "", flow[1:-1]) if flow.endswith("}") else flow[1:]
            fm = re.search(r"(?:^|,)\s*([\"']?)%s\1\s*:\s*(\"[^\"]*\"|'[^']*'|[^,]*)" % re.escape(key), flow)
            return _scalar(fm.group(2)) if fm else None
        if rest:
            return None
        indent = None
        for raw2 in lines[i + 1 :]:
            line2 = _strip_comment(raw2)
            if not line2.strip():
                continue
            width = len(line2) - len(line2.lstrip())
            if width == 0:
                break
            if indent is None:
                indent = width
            if width != indent:
                continue
            bm = re.match(r"^\s*([\"']?)%s\1\s*:\s*(.*)$" % re.escape(key), line2)
            if bm:
                return _scalar(bm.group(2))
        return None
    return None


def _strip_comment(line):
    out, quote = [], None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t"):
            break
        out.append(ch)
    return "".join(out).rstrip()


def _scalar(value):
    value = value.strip()
    if value in ("", "~", "null", "Null", "NULL"):
        return _NULL if value else None
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


_sidecars = weakref.WeakSet()


def _stop_all():
    for s in list(_sidecars):
        try:
            s.stop()
        except Exception:
            pass


_client._after_exit_flush.append(_stop_all)
