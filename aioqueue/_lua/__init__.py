"""Lua scripts, each in its own ``.lua`` file, loaded once and run by hash.

Every script declares every key it touches in KEYS (none is built from ARGV inside a
script), so a key-aware proxy or Redis Cluster sees them all -- with one
exception: a run parked by flow control (a concurrency slot's or an order key's waiting
list) carries the stream it goes back to, and ``settle``/``promote_slots`` write there.
The header of each file says what its KEYS and ARGV are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ("Script", "load", "script")


@cache
def load(name: str) -> str:
    """The source of ``_lua/{name}.lua``, read once."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Script:
    """A script's source and the SHA1 that ``EVALSHA`` names it by."""

    name: str
    source: str
    sha: str


@cache
def script(name: str) -> Script:
    """The script ``_lua/{name}.lua``."""
    source = load(name)
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())
