"""The Outrigger client against a real daemon, a missing one and a stuck one."""

import logging
import os
import socket
import threading
import time

from conftest import eventually, free_port

from outrigger_client import Outrigger


def client_for(d, **kw):
    return Outrigger(d.socket, control_url=d.control_url, **kw)


def test_events_reach_the_file_sink_as_sent(daemon):
    with client_for(daemon) as obs:
        for i in range(1000):
            assert obs.observe("unit", {"i": i, "name": "é"}, run_id="run_%d" % (i // 100))
        assert obs.observe("with_all", [1, "two"], run_id="r", attributes={"suite": "unit"}, ts=1732290000.5)
        assert obs.flush()
        s = obs.stats
    assert (s["queued"], s["sent"], s["accepted"], s["errors"], s["lost"], s["dropped"]) == (1001, 1001, 1001, 0, 0, 0)
    # flush() answered: everything is in the file already.
    events = daemon.events()
    assert len(events) == 1001
    unit = [e for e in events if e["type"] == "unit"]
    assert [e["data"]["i"] for e in unit] == list(range(1000))
    assert unit[0]["data"]["name"] == "é" and unit[0]["run_id"] == "run_0" and unit[999]["run_id"] == "run_9"
    # Each event got its own id from the daemon (32 hex digits), written first after the type.
    ids = [e.pop("id") for e in events]
    assert len(set(ids)) == 1001 and all(len(i) == 32 and int(i, 16) for i in ids)
    last = events[-1]
    assert last == {
        "type": "with_all",
        "ts_ns": 1732290000500000000,
        "run_id": "r",
        "attributes": {"suite": "unit"},
        "data": [1, "two"],
    }


def test_a_run_frames_its_events_and_says_how_it_ended(daemon):
    obs = client_for(daemon)
    with obs.run("run_ok") as run:
        run.observe("step", {"n": 1})
    try:
        with obs.run("run_bad"):
            raise ValueError("boom")
    except ValueError:
        pass
    else:
        raise AssertionError("run() must not swallow the exception")
    assert obs.flush()
    got = [(e["type"], e.get("run_id"), (e.get("data") or {}).get("status")) for e in daemon.events()]
    assert got == [
        ("run_start", "run_ok", None),
        ("step", "run_ok", None),
        ("run_end", "run_ok", "passed"),
        ("run_start", "run_bad", None),
        ("run_end", "run_bad", "failed"),
    ]
    assert daemon.events()[-1]["data"]["error"] == "ValueError: boom"
    obs.close()


def test_refused_and_unencodable_events_are_counted(daemon):
    obs = client_for(daemon)
    assert obs.observe("x" * 300) is True  # queued; the daemon refuses it (type over 256 bytes)
    assert obs.observe("nan", float("nan")) is False
    assert obs.observe(["not", "a", "string"]) is False
    cyclic = []
    cyclic.append(cyclic)
    assert obs.observe("cycle", cyclic) is False
    assert obs.observe("odd", {"when": object}) is True  # str() of what JSON cannot say
    assert obs.flush()
    s = obs.stats
    assert (s["invalid"], s["errors"], s["accepted"], s["lost"]) == (3, 1, 1, 0)
    assert "256" in s["last_error"]
    assert [e["type"] for e in daemon.events()] == ["odd"]
    assert daemon.events()[0]["data"]["when"] == str(object)
    obs.close()


def test_eight_threads_at_once_every_line_intact(daemon):
    obs = client_for(daemon, flush_bytes=16 * 1024)
    per_thread = 3000
    start = threading.Barrier(8)

    def work(t):
        start.wait()
        for i in range(per_thread):
            obs.observe("threaded", {"t": t, "i": i, "pad": "p" * (i % 50)}, run_id="thread_%d" % t)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert obs.flush(timeout=20)
    s = obs.stats
    assert s["accepted"] == 8 * per_thread and s["lost"] == 0 and s["dropped"] == 0, s
    events = daemon.events()  # every line parses, or this raises
    seen = sorted((e["data"]["t"], e["data"]["i"]) for e in events)
    assert seen == [(t, i) for t in range(8) for i in range(per_thread)]
    assert all(e["run_id"] == "thread_%d" % e["data"]["t"] for e in events)
    obs.close()


def test_without_a_daemon_every_call_returns_quickly_and_nothing_raises(short_tmp, caplog):
    caplog.set_level(logging.DEBUG, logger="outrigger_client")
    nothing = "http://127.0.0.1:%d" % free_port()
    t0 = time.monotonic()
    obs = Outrigger(str(short_tmp / "nobody.sock"), control_url=nothing)
    slowest = 0.0
    for i in range(1000):
        c = time.monotonic()
        assert obs.observe("lonely", {"i": i}) is True
        slowest = max(slowest, time.monotonic() - c)
    assert obs.flush(timeout=1.0) is False
    assert obs.should_sample("lonely") is True
    assert obs.report_anomaly("lonely", "why") is False
    assert obs.set_rate("lonely", 0.5) is False
    assert obs.health() is None
    for i in range(100):  # the back-off: later batches are counted as lost without a connect each
        obs.observe("later", {"i": i})
    time.sleep(0.5)
    assert obs.close(timeout=0.5) is False
    total = time.monotonic() - t0
    assert total < 2.0 + 0.5, total  # 0.5 of it is the sleep above
    assert slowest < 0.5, slowest
    s = obs.stats
    assert s["lost"] == 1100 and s["accepted"] == 0 and s["connected"] is False, s
    assert "nobody.sock" in s["last_error"]
    warnings = [r for r in caplog.records if r.name == "outrigger_client" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "nobody.sock" in warnings[0].getMessage()
    assert obs.observe("after_close") is False and obs.stats["dropped"] == 1


def test_a_stuck_daemon_costs_bounded_time(short_tmp):
    """A socket that accepts nothing and reads nothing, a control API that never answers."""
    path = str(short_tmp / "stuck.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)  # connect() succeeds through the backlog; nothing ever reads
    http = socket.socket()
    http.bind(("127.0.0.1", 0))
    http.listen(1)
    try:
        obs = Outrigger(path, control_url="http://127.0.0.1:%d" % http.getsockname()[1], http_timeout=0.3)
        big = {"pad": "x" * 4000}
        t0 = time.monotonic()
        for _ in range(2000):  # 8 MB: more than the socket buffers hold
            obs.observe("stuck", big)
        observe_time = time.monotonic() - t0
        t1 = time.monotonic()
        assert obs.flush(timeout=1.0) is False
        assert obs.health() is None
        assert obs.close(timeout=0.5) is False
        assert time.monotonic() - t1 < 3.0
        assert observe_time < 2.0, observe_time
        s = obs.stats
        assert s["accepted"] == 0
        # Nothing is unaccounted: what was not dropped at the buffer's bound was lost.
        assert s["lost"] + s["dropped"] == 2000 and s["lost"] > 0, s
    finally:
        server.close()
        http.close()


def test_a_full_buffer_drops_and_counts(short_tmp):
    obs = Outrigger(str(short_tmp / "nobody.sock"), max_buffer_bytes=10_000, flush_interval=60)
    results = [obs.observe("burst", {"i": i}) for i in range(5000)]
    s = obs.stats
    assert results.count(False) == s["dropped"] > 0
    assert results.count(True) == s["queued"] == s["buffered"]
    assert s["queued"] < 500  # about 10 kB of lines
    obs.close(timeout=0.2)


def test_across_fork_child_and_parent_both_deliver(daemon):
    obs = client_for(daemon)
    for i in range(10):
        obs.observe("before_fork", {"i": i})  # buffered, not flushed: the parent's, not the child's
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            for i in range(500):
                obs.observe("child", {"i": i})
            ok = obs.flush(timeout=10)
            s = obs.stats
            code = 0 if ok and s["accepted"] == 500 and s["queued"] == 500 else 2
        finally:
            os._exit(code)
    for i in range(500):
        obs.observe("parent", {"i": i})
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert obs.flush(timeout=10)
    assert obs.stats["accepted"] == 510
    counts = {}
    for e in daemon.events():
        counts[e["type"]] = counts.get(e["type"], 0) + 1
    assert counts == {"before_fork": 10, "child": 500, "parent": 500}
    obs.close()


def test_across_a_daemon_restart_it_reconnects_and_counts_what_it_lost(daemon):
    obs = client_for(daemon, reconnect_min=0.05, reconnect_max=0.5)
    for i in range(100):
        obs.observe("before", {"i": i})
    assert obs.flush()
    daemon.kill()  # SIGKILL: no drain, the socket file is left behind
    for i in range(50):
        obs.observe("while_down", {"i": i})
    assert eventually(lambda: obs.stats["lost"] >= 50, 5), obs.stats
    daemon.start()  # same config, same socket path
    for i in range(100):
        obs.observe("after", {"i": i})
    # The flusher reconnects by itself (no flush() forcing it).
    assert eventually(lambda: obs.stats["accepted"] == 200, 10), obs.stats
    assert obs.flush()
    s = obs.stats
    assert s["reconnects"] == 1 and s["lost"] == 50 and s["errors"] == 0, s
    assert s["queued"] == s["accepted"] + s["lost"] + s["errors"] == 250
    types = [e["type"] for e in daemon.events()]
    assert types.count("before") == 100 and types.count("after") == 100 and "while_down" not in types
    obs.close()


def test_a_daemon_stopped_mid_run_is_counted_and_replaced(daemon):
    """SIGTERM: the daemon drains and closes the connection; the client notices and reconnects."""
    obs = client_for(daemon, reconnect_min=0.05, reconnect_max=0.5)
    obs.observe("one")
    assert obs.flush()
    assert daemon.stop() == 0
    assert eventually(lambda: not obs.stats["connected"], 5)
    daemon.start()
    obs.observe("two")
    assert obs.flush()
    assert [e["type"] for e in daemon.events()] == ["one", "two"]
    assert obs.stats["reconnects"] == 1 and obs.stats["lost"] == 0
    obs.close()


def test_health_answers_from_the_daemon(daemon):
    obs = client_for(daemon)
    h = obs.health()
    assert h["status"] in ("healthy", "degraded") and "components" in h
    obs.close()


def test_the_api_key_is_sent_from_the_environment(daemon_factory, monkeypatch):
    d = daemon_factory({"control": {"api_key": "sekrit"}})
    wrong = Outrigger(d.socket, control_url=d.control_url, api_key="wrong")
    assert wrong.health() is None and wrong.set_rate("keyed", 0.5) is False
    wrong.close()
    monkeypatch.setenv("OUTRIGGER_API_KEY", "sekrit")
    obs = Outrigger(d.socket, control_url=d.control_url)
    assert obs.health() is not None
    assert obs.set_rate("keyed", 0.25)
    obs.close()


def _api(d, method, path, body=None):
    import json
    import urllib.request

    req = urllib.request.Request(d.control_url + path, method=method)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, data, timeout=10) as r:
        return json.loads(r.read() or b"null")


def test_debug_mode_is_held_by_a_pause_breakpoint_until_continue(daemon):
    _api(daemon, "POST", "/v1/breakpoints", {"when": 'type == "checkout"', "action": "pause"})
    debugged = client_for(daemon, debug=True)
    plain = client_for(daemon)
    assert debugged.observe("cart", {"items": 2}, run_id="o1")
    done = []
    t = threading.Thread(target=lambda: done.append(debugged.observe("checkout", {"total": 9}, run_id="o1")))
    t.start()

    def paused():
        return _api(daemon, "GET", "/v1/debug?state=paused")["sessions"]

    assert eventually(lambda: len(paused()) == 1, 10.0)
    session = paused()[0]
    assert session["connection"]["held"] and session["type"] == "checkout"
    assert t.is_alive(), "the observing thread waits at the breakpoint"
    # A client that did not opt in is never held.
    assert plain.observe("checkout", {"total": 1}) and plain.flush()
    assert t.is_alive()
    _api(daemon, "POST", "/v1/debug/%s/continue" % session["id"], {})
    t.join(10.0)
    assert not t.is_alive() and done == [True]
    assert debugged.flush() and debugged.stats["accepted"] == 2
    debugged.close()
    plain.close()
