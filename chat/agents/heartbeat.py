"""Liveness of running agents: a Redis key per process, refreshed after every poll.

A running agent writes `chat:agent:<name>:<host>:<pid>` (JSON: pid, host, state,
assigned partitions, lag, last poll time) with a TTL of a few poll intervals, so a
process that died, hung or stopped polling disappears on its own; a clean stop deletes
its key. `manage.py run_agent <name> --check` reads them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from chat.infra.clients import redis_client

logger = logging.getLogger(__name__)

KEY_PREFIX = "chat:agent"


def _key(agent: str, host: str, pid: int) -> str:
    return f"{KEY_PREFIX}:{agent}:{host}:{pid}"


class Heartbeat:
    """One process's heartbeat for one agent."""

    def __init__(self, agent: str, ttl: float) -> None:
        self.agent = agent
        self.ttl = ttl
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.key = _key(agent, self.host, self.pid)
        self._failing = False

    def beat(self, **state: Any) -> None:
        """Write this process's state with the TTL; a Redis outage is logged once."""
        value = {
            "agent": self.agent,
            "pid": self.pid,
            "host": self.host,
            "last_poll": time.time(),
            **state,
        }
        try:
            redis_client().set(
                self.key, json.dumps(value), px=max(1, int(self.ttl * 1000))
            )
        except Exception as exc:  # liveness reporting must never stop the agent
            if not self._failing:
                logger.warning("Heartbeat %s not written: %s", self.key, exc)
            self._failing = True
        else:
            if self._failing:
                logger.info("Heartbeat %s written again", self.key)
            self._failing = False

    def clear(self) -> None:
        """This process stops: remove its key now rather than at expiry."""
        try:
            redis_client().delete(self.key)
        except Exception as exc:
            logger.warning("Heartbeat %s not removed: %s", self.key, exc)


def live_instances(agent: str, host: str | None = None) -> list[dict[str, Any]]:
    """Fresh heartbeats of an agent (of one host when given), oldest pid first.

    Raises redis errors: the caller says Redis cannot be asked.
    """
    client = redis_client()
    pattern = _key(agent, host or "*", 0).rsplit(":", 1)[0] + ":*"
    keys = sorted(client.scan_iter(match=pattern, count=1000))
    values: list[bytes | None] = client.mget(keys) if keys else []  # type: ignore[assignment]
    instances = []
    for raw in values:
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            instances.append(json.loads(raw))
        except ValueError:
            continue
    return sorted(instances, key=lambda i: (i.get("host", ""), i.get("pid", 0)))
