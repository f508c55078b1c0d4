"""The options of a map, typed: what the overloads of ``map``, ``amap`` and
``Pool.map`` accept as keyword arguments (``**options: Unpack[RunOptions]``).

Their defaults and their checks are in ``_api`` (``MAP_DEFAULTS``, ``check_options``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypedDict

__all__ = ["BackendName", "MapOptions", "OnError", "RunOptions"]

OnError = Literal["raise", "return", "skip"]
BackendName = Literal["thread", "asyncio", "process", "dask"]


class MapOptions(TypedDict, total=False):
    """The per-map options (``Pool.map``, pipeline stages); see :func:`map`."""

    ordered: bool
    window: int | None
    batch: int | Literal["auto"]
    timeout: float | None
    retries: int
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    backoff: float
    on_error: OnError
    rate: float | None
    progress: bool | dict[str, Any]
    desc: str | None


class RunOptions(MapOptions, total=False):
    """Every option of :func:`map`: the map's own, and what it runs on."""

    backend: BackendName | None
    workers: int | None
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_worker: int | None
    cluster: Any
    forward_logs: bool
