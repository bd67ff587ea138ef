"""Per-call cost of the Python client in the caller's thread: observe() with the daemon running,
observe() with it absent, and should_sample().

In: the daemon binary (``--bin``, else ``$OUTRIGGER_BIN``, else ``outrigger`` on PATH), started on
a temporary socket and port with a file sink and profiling budgets off; or ``--socket`` of a
daemon already running. Out: µs per call (the best and the median of ``--rounds`` rounds of
``--calls`` calls each), and the whole process's CPU per event while the daemon runs (the
flusher and answer threads included). Between rounds the client flushes (not timed), so the
daemon keeps up and nothing is lost or dropped; the script says so if anything was. Stops the
daemon it started when done.

    python clients/python/bench.py --bin target/release/outrigger
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from outrigger_client import Outrigger

DATA = {"status": "passed", "duration_ms": 12.5, "nodeid": "tests/test_api.py::test_login"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(binary, dir):
    port = free_port()
    sock = os.path.join(dir, "o.sock")
    cfg = os.path.join(dir, "outrigger.yml")
    with open(cfg, "w") as f:
        f.write(
            "ingest: {socket: %s, http: null}\n"
            "plugins: {dir: %s/plugins}\n"
            "sinks: [{type: file, path: %s/out/events.ndjson}]\n"
            "control: {listen: '127.0.0.1:%d'}\n"
            "profiling: {budgets: {cpu_percent: 0, memory_mb: 0}}\n"
            "log: {level: warn}\n" % (json.dumps(sock), dir, dir, port)
        )
    os.makedirs(os.path.join(dir, "plugins"), exist_ok=True)
    proc = subprocess.Popen([binary, "run", "-c", cfg], stdin=subprocess.DEVNULL)
    url = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, sock, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("the daemon did not become ready")


def rounds(fn, calls, n):
    """µs per call of each round."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(calls)
        out.append((time.perf_counter() - t0) / calls * 1e6)
    return out


def report(name, per_call):
    print("%-46s best %6.3f µs/call   median %6.3f µs/call" % (name, min(per_call), statistics.median(per_call)))


def bench_observe(obs, calls, n, between=None):
    observe = obs.observe

    def run_with_data(k):
        for _ in range(k):
            observe("test_end", DATA, "run_001")

    def run_bare(k):
        for _ in range(k):
            observe("heartbeat")

    results = {}
    for label, fn in (("with data and run_id", run_with_data), ("type only", run_bare)):
        per = []
        for _ in range(n):
            per += rounds(fn, calls, 1)
            if between:
                between()
        results[label] = per
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("OUTRIGGER_BIN") or shutil.which("outrigger"))
    ap.add_argument("--socket", help="a running daemon's socket (then --control-url too)")
    ap.add_argument("--control-url")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    print("python %s on %s, %d cores" % (sys.version.split()[0], sys.platform, os.cpu_count() or 0))
    tmp = tempfile.mkdtemp(prefix="orbench-", dir="/tmp")
    proc = None
    try:
        if args.socket:
            sock, url = args.socket, args.control_url
        else:
            if not args.bin:
                sys.exit("no daemon binary: pass --bin or set OUTRIGGER_BIN")
            proc, sock, url = start_daemon(args.bin, tmp)

        # 1. observe() with the daemon running: the flusher and reader threads work meanwhile.
        obs = Outrigger(sock, control_url=url)
        cpu0, ev0 = time.process_time(), 0
        res = bench_observe(obs, args.calls, args.rounds, between=lambda: obs.flush(30))
        cpu = time.process_time() - cpu0
        s = obs.stats
        for label, per in res.items():
            report("observe() daemon running, " + label, per)
        events = s["queued"] - ev0
        print("%-46s %6.3f µs/event (caller + flusher + answers, %d events)"
              % ("  process CPU while observing and flushing", cpu / events * 1e6, events))
        if s["lost"] or s["dropped"] or s["errors"] or s["accepted"] != s["queued"]:
            print("  WARNING: not everything was delivered: %s" % s)

        # 2. should_sample(): from the cached table (fetched once here, then a dict lookup).
        obs.should_sample("test_end")
        obs.refresh_sampling()
        should = obs.should_sample

        def sample_known(k):
            for _ in range(k):
                should("test_end")

        report("should_sample() rate 1.0", rounds(sample_known, args.calls * 5, args.rounds))
        obs.set_rate("half", 0.5)

        def sample_half(k):
            for _ in range(k):
                should("half")

        report("should_sample() rate 0.5 (random draw)", rounds(sample_half, args.calls * 5, args.rounds))

        def empty(k):
            for _ in range(k):
                pass

        report("(the loop alone, included in every figure)", rounds(empty, args.calls * 5, args.rounds))
        obs.close()

        # 3. observe() with no daemon: the flusher counts batches as lost.
        absent = Outrigger(os.path.join(tmp, "nobody.sock"), control_url="http://127.0.0.1:9")
        import logging

        logging.getLogger("outrigger_client").setLevel(logging.ERROR)  # the one warning, silenced here
        res = bench_observe(absent, args.calls, args.rounds, between=lambda: absent.flush(1))
        for label, per in res.items():
            report("observe() daemon absent, " + label, per)
        s = absent.stats
        if s["dropped"]:
            print("  note: %d dropped at the buffer's bound" % s["dropped"])
        absent.close(timeout=0.1)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
