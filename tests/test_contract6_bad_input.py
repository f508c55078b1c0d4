"""Contract 6: bad input gets a clear error before any work starts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import conveyor

calls: list[object] = []


def record(x: object) -> object:
    calls.append(x)
    return x


async def arecord(x: object) -> object:
    calls.append(x)
    return x


@pytest.fixture(autouse=True)
def _clear() -> None:
    calls.clear()


BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"workers": 0}, ValueError, "workers must be >= 1"),
    ({"workers": -3}, ValueError, "workers must be >= 1"),
    ({"workers": 2.5}, TypeError, "workers must be an int"),
    ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
    ({"window": 0}, ValueError, "window must be >= 1"),
    ({"batch": 0}, ValueError, "batch must be >= 1"),
    ({"batch": "big"}, ValueError, "batch must be 'auto'"),
    ({"timeout": 0}, ValueError, "timeout must be > 0"),
    ({"timeout": "1s"}, TypeError, "timeout must be a number"),
    ({"retries": -1}, ValueError, "retries must be >= 0"),
    ({"retry_on": "ValueError"}, TypeError, "retry_on must be an exception class"),
    ({"on_error": "ignore"}, ValueError, "on_error must be one of"),
    ({"rate": 0}, ValueError, "rate must be > 0"),
    ({"rate": 10, "batch": 8}, ValueError, "conflicts with batch=8"),
    ({"window": 4, "batch": 8}, ValueError, "larger than window"),
    ({"progress": "yes"}, TypeError, "progress must be"),
    ({"backend": "asyncio"}, TypeError, "not a coroutine function"),
]


@pytest.mark.parametrize(("kwargs", "exc", "message"), BAD)
def test_bad_options_fail_before_work(kwargs: dict[str, Any], exc: type[Exception],
                                      message: str) -> None:
    with pytest.raises(exc, match=message):
        conveyor.map(record, range(10), **kwargs)
    assert calls == []


def test_non_callable() -> None:
    with pytest.raises(TypeError, match=r"must be callable.*not fetch\(urls\)"):
        conveyor.map(5, range(3))  # type: ignore[call-overload]


def test_non_iterable() -> None:
    with pytest.raises(TypeError, match="items must be an iterable"):
        conveyor.map(record, 5)  # type: ignore[call-overload]


def test_coroutine_function_on_threads() -> None:
    with pytest.raises(TypeError, match=r"coroutine function.*backend=.asyncio."):
        conveyor.map(arecord, range(3), backend="thread")
    assert calls == []


def test_sync_function_to_amap_asyncio() -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="not a coroutine function"):
            conveyor.amap(record, range(3), backend="asyncio")

    asyncio.run(main())
    assert calls == []


def test_amap_outside_a_loop() -> None:
    with pytest.raises(RuntimeError, match="from async code"):
        conveyor.amap(arecord, range(3))


def test_pool_bad_input() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        conveyor.Pool(workers=0)
    with pytest.raises(ValueError, match="unknown backend"):
        conveyor.Pool(backend="fork")
    with conveyor.Pool(workers=2) as pool:
        with pytest.raises(TypeError, match="unexpected option"):
            pool.map(record, range(3), workers=3)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="must be callable"):
            pool.submit(None)  # type: ignore[call-overload]
    assert calls == []
