"""Management commands: demo users, and `make run`'s runstack on a bare machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.http import HttpRequest

from chatproj.embedded import free_port, port_answers

from .support import ROOT, WSClient, wait_for


@pytest.mark.django_db
def test_create_demo_users_creates_only_missing_ones_and_keeps_passwords(capsys):
    """A second run (every `make run`) changes no password, so nobody is logged out;
    a missing user is created; --reset is the explicit way to reset them."""
    call_command("create_demo_users")
    assert "password: chatdemo" in capsys.readouterr().out
    get_user_model().objects.get(username="bob").delete()
    alice = get_user_model().objects.get(username="alice")
    alice.set_password("alice-own-pass")
    alice.save()
    call_command("create_demo_users", password="s3cret-pass")
    assert "Demo users bob created" in capsys.readouterr().out

    def logs_in(name: str, password: str) -> bool:
        # axes throttles logins per request, so authenticate needs one
        request = HttpRequest()
        return authenticate(request, username=name, password=password) is not None

    assert logs_in("alice", "alice-own-pass") and logs_in("carol", "chatdemo")
    assert logs_in("bob", "s3cret-pass")
    call_command("create_demo_users")
    assert "exist already" in capsys.readouterr().out
    call_command("create_demo_users", password="reset-all", reset=True)
    assert all(logs_in(name, "reset-all") for name in ("alice", "bob", "carol"))


@pytest.mark.django_db
def test_create_demo_users_refuses_empty_password():
    """An empty password is refused with a message, not stored."""
    with pytest.raises(SystemExit):
        call_command("create_demo_users", password="")


def login(base: str, username: str, password: str) -> str:
    """Log in through the real login form; return the session cookie."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/accounts/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    ).encode()
    request = urllib.request.Request(
        f"{base}/accounts/login/",
        data=form,
        headers={"Referer": f"{base}/accounts/login/"},
    )
    landing = opener.open(request, timeout=10)
    assert landing.url.rstrip("/") == base, "login did not redirect to the room list"
    return next(c.value for c in jar if c.name == "sessionid")


@pytest.mark.slow
@pytest.mark.servers  # runstack starts its own
async def test_runstack_starts_missing_servers_and_stops_on_ctrl_c(tmp_path: Path):
    """`make run`: with no Redis/Kafka answering, embedded ones start; chat works
    end to end for a demo user; SIGINT stops every process it started."""
    web, redis_port, kafka_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
        "PORT": str(web),
        "CELERY_CONCURRENCY": "1",
    }
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runstack"], cwd=ROOT, env=env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def output():
        return (tmp_path / "run.log").read_text(errors="replace")

    try:
        wait_for(lambda: port_answers("127.0.0.1", web), 90, what="web server")
        wait_for(
            lambda: "celery@" in output() and " ready." in output(), 60, what="worker"
        )
        text = output()  # what the developer is told: where to go, how to log in
        assert f"http://127.0.0.1:{web}/" in text
        assert "password: chatdemo" in text
        assert port_answers("127.0.0.1", redis_port)  # the embedded servers it started
        assert port_answers("127.0.0.1", kafka_port)

        cookie = login(f"http://127.0.0.1:{web}", "alice", "chatdemo")
        client = await WSClient.connect(f"127.0.0.1:{web}", "lobby", cookie)
        await client.expect("history")
        await client.send({"message": "hello from make run"})
        await client.expect("message.ack")
        assert (await client.expect("message.status", timeout=30))[
            "status"
        ] == "published"
        await client.close()

        def agent_consuming() -> bool:  # the notification agent runs too
            check = subprocess.run(
                [sys.executable, "manage.py", "run_agent", "notifications", "--check"],
                cwd=ROOT, env=env, capture_output=True, timeout=30,
            )  # fmt: skip
            return check.returncode == 0

        wait_for(agent_consuming, 60, interval=1, what="notification agent --check")
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        finally:
            log.close()
    leftovers = subprocess.run(
        ["pgrep", "-s", str(process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == [], output()
    assert not port_answers("127.0.0.1", web)
    assert not port_answers("127.0.0.1", redis_port)
    assert not port_answers("127.0.0.1", kafka_port)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("stack")
def test_republish_pending_and_dead_letters_commands(chat_users, capsys):
    """Operators sweep on demand, list dead messages and re-drive them; bad ids are refused."""
    from django.core.management.base import CommandError

    from chat import services
    from chat.models import Message

    alice = chat_users["alice"].id
    pending = services.message_create(
        room_name="ops", sender_id=alice, receiver_id=None, content="p"
    )
    dead = services.message_create(
        room_name="ops", sender_id=alice, receiver_id=None, content="d"
    )
    services.message_mark_dead(message=dead, reason="MessageSizeTooLargeError: too big")

    call_command("republish_pending")
    assert "Re-enqueued 0 message(s)." in capsys.readouterr().out  # still in grace
    call_command("republish_pending", "--all")
    out = capsys.readouterr().out
    assert "Re-enqueued 1 message(s)." in out and str(pending.message_id) in out
    with pytest.raises(SystemExit):
        call_command("republish_pending", "--limit", "0")

    call_command("dead_letters")
    out = capsys.readouterr().out
    assert (
        "1 dead message(s)." in out and str(dead.message_id) in out and "too big" in out
    )
    with pytest.raises(CommandError, match="not a message id"):
        call_command("dead_letters", "--redrive", "garbage")
    call_command("dead_letters", "--redrive", str(pending.message_id))
    captured = capsys.readouterr()
    assert "Re-driven 0" in captured.out and "not a dead message" in captured.err
    call_command("dead_letters", "--redrive-all")
    assert "Re-driven 1 dead message(s)." in capsys.readouterr().out
    assert Message.objects.get(pk=dead.pk).status == "pending"
