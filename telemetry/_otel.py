"""The one check that decides whether tracing is on, kept cheap for the no-provider path."""

from __future__ import annotations

from opentelemetry import trace

_DISABLED = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
SCOPE = "workflow-telemetry"


def tracer_for(provider: trace.TracerProvider | None) -> trace.Tracer | None:
    """A tracer from ``provider`` or the global one, or None when nothing would record."""
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, _DISABLED):
            return None
    return provider.get_tracer(SCOPE)
