"""How the engine's hot loops are compiled: numba, with the conventions every kernel follows.

    @kernel
    def add(a, b, out): ...

* `cache=True`: compiled code is cached next to the sources (`__pycache__`), so only the first
  run on a machine compiles (`make venv` warms the cache: `python -m engine.warmup`).
* No reference counting (`_nrt=False`): numba otherwise increments and decrements a shared count
  on every array passed to a compiled call, atomically; in our small per-event functions that
  cost more than the work. Kernels therefore never allocate: their callers pass every output and
  scratch array in (`allocates=True` lifts that for the rare kernel that must, such as a test helper).
* Unsigned indices in byte loops (`np.uint64`): numba adds a negative-index check to every access
  with a signed index; the scanner and byte copies are several times faster without it. Mixing
  unsigned and signed integers turns into float arithmetic, so such loops use typed constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba as nb

__all__ = ["kernel"]


def kernel(fn: Callable[..., Any] | None = None, *, inline: bool = False, allocates: bool = False) -> Any:
    """Compile `fn` as a kernel (see the module docstring); `inline`: inline it into its callers."""
    options: dict[str, Any] = {"cache": True}
    if not allocates:
        options["_nrt"] = False
    if inline:
        options["inline"] = "always"

    def wrap(f: Callable[..., Any]) -> Any:
        return nb.njit(**options)(f)

    return wrap(fn) if fn is not None else wrap
