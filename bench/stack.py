"""The servers under test, each its own process (so its CPU is measured on its own).

Started the way `make run` starts them (Procfile flags), on free ports, with a fresh
database and topic; or, with --use-running, a stack that is already up.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from chatproj.embedded import (
    EmbeddedServer,
    embedded_kafka,
    embedded_redis,
    free_port,
    port_answers,
    stop_process_group,
)
from chatproj.kafka_cluster import KAFKA_VERSION, KafkaCluster

from .config import ROOT, BenchConfig


def procfile_web_args(port: int) -> list[str]:
    """The Procfile's web command (uvicorn and its flags) on `port`."""
    from chat.management.commands.runstack import procfile_web_command

    args = procfile_web_command(ROOT / "Procfile", port)
    assert args[0] == "uvicorn", f"the Procfile's web server is {args[0]}"
    return [sys.executable, "-m", *args]


logger = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A server did not start; the message says which and where its log is."""


@dataclass
class Service:
    """One server process of the stack and its log."""

    name: str
    role: str
    process: subprocess.Popen[bytes] | None
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int | None:
        """Pid of the main process (None for a service this run did not start)."""
        return self.process.pid if self.process else None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass(frozen=True)
class BenchUser:
    """A user of the benchmark and the session cookie of its logged-in browser."""

    id: int
    name: str
    cookie: str


def autovacuum_off() -> bool:
    """Postgres with autovacuum off (this machine's server is set so; Postgres's
    default, and compose's, is on). Nothing else clears the dead rows publishing
    leaves (a message's status is indexed), so the indexes grew all run long."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return False
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW autovacuum")
            return bool(cursor.fetchone()[0] == "off")
    finally:
        connection.close()


def vacuum_database() -> None:
    """VACUUM (ANALYZE) the database of DATABASE_URL."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM (ANALYZE)")
    finally:
        connection.close()


@dataclass
class Stack:
    """Start, describe and stop the servers of one run."""

    config: BenchConfig
    run_dir: Path
    services: list[Service] = field(default_factory=list)
    embedded: list[EmbeddedServer] = field(default_factory=list)
    kafka_cluster: KafkaCluster | None = None
    redis_url: str = ""
    kafka: str = ""
    topic: str = ""
    database_url: str = ""
    web: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    # --- start -------------------------------------------------------------------

    def prepare(self) -> None:
        """Servers, database, settings of this process (Django set up), topic."""
        config = self.config
        fresh_topic = f"bench-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
        default_topic = "chat_messages" if config.use_running else fresh_topic
        self.topic = config.topic or default_topic
        if config.use_running:
            self.redis_url, self.kafka = str(config.redis_url), str(config.kafka)
            self.database_url, self.web = config.database_url, list(config.web)
        else:
            redis_port, kafka_port = free_port(), free_port()
            self.embedded = [embedded_redis(redis_port)]
            if not config.kafka_cluster:
                self.embedded.append(embedded_kafka(kafka_port))
            for server in self.embedded:
                server.log_path = self.run_dir / f"{server.name}.log"
                server.start()
            self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
            self.kafka = f"127.0.0.1:{kafka_port}"
            if config.kafka_cluster:
                self.kafka_cluster = KafkaCluster(
                    config.kafka_cluster, base_dir=self.run_dir / "kafka"
                ).start()
                self.kafka = self.kafka_cluster.bootstrap
            self.database_url = fresh_database(config.database_url, self.run_dir)
        metrics_dir = self.run_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "chatproj.settings",
            "DEBUG": os.environ.get("DEBUG", "True"),  # what `make run` uses
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "CELERY_BROKER_URL": self.redis_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "KAFKA_CHAT_TOPIC": self.topic,
            # Off on the embedded Tansu, as under `make run` (docs/operations.md).
            "KAFKA_TRANSACTIONS": os.environ.get(
                "KAFKA_TRANSACTIONS",
                "True" if config.kafka_cluster or config.use_running else "False",
            ),
            **self.topic_settings(),
            "CHAT_RATE_LIMIT": "",  # the benchmark measures the pipeline, not the limit
            "CHAT_FRAME_RATE": "",
            "CHAT_MAX_CONNECTIONS_PER_USER": "0",
            # The load's clients send no heartbeat, and one may wait longer than the
            # idle timeout between two messages at a low rate or during a drain.
            "CHAT_IDLE_TIMEOUT": "0",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "PYTHONUNBUFFERED": "1",
        }
        os.environ.update(self.env)
        import django

        django.setup()
        if not config.use_running:
            from django.core.management import call_command

            call_command("migrate", interactive=False, verbosity=0)
            call_command("kafka_topics", stdout=io.StringIO())

    def topic_settings(self) -> dict[str, str]:
        """KAFKA_TOPIC_* of the run: the chat topic is created as `kafka_topics` does
        (replication factor min(N, 3) and min ISR 2 on a real cluster of N >= 3)."""
        nodes = self.config.kafka_cluster
        return {
            "KAFKA_TOPIC_PARTITIONS": str(self.config.partitions),
            "KAFKA_TOPIC_REPLICATION_FACTOR": str(min(nodes, 3) if nodes else 1),
            "KAFKA_TOPIC_MIN_INSYNC_REPLICAS": "2" if nodes >= 3 else "0",
        }

    def start_app(self) -> None:
        """Web process(es), Celery worker(s) and beat, as the Procfile runs them."""
        if self.config.use_running:
            return
        config = self.config
        python = sys.executable
        for i in range(config.web_processes):
            port = free_port()
            if config.server == "uvicorn":
                args = procfile_web_args(port)
            else:
                args = [
                    python,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "chatproj.asgi:application",
                ]
            self._spawn(f"web{i + 1}", "web", args, port=port)
            self.web.append(f"127.0.0.1:{port}")
        for i in range(config.workers):
            self._spawn(
                f"worker{i + 1}",
                "worker",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "chatproj",
                    "worker",
                    "-P",
                    "prefork",
                    "-c",
                    str(config.concurrency),
                    *(["-E"] if config.task_events else []),
                    "--loglevel",
                    "INFO",
                    "-n",
                    f"bench{i + 1}@%h",
                    "-I",
                    "bench.tasks",
                ],
            )
        if config.beat:
            self._spawn(
                "beat",
                "beat",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "chatproj",
                    "beat",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                    str(self.run_dir / "celerybeat-schedule"),
                ],
            )
        for service in self.services:
            if service.role == "web":
                self._wait(
                    service, partial(port_answers, "127.0.0.1", service.port or 0)
                )
            elif service.role == "worker":
                self._wait(service, partial(_worker_ready, service))

    def _spawn(
        self, name: str, role: str, args: list[str], port: int | None = None
    ) -> Service:
        log_path = self.run_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                args,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, role, process, log_path, port)
        self.services.append(service)
        return service

    def _wait(
        self, service: Service, ready: Callable[[], bool], timeout: float = 90.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if service.process and service.process.poll() is not None:
                raise StackError(
                    f"{service.name} exited with {service.process.returncode}; "
                    f"log {service.log_path}:\n{service.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{service.name} not ready after {timeout:g}s; "
                    f"log {service.log_path}:\n{service.log_tail()}"
                )
            time.sleep(0.1)

    # --- describe ------------------------------------------------------------------

    def process_roles(self) -> dict[str, list[int]]:
        """Main pids by role (children are found when CPU is sampled)."""
        roles: dict[str, list[int]] = {}
        for server in self.embedded:
            if server.process:
                roles.setdefault(server.name, []).append(server.process.pid)
        if self.kafka_cluster is not None:
            for node in self.kafka_cluster.nodes:
                if node.pid:
                    roles.setdefault("kafka", []).append(node.pid)
        for service in self.services:
            if service.pid:
                roles.setdefault(service.role, []).append(service.pid)
        return roles

    @cached_property
    def vacuums(self) -> bool:
        """Whether the benchmark vacuums its database after each step (see
        autovacuum_off)."""
        return autovacuum_off()

    def describe(self) -> dict[str, Any]:
        """What ran, for the report."""
        from django.db import connection

        return {
            "database": connection.vendor,
            "database_url": _redact(self.database_url),
            "server": self.config.server,
            "web_processes": len(self.web),
            "web": self.web,
            "workers": self.config.workers,
            "concurrency": self.config.concurrency,
            "worker_flags": f"-P prefork -c {self.config.concurrency}"
            + (" -E" if self.config.task_events else ""),
            "beat": self.config.beat,
            "redis": "embedded valkey" if self.embedded else self.redis_url,
            "kafka": self.kafka_description(),
            "topic": self.topic,
            "partitions": None if self.config.use_running else self.config.partitions,
            "use_running": self.config.use_running,
            "debug": self.env.get("DEBUG"),
            "vacuum_after_steps": self.vacuums,
        }

    def kafka_description(self) -> str:
        """Which broker the run used."""
        if self.config.use_running:
            return self.kafka
        nodes = self.config.kafka_cluster
        if not nodes:
            return "embedded Tansu"
        settings = self.topic_settings()
        return (
            f"Apache Kafka {KAFKA_VERSION} ×{nodes} (replication factor "
            f"{settings['KAFKA_TOPIC_REPLICATION_FACTOR']}, min.insync.replicas "
            f"{settings['KAFKA_TOPIC_MIN_INSYNC_REPLICAS'] or 1}, acks=all)"
        )

    # --- stop ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop what this run started (process groups; SIGKILL after a grace period)."""
        for service in reversed(self.services):
            process, service.process = service.process, None
            if process is not None:
                stop_process_group(process)
        for server in reversed(self.embedded):
            server.stop()
        if self.kafka_cluster is not None:
            self.kafka_cluster.close()


def _worker_ready(service: Service) -> bool:
    return " ready." in service.log_tail(100_000)


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def fresh_database(url: str, run_dir: Path) -> str:
    """A new empty database: a file in the run directory, or Postgres recreated."""
    if url == "sqlite":
        return f"sqlite:///{run_dir / 'bench.sqlite3'}"
    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    if parsed.scheme not in ("postgres", "postgresql", "pgsql"):
        raise StackError(f"--database-url {url!r}: use 'sqlite' or a postgres:// URL.")
    if "bench" not in name:
        raise StackError(
            f"--database-url names the database {name!r}: the benchmark drops and "
            "recreates it, so its name must contain 'bench' (e.g. chatproj_bench)."
        )
    import psycopg
    from psycopg import sql

    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    return url


def create_users(count: int) -> list[BenchUser]:
    """`count` users `bench-N`, each with a logged-in session (no password)."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import close_old_connections, connections
    from django.test import Client

    users = []
    model = get_user_model()
    for i in range(count):
        user, created = model.objects.get_or_create(username=f"bench-{i + 1}")
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        users.append(BenchUser(id=user.pk, name=user.get_username(), cookie=cookie))
    close_old_connections()
    connections.close_all()  # nothing of ours holds the database during the run
    return users


def bench_rooms(config: BenchConfig) -> list[str]:
    """The room each client talks in, by client index: `bench-1` … `bench-<rooms>`."""
    return [f"bench-{i % config.rooms + 1}" for i in range(config.clients)]


def create_rooms(names: Iterable[str]) -> None:
    """The public rooms the clients open (the server opens only rooms someone
    created)."""
    from django.db import connections

    from chat.models import Room

    for name in set(names):
        Room.objects.get_or_create(name=name)
    connections.close_all()  # nothing of ours holds the database during the run


def make_run_dir(config: BenchConfig) -> Path:
    """Where the database file and the process logs of this run go."""
    if config.run_dir:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        return config.run_dir
    return Path(tempfile.mkdtemp(prefix="chatproj-bench-"))
