"""What the ASGI server writes to its log of a request: never a ticket, one line per
socket, none for a socket refused by a throttle.

uvicorn logs each socket's path with its query string (`"WebSocket
/ws/chat/lobby/?ticket=..." [accepted]`) and each HTTP request's in its access log. A
ticket opens a socket for WS_TICKET_TTL seconds, so its value is a credential: a
filter on uvicorn's loggers replaces it with `[redacted]` before any handler formats
the record, whatever the query's other parameters or how its key is percent-encoded.

The same filter drops the websockets library's bare `connection open` and `connection
closed` lines (no address, no path: the `[accepted]` line says it all), and the lines
of a socket whose consumer called quiet_socket() before accepting it (a connect
refused by a throttle, which logs once per window itself): a reconnect storm costs
no line per attempt.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from urllib.parse import unquote_plus

SECRET_PARAMETERS = frozenset({"ticket"})
REDACTED = "[redacted]"
# uvicorn's loggers that carry request paths (access log, and sockets' lines).
SERVER_LOGGERS = ("uvicorn.access", "uvicorn.error")

_QUERY = re.compile(r"\?([^\s\"']*)")
# The websockets library's lines about every socket, without address or path.
BARE_SOCKET_LINES = frozenset({"connection open", "connection closed"})

# Set in a socket's task: uvicorn logs its accept from that task (the consumer's send).
_quiet: ContextVar[bool] = ContextVar("chat_quiet_socket", default=False)


def quiet_socket() -> None:
    """The ASGI server logs nothing more of the current socket (call it from the
    consumer, before accepting a socket it refuses for a throttle)."""
    _quiet.set(True)


def redact_query(text: str) -> str:
    """`text` with the value of every secret query parameter replaced."""
    if "?" not in text:
        return text

    def redact(match: re.Match[str]) -> str:
        pairs = []
        for pair in match.group(1).split("&"):
            key = pair.partition("=")[0]
            if unquote_plus(key) in SECRET_PARAMETERS:
                pair = f"{key}={REDACTED}"
            pairs.append(pair)
        return "?" + "&".join(pairs)

    return _QUERY.sub(redact, text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and string arguments with redact_query; drops
    the bare socket lines and a quiet socket's lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record in place; False to drop it."""
        if _quiet.get() or record.msg in BARE_SOCKET_LINES:
            return False
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


_filter = RedactSecrets()


def install_redaction() -> None:
    """Put the filter on the ASGI server's loggers (idempotent)."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
