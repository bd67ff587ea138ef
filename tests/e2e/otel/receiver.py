#!/usr/bin/env python3
"""A small OTLP/HTTP logs receiver, for testing the daemon's `otlp` sink end to end.

What flows in: `POST /v1/logs` with an OTLP `ExportLogsServiceRequest` in protobuf
(`Content-Type: application/x-protobuf`, optionally `Content-Encoding: gzip`), as an OTLP/HTTP
exporter sends it. With `--accept-traces`, `POST /v1/traces` with an `ExportTraceServiceRequest`
too (used to check tests/e2e/otel/export.py without the daemon).

What flows out:
- stdout: one line `listening PORT` once the socket is bound, and nothing else.
- `--out FILE`: NDJSON, one line per decoded log record, flushed after each request:
  {"resource": {attrs}, "scope": {"name", "version"}, "time_unix_nano", "observed_time_unix_nano",
   "severity_number", "severity_text", "event_name", "body", "attributes": {k: v},
   "trace_id": hex or "", "span_id": hex or ""}
  AnyValues become Python values: string, int, double, bool, bytes (base64 string), array
  (list), kvlist (dict), empty (null). With `--accept-traces`, each span is a line
  {"span": {...}} in the same file (see span_line below).
- answers: 200 with an empty `Export*ServiceResponse` (protobuf); 503 for the first
  `--fail-first N` POSTs (to exercise the sender's retry); 415 when the body is not protobuf;
  400 (a google.rpc.Status with the message) when it cannot be decoded; 404 for other paths.

How it stops: on SIGTERM or SIGINT it stops serving, closes the out file and exits 0.

Usage: receiver.py --out records.ndjson [--port 0] [--host 127.0.0.1] [--fail-first N]
       [--accept-traces]
"""

import argparse
import base64
import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"


def any_value(value):
    """An OTLP AnyValue as a plain Python value (JSON-friendly)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return key_values(value.kvlist_value.values)
    return getattr(value, kind)  # string_value, bool_value, int_value, double_value


def key_values(pairs):
    """A repeated KeyValue as a dict."""
    return {kv.key: any_value(kv.value) for kv in pairs}


def scope_dict(scope):
    return {"name": scope.name, "version": scope.version}


def log_lines(request):
    """One dict per log record in an ExportLogsServiceRequest."""
    for resource_logs in request.resource_logs:
        resource = key_values(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            scope = scope_dict(scope_logs.scope)
            for record in scope_logs.log_records:
                yield {
                    "resource": resource,
                    "scope": scope,
                    "time_unix_nano": record.time_unix_nano,
                    "observed_time_unix_nano": record.observed_time_unix_nano,
                    "severity_number": record.severity_number,
                    "severity_text": record.severity_text,
                    "event_name": record.event_name,
                    "body": any_value(record.body),
                    "attributes": key_values(record.attributes),
                    "trace_id": record.trace_id.hex(),
                    "span_id": record.span_id.hex(),
                }


def span_lines(request):
    """One {"span": {...}} dict per span in an ExportTraceServiceRequest."""
    for resource_spans in request.resource_spans:
        resource = key_values(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_dict(scope_spans.scope)
            for span in scope_spans.spans:
                yield {
                    "span": {
                        "resource": resource,
                        "scope": scope,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "start_time_unix_nano": span.start_time_unix_nano,
                        "end_time_unix_nano": span.end_time_unix_nano,
                        "status": {"code": span.status.code, "message": span.status.message},
                        "attributes": key_values(span.attributes),
                        "events": [
                            {
                                "name": event.name,
                                "time_unix_nano": event.time_unix_nano,
                                "attributes": key_values(event.attributes),
                            }
                            for event in span.events
                        ],
                    }
                }


# path -> (request class, response class, function turning a request into out-file lines)
SIGNALS = {
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse, log_lines),
}
TRACES = {
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse, span_lines),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as OTLP exporters expect

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # stdout carries only `listening PORT`; stay quiet on stderr too

    def reply(self, code, body=b"", content_type=PROTOBUF, headers=None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def reply_status(self, code, grpc_code, message):
        """An error answer as OTLP/HTTP says: a google.rpc.Status in protobuf."""
        status = status_pb2.Status(code=grpc_code, message=message)
        self.reply(code, status.SerializeToString())

    def read_body(self):
        """The request body, or None (after answering) when it cannot be read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            self.reply(411, b"Content-Length required\n", "text/plain")
            return None
        return self.rfile.read(int(length))

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.read_body()
        if body is None:
            return
        server = self.server
        with server.lock:
            server.posts += 1
            failing = server.posts <= server.fail_first
        if failing:
            self.reply_status(503, 14, "failing on purpose (--fail-first)")  # 14: UNAVAILABLE
            return

        path = self.path.split("?")[0]
        handling = server.routes.get(path)
        if handling is None:
            self.reply(404, b"not found\n", "text/plain")
            return
        request_class, response_class, to_lines = handling

        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != PROTOBUF:
            self.reply(415, f"expected {PROTOBUF}, got {content_type!r}\n".encode(), "text/plain")
            return
        try:
            if self.headers.get("Content-Encoding", "").strip().lower() == "gzip":
                body = gzip.decompress(body)
            request = request_class.FromString(body)
            lines = [json.dumps(line) + "\n" for line in to_lines(request)]
        except Exception as error:  # a bad gzip stream or protobuf message
            self.reply_status(400, 3, f"cannot decode request: {error}")  # 3: INVALID_ARGUMENT
            return

        with server.lock:
            server.out.writelines(lines)
            server.out.flush()
        self.reply(200, response_class().SerializeToString())

    def do_GET(self):  # noqa: N802
        self.reply(405, b"POST only\n", "text/plain")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="NDJSON file, one line per log record")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N POSTs 503")
    parser.add_argument(
        "--accept-traces", action="store_true", help="also take POST /v1/traces ({\"span\"} lines)"
    )
    args = parser.parse_args()

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.posts = 0
    server.fail_first = args.fail_first
    server.routes = dict(SIGNALS, **(TRACES if args.accept_traces else {}))
    server.out = open(args.out, "a", encoding="utf-8")

    def stop(_signum, _frame):
        # shutdown() waits for serve_forever() to return, so it must not run on its thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        with server.lock:
            server.out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
