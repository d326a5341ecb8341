"""Rooms get a topic, and the lobby exists from the start: opening a missing room no
longer creates it."""

from typing import Any

from django.db import migrations, models


def create_lobby(apps: Any, schema_editor: Any) -> None:
    """The public room a fresh installation (and `make run`) starts with."""
    apps.get_model("chat", "Room").objects.get_or_create(
        name="lobby", defaults={"is_private": False}
    )


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0006_message_client_id"),
    ]

    operations = [
        migrations.AddField(
            model_name="room",
            name="topic",
            field=models.CharField(blank=True, default="", max_length=200),
        ),
        migrations.RunPython(create_lobby, migrations.RunPython.noop),
    ]
