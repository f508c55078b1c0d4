"""conveyor: run many tasks at once, on threads, processes or asyncio, behind one small API.

    import conveyor

    for page in conveyor.map(fetch, urls, workers=32):      # threads, input order
        save(page)

    for n in conveyor.map(pow, bases, exponents):          # several iterables, zipped
        ...
    for n in conveyor.starmap(pow, pairs):                   # fn(*item)
        ...

    async for r in conveyor.amap(async_fetch, urls):         # inside async code
        ...

    with conveyor.Pool(workers=8) as pool:                   # workers stay warm
        results = list(pool.map(work, items))
        future = pool.submit(work, item)

The guide, the reference and the design are in the documentation under ``docs/``
(``mkdocs serve`` shows it as a site).
"""


from . import errors as errors
from ._api import amap as amap
from ._api import astarmap as astarmap
from ._api import map as map
from ._api import starmap as starmap
from ._backends import register_backend as register_backend
from ._executors import ProcessPoolExecutor as ProcessPoolExecutor
from ._executors import ThreadPoolExecutor as ThreadPoolExecutor
from ._loop import run_coroutine as run_coroutine
from ._pipeline import Pipeline as Pipeline
from ._pipeline import Stream as Stream
from ._pipeline import stream as stream
from ._pool import Pool as Pool
from ._progress import Stats as Stats
from ._results import AsyncResults as AsyncResults
from ._results import Results as Results
from ._worker import worker_state as worker_state
from .errors import ConveyorError as ConveyorError
from .errors import TaskTimeout as TaskTimeout
from .errors import WorkerCrashed as WorkerCrashed

__all__ = (
    "AsyncResults",
    "ConveyorError",
    "Pipeline",
    "Pool",
    "ProcessPoolExecutor",
    "Results",
    "Stats",
    "Stream",
    "TaskTimeout",
    "ThreadPoolExecutor",
    "WorkerCrashed",
    "__version__",
    "amap",
    "astarmap",
    "errors",
    "map",
    "register_backend",
    "run_coroutine",
    "starmap",
    "stream",
    "worker_state",
)

__version__ = "0.1.0"
