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
    requests_unavailable: int = 0
    tailer_spans: int = 0
    tailer_lag_seconds: float = 0.0
    forwarded_batches: int = 0
    forward_dropped_batches: int = 0
    reconcile_runs_checked: int = 0  # finished runs reconciled (run_analysis.GapScan)
    reconcile_gap_runs: int = 0  # runs found with gaps, each counted when first found
    reconcile_runs_with_gaps: int = 0  # finished runs with gaps now
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
        metric(
            "wft_requests_rejected_total", "counter", "OTLP requests refused (400/413/415/422).", self.requests_rejected
        )
        metric(
            "wft_requests_overloaded_total",
            "counter",
            "OTLP requests answered 503 because the write queue was full.",
            self.requests_overloaded,
        )
        metric(
            "wft_requests_store_unavailable_total",
            "counter",
            "Requests answered 503 because the store could not be written (disk full, read-only).",
            self.requests_unavailable,
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
        metric(
            "wft_reconcile_runs_checked_total",
            "counter",
            "Finished runs whose event log was compared with the app's spans.",
            self.reconcile_runs_checked,
        )
        metric(
            "wft_reconcile_gap_runs_total",
            "counter",
            "Runs found with instrumentation gaps (steps or attempts without app spans, or the reverse).",
            self.reconcile_gap_runs,
        )
        metric(
            "wft_reconcile_runs_with_gaps",
            "gauge",
            "Finished runs whose event log and app spans disagree, as of the last check.",
            self.reconcile_runs_with_gaps,
        )
        for name, read_gauge in sorted(self.gauges.items()):
            metric(name, "gauge", name.replace("_", " "), read_gauge())
        for name, (label, read) in sorted(self.labelled.items()):
            lines.append(f"# HELP {name} {name.replace('_', ' ')} by {label}")
            lines.append(f"# TYPE {name} counter")
            for value, count in sorted(read().items()):
                lines.append(f'{name}{{{label}="{value}"}} {count}')
        return "\n".join(lines) + "\n"
