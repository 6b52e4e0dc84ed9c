"""The one check that decides whether tracing is on, kept cheap for the no-provider path.

``trace.get_tracer_provider()`` costs about a microsecond per call (it consults the environment
each time), more than our whole budget for a call with tracing off. The global provider can be
set only once, so we read it directly and fall back to the public path if the API ever moves.
Tracers are cached per provider.
"""

from __future__ import annotations

import os

from opentelemetry import trace

_DISABLED = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_MISSING = object()
SCOPE = "workflow-telemetry"
_tracers: dict[int, tuple[trace.TracerProvider, trace.Tracer]] = {}


def _global_provider() -> trace.TracerProvider | None:
    provider: object = getattr(trace, "_TRACER_PROVIDER", _MISSING)
    if provider is None and not _ENV_PROVIDER:
        return None
    if not isinstance(provider, trace.TracerProvider):  # not set yet (env names one), or the API moved
        provider = trace.get_tracer_provider()
    return None if isinstance(provider, _DISABLED) else provider


def tracer_for(provider: trace.TracerProvider | None) -> trace.Tracer | None:
    """A tracer from ``provider`` or the global one, or None when nothing would record."""
    if provider is None:
        provider = _global_provider()
        if provider is None:
            return None
    cached = _tracers.get(id(provider))
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = provider.get_tracer(SCOPE)
    _tracers[id(provider)] = (provider, tracer)
    return tracer
