"""Run the whole stack for development: `make run` calls this.

Migrates, creates the demo users, starts an embedded Redis-compatible server and an
embedded Kafka-compatible broker when the configured ones do not answer, then hands
over to honcho (Procfile), which runs the web server, the Celery worker, beat (the
outbox sweep) and the notification agent (unless KAFKA_ENABLED is off) and stops every
child on Ctrl-C.
"""

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.agents.kafka_chat import parse_bootstrap_servers
from chatproj.embedded import port_answers, redis_address


class Command(BaseCommand):
    """`manage.py runstack [--port 8000]`."""

    help = "Migrate, create demo users, start missing servers, run web + worker."

    def add_arguments(self, parser: CommandParser) -> None:
        """Options."""
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("PORT", 8000))
        )

    def handle(self, *args: Any, port: int, **options: Any) -> None:
        """Prepare, then exec honcho with the processes that are needed."""
        call_command("migrate", interactive=False, verbosity=0)
        call_command("create_demo_users")
        processes = ["web", "worker", "beat"]
        if settings.KAFKA_ENABLED:
            processes.append("notifications")  # the consumer of the chat stream
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
                self.stdout.write(
                    f"{process}: starting embedded {server} on port {server_port}"
                )
            else:
                raise CommandError(f"{setting} {value} does not answer.")

        self.stdout.write(
            f"\nchatproj on http://127.0.0.1:{port}/  (log in at "
            f"http://127.0.0.1:{port}/accounts/login/, room: "
            f"http://127.0.0.1:{port}/chat/lobby/; metrics: "
            f"http://127.0.0.1:{port}/metrics, readiness: /readyz)\n"
            f"Kafka topic {settings.KAFKA_CHAT_TOPIC} on "
            f"{settings.KAFKA_BOOTSTRAP_SERVERS}. Ctrl-C stops everything.\n"
        )
        sys.stdout.flush()
        honcho = shutil.which("honcho", path=str(Path(sys.executable).parent))
        if honcho is None:
            raise CommandError(
                "honcho is not installed: pip install -r requirements-dev.txt"
            )
        procfile = str(Path(settings.BASE_DIR) / "Procfile")
        # The venv's bin first, so the Procfile's daphne, celery and python are its own.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        os.execve(honcho, [honcho, "-f", procfile, "start", *processes], env)
