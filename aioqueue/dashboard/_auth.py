"""Who may see the dashboard: HTTP basic credentials and/or a bearer token.

A token is accepted as ``Authorization: Bearer T``, as ``?token=T`` (the page then sets a
cookie and drops the token from its address, so the browser's later requests and its
event stream carry the cookie) or as that cookie. Every comparison is constant-time. With
neither credentials nor token configured, everyone is let in (``serve`` allows that only
on a loopback address).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError

#: The cookie that carries a token (a digest of it, never the token itself).
COOKIE = "aioqueue_dashboard"
#: Where the authenticated user's name is put in the ASGI scope.
WHO = "aioqueue.dashboard.who"
#: Headers every response gets.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


@dataclass(frozen=True, slots=True)
class Auth:
    """The configured credentials (all None: no authentication)."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.username is None) != (self.password is None):
            raise ConfigurationError(
                "dashboard basic auth needs both a username and a password")
        if self.username is not None and ":" in self.username:
            raise ConfigurationError("dashboard username cannot contain ':'")
        if self.token is not None and not self.token:
            raise ConfigurationError("dashboard token cannot be empty")
        if self.password is not None and not self.password:
            raise ConfigurationError("dashboard password cannot be empty")

    @property
    def required(self) -> bool:
        return self.username is not None or self.token is not None

    def cookie_value(self) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), b"aioqueue dashboard cookie",
                        hashlib.sha256).hexdigest()

    def _token_ok(self, offered: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(offered.encode(), self.token.encode())

    def identify(self, conn: HTTPConnection) -> tuple[str | None, bool]:
        """Who is asking (None: nobody we know), and whether by ``?token=``."""
        if not self.required:
            return "dashboard", False
        header = conn.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "basic" and self.username is not None and self.password is not None:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(
                    ":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            # Both compared, always: no early exit tells which one was wrong.
            user_ok = hmac.compare_digest(user.encode(), self.username.encode())
            password_ok = hmac.compare_digest(password.encode(), self.password.encode())
            if user_ok and password_ok:
                return self.username, False
        if self.token is not None:
            if scheme == "bearer" and self._token_ok(value):
                return "token", False
            query = conn.query_params.get("token")
            if query is not None and self._token_ok(query):
                return "token", True
            cookie = conn.cookies.get(COOKIE)
            if cookie is not None and hmac.compare_digest(cookie.encode(),
                                                          self.cookie_value().encode()):
                return "token", False
        return None, False

    def challenge(self) -> str:
        if self.username is not None:
            return 'Basic realm="aioqueue dashboard", charset="UTF-8"'
        return 'Bearer realm="aioqueue dashboard"'


class Guard:
    """ASGI middleware: refuses whoever ``Auth`` does not know, adds security headers."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        who, by_query = self.auth.identify(conn)
        if who is None:
            hint = ("log in" if self.auth.username is not None else
                    "send 'Authorization: Bearer <token>' or open the page once with "
                    "?token=<token>")
            response = JSONResponse({"error": f"authentication required: {hint}"},
                                    status_code=401,
                                    headers={"WWW-Authenticate": self.auth.challenge()})
            await response(scope, receive, send)
            return
        scope[WHO] = who
        if by_query and scope["method"] == "GET" and scope["path"].endswith("/"):
            # The page itself: remember the token in a cookie, take it out of the address
            # bar (and of the history), and come back.
            rest = urlencode([(k, v) for k, v in conn.query_params.multi_items()
                              if k != "token"])
            redirect = RedirectResponse("./" + (f"?{rest}" if rest else ""), status_code=303)
            redirect.set_cookie(COOKIE, self.auth.cookie_value(), httponly=True,
                                samesite="strict", path=_cookie_path(scope),
                                secure=scope.get("scheme") == "https")
            await redirect(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _cookie_path(scope: Scope) -> str:
    path: str = scope["path"]
    return path if path.endswith("/") else "/"
