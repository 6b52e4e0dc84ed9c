"""How world-vercel 4.7 talks to the workflow server: where, as whom, and in which encoding.

Everything here mirrors ``@workflow/world-vercel``'s ``utils.ts`` / ``http-core.ts`` /
``frames.ts`` so that a request from this reader is one the server already answers for the SDK:

* **Where** (``getHttpUrl``): with a project *and* a team the requests go through the Vercel API
  proxy, ``WORKFLOW_VERCEL_BACKEND_URL`` or ``https://api.vercel.com/v1/workflow``, and a
  server override travels in ``x-vercel-workflow-api-url``; otherwise straight to
  ``<VERCEL_WORKFLOW_SERVER_URL or https://vercel-workflow.com>/api``.
* **As whom** (``getHttpConfig``): the proxy takes a Vercel token only; the direct path takes the
  token or else the OIDC token, and sends the OIDC token in ``x-vercel-trusted-oidc-idp-token``
  too. ``x-vercel-environment`` / ``-project-id`` / ``-team-id`` name the deployment.
* **Encoding**: CBOR both ways (``Accept: application/cbor``; JSON answers are read too), and the
  v4 event routes' length-prefixed frames, ``u32 meta_len | CBOR meta | u32 body_len | body``, a
  list ending with the sentinel frame ``{_end: 1, next?}``.
* **Failures**: a non-2xx status becomes the SDK's semantic error through
  :func:`telemetry.errors.error_for_response`; transport failures are ``WorkflowWorldError`` with
  code ``TRANSPORT``/``TIMEOUT``. Idempotent reads are retried on transport failures and 502/503/504.

Tokens never reach a log line, an error message or a ``repr``: messages name the method and the
path (never the query, which may hold a hook token), and a server echoing our token is redacted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import platform
import struct
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import cbor2

from ..errors import WorkflowWorldError, error_for_response, parse_retry_after

__all__ = [
    "DEFAULT_PROXY_URL",
    "DEFAULT_SERVER_URL",
    "FRAMES_CONTENT_TYPE",
    "Http",
    "Response",
    "VercelConfig",
    "decode_cbor",
    "plain",
]

log = logging.getLogger("telemetry.backends.vercel")

DEFAULT_SERVER_URL = "https://vercel-workflow.com"
DEFAULT_PROXY_URL = "https://api.vercel.com/v1/workflow"
FRAMES_CONTENT_TYPE = "application/vnd.workflow.v4-frames"
#: world-vercel's version this client speaks as (its User-Agent names it; the server may branch on it)
SPEAKS = "4.7.4"
#: No answer of the workflow server is this big; a bigger one is refused rather than buffered.
MAX_BODY = 256 * 1024 * 1024
#: A frame's CBOR meta is an event's metadata (ids, names, a 2 KB execution context): never megabytes.
MAX_META = 16 * 1024 * 1024
_RETRY_STATUSES = frozenset({502, 503, 504})
_READ_RETRIES = 2
_DIAGNOSTIC_HEADERS = ("x-vercel-id", "x-vercel-error", "x-vercel-mitigated")
_U32 = struct.Struct(">I")


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_url(value: str, what: str) -> str:
    """An http(s) URL without a trailing slash; plain http only to this machine (a token rides on it)."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise WorkflowWorldError(f"{what} must be an http(s) URL, got {value!r}")
    if parts.username or parts.password:
        raise WorkflowWorldError(f"{what} must not carry credentials; use VERCEL_TOKEN")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise WorkflowWorldError(f"{what} is plain http to another host: refusing to send the token unencrypted")
    return value.strip().rstrip("/")


@dataclass(frozen=True)
class VercelConfig:
    """Where the workflow server is and how to authenticate, resolved once (``getHttpConfig``)."""

    base_url: str
    using_proxy: bool
    token: str | None = field(default=None, repr=False)
    oidc_token: str | None = field(default=None, repr=False)
    project_id: str | None = None
    team_id: str | None = None
    environment: str | None = None
    server_url_override: str | None = None
    deployment_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, server_url: str | None = None) -> VercelConfig:
        """From the variables the SDK's tooling uses (``workflow inspect``, the web UI):

        ``WORKFLOW_VERCEL_AUTH_TOKEN`` or ``VERCEL_TOKEN`` (a Vercel token), else ``VERCEL_OIDC_TOKEN``;
        ``WORKFLOW_VERCEL_PROJECT`` (or ``VERCEL_PROJECT_ID``), ``WORKFLOW_VERCEL_TEAM``,
        ``WORKFLOW_VERCEL_ENV`` (default production); ``VERCEL_WORKFLOW_SERVER_URL`` (or
        ``server_url``, the ``--url`` flag) and ``WORKFLOW_VERCEL_BACKEND_URL``;
        ``VERCEL_DEPLOYMENT_KEY`` to open encrypted payloads.
        """
        env = os.environ if env is None else env

        def get(*names: str) -> str | None:
            for name in names:
                value = (env.get(name) or "").strip()
                if value:
                    return value
            return None

        token = get("WORKFLOW_VERCEL_AUTH_TOKEN", "VERCEL_TOKEN")
        oidc = get("VERCEL_OIDC_TOKEN")
        project = get("WORKFLOW_VERCEL_PROJECT", "VERCEL_PROJECT_ID")
        team = get("WORKFLOW_VERCEL_TEAM")
        override = server_url or get("VERCEL_WORKFLOW_SERVER_URL")
        if override:
            override = _checked_url(override, "the workflow server URL (VERCEL_WORKFLOW_SERVER_URL / --url)")
        using_proxy = bool(project and team)
        if using_proxy:
            proxy = get("WORKFLOW_VERCEL_BACKEND_URL")
            base = _checked_url(proxy, "WORKFLOW_VERCEL_BACKEND_URL") if proxy else DEFAULT_PROXY_URL
            if not token:
                raise WorkflowWorldError(
                    "world-vercel: the API proxy (project and team set) needs a Vercel token: set VERCEL_TOKEN "
                    "(the proxy does not accept the OIDC token)"
                )
        else:
            base = f"{override or DEFAULT_SERVER_URL}/api"
            if not token and not oidc:
                raise WorkflowWorldError(
                    "world-vercel: no credentials: set VERCEL_TOKEN (with WORKFLOW_VERCEL_PROJECT and "
                    "WORKFLOW_VERCEL_TEAM to go through the Vercel API) or VERCEL_OIDC_TOKEN"
                )
        return cls(
            base_url=base,
            using_proxy=using_proxy,
            token=token,
            oidc_token=oidc,
            project_id=project,
            team_id=team,
            environment=get("WORKFLOW_VERCEL_ENV"),
            server_url_override=override,
            deployment_key=get("VERCEL_DEPLOYMENT_KEY"),
        )

    def headers(self) -> dict[str, str]:
        """``getHeaders`` + ``getHttpConfig``: identity, deployment and credentials of every request."""
        headers = {
            "User-Agent": f"@workflow/world-vercel/{SPEAKS} workflow-telemetry python-{platform.python_version()}",
        }
        if self.project_id or self.team_id or self.environment:
            headers["x-vercel-environment"] = self.environment or "production"
            if self.project_id:
                headers["x-vercel-project-id"] = self.project_id
            if self.team_id:
                headers["x-vercel-team-id"] = self.team_id
        if self.server_url_override and self.using_proxy:
            headers["x-vercel-workflow-api-url"] = self.server_url_override
        if self.using_proxy:
            headers["Authorization"] = f"Bearer {self.token}"
        else:
            bearer = self.token or self.oidc_token
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            if self.oidc_token:
                headers["x-vercel-trusted-oidc-idp-token"] = self.oidc_token
        return headers

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.token, self.oidc_token, self.deployment_key) if s)


# --------------------------------------------------------------------------------------------
# CBOR
# --------------------------------------------------------------------------------------------


def _tag_hook(*args: Any) -> Any:
    """cbor-x writes a ``Uint8Array`` as tag 64 around its bytes (RFC 8746). (cbor2 5 calls this
    with ``(decoder, tag)``, cbor2 6 with ``(tag, shareable)``.)"""
    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    if tag.tag == 64 and isinstance(tag.value, bytes):
        return tag.value
    return tag


def _ms(moment: datetime) -> datetime:
    """A CBOR epoch date (tag 1, a float) to the JavaScript millisecond it was written from."""
    micro = moment.microsecond
    rounded = round(micro / 1000) * 1000
    if rounded == micro:
        return moment
    return moment.replace(microsecond=0) + timedelta(microseconds=rounded)


def plain(value: Any) -> Any:
    """Decoded CBOR as the values the rest of the reader expects: ``undefined`` → None, dates to
    the millisecond, maps with text keys."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return _ms(value)
    if value is cbor2.undefined:
        return None
    return value


def decode_cbor(data: bytes) -> Any:
    return plain(cbor2.loads(data, tag_hook=_tag_hook))


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


class Http:
    """One aiohttp session to the workflow server; every call of the reader goes through here."""

    def __init__(self, config: VercelConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"Http({self.config.base_url!r})"

    def _redact(self, text: str) -> str:
        for secret in self.config.secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def _session_for_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(
                headers=self.config.headers(),
                timeout=aiohttp.ClientTimeout(total=None, connect=min(10.0, self.config.timeout)),
            )
            self._loop = loop
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None

    def url(self, path: str, query: Mapping[str, str | None] | None = None) -> str:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        return f"{self.config.base_url}{path}" + (f"?{urlencode(params)}" if params else "")

    def _transport_error(self, method: str, path: str, error: BaseException, started: float) -> WorkflowWorldError:
        elapsed = int((time.monotonic() - started) * 1000)
        if isinstance(error, asyncio.TimeoutError):
            return WorkflowWorldError(
                f"{method} {path} timed out after {elapsed}ms", code="TIMEOUT", url=self.config.base_url + path
            )
        return WorkflowWorldError(
            f"{method} {path} transport failure after {elapsed}ms ({type(error).__name__}: {self._redact(str(error))})",
            code="TRANSPORT",
            url=self.config.base_url + path,
        )

    def error_for(
        self, method: str, path: str, status: int, reason: str, headers: Mapping[str, str], body: bytes
    ) -> WorkflowWorldError:
        """``errorForResponse`` with the message world-vercel builds (server message, else the status line)."""
        message = code = None
        try:
            data = decode_cbor(body) if "application/cbor" in headers.get("Content-Type", "") else json.loads(body)
            if isinstance(data, dict):
                message = data.get("message") if isinstance(data.get("message"), str) else None
                code = data.get("code") if isinstance(data.get("code"), str) else None
        except Exception:  # an error body is whatever the server or a proxy sent: the status still decides
            pass
        diagnostics = [f"{h}={headers[h]}" for h in _DIAGNOSTIC_HEADERS if headers.get(h)]
        text = (message or f"{method} {path} -> HTTP {status}: {reason}") + (
            f" ({'; '.join(diagnostics)})" if diagnostics else ""
        )
        return error_for_response(
            status,
            self._redact(" ".join(text.split())),
            retry_after=parse_retry_after(headers.get("Retry-After")),
            code=code,
            url=self.config.base_url + path,
            mitigated=headers.get("x-vercel-mitigated"),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | None] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry_statuses: frozenset[int] | None = None,
    ) -> Response:
        """One call, its body read whole (bounded). Non-2xx raises the semantic error.

        GETs are retried on a transport failure or a 502/503/504, like the SDK's RetryAgent;
        other methods only on the statuses in ``retry_statuses`` (which guarantee the write was
        not applied, or that repeating it is harmless)."""
        idempotent = method in ("GET", "HEAD")
        retry = retry_statuses if retry_statuses is not None else (_RETRY_STATUSES if idempotent else frozenset())
        url = self.url(path, query)
        extra = {"Accept": "application/cbor", **(headers or {})}
        attempt = 0
        while True:
            started = time.monotonic()
            extra["X-Request-Time"] = str(int(time.time() * 1000))
            try:
                session = self._session_for_loop()
                async with session.request(
                    method,
                    url,
                    data=body,
                    headers=extra,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                ) as resp:
                    data = await self._read(resp, method, path)
                    if 200 <= resp.status < 300:
                        return Response(resp.status, resp.headers, data)
                    if resp.status in retry and attempt < _READ_RETRIES:
                        attempt += 1
                        await asyncio.sleep(self._backoff(attempt, resp.headers.get("Retry-After")))
                        continue
                    raise self.error_for(method, path, resp.status, resp.reason or "", resp.headers, data)
            except (TimeoutError, aiohttp.ClientError) as error:
                if idempotent and attempt < _READ_RETRIES:
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt, None))
                    continue
                raise self._transport_error(method, path, error, started) from None

    @staticmethod
    def _backoff(attempt: int, retry_after: str | None) -> float:
        seconds = parse_retry_after(retry_after)
        if seconds is not None:
            return float(min(seconds, 5))
        return 0.1 * 2.0 ** (attempt - 1)

    async def _read(self, resp: aiohttp.ClientResponse, method: str, path: str) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > MAX_BODY:
            raise WorkflowWorldError(f"{method} {path}: response of {declared} bytes is too large", code="PARSE_ERROR")
        chunks = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            chunks.extend(chunk)
            if len(chunks) > MAX_BODY:
                raise WorkflowWorldError(f"{method} {path}: response is too large", code="PARSE_ERROR")
        return bytes(chunks)

    def parse(self, method: str, path: str, response: Response) -> Any:
        """A CBOR (or JSON) answer as plain values; anything else is a one-line ``PARSE_ERROR``."""
        try:
            if "application/cbor" in response.content_type:
                return decode_cbor(response.body)
            return plain(json.loads(response.body))
        except Exception as error:
            raise WorkflowWorldError(
                f"{method} {path}: cannot parse the response ({response.content_type or 'no Content-Type'}): "
                f"{type(error).__name__}",
                code="PARSE_ERROR",
            ) from None

    async def frames(
        self, path: str, query: Mapping[str, str | None] | None = None
    ) -> AsyncIterator[tuple[dict[str, Any], bytes]]:
        """The v4 frame stream of a GET, frame by frame, read incrementally (one frame in memory).

        A list ends with the ``{_end: 1}`` sentinel, which is yielded too; a single-event GET is
        one frame and no sentinel."""
        url = self.url(path, query)
        attempt = 0
        yielded = False
        while True:
            started = time.monotonic()
            try:
                session = self._session_for_loop()
                async with session.get(
                    url,
                    headers={"Accept": FRAMES_CONTENT_TYPE, "X-Request-Time": str(int(time.time() * 1000))},
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=self.config.timeout),
                ) as resp:
                    if not 200 <= resp.status < 300:
                        data = await self._read(resp, "GET", path)
                        if resp.status in _RETRY_STATUSES and attempt < _READ_RETRIES:
                            attempt += 1
                            await asyncio.sleep(self._backoff(attempt, resp.headers.get("Retry-After")))
                            continue
                        raise self.error_for("GET", path, resp.status, resp.reason or "", resp.headers, data)
                    kind = resp.headers.get("Content-Type", "")
                    if not kind.startswith(FRAMES_CONTENT_TYPE):
                        raise WorkflowWorldError(
                            f"GET {path}: expected {FRAMES_CONTENT_TYPE}, got {kind or '(none)'}", code="PARSE_ERROR"
                        )
                    content = resp.content
                    while True:
                        head = await _read_exactly(content, 4, allow_eof=True)
                        if head is None:
                            return
                        (meta_len,) = _U32.unpack(head)
                        if meta_len > MAX_META:
                            raise WorkflowWorldError(f"GET {path}: frame meta of {meta_len} bytes", code="PARSE_ERROR")
                        meta_bytes = await _read_exactly(content, meta_len)
                        (body_len,) = _U32.unpack(await _read_exactly(content, 4) or b"")
                        if body_len > MAX_BODY:
                            raise WorkflowWorldError(f"GET {path}: frame body of {body_len} bytes", code="PARSE_ERROR")
                        body = await _read_exactly(content, body_len) if body_len else b""
                        try:
                            meta = decode_cbor(meta_bytes or b"")
                        except Exception:
                            raise WorkflowWorldError(
                                f"GET {path}: a frame's meta is not CBOR", code="PARSE_ERROR"
                            ) from None
                        if not isinstance(meta, dict):
                            raise WorkflowWorldError(f"GET {path}: a frame's meta is not a map", code="PARSE_ERROR")
                        yielded = True
                        yield meta, body or b""
                        if meta.get("_end") == 1:
                            return
            except (TimeoutError, aiohttp.ClientError) as error:
                if attempt < _READ_RETRIES and not yielded:  # once frames went out, a retry would repeat them
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt, None))
                    continue
                raise self._transport_error("GET", path, error, started) from None

    async def stream(self, path: str, query: Mapping[str, str | None] | None = None) -> AsyncIterator[bytes]:
        """A live read's bytes as they arrive (no deadline: the server holds it open until the close)."""
        url = self.url(path, query)
        started = time.monotonic()
        try:
            session = self._session_for_loop()
            async with session.get(url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                if not 200 <= resp.status < 300:
                    data = await self._read(resp, "GET", path)
                    raise self.error_for("GET", path, resp.status, resp.reason or "", resp.headers, data)
                async for chunk in resp.content.iter_any():
                    if chunk:
                        yield chunk
        except (TimeoutError, aiohttp.ClientError) as error:
            raise self._transport_error("GET", path, error, started) from None


class _Truncated(WorkflowWorldError):
    pass


async def _read_exactly(content: aiohttp.StreamReader, n: int, *, allow_eof: bool = False) -> bytes | None:
    """``n`` bytes, or None at a clean end (``allow_eof``); a stream cut inside a frame is an error."""
    if n == 0:
        return b""
    try:
        return await content.readexactly(n)
    except asyncio.IncompleteReadError as error:
        if allow_eof and not error.partial:
            return None
        raise _Truncated("the frame stream ended inside a frame (truncated response)", code="PARSE_ERROR") from None
