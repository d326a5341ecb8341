"""Create the chat topic and its dead-letter topic from settings, and show them."""

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.infra.config import parse_bootstrap_servers
from chat.publishing.topics import (
    KafkaError,
    chat_topic_specs,
    topics_describe,
    topics_ensure,
)


class Command(BaseCommand):
    """`manage.py kafka_topics [--check]`."""

    help = (
        "Create KAFKA_CHAT_TOPIC and <topic>.dlq where missing, with "
        "KAFKA_TOPIC_PARTITIONS, KAFKA_TOPIC_REPLICATION_FACTOR and "
        "KAFKA_TOPIC_MIN_INSYNC_REPLICAS; then print each topic's partitions and "
        "replication factor. --check creates nothing and fails if one is missing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Options."""
        parser.add_argument(
            "--check", action="store_true", help="create nothing; exit 1 if missing"
        )
        parser.add_argument(
            "--timeout", type=float, default=30.0, help="seconds per Kafka call"
        )

    def handle(self, *args: Any, check: bool, timeout: float, **options: Any) -> None:
        """Create what is missing (unless --check) and report."""
        if not settings.KAFKA_ENABLED:
            raise CommandError("KAFKA_ENABLED is off: there is no topic to create.")
        servers = [
            f"{host}:{port}"
            for host, port in parse_bootstrap_servers(settings.KAFKA_BOOTSTRAP_SERVERS)
        ]
        specs = chat_topic_specs()
        try:
            if not check:
                created = topics_ensure(
                    bootstrap_servers=servers, specs=specs, timeout=timeout
                )
                for name in created:
                    self.stdout.write(f"Created {name}")
            # A topic just made may not be in every broker's metadata yet.
            deadline = time.monotonic() + (0 if check else timeout)
            while True:
                described = topics_describe(
                    bootstrap_servers=servers,
                    names=[spec.name for spec in specs],
                    timeout=timeout,
                )
                if None not in described.values() or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
        except KafkaError as exc:
            raise CommandError(
                f"Kafka at {','.join(servers)} did not answer or refused: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        missing = []
        for name, shape in described.items():
            if shape is None:
                missing.append(name)
                self.stdout.write(f"{name}: missing")
            else:
                self.stdout.write(
                    f"{name}: {shape[0]} partitions, replication factor {shape[1]}"
                )
        if missing:
            raise CommandError(f"Missing topic(s): {', '.join(missing)}")
