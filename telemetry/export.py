"""Shipping spans to any OTLP collector (OTLP/HTTP here, OTLP/gRPC in ``export_grpc``).

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
``…_CERTIFICATE``, ``…_CLIENT_CERTIFICATE``, ``…_CLIENT_KEY``) and the proxy variables. The
transport is the one ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` names (``open_sink``): an environment
set up for an app that exports over gRPC exports our run traces over gRPC too.
"""

from __future__ import annotations

import email.utils
import gzip
import math
import os
import random
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import urllib3
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.util.re import parse_env_headers

from . import __version__
from .otlp_encode import OtlpEncoder, RequestBatcher
from .runtrace import SpanData

__all__ = [
    "MAX_ATTEMPTS",
    "PROTOCOLS",
    "USER_AGENT",
    "ExportError",
    "OtlpSink",
    "Sink",
    "configured_headers",
    "gzip_body",
    "packer",
    "open_sink",
    "otlp_env",
    "otlp_protocol",
    "run_resource",
    "traces_endpoint",
]

DEFAULT_ENDPOINT = "http://localhost:4318"
#: the OTel SDK exporter's retry policy: statuses worth retrying, attempts, jitter
RETRYABLE = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 6
_JITTER = 0.2
#: fast and still about 12× smaller on span batches; the SDK's level 9 costs 3× the time for 10% fewer bytes
GZIP_LEVEL = 3
USER_AGENT = f"workflow-telemetry/{__version__}"


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


def packer(gzip_bodies: bool) -> Callable[[bytes], bytes]:
    """How a worker process hands its request bodies to a sink whose ``Sink.gzip_bodies`` is
    ``gzip_bodies``: gzipped (``gzip_body``), or as they are."""
    return gzip_body if gzip_bodies else _as_is


def _as_is(body: bytes) -> bytes:
    return body


def otlp_env(name: str) -> str | None:
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
    if otlp_env("CERTIFICATE"):
        tls["ca_certs"] = str(otlp_env("CERTIFICATE"))
    if otlp_env("CLIENT_CERTIFICATE"):
        tls["cert_file"] = str(otlp_env("CLIENT_CERTIFICATE"))
    if otlp_env("CLIENT_KEY"):
        tls["key_file"] = str(otlp_env("CLIENT_KEY"))
    parts = urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, **tls)
    return urllib3.PoolManager(**tls)


def configured_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """What an exporter sends besides the spans, as the SDK exporter takes them: the variable's
    headers (``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``), then the caller's; names lower-cased."""
    configured = {**parse_env_headers(otlp_env("HEADERS") or "", liberal=True), **(headers or {})}
    return {name.lower(): value for name, value in configured.items()}


#: the values of ``OTEL_EXPORTER_OTLP_PROTOCOL``
PROTOCOLS = ("http/protobuf", "http/json", "grpc")


def otlp_protocol(given: str | None = None) -> str:
    """The OTLP transport to export with: ``given`` (a flag), else ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``,
    else ``http/protobuf``; ``ValueError`` for anything else than the spec's three values
    (``http/json`` is sent as protobuf: every OTLP/HTTP receiver takes both)."""
    protocol = (given or otlp_env("PROTOCOL") or "http/protobuf").strip().lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTLP protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    return protocol


def open_sink(
    endpoint: str | None = None, *, protocol: str | None = None, timeout: float = 10.0, batch_size: int = 512
) -> Sink:
    """The sink for ``endpoint`` (a base URL; None: the OTel variables) over the protocol the
    flag or the OTel variables name (``otlp_protocol``): OTLP/HTTP, or OTLP/gRPC (``export_grpc``)."""
    if otlp_protocol(protocol) == "grpc":
        from .export_grpc import GrpcSink  # grpc is loaded only by an export that speaks it

        return GrpcSink(endpoint, timeout=timeout, batch_size=batch_size)
    return OtlpSink(endpoint, timeout=timeout, batch_size=batch_size)


class Sink:
    """Sends spans in batches; ``send``/``send_data``/``post`` return only once acknowledged.
    A transport implements ``_open`` (the endpoint it sends to, from ``endpoint`` or the OTel
    variables, and its connection), ``_prepare``, ``_attempt`` (one try) and ``close``, and says
    in ``gzip_bodies`` how the bodies others prepare for it (export workers) should come."""

    #: bodies prepared in other processes are best ``gzip_body``-compressed there (OTLP/HTTP posts
    #: them as they are); False where the transport compresses itself (grpc), so none is done twice
    gzip_bodies: ClassVar[bool] = True

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 10.0,
        batch_size: int = 512,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.timeout = timeout
        self.batch_size = batch_size
        self.sent = 0
        self.endpoint = self._open(endpoint, configured_headers(headers))

    def _open(self, endpoint: str | None, headers: dict[str, str]) -> str:
        raise NotImplementedError

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
        compressed by ``gzip_body``); raises ``ExportError`` once retrying cannot help. Retries as
        the OTel exporters do: exponential backoff with jitter, or the delay the receiver asked
        for, all within ``timeout``."""
        data = self._prepare(body, gzipped)
        deadline = time.monotonic() + self.timeout
        answer = Attempt(False, None, "no attempt", False)
        for attempt in range(MAX_ATTEMPTS):
            backoff = 2**attempt * random.uniform(1 - _JITTER, 1 + _JITTER)
            answer = self._attempt(data, max(deadline - time.monotonic(), 0.001))
            if answer.ok:
                self.sent += spans
                return
            if not answer.retryable:
                break
            backoff = backoff if answer.retry_after is None else answer.retry_after
            if attempt + 1 == MAX_ATTEMPTS or backoff > deadline - time.monotonic():
                break
            time.sleep(backoff)
        what = "gave up" if answer.retryable else "was refused"
        raise ExportError(
            f"OTLP export of {spans} spans to {self.endpoint} failed ({what}): {answer.reason}", status=answer.status
        )

    def _prepare(self, body: bytes, gzipped: bool) -> bytes:
        """The request as the transport sends it, from a body gzipped or not."""
        raise NotImplementedError

    def _attempt(self, data: bytes, timeout: float) -> Attempt:
        """One try, within ``timeout`` seconds."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Attempt:
    """How one try went: acknowledged, or the receiver's status as HTTP names it (None when none
    answered; a gRPC code is mapped: ``export_grpc``), why, whether to try again, and after how
    long the receiver asked (seconds)."""

    ok: bool
    status: int | None
    reason: str
    retryable: bool
    retry_after: float | None = None


class OtlpSink(Sink):
    """OTLP/HTTP: gzipped protobuf POSTed to ``…/v1/traces``."""

    def _open(self, endpoint: str | None, headers: dict[str, str]) -> str:
        url = traces_endpoint(endpoint)
        self.headers = {
            **headers,
            "content-type": "application/x-protobuf",
            "content-encoding": "gzip",
            "user-agent": USER_AGENT,
        }
        self._http = _pool(url)
        return url

    def _prepare(self, body: bytes, gzipped: bool) -> bytes:
        return body if gzipped else gzip_body(body)

    def _attempt(self, data: bytes, timeout: float) -> Attempt:
        try:
            response = self._http.request(
                "POST",
                self.endpoint,
                body=data,
                headers=self.headers,
                timeout=urllib3.Timeout(total=timeout),
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as error:  # no connection, or none that answered in time
            return Attempt(False, None, _connection_problem(error), True)
        status = response.status
        if 200 <= status < 300:
            return Attempt(True, status, "", False)
        reason = f"HTTP {status} {response.reason or ''}".rstrip()
        detail = response.data[:200].decode(errors="replace").strip()
        if detail and response.headers.get("Content-Type", "").startswith(("text/", "application/json")):
            reason += f": {detail}"
        retryable = status in RETRYABLE
        return Attempt(False, status, reason, retryable, _retry_after(response.headers.get("Retry-After")))

    def close(self) -> None:
        self._http.clear()
