"""The token, on every route but ``/healthz``: deny by default, not a list of protected prefixes.

With a token configured, a request is let through when it carries one of:

- ``Authorization: Bearer <token>`` (the scheme in any case, RFC 7235) — API clients, exporters,
  Prometheus;
- the session cookie, on GET and HEAD only — browsers, which cannot send a header when they
  navigate. A browser gets it from the login form (``/login``, also what an unauthenticated page
  answers) or from the token in a URL once (``/?token=…``, or ``/#token=…``, which the login page
  submits for it). The cookie is HttpOnly and SameSite=Strict, and its value is derived from the
  token (changing the token ends every session);
- on the Sentry relay's routes, the token as the DSN key (``X-Sentry-Auth: Sentry sentry_key=…``
  or ``?sentry_key=``), which is all a Sentry SDK can send.

Every comparison is constant-time. A refusal is a bare 401 (a login page for a browser asking for
a page); nothing says which part was wrong, and the token is in no log line.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .health import PATH as HEALTH_PATH
from .sentry_relay import sentry_key

__all__ = ["COOKIE", "LOGIN_PATH", "OPEN_PATHS", "auth_middleware", "authorized", "login_routes", "session_value"]

COOKIE = "wft_session"
LOGIN_PATH = "/login"
#: the only routes that answer without the token (the login form has to be reachable to log in)
OPEN_PATHS = frozenset({HEALTH_PATH, LOGIN_PATH})
_SAFE_METHODS = frozenset({"GET", "HEAD"})
#: where a browser may be asking for a page (the login form is answered there instead of a bare 401)
_NOT_PAGES = ("/api/", "/v1/", "/metrics", "/static/")


def session_value(token: str) -> str:
    """The cookie's value: derived from the token, so the cookie does not carry the token itself."""
    return hmac.new(token.encode(), b"wft-session-v1", hashlib.sha256).hexdigest()


def _equal(given: str, expected: str) -> bool:
    # surrogatepass: a header's undecodable bytes compare unequal instead of raising
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def bearer_ok(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, the scheme case-insensitive, exactly one space after it."""
    scheme, _, credentials = header.partition(" ")
    return scheme.lower() == "bearer" and _equal(credentials, token)


def _page_request(request: web.Request) -> bool:
    return request.method in _SAFE_METHODS and not request.path.startswith(_NOT_PAGES)


def auth_middleware(token: str | None, *, dsn_key_routes: Collection[str] = ()) -> Middleware:
    """The middleware; ``dsn_key_routes``: names of routes that also take the token as a Sentry DSN key."""
    cookie = session_value(token) if token else ""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None or request.path in OPEN_PATHS or _carries(request, token, cookie):
            return await handler(request)
        if dsn_key_routes and request.match_info.route.name in dsn_key_routes:
            key = sentry_key(request)
            if key is not None and _equal(key, token):
                return await handler(request)
        if _page_request(request) and "token" in request.query:
            return _token_in_url(request, token, cookie)
        if _page_request(request):
            return _login_page(request.path_qs, status=401)
        return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})

    return middleware


def _carries(request: web.Request, token: str, cookie: str) -> bool:
    """The token as a bearer header, or the session cookie on a GET or HEAD."""
    if bearer_ok(request.headers.get("Authorization", ""), token):
        return True
    return request.method in _SAFE_METHODS and _equal(request.cookies.get(COOKIE, ""), cookie)


def authorized(token: str | None) -> Callable[[web.Request], bool]:
    """Whether a request carries the token (a bearer header or the session cookie); every request
    when there is none. For open routes that say more to those who have it (``/healthz``)."""
    cookie = session_value(token) if token else ""
    return lambda request: token is None or _carries(request, token, cookie)


def _token_in_url(request: web.Request, token: str, cookie: str) -> web.StreamResponse:
    """``?token=`` once: the cookie is set and the browser sent on without the token in its URL."""
    if not _equal(request.query.get("token", ""), token):
        return _login_page(_without_token(request), status=401, wrong=True)
    return _logged_in(_without_token(request), cookie, secure=request.secure)


def _without_token(request: web.Request) -> str:
    """The request's own URL (path and query, percent-encoded) without its ``token`` parameter."""
    return str(request.rel_url.with_query([(k, v) for k, v in request.query.items() if k != "token"]))


def _logged_in(location: str, cookie: str, *, secure: bool) -> web.Response:
    """303 to ``location`` with the session cookie set; ``secure`` (served over TLS): the browser
    sends it over TLS only."""
    response = web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", path="/", secure=secure or None)
    return response


def _safe_next(target: str) -> str:
    """Where to go after logging in: a path on this server (printable ASCII), never another site."""
    if (
        not target.startswith("/")
        or target.startswith("//")
        or target.startswith(LOGIN_PATH)
        or not all("!" <= c <= "~" for c in target)
        or "\\" in target
    ):
        return "/"
    return target


_LOGIN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>workflow-telemetry: token required</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 15px system-ui, sans-serif; display: grid; place-items: center; min-height: 90vh; margin: 0; }}
form {{ display: grid; gap: .6rem; width: min(26rem, 90vw); }}
input {{ font: inherit; padding: .4rem; }} .wrong {{ color: #b00020; }}
</style></head>
<body><form method="post" action="{action}" id="login">
<h1>Token required</h1>
<p>This collector needs its token (<code>wft serve --token</code> / <code>WFT_TOKEN</code>).</p>
{wrong}<label>Token <input type="password" name="token" autocomplete="current-password" autofocus required></label>
<input type="hidden" name="next" value="{next}">
<button type="submit">Open</button>
</form>
<script>
// the older link form /#token=…: the fragment never reaches the server, so submit it from here
const m = location.hash.match(/token=([^&]+)/);
if (m) {{
  history.replaceState(null, '', location.pathname + location.search);
  const form = document.getElementById('login');
  form.elements.token.value = decodeURIComponent(m[1]);
  form.submit();
}}
</script></body></html>
"""


def _login_page(next_path: str, *, status: int = 200, wrong: bool = False) -> web.Response:
    body = _LOGIN_HTML.format(
        action=html.escape(LOGIN_PATH),
        next=html.escape(_safe_next(next_path)),
        wrong='<p class="wrong">That is not the token.</p>' if wrong else "",
    )
    headers = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8", headers=headers)


def login_routes(token: str | None) -> list[web.RouteDef]:
    """``GET /login`` (the form) and ``POST /login`` (form field ``token``, and ``next``)."""
    cookie = session_value(token) if token else ""

    async def form(request: web.Request) -> web.Response:
        return _login_page(request.query.get("next", "/"))

    async def submit(request: web.Request) -> web.StreamResponse:
        if token is None:
            return web.Response(status=303, headers={"Location": "/"})
        if request.content_length is not None and request.content_length > 16 * 1024:
            return web.Response(status=413, text="login form over 16 KiB")
        try:
            fields = await request.post()
        except ValueError:  # not a form
            return web.Response(status=400, text="expected a form with a token field")
        given, target = fields.get("token"), fields.get("next")
        next_path = _safe_next(target if isinstance(target, str) else "/")
        if not isinstance(given, str) or not _equal(given, token):
            return _login_page(next_path, status=401, wrong=True)
        return _logged_in(next_path, cookie, secure=request.secure)

    return [web.get(LOGIN_PATH, form), web.post(LOGIN_PATH, submit)]
