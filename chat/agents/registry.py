"""Agents that run as their own process: `manage.py run_agent <name>`.

AGENTS is the one list of them. `make run` (runstack) starts one `run_agent <name>`
per entry; the Procfile's and docker-compose.yml's `agents` run `run_agent --all`,
which starts one child per entry. A new agent is its class (a
chat.agents.stream.StreamAgent whose `name` is the entry's name) plus one entry here.
Nothing is imported until an agent is run: this module loads no Kafka client.
"""

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

    @property
    def command(self) -> list[str]:
        """The command line that runs it (Procfile, compose, runstack)."""
        return ["python", "manage.py", "run_agent", self.name]

    @property
    def check_command(self) -> list[str]:
        """The command line that exits 0 while an instance on this host consumes (a
        container healthcheck)."""
        return [*self.command, "--check", "--local"]


# What the Procfile and compose run: every registered agent, and its healthcheck.
ALL_AGENTS_COMMAND = ["python", "manage.py", "run_agent", "--all"]
ALL_AGENTS_CHECK = [*ALL_AGENTS_COMMAND, "--check", "--local"]

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
