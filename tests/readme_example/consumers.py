import json

from chat.consumers import ChatConsumer
from chat.agents import KafkaChatAgent


class ChatConsumerWithKafka(ChatConsumer):

    async def connect(self):
        self.kafka_agent = KafkaChatAgent.get_instance()
        await super().connect()

    async def receive(self, text_data):
        text_data_json = json.loads(text_data)
        message = text_data_json['message']
        await self.kafka_agent.send_chat_message(
            sender_id=self.scope['user'].id,
            receiver_id=self.room_name,  # or the appropriate receiver id
            content=message
        )
        await super().receive(text_data)

    async def disconnect(self, close_code):
        if hasattr(self, 'kafka_agent'):
            self.kafka_agent.flush()
        await super().disconnect(close_code)
