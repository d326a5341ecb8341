"""List dead messages (never publishable as they are) and re-drive them."""

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat import selectors
from chat.services.outbox import message_redrive


class Command(BaseCommand):
    """`manage.py dead_letters [--redrive ID ... | --redrive-all]`."""

    help = (
        "List dead messages with their reason; re-drive them once the cause is fixed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Options."""
        parser.add_argument("--redrive", nargs="+", metavar="MESSAGE_ID", default=[])
        parser.add_argument("--redrive-all", action="store_true")

    def handle(
        self, *args: Any, redrive: list[str], redrive_all: bool, **options: Any
    ) -> None:
        """List, or re-drive the given dead messages."""
        if redrive or redrive_all:
            if redrive_all:
                ids = [str(m.message_id) for m in selectors.messages_dead()]
            else:
                ids = [self._parse_id(value) for value in redrive]
            done = message_redrive(message_ids=ids)
            self.stdout.write(f"Re-driven {len(done)} dead message(s).")
            for message_id in sorted(set(ids) - set(done)):
                self.stderr.write(f"  {message_id}: not a dead message, left alone")
            return
        dead = list(selectors.messages_dead())
        self.stdout.write(f"{len(dead)} dead message(s).")
        for m in dead:
            self.stdout.write(
                f"{m.message_id}  {m.room.name}#{m.seq}  "
                f"{m.created_at:%Y-%m-%d %H:%M:%S}  {len(m.content)} chars  "
                f"{m.last_error}"
            )

    @staticmethod
    def _parse_id(value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise CommandError(f"{value!r} is not a message id (a UUID).") from None
