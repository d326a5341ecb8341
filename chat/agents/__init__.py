"""The product's Python face: per-process agents around the Kafka chat stream."""

from chat.agents.base import Agent
from chat.agents.kafka_chat import (
    InDoubtPublishError,
    KafkaChatAgent,
    KafkaPublishError,
    PermanentPublishError,
    PublishResult,
    RetriablePublishError,
)
from chat.agents.notifications import NotificationAgent
from chat.schemas import ChatEvent, ChatValidationError

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
