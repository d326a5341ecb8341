"""Create the demo users alice, bob and carol (demo only: the password is printed)."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

DEMO_USERS = ("alice", "bob", "carol")


class Command(BaseCommand):
    """`manage.py create_demo_users [--password P]`."""

    help = "Create (or reset the password of) the demo users alice, bob and carol."

    def add_arguments(self, parser: CommandParser) -> None:
        """Options."""
        parser.add_argument(
            "--password", default="chatdemo", help="password for all of them"
        )

    def handle(self, *args: Any, password: str, **options: Any) -> None:
        """Create or update the users and print how to log in."""
        if not password:
            self.stderr.write("The password must not be empty.")
            raise SystemExit(2)
        user_model = get_user_model()
        for name in DEMO_USERS:
            user, _ = user_model.objects.get_or_create(username=name)
            user.set_password(password)
            user.save()
        self.stdout.write(
            f"Demo users {', '.join(DEMO_USERS)} — password: {password} (demo only)"
        )
