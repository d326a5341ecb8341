"""Agents that run as their own process: `manage.py run_agent <name>`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class RunnableAgent:
    """A registered agent: its class by dotted path (imported when run) and what it
    does, in one line for `run_agent --list`."""

    name: str
    path: str
    description: str

    def load(self) -> Any:
        """The agent class (an Agent with `run(stop_event)` and a `heartbeat`)."""
        module, _, attribute = self.path.rpartition(".")
        return getattr(import_module(module), attribute)


AGENTS: dict[str, RunnableAgent] = {
    agent.name: agent
    for agent in [
        RunnableAgent(
            "notifications",
            "chat.agents.notifications.NotificationAgent",
            "consumes KAFKA_CHAT_TOPIC in group KAFKA_NOTIFICATIONS_GROUP: DM and "
            "@mention notifications, pushed live",
        ),
    ]
}
