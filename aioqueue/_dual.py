"""Handle methods that block in sync code and refuse Celery's sync habits in async code.

See ``aioqueue.result._install_dual_methods`` for where they are used and why.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from typing import Any, NoReturn

from ._sync import in_async_context, portal

__all__ = ("DualMethod",)

_Fn = Callable[..., Coroutine[Any, Any, Any]]
#: What a Celery habit tests for truth or compares (``if res.ready():``,
#: ``res.state == "SUCCESS"``): these return an awaitable that refuses both.
_PREDICATES = frozenset({"ready", "successful", "failed", "state", "status", "result",
                         "traceback", "date_done", "info"})


def _misuse(spelling: str, what: str) -> TypeError:
    return TypeError(
        f"{what} on an async handle (in async code) must be awaited: write {spelling}. "
        f"In sync code (no running event loop) it works as in Celery.")


class DualMethod:
    """A descriptor over an ``async def`` method of a handle.

    ``value=True``: an attribute in Celery (``res.state``), read as a value in sync code.
    ``value=False``: a method in Celery (``res.get(timeout=5)``), blocking in sync code.
    """

    def __init__(self, fn: _Fn, name: str, *, value: bool, sync_fn: _Fn | None = None) -> None:
        self.fn = fn
        self.name = name
        self.value = value
        #: What sync code gets when Celery's meaning differs (``res.info``: the result).
        self.sync_fn = sync_fn or fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if in_async_context():
            return _AsyncCall(self.fn, obj, self.name)
        fn, name = self.sync_fn, self.name
        if self.value:
            return portal.call(lambda: fn(obj), f"res.{name}")

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return portal.call(lambda: fn(obj, *args, **kwargs), f"res.{name}()")

        return blocking


class _AsyncCall:
    """``handle.name`` in async code: call it, then await what it returns."""

    __slots__ = ("fn", "name", "obj")

    def __init__(self, fn: _Fn, obj: Any, name: str) -> None:
        self.fn, self.obj, self.name = fn, obj, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        coro = self.fn(self.obj, *args, **kwargs)
        if self.name in _PREDICATES:
            return _Awaiting(coro, self.name)
        # A plain coroutine: get()/forget()/revoke() go to create_task() and task groups,
        # which accept nothing else.
        return coro

    def _refuse(self, *_: Any) -> NoReturn:
        raise _misuse(f"`await handle.{self.name}()`", f"handle.{self.name}")

    __eq__ = __ne__ = __bool__ = __str__ = __format__ = __contains__ = _refuse
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<coroutine method {self.name} of {self.obj!r}: await handle.{self.name}()>"


class _Awaiting:
    """What ``handle.name(...)`` returns in async code: a coroutine that cannot be truthy."""

    __slots__ = ("coro", "name")

    def __init__(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.coro, self.name = coro, name

    def __await__(self) -> Generator[Any, None, Any]:
        return self.coro.__await__()

    def _refuse(self, *_: Any) -> NoReturn:
        self.coro.close()
        raise _misuse(f"`await handle.{self.name}()`", f"handle.{self.name}()")

    __eq__ = __ne__ = __bool__ = __str__ = __format__ = _refuse
    __hash__ = object.__hash__  # asyncio.gather() keys a dict by awaitable

    def __repr__(self) -> str:
        return f"<awaitable handle.{self.name}()>"
