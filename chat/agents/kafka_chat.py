"""KafkaChatAgent: the agent API of the original README, a thin facade.

`send_chat_message` and `process_websocket_message` are the web path's own functions
(chat.realtime.sending); publishing is the process's ChatProducer
(chat.publishing.producer), built on first use. Importing this module loads no
Kafka client: a web process that only sends messages never builds one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chat.agents.base import Agent
from chat.infra import config
from chat.realtime import sending

if TYPE_CHECKING:
    from chat.publishing.errors import PublishResult
    from chat.publishing.producer import ChatProducer
    from chat.schemas import ChatEvent


class KafkaChatAgent(Agent):
    """Validates chat frames, sends chat messages, and publishes chat events.

    Keyword overrides of get_instance() (`bootstrap_servers`, `topic`,
    `client_id`, `enabled`, `send_timeout`, `delivery_timeout`, `producer_config`,
    `breaker_failures`, `breaker_reset`) configure its producer;
    `max_message_length` its frame checks. Any other attribute is the producer's.
    """

    def __init__(self, *, max_message_length: int | None = None, **kafka: Any) -> None:
        super().__init__()
        self.max_message_length = (
            config.chat().max_message_length
            if max_message_length is None
            else max_message_length
        )
        config.kafka(**kafka)  # a bad override fails here, not at the first publish
        self._kafka_overrides = kafka
        self._chat_producer: ChatProducer | None = None

    @property
    def chat_producer(self) -> ChatProducer:
        """The producer this agent publishes with: the process's one, or its own
        when built with Kafka overrides."""
        if self.closed:
            raise RuntimeError("KafkaChatAgent is closed; call get_instance() again.")
        if self._chat_producer is None or self._chat_producer.closed:
            from chat.publishing.producer import ChatProducer

            self._chat_producer = (
                ChatProducer(**self._kafka_overrides)
                if self._kafka_overrides
                else ChatProducer.get_instance()
            )
        return self._chat_producer

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in {"_chat_producer", "_kafka_overrides"}:
            raise AttributeError(name)
        return getattr(self.chat_producer, name)

    async def process_websocket_message(
        self, *, text_data: Any, user_id: int
    ) -> dict[str, Any]:
        """Parse and validate a client frame: `{"type", "message", "receiver_id",
        "client_id", "sender_id"}`, or ChatValidationError with `.code` and
        `.detail`."""
        return await sending.frame_data(
            text_data=text_data, user_id=user_id, max_length=self.max_message_length
        )

    async def send_chat_message(
        self, *, sender_id: int, receiver_id: int | str, content: str
    ) -> dict[str, Any]:
        """Persist, broadcast and (via a worker) publish one message; return it
        (chat.realtime.sending.send_chat_message)."""
        return await sending.send_chat_message(
            sender_id=sender_id,
            receiver_id=receiver_id,
            content=content,
            max_length=self.max_message_length,
        )

    def publish(self, event: ChatEvent) -> PublishResult | None:
        """Produce one event and wait for its acknowledgement (None when disabled)."""
        return self.chat_producer.publish(event)

    def flush(self) -> None:
        """Deliver what the producer buffered, if one was built; bounded. Idempotent."""
        if self._chat_producer is not None:
            self._chat_producer.flush()

    def close(self) -> None:
        """Close the producer this agent built or used; idempotent."""
        producer, self._chat_producer = self._chat_producer, None
        if producer is not None and not producer.closed:
            producer.close()
        super().close()
