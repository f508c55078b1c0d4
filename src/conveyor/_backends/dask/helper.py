"""The helper interpreter that runs the LocalCluster conveyor starts.

Run as ``python -m conveyor._backends.dask.helper CONFIG`` (see ``cluster``).
Dask starts worker processes with multiprocessing's "spawn", which re-imports
the caller's ``__main__`` in each of them (a script without the ``__name__``
guard would start clusters recursively); here ``__main__`` is this module,
whose work is behind the guard. It writes the scheduler's address on stdout
and closes the cluster when its stdin ends: when conveyor closes it, or when
the parent dies.
"""

from __future__ import annotations

import json
import logging
import os
import sys

__all__ = ["main"]

# A cluster for throughput on this machine, whose cores its workers' tasks use:
# what wakes up on a timer takes a core (and the GIL) from a task. Dask's
# statistical profiler samples every worker thread's stack every 10 ms; the
# event-loop health check runs every 20 ms in each process; the system and
# memory monitors feed a dashboard, which nobody can see here (its address is
# not shown). Off, or at a slower pace.
QUIET = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
}


def main(argv: list[str]) -> None:
    """``argv[0]``: JSON ``{"n": workers, "path": sys.path, "pythonpath": ...}``."""
    cfg = json.loads(argv[0])
    sys.path[:] = cfg["path"]
    # as the parent had it (it was extended only so that `-m` finds this module)
    if cfg["pythonpath"] is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = cfg["pythonpath"]
    import dask
    from distributed import LocalCluster

    dask.config.set(QUIET)
    # (the scheduler's HTTP server, /health and /metrics, runs anyway: on a free
    # port, not on the 8787 a cluster of the user's may want)
    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=cfg["n"], threads_per_worker=1, processes=True, dashboard_address=":0",
        scheduler_kwargs={"dashboard": False}, silence_logs=logging.ERROR)
    sys.stdout.write(cluster.scheduler_address + "\n")
    sys.stdout.flush()
    try:
        sys.stdin.read()
    finally:
        cluster.close(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1:])
