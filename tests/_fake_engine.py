"""A core driven by hand: a fake backend whose completions the test triggers,
and a fake clock the test advances. No threads, no sleeps."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from conveyor._backends._base import Backend, Batch, Completion, Running, take_unstarted
from conveyor._engine.clock import FakeClock
from conveyor._engine.core import Core
from conveyor._engine.options import Options
from conveyor._progress import Stats


class FakeBackend(Backend):
    """Records what the core asks; runs nothing until the test says so."""

    name = "fake"
    can_steal = True

    def __init__(self, workers: int, clock: FakeClock) -> None:
        self.workers = workers
        self.clock = clock
        self.submitted: list[Batch] = []     # every batch, in submission order
        self.cancelled: list[Batch] = []
        self.expired: list[tuple[Running, BaseException]] = []
        self.current: dict[Batch, tuple[int, float]] = {}   # timed batches: item running

    def start(self) -> None:
        return

    def submit(self, batch: Batch) -> None:
        self.submitted.append(batch)

    def cancel(self, batch: Batch) -> None:
        batch.cancelled = True
        self.cancelled.append(batch)

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        return

    def running(self) -> list[Running]:
        return [Running(b, pos, since) for b, (pos, since) in self.current.items()]

    def expire(self, entry: Running, error: BaseException) -> bool:
        self.expired.append((entry, error))
        return True

    def steal(self, batch: Batch) -> int | None:
        return take_unstarted(batch)

    def begin(self, batch: Batch, pos: int = 0) -> None:
        """A worker starts item ``pos`` of ``batch`` now (for deadlines)."""
        batch.started = self.clock.now()
        self.current[batch] = (pos, self.clock.now())

    def work(self, batch: Batch, n: int) -> None:
        """A worker that shares its progress (as threads do) runs ``n`` items of ``batch``."""
        if batch.it is None:
            batch.started = self.clock.now()
            batch.it = iter(batch.items)
            batch.out, batch.errs = [], []
        assert batch.out is not None
        for _ in range(n):
            batch.out.append(value(next(batch.it)))


class FakeSharedBackend(FakeBackend):
    """A backend whose workers draw the items of one batch one by one (asyncio's)."""

    shares_batches = True
    can_steal = False


def value(x: Any) -> Any:
    """What the fake workers 'compute' for an item, unless a test says otherwise."""
    return ("done", x)


class Engine:
    """A core over ``items`` on a fake backend: the test plays the workers and the consumer."""

    def __init__(self, items: Iterable[Any], *, workers: int = 2, total: int | None = None,
                 shared: bool = False, **options: Any) -> None:
        self.clock = FakeClock()
        kind = FakeSharedBackend if shared else FakeBackend
        self.backend = kind(workers, self.clock)
        self.reported: list[Completion] = []
        self.pulled = 0
        self.core = Core(value, self._count(items), total, self.backend, Options(**options),
                         sink=self.reported.append, clock=self.clock)
        self.results: list[Any] = []    # handed out, not yet taken by the consumer

    def _count(self, items: Iterable[Any]) -> Iterator[Any]:
        for x in items:
            self.pulled += 1
            yield x

    @property
    def batches(self) -> list[Batch]:
        """The batches submitted and not yet reported, oldest first."""
        return list(self.core.in_flight)

    def step(self) -> None:
        self.core.step()
        for chunk in self.core.ordering.take():
            self.results.extend(chunk)

    def complete(self, batch: Batch, values: list[Any] | None = None,
                 errors: list[int] | None = None, *, busy: float = 0.0001,
                 rerun: tuple[int, int] | None = None) -> None:
        """Report ``batch`` (by default: every item it still holds, computed), then step."""
        if values is None:
            values = [value(x) for x in batch.items[:batch.limit]]
        self.backend.current.pop(batch, None)
        self.core.completed(Completion(batch, values, errors, busy, rerun=rerun))
        self.step()

    def report(self, batch: Batch, at: int, values: list[Any], errors: list[int] | None = None,
               *, more: bool = True, busy: float = 0.0) -> None:
        """Outcomes of ``batch.items[at:at + len(values)]``; ``more``: the batch still runs
        (a backend that shares batches reports runs of outcomes as they finish)."""
        self.core.completed(Completion(batch, values, errors, busy, offset=at, more=more))
        self.step()

    def fail(self, batch: Batch, at: int, error: BaseException) -> None:
        """Report ``batch`` with item ``at`` failed with ``error``, the others done."""
        values: list[Any] = [value(x) for x in batch.items[:batch.limit]]
        values[at] = error
        self.complete(batch, values, [at])

    def consume(self) -> list[Any]:
        """The consumer takes what was handed out (freeing window room), then step."""
        got, self.results = self.results, []
        self.core.intake.window.took(len(got))
        self.step()
        return got

    def run_all(self) -> list[Any]:
        """Complete every batch (oldest first) and consume, until nothing is in flight."""
        out: list[Any] = []
        self.step()
        while self.core.in_flight:
            self.complete(self.batches[0])
            out += self.consume()
        out += self.consume()
        return out

    def stats(self) -> Stats:
        return self.core.stats()

    @property
    def error(self) -> BaseException | None:
        end = self.core.end
        assert end is not None, "the run has not ended"
        return end.error
