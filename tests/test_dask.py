"""``backend="dask"`` on real dask.distributed clusters (LocalCluster, worker processes).

The contract tests run on dask too (the ``backend`` fixture); these cover what
is dask's own: streaming with a bounded number of tasks on the cluster, lost
workers, cancellation on the cluster, the cluster conveyor starts and stops,
the three ways to name a cluster, and the error when dask is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import conveyor
from conveyor.errors import TaskTimeout, WorkerCrashed

from ._crossproc import Gate, Tally
from ._dask_helpers import conveyor_tasks, square
from ._executor_util import wait_until
from .conftest import child_processes, wait_no_child_processes

distributed = pytest.importorskip("distributed")


def test_same_answer_on_a_client_an_address_and_a_cluster_object(client: Any) -> None:
    expected = [x * x for x in range(300)]
    assert list(conveyor.map(square, range(300), backend="dask", cluster=client)) == expected
    address = client.scheduler.address
    assert list(conveyor.map(square, range(300), backend="dask", cluster=address)) == expected
    assert sorted(conveyor.map(square, range(300), backend="dask", cluster=client,
                               ordered=False)) == expected
    # the client given is the user's: still usable afterwards
    assert client.submit(square, 7).result() == 49


def test_streams_with_a_bounded_number_of_tasks_on_the_cluster(client: Any) -> None:
    """An endless input: conveyor reads it lazily and never has more than two tasks
    per worker thread on the cluster (client.map would want the whole input)."""
    pulled = 0
    most = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        i = 0
        while True:
            pulled += 1
            yield i
            i += 1

    def slow(x: int) -> int:
        time.sleep(0.01)
        return x

    before = set(conveyor_tasks(client))   # another test's, not yet garbage-collected
    got = []
    with conveyor.map(slow, endless(), backend="dask", cluster=client, window=16) as results:
        for x in results:
            got.append(x)
            most = max(most, len(conveyor_tasks(client, running_only=True)))
            if len(got) == 60:
                break
    assert got == list(range(60))
    assert pulled <= 60 + 16 + 1
    assert 1 <= most <= 2 * 2    # the session cluster has 2 threads
    # The results are still held here: their tasks must be released all the same.
    assert wait_until(lambda: not set(conveyor_tasks(client)) - before), conveyor_tasks(client)
    del results


def nap(x: int) -> int:
    time.sleep(0.05)
    return x


def test_a_cluster_that_grows_during_a_run_is_used() -> None:
    """Without workers=, conveyor counts the cluster's threads again as it runs:
    workers that join later get tasks (two per thread on the cluster)."""
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=50)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        seen: list[int] = []
        with conveyor.map(nap, range(10_000), backend="dask", cluster=client,
                          batch=1) as results:
            for i, _ in enumerate(results):
                seen.append(len(conveyor_tasks(client, running_only=True)))
                if i == 15:
                    assert max(seen) <= 2, seen   # one thread: two tasks at most
                    cluster.scale(3)
                    assert wait_until(lambda: sum(client.nthreads().values()) == 3, 60)
                    grown = len(seen)
                if i > 15 and max(seen[grown:]) > 2:
                    break
                assert i < 600, f"never more than 2 tasks on 3 threads: {seen[-20:]}"
        assert 2 < max(seen[grown:]) <= 6, seen
    finally:
        client.close()
        cluster.close()


def test_early_exit_cancels_the_runs_tasks_on_the_cluster(client: Any) -> None:
    gate = Gate()
    tally = Tally()

    def wait(x: int) -> int:
        tally.add("started")
        gate.wait(30)
        return x

    before = set(conveyor_tasks(client))   # another test's, not yet garbage-collected
    results = conveyor.map(wait, range(100), backend="dask", cluster=client, batch=1)
    assert wait_until(lambda: tally.count("started") >= 2)
    assert set(conveyor_tasks(client)) - before
    results.close()
    # cancelled on the cluster: the scheduler forgets the tasks (the running
    # calls end when their worker thread returns: dask cannot interrupt them)
    assert wait_until(lambda: not set(conveyor_tasks(client)) - before, 10), \
        conveyor_tasks(client)
    gate.set()
    assert tally.count("started") <= 4
    # The calls that were running end now; none is left on a worker thread to
    # hold up the next test's tasks.
    assert wait_until(lambda: not any(client.run(_executing).values())), \
        client.run(_executing)


def _executing(dask_worker: Any) -> list[str]:
    return [str(ts.key) for ts in dask_worker.state.executing]


def test_errors_follow_the_policy_with_the_worker_side_traceback(client: Any) -> None:
    def check(x: int) -> int:
        if x % 10 == 3:
            raise ValueError(f"bad {x}")
        return x

    with pytest.raises(ValueError, match="bad 3") as info:
        list(conveyor.map(check, range(50), backend="dask", cluster=client))
    assert isinstance(info.value.__cause__, conveyor.errors.RemoteTraceback)
    assert "in check" in str(info.value.__cause__)
    assert any("item #3" in n for n in getattr(info.value, "__notes__", []))
    out = list(conveyor.map(check, range(20), backend="dask", cluster=client,
                            on_error="return"))
    assert [type(v).__name__ for v in out].count("ValueError") == 2
    results = conveyor.map(check, range(20), backend="dask", cluster=client, on_error="skip")
    assert list(results) == [x for x in range(20) if x % 10 != 3]
    assert results.stats.failed == 2


def test_retries_are_conveyors_per_item(client: Any, tmp_path: Path) -> None:
    tally = Tally()

    def flaky(x: int) -> int:
        if tally.add(f"item {x}") < 3 and x == 5:
            raise ConnectionError("try again")
        return x

    out = list(conveyor.map(flaky, range(10), backend="dask", cluster=client, retries=2,
                            backoff=0.01))
    assert out == list(range(10))
    assert tally.count("item 5") == 3
    assert tally.count("item 4") == 1   # its batch-mates are not re-run


def test_a_worker_killed_mid_run_has_its_tasks_rerun(own_cluster: Any) -> None:
    """SIGKILL a worker process of a real LocalCluster while it runs a task:
    dask re-runs the task elsewhere and the run completes."""
    gate = Gate()
    tally = Tally()

    def work(x: int) -> tuple[int, int]:
        tally.add(f"pid {os.getpid()}")
        if x == 0:
            gate.wait(30)
        return x, os.getpid()

    pids = set(own_cluster.run(os.getpid).values())
    results = conveyor.map(work, range(20), backend="dask", cluster=own_cluster, batch=1)
    assert wait_until(lambda: any(tally.count(f"pid {p}") for p in pids))
    victim = next(p for p in pids if tally.count(f"pid {p}"))
    os.kill(victim, signal.SIGKILL)
    gate.set()
    out = list(results)
    assert [x for x, _ in out] == list(range(20))
    assert out[0][1] != victim   # item 0's task was re-run on a live worker
    own_cluster.wait_for_workers(2, timeout=30)


def test_a_task_that_kills_its_worker_fails_alone_with_worker_crashed(own_cluster: Any
                                                                      ) -> None:
    """Item 3 kills its worker each time it runs: once dask gives up on it
    (allowed-failures), only that item fails, also when it shared a batch."""
    def bomb(x: int) -> int:
        if x == 3:
            os._exit(7)
        return x

    for batch in (1, 6):
        results = conveyor.map(bomb, range(8), backend="dask", cluster=own_cluster,
                               batch=batch, on_error="return")
        out: list[Any] = list(results)
        assert isinstance(out[3], WorkerCrashed), out
        assert [x for i, x in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
        # The engine ran the blamed task again (at least once, alone) and counted it
        assert results.stats.rerun >= 1, results.stats
        assert results.stats.failed == 1 and results.stats.retried == 0
        own_cluster.wait_for_workers(2, timeout=30)


def test_a_cluster_conveyor_starts_is_shut_down_leaving_no_process() -> None:
    seen: set[int] = set()

    def where(x: int) -> int:
        return os.getpid()

    results = conveyor.map(where, range(50), backend="dask", workers=2)
    seen.update(results)
    assert seen and os.getpid() not in seen   # ran in worker processes
    assert results.stats.done == 50
    assert not wait_no_child_processes(15), child_processes()
    for pid in seen:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == \
            psutil.STATUS_ZOMBIE


def test_timeout_fails_the_item_and_restarts_the_worker_of_a_cluster_conveyor_started(
        ) -> None:
    def nap(x: int) -> int:
        if x == 2:
            time.sleep(1000)
        return x

    t0 = time.monotonic()
    out: list[Any] = list(conveyor.map(nap, range(6), backend="dask", workers=2,
                                       timeout=1.5, on_error="return"))
    assert isinstance(out[2], TaskTimeout)
    assert [x for i, x in enumerate(out) if i != 2] == [0, 1, 3, 4, 5]
    assert time.monotonic() - t0 < 30
    assert not wait_no_child_processes(15)


def test_pool_initializer_and_worker_state_on_dask(client: Any) -> None:
    def init(scale: int) -> None:
        conveyor.worker_state()["scale"] = scale

    def scaled(x: int) -> int:
        scale: int = conveyor.worker_state()["scale"]
        return x * scale

    with conveyor.Pool("dask", cluster=client, initializer=init, initargs=(3,)) as pool:
        assert pool.workers == 2
        assert list(pool.map(scaled, range(10))) == [3 * x for x in range(10)]
        assert pool.submit(scaled, 5).result(timeout=30) == 15


def test_pipeline_with_a_dask_stage(client: Any) -> None:
    out = (conveyor.stream(range(40))
           .map(square, backend="dask", cluster=client, name="square")
           .map(lambda x: x + 1, workers=4)
           .filter(lambda x: x % 2 == 0)
           .to_list())
    assert out == [x * x + 1 for x in range(40) if (x * x + 1) % 2 == 0]


def test_bad_dask_arguments_fail_before_any_work(client: Any) -> None:
    with pytest.raises(ValueError, match="needs backend='dask'"):
        conveyor.map(square, [1], cluster=client)
    with pytest.raises(TypeError, match="cluster must be"):
        conveyor.map(square, [1], backend="dask", cluster=42)

    async def coro(x: int) -> int:
        return x
    with pytest.raises(TypeError, match="coroutine function"):
        conveyor.map(coro, [1], backend="dask", cluster=client)
    with pytest.raises(ValueError, match="max_tasks_per_worker"):
        conveyor.map(square, [1], backend="dask", cluster=client, max_tasks_per_worker=3)
    import threading
    lock = threading.Lock()
    with pytest.raises(conveyor.errors.NotPicklable, match="lock"):
        conveyor.map(lambda x: (lock, x), [1], backend="dask", cluster=client)


def test_without_dask_installed_the_error_says_how_to_install_it(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import importlib.abc, sys
        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dask", "distributed"):
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = textwrap.dedent("""
        import conveyor
        print(list(conveyor.map(abs, [-1, 2])))   # the other backends work
        try:
            conveyor.map(abs, [1], backend="dask")
        except ImportError as exc:
            print("ERROR", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "[1, 2]" in proc.stdout
    assert 'ERROR backend=\'dask\' needs dask.distributed' in proc.stdout
    assert 'pip install "conveyor[dask]"' in proc.stdout


def test_pool_submit_survives_a_call_that_kills_its_worker(own_cluster: Any) -> None:
    """The call that kills its worker fails with WorkerCrashed (after running once
    more alone); the pool goes on, and close() runs what was queued."""
    with conveyor.Pool("dask", cluster=own_cluster) as pool:
        bad: Any = pool.submit(os._exit, 3)
        with pytest.raises(WorkerCrashed):
            bad.result(timeout=60)
        own_cluster.wait_for_workers(2, timeout=30)
        late = [pool.submit(square, i) for i in range(6)]
    # leaving the block is close(): the queued calls ran before it returned
    assert [f.result(timeout=0) for f in late] == [i * i for i in range(6)]


# Tasks that wait; each start is a line in the file named by argv[1]. Without
# cluster=, conveyor starts a LocalCluster in a helper; with "own", the script
# starts one itself (one worker process of 8 threads: 16 tasks on the cluster),
# whose errors it logs (silence_logs would hide tornado's too).
WAITING_MAP = """
import sys, time
import conveyor

STARTED = sys.argv[1]   # (sys.argv on a dask worker is the worker's)


def wait(x):
    with open(STARTED, "a") as f:
        f.write("started\\n")
    time.sleep(60)
    return x


if sys.argv[2] == "helper":   # no __main__ guard: conveyor's cluster lives in a helper
    for x in conveyor.map(wait, range(1000), backend="dask", workers=2, batch=1):
        pass
elif __name__ == "__main__":   # (the cluster's workers import this file: spawn)
    import distributed
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=8,
                                       dashboard_address=":0", silence_logs=40)
    for x in conveyor.map(wait, range(1000), backend="dask", cluster=cluster, batch=1):
        pass
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", ["helper", "own"])
def test_ctrl_c_during_a_map_prints_one_traceback_and_leaves_no_process(
        tmp_path: Path, cluster: str) -> None:
    """A real SIGINT while tasks run: the script exits promptly with the
    KeyboardInterrupt traceback only, and its cluster is gone with it. (Dask's own
    done-callbacks, through a thread pool the interpreter shuts down as it exits,
    printed a second one: "cannot schedule new futures after interpreter shutdown".)"""
    script = tmp_path / "waiting_map.py"
    script.write_text(WAITING_MAP)
    started = tmp_path / "started"
    started.touch()
    proc = subprocess.Popen([sys.executable, str(script), str(started), cluster],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        assert wait_until(lambda: started.read_text().count("started") >= 2, 90), \
            proc.stderr.read() if proc.poll() is not None and proc.stderr else "not started"
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert tree   # the cluster's processes
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 20
        assert proc.returncode != 0
        assert err.count("Traceback (most recent call last)") == 1, err
        assert "\nKeyboardInterrupt\n" in err, err
        assert "cannot schedule new futures" not in err, err
        _, alive = psutil.wait_procs(tree, timeout=15)
        assert not alive, [(p.pid, p.cmdline()[:3]) for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
