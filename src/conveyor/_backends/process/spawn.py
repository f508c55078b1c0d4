"""Starting a process worker: a fresh interpreter, its pipes, its slot; and ending it.

A worker is started with ``subprocess`` (``sys.executable``), not forked: see
the package's docstring. :func:`spawn` gives a :class:`Proc`, the parent's
end of one worker: its task and control sockets, its result pipe, its
lifeline, its pidfd and its slot (a shared memory page, see ``worker``).
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile

from ... import _worker
from ..._wire import records
from .jobs import Job

__all__ = ["BOOTSTRAP", "EXIT_GRACE", "NOSIGNAL", "Proc", "close_task", "describe_exit", "kill",
           "readable", "reap", "spawn", "unregister_write"]

# Loads _worker.py (the module the parent's pickles name as _conveyor_worker),
# then the worker's main loop, without the conveyor package: see worker.py.
BOOTSTRAP = (
    "import sys\n"
    "from importlib.util import module_from_spec, spec_from_file_location\n"
    f"s = spec_from_file_location({_worker.ALIAS!r}, sys.argv[1])\n"
    "m = module_from_spec(s)\n"
    "sys.modules[s.name] = sys.modules['conveyor._worker'] = m\n"
    "s.loader.exec_module(m)\n"
    "m.sibling('_backends.process.worker').main()\n"
)

PIPE_SIZE = 1 << 20      # bytes: we ask the kernel for pipes this large (Linux)
EXIT_GRACE = 2.0         # seconds a worker gets to exit (at close, when retired) before SIGKILL
NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


class Proc:
    """One worker process and the parent's end of its pipes (one job at a time)."""

    __slots__ = (
        "cancel_at",
        "ctl",
        "d",
        "jobs",
        "known",
        "life_w",
        "outbuf",
        "pid",
        "pidfd",
        "popen",
        "q",
        "ran",
        "reason",
        "result_r",
        "retiring",
        "slot",
        "task",
        "tasks",
        "writing",
    )

    def __init__(self) -> None:
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.result_r = self.life_w = -1
        # Sockets, not pipes, to the worker: send(MSG_NOSIGNAL) to a dead worker
        # is an error, never a SIGPIPE (which kills a program that restored SIG_DFL).
        self.task: socket.socket | None = None
        self.ctl: socket.socket | None = None
        self.outbuf: list[memoryview] = []       # what the task socket did not take yet
        self.writing = False                     # registered for EVENT_WRITE
        self.pidfd = -1
        self.slot: mmap.mmap | None = None
        self.q: memoryview[int] | None = None
        self.d: memoryview[float] | None = None
        self.jobs: collections.deque[Job] = collections.deque()   # the job it runs
        self.known: dict[int, None] = {}       # function keys the worker holds (FIFO)
        self.tasks = 0                          # items sent, for max_tasks_per_worker
        self.retiring = False                   # will exit after its last job
        self.ran = False                        # reported at least one batch
        self.reason: tuple[int, BaseException] | None = None   # killed to expire (pos, error)
        self.cancel_at = 0.0                    # kill if still on a cancelled batch then

    def write(self, payload: bytes) -> bool:
        """Send a message without blocking; True if some of it waits in ``outbuf``
        (the supervisor writes it when the socket is writable)."""
        data = memoryview(records.frame(payload))
        if self.task is None:
            return False
        if not self.outbuf:
            try:
                data = data[self.task.send(data, NOSIGNAL):]
            except BlockingIOError:
                pass
            except OSError:
                return False   # it is gone: its death hands the job back
            if not data:
                return False
        self.outbuf.append(data)
        return True

    def write_more(self) -> bool:
        """Write what waits in ``outbuf``; True when nothing is left to write."""
        while self.outbuf and self.task is not None:
            data = self.outbuf[0]
            try:
                data = data[self.task.send(data, NOSIGNAL):]
            except BlockingIOError:
                return False
            except OSError:
                self.outbuf.clear()
                break
            if data:
                self.outbuf[0] = data
                return False
            self.outbuf.pop(0)
        return True

    def steal(self, bid: int) -> bool:
        """Ask the worker for batch ``bid``'s items it has not started."""
        if self.ctl is None:
            return False
        try:
            self.ctl.send(records.STEAL + bid.to_bytes(8, "little", signed=True), NOSIGNAL)
        except OSError:   # gone, or its control thread is not reading: no steal
            return False
        return True


def spawn(worker_path: str, shared_fds: tuple[int, ...]) -> Proc:
    """Start a worker process (it waits for its ``Start`` record on its task socket)."""
    p = Proc()
    p.task, task_child = socket.socketpair()
    p.ctl, ctl_child = socket.socketpair()
    task_r, ctl_r = task_child.detach(), ctl_child.detach()
    p.task.setblocking(False)
    p.ctl.setblocking(False)
    p.result_r, result_w = os.pipe()
    life_r, p.life_w = os.pipe()
    for fd in (p.result_r, result_w):
        with contextlib.suppress(OSError, AttributeError):
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    slot_fd = _shared_page()
    p.slot = mmap.mmap(slot_fd, mmap.PAGESIZE)
    p.q = memoryview(p.slot).cast("q")
    p.d = memoryview(p.slot).cast("d")
    p.q[0] = -1
    try:
        p.popen = subprocess.Popen(
            [sys.executable, "-u", "-c", BOOTSTRAP, worker_path,
             str(task_r), str(result_w), str(life_r), str(slot_fd), str(ctl_r)],
            pass_fds=(task_r, result_w, life_r, slot_fd, ctl_r, *shared_fds),
            stdin=subprocess.DEVNULL,
            start_new_session=True)   # its own process group: killed as one
    finally:
        for fd in (task_r, result_w, life_r, slot_fd, ctl_r):
            os.close(fd)
    p.pid = p.popen.pid
    with contextlib.suppress(OSError, AttributeError):
        p.pidfd = os.pidfd_open(p.pid)
    return p


def unregister_write(p: Proc, selector: selectors.BaseSelector | None) -> None:
    """Stop watching ``p``'s task socket for room to write."""
    if p.writing:
        p.writing = False
        assert selector is not None
        with contextlib.suppress(KeyError, ValueError, OSError):
            selector.unregister(p.task.fileno() if p.task is not None else -1)


def close_task(p: Proc, selector: selectors.BaseSelector | None) -> None:
    """Close ``p``'s task socket: at end of file, the worker exits."""
    unregister_write(p, selector)
    p.outbuf.clear()
    close_sock(p, "task")


def reap(p: Proc, selector: selectors.BaseSelector | None) -> int | None:
    """Wait for ``p`` to exit (SIGKILL after ``EXIT_GRACE``), kill what its tasks
    left in its process group, close the parent's ends; its exit status."""
    assert selector is not None
    for fd_name in ("result_r", "pidfd"):
        fd = getattr(p, fd_name)
        if fd >= 0:
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.unregister(fd)
    returncode = None
    if p.popen is not None:
        try:
            returncode = p.popen.wait(timeout=EXIT_GRACE)
        except subprocess.TimeoutExpired:
            kill(p)
            returncode = p.popen.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)   # what its tasks started and left behind
    close_task(p, selector)
    close_sock(p, "ctl")
    for fd_name in ("result_r", "life_w", "pidfd"):
        close_fd(p, fd_name)
    return returncode


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "it stopped responding"
    if returncode >= 0:
        return f"it exited with code {returncode}"
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = {signal.SIGKILL: ", as the out-of-memory killer does",
            signal.SIGSEGV: " (a segmentation fault)",
            signal.SIGABRT: " (an abort)"}.get(signal.Signals(signum), "") \
        if signum in signal.valid_signals() else ""
    return f"it was killed by {name}{hint}"


def _shared_page() -> int:
    """A file descriptor for one page of memory the worker maps too."""
    try:
        fd = os.memfd_create("conveyor-slot")   # Linux: no file at all
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as f:   # unlinked at once
            fd = os.dup(f.fileno())
    os.ftruncate(fd, mmap.PAGESIZE)
    return fd


def readable(fd: int) -> bool:
    import select

    try:
        r, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(r)


def kill(p: Proc) -> None:
    """SIGKILL ``p``'s process group: the worker and what its tasks started."""
    if p.pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)


def close_sock(p: Proc, name: str) -> None:
    sock = getattr(p, name)
    if sock is not None:
        setattr(p, name, None)
        sock.close()


def close_fd(p: Proc, name: str) -> None:
    fd = getattr(p, name)
    if fd >= 0:
        setattr(p, name, -1)
        with contextlib.suppress(OSError):
            os.close(fd)
