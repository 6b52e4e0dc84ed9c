from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from telemetry.errors import (
    EntityConflictError,
    HookNotFoundError,
    PreconditionFailedError,
    RunExpiredError,
    StreamError,
    ThrottleError,
    TooEarlyError,
    WorkflowRunNotFoundError,
    WorkflowWorldError,
    error_for_response,
    parse_retry_after,
)


@pytest.mark.parametrize(
    "status, cls, expected_status",
    [
        (409, EntityConflictError, None),
        (410, RunExpiredError, None),
        (412, PreconditionFailedError, 412),
        (425, TooEarlyError, None),
        (429, ThrottleError, None),
        (400, WorkflowWorldError, 400),
        (404, WorkflowWorldError, 404),
        (500, WorkflowWorldError, 500),
        (503, WorkflowWorldError, 503),
    ],
)
def test_status_maps_to_semantic_error(status, cls, expected_status):
    error = error_for_response(status, "PUT /x -> HTTP", retry_after=7, code="C", url="https://w/x")
    assert type(error) is cls
    assert error.status == expected_status
    assert str(error) == "PUT /x -> HTTP"


def test_retry_after_carried_where_the_sdk_carries_it():
    assert error_for_response(412, "m", retry_after=3).retry_after == 3
    assert error_for_response(425, "m", retry_after=4).retry_after == 4
    assert error_for_response(429, "m", retry_after=5).retry_after == 5
    other = error_for_response(502, "m", retry_after=6, code="X", url="https://u")
    assert (other.retry_after, other.code, other.url) == (6, "X", "https://u")


def test_conflict_subclasses_are_world_errors():
    for cls in (
        EntityConflictError,
        RunExpiredError,
        TooEarlyError,
        ThrottleError,
        PreconditionFailedError,
        StreamError,
    ):
        assert issubclass(cls, WorkflowWorldError)


def test_mitigated_challenge_is_a_transport_error_not_throttle():
    error = error_for_response(429, "GET /v2/runs -> HTTP 429", mitigated="challenge", retry_after=2)
    assert type(error) is WorkflowWorldError
    assert (error.status, error.code, error.retry_after) == (429, "TRANSPORT", 2)
    assert str(error).endswith("(x-vercel-mitigated=challenge)")
    again = error_for_response(429, "x (x-vercel-mitigated=challenge)", mitigated="challenge")
    assert str(again).count("x-vercel-mitigated") == 1
    assert type(error_for_response(429, "m", mitigated="other")) is ThrottleError


def test_not_found_errors_carry_their_ids():
    assert HookNotFoundError("tok").token == "tok"
    assert str(HookNotFoundError("tok")) == "Hook not found"
    error = WorkflowRunNotFoundError("wrun_X")
    assert error.run_id == "wrun_X" and "wrun_X" in str(error)
    assert StreamError("s").code == "STREAM_ERROR"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0", 0),
        ("120", 120),
        (" 5 ", 5),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Mon, 99 Foo 2026", None),
    ],
)
def test_retry_after_delta_seconds_and_garbage(value, expected):
    assert parse_retry_after(value) == expected


def test_retry_after_http_date():
    now = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert later.endswith("GMT")
    assert parse_retry_after(later, now=now.timestamp()) == 90
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(earlier, now=now.timestamp()) == 0
    assert parse_retry_after("Sun, 22 Nov 2026 03:00:30 GMT", now=now.timestamp()) == 30
