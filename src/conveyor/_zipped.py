"""The items of a map over several iterables: their tuples, taken in step, up to
the shortest (the builtin ``map``'s rule), and the length a run expects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from ._source import aclose_quietly, reads_directly

__all__ = ["AsyncZipped", "Zipped", "length_of"]


def length_of(items: object) -> int | None:
    """How many items a run over ``items`` expects (progress totals, tail batches),
    or None when that is not known."""
    if isinstance(items, _Zip):
        return items.length()
    try:
        n = len(items)  # type: ignore[arg-type]
    except Exception:  # no len(), or one that fails (range(2**64): OverflowError)
        return None
    return n if isinstance(n, int) else None


class _Zip:
    def __init__(self, iterables: tuple[Any, ...]) -> None:
        self._iterables = iterables

    def length(self) -> int | None:
        """The least of the iterables' known lengths: the zip's length when every
        one has a length, else at most that (a generator may end first)."""
        known = [n for n in (length_of(i) for i in self._iterables) if n is not None]
        return min(known) if known else None


class Zipped(_Zip):
    """The items of a map over several iterables: their tuples, up to the shortest.

    Read by the dispatcher itself when every iterable is an in-memory collection.
    """

    def __init__(self, iterables: tuple[Iterable[Any], ...]) -> None:
        super().__init__(iterables)
        self.direct = all(reads_directly(i) for i in iterables)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return zip(*self._iterables)  # noqa: B905 - up to the shortest, as map()


class AsyncZipped(_Zip):
    """``Zipped`` for ``amap`` when some iterables are async: read on the event loop.

    The plain iterables among them are read there too, so they must not block
    (a list, a range, ``itertools.count()``). Stopped early, it closes the
    async iterators it took, as ``amap`` does for a single async iterable.
    """

    async def __aiter__(self) -> AsyncIterator[tuple[Any, ...]]:
        its: list[Iterator[Any] | AsyncIterator[Any]] = [
            iter(i) if isinstance(i, Iterable) else aiter(i) for i in self._iterables]
        try:
            while True:
                row = []
                for it in its:
                    try:
                        row.append(next(it) if isinstance(it, Iterator) else await anext(it))
                    except (StopIteration, StopAsyncIteration):
                        return   # up to the shortest, as zip()
                yield tuple(row)
        except BaseException:   # closed or cancelled early, or an input failed
            for it in its:
                if not isinstance(it, Iterator):
                    await aclose_quietly(it)
            raise
