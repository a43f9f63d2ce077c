"""A real Redis Cluster on loopback for the tests: three masters and three replicas.

Used by ``tests/test_cluster.py`` (a cluster of its own, which it changes: a slot move, a
failover) and by ``conftest.py``'s ``any_app`` (the behavioural suite's ``cluster`` layout).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis

from aioqueue.broker._cluster import key_slot
from aioqueue.testing import RedisServer, free_port

#: The slot of an app with the default prefix on a cluster (``{aioqueue}``).
SLOT = key_slot("{aioqueue}")
SETUP_TIMEOUT_S = 20.0


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port > 55000:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class ClusterNodes:
    """Three masters and three replicas on loopback, slots all served, replicas in sync."""

    def __init__(self) -> None:
        self.servers: list[RedisServer] = []
        for _ in range(6):
            port = _cluster_port()
            self.servers.append(RedisServer(port=port, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "1000")))

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found on PATH: run `make test`")
        for server in self.servers:
            server.start()
        done = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, timeout=SETUP_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]!r}"
                               f"{done.stderr[-2000:]!r}")
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready in time")
            time.sleep(0.1)

    def _ready(self) -> bool:
        for server in self.alive():
            with self.client(server.port) as client:
                info = client.cluster("INFO")
                if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
                role = client.execute_command("ROLE")
                if role[0] == "slave" and role[3] != "connected":
                    return False
        return True

    @staticmethod
    def client(port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=3.0, decode_responses=True)

    def alive(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None]

    def url(self, first: int | None = None) -> str:
        ports = [s.port for s in self.alive()]
        if first is not None:  # asked first (a dead start-up node must be skipped)
            ports.remove(first)
            ports.insert(0, first)
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:3])

    def node_ids(self) -> dict[int, str]:
        with self.client(self.alive()[0].port) as client:
            nodes = client.execute_command("CLUSTER", "NODES")
        ids: dict[int, str] = {}
        for line in (nodes if isinstance(nodes, str) else "").splitlines():
            fields = line.split()
            ids[int(fields[1].split("@")[0].rsplit(":", 1)[1])] = fields[0]
        return ids

    def owner(self, slot: int = SLOT) -> int:
        """The port of the master serving ``slot``, as the nodes agree on it now."""
        with self.client(self.alive()[0].port) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise AssertionError(f"nobody serves slot {slot}")

    def masters(self) -> list[int]:
        ports = []
        for server in self.alive():
            with self.client(server.port) as client:
                if client.execute_command("ROLE")[0] == "master":
                    ports.append(server.port)
        return ports

    def replica_of(self, port: int, timeout: float = SETUP_TIMEOUT_S) -> int:
        """The port of the master's replica, once it is attached (on a loaded machine its
        link can be down for a moment, and ROLE then lists no replica)."""
        deadline = time.monotonic() + timeout
        with self.client(port) as client:
            while not (role := client.execute_command("ROLE"))[2]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the master on {port} has no replica attached")
                time.sleep(0.05)
        return int(role[2][0][1])

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def cleanup(self) -> None:
        for server in self.servers:
            server.stop(kill=True)
            server.cleanup()

    def flush(self) -> None:
        """Empty every master (between tests)."""
        for port in self.masters():
            with self.client(port) as client:
                client.flushall()



def raw_client(url: str) -> Any:
    """A plain redis-py client for ``url``: a cluster client for ``redis+cluster://``
    (``tests/fault_app.py`` counts its runs with it)."""
    if url.startswith("redis+cluster://"):
        from redis.asyncio.cluster import RedisCluster

        host, _, port = url.removeprefix("redis+cluster://").split(",")[0].partition(":")
        return RedisCluster(host=host, port=int(port), socket_connect_timeout=1.0)
    return aioredis.Redis.from_url(url, socket_connect_timeout=1.0)


@contextmanager
def running_cluster() -> Iterator[ClusterNodes]:
    """A started cluster, stopped and removed afterwards."""
    nodes = ClusterNodes()
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.cleanup()
