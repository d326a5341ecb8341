"""The chat, Kafka and outbox settings as typed objects.

Django settings stay the source (chatproj/settings.py reads them from the
environment); these views read them at each call, so a test's override_settings
and an agent's keyword overrides are seen at once. `kafka(**overrides)` is how the
producer and the stream agents take theirs: a keyword of None keeps the setting.
Every check that a value is usable lives here, and raises ImproperlyConfigured
saying what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Kafka's own rule for topic names, less four characters for the ".dlq" suffix.
TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9._\-]{1,245}$")


def parse_bootstrap_servers(servers: str | list[str]) -> list[tuple[str, int]]:
    """(host, port) pairs of KAFKA_BOOTSTRAP_SERVERS (ImproperlyConfigured if bad)."""
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    pairs = []
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise ImproperlyConfigured(
                f"KAFKA_BOOTSTRAP_SERVERS entry {server!r} is not host:port."
            )
        pairs.append((host, int(port)))
    return pairs


@dataclass(frozen=True)
class ChatSettings:
    """What a message and a socket may be (CHAT_*)."""

    max_message_length: int
    history_size: int
    client_id_window: float
    publish_batch: int
    publish_lock_timeout: float


@dataclass(frozen=True)
class KafkaSettings:
    """Where and how the chat stream is produced (KAFKA_*)."""

    enabled: bool
    bootstrap_servers: list[str]
    client_id: str
    topic: str
    send_timeout: float
    delivery_timeout: float
    transactions: bool
    transaction_timeout: float
    create_topics: bool
    producer_config: dict[str, Any] = field(default_factory=dict)
    consumer_config: dict[str, Any] = field(default_factory=dict)
    breaker_failures: int = 5
    breaker_reset: float = 30.0
    topic_partitions: int = 6
    topic_replication_factor: int = 1
    topic_min_insync_replicas: int = 1
    retry_tries: int = 5
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    retry_jitter: float = 0.0

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic beside the chat topic."""
        return f"{self.topic}.dlq"

    def check(self) -> KafkaSettings:
        """These settings, or ImproperlyConfigured naming the first unusable one."""
        if self.enabled and not self.bootstrap_servers:
            raise ImproperlyConfigured(
                "KAFKA_BOOTSTRAP_SERVERS is empty: set it to host:port[,host:port] "
                "or set KAFKA_ENABLED=False."
            )
        if not TOPIC_PATTERN.match(self.topic):
            raise ImproperlyConfigured(
                f"KAFKA_CHAT_TOPIC {self.topic!r} is not a valid Kafka topic name "
                "(1-245 of letters, digits, '.', '_', '-')."
            )
        for name, value in (
            ("KAFKA_PRODUCER_OPTIONS", self.producer_config),
            ("KAFKA_CONSUMER_OPTIONS", self.consumer_config),
        ):
            if not isinstance(value, dict):
                raise ImproperlyConfigured(
                    f"{name} must be a JSON object of kafka-python options, "
                    f"not {value!r}."
                )
        if not self.send_timeout > 0:
            raise ImproperlyConfigured(
                f"KAFKA_SEND_TIMEOUT must be a positive number of seconds, "
                f"not {self.send_timeout!r}."
            )
        return self


@dataclass(frozen=True)
class OutboxSettings:
    """When the sweep re-enqueues what was not published (OUTBOX_*)."""

    grace_seconds: float
    backoff_max: float
    sweep_batch: int
    sweep_max_queue: int


def chat() -> ChatSettings:
    """The CHAT_* settings."""
    return ChatSettings(
        max_message_length=settings.CHAT_MAX_MESSAGE_LENGTH,
        history_size=settings.CHAT_HISTORY_SIZE,
        client_id_window=settings.CHAT_CLIENT_ID_WINDOW,
        publish_batch=settings.CHAT_PUBLISH_BATCH,
        publish_lock_timeout=settings.CHAT_PUBLISH_LOCK_TIMEOUT,
    )


def kafka(**overrides: Any) -> KafkaSettings:
    """The KAFKA_* settings, with keyword overrides (None keeps a setting), checked.

    `bootstrap_servers` may be a comma-separated string or a list; the delivery
    timeout is never shorter than the send timeout."""
    unknown = set(overrides) - {f.name for f in fields(KafkaSettings)}
    if unknown:
        raise TypeError(f"unknown Kafka setting(s): {', '.join(sorted(unknown))}")
    base = KafkaSettings(
        enabled=settings.KAFKA_ENABLED,
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=settings.KAFKA_CLIENT_ID,
        topic=settings.KAFKA_CHAT_TOPIC,
        send_timeout=settings.KAFKA_SEND_TIMEOUT,
        delivery_timeout=settings.KAFKA_DELIVERY_TIMEOUT,
        transactions=settings.KAFKA_TRANSACTIONS,
        transaction_timeout=settings.KAFKA_TRANSACTION_TIMEOUT,
        create_topics=settings.KAFKA_CREATE_TOPICS,
        producer_config=settings.KAFKA_PRODUCER_OPTIONS,
        consumer_config=settings.KAFKA_CONSUMER_OPTIONS,
        breaker_failures=settings.KAFKA_BREAKER_FAILURES,
        breaker_reset=settings.KAFKA_BREAKER_RESET,
        topic_partitions=settings.KAFKA_TOPIC_PARTITIONS,
        topic_replication_factor=settings.KAFKA_TOPIC_REPLICATION_FACTOR,
        topic_min_insync_replicas=settings.KAFKA_TOPIC_MIN_INSYNC_REPLICAS,
        retry_tries=settings.KAFKA_RETRY_TRIES,
        retry_delay=settings.KAFKA_RETRY_DELAY,
        retry_backoff=settings.KAFKA_RETRY_BACKOFF,
        retry_jitter=settings.KAFKA_RETRY_JITTER,
    )
    merged = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    servers = [
        f"{host}:{port}"
        for host, port in parse_bootstrap_servers(merged.bootstrap_servers)
    ]
    send_timeout = float(merged.send_timeout)
    return replace(
        merged,
        bootstrap_servers=servers,
        send_timeout=send_timeout,
        delivery_timeout=float(max(send_timeout, merged.delivery_timeout)),
    ).check()


def outbox() -> OutboxSettings:
    """The OUTBOX_* settings."""
    return OutboxSettings(
        grace_seconds=settings.OUTBOX_GRACE_SECONDS,
        backoff_max=settings.OUTBOX_BACKOFF_MAX,
        sweep_batch=settings.OUTBOX_SWEEP_BATCH,
        sweep_max_queue=settings.OUTBOX_SWEEP_MAX_QUEUE,
    )
