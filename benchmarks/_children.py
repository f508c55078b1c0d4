"""The processes a table's child started (Tables 4 and 5): :class:`ProcessWatch`
and :func:`session_pids`, to measure their RSS and to find (and stop) any left
running."""

from __future__ import annotations

import contextlib
import os


class ProcessWatch:
    """Every process descended from one child this script started, seen while it ran.

    A table runs each row in a child in its own session, so a process group kill
    reaches what the child forked. Some pools put their workers in sessions of
    their own (conveyor's process backend does, to kill a worker with whatever
    its task started); a session or group kill misses those, and once the child
    exits they are re-parented and no longer its descendants. So the table polls
    the child's process tree while it runs and remembers each descendant by
    (pid, creation time): afterwards it can tell which of them still run (and
    stop them: they are processes this script started, indirectly) without
    confusing them with an unrelated process that reused a pid.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, float] = {}     # pid -> create_time

    def poll(self) -> int:
        """Record the current descendants; return the RSS of the whole tree (bytes)."""
        import psutil

        try:
            proc = psutil.Process(self.root)
            total: int = proc.memory_info().rss
            children = proc.children(recursive=True)
        except psutil.Error:
            return 0
        for c in children:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(c.pid, c.create_time())
                total += c.memory_info().rss
        return total

    def alive(self) -> list[int]:
        """Descendants seen so far that still run (zombies excluded)."""
        import psutil

        out = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
        return out

    def kill_alive(self) -> list[int]:
        """SIGKILL the descendants that still run; return their pids."""
        import psutil

        killed = []
        for pid in self.alive():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == self.seen[pid]:
                    p.kill()
                    killed.append(pid)
        return killed


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``."""
    import psutil

    out = []
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(p.pid) == sid:
                out.append(p.pid)
    return out
