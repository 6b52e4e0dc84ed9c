"""A small OTLP/gRPC receiver for tests: a real grpc server in its own threads, keeping the span
ids of every ``Export`` it takes, able to answer the next calls with an error code first."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class GrpcReceiver:
    port: int = 0
    span_ids: list[str] = field(default_factory=list)
    calls: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)
    #: the next calls' answers: (code, retry delay in seconds or None), taken one a call
    fail_next: list[tuple[grpc.StatusCode, float | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def export(self, request: ExportTraceServiceRequest, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        with self.lock:
            self.calls += 1
            self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
            failure = self.fail_next.pop(0) if self.fail_next else None
            if failure is None:
                self.span_ids += [
                    s.span_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
                ]
        if failure is not None:
            code, delay = failure
            if delay is not None:
                info = RetryInfo(retry_delay=Duration(seconds=int(delay), nanos=int(delay % 1 * 1e9)))
                context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
            context.abort(code, "the stand-in says no")
        return ExportTraceServiceResponse()


def start_grpc_receiver() -> tuple[GrpcReceiver, grpc.Server]:
    receiver = GrpcReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                receiver.export,
                request_deserializer=ExportTraceServiceRequest.FromString,
                response_serializer=ExportTraceServiceResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    receiver.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return receiver, server
