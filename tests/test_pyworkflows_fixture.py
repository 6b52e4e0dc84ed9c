"""``tests/fixtures/pylocal-cut``: real vercel-workflow output, still what vercel-workflow itself reads back.

The fixture is cut by ``tests/pyworkflows/cut_fixture.py`` (machine paths rewritten to ``/app``, inside the
serialized payloads too). Reading it with vercel-workflow's own local world must give exactly what its API
reported when the runs were made (``MANIFEST.json``) — so the rewrite broke nothing the SDK reads, and the
manifest is the oracle the sidecar's view is checked against.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import pytest

from telemetry.payloads import decode_payload

from .pyworkflows.run import SCENARIOS, describe

FIXTURE = Path(__file__).parent / "fixtures" / "pylocal-cut"
MANIFEST = json.loads((FIXTURE / "MANIFEST.json").read_text())


@pytest.fixture
def sdk_world(tmp_path, monkeypatch):
    from vercel.workflow._internal.worlds.local import LocalWorld

    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    monkeypatch.setenv("WORKFLOW_LOCAL_DATA_DIR", str(data))
    return LocalWorld()


def test_every_scenario_is_in_the_fixture():
    assert sorted(MANIFEST) == sorted(SCENARIOS)
    statuses = {name: facts["status"] for name, facts in MANIFEST.items()}
    assert statuses.pop("failing") == "failed" and statuses.pop("waiting") == "running"
    assert set(statuses.values()) == {"completed"}


def test_vercel_workflow_reads_the_fixture_as_it_reported_it(sdk_world):
    async def read_all():
        return {name: await describe(sdk_world, facts["run_id"]) for name, facts in MANIFEST.items()}

    assert asyncio.run(read_all()) == MANIFEST


def test_fixture_has_the_per_run_layout_and_no_machine_paths():
    assert all(p.is_dir() for p in (FIXTURE / "events").iterdir())
    assert all(p.is_dir() for p in (FIXTURE / "steps").iterdir())
    assert all(p.is_dir() for p in (FIXTURE / "streams" / "chunks").iterdir())
    assert not (FIXTURE / "version.txt").exists() and not (FIXTURE / "waits").exists()
    prefixes = set()
    for path in FIXTURE.rglob("*.json"):
        text = path.read_text()
        assert "/work/" not in text and "/root/" not in text, path
        for encoded in (m.split('"')[0] for m in text.split('"data": "')[1:]):
            raw = base64.b64decode(encoded)
            prefixes.add(raw[:4])
            if raw[:4] == b"devl":
                assert b"/work/" not in raw and b"/root/" not in raw, path
    assert prefixes == {b"devl", b"zstd"}  # ``bulky`` crossed the 1 KiB compression threshold


def test_late_stream_write_is_in_the_fixture():
    racing = MANIFEST["racing"]
    assert racing["events"].index("run_completed") < len(racing["events"]) - 1  # a step_completed after it
    (late,) = [name for name in racing["streams"] if name.endswith("_user_bGF0ZQ")]
    assert racing["streams"][late] == {"chunks": 1, "done": False}
    chunk = next((FIXTURE / "streams" / "chunks" / late).iterdir()).read_bytes()
    assert chunk[0] == 0 and decode_payload(chunk[5:]) == "written after the run completed"
