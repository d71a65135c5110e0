"""Wall-clock timing shared by the benchmarks."""

import time

import numpy as np


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `repeats` calls of `fn`, after one untimed warm-up call."""
  fn()  # compilation, allocations
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))
