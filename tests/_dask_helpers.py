"""What dask's own tests share (their fixtures, ``client`` and ``own_cluster``,
are in ``conftest.py``; ``wait_until`` is ``_executor_util``'s)."""

from __future__ import annotations

from typing import Any


def conveyor_tasks(client: Any, *, running_only: bool = False) -> list[str]:
    """Keys of conveyor's tasks the cluster's scheduler still holds (or, with
    ``running_only``, has yet to finish: waiting, queued or processing)."""
    def keys(dask_scheduler: Any) -> list[str]:
        return [str(k) for k, ts in dask_scheduler.tasks.items() if "run_batch" in str(k)
                and (not running_only or ts.state in ("waiting", "queued", "processing",
                                                      "no-worker"))]
    result: list[str] = client.run_on_scheduler(keys)
    return result


def square(x: int) -> int:
    return x * x
