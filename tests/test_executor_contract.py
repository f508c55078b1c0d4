"""The stdlib's executor contract, case by case, on conveyor's executors.

Code written for ``concurrent.futures`` must run unchanged after its import
is changed to conveyor's: every case here is a sentence of the
``concurrent.futures`` documentation or a case of CPython's
``Lib/test/test_concurrent_futures/``, run on ``conveyor.ThreadPoolExecutor``
and ``conveyor.ProcessPoolExecutor`` (and, for what the ``Executor`` base
class promises, on ``conveyor.Pool``). This file: submit, futures and their
callbacks, ``wait``/``as_completed``, cancellation, the constructors and
``run_in_executor``. ``test_executor_map.py``: the eager ``map``;
``test_executor_shutdown.py``: shutdown, lifetimes and crashed workers.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import traceback
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Future,
    TimeoutError,
    as_completed,
    wait,
)
from typing import Any

import pytest

import conveyor
from conveyor.errors import NotPicklable, WorkerInitError

from ._crossproc import Gate, Tally
from ._executor_util import (
    ALL_KINDS,
    KINDS,
    PROCESS_KINDS,
    capture,
    gated,
    get_init_state,
    init_fails,
    init_state,
    make,
    mul,
    pid_of,
    raise_value_error,
    record,
    record_then_wait,
    rendezvous,
    sleep_then,
    started,
    wait_until,
    who,
    worker_name,
)


# -- submit ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_submit_passes_args_and_kwargs_and_returns_the_result(kind: str) -> None:
    """executor.py test_submit / test_submit_keyword: ``fn(*args, **kwargs)``, its value."""
    with make(kind, 2) as ex:
        fut = ex.submit(pow, 2, 8)
        assert isinstance(fut, Future)
        assert fut.result(10) == 256
        assert ex.submit(mul, 2, y=8).result(10) == 16
        # ``fn`` and ``self`` are positional-only: they can be keyword arguments of the call
        assert ex.submit(capture, 1, self=2, fn=3).result(10) == ((1,), {"self": 2, "fn": 3})
        with pytest.raises(TypeError):
            ex.submit(fn=capture, arg=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            ex.submit(arg=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_submit_delivers_the_exception_with_its_type_and_traceback(kind: str) -> None:
    """The call's exception is the future's, its own type, and printing it shows the
    line of the function that raised (test_process_pool.py test_traceback)."""
    with make(kind, 1) as ex:
        fut = ex.submit(raise_value_error, "boom")
        exc = fut.exception(10)
        assert type(exc) is ValueError
        assert exc.args == ("boom",)
        with pytest.raises(ValueError, match="boom"):
            fut.result(10)
        text = "".join(traceback.format_exception(exc))
        assert "raise ValueError(text)   # the line a traceback must show" in text
        if kind in PROCESS_KINDS:
            # As the stdlib's ``_RemoteTraceback``: the worker's traceback is the cause.
            assert exc.__cause__ is not None
            assert "raise_value_error" in str(exc.__cause__)
        else:
            frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
            assert "raise_value_error" in frames


@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_an_argument_that_cannot_be_pickled_fails_the_future(kind: str) -> None:
    """The stdlib's ProcessPoolExecutor sets the PicklingError on the future, and the
    pool goes on."""
    with make(kind, 1) as ex:
        fut = ex.submit(capture, threading.Lock())
        with pytest.raises(pickle.PicklingError):
            fut.result(10)
        assert isinstance(fut.exception(), NotPicklable)
        assert ex.submit(pow, 2, 3).result(10) == 8


@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_a_result_that_cannot_be_pickled_fails_the_future(kind: str) -> None:
    with make(kind, 1) as ex:
        fut = ex.submit(threading.Lock)
        with pytest.raises(pickle.PicklingError):
            fut.result(10)
        assert ex.submit(pow, 2, 3).result(10) == 8


# -- futures: callbacks ------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_done_callback_is_called_once_with_the_future(kind: str) -> None:
    gate = Gate()
    calls: list[Future[Any]] = []
    called = threading.Event()

    def callback(f: Future[Any]) -> None:
        calls.append(f)
        called.set()

    with make(kind, 1) as ex:
        fut = ex.submit(gated, gate, 5)
        fut.add_done_callback(callback)
        assert not calls          # not before the call ends
        gate.set()
        assert called.wait(10)
        assert fut.result(10) == 5
    assert calls == [fut]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_done_callback_added_after_completion_runs_at_once(kind: str) -> None:
    """Future.add_done_callback: "If the future has already completed or been
    cancelled, fn will be called immediately." """
    with make(kind, 1) as ex:
        fut = ex.submit(pow, 2, 2)
        assert fut.result(10) == 4
        seen: list[tuple[Future[Any], int]] = []
        fut.add_done_callback(lambda f: seen.append((f, threading.get_ident())))
        assert seen == [(fut, threading.get_ident())]   # here, before add_done_callback returns


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_an_exception_in_a_done_callback_is_logged_not_raised(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """Future.add_done_callback: "If the callable raises an Exception subclass, it will
    be logged and ignored." The others still run."""
    later: list[int] = []

    def bad(_: Future[Any]) -> None:
        raise RuntimeError("callback failed")

    with caplog.at_level(logging.ERROR, logger="concurrent.futures"), make(kind, 1) as ex:
        fut = ex.submit(pow, 3, 2)
        fut.add_done_callback(bad)
        fut.add_done_callback(lambda f: later.append(f.result()))
        assert fut.result(10) == 9
        assert wait_until(lambda: bool(later))
        fut.add_done_callback(bad)    # after completion: called here, must not raise either
    assert later == [9]
    logged = [r for r in caplog.records if r.exc_info and "callback failed" in str(r.exc_info[1])]
    assert len(logged) == 2


# -- as_completed and wait --------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_as_completed_yields_each_future_once_as_it_finishes(kind: str) -> None:
    """test_as_completed.py: done futures first, duplicates once, then the rest."""
    gate = Gate()
    with make(kind, 2) as ex:
        quick = ex.submit(pow, 2, 5)
        assert quick.result(10) == 32
        slow = ex.submit(gated, gate, "slow")
        futs: list[Future[Any]] = [quick, slow, quick, slow]
        it = as_completed(futs)
        assert next(it) is quick
        gate.set()
        assert next(it) is slow
        with pytest.raises(StopIteration):
            next(it)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_as_completed_timeout(kind: str) -> None:
    """as_completed: "The returned iterator raises a TimeoutError if __next__() is called
    and the result isn't available after timeout seconds"."""
    gate = Gate()
    with make(kind, 2) as ex:
        quick = ex.submit(pow, 2, 5)
        slow = ex.submit(gated, gate, "slow")
        assert quick.result(10) == 32
        futs: list[Future[Any]] = [quick, slow]
        seen = []
        try:
            with pytest.raises(TimeoutError, match=r"1 \(of 2\) futures unfinished"):
                for f in as_completed(futs, timeout=0.5):
                    seen.append(f)
        finally:
            gate.set()
        assert seen == [quick]
        assert slow.result(10) == "slow"


@pytest.mark.parametrize(("return_when", "second"), [
    (FIRST_COMPLETED, (pow, 2, 5)),
    (FIRST_EXCEPTION, (raise_value_error, "boom")),
], ids=["FIRST_COMPLETED", "FIRST_EXCEPTION"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_wait_returns_at_the_first_completion_or_exception(
        kind: str, return_when: str, second: tuple[Any, ...]) -> None:
    """wait(): FIRST_COMPLETED returns once any future ends, FIRST_EXCEPTION once one
    raises; the blocked one is in ``not_done``."""
    gate = Gate()
    with make(kind, 2) as ex:
        slow = ex.submit(gated, gate, "slow")
        other = ex.submit(*second)
        try:
            futs: list[Future[Any]] = [slow, other]
            done, not_done = wait(futs, timeout=10, return_when=return_when)
            assert done == {other}
            assert not_done == {slow}
        finally:
            gate.set()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_wait_first_exception_without_an_exception_waits_for_all(kind: str) -> None:
    """wait(FIRST_EXCEPTION): "If no future raises an exception then it is equivalent
    to ALL_COMPLETED." """
    with make(kind, 2) as ex:
        good = [ex.submit(sleep_then, 0.05 * i, i) for i in range(3)]
        done, not_done = wait(good, timeout=10, return_when=FIRST_EXCEPTION)
        assert done == set(good)
        assert not not_done


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_wait_all_completed_and_timeout(kind: str) -> None:
    gate = Gate()
    with make(kind, 2) as ex:
        futs = [ex.submit(pow, 2, i) for i in range(4)]
        result = wait(futs, timeout=10, return_when=ALL_COMPLETED)
        assert result.done == set(futs)
        assert result.not_done == set()
        slow = ex.submit(gated, gate, "slow")
        try:
            done, not_done = wait([*futs, slow], timeout=0.3)
            assert done == set(futs)
            assert not_done == {slow}
        finally:
            gate.set()


# -- cancellation ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_pending_future_can_be_cancelled_and_never_runs(kind: str) -> None:
    """Future.cancel: "If the call is currently being executed or finished running and
    cannot be cancelled then the method will return False, otherwise the call will be
    cancelled and the method will return True." """
    gate, tally = Gate(), Tally()
    ex = make(kind, 1)
    try:
        first = ex.submit(record_then_wait, tally, "first", gate, 1)
        second = ex.submit(record, tally, "second", 2)
        assert started(tally, "first")
        assert wait_until(first.running)
        assert not first.cancel()        # it runs: it cannot be cancelled
        assert second.cancel()
        assert second.cancelled()
        assert second.done()
        assert second.cancel()           # cancelling again still says it is cancelled
        with pytest.raises(CancelledError):
            second.result(0)
        gate.set()
        assert first.result(10) == 1
        assert not first.cancelled()
    finally:
        gate.set()
        ex.shutdown(wait=True)
    assert tally.count("second") == 0
    assert not first.cancel()            # finished: cannot be cancelled either


# -- initializer ---------------------------------------------------------------------
@pytest.mark.parametrize("initargs", [("ready", 1), ["ready", 1]], ids=["tuple", "list"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_initializer_runs_before_the_calls(kind: str, initargs: Any) -> None:
    """test_init.py: ``initializer(*initargs)`` runs in each worker before its calls."""
    with make(kind, 2, initializer=init_state, initargs=initargs) as ex:
        futs = [ex.submit(get_init_state) for _ in range(4)]
        assert [f.result(10) for f in futs] == ["ready:1"] * 4


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_failing_initializer_fails_the_calls_with_a_broken_executor_error(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """The stdlib breaks the whole pool (BrokenThreadPool / BrokenProcessPool, both
    BrokenExecutor), and later submits raise. By design conveyor fails each call a
    failed worker was given with WorkerInitError, also a BrokenExecutor, whose cause
    is the initializer's exception; ``except BrokenExecutor`` catches both."""
    with caplog.at_level(logging.CRITICAL), make(kind, 2, initializer=init_fails) as ex:
        futs = [ex.submit(pow, 2, i) for i in range(3)]
        for fut in futs:
            with pytest.raises(BrokenExecutor) as info:
                fut.result(10)
            assert isinstance(info.value, WorkerInitError)
            assert isinstance(info.value.__cause__, ValueError)
            assert "error in initializer" in str(info.value.__cause__)


# -- constructors -------------------------------------------------------------------
@pytest.mark.parametrize("number", [0, -1])
@pytest.mark.parametrize("kind", KINDS)
def test_max_workers_must_be_positive(kind: str, number: int) -> None:
    """executor.py test_max_workers_negative."""
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        make(kind, number)


@pytest.mark.parametrize("kind", KINDS)
def test_initializer_must_be_callable(kind: str) -> None:
    with pytest.raises(TypeError, match="initializer must be a callable"):
        make(kind, 1, initializer="not callable")


def test_thread_pool_default_max_workers() -> None:
    """test_thread_pool.py test_default_workers: ``min(32, cpus + 4)``; code in the wild
    reads ``_max_workers``."""
    import os

    ex = conveyor.ThreadPoolExecutor()
    try:
        assert ex._max_workers == min(32, len(os.sched_getaffinity(0)) + 4)
    finally:
        ex.shutdown()


@pytest.mark.parametrize("kind", KINDS)
def test_calls_use_at_most_max_workers_workers(kind: str) -> None:
    """test_saturation: many pending calls never use more than max_workers workers."""
    with make(kind, 2) as ex:
        futs = [ex.submit(who) for _ in range(40)]
        workers = {f.result(10) for f in futs}
    assert 1 <= len(workers) <= 2


def test_thread_name_prefix_names_the_worker_threads() -> None:
    """test_thread_names_assigned: threads are named ``{prefix}_{n}``. (Without a
    prefix the stdlib's names are ``ThreadPoolExecutor-N_M``; conveyor's are its own,
    ``conveyor-thread-N-M``, which its thread-leak checks look for.)"""
    barrier = threading.Barrier(3, timeout=10)

    def name_at_once() -> str:
        barrier.wait()
        return threading.current_thread().name

    ex = conveyor.ThreadPoolExecutor(max_workers=3, thread_name_prefix="SpecialPool")
    futs = [ex.submit(name_at_once) for _ in range(3)]
    names = [f.result(10) for f in futs]
    ex.shutdown(wait=True)
    assert len(set(names)) == 3
    for name in names:
        assert name.startswith("SpecialPool_")
        assert name.removeprefix("SpecialPool_").isdigit()
    left = [t.name for t in threading.enumerate() if t.name.startswith("SpecialPool")]
    assert not left, f"threads left after shutdown: {left}"


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_process_pool_accepts_an_mp_context(method: str) -> None:
    """``mp_context`` is accepted (conveyor starts fresh interpreters whatever it says,
    so the stdlib's fork-related limits, e.g. no ``max_tasks_per_child`` with
    "fork", do not apply)."""
    import multiprocessing

    ctx = multiprocessing.get_context(method)
    with conveyor.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert ex.submit(pow, 2, 10).result(20) == 1024
        assert ex.submit(pid_of).result(20) != pid_of()


# -- asyncio ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_run_in_executor(kind: str) -> None:
    """``loop.run_in_executor(executor, fn, *args)``: results, an exception, and
    several calls at once (they meet at a barrier, so they do run concurrently)."""
    tally = Tally()

    async def main(ex: Any) -> None:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(ex, pow, 2, 5) == 32
        with pytest.raises(ValueError, match="boom"):
            await loop.run_in_executor(ex, raise_value_error, "boom")
        pids = await asyncio.wait_for(asyncio.gather(
            *(loop.run_in_executor(ex, rendezvous, tally, "meet", 3) for _ in range(3))), 30)
        assert len(pids) == 3

    with make(kind, 3) as ex:
        asyncio.run(main(ex))
    assert tally.count("meet") == 3


def test_thread_pool_can_be_the_loops_default_executor() -> None:
    """``loop.set_default_executor`` takes only a ``ThreadPoolExecutor`` ("executor must
    be ThreadPoolExecutor instance", a TypeError otherwise, since Python 3.11); then
    ``run_in_executor(None, ...)`` and ``asyncio.to_thread`` use it."""
    async def main(ex: Any) -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ex)
        return (await loop.run_in_executor(None, worker_name),
                await asyncio.to_thread(worker_name))

    ex = conveyor.ThreadPoolExecutor(2, thread_name_prefix="DefaultExec")
    try:
        names = asyncio.run(main(ex))   # asyncio.run shuts the default executor down
    finally:
        ex.shutdown()
    assert all(n.startswith("DefaultExec_") for n in names), names
