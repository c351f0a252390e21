"""OpenTelemetry tracing, an optional extra (``pip install 'umarvel-search[tracing]'``).

With ``UMARVEL_TRACING`` set, each process traces what it does under one trace per request:
the API's request (Flask), the tasks it sends and the workers' runs of them (Celery, the
trace context travelling in the task headers), and every SQL statement (SQLAlchemy), Redis
command and Milvus call (gRPC) made on the way. ``UMARVEL_TRACING``:

- ``otlp``: spans go to an OpenTelemetry collector, configured by the standard
  ``OTEL_EXPORTER_OTLP_*`` variables (needs ``opentelemetry-exporter-otlp``);
- ``jsonl:PATH``: each span is appended to PATH as one JSON line, from every process (for
  tests and for looking at one request by hand).

A process is named by ``OTEL_SERVICE_NAME`` if set, else by its role: ``umarvel-api``, or
``umarvel-worker-<queues>``. Without the setting nothing is imported and nothing is traced.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core.errors import InvalidRequest

if TYPE_CHECKING:
    from flask import Flask

    from core.settings import Settings

_setup = threading.Lock()
_done = False


def setup(settings: Settings, role: str, app: Flask | None = None) -> bool:
    """Trace this process as ``role`` when the settings ask for it (once a process; the
    Flask ``app`` instrumented too). Returns whether tracing is on."""
    global _done
    if not settings.tracing:
        return False
    with _setup:
        if not _done:
            _install(settings.tracing, os.environ.get("OTEL_SERVICE_NAME") or role)
            _done = True
    if app is not None:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(app)
    return True


def _install(target: str, service: str) -> None:
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise InvalidRequest(
            "UMARVEL_TRACING needs the tracing extra "
            f"(pip install 'umarvel-search[tracing]'): {exc}"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if target.startswith("jsonl:"):
        provider.add_span_processor(SimpleSpanProcessor(json_lines_exporter(target[6:])))
    elif target == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise InvalidRequest(
                "UMARVEL_TRACING=otlp needs opentelemetry-exporter-otlp-proto-http"
            ) from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise InvalidRequest(f"UMARVEL_TRACING must be otlp or jsonl:PATH, not {target!r}")
    trace.set_tracer_provider(provider)
    # Patched where the clients are made: call before the engines, Redis clients and Milvus
    # channels of this process exist.
    # SQLAlchemy 2.1 is past the range it declares (< 2.1); its engine events are the same.
    SQLAlchemyInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    RedisInstrumentor().instrument(tracer_provider=provider)
    GrpcInstrumentorClient().instrument(tracer_provider=provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)


def json_lines_exporter(path: str) -> Any:
    """A span exporter that appends each span, as one JSON object, to ``path``: a file the
    processes of a deployment share (each batch one ``write`` to a file opened for
    appending)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLines(SpanExporter):
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            lines = "".join(json.dumps(json.loads(span.to_json())) + "\n" for span in spans)
            with self._lock, open(path, "a", encoding="utf-8") as handle:
                handle.write(lines)
            return SpanExportResult.SUCCESS

    return JsonLines()
