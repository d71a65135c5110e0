import ctypes
import sys

import numpy as np
import pytest

from prompt4trust_jax import host_memory


def test_applies_on_glibc_and_keeps_memory_usable():
  if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL("libc.so.6"), "mallopt"):
    pytest.skip("glibc only")
  assert host_memory.retain_freed_memory() is True
  assert host_memory.retain_freed_memory() is True  # idempotent
  # Large blocks now come from the heap; they must still allocate, free and reuse.
  for _ in range(3):
    block = np.ones(64 << 20, np.uint8)  # 64 MiB, above glibc's mmap threshold
    assert int(block.sum()) == 64 << 20
    del block


def test_noop_off_linux(monkeypatch):
  monkeypatch.setattr(sys, "platform", "darwin")
  assert host_memory.retain_freed_memory() is False
