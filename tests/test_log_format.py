"""telemetry/log_format.py: ``--log-format json`` (or ``WFT_LOG_FORMAT=json``): every line a
service writes is one JSON object a log pipeline can parse, the line an error ends in included."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

from telemetry.log_format import JsonFormatter

from .conftest import wft
from .pgserver import free_port


def _records(text: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines()]  # every line parses
    for record in records:
        assert set(record) >= {"time", "level", "logger", "message"} and record["time"].endswith("Z"), record
    return records


def test_a_served_collectors_lines_are_json(tmp_path):
    port = free_port()
    args = ["serve", "--log-format", "json", "--port", str(port), "--grpc-port", "off", "--no-world"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "telemetry", *args, "--store", str(tmp_path / "s.sqlite3")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while not any("listening on" in line for line in lines) and time.monotonic() < deadline:
            lines.append(process.stderr.readline())
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    records = _records("".join(lines) + rest)
    assert any(r["logger"] == "collector" and f"127.0.0.1:{port}" in r["message"] for r in records), records


def test_the_line_an_error_ends_in_is_json_too(tmp_path):
    result = wft(
        "serve",
        "--no-world",
        "--store",
        str(tmp_path / "s.sqlite3"),
        "--tls-cert",
        "c.pem",
        env={"WFT_LOG_FORMAT": "json"},
    )
    assert result.returncode == 2
    (record,) = _records(result.stderr)
    assert record["level"] == "ERROR" and record["message"].startswith("wft serve: TLS needs both")


def test_an_unknown_format_is_a_usage_error():
    result = wft("runs", env={"WFT_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["wft: WFT_LOG_FORMAT='xml': one of text, json (see wft --help)"]


def test_a_traceback_stays_in_its_record():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("it",), sys.exc_info())
    (line,) = JsonFormatter().format(record).splitlines()
    parsed = json.loads(line)
    assert parsed["message"] == "failed: it" and "ValueError: boom\nsecond line" in parsed["exception"]


def test_a_warning_is_a_record_too(tmp_path):
    """Python's warnings print a bare line of their own; with JSON logs they go through logging."""
    script = (
        "import sys, warnings\n"
        "from telemetry.cli import main\n"
        "main(['--log-format', 'json', 'runs', '--dir', sys.argv[1]])\n"  # sets logging up (and fails: no world)
        "warnings.warn('a library says something')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "no-world")], capture_output=True, text=True, timeout=60
    )
    records = _records(result.stderr)
    assert any(r["logger"] == "py.warnings" and "a library says something" in r["message"] for r in records)
