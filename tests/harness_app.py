"""Talking to the harness's running app (its HTTP API), for tests and benchmarks."""

from __future__ import annotations

import json
import urllib.request


def start_workflow(app_url: str, name: str, args: list) -> str:
    request = urllib.request.Request(
        f"{app_url}/api/start/{name}",
        data=json.dumps({"args": args}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["runId"]


def run_status(app_url: str, run_id: str) -> str:
    with urllib.request.urlopen(f"{app_url}/api/run/{run_id}", timeout=30) as response:
        return json.loads(response.read())["status"]
