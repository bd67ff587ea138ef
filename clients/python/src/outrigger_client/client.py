"""The fail-open client: ``observe()`` calls in, native NDJSON lines over the daemon's unix socket out.

In: ``observe(type, data, run_id, attributes, ts)`` from any thread. Each call encodes one line in
the caller's thread and appends it to an in-memory buffer under one lock; the buffer is bounded
(``max_buffer_bytes``): when it is full the event is dropped and counted, the caller never waits.

Out: a background *flusher* thread writes the buffer to the socket ``flush_interval`` (200 ms)
after its first line, or as soon as it holds ``flush_bytes``. The connection stays in ack mode:
the daemon answers every line, in order, and a *reader* thread per connection counts the
answers (``accepted``, and ``errors`` for ``{"success": false}``). ``flush()`` appends the Weave
``{"method": "flush"}`` line, which the daemon answers once everything it accepted before has
been delivered to the sinks. The sampling table (``GET /v1/sampling``) is fetched by a third
thread, started by the first ``should_sample()``, and cached.

Failure: connecting is bounded by ``connect_timeout`` and each 256 KiB piece of a write by
``send_timeout`` (0.5 s each), both in the flusher thread, never in the caller's. When the daemon
is absent, slow or dies, what could not be handed over is counted as ``lost`` (events written
whose answer never came count too: the daemon may not have admitted them), one warning is
logged on ``logging.getLogger("outrigger_client")``, and connecting is retried with back-off
(``reconnect_min`` doubling to ``reconnect_max``) while there is something to send.

Debugging: ``Outrigger(debug=True)`` opts the connection in to breakpoints: it starts with
``{"hello": {"ack": true, "debug": true}}``, and every ``observe()`` writes its line at once and
waits for its answer (at most ``debug_timeout``, 65 s by default: the daemon's ``max_pause`` is
60 s), so that a ``pause`` breakpoint on the daemon holds the calling thread at that line until
it is continued or stepped. Only such a client can be held; without ``debug`` nothing waits.

Stop: ``close()``, leaving a ``with Outrigger() as obs`` block, or interpreter exit (``atexit``)
flushes with a bounded wait (``exit_timeout``), then closes the socket; the threads are daemon
threads and end with it. After ``os.fork()`` the child starts afresh: new locks, an empty buffer,
zeroed stats, no connection (the parent's stays the parent's), a new flusher.
"""

import atexit
import json
import logging
import os
import random
import socket as _socket
import threading
import time
import weakref
from collections import deque

try:
    from select import POLLIN as _POLLIN
    from select import poll as _poll
except ImportError:  # pragma: no cover - every POSIX CPython has poll
    _poll = None

from ._control import Control

__all__ = ["Outrigger", "Run", "DEFAULT_SOCKET"]

log = logging.getLogger("outrigger_client")

DEFAULT_SOCKET = "/tmp/outrigger.sock"

_OK = b'{"success":true}\n'
_OK_LINE = _OK[:-1]
_FLUSH_LINE = b'{"method":"flush","payload":{}}\n'
_DEBUG_HELLO = b'{"hello":{"ack":true,"debug":true}}\n'
_CHUNK = 256 * 1024
_MAX_TYPE_CACHE = 4096


def _not_str(value):
    raise TypeError("expected a string, got %s" % type(value).__name__)


def _make_encoder():
    """``(enc, esc)``: ``enc(obj, 0)`` gives a sequence of str (compact separators, ASCII,
    ``str()`` for values JSON has no form for, NaN and infinity refused with ValueError);
    ``esc(s)`` gives a JSON string literal and refuses anything but a str."""
    try:
        from json.encoder import c_make_encoder, encode_basestring_ascii

        # Reusing one C encoder saves building a JSONEncoder and its C twin per call (what
        # json.dumps with arguments does). markers=None: no circular check; a cycle ends in
        # RecursionError, which observe() counts as invalid like any other failure.
        enc = c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", False, False, False)
        if "".join(enc({"a": [1, "\u00e9", None, 1.5]}, 0)) == '{"a":[1,"\\u00e9",null,1.5]}':
            return enc, encode_basestring_ascii
    except Exception:
        pass
    py = json.JSONEncoder(separators=(",", ":"), default=str, allow_nan=False)
    return (lambda o, _level: (py.encode(o),)), (lambda s: json.dumps(s) if s.__class__ is str else _not_str(s))


_enc, _esc = _make_encoder()
_join = "".join
_time_ns = time.time_ns
_monotonic = time.monotonic
_random = random.random
_HEADS = {}  # type -> '{"type":"…"' (types are few; bounded all the same)


def _head(type):
    if type.__class__ is not str:
        raise TypeError("type must be a string")
    head = '{"type":' + _esc(type)
    if len(_HEADS) >= _MAX_TYPE_CACHE:
        _HEADS.clear()
    _HEADS[type] = head
    return head


def _fnv1a_unit(text):
    """The daemon's sampling hash of a run id (FNV-1a, splitmix64 finaliser) in [0, 1)."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 31
    return (h >> 11) / float(1 << 53)


class _Conn:
    """One connection and the bookkeeping of its answers, guarded by the client's ``_io``
    condition. Lines are numbered from 1 in the order written; the daemon answers every
    line, in that order."""

    __slots__ = ("sock", "written", "answered", "flushes", "waiting", "results", "dead")

    def __init__(self, sock):
        self.sock = sock
        self.written = 0  # lines handed to the socket (events and flush lines)
        self.answered = 0  # answers read
        self.flushes = deque()  # line numbers of flush lines not yet answered
        self.waiting = set()  # flush line numbers a flush() call waits for
        self.results = {}  # flush line number -> (ok, error)
        self.dead = False


class Run:
    """Observes events into one run: ``run.observe(type, data)`` sends with ``run_id`` set.

    ``with obs.run(run_id) as run`` emits ``run_start`` on entry and ``run_end`` on exit, whose
    ``data.status`` is ``"failed"`` (with ``data.error``) when the block raised, else
    ``"passed"``, and ``data.duration_ms``; the exception is never swallowed. The pytest fixture
    ``outrigger_run`` gives a Run without those two events (``test_start`` and ``test_end`` frame
    a test's run).
    """

    __slots__ = ("client", "run_id", "attributes", "_frame", "_started")

    def __init__(self, client, run_id, attributes=None, frame=True):
        self.client = client
        self.run_id = run_id
        self.attributes = attributes
        self._frame = frame
        self._started = None

    def observe(self, type, data=None, attributes=None, ts=None):
        """Like :meth:`Outrigger.observe`, into this run."""
        return self.client.observe(type, data, self.run_id, attributes or self.attributes, ts)

    def __enter__(self):
        self._started = _monotonic()
        if self._frame:
            self.client.observe("run_start", None, self.run_id, self.attributes)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._frame:
            data = {
                "status": "passed" if exc_type is None else "failed",
                "duration_ms": round((_monotonic() - self._started) * 1000.0, 3),
            }
            if exc_type is not None:
                try:
                    data["error"] = ("%s: %s" % (exc_type.__name__, exc))[:65536]
                except Exception:
                    data["error"] = exc_type.__name__
            self.client.observe("run_end", data, self.run_id, self.attributes)
        return False


class Outrigger:
    """A fail-open client of one Outrigger daemon. Thread-safe and fork-safe; see the module doc.

    ``socket``: the daemon's unix socket (default ``$OUTRIGGER_SOCKET``, else
    ``/tmp/outrigger.sock``). ``control_url`` (default ``$OUTRIGGER_CONTROL_URL``, else
    ``http://127.0.0.1:9464``) and ``api_key`` (default ``$OUTRIGGER_API_KEY``) reach the
    control API for sampling, anomalies and health.
    """

    def __init__(
        self,
        socket=None,
        *,
        control_url=None,
        api_key=None,
        flush_interval=0.2,
        flush_bytes=256 * 1024,
        max_buffer_bytes=8 * 1024 * 1024,
        connect_timeout=0.5,
        send_timeout=0.5,
        reconnect_min=0.2,
        reconnect_max=5.0,
        http_timeout=1.0,
        sampling_refresh=2.0,
        exit_timeout=2.0,
        debug=False,
        debug_timeout=65.0,
    ):
        self.socket_path = socket or os.environ.get("OUTRIGGER_SOCKET") or DEFAULT_SOCKET
        self.control = Control(control_url, api_key, timeout=http_timeout)
        self.flush_interval = flush_interval
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.sampling_refresh = sampling_refresh
        self.exit_timeout = exit_timeout
        self.debug = bool(debug)
        self.debug_timeout = debug_timeout
        self._flush_bytes = flush_bytes
        self._max_bytes = max_buffer_bytes  # -1 once closed: every observe() is then dropped
        self._closed = False
        # The sampling table: type -> effective rate, and the rate of every other type.
        # Unknown (no answer from the daemon yet): everything is sampled.
        self._rates = {}
        self._default_rate = 1.0
        self._sampling_thread = None
        self._sampling_failures = 0
        self._run_units = {}
        self._fresh_state()
        _clients.add(self)

    # -- state -----------------------------------------------------------------------------

    def _fresh_state(self):
        """Everything a forked child must not share with its parent."""
        self._lock = threading.Lock()  # the buffer and its counters
        self._send_lock = threading.Lock()  # one writer at a time on the socket
        self._io = threading.Condition(threading.Lock())  # connection state and I/O counters
        self._has_data = threading.Event()
        self._urgent = threading.Event()
        self._buf = []
        self._size = 0
        self._kicked = False
        self._queued = 0
        self._dropped = 0
        self._invalid = 0
        self._sent = 0
        self._accepted = 0
        self._errors = 0
        self._lost = 0
        self._connects = 0
        self._reconnects = 0
        self._connect_failures = 0
        self._last_error = None
        self._warned = False
        self._conn = None
        self._next_connect = 0.0
        self._backoff = self.reconnect_min
        self._had_conn = False
        self._flusher = None
        if not self._closed:
            self._flusher = threading.Thread(target=self._flush_loop, name="outrigger-flush", daemon=True)
            self._flusher.start()

    def _after_fork_in_child(self):
        old = self._conn
        self._fresh_state()
        if old is not None:
            try:
                old.sock.close()  # close, never shutdown: the parent still uses this connection
            except OSError:
                pass
        if self._sampling_thread is not None:
            self._sampling_thread = None
            self._start_sampling()

    # -- the hot path ----------------------------------------------------------------------

    def observe(self, type, data=None, run_id=None, attributes=None, ts=None):
        """Queues one event; True when it was queued. Never raises, never waits on the daemon.

        ``type``: a string (1–256 bytes). ``data``: any JSON value (values JSON has no form for
        are sent as ``str(value)``; NaN, infinity and cycles make the event invalid).
        ``run_id``: a string. ``attributes``: a dict of string to string. ``ts``: unix seconds;
        by default the current time, sent in nanoseconds.
        """
        try:
            head = _HEADS.get(type) or _head(type)
            if ts is None:
                line = f'{head},"ts_ns":{_time_ns()}'
            else:
                line = f'{head},"ts":{_join(_enc(float(ts), 0))}'
            if data is not None:
                line = f'{line},"data":{_join(_enc(data, 0))}'
            if run_id is not None:
                line = f'{line},"run_id":{_esc(run_id)}'
            if attributes:
                line = f'{line},"attributes":{_join(_enc(attributes, 0))}'
            line += "}"
        except Exception:
            return self._refuse_invalid()
        if self.debug:
            return self._observe_and_wait(line)
        n = len(line) + 1
        with self._lock:
            size = self._size + n
            if size > self._max_bytes:
                self._dropped += 1
                return False
            self._buf.append(line)
            self._size = size
            self._queued += 1
            if size == n:
                self._has_data.set()  # the first line of a batch starts the flusher's clock
            elif size >= self._flush_bytes and not self._kicked:
                self._kicked = True
                self._urgent.set()
        return True

    def _observe_and_wait(self, line):
        """Debug mode: writes the line now and waits for its answer (a paused breakpoint holds
        it), at most ``debug_timeout`` seconds. True when it was written."""
        with self._lock:
            if self._max_bytes < 0:
                self._dropped += 1
                return False
            self._queued += 1
        try:
            deadline = _monotonic() + self.debug_timeout
            with self._send_lock:
                lines, n = self._take()
                lines = (lines or []) + [line]
                sent = self._deliver(lines, n + 1, flush=False, force=True)
            if sent is None:
                return False
            conn, _seq, last = sent
            with self._io:
                while conn.answered < last and not conn.dead:
                    left = deadline - _monotonic()
                    if left <= 0:
                        break
                    self._io.wait(left)
            return True
        except Exception:
            log.debug("outrigger: debug observe failed", exc_info=True)
            return False

    def _refuse_invalid(self):
        with self._lock:
            self._invalid += 1
        log.debug("outrigger: an event could not be encoded and was not sent", exc_info=True)
        return False

    def run(self, run_id, attributes=None):
        """``with obs.run(run_id) as run``: ``run_start`` … ``run_end`` around the block."""
        return Run(self, run_id, attributes)

    # -- sending ---------------------------------------------------------------------------

    def _take(self):
        """The buffered lines and their count, leaving the buffer empty."""
        with self._lock:
            self._has_data.clear()
            self._urgent.clear()
            self._kicked = False
            buf = self._buf
            if not buf:
                return None, 0
            self._buf = []
            self._size = 0
        return buf, len(buf)

    def _flush_loop(self):
        has_data, urgent = self._has_data, self._urgent
        while True:
            has_data.wait()  # idle: no wake-ups while nothing is buffered
            if self._closed:
                return
            urgent.wait(self.flush_interval)
            if self._closed:
                return
            try:
                with self._send_lock:
                    lines, n = self._take()
                    if n:
                        self._deliver(lines, n, flush=False, force=False)
            except Exception:  # the flusher never dies
                log.debug("outrigger: flusher error", exc_info=True)

    def _deliver(self, lines, n, flush, force):
        """Writes ``n`` lines (and a flush line) on the connection, connecting if needed.
        Called with ``_send_lock`` held. ``(conn, flush line number)``, or None when nothing
        could be written (the lines are then counted as lost)."""
        conn = self._connection(force)
        if conn is None:
            if n:
                with self._io:
                    self._lost += n
            return None
        data = ("\n".join(lines) + "\n").encode("utf-8") if n else b""
        seq = None
        with self._io:
            if conn.dead:  # ended since _connection() returned it: count these here
                self._lost += n
                return None
            conn.written += n
            last = conn.written
            if flush:
                conn.written += 1
                seq = conn.written
                conn.flushes.append(seq)
                conn.waiting.add(seq)
        if flush:
            data += _FLUSH_LINE
        try:
            view = memoryview(data)
            for start in range(0, len(data), _CHUNK):
                conn.sock.sendall(view[start : start + _CHUNK])
        except (OSError, ValueError) as e:
            self._drop_conn(conn, "sending to the daemon failed: %s" % (e or type(e).__name__))
            return None
        with self._io:
            self._sent += n
        return conn, seq, last

    def _connection(self, force):
        """The live connection, or a new one when the back-off allows (``force``: now)."""
        conn = self._conn
        if conn is not None and not conn.dead:
            return conn
        if not force and _monotonic() < self._next_connect:
            return None
        s = None
        try:
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            s.settimeout(self.connect_timeout)
            s.connect(self.socket_path)
            s.settimeout(self.send_timeout)
            if self.debug:
                s.sendall(_DEBUG_HELLO)  # answered by nothing: it is not an event
        except (OSError, ValueError) as e:
            if s is not None:
                s.close()
            self._connect_failed(e)
            return None
        conn = _Conn(s)
        with self._io:
            self._conn = conn
            self._connects += 1
            if self._had_conn:
                self._reconnects += 1
            self._had_conn = True
            self._backoff = self.reconnect_min
            self._next_connect = 0.0
        log.debug("outrigger: connected to %s", self.socket_path)
        threading.Thread(target=self._read_loop, args=(conn,), name="outrigger-answers", daemon=True).start()
        return conn

    def _connect_failed(self, e):
        with self._io:
            self._connect_failures += 1
            self._last_error = "cannot connect to %s: %s" % (self.socket_path, e)
            self._next_connect = _monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.reconnect_max)
            msg = self._last_error
        self._warn_once(msg + "; events are counted as lost until it is there")

    def _warn_once(self, msg):
        if not self._warned:
            self._warned = True
            log.warning("outrigger: %s", msg)
        else:
            log.debug("outrigger: %s", msg)

    def _drop_conn(self, conn, reason, quiet=False):
        """Ends a connection: what it was sent and did not answer is lost. The socket is shut
        down here and closed by its reader thread, so that its descriptor cannot be reused
        while the reader still polls it."""
        with self._io:
            if conn.dead:
                return
            conn.dead = True
            unanswered = conn.written - conn.answered - len(conn.flushes)
            self._lost += unanswered
            if self._conn is conn:
                self._conn = None
                self._next_connect = 0.0  # a daemon that restarted may be back at once
            if not quiet:
                self._last_error = reason
            self._io.notify_all()
        try:
            conn.sock.shutdown(_socket.SHUT_RDWR)  # wakes the reader, which closes the socket
        except OSError:
            pass
        if not quiet:
            self._warn_once("%s; %d unanswered events counted as lost; reconnecting" % (reason, unanswered))

    def _read_loop(self, conn):
        """Counts the daemon's answers on one connection until it closes."""
        sock = conn.sock
        rest = b""
        poller = None
        try:
            if _poll is not None:
                poller = _poll()
                poller.register(sock.fileno(), _POLLIN)
            while not conn.dead:
                if poller is not None:
                    poller.poll()  # no timeout: answers, EOF or our own shutdown() wake it
                try:
                    chunk = sock.recv(65536)
                except _socket.timeout:
                    continue
                if not chunk:
                    break
                data = rest + chunk if rest else chunk
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if cut:
                    self._answers(conn, data[:cut] if rest else data)
        except (OSError, ValueError):
            pass
        except Exception:
            log.debug("outrigger: answer reader error", exc_info=True)
        self._drop_conn(conn, "the daemon closed the connection")
        try:
            sock.close()
        except OSError:
            pass

    def _answers(self, conn, data):
        n = data.count(b"\n")
        ok = data.count(_OK)
        with self._io:
            first = conn.answered + 1
            last = conn.answered + n
            conn.answered = last
            flushes = conn.flushes
            if ok == n and (not flushes or flushes[0] > last):
                self._accepted += n  # the usual case: a success for every event
                if self.debug:
                    self._io.notify_all()  # an observe() waits for this answer
                return
            for i, line in enumerate(data.split(b"\n", n)[:n]):
                seq = first + i
                good = line == _OK_LINE
                err = None if good else _error_text(line)
                if flushes and flushes[0] == seq:
                    flushes.popleft()
                    if seq in conn.waiting:
                        conn.waiting.discard(seq)
                        conn.results[seq] = (good, err)
                    if not good:
                        self._last_error = err
                elif good:
                    self._accepted += 1
                else:
                    self._errors += 1
                    self._last_error = err
            self._io.notify_all()

    # -- flush and close -------------------------------------------------------------------

    def flush(self, timeout=5.0):
        """Sends everything buffered, then waits (at most ``timeout`` seconds) until the daemon
        answers that everything it accepted before is delivered to its sinks. True when it did;
        False when the daemon is absent, went away or did not answer in time. What the daemon
        refused or never got is counted in :attr:`stats` (``errors``, ``lost``)."""
        try:
            timeout = max(0.0, float(timeout))
            deadline = _monotonic() + timeout
            if not self._send_lock.acquire(timeout=timeout):
                return False
            try:
                lines, n = self._take()
                sent = self._deliver(lines, n, flush=True, force=True)
            finally:
                self._send_lock.release()
            if sent is None:
                return False
            conn, seq, _last = sent
            with self._io:
                try:
                    while seq not in conn.results:
                        left = deadline - _monotonic()
                        if conn.dead or left <= 0:
                            return False
                        self._io.wait(left)
                    good, _err = conn.results.pop(seq)
                    return good
                finally:
                    conn.waiting.discard(seq)
        except Exception:
            log.debug("outrigger: flush failed", exc_info=True)
            return False

    def close(self, timeout=None):
        """Flushes (bounded by ``timeout``, default ``exit_timeout``) and closes. Later
        ``observe()`` calls return False and are counted as dropped. Returns flush()'s answer."""
        if self._closed:
            return False
        with self._lock:
            self._max_bytes = -1  # from now on observe() drops: nothing is left behind unsent
        ok = self.flush(self.exit_timeout if timeout is None else timeout)
        self._closed = True
        self._has_data.set()
        self._urgent.set()
        conn = self._conn
        if conn is not None:
            self._drop_conn(conn, "closed", quiet=ok)
        _clients.discard(self)
        return ok

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    # -- stats -----------------------------------------------------------------------------

    @property
    def stats(self):
        """A snapshot of the counters (of events, unless named otherwise):

        ``queued``: observe() calls that were buffered; ``dropped``: refused because the buffer
        was full (or the client closed); ``invalid``: could not be encoded; ``buffered``: waiting
        to be sent now; ``sent``: written to the daemon; ``accepted``: answered with success;
        ``errors``: answered with ``success: false``; ``lost``: never reached the daemon, or
        written without an answer before the connection ended; ``connects``, ``reconnects``
        (connects after the first) and ``connect_failures``; ``connected``; ``last_error``.
        Once everything is answered, ``queued == accepted + errors + lost + buffered``.
        """
        with self._lock:
            queued, dropped, invalid, buffered = self._queued, self._dropped, self._invalid, len(self._buf)
        with self._io:
            conn = self._conn
            return {
                "queued": queued,
                "dropped": dropped,
                "invalid": invalid,
                "buffered": buffered,
                "sent": self._sent,
                "accepted": self._accepted,
                "errors": self._errors,
                "lost": self._lost,
                "connects": self._connects,
                "reconnects": self._reconnects,
                "connect_failures": self._connect_failures,
                "connected": conn is not None and not conn.dead,
                "last_error": self._last_error,
            }

    # -- sampling --------------------------------------------------------------------------

    def should_sample(self, type, run_id=None):
        """Whether the daemon would keep an event of this type (so it is worth building).

        Answers from the daemon's sampling table, fetched in the background every
        ``sampling_refresh`` seconds: true at rate 1, false at 0, else a random draw against
        the rate or, given ``run_id``, the daemon's own hash of it (the answer the daemon gives
        with ``sampling.key: run_id``). A boosted type answers true. True while the table is
        unknown (daemon absent). Never raises, never blocks.
        """
        if self._sampling_thread is None:
            self._start_sampling()
        try:
            r = self._rates.get(type, self._default_rate)
            if r >= 1.0:
                return True
            if r <= 0.0:
                return False
            if run_id is None:
                return _random() < r
            u = self._run_units.get(run_id)
            if u is None:
                if len(self._run_units) >= 4096:
                    self._run_units = {}
                u = self._run_units[run_id] = _fnv1a_unit(run_id)
            return u < r
        except Exception:
            return True

    def _start_sampling(self):
        with self._io:
            if self._sampling_thread is not None:
                return
            t = threading.Thread(target=self._sampling_loop, name="outrigger-sampling", daemon=True)
            self._sampling_thread = t
        t.start()

    def _sampling_loop(self):
        me = threading.current_thread()
        while not self._closed and self._sampling_thread is me:
            self.refresh_sampling()
            time.sleep(self.sampling_refresh)

    def refresh_sampling(self):
        """Fetches the sampling table now; True when the daemon answered."""
        r = self.control.get("/v1/sampling")
        if r is not None and r[0] == 200 and isinstance(r[1], dict):
            self._apply_table(r[1])
            self._sampling_failures = 0
            return True
        self._sampling_failures += 1
        if self._sampling_failures >= 3:  # the daemon is gone: back to unknown, sample all
            self._rates, self._default_rate = {}, 1.0
        return False

    def _apply_table(self, table):
        try:
            default = float(table.get("default_rate", 1.0))
            rates = {str(k): float(v) for k, v in (table.get("rates") or {}).items()}
            for b in table.get("boosts") or []:
                kind = b.get("type")
                if kind in ("*", "_other"):
                    default, rates = 1.0, {}  # the boost factor is not published: assume kept
                    break
                rates[kind] = 1.0
        except (TypeError, ValueError, AttributeError):
            return
        self._rates, self._default_rate = rates, default

    # -- control API -----------------------------------------------------------------------

    def report_anomaly(self, type, reason=""):
        """``POST /v1/anomaly``: boosts the daemon's sampling of ``type``. True when accepted."""
        try:
            r = self.control.request("POST", "/v1/anomaly", {"type": type, "reason": reason})
            if r is None or r[0] >= 300:
                return False
            if isinstance(r[1], dict) and r[1].get("boosts") is not None:
                self._apply_table({"default_rate": self._default_rate, "rates": self._rates, "boosts": r[1]["boosts"]})
            return True
        except Exception:
            return False

    def set_rate(self, type, rate):
        """``PUT /v1/sampling``: the daemon's rate for ``type`` (``None``: the default rate).
        The cached table follows at once. True when the daemon took it."""
        try:
            body = {"default_rate": float(rate)} if type is None else {"rates": {type: float(rate)}}
            r = self.control.request("PUT", "/v1/sampling", body)
            if r is None or r[0] >= 300:
                return False
            if isinstance(r[1], dict):
                self._apply_table(r[1])
            return True
        except Exception:
            return False

    def health(self):
        """``GET /v1/health`` as a dict (``status``, ``components``), or None when absent."""
        try:
            r = self.control.get("/v1/health")
            # 503 is the daemon saying "unhealthy", with its report; 401 and the rest are not.
            if r is None or r[0] not in (200, 503) or not isinstance(r[1], dict) or "status" not in r[1]:
                return None
            return r[1]
        except Exception:
            return None


def _error_text(line):
    try:
        return str(json.loads(line).get("error") or line.decode("utf-8", "replace"))
    except Exception:
        return line.decode("utf-8", "replace")


# Every live client, for the exit flush and the fork hook (weak: a dropped client is forgotten).
_clients = weakref.WeakSet()
# Run at exit after every client has flushed (a Sidecar stops its daemon here, so that the
# clients' last events reach it first).
_after_exit_flush = []


def _at_exit():
    for c in list(_clients):
        try:
            c.close()
        except Exception:
            pass
    for fn in _after_exit_flush:
        try:
            fn()
        except Exception:
            pass


def _after_fork_in_child():
    for c in list(_clients):
        try:
            c._after_fork_in_child()
        except Exception:
            pass


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
