"""The Grafana dashboards against what we actually emit: the Tempo one checked structurally
against real runtrace spans; the collector-health and workflows ones evaluated by a real Prometheus
(Debian's ``prometheus`` package) scraping a real ``wft serve`` on loopback that tails real harness
data (for the workflows dashboard: the mid-run snapshot, then the world growing to its final state)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from telemetry.backends.local import LocalWorld
from telemetry.reading import all_runs, run_trace
from telemetry.world import TERMINAL_RUN_EVENT_TYPES

from .conftest import http, wft
from .pgserver import free_port
from .sdk_spans import make_sdk_spans
from .test_workflow_metrics import grow_local_world

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "dashboards" / "grafana"
DASHBOARD = json.loads((GRAFANA / "workflow-runs.json").read_text())
HEALTH = json.loads((GRAFANA / "collector-health.json").read_text())
WORKFLOWS = json.loads((GRAFANA / "workflows.json").read_text())
CUT = Path(__file__).parent / "fixtures" / "local-cut"


def _emitted() -> tuple[set[str], list[str]]:
    world = LocalWorld(CUT)

    async def go():
        return [s async for run in all_runs(world) for s in (await run_trace(world, run)).spans]

    spans = asyncio.run(go())
    return {k for s in spans for k in s.attributes}, [s.name for s in spans]


def _queries():
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def test_valid_json_with_uid_and_panels():
    assert DASHBOARD["uid"] == "workflow-runs" and DASHBOARD["panels"]
    assert {p["type"] for p in DASHBOARD["panels"]} >= {"table", "traces"}
    assert HEALTH["uid"] == "workflow-telemetry-collector" and HEALTH["panels"]
    assert WORKFLOWS["uid"] == "workflow-telemetry-workflows" and WORKFLOWS["panels"]
    for dashboard in (HEALTH, WORKFLOWS):
        assert {p["type"] for p in dashboard["panels"]} >= {"stat", "timeseries"}
    for dashboard in (DASHBOARD, HEALTH, WORKFLOWS):
        assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert len({DASHBOARD["uid"], HEALTH["uid"], WORKFLOWS["uid"]}) == 3


def test_every_datasource_uid_is_provisioned_beside_the_dashboards():
    provisioned = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml"):
        text = path.read_text()
        for uid, kind in zip(
            re.findall(r"^\s*uid:\s*(\S+)", text, re.M), re.findall(r"^\s*type:\s*(\S+)", text, re.M), strict=True
        ):
            provisioned[uid] = kind
    assert provisioned == {"tempo": "tempo", "prometheus": "prometheus"}
    for dashboard, kind in ((DASHBOARD, "tempo"), (HEALTH, "prometheus"), (WORKFLOWS, "prometheus")):
        for panel in dashboard["panels"]:
            for ref in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
                assert ref == {"type": kind, "uid": kind}, panel["title"]
    # the dashboards provider loads every dashboard JSON of the folder the README mounts
    provider = (GRAFANA / "provisioning" / "dashboards" / "workflow.yaml").read_text()
    assert "path: /var/lib/grafana/dashboards/workflow-telemetry" in provider
    assert "./dashboards/grafana:/var/lib/grafana/dashboards/workflow-telemetry" in (GRAFANA / "README.md").read_text()


@pytest.mark.parametrize(
    "dashboard", [DASHBOARD, HEALTH, WORKFLOWS], ids=["workflow-runs", "collector-health", "workflows"]
)
def test_every_variable_used_exists(dashboard):
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    text = json.dumps(dashboard["panels"])
    used = set(re.findall(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)", text))
    used = {u for u in used if not u.startswith("__")}
    assert used and used <= defined, used - defined


def test_queries_reference_attributes_and_span_names_we_emit():
    attributes, names = _emitted()
    attributes |= {"error.type"}  # set on failed runs (fixture runs include one)
    for panel, target in _queries():
        query = target["query"]
        assert query.count("{") == query.count("}") and query.count('"') % 2 == 0, query
        for attribute in re.findall(r"span\.([a-zA-Z0-9_.]+)", query):
            assert attribute in attributes, f"{panel['title']}: span.{attribute} is not emitted"
        for pattern in re.findall(r'(?<![.\w])name =~ "([^"]+)"', query):
            assert any(re.fullmatch(pattern, n) for n in names), f"{panel['title']}: no span named like {pattern}"


def test_trace_id_command_gives_the_id_the_run_trace_uses():
    run_id = json.loads((CUT / "summary.json").read_text())["retry"]["runId"]
    result = wft("trace-id", run_id)
    world = LocalWorld(CUT)

    async def go():
        return await run_trace(world, await world.runs.get(run_id))

    assert result.stdout.strip() == f"{asyncio.run(go()).trace_id:032x}"
    assert wft("trace-id", "nope").returncode == 2


# ---- the collector-health dashboard, through a real Prometheus --------------------------------------


def _health_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target."""
    return [(p["title"], t["expr"]) for p in HEALTH["panels"] for t in p["targets"]]


def _covers(title: str) -> bool:
    return any(title == p["title"] for p in HEALTH["panels"])


def test_the_health_dashboard_covers_what_an_operator_asks():
    for title in (
        "Ingest rate",
        "Refusals",
        "503s",
        "Write queue depth",
        "Tailer lag",
        "Forward spool",
        "Relayed metrics and logs",
    ):
        assert _covers(title), title


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _promql(base: str, expr: str, at: float | None = None) -> dict:
    query = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    return _get(f"{base}/api/v1/query?" + urllib.parse.urlencode(query))


def _answers(url: str) -> bool:
    try:
        return http("GET", url, timeout=2)[0] == 200
    except OSError:  # not listening yet
        return False


def _wait(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


@contextlib.contextmanager
def _serving(tmp_path: Path, world: Path):
    """A real ``wft serve`` on loopback following the world-local dir ``world``, forwarding to an
    upstream that is down (so its spool fills), as a subprocess of the real CLI; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "telemetry",
            "serve",
            "--port",
            str(port),
            "--store",
            str(tmp_path / "wft" / "store.sqlite3"),
            "--world",
            "local",
            "--dir",
            str(world),
            "--forward-otlp",
            f"http://127.0.0.1:{free_port()}",  # nothing listens there
            "--relay",
            "metrics,logs",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        return _answers(f"{url}/healthz")

    try:
        _wait("wft serve", up, 30)
        yield url
    finally:
        process.terminate()
        process.wait(15)


@contextlib.contextmanager
def _prometheus(tmp_path: Path, collector_url: str):
    """Debian's Prometheus, scraping the collector every second with the job the README ships;
    yields (its URL, the collector's instance label)."""
    binary, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not binary or not promtool:
        pytest.fail("Prometheus is not installed: apt-get install -y --no-install-recommends prometheus")
    target = urllib.parse.urlsplit(collector_url).netloc
    config = tmp_path / "prometheus.yml"
    scrape = (ROOT / "dashboards" / "prometheus" / "scrape.yml").read_text()  # the job the README ships
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        + scrape.replace("scrape_interval: 15s", "scrape_interval: 1s").replace("127.0.0.1:4318", target)
    )
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("prometheus", lambda: process.poll() is None and _answers(f"{base}/-/ready"))
        yield base, target
    finally:
        process.terminate()
        process.wait(15)


@pytest.fixture
def wft_serve(tmp_path, harness_out):
    with _serving(tmp_path, harness_out / "local-data") as url:
        yield url


@pytest.fixture
def prometheus(tmp_path, wft_serve):
    with _prometheus(tmp_path, wft_serve) as answer:
        yield answer


def _lint(body: bytes) -> None:
    """``promtool check metrics``: /metrics is what Prometheus expects, lint-clean."""
    lint = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _scraped(base: str, instance: str, times: int) -> bool:
    found = _promql(base, f'count_over_time(up{{instance="{instance}"}}[10m])')["data"]["result"]
    return bool(found) and float(found[0]["value"][1]) >= times


def test_every_health_panel_returns_data_from_a_real_prometheus(wft_serve, prometheus):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.sdk.trace.export import SpanExportResult

    base, instance = prometheus
    # traffic: spans over OTLP (the real exporter), a refused request, the tailer reading the world
    exporter = OTLPSpanExporter(endpoint=f"{wft_serve}/v1/traces")
    assert exporter.export(make_sdk_spans(3)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert http("POST", f"{wft_serve}/v1/traces", b"{}", {"Content-Type": "text/plain"})[0] == 415
    metrics = ExportMetricsServiceRequest().SerializeToString()  # relayed to the (down) upstream: spooled
    assert http("POST", f"{wft_serve}/v1/metrics", metrics, {"Content-Type": "application/x-protobuf"})[0] == 200
    status, _, body = http("GET", f"{wft_serve}/metrics")
    assert status == 200
    _lint(body)
    _wait("four scrapes", lambda: _scraped(base, instance, 4))  # rate() needs two samples in its window
    assert _promql(base, f'up{{instance="{instance}"}}')["data"]["result"][0]["value"][1] == "1"
    (variable,) = HEALTH["templating"]["list"]  # Grafana's label_values(metric, label), as Prometheus answers it
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"]).groups()
    values = _get(f"{base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric}))
    assert variable["name"] == label and instance in values["data"]  # the variable finds the collector
    accepted = _promql(base, f'wft_spans_accepted_total{{instance="{instance}"}}')["data"]["result"]
    assert float(accepted[0]["value"][1]) >= 3
    for title, expr in _health_queries():
        query = expr.replace("$__rate_interval", "30s").replace("$instance", instance)
        assert "$" not in query, (title, query)
        answer = _promql(base, query)
        assert answer["status"] == "success", (title, query, answer)
        assert answer["data"]["result"], f"{title}: no data for {query}"


# ---- the workflows dashboard, through a real Prometheus, on a world that goes on ---------------------


def _workflow_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target of the workflows dashboard."""
    return [(p["title"], t["expr"]) for p in WORKFLOWS["panels"] for t in p["targets"]]


def test_the_workflows_dashboard_covers_what_a_workflow_team_asks():
    queries = " ".join(expr for _, expr in _workflow_queries())
    for title in ("Runs by outcome", "Failure ratio", "Run duration p50 / p95", "Step attempts by outcome"):
        assert any(title == p["title"] for p in WORKFLOWS["panels"]), title
    for needed in (
        "rate(wft_workflow_runs_finished_total",
        'status="failed"',
        "histogram_quantile(0.5, sum by (workflow, le) (rate(wft_workflow_run_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (workflow, le) (rate(wft_workflow_run_duration_seconds_bucket",
        "wft_workflow_step_attempts_total",
        "wft_workflow_step_retries_total",
        "histogram_quantile(0.95, sum by (workflow, le) (rate(wft_workflow_step_queue_delay_seconds_bucket",
        "wft_workflow_hooks_waiting",
        "wft_workflow_sleeps_waiting",
        "wft_workflow_hook_oldest_wait_seconds",
        "wft_workflow_sleep_oldest_wait_seconds",
        "wft_workflow_turn_oldest_wait_seconds",
    ):
        assert needed in queries, needed
    # every query is filtered by the two variables, and its selectors use only labels we emit
    for title, expr in _workflow_queries():
        assert 'instance=~"$instance"' in expr and 'workflow=~"$workflow"' in expr, title
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!=|=)\s*\"", expr):
            assert label in {"instance", "workflow", "status", "outcome"}, (title, label)


def _expand(expr: str, instance: str) -> str:
    """A panel's PromQL as Grafana sends it: its variables and intervals filled in."""
    query = (
        expr.replace("$__rate_interval", "3m")
        .replace("$__range", "1h")
        .replace("$instance", instance)
        .replace("$workflow", ".*")
    )
    assert "$" not in query, query
    return query


@pytest.fixture
def live_world(tmp_path, harness_out):
    """A world-local dir holding the harness's mid-run snapshot (runs waiting on a hook and a sleep)."""
    world = tmp_path / "world"
    shutil.copytree(harness_out / "local-data-midrun", world)
    return world


def test_every_workflows_panel_returns_data_from_a_real_prometheus(tmp_path, harness_out, live_world):
    final, midrun = _logs(harness_out / "local-data"), _logs(live_world)
    attempts = sum(1 for events in final.values() for e in events if e.event_type == "step_started")
    with _serving(tmp_path, live_world) as url, _prometheus(tmp_path, url) as (base, instance):
        selector = f'{{instance="{instance}"}}'

        def total(metric: str, at: float | None = None) -> float | None:
            found = _promql(base, f"sum(last_over_time({metric}{selector}[1m]))", at)["data"]["result"]
            return float(found[0]["value"][1]) if found else None

        # the mid-run snapshot: the runs its logs say ended, the hooks and the sleep they say wait (how many
        # depends on when the harness took it: the webhook run's hook may still wait)
        ended = sum(1 for events in midrun.values() if any(e.event_type in TERMINAL_RUN_EVENT_TYPES for e in events))
        hooks = _still_open(midrun, "hook_created", ("hook_received", "hook_disposed"))
        assert ended >= 5 and hooks >= 1 and _still_open(midrun, "wait_created", ("wait_completed",)) == 1
        _wait("the mid-run world in Prometheus", lambda: total("wft_workflow_runs_finished_total") == ended, 60)
        _wait("four scrapes", lambda: _scraped(base, instance, 4))
        midrun_at = time.time()
        status, _, body = http("GET", f"{url}/metrics")
        assert status == 200
        _lint(body)
        assert total("wft_workflow_hooks_waiting", midrun_at) == hooks
        assert total("wft_workflow_sleeps_waiting", midrun_at) == 1

        # the runs go on and finish while Prometheus scrapes
        grow_local_world(harness_out / "local-data", live_world)
        _wait("the final world in Prometheus", lambda: total("wft_workflow_runs_finished_total") == len(final), 60)
        scrapes = _count_scrapes(base, instance)
        _wait("two more scrapes", lambda: _scraped(base, instance, scrapes + 2))
        done_at = time.time()
        # each event counted once, through the tailer, /metrics and Prometheus
        assert total("wft_workflow_runs_started_total") == len(final)
        assert total("wft_workflow_step_attempts_total") == attempts
        assert total("wft_workflow_hooks_waiting") == 0 and total("wft_workflow_sleeps_waiting") == 0

        # the variables, as Grafana's label_values() asks Prometheus
        instances, workflows = WORKFLOWS["templating"]["list"]
        metric = re.fullmatch(r"label_values\((\w+),\s*instance\)", instances["definition"]).group(1)
        found = _get(f"{base}/api/v1/label/instance/values?" + urllib.parse.urlencode({"match[]": metric}))
        assert instance in found["data"]
        match = re.fullmatch(r"label_values\((.+),\s*workflow\)", workflows["definition"]).group(1)
        match = match.replace("$instance", instance)
        found = _get(f"{base}/api/v1/label/workflow/values?" + urllib.parse.urlencode({"match[]": match}))
        assert set(found["data"]) == {e.event_data["workflowName"].rsplit("//", 1)[-1] for e in _creations(final)}

        for title, expr in _workflow_queries():
            query = _expand(expr, instance)
            # what waits has data while something waits (mid-run); everything else has it once the runs ended
            at = midrun_at if "oldest_wait" in expr else done_at
            answer = _promql(base, query, at)
            assert answer["status"] == "success", (title, query, answer)
            if "turn_oldest" in expr:  # a run between turns at the snapshot: as the harness's timing had it
                assert bool(answer["data"]["result"]) == (_between_turns(midrun) > 0), (title, query, answer)
                continue
            assert answer["data"]["result"], f"{title}: no data for {query}"
        # and the numbers say what happened between the two snapshots
        by_outcome = next(expr for title, expr in _workflow_queries() if title == "Runs by outcome")
        rates = _promql(base, _expand(by_outcome, instance), done_at)["data"]["result"]
        finishing = {(r["metric"]["workflow"], r["metric"]["status"]) for r in rates if float(r["value"][1]) > 0}
        assert ("hookWorkflow", "completed") in finishing and ("sleepWorkflow", "completed") in finishing
        oldest = _promql(base, _expand('max(wft_workflow_hook_oldest_wait_seconds{instance=~"$instance"})', instance))
        assert not oldest["data"]["result"]  # nothing waits any more: no age


def _count_scrapes(base: str, instance: str) -> int:
    found = _promql(base, f'count_over_time(up{{instance="{instance}"}}[10m])')["data"]["result"]
    return int(float(found[0]["value"][1])) if found else 0


def _logs(world: Path) -> dict:
    reader = LocalWorld(world)

    async def go():
        from telemetry.reading import event_log

        return {run.run_id: await event_log(reader, run.run_id) async for run in all_runs(reader)}

    return asyncio.run(go())


def _still_open(logs: dict, opens: str, closes: tuple[str, ...]) -> int:
    """Hooks or waits created and not yet closed, by correlation id, over every run's log."""
    events = [e for run_events in logs.values() for e in run_events]
    return len(
        {e.correlation_id for e in events if e.event_type == opens}
        - {e.correlation_id for e in events if e.event_type in closes}
    )


def _between_turns(logs: dict) -> int:
    """Runs not ended with nothing open: every step created ended, every sleep completed, no hook
    (one that received a payload stays open until disposed of)."""

    def between(events: list) -> bool:
        def opened(kind: str, closes: tuple[str, ...]) -> set[str]:
            return {e.correlation_id for e in events if e.event_type == kind} - {
                e.correlation_id for e in events if e.event_type in closes
            }

        return not any(e.event_type in TERMINAL_RUN_EVENT_TYPES for e in events) and not (
            opened("step_created", ("step_completed", "step_failed"))
            or opened("wait_created", ("wait_completed",))
            or opened("hook_created", ("hook_disposed",))
        )

    return sum(1 for events in logs.values() if between(events))


def _creations(logs: dict) -> list:
    return [e for events in logs.values() for e in events if e.event_type == "run_created"]
