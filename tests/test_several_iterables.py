"""Several arguments: ``map(fn, xs, ys)`` zips as the builtin ``map`` does, and
``starmap`` spreads each item over the arguments, on every entry point."""

from __future__ import annotations

import asyncio
import io
import itertools
import operator
from collections.abc import AsyncIterator
from typing import Any

import pytest

import conveyor
from conveyor.errors import item_index

from .conftest import BackendName


def add3(a: int, b: int, c: int) -> int:
    return a + 10 * b + 100 * c


async def aadd3(a: int, b: int, c: int) -> int:
    await asyncio.sleep(0)
    return add3(a, b, c)


def adder(backend: BackendName) -> Any:
    return aadd3 if backend == "asyncio" else add3


def test_map_zips_and_starmap_spreads_on_every_backend(backend: BackendName) -> None:
    """Items and the ``Star`` wrapper travel to worker processes and dask workers;
    an item that is not iterable fails its own task only, there too."""
    fn = adder(backend)
    xs, ys, zs = range(50), [1, 2, 3] * 10, tuple(range(40))
    got = list(conveyor.map(fn, xs, ys, zs, backend=backend, workers=2))
    assert got == list(map(add3, xs, ys, zs))
    assert len(got) == 30
    items: list[Any] = [(1, 2, 3), [4, 5, 6], 7, range(3)]
    got = list(conveyor.starmap(fn, items, backend=backend, workers=2, on_error="return"))
    assert got[:2] == [321, 654]
    assert got[3] == add3(0, 1, 2)
    error = got[2]
    assert isinstance(error, TypeError)
    assert item_index(error) == 2
    assert "must be an iterable of the function's arguments" in str(error)
    assert "got 7 (int)" in str(error)
    assert any("item #2" in note for note in getattr(error, "__notes__", []))


def test_a_generator_among_the_iterables_is_read_lazily() -> None:
    gen = (i for i in range(5))
    assert list(conveyor.map(add3, gen, [1, 1, 1], itertools.count(), workers=2)) == \
        [10, 111, 212]
    assert next(gen) == 4   # as zip(): the 4th item was taken before the list ran out


def test_starmap_errors_follow_on_error() -> None:
    items: list[Any] = [(1, 2), None, (3, 4)]
    with pytest.raises(TypeError, match="iterable of the function's arguments") as info:
        list(conveyor.starmap(operator.add, items, workers=2))
    assert item_index(info.value) == 1
    with conveyor.starmap(operator.add, items, workers=2, on_error="skip") as results:
        assert list(results) == [3, 7]
    assert results.stats.skipped == 1


def test_a_type_error_of_the_function_itself_is_its_own() -> None:
    """Only an item that cannot be spread gets starmap's message; a wrong number
    of arguments, or a TypeError the function raises, is left as it is."""
    def two(a: int, b: int) -> int:
        raise TypeError("mine")

    got: list[Any] = list(conveyor.starmap(two, [(1, 2, 3), (1, 2)], on_error="return"))
    assert isinstance(got[0], TypeError)
    assert "positional argument" in str(got[0])
    assert isinstance(got[1], TypeError)
    assert str(got[1]) == "mine"


def test_progress_total_is_the_least_known_length() -> None:
    """The bar's total: the zip's length when every iterable has one; else the
    least of the lengths known (here the list bounds an endless counter)."""
    for iterables, total in [((range(12), [0] * 9), 9),
                             ((itertools.count(), [0] * 7), 7)]:
        buf = io.StringIO()
        out = list(conveyor.map(operator.add, *iterables,
                                progress={"file": buf, "mininterval": 0, "ascii": True}))
        assert len(out) == total
        assert f"{total}/{total}" in buf.getvalue()


def test_options_are_keyword_only_and_checked() -> None:
    with pytest.raises(TypeError, match=r"iterable 1 must be an iterable.*got bool"):
        conveyor.map(operator.add, [1], True)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"unexpected option chunksize=; did you mean batch="):
        conveyor.map(abs, [1], chunksize=4)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="no items given"):
        conveyor.map(abs)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="items must be an iterable"):
        conveyor.starmap(abs, 5)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"conveyor\.starmap: workers must be >= 1"):
        conveyor.starmap(abs, [(1,)], workers=0)


def test_pool_starmap_and_map() -> None:
    with conveyor.Pool(workers=2) as pool:
        assert list(pool.starmap(add3, [(1, 2, 3), (4, 5, 6)])) == [321, 654]
        items: list[Any] = [(1, 2, 3), 5]
        got: list[Any] = list(pool.starmap(add3, items, on_error="return"))
        assert got[0] == 321
        assert isinstance(got[1], TypeError) and item_index(got[1]) == 1
        assert list(pool.map(add3, [1, 2], [3, 4], [5, 6, 7])) == [531, 642]


def test_stream_starmap_stages() -> None:
    """A stream is one flow: ``map`` takes each item whole, ``starmap`` spreads it."""
    triples = list(zip(range(5), range(5, 10), range(10, 15), strict=True))
    got = (conveyor.stream(iter(triples))
           .starmap(add3, workers=2)
           .map(lambda n: (n, 0, 0))
           .starmap(aadd3, workers=4)      # a coroutine function: on asyncio
           .to_list())
    assert got == [add3(*t) for t in triples]
    with pytest.raises(TypeError, match="iterable of the function's arguments") as info:
        conveyor.stream([(1, 2, 3), 4]).starmap(add3).to_list()
    assert item_index(info.value) == 1
    assert any("stage 'starmap add3'" in note for note in getattr(info.value, "__notes__", []))


def test_amap_zips_plain_and_async_iterables_and_astarmap() -> None:
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def main() -> None:
        got = [r async for r in conveyor.amap(aadd3, numbers(10), [1, 2, 3, 4], range(9))]
        assert got == [add3(i, i + 1, i) for i in range(4)]
        got = [r async for r in conveyor.amap(add3, range(3), numbers(5), numbers(9))]
        assert got == [111 * i for i in range(3)]   # a plain function: on threads
        got = [r async for r in conveyor.astarmap(aadd3, [(1, 2, 3), (4, 5, 6)])]
        assert got == [321, 654]

        async def triples() -> AsyncIterator[tuple[int, int, int]]:
            async for i in numbers(3):
                yield (i, i, i)

        assert [r async for r in conveyor.astarmap(add3, triples())] == [0, 111, 222]
        with pytest.raises(TypeError, match="iterable 1 must be an iterable or an async"):
            conveyor.amap(aadd3, [1], 2, [3])  # type: ignore[call-overload]

    asyncio.run(asyncio.wait_for(main(), 20))


def test_amap_stopped_early_closes_the_async_iterables_it_zips() -> None:
    """As for one async iterable: leaving the loop runs the generators' finally."""
    closed: list[str] = []

    async def endless(name: str) -> AsyncIterator[int]:
        try:
            for i in itertools.count():
                await asyncio.sleep(0)
                yield i
        finally:
            closed.append(name)

    async def main() -> None:
        async with conveyor.amap(aadd3, endless("a"), endless("b"), itertools.repeat(0),
                                 window=8) as results:
            async for r in results:
                if r == 11 * 5:
                    break
        assert sorted(closed) == ["a", "b"]

    asyncio.run(asyncio.wait_for(main(), 20))


def test_astarmap_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match=r"use conveyor\.starmap"):
        conveyor.astarmap(aadd3, [(1, 2, 3)])
