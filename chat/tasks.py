"""The Celery tasks (autodiscovered): they take ids. The publish task takes its
conversation's turn and has chat.publishing.conversation publish it; the sweep
re-enqueues what was lost."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from celery import Task, shared_task
from celery.signals import task_prerun

from chat import selectors
from chat.infra import config, metrics
from chat.infra.db import between_units
from chat.models import FINAL_STATUSES
from chat.publishing import conversation
from chat.publishing.errors import RetriablePublishError
from chat.services import publish_queue
from chat.services.messages import client_ids_expire
from chat.services.outbox import message_mark_failed, outbox_sweep

logger = logging.getLogger(__name__)


@task_prerun.connect
def _drop_unusable_connections(**_: Any) -> None:
    """Before a task, close a database connection Django would not reuse (an error
    since the last commit, past CONN_MAX_AGE): Celery's fix-up does not close it
    after every task (CELERY_DB_REUSE_MAX). And forget the DEBUG query log."""
    between_units()


def retry_countdown(
    retry_number: int, *, delay: float, backoff: float, jitter: float = 0.0
) -> float:
    """Seconds before retry n (1-based): DELAY × BACKOFF^(n-1), plus optional jitter."""
    countdown = delay * backoff ** (retry_number - 1)
    if jitter:
        countdown += random.uniform(0, jitter * countdown)
    return countdown


class KafkaPublishTask(Task):
    """Retry policy from settings: KAFKA_RETRY_TRIES attempts, DELAY × BACKOFF^(n-1).

    Celery's own `retry_backoff` only does factor × 2^n in whole seconds, so the
    countdown is computed here and handed to Celery's retry (autoretry calls it).
    """

    acks_late = True
    reject_on_worker_lost = True

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        """Retries after the first attempt."""
        return max(config.kafka().retry_tries - 1, 0)

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        pass  # the limit always comes from settings

    def retry(self, *args: Any, countdown: float | None = None, **kwargs: Any) -> Any:
        """Schedule the next attempt with the settings' countdown."""
        if countdown is None and kwargs.get("eta") is None:
            kafka = config.kafka()
            countdown = retry_countdown(
                self.request.retries + 1,
                delay=kafka.retry_delay,
                backoff=kafka.retry_backoff,
                jitter=kafka.retry_jitter,
            )
        if self.request.retries < self.max_retries:
            metrics.PUBLISH_RETRIES.inc()
            logger.warning(
                "Retry %d/%d of %s message_id=%s in %.2fs: %s",
                self.request.retries + 1,
                self.max_retries,
                self.name,
                (self.request.args or [None])[0],
                countdown,
                kwargs.get("exc"),
            )
        return super().retry(*args, countdown=countdown, **kwargs)

    def on_failure(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Retries exhausted: mark the message failed (a dead one stays dead)."""
        message_id = (args or [None])[0] or kwargs.get("message_id")
        message_mark_failed(
            message_id=str(message_id), error=f"{type(exc).__name__}: {exc}"
        )


@shared_task(
    bind=True,
    base=KafkaPublishTask,
    autoretry_for=(RetriablePublishError,),
    retry_backoff=False,
    retry_jitter=False,
)
def publish_chat_message(self: KafkaPublishTask, message_id: str) -> str | None:
    """Publish a message's conversation up to it, in seq order (retried on trouble).

    Already published (its conversation's publisher took it): a one-read no-op.
    """
    try:
        canonical_id = str(uuid.UUID(str(message_id)))
    except ValueError:
        logger.error(
            "publish_chat_message: %r is not a message id; dropped", message_id
        )
        return None
    state = selectors.message_publish_state(message_id=canonical_id)
    if state is None:
        logger.error("publish_chat_message: no message with id %r; dropped", message_id)
        return None
    published = state.status in FINAL_STATUSES
    took_mark = publish_queue.publish_pass_started(
        room_id=state.room_id, message_id=canonical_id, owner_only=published
    )
    if published and not took_mark:
        return state.status  # nothing rode along on this task: a cheap no-op
    return conversation.publish_conversation(
        room_id=state.room_id, room_name=state.room_name, message_id=canonical_id
    )


@shared_task(ignore_result=True)
def sweep_outbox() -> int:
    """Re-enqueue messages whose publication was lost or gave up, and forget
    idempotency keys past their window (run by beat)."""
    client_ids_expire()
    return len(outbox_sweep())
