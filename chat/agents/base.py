"""Lifecycle shared by every agent: one instance per process, fork-safe shutdown."""

from __future__ import annotations

from chat.infra.clients import ProcessSingleton


class Agent(ProcessSingleton):
    """Base class of the per-process agents (the Kafka chat agent, the stream
    agents): one instance per process from `get_instance()`, never shared with a
    forked child, closed by `chat.infra.clients.close_all()` at a worker's
    shutdown."""
