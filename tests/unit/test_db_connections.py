"""chat.infra.db: a connection is kept across calls and closed only when Django
would close it."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
from django.db import connection

from chat.infra.db import (
    between_units,
    close_unusable_connections,
    db_call,
    write_turn,
)

pytestmark = pytest.mark.django_db(transaction=True)


def select_one() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone()[0]


def test_a_healthy_connection_is_kept_without_a_health_check():
    select_one()
    raw = connection.connection
    connection.health_check_done = True
    close_unusable_connections()
    assert connection.connection is raw
    assert connection.health_check_done  # no SELECT 1 before the next statement


def test_an_obsolete_or_failed_connection_is_closed():
    select_one()
    connection.close_at = time.monotonic() - 1  # past CONN_MAX_AGE
    close_unusable_connections()
    assert connection.connection is None
    assert select_one() == 1  # and the next statement reconnects
    connection.set_autocommit(False)  # left in a transaction by a caller
    close_unusable_connections()
    assert connection.connection is None
    assert select_one() == 1


def logged_queries() -> int:
    return len(connection.queries_log)


def test_between_units_forgets_the_debug_query_log(settings):
    settings.DEBUG = True
    select_one()
    assert logged_queries() == 1
    between_units()
    assert logged_queries() == 0
    assert select_one() == 1  # the connection itself is kept


async def test_db_call_leaves_no_debug_query_log_in_its_thread(settings):
    """Sockets are not requests, so nothing else resets the log: under DEBUG a
    long-lived thread kept its last 9,000 queries (and full GC pauses with them)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    settings.DEBUG = True
    loop = asyncio.get_running_loop()
    one_thread = ThreadPoolExecutor(1)
    loop.set_default_executor(one_thread)  # both calls in the same thread
    try:
        assert await db_call(select_one)() == 1
        assert await db_call(logged_queries)() == 0
    finally:
        one_thread.shutdown()


async def test_db_call_runs_off_the_event_loop_thread():
    import threading

    loop_thread = threading.get_ident()
    assert await db_call(select_one)() == 1
    assert await db_call(threading.get_ident)() != loop_thread


async def test_a_consumer_handles_frames_and_events_without_the_orm_thread_hop(
    monkeypatch,
):
    """Channels closes old connections before every handler, a hop to the process's
    one shared ORM thread per frame and event; the sockets' base consumer does not."""
    import channels.consumer
    from channels.consumer import AsyncConsumer

    from chat.realtime.socket_guard import GuardedConsumer, SocketCrashed

    hops: list[None] = []

    async def hop() -> None:
        hops.append(None)

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", hop)

    class Probe(GuardedConsumer):
        async def probe_event(self, event: dict) -> None:
            self.seen = event

    consumer = Probe()
    await consumer.dispatch({"type": "probe.event", "n": 1})
    assert consumer.seen == {"type": "probe.event", "n": 1} and not hops
    await AsyncConsumer.dispatch(consumer, {"type": "probe.event"})
    assert hops  # Channels' own dispatch does hop: this test sees the difference
    with pytest.raises(SocketCrashed) as crashed:
        await consumer.dispatch({"type": "no.such.handler"})
    assert "No handler" in str(crashed.value.__cause__)


def _take_the_turn(started, acquired) -> None:  # in a forked child
    started.set()
    with write_turn():
        acquired.set()


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's writers take turns")
def test_write_turn_waits_for_another_process_s_writer():
    """The Celery children and the web process write the same SQLite file: a writer
    waits for another process's turn to end (not in SQLite's sleeping busy handler),
    and a forked child has turns of its own, not its parent's."""
    fork = multiprocessing.get_context("fork")
    started, acquired = fork.Event(), fork.Event()
    with write_turn() as release:
        child = fork.Process(target=_take_the_turn, args=(started, acquired))
        child.start()
        try:
            assert started.wait(10)
            assert not acquired.wait(0.5)  # the parent's turn holds it off
            release()
            assert acquired.wait(10)
        finally:
            child.join(10)
    assert child.exitcode == 0
    # and the parent's next turn is its own again
    done = threading.Event()

    def take() -> None:
        with write_turn():
            done.set()

    taker = threading.Thread(target=take)
    taker.start()
    taker.join(10)
    assert done.is_set()
