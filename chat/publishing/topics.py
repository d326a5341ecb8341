"""Explicit creation of the chat topic and its dead-letter topic.

The topics are created with the partitions, replication factor and
`min.insync.replicas` of the settings, never by the broker's auto-create: the
producer creates them once per process before its first send (KAFKA_CREATE_TOPICS),
and `manage.py kafka_topics` does it on demand (compose's init step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from chat.infra import config

logger = logging.getLogger(__name__)


# Client options (KAFKA_PRODUCER_OPTIONS, KAFKA_CONSUMER_OPTIONS) that also concern an
# admin client (security, timeouts of
# the connection); producer-only ones (acks, linger) are not passed to it.
_ADMIN_OPTIONS = frozenset(
    {
        "security_protocol",
        "ssl_context",
        "ssl_check_hostname",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_crlfile",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
        "api_version",
    }
)


def admin_options(client_config: dict[str, Any]) -> dict[str, Any]:
    """The options of a producer or consumer config an admin client takes too."""
    return {k: v for k, v in client_config.items() if k in _ADMIN_OPTIONS}


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the settings want it."""

    name: str
    partitions: int
    replication_factor: int
    min_insync_replicas: int | None = None

    def request(self) -> dict[str, dict[str, object]]:
        """kafka-python's create_topics form of this topic."""
        configs = {}
        if self.min_insync_replicas:
            configs["min.insync.replicas"] = str(self.min_insync_replicas)
        return {
            self.name: {
                "num_partitions": self.partitions,
                "replication_factor": self.replication_factor,
                "configs": configs,
            }
        }


def chat_topic_specs(topic: str | None = None) -> list[TopicSpec]:
    """The chat topic and `<topic>.dlq`, as the KAFKA_TOPIC_* settings want them."""
    kafka = config.kafka()
    name = topic or kafka.topic
    return [
        TopicSpec(
            topic_name,
            kafka.topic_partitions,
            kafka.topic_replication_factor,
            kafka.topic_min_insync_replicas,
        )
        for topic_name in (name, f"{name}.dlq")
    ]


def topics_ensure(
    *,
    bootstrap_servers: list[str],
    specs: list[TopicSpec],
    timeout: float,
    client_options: dict[str, object] | None = None,
) -> list[str]:
    """Create the topics of `specs` that do not exist; return the names created.

    Raises KafkaError when the cluster cannot be asked or refuses (too few brokers
    for the replication factor, not authorized): the caller decides what that means.
    """
    timeout_ms = int(timeout * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        reconnect_backoff_max_ms=1000,
        **(client_options or {}),
    )
    try:
        existing = set(admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        created = []
        for spec in missing:
            try:
                admin.create_topics(
                    spec.request(), timeout_ms=timeout_ms, wait_for_metadata=True
                )
            except TopicAlreadyExistsError:
                continue  # another process created it meanwhile
            created.append(spec.name)
            logger.info(
                "Created Kafka topic %s (%d partitions, replication factor %d)",
                spec.name,
                spec.partitions,
                spec.replication_factor,
            )
        return created
    finally:
        admin.close()


def topics_describe(
    *, bootstrap_servers: list[str], names: list[str], timeout: float
) -> dict[str, tuple[int, int] | None]:
    """Per topic name: (partitions, replication factor), or None when missing."""
    timeout_ms = int(timeout * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )
    try:
        existing = set(admin.list_topics())
        found = admin.describe_topics([n for n in names if n in existing])
    finally:
        admin.close()
    described: dict[str, tuple[int, int] | None] = dict.fromkeys(names)
    for topic in found:
        partitions = topic["partitions"]
        replicas = max((len(p["replica_nodes"]) for p in partitions), default=0)
        described[topic["name"]] = (len(partitions), replicas)
    return described


__all__ = [
    "KafkaError",
    "TopicSpec",
    "admin_options",
    "chat_topic_specs",
    "topics_describe",
    "topics_ensure",
]
