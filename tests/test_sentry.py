"""The Sentry rules, the in-process filter with the real sentry-sdk client, and dry-run."""

from __future__ import annotations

import json

import pytest
import sentry_sdk

from telemetry.errors import EntityConflictError, StreamError, WorkflowWorldError
from telemetry.sentry import RULES, classify, drop_counts
from telemetry.sentry import init as sentry_init

from .conftest import wft

RUN = "wrun_01KQKXJQGJ78X9YSF34QG3GHFX"
STEP = "step_01M80NBG4PGVG2CY8WDX3NXEX2"
# Seed 003 (issue #1949), verbatim apart from the run id being complete.
CONFLICT_BODY = '{"success":false,"error":"conflict","message":"Run \\"' + RUN + '\\" is already completed"}'
SEED = "Stream write failed: HTTP 409: " + CONFLICT_BODY
# Reference §3.4: world-vercel 4.7.4 after PR #2142.
DIAG = (
    f"Stream write failed: HTTP 409 (PUT https://vercel-workflow.com/api/v2/runs/{RUN}/stream/"
    f"strm_01KQKXJQGJ78X9YSF34QG3GHFX_user; x-vercel-id=iad1::abc; x-vercel-error=conflict): {CONFLICT_BODY}"
)
# vercel-workflow 0.12 (PyPI), worlds/vercel.py ``_stream_http_error``: the same 409, with no response body
# (as its VercelWorld raised it against a loopback server in tests/test_pyworkflows_sentry.py).
USER_STREAM = "strm_01KQKXJQGJ78X9YSF34QG3GHFX_user"
PY_STREAM = f"Stream write failed: HTTP 409 (PUT /v2/runs/{RUN}/stream/{USER_STREAM}; x-vercel-id=iad1::abc)"
PY_CLOSE = f"Stream close failed: HTTP 410 (PUT /v2/runs/{RUN}/stream/{USER_STREAM})"


def js_error(type_: str, value: str, *, mechanism: str = "generic", functions: tuple[str, ...] = ()) -> dict:
    """An event shaped as @sentry/node sends it."""
    frames = [
        {"function": f, "filename": "/app/node_modules/@workflow/world-vercel/dist/streamer.js"} for f in functions
    ]
    return {
        "event_id": "e" * 32,
        "platform": "node",
        "level": "error",
        "exception": {
            "values": [
                {
                    "type": type_,
                    "value": value,
                    "mechanism": {"type": mechanism, "handled": False},
                    "stacktrace": {"frames": frames},
                }
            ]
        },
    }


def py_error(type_: str, value: str, *, module: str = "vercel.workflow._internal.world", functions=()) -> dict:
    """An event shaped as sentry-sdk (Python) sends it from a vercel-workflow app."""
    frames = [{"function": f, "module": "vercel.workflow._internal.worlds.vercel"} for f in functions]
    return {
        "event_id": "d" * 32,
        "platform": "python",
        "level": "error",
        "logger": "vercel.workflow",
        "exception": {"values": [{"type": type_, "module": module, "value": value, "stacktrace": {"frames": frames}}]},
    }


def log_event(message: str, extra: dict | None = None) -> dict:
    return {
        "event_id": "f" * 32,
        "level": "warning",
        "logentry": {"message": message, "formatted": message},
        "extra": extra or {},
    }


TABLE = [
    # -- dropped: the seeds' and the reference's exact texts -----------------------------------
    (
        js_error("Error", SEED, mechanism="auto.node.onunhandledrejection", functions=("writeToStream", "tg", "o")),
        "vercel-stream-409",
    ),
    (js_error("Error", DIAG, mechanism="auto.node.onunhandledrejection"), "vercel-stream-409"),
    (js_error("Error", DIAG), "vercel-stream-409"),
    (js_error("StreamError", DIAG), "stream-error-409"),
    (
        js_error("EntityConflictError", f'Run "{RUN}" is already completed', functions=("writeToStream",)),
        "conflict-in-stream-write",
    ),
    (js_error("RunExpiredError", "Run expired", functions=("closeStream",)), "conflict-in-stream-write"),
    (js_error("EntityConflictError", "Tried completing step, but step has already finished."), "racing-completion"),
    (js_error("EntityConflictError", 'Cannot transition run from terminal state "completed"'), "racing-completion"),
    (
        log_event("Tried completing step, but step has already finished.", {"workflowRunId": RUN, "stepId": STEP}),
        "racing-completion",
    ),
    (
        log_event("Background flush of step stream ops failed", {"workflowRunId": RUN, "stepId": STEP, "error": DIAG}),
        "background-flush-409",
    ),
    ({**js_error("Error", "whatever"), "tags": {"workflow.conflict": "benign"}}, "wft-benign"),
    # -- dropped: vercel-workflow's (Python) spellings ---------------------------------------------
    (py_error("WorkflowWorldError", PY_STREAM, functions=("streams_write", "_write_stream_request")), "py-stream-409"),
    (py_error("WorkflowWorldError", PY_CLOSE), "py-stream-409"),
    (
        log_event(
            f"[Workflows] '{RUN}' - Encountered Error while executing step 'step//app//s' (attempt 1): {PY_STREAM}"
            "\n\n  This step has failed but will be retried"
        ),
        "py-stream-409",
    ),
    (
        py_error("EntityConflictError", f'Run "{RUN}" is already completed', functions=("streams_write",)),
        "conflict-in-stream-write",
    ),
    (log_event(f"Workflow run {RUN} was already completed"), "racing-completion"),
    (py_error("EntityConflictError", "Cannot transition run from terminal state completed"), "racing-completion"),
    # -- kept: near misses --------------------------------------------------------------------
    (js_error("Error", SEED.replace("HTTP 409", "HTTP 500"), mechanism="auto.node.onunhandledrejection"), None),
    (js_error("Error", "Stream write failed: HTTP 409: conflict on writer lock"), None),
    (js_error("Error", f'Run "{RUN}" is already completed'), None),  # no stream write in sight
    (js_error("StreamError", "Stream write failed: HTTP 500 (PUT https://x/stream/y): internal"), None),
    (
        js_error("EntityConflictError", f'Workflow run "{RUN}" already exists', functions=("createWorkflowRunEvent",)),
        None,
    ),
    (js_error("EntityConflictError", 'Cannot modify step in terminal state "completed"'), None),
    (js_error("RunExpiredError", "Run expired", functions=("start",)), None),
    (js_error("WorkflowWorldError", "PUT /v2/runs -> HTTP 503: Service Unavailable"), None),
    (js_error("FatalError", "fatal: boom"), None),
    (
        log_event("Background flush of step stream ops failed", {"error": "Stream write failed: HTTP 500: upstream"}),
        None,
    ),
    (log_event("Tried completing the migration"), None),
    # -- kept: vercel-workflow near misses: a 409 on a step completion or run transition is an error --------
    (
        py_error(
            "EntityConflictError", f'Run "{RUN}" is already completed', functions=("events_create", "_cbor_request")
        ),
        None,
    ),
    (py_error("EntityConflictError", 'Cannot modify step in terminal state "completed"'), None),
    (py_error("WorkflowWorldError", PY_STREAM.replace("HTTP 409", "HTTP 503")), None),
    (py_error("WorkflowWorldError", PY_STREAM + ": conflict on writer lock"), None),  # not the SDK's form
    (py_error("ThrottleError", PY_STREAM.replace("HTTP 409", "HTTP 429")), None),
    (py_error("TypeError", PY_STREAM), None),  # an app's own error quoting the text
    (log_event(f"Workflow run {RUN} was already completed, but its output differs"), None),
    (log_event(f"[Workflows] '{RUN}' - Encountered Error while executing step 's' (attempt 1): boom"), None),
]


@pytest.mark.parametrize("event, rule", TABLE)
def test_rule_table(event, rule):
    got = classify(event)
    assert (got.id if got else None) == rule


def test_rules_are_data_with_ids_and_reasons():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids)) and all(r.reason for r in RULES)


@pytest.fixture
def in_process(sentry_upstream):
    """The real sentry-sdk client through telemetry.sentry.init, its transport aimed at the stand-in."""

    def user_hook(event, hint):
        event.setdefault("tags", {})["user.hook"] = "ran"
        return event

    sentry_init(
        sentry_upstream.dsn(), before_send=user_hook, default_integrations=False, dashboard_url="http://wft.local:4318"
    )
    yield sentry_upstream
    sentry_sdk.get_client().close()
    sentry_sdk.init()


def _capture(error: BaseException, **tags) -> None:
    with sentry_sdk.new_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, value)
        try:
            raise error
        except BaseException:
            sentry_sdk.capture_exception()


def test_in_process_filter_drops_noise_and_keeps_real_errors(in_process):

    before = drop_counts()
    _capture(Exception(DIAG))
    _capture(StreamError(SEED, status=409))

    def writeToStream():  # noqa: N802 - the SDK's name, as it shows in a stack
        raise EntityConflictError(f'Run "{RUN}" is already completed', run_id=RUN)

    try:
        writeToStream()
    except EntityConflictError:
        sentry_sdk.capture_exception()
    _capture(EntityConflictError("Tried completing step, but step has already finished."))
    _capture(WorkflowWorldError("PUT /v2/runs -> HTTP 503", status=503))
    _capture(EntityConflictError(f'Workflow run "{RUN}" already exists'))
    _capture(
        ValueError(f"bad input in {RUN} at {STEP}"),
        **{"workflow.name": "workflow//./w//order", "step.name": "step//./w//charge"},
    )
    sentry_sdk.flush(10)
    events = in_process.events()
    values = [e["exception"]["values"][-1]["value"] for e in events]
    assert values == [
        "PUT /v2/runs -> HTTP 503",
        f'Workflow run "{RUN}" already exists',
        f"bad input in {RUN} at {STEP}",
    ]
    after = drop_counts()
    dropped = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert sum(dropped.values()) == 4
    assert dropped["in-process-benign"] >= 2 and dropped["racing-completion"] == 1
    last = events[-1]
    assert last["tags"]["user.hook"] == "ran"  # the user's own before_send ran first
    assert last["tags"]["workflow.run.id"] == RUN and last["tags"]["step.id"] == STEP
    assert last["contexts"]["workflow"]["run_url"] == f"http://wft.local:4318/runs/{RUN}"
    assert last["fingerprint"] == ["workflow-step", "workflow//./w//order", "step//./w//charge", "ValueError"]
    assert "fingerprint" not in events[0]


def test_in_process_filter_drops_what_stream_writer_recorded(in_process):
    import asyncio

    from telemetry.streams import StreamWriter

    from .fakes import FakeInMemoryWorld

    world = FakeInMemoryWorld()
    world.add_run(RUN, status="completed")
    writer = StreamWriter(world, RUN)
    assert asyncio.run(writer.write(b"late")) is False  # recorded, never raised: nothing to report
    recorded = EntityConflictError("x", run_id=RUN)
    from opentelemetry.trace import INVALID_SPAN

    from telemetry.tracing import record_benign

    record_benign(INVALID_SPAN, recorded)
    _capture(recorded)
    sentry_sdk.flush(10)
    assert in_process.events() == []


def test_dry_run_on_json_lines_and_envelopes(tmp_path):
    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join(json.dumps(event) for event, _ in TABLE) + "\n")
    result = wft("sentry", "dry-run", str(lines))
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip().splitlines()
    dropped = sum(1 for _, rule in TABLE if rule)
    assert out[-1].startswith(f"{len(TABLE)} events: {len(TABLE) - dropped} kept, {dropped} dropped (")
    for line, (_, rule) in zip(out[:-1], TABLE, strict=True):
        assert line.startswith("dropped" if rule else "kept")
        if rule:
            assert f" {rule} " in line
    envelope = tmp_path / "one.envelope"
    event = js_error("Error", SEED, mechanism="auto.node.onunhandledrejection")
    payload = json.dumps(event).encode()
    envelope.write_bytes(
        b'{"event_id":"'
        + b"e" * 32
        + b'"}\n'
        + json.dumps({"type": "event", "length": len(payload)}).encode()
        + b"\n"
        + payload
        + b"\n"
    )
    result = wft("sentry", "dry-run", str(envelope))
    assert "dropped  vercel-stream-409" in result.stdout and result.stdout.strip().endswith(
        "1 events: 0 kept, 1 dropped (vercel-stream-409 1)"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    result = wft("sentry", "dry-run", str(bad))
    assert result.returncode == 2 and "line 1: not JSON" in result.stderr


def _envelope(*payloads: bytes) -> bytes:
    items = b"".join(json.dumps({"type": "event", "length": len(p)}).encode() + b"\n" + p + b"\n" for p in payloads)
    return b'{"event_id":"' + b"e" * 32 + b'"}\n' + items


def test_dry_run_on_hostile_envelope_items_is_one_line_not_a_traceback(tmp_path):
    not_an_object = tmp_path / "list.envelope"
    not_an_object.write_bytes(_envelope(b"[1, 2]", json.dumps(js_error("Error", SEED)).encode()))
    result = wft("sentry", "dry-run", str(not_an_object))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("1 events: 0 kept, 1 dropped (vercel-stream-409 1)")
    not_json = tmp_path / "garbage.envelope"
    not_json.write_bytes(_envelope(b"{nope"))
    result = wft("sentry", "dry-run", str(not_json))
    assert result.returncode == 2 and result.stderr.strip() == "wft sentry: envelope item 1: event is not JSON"
    not_utf8 = tmp_path / "latin1.jsonl"
    not_utf8.write_bytes(b'{"message": "caf\xe9"}\n')
    result = wft("sentry", "dry-run", str(not_utf8))
    assert result.returncode == 2 and result.stderr.strip() == "wft sentry: line 1: not UTF-8"


def test_in_process_filter_knows_vercel_workflows_own_classes(in_process):
    """vercel-workflow's EntityConflictError / RunExpiredError / WorkflowWorldError (not ours), raised in its
    World's stream methods: dropped; the same classes on a step completion or with a 5xx: kept."""
    from vercel.workflow import EntityConflictError as VwConflict
    from vercel.workflow import RunExpiredError as VwExpired
    from vercel.workflow import WorkflowWorldError as VwWorldError

    def streams_write(error: BaseException) -> None:  # vercel-workflow's method names, as they show in a stack
        raise error

    def streams_close(error: BaseException) -> None:
        raise error

    def events_create(error: BaseException) -> None:
        raise error

    def capture(where, error: BaseException) -> None:
        try:
            where(error)
        except BaseException:
            sentry_sdk.capture_exception()

    before = drop_counts()
    capture(streams_write, VwConflict(f'Run "{RUN}" is already completed'))
    capture(streams_write, VwWorldError(PY_STREAM, status=409))
    capture(streams_close, VwExpired("Run expired", status=410))
    capture(events_create, VwConflict(f'Run "{RUN}" is already completed'))  # a step completion: kept
    capture(events_create, VwWorldError("POST /v2/runs/x/events -> HTTP 409", status=409))  # kept
    capture(streams_write, VwWorldError(PY_STREAM.replace("409", "503"), status=503))  # kept
    sentry_sdk.flush(10)
    kept = [(e["exception"]["values"][-1]["type"], e["exception"]["values"][-1]["value"]) for e in in_process.events()]
    assert kept == [
        ("EntityConflictError", f'Run "{RUN}" is already completed'),
        ("WorkflowWorldError", "POST /v2/runs/x/events -> HTTP 409"),
        ("WorkflowWorldError", PY_STREAM.replace("409", "503")),
    ]
    after = drop_counts()
    assert after.get("in-process-benign", 0) - before.get("in-process-benign", 0) == 3
