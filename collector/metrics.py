"""The collector's metrics, served on ``GET /metrics`` by prometheus-client.

Each collector has its own ``CollectorRegistry`` (``Metrics.registry``), never the library's global
one: two collectors in one process (the tests start several) keep their numbers apart, and nothing
imported by chance shows up on ``/metrics``. Everything goes through ``Metrics.register``, the one
place a collector of numbers is added (``WorkflowMetrics`` from the tailer, and whatever comes next).

The service's own counters stay plain attributes (``metrics.spans_accepted += n``): the modules that
count own them and never import prometheus-client; ``_Process`` reads them at scrape time, with the
gauges the service wires in by name (``gauges``, ``labelled``). The names, types and meanings are those
``dashboards/grafana/collector-health.json`` queries.

Counters and histograms of prometheus-client also expose a ``…_created`` series each (the time the
series was born); the registry leaves those out: in the text format they are one extra gauge per
labelled series, which doubles what Prometheus stores for the per-workflow metrics, and nothing here
needs them (Prometheus detects counter resets itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics", "SamplingCounts", "SamplingMetrics"]

#: the exposition's media type (prometheus-client's text format)
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class _Spec:
    attribute: str  # the ``Metrics`` attribute holding the value
    name: str
    help: str


#: the service's counters: (attribute, metric name, meaning)
COUNTERS: Final = (
    _Spec("spans_accepted", "wft_spans_accepted_total", "Spans received over OTLP and stored."),
    _Spec("spans_rejected", "wft_spans_rejected_total", "Spans refused inside accepted requests (partial success)."),
    _Spec(
        "spans_benign",
        "wft_spans_benign_downgraded_total",
        "Incoming spans downgraded as benign post-completion conflicts.",
    ),
    _Spec("requests_rejected", "wft_requests_rejected_total", "OTLP requests refused (400/413/415/422)."),
    _Spec(
        "requests_overloaded",
        "wft_requests_overloaded_total",
        "OTLP requests answered 503 because the write queue or the byte budget (--max-pending-bytes) was full.",
    ),
    _Spec(
        "requests_unavailable",
        "wft_requests_store_unavailable_total",
        "Requests answered 503 because the store could not be written (disk full, read-only).",
    ),
    _Spec("tailer_spans", "wft_tailer_spans_total", "Spans built from the world's event log and stored."),
    _Spec("forwarded_batches", "wft_forwarded_batches_total", "Batches forwarded upstream."),
    _Spec(
        "forward_dropped_batches",
        "wft_forward_dropped_batches_total",
        "Spooled batches dropped because the spool was full.",
    ),
    _Spec(
        "reconcile_runs_checked",
        "wft_reconcile_runs_checked_total",
        "Finished runs whose event log was compared with the app's spans.",
    ),
    _Spec(
        "reconcile_gap_runs",
        "wft_reconcile_gap_runs_total",
        "Runs found with instrumentation gaps (steps or attempts without app spans, or the reverse).",
    ),
)

#: the service's gauges held as attributes: (attribute, metric name, meaning)
GAUGES: Final = (
    _Spec(
        "tailer_lag_seconds",
        "wft_tailer_lag_seconds",
        "Age of the newest event the world tailer processed, when it processed it.",
    ),
    _Spec(
        "reconcile_runs_with_gaps",
        "wft_reconcile_runs_with_gaps",
        "Finished runs whose event log and app spans disagree, as of the last check.",
    ),
)

#: what the gauges wired in by name (``Metrics.gauges``) mean; a name not listed is described by itself
GAUGE_HELP: Final = {
    "wft_store_bytes": "Size of the store on disk (database, WAL and shared-memory files), in bytes.",
    "wft_queue_depth": "Spans accepted and not yet committed to the store.",
    "wft_forward_spool_bytes": "Bytes waiting in the forwarding spool.",
    "wft_tailer_unreadable_runs": "Runs the world tailer skips because a record of their log stays unreadable.",
    "wft_tailer_pass_seconds": "Duration of the world tailer's last pass.",
    "wft_sentry_kept_events": "Sentry events the relay kept.",
    "wft_sentry_unforwarded_events": "Sentry events kept with no upstream to forward them to.",
    "wft_tls_certificate_expiry_timestamp_seconds": "When the TLS certificate serving now expires (Unix time).",
}


class _Registry(CollectorRegistry):
    """A private registry that leaves out the ``…_created`` series (see the module's docstring)."""

    def collect(self) -> Iterator[Metric]:
        for family in super().collect():
            if family.type in ("counter", "histogram", "summary", "gaugehistogram"):
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


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
    #: gauges read at scrape time: name → read
    gauges: dict[str, Callable[[], float]] = field(default_factory=dict)
    #: counters by one label, read at scrape time: name → (label, read → {label value: count})
    labelled: dict[str, tuple[str, Callable[[], dict[str, int]]]] = field(default_factory=dict)
    registry: CollectorRegistry = field(default_factory=_Registry, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.register(_Process(self))

    def register(self, collector: Collector) -> None:
        """Serve ``collector``'s metrics on ``/metrics`` too (a prometheus-client ``Collector``:
        anything with ``collect()``, such as a ``Counter`` made with ``registry=None``)."""
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """Everything registered, in the text format (media type ``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def render(self) -> str:
        return self.exposition().decode()


class _Process(Collector):
    """The service's counters and gauges, read when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        metrics = self.metrics
        for spec in COUNTERS:
            yield CounterMetricFamily(spec.name, spec.help, value=getattr(metrics, spec.attribute))
        for spec in GAUGES:
            yield GaugeMetricFamily(spec.name, spec.help, value=getattr(metrics, spec.attribute))
        for name, read_gauge in sorted(metrics.gauges.items()):
            yield GaugeMetricFamily(name, GAUGE_HELP.get(name, name.replace("_", " ")), value=read_gauge())
        for name, (label, read) in sorted(metrics.labelled.items()):
            family = CounterMetricFamily(name, f"{name.replace('_', ' ')} by {label}", labels=[label])
            for value, count in sorted(read().items()):
                family.add_metric([value], count)
            yield family


class SamplingCounts(Protocol):
    """What the forward sampler counts (``collector.sampling.SamplerStats`` has this shape)."""

    @property
    def runs(self) -> Mapping[tuple[str, str], int]: ...
    @property
    def spans(self) -> Mapping[tuple[str, str], int]: ...
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def buffered_runs(self) -> int: ...


class SamplingMetrics(Collector):
    """Outcome-aware forward sampling (``--forward-sample``): what was kept or dropped and why, and
    what waits in the buffer for its run to end. Read from the sampler's counts when scraped."""

    def __init__(self, read: Callable[[], SamplingCounts]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        counts = self.read()
        for what, by_key in (("runs", counts.runs), ("spans", counts.spans)):
            family = CounterMetricFamily(
                f"wft_forward_sampled_{what}",
                f"Forwarded {what} kept or dropped by outcome-aware sampling, by decision and reason.",
                labels=["decision", "reason"],
            )
            for (decision, reason), count in sorted(by_key.items()):
                family.add_metric([decision, reason], count)
            yield family
        yield GaugeMetricFamily(
            "wft_forward_sample_buffer_bytes",
            "Bytes of spans waiting in the sampling buffer for their run's outcome.",
            value=counts.buffered_bytes,
        )
        yield GaugeMetricFamily(
            "wft_forward_sample_buffer_runs",
            "Runs (and traces not yet tied to a run) waiting in the sampling buffer.",
            value=counts.buffered_runs,
        )
