"""Database connections kept across calls, and closed only when Django would.

Channels' `database_sync_to_async` closes old connections before and after every
call, and each close arms Django's health check, so the next statement is preceded by
`SELECT 1` on Postgres: a round trip before the hottest call (a message's insert).
Here a connection is closed only when Django
would close it for a reason (an error since the last commit, past CONN_MAX_AGE,
autocommit left off); a connection that broke makes its statement fail and is
replaced on the next call. Celery workers use the same check before each task
(chat.tasks).

Django also forgets a thread's DEBUG query log when a request starts; sockets and
tasks are not requests, so the same boundary does it here. Without it, under DEBUG
(`make run`) every connection of a long-lived process kept its last 9,000 queries
with their SQL text (a group commit's INSERT, its values quoted in, runs to kilobytes).

SQLite lets one connection write at a time, and a connection that finds the database
locked sleeps in SQLite's busy handler (1, 2, 5, 10, 15, 20, 25, ... ms) before it
tries again, so a process whose threads write at once loses most of its time asleep,
and so do the web process and the Celery children when their writes meet: a write
that met the lock twice waited 8 ms, four times 33 ms, six times 78 ms, however briefly
the lock was held. `write_turn` queues the writers on locks instead, which hand over
at once: a thread lock within the process, then an exclusive `flock` on a file beside
the database across processes (the kernel wakes the next waiter when it is
released). The lock libraries (filelock, fasteners) poll a non-blocking lock with
sleeps, which is the busy handler again.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections, reset_queries

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


def between_units() -> None:
    """What Django does to a thread's connections between requests: forget the DEBUG
    query log and close the connections it would not reuse."""
    reset_queries()
    close_unusable_connections()


_sqlite_writer = threading.Lock()
_turn_files: dict[str, int] = {}  # database file → this process's open lock file


def _forget_parent_locks() -> None:
    # A forked child must not use its parent's locks: the thread lock may be held by
    # a thread that does not exist here, and a flock belongs to the open file, so
    # the child would share (and could release) its parent's turn.
    global _sqlite_writer
    _sqlite_writer = threading.Lock()
    _turn_files.clear()  # the inherited descriptors stay open, and unused


os.register_at_fork(after_in_child=_forget_parent_locks)


def _turn_file(database: str) -> int | None:
    """This process's descriptor of the lock file beside an SQLite database file
    (None for an in-memory database, which no other process can open)."""
    if not database or database == ":memory:" or "mode=memory" in database:
        return None
    fd = _turn_files.get(database)
    if fd is None:
        fd = os.open(f"{database}.write-turn", os.O_RDWR | os.O_CREAT, 0o600)
        _turn_files[database] = fd
    return fd


@contextmanager
def write_turn(using: str = DEFAULT_DB_ALIAS) -> Iterator[Callable[[], None]]:
    """Around a write transaction that this block starts: on SQLite, wait for the
    other writers, of this process and of the others on the same database file, on
    locks (not in SQLite's sleeping busy handler).

    Gives a `release` callable, to be registered with `transaction.on_commit` after
    the callbacks that must run in commit order, so the next writer starts while this
    one's slower callbacks run. The lock is released on leaving the block in any
    case. Inside an outer transaction nothing is taken: that transaction already
    holds (or waits for) SQLite's lock, and waiting on this lock too could deadlock
    with a writer that waits for SQLite's.
    """
    conn = connections[using]
    if conn.vendor != "sqlite" or conn.in_atomic_block:
        yield _nothing
        return
    thread_lock = _sqlite_writer
    thread_lock.acquire()
    try:
        fd = _turn_file(str(conn.settings_dict["NAME"]))
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder releases it
    except BaseException:
        thread_lock.release()
        raise
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            thread_lock.release()

    try:
        yield release
    finally:
        release()


def _nothing() -> None:
    pass


def db_call(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func` in the loop's thread pool (not the process's one shared ORM thread),
    with this module's connection checks (`between_units`) before and after."""

    @wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        between_units()
        try:
            return func(*args, **kwargs)
        finally:
            between_units()

    return sync_to_async(run, thread_sensitive=False)
