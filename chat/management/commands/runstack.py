"""Run the whole stack for development: `make run` calls this.

Migrates, starts an embedded Redis-compatible server and an embedded Kafka-compatible
broker when the configured ones do not answer, then hands over to supervisord, which
runs the Procfile's processes (web server, Celery worker, beat, the embedded servers)
and one `run_agent <name>` per agent of chat.agents.registry.AGENTS unless
KAFKA_ENABLED is off, restarts any that crashes (with a log line, and a growing delay
if it keeps crashing at start), and stops every child on Ctrl-C or SIGTERM. The demo
users are created by a one-shot child once Redis answers.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.agents.registry import AGENTS
from chat.infra.config import parse_bootstrap_servers
from chatproj.embedded import port_answers, redis_address

# A process that lives this long counts as started; one that dies sooner is retried
# after 1 s, 2 s, 3 s, ... (supervisord's backoff) and given up after START_RETRIES.
START_SECONDS = 5
START_RETRIES = 10
# Embedded servers start first and stop last.
SERVER_PRIORITY, APP_PRIORITY = 10, 100
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
# Runs once, when Redis answers: creating a user sends live events through it.
DEMO_USERS_COMMAND = "python manage.py create_demo_users --wait-for-redis 60"
ONE_SHOT = frozenset({"demo-users"})


def procfile_commands(path: Path) -> dict[str, str]:
    """`name: command` lines of a Procfile, in order."""
    lines = (
        PROCFILE_LINE.match(line.strip()) for line in path.read_text().splitlines()
    )
    return {match[1]: match[2] for match in lines if match}


def procfile_web_command(path: Path, port: int) -> list[str]:
    """The Procfile's web command (the server and its flags) listening on `port`."""
    line = procfile_commands(path)["web"]
    return shlex.split(line.replace("${CHATPROJ_WEB_PORT:-8000}", str(port)))


def agent_commands() -> dict[str, str]:
    """The command of each registered agent, by its name: `make run` supervises
    each on its own (the Procfile's `agents` runs them all in one)."""
    return {name: shlex.join(agent.command) for name, agent in AGENTS.items()}


def stack_processes(kafka_enabled: bool) -> list[str]:
    """The application processes `make run` starts: web, worker, beat and, when
    Kafka is on, every registered agent (each consumes the chat stream)."""
    return ["web", "worker", "beat", *(AGENTS if kafka_enabled else ())]


def stack_commands(procfile: Path) -> dict[str, str]:
    """Every process's command: the Procfile's, the registry's for agents, and the
    one-shot demo users."""
    return {
        **procfile_commands(procfile),
        **agent_commands(),
        "demo-users": DEMO_USERS_COMMAND,
    }


def supervisor_config(
    commands: dict[str, str], processes: list[str], run_dir: Path, tag: str
) -> str:
    """supervisord configuration that runs `processes` in the foreground and restarts
    each that exits (but the ONE_SHOT ones, run once); its log and every process's
    output go to this terminal."""
    base = Path(settings.BASE_DIR)
    sections = [
        "[supervisord]",
        "nodaemon = true",
        f"logfile = {run_dir / f'supervisord-{tag}.log'}",
        f"pidfile = {run_dir / f'supervisord-{tag}.pid'}",
        f"childlogdir = {run_dir}",
        "",
        "[unix_http_server]",  # `supervisorctl -c <this file> status|restart worker`
        f"file = {run_dir / f'supervisor-{tag}.sock'}",
        "chmod = 0700",
        "",
        "[supervisorctl]",
        f"serverurl = unix://{run_dir / f'supervisor-{tag}.sock'}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = "
        "supervisor.rpcinterface:make_main_rpcinterface",
    ]
    for name in processes:
        command = commands[name].replace("%", "%%")  # supervisord interpolates %(...)s
        server = name in ("redis", "kafka")
        once = name in ONE_SHOT
        sections += [
            "",
            f"[program:{name}]",
            f"command = /bin/sh -c {shlex.quote('exec ' + command)}",
            f"directory = {base}",
            f"priority = {SERVER_PRIORITY if server else APP_PRIORITY}",
            f"autorestart = {'false' if once else 'true'}",
            f"startsecs = {0 if once else START_SECONDS}",
            f"startretries = {START_RETRIES}",
            # A worker's prefork children are in its process group: stopped with it.
            "stopasgroup = true",
            "killasgroup = true",
            "stopwaitsecs = 15",
            "redirect_stderr = true",
            "stdout_logfile = /dev/stdout",
            "stdout_logfile_maxbytes = 0",
        ]
    return "\n".join(sections) + "\n"


def append_only_output() -> None:
    """Put stdout and stderr in append mode when they are files (`make run > log`):
    supervisord reopens /dev/stdout for each process, and without O_APPEND each of
    those writes at its own offset, over the others' lines."""
    for fd in (1, 2):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)


class Command(BaseCommand):
    """`manage.py runstack [--port 8000]`."""

    help = "Migrate, start missing servers, run web + worker, create demo users."

    def add_arguments(self, parser: CommandParser) -> None:
        """Options."""
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("PORT", 8000))
        )

    def handle(self, *args: Any, port: int, **options: Any) -> None:
        """Prepare, then exec supervisord with the processes that are needed."""
        call_command("migrate", interactive=False, verbosity=0)
        processes = [*stack_processes(settings.KAFKA_ENABLED), "demo-users"]
        run_dir = Path(settings.BASE_DIR) / ".run"
        run_dir.mkdir(exist_ok=True)
        env = dict(os.environ, CHATPROJ_WEB_PORT=str(port), PYTHONUNBUFFERED="1")
        if not env.get("PROMETHEUS_MULTIPROC_DIR"):
            # Web and worker children share one metrics directory, fresh each run.
            metrics_dir = run_dir / "prometheus"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

        embedded = [
            ("redis", "REDIS_URL", settings.REDIS_URL, redis_address, "valkey-server"),
            (
                "kafka",
                "KAFKA_BOOTSTRAP_SERVERS",
                settings.KAFKA_BOOTSTRAP_SERVERS,
                lambda servers: parse_bootstrap_servers(servers)[0],
                "Tansu broker",
            ),
        ]
        for process, setting, value, address, server in embedded:
            if process == "kafka" and not settings.KAFKA_ENABLED:
                self.stdout.write("kafka: disabled (KAFKA_ENABLED=False)")
                continue
            host, server_port = address(value)
            if port_answers(host, server_port):
                self.stdout.write(f"{process}: using {value}")
            elif host in ("127.0.0.1", "localhost"):
                processes.insert(0, process)
                env[f"CHATPROJ_{process.upper()}_PORT"] = str(server_port)
                if process == "kafka":
                    # Tansu never ends a transaction a killed worker left open.
                    env.setdefault("KAFKA_TRANSACTIONS", "False")
                self.stdout.write(
                    f"{process}: starting embedded {server} on port {server_port}"
                )
            else:
                raise CommandError(f"{setting} {value} does not answer.")

        supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent))
        if supervisord is None:
            raise CommandError(
                "supervisor is not installed: pip install -r requirements-dev.txt"
            )
        commands = stack_commands(Path(settings.BASE_DIR) / "Procfile")
        config = run_dir / f"supervisord-{port}.conf"  # one per port: runs can coexist
        config.write_text(supervisor_config(commands, processes, run_dir, str(port)))
        self.stdout.write(
            f"\nchatproj on http://127.0.0.1:{port}/  (log in at "
            f"http://127.0.0.1:{port}/accounts/login/, room: "
            f"http://127.0.0.1:{port}/chat/lobby/; metrics: "
            f"http://127.0.0.1:{port}/metrics, readiness: /readyz)\n"
            f"Kafka topic {settings.KAFKA_CHAT_TOPIC} on "
            f"{settings.KAFKA_BOOTSTRAP_SERVERS}.\n"
            f'A process that crashes is restarted ("exited: ... not expected", then '
            f'"spawned:"); .venv/bin/supervisorctl -c {config} status shows them. '
            f"Ctrl-C stops everything.\n"
        )
        sys.stdout.flush()
        append_only_output()
        # The venv's bin first: the Procfile's uvicorn, celery and python are its own.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        os.execve(supervisord, [supervisord, "-c", str(config)], env)
