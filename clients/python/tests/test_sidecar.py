"""Sidecar: start, ready, health, restart with back-off, giving up, memory and hang watches, stop."""

import os
import signal
import threading
import time

import pytest
from conftest import BIN, Daemon, clean_env, eventually

from outrigger_client import Sidecar, SidecarError
from outrigger_client.sidecar import read_config_value


class Recorder:
    """Collects the sidecar's events as (name, info), in order."""

    def __init__(self, sidecar):
        self.events = []
        self.lock = threading.Lock()
        for name in ("ready", "exit", "restart", "gave-up"):
            sidecar.on(name, lambda info, name=name: self._add(name, info))

    def _add(self, name, info):
        with self.lock:
            self.events.append((name, info))

    def names(self):
        with self.lock:
            return [n for n, _ in self.events]

    def last(self, name):
        with self.lock:
            return [i for n, i in self.events if n == name][-1]


def make(short_tmp, **kw):
    d = Daemon(short_tmp / "sc", start=False)  # only its config and paths
    kw.setdefault("restart_delay", 0.2)
    kw.setdefault("check_interval", 0.05)
    sc = Sidecar(d.config, binary=BIN, env=clean_env(), cwd=d.dir, log_file=d.log, **kw)
    return d, sc


def test_start_ready_observe_stop(short_tmp):
    d, sc = make(short_tmp)
    rec = Recorder(sc)
    assert sc.control_url == d.control_url and sc.socket == d.socket  # read from the config
    with sc:
        assert rec.names() == ["ready"] and sc.state == "running"
        assert sc.is_healthy()
        pid = sc.pid
        assert sc.rss_mb() > 1
        obs = sc.client()
        obs.observe("via_sidecar", {"ok": True})
        assert obs.flush()
        obs.close()
    assert sc.state == "stopped" and sc.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert [e["type"] for e in d.events()] == ["via_sidecar"]
    assert rec.names() == ["ready"]  # a requested stop is not an exit to report


def test_kill_9_is_followed_by_a_restart_within_the_back_off(short_tmp):
    d, sc = make(short_tmp, restart_delay=0.3)
    rec = Recorder(sc)
    sc.start()
    try:
        first = sc.pid
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: rec.names().count("ready") == 2, 30), rec.events
        assert rec.names() == ["ready", "exit", "restart", "ready"]
        exit_info = rec.last("exit")
        assert exit_info["signal"] == signal.SIGKILL and exit_info["reason"] == "exited"
        restart = rec.last("restart")
        assert restart["attempt"] == 1 and restart["delay"] == pytest.approx(0.3)
        assert sc.pid not in (None, first) and sc.restarts == 1
        assert time.monotonic() - killed_at >= 0.3  # it waited for the back-off
        obs = sc.client()
        obs.observe("after_restart")
        assert obs.flush()
        obs.close()
        assert [e["type"] for e in d.events()] == ["after_restart"]
    finally:
        assert sc.stop() == 0


def test_it_gives_up_after_max_restarts_in_a_row(short_tmp):
    d, sc = make(short_tmp, restart_delay=0.1, max_restarts=2)
    rec = Recorder(sc)
    sc.start()
    try:
        d.config.write_text("not_a_key: 1\n")  # every later start fails at once
        os.kill(sc.pid, signal.SIGKILL)
        assert eventually(lambda: "gave-up" in rec.names(), 30), rec.events
        assert rec.names() == ["ready", "exit", "restart", "exit", "restart", "exit", "gave-up"]
        delays = [i["delay"] for n, i in rec.events if n == "restart"]
        assert delays == [pytest.approx(0.1), pytest.approx(0.2)]  # exponential back-off
        assert all(i["reason"].startswith("not ready: it exited") for n, i in rec.events[3:] if n == "exit")
        assert rec.last("gave-up")["restarts"] == 2
        assert sc.state == "gave-up" and sc.pid is None and not sc.is_healthy()
    finally:
        sc.stop()


def test_a_daemon_over_its_memory_limit_is_restarted(short_tmp):
    d, sc = make(short_tmp, restart_delay=0.1, max_restarts=1, max_memory_mb=1)  # any daemon is over 1 MiB
    rec = Recorder(sc)
    sc.start()
    try:
        assert eventually(lambda: "gave-up" in rec.names(), 30), rec.events
        assert rec.names() == ["ready", "exit", "restart", "ready", "exit", "gave-up"]
        assert [i["reason"] for n, i in rec.events if n == "exit"] == ["memory", "memory"]
    finally:
        sc.stop()


def test_a_hung_daemon_fails_its_health_checks_and_is_restarted(short_tmp):
    d, sc = make(short_tmp, health_interval=0.2, health_timeout=0.2, failure_threshold=2)
    rec = Recorder(sc)
    sc.start()
    try:
        hung = sc.pid
        os.kill(hung, signal.SIGSTOP)  # alive, but answers nothing
        assert eventually(lambda: rec.names().count("ready") == 2, 30), rec.events
        assert rec.last("exit")["reason"] == "unhealthy" and rec.last("exit")["pid"] == hung
        assert sc.pid != hung and sc.is_healthy()
    finally:
        sc.stop()


def test_a_start_that_fails_says_why(short_tmp):
    d = Daemon(short_tmp / "bad", start=False)
    d.config.write_text(d.config.read_text() + "not_a_key: 1\n")
    with pytest.raises(SidecarError, match="exited with code"):
        Sidecar(d.config, binary=BIN, env=clean_env(), cwd=d.dir, log_file=d.log).start()
    with pytest.raises(SidecarError, match="cannot start"):
        Sidecar(d.config, binary=str(short_tmp / "no-such-binary")).start()


def test_config_values_are_read_from_block_and_flow_yaml():
    block = "ingest:\n  socket: /run/o.sock  # comment\n  http: null\ncontrol:\n  listen: 127.0.0.1:9999\n"
    assert read_config_value(block, "control", "listen") == "127.0.0.1:9999"
    assert read_config_value(block, "ingest", "socket") == "/run/o.sock"
    flow = 'ingest: {otlp: {http: 1}, socket: "/s.sock"}\ncontrol: {listen: \'0.0.0.0:1\', api_key: k}\n'
    assert read_config_value(flow, "ingest", "socket") == "/s.sock"
    assert read_config_value(flow, "control", "listen") == "0.0.0.0:1"
    assert read_config_value("sinks: []\n", "control", "listen") is None
