"""The dask client a backend uses: the user's, one connected to theirs, or a
LocalCluster of conveyor's own, started in a helper interpreter (``helper``)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

__all__ = ["INSTALL", "HelperCluster", "connect", "count_threads", "default_workers",
           "import_distributed"]

INSTALL = 'pip install "conveyor[dask]"'

HELPER_START = 120.0   # seconds the helper may take to report its scheduler's address
HELPER_EXIT = 15.0     # seconds it may take to close its cluster before it is killed


def import_distributed() -> Any:
    """``distributed``, or an ImportError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"backend='dask' needs dask.distributed, which is not installed here: "
            f"{INSTALL} (or pip install \"dask[distributed]\")") from exc
    return distributed


class HelperCluster:
    """A LocalCluster (processes, one thread each) in a helper process of ours."""

    def __init__(self, n_workers: int) -> None:
        import json
        import subprocess
        import sys
        import tempfile

        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the helper runs
        pythonpath = os.environ.get("PYTHONPATH")
        cfg = json.dumps({"n": n_workers, "pythonpath": pythonpath,
                          "path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path]})
        # `-m` finds the helper where this process found conveyor (on its sys.path,
        # which the helper gets only once it runs)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [root, pythonpath] if pythonpath else [root]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor._backends.dask.helper", cfg],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=env,
            start_new_session=True)
        line = self._read_address()
        if not line.startswith(("tcp://", "inproc://", "tls://", "ucx://")):
            self.close()
            self._err.seek(0)
            tail = self._err.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError("backend='dask': the LocalCluster conveyor starts did not come "
                               "up: " + (" / ".join(tail) or "no address reported"))
        self.address = line

    def _read_address(self) -> str:
        out: list[str] = []
        stdout = self._proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: out.append(stdout.readline().decode()),
                                  name="conveyor-dask-start", daemon=True)
        reader.start()
        reader.join(HELPER_START)
        return out[0].strip() if out else ""

    def close(self, timeout: float = HELPER_EXIT) -> None:
        import signal
        import subprocess

        proc = self._proc
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        with contextlib.suppress(OSError):   # the helper and whatever is left of its cluster
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        self._err.close()


def connect(distributed: Any, cluster: Any, workers: int | None,
            ) -> tuple[Any, HelperCluster | None, bool]:
    """``(client, helper cluster or None, whether the backend owns the client)``.

    ``cluster``: None (the current client, or else a LocalCluster of ours with
    ``workers`` workers), a ``distributed.Client``, a scheduler address or a
    cluster object. Raises ``TypeError`` for anything else, ``ConnectionError``
    if its scheduler cannot be reached.
    """
    if cluster is None:
        try:
            client = distributed.Client.current()
        except ValueError:   # no client in this process: start a cluster for the run
            client = None
        if client is not None:
            return client, None, False
        helper = HelperCluster(workers if workers is not None else default_workers())
        try:
            # results come straight from the workers, not through the
            # scheduler (whose process shares the workers' cores)
            client = distributed.Client(helper.address, set_as_default=False,
                                        timeout="30s", direct_to_workers=True)
        except BaseException:
            helper.close()
            raise
        return client, helper, True
    if isinstance(cluster, distributed.Client):
        return cluster, None, False
    if isinstance(cluster, str) or hasattr(cluster, "scheduler_address"):
        try:
            client = distributed.Client(cluster, set_as_default=False, timeout="10s")
        except OSError as exc:
            raise ConnectionError(
                f"backend='dask': could not connect to the dask scheduler at {cluster!r}: "
                f"{exc}") from exc
        return client, None, True
    raise TypeError(
        "backend='dask': cluster must be a distributed.Client, a scheduler address "
        f"('tcp://host:8786') or a cluster object (LocalCluster...), got {cluster!r}")


def count_threads(client: Any) -> int | None:
    """The cluster's thread count from the client's cached view of the scheduler
    (refreshed every few seconds by the client: no round trip), or None."""
    info = getattr(client, "_scheduler_identity", None)
    if not isinstance(info, dict):
        return None
    total = info.get("total_threads")
    if total is None:   # older dask: per-worker entries only
        with contextlib.suppress(Exception):
            total = sum(w["nthreads"] for w in info.get("workers", {}).values())
    return total if isinstance(total, int) and total > 0 else None


def default_workers() -> int:
    from .._capabilities import usable_cpus

    return usable_cpus()
