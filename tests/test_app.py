"""collector/app.py: build, start and close the service; the token on protected routes; the wiring.

Each test starts the real service in its own loop on a free loopback port and talks to it over
HTTP (aiohttp, raw paths where spelling matters, and the real OTel exporter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
import threading

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from yarl import URL

from collector.app import Service, build, start
from collector.settings import Settings, SettingsError
from telemetry.export import traces_endpoint

from .sdk_spans import RUN, make_sdk_spans

TOKEN = "app-test-token-0123456789abcdef"
PB = {"Content-Type": "application/x-protobuf"}


def _settings(tmp_path, **overrides) -> Settings:
    fields = {"port": 0, "store": tmp_path / "store.sqlite3", "retention_age_s": None, "retention_bytes": None}
    return Settings(**{**fields, **overrides})


@contextlib.asynccontextmanager
async def _service(settings: Settings):
    service = await start(settings)
    try:
        async with aiohttp.ClientSession() as session:
            yield service, session
    finally:
        await service.close()


async def _status(session: aiohttp.ClientSession, method: str, url: str, **kwargs) -> int:
    async with session.request(method, url, **kwargs) as response:
        await response.read()
        return response.status


def _span_ids(settings: Settings) -> set[str]:
    conn = sqlite3.connect(settings.store)
    try:
        return {row[0] for row in conn.execute("SELECT span_id FROM spans")}
    finally:
        conn.close()


PROTECTED = [
    ("POST", "/v1/traces"),
    ("GET", "/api/runs"),
    ("GET", f"/api/runs/{RUN}"),
    ("GET", f"/api/runs/{RUN}/waterfall"),
    ("GET", f"/api/runs/{RUN}/events"),
    ("GET", f"/api/traces/{'a' * 32}"),
    ("GET", f"/api/spans/{'a' * 32}/{'b' * 16}"),
    ("GET", f"/api/lookup/{RUN}"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", f"/runs/{RUN}"),
    ("GET", "/static/common.js"),
]
OPEN = [("GET", "/healthz")]  # deny by default: everything else needs the token


def test_build_refuses_bad_settings_before_touching_anything(tmp_path):
    settings = Settings(host="0.0.0.0", store=tmp_path / "never" / "store.sqlite3")
    with pytest.raises(SettingsError, match="without a token"):
        build(settings)
    assert not (tmp_path / "never").exists()


def test_start_listens_on_a_free_port_and_close_lets_go(tmp_path):
    settings = _settings(tmp_path)

    async def go():
        before = set(threading.enumerate())
        service = await start(settings)
        started = set(threading.enumerate()) - before
        assert isinstance(service, Service) and service.port != 0
        assert service.url == f"http://127.0.0.1:{service.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{service.url}/healthz") as response:
                health = (response.status, await response.json())
        await service.close()
        return service, started, health

    service, started, health = asyncio.run(go())
    assert health == (200, {"ok": True, "status": "ok", "checks": {"store": {"ok": True}}})
    assert any(t.name == "wft-writer" for t in started)
    assert not any(t.is_alive() for t in started)  # the writer thread ended on close
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", service.port), timeout=2):
        pass  # nobody listens any more


def test_acknowledged_spans_are_on_disk_after_close(tmp_path):
    settings = _settings(tmp_path)
    spans = make_sdk_spans(3)

    async def go():
        async with _service(settings) as (service, session):
            body = encode_spans(spans).SerializeToString()
            assert await _status(session, "POST", f"{service.url}/v1/traces", data=body, headers=PB) == 200

    asyncio.run(go())
    assert _span_ids(settings) == {f"{s.context.span_id:016x}" for s in spans}


def test_without_a_token_everything_is_open_on_loopback(tmp_path):
    async def go():
        async with _service(_settings(tmp_path)) as (service, session):
            return [await _status(session, m, service.url + p, data=b"", headers=PB) for m, p in PROTECTED]

    assert 401 not in asyncio.run(go())


def test_the_token_guards_every_route_but_healthz(tmp_path):
    wrong = [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer  {TOKEN}"},
        {"X-Token": TOKEN},
    ]

    async def go():
        async with _service(_settings(tmp_path, token=TOKEN)) as (service, session):
            refused, allowed, opened = [], [], []
            for method, path in PROTECTED:
                for headers in wrong:
                    async with session.request(method, service.url + path, data=b"", headers={**PB, **headers}) as r:
                        text = await r.text()
                        refused.append((path, r.status, r.headers.get("WWW-Authenticate"), TOKEN in text))
                ok = {**PB, "Authorization": f"Bearer {TOKEN}"}
                allowed.append((path, await _status(session, method, service.url + path, data=b"", headers=ok)))
            for method, path in OPEN:
                opened.append((path, await _status(session, method, service.url + path)))
            relay = [
                await _status(
                    session,
                    "POST",
                    f"{service.url}/api/42/envelope/",
                    data=b'{}\n{"type":"session"}\n{}\n',
                    headers={"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": auth},
                )
                for auth in ("Sentry sentry_key=clientkey", f"Sentry sentry_version=7, sentry_key={TOKEN}")
            ]
            return refused, allowed, opened, relay

    refused, allowed, opened, relay = asyncio.run(go())
    assert all(status == 401 and auth == "Bearer" and not leaked for _, status, auth, leaked in refused), refused
    assert all(status != 401 for _, status in allowed), allowed
    assert all(status == 200 for _, status in opened), opened
    assert relay == [401, 200]  # Sentry SDKs authenticate with the token as their DSN key


@pytest.mark.parametrize(
    "path",
    [
        "/api/%72uns",
        "/%61pi/runs",
        "//api/runs",
        "/api//runs",
        "/./api/runs",
        "/api/./runs",
        "/x/../api/runs",
        "/v1/%74races",
        "/API/runs",
        "/api/runs/",
        "/api/runs?x=/healthz",
    ],
)
def test_no_spelling_of_a_protected_path_gets_past_the_token(tmp_path, path):
    async def go():
        async with _service(_settings(tmp_path, token=TOKEN)) as (service, session):
            url = URL(service.url + path, encoded=True)
            method = "POST" if "races" in path else "GET"
            async with session.request(method, url, data=b"", headers=PB) as response:
                return response.status, await response.text()

    status, text = asyncio.run(go())
    assert status in (401, 404, 405), (status, text)  # never an answer with data
    assert '"data"' not in text


def test_the_auth_scheme_is_case_insensitive(tmp_path):
    async def go():
        async with _service(_settings(tmp_path, token=TOKEN)) as (service, session):
            return await _status(
                session, "GET", f"{service.url}/api/runs", headers={"Authorization": f"bearer {TOKEN}"}
            )

    assert asyncio.run(go()) == 200


def test_the_real_exporter_with_and_without_the_token(tmp_path):
    settings = _settings(tmp_path, token=TOKEN)
    denied, allowed = make_sdk_spans(1), make_sdk_spans(2)

    async def go():
        async with _service(settings) as (service, _):
            endpoint = f"{service.url}/v1/traces"
            without = OTLPSpanExporter(endpoint=endpoint, timeout=5)
            with_token = OTLPSpanExporter(endpoint=endpoint, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            results = (
                await asyncio.to_thread(without.export, denied),
                await asyncio.to_thread(with_token.export, allowed),
            )
            without.shutdown()
            with_token.shutdown()
            return results

    refused, accepted = asyncio.run(go())
    assert refused.name == "FAILURE" and accepted.name == "SUCCESS"
    assert _span_ids(settings) == {f"{s.context.span_id:016x}" for s in allowed}


def test_the_token_never_reaches_the_log(tmp_path, caplog):
    async def go():
        async with _service(_settings(tmp_path, token=TOKEN)) as (service, session):
            await _status(session, "GET", f"{service.url}/api/runs", headers={"Authorization": "Bearer nope"})
            await _status(session, "GET", f"{service.url}/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    messages = [r.getMessage() for r in caplog.records]
    assert any("token required" in m for m in messages)
    assert not any(TOKEN in m for m in messages)


def test_routes(tmp_path):
    service = build(_settings(tmp_path))
    routes = {(r.method, r.resource.canonical) for r in service.app.router.routes() if r.resource is not None}
    for method, path in [
        ("POST", "/v1/traces"),
        ("GET", "/api/runs"),
        ("GET", "/api/runs/{run_id}"),
        ("GET", "/api/traces/{trace_id}"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/"),
        ("POST", "/api/{project_id}/envelope/"),
        ("POST", "/api/{project_id}/store/"),
    ]:
        assert (method, path) in routes


def test_metrics_carry_the_service_gauges(tmp_path):
    async def go():
        async with _service(_settings(tmp_path)) as (service, session):
            async with session.get(f"{service.url}/metrics") as response:
                return await response.text()

    lines = asyncio.run(go()).splitlines()
    names = {line.split(" ")[0].split("{")[0] for line in lines if line and not line.startswith("#")}
    assert {"wft_store_bytes", "wft_queue_depth", "wft_sentry_kept_events"} <= names
    assert "wft_forward_spool_bytes" not in names  # no forwarder configured


def test_forwarding_and_relay_wiring(tmp_path):
    forward_to = "http://127.0.0.1:9"
    settings = _settings(tmp_path, forward_otlp=forward_to, sentry_upstream="http://key@127.0.0.1:9/7")
    service = build(settings)
    assert service.forwarder is not None and service.forwarder.url == traces_endpoint(forward_to)
    assert service.forwarder.spool == settings.store.parent / "spool" and service.forwarder.spool.is_dir()
    assert service.sentry_forwarder is not None and service.sentry_forwarder.url is None  # each batch names its URL
    assert service.sentry_forwarder.spool == settings.store.parent / "sentry-spool"
    assert "wft_forward_spool_bytes" in service.metrics.gauges
    assert service.tailer is None and service.world is None  # no world configured

    plain = build(_settings(tmp_path / "plain"))
    assert plain.forwarder is None and plain.sentry_forwarder is None


def test_an_explicit_spool_dir_is_used(tmp_path):
    settings = _settings(tmp_path, forward_otlp="http://127.0.0.1:9/v1/traces", spool_dir=tmp_path / "elsewhere")
    service = build(settings)
    assert service.forwarder is not None and service.forwarder.spool == tmp_path / "elsewhere"
    assert service.forwarder.url == "http://127.0.0.1:9/v1/traces"


def test_a_busy_port_fails_start_cleanly(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = _settings(tmp_path, port=busy.getsockname()[1])

        async def go():
            before = set(threading.enumerate())
            with pytest.raises(OSError):
                await start(settings)
            await asyncio.sleep(0.1)
            return [t for t in set(threading.enumerate()) - before if t.is_alive()]

        leftover = asyncio.run(go())
    assert leftover == []
