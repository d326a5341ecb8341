"""Strict WebSocket origins: only pages of the site itself may open a socket.

An `Origin` is accepted when it is exactly (scheme, host, port):
- the origin the request was made to: `http(s)://<Host header>`, where the Host is
  one of ALLOWED_HOSTS (the rule Django's CSRF check applies to forms; the scheme is
  https when the socket is wss, or behind a TLS proxy that says so), or
- one of CSRF_TRUSTED_ORIGINS or WS_ALLOWED_ORIGINS (a site served under other
  names, e.g. through a proxy that rewrites Host).

So `make run` (http://127.0.0.1:8000, http://localhost:8000) and a test server on any
port work with no setting, while another port, another scheme or a foreign host is
refused: the handshake is answered 403 and no consumer runs. A request without an
`Origin` header is a non-browser client: it is let through only with a `?ticket=`
(chat.security.tickets), which authenticates it; without one it is refused.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult, parse_qs, urlparse

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin_tuple(parsed: ParseResult) -> tuple[str, str, int | None] | None:
    if not parsed.scheme or not parsed.hostname or parsed.path not in ("", "/"):
        return None
    try:
        port = parsed.port or DEFAULT_PORTS.get(parsed.scheme)
    except ValueError:  # a port that is not a number
        return None
    return parsed.scheme, parsed.hostname, port


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin1")
    return None


def request_origin(scope: dict[str, Any]) -> str | None:
    """The site's own origin for this request (`http(s)://<Host>`), if the Host is
    one of ALLOWED_HOSTS."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # Django's own DEBUG default
    if not domain or not validate_host(domain, allowed):
        return None
    secure = scope.get("scheme") == "wss" or (
        settings.BEHIND_TLS_PROXY and _header(scope, b"x-forwarded-proto") == "https"
    )
    return f"{'https' if secure else 'http'}://{host}"


def query_params(scope: dict[str, Any]) -> dict[str, list[str]]:
    """The parameters of the socket URL's query string (blank values kept)."""
    query = bytes(scope.get("query_string", b"")).decode("latin1")
    return parse_qs(query, keep_blank_values=True)


def has_ticket(scope: dict[str, Any]) -> bool:
    """Whether the socket URL carries `?ticket=` (a non-browser client)."""
    return "ticket" in query_params(scope)


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Exact (scheme, host, port) match of the Origin; none only with a ticket."""
    header = _header(scope, b"origin")
    if header is None:
        return has_ticket(scope)
    origin = _origin_tuple(urlparse(header))
    if origin is None:
        return False
    candidates = [
        request_origin(scope),
        *settings.CSRF_TRUSTED_ORIGINS,
        *settings.WS_ALLOWED_ORIGINS,
    ]
    return any(
        candidate is not None and _origin_tuple(urlparse(candidate.lower())) == origin
        for candidate in candidates
    )


class SiteOriginValidator:
    """ASGI middleware in place of channels' AllowedHostsOriginValidator (which
    ignores scheme and port): a refused socket gets channels' WebsocketDenier (the
    handshake is answered 403)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        """Pass the socket on, or deny it."""
        if scope["type"] != "websocket":
            raise ValueError("SiteOriginValidator guards WebSocket connections only.")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
