"""A non-browser chatproj client: log in, get a WebSocket ticket, chat.

    python examples/ws_client.py --url http://127.0.0.1:8000 --user alice \
        --password chatdemo --room lobby --send "hello from a script"

It logs in through the login form (username and password; Django's CSRF cookie and
token, as a browser does), asks `POST /api/ws-ticket/` for a ticket (session cookie
plus the CSRF token in `X-CSRFToken`), and opens `/ws/chat/<room>/?ticket=...`
without an Origin header: the ticket authenticates the socket, opens one socket only,
and expires after WS_TICKET_TTL seconds (30 by default). Each frame the server sends
is printed as one JSON line. Needs the `websockets` package.
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookiejar
import json
import re
import sys
import urllib.parse
import urllib.request


def fetch_ticket(base_url: str, username: str, password: str) -> str:
    """Log in with the login form and return a fresh WebSocket ticket."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def csrf_token() -> str:
        return next(c.value for c in jar if c.name == "csrftoken")

    login_url = f"{base_url}/accounts/login/"
    with opener.open(login_url, timeout=10) as response:
        page = response.read().decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    form = {
        "username": username,
        "password": password,
        "csrfmiddlewaretoken": match[1] if match else csrf_token(),
    }
    request = urllib.request.Request(
        login_url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Referer": login_url},
    )
    with opener.open(request, timeout=10):
        pass
    if not any(c.name == "sessionid" for c in jar):
        raise SystemExit(f"login as {username!r} failed: wrong username or password?")
    request = urllib.request.Request(
        f"{base_url}/api/ws-ticket/",
        data=b"",
        headers={"X-CSRFToken": csrf_token(), "Referer": login_url},
        method="POST",
    )
    with opener.open(request, timeout=10) as response:
        ticket: str = json.load(response)["ticket"]
    return ticket


def socket_url(base_url: str, path: str, ticket: str) -> str:
    """ws(s)://host/<path>?ticket=... for the site at base_url."""
    scheme = "wss" if base_url.startswith("https") else "ws"
    host = base_url.split("://", 1)[1].rstrip("/")
    return f"{scheme}://{host}/{path}?" + urllib.parse.urlencode({"ticket": ticket})


async def chat(url: str, messages: list[str], listen: float) -> int:
    """Send each message, print every frame; return the close code (0 if we closed)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(url, open_timeout=10) as socket:
        try:
            print(await asyncio.wait_for(socket.recv(), 10), flush=True)  # history
            for n, text in enumerate(messages):
                await socket.send(json.dumps({"message": text, "client_id": f"s{n}"}))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + listen
            while (remaining := deadline - loop.time()) > 0:
                try:
                    raw = await asyncio.wait_for(socket.recv(), remaining)
                except TimeoutError:
                    break
                if json.loads(raw).get("type") == "ping":  # the server's heartbeat:
                    await socket.send(json.dumps({"type": "pong"}))  # or it closes
                    continue
                print(raw, flush=True)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else 1006
            print(json.dumps({"closed": code}), flush=True)
            return code
    return 0


def main() -> None:
    """Command line: log in, get a ticket, send messages, print what comes back."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--send", action="append", default=[], help="repeatable")
    parser.add_argument("--listen", type=float, default=3, help="seconds to listen")
    args = parser.parse_args()
    ticket = fetch_ticket(args.url.rstrip("/"), args.user, args.password)
    url = socket_url(args.url, f"ws/chat/{args.room}/", ticket)
    sys.exit(asyncio.run(chat(url, args.send, args.listen)))


if __name__ == "__main__":
    main()
