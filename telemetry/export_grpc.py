"""Shipping spans over OTLP/gRPC: ``TraceService/Export``, for receivers and environments set up
for gRPC (``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``, an endpoint on port 4317).

The request is the same ``ExportTraceServiceRequest`` OTLP/HTTP posts, encoded once
(``otlp_encode``) and sent as it is: grpc's serializer is not used, and the call is gzipped by
grpc. Retries follow the OTLP specification (``Sink.post``'s loop): the codes it names as
retryable, RESOURCE_EXHAUSTED only when the server says when to retry (``google.rpc.RetryInfo``,
whose delay is then honoured). A code is reported as the HTTP status a caller of ``Sink`` tells a
refusal of the data by (INVALID_ARGUMENT → 400, a message over the server's limit → 413, ...).

The endpoint is the OTel variables' (or ``--otlp``): a URL whose scheme says TLS or not (``https``
/ ``http``); the TLS files are the variables' (``OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE``,
``…_CLIENT_KEY``, ``…_CLIENT_CERTIFICATE``), the headers too (as call metadata).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import grpc
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .export import USER_AGENT, Attempt, Sink, otlp_env

__all__ = ["DEFAULT_GRPC_ENDPOINT", "RETRY_INFO_KEY", "TRACE_SERVICE", "GrpcSink", "grpc_target"]

DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
#: the service an OTLP/gRPC trace exporter calls, as opentelemetry-proto names it (its method: ``Export``)
TRACE_SERVICE: Final = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name
#: the trailing metadata a server says when to retry in (a serialized ``google.rpc.RetryInfo``)
RETRY_INFO_KEY: Final = "google.rpc.retryinfo-bin"
_METHOD: Final = f"/{TRACE_SERVICE}/Export"
#: retried whatever the server says (the OTLP specification's list)
_RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
#: a code as the HTTP status ``ExportError.status`` carries (callers tell a refusal of the data by it)
_AS_HTTP: Final = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNIMPLEMENTED: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,  # without RetryInfo: a message over the server's limit
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_MAX_SEND: Final = 64 * 1024 * 1024  # our requests are bounded by spans, not bytes; the receiver's limit decides


def grpc_target(endpoint: str) -> tuple[str, bool]:
    """(``host:port`` to dial, whether over TLS) from an endpoint URL: ``https`` is TLS, ``http``
    is not; without a scheme, TLS unless ``OTEL_EXPORTER_OTLP_[TRACES_]INSECURE`` is true."""
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if not parts.hostname:
        raise ValueError(f"OTLP/gRPC endpoint {endpoint!r}: expected http(s)://host:port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    target = f"{host}:{parts.port or 4317}"
    if parts.scheme:
        return target, parts.scheme == "https"
    return target, (otlp_env("INSECURE") or "").strip().lower() != "true"


class GrpcSink(Sink):
    """OTLP/gRPC: the encoded request sent as the ``Export`` call's message."""

    gzip_bodies = False  # grpc compresses the call: workers hand over plain bodies

    def _open(self, endpoint: str | None, headers: dict[str, str]) -> str:
        url = (
            endpoint
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or DEFAULT_GRPC_ENDPOINT
        )
        self.metadata = tuple(headers.items())
        target, tls = grpc_target(url)
        options = [("grpc.primary_user_agent", USER_AGENT), ("grpc.max_send_message_length", _MAX_SEND)]
        if tls:
            self._channel = grpc.secure_channel(target, _credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._export = self._channel.unary_unary(_METHOD)  # bytes in, bytes out
        return url

    def _prepare(self, body: bytes, gzipped: bool) -> bytes:
        return gzip.decompress(body) if gzipped else body  # grpc compresses the call itself (``gzip_bodies``)

    def _attempt(self, data: bytes, timeout: float) -> Attempt:
        try:
            self._export(data, timeout=timeout, metadata=self.metadata, compression=grpc.Compression.Gzip)
        except grpc.RpcError as error:
            code = error.code()
            reason = f"gRPC {code.name}: {error.details() or ''}".rstrip(": ")
            asked = _retry_delay(error)
            retryable = code in _RETRYABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and asked is not None)
            status = 429 if code == grpc.StatusCode.RESOURCE_EXHAUSTED and asked is not None else _AS_HTTP.get(code)
            return Attempt(False, status, reason, retryable, asked)
        return Attempt(True, 200, "", False)

    def close(self) -> None:
        self._channel.close()


def _retry_delay(error: grpc.RpcError) -> float | None:
    """The delay a ``google.rpc.RetryInfo`` in the trailing metadata asks for, if there is one."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_INFO_KEY and isinstance(value, bytes):
            delay = RetryInfo.FromString(value).retry_delay
            seconds: float = delay.seconds + delay.nanos / 1e9
            return max(0.0, seconds)
    return None


def _credentials() -> grpc.ChannelCredentials:
    def read(name: str) -> bytes | None:
        path = otlp_env(name)
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        root_certificates=read("CERTIFICATE"),
        private_key=read("CLIENT_KEY"),
        certificate_chain=read("CLIENT_CERTIFICATE"),
    )
