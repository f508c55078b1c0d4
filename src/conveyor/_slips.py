"""Telling users about their slips.

* **Options.** :func:`unknown_options` is the error for an option a call does
  not take: it names the call, the option the user likely meant (other
  libraries' names too, e.g. ``chunksize``) and the valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence

__all__ = ["unknown_options"]

#: Options of other libraries that users pass by habit: conveyor's name for
#: each, and what to add about it.
_HABITS = {
    "chunksize": ("batch", " batch='auto' (the default) sizes batches by itself; batch=N "
                           "sends N items to a worker at a time."),
    "max_workers": ("workers", ""),
    "n_jobs": ("workers", ""),
    "processes": ("workers", ""),
}


def unknown_options(where: str, names: Collection[str], valid: Sequence[str],
                    hints: dict[str, str] | None = None) -> TypeError:
    """The error for options ``names`` that ``where`` does not take.

    ``hints``: what to say about an option (given, or meant) that belongs
    elsewhere, e.g. ``Pool.map``'s ``workers``.
    """
    hints = hints or {}
    parts = []
    for name in sorted(names):
        hint = hints.get(name)
        if hint is None:
            meant, more = _HABITS.get(name, ("", ""))
            if not meant:
                close = difflib.get_close_matches(name, valid, n=1)
                meant = close[0] if close else ""
            hint = f"did you mean {meant}=?{more}" if meant in valid else hints.get(meant)
        part = f"unexpected option {name}=" + (f"; {hint}" if hint else "")
        parts.append(part if part.endswith((".", "?")) else part + ".")
    return TypeError(f"{where}: {' '.join(parts)} {where} takes: {', '.join(valid)}.")
