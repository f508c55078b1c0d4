"""One measurement in a process of its own, forked from an idle parent (Table 7).

Why a fork: the parent imports what the cases need and then does nothing but
fork one child per measurement, wait for its answer and reap it. Every child
starts from that same state (the interpreter's baseline after imports), so one
case's leftovers (threads, a grown heap, memory the allocator keeps) never
reach the next, and a child costs a few milliseconds instead of the ~0.3 s
a new interpreter takes to start and import conveyor (which is what lets the
smoke run of the table fit in a few seconds). The parent must hold no thread
when it forks: :func:`run_isolated` refuses to, rather than fork a lock held
by a thread the child would not have.

RSS: the child's peak RSS growth is ``ru_maxrss`` after the measurement minus
its RSS when it started (after ``prepare``). At a fork Linux resets the
child's high-water mark to a little below the pages it shares with the
parent; the current RSS (``/proc/self/statm``) is taken as the baseline when
it is the larger, so those shared pages are not counted as growth.

Timeouts: the child stops itself after ``timeout`` seconds (SIGALRM raises
:class:`Overdue` in its main thread, so its pools unwind and stop their
workers); the parent kills the child's session if it has not answered
``grace`` seconds after that.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

# ru_maxrss is in KiB on Linux and in bytes on macOS.
_MAXRSS_TO_KIB = 1 / 1024 if sys.platform == "darwin" else 1


class Overdue(Exception):
    """Raised in a child's main thread when its measurement runs past its timeout."""


def peak_kib() -> int:
    """This process's peak RSS so far (KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_TO_KIB)


def current_kib() -> int:
    """This process's RSS now (KiB); 0 where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


def _overdue(signum: int, frame: FrameType | None) -> None:
    raise Overdue


def _child(w: int, measure: Callable[[], dict[str, Any]],
           prepare: Callable[[], object] | None, timeout: float) -> None:
    """The forked side: measure, write one JSON answer to ``w``, leave without clean-up."""
    out: dict[str, Any]
    try:
        os.setsid()   # a session of its own: the parent can kill whatever it starts
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # not the parent's handler
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGALRM, _overdue)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        if prepare is not None:
            prepare()
        base = max(peak_kib(), current_kib())
        out = measure()
        peak = peak_kib()
        signal.setitimer(signal.ITIMER_REAL, 0)
        out.update(base_kib=base, peak_kib=peak)
    except Overdue:
        out = {"error": f"still running after {timeout:g} s: stopped", "overdue": True}
    except BaseException as exc:   # the parent reports it in the row
        out = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        data = json.dumps(out).encode()
        while data:
            data = data[os.write(w, data):]
    finally:
        # No atexit handlers, no flushing of buffers copied from the parent.
        os._exit(0)


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)   # killed before its setsid(): not a group leader yet


def run_isolated(measure: Callable[[], dict[str, Any]], *, timeout: float,
                 prepare: Callable[[], object] | None = None,
                 grace: float = 30.0) -> dict[str, Any]:
    """``measure()`` in a forked child; its dict plus ``base_kib`` and ``peak_kib``.

    ``prepare()`` runs in the child before the baseline is taken (imports that
    only one case needs). A failure, a timeout or a child that dies comes back
    as ``{"error": text}``. Raises ``RuntimeError`` if this process has threads
    running (forking it would copy their locks in whatever state they are).
    """
    if threading.active_count() != 1:
        raise RuntimeError(f"run_isolated: {threading.active_count()} threads are running in "
                           "the parent; it must fork from a single thread")
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child never returns
        os.close(r)
        _child(w, measure, prepare, timeout)
    os.close(w)
    chunks: list[bytes] = []
    answered = False
    deadline = time.monotonic() + timeout + grace
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 1 << 16)
            if not chunk:
                answered = True
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        if not answered:   # overdue past its grace, or the parent is interrupted
            _kill_session(pid)
        _, status = os.waitpid(pid, 0)
    if not answered:
        return {"error": f"no answer after {timeout + grace:g} s: killed", "overdue": True}
    try:
        result: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError:
        return {"error": f"child died ({describe_status(status)}) without an answer"}
    return result


def growth_mib(answer: dict[str, Any]) -> float:
    """The peak RSS growth of a run :func:`run_isolated` answered for (MiB).

    A run that grew nothing can read a little below its baseline (the kernel's
    high-water mark and the current RSS are separate counters): that is 0."""
    return max(0, int(answer["peak_kib"]) - int(answer["base_kib"])) / 1024


def failure_cell(text: str, limit: int) -> str:
    """A table cell for a run that failed, in the child's own words (shortened)."""
    text = f"ERROR {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"
