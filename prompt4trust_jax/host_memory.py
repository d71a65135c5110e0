"""Host allocator settings for a long-running JAX process on CPU.

XLA:CPU allocates every intermediate buffer of every call with the C allocator.
glibc serves allocations above 32 MiB (and most allocations made from worker
threads) with fresh `mmap`s and returns them to the OS on free, so each call of a
training step page-faults its large buffers in again: on the project's 2-core
machine writing a fresh 131 MB array costs ~35 ms instead of ~4 ms, and a GRPO
update ~20% of its time. Keeping freed memory in one heap (what tcmalloc, the usual
`LD_PRELOAD` on TPU hosts, does by design) removes that cost.

This changes process-wide malloc behaviour, so the library never does it on import:
launchers (`experiments/`) and the test suite call `retain_freed_memory()` first thing.
"""

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1


def retain_freed_memory(top_pad_bytes: int = 256 << 20) -> bool:
  """Serves all allocations from one heap that is never trimmed; True if applied.

  - one arena (threads share it, so XLA's worker-thread allocations reuse it too);
  - no `mmap` for large blocks (they come from, and go back to, the heap);
  - the heap is not trimmed on free, and grows `top_pad_bytes` at a time.
  Call before JAX starts its thread pools (first thing in `main`). A no-op returning
  False where the C library is not glibc (macOS, musl).
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX),
              (_M_TOP_PAD, min(top_pad_bytes, _INT_MAX)))
  return all(mallopt(param, value) == 1 for param, value in settings)
