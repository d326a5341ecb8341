"""Helpers for tests that drive the real servers: waiting, Kafka reads, processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, multiprocess

from chatproj.embedded import stop_process_group

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@dataclass(frozen=True)
class ChatUser:
    """A test user and the session cookie of a logged-in browser."""

    name: str
    id: int
    cookie: str


def wait_for(
    condition: Callable[[], T],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or condition}"
            )
        time.sleep(interval)


def unique_topic() -> str:
    """A fresh topic name, so each test reads only its own events."""
    return f"chat-test-{uuid.uuid4().hex[:12]}"


def sample_event(**changes: Any) -> Any:
    """A chat event (ChatEvent) as the worker would build it."""
    from chat.schemas import ChatEvent

    data = dict(
        message_id=uuid.uuid4(), room="lobby", seq=7, sender_id=3, receiver_id=None,
        content="hi", created_at=datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
    )  # fmt: skip
    return ChatEvent(**{**data, **changes})


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """The group's committed offsets, 0 where none (a consumer of the group that
    never joins it)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, request_timeout_ms=5000,
        enable_auto_commit=False,
    )  # fmt: skip
    try:
        return {
            p: consumer.committed(TopicPartition(topic, p), timeout_ms=5000) or 0
            for p in consumer.partitions_for_topic(topic) or ()
        }
    finally:
        consumer.close(autocommit=False)


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expected: int = 0,
    timeout: float = 20.0,
    until: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """Records of a topic from the beginning, until `expected` arrived (or `until`
    holds) or timeout.

    Partitions are assigned by hand (no consumer group), so there is no join delay.
    """
    done = until or (lambda records: len(records) >= expected)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",  # as the stream's consumers read it
        consumer_timeout_ms=500,
        request_timeout_ms=5000,
    )
    try:
        deadline = time.monotonic() + timeout
        while not (partitions := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                return []  # the topic was never created: nothing was produced to it
            time.sleep(0.1)
        assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assignment)
        consumer.seek_to_beginning(*assignment)
        records: list[Any] = []
        while not done(records) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def event_of(record: Any) -> dict[str, Any]:
    """The decoded JSON value of a Kafka record."""
    return json.loads(record.value.decode("utf-8"))


class ManagedProcess:
    """A subprocess (worker, ASGI server) whose output goes to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start it in its own process group."""
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - open for the process lifetime
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=ROOT,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        """Pid of the main process."""
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
        """Stop the whole process group (SIGKILL after `timeout`)."""
        process, self.process = self.process, None
        if process is None:
            return
        stop_process_group(process, timeout, sig)
        self.log_file.close()


def web_server_args(port: int, app: str = "chatproj.asgi:application") -> list[str]:
    """Command line of the web server as the Procfile runs it (uvicorn and its flags),
    serving `app` on `port`."""
    from chat.management.commands.runstack import procfile_web_command

    args = procfile_web_command(ROOT / "Procfile", port)
    return [
        sys.executable, "-m",
        *(app if arg == "chatproj.asgi:application" else arg for arg in args),
    ]  # fmt: skip


def celery_worker_args(
    concurrency: int = 2, beat_schedule: Path | None = None
) -> list[str]:
    """Command line of a real prefork Celery worker with task events on (and beat)."""
    beat = ["-B", "-s", str(beat_schedule)] if beat_schedule else []
    return [
        sys.executable, "-m", "celery", "-A", "chatproj", "worker",
        "-P", "prefork", "-c", str(concurrency), "-E",
        "--without-mingle", "--without-gossip", "--loglevel", "INFO", *beat,
    ]  # fmt: skip


def room_ensure(name: str) -> None:
    """The public room `name` exists (created as its creator would, without members):
    the server opens only rooms someone created, and tests open rooms by name. A DM
    conversation's name is left alone (the server creates those for their users)."""
    from chat.models import DM_ROOM_PREFIX, Room

    if not name.startswith(DM_ROOM_PREFIX):
        Room.objects.get_or_create(name=name)


async def close_code(client: WSClient, timeout: float = 10.0) -> tuple[int, list]:
    """Wait (bounded) until the server closes the socket: its code, and the frames
    that came before."""
    import asyncio

    from websockets.exceptions import ConnectionClosed

    frames = list(client.unread)
    async with asyncio.timeout(timeout):
        while True:
            try:
                frames.append(await client.connection.recv())
            except ConnectionClosed as closed:
                assert closed.rcvd is not None, "closed without a close frame"
                return closed.rcvd.code, frames


class WSClient:
    """A real WebSocket client (websockets library) speaking the chat protocol."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.unread: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        server: str,
        room: str,
        cookie: str | None,
        path: str = "ws/chat",
        query: str = "",
        create_room: bool = True,
    ) -> WSClient:
        """Open /<path>/<room>/[?query] with the session cookie of a logged-in user;
        a chat room is created first (room_ensure) unless create_room is False."""
        from channels.db import database_sync_to_async
        from websockets.asyncio.client import connect

        if create_room and cookie and path.startswith("ws/"):  # not notifications
            await database_sync_to_async(room_ensure)(room)

        headers = {"Cookie": f"sessionid={cookie}"} if cookie else {}
        connection = await connect(
            f"ws://{server}/{path}/{room}/" + (f"?{query}" if query else ""),
            origin=f"http://{server}",  # type: ignore[arg-type]
            additional_headers=headers,
            open_timeout=10,
        )
        return cls(connection)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        """Send a JSON object, or a raw text/binary frame as given."""
        await self.connection.send(
            json.dumps(frame) if isinstance(frame, dict) else frame
        )

    async def expect(
        self, match: Callable[[dict[str, Any]], bool] | str, timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first frame (unread first) that matches; a str matches the frame type."""
        import asyncio

        def matches(frame: dict[str, Any]) -> bool:
            return (
                frame.get("type") == match if isinstance(match, str) else match(frame)
            )

        for frame in self.unread:
            if matches(frame):
                self.unread.remove(frame)
                return frame
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(
                    f"no frame matching {match!r}; unread: {self.unread}"
                )
            try:
                raw = await asyncio.wait_for(self.connection.recv(), remaining)
            except TimeoutError:
                continue
            frame = json.loads(raw)
            if matches(frame):
                return frame
            self.unread.append(frame)

    async def close(self) -> None:
        """Close the connection."""
        await self.connection.close()


# Small timeouts so joins, restarts and stops take seconds (the defaults suit
# production: a 10 s session, a 1 s poll).
AGENT_ENV = {
    "KAFKA_NOTIFICATIONS_POLL_TIMEOUT": "0.2",
    "KAFKA_NOTIFICATIONS_RETRY_MAX": "1",
    "KAFKA_CONSUMER_OPTIONS": json.dumps(
        {
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_interval_ms": 10000,
        }
    ),
}


# --- helpers -------------------------------------------------------------------------


def multiprocess_metric(metrics_dir: str | Path, name: str, **labels: str) -> float:
    """Sum of a sample over the Prometheus multiprocess files of `metrics_dir`."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


class Agent(ManagedProcess):
    """A `manage.py run_agent notifications` subprocess with its own metrics dir."""

    metrics_dir: Path

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a sample of this process's metrics (its multiprocess files)."""
        return multiprocess_metric(self.metrics_dir, name, **labels)

    def assigned(self) -> bool:
        return (
            "Partitions assigned: [" in self.log()
            and "assigned: []"
            not in (self.log().rsplit("Partitions assigned", 1)[-1][:4])
        )

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and the exit code."""
        assert self.process is not None
        process, self.process = self.process, None
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout)
        self.log_file.close()
        return code


def unique_group() -> str:
    return f"notif-test-{uuid.uuid4().hex[:10]}"


def queued_tasks(redis_url: str) -> list[str]:
    """Message ids of the publish tasks waiting in the real Redis queue."""
    import redis

    client = redis.Redis.from_url(redis_url)
    return [
        json.loads(raw)["headers"]["argsrepr"] for raw in client.lrange("celery", 0, -1)
    ]
