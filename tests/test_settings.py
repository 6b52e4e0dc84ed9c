"""collector/settings.py: sizes, durations, and the rules checked before the service starts."""

from __future__ import annotations

import pytest

from collector.settings import Settings, SettingsError, is_loopback, parse_bytes, parse_duration

TOKEN = "t0ken-of-sixteen-chars"


# ---- parse_bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", 0),
        ("500", 500),
        ("500b", 500),
        ("500B", 500),
        ("2kb", 2 * 1000),
        ("2KiB", 2 * 1024),
        ("16MiB", 16 * 1024**2),
        ("16mib", 16 * 1024**2),
        ("16 MiB", 16 * 1024**2),
        ("  16MB  ", 16 * 1000**2),
        ("1GiB", 1024**3),
        ("3gb", 3 * 1000**3),
        ("1.5KiB", 1024 + 512),
        ("0.5MiB", 1024**2 // 2),
    ],
)
def test_parse_bytes_units_are_case_insensitive_and_decimal_or_binary(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "lots", "-1", "-1MiB", "1e6", "1,000", "16 XB", "16MiBs", "MiB", "1.MiB", ".5MiB", "16 Mi B", "0x10"],
)
def test_parse_bytes_refuses_what_is_not_a_size(text):
    with pytest.raises(SettingsError, match="not a size") as caught:
        parse_bytes(text)
    assert repr(text) in str(caught.value)  # the one-line error names what was given


def test_parse_bytes_result_is_a_whole_number_of_bytes():
    value = parse_bytes("1.3KiB")
    assert isinstance(value, int) and value == int(1.3 * 1024)


def test_parse_bytes_refuses_a_number_too_large_to_be_a_size():
    with pytest.raises(SettingsError):
        parse_bytes("9" * 400)


# ---- parse_duration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0", 0.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 15 * 60.0),
        ("12h", 12 * 3600.0),
        ("7d", 7 * 86400.0),
        (" 7 d ", 7 * 86400.0),
        ("1.5h", 1.5 * 3600),
        ("0.25s", 0.25),
    ],
)
def test_parse_duration_units(text, seconds):
    value = parse_duration(text)
    assert isinstance(value, float) and value == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5s", "5ms", "1w", "1h30m", "s", "5 sec", "1e3s", "P1D"])
def test_parse_duration_refuses_what_is_not_a_duration(text):
    with pytest.raises(SettingsError, match="not a duration") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


def test_parse_duration_refuses_an_infinite_duration():
    with pytest.raises(SettingsError):
        parse_duration("9" * 400)


# ---- is_loopback ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "example.com", "localhost.example.com", "", "127.0.0.1.nip.io"]
)
def test_hosts_that_are_not_loopback(host):
    assert not is_loopback(host)


# ---- Settings.check ---------------------------------------------------------------------------


def test_defaults_pass_the_check():
    Settings().check()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com"])
def test_non_loopback_needs_a_token(host):
    with pytest.raises(SettingsError, match="without a token"):
        Settings(host=host).check()
    with pytest.raises(SettingsError, match="without a token"):
        Settings(host=host, token="").check()  # an empty token is no token
    Settings(host=host, token=TOKEN).check()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_short_token_is_refused_anywhere_and_never_echoed(host):
    short = "s3cret-but-short"[:15]
    with pytest.raises(SettingsError, match="at least 16") as caught:
        Settings(host=host, token=short).check()
    assert short not in str(caught.value)
    Settings(host=host, token=short + "x").check()  # the shortest accepted token


def test_the_refusal_to_listen_is_one_line_naming_the_host():
    with pytest.raises(SettingsError) as caught:
        Settings(host="0.0.0.0", token=None).check()
    assert "0.0.0.0" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("port, ok", [(0, True), (1, True), (65535, True), (-1, False), (65536, False)])
def test_port_range(port, ok):
    settings = Settings(port=port)
    if ok:
        settings.check()
    else:
        with pytest.raises(SettingsError, match=str(port)):
            settings.check()


@pytest.mark.parametrize("dsn", ["not a dsn", "https://key@sentry.example.com", "sentry.example.com/7", "https:///7"])
def test_a_sentry_upstream_that_is_not_a_dsn_is_refused(dsn):
    with pytest.raises(SettingsError, match="not a Sentry DSN"):
        Settings(sentry_upstream=dsn).check()


def test_a_real_sentry_dsn_is_accepted():
    Settings(sentry_upstream="https://0123abcd@o1.ingest.sentry.io/4500").check()
    Settings(sentry_upstream="http://key@127.0.0.1:9000/sub/path/7").check()


# ---- forward sampling ------------------------------------------------------------------------


def test_forward_sampling_settings_are_checked():
    forward = "http://127.0.0.1:4318"
    Settings(forward_otlp=forward, forward_sample={"completed": 0.1, "failed": 1.0, "cancelled": 0.0}).check()
    with pytest.raises(SettingsError, match="needs --forward-otlp"):
        Settings(forward_sample={"completed": 0.1}).check()
    with pytest.raises(SettingsError, match="rates must be"):
        Settings(forward_otlp=forward, forward_sample={"succeeded": 0.1}).check()
    with pytest.raises(SettingsError, match="rates must be"):
        Settings(forward_otlp=forward, forward_sample={"completed": 1.5}).check()
    with pytest.raises(SettingsError, match="--sample-max-wait"):
        Settings(sample_max_wait=0).check()
