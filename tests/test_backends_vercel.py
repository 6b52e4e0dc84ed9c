"""telemetry.backends.vercel: the world-vercel reader, proven against the real clients.

The workflow server is a FAKE (tests/fake_vercel_backend.py, Vercel is unreachable here). That it
speaks the real protocol is shown by the real clients: ``@workflow/world-vercel`` 4.7 under node
(tests/vercel_node/contract.mjs, from the sdk-harness's npm install) writes runs, steps, events,
hooks and a stream to it and reads them back; then our reader reads the same server and must agree
with what the TS client read. ``vercel-workflow``'s own Vercel world client (Python) drives it too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest

from telemetry.backends import backend_config, open_backend, world_kind
from telemetry.backends.vercel import LOGS_IN_FLIGHT, VercelConfig, VercelWorld
from telemetry.errors import (
    EntityConflictError,
    HookNotFoundError,
    PreconditionFailedError,
    RunExpiredError,
    ThrottleError,
    TooEarlyError,
    WorkflowRunNotFoundError,
    WorkflowWorldError,
)
from telemetry.payloads import UNDEFINED, Encrypted, JSError, Opaque
from telemetry.reading import event_log
from telemetry.stream_format import decode_chunks, encode_chunk, serialize_value
from telemetry.world import Pagination, traced

from .conftest import wft
from .fake_vercel_backend import FakeVercelBackend
from .fake_vercel_backend import seed_run as _seed

NODE_DIR = Path(__file__).resolve().parent / "vercel_node"


# ---- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sdk_modules(harness_app_dir: Path) -> Path:
    """The harness's node_modules: the real @workflow/world-vercel, @workflow/core, world-local…"""
    modules = harness_app_dir / "node_modules"
    assert (modules / "@workflow" / "world-vercel" / "package.json").exists()
    return modules


def run_node(script: str, *args: str, modules: Path, env: dict[str, str], cwd: Path | None = None) -> Any:
    result = subprocess.run(
        ["node", str(NODE_DIR / script), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, "WFT_SDK_NODE_MODULES": str(modules), **env},
    )
    assert result.returncode == 0, f"node {script} {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


@pytest.fixture
def fake() -> Iterator[FakeVercelBackend]:
    backend = FakeVercelBackend()
    _, stop = backend.serve()
    yield backend
    stop()


def reader(fake: FakeVercelBackend, **env: str) -> VercelWorld:
    base = {"VERCEL_TOKEN": fake.token, "VERCEL_WORKFLOW_SERVER_URL": fake.url}
    return VercelWorld(VercelConfig.from_env({**base, **env}))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tagged(value: Any) -> Any:
    """The Python twin of sdk.mjs's ``tagged``: decoded values as comparable JSON."""
    if value is UNDEFINED:
        return {"$undefined": True}
    if isinstance(value, Encrypted):
        return {"$encrypted": True}
    if isinstance(value, datetime):
        return {"$date": iso(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, JSError):
        return {"$error": {"name": value.name, "message": value.message}}
    if isinstance(value, set):
        return {"$set": [tagged(v) for v in value]}
    if isinstance(value, dict):
        return {str(k): tagged(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tagged(v) for v in value]
    return value


def payload(value: Any) -> Any:
    """What contract.mjs prints for a payload the TS client read (``$absent`` when there is none)."""
    return {"$absent": True} if value is None else tagged(value)


def contract(fake: FakeVercelBackend, modules: Path, **env: str) -> dict[str, Any]:
    return run_node(
        "contract.mjs",
        modules=modules,
        env={"FAKE_URL": fake.url, "TOKEN": fake.token, **env},
    )


# ---- the real TS client against the fake ------------------------------------------------------
@pytest.fixture
def direct(fake: FakeVercelBackend, sdk_modules: Path) -> dict[str, Any]:
    return contract(fake, sdk_modules, MODE="direct")


def test_the_ts_client_reads_back_what_it_wrote(fake, direct):
    written, read = direct["written"], direct["read"]
    ids = written["runs"]
    run_a, run_b = read["runs"]
    assert (run_a["runId"], run_a["status"], run_b["status"]) == (ids["runA"], "completed", "failed")
    assert run_a["inputHex"] == written["payloads"]["runInput"]
    assert run_a["outputHex"] == written["payloads"]["runOutput"]
    assert run_a["input"] == [{"order": 7, "at": {"$date": "2026-03-04T05:06:07.089Z"}}, "express"]
    assert run_b["error"] == {"message": "boom", "stack": "Error: boom\n    at refund", "code": "USER_ERROR"}
    (step,) = read["steps"]
    assert (step["status"], step["attempt"]) == ("completed", 2)
    assert step["inputHex"] == written["payloads"]["stepInput"]
    assert step["outputHex"] == written["payloads"]["stepResult"]
    assert read["stepByRun"] == read["stepAlone"] == step
    by_type = {e["eventType"]: e for e in read["events"]}
    assert by_type["hook_received"]["payloadHex"] == written["payloads"]["hookPayload"]
    assert by_type["step_retrying"]["error"] == {
        "message": "card declined",
        "stack": "Error: card declined\n    at charge",
    }
    assert read["eventPages"] == 3  # 12 events, 4 a page: the server's cursor went round
    assert [e["eventType"] for e in read["events"]] == [
        "run_created",
        "run_started",
        "step_created",
        "step_started",
        "step_retrying",
        "step_started",
        "step_completed",
        "hook_created",
        "hook_received",
        "wait_created",
        "wait_completed",
        "run_completed",
    ]
    assert read["hookGet"]["metadataHex"] == written["payloads"]["hookMeta"]
    assert read["hookByToken"] == ids["hookA"]
    assert read["hooksB"] == []  # disposed
    assert (read["missingRun"], read["missingHook"]) == ("WorkflowRunNotFoundError", "HookNotFoundError")
    assert read["streams"] == [ids["streamName"]]
    assert read["streamInfo"] == {"tailIndex": 13, "done": True}
    assert read["streamValues"][:3] == ["hello", 42, 3.5]
    assert read["lateWrite"].startswith("Stream write failed: HTTP 409")  # the run had completed
    assert fake.token not in json.dumps(read)


def test_our_reader_agrees_with_the_ts_client(fake, direct):
    read, ids = direct["read"], direct["written"]["runs"]
    world = reader(fake)

    async def check() -> None:
        for expected in read["runs"]:
            got = await world.runs.get(expected["runId"])
            assert (got.run_id, got.status, got.workflow_name, got.deployment_id) == (
                expected["runId"],
                expected["status"],
                expected["workflowName"],
                expected["deploymentId"],
            )
            assert [iso(got.created_at), iso(got.started_at), iso(got.completed_at)] == [
                expected["createdAt"],
                expected["startedAt"],
                expected["completedAt"],
            ]
            assert got.execution_context == expected["executionContext"]
            assert payload(got.input) == expected["input"]
            assert payload(got.output) == expected["output"]
            if expected["error"]:
                assert got.error is not None
                assert (got.error.message, got.error.stack, got.error.code) == tuple(expected["error"].values())
            else:
                assert got.error is None

        listed = await world.runs.list(pagination=Pagination(limit=1), resolve_data="none")
        assert listed.has_more and listed.data[0].run_id == read["runList"]["ids"][0]
        assert listed.data[0].input is None  # resolve_data="none": no payloads
        rest = await world.runs.list(pagination=Pagination(limit=1, cursor=listed.cursor), resolve_data="none")
        assert [r.run_id for r in rest.data] == read["runList"]["ids"][1:]
        failed = await world.runs.list(status="failed")
        assert [r.run_id for r in failed.data] == read["failedRuns"]

        for expected_steps, run_id in ((read["steps"], ids["runA"]), (read["stepsB"], ids["runB"])):
            steps = (await world.steps.list(run_id=run_id)).data
            assert len(steps) == len(expected_steps)
            for got, expected in zip(steps, expected_steps, strict=True):
                assert (got.step_id, got.step_name, got.status, got.attempt) == (
                    expected["stepId"],
                    expected["stepName"],
                    expected["status"],
                    expected["attempt"],
                )
                assert [iso(got.created_at), iso(got.started_at), iso(got.completed_at), iso(got.retry_after)] == [
                    expected["createdAt"],
                    expected["startedAt"],
                    expected["completedAt"],
                    expected["retryAfter"],
                ]
                assert payload(got.input) == expected["input"]
                assert payload(got.output) == expected["output"]
                assert (got.error.message, got.error.stack) == tuple(expected["error"].values())
        assert (await world.steps.get(None, ids["stepA"])).step_id == ids["stepA"]

        events = []
        cursor = None
        while True:
            page = await world.events.list(run_id=ids["runA"], pagination=Pagination(limit=4, cursor=cursor))
            events.extend(page.data)
            if not page.has_more:
                break
            assert page.cursor == page.data[-1].event_id  # our cursors are event ids
            cursor = page.cursor
        assert len(events) == len(read["events"])
        for got, expected in zip(events, read["events"], strict=True):
            assert (got.event_id, got.run_id, got.event_type, got.correlation_id, iso(got.created_at)) == (
                expected["eventId"],
                expected["runId"],
                expected["eventType"],
                expected["correlationId"],
                expected["createdAt"],
            )
            data = got.event_data or {}
            field = {"run_created": "input", "step_created": "input", "step_completed": "result"}.get(got.event_type)
            field = field or {"run_completed": "output", "hook_created": "metadata", "hook_received": "payload"}.get(
                got.event_type
            )
            if field:
                assert tagged(data[field]) == expected["payload"], got.event_type
            if expected["error"]:
                assert {"message": data["error"]["message"], "stack": data["error"].get("stack")} == expected["error"]
            assert iso(data.get("resumeAt")) == expected["resumeAt"]
            assert iso(data.get("retryAfter")) == expected["retryAfter"]
            assert data.get("token") == expected["token"]
            assert data.get("stepName") == expected["stepName"]
        failed_events = (await world.events.list(run_id=ids["runB"])).data
        assert [e.event_type for e in failed_events] == [e["eventType"] for e in read["eventsB"]]
        run_failed = failed_events[-1].event_data or {}
        assert run_failed["error"]["message"] == "boom"

        one = await world.events.get(ids["runA"], read["eventGet"]["eventId"])
        assert tagged((one.event_data or {})["result"]) == read["eventGet"]["payload"]
        correlated = await world.events.list_by_correlation_id(correlation_id=ids["stepA"])
        assert [e.event_type for e in correlated.data] == read["byCorrelation"]

        hooks = (await world.hooks.list(run_id=ids["runA"])).data
        assert [(h.hook_id, h.token, iso(h.created_at), tagged(h.metadata)) for h in hooks] == [
            (h["hookId"], h["token"], h["createdAt"], h["metadata"]) for h in read["hooks"]
        ]
        assert (await world.hooks.get_by_token(ids["tokenA"])).hook_id == ids["hookA"]
        assert (await world.hooks.list(run_id=ids["runB"])).data == []
        with pytest.raises(HookNotFoundError):
            await world.hooks.get_by_token("tok_nope")
        with pytest.raises(WorkflowRunNotFoundError):
            await world.runs.get("wrun_01ARZ3NDEKTSV4RRFFQ69G5FAV")

        name = ids["streamName"]
        assert await world.streams.list(ids["runA"]) == read["streams"]
        info = await world.streams.get_info(name, ids["runA"])
        assert {"tailIndex": info.tail_index, "done": info.done} == read["streamInfo"]
        pages, cursor = [], None
        while True:
            chunk_page = await world.streams.get_chunks(name, ids["runA"], limit=5, cursor=cursor)
            pages.append([{"index": c.index, "hex": c.data.hex()} for c in chunk_page.data])
            if not chunk_page.has_more:
                break
            cursor = chunk_page.cursor
        assert pages == read["streamChunks"]
        values, done = await world.streams.read_values(name, ids["runA"], page_size=3)
        assert done and tagged(values) == read["streamValues"]
        live = b"".join([chunk async for chunk in world.streams.live(name)])
        assert tagged(decode_chunks(live)) == read["streamValues"]
        await world.close()

    run(check())


def test_proxy_mode_sends_what_the_ts_client_sends(fake, sdk_modules):
    """Project and team set: both clients go through the API proxy (WORKFLOW_VERCEL_BACKEND_URL),
    with the token, the deployment headers and the server override in x-vercel-workflow-api-url."""
    result = contract(fake, sdk_modules, MODE="proxy", PROJECT="prj_p", TEAM="team_t")
    ts_requests = list(fake.requests)
    assert ts_requests and all(path.startswith("/proxy/") for _, path, _ in ts_requests)
    ts_headers = ts_requests[-1][2]
    world = reader(
        fake,
        WORKFLOW_VERCEL_BACKEND_URL=f"{fake.url}/proxy",
        VERCEL_WORKFLOW_SERVER_URL="https://workflow-server-git-branch.vercel.sh",
        WORKFLOW_VERCEL_PROJECT="prj_p",
        WORKFLOW_VERCEL_TEAM="team_t",
        WORKFLOW_VERCEL_ENV="preview",
    )
    fake.requests.clear()
    got = run(_get_and_close(world, result["written"]["runs"]["runA"]))
    assert got.status == "completed"
    (_, path, headers), *_ = fake.requests
    assert path.startswith("/proxy/v2/runs/")
    for name in ("Authorization", "x-vercel-project-id", "x-vercel-team-id", "x-vercel-environment"):
        assert headers[name] == ts_headers[name], name
    assert headers["x-vercel-workflow-api-url"] == ts_headers["x-vercel-workflow-api-url"]
    assert headers["x-vercel-environment"] == "preview"
    assert headers["User-Agent"].startswith("@workflow/world-vercel/4.7")


async def _get_and_close(world: VercelWorld, run_id: str) -> Any:
    try:
        return await world.runs.get(run_id)
    finally:
        await world.close()


def test_encrypted_payloads_open_with_the_deployment_key_and_never_crash_without(fake, sdk_modules, caplog):
    key = base64.b64encode(os.urandom(32)).decode()
    result = contract(fake, sdk_modules, MODE="direct", DEPLOYMENT_KEY=key, PROJECT="prj_enc")
    read, ids = result["read"], result["written"]["runs"]
    assert all(bytes.fromhex(h).startswith(b"encr") for h in result["written"]["payloads"].values())

    async def values(world: VercelWorld) -> tuple[Any, ...]:
        try:
            run_a = await world.runs.get(ids["runA"])
            step = (await world.steps.list(run_id=ids["runA"])).data[0]
            events = (await world.events.list(run_id=ids["runA"])).data
            hook = await world.hooks.get(ids["hookA"])
            stream, _ = await world.streams.read_values(ids["streamName"], ids["runA"])
            return run_a, step, events, hook, stream
        finally:
            await world.close()

    run_a, step, events, hook, stream = run(
        values(reader(fake, VERCEL_DEPLOYMENT_KEY=key, WORKFLOW_VERCEL_PROJECT="prj_enc"))
    )
    assert payload(run_a.input) == read["runs"][0]["input"]
    assert payload(run_a.output) == read["runs"][0]["output"]
    assert payload(step.output) == read["steps"][0]["output"]
    assert tagged(hook.metadata) == read["hooks"][0]["metadata"]
    assert tagged((events[-1].event_data or {})["output"]) == read["runs"][0]["output"]
    assert tagged(stream) == read["streamValues"]

    run_a, step, events, hook, stream = run(values(reader(fake)))  # no key: shown as encrypted
    assert isinstance(run_a.input, Encrypted) and isinstance(step.output, Encrypted)
    assert isinstance(hook.metadata, Encrypted) and isinstance((events[0].event_data or {})["input"], Encrypted)
    assert stream and all(isinstance(v, Encrypted) for v in stream)

    wrong = base64.b64encode(os.urandom(32)).decode()
    with caplog.at_level(logging.WARNING, logger="telemetry.backends.vercel"):
        run_a, step, _, _, stream = run(
            values(reader(fake, VERCEL_DEPLOYMENT_KEY=wrong, WORKFLOW_VERCEL_PROJECT="prj_enc"))
        )
    assert isinstance(run_a.input, Encrypted) and all(isinstance(v, Encrypted) for v in stream)
    warnings = [r.getMessage() for r in caplog.records if ids["runA"] in r.getMessage()]
    assert len(warnings) == 1 and "authentication failed" in warnings[0]  # once per run, not per payload
    assert wrong not in caplog.text and key not in caplog.text


# ---- vercel-workflow's own Vercel world client: the second real client --------------------------
def test_vercel_workflow_python_client_drives_the_same_server(fake, direct, monkeypatch):
    vw = pytest.importorskip("vercel.workflow._internal.worlds.vercel")
    world_mod = pytest.importorskip("vercel.workflow._internal.world")
    monkeypatch.setenv("VERCEL_WORKFLOW_SERVER_URL", fake.url)
    monkeypatch.delenv("VERCEL_OIDC_TOKEN", raising=False)
    sdk = vw.VercelWorld(token=fake.token)
    ids = direct["written"]["runs"]
    ours = reader(fake)

    async def scenario() -> dict[str, Any]:
        # 1. it reads what the TS client wrote (its /v3 events, the /v2 run, the /v3 live stream)
        run_a = await sdk.runs_get(ids["runA"])
        sdk_events = await sdk.events_list(ids["runA"])
        stream = b"".join([c async for c in sdk.streams_get(ids["runA"], ids["streamName"])])
        # 2. it writes a run of its own, and a stream, which we (and it) read back
        run_id = f"wrun_{__import__('ulid').ULID()}"
        step_id = f"step_{__import__('ulid').ULID()}"
        created = await sdk.events_create(
            run_id,
            world_mod.RunCreatedEvent(
                event_data=world_mod.RunCreatedEventData(
                    deployment_id="dpl_py", workflow_name="workflow//py//flow", input=serialize_value(["py", 1])
                )
            ),
        )
        await sdk.events_create(run_id, world_mod.RunStartedEventData().into_event())
        await sdk.events_create(
            run_id,
            world_mod.StepCreatedEventData(step_name="step//py//double", input=serialize_value([21])).into_event(
                step_id
            ),
        )
        await sdk.events_create(run_id, world_mod.StepStartedEventData().into_event(step_id))
        await sdk.events_create(
            run_id, world_mod.StepCompletedEventData(result=serialize_value(42)).into_event(step_id)
        )
        stream_name = f"{run_id.replace('wrun_', 'strm_')}_user"
        await sdk.streams_write_multi(run_id, stream_name, [encode_chunk(v) for v in ("a", {"b": 2})])
        await sdk.streams_close(run_id, stream_name)
        await sdk.events_create(
            run_id, world_mod.RunCompletedEventData(output=serialize_value({"doubled": 42})).into_event()
        )
        their_run = await sdk.runs_get(run_id)
        our_run = await ours.runs.get(run_id)
        our_steps = (await ours.steps.list(run_id=run_id)).data
        our_events = (await ours.events.list(run_id=run_id)).data
        our_stream, done = await ours.streams.read_values(stream_name, run_id)
        await ours.close()
        return locals()

    out = run(scenario())
    ts_run = direct["read"]["runs"][0]
    assert (out["run_a"].run_id, out["run_a"].status) == (ts_run["runId"], "completed")
    assert out["run_a"].input.hex() == ts_run["inputHex"]
    assert [e.event_type for e in out["sdk_events"].data] == [e["eventType"] for e in direct["read"]["events"]]
    assert tagged(decode_chunks(out["stream"])) == direct["read"]["streamValues"]

    assert out["created"].run is not None and out["their_run"].status == "completed"
    assert (out["our_run"].run_id, out["our_run"].status, out["our_run"].workflow_name) == (
        out["run_id"],
        "completed",
        "workflow//py//flow",
    )
    assert out["our_run"].input == ["py", 1] and out["our_run"].output == {"doubled": 42}
    (step,) = out["our_steps"]
    assert (step.step_id, step.status, step.attempt, step.input, step.output) == (
        out["step_id"],
        "completed",
        1,
        [21],
        42,
    )
    assert [e.event_type for e in out["our_events"]] == [
        "run_created",
        "run_started",
        "step_created",
        "step_started",
        "step_completed",
        "run_completed",
    ]
    assert (out["our_stream"], out["done"]) == (["a", {"b": 2}], True)


# ---- statuses, secrets, hostile answers ---------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (409, {}, EntityConflictError),
        (410, {}, RunExpiredError),
        (412, {"Retry-After": "3"}, PreconditionFailedError),
        (425, {"Retry-After": "2"}, TooEarlyError),
        (429, {"Retry-After": "7"}, ThrottleError),
        (400, {}, WorkflowWorldError),
    ],
)
def test_http_statuses_become_the_sdk_errors(fake, status, headers, expected):
    fake.fail("GET", r"/v2/runs$", status, headers=headers, body={"message": f"nope {status}", "code": "X"})
    world = reader(fake)
    with pytest.raises(expected) as caught:
        run(_list_and_close(world))
    error = caught.value
    assert type(error) is expected
    assert str(error) == f"nope {status}"
    if "Retry-After" in headers:
        assert error.retry_after == int(headers["Retry-After"])


async def _list_and_close(world: VercelWorld) -> Any:
    try:
        return await world.runs.list()
    finally:
        await world.close()


def test_a_firewall_challenge_is_a_transport_error_and_5xx_reads_are_retried(fake):
    fake.fail("GET", r"/v2/runs$", 429, headers={"x-vercel-mitigated": "challenge", "x-vercel-id": "iad1::abc"})
    with pytest.raises(WorkflowWorldError) as caught:
        run(_list_and_close(reader(fake)))
    assert type(caught.value) is WorkflowWorldError and caught.value.code == "TRANSPORT"
    assert "x-vercel-id=iad1::abc" in str(caught.value) and "(x-vercel-mitigated=challenge)" in str(caught.value)

    fake.fail("GET", r"/v2/runs$", 503, times=2)
    assert run(_list_and_close(reader(fake))).data == []  # two 503s, then the answer
    fake.fail("GET", r"/v2/runs$", 503, times=3)
    with pytest.raises(WorkflowWorldError) as caught:
        run(_list_and_close(reader(fake)))
    assert caught.value.status == 503


def test_tokens_never_reach_errors_logs_or_reprs(fake, caplog):
    fake.fail("GET", r"/v2/runs$", 500, body={"message": f"bad token {fake.token} here"})
    world = reader(fake, VERCEL_OIDC_TOKEN="oidc-secret-77")
    with caplog.at_level(logging.DEBUG), pytest.raises(WorkflowWorldError) as caught:
        run(_list_and_close(world))
    assert "bad token <redacted> here" in str(caught.value)
    assert fake.token not in str(caught.value)
    with pytest.raises(HookNotFoundError) as missing:
        run(_close_after(world, world.hooks.get_by_token("secret-hook-token")))
    assert "secret-hook-token" not in str(missing.value)
    for text in (caplog.text, repr(world), repr(world.config), repr(world.http)):
        assert fake.token not in text and "oidc-secret-77" not in text
    sent = fake.requests[-1][2]
    assert sent["Authorization"] == f"Bearer {fake.token}"  # the explicit token wins over OIDC …
    assert sent["x-vercel-trusted-oidc-idp-token"] == "oidc-secret-77"  # … which still rides along


async def _close_after(world: VercelWorld, coro: Any) -> Any:
    try:
        return await coro
    finally:
        await world.close()


def test_unauthorized_and_unreachable_are_one_line_errors(fake):
    wrong = VercelWorld(VercelConfig.from_env({"VERCEL_TOKEN": "wrong", "VERCEL_WORKFLOW_SERVER_URL": fake.url}))
    with pytest.raises(WorkflowWorldError) as caught:
        run(_list_and_close(wrong))
    assert caught.value.status == 401 and "\n" not in str(caught.value) and "wrong" not in str(caught.value)

    closed = VercelWorld(
        VercelConfig.from_env({"VERCEL_TOKEN": "t", "VERCEL_WORKFLOW_SERVER_URL": "http://127.0.0.1:9"})
    )
    with pytest.raises(WorkflowWorldError) as caught:
        run(_list_and_close(closed))
    assert caught.value.code == "TRANSPORT" and "\n" not in str(caught.value)


def test_hostile_answers_are_clear_errors(fake, direct):
    ids = direct["written"]["runs"]
    world = reader(fake)
    fake.truncate_lists = True  # a list cut between two whole frames: no end sentinel
    with pytest.raises(WorkflowWorldError, match="without its end sentinel") as caught:
        run(_close_after(world, world.events.list(run_id=ids["runA"])))
    assert caught.value.code == "PARSE_ERROR"
    fake.truncate_lists = False
    fake.fail(
        "GET",
        r"/v4/runs/.*/events$",
        200,
        raw=b"\x00\x00\x00\x09\xa1",
        content_type="application/vnd.workflow.v4-frames",
    )
    with pytest.raises(WorkflowWorldError, match="inside a frame"):
        run(_close_after(world, world.events.list(run_id=ids["runA"])))
    fake.fail("GET", r"/v2/runs/", 200, raw=b"\xff\xfe not cbor", content_type="application/cbor")
    with pytest.raises(WorkflowWorldError, match="cannot parse") as caught:
        run(_close_after(world, world.runs.get(ids["runA"])))
    assert caught.value.code == "PARSE_ERROR"
    fake.fail("GET", r"/v4/runs/.*/events$", 200, raw=b"<html>", content_type="text/html")
    with pytest.raises(WorkflowWorldError, match="expected application/vnd.workflow.v4-frames"):
        run(_close_after(world, world.events.list(run_id=ids["runA"])))
    fake.fail(
        "GET", r"/v4/runs/.*/events$", 200, raw=b"\xff\xff\xff\xff", content_type="application/vnd.workflow.v4-frames"
    )
    with pytest.raises(WorkflowWorldError, match="frame meta of"):
        run(_close_after(world, world.events.list(run_id=ids["runA"])))
    assert run(_close_after(world, world.runs.get(ids["runA"]))).status == "completed"  # and it reads on
    fake.fail("GET", r"/v2/runs/", 200, raw=cbor2.dumps({"status": "completed"}), content_type="application/cbor")
    with pytest.raises(WorkflowWorldError, match="schema validation") as caught:
        run(_close_after(world, world.runs.get(ids["runA"])))
    assert caught.value.code == "SCHEMA_VALIDATION"
    fake.fail("GET", r"/v2/runs$", 200, raw=cbor2.dumps(["not", "a", "page"]), content_type="application/cbor")
    with pytest.raises(WorkflowWorldError, match="schema validation"):
        run(_close_after(world, world.runs.list()))


def test_a_payload_that_does_not_parse_is_kept_and_the_run_still_reads(fake, direct, caplog):
    ids = direct["written"]["runs"]
    fake.runs[ids["runA"]]["output"] = b"devl[[not json"
    world = reader(fake)
    with caplog.at_level(logging.WARNING, logger="telemetry.backends.vercel"):
        got = run(_close_after(world, world.runs.get(ids["runA"])))
        again = run(_close_after(world, world.runs.get(ids["runA"])))
    assert isinstance(got.output, Opaque) and got.output.data == b"devl[[not json"
    assert got.input == [{"order": 7, "at": datetime(2026, 3, 4, 5, 6, 7, 89000, tzinfo=UTC)}, "express"]
    assert again.status == "completed"
    assert len([r for r in caplog.records if "unreadable payload" in r.getMessage()]) == 1


def test_configuration_errors_are_one_line_and_refuse_cleartext_tokens():
    with pytest.raises(WorkflowWorldError, match="no credentials"):
        VercelConfig.from_env({})
    with pytest.raises(WorkflowWorldError, match="needs a Vercel token"):
        VercelConfig.from_env({"VERCEL_OIDC_TOKEN": "o", "WORKFLOW_VERCEL_PROJECT": "p", "WORKFLOW_VERCEL_TEAM": "t"})
    with pytest.raises(WorkflowWorldError, match="plain http to another host"):
        VercelConfig.from_env({"VERCEL_TOKEN": "t", "VERCEL_WORKFLOW_SERVER_URL": "http://example.com"})
    with pytest.raises(WorkflowWorldError, match="must not carry credentials"):
        VercelConfig.from_env({"VERCEL_TOKEN": "t", "VERCEL_WORKFLOW_SERVER_URL": "https://u:p@example.com"})
    direct = VercelConfig.from_env({"VERCEL_TOKEN": "t"})
    assert (direct.base_url, direct.using_proxy) == ("https://vercel-workflow.com/api", False)
    proxy = VercelConfig.from_env(
        {"VERCEL_TOKEN": "tok-secret", "WORKFLOW_VERCEL_PROJECT": "p", "WORKFLOW_VERCEL_TEAM": "t"}
    )
    assert (proxy.base_url, proxy.using_proxy) == ("https://api.vercel.com/v1/workflow", True)
    assert proxy.headers()["Authorization"] == "Bearer tok-secret" and "tok-secret" not in repr(proxy)


def test_the_world_is_chosen_like_the_others(monkeypatch, fake):
    assert world_kind("vercel") == world_kind("@workflow/world-vercel") == "vercel"
    monkeypatch.setenv("WORKFLOW_TARGET_WORLD", "@workflow/world-vercel")
    monkeypatch.setenv("VERCEL_TOKEN", fake.token)
    monkeypatch.setenv("VERCEL_WORKFLOW_SERVER_URL", fake.url)
    config = backend_config(implicit=False)
    assert config is not None and config.kind == "vercel"
    world = open_backend(config)
    assert isinstance(world, VercelWorld) and world.config.base_url == f"{fake.url}/api"
    flagged_config = backend_config("vercel", url="http://127.0.0.1:1")
    assert flagged_config is not None
    flagged = open_backend(flagged_config)
    assert isinstance(flagged, VercelWorld) and flagged.config.base_url == "http://127.0.0.1:1/api"


def test_calls_are_traced_like_the_other_worlds(fake, direct, spans):
    provider, exporter = spans
    inner = reader(fake)
    world = traced(inner, peer_service=inner.peer_service, rpc_system=inner.rpc_system, tracer_provider=provider)
    ids = direct["written"]["runs"]

    async def calls() -> None:
        await world.runs.get(ids["runA"])
        await world.events.list(run_id=ids["runA"])
        await world.streams.get_info(ids["streamName"], ids["runA"])
        with pytest.raises(WorkflowRunNotFoundError):
            await world.runs.get("wrun_01ARZ3NDEKTSV4RRFFQ69G5FAV")
        await inner.close()

    run(calls())
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == [
        "world.runs.get",
        "world.events.list",
        "world.streams.getStreamInfo",
        "world.runs.get",
    ]
    for span in finished:
        assert span.attributes["rpc.system"] == "http"
        assert span.attributes["peer.service"] == "workflow-server"
    assert finished[0].attributes["workflow.run.id"] == ids["runA"]
    assert finished[-1].events and finished[-1].events[0].name == "exception"


# ---- paging and the change feed: cost is what is new -------------------------------------------
def _event_requests(fake: FakeVercelBackend) -> list[str]:
    return [path for method, path, _ in fake.requests if method == "GET" and "/events" in path]


def test_resuming_a_log_after_an_event_id_reads_at_most_one_page_again(fake):
    from ulid import ULID

    run_id = f"wrun_{ULID()}"
    _seed(fake, run_id, 30, finish=False)  # 2 + 90 events
    world = reader(fake)

    async def scenario() -> None:
        ids = [e.event_id for e in fake.events[run_id]]
        page = await world.events.list(run_id=run_id, pagination=Pagination(limit=25))
        assert [e.event_id for e in page.data] == ids[:25] and page.cursor == ids[24]
        seen = list(page.data)
        while page.has_more:
            page = await world.events.list(run_id=run_id, pagination=Pagination(limit=25, cursor=page.cursor))
            seen.extend(page.data)
        assert [e.event_id for e in seen] == ids

        fake.requests.clear()  # a follower's next pass: nothing new, resume after the last id
        idle = await world.events.list(run_id=run_id, pagination=Pagination(limit=1000, cursor=ids[-1]))
        assert idle.data == [] and len(_event_requests(fake)) == 1
        assert "cursor=" in _event_requests(fake)[0]  # from the last page's server cursor, not the start
        fake.apply(run_id, "run_completed", correlation_id=None, spec_version=2, data={}, payload=serialize_value(1))
        grown = await world.events.list(run_id=run_id, pagination=Pagination(limit=1000, cursor=ids[-1]))
        assert [e.event_type for e in grown.data] == ["run_completed"]
        middle = await world.events.list(run_id=run_id, pagination=Pagination(limit=5, cursor=ids[40]))
        assert [e.event_id for e in middle.data] == ids[41:46] and middle.has_more

        fresh = reader(fake)  # another process: no server cursors known, so from the start, skipping
        resumed = await fresh.events.list(run_id=run_id, pagination=Pagination(limit=1000, cursor=ids[60]))
        assert [e.event_id for e in resumed.data] == [*ids[61:], grown.data[0].event_id]
        await fresh.close()
        await world.close()

    run(scenario())


def test_many_runs_logs_are_read_at_once_and_equal_reading_them_in_turn(fake):
    """``events.logs``: the readers of many runs (export, a follower's passes) overlap the round trips
    of up to ``LOGS_IN_FLIGHT`` runs; what they get is what reading each log in turn gets."""
    from ulid import ULID

    runs = [f"wrun_{ULID()}" for _ in range(40)]
    for i, run_id in enumerate(runs):
        _seed(fake, run_id, i % 4)
    fake.latency = 0.02
    world = reader(fake)

    async def scenario() -> None:
        in_turn = {r: [e.event_id for e in await event_log(world, r)] for r in runs}
        assert fake.max_in_flight == 1
        fake.max_in_flight = 0
        at_once = {r: [e.event_id for e in events] async for r, events in world.events.logs(dict.fromkeys(runs))}
        assert at_once == in_turn
        assert 2 <= fake.max_in_flight <= LOGS_IN_FLIGHT
        after = {r: in_turn[r][1] for r in runs[:5]}  # resumed after an event id, as a follower does
        resumed = {r: [e.event_id for e in events] async for r, events in world.events.logs(after)}
        assert resumed == {r: in_turn[r][2:] for r in after}

        fake.fail("GET", f"/v4/runs/{runs[7]}/events$", 404, body={"message": "Run not found", "code": "NOT_FOUND"})
        with pytest.raises(WorkflowWorldError):  # the first failure stops the rest and is raised
            async for _ in world.events.logs(dict.fromkeys(runs)):
                pass
        reads = world.events.logs(dict.fromkeys(runs))
        await reads.__anext__()
        await reads.aclose()  # a reader that stops early leaves nothing running
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        await world.close()

    run(scenario())


def test_many_runs_logs_through_traced_are_a_span_per_round_trip(fake, spans, harness_out):
    """``traced(world).events.logs``: each page it reads is a ``world.events.list`` span with its run,
    as a traced ``list`` makes (it was untraced: the readers of many runs made no span at all); a
    failed read is a span through ``throw_with_trace``. A world without ``logs`` still has none."""
    from opentelemetry.trace import StatusCode
    from ulid import ULID

    from telemetry.backends.local import LocalWorld

    provider, exporter = spans
    runs = [f"wrun_{ULID()}" for _ in range(6)]
    for run_id in runs:
        _seed(fake, run_id, 1)
    inner = reader(fake)
    world = traced(inner, peer_service=inner.peer_service, rpc_system=inner.rpc_system, tracer_provider=provider)

    async def scenario() -> None:
        read = {r: len(events) async for r, events in world.events.logs(dict.fromkeys(runs))}
        assert sorted(read) == sorted(runs) and set(read.values()) == {6}  # created, started, a step's 3, completed
        fake.fail("GET", f"/v4/runs/{runs[2]}/events$", 404, body={"message": "Run not found", "code": "NOT_FOUND"})
        try:
            with pytest.raises(WorkflowWorldError):
                async for _ in world.events.logs({runs[2]: None}):
                    pass
        finally:
            await inner.close()

    run(scenario())
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == ["world.events.list"] * (len(runs) + 1)
    assert sorted(s.attributes["workflow.run.id"] for s in finished[:-1]) == sorted(runs)
    assert all(s.attributes["rpc.system"] == "http" and s.status.status_code is StatusCode.UNSET for s in finished[:-1])
    failed = finished[-1]
    assert failed.attributes["workflow.run.id"] == runs[2] and failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] and failed.events[0].name == "exception"
    local = traced(LocalWorld(harness_out / "local-data"), peer_service="world-local")
    assert getattr(local.events, "logs", None) is None and getattr(local.events, "read_log", None) is not None


def test_a_follower_reads_many_runs_at_once_and_a_failed_read_is_read_again_on_its_own(fake):
    """A follower's pass over a vercel world reads its runs' logs several at a time. A read that fails
    there (a 503 once, say) does not fail the pass: the runs not read yet are read one by one, as
    without the overlap, and all are delivered."""
    from ulid import ULID

    from telemetry.follow import Checkpoint, Follower

    runs = [f"wrun_{ULID()}" for _ in range(24)]
    for run_id in runs:
        _seed(fake, run_id, 2)
    fake.latency = 0.02
    fake.fail("GET", f"/v4/runs/{runs[5]}/events$", 404, body={"message": "Run not found", "code": "NOT_FOUND"})
    world = reader(fake)
    delivered: list[str] = []
    follower = Follower(world, lambda run, events, spans: delivered.append(run.run_id), Checkpoint(None))

    async def scenario() -> None:
        await follower.poll()
        await world.close()

    run(scenario())
    assert sorted(delivered) == sorted(runs)
    assert fake.max_in_flight >= 2


def test_the_change_feed_costs_the_live_and_new_runs(fake):
    from ulid import ULID

    done_runs = [f"wrun_{ULID()}" for _ in range(12)]
    for run_id in done_runs:
        _seed(fake, run_id, 1)
    live = f"wrun_{ULID()}"
    _seed(fake, live, 1, finish=False)
    world = reader(fake)

    async def scenario() -> None:
        first = await world.events.changes(None)
        assert set(first.runs) == {*done_runs, live}
        fake.requests.clear()
        idle = await world.events.changes(first.token)
        assert idle.runs == [live]  # only what can still change
        listed = [p for m, p, _ in fake.requests if p.startswith("/api/v2/runs?")]
        assert all("limit=200" in p for p in listed) and len(listed) == 3  # newest page + pending + running

        fake.apply(live, "run_completed", correlation_id=None, spec_version=2, data={}, payload=serialize_value(0))
        newcomer = f"wrun_{ULID()}"
        _seed(fake, newcomer, 0)  # created and finished between two passes
        after = await world.events.changes(idle.token)
        assert set(after.runs) == {live, newcomer}  # the one that finished is read once more
        quiet = await world.events.changes(after.token)
        assert quiet.runs == []
        assert (await world.events.changes("garbage")).runs  # an unknown token: from the beginning
        await world.close()

    run(scenario())


def test_live_runs_are_read_at_their_own_pace(fake):
    """A follower over a vercel world reads a live run's log on every pass while it grows; once a
    read finds nothing new, only after 2 s, then 4 s… (up to the cap); a pending sleep's resumeAt
    brings the read forward; a run that finishes is read on the next pass whatever its pace; new
    events are seen once the run is due. Without the pace, 3 waiting runs cost 3 reads a pass."""
    from ulid import ULID

    from telemetry.follow import Checkpoint, Follower

    live = [f"wrun_{ULID()}" for _ in range(3)]
    for run_id in live:
        _seed(fake, run_id, 1, finish=False)
    world = reader(fake)
    clock = [1000.0]
    world.pace.clock = lambda: clock[0]
    world.pace.most = 5.0
    delivered: list[str] = []
    follower = Follower(
        world, lambda run, events, spans: delivered.extend(e.event_type for e in events), Checkpoint(None)
    )

    loop = asyncio.new_event_loop()  # one loop for the world's HTTP session across passes

    def read(at: float) -> set[str]:
        """The runs whose logs one pass at ``at`` reads."""
        clock[0] = at
        fake.requests.clear()
        loop.run_until_complete(follower.poll())
        return {p.split("/v4/runs/")[1].split("/")[0] for p in _event_requests(fake) if "/v4/runs/" in p}

    try:
        assert read(1000.0) == set(live)  # the first pass reads every log
        clock[0] = 1000.2  # a page short of the end (the first event) says nothing of the tail
        first = loop.run_until_complete(world.events.list(run_id=live[0], pagination=Pagination(limit=1)))
        assert first.has_more and first.data[0].event_type == "run_created"
        assert read(1000.5) == set(live)  # their tails: nothing new, so each is next due at +2 s
        assert read(1001.0) == set()  # none due: the pass lists runs and reads no log
        fake.apply(
            live[0], "step_created", correlation_id="step_x", spec_version=2, data={"stepName": "s"}, payload=None
        )
        assert read(1002.4) == set()
        assert read(1002.6) == set(live) and "step_created" in delivered  # due again: the new event is seen
        assert read(1003.0) == {live[0]}  # it grew, so it is read on the next pass; the others wait 4 s now
        assert read(1004.5) == set()  # live[0] found nothing at 1003: next at 1005; the others at 1006.6
        assert read(1006.7) == set(live)  # now 4 s for live[0], the cap (5 s here) for the others
        assert read(1011.0) == {live[0]}
        assert read(1011.8) == {live[1], live[2]}  # 5 s after 1006.7, not 8: the cap
        assert read(1016.5) == {live[0]}  # the cap too (from 1011.0)
        assert read(1017.0) == {live[1], live[2]}
        resume_at = datetime.now(UTC) + timedelta(seconds=1.8)
        fake.apply(
            live[1], "wait_created", correlation_id="wait_1", spec_version=2, data={"resumeAt": resume_at}, payload=None
        )
        assert read(1022.0) == set(live)
        assert read(1022.1) == {live[1]}  # it grew: read on the next pass too, found quiet: next at 1024.1…
        assert read(1022.9) == set()
        assert read(1024.0) == {live[1]}  # …but its sleep ends before that (about 1023.9): read then
        fake.apply(live[2], "run_completed", correlation_id=None, spec_version=2, data={}, payload=serialize_value(1))
        assert read(1024.05) == {live[2]} and delivered[-1] == "run_completed"  # finished: read at once
        assert len(world.pace) == 2  # the finished run is forgotten
        done = f"wrun_{ULID()}"
        _seed(fake, done, 2)  # a finished run read outside the feed (as `wft export` reads 10^5 of them)
        loop.run_until_complete(event_log(world, done))
        assert len(world.pace) == 2  # holds nothing for it
    finally:
        loop.run_until_complete(world.close())
        loop.close()


# ---- the commands on a vercel world -------------------------------------------------------------
def test_wft_runs_export_and_follow_read_a_vercel_world(fake, direct, otlp_receiver, tmp_path):
    env = {
        "WORKFLOW_TARGET_WORLD": "vercel",
        "VERCEL_TOKEN": fake.token,
        "VERCEL_WORKFLOW_SERVER_URL": fake.url,
    }
    listed = wft("runs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)["data"]
    assert {r["runId"] for r in runs} == {direct["written"]["runs"]["runA"], direct["written"]["runs"]["runB"]}
    assert {r["status"] for r in runs} == {"completed", "failed"}
    exported = wft("export", "--world", "vercel", "--otlp", otlp_receiver.url, env=env)
    assert exported.returncode == 0, exported.stderr
    assert fake.token not in exported.stderr + exported.stdout + listed.stderr
    spans = otlp_receiver.by_id()
    names = {s.name for s in spans.values()}
    assert len(spans) > 5 and any("charge" in n for n in names) and any("refund" in n for n in names)
    assert {s.trace_id for s in spans.values()} and len({s.trace_id for s in spans.values()}) == 2  # one per run

    otlp_receiver.clear()  # follow: the same spans (deterministic ids), then nothing new
    follow = ["follow", "--once", "--otlp", otlp_receiver.url, "--checkpoint", str(tmp_path / "ckpt")]
    followed = wft(*follow, env=env)
    assert followed.returncode == 0, followed.stderr
    assert set(otlp_receiver.by_id()) == set(spans)
    otlp_receiver.clear()
    assert wft(*follow, env=env).returncode == 0 and otlp_receiver.spans == []
    bad = wft("runs", "--world", "vercel", env={**env, "VERCEL_TOKEN": "", "WORKFLOW_VERCEL_AUTH_TOKEN": ""})
    assert bad.returncode == 2 and "no credentials" in bad.stderr and "Traceback" not in bad.stderr


def test_wft_export_and_reconcile_read_many_vercel_runs_at_once(fake, otlp_receiver, tmp_path):
    """``wft export`` (one process: always, on world-vercel) and ``wft reconcile`` read runs' logs
    several at a time (``events.logs``), and every run is read and sent."""
    from ulid import ULID

    runs = [f"wrun_{ULID()}" for _ in range(30)]
    for run_id in runs:
        _seed(fake, run_id, 2)
    fake.latency = 0.02
    env = {"WORKFLOW_TARGET_WORLD": "vercel", "VERCEL_TOKEN": fake.token, "VERCEL_WORKFLOW_SERVER_URL": fake.url}
    exported = wft("export", "--otlp", otlp_receiver.url, env=env)
    assert exported.returncode == 0, exported.stderr
    assert "exported 30 runs" in exported.stderr
    sent = {s.attributes["workflow.run.id"] for s in otlp_receiver.by_id().values()}
    assert sent == set(runs)
    assert 2 <= fake.max_in_flight <= LOGS_IN_FLIGHT

    fake.max_in_flight = 0
    from collector.store import Store

    store = tmp_path / "store.sqlite3"
    Store(store).connect().close()  # an empty store: every run is checked, none instrumented
    checked = wft("reconcile", "--store", str(store), "--json", env=env)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["checked"] == 30
    assert fake.max_in_flight >= 2


def test_a_vercel_world_is_polled_every_two_seconds_unless_told(fake, collector, monkeypatch, tmp_path):
    """Each pass over a vercel world is three or more calls to Vercel's API: the tailer and ``wft
    follow`` poll it every 2 s by default (a local or postgres world: every 0.25 s); an interval
    given is kept. Counted at the fake server over a live collector's first seconds."""
    from telemetry.backends import BackendConfig

    monkeypatch.setenv("VERCEL_TOKEN", fake.token)
    service = collector(world=BackendConfig("vercel", url=fake.url))
    assert service.tailer.interval == 2.0
    time.sleep(3.0)
    listed = [p for m, p, _ in fake.requests if m == "GET" and "/v2/runs?" in p]
    assert 1 <= len(listed) <= 6  # two passes (the first lists once, the next three times); 0.25 s: 12 or more


def test_run_keys_are_derived_as_both_sdks_derive_them():
    """HKDF(deployment key, projectId|runId): ours equals vercel-workflow's and world-vercel's
    (the TS side is proven by test_encrypted_payloads…, which decrypts what deriveRunKey sealed)."""
    encryption = pytest.importorskip("vercel.workflow._internal.encryption")
    from telemetry.backends.vercel_keys import DeploymentKey, derive_run_key

    secret = os.urandom(32)
    ours = derive_run_key(secret, "prj_1", "wrun_01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert ours == encryption.derive_run_key(secret, project_id="prj_1", run_id="wrun_01ARZ3NDEKTSV4RRFFQ69G5FAV")
    key = DeploymentKey(secret, "prj_1").for_run("wrun_01ARZ3NDEKTSV4RRFFQ69G5FAV")
    sealed = key.encrypt(b"devl[1]")
    assert encryption.open_envelope(ours, sealed[4:]) == b"devl[1]"
    assert key.decrypt(b"encr" + encryption.encrypt_envelope(ours, b"devl[2]")) == b"devl[2]"
    assert repr(key) == "RunKey(<secret>)" and secret.hex() not in repr(DeploymentKey(secret, "prj_1"))


def test_a_write_to_a_finished_runs_stream_is_the_benign_conflict(fake, direct):
    """world-vercel refuses it with 409: our writer raises EntityConflictError, which the benign
    rules drop for stream writes (and only for them)."""
    from telemetry.tracing import is_benign_conflict

    ids = direct["written"]["runs"]
    world = reader(fake)
    with pytest.raises(EntityConflictError) as caught:
        run(_close_after(world, world.streams.write_values(ids["streamName"], ids["runA"], ["late"])))
    assert is_benign_conflict(caught.value, operation="streams.writeToStream")
    assert not is_benign_conflict(caught.value, operation="events.create")
    assert len(fake.streams[ids["streamName"]].chunks) == 14  # nothing was appended
