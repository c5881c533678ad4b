"""Who may read the dashboard, and the headers every response carries.

- :func:`check_bind`: a loopback address needs nothing; any other address needs a token,
  else :class:`~edgeml.errors.UsageError` (the CLI exits 2 with one line) before binding.
- :class:`Guard` (ASGI middleware): with a token, every request (pages, API, static files)
  must carry it: ``Authorization: Bearer TOKEN``, or the cookie set once from ``?token=``
  (the request is then redirected to the same URL without the token, so it does not stay
  in the address bar or the history). Compared with :func:`hmac.compare_digest`. The cookie
  holds an HMAC of the token, never the token. A request without it gets 401 in the API's
  error shape.
- Every response: a strict Content-Security-Policy (:data:`CSP`: only this origin, no
  inline script or style, no framing), ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeml.errors import UsageError

__all__ = ["COOKIE", "CSP", "MIN_TOKEN", "Guard", "check_bind", "is_loopback", "read_token"]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
COOKIE = "edgeml_dashboard"
MIN_TOKEN = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token: str | None, token_file: str | Path | None) -> str | None:
    """``--token`` or the first line of ``--token-file`` (not both), at least 16 characters."""
    if token is not None and token_file is not None:
        raise UsageError("give --token or --token-file, not both")
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"--token-file {token_file}: {exc.strerror or exc}") from exc
    if token is None:
        return None
    if len(token) < MIN_TOKEN:
        raise UsageError(f"the dashboard token must be at least {MIN_TOKEN} characters "
                         "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token."""
    if token is None and not is_loopback(host):
        raise UsageError(f"refusing to serve the dashboard on {host} without a token: anyone "
                         "who can reach it could read the fleet; pass --token or --token-file "
                         "(or bind to 127.0.0.1)")


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"edgeml-dashboard-session", hashlib.sha256).hexdigest()


def error_body(status: int, message: str) -> bytes:
    """The API's one error shape (also used by the app's exception handlers)."""
    return json.dumps({"error": {"status": status, "message": message}}).encode()


class Guard:
    """ASGI middleware: token check (when a token is set) and the security headers."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        self.token = token
        self._bearer = f"Bearer {token}".encode() if token else b""
        self._cookie = _cookie_value(token).encode() if token else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in HEADERS if h[0] not in names)]
            await send(message)

        if self.token is None or self._allowed(scope):
            await self.app(scope, receive, send_with_headers)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        given = query.pop("token", None)
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            location = scope.get("root_path", "") + scope["path"]
            if query:
                location += "?" + urlencode(query)
            await send_with_headers({"type": "http.response.start", "status": 303, "headers": [
                (b"location", location.encode()),
                (b"set-cookie", f"{COOKIE}={self._cookie.decode()}; Path=/; HttpOnly; "
                                f"SameSite=Strict".encode()),
                (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = error_body(401, "this dashboard needs its token: send `Authorization: Bearer "
                               "TOKEN`, or open the page once with ?token=TOKEN")
        await send_with_headers({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization" and hmac.compare_digest(value, self._bearer):
                return True
            if name == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:  # a malformed cookie header is just not the token
                    continue
                morsel: Any = jar.get(COOKIE)
                if morsel is not None and hmac.compare_digest(morsel.value.encode(), self._cookie):
                    return True
        return False
