"""conveyor's own rows, shared by Tables 1 and 4: a warm ``Pool`` and a one-shot
``map``, each a factory of a context manager that warms it with a 16-item map
and yields ``run(items) -> collect(results)`` (``list`` in Table 1, ``sum`` in
Table 4). conveyor is imported when a row starts, not before: Table 4's child
processes of other rows never load it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

WARMUP = range(16)

Collect = Callable[[Iterable[Any]], Any]
Runner = Callable[[Iterable[int]], Any]


def pool_map(backend: str, fn: Callable[[int], Any], workers: int, collect: Collect,
             **options: Any) -> Callable[[], AbstractContextManager[Runner]]:
    """Warm: ``conveyor.Pool`` created once, ``pool.map`` per run."""
    @contextlib.contextmanager
    def cm() -> Iterator[Runner]:
        import conveyor

        with conveyor.Pool(backend=backend, workers=workers) as pool:  # type: ignore[arg-type]
            collect(pool.map(fn, WARMUP, **options))
            yield lambda xs: collect(pool.map(fn, xs, **options))
    return cm


def one_shot_map(fn: Callable[[int], Any], workers: int, collect: Collect,
                 **options: Any) -> Callable[[], AbstractContextManager[Runner]]:
    """One-shot: every ``conveyor.map`` call starts and stops its own workers."""
    @contextlib.contextmanager
    def cm() -> Iterator[Runner]:
        import conveyor

        collect(conveyor.map(fn, WARMUP, workers=workers, **options))
        yield lambda xs: collect(conveyor.map(fn, xs, workers=workers, **options))
    return cm
