"""The Grafana dashboards against what we actually emit: the Tempo one checked structurally
against real runtrace spans, the collector-health one evaluated by a real Prometheus (Debian's
``prometheus`` package) scraping a real ``wft serve`` on loopback."""

from __future__ import annotations

import asyncio
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

from .conftest import http, wft
from .pgserver import free_port
from .sdk_spans import make_sdk_spans

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "dashboards" / "grafana"
DASHBOARD = json.loads((GRAFANA / "workflow-runs.json").read_text())
HEALTH = json.loads((GRAFANA / "collector-health.json").read_text())
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
    assert {p["type"] for p in HEALTH["panels"]} >= {"stat", "timeseries"}
    for dashboard in (DASHBOARD, HEALTH):
        assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert DASHBOARD["uid"] != HEALTH["uid"]


def test_every_datasource_uid_is_provisioned_beside_the_dashboards():
    provisioned = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml"):
        text = path.read_text()
        for uid, kind in zip(
            re.findall(r"^\s*uid:\s*(\S+)", text, re.M), re.findall(r"^\s*type:\s*(\S+)", text, re.M), strict=True
        ):
            provisioned[uid] = kind
    assert provisioned == {"tempo": "tempo", "prometheus": "prometheus"}
    for dashboard, kind in ((DASHBOARD, "tempo"), (HEALTH, "prometheus")):
        for panel in dashboard["panels"]:
            for ref in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
                assert ref == {"type": kind, "uid": kind}, panel["title"]
    # the dashboards provider loads every dashboard JSON of the folder the README mounts
    provider = (GRAFANA / "provisioning" / "dashboards" / "workflow.yaml").read_text()
    assert "path: /var/lib/grafana/dashboards/workflow-telemetry" in provider
    assert "./dashboards/grafana:/var/lib/grafana/dashboards/workflow-telemetry" in (GRAFANA / "README.md").read_text()


@pytest.mark.parametrize("dashboard", [DASHBOARD, HEALTH], ids=["workflow-runs", "collector-health"])
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
    for title in ("Ingest rate", "Refusals", "503s", "Write queue depth", "Tailer lag", "Forward spool"):
        assert _covers(title), title


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _promql(base: str, expr: str) -> dict:
    return _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


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


@pytest.fixture
def wft_serve(tmp_path, harness_out):
    """A real ``wft serve`` on loopback following the harness's world, forwarding to an upstream that
    is down (so its spool fills), as a subprocess of the real CLI."""
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
            str(harness_out / "local-data"),
            "--forward-otlp",
            f"http://127.0.0.1:{free_port()}",  # nothing listens there
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


@pytest.fixture
def prometheus(tmp_path, wft_serve):
    """Debian's Prometheus, scraping the collector every second."""
    binary, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not binary or not promtool:
        pytest.fail("Prometheus is not installed: apt-get install -y --no-install-recommends prometheus")
    target = urllib.parse.urlsplit(wft_serve).netloc
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


def test_every_health_panel_returns_data_from_a_real_prometheus(wft_serve, prometheus):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    base, instance = prometheus
    # traffic: spans over OTLP (the real exporter), a refused request, the tailer reading the world
    exporter = OTLPSpanExporter(endpoint=f"{wft_serve}/v1/traces")
    assert exporter.export(make_sdk_spans(3)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert http("POST", f"{wft_serve}/v1/traces", b"{}", {"Content-Type": "text/plain"})[0] == 415
    status, _, body = http("GET", f"{wft_serve}/metrics")
    assert status == 200
    lint = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr  # /metrics is what Prometheus expects, lint-clean

    def scraped_enough() -> bool:  # rate() needs two samples in its window: take a few
        found = _promql(base, f'count_over_time(up{{instance="{instance}"}}[1m])')["data"]["result"]
        return bool(found) and float(found[0]["value"][1]) >= 4

    _wait("four scrapes", scraped_enough)
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
