"""The product's Python face: per-process agents around the Kafka chat stream.

`from chat.agents import KafkaChatAgent` (the agent API), `NotificationAgent` (a
stream agent) and the publish errors. Names are imported on first access, so
importing this package loads no Kafka client until one is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chat.agents.base import Agent
    from chat.agents.kafka_chat import KafkaChatAgent
    from chat.agents.notifications import NotificationAgent
    from chat.publishing.errors import (
        InDoubtPublishError,
        KafkaPublishError,
        PermanentPublishError,
        PublishResult,
        RetriablePublishError,
    )
    from chat.schemas import ChatEvent, ChatValidationError

_HOMES = {
    "Agent": "chat.agents.base",
    "ChatEvent": "chat.schemas",
    "ChatValidationError": "chat.schemas",
    "InDoubtPublishError": "chat.publishing.errors",
    "KafkaChatAgent": "chat.agents.kafka_chat",
    "KafkaPublishError": "chat.publishing.errors",
    "NotificationAgent": "chat.agents.notifications",
    "PermanentPublishError": "chat.publishing.errors",
    "PublishResult": "chat.publishing.errors",
    "RetriablePublishError": "chat.publishing.errors",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'chat.agents' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value
