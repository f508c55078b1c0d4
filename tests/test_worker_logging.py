"""Records logged in process and dask workers reach this process's logging; remote
tracebacks are formatted here, with this process's source lines.

Real handlers in the parent (a collecting handler, ``caplog``), real worker
processes (one of them exits with ``os._exit``), the session's dask cluster, and
real interpreters started with ``python -c``.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import conveyor
from conveyor.errors import WorkerCrashed

from .conftest import HAS_DASK, BackendName, dask_session_client

ROOT = Path(__file__).resolve().parent.parent
#: The backends whose workers are other processes. dask where it is installed (CI's
#: extra Pythons install only the test extra): its cases are not generated elsewhere.
REMOTE: list[BackendName] = ["process"]
if HAS_DASK:
    REMOTE.append("dask")


class Collect(logging.Handler):
    """Keeps every record it handles."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def log() -> Iterator[tuple[str, Collect]]:
    """A logger of the test's own (at INFO), and a handler collecting what reaches it."""
    name = f"conveyor_tests.worker_logging.{uuid.uuid4().hex[:8]}"
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield name, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def cluster(backend: BackendName) -> dict[str, Any]:
    return {"cluster": dask_session_client()} if backend == "dask" else {}


def beside_a_thread(name: str, other: str) -> Callable[[int], int]:
    """A task that logs "item X", and has another thread log ``other % x`` meanwhile;
    it returns its pid. (Made here, it travels by value: the workers do not import
    this module.)"""
    def work(x: int) -> int:
        thread = threading.Thread(target=logging.getLogger(name).warning, args=(other, x))
        thread.start()
        thread.join()
        logging.getLogger(name).warning("item %d", x)
        return os.getpid()
    return work


def line_of(text: str) -> int:
    """The number of the (one) line of this file that is ``text`` (indentation aside)."""
    lines = [i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1)
             if line.strip() == text]
    assert len(lines) == 1, (text, lines)
    return lines[0]


@pytest.mark.parametrize("backend", REMOTE)
def test_records_reach_the_parents_handlers_with_the_workers_pid_and_the_items_index(
        backend: BackendName, log: tuple[str, Collect]) -> None:
    name, handler = log
    # A dask cluster of the user's keeps its own levels (its root: WARNING).
    level = logging.INFO if backend == "process" else logging.WARNING

    def work(x: int) -> int:
        logger = logging.getLogger(name)
        logger.log(level, "item %d", x)
        logger.debug("item %d, in detail", x)   # below the parent's level: never sent
        if x == 2:
            try:
                raise ValueError("two is bad")
            except ValueError:
                logger.exception("failed on %d", x)
        return os.getpid()

    results = conveyor.map(work, range(6), backend=backend, workers=2, **cluster(backend))
    pids = []
    for i, pid in enumerate(results):
        # handled before the item's result is handed out
        assert f"item {i}" in handler.messages(), (i, handler.messages())
        pids.append(pid)
    assert os.getpid() not in pids
    by_message = {r.getMessage(): r for r in handler.records}
    assert sorted(by_message) == sorted([f"item {i}" for i in range(6)] + ["failed on 2"])
    for i in range(6):
        record = by_message[f"item {i}"]
        assert record.name == name
        assert record.levelno == level
        assert record.levelname == logging.getLevelName(level)
        assert record.conveyor_index == i  # type: ignore[attr-defined]
        assert record.conveyor_pid == pids[i]  # type: ignore[attr-defined]
        assert record.process == pids[i]
        assert record.exc_text is None
    failed = by_message["failed on 2"]
    assert failed.levelno == logging.ERROR
    assert failed.conveyor_index == 2  # type: ignore[attr-defined]
    assert failed.exc_info is None
    assert failed.exc_text is not None
    raising = line_of('raise ValueError("two is bad")')
    assert f'File "{__file__}", line {raising}, in work' in failed.exc_text, failed.exc_text
    assert 'raise ValueError("two is bad")' in failed.exc_text
    assert failed.exc_text.endswith("ValueError: two is bad")
    # Formatted by a handler of this process as any record with an exception is.
    text = logging.Formatter("%(levelname)s:%(message)s").format(failed)
    assert text.startswith("ERROR:failed on 2\nTraceback (most recent call last):"), text


@pytest.mark.parametrize("backend", REMOTE)
def test_caplog_captures_worker_records(backend: BackendName, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    name = f"conveyor_tests.caplog.{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.WARNING, logger=name)

    def work(x: int) -> int:
        logging.getLogger(name).warning("seen %d", x)
        logging.getLogger(name).info("not seen %d", x)
        return x

    assert list(conveyor.map(work, range(4), backend=backend, **cluster(backend))) == \
        [0, 1, 2, 3]
    mine = [r for r in caplog.records if r.name == name]
    assert sorted(r.getMessage() for r in mine) == [f"seen {i}" for i in range(4)]
    assert all(r.process != os.getpid() for r in mine)


def test_the_parents_levels_decide_in_the_worker_and_again_in_the_parent(
        log: tuple[str, Collect]) -> None:
    """A worker gets the parent's levels as it starts (a record below them is not even
    created); the parent's level at the time a record arrives decides once more."""
    name, handler = log

    def work(x: int) -> bool:
        logger = logging.getLogger(name)
        logger.info("info %d", x)
        logger.warning("warning %d", x)
        return logger.isEnabledFor(logging.INFO)

    with conveyor.Pool("process", workers=1) as pool:   # its worker starts now, at INFO
        assert list(pool.map(work, range(3))) == [True] * 3
        assert sorted(handler.messages()) == sorted(
            [f"info {i}" for i in range(3)] + [f"warning {i}" for i in range(3)])
        handler.records.clear()
        logging.getLogger(name).setLevel(logging.WARNING)
        assert list(pool.map(work, range(3))) == [True] * 3   # the worker still sends them
        assert sorted(handler.messages()) == [f"warning {i}" for i in range(3)]
    handler.records.clear()
    assert list(conveyor.map(work, range(3), backend="process", workers=1)) == [False] * 3
    assert sorted(handler.messages()) == [f"warning {i}" for i in range(3)]


@pytest.mark.parametrize("backend", REMOTE)
def test_switched_off_nothing_is_forwarded(backend: BackendName, log: tuple[str, Collect]) -> None:
    name, handler = log

    def work(x: int) -> int:
        logging.getLogger(name).error("not forwarded %d", x)
        return len(logging.getLogger().handlers)   # only what the worker had itself

    baseline = list(conveyor.map(work, range(2), backend=backend, forward_logs=False,
                                 **cluster(backend)))
    assert handler.records == []
    if backend == "process":   # a fresh interpreter: no handler at all
        assert baseline == [0, 0]
    with conveyor.Pool(backend, workers=1, forward_logs=False, **cluster(backend)) as pool:
        assert list(pool.map(work, range(2))) == baseline[:1] * 2
    stage = conveyor.stream(range(2)).map(work, backend=backend, forward_logs=False,
                                          **cluster(backend))
    assert list(stage) == baseline
    assert handler.records == []


def test_forward_logs_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="forward_logs must be True"):
        conveyor.map(abs, [1], backend="process", forward_logs="no")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="forward_logs must be True"):
        conveyor.Pool("process", forward_logs=None)  # type: ignore[arg-type]
    # Threads and coroutines log in this process: nothing to forward, nothing refused.
    assert list(conveyor.map(abs, [-1], forward_logs=False)) == [1]


@pytest.mark.parametrize("backend", REMOTE)
def test_a_record_whose_arguments_cannot_be_pickled_arrives_as_text(
        backend: BackendName, log: tuple[str, Collect]) -> None:
    name, handler = log

    def work(x: int) -> int:
        lock = threading.Lock()
        logging.getLogger(name).warning("holding %s", lock, extra={"tool": lock, "n": x})
        return x

    assert list(conveyor.map(work, [7], backend=backend, **cluster(backend))) == [7]
    [record] = handler.records
    assert record.getMessage().startswith("holding <unlocked _thread.lock object"), \
        record.getMessage()
    assert record.args is None
    assert record.tool.startswith("<unlocked _thread.lock object")  # type: ignore[attr-defined]
    assert record.n == 7  # type: ignore[attr-defined]


def test_a_record_factory_of_the_parent_makes_forwarded_records(
        log: tuple[str, Collect]) -> None:
    name, handler = log
    default = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = default(*args, **kwargs)
        record.made_here = True
        return record

    def work(x: int) -> int:
        logging.getLogger(name).warning("item %d", x)
        return x

    logging.setLogRecordFactory(factory)
    try:
        assert list(conveyor.map(work, [3], backend="process", workers=1)) == [3]
    finally:
        logging.setLogRecordFactory(default)
    [record] = handler.records
    assert record.made_here is True  # type: ignore[attr-defined]
    assert record.getMessage() == "item 3"
    assert record.process != os.getpid()


def test_records_outside_items_arrive_without_an_index(log: tuple[str, Collect]) -> None:
    """What the initializer logs (and what another thread of the worker logs) is
    forwarded too, with ``conveyor_index`` None."""
    name, handler = log

    def init() -> None:
        logging.getLogger(name).warning("initialized")

    with conveyor.Pool("process", workers=1, initializer=init) as pool:
        [pid] = pool.map(beside_a_thread(name, "from a thread of item %d"), [5])
    by_message = {r.getMessage(): r for r in handler.records}
    assert sorted(by_message) == ["from a thread of item 5", "initialized", "item 5"]
    assert by_message["item 5"].conveyor_index == 0  # type: ignore[attr-defined]  # input index
    for outside in ("initialized", "from a thread of item 5"):
        assert by_message[outside].conveyor_index is None  # type: ignore[attr-defined]
        assert by_message[outside].conveyor_pid == pid  # type: ignore[attr-defined]


def test_the_record_a_worker_logs_just_before_it_dies_arrives(
        log: tuple[str, Collect]) -> None:
    name, handler = log

    def work(x: int) -> int:
        if x == 1:
            logging.getLogger(name).critical("last words of item %d", x)
            os._exit(3)
        return x

    out: list[Any] = list(conveyor.map(work, range(3), backend="process", workers=1,
                                       on_error="return"))
    assert out[0] == 0 and out[2] == 2
    assert isinstance(out[1], WorkerCrashed), out[1]
    [record] = handler.records
    assert record.getMessage() == "last words of item 1"
    assert record.conveyor_index == 1  # type: ignore[attr-defined]
    assert record.conveyor_pid == out[1].pid  # type: ignore[attr-defined]


def test_thread_backend_records_are_this_processs_own(log: tuple[str, Collect]) -> None:
    name, handler = log

    def work(x: int) -> int:
        logging.getLogger(name).info("item %d", x)
        return x

    assert list(conveyor.map(work, range(3), workers=2)) == [0, 1, 2]
    assert sorted(handler.messages()) == ["item 0", "item 1", "item 2"]
    for record in handler.records:
        assert record.process == os.getpid()
        assert not hasattr(record, "conveyor_index")
        assert str(record.threadName).startswith("conveyor-")


if HAS_DASK:   # (not generated without dask: see REMOTE)
    def test_dask_forwards_only_the_tasks_own_thread(log: tuple[str, Collect]) -> None:
        """A dask worker runs other threads (its own, other tasks'): what they log is
        not the task's, and stays on the worker."""
        name, handler = log
        client = dask_session_client()

        work = beside_a_thread(name, "another thread, during item %d")
        pids = list(conveyor.map(work, range(4), backend="dask", cluster=client))
        assert set(pids) <= set(client.run(os.getpid).values())
        assert sorted(handler.messages()) == [f"item {i}" for i in range(4)]
        assert [r.conveyor_pid for r in sorted(  # type: ignore[attr-defined]
            handler.records, key=lambda r: r.conveyor_index)] == pids  # type: ignore[attr-defined]

    def test_dask_applies_the_levels_it_is_sent(log: tuple[str, Collect]) -> None:
        """What a cluster conveyor started gets (``DaskBackend`` sends its levels only
        there), shown on the session's cluster with a logger of the test's own."""
        from conveyor._backends import dask as dask_backend
        from conveyor._logs import snapshot

        name, handler = log
        client = dask_session_client()

        def work(x: int) -> bool:
            return logging.getLogger(name).isEnabledFor(logging.INFO)

        def run(levels: Any) -> Any:
            _, data, _ = client.submit(dask_backend.run_batch, "levels-test", "fn",
                                       cloudpickle.dumps(work), None, pickle.dumps([1]),
                                       (levels,), pure=False).result()
            return pickle.loads(data)[0]

        assert snapshot()[0][name] == logging.INFO   # what DaskBackend would send
        assert run(None) == [False]   # a dask worker's root logger: WARNING
        # (only this test's logger: the session's workers keep their other levels)
        assert run(({name: logging.INFO}, 0)) == [True]
        assert handler.records == []
