"""The "Redis Cluster vs single server" section: what slot routing costs aioqueue.

The same measurements on two brokers in the same run, rounds interleaved (the order of the
two is swapped each round), medians:

* the harness's single ``redis-server`` (``redis://``, the main table's server);
* a local Redis Cluster of three masters (:class:`LocalCluster`, ``redis+cluster://`` with
  the three nodes as start-up nodes; the app's default prefix becomes ``{aioqueue}``, so all
  of its keys live in one slot, on the master that owns it).

Per broker and round: a pre-filled drain of N no-ops by one default ``aioqueue worker``
(as ``_flow.py``: fill with ``delay_many``, close the producer, start the worker, time the
streams draining, check every result exists), then K sequential round trips
``await (await add.delay(1, 2))`` served by that same worker (now idle). Each figure is
also reported as a ratio to the single server's of the same round.

The cluster is started here rather than with ``tests/cluster_nodes.py`` (which needs the
test extras: ``aioqueue.testing`` imports pytest) and has no replicas: "3 masters" as the
issue asks, and no replica processes competing for the cores with the worker and the
driver, so the difference is slot routing and cluster mode alone.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from typing import Any

from redis import Redis as SyncRedis

from benchmarks._redis import RedisServer, free_loopback_port

#: (key, label) of the two brokers; the first is the baseline of the ratios.
TARGETS: tuple[tuple[str, str], ...] = (
    ("single", "single redis-server"),
    ("cluster", "Redis Cluster, 3 masters"),
)
BASELINE = TARGETS[0][0]
MASTERS = 3
SETUP_TIMEOUT = 20.0


def rotation(rnd: int) -> list[str]:
    """Round ``rnd`` (1-based): single first in odd rounds, the cluster first in even ones."""
    keys = [k for k, _ in TARGETS]
    return keys if rnd % 2 else keys[::-1]


def _cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = free_loopback_port()
        if port > 55000:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    """Three cluster-mode ``redis-server`` masters on loopback, all slots assigned.

    Each node runs with the single server's flags (``benchmarks/_redis.py``: no
    persistence, loopback only) plus ``--cluster-enabled yes``; ``redis-cli --cluster
    create --cluster-replicas 0`` assigns the slots (as ``tests/cluster_nodes.py``, minus
    the replicas).
    """

    def __init__(self, masters: int = MASTERS) -> None:
        self.nodes: list[RedisServer] = []
        self.count = masters
        self.owner_port = 0

    def start(self) -> LocalCluster:
        cli = shutil.which("redis-cli") or shutil.which("redis-cli", path="/usr/bin")
        if cli is None:
            raise RuntimeError("redis-cli not found on PATH")
        for _ in range(self.count):
            port = _cluster_port()
            node = RedisServer(port=port, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"))
            self.nodes.append(node)
            node.start()
        done = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=SETUP_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError("redis-cli --cluster create failed: "
                               f"{(done.stdout + done.stderr).strip()[-300:]}")
        deadline = time.monotonic() + SETUP_TIMEOUT
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready in time")
            time.sleep(0.1)
        self.owner_port = self._owner()
        return self

    def _client(self, port: int) -> SyncRedis:
        return SyncRedis(host="127.0.0.1", port=port, socket_timeout=3.0,
                         decode_responses=True)

    def _ready(self) -> bool:
        for node in self.nodes:
            with self._client(node.port) as client:
                info = client.execute_command("CLUSTER", "INFO")
                fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
                if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != "16384":
                    return False
        return True

    def _owner(self) -> int:
        """Port of the master serving the slot of the default cluster prefix ``{aioqueue}``."""
        with self._client(self.nodes[0].port) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", "{aioqueue}"))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise RuntimeError(f"nobody serves slot {slot}")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def owner_pid(self) -> int:
        return next(n.pid for n in self.nodes if n.port == self.owner_port)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def version(self) -> str:
        return self.nodes[0].version() if self.nodes else "?"

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()


async def flush_all(clients: list[Any]) -> None:
    """FLUSHALL every master (a cluster's keys are per node)."""
    for client in clients:
        await client.flushall()
