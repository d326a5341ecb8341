"""The product's Python face: per-process agents around the Kafka chat stream."""

from ..schemas import ChatEvent, ChatValidationError
from .base import Agent
from .kafka_chat import (
    InDoubtPublishError,
    KafkaChatAgent,
    KafkaPublishError,
    PermanentPublishError,
    PublishResult,
    RetriablePublishError,
)
from .notifications import NotificationAgent

__all__ = [
    "Agent",
    "ChatEvent",
    "ChatValidationError",
    "InDoubtPublishError",
    "KafkaChatAgent",
    "KafkaPublishError",
    "NotificationAgent",
    "PermanentPublishError",
    "PublishResult",
    "RetriablePublishError",
]
