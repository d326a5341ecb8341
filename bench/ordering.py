"""`python -m bench.ordering`: what keeping a conversation's publication in order
costs per batch, today and with a claim in the database instead.

Today (chat.services.publish_queue): the task takes its conversation's mark (a Lua
compare-and-delete), then the conversation's lock (SET NX PX), and releases it after
the batch: three Redis round trips. The alternative the structure issue names, a
per-conversation claim in the database: a lease row taken with one UPDATE and given
back with another (SQLite, which has no row locks), or on Postgres a row locked
`FOR UPDATE SKIP LOCKED` for the batch's transaction. Each is timed alone, one
batch after another, on an embedded valkey and the database of DATABASE_URL (a
temporary SQLite file by default). Prints microseconds per batch, p50 and p99.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

from .ceilings import percentile

ROUNDS = 2000


def timed(step: Callable[[int], None], rounds: int) -> tuple[float, float]:
    """p50 and p99 of `step(i)` in microseconds."""
    times = []
    for i in range(rounds):
        start = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times), percentile(times, 99)


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.ordering")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="ordering-")
    os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{tmp}/probe.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproj.settings")
    os.environ.setdefault("DEBUG", "True")
    from chatproj.embedded import embedded_redis, free_port

    port = free_port()
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    with embedded_redis(port).start():
        import django

        django.setup()
        from django.db import connection, transaction

        from chat.services import publish_queue

        rooms = 50

        def redis_today(i: int) -> None:
            room = i % rooms
            publish_queue.redis_client().set(
                f"chat:publish:scheduled:{room}", "m", px=5000
            )
            publish_queue.publish_pass_started(
                room_id=room, message_id="m", owner_only=True
            )
            lock = publish_queue.conversation_lock(room_id=room)
            lock.acquire()
            lock.release()

        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS ordering_claim (room_id integer "
                "PRIMARY KEY, owner varchar(64), until double precision)"
            )
            cursor.executemany(
                "INSERT INTO ordering_claim (room_id) VALUES (%s)",
                [(r,) for r in range(rooms)],
            )

        def db_lease(i: int) -> None:
            room, owner, now = i % rooms, uuid.uuid4().hex, time.time()
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE ordering_claim SET owner = %s, until = %s "
                    "WHERE room_id = %s AND (owner IS NULL OR until < %s)",
                    [owner, now + 30, room, now],
                )
                cursor.execute(
                    "UPDATE ordering_claim SET owner = NULL WHERE room_id = %s "
                    "AND owner = %s",
                    [room, owner],
                )

        def db_skip_locked(i: int) -> None:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT room_id FROM ordering_claim WHERE room_id = %s "
                    "FOR UPDATE SKIP LOCKED",
                    [i % rooms],
                )

        results = {
            "Redis today: mark set on commit, taken by the task, lock, release": timed(
                redis_today, args.rounds
            ),
            f"{connection.vendor}: lease UPDATE + release UPDATE": timed(
                db_lease, args.rounds
            ),
        }
        if connection.vendor == "postgresql":
            results["postgresql: FOR UPDATE SKIP LOCKED in its transaction"] = timed(
                db_skip_locked, args.rounds
            )
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE ordering_claim")
    for name, (p50, p99) in results.items():
        print(f"{name}: p50 {p50:.0f} µs, p99 {p99:.0f} µs per batch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
