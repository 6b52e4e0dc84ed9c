"""Following a live world while the real SDK runs every demo workflow: ``wft follow`` and the
collector's tailer end with exactly the span set a later ``wft export`` of that world gives
(same span ids, none missing, none twice), on world-local and on world-postgres."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from telemetry.backends import BackendConfig

from .conftest import HARNESS, wft
from .otlp_receiver import start_receiver

_names = itertools.count()


@pytest.fixture
def live_postgres_app(tmp_path, pg_server):
    """The real SDK app serving on world-postgres (`run.sh serve postgres`), on a fresh database
    of the test server (the harness bootstraps its schema), stopped afterwards."""
    url = pg_server.create_database(f"live_{next(_names)}_{int(time.time() * 1000)}")
    state = tmp_path / "app"
    out = subprocess.run(
        ["bash", str(HARNESS / "run.sh"), "serve", "postgres", str(state)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "WORKFLOW_POSTGRES_URL": url},
    )
    if out.returncode != 0:
        raise RuntimeError(f"sdk-harness serve postgres failed: {out.stderr[-2000:]}")
    info = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    yield info
    subprocess.run(["bash", str(HARNESS / "run.sh"), "stop", str(state)], capture_output=True, timeout=60)


def _stable(count, quiet: float, timeout: float) -> None:
    """Wait until ``count()`` has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError("never settled")


def _follow_live(kind: str, app: dict, world_args: list[str], config: BackendConfig, collector, tmp_path: Path):
    receiver, stop_receiver = start_receiver()
    follower = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "follow", *world_args, "--otlp", receiver.url]
        + ["--checkpoint", str(tmp_path / "follow.sqlite3"), "--interval", "0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    service = collector(world=config, tail_interval=0.1)
    try:
        drive = subprocess.run(
            ["bash", str(HARNESS / "run.sh"), "drive", app["URL"], str(tmp_path / "summary.json")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert drive.returncode == 0, drive.stderr[-2000:]
        runs = {r["runId"] for r in json.loads((tmp_path / "summary.json").read_text())["results"].values()}
        assert len(runs) == 11
        _stable(lambda: (len(receiver.spans), service.metrics.tailer_spans), quiet=3.0, timeout=60)
    finally:
        follower.send_signal(signal.SIGTERM)
        code = follower.wait(10)
        stop_receiver()
    stderr = follower.stderr.read()
    assert code == 0 and "Traceback" not in stderr, stderr

    exported, stop_export = start_receiver()
    try:
        result = wft("export", *world_args, "--otlp", exported.url)
        assert result.returncode == 0, result.stderr
    finally:
        stop_export()
    expected = Counter(s.span_id for s in exported.spans)
    assert expected and max(expected.values()) == 1
    assert runs <= {s.attributes.get("workflow.run.id") for s in exported.spans if s.name.startswith("run ")}

    followed = Counter(s.span_id for s in receiver.spans)
    assert set(followed) == set(expected), (
        f"{kind}: missing {len(set(expected) - set(followed))}, extra {len(set(followed) - set(expected))}"
    )
    assert max(followed.values()) == 1, f"{kind}: sent twice: {[k for k, n in followed.items() if n > 1][:5]}"

    # the collector's tailer read the same world at the same time
    import sqlite3

    conn = sqlite3.connect(f"file:{service.settings.store}?mode=ro", uri=True)
    stored = {r[0] for r in conn.execute("SELECT span_id FROM spans WHERE source = 'world'")}
    conn.close()
    assert stored == set(expected)
    assert service.metrics.tailer_spans == len(expected)  # none stored twice
    assert not service.tailer.follower.problems


def test_follow_a_live_world_local_gives_the_export_span_set(live_local_app, collector, tmp_path):
    data_dir = live_local_app["DATA_DIR"]
    _follow_live(
        "local",
        live_local_app,
        ["--world", "local", "--dir", data_dir],
        BackendConfig("local", data_dir=data_dir),
        collector,
        tmp_path,
    )


def test_follow_a_live_world_postgres_gives_the_export_span_set(live_postgres_app, collector, tmp_path):
    url = live_postgres_app["DATABASE_URL"]
    _follow_live(
        "postgres",
        live_postgres_app,
        ["--world", "postgres", "--url", url],
        BackendConfig("postgres", url=url),
        collector,
        tmp_path,
    )
