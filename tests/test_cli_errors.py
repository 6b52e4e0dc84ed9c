"""Every bad flag, variable or configuration of ``wft`` ends in one line on stderr that names the
problem and the fix: exit status 2 when what the user gave is wrong, 1 when it failed at run time,
never a traceback (unless ``--debug``). Each case runs the real CLI in a subprocess, against a real
PostgreSQL (``pg_server``: a database without the ``workflow`` schema, a role with a password the
test gets wrong, a closed port) and the real SDK harness's data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sentry_sdk

from .conftest import http, wft
from .pgserver import free_port

PASSWORD = "right-secret-4711"  # the password role wft_cli_pw really has; the tests pass wrong ones


def one_line(result: subprocess.CompletedProcess, status: int) -> str:
    """The single stderr line of a failed command, after checking its exit status."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


@pytest.fixture(scope="module")
def pg(pg_server):
    """The test cluster, plus: a role that must give its password (the cluster trusts every other
    login on loopback) and a database with no ``workflow`` schema."""
    hba = pg_server.root / "data" / "pg_hba.conf"
    line = "host all wft_cli_pw 127.0.0.1/32 scram-sha-256\n"
    text = hba.read_text()
    if line not in text:
        hba.write_text(line + text)  # first match wins: only this role is asked for a password
    pg_server.psql(
        "-c",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'wft_cli_pw') THEN "
        f"CREATE ROLE wft_cli_pw LOGIN PASSWORD '{PASSWORD}'; END IF; END $$",
        "-c",
        "SELECT pg_reload_conf()",
        db="postgres",
    )
    if "wft_cli_noschema" not in pg_server.psql("-Atc", "SELECT datname FROM pg_database", db="postgres"):
        pg_server.create_database("wft_cli_noschema")
    return pg_server


# ---- flags argparse refuses ---------------------------------------------------------------------


def test_a_bad_flag_value_is_one_line_naming_help():
    line = one_line(wft("runs", "--limit", "many"), 2)
    assert "--limit" in line and "'many'" in line and "wft runs --help" in line
    line = one_line(wft("runs", "--limit", "0"), 2)
    assert "--limit" in line and "1 or more" in line
    line = one_line(wft("export", "--status", "done"), 2)
    assert "--status" in line and "'done'" in line and "completed" in line
    line = one_line(wft("runs", "--no-such-flag"), 2)
    assert "--no-such-flag" in line


def test_debug_adds_the_traceback(tmp_path):
    plain = one_line(wft("runs", "--dir", str(tmp_path / "nope")), 2)
    debug = wft("runs", "--debug", "--dir", str(tmp_path / "nope"))
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and debug.stderr.strip().splitlines()[-1] == plain
    before = wft("--debug", "runs", "--dir", str(tmp_path / "nope"))  # the global flag works too
    assert "Traceback" in before.stderr and before.returncode == 2


# ---- world-local: is this a data directory? ------------------------------------------------------


def test_runs_on_a_folder_that_is_not_a_world_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not a world")
    line = one_line(wft("runs", "--dir", str(tmp_path)), 2)
    assert f"--dir {tmp_path}" in line and "not a world-local data directory" in line
    assert "WORKFLOW_LOCAL_DATA_DIR" in line  # the fix: where the app writes


def test_the_message_names_the_variable_when_the_variable_gave_the_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a world")
    line = one_line(wft("runs", env={"WORKFLOW_LOCAL_DATA_DIR": str(tmp_path)}), 2)
    assert f"WORKFLOW_LOCAL_DATA_DIR={tmp_path}" in line and "--dir " + str(tmp_path) not in line


def test_empty_and_missing_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is empty" in one_line(wft("runs", "--dir", str(empty)), 2)
    assert "not found" in one_line(wft("export", "--dir", str(tmp_path / "missing")), 2)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "not a directory" in one_line(wft("runs", "--dir", str(a_file)), 2)


def test_a_real_world_folder_still_lists(harness_out):
    result = wft("runs", "--dir", str(harness_out / "local-data"), "--limit", "2")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3, result.stderr


# ---- world-postgres: unreachable, credentials, schema, URL -----------------------------------------


def test_postgres_unreachable_says_so_without_the_password():
    url = f"postgres://world:closed-port-secret@127.0.0.1:{free_port()}/world"
    started = time.monotonic()
    line = one_line(wft("runs", "--world", "postgres", "--url", url), 1)
    assert time.monotonic() - started < 30  # no minutes of retries before saying it
    assert "unreachable" in line and "Connection refused" in line
    assert "closed-port-secret" not in line and "world:***@127.0.0.1" in line


def test_postgres_wrong_password_says_so(pg):
    url = f"postgres://wft_cli_pw:not-the-{PASSWORD}@127.0.0.1:{pg.port}/world"
    line = one_line(wft("runs", "--world", "postgres", "--url", url), 1)
    assert "password authentication failed" in line and "wrong user or password" in line
    assert PASSWORD not in line and "wft_cli_pw:***@" in line
    right = wft("runs", "--world", "postgres", "--url", url.replace(f"not-the-{PASSWORD}", PASSWORD))
    assert "password authentication failed" not in right.stderr  # the same role with its password gets in


def test_postgres_without_the_workflow_schema_says_so(pg):
    url = f"postgres://world:world@127.0.0.1:{pg.port}/wft_cli_noschema"
    line = one_line(wft("export", "--world", "postgres", "--url", url, "--otlp", "http://127.0.0.1:9"), 1)
    assert "no `workflow` schema" in line and "bootstrap" in line and "world:***@" in line


def test_postgres_unknown_database_and_role(pg):
    line = one_line(wft("runs", "--url", f"postgres://world:world@127.0.0.1:{pg.port}/no_such_db"), 1)
    assert 'database "no_such_db" does not exist' in line
    line = one_line(wft("runs", "--url", f"postgres://nobody:pw@127.0.0.1:{pg.port}/world"), 1)
    assert 'role "nobody" does not exist' in line and "nobody:***@" in line


def test_postgres_url_that_is_not_one(pg):
    line = one_line(wft("runs", "--world", "postgres", "--url", "notaurl"), 2)
    assert "--url notaurl" in line and "postgres://USER:PASSWORD@HOST:PORT/DATABASE" in line
    line = one_line(wft("runs", "--world", "postgres", "--url", f"http://127.0.0.1:{pg.port}/world"), 2)
    assert "not a PostgreSQL URL" in line
    env = {"WORKFLOW_TARGET_WORLD": "postgres", "WORKFLOW_POSTGRES_URL": "postgres://u:envsecret@h:99999/db"}
    line = one_line(wft("runs", env=env), 2)
    assert line.startswith("wft runs: WORKFLOW_POSTGRES_URL=postgres://u:***@h:99999/db") and "envsecret" not in line


# ---- export and follow: OTLP URLs, times, run ids, checkpoints ------------------------------------


def test_export_refuses_a_bad_otlp_url(harness_out):
    data = str(harness_out / "local-data")
    line = one_line(wft("export", "--dir", data, "--otlp", "not-a-url"), 2)
    assert "--otlp" in line and "'not-a-url'" in line and "http://localhost:4318" in line
    line = one_line(wft("export", "--dir", data, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"}), 2)
    assert line.startswith("wft export: OTEL_EXPORTER_OTLP_ENDPOINT: not an http:// or https:// URL")
    line = one_line(wft("follow", "--once", "--dir", data, "--otlp", "ftp://x"), 2)
    assert "--otlp" in line


def test_export_refuses_bad_selections(harness_out):
    data = str(harness_out / "local-data")
    line = one_line(wft("export", "--dir", data, "--since", "yesterday-ish"), 2)
    assert "--since" in line and "2h" in line
    line = one_line(wft("export", "--dir", data, "--since", "2026-12-01", "--until", "2026-11-01"), 2)
    assert "no run can match" in line
    line = one_line(wft("export", "--dir", data, "--jobs", "0"), 2)
    assert "--jobs" in line


def test_export_of_a_run_that_is_not_there(harness_out, otlp_receiver):
    data = str(harness_out / "local-data")
    line = one_line(wft("export", "--dir", data, "--otlp", otlp_receiver.url, "--run", "wrun_" + "0" * 26), 1)
    assert "no run wrun_00000000000000000000000000" in line
    assert otlp_receiver.requests == 0  # nothing sent before the mistake was found


def test_follow_checkpoint_that_cannot_be_written(harness_out, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_line(
        wft("follow", "--once", "--dir", str(harness_out / "local-data"), "--checkpoint", str(blocker / "cp.sqlite3")),
        2,
    )
    assert "--checkpoint" in line and "cannot open it" in line


def test_trace_id_of_something_else():
    assert "not a run id" in one_line(wft("trace-id", "nope"), 2)


# ---- wft serve ---------------------------------------------------------------------------------


def _serve(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``wft serve`` that must refuse to start: it returns at once (a started one would block)."""
    store = tmp_path / "store" / "store.sqlite3"
    return wft("serve", "--port", "0", "--store", str(store), *args, env=env, timeout=60)


def test_serve_refuses_a_world_url_that_is_not_one(tmp_path):
    line = one_line(_serve(tmp_path, "--world", "postgres", "--url", "notaurl"), 2)
    assert "--url notaurl" in line and "not a PostgreSQL URL" in line
    line = one_line(_serve(tmp_path, "--url", "notaurl"), 2)  # --url alone means world-postgres
    assert "not a PostgreSQL URL" in line


def test_serve_refuses_a_forward_url_that_is_not_one(tmp_path):
    line = one_line(_serve(tmp_path, "--no-world", "--forward-otlp", "not-a-url"), 2)
    assert "--forward-otlp" in line and "'not-a-url'" in line
    assert not (tmp_path / "store" / "spool").exists()  # nothing spooled, for ever or at all


def test_serve_refuses_a_folder_that_is_not_a_world(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    line = one_line(_serve(tmp_path, "--dir", str(tmp_path)), 2)
    assert "not a world-local data directory" in line


def test_serve_on_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        store = tmp_path / "store.sqlite3"
        line = one_line(wft("serve", "--no-world", "--port", str(port), "--store", str(store), timeout=60), 1)
    assert f"port {port} on 127.0.0.1 is already in use" in line and "--port" in line


def test_serve_with_a_store_path_it_cannot_write(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_line(_serve(tmp_path, "--no-world", "--store", str(blocker / "store.sqlite3")), 2)
    assert "store" in line and "cannot be opened" in line and "Not a directory" in line
    line = one_line(_serve(tmp_path, "--no-world", "--store", "/proc/wft/store.sqlite3"), 2)
    assert "/proc/wft/store.sqlite3" in line


class Serving:
    """``wft serve`` as a process of its own (stopped by its pid), its stderr collected."""

    def __init__(self, tmp_path: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "telemetry", "serve", "--port", str(self.port)]
            + ["--store", str(tmp_path / "store" / "store.sqlite3"), *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env={**os.environ, **(env or {})},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while "listening on" not in self.text():
            assert self.process.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def test_serve_on_a_missing_folder_starts_and_warns(tmp_path):
    missing = tmp_path / "not-yet"
    serving = Serving(tmp_path, "--dir", str(missing))
    try:
        warnings = [line for line in serving.text().splitlines() if "WARNING" in line]
        assert len(warnings) == 1 and f"--dir {missing}" in warnings[0] and "not found" in warnings[0]
        assert f"following local {missing}" in serving.text() and "(from env)" not in serving.text()
        assert "Traceback" not in serving.text()
    finally:
        serving.stop()


def test_serve_says_once_why_it_cannot_read_a_postgres_world(pg, tmp_path):
    """The collector keeps serving (the app may set the world up later) and says which problem it is."""
    url = f"postgres://wft_cli_pw:not-the-{PASSWORD}@127.0.0.1:{pg.port}/world"
    serving = Serving(tmp_path, "--url", url)
    try:
        deadline = time.monotonic() + 20
        while "world tailer:" not in serving.text():
            assert time.monotonic() < deadline, serving.text()
            time.sleep(0.1)
        time.sleep(2.5)  # a few more failed passes: still said once
        said = [line for line in serving.text().splitlines() if "world tailer:" in line]
        assert len(said) == 1 and "wrong user or password" in said[0] and "wft_cli_pw:***@" in said[0]
        assert PASSWORD not in serving.text() and "Traceback" not in serving.text()
    finally:
        serving.stop()


def test_sentry_relay_without_upstream_says_so_once_and_counts(tmp_path):
    serving = Serving(tmp_path, "--no-world", env={"WFT_SENTRY_UPSTREAM": ""})
    try:
        sentry_sdk.init(dsn=f"http://clientkey@127.0.0.1:{serving.port}/42", default_integrations=False)
        try:
            for message in ("a real failure", "another real failure"):
                try:
                    raise RuntimeError(message)
                except RuntimeError:
                    sentry_sdk.capture_exception()
            sentry_sdk.flush(10)
        finally:
            sentry_sdk.get_client().close()
            sentry_sdk.init()
        deadline = time.monotonic() + 20
        while True:
            metrics = http("GET", f"{serving.url}/metrics")[2].decode()
            if "wft_sentry_unforwarded_events 2" in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "wft_sentry_unforwarded_events 2" in metrics, metrics
        said = [line for line in serving.text().splitlines() if "sentry relay" in line]
        assert len(said) == 1 and "no upstream" in said[0] and "--sentry-upstream" in said[0]
    finally:
        serving.stop()


def test_help_text_names_sources_truthfully():
    for command in ("serve", "runs", "export", "follow", "trace-id"):
        result = wft(command, "--help")
        assert result.returncode == 0 and "(from env)" not in result.stdout, command
    assert "--debug" in wft("runs", "--help").stdout and "--debug" in wft("--help").stdout
