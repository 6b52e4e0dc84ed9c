"""Three runs of the real TS SDK harness (fatal, retry, hook) with OpenTelemetry on: their world-local
records (``fixtures/otel-cut/{runs,steps,events}``) and every span the app exported over OTLP/JSON
in the traces that hold a span of theirs (``spans.json``: the captured request bodies, cut to those
traces; machine paths replaced with /app). That includes the polling the harness's driver did (a
``world.runs.get`` a few times a second per run, each in a trace of its own) and the hook's resume,
made from another trace. Nothing here is written by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collector.otlp import JSON, SpanRecord, decode_request, records_from
from collector.policy import apply_benign_policy
from collector.store import Store

from .world_spans import RunLog, commit

OTEL_CUT = Path(__file__).parent / "fixtures" / "otel-cut"
SCENARIOS: dict[str, dict[str, Any]] = json.loads((OTEL_CUT / "summary.json").read_text())


def request_bodies() -> list[bytes]:
    """The OTLP/JSON requests as the app's exporter sent them (cut to the three runs' traces)."""
    return [json.dumps(document).encode() for document in json.loads((OTEL_CUT / "spans.json").read_text())]


def sdk_records() -> list[SpanRecord]:
    """The app's spans as the collector's ingest stores them (its decoder and benign policy)."""
    records: list[SpanRecord] = []
    for body in request_bodies():
        batch = records_from(decode_request(body, JSON))[0]
        for record in batch:
            apply_benign_policy(record)
        records += batch
    return records


def run_log(scenario: str) -> RunLog:
    return RunLog(OTEL_CUT, SCENARIOS[scenario]["runId"])


def commit_everything(store: Store) -> None:
    """Each run as the tailer delivers it, then the app's spans as OTLP delivers them."""
    for scenario in SCENARIOS:
        log = run_log(scenario)
        commit(store, log.records(), log.event_rows(), [log.info()])
    commit(store, sdk_records())
