"""OTLP metrics and logs, relayed to the ``--forward-otlp`` upstream as they came.

The collector stores traces. But an app's OpenTelemetry SDK exports every signal to the one
endpoint it is given (``OTEL_EXPORTER_OTLP_ENDPOINT``), and the Python distro behind
``opentelemetry-instrument`` turns metrics and logs on by default: pointed at a collector that
serves traces alone, the app logs a failed export every interval and its metrics go nowhere.

With ``--relay metrics,logs`` (and ``--forward-otlp``), ``POST /v1/metrics`` and ``/v1/logs`` (and
the gRPC ``MetricsService`` and ``LogsService``) take them: a body is checked to be the signal's
request (protobuf parsed; JSON an object), spooled on disk (a spool of its own per signal, with the
traces' bound and retries: a signal upstream refuses never holds back another), answered once
spooled, and sent to upstream's ``/v1/metrics`` or ``/v1/logs`` as it came, protobuf or JSON,
with ``--forward-headers``. Nothing is stored or sampled here. The byte budget and the body limits
are the traces' (``Admission``, ``--max-body``). It is asked for, not implied by ``--forward-otlp``:
many trace backends (Tempo, Jaeger) answer 404 to metrics and logs, and an app told 200 would never
learn its data went nowhere. A signal not relayed is not served: 404 over HTTP and UNIMPLEMENTED
over gRPC, which is what an OTLP receiver without the signal says.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from .admission import Admission
from .ingest import Accept, Outcome, receive
from .metrics import Metrics
from .otlp import JSON, PROTOBUF

__all__ = ["RELAYABLE", "SIGNALS", "OtlpRelay", "Signal", "Spool", "relayed_answer"]


@dataclass(frozen=True)
class Signal:
    name: str  # "metrics", "logs": the path's last part, upstream's too
    request: type[Message]  # what a protobuf body must parse as
    service: str  # the gRPC service whose ``Export`` takes it

    @property
    def path(self) -> str:
        return f"/v1/{self.name}"


SIGNALS: Final = (
    Signal("metrics", ExportMetricsServiceRequest, "opentelemetry.proto.collector.metrics.v1.MetricsService"),
    Signal("logs", ExportLogsServiceRequest, "opentelemetry.proto.collector.logs.v1.LogsService"),
)

#: the names ``--relay`` takes
RELAYABLE: Final = tuple(signal.name for signal in SIGNALS)

#: the answer of an ``Export`` taken whole (an empty ``Export…ServiceResponse``) by content type
_ANSWERS: Final = {PROTOBUF: b"", JSON: b"{}"}

#: spools one body for its signal's upstream: (payload, its content type)
Spool = Callable[[bytes, str], Awaitable[None]]


class OtlpRelay:
    """Takes the signals ``spools`` names (each to its own spool): ``handle`` over HTTP, ``accept``
    for any transport; ``signals``: those relayed."""

    def __init__(self, spools: dict[str, Spool], admission: Admission, metrics: Metrics, *, max_body: int) -> None:
        self.spools = spools
        self.signals = tuple(signal for signal in SIGNALS if signal.name in spools)
        self.admission = admission
        self.metrics = metrics
        self.max_body = max_body
        self.relayed: Counter[str] = Counter()  # requests spooled, by signal (``wft_otlp_relayed_requests_total``)

    def routes(self) -> list[web.RouteDef]:
        return [web.post(signal.path, self._handler(signal)) for signal in self.signals]

    def _handler(self, signal: Signal) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        accept = self.acceptor(signal)

        async def handle(request: web.Request) -> web.StreamResponse:
            return await receive(
                request,
                accept,
                relayed_answer,
                admission=self.admission,
                metrics=self.metrics,
                max_body=self.max_body,
                route=f"otlp-{signal.name}",
            )

        return handle

    def acceptor(self, signal: Signal) -> Accept:
        """``accept`` for ``signal``'s requests alone (what a transport's handler of it calls)."""

        async def accept(body: bytes, content_type: str) -> Outcome:
            return await self.accept(signal, body, content_type)

        return accept

    async def accept(self, signal: Signal, body: bytes, content_type: str) -> Outcome:
        """Check ``body`` is ``signal``'s request and spool it for upstream: 200 once spooled, 400
        for a body that is not one, 503 when the spool cannot be written."""
        problem = _problem(signal, body, content_type)
        if problem is not None:
            self.metrics.requests_rejected += 1
            return Outcome(400, f"not an OTLP {signal.name} request: {problem}")
        try:
            await self.spools[signal.name](body, content_type)
        except OSError as error:
            self.metrics.requests_unavailable += 1
            return Outcome(503, f"the forward spool cannot be written ({error.strerror or error})", "5")
        self.relayed[signal.name] += 1
        return Outcome(200)


def relayed_answer(_outcome: Outcome, content_type: str) -> bytes:
    """The answer to a request spooled: an ``Export…ServiceResponse`` with nothing to say."""
    return _ANSWERS[content_type]


def _problem(signal: Signal, body: bytes, content_type: str) -> str | None:
    """Why ``body`` is not ``signal``'s request, or None. Protobuf is parsed whole (upb: what
    upstream would refuse is refused here, while the client can still hear it); JSON is checked to
    be an object (OTLP/JSON's ids are hex, which protobuf's JSON parser does not read)."""
    if content_type == JSON:
        try:
            parsed = json.loads(body)
        except ValueError as error:
            return f"invalid JSON ({error})"
        return None if isinstance(parsed, dict) else "the JSON is not an object"
    try:
        signal.request.FromString(body)
    except DecodeError as error:
        return f"invalid protobuf ({error})"
    return None
