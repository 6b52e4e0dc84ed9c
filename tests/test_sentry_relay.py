"""The collector's Sentry relay: the real sentry-sdk (Python) and @sentry/node clients send
through it; the stand-in upstream receives only what must be kept, byte for byte."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import sentry_sdk

from .conftest import get_json, http
from .test_sentry import DIAG, RUN, SEED, js_error


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _relay_dsn(service, project: str = "42") -> str:
    return f"http://clientkey@127.0.0.1:{service.port}/{project}"


@pytest.mark.parametrize(
    "experiments, encoding",
    [
        ({}, "br"),  # sentry-sdk's default wherever brotli is importable (it is here, as in many apps)
        ({"transport_compression_algo": "gzip"}, "gzip"),
    ],
)
def test_python_sdk_through_the_relay(collector, sentry_upstream, experiments, encoding):
    service = collector(sentry_upstream=sentry_upstream.dsn())
    sentry_sdk.init(dsn=_relay_dsn(service), default_integrations=False, _experiments=experiments)
    try:
        for error in (
            Exception(DIAG),
            Exception(SEED),
            RuntimeError("a real failure"),
            Exception("Stream write failed: HTTP 503"),
        ):
            try:
                raise error
            except Exception:
                sentry_sdk.capture_exception()
        sentry_sdk.flush(10)
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()
    _wait_for(lambda: len(sentry_upstream.events()) >= 2)
    time.sleep(0.3)
    values = sorted(e["exception"]["values"][-1]["value"] for e in sentry_upstream.events())
    assert values == ["Stream write failed: HTTP 503", "a real failure"]
    arrival = sentry_upstream.arrivals[0]
    assert arrival.path == "/api/7/envelope/"  # the upstream DSN's project
    # what the SDK sent, read by the relay and passed on as it came (nothing of it dropped)
    assert {a.headers.get("Content-Encoding") for a in sentry_upstream.arrivals} == {encoding}
    assert "sentry_key=clientkey" in arrival.headers["X-Sentry-Auth"]  # the client's own auth header
    assert service.relay.dropped["vercel-stream-409"] == 2
    metrics = http("GET", f"{service.url}/metrics")[2].decode()
    assert 'wft_sentry_dropped_total{rule="vercel-stream-409"} 2' in metrics


def _envelope(*items: tuple[dict, bytes]) -> bytes:
    out = b'{"event_id":"0123456789abcdef0123456789abcdef","sent_at":"2026-11-22T03:00:00Z"}\n'
    for header, payload in items:
        out += json.dumps(header).encode() + b"\n" + payload + b"\n"
    return out


def test_kept_items_travel_byte_for_byte(collector, sentry_upstream):
    service = collector(sentry_upstream=sentry_upstream.dsn())
    benign = json.dumps(js_error("Error", SEED, mechanism="auto.node.onunhandledrejection")).encode()
    real = json.dumps(js_error("TypeError", "x is undefined")).encode()
    session = b'{"sid":"abc","status":"ok","errors":0}'
    body = _envelope(
        ({"type": "event", "length": len(benign)}, benign),
        ({"type": "event", "length": len(real)}, real),
        ({"type": "session"}, session),
    )
    status, _, _ = http(
        "POST",
        f"{service.url}/api/42/envelope/?sentry_key=clientkey",
        body,
        {"Content-Type": "application/x-sentry-envelope"},
    )
    assert status == 200
    whole = gzip.compress(_envelope(({"type": "event", "length": len(real)}, real)))
    status, _, _ = http(
        "POST",
        f"{service.url}/api/42/envelope/",
        whole,
        {
            "Content-Type": "application/x-sentry-envelope",
            "Content-Encoding": "gzip",
            "X-Sentry-Auth": "Sentry sentry_key=clientkey",
        },
    )
    assert status == 200
    _wait_for(lambda: len(sentry_upstream.arrivals) >= 2)
    first, second = sentry_upstream.arrivals
    expected = (
        body.split(b"\n", 1)[0]
        + b"\n"
        + json.dumps({"type": "event", "length": len(real)}).encode()
        + b"\n"
        + real
        + b"\n"
        + b'{"type": "session"}\n'
        + session
        + b"\n"
    )
    assert first.raw == expected and first.query == "sentry_key=clientkey"
    assert second.raw == whole and second.headers["Content-Encoding"] == "gzip"  # nothing dropped: the very bytes


def test_store_endpoint_and_drops_visible_per_run(collector, sentry_upstream):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from .sdk_spans import make_sdk_spans

    service = collector(sentry_upstream=sentry_upstream.dsn())
    assert (
        OTLPSpanExporter(endpoint=f"{service.url}/v1/traces").export(make_sdk_spans(1)).name == "SUCCESS"
    )  # the run exists
    noisy = json.dumps(js_error("Error", DIAG)).encode()
    status, _, answer = http("POST", f"{service.url}/api/42/store/", noisy, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(answer)["id"] == "e" * 32
    kept = json.dumps(js_error("Error", "kept one")).encode()
    assert http("POST", f"{service.url}/api/42/store/", kept, {"Content-Type": "application/json"})[0] == 200
    _wait_for(lambda: sentry_upstream.arrivals)
    assert [a.path for a in sentry_upstream.arrivals] == ["/api/7/store/"] and sentry_upstream.arrivals[0].raw == kept
    view = get_json(f"{service.url}/api/runs/{RUN}")
    assert view["sentryDropped"] == [{"rule": "vercel-stream-409", "count": 1, "lastMessage": f"Error: {DIAG}"[:500]}]
    assert http("POST", f"{service.url}/api/42/envelope/", b"not json\n", {})[0] == 400


def test_upstream_down_is_spooled_and_retried(collector, sentry_upstream):
    sentry_upstream.fail_next = 3
    service = collector(sentry_upstream=sentry_upstream.dsn())
    real = json.dumps(js_error("Error", "must arrive")).encode()
    assert http("POST", f"{service.url}/api/42/envelope/", _envelope(({"type": "event"}, real)), {})[0] == 200
    _wait_for(lambda: sentry_upstream.events(), timeout=30)
    assert [e["exception"]["values"][0]["value"] for e in sentry_upstream.events()] == ["must arrive"]


NODE_SCRIPT = r"""
const Sentry = require('@sentry/node');
Sentry.init({ dsn: process.env.DSN, defaultIntegrations: false,
              integrations: [Sentry.onUnhandledRejectionIntegration({ mode: 'warn' })] });
Promise.reject(new Error(process.env.BENIGN));             // as in seed 003: an unhandled rejection
Sentry.captureException(new Error('a real node failure'));
setTimeout(async () => { await Sentry.flush(5000); process.exit(0); }, 300);
"""


@pytest.fixture(scope="session")
def sentry_node(tmp_path_factory) -> Path:
    where = Path(os.environ.get("WFT_NODE_CACHE", Path.home() / ".cache" / "wft-tests")) / "sentry-node"
    if not (where / "node_modules" / "@sentry" / "node").exists():
        where.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
                str(where),
                "@sentry/node@11",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            pytest.skip(f"@sentry/node does not install here: {result.stderr.strip()[-300:]}")
    return where


def test_node_sdk_through_the_relay(collector, sentry_upstream, sentry_node):
    service = collector(sentry_upstream=sentry_upstream.dsn())
    script = sentry_node / "send.cjs"
    script.write_text(NODE_SCRIPT)
    result = subprocess.run(
        ["node", str(script)],
        cwd=sentry_node,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DSN": _relay_dsn(service), "BENIGN": SEED},
    )
    assert result.returncode == 0, result.stderr
    _wait_for(lambda: sentry_upstream.events())
    time.sleep(0.3)
    assert [e["exception"]["values"][-1]["value"] for e in sentry_upstream.events()] == ["a real node failure"]
    assert service.relay.dropped["vercel-stream-409"] == 1


def test_large_chunked_envelope_is_read_whole(collector, sentry_upstream):
    service = collector(sentry_upstream=sentry_upstream.dsn())
    big = json.dumps({**js_error("Error", "a real failure"), "extra": {"blob": "x" * 3_000_000}}).encode()
    body = _envelope(({"type": "event", "length": len(big)}, big))

    def chunks():
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    import urllib.request

    request = urllib.request.Request(
        f"{service.url}/api/42/envelope/",
        data=chunks(),
        method="POST",
        headers={"Content-Type": "application/x-sentry-envelope", "Transfer-Encoding": "chunked"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    _wait_for(lambda: sentry_upstream.arrivals)
    assert sentry_upstream.arrivals[0].raw == body
