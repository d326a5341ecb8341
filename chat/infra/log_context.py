"""The message_id every chat-pipeline log line carries (a context variable)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

current_message_id: ContextVar[str] = ContextVar("current_message_id", default="-")


@contextmanager
def message_context(message_id: object) -> Iterator[None]:
    """Log lines inside this block carry `message_id`."""
    token = current_message_id.set(str(message_id))
    try:
        yield
    finally:
        current_message_id.reset(token)


class MessageIdFilter(logging.Filter):
    """Adds `record.message_id` (from the context, unless the call passed one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Never drops a record; only annotates it."""
        if not hasattr(record, "message_id"):
            record.message_id = current_message_id.get()
        return True
