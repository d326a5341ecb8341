"""The README example the other way round: the agent call after super().receive."""

import json

from chat.agents import KafkaChatAgent
from chat.realtime.consumers import ChatConsumer


class SendAfterSuperConsumer(ChatConsumer):
    """Lets ChatConsumer handle the frame first, then sends it through the agent."""

    async def connect(self):
        """Keep the agent, as the README example does."""
        self.kafka_agent = KafkaChatAgent.get_instance()
        await super().connect()

    async def receive(self, text_data):
        """The consumer's own handling, then the agent's call for the same frame."""
        await super().receive(text_data)
        await self.kafka_agent.send_chat_message(
            sender_id=self.scope["user"].id,
            receiver_id=self.room_name,
            content=json.loads(text_data)["message"],
        )
