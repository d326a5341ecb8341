"""Pure pieces of the abuse hardening (issue 22): the log redaction of tickets."""

from __future__ import annotations

import logging

import pytest

from chat.security.server_log import RedactSecrets, redact_query


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ws/chat/a/?ticket=abc:def", "/ws/chat/a/?ticket=[redacted]"),
        ("/ws/?after_seq=3&ticket=x&y=1", "/ws/?after_seq=3&ticket=[redacted]&y=1"),
        ("/ws/?t%69cket=x", "/ws/?t%69cket=[redacted]"),  # parse_qs decodes keys
        ("/ws/?ticket=a&ticket=b", "/ws/?ticket=[redacted]&ticket=[redacted]"),
        ("/ws/?ticket", "/ws/?ticket=[redacted]"),
        ('"GET /x?ticket=s HTTP/1.1" 200', '"GET /x?ticket=[redacted] HTTP/1.1" 200'),
        ("/ws/?tickets=keep&myticket=keep", "/ws/?tickets=keep&myticket=keep"),
        ("no query here", "no query here"),
        ("?", "?"),
        ("??&&==", "??&&=="),
    ],
)
def test_redact_query_hides_only_ticket_values(text, expected):
    """Every `ticket` value goes, however its key is encoded; nothing else changes."""
    assert redact_query(text) == expected


def test_the_filter_rewrites_uvicorns_record_arguments():
    """A record as uvicorn makes it: arguments rewritten, non-strings kept."""
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1,
        '%s - "WebSocket %s" %d', ("127.0.0.1:5", "/ws/chat/a/?ticket=zz", 403), None,
    )  # fmt: skip
    assert RedactSecrets().filter(record)
    assert record.getMessage() == (
        '127.0.0.1:5 - "WebSocket /ws/chat/a/?ticket=[redacted]" 403'
    )


def test_the_filter_drops_bare_socket_lines_and_quiet_sockets():
    """websockets' `connection open` goes; a socket marked quiet (in its own
    context, as its consumer's task) logs nothing; others still log."""
    import contextvars

    from chat.security.server_log import quiet_socket

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(
            "uvicorn.error", logging.INFO, __file__, 1, msg, args, None
        )

    accepted = ('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/ws/chat/a/")
    assert not RedactSecrets().filter(record("connection open"))
    assert not RedactSecrets().filter(record("connection closed"))
    assert RedactSecrets().filter(record(*accepted))

    def refused_socket() -> bool:
        quiet_socket()
        return RedactSecrets().filter(record(*accepted))

    assert contextvars.copy_context().run(refused_socket) is False
    assert RedactSecrets().filter(record(*accepted))  # other sockets unaffected
