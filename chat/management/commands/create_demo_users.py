"""Create the demo users alice, bob and carol that are missing (demo only)."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from chat.web.accounts import DEMO_PASSWORD, DEMO_USERS


class Command(BaseCommand):
    """`manage.py create_demo_users [--password P] [--reset]`."""

    help = (
        "Create the demo users alice, bob and carol that do not exist yet. Existing "
        "users keep their password (and their sessions) unless --reset is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Options."""
        parser.add_argument(
            "--password", default=DEMO_PASSWORD, help="password of the new users"
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="also set the password of demo users that exist (logs them out)",
        )

    def handle(self, *args: Any, password: str, reset: bool, **options: Any) -> None:
        """Create the missing users (and with --reset, reset the others)."""
        if not password:
            self.stderr.write("The password must not be empty.")
            raise SystemExit(2)
        user_model = get_user_model()
        created = []
        for name in DEMO_USERS:
            user, is_new = user_model.objects.get_or_create(username=name)
            if is_new or reset:
                user.set_password(password)
                user.save()
            if is_new:
                created.append(name)
        if created:
            self.stdout.write(
                f"Demo users {', '.join(created)} created — password: {password} "
                "(demo only)"
            )
        else:
            self.stdout.write(f"Demo users {', '.join(DEMO_USERS)} exist already.")
