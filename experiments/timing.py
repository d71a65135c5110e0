"""Wall-clock timing and process set-up shared by the benchmarks."""

import time

import numpy as np
from absl import flags

from prompt4trust_jax import host_memory

_RETAIN_FREED_MEMORY = flags.DEFINE_bool(
    "retain_freed_memory", True,
    "Keep freed host memory in one heap (host_memory.py), as the launchers do. The "
    "transformers/TRL comparison runs in the same process under the same allocator.")


def setup_host() -> None:
  """First thing in a benchmark's main, before JAX or torch start threads."""
  if _RETAIN_FREED_MEMORY.value:
    host_memory.retain_freed_memory()


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `repeats` calls of `fn`, after one untimed warm-up call."""
  fn()  # compilation, allocations
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))
