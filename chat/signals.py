"""Worker lifecycle: close each process's Kafka producer when it shuts down."""

from typing import Any

from celery.signals import worker_process_shutdown, worker_shutdown

from .agents import KafkaChatAgent


@worker_process_shutdown.connect
@worker_shutdown.connect
def close_kafka_producer(**_: Any) -> None:
    """Flush and close the producer of this process (bounded by KAFKA_SEND_TIMEOUT)."""
    KafkaChatAgent.shutdown_instance()
