"""How the engine's hot loops are compiled: numba, with the conventions every kernel follows.

    @kernel
    def add(a, b, out): ...

* `cache=True`: compiled code is cached on disk, so only the first run on a machine compiles
  (`make venv` warms the cache: `python -m engine.warmup`). numba invalidates a cached function
  only when its own source file changes, yet a kernel carries the code of every kernel it calls
  (inlined or linked in), often from other files: a kernel cached before a change to one of those
  would keep running the old code. So the cache lives in a directory named by a digest of every
  source file that defines kernels (`kernel_cache_dir`): any change to any of them starts a fresh
  cache. It is `engine/__pycache__/halflife-kernels-<digest>` (under `NUMBA_CACHE_DIR` when that
  is set, or `~/.cache/halflife` when the package directory is read-only).
* No reference counting (`_nrt=False`): numba otherwise increments and decrements a shared count
  on every array passed to a compiled call, atomically; in our small per-event functions that
  cost more than the work. Kernels therefore never allocate: their callers pass every output and
  scratch array in (`allocates=True` lifts that for the rare kernel that must, such as a test helper).
* Unsigned indices in byte loops (`np.uint64`): numba adds a negative-index check to every access
  with a signed index; the scanner and byte copies are several times faster without it. Mixing
  unsigned and signed integers turns into float arithmetic, so such loops use typed constants.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba as nb

__all__ = ["kernel", "kernel_cache_dir"]

_ROOT = Path(__file__).resolve().parent.parent
_KERNEL_PACKAGES = ("engine", "operators", "rules")
CACHE_PREFIX = "halflife-kernels-"


def _kernel_sources_digest() -> str:
    digest = hashlib.sha256(f"numba {nb.__version__}".encode())
    for package in _KERNEL_PACKAGES:
        for path in sorted((_ROOT / package).glob("*.py")):
            text = path.read_bytes()
            if b"@kernel" in text or b"@intrinsic" in text:
                digest.update(f"{package}/{path.name}\0{len(text)}\0".encode())
                digest.update(text)
    return digest.hexdigest()[:16]


def kernel_cache_dir() -> str:
    """Where this version of the kernels is cached (see the module docstring)."""
    base = os.environ.get("NUMBA_CACHE_DIR")
    if not base:
        base = str(_ROOT / "engine" / "__pycache__")
        try:
            os.makedirs(base, exist_ok=True)
            writable = os.access(base, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            base = os.path.join(os.path.expanduser("~"), ".cache", "halflife")
    return os.path.join(base, CACHE_PREFIX + _kernel_sources_digest())


# Read by numba when a kernel is defined, so before any is: every kernel module imports this one first.
nb.config.CACHE_DIR = kernel_cache_dir()  # type: ignore[attr-defined]


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
