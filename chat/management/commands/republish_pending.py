"""Re-enqueue messages whose publication is overdue (the outbox sweep, on demand)."""

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from chat.services.outbox import outbox_sweep


class Command(BaseCommand):
    """`manage.py republish_pending [--all] [--limit N]`."""

    help = (
        "Re-enqueue pending messages older than OUTBOX_GRACE_SECONDS and failed ones "
        "whose backoff has passed; --all ignores the wait and any task already "
        "queued for them (e.g. after an outage)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Options."""
        parser.add_argument(
            "--all", action="store_true", help="every pending/failed message, now"
        )
        parser.add_argument("--limit", type=int, default=None, help="at most N")

    def handle(self, *args: Any, all: bool, limit: int | None, **options: Any) -> None:
        """Run one sweep and report what it re-enqueued."""
        if limit is not None and limit < 1:
            self.stderr.write("--limit must be at least 1.")
            raise SystemExit(2)
        now = timezone.now() + timedelta(days=36500) if all else None
        ids = outbox_sweep(now=now, limit=limit, force=all)
        self.stdout.write(f"Re-enqueued {len(ids)} message(s).")
        for message_id in ids:
            self.stdout.write(f"  {message_id}")
