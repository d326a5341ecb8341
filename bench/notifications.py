"""`python -m bench.notifications`: freshness of notifications at a steady rate.

Starts the stack the way `python -m bench` does (embedded valkey and Tansu, daphne, a
prefork Celery worker, beat) plus the notification agent (`run_agent notifications`),
then WebSocket clients send room messages that @mention a member who is not connected,
at a steady rate (default 50 msgs/s for 20 s), through the real pipeline: WebSocket →
daphne → database → worker → Kafka → agent → Notification row. The figure is read from
the rows: Notification.created_at − Message.created_at (message persisted →
notification stored), p50/p99/max, plus the message → Kafka part of it
(Message.published_at − created_at). Writes bench/results/notifications-latest.json
and notifications-latest-<database>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import POSTGRES_DEFAULT, RESULTS_DIR, BenchConfig
from .stack import Stack, StackError, create_rooms, create_users, make_run_dir

SENDERS = 5
TARGET = "bench-mentioned"
ROOM = "freshness"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench.notifications",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rate", type=float, default=50.0, help="messages per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of sending")
    p.add_argument(
        "--database-url",
        default="sqlite",
        help=f"'sqlite', 'postgres' ({POSTGRES_DEFAULT}) or a postgres:// URL whose "
        "database (name containing 'bench') is DROPPED and created afresh",
    )
    p.add_argument("--partitions", type=int, default=6, help="of the chat topic")
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--run-dir", type=Path, help="database and logs (default: a temp dir)"
    )
    args = p.parse_args(argv)
    if args.database_url == "postgres":
        args.database_url = POSTGRES_DEFAULT
    if args.rate <= 0 or args.duration <= 0:
        p.error("--rate and --duration must be positive")
    return args


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


def summary_ms(seconds: list[float]) -> dict[str, float | int]:
    """count, p50, p90, p99, max and mean in milliseconds."""
    values = sorted(s * 1000 for s in seconds)
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p90_ms": round(percentile(values, 90), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(values[-1], 1) if values else float("nan"),
        "mean_ms": round(sum(values) / len(values), 1) if values else float("nan"),
    }


async def send_steadily(
    server: str, cookies: list[str], rate: float, duration: float
) -> tuple[int, float]:
    """Open a socket per sender, send `rate` msgs/s round-robin for `duration` s on
    a fixed schedule (a late send is not made up by bunching); return (sent, lag)."""
    from websockets.asyncio.client import connect

    connections = [
        await connect(
            f"ws://{server}/ws/chat/{ROOM}/",
            origin=f"http://{server}",  # type: ignore[arg-type]
            additional_headers={"Cookie": f"sessionid={cookie}"},
            open_timeout=30,
            compression=None,
        )
        for cookie in cookies
    ]

    async def drain(connection: Any) -> None:  # frames are not needed, only read
        async for _ in connection:
            pass

    readers = [asyncio.create_task(drain(c)) for c in connections]
    total = int(rate * duration)
    start = time.monotonic() + 0.5
    worst = 0.0
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            worst = max(worst, -delay)
        frame = {"message": f"@{TARGET} freshness probe {i}", "client_id": f"f-{i}"}
        await connections[i % len(connections)].send(json.dumps(frame))
    for connection in connections:
        await connection.close()
    for reader in readers:
        reader.cancel()
    return total, worst


def wait_for_rows(expected: int, timeout: float) -> int:
    """Wait until `expected` notifications exist (or timeout); the count."""
    from django.db import close_old_connections

    from chat.models import Notification

    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        close_old_connections()
        count = Notification.objects.filter(kind="mention").count()
        if count >= expected:
            break
        time.sleep(0.5)
    return count


def measure() -> dict[str, Any]:
    """Freshness figures from the rows."""
    from chat.models import Message, Notification

    created = dict(
        Message.objects.filter(room__name=ROOM).values_list("message_id", "created_at")
    )
    published = dict(
        Message.objects.filter(room__name=ROOM, published_at__isnull=False).values_list(
            "message_id", "published_at"
        )
    )
    notified = list(
        Notification.objects.filter(room__name=ROOM).values_list(
            "message_id", "created_at"
        )
    )
    freshness = [(at - created[mid]).total_seconds() for mid, at in notified]
    to_kafka = [(at - created[m]).total_seconds() for m, at in published.items() if at]
    return {
        "messages": len(created),
        "published": len(published),
        "notifications": len(notified),
        "created_to_notified": summary_ms(freshness),
        "created_to_published": summary_ms(to_kafka),
    }


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 when every message was notified."""
    args = parse_args(argv)
    config = BenchConfig(
        clients=SENDERS + 1,
        rooms=1,
        database_url=args.database_url,
        partitions=args.partitions,
        ceilings=False,
        run_dir=args.run_dir,
    )
    run_dir = make_run_dir(config)
    print(f"bench.notifications: run directory {run_dir}", file=sys.stderr)
    stack = Stack(config, run_dir)
    started = datetime.now(UTC)
    try:
        stack.prepare()
        users = create_users(SENDERS)
        create_rooms([ROOM])
        from django.contrib.auth import get_user_model

        from chat.services.rooms import membership_join

        target = get_user_model().objects.create_user(username=TARGET)
        membership_join(user_id=target.pk, room_name=ROOM)  # never online
        from django.db import connections

        connections.close_all()  # nothing of ours holds the database during the run
        stack.start_app()
        agent = stack._spawn(
            "notifications",
            "agent",
            [sys.executable, "manage.py", "run_agent", "notifications"],
        )
        stack._wait(agent, lambda: "Partitions assigned: [" in agent.log_tail(100_000))
        print(
            f"stack up (web {stack.web[0]}, agent pid {agent.pid}); sending "
            f"{args.rate:g} msgs/s for {args.duration:g} s",
            file=sys.stderr,
        )
        sent, send_lag = asyncio.run(
            send_steadily(
                stack.web[0], [u.cookie for u in users], args.rate, args.duration
            )
        )
        notified = wait_for_rows(sent, args.drain_timeout)
        figures = measure()
        description = stack.describe()
    except StackError as exc:
        print(f"The stack did not start: {exc}", file=sys.stderr)
        return 2
    finally:
        stack.stop()
    report = {
        "benchmark": "notifications",
        "started_at": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(["python -m bench.notifications", *(argv or sys.argv[1:])]),
        "database": description["database"],
        "rate": args.rate,
        "duration": args.duration,
        "sent": sent,
        "worst_send_delay_ms": round(send_lag * 1000, 1),
        "notified": notified,
        "stack": description,
        "host": {"python": platform.python_version()},
        **figures,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str) + "\n"
    for name in (
        "notifications-latest.json",
        f"notifications-latest-{report['database']}.json",
    ):
        (args.output_dir / name).write_text(text)
    fresh = figures["created_to_notified"]
    print(
        f"{report['database']}: sent {sent} at {args.rate:g}/s, notified {notified}; "
        f"created → notified p50 {fresh['p50_ms']} ms, p99 {fresh['p99_ms']} ms, "
        f"max {fresh['max_ms']} ms (created → Kafka p50 "
        f"{figures['created_to_published']['p50_ms']} ms); written to "
        f"{args.output_dir / 'notifications-latest.json'}"
    )
    return 0 if notified >= sent else 1


if __name__ == "__main__":
    raise SystemExit(main())
