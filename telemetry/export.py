"""Shipping spans to any OTLP/HTTP collector with the OpenTelemetry exporter.

Protobuf encoding, gzip and retry with backoff on 429/503 are the exporter's own; this module
resolves the endpoint the way users expect (``--otlp`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is a
base URL, ``/v1/traces`` is appended; ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as is),
builds the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and turns a failed
export into an ``ExportError`` with the reason the exporter logged, never a silent drop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from . import __version__

__all__ = ["ExportError", "OtlpSink", "run_resource", "traces_endpoint"]

DEFAULT_ENDPOINT = "http://localhost:4318"
_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http"


class ExportError(Exception):
    """An export that failed after the exporter's retries."""


def traces_endpoint(base: str | None = None) -> str:
    """The full ``…/v1/traces`` URL from a base URL (a full one is kept), or from the OTLP env vars."""
    if base:
        base = base.rstrip("/")
        return base if base.endswith("/v1/traces") else base + "/v1/traces"
    full = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if full:
        return full
    return (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/") + "/v1/traces"


def run_resource(world: str | None = None) -> Resource:
    """The resource of rebuilt run traces; ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` win."""
    attributes: dict[str, str] = {
        "telemetry.distro.name": "workflow-telemetry",
        "telemetry.distro.version": __version__,
    }
    if world:
        attributes["workflow.world"] = world
    resource = Resource.create(attributes)
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        resource = resource.merge(Resource({"service.name": "workflow-runs"}))
    return resource


class _LastError(logging.Handler):
    """Keeps the exporter's last complaint, so a failure can say why."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


class OtlpSink:
    """Sends spans in batches; ``send`` returns only when every batch was acknowledged."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 10.0,
        batch_size: int = 512,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.endpoint = traces_endpoint(endpoint)
        self.batch_size = batch_size
        self._exporter = OTLPSpanExporter(
            endpoint=self.endpoint, timeout=timeout, compression=Compression.Gzip, headers=headers
        )
        self.sent = 0

    def send(self, spans: Sequence[ReadableSpan]) -> None:
        watcher = _LastError()
        logger = logging.getLogger(_EXPORTER_LOGGER)
        logger.addHandler(watcher)
        try:
            for start in range(0, len(spans), self.batch_size):
                batch = spans[start : start + self.batch_size]
                if self._exporter.export(batch) is not SpanExportResult.SUCCESS:
                    reason = f": {watcher.message}" if watcher.message else ""
                    raise ExportError(f"OTLP export of {len(batch)} spans to {self.endpoint} failed{reason}")
                self.sent += len(batch)
        finally:
            logger.removeHandler(watcher)

    def close(self) -> None:
        self._exporter.shutdown()
