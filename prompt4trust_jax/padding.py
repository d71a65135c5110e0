"""Host-side padding of token-id prompts to the shapes of compiled programs.

Prompt lengths and batch sizes are bucketed, so prompts of a similar size reuse one compiled
program; prompts are left padded, so every row writes step t at the same cache slot.
"""

import math
from collections.abc import Iterable, Sequence

import numpy as np

from prompt4trust_jax import hosts, sharding


def bucket_length(n: int) -> int:
  """Prompt lengths round up to 16, then to four buckets per doubling.

  16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, ..., 256, 320, ...: beyond 32, under 25%
  padding (prefill time grows with the padded length; a 311-token downstream prefix
  padded to 512 spent 40% of it on padding) for 4 compiled shapes per doubling.
  """
  if n <= 16:
    return 16
  step = max(8, (1 << (n - 1).bit_length()) // 8)
  return -(-n // step) * step


def bucket_batch(n: int, multiple: int = 1) -> int:
  """The next power of two >= n, rounded up to a multiple of `multiple`."""
  return -(-(1 << (n - 1).bit_length()) // multiple) * multiple


def bucket_rows(n: int, copies: int = 1) -> int:
  """`bucket_batch` for n prompts, each sampled `copies` times, whose rows are split over the
  D data-parallel devices of the mesh set by `jax.set_mesh` (`sharding.batch_devices`):
  prompts x copies is a multiple of D, so every device gets as many rows. (Fewer prompts
  than D then share their prefill, computed on every device: the rows are what is split.)

  In a multi-host run n is this host's and the count is its block of the global rows: the
  same on every host (`hosts.agree`), a multiple of its own devices for the prompts too (a
  host's prompts are its block of a global array; fewer prompts per host than devices per
  host are padded)."""
  if hosts.multiple():
    return bucket_batch(hosts.agree(n), hosts.local_batch_devices())
  devices = sharding.batch_devices()
  return bucket_batch(n, devices // math.gcd(devices, copies))


def shared_length(lengths: Iterable[int]) -> int:
  """`bucket_length` of the longest of `lengths` over every host (`hosts.agree`): the padded
  length of prompts that form one global array."""
  return bucket_length(hosts.agree(max(lengths)))


def left_pad(prompts: Sequence[Sequence[int]], length: int, batch: int, pad_token_id: int):
  """`(tokens, mask)` of shape `[batch, length]`, each prompt flush right."""
  tokens = np.full((batch, length), pad_token_id, np.int32)
  mask = np.zeros((batch, length), np.int32)
  for row, prompt in enumerate(prompts):
    if len(prompt):
      tokens[row, length - len(prompt):] = prompt
      mask[row, length - len(prompt):] = 1
  return tokens, mask
