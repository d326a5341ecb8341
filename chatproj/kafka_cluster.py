"""A real Apache Kafka (KRaft) cluster on this machine, from the jars on Maven Central.

For tests and benchmarks that need the real broker rather than Tansu: replication,
min.insync.replicas, leader elections, idempotent producers, transactions. Each node is
a combined broker and controller (`process.roles=broker,controller`) in its own JVM,
with a static quorum of all nodes. Nodes listen on 127.0.0.1, or, with
`isolated_network=True`, each in a network namespace of its own (chatproj.netns) so
that a test can cut one off the network.

    python -m chatproj.kafka_cluster fetch            # the jars, into .cache/kafka/
    python -m chatproj.kafka_cluster run --nodes 3    # a cluster until Ctrl-C

The jars come from deploy/kafka/pom.xml (`mvn dependency:copy-dependencies`);
KAFKA_VERSION below is the version that pom pins and the apache/kafka image tag that
docker-compose.yml runs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from chatproj.embedded import port_answers
from chatproj.netns import NodeNetwork, free_subnet

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J_CONFIG = ROOT / "deploy" / "kafka" / "log4j2.properties"
LOG4J_TOOLS_CONFIG = ROOT / "deploy" / "kafka" / "log4j2-tools.properties"
# The jars go to $KAFKA_CACHE_DIR/<version>/libs (default: .cache/kafka, git-ignored).
CACHE_ENV = "KAFKA_CACHE_DIR"
HEAP_OPTS = ["-Xms256m", "-Xmx512m"]
JVM_OPTS = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]
HOST = "127.0.0.1"

T = TypeVar("T")


class KafkaUnavailable(RuntimeError):
    """Java or Maven is missing, or the jars could not be fetched."""


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of `version` are kept ($KAFKA_CACHE_DIR or .cache/kafka)."""
    base = os.environ.get(CACHE_ENV) or ROOT / ".cache" / "kafka"
    return Path(base) / version


def java_bin() -> str:
    """The `java` to run Kafka with ($JAVA_HOME/bin/java, else the one on PATH)."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaUnavailable(
            "Kafka needs Java 17+ and no `java` is on PATH "
            "(apt-get install openjdk-17-jre-headless, or set JAVA_HOME)."
        )
    return found


def _libs_complete(libs: Path) -> bool:
    return (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file() and (
        libs / ".complete"
    ).is_file()


def fetch_kafka() -> Path:
    """The directory of Kafka's jars, fetched with Maven the first time (idempotent);
    KafkaUnavailable without java (or without mvn when they are missing)."""
    java_bin()  # no use for the jars without it
    libs = cache_dir() / "libs"
    if _libs_complete(libs):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaUnavailable(
            f"Kafka {KAFKA_VERSION}'s jars are not in {libs} and `mvn` is not on PATH "
            "to fetch them (apt-get install maven, then `make kafka-fetch`)."
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    # One fetch at a time (parallel test sessions); the loser finds the jars there.
    with open(libs.parent / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _libs_complete(libs):
            return libs
        partial = libs.parent / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        logger.info("fetching Kafka %s's jars into %s", KAFKA_VERSION, libs)
        result = subprocess.run(
            [
                mvn, "-q", "-B", "-f", str(POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={partial}",
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise KafkaUnavailable(
                f"mvn could not fetch Kafka {KAFKA_VERSION} ({POM}):\n"
                + (result.stdout + result.stderr)[-4000:]
            )
        if not (partial / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise KafkaUnavailable(
                f"{POM} did not bring kafka_2.13-{KAFKA_VERSION}.jar: its "
                "kafka.version and KAFKA_VERSION in chatproj/kafka_cluster.py differ."
            )
        (partial / ".complete").write_text(KAFKA_VERSION + "\n")
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        logger.info("fetched Kafka's jars in %.1fs", time.monotonic() - started)
    return libs


def java_command(
    libs: Path, main_class: str, *args: str, log_dir: Path, tool: bool = False
) -> list[str]:
    """Command line running `main_class` of Kafka's jars with small-heap JVM flags
    (`tool`: a command-line tool, logging warnings only, to stderr)."""
    return [
        java_bin(),
        *(["-Xmx256m", "-XX:TieredStopAtLevel=1"] if tool else HEAP_OPTS),
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={LOG4J_TOOLS_CONFIG if tool else LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={log_dir}",
        "-cp",
        f"{libs}/*",
        main_class,
        *args,
    ]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 as Kafka's Uuid prints."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # would read as an option on a command line
            return text


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll `condition` until it returns something truthy; TimeoutError after
    `timeout` seconds (naming the last exception the condition raised)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
        except Exception as exc:  # brokers starting or failing over: retry
            result, last_error = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            hint = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{hint}")
        time.sleep(interval)


@contextlib.contextmanager
def admin_client(bootstrap: str, timeout: float = 10.0) -> Iterator[Any]:
    """A kafka-python KafkaAdminClient on `bootstrap`, closed on exit."""
    from kafka import KafkaAdminClient

    timeout_ms = int(timeout * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="chatproj-kafka-cluster",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        reconnect_backoff_max_ms=1000,
    )
    try:
        yield admin
    finally:
        admin.close()


class KafkaNode:
    """One combined KRaft broker and controller of a KafkaCluster, in its own JVM."""

    def __init__(
        self,
        cluster: KafkaCluster,
        node_id: int,
        port: int,
        controller_port: int,
        directory: Path,
        network: NodeNetwork | None = None,
    ) -> None:
        self.cluster = cluster
        self.network = network
        self.host = network.address if network is not None else HOST
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self.directory = directory
        self.data_dir = directory / "data"
        self.config_path = directory / "server.properties"
        self.log_path = directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "alive" if self.alive else "down"
        return f"<KafkaNode {self.node_id} {self.address} {state}>"

    @property
    def address(self) -> str:
        """host:port of this node's broker listener."""
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether the JVM is running (frozen counts as running)."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        return self.process.pid if self.alive and self.process else None

    def rss_bytes(self) -> int:
        """Resident memory of the JVM (0 when not running)."""
        pid = self.pid
        if pid is None:
            return 0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def write_config(self) -> None:
        """Write server.properties from the cluster's configuration of this node."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.cluster.config(self).items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def formatted(self) -> bool:
        """Whether StorageTool has formatted this node's log dir."""
        return (self.data_dir / "meta.properties").is_file()

    def format_command(self) -> list[str]:
        """StorageTool's command line formatting this node's log dir."""
        self.write_config()
        return java_command(
            self.cluster.libs,
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "--cluster-id", self.cluster.cluster_id,
            "--config", str(self.config_path),
            log_dir=self.directory,
            tool=True,
        )  # fmt: skip

    def format_storage(self) -> None:
        """Format the log dir with Kafka's StorageTool (once: kept across restarts)."""
        if not self.formatted:
            _run_all([self.format_command()], f"StorageTool (node {self.node_id})")

    def launch(self) -> None:
        """Start the JVM (its own session; output to log_path) without waiting."""
        if self.alive:
            return
        self.format_storage()
        self.write_config()
        command = java_command(
            self.cluster.libs,
            "kafka.Kafka",
            str(self.config_path),
            log_dir=self.directory,
        )
        if self.network is not None:
            command = self.network.create().wrap(command)
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting node {self.node_id} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        logger.info("kafka node %s started (pid %s)", self.node_id, self.process.pid)

    def answers(self) -> bool:
        """Whether this broker serves requests and lists itself among the brokers."""
        if not self.alive or not port_answers(self.host, self.port):
            return False
        with admin_client(self.address, timeout=3.0) as admin:
            brokers = admin.describe_cluster()["brokers"]
        return self.node_id in _unfenced(brokers)

    def wait_answering(self, timeout: float = 60.0) -> None:
        """Wait until the broker answers; RuntimeError if the JVM exits meanwhile."""

        def answering() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise _Exited(
                    f"kafka node {self.node_id} exited with "
                    f"{self.process.returncode}; see {self.log_path}"
                )
            return self.answers()

        try:
            wait_until(answering, timeout, f"kafka node {self.node_id} to answer")
        except _Exited as exc:
            raise RuntimeError(str(exc)) from None
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; see {self.log_path}") from None

    def start(self, timeout: float = 60.0) -> KafkaNode:
        """(Re)start this node with its dirs and ports; wait until it answers."""
        self.launch()
        self.wait_answering(timeout)
        return self

    def _signal(self, sig: int) -> None:
        if self.alive and self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the JVM (a crash: no controlled shutdown) and reap it."""
        if self.process is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (controlled shutdown) and wait; SIGKILL after `timeout` seconds."""
        if self.process is None:
            return
        self._signal(signal.SIGCONT)  # a frozen JVM cannot shut down
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("kafka node %s ignored SIGTERM: killing it", self.node_id)
            self.kill()

    def freeze(self) -> None:
        """SIGSTOP the JVM: it holds its connections but answers nothing."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen JVM."""
        self._signal(signal.SIGCONT)

    def cut(self) -> None:
        """Cut the running node off the network (isolated_network clusters only)."""
        if self.network is None:
            raise RuntimeError("cut() needs KafkaCluster(isolated_network=True)")
        self.network.cut()

    def reconnect(self) -> None:
        """Undo cut()."""
        if self.network is not None:
            self.network.reconnect()


class _Exited(Exception):
    pass


def _run_all(commands: list[list[str]], what: str, timeout: float = 120.0) -> None:
    """Run the commands at once and wait for all; RuntimeError if one fails."""
    processes = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        for command in commands
    ]
    failures = []
    for process in processes:
        output, _ = process.communicate(timeout=timeout)
        if process.returncode != 0:
            failures.append(output.decode(errors="replace")[-4000:])
    if failures:
        raise RuntimeError(f"{what} failed:\n" + "\n".join(failures))


def _unfenced(brokers: list[dict[str, Any]]) -> set[int]:
    """Ids of the unfenced brokers in KafkaAdminClient.describe_cluster()'s list."""
    return {b["broker_id"] for b in brokers if not b.get("is_fenced", False)}


class KafkaCluster:
    """`size` combined KRaft broker+controller nodes on 127.0.0.1 (node ids 1..size).

    `min_insync_replicas` defaults to 2 from 3 nodes on, else 1; `extra_config`
    overrides any broker setting (for instance `producer.id.expiration.ms`). Data and
    logs live under `base_dir` (a temporary directory, removed on close, by default).
    """

    def __init__(
        self,
        size: int = 1,
        *,
        base_dir: Path | None = None,
        min_insync_replicas: int | None = None,
        extra_config: dict[str, str] | None = None,
        isolated_network: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.size = size
        self.min_insync_replicas = (
            min_insync_replicas
            if min_insync_replicas is not None
            else (2 if size >= 3 else 1)
        )
        self.extra_config = dict(extra_config or {})
        self._own_base_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="chatproj-kafka-"))
            if base_dir is None
            else Path(base_dir)
        )
        self.cluster_id = random_cluster_id()
        self._libs: Path | None = None
        ports = free_ports(2 * size)
        subnet = free_subnet() if isolated_network else 0
        self.nodes = [
            KafkaNode(
                self,
                node_id,
                ports[2 * index],
                ports[2 * index + 1],
                self.base_dir / f"node-{node_id}",
                NodeNetwork(subnet, node_id) if isolated_network else None,
            )
            for index, node_id in enumerate(range(1, size + 1))
        ]

    def __repr__(self) -> str:
        return f"<KafkaCluster {self.size} nodes {self.bootstrap}>"

    @property
    def libs(self) -> Path:
        """Kafka's jars (fetched on first use)."""
        if self._libs is None:
            self._libs = fetch_kafka()
        return self._libs

    @property
    def bootstrap(self) -> str:
        """bootstrap.servers for clients: every node's host:port, comma-separated."""
        return ",".join(node.address for node in self.nodes)

    @property
    def quorum_voters(self) -> str:
        """controller.quorum.voters: id@host:controller_port of every node."""
        return ",".join(
            f"{node.node_id}@{node.host}:{node.controller_port}" for node in self.nodes
        )

    def node(self, node_id: int) -> KafkaNode:
        """The node with this id."""
        return self.nodes[node_id - 1]

    def config(self, node: KafkaNode) -> dict[str, str]:
        """server.properties of `node`: test-friendly defaults, then extra_config."""
        replication = str(min(self.size, 3))
        min_isr = str(self.min_insync_replicas)
        config = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": self.quorum_voters,
            "listeners": (
                f"PLAINTEXT://{node.host}:{node.port},"
                f"CONTROLLER://{node.host}:{node.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{node.address}",
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(node.data_dir),
            # Topics are created explicitly, as in production (docker-compose.yml).
            "auto.create.topics.enable": "false",
            "num.partitions": "3",
            "default.replication.factor": replication,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replication,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "group.consumer.min.session.timeout.ms": "1000",
            "group.min.session.timeout.ms": "1000",
            # A test may then set a short producer.id.expiration.ms (extra_config).
            "producer.id.expiration.check.interval.ms": "1000",
            # Quick failure detection and failover: a killed node is fenced after 3s,
            # a lost quorum leader replaced after ~1s, a stuck follower out of the ISR
            # after 5s (production defaults: 9s, 2s, 30s).
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            "controller.quorum.election.timeout.ms": "1000",
            "controller.quorum.fetch.timeout.ms": "2000",
            "replica.lag.time.max.ms": "5000",
            "unclean.leader.election.enable": "false",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        }
        config.update(self.extra_config)
        return config

    def start(self, timeout: float = 90.0) -> KafkaCluster:
        """Fetch the jars if needed, format (first time) and start every node; wait
        until all `size` brokers are registered and answer."""
        libs = self.libs  # fetched before the clock starts
        started = time.monotonic()
        logger.info("starting %s Kafka node(s) from %s", self.size, libs)
        try:
            _run_all(
                [node.format_command() for node in self.nodes if not node.formatted],
                "StorageTool format",
            )
            for node in self.nodes:
                node.launch()
            self.wait_ready(timeout - (time.monotonic() - started))
        except BaseException:
            self.close()
            raise
        logger.info(
            "Kafka cluster ready in %.1fs at %s",
            time.monotonic() - started,
            self.bootstrap,
        )
        return self

    def _admin(self, timeout: float = 10.0) -> contextlib.AbstractContextManager[Any]:
        alive = [node.address for node in self.nodes if node.alive]
        if not alive:
            raise RuntimeError("no Kafka node is running")
        return admin_client(",".join(alive), timeout)

    def registered_brokers(self) -> set[int]:
        """Ids of the brokers the cluster metadata lists now (live, unfenced)."""
        with self._admin() as admin:
            return _unfenced(admin.describe_cluster()["brokers"])

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every running node answers and the metadata lists exactly the
        running brokers (all `size` after start())."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.alive:
                node.wait_answering(max(deadline - time.monotonic(), 1.0))
        expected = {node.node_id for node in self.nodes if node.alive}
        wait_until(
            lambda: self.registered_brokers() == expected,
            max(deadline - time.monotonic(), 1.0),
            f"brokers {sorted(expected)} registered",
        )

    def under_replicated_partitions(self) -> list[tuple[str, int]]:
        """(topic, partition) of every partition whose ISR is short of its replicas
        or that has no leader."""
        with self._admin() as admin:
            topics = admin.describe_topics()
        short = []
        for topic in topics:
            for partition in topic["partitions"]:
                if partition["leader_id"] < 0 or len(partition["isr_nodes"]) < len(
                    partition["replica_nodes"]
                ):
                    short.append((topic["name"], partition["partition_index"]))
        return short

    def describe_partition(self, topic: str, partition: int) -> dict[str, Any]:
        """kafka-python's metadata of one partition (leader_id, replica_nodes,
        isr_nodes, ...), from KafkaAdminClient.describe_topics (a MetadataRequest)."""
        with self._admin() as admin:
            (described,) = admin.describe_topics([topic])
        for item in described["partitions"]:
            if item["partition_index"] == partition:
                return dict(item)
        raise LookupError(f"{topic} has no partition {partition}")

    def leader_of(self, topic: str, partition: int = 0) -> KafkaNode:
        """The node leading `topic`/`partition` now, per the brokers' metadata
        (KafkaAdminClient.describe_topics); LookupError while it has no leader."""
        leader = self.describe_partition(topic, partition)["leader_id"]
        if leader < 0:
            raise LookupError(f"{topic}/{partition} has no leader")
        return self.node(leader)

    def wait_leader(
        self, topic: str, partition: int = 0, timeout: float = 30.0, *, not_on: Any = ()
    ) -> KafkaNode:
        """Wait until `topic`/`partition` has a leader, a running one not among
        `not_on` (nodes); return it."""
        excluded = {node.node_id for node in not_on}

        def elected() -> KafkaNode | None:
            node = self.leader_of(topic, partition)
            if node.alive and node.node_id not in excluded:
                return node
            return None

        return wait_until(elected, timeout, f"a leader of {topic}/{partition}")

    def describe_quorum(self) -> dict[str, Any]:
        """The KRaft metadata quorum (leader_id, voters, ...): the DescribeQuorum API
        (KafkaAdminClient.describe_metadata_quorum), which brokers forward to the
        active controller."""
        with self._admin() as admin:
            result = admin.describe_metadata_quorum()
        partition = result["topics"][0]["partitions"][0]
        if partition.get("error"):
            raise RuntimeError(f"DescribeQuorum failed: {partition['error']}")
        return dict(partition)

    def active_controller(self) -> KafkaNode:
        """The node leading the KRaft metadata quorum (the active controller)."""
        leader = self.describe_quorum()["leader_id"]
        if leader < 0:
            raise LookupError("the metadata quorum has no leader")
        return self.node(leader)

    def wait_active_controller(
        self, timeout: float = 30.0, *, not_on: Any = ()
    ) -> KafkaNode:
        """Wait until the metadata quorum has a leader, a running node not among
        `not_on` (nodes); return it."""
        excluded = {node.node_id for node in not_on}

        def elected() -> KafkaNode | None:
            node = self.active_controller()
            if node.alive and node.node_id not in excluded:
                return node
            return None

        return wait_until(elected, timeout, "an active controller")

    def metadata_quorum_command(self, *args: str, timeout: float = 60.0) -> str:
        """Output of Kafka's kafka-metadata-quorum tool (MetadataQuorumCommand) run
        against a running node's controller listener, e.g. `describe --status`."""
        node = next((node for node in self.nodes if node.alive), None)
        if node is None:
            raise RuntimeError("no Kafka node is running")
        command = java_command(
            self.libs,
            "org.apache.kafka.tools.MetadataQuorumCommand",
            "--bootstrap-controller", f"{node.host}:{node.controller_port}",
            *args,
            log_dir=self.base_dir,
            tool=True,
        )  # fmt: skip
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"MetadataQuorumCommand {' '.join(args)} failed:\n{result.stderr}"
            )
        return result.stdout

    def create_topic(
        self,
        name: str,
        partitions: int = 3,
        replication_factor: int | None = None,
        config: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Create a topic (replication factor min(size, 3) unless given) and wait
        until every partition has a leader."""
        replicas = (
            replication_factor if replication_factor is not None else min(self.size, 3)
        )
        with self._admin(timeout) as admin:
            admin.create_topics(
                {
                    name: {
                        "num_partitions": partitions,
                        "replication_factor": replicas,
                        "configs": dict(config or {}),
                    }
                },
                timeout_ms=int(timeout * 1000),
            )
        for partition in range(partitions):
            self.wait_leader(name, partition, timeout)

    def heal(self, timeout: float = 90.0) -> None:
        """Thaw frozen nodes, start stopped or killed ones and wait until ready: what
        a test that broke a shared cluster runs when it ends."""
        for node in self.nodes:
            node.thaw()
            node.reconnect()
            node.launch()
        self.wait_ready(timeout)

    def restart_all(self, timeout: float = 90.0) -> None:
        """Stop every node (all at once), start them again and wait until ready."""
        for node in self.nodes:
            node._signal(signal.SIGCONT)
            node._signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()
        started = time.monotonic()
        for node in self.nodes:
            node.launch()
        self.wait_ready(timeout - (time.monotonic() - started))

    def rolling_restart(self, timeout: float = 120.0) -> None:
        """Restart the nodes one at a time; before the next, wait until the node
        answers, is registered and no partition is under-replicated."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.stop()
            node.start(max(deadline - time.monotonic(), 1.0))
            self.wait_ready(max(deadline - time.monotonic(), 1.0))
            wait_until(
                lambda: not self.under_replicated_partitions(),
                max(deadline - time.monotonic(), 1.0),
                f"no under-replicated partition after restarting node {node.node_id}",
            )

    def rss_bytes(self) -> dict[int, int]:
        """Resident memory of each running node's JVM, by node id."""
        return {node.node_id: node.rss_bytes() for node in self.nodes if node.alive}

    def logs(self, tail: int = 4000) -> str:
        """The end of every node's log, for a failing test's output."""
        parts = []
        for node in self.nodes:
            text = ""
            with contextlib.suppress(OSError):
                text = node.log_path.read_text(errors="replace")[-tail:]
            parts.append(f"--- kafka node {node.node_id} ({node.log_path}) ---\n{text}")
        return "\n".join(parts)

    def close(self) -> None:
        """Stop every node and remove base_dir when the cluster made it."""
        for node in self.nodes:
            node._signal(signal.SIGCONT)
            node._signal(signal.SIGTERM)
        for node in self.nodes:
            node.reconnect()
            node.stop(timeout=20.0)
            if node.network is not None:
                node.network.remove()
        if self._own_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    """`fetch` the jars, or `run` a cluster in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m chatproj.kafka_cluster",
        description=f"Apache Kafka {KAFKA_VERSION} (KRaft) on 127.0.0.1.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch Kafka's jars (Maven) into the cache")
    run = commands.add_parser("run", help="run a cluster until Ctrl-C")
    run.add_argument("--nodes", type=int, default=1)
    run.add_argument("--min-insync-replicas", type=int, default=None)
    run.add_argument(
        "--dir", type=Path, default=None, help="data dir (kept; default: temporary)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # kafka-python's chatter
    try:
        if args.command == "fetch":
            print(fetch_kafka())
            return
        cluster = KafkaCluster(
            args.nodes,
            base_dir=args.dir,
            min_insync_replicas=args.min_insync_replicas,
        )
        # Ctrl-C even when started in the background (which ignores SIGINT), and
        # SIGTERM: both stop the nodes and remove their temporary data.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with cluster:
            print(f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap}", flush=True)
            print(f"logs: {cluster.base_dir}/node-*/server.log", flush=True)
            print("Ctrl-C stops it.", flush=True)
            while all(node.alive for node in cluster.nodes):
                time.sleep(1)
            print("a node exited:\n" + cluster.logs(2000), file=sys.stderr)
            sys.exit(1)
    except KafkaUnavailable as exc:
        sys.exit(str(exc))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
