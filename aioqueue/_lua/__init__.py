"""Lua scripts, each in its own ``.lua`` file; :func:`load` reads one by name."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    """The source of ``_lua/{name}.lua``, read once."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
