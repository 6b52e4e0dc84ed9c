"""Shipping spans to any OTLP/HTTP collector.

Requests are OTLP protobuf, gzipped: spans built from event logs are written straight into
``ExportTraceServiceRequest`` messages (``otlp_encode``), SDK ``ReadableSpan`` objects go through
the SDK's own encoder, and bodies encoded elsewhere (the worker processes of ``wft export``)
are posted as they are. Sending follows the OTLP exporter specification and the OTel SDK's
exporter: retry with exponential backoff and jitter on 429/502/503/504 and on connection errors,
``Retry-After`` honoured, all within ``timeout``; a failure becomes an ``ExportError`` that says
why, never a silent drop.

The endpoint is resolved the way users expect (``--otlp`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
a base URL, ``/v1/traces`` is appended; ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as is), as
are the exporter's headers and TLS files (``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``,
``…_CERTIFICATE``, ``…_CLIENT_CERTIFICATE``, ``…_CLIENT_KEY``) and the proxy variables.
"""

from __future__ import annotations

import email.utils
import gzip
import math
import os
import random
import time
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import urllib3
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.util.re import parse_env_headers

from . import __version__
from .otlp_encode import OtlpEncoder, RequestBatcher
from .runtrace import SpanData

__all__ = ["ExportError", "OtlpSink", "gzip_body", "run_resource", "traces_endpoint"]

DEFAULT_ENDPOINT = "http://localhost:4318"
#: the OTel SDK exporter's retry policy: statuses worth retrying, attempts, jitter
RETRYABLE = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 6
_JITTER = 0.2
#: fast and still about 12× smaller on span batches; the SDK's level 9 costs 3× the time for 10% fewer bytes
GZIP_LEVEL = 3


class ExportError(Exception):
    """An export that failed after the retries. ``status``: the receiver's last HTTP status (None
    when none answered), so a caller can tell a refusal of the data (400, 413) from one of anything."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


def gzip_body(body: bytes) -> bytes:
    """A request body as ``OtlpSink.post(..., gzipped=True)`` takes it (workers compress their own)."""
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)


def _env(name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or HTTP-date), if it holds one."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, moment.timestamp() - time.time())
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _connection_problem(error: Exception) -> str:
    """The OS's words for a connection that failed (urllib3 wraps them with object reprs)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    text = str(error)
    return text.split(">: ", 1)[-1] if text.startswith("<") else text


def _pool(endpoint: str) -> urllib3.PoolManager:
    """Connections to ``endpoint``: through the proxy the environment names for it, with the TLS
    files the OTLP variables name."""
    tls: dict[str, Any] = {}
    if _env("CERTIFICATE"):
        tls["ca_certs"] = str(_env("CERTIFICATE"))
    if _env("CLIENT_CERTIFICATE"):
        tls["cert_file"] = str(_env("CLIENT_CERTIFICATE"))
    if _env("CLIENT_KEY"):
        tls["key_file"] = str(_env("CLIENT_KEY"))
    parts = urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, **tls)
    return urllib3.PoolManager(**tls)


class OtlpSink:
    """Sends spans in batches; ``send``/``send_data``/``post`` return only once acknowledged."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 10.0,
        batch_size: int = 512,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.endpoint = traces_endpoint(endpoint)
        self.timeout = timeout
        self.batch_size = batch_size
        # as the SDK exporter: the variable's headers, then the caller's (names are case-insensitive)
        configured = {**parse_env_headers(_env("HEADERS") or "", liberal=True), **(headers or {})}
        self.headers = {
            **{name.lower(): value for name, value in configured.items()},
            "content-type": "application/x-protobuf",
            "content-encoding": "gzip",
            "user-agent": f"workflow-telemetry/{__version__}",
        }
        self._http = _pool(self.endpoint)
        self.sent = 0

    def send(self, spans: Sequence[ReadableSpan]) -> None:
        """SDK spans, encoded by the SDK's encoder."""
        for start in range(0, len(spans), self.batch_size):
            batch = spans[start : start + self.batch_size]
            self.post(encode_spans(batch).SerializeToString(), len(batch))

    def send_data(self, spans: Sequence[SpanData], resource: Resource) -> None:
        """Built spans, encoded straight to OTLP (``otlp_encode``)."""
        batcher = RequestBatcher(OtlpEncoder(resource), self.batch_size)
        bodies = batcher.add(spans)
        last = batcher.flush()
        for body, count in [*bodies, last] if last is not None else bodies:
            self.post(body, count)

    def post(self, body: bytes, spans: int, *, gzipped: bool = False) -> None:
        """One serialized ``ExportTraceServiceRequest`` of ``spans`` spans (``gzipped``: already
        compressed by ``gzip_body``); raises ``ExportError`` once retrying cannot help."""
        data = body if gzipped else gzip_body(body)
        deadline = time.monotonic() + self.timeout
        status: int | None = None
        reason = "no attempt"
        for attempt in range(MAX_ATTEMPTS):
            backoff = 2**attempt * random.uniform(1 - _JITTER, 1 + _JITTER)
            left = deadline - time.monotonic()
            try:
                response = self._http.request(
                    "POST",
                    self.endpoint,
                    body=data,
                    headers=self.headers,
                    timeout=urllib3.Timeout(total=max(left, 0.001)),
                    retries=False,
                    redirect=False,
                )
            except urllib3.exceptions.HTTPError as error:  # no connection, or none that answered in time
                reason = _connection_problem(error)
                status = None
            else:
                status = response.status
                if 200 <= status < 300:
                    self.sent += spans
                    return
                reason = f"HTTP {status} {response.reason or ''}".rstrip()
                detail = response.data[:200].decode(errors="replace").strip()
                if detail and response.headers.get("Content-Type", "").startswith(("text/", "application/json")):
                    reason += f": {detail}"
                if status not in RETRYABLE:
                    break
                asked = _retry_after(response.headers.get("Retry-After"))
                backoff = backoff if asked is None else asked
            if attempt + 1 == MAX_ATTEMPTS or backoff > deadline - time.monotonic():
                break
            time.sleep(backoff)
        what = "gave up" if status in RETRYABLE or status is None else "was refused"
        raise ExportError(f"OTLP export of {spans} spans to {self.endpoint} failed ({what}): {reason}", status=status)

    def close(self) -> None:
        self._http.clear()
