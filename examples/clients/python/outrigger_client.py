"""A fail-open Outrigger client: the application never waits on the sidecar, nor fails because of it.

    from outrigger_client import Outrigger
    obs = Outrigger()                      # $OUTRIGGER_SOCKET or /tmp/outrigger.sock
    obs.emit("test_end", {"status": "passed"}, run_id="run_001")
    obs.flush()                            # optional: wait until everything sent is delivered

Events go over the unix socket as NDJSON without per-line acknowledgements ({"hello": {"ack":
false}}), buffered and written in one call per `emit_many` or when the buffer fills. If the daemon
is not there, or goes away, the client counts what it could not send and carries on; it tries to
reconnect at most once per `retry_seconds`. Only the standard library is used.
"""

import json
import os
import socket
import time


class Outrigger:
    def __init__(self, path=None, timeout=0.05, retry_seconds=5.0, buffer_bytes=64 * 1024):
        self.path = path or os.environ.get("OUTRIGGER_SOCKET", "/tmp/outrigger.sock")
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.buffer_bytes = buffer_bytes
        self.sock = None
        self.next_try = 0.0
        self.buf = []
        self.size = 0
        self.lost = 0  # events that could not be handed to the daemon
        self.errors = []  # the daemon's answers to malformed lines, if any were read

    def _connect(self):
        if self.sock is not None:
            return True
        now = time.monotonic()
        if now < self.next_try:
            return False
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            s.connect(self.path)
            s.sendall(b'{"hello": {"ack": false}}\n')
            self.sock = s
            return True
        except OSError:
            self.next_try = now + self.retry_seconds
            return False

    def emit(self, event_type, data=None, run_id=None, attributes=None, ts=None):
        ev = {"type": event_type, "data": data}
        if run_id is not None:
            ev["run_id"] = run_id
        if attributes:
            ev["attributes"] = attributes
        ev["ts"] = time.time() if ts is None else ts
        line = json.dumps(ev, separators=(",", ":")).encode() + b"\n"
        self.buf.append(line)
        self.size += len(line)
        if self.size >= self.buffer_bytes:
            self.send()

    def send(self):
        """Writes what is buffered. Never raises: what cannot be sent is counted in `lost`."""
        if not self.buf:
            return
        chunk, n = b"".join(self.buf), len(self.buf)
        self.buf, self.size = [], 0
        if not self._connect():
            self.lost += n
            return
        try:
            self.sock.sendall(chunk)
        except OSError:
            self.lost += n
            self._drop()

    def flush(self, timeout=5.0):
        """Sends the buffer and waits until the daemon has delivered everything sent before.
        Returns False when the daemon is not there or did not answer in time."""
        self.send()
        if self.sock is None:
            return False
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(b'{"method": "flush", "payload": {}}\n')
            reader = self.sock.makefile("rb")
            while True:
                answer = reader.readline()
                if not answer:
                    self._drop()
                    return False
                reply = json.loads(answer)
                if reply.get("success"):
                    return True
                # With acks off, only malformed lines (and a failed flush) are answered.
                self.errors.append(reply.get("error"))
                if "flush" in (reply.get("error") or ""):
                    return False
        except (OSError, ValueError):
            self._drop()
            return False
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.timeout)

    def _drop(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self.sock = None
        self.next_try = time.monotonic() + self.retry_seconds

    def close(self):
        self.send()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


if __name__ == "__main__":
    import sys

    obs = Outrigger(sys.argv[1] if len(sys.argv) > 1 else None)
    for i in range(int(os.environ.get("N", "1000"))):
        obs.emit("example", {"i": i, "status": "passed" if i % 10 else "failed"}, run_id=f"run_{i // 100}")
    ok = obs.flush()
    print(json.dumps({"flushed": ok, "lost": obs.lost, "errors": obs.errors}))
    obs.close()
