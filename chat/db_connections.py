"""Database connections kept across calls, and closed only when Django would.

Channels' `database_sync_to_async` closes old connections before and after every
call, and each close arms Django's health check, so the next statement is preceded by
`SELECT 1` on Postgres. For the hottest call (a message's insert) that was a round
trip and ~9% of the web process's CPU. Here a connection is closed only when Django
would close it for a reason (an error since the last commit, past CONN_MAX_AGE,
autocommit left off); a connection that broke makes its statement fail and is
replaced on the next call. Celery workers use the same check before each task
(chat.tasks).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def close_unusable_connections() -> None:
    """Close this thread's connections that Django would not reuse."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        if (
            conn.errors_occurred
            or (conn.close_at is not None and time.monotonic() >= conn.close_at)
            or conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"]
        ):
            conn.close_if_unusable_or_obsolete()


def db_call(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func` in the loop's thread pool (not the process's one shared ORM thread),
    with this module's connection checks before and after."""

    @wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        close_unusable_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_unusable_connections()

    return sync_to_async(run, thread_sensitive=False)
