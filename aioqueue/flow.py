"""Flow control: what a call or a run must wait for, decided atomically in the broker.

Two places decide:

* **the producer**, as it sends (``Gate``): ``unique_for`` (one pending or running per key),
  ``cooldown`` (leading edge), ``debounce`` (trailing edge) and ``order_key`` (one at a time
  per key, in the order sent). The broker applies the gate and the add in one step;
* **the worker**, before a run starts (``Admission``): ``rate_limit`` (a cluster-wide rate,
  one reservation per run) and ``max_concurrency`` (leases, per ``concurrency_key``). A run
  that must wait is acknowledged and parked in Redis in the same step -- in the delayed set
  at its reserved time, or in its key's waiting list until a slot frees -- never in a
  worker's memory, and never by polling.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .task import Task

__all__ = ("Admission", "Gate", "flow_gate", "parse_rate")

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*")
_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0}


def parse_rate(rate: object, what: str = "rate_limit") -> float | None:
    """Celery's rate spelling -> seconds between two runs; None for no limit.

    ``"10/s"``, ``"100/m"``, ``"1000/h"``, a bare number (per second, as Celery), and
    ``"0"``/``None``/``""`` for none.
    """
    if rate is None:
        return None
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        text = repr(rate)
    elif isinstance(rate, str):
        text = rate
    else:
        raise ConfigurationError(f"{what} must be like '10/s', '100/m' or '1000/h', "
                                 f"not {rate!r}")
    if text.strip().lower() in ("", "0", "none"):
        return None
    match = _RATE.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigurationError(f"{what} must be like '10/s', '100/m' or '1000/h', "
                                 f"not {rate!r}")
    count, unit = float(match.group(1)), match.group(2) or "s"
    return _PERIODS[unit] / count


@dataclass(frozen=True, slots=True)
class Gate:
    """A condition the broker applies as it adds one message (see the module doc)."""

    kind: Literal["unique", "cooldown", "debounce", "order"]
    #: The key's identity (``call_key``).
    key: str
    task_id: str
    #: unique_for / cooldown / debounce window, in seconds (unused for order).
    ttl_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Admission:
    """What a run needs before it starts (see the module doc)."""

    task_id: str
    #: The rate limit's key (the task name) and the seconds between two runs.
    rate_key: str | None = None
    rate_interval_s: float = 0.0
    #: The concurrency key's identity and the most runs at once under it.
    slot_key: str | None = None
    slot_max: int = 0


def _identity(key: Any) -> str:
    if isinstance(key, str):
        return key
    return "#" + hashlib.blake2b(msgspec.msgpack.encode(key), digest_size=12).hexdigest()


def flow_gate(
    name: str, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    task: Task[Any, Any] | None, *, unique_key: Any = None, unique_for: float | None = None,
    debounce: float | None = None, cooldown: float | None = None, order_key: Any = None,
) -> Gate | None:
    """The producer-side gate of one call: the call's options over the task's.

    Keys: ``order_key`` (a value, or the task option's function of the arguments) is shared
    by every task; the others are per task, keyed by ``unique_key`` (a value, or the task
    option's function) or else -- for ``unique_for`` the arguments, for ``debounce`` and
    ``cooldown`` the task alone.
    """
    opts = task.options if task is not None else None
    if task is not None and opts is not None:
        unique_for = unique_for if unique_for is not None else opts.unique_for
        debounce = debounce if debounce is not None else opts.debounce
        cooldown = cooldown if cooldown is not None else opts.cooldown
        if order_key is None and opts.order_key is not None:
            order_key = task.key_of(opts.order_key, args, kwargs)
    chosen = [k for k, v in (("unique_for", unique_for), ("debounce", debounce),
                             ("cooldown", cooldown), ("order_key", order_key))
              if v is not None and v is not False]
    if not chosen:
        return None
    if len(chosen) > 1:
        raise ConfigurationError(f"{name}: choose one of unique_for, debounce, cooldown and "
                                 f"order_key for a call, not {' and '.join(chosen)}")
    kind = chosen[0]
    if kind == "order_key":
        return Gate("order", _identity(order_key), task_id)
    window = {"unique_for": unique_for, "debounce": debounce, "cooldown": cooldown}[kind]
    if isinstance(window, bool) or not isinstance(window, int | float) or window <= 0:
        raise ConfigurationError(f"{name}: {kind} must be a positive number of seconds, "
                                 f"not {window!r}")
    if unique_key is None and task is not None and task.options.unique_key is not None:
        unique_key = task.key_of(task.options.unique_key, args, kwargs)
    if unique_key is None:
        unique_key = [list(args), kwargs] if kind == "unique_for" else ""
    gate_kind: Literal["unique", "debounce", "cooldown"] = (
        "unique" if kind == "unique_for" else kind)  # type: ignore[assignment]
    return Gate(gate_kind, f"{name}:{_identity(unique_key)}", task_id, float(window))
