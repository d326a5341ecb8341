"""Rooms in the browser: a mistyped room offers to be created instead of appearing,
the home page's room directory, leaving, the topic changed live, and the notice that
a mention reached no one, with its Invite button."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from playwright.async_api import expect

from chat.models import Room, RoomMembership
from chat.services.room_lifecycle import room_create

from .browser import CONNECTED, screenshot, send, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def member(username: str, room: str) -> bool:
    """Whether the user is a member of the room."""
    return RoomMembership.objects.filter(
        user__username=username, room__name=room
    ).exists()


async def test_a_mistyped_room_is_offered_not_created_then_listed(
    asgi_server, chat_users, pages
):
    """/chat/lobyy/ says there is no such room and creates nothing; its Create button
    makes the room (public, with a topic) and opens it, connected; the home page then
    lists it with its topic, member count and a joined mark."""
    alice = await pages.open(asgi_server, "alice", "/")
    await alice.goto(f"http://{asgi_server}/chat/lobyy/")
    await expect(alice.locator("h1")).to_have_text("There is no room #lobyy")
    await expect(alice.locator("#room-list-link")).to_have_attribute("href", "/")
    assert not await database_sync_to_async(Room.objects.filter(name="lobyy").exists)()
    await alice.fill("#missing-topic", "typos welcome")
    await alice.get_by_role("button", name="Create #lobyy").click()
    await alice.wait_for_url("**/chat/lobyy/")
    await alice.wait_for_selector(CONNECTED)
    await expect(alice.locator("#room-topic")).to_have_text("typos welcome")

    await alice.goto(f"http://{asgi_server}/")
    row = alice.locator('#public-rooms tr[data-room="lobyy"]')
    await expect(row.locator(".topic")).to_have_text("typos welcome")
    await expect(row.locator(".num")).to_have_text("1")
    await expect(row.locator(".joined")).to_have_text("joined")
    await alice.fill("#room-filter input[name=q]", "typos")
    await alice.get_by_role("button", name="Filter").click()
    await expect(alice.locator("#public-rooms tbody tr")).to_have_count(1)
    await screenshot(alice, "rooms-directory")

    await alice.fill("#new-room-name", "plans")
    await alice.check("input[name=visibility][value=private]")
    await alice.get_by_role("button", name="Create room").click()
    await alice.wait_for_url("**/chat/plans/")
    await alice.wait_for_selector(CONNECTED)
    await expect(alice.locator("#room-title .badge")).to_have_text("private")
    assert pages.csp_violations == []


async def test_leave_a_room_and_join_it_again(asgi_server, chat_users, pages):
    """Bob leaves #games with a second tab open on it: he lands on the home page
    without #games in his sidebar, the other tab loses the room (no access), and the
    public list's Join button brings him back."""
    await database_sync_to_async(room_create)(
        name="games", created_by_id=chat_users["alice"].id, is_private=False
    )
    bob = await pages.open(asgi_server, "bob", "/chat/games/")
    other_tab = await bob.context.new_page()
    await other_tab.goto(f"http://{asgi_server}/chat/games/")
    await other_tab.wait_for_selector(CONNECTED)
    await expect(bob.locator('#rooms li[data-room="games"]')).to_have_count(1)

    await bob.get_by_role("button", name="Leave room").click()
    await bob.wait_for_url(f"http://{asgi_server}/")
    await expect(bob.locator('#rooms li[data-room="games"]')).to_have_count(0)
    await other_tab.wait_for_selector("#conn-state[data-state=forbidden]")
    assert not await database_sync_to_async(member)("bob", "games")

    row = bob.locator('#public-rooms tr[data-room="games"]')
    await row.get_by_role("link", name="Join").click()
    await bob.wait_for_selector(CONNECTED)
    assert await database_sync_to_async(member)("bob", "games")
    await expect(bob.locator('#rooms li[data-room="games"]')).to_have_count(1)


async def test_a_topic_change_shows_live(asgi_server, chat_users, pages):
    """Alice sets #games' topic; bob, on the room, sees it under the title without a
    reload."""
    await database_sync_to_async(room_create)(
        name="games", created_by_id=chat_users["alice"].id, is_private=False
    )
    alice = await pages.open(asgi_server, "alice", "/chat/games/")
    bob = await pages.open(asgi_server, "bob", "/chat/games/")
    await expect(bob.locator("#room-topic")).to_be_hidden()
    await alice.locator("#topic-edit summary").click()
    await alice.fill("#topic-edit input[name=topic]", "chess on Friday")
    await alice.get_by_role("button", name="Save topic").click()
    await expect(bob.locator("#room-topic")).to_have_text("chess on Friday")
    await expect(alice.locator("#room-topic")).to_have_text("chess on Friday")
    await expect(bob.locator("#topic-edit summary")).to_have_text("Edit topic")
    await screenshot(bob, "room-topic")


async def test_a_mention_of_someone_not_in_the_room_offers_to_invite(
    asgi_server, chat_users, pages
):
    """@carol in #games, which carol is not in: alice is told carol was not notified
    and its Invite button adds carol to the room."""
    await database_sync_to_async(room_create)(
        name="games", created_by_id=chat_users["alice"].id, is_private=False
    )
    alice = await pages.open(asgi_server, "alice", "/chat/games/")
    await send(alice, "@carol are you coming?")
    notice = alice.locator("#mention-notice")
    await expect(notice).to_contain_text(
        "carol is not in this room and was not notified"
    )
    await screenshot(alice, "mention-unreached")
    await notice.get_by_role("button", name="Invite carol").click()
    await wait_until(lambda: member("carol", "games"))
    await alice.wait_for_selector(CONNECTED)  # back on the room
    await send(alice, "@carol welcome")
    await expect(alice.locator("#log li.msg")).to_have_count(2)
    await expect(notice).to_be_hidden()
    assert pages.csp_violations == []
