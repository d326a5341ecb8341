"""`manage.py run_agent <name>`: run a registered agent in this process until SIGTERM
or SIGINT; `--all` runs every registered agent, each in a child process (the
Procfile's and compose's `agents`); `--list` names them; `--check` tells whether one
(or, with `--all`, each) is consuming (heartbeat)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.agents.heartbeat import live_instances
from chat.agents.registry import AGENTS

logger = logging.getLogger("chat.agents.run")


class Command(BaseCommand):
    """`manage.py run_agent [--list] [NAME [--check [--local]]]`."""

    help = "Run a registered agent (see --list) until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        """Options."""
        parser.add_argument("name", nargs="?", help="the agent to run (see --list)")
        parser.add_argument(
            "--all",
            action="store_true",
            help="every registered agent, each in a child process; stops (and "
            "stops the others) when one of them ends",
        )
        parser.add_argument(
            "--list", action="store_true", help="list the agents and exit"
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="exit 0 if an instance of the agent is consuming (a fresh "
            "heartbeat), else 1",
        )
        parser.add_argument(
            "--local",
            action="store_true",
            help="with --check: only instances on this host (a container healthcheck)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """List, check or run."""
        if options["list"]:
            width = max(map(len, AGENTS))
            for agent in AGENTS.values():
                self.stdout.write(f"{agent.name:<{width}}  {agent.description}")
            return
        name = options["name"]
        names = ", ".join(sorted(AGENTS))
        if options["all"]:
            if name:
                raise CommandError("Name an agent or use --all, not both.")
            if options["check"]:
                for each in AGENTS:
                    self.check_agent(each, local=options["local"])
                return
            if options["local"]:
                raise CommandError("--local only goes with --check.")
            self.run_all()
            return
        if not name:
            raise CommandError(f"Name the agent to run ({names}), or use --list.")
        if name not in AGENTS:
            raise CommandError(f"Unknown agent {name!r}. Registered agents: {names}.")
        if options["check"]:
            self.check_agent(name, local=options["local"])
            return
        if options["local"]:
            raise CommandError("--local only goes with --check.")
        self.run_agent(name)

    def check_agent(self, name: str, *, local: bool) -> None:
        """Print the live instances; SystemExit(1) when there is none."""
        host = socket.gethostname() if local else None
        try:
            instances = live_instances(name, host=host)
        except Exception as exc:
            raise CommandError(
                f"Cannot read the heartbeats of {name!r} from Redis "
                f"({settings.REDIS_URL}): {exc}"
            ) from exc
        now = time.time()
        for instance in instances:
            age = now - float(instance.get("last_poll", now))
            self.stdout.write(
                f"{name}: pid {instance.get('pid')} on {instance.get('host')}, "
                f"{instance.get('state', '?')}, partitions "
                f"{instance.get('partitions')}, lag {json.dumps(instance.get('lag'))}, "
                f"last poll {age:.1f}s ago"
            )
        if not instances:
            where = f" on {host}" if host else ""
            self.stderr.write(f"{name}: no instance is consuming{where}.")
            raise SystemExit(1)

    def run_all(self) -> None:
        """One `run_agent <name>` child per registered agent; SIGTERM/SIGINT are
        passed on to them. When one ends on its own, the others are stopped and this
        exits with its code, for the supervisor (compose, honcho) to restart all."""
        env = {k: v for k, v in os.environ.items() if k != "AGENT_METRICS_PORT"}
        children = {
            name: subprocess.Popen(
                [sys.executable, "manage.py", "run_agent", name],
                cwd=settings.BASE_DIR,
                env=env,
            )
            for name in AGENTS
        }
        stopping = threading.Event()

        def pass_on(signum: int, _frame: Any) -> None:
            stopping.set()
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signum)

        signal.signal(signal.SIGTERM, pass_on)
        signal.signal(signal.SIGINT, pass_on)
        serve_metrics()  # the children's too: they share PROMETHEUS_MULTIPROC_DIR
        logger.info("Agents %s running in pids %s", ", ".join(children),
                    [c.pid for c in children.values()])  # fmt: skip
        code = 0
        while children:
            for name, child in list(children.items()):
                returned = child.poll()
                if returned is None:
                    continue
                del children[name]
                if not stopping.is_set():
                    logger.error("Agent %s ended (exit %s): stopping the others",
                                 name, returned)  # fmt: skip
                    code = returned or 1
                    pass_on(signal.SIGTERM, None)
            time.sleep(0.2)
        if code:
            raise SystemExit(code)

    def run_agent(self, name: str) -> None:
        """Build the agent, stop it cleanly on SIGTERM/SIGINT, serve its metrics."""
        agent_class = AGENTS[name].load()
        from chat.agents.stream import StreamAgent  # loads Kafka: only when running

        if issubclass(agent_class, StreamAgent) and not settings.KAFKA_ENABLED:
            raise CommandError(
                "KAFKA_ENABLED is False: there is no chat stream to consume."
            )
        agent = agent_class.get_instance()
        stop = threading.Event()

        def request_stop(signum: int, _frame: Any) -> None:
            logger.info(
                "%s received: %s finishes its batch and stops",
                signal.Signals(signum).name,
                name,
            )
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        serve_metrics()
        logger.info("Agent %s running in pid %d", name, os.getpid())
        try:
            agent.run(stop)
        finally:
            forget_process_metrics()
        logger.info("Agent %s stopped", name)


def serve_metrics() -> None:
    """With AGENT_METRICS_PORT, serve this host's metrics (multiprocess mode adds up
    the processes sharing PROMETHEUS_MULTIPROC_DIR) on that port."""
    port = settings.AGENT_METRICS_PORT
    if not port:
        return
    from prometheus_client import REGISTRY, start_http_server

    from chat.infra.metrics import multiprocess_registry

    start_http_server(port, registry=multiprocess_registry() or REGISTRY)
    logger.info("Agent metrics on :%s/metrics", port)


def forget_process_metrics() -> None:
    """Drop this process's live gauges (lag) from the multiprocess directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
