"""Host-memory setting of CPU training: keep the freed scratch buffer instead of faulting
it back in on every step.

XLA's CPU runtime allocates each execution's scratch buffer (623 MiB for the
albert-base-v2 pretraining step at 8 x 128) with ``malloc`` and frees it afterwards. glibc
serves allocations that large with ``mmap`` and returns them with ``munmap``, so every step
takes a page fault (and a kernel zeroing) per 4 KiB of scratch: 159,494 minor faults per
step, about 10% of the step on a 2-core machine (issue 12, part 3, measured with
``getrusage``). With one malloc arena, no ``mmap`` for large blocks and no trimming, the
freed block stays in the heap and the next step reuses it without a fault.

Pretraining and fine-tuning make the setting when they start. It is process-wide and has
to be made before JAX starts its CPU backend (the backend's threads attach to their own
malloc arenas when they start; made later it changes nothing for them). Its cost: the
process keeps its peak heap instead of returning memory to the system, which a training
process reaches on its first step anyway. Only glibc has these switches; elsewhere this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# The settings: glibc's tunable name, its mallopt() parameter (malloc.h), the value.
_SETTINGS = (("arena_max", -8, 1), ("mmap_max", -4, 0), ("trim_threshold", -1, 2**31 - 1))
# The same settings as glibc tunables, for the environment of a process not yet started
# (glibc reads GLIBC_TUNABLES when the process starts; the test suite gives it to its children).
GLIBC_TUNABLES = ":".join(f"glibc.malloc.{name}={value}" for name, _, value in _SETTINGS)


def jax_backend_started() -> bool:
    """Whether JAX has started a backend in this process (its threads exist)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without it: assume started
        return True


def retain_freed_memory() -> bool:
    """One malloc arena, heap (not ``mmap``) for large blocks, no trimming; ``True`` if
    glibc took the settings. Does nothing once JAX has started (too late to help, and it
    would only keep the process's peak heap: e.g. a test process or a notebook)."""
    if not sys.platform.startswith("linux") or jax_backend_started():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for _, param, value in _SETTINGS)
