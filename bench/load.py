"""The load: authenticated WebSocket clients (open or closed loop), and the sampler."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .ledger import FINAL, Ledger
from .stack import BenchUser

logger = logging.getLogger(__name__)

FILLER = "the quick brown fox jumps over the lazy dog; " * 100


def message_text(client_id: str, size: int) -> str:
    """About `size` characters, starting with the client_id (any copy is traceable)."""
    head = f"{client_id} "
    return head + FILLER[: max(size - len(head), 1)]


class BenchClient:
    """One user's connection to one room, reading every frame into the ledger."""

    def __init__(
        self,
        index: int,
        user: BenchUser,
        room: str,
        server: str,
        ledger: Ledger,
        cookie_name: str = "sessionid",
    ) -> None:
        self.index, self.user, self.room, self.server = index, user, room, server
        self.ledger, self.cookie_name = ledger, cookie_name
        self.connection: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.count = 0
        self.closed_unexpectedly: str | None = None
        # closed loop: the message being waited for
        self._waiting_cid: str | None = None
        self._waiting_mid: str | None = None
        self._answered = asyncio.Event()

    async def connect(self) -> None:
        """Open /ws/chat/<room>/ as this user and read its history frame."""
        from websockets.asyncio.client import connect

        self.connection = await connect(
            f"ws://{self.server}/ws/chat/{self.room}/",
            origin=f"http://{self.server}",  # type: ignore[arg-type]
            additional_headers={"Cookie": f"{self.cookie_name}={self.user.cookie}"},
            open_timeout=30,
            compression=None,  # keeps the client's CPU low; the server does the same
            # No keepalive pings from the client, as from a browser: a ping waits
            # behind the client's own frames that the server has not read yet, so
            # past saturation websockets' 20 s timeout closed sockets (1011) that
            # the server was only slow on. The server pings (uvicorn, 60 s timeout).
            ping_interval=None,
            max_size=None,
        )
        first = json.loads(await asyncio.wait_for(self.connection.recv(), 30))
        if first.get("type") != "history":
            raise RuntimeError(f"client {self.index}: expected history, got {first}")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.connection:
                frame = json.loads(raw)
                message_id = self.ledger.on_frame(self.index, self.user.id, frame)
                if self._waiting_cid is not None:
                    self._closed_loop_progress(frame, message_id)
        except ConnectionClosed as exc:
            self.closed_unexpectedly = f"{exc.rcvd.code if exc.rcvd else '?'}"

    def _closed_loop_progress(
        self, frame: dict[str, Any], message_id: str | None
    ) -> None:
        kind = frame.get("type")
        if kind == "error" and frame.get("client_id") == self._waiting_cid:
            self._answered.set()
        elif kind == "message.ack" and frame.get("client_id") == self._waiting_cid:
            self._waiting_mid = message_id
            status = self.ledger.status_first.get(message_id or "")
            if status and status[1] in FINAL:
                self._answered.set()
        elif (
            kind == "message.status"
            and message_id == self._waiting_mid
            and frame.get("status") in FINAL
        ):
            self._answered.set()

    async def send(self, step: int, size: int) -> str:
        """Send one chat message; returns its client_id."""
        self.count += 1
        client_id = f"{self.index}-{self.count}"
        if self.closed_unexpectedly:  # the server closed it: reported, not retried
            return client_id
        text = json.dumps(
            {"message": message_text(client_id, size), "client_id": client_id}
        )
        from websockets.exceptions import ConnectionClosed

        self.ledger.on_send(client_id, self.index, self.room, step)
        try:
            await self.connection.send(text)
        except ConnectionClosed as exc:  # counted unanswered; the run goes on
            self.closed_unexpectedly = f"{exc.rcvd.code if exc.rcvd else '?'}"
        return client_id

    async def send_and_wait(self, step: int, size: int, timeout: float = 30.0) -> None:
        """Closed loop: send, then wait for the message's final status (or an error)."""
        self._answered.clear()
        self._waiting_mid = None
        self._waiting_cid = f"{self.index}-{self.count + 1}"
        await self.send(step, size)
        try:
            await asyncio.wait_for(self._answered.wait(), timeout)
        except TimeoutError:
            logger.warning("client %d: no status within %gs", self.index, timeout)
        finally:
            self._waiting_cid = None

    async def close(self) -> None:
        """Close the connection and stop reading."""
        if self.connection is not None:
            await self.connection.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


async def open_loop(
    clients: list[BenchClient],
    *,
    rate: float,
    duration: float,
    step: int,
    size: int,
    poisson: bool = False,
    seed: int = 1,
) -> None:
    """Offer `rate` messages/s for `duration` s, spread evenly over the clients.

    Open loop: a client sends on schedule whatever the server answered, so a slow
    server shows up as latency and backlog, not as a lower offered rate.
    """
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.02
    end = start + duration
    per_client = rate / len(clients)
    rng = random.Random(seed + step)

    async def run(client: BenchClient, offset: float) -> None:
        due = start + offset
        while due < end:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await client.send(step, size)
            due += rng.expovariate(per_client) if poisson else 1 / per_client

    await asyncio.gather(*(run(c, i / rate) for i, c in enumerate(clients)))


async def closed_loop(
    clients: list[BenchClient], *, duration: float, step: int, size: int
) -> None:
    """Each client sends its next message once the previous one is final."""
    end = time.monotonic() + duration

    async def run(client: BenchClient) -> None:
        while time.monotonic() < end:
            await client.send_and_wait(step, size)

    await asyncio.gather(*(run(c) for c in clients))


@dataclass
class Sample:
    """The counters at one moment (for the backlog and throughput series)."""

    t: float
    sent: int
    acked: int
    published: int
    kafka: int
    queue: int

    @property
    def backlog(self) -> int:
        """Acked but no `published` status seen yet by the sender."""
        return self.acked - self.published


class Sampler:
    """Samples the ledger's counters and the Celery queue length every `interval` s."""

    def __init__(self, ledger: Ledger, redis_url: str, queue: str = "celery") -> None:
        self.ledger, self.redis_url, self.queue = ledger, redis_url, queue
        self.samples: list[Sample] = []
        self.listeners: list[Callable[[Sample], None]] = []

    async def run(self, interval: float = 0.5) -> None:
        """Sample until cancelled."""
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.redis_url)
        try:
            while True:
                queue = int(await client.llen(self.queue))  # type: ignore[misc]
                ledger = self.ledger
                sample = Sample(
                    time.monotonic(),
                    ledger.n_sent,
                    ledger.n_acked,
                    ledger.n_published,
                    ledger.n_kafka,
                    queue,
                )
                self.samples.append(sample)
                for listener in self.listeners:
                    listener(sample)
                await asyncio.sleep(interval)
        finally:
            await client.aclose()

    @property
    def last(self) -> Sample | None:
        """The latest sample."""
        return self.samples[-1] if self.samples else None
