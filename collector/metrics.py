"""Process counters and gauges, served as Prometheus text on ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Metrics:
    spans_accepted: int = 0
    spans_rejected: int = 0
    spans_benign: int = 0
    requests_rejected: int = 0
    requests_overloaded: int = 0
    tailer_spans: int = 0
    tailer_lag_seconds: float = 0.0
    forwarded_batches: int = 0
    forward_dropped_batches: int = 0
    gauges: dict[str, Callable[[], float]] = field(default_factory=dict)
    labelled: dict[str, tuple[str, Callable[[], dict[str, int]]]] = field(default_factory=dict)  # name -> (label, read)

    def render(self) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: float) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")

        metric("wft_spans_accepted_total", "counter", "Spans received over OTLP and stored.", self.spans_accepted)
        metric(
            "wft_spans_rejected_total",
            "counter",
            "Spans refused inside accepted requests (partial success).",
            self.spans_rejected,
        )
        metric(
            "wft_spans_benign_downgraded_total",
            "counter",
            "Incoming spans downgraded as benign post-completion conflicts.",
            self.spans_benign,
        )
        metric("wft_requests_rejected_total", "counter", "OTLP requests refused (400/413/415).", self.requests_rejected)
        metric(
            "wft_requests_overloaded_total",
            "counter",
            "OTLP requests answered 503 because the write queue was full.",
            self.requests_overloaded,
        )
        metric(
            "wft_tailer_spans_total", "counter", "Spans built from the world's event log and stored.", self.tailer_spans
        )
        metric(
            "wft_tailer_lag_seconds",
            "gauge",
            "Age of the newest event the world tailer processed, when it processed it.",
            self.tailer_lag_seconds,
        )
        metric("wft_forwarded_batches_total", "counter", "Batches forwarded upstream.", self.forwarded_batches)
        metric(
            "wft_forward_dropped_batches_total",
            "counter",
            "Spooled batches dropped because the spool was full.",
            self.forward_dropped_batches,
        )
        for name, read in sorted(self.gauges.items()):
            metric(name, "gauge", name.replace("_", " "), read())
        for name, (label, read) in sorted(self.labelled.items()):
            lines.append(f"# HELP {name} {name.replace('_', ' ')} by {label}")
            lines.append(f"# TYPE {name} counter")
            for value, count in sorted(read().items()):
                lines.append(f'{name}{{{label}="{value}"}} {count}')
        return "\n".join(lines) + "\n"
