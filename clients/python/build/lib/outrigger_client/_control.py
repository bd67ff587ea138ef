"""A small HTTP client for the daemon's control API (health, sampling, anomalies, readiness).

In: a base URL (``OUTRIGGER_CONTROL_URL``, default ``http://127.0.0.1:9464``), an optional API key
(``OUTRIGGER_API_KEY``, sent as ``Authorization: Bearer``), a method, a path and an optional JSON
body. Out: ``(status, parsed JSON or None)``, or ``None`` when the daemon could not be reached or
did not answer within the timeout. It never raises and never waits longer than its timeout per
phase (connect, send, read). It holds no connection between calls and no thread: nothing to stop.
It uses :mod:`http.client` directly, so proxy settings in the environment never apply to the
loopback control API.
"""

import http.client
import json
import os
from urllib.parse import urlsplit

DEFAULT_CONTROL_URL = "http://127.0.0.1:9464"


class Control:
    """Requests to one control API. Thread-safe: every call uses its own connection."""

    def __init__(self, url=None, api_key=None, timeout=1.0):
        url = url or os.environ.get("OUTRIGGER_CONTROL_URL") or DEFAULT_CONTROL_URL
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        key = api_key if api_key is not None else os.environ.get("OUTRIGGER_API_KEY")
        self._headers = {"Accept": "application/json"}
        if key:
            self._headers["Authorization"] = "Bearer " + key
        self.timeout = timeout

    def request(self, method, path, body=None, timeout=None):
        """``(status, json_or_None)``, or ``None`` when unreachable or too slow."""
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout if timeout is None else timeout)
        headers = dict(self._headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._prefix + path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(4 * 1024 * 1024)
            try:
                value = json.loads(raw) if raw else None
            except ValueError:
                value = None
            return resp.status, value
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()

    def get(self, path, timeout=None):
        return self.request("GET", path, timeout=timeout)
