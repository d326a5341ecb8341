"""A network of its own for one server process, which a test can cut off and reconnect.

Each NodeNetwork is a Linux network namespace joined to the host by a veth pair: the
process runs inside it (`wrap(command)`) and listens on `address`; the host routes
between the namespaces, so nodes in different namespaces reach each other and the
host reaches them all. `cut()` takes the host end of the link down, so that no packet
reaches the process or leaves it; `reconnect()` brings it back. The process keeps
running throughout, unlike a killed or frozen one.

Needs root and iproute2 (`ip`); `available()` says whether this machine can.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def available() -> bool:
    """Whether namespaces can be made here: root, `ip`, and a probe namespace."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"chatproj-probe-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired):
        return False
    return True


def free_subnet() -> int:
    """A second octet `n` such that no address of this host is in 10.n.0.0/16."""
    used = subprocess.run(
        ["ip", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    for _ in range(100):
        octet = 100 + secrets.randbelow(150)
        if f" 10.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.n.0.0/16 subnet for the test networks")


class NodeNetwork:
    """The namespace and link of node `index` (1-254) in the 10.`subnet`.0.0/16 net."""

    def __init__(self, subnet: int, index: int) -> None:
        token = secrets.token_hex(2)
        self.namespace = f"chatproj-{token}-{index}"
        self.host_link = f"ck{token}h{index}"  # interface names: at most 15 bytes
        self.node_link = f"ck{token}n{index}"
        self.host_address = f"10.{subnet}.{index}.1"
        self.address = f"10.{subnet}.{index}.2"
        self.created = False
        self.is_cut = False

    def create(self) -> NodeNetwork:
        """Make the namespace, the link and the routes (idempotent)."""
        if self.created:
            return self
        IP_FORWARD.write_text("1\n")  # the host routes between the namespaces
        _ip("netns", "add", self.namespace)
        self.created = True
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name",
            self.node_link)  # fmt: skip
        _ip("link", "set", self.node_link, "netns", self.namespace)
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        inside = ["netns", "exec", self.namespace, "ip"]
        _ip(*inside, "addr", "add", f"{self.address}/24", "dev", self.node_link)
        _ip(*inside, "link", "set", self.node_link, "up")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "route", "add", "default", "via", self.host_address)
        return self

    def wrap(self, command: list[str]) -> list[str]:
        """`command` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def cut(self) -> None:
        """No packet in or out until reconnect()."""
        _ip("link", "set", self.host_link, "down")
        self.is_cut = True

    def reconnect(self) -> None:
        """Undo cut(): the link and the host's route to the node are back. Nothing
        to do for a node that is not cut."""
        if not self.is_cut:
            return
        self.is_cut = False
        _ip("link", "set", self.host_link, "up")
        subprocess.run(
            ["ip", "route", "replace", f"{self.host_address.rsplit('.', 1)[0]}.0/24",
             "dev", self.host_link, "src", self.host_address],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip

    def remove(self) -> None:
        """Delete the namespace (its end of the link goes with it, and so the pair)."""
        if not self.created:
            return
        self.created = False
        subprocess.run(
            ["ip", "netns", "del", self.namespace], capture_output=True, timeout=10
        )
        subprocess.run(
            ["ip", "link", "del", self.host_link], capture_output=True, timeout=10
        )
