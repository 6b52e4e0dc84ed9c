"""telemetry.world.model: helpers over the World's records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from telemetry.world import epoch_ns


def test_epoch_ns_is_exact_where_float_timestamps_drift():
    moment = datetime(2026, 11, 30, 14, 5, 38, 123000, tzinfo=UTC)
    assert int(moment.timestamp() * 1e9) != 1_796_047_538_123_000_000  # the float path drifts
    assert epoch_ns(moment) == 1_796_047_538_123_000_000
    drifted = 0
    for ms in range(0, 1000, 7):  # every millisecond a world writes comes back a whole millisecond
        at = moment.replace(microsecond=ms * 1000)
        assert epoch_ns(at) % 1_000_000 == 0
        drifted += int(at.timestamp() * 1e9) % 1_000_000 != 0
    assert drifted > 0


def test_epoch_ns_zones_and_naive_times():
    utc = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert epoch_ns(utc.astimezone(timezone(timedelta(hours=-5)))) == epoch_ns(utc)
    assert epoch_ns(utc.replace(tzinfo=None)) == epoch_ns(utc)
    assert epoch_ns(datetime(1970, 1, 1, tzinfo=UTC)) == 0
