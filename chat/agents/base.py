"""Lifecycle shared by every agent: one instance per process, fork-safe shutdown."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, ClassVar, Self

logger = logging.getLogger(__name__)


class Agent:
    """Base class of the per-process agents (Kafka producer, notification consumer).

    `get_instance()` returns the same object for the whole process. A forked child
    never sees its parent's instance: the registry is emptied after fork, so the
    child builds its own on first use (a Kafka client cannot cross a fork).
    """

    _instances: ClassVar[dict[type[Agent], Agent]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.closed = False

    @classmethod
    def get_instance(cls, **overrides: Any) -> Self:
        """The process-wide instance, built on first call (with these overrides)."""
        instance = cls._instances.get(cls)
        if instance is None or instance.closed or instance.pid != os.getpid():
            with cls._registry_lock:
                instance = cls._instances.get(cls)
                if instance is None or instance.closed or instance.pid != os.getpid():
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
        if instance is None or instance.closed or instance.pid != os.getpid():
            return None
        return instance  # type: ignore[return-value]

    @classmethod
    def shutdown_instance(cls) -> None:
        """Flush and close this process's instance, if any (worker process shutdown)."""
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


def _forget_instances_after_fork() -> None:
    # The child inherits the parent's objects but not its threads or sockets' owners:
    # drop them without closing (closing would touch the parent's connections).
    Agent._instances.clear()
    Agent._registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_instances_after_fork)
