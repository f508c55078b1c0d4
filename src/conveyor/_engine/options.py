"""The checked, normalised options of one run (``_api`` checks them and says what they mean)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Options"]


@dataclass(frozen=True)
class Options:
    """Checked, normalised options of one run (see ``_api`` for their meaning)."""

    ordered: bool = True
    window: int | None = None
    batch: int | None = None          # None: adaptive
    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 0.1
    on_error: str = "raise"
    rate: float | None = None
    progress: bool = False
    progress_options: tuple[tuple[str, Any], ...] = ()
    desc: str | None = None
