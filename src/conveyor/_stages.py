"""A pipeline's stages: what each stage runs, and the regrouping between them.

A ``map``/``filter``/``flat_map`` stage is a run of the engine whose task is
the user's function, or a small wrapper around it that runs on the workers
(``Keep`` for a filter's predicate, ``Expand`` for a flat map). What the
wrappers return is unpacked in the consumer's thread or loop by the
generators here (``keep``, ``flatten``), which also regroup items for the
``batch``/``unbatch`` stages, which run no tasks. Every generator closes its
source when it ends, so closing a pipeline closes each stage's run.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from typing import Any

__all__ = ["ATAIL", "Expand", "Keep", "Stage", "batched", "flatten", "stage_total"]


class Stage:
    __slots__ = ("fn", "kind", "name", "options", "size")

    def __init__(self, kind: str, fn: Callable[[Any], Any] | None, name: str,
                 options: dict[str, Any], size: int = 0) -> None:
        self.kind = kind  # "map", "starmap", "filter", "flat_map", "batch", "unbatch"
        self.fn = fn
        self.name = name
        self.options = options
        self.size = size


def stage_total(stage: Stage, total: int | None) -> int | None:
    """How many items come out of ``stage`` for ``total`` going in, where known."""
    if total is None:
        return None
    if stage.kind in ("map", "starmap"):   # one result per item
        # on_error="skip" drops failures: then how many come out is not known
        return None if stage.options.get("on_error") == "skip" else total
    if stage.kind == "batch":
        return -(-total // stage.size)
    return None   # filter, flat_map, unbatch: known only once it has run


class Keep:
    """A filter stage's task: ``(pred(x), x)``, so the predicate runs on the workers."""

    __slots__ = ("pred",)

    def __init__(self, pred: Callable[[Any], Any]) -> None:
        self.pred = pred

    def __call__(self, x: Any) -> tuple[bool, Any]:
        return (bool(self.pred(x)), x)


class Expand:
    """A flat_map stage's task: the items ``fn(x)`` returns, as a list (made on the worker)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn

    def __call__(self, x: Any) -> list[Any]:
        return list(self.fn(x))


async def _akeep(it: AsyncGenerator[Any, None], _: int) -> AsyncGenerator[Any, None]:
    try:
        async for keep, x in it:
            if keep:
                yield x
    finally:
        await it.aclose()


async def _aflatten(it: AsyncGenerator[Any, None], _: int) -> AsyncGenerator[Any, None]:
    try:
        async for group in it:
            for x in group:
                yield x
    finally:
        await it.aclose()


async def _abatched(it: AsyncGenerator[Any, None], n: int) -> AsyncGenerator[Any, None]:
    try:
        chunk: list[Any] = []
        async for x in it:
            chunk.append(x)
            if len(chunk) == n:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
    finally:
        await it.aclose()


ATAIL: dict[str, Callable[[AsyncGenerator[Any, None], int], AsyncGenerator[Any, None]]] = {
    "keep": _akeep, "flatten": _aflatten, "batch": _abatched,
}


def batched(it: Iterable[Any], n: int) -> Generator[list[Any], None, None]:
    source = iter(it)
    try:
        while True:
            chunk = list(itertools.islice(source, n))
            if not chunk:
                return
            yield chunk
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def flatten(it: Iterable[Any]) -> Generator[Any, None, None]:
    source = iter(it)
    try:
        for group in source:
            yield from group
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
