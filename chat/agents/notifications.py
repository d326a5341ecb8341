"""NotificationAgent: consumes the chat stream and stores DM and @mention notifications.

A StreamAgent (chat.agents.stream owns the consumer, the loop, commits, retries,
skipped-record counts, lag and heartbeat): one Kafka consumer per process
(`manage.py run_agent notifications`), in consumer group KAFKA_NOTIFICATIONS_GROUP on
KAFKA_CHAT_TOPIC. More processes in the group share the topic's partitions (Kafka
assigns each partition to one of them); that is how it scales. KAFKA_NOTIFICATIONS_*
also sets where a new group starts (OFFSET_RESET, default `earliest`: a new group
notifies about everything still in the topic), the poll timeout, the records of a
batch (MAX_RECORDS, one database transaction) and the retry backoff's cap.

A batch: record its notifications in one transaction (`notifications_record`), push
them live after the commit (`broadcast.push_notifications`); the base then commits the
offsets. At least once in, exactly once in effect: a notification is unique per (user,
message_id), so a replayed event creates nothing.

Bad records (not UTF-8, not JSON, wrong schema_version, missing or wrong fields,
unknown room or user, the same event twice) are logged once with topic/partition/offset,
counted in `chat_notification_records_skipped_total{reason}` and skipped; they never
stop the loop. A database error does not lose events: nothing is committed and the
same records are polled again after a backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from chat.agents.records import BadRecord, RecordRef, decode_event
from chat.agents.stream import StreamAgent
from chat.infra import metrics
from chat.infra.metrics import StreamMetrics
from chat.schemas import ChatEvent
from chat.services import broadcast
from chat.services.notifications import NotificationOutcome, notifications_record

logger = logging.getLogger(__name__)

__all__ = [
    "BadRecord",
    "NotificationAgent",
    "RecordRef",
    "decode_event",
    "skip_reason",
]


def skip_reason(why: str) -> str:
    """Counter label of a reason `notifications_record` gave for a skip."""
    return "unknown_room" if why.startswith("unknown room") else "unknown_user"


class NotificationAgent(StreamAgent):
    """Per-process Kafka consumer of chat events that stores their notifications."""

    name = "notifications"
    settings_prefix = "KAFKA_NOTIFICATIONS"
    default_group = "chat-notifications"
    outcome_type = NotificationOutcome
    rejected_why = "rejected by the database"
    stream_metrics = StreamMetrics(
        skipped=metrics.NOTIFICATION_RECORDS_SKIPPED,
        commit_errors=metrics.NOTIFICATION_COMMIT_ERRORS,
        lag=metrics.NOTIFICATION_CONSUMER_LAG,
    )

    def skip_reason(self, why: str) -> str:
        """Counter label of a skip `handle` reported."""
        return skip_reason(why)

    def handle(
        self, events: Sequence[tuple[RecordRef, ChatEvent]]
    ) -> NotificationOutcome[RecordRef]:
        """Store the notifications of a batch of events (one transaction), count them,
        then push them live (best effort: the rows are stored)."""
        outcome = notifications_record(events=events)
        stored_at = time.time()
        metrics.NOTIFICATION_EVENTS.inc(len(outcome.accepted))
        metrics.NOTIFICATIONS_CREATED.inc(len(outcome.created))
        for notification, event, _ in outcome.created:
            created = notification.created_at
            moment = created.timestamp() if created else stored_at
            metrics.NOTIFICATION_FRESHNESS.observe(
                max(0.0, moment - event.created_at.timestamp())
            )
        if outcome.created:  # per batch: DEBUG (chat_notifications_created counts them)
            logger.debug(
                "%d notification(s) from %d event(s)",
                len(outcome.created),
                len(outcome.accepted),
            )
        try:
            broadcast.push_notifications(outcome)
        except Exception:  # live frames are best effort: the rows are stored
            logger.exception("Live push of %d event(s) failed", len(outcome.accepted))
        return outcome
