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
SEED = (
    'Stream write failed: HTTP 409: {"success":false,"error":"conflict","message":"Run \\"%s\\" is already completed"}'
    % RUN
)
# Reference §3.4: world-vercel 4.7.4 after PR #2142.
DIAG = (
    "Stream write failed: HTTP 409 (PUT https://vercel-workflow.com/api/v2/runs/%s/stream/strm_01KQKXJQGJ78X9YSF34QG3GHFX_user; "
    'x-vercel-id=iad1::abc; x-vercel-error=conflict): {"success":false,"error":"conflict","message":"Run \\"%s\\" is already completed"}'
) % (RUN, RUN)


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
    for line, (_, rule) in zip(out, TABLE):
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
