"""Process-wide clients, and the one mechanism that holds them.

`ProcessSingleton.get_instance()` returns one object per class per OS process. A
forked child never sees its parent's objects (a socket, a thread or a Kafka client
cannot cross a fork): the registry is emptied after fork, and the child builds its
own on first use. `close_all()` closes every one this process built (a worker
child's shutdown). The Kafka producer and the stream agents are ProcessSingletons
too; they live in the layers that may import Kafka (publishing, agents).

Here: `redis_client()` (presence, tickets, connection limits, the publish queue)
and `layer_loop()` (the channel-layer connection of sync code).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Coroutine
from functools import partial
from typing import Any, ClassVar, Self

import redis
from django.conf import settings

logger = logging.getLogger(__name__)


class ProcessSingleton:
    """Base of an object built once per process, on first use, and rebuilt after
    close() or in a forked child."""

    _instances: ClassVar[dict[type[ProcessSingleton], ProcessSingleton]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.closed = False

    @classmethod
    def get_instance(cls, **overrides: Any) -> Self:
        """The process-wide instance, built on first call (with these overrides)."""
        instance = cls._instances.get(cls)
        if not _live(instance):
            with cls._registry_lock:
                instance = cls._instances.get(cls)
                if not _live(instance):
                    instance = cls(**overrides)
                    cls._instances[cls] = instance
                    logger.info(
                        "%s instance created in pid %d", cls.__name__, instance.pid
                    )
        return instance  # type: ignore[return-value]

    @classmethod
    def current_instance(cls) -> Self | None:
        """The instance of this process if one was built, without building one."""
        instance = cls._instances.get(cls)
        if not _live(instance):
            return None
        return instance  # type: ignore[return-value]

    @classmethod
    def shutdown_instance(cls) -> None:
        """Flush and close this process's instance, if any."""
        instance = cls.current_instance()
        if instance is not None:
            instance.flush()
            instance.close()

    def flush(self) -> None:
        """Deliver what is buffered; subclasses bound the wait. Idempotent."""

    def close(self) -> None:
        """Release resources; idempotent. The next get_instance() builds anew."""
        self.closed = True
        with self._registry_lock:
            if self._instances.get(type(self)) is self:
                del self._instances[type(self)]


def _live(instance: ProcessSingleton | None) -> bool:
    """Built by this process and not closed since."""
    return instance is not None and not instance.closed and instance.pid == os.getpid()


def close_all() -> None:
    """Flush and close every ProcessSingleton this process built (each bounds its
    own wait; one that fails is logged and the others are still closed)."""
    for cls in list(ProcessSingleton._instances):
        try:
            cls.shutdown_instance()
        except Exception:
            logger.exception("Closing %s failed in pid %d", cls.__name__, os.getpid())


def _forget_instances_after_fork() -> None:
    # The child inherits the parent's objects but not its threads or sockets' owners:
    # drop them without closing (closing would touch the parent's connections).
    ProcessSingleton._instances.clear()
    ProcessSingleton._registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_instances_after_fork)


class RedisClients(ProcessSingleton):
    """This process's connection pools, one per Redis URL (redis-py bounds every
    call by 5 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.pools: dict[str, redis.Redis] = {}
        self.lock = threading.Lock()

    def for_url(self, url: str) -> redis.Redis:
        """The pool to `url`, built on first use."""
        client = self.pools.get(url)
        if client is None:
            with self.lock:
                client = self.pools.get(url)
                if client is None:
                    client = redis.Redis.from_url(
                        url, socket_timeout=5, socket_connect_timeout=5
                    )
                    self.pools[url] = client
        return client

    def close(self) -> None:
        """Close every pool's connections."""
        for client in self.pools.values():
            client.close()
        super().close()


def redis_client() -> redis.Redis:
    """This process's connection pool to REDIS_URL."""
    return RedisClients.get_instance().for_url(settings.REDIS_URL)


# Sends to the channel layer started and not finished; a caller waits for a slot at
# most STATUS_SEND_TIMEOUT seconds, and each send is bounded by it too.
SENDS_IN_FLIGHT = 4
STATUS_SEND_TIMEOUT = 5.0


class LayerLoop(ProcessSingleton):
    """An event loop in a daemon thread, so sync code (a Celery worker) keeps one
    channel-layer connection for the process instead of a new loop and connection
    per call (what async_to_sync does outside an ASGI server)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.slots = threading.BoundedSemaphore(SENDS_IN_FLIGHT)
        threading.Thread(
            target=self.loop.run_forever, name="channel-layer", daemon=True
        ).start()

    def start(self, coroutine: Coroutine[Any, Any, None], what: str) -> None:
        """Run a coroutine on the loop without waiting for it (its failure is
        logged); with SENDS_IN_FLIGHT already running, first wait for one to end."""
        if not self.slots.acquire(timeout=STATUS_SEND_TIMEOUT):
            coroutine.close()
            logger.warning("%s not sent: the channel layer is not keeping up", what)
            return
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(coroutine, STATUS_SEND_TIMEOUT), self.loop
        )
        future.add_done_callback(partial(self._ended, what=what))

    def run(
        self, coroutine: Coroutine[Any, Any, None], what: str, timeout: float
    ) -> None:
        """Run a coroutine on the loop and wait for it, at most `timeout` seconds (its
        failure is logged): for a send that must leave before a short process exits."""
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(coroutine, timeout), self.loop
        )
        try:
            future.result(timeout + 1)
        except Exception as exc:
            future.cancel()
            logger.warning("%s not sent: %r", what, exc)

    def _ended(self, future: concurrent.futures.Future[None], *, what: str) -> None:
        self.slots.release()
        if not future.cancelled() and future.exception() is not None:
            logger.warning("%s not sent: %s", what, future.exception())

    def close(self) -> None:
        """Kept for the process: its thread is a daemon, and sends in flight finish
        or time out on their own. Not dropped from the registry."""


def layer_loop() -> LayerLoop:
    """This process's channel-layer loop."""
    return LayerLoop.get_instance()
