"""Backends: the mechanism behind each ``backend=`` name, imported only when used."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from ._base import Backend

__all__ = ["BACKENDS", "Backend", "create", "default_workers"]

#: backend name -> (module, class). Modules are imported on first use only.
BACKENDS: dict[str, tuple[str, str]] = {
    "thread": ("conveyor._backends.thread", "ThreadBackend"),
    "asyncio": ("conveyor._backends.asyncio", "AsyncioBackend"),
    "process": ("conveyor._backends.process", "ProcessBackend"),
    "dask": ("conveyor._backends.dask", "DaskBackend"),
}


def default_workers(backend: str) -> int:
    cpus = usable_cpus()
    if backend == "asyncio":
        return 100
    if backend == "process":
        return usable_cpus()
    return min(32, cpus + 4)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def create(name: str, workers: int | None, *, initializer: Callable[..., object] | None = None,
           initargs: tuple[Any, ...] = (), **options: Any) -> Backend:
    module, cls = BACKENDS[name]
    backend_cls = getattr(importlib.import_module(module), cls)
    backend: Backend = backend_cls(workers, initializer=initializer, initargs=initargs,
                                   **options)
    return backend
