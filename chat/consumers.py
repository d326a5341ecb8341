"""The consumers where the original README's integration example imports them
(`from chat.consumers import ChatConsumer`); they live in chat.realtime.consumers."""

from chat.realtime.consumers import ChatConsumer
from chat.realtime.notification_consumer import NotificationConsumer

__all__ = ["ChatConsumer", "NotificationConsumer"]
