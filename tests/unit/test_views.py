"""Web pages over HTTP (the browser tests are in test_ui.py)."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)


def test_pages_need_login_and_validate_room_names(chat_users, in_memory_channel_layer):
    """Anonymous users go to the login page; bad room names never reach a room."""
    anonymous = Client()
    assert anonymous.get("/").url.startswith("/accounts/login/")
    assert anonymous.get("/chat/lobby/").status_code == 302
    client = Client()
    # Through the login form: axes needs the request (client.login has none).
    client.post("/accounts/login/", {"username": "alice", "password": "pw-alice"})
    assert client.get("/chat/lobby/").status_code == 200
    assert client.get("/chat/" + "x" * 65 + "/").status_code == 404
    assert client.get("/?room=lobby").url == "/chat/lobby/"
    page = client.get("/?room=no spaces please").content.decode()
    assert "A room name is 1-64 letters" in page
    room = client.get("/chat/lobby/").content.decode()
    # no "to" menu that could stay on a DM receiver: DMs have their own page
    assert 'id="receiver"' not in room and 'id="people-q"' in room
    assert '<script id="max-length" type="application/json">4000</script>' in room
