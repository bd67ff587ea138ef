#!/usr/bin/env python3
"""Export spans and log records with the real OpenTelemetry Python SDK to an OTLP receiver.

What flows out: over OTLP/HTTP (protobuf, to ENDPOINT/v1/traces and ENDPOINT/v1/logs) or
OTLP/gRPC (insecure, to ENDPOINT), through BatchSpanProcessor and BatchLogRecordProcessor:
- `--traces N` traces of `--spans-per-trace M` spans: one root span `root T` and M-1 children
  `child T.J`, each child ended before its root. Every span has the attributes
  {"i": <span index, counting from 0 across all traces>, "http.method": "GET"}; the tracer is
  `e2e.tracer` version `1.0`. In the first `--error-traces K` traces the last child has the
  status ERROR "boom" and an `exception` span event (the root too when M is 1).
- `--logs L` log records from the logger `e2e.logger` version `1.0`: body `log K`, a severity
  cycling DEBUG/INFO/WARN/ERROR, attributes {"i": K, "kind": "log"}. The even-numbered ones are
  emitted inside a span (the first child of trace (K/2) mod N, or its root when M is 1), so
  they carry its trace and span id; the odd-numbered ones (and all of them when N is 0) have
  none.
- the resource: service.name (`--service`, default `otel-e2e`), deployment.environment=test,
  and the SDK's own telemetry.sdk.* and service.instance.id.

What it prints: once everything has been flushed and the providers shut down, ONE JSON object
on stdout, the manifest of what was sent:
  {"resource": {attrs},
   "traces": [{"trace_id": 32 hex, "error": bool,
               "spans": [{"span_id": 16 hex, "parent_span_id": 16 hex or null, "name",
                          "status": "unset"|"ok"|"error", "attributes": {...}}]}],
   "logs": [{"body", "severity_text", "severity_number", "attributes": {...},
             "trace_id": 32 hex or null, "span_id": 16 hex or null}]}
The root span is first in each trace's `spans`; logs are in the order of `i`.

How it stops: by itself, once exported. Exit status 0 when every export succeeded; 1 (manifest
not printed, the reason on stderr) when a force_flush returned False or any batch failed to
export (the exporters retry transient failures within `--timeout` first).

Usage: export.py --protocol http|grpc --endpoint URL [--traces N] [--spans-per-trace M]
       [--error-traces K] [--logs L] [--no-traces] [--service NAME] [--gzip] [--timeout S]
"""

import argparse
import json
import sys
import time

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode, format_span_id, format_trace_id

SEVERITIES = [
    (SeverityNumber.DEBUG, "DEBUG"),
    (SeverityNumber.INFO, "INFO"),
    (SeverityNumber.WARN, "WARN"),
    (SeverityNumber.ERROR, "ERROR"),
]


class CheckedSpanExporter(SpanExporter):
    """Passes spans to the real exporter and remembers whether any batch failed."""

    def __init__(self, inner):
        self.inner = inner
        self.failed = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result != SpanExportResult.SUCCESS:
            self.failed += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


class CheckedLogExporter(LogRecordExporter):
    """Passes log records to the real exporter and remembers whether any batch failed."""

    def __init__(self, inner):
        self.inner = inner
        self.failed = 0

    def export(self, batch):
        result = self.inner.export(batch)
        if result != LogRecordExportResult.SUCCESS:
            self.failed += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def make_exporters(protocol, endpoint, gzip, timeout):
    """The SDK's OTLP span and log exporters for the protocol."""
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = endpoint.rstrip("/")
        compression = Compression.Gzip if gzip else Compression.NoCompression
        # Given an endpoint, the HTTP exporters take it as the full URL of the signal.
        spans = OTLPSpanExporter(
            endpoint=base + "/v1/traces", compression=compression, timeout=timeout
        )
        logs = OTLPLogExporter(endpoint=base + "/v1/logs", compression=compression, timeout=timeout)
    else:
        from grpc import Compression
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        compression = Compression.Gzip if gzip else Compression.NoCompression
        spans = OTLPSpanExporter(
            endpoint=endpoint, insecure=True, compression=compression, timeout=timeout
        )
        logs = OTLPLogExporter(
            endpoint=endpoint, insecure=True, compression=compression, timeout=timeout
        )
    return CheckedSpanExporter(spans), CheckedLogExporter(logs)


def hex_or_none(value, formatter):
    return formatter(value) if value else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["http", "grpc"], required=True)
    parser.add_argument(
        "--endpoint",
        required=True,
        help="http: base URL like http://127.0.0.1:4318; grpc: like http://127.0.0.1:4317",
    )
    parser.add_argument("--traces", type=int, default=20)
    parser.add_argument("--spans-per-trace", type=int, default=4)
    parser.add_argument("--error-traces", type=int, default=2)
    parser.add_argument("--logs", type=int, default=10)
    parser.add_argument("--no-traces", action="store_true", help="the same as --traces 0")
    parser.add_argument("--service", default="otel-e2e", help="resource service.name")
    parser.add_argument("--gzip", action="store_true", help="gzip-compress the exports")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for each export")
    args = parser.parse_args()
    n_traces = 0 if args.no_traces else args.traces
    per_trace = max(1, args.spans_per_trace)

    resource = Resource.create({"service.name": args.service, "deployment.environment": "test"})
    span_exporter, log_exporter = make_exporters(args.protocol, args.endpoint, args.gzip, args.timeout)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    tracer = tracer_provider.get_tracer("e2e.tracer", "1.0")
    logger = logger_provider.get_logger("e2e.logger", "1.0")

    manifest_logs = []

    def emit_log(k, in_span):
        severity_number, severity_text = SEVERITIES[k % len(SEVERITIES)]
        attributes = {"i": k, "kind": "log"}
        body = f"log {k}"
        # The SDK takes the trace and span id from the current context (the active span).
        logger.emit(
            timestamp=time.time_ns(),
            body=body,
            severity_number=severity_number,
            severity_text=severity_text,
            attributes=attributes,
        )
        context = in_span.get_span_context() if in_span is not None else None
        manifest_logs.append(
            {
                "body": body,
                "severity_text": severity_text,
                "severity_number": int(severity_number.value),
                "attributes": attributes,
                "trace_id": format_trace_id(context.trace_id) if context else None,
                "span_id": format_span_id(context.span_id) if context else None,
            }
        )

    # Even-numbered logs go inside a span of trace (k/2) mod N; the rest outside any span.
    logs_in_trace = {}
    for k in range(0, args.logs, 2):
        if n_traces:
            logs_in_trace.setdefault((k // 2) % n_traces, []).append(k)
    outside_logs = [k for k in range(args.logs) if not n_traces or k % 2 == 1]

    traces = []
    span_index = 0
    for t in range(n_traces):
        error = t < args.error_traces
        ended = []  # the SDK spans of this trace, root last
        with tracer.start_as_current_span(
            f"root {t}", attributes={"i": span_index, "http.method": "GET"}
        ) as root:
            span_index += 1
            if per_trace == 1:
                for k in logs_in_trace.get(t, []):
                    emit_log(k, root)
            for j in range(1, per_trace):
                with tracer.start_as_current_span(
                    f"child {t}.{j}", attributes={"i": span_index, "http.method": "GET"}
                ) as child:
                    span_index += 1
                    if j == 1:
                        for k in logs_in_trace.get(t, []):
                            emit_log(k, child)
                    if error and j == per_trace - 1:
                        child.record_exception(RuntimeError("boom"))
                        child.set_status(StatusCode.ERROR, "boom")
                ended.append(child)
            if error and per_trace == 1:
                root.record_exception(RuntimeError("boom"))
                root.set_status(StatusCode.ERROR, "boom")
        ended.append(root)

        spans = []
        for span in [ended[-1]] + ended[:-1]:  # root first
            context = span.get_span_context()
            spans.append(
                {
                    "span_id": format_span_id(context.span_id),
                    "parent_span_id": hex_or_none(span.parent and span.parent.span_id, format_span_id),
                    "name": span.name,
                    "status": span.status.status_code.name.lower(),
                    "attributes": dict(span.attributes),
                }
            )
        traces.append(
            {
                "trace_id": format_trace_id(root.get_span_context().trace_id),
                "error": error,
                "spans": spans,
            }
        )

    for k in outside_logs:
        emit_log(k, None)
    manifest_logs.sort(key=lambda log: log["attributes"]["i"])

    timeout_millis = int(args.timeout * 1000 * 3)
    flushed_spans = tracer_provider.force_flush(timeout_millis)
    flushed_logs = logger_provider.force_flush(timeout_millis)
    tracer_provider.shutdown()
    logger_provider.shutdown()

    problems = []
    if not flushed_spans:
        problems.append("the TracerProvider's force_flush returned False")
    if not flushed_logs:
        problems.append("the LoggerProvider's force_flush returned False")
    if span_exporter.failed:
        problems.append(f"{span_exporter.failed} span batch(es) failed to export")
    if log_exporter.failed:
        problems.append(f"{log_exporter.failed} log batch(es) failed to export")
    if problems:
        print("export.py: " + "; ".join(problems), file=sys.stderr)
        return 1

    manifest = {"resource": dict(resource.attributes), "traces": traces, "logs": manifest_logs}
    print(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
