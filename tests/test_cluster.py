"""Redis Cluster (``redis+cluster://``): six real nodes on loopback, an app in one slot.

One cluster for the whole module: three masters and three replicas (``redis-server
--cluster-enabled yes``, ``--cluster-node-timeout 1000``), made with ``redis-cli --cluster
create``; masters are flushed before each test. The tests that change the cluster run last:
moving the app's slot to another master, then a failover (SIGKILL of the slot's master).
The failover test prints its figures (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from aioqueue import AioQueue, AsyncResult, State, TaskRevoked
from aioqueue.broker import create_broker, redact_url
from aioqueue.broker._cluster import Cluster
from aioqueue.broker._url import parse_redis_url
from aioqueue.errors import BrokerError, ConfigurationError, NotRegistered
from tests.cluster_nodes import SLOT, ClusterNodes, raw_client, running_cluster
from tests.failover import (
    first_result_after,
    results,
    since,
    wait_promoted,
    wait_subscribed,
)
from tests.test_faults import CliWorkers, producer_app, sigkill_soak

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

PREFIX = "{aioqueue}"


def parse(url: str) -> Any:
    return parse_redis_url(url, connect_timeout_s=5.0, read_timeout_s=10.0)


# -- the URL and the prefix rule (no servers) ---------------------------------------------
def test_the_cluster_url() -> None:
    target = parse("redis+cluster://u:node-pw@h1:7000,h2,[::1]:7002/?socket_timeout=2")
    cluster = target.cluster
    assert isinstance(cluster, Cluster)
    assert cluster.addresses == (("h1", 7000), ("h2", 6379), ("::1", 7002))
    assert (cluster.username, cluster.password) == ("u", "node-pw")
    assert (target.db, target.read_timeout_s) == (0, 2.0)
    for shown in (repr(target), target.display_url):
        assert "node-pw" not in shown
    assert target.display_url == "redis+cluster://u:***@h1:7000,h2,[::1]:7002/?socket_timeout=2"
    assert redact_url("redis+cluster://:pw@h1:1,h2:2/0?password=pw2") == (
        "redis+cluster://:***@h1:1,h2:2/0?password=***")
    kwargs = target.redis_py_kwargs()
    assert "host" not in kwargs and kwargs["password"] == "node-pw"
    options = target.resp_options()
    assert options["require_master"] is True and "MOVED" in options["reconnect_on"]
    assert parse("redis+cluster://h1/0").db == 0
    # TLS: the options of rediss://.
    tls = parse("rediss+cluster://h1:7000,h2:7001?ssl_cert_reqs=none")
    assert tls.ssl is not None and tls.cluster is not None and tls.cluster.ssl is tls.ssl


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+cluster://h1:7000,h2:7001/2", "database 2: Redis Cluster has only database 0"),
        ("redis+cluster://h1:7000?db=3", "database 3"),
        ("redis+cluster://h1,,h2", "a node without a host"),
        ("redis+cluster://h1:x", "malformed"),
        ("redis+cluster://h1?ssl_cert_reqs=none", "needs a rediss://"),
        ("redis+cluster://h1?sentinel_password=x", "needs a sentinel:// URL"),
    ],
)
def test_bad_cluster_urls_say_why(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        parse(url)


def test_the_prefix_needs_a_hash_tag() -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    message = (r"key_prefix 'myapp' needs a hash tag on Redis Cluster, e\.g\. "
               r"key_prefix='\{myapp\}': every key of an app must be in one slot")
    with pytest.raises(ConfigurationError, match=message):
        AioQueue("x", broker=url, key_prefix="myapp")
    with pytest.raises(ConfigurationError, match=message):
        create_broker(url, prefix="myapp", connect_timeout_s=1.0)
    # "{}" is no hash tag: Redis would hash the whole key.
    with pytest.raises(ConfigurationError, match="needs a hash tag"):
        AioQueue("x", broker=url, key_prefix="{}app")
    # The default gets one, for the app's keys and its reply list alike.
    app = AioQueue("x", broker=url)
    assert app.conf.key_prefix == PREFIX and app.keys.stream("default") == (
        "{aioqueue}:{default}:stream")
    assert app._reply_to.startswith("{aioqueue}:reply:")
    assert create_broker(url, prefix="aioqueue", connect_timeout_s=1.0).keys.prefix == PREFIX
    # A tag anywhere in the prefix, as Redis reads it, is kept.
    assert AioQueue("x", broker=url, key_prefix="shop{jobs}").conf.key_prefix == "shop{jobs}"
    # A cluster result backend apart from a plain broker: the same rule (one prefix).
    assert AioQueue("x", broker="redis://h", backend=url).conf.key_prefix == PREFIX
    # Switched to the cluster after the app was made: the reply list follows the prefix.
    late = AioQueue("x", broker="redis://h")
    late.conf.update(broker_url=url)
    assert late.conf.key_prefix == PREFIX
    late._new_broker()
    assert late._reply_to.startswith("{aioqueue}:reply:")
    # Off the cluster nothing changes.
    assert AioQueue("x", broker="redis://h", key_prefix="myapp").conf.key_prefix == "myapp"


# -- the servers: tests/cluster_nodes.py ------------------------------------------------
@pytest.fixture(scope="module")
def cluster_nodes() -> Iterator[ClusterNodes]:
    """A cluster of this module's own: its last tests move a slot and kill a master."""
    with running_cluster() as nodes:
        yield nodes


@pytest.fixture
def cluster(cluster_nodes: ClusterNodes) -> ClusterNodes:
    cluster_nodes.flush()
    return cluster_nodes


TEST_SETTINGS: dict[str, Any] = {
    "visibility_timeout": 2.0,
    "shutdown_timeout": 2.0,
    # Longer than a failover (node timeout 1 s, then election and promotion: ~2-4 s).
    "broker_connection_timeout": 15.0,
    "delayed_poll_interval": 0.05,
}


def make_app(url: str, ran: list[int] | None = None,
             started: asyncio.Event | None = None) -> AioQueue:
    app = AioQueue("cluster", broker=url, **TEST_SETTINGS)

    @app.task(name="cl.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="cl.fail")
    async def fail() -> None:
        raise ValueError("boom")

    @app.task(name="cl.retry_once", bind=True)
    async def retry_once(self: Any) -> int:
        if self.request.retries < 1:
            raise self.retry(countdown=0)
        return int(self.request.retries)

    @app.task(name="cl.sleep")
    async def sleep(seconds: float) -> None:
        if started is not None:
            started.set()
        await asyncio.sleep(seconds)

    @app.task(name="cl.rated", rate_limit="50/s")
    async def rated(i: int) -> int:
        return i

    @app.task(name="cl.record")
    async def record(i: int) -> int:
        if ran is not None:
            ran.append(i)
        await asyncio.sleep(0.02)
        return i

    return app



# -- the core API in one slot --------------------------------------------------------------
async def test_the_core_api_in_one_slot(cluster: ClusterNodes, apps: list[AioQueue]) -> None:
    url = cluster.url()
    started = asyncio.Event()
    producer, worker_app, reader = make_app(url), make_app(url, started=started), make_app(url)
    apps += [producer, worker_app, reader]
    t = producer.tasks
    owner = cluster.owner()
    async with worker_app.worker(concurrency=8):
        with anyio.fail_after(30):
            first = await t["cl.add"].delay(1, 2)
            assert await first == 3
            many = await t["cl.add"].delay_many([(i, i) for i in range(50)])
            assert [await h for h in many] == [2 * i for i in range(50)]
            sent = time.monotonic()
            assert await (await t["cl.add"].apply_async((2, 3), countdown=0.3)) == 5
            assert time.monotonic() - sent >= 0.3
            assert await (await t["cl.retry_once"].delay()) == 1
            failed = await t["cl.fail"].delay()
            with pytest.raises(ValueError, match="boom"):
                await failed
            assert await failed.state() is State.FAILURE
            nobody = await producer.send_task("cl.nobody", args=(1,))
            with pytest.raises(NotRegistered, match=r"cl\.nobody"):
                await nobody
            letters = await producer.broker.dead_letters("default", 10)
            assert [letter.reason for letter in letters] == ["not registered: cl.nobody"]
            # Revoked before it ran, and terminated while running.
            later = await t["cl.add"].apply_async((1, 1), countdown=60)
            await later.revoke()
            assert await later.state() is State.REVOKED
            running = await t["cl.sleep"].delay(30)
            await started.wait()
            await running.revoke(terminate=True)
            with pytest.raises(TaskRevoked):
                await running
            assert await (await t["cl.add"].apply_async((4, 4), priority=3)) == 8
            rated = [await t["cl.rated"].delay(i) for i in range(5)]
            assert [await h for h in rated] == list(range(5))
            once = await t["cl.add"].apply_async((7, 7), unique_for=30)
            again = await t["cl.add"].apply_async((7, 7), unique_for=30)
            assert again.id == once.id and await once == 14
            # A handle by id, in another app (polls the stored record).
            assert await reader.AsyncResult(first.id).get(timeout=5) == 3
            # Remote control listens on the slot's master.
            async with aioredis.Redis(port=owner) as master:
                numsub = await master.pubsub_numsub(f"{PREFIX}:control")
                assert numsub[0][1] >= 1
    # Beat's lease and tick claims.
    broker = producer.broker
    assert await broker.acquire_lease("beat-1", 5.0)
    assert not await reader.broker.acquire_lease("beat-2", 5.0)
    assert await broker.claim_tick("nightly", 1000.0, 60.0)
    assert not await reader.broker.claim_tick("nightly", 1000.0, 60.0)
    # A command whose keys span two slots is a bug: refused, never retried as "not now".
    with pytest.raises(BrokerError, match="CROSSSLOT"):
        await broker._run("MGET", "{a}:x", "{b}:y")  # type: ignore[attr-defined]

    # Every key in one slot, on the master that owns it, and nowhere else.
    stream, result = f"{PREFIX}:{{default}}:stream", f"{PREFIX}:result:{first.id}"
    with cluster.client(owner) as client:
        assert client.cluster("KEYSLOT", stream) == client.cluster("KEYSLOT", result) == SLOT
        assert client.exists(stream, result) == 2
        keys = client.keys("*")
        assert len(keys) > 10 and all(key.startswith(f"{PREFIX}:") for key in keys), keys
        assert client.cluster("COUNTKEYSINSLOT", SLOT) == len(keys)
    for port in cluster.masters():
        if port != owner:
            with cluster.client(port) as client:
                assert client.dbsize() == 0


# -- the slot moves (MOVED) ----------------------------------------------------------------
async def test_sigkill_workers_at_random_loses_nothing_on_a_cluster(
        cluster: ClusterNodes, tmp_path: Path) -> None:
    """The fault suite's SIGKILL soak (tests/test_faults.py), on the cluster: three CLI
    workers, one killed every second, 2,000 tasks; nothing lost, nothing run twice after a
    live worker's run."""
    url = cluster.url()
    workers = CliWorkers(tmp_path, url)
    producer = producer_app(url)
    raw = raw_client(url)
    try:
        await sigkill_soak(workers, producer, raw, label="sigkill on a cluster")
    finally:
        workers.close()
        await producer.close()
        await raw.aclose()


async def test_a_moved_slot_is_followed(cluster: ClusterNodes, apps: list[AioQueue]) -> None:
    """Migrate the app's slot to another master while producer and worker hold sockets to
    the old one: their next commands get -MOVED, ask the cluster again and go there."""
    url = cluster.url()
    producer, worker_app = make_app(url), make_app(url)
    apps += [producer, worker_app]
    add = producer.tasks["cl.add"]
    async with worker_app.worker(concurrency=4):
        with anyio.fail_after(10):
            assert await (await add.delay(1, 1)) == 2
        source = cluster.owner()
        target = next(p for p in cluster.masters() if p != source)
        ids = cluster.node_ids()
        moved_at = time.monotonic()
        _migrate_slot(cluster, SLOT, source, target, ids)
        assert cluster.owner() == target
        with anyio.fail_after(15):
            handles = [await add.delay(i, 1) for i in range(20)]
            assert [await h for h in handles] == [i + 1 for i in range(20)]
        print(f"\nslot {SLOT} moved {source} -> {target}; 20 round trips done "
              f"{time.monotonic() - moved_at:.2f}s after the move began")
    with cluster.client(target) as client:
        assert client.exists(f"{PREFIX}:result:{handles[0].id}") == 1
    with cluster.client(source) as client:
        assert client.dbsize() == 0


def _migrate_slot(cluster: ClusterNodes, slot: int, source: int, target: int,
                  ids: dict[int, str]) -> None:
    with cluster.client(source) as src, cluster.client(target) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port in cluster.masters():
            with cluster.client(port) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])


# -- the failover --------------------------------------------------------------------------
async def test_failover_loses_no_confirmed_task(cluster: ClusterNodes,
                                                apps: list[AioQueue]) -> None:
    """SIGKILL the master of the app's slot while a producer sends and a worker runs; the
    cluster promotes its replica; both carry on.

    Guaranteed, and asserted: every task whose ``delay()`` returned and whose write the
    replica then acknowledged (``WAIT 1`` after a later write on the same master, before
    the kill), and every task sent after the kill, completes and its result reaches the
    producer. The killed master is the first start-up node of the URL, so asking the
    cluster where the slot is must skip it. Tasks accepted in the last moments before the
    kill and not yet on the replica may be lost (replication is asynchronous): counted and
    printed, not asserted.
    """
    owner = cluster.owner()
    replica = cluster.replica_of(owner)
    url = cluster.url(first=owner)
    ran: list[int] = []
    producer, worker_app = make_app(url), make_app(url, ran)
    apps += [producer, worker_app]
    record = producer.tasks["cl.record"]
    checker = aioredis.Redis(port=owner, socket_timeout=2.0)

    handles: dict[int, AsyncResult[Any]] = {}
    confirmed: set[int] = set()
    unconfirmed: set[int] = set()
    after_kill: set[int] = set()
    killed_at: float | None = None
    first_accepted_after: float | None = None
    longest_send = 0.0
    batch_size, next_id = 20, 0

    async def produce(until: float, at_the_latest: float) -> None:
        nonlocal next_id, first_accepted_after, longest_send
        # Until `until`, and past it (bounded) until something was sent after the kill: on a
        # loaded machine the failover can take most of the window.
        while time.monotonic() < until or (
                not after_kill and time.monotonic() < at_the_latest):
            started = time.monotonic()
            pre_kill = killed_at is None
            ids = list(range(next_id, next_id + batch_size))
            next_id += batch_size
            got = await asyncio.gather(*(record.delay(i) for i in ids), return_exceptions=True)
            longest_send = max(longest_send, time.monotonic() - started)
            sent = {i: h for i, h in zip(ids, got, strict=True) if isinstance(h, AsyncResult)}
            handles.update(sent)
            if not pre_kill:
                after_kill.update(sent)
                if sent and first_accepted_after is None:
                    first_accepted_after = time.monotonic()
                await asyncio.sleep(0.05)
                continue
            acked = 0
            if killed_at is None:  # killed during the batch: not confirmed, and the checker
                try:               # would only wait on the dead node
                    # WAIT counts this connection's writes: a marker (in the app's slot)
                    # after the batch, so a replica that has it has everything it wrote.
                    await checker.incr(f"{PREFIX}:marker")
                    acked = await checker.execute_command("WAIT", 1, 1000)
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    acked = 0
            (confirmed if acked >= 1 and killed_at is None else unconfirmed).update(sent)
            await asyncio.sleep(0.05)

    async with worker_app.worker(concurrency=50):
        begin = time.monotonic()
        sending = asyncio.create_task(produce(until=begin + 8.0, at_the_latest=begin + 25.0))
        await asyncio.sleep(2.0)
        cluster.server(owner).stop(kill=True)  # SIGKILL
        killed_at = time.monotonic()
        resubscribing = asyncio.create_task(wait_subscribed(replica, f"{PREFIX}:control", 20.0))
        promoted_at = await wait_promoted(replica, timeout=20.0)
        await sending
        guaranteed = confirmed | after_kill
        done = await results({i: handles[i] for i in guaranteed}, timeout=25.0)
        rest = await results({i: handles[i] for i in unconfirmed}, timeout=5.0)
        first_done_after = await first_result_after(handles, after_kill)
        subscribed = await resubscribing
    await checker.aclose()

    assert killed_at is not None
    lost = sorted(guaranteed - done.keys())
    print(
        f"\ncluster failover: replica {replica} promoted {promoted_at - killed_at:.2f}s after "
        f"SIGKILL of {owner}; first task accepted {since(first_accepted_after, killed_at)} "
        f"and first result {since(first_done_after, killed_at)} after it; longest delay() "
        f"batch {longest_send:.2f}s; control channel back after "
        f"{subscribed - killed_at:.2f}s\n"
        f"tasks: accepted {len(handles)} (confirmed by WAIT before the kill {len(confirmed)}, "
        f"in flight at the kill {len(unconfirmed)}, sent after it {len(after_kill)}); "
        f"completed {len(done) + len(rest)}; lost confirmed/after-kill {len(lost)}, "
        f"lost in flight {len(unconfirmed) - len(rest)}; runs {len(ran)} "
        f"({len(ran) - len(set(ran))} re-runs)"
    )
    assert confirmed and after_kill, "the producer must have sent on both sides of the kill"
    assert not lost, f"tasks accepted and confirmed but never completed: {lost[:20]}"
    assert all(done[i] == i for i in done)









