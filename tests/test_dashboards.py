"""Structural checks of the Grafana dashboard against what we actually emit."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from telemetry.backends.local import LocalWorld
from telemetry.reading import all_runs, run_trace

from .conftest import wft

GRAFANA = Path(__file__).resolve().parents[1] / "dashboards" / "grafana"
DASHBOARD = json.loads((GRAFANA / "workflow-runs.json").read_text())
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
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    assert {p["type"] for p in DASHBOARD["panels"]} >= {"table", "traces"}


def test_every_datasource_uid_is_provisioned():
    provisioned = set(
        re.findall(r"^\s*uid:\s*(\S+)", (GRAFANA / "provisioning/datasources/tempo.yaml").read_text(), re.M)
    )
    assert provisioned == {"tempo"}
    for panel, target in _queries():
        assert panel["datasource"]["uid"] in provisioned
        assert target["datasource"]["uid"] in provisioned


def test_every_variable_used_exists():
    defined = {v["name"] for v in DASHBOARD["templating"]["list"]}
    text = json.dumps(DASHBOARD["panels"])
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
