"""A worked pipeline: download (threads) -> parse (processes) -> store (asyncio).

The I/O is simulated (sleeps), the parsing is real CPU work. Run it:

    python examples/pipeline.py            # 200 pages
    python examples/pipeline.py 40         # fewer
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from dataclasses import dataclass

import conveyor


@dataclass
class Page:
    url: str
    body: bytes


@dataclass
class Doc:
    url: str
    digest: str
    ok: bool


def download(url: str) -> Page:
    """Blocking I/O (think requests.get): threads overlap the waiting."""
    time.sleep(0.02)
    return Page(url, url.encode() * 2000)


def parse(page: Page) -> Doc:
    """CPU-bound Python: worker processes run it in parallel."""
    digest = page.body
    for _ in range(200):
        digest = hashlib.sha256(digest).digest()
    return Doc(page.url, digest.hex()[:12], ok=not page.url.endswith("7"))


async def store(doc: Doc) -> str:
    """Async I/O (think an async database client): many at once on one loop."""
    await asyncio.sleep(0.01)
    return f"{doc.url} {doc.digest}"


def main(n: int) -> None:
    urls = (f"https://example.org/page/{i}" for i in range(n))   # read lazily
    pipeline = (conveyor.stream(urls)
                .map(download, workers=16)                   # threads
                .map(parse, backend="process", workers=2)    # processes
                .filter(lambda doc: doc.ok, name="ok")       # drop the bad ones
                .map(store, workers=50)                      # asyncio (async def)
                .open())
    t0 = time.perf_counter()
    with pipeline:
        stored = sum(1 for _ in pipeline)
    print(f"stored {stored} of {n} pages in {time.perf_counter() - t0:.2f} s")
    for name, stats in pipeline.stats.items():
        print(f"  {name:<18} done {stats.done:>4}  busy {stats.busy_fraction:4.0%}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
