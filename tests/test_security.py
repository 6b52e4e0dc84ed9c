"""Secure by default: the token on every route but /healthz (deny by default), the browser's login
(real headless Chromium), the token as the Sentry DSN key and never upstream, no secret in any log
line or answer at DEBUG, and private files (0600, folders 0700)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import stat
import time
from pathlib import Path

import aiohttp
import pytest
import sentry_sdk
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from yarl import URL

from collector.app import build, start
from collector.auth import COOKIE, session_value
from collector.private import redact
from collector.settings import Settings, SettingsError
from telemetry.backends import BackendConfig

from .conftest import http
from .sdk_spans import RUN, make_sdk_spans
from .test_sentry import DIAG

TOKEN = "security-token-0123456789abcdef"
PB = {"Content-Type": "application/x-protobuf"}
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _settings(tmp_path, **overrides) -> Settings:
    fields = {
        "port": 0,
        "store": tmp_path / "data" / "store.sqlite3",
        "retention_age_s": None,
        "retention_bytes": None,
        "token": TOKEN,
    }
    return Settings(**{**fields, **overrides})


# ---- deny by default --------------------------------------------------------------------------------


def _every_route(app) -> list[tuple[str, str]]:
    """(method, a concrete path) for every route the service has, whatever it is."""
    found = []
    for resource in app.router.resources():
        path = re.sub(r"\{[^}]+\}", "x", resource.canonical)
        if path == "/static":
            path = "/static/common.js"
        for route in resource:
            if route.method != "HEAD":
                found.append((route.method, path))
    return found


def test_every_route_but_healthz_needs_the_token(tmp_path):
    settings = _settings(tmp_path)
    routes = _every_route(build(settings).app) + [("GET", "/no/such/page"), ("POST", "/no/such/api")]
    assert len(routes) > 15

    async def go():
        service = await start(settings)
        try:
            async with aiohttp.ClientSession() as session:
                answers = []
                for method, path in routes:
                    async with session.request(method, service.url + path, data=b"") as r:
                        answers.append((method, path, r.status, r.headers.get("WWW-Authenticate")))
                return answers
        finally:
            await service.close()

    answers = asyncio.run(go())
    opened = {(m, p) for m, p, status, _ in answers if status != 401}
    assert opened == {("GET", "/healthz"), ("GET", "/login")}, opened  # POST /login without the token: 401
    assert all(auth == "Bearer" for m, p, status, auth in answers if status == 401)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_in_any_case(tmp_path, scheme):
    async def go():
        service = await start(_settings(tmp_path))
        try:
            async with aiohttp.ClientSession() as session:
                statuses = []
                for path in ("/api/runs", "/metrics", "/"):
                    async with session.get(service.url + path, headers={"Authorization": f"{scheme} {TOKEN}"}) as r:
                        statuses.append(r.status)
                return statuses
        finally:
            await service.close()

    assert asyncio.run(go()) == [200, 200, 200]


def test_the_session_cookie_opens_pages_and_reads_but_never_a_write(tmp_path):
    cookie = {"Cookie": f"{COOKIE}={session_value(TOKEN)}"}

    async def go():
        service = await start(_settings(tmp_path))
        try:
            async with aiohttp.ClientSession() as session:
                out = []
                for method, path in [("GET", "/"), ("GET", "/api/runs"), ("POST", "/v1/traces")]:
                    body = encode_spans(make_sdk_spans(1)).SerializeToString() if method == "POST" else None
                    async with session.request(method, service.url + path, data=body, headers={**cookie, **PB}) as r:
                        out.append(r.status)
                stale = {"Cookie": f"{COOKIE}={session_value('another-token-0123456789')}"}
                async with session.get(service.url + "/api/runs", headers=stale) as r:
                    out.append(r.status)
                return out
        finally:
            await service.close()

    assert asyncio.run(go()) == [200, 200, 401, 401]  # a cookie is no credential for a write (CSRF)


def test_login_sets_a_strict_httponly_cookie_and_goes_only_to_local_paths(tmp_path):
    async def go():
        service = await start(_settings(tmp_path))
        try:
            async with aiohttp.ClientSession() as session:
                out = {}
                for name, fields in {
                    "wrong": {"token": "not-the-token-0123456789", "next": "/runs/x"},
                    "right": {"token": TOKEN, "next": f"/runs/{RUN}?x=1"},
                    "elsewhere": {"token": TOKEN, "next": "//evil.example/"},
                    "scheme": {"token": TOKEN, "next": "https://evil.example/"},
                    "newline": {"token": TOKEN, "next": "/x\r\nSet-Cookie: a=b"},
                }.items():
                    async with session.post(service.url + "/login", data=fields, allow_redirects=False) as r:
                        out[name] = (r.status, r.headers.get("Location"), r.headers.getall("Set-Cookie", []))
                url = URL(service.url + f"/runs/{RUN}?token={TOKEN}&view=1")
                async with session.get(url, allow_redirects=False) as r:
                    out["once"] = (r.status, r.headers.get("Location"), r.headers.getall("Set-Cookie", []))
                return out
        finally:
            await service.close()

    out = asyncio.run(go())
    assert out["wrong"][0] == 401 and out["wrong"][2] == []
    status, location, cookies = out["right"]
    assert status == 303 and location == f"/runs/{RUN}?x=1" and len(cookies) == 1
    attributes = [a.strip().lower() for a in cookies[0].split(";")]
    assert attributes[0] == f"{COOKIE}={session_value(TOKEN)}".lower() and TOKEN.lower() not in cookies[0].lower()
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert out["elsewhere"][1] == "/" and out["scheme"][1] == "/" and out["newline"][1] == "/"
    status, location, cookies = out["once"]
    assert status == 303 and location == f"/runs/{RUN}?view=1" and TOKEN not in location and len(cookies) == 1


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_beyond_loopback_without_a_token_refuses_to_start(tmp_path, host):
    with pytest.raises(SettingsError, match="without a token"):
        build(_settings(tmp_path, host=host, token=None))
    assert not (tmp_path / "data").exists()


# ---- the browser -----------------------------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture
def browser():  # per test: Playwright's sync API keeps a loop running that asyncio.run elsewhere would trip on
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _with_a_run(service) -> None:
    status = http(
        "POST", f"{service.url}/v1/traces", encode_spans(make_sdk_spans(1)).SerializeToString(), {**PB, **BEARER}
    )
    assert status[0] == 200


@pytest.mark.parametrize("how", ["form", "token in the query", "token in the fragment"])
def test_a_browser_logs_in_and_then_uses_the_pages(collector, browser, how):
    service = collector(token=TOKEN)
    _with_a_run(service)
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        if how == "form":
            page.goto(f"{service.url}/runs/{RUN}")
            assert page.locator("form#login").is_visible()
            page.fill("input[name=token]", "not-the-token-0123456789")
            page.click("button[type=submit]")
            assert page.locator(".wrong").is_visible()
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{service.url}/runs/{RUN}")
        else:
            suffix = f"/?token={TOKEN}" if how == "token in the query" else f"/#token={TOKEN}"
            page.goto(service.url + suffix)
            page.wait_for_url(f"{service.url}/")
            page.goto(f"{service.url}/")  # and again, with only the cookie
        page.goto(f"{service.url}/")
        page.wait_for_selector(f"text={RUN}", timeout=15000)
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies[COOKIE]["httpOnly"] and cookies[COOKIE]["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # out of reach of scripts
        assert TOKEN not in page.url
    finally:
        context.close()
    assert errors == [], errors


# ---- the Sentry relay ---------------------------------------------------------------------------------------


def test_sentry_sdks_use_the_token_as_dsn_key_and_upstream_never_sees_it(collector, sentry_upstream):
    service = collector(token=TOKEN, sentry_upstream=sentry_upstream.dsn(key="upstreamkey"))
    host = service.url.split("://", 1)[1]
    for key in ("wrong-key-0123456789abcdef", TOKEN):
        sentry_sdk.init(dsn=f"http://{key}@{host}/42", default_integrations=False, traces_sample_rate=1.0)
        try:
            try:
                raise RuntimeError(f"a real failure sent with {key[:5]}")
            except RuntimeError:
                sentry_sdk.capture_exception()
            sentry_sdk.flush(10)
        finally:
            sentry_sdk.get_client().close()
            sentry_sdk.init()
    deadline = time.monotonic() + 20
    while not sentry_upstream.arrivals and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    arrivals = list(sentry_upstream.arrivals)
    assert [e["exception"]["values"][-1]["value"] for a in arrivals for e in a.events()] == [
        f"a real failure sent with {TOKEN[:5]}"
    ]  # the wrong key was refused
    for arrival in arrivals:
        assert TOKEN not in arrival.query and TOKEN not in json.dumps(arrival.headers)
        assert TOKEN.encode() not in arrival.body  # the SDK repeats its key in the envelope's trace header
        assert "sentry_key=upstreamkey" in arrival.headers["X-Sentry-Auth"]


# ---- no secret in a log line ----------------------------------------------------------------------------------

PG_PASSWORD = "pg-Secret-7f3Kq9xw"
FORWARD_PASSWORD = "fwd-Secret-2Lm8pq"
UPSTREAM_KEY = "sentryKeySecret5Tz"


def test_no_secret_in_any_log_line_or_answer_at_debug(tmp_path, caplog, pg_server, harness_pg_url):
    pg_server.psql(
        "-c",
        "DO $$ BEGIN CREATE ROLE wftsecret LOGIN SUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        db="postgres",
        user="postgres",
    )
    world_url = f"postgres://wftsecret:{PG_PASSWORD}@127.0.0.1:{pg_server.port}/harness_final"
    settings = _settings(
        tmp_path,
        world=BackendConfig("postgres", url=world_url),
        tail_interval=0.1,
        forward_otlp=f"http://user:{FORWARD_PASSWORD}@127.0.0.1:9/v1/traces?token={FORWARD_PASSWORD}",
        sentry_upstream=f"http://{UPSTREAM_KEY}@127.0.0.1:9/7",
    )
    secrets = (TOKEN, PG_PASSWORD, FORWARD_PASSWORD, UPSTREAM_KEY)
    answers: list[str] = []

    async def go():
        service = await start(settings)
        try:
            async with aiohttp.ClientSession() as session:
                spans = encode_spans(make_sdk_spans(1)).SerializeToString()
                for headers in ({}, {"Authorization": "Bearer wrong-0123456789abcdef"}, BEARER):
                    async with session.post(f"{service.url}/v1/traces", data=spans, headers={**PB, **headers}) as r:
                        answers.append(await r.text())
                envelope = b'{}\n{"type":"event"}\n' + json.dumps({"message": DIAG}).encode() + b"\n"
                for auth in (f"Sentry sentry_key={TOKEN}", "Sentry sentry_key=wrong"):
                    async with session.post(
                        f"{service.url}/api/42/envelope/", data=envelope, headers={"X-Sentry-Auth": auth}
                    ) as r:
                        answers.append(await r.text())
                async with session.get(f"{service.url}/?token=wrong", allow_redirects=False) as r:
                    answers.append(await r.text())
                too_long = URL(f"{service.url}/?token={TOKEN}&pad={'a' * 9000}", encoded=True)
                async with session.get(too_long) as r:  # refused by aiohttp's parser (its 400 echoes the
                    assert r.status == 400  # request line to the client that sent it; the log must not)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:  # the world is followed, the upstreams fail and say so
                    async with session.get(f"{service.url}/api/runs", headers=BEARER) as r:
                        listed = (await r.json())["data"]
                    if listed and any("unavailable" in rec.getMessage() for rec in caplog.records):
                        break
                    await asyncio.sleep(0.2)
                assert listed, "the postgres world was not followed"
        finally:
            await service.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    lines = [record.getMessage() for record in caplog.records]
    lines += [logging.Formatter().formatException(r.exc_info) for r in caplog.records if r.exc_info]
    assert any("listening on" in line and "postgres" in line for line in lines)
    assert any("upstream" in line and "unavailable" in line for line in lines)  # the forwarder did log
    leaked = [(secret, line) for line in lines + answers for secret in secrets if secret in line]
    assert leaked == []


@pytest.mark.parametrize(
    "url, secret",
    [
        ("postgres://world:hunter2@db.example:5432/world", "hunter2"),
        ("postgresql://world@db.example/world?password=hunter2&sslmode=require", "hunter2"),
        ("host=db.example user=world password=hunter2 dbname=world", "hunter2"),
        ("host=db.example password='hun ter2' dbname=world", "hun ter2"),
        ("https://user:hunter2@collector.example:4318/v1/traces", "hunter2"),
        ("https://collector.example/v1/traces?api_key=hunter2", "hunter2"),
        ("http://hunter2@sentry.example/7", "hunter2"),
        ("http://[::1]:9/x?sig=hunter2", "hunter2"),
    ],
)
def test_redact_keeps_where_a_url_points_and_drops_its_credentials(url, secret):
    shown = redact(url)
    assert secret not in shown and ("example" in shown or "::1" in shown)


# ---- private files -------------------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_what_the_collector_creates_is_private(tmp_path, harness_out):
    world = tmp_path / "world"
    shutil.copytree(harness_out / "local-data", world)
    settings = _settings(
        tmp_path,
        store=tmp_path / "data" / "nested" / "store.sqlite3",
        world=BackendConfig("local", data_dir=str(world)),
        tail_interval=0.1,
        forward_otlp="http://127.0.0.1:9",
        sentry_upstream="http://key@127.0.0.1:9/7",
    )

    async def go():
        service = await start(settings)
        try:
            async with aiohttp.ClientSession() as session:
                spans = encode_spans(make_sdk_spans(1)).SerializeToString()
                async with session.post(f"{service.url}/v1/traces", data=spans, headers={**PB, **BEARER}) as r:
                    assert r.status == 200
                envelope = b'{}\n{"type":"event"}\n{"message":"kept"}\n'
                headers = {"X-Sentry-Auth": f"Sentry sentry_key={TOKEN}"}
                async with session.post(f"{service.url}/api/42/envelope/", data=envelope, headers=headers) as r:
                    assert r.status == 200
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    async with session.get(f"{service.url}/api/runs?limit=100", headers=BEARER) as r:
                        if len((await r.json())["data"]) > 1:
                            break
                    await asyncio.sleep(0.1)
        finally:
            await service.close()

    asyncio.run(go())
    data = tmp_path / "data"
    created_dirs = [data, data / "nested", data / "nested" / "spool", data / "nested" / "sentry-spool"]
    assert {str(d): _mode(d) for d in created_dirs} == {str(d): 0o700 for d in created_dirs}
    files = [p for p in data.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert "store.sqlite3" in names and any(n.startswith("store.sqlite3.follow") for n in names)  # the checkpoint
    assert any(p.parent.name == "spool" for p in files) and any(p.parent.name == "sentry-spool" for p in files)
    assert {str(p): _mode(p) for p in files} == {str(p): 0o600 for p in files}
