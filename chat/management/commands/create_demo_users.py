"""Create the demo users alice, bob and carol that are missing (demo only)."""

import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.web.accounts import DEMO_PASSWORD, DEMO_USERS
from chatproj.embedded import port_answers, redis_address


class Command(BaseCommand):
    """`manage.py create_demo_users [--password P] [--reset] [--wait-for-redis S]`."""

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
        parser.add_argument(
            "--wait-for-redis",
            type=float,
            default=0,
            metavar="SECONDS",
            help="first wait up to SECONDS for REDIS_URL to answer (`make run` starts "
            "it alongside), so the live events of a password change are sent",
        )

    def handle(
        self,
        *args: Any,
        password: str,
        reset: bool,
        wait_for_redis: float = 0,
        **options: Any,
    ) -> None:
        """Create the missing users (and with --reset, reset the others)."""
        if not password:
            self.stderr.write("The password must not be empty.")
            raise SystemExit(2)
        if wait_for_redis > 0:
            redis_answers(wait_for_redis)
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


def redis_answers(timeout: float) -> None:
    """Return once REDIS_URL accepts connections; CommandError after `timeout` s."""
    host, port = redis_address(settings.REDIS_URL)
    deadline = time.monotonic() + timeout
    while not port_answers(host, port):
        if time.monotonic() > deadline:
            raise CommandError(f"REDIS_URL {settings.REDIS_URL} did not answer.")
        time.sleep(0.2)
