"""In-process instrumentation for workflow runtimes, shaped like the ``opentelemetry-instrumentation-*``
packages: an instrumentor with ``instrument()`` / ``uninstrument()``, loadable by ``opentelemetry-instrument``
through the ``opentelemetry_instrumentor`` entry point.

Each instrumentor lives in its own module and is imported on demand, so ``import telemetry`` never needs
the instrumented package (or ``opentelemetry-instrumentation``) to be installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VercelWorkflowInstrumentor"]


def __getattr__(name: str) -> Any:
    if name == "VercelWorkflowInstrumentor":
        from .vercel_workflow import VercelWorkflowInstrumentor

        return VercelWorkflowInstrumentor
    raise AttributeError(name)
