"""The front door: what ``conveyor`` exports, and how it is typed."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import conveyor
import conveyor.errors


def test_all_matches_module() -> None:
    # Submodules appear as attributes once imported (conveyor.cli by the demo
    # tests); of those only `errors` is public.
    public = {name for name in dir(conveyor) if not name.startswith("_")
              and (name == "errors" or not isinstance(getattr(conveyor, name), ModuleType))}
    assert set(conveyor.__all__) - {"__version__"} == public
    for name in conveyor.__all__:
        assert hasattr(conveyor, name), name


def test_errors_hierarchy() -> None:
    e = conveyor.errors
    assert issubclass(e.TaskTimeout, e.ConveyorError)
    assert issubclass(e.TaskTimeout, TimeoutError)
    assert issubclass(e.WorkerCrashed, e.ConveyorError)
    assert issubclass(e.PoolClosed, e.ConveyorError)
    assert issubclass(e.WorkerInitError, e.ConveyorError)
    for name in e.__all__:
        obj = getattr(e, name)
        assert obj.__doc__, f"{name} needs a docstring saying who raises it"


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("conveyor").joinpath("py.typed").is_file()


if TYPE_CHECKING:
    # Checked by mypy --strict (CI), never run.
    from typing_extensions import assert_type

    def _typing() -> None:
        def f(x: int) -> str:
            return str(x)

        async def g(x: int) -> bytes:
            return b""

        assert_type(conveyor.map(f, [1, 2]), conveyor.Results[str])
        assert_type(conveyor.map(g, [1, 2]), conveyor.Results[bytes])
        assert_type(conveyor.amap(g, [1, 2]), conveyor.AsyncResults[bytes])
        assert_type(conveyor.run_coroutine(g(1)), bytes)
        with conveyor.Pool() as pool:
            assert_type(pool.map(f, [1]), conveyor.Results[str])
            assert_type(pool.submit(f, 1).result(), str)
        assert_type(conveyor.map(f, [1]).stats, conveyor.Stats)

    def _typing_several_arguments(xs: list[int], names: list[str]) -> None:
        def add(a: int, b: int) -> int:
            return a + b

        async def label(a: int, b: str) -> str:
            return b * a

        def three(a: int, b: int, c: str) -> float:
            return 0.0

        assert_type(conveyor.map(add, xs, xs), conveyor.Results[int])
        assert_type(conveyor.map(label, xs, names), conveyor.Results[str])
        assert_type(conveyor.map(three, xs, xs, names, workers=2), conveyor.Results[float])
        assert_type(conveyor.map(add, xs, xs, xs, xs), conveyor.Results[int])  # unchecked args
        # typeshed types pow(int, int) as Any (its sign decides int or float), so
        # this is what builtins.map(pow, xs, xs) gives too.
        assert_type(conveyor.map(pow, xs, xs), conveyor.Results[Any])
        assert_type(conveyor.starmap(add, [(1, 2)]), conveyor.Results[int])
        assert_type(conveyor.starmap(label, [(1, "a")]), conveyor.Results[str])
        assert_type(conveyor.amap(label, xs, names), conveyor.AsyncResults[str])
        assert_type(conveyor.amap(add, xs, xs), conveyor.AsyncResults[int])
        assert_type(conveyor.astarmap(label, [(1, "a")]), conveyor.AsyncResults[str])
        with conveyor.Pool() as pool:
            assert_type(pool.starmap(add, [(1, 2)]), conveyor.Results[int])
        assert_type(conveyor.stream([(1, 2)]).starmap(add), conveyor.Stream[int])
        conveyor.map(add, names, xs)  # type: ignore[arg-type]
        conveyor.map(add, xs, on_error="ignore")  # type: ignore[call-overload]
