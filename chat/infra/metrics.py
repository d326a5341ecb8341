"""Prometheus metrics of the chat pipeline.

Worker children and the web server write to PROMETHEUS_MULTIPROC_DIR (prometheus
multiprocess mode) when it is set, so one scrape of /metrics adds up every process
of the host; the outbox backlog is read from the database at scrape time.
"""

from __future__ import annotations

import contextlib
import glob
import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)

MESSAGES_RECEIVED = Counter(
    "chat_messages_received", "Chat messages persisted (from WebSockets or the API)"
)
MESSAGES_PUBLISHED = Counter(
    "chat_messages_published", "Chat messages acknowledged by Kafka"
)
MESSAGES_SKIPPED = Counter(
    "chat_messages_skipped", "Chat messages not published (KAFKA_ENABLED off)"
)
PUBLISH_RETRIES = Counter("chat_publish_retries", "Publish attempts scheduled again")
MESSAGES_FAILED = Counter(
    "chat_messages_failed", "Messages whose retries were exhausted (the sweep retries)"
)
MESSAGES_DEAD = Counter("chat_messages_dead", "Messages that can never be published")
PRODUCER_REBUILDS = Counter(
    "chat_kafka_producer_rebuilds",
    "Kafka producers discarded for a broken state and built anew",
)
PUBLISH_LATENCY = Histogram(
    "chat_publish_latency_seconds",
    "From persisting a message to Kafka's acknowledgement",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
WEBSOCKET_CONNECTIONS = Gauge(
    "chat_websocket_connections",
    "Open chat WebSocket connections",
    multiprocess_mode="livesum",
)

# Bounded logs: refusals are counted here, not logged one line each.
FRAMES_REFUSED = Counter(
    "chat_frames_refused",
    "Client frames answered with an error frame, by error code",
    ["code"],
)
SOCKETS_CLOSED = Counter(
    "chat_websocket_closed_by_server",
    "WebSockets the server closed, by close code (4401 session ended or not "
    "authenticated, 4429 flooding or too many connections, 1011 internal error)",
    ["code"],
)


class _StartedFilesCollector(multiprocess.MultiProcessCollector):  # type: ignore[misc]
    """prometheus_client's collector, minus the files a process is still creating:
    read while still empty, one failed the whole scrape with a 500 (struct.error)."""

    def collect(self) -> Any:
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            with contextlib.suppress(OSError):  # removed meanwhile
                if os.path.getsize(path) >= 8:  # its header is written
                    files.append(path)
        return self.merge(files, accumulate=True)


def multiprocess_registry() -> CollectorRegistry | None:
    """A registry adding up all processes' files, when multiprocess mode is on."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    registry = CollectorRegistry()
    _StartedFilesCollector(registry)
    return registry


# --- NotificationAgent (`manage.py run_agent notifications`) ----------------------
NOTIFICATION_EVENTS = Counter(
    "chat_notification_events",
    "Chat events the notification agent stored the effects of",
)
NOTIFICATIONS_CREATED = Counter(
    "chat_notifications_created", "Notification rows created (DM and @mention)"
)
NOTIFICATION_RECORDS_SKIPPED = Counter(
    "chat_notification_records_skipped",
    "Records of the chat topic the notification agent skipped, by reason",
    labelnames=["reason"],
)
NOTIFICATION_COMMIT_ERRORS = Counter(
    "chat_notification_commit_errors",
    "Offset commits not confirmed (timeout, rebalance); the events are re-read",
)
NOTIFICATION_CONSUMER_LAG = Gauge(
    "chat_notification_consumer_lag",
    "Records of the chat topic not yet handled, per assigned partition",
    labelnames=["partition"],
    multiprocess_mode="livemax",
)
NOTIFICATION_FRESHNESS = Histogram(
    "chat_notification_freshness_seconds",
    "From the message's created_at to its notification stored",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


# --- Stream agents (chat.agents.stream) ------------------------------------------
# The series of agents that bring none of their own (`stream_metrics`), per agent.
AGENT_RECORDS_SKIPPED = Counter(
    "chat_agent_records_skipped",
    "Records of the chat topic a stream agent skipped, by agent and reason",
    labelnames=["agent", "reason"],
)
AGENT_COMMIT_ERRORS = Counter(
    "chat_agent_commit_errors",
    "Offset commits of a stream agent not confirmed (timeout, rebalance); the "
    "records are re-read",
    labelnames=["agent"],
)
AGENT_CONSUMER_LAG = Gauge(
    "chat_agent_consumer_lag",
    "Records of the chat topic a stream agent has not handled yet, per assigned "
    "partition",
    labelnames=["agent", "partition"],
    multiprocess_mode="livemax",
)


@dataclass(frozen=True)
class StreamMetrics:
    """The series the base writes: skipped records (label `reason`), unconfirmed
    commits, and lag (label `partition`). `bound` are the values of labels the
    series have before those (the agent's name, for the shared AGENT_* series)."""

    skipped: Counter
    commit_errors: Counter
    lag: Gauge
    bound: tuple[str, ...] = ()

    def count_skipped(self, reason: str) -> None:
        """One more record skipped for `reason`."""
        self.skipped.labels(*self.bound, reason).inc()

    def count_commit_error(self) -> None:
        """One more commit not confirmed."""
        series = self.commit_errors
        (series.labels(*self.bound) if self.bound else series).inc()

    def set_lag(self, partition: int, lag: int) -> None:
        """The lag of one partition."""
        self.lag.labels(*self.bound, str(partition)).set(lag)
