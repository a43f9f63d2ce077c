"""One adapter per library, all exposing :class:`benchmarks.peers.base.Peer`.

Adapters are imported lazily so that one missing or broken library becomes an
"error: ..." cell in the results table instead of stopping the whole run.
"""

from __future__ import annotations

import importlib

from benchmarks.peers.base import Peer

# name -> "module:Class"; the order is the column order of the results table.
ADAPTERS: dict[str, str] = {
    "aioqueue": "benchmarks.peers.aioqueue_peer:AioqueuePeer",
    # The same with task events on (`aioqueue worker -E`): the events' cost, side by side.
    "aioqueue -E": "benchmarks.peers.aioqueue_peer:AioqueueEventsPeer",
    "arq": "benchmarks.peers.arq_peer:ArqPeer",
    "saq": "benchmarks.peers.saq_peer:SaqPeer",
    "taskiq": "benchmarks.peers.taskiq_peer:TaskiqPeer",
    "celery": "benchmarks.peers.celery_peer:CeleryPeer",
    "streaq": "benchmarks.peers.streaq_peer:StreaqPeer",
    "dramatiq": "benchmarks.peers.dramatiq_peer:DramatiqPeer",
    "docket": "benchmarks.peers.docket_peer:DocketPeer",
}


def load_peer(name: str, redis_url: str) -> Peer:
    module_name, _, cls_name = ADAPTERS[name].partition(":")
    cls: type[Peer] = getattr(importlib.import_module(module_name), cls_name)
    return cls(redis_url)
