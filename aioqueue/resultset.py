"""``ResultSet``: many handles awaited as one (Celery's ``ResultSet``).

``await ResultSet(handles)`` returns every result in order, like Celery's
``ResultSet.get()`` / ``join()``. Beyond saving keystrokes it is the cheap way to wait for
very many tasks: ``asyncio.gather(*handles)`` wraps each handle in a Task of its own (about
1 kB apiece, asyncio's cost, before aioqueue's), while a set registers its ids once with the
app's result waiter, which then costs one dict entry per id (see
``ResultWaiter.wait_all``). Replies arrive exactly as for single handles, and the same
safety net re-reads stored records of a set that waits long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterable, Iterator
from typing import Any, Generic, TypeVar

from .message import READY_STATES, ResultRecord, State
from .result import AsyncResult, exception_from_record

__all__ = ("ResultSet",)

R = TypeVar("R")


class ResultSet(Generic[R]):
    """A list of :class:`AsyncResult` handles, awaited together.

    ``await rs`` is ``await rs.get()``: the results in the order of the handles. A failed
    task re-raises its exception (the first in order) unless ``propagate=False``, which
    returns the exceptions in place of the results.
    """

    __slots__ = ("results",)

    def __init__(self, results: Iterable[AsyncResult[R]]) -> None:
        self.results: list[AsyncResult[R]] = list(results)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[R]]:
        return iter(self.results)

    def __repr__(self) -> str:
        return f"<ResultSet: {len(self.results)} tasks>"

    def add(self, result: AsyncResult[R]) -> None:
        """Add a handle (Celery's ``ResultSet.add``)."""
        if result not in self.results:
            self.results.append(result)

    def __await__(self) -> Generator[Any, None, list[R]]:
        return _raw_get(self).__await__()

    async def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Wait for every task; their results in order (Celery's ``get``/``join``).

        Raises ``TimeoutError`` when they are not all ready within ``timeout`` seconds.
        """
        records = await self._records(timeout)
        values: list[Any] = []
        for record in records:
            if record.state is State.SUCCESS:
                values.append(record.result)
                continue
            exc = exception_from_record(record)
            if propagate:
                raise exc
            values.append(exc)
        return values

    join = get

    async def _records(self, timeout: float | None) -> list[ResultRecord]:
        handles = self.results
        if not handles:
            return []
        # Grouped per app (nearly always one): each app's waiter takes its fast handles in
        # one call; a handle whose reply goes elsewhere polls its record on its own.
        records: list[ResultRecord | None] = [None] * len(handles)
        by_app: dict[int, tuple[Any, list[int]]] = {}
        slow: list[int] = []
        for index, handle in enumerate(handles):
            app = handle.app
            if handle._track(app.waiter):
                by_app.setdefault(id(app), (app, []))[1].append(index)
            else:
                slow.append(index)
        waits = [self._fast(app, indices, records, timeout)
                 for app, indices in by_app.values()]
        waits += [self._slow(index, records, timeout) for index in slow]
        if len(waits) == 1:
            await waits[0]
        else:
            await asyncio.gather(*waits)
        return records  # type: ignore[return-value]  # all filled by the waits

    async def _fast(self, app: Any, indices: list[int], records: list[ResultRecord | None],
                    timeout: float | None) -> None:
        handles = self.results
        got = await app.waiter.wait_all([handles[i].id for i in indices], timeout)
        for index, record in zip(indices, got, strict=True):
            records[index] = record

    async def _slow(self, index: int, records: list[ResultRecord | None],
                    timeout: float | None) -> None:
        handle = self.results[index]
        records[index] = await handle.app._wait_for(handle, timeout)

    async def completed_count(self) -> int:
        """How many of the tasks have finished (successfully or not), read from Redis."""
        handles = self.results
        if not handles:
            return 0
        app = handles[0].app
        raws = await app.broker.get_results([h.id for h in handles])
        done = 0
        for raw in raws:
            if raw is not None and app.serializer.decode_record(raw).state in READY_STATES:
                done += 1
        return done

    async def ready(self) -> bool:
        """True when every task has finished."""
        return await self.completed_count() == len(self.results)

    async def revoke(self, terminate: bool = False) -> None:
        """Revoke every task of the set."""
        for handle in self.results:
            await handle.app.revoke(handle.id, terminate=terminate)

    async def forget(self) -> None:
        """Delete every stored result of the set."""
        for handle in self.results:
            handle.app.waiter.discard(handle.id)
            await handle.app.broker.delete_result(handle.id)


_raw_get = ResultSet.get


def _install_dual_methods() -> None:
    """Celery's sync spellings (``rs.get()``, ``rs.ready()``) block in sync code and fail
    loudly, naming ``await``, in async code, as on single handles."""
    from ._dual import DualMethod

    for name in ("get", "join", "completed_count", "ready", "revoke", "forget"):
        setattr(ResultSet, name, DualMethod(getattr(ResultSet, name), name, value=False))


_install_dual_methods()
