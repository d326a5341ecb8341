"""Management commands: demo users, and `make run`'s runstack on a bare machine."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import psutil
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.http import HttpRequest

from chat.services.messages import message_create
from chat.services.outbox import message_mark_dead
from chatproj.embedded import free_port, port_answers

from ..support import ROOT, WSClient, wait_for


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


class RunStack:
    """`manage.py runstack` (what `make run` runs) on free ports, in its own session."""

    def __init__(self, tmp_path: Path) -> None:
        self.web, self.redis_port, self.kafka_port = (
            free_port(),
            free_port(),
            free_port(),
        )
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.kafka_port}",
            "PORT": str(self.web),
            "CELERY_CONCURRENCY": "1",
        }
        self.log_path = tmp_path / "run.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - for the stack's lifetime
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runstack"], cwd=ROOT, env=self.env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        """Everything the stack printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Until the web server answers and the worker is ready."""
        wait_for(lambda: port_answers("127.0.0.1", self.web), 90, what="web server")
        wait_for(
            lambda: "celery@" in self.output() and " ready." in self.output(),
            60,
            what="worker",
        )

    def child(self, fragment: str) -> psutil.Process | None:
        """The supervised process whose command line contains `fragment`."""
        runstack = psutil.Process(self.process.pid)  # direct children first
        for child in [*runstack.children(), *runstack.children(recursive=True)]:
            try:
                if fragment in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                pass
        return None

    def agent_consuming(self) -> bool:
        """The notification agent's own --check passes."""
        check = subprocess.run(
            [sys.executable, "manage.py", "run_agent", "notifications", "--check"],
            cwd=ROOT, env=self.env, capture_output=True, timeout=30,
        )  # fmt: skip
        return check.returncode == 0

    def stop(self, sig: int) -> list[psutil.Process]:
        """Send `sig` to runstack alone; the processes of its session still alive."""
        try:
            self.process.send_signal(sig)
            self.process.wait(60)
        finally:
            self.log.close()
        sid = self.process.pid
        return [p for p in psutil.process_iter() if session_of(p.pid) == sid]


def session_of(pid: int) -> int | None:
    """The session id of a process (None once it is gone)."""
    try:
        return os.getsid(pid)
    except OSError:
        return None


async def chat_round_trip(stack: RunStack, cookie: str, text: str) -> None:
    """A message sent over the WebSocket is acknowledged and published to Kafka."""
    client = await WSClient.connect(  # the lobby exists from the migrations on
        f"127.0.0.1:{stack.web}", "lobby", cookie, create_room=False
    )
    try:
        await client.expect("history")
        await client.send({"message": text})
        await client.expect("message.ack")
        status = await client.expect("message.status", timeout=45)
        assert status["status"] == "published", stack.output()[-3000:]
    finally:
        await client.close()


async def chat_round_trips(stack: RunStack, cookie: str, count: int) -> None:
    """`count` messages on one socket, each acknowledged and published to Kafka."""
    client = await WSClient.connect(
        f"127.0.0.1:{stack.web}", "lobby", cookie, create_room=False
    )
    try:
        await client.expect("history")
        for number in range(count):
            await client.send({"message": f"quiet {number}"})
            await client.expect("message.ack")
            status = await client.expect("message.status", timeout=45)
            assert status["status"] == "published", stack.output()[-3000:]
    finally:
        await client.close()


async def chat_works_again(stack: RunStack, cookie: str, text: str) -> None:
    """chat_round_trip, retried for a while: the first socket after a Redis restart
    may meet a pooled connection the restart cut (closed 1011; a browser reconnects)."""
    from websockets.exceptions import ConnectionClosedError

    deadline = time.monotonic() + 60
    while True:
        try:
            return await chat_round_trip(stack, cookie, text)
        except (ConnectionClosedError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest.mark.slow
@pytest.mark.servers  # runstack starts its own
async def test_runstack_starts_missing_servers_and_stops_on_ctrl_c(tmp_path: Path):
    """`make run`: with no Redis/Kafka answering, embedded ones start; chat works
    end to end for a demo user; SIGINT stops every process it started."""
    stack = RunStack(tmp_path)
    try:
        stack.wait_ready()
        text = stack.output()  # what the developer is told: where to go, how to log in
        assert f"http://127.0.0.1:{stack.web}/" in text
        wait_for(lambda: "password: chatdemo" in stack.output(), 30, what="demo users")
        assert port_answers("127.0.0.1", stack.redis_port)  # the embedded servers
        assert port_answers("127.0.0.1", stack.kafka_port)

        cookie = login(f"http://127.0.0.1:{stack.web}", "alice", "chatdemo")
        await chat_round_trip(stack, cookie, "hello from make run")
        wait_for(stack.agent_consuming, 60, interval=1, what="agent --check")
        # A first run has nothing to warn about: the demo users are created once the
        # embedded Redis answers, so no live event of theirs fails.
        assert " not sent" not in text and " not sent" not in stack.output()
        # What a person reads: 20 messages add no line per message to the output.
        before = stack.output().count("\n")
        await chat_round_trips(stack, cookie, 20)
        added = stack.output().splitlines()[before:]
        assert len(added) < 20, "\n".join(added[-60:])
    finally:
        leftovers = stack.stop(signal.SIGINT)
    assert leftovers == [], stack.output()
    assert not port_answers("127.0.0.1", stack.web)
    assert not port_answers("127.0.0.1", stack.redis_port)
    assert not port_answers("127.0.0.1", stack.kafka_port)


@pytest.mark.slow
@pytest.mark.servers  # runstack starts its own
async def test_runstack_restarts_crashed_processes_and_stops_on_sigterm(
    tmp_path: Path,
):
    """kill -9 of the worker, the web server, the agent and the embedded Redis: each
    is restarted (one log line each) and chat works again; SIGTERM stops them all."""
    stack = RunStack(tmp_path)
    try:
        stack.wait_ready()
        cookie = login(f"http://127.0.0.1:{stack.web}", "alice", "chatdemo")
        wait_for(stack.agent_consuming, 60, interval=1, what="agent --check")
        crashes = [
            ("worker", "celery -A chatproj worker"),
            ("web", "uvicorn chatproj.asgi"),
            ("notifications", "run_agent notifications"),
            ("redis", "valkey-server"),
        ]
        for name, fragment in crashes:
            victim = stack.child(fragment)
            assert victim is not None, f"no {name} under runstack"
            victim.kill()

            def restarted(fragment: str = fragment, old: int = victim.pid) -> bool:
                child = stack.child(fragment)
                return child is not None and child.pid != old and child.is_running()

            wait_for(restarted, 30, what=f"{name} restarted")
            line = f"exited: {name} (terminated by SIGKILL; not expected)"
            wait_for(lambda text=line: text in stack.output(), 10, what=line)
            assert stack.output().count(line) == 1  # one line per restart
            wait_for(
                lambda: port_answers("127.0.0.1", stack.web), 30, what="web answers"
            )
            health = urllib.request.urlopen(
                f"http://127.0.0.1:{stack.web}/healthz", timeout=10
            )
            assert health.status == 200
            if name == "notifications":
                wait_for(stack.agent_consuming, 60, interval=1, what="agent back")
            else:
                await chat_works_again(stack, cookie, f"after the {name} crash")
    finally:
        leftovers = stack.stop(signal.SIGTERM)
    assert leftovers == [], stack.output()
    assert not port_answers("127.0.0.1", stack.web)
    assert not port_answers("127.0.0.1", stack.redis_port)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("stack")
def test_republish_pending_and_dead_letters_commands(chat_users, capsys):
    """Operators sweep on demand, list dead messages and re-drive them; bad ids are refused."""
    from django.core.management.base import CommandError

    from chat.models import Message

    alice = chat_users["alice"].id
    pending = message_create(
        room_name="ops", sender_id=alice, receiver_id=None, content="p"
    )
    dead = message_create(
        room_name="ops", sender_id=alice, receiver_id=None, content="d"
    )
    message_mark_dead(message=dead, reason="MessageSizeTooLargeError: too big")

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


def test_supervisor_config_restarts_every_procfile_process(settings):
    """Each Procfile process runs under supervisord with autorestart and backoff;
    embedded servers start first and stop last; `%` reaches the shell unharmed."""
    import configparser

    from chat.management.commands.runstack import procfile_commands, supervisor_config

    commands = procfile_commands(ROOT / "Procfile")
    assert {"web", "worker", "beat", "agents", "redis", "kafka"} <= set(commands)
    commands["web"] += " --note 100%"
    config = configparser.ConfigParser(interpolation=configparser.BasicInterpolation())
    config.read_string(
        supervisor_config(commands, list(commands), ROOT / ".run", "8000")
    )
    for name in commands:
        program = config[f"program:{name}"]
        assert program["autorestart"] == "true" and int(program["startretries"]) > 0
        assert program["stopasgroup"] == program["killasgroup"] == "true"
        server = name in ("redis", "kafka")
        assert int(program["priority"]) == (10 if server else 100)
    assert config["program:web"]["command"].endswith("--note 100%'")


def test_runstack_runs_one_run_agent_per_registered_agent(monkeypatch):
    """`make run` starts web, worker, beat and every agent of the registry (no agent
    without Kafka), each as `run_agent <name>`: an agent added to the registry is
    started without any other change."""
    from chat.agents import registry
    from chat.management.commands.runstack import (
        stack_commands,
        stack_processes,
        supervisor_config,
    )

    counter = registry.RunnableAgent(
        "message-counter",
        "examples.stream_agent.message_counter.MessageCounterAgent",
        "counts messages per room",
    )
    monkeypatch.setitem(registry.AGENTS, counter.name, counter)
    assert stack_processes(True) == [
        "web",
        "worker",
        "beat",
        "notifications",
        counter.name,
    ]
    assert stack_processes(False) == ["web", "worker", "beat"]
    commands = stack_commands(ROOT / "Procfile")
    for name in registry.AGENTS:
        assert commands[name] == f"python manage.py run_agent {name}"
    config = supervisor_config(commands, stack_processes(True), ROOT / ".run", "8000")
    assert "[program:message-counter]" in config
    assert "exec python manage.py run_agent message-counter" in config
