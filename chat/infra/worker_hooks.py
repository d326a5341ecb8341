"""Celery worker hooks: log context per task, clients closed at shutdown, per-worker
metrics."""

import logging
import os
from typing import Any

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from chat.infra import clients
from chat.infra.log_context import current_message_id

logger = logging.getLogger(__name__)


@worker_process_shutdown.connect
@worker_shutdown.connect
def close_process_clients(**_: Any) -> None:
    """Flush and close this process's clients: the Kafka producer (bounded by
    KAFKA_SEND_TIMEOUT), the Redis pools."""
    clients.close_all()


@worker_process_shutdown.connect
def forget_process_metrics(pid: int | None = None, **_: Any) -> None:
    """Drop this child's live gauges from the multiprocess metrics directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


@task_prerun.connect
def bind_message_id(task: Any = None, args: Any = None, **_: Any) -> None:
    """Log lines of a publish task carry its message_id."""
    if task is not None and task.name == "chat.tasks.publish_chat_message" and args:
        current_message_id.set(str(args[0]))


@task_postrun.connect
def unbind_message_id(**_: Any) -> None:
    """The next task starts without a message_id."""
    current_message_id.set("-")


@worker_ready.connect
def serve_worker_metrics(**_: Any) -> None:
    """With WORKER_METRICS_PORT, the worker serves its children's metrics itself
    (one scrape target per worker container)."""
    port = os.environ.get("WORKER_METRICS_PORT")
    if not port:
        return
    from prometheus_client import REGISTRY, start_http_server

    from chat.infra.metrics import multiprocess_registry

    start_http_server(int(port), registry=multiprocess_registry() or REGISTRY)
    logger.info("Worker metrics on :%s/metrics", port)
