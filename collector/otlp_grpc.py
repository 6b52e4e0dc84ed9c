"""OTLP/gRPC in: ``TraceService/Export`` on its own port (4317, as every OTLP receiver has it).

Some SDKs export over gRPC unless told otherwise (the Python distro that ``opentelemetry-instrument``
runs, .NET, many collectors' pipelines); an app pointed at a receiver that only speaks OTLP/HTTP
then exports nothing, and says so only in its own logs. So ``wft serve`` listens for both.

The request is the message OTLP/HTTP carries as protobuf, so the same ``Ingest.accept`` takes it:
its bytes are handed over as they came (grpc's deserializer is not used), and it is decoded,
validated, stored, answered (``partial_success``) and forwarded exactly as over HTTP. What differs
is the transport's:

- **Size.** grpc reads a whole message before the handler sees it, so the budget is asked once it
  is read (``Admission``, as for a body of known length); grpc itself refuses a message over
  ``max_message_bytes`` (the smaller of ``--max-body`` and gRPC's customary 4 MiB, compressed or
  not: RESOURCE_EXHAUSTED), and at most ``MAX_CONCURRENT_RPCS`` are in hand at once, so what grpc
  holds for us is bounded. That bound is not the budget's: grpc refuses calls past it with
  RESOURCE_EXHAUSTED and no ``RetryInfo``, which the OTLP specification has exporters drop rather
  than retry, so a bound small enough to follow a small ``--max-pending-bytes`` would lose data;
  past the budget, ``Admission`` refuses with UNAVAILABLE and a ``RetryInfo`` instead.
- **Statuses**, as the OTLP specification maps them: a body that does not parse or that the store
  refuses is INVALID_ARGUMENT (not retried); overload and a store that cannot be written are
  UNAVAILABLE with a ``google.rpc.RetryInfo`` saying when to retry (retried, after that delay);
  a missing or wrong token is UNAUTHENTICATED.
- **Auth**: with ``--token``, the ``authorization`` metadata (``Bearer <token>``), what an
  exporter's ``OTEL_EXPORTER_OTLP_HEADERS`` sends.
- **Binding**: grpc would share a port another process listens on (``SO_REUSEPORT``, its default
  on Linux) and split the traffic with it; that is turned off, so a port in use is an error. A
  port with connections of a stopped collector in TIME_WAIT is not in use: a restart binds it.
- **Logs**: grpc's C core writes an unformatted INFO line to stderr for every failed handshake (a
  scanner, a plaintext client on a TLS port); ``GRPC_VERBOSITY`` is ERROR unless the environment
  says otherwise, so the collector's log stays its own (and JSON with ``--log-format json``).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # read when grpc's core starts: before the import

import grpc  # noqa: E402  (after GRPC_VERBOSITY, which its core reads once, at import)
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo

from telemetry.export_grpc import RETRY_INFO_KEY, TRACE_SERVICE

from .admission import Admission, Refused, client_key
from .auth import bearer_ok
from .ingest import Accept, Answer, Ingest, count_refusal, traces_answer
from .metrics import Metrics
from .otlp import PROTOBUF
from .otlp_relay import OtlpRelay, relayed_answer

__all__ = ["MAX_CONCURRENT_RPCS", "max_message_bytes", "start_grpc"]

log = logging.getLogger("collector.grpc")

#: the service and method an OTLP/gRPC trace exporter calls
#: exports in hand at once (each at most ``max_message_bytes``); grpc refuses more (RESOURCE_EXHAUSTED)
MAX_CONCURRENT_RPCS: Final = 64
_GRPC_DEFAULT_MAX: Final = 4 * 1024 * 1024
_NO_TOKEN: Final = "a valid 'authorization: Bearer <token>' is required"


def max_message_bytes(max_body: int) -> int:
    """The largest message taken: ``--max-body``, but no more than gRPC's customary 4 MiB (what
    exporters expect of a receiver, and what keeps ``MAX_CONCURRENT_RPCS`` messages bounded)."""
    return min(max_body, _GRPC_DEFAULT_MAX)


def _peer_address(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` → the address alone: fairness is per client
    address, as over HTTP, not per connection."""
    kind, _, address = peer.partition(":")
    return address.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else address


class _Export:
    """An ``Export`` handler: admit, accept, answer, as OTLP/HTTP's ``receive`` does with the same
    ``accept`` and ``answer`` (the message is a protobuf body). ``route``: the budget's name for it."""

    def __init__(
        self,
        accept: Accept,
        answer: Answer,
        admission: Admission,
        metrics: Metrics,
        token: str | None,
        route: str,
    ) -> None:
        self.accept = accept
        self.answer = answer
        self.admission = admission
        self.metrics = metrics
        self.token = token
        self.route = route

    async def export(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        if self.token is not None and not bearer_ok(metadata.get("authorization", ""), self.token):
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, _NO_TOKEN)
        key = client_key(_peer_address(context.peer() or ""), metadata.get("user-agent"))
        try:
            ticket = self.admission.admit(key, len(body), route=self.route)
        except Refused as refused:
            count_refusal(refused, self.metrics)
            await _refuse(context, refused.status, refused.reason, refused.retry_after)
        try:
            ticket.read(len(body))
            outcome = await self.accept(body, PROTOBUF)
        finally:
            ticket.release()
        if outcome.status != 200:
            await _refuse(context, outcome.status, outcome.message, outcome.retry_after)
        return self.answer(outcome, PROTOBUF)


async def _refuse(
    context: grpc.aio.ServicerContext, status: int, message: str, retry_after: str | int | None
) -> NoReturn:
    """End the call as an HTTP ``status`` maps to gRPC: 503 → UNAVAILABLE with when to retry
    (``RetryInfo``), anything else (400, 413, 422) → INVALID_ARGUMENT, which is not retried."""
    if status == 503:
        seconds = int(retry_after) if retry_after is not None else 1  # whole seconds, as Retry-After
        info = RetryInfo(retry_delay=Duration(seconds=seconds)).SerializeToString()
        context.set_trailing_metadata(((RETRY_INFO_KEY, info),))
        await _abort(context, grpc.StatusCode.UNAVAILABLE, message)
    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, message)


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)  # raises: the call ends here
    raise AssertionError("grpc's abort returned")


def _handler(service: str, export: Callable[[bytes, Any], Awaitable[bytes]]) -> grpc.GenericRpcHandler:
    # no (de)serializers: the request's bytes go to ``accept`` as they came, the answer goes as encoded
    method = grpc.unary_unary_rpc_method_handler(export)
    return grpc.method_handlers_generic_handler(service, {"Export": method})


def _handlers(ingest: Ingest, relay: OtlpRelay | None, admission: Admission, token: str | None) -> list[Any]:
    """Traces into ``ingest``; metrics and logs to ``relay`` when there is one (else grpc answers
    UNIMPLEMENTED for them, as a receiver without the signal does)."""

    # a coroutine function (grpc.aio tells by ``inspect``), not an object with an async ``__call__``
    export = _Export(ingest.accept, traces_answer, admission, ingest.metrics, token, "otlp-grpc").export
    handlers = [_handler(TRACE_SERVICE, export)]
    if relay is not None:
        for signal in relay.signals:
            route = f"otlp-grpc-{signal.name}"
            relayed = _Export(relay.acceptor(signal), relayed_answer, admission, ingest.metrics, token, route)
            handlers.append(_handler(signal.service, relayed.export))
    return handlers


async def start_grpc(
    ingest: Ingest,
    admission: Admission,
    *,
    host: str,
    port: int,
    token: str | None,
    max_body: int,
    credentials: grpc.ServerCredentials | None = None,
    relay: OtlpRelay | None = None,
) -> tuple[grpc.aio.Server, int]:
    """An OTLP/gRPC receiver on ``host:port``, started: (server, the bound port); over TLS with
    ``credentials``. ``OSError`` when the port cannot be bound (in use, no such address)."""
    limit = max_message_bytes(max_body)
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", 1024 * 1024),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    server.add_generic_rpc_handlers(_handlers(ingest, relay, admission, token))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    where = f"{address} (OTLP/gRPC)"  # the error's filename: says which of the ports failed
    try:
        _check_bindable(host, port)
        bound = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
    except OSError as error:
        await server.stop(None)
        raise OSError(error.errno, error.strerror, where) from None
    except RuntimeError:  # grpc says only "Failed to bind to address"
        bound = 0
    if not bound:
        await server.stop(None)
        raise OSError(errno.EADDRNOTAVAIL, "cannot listen there", where)
    await server.start()
    return server, bound


def _check_bindable(host: str, port: int) -> None:
    """``OSError`` (with the reason: in use, no such address) when ``host:port`` cannot be bound:
    grpc's own failure says only that it failed."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as grpc and aiohttp bind: a restart is not refused for its predecessor's TIME_WAIT
        # connections, while a port another process listens on still is (no SO_REUSEPORT)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
