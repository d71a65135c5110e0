"""The hosts of a multi-host run (one JAX process each): the part of every global batch each
holds, and the few host-level collectives that keep the hosts' shapes and metrics in step.

Each host reads its own examples (`data.batches(shard_index=..., shard_count=...)`), pads them
to a row count and lengths every host shares (`agree`), and hands its rows to the jitted
programs as its block of a global array (`global_rows`: the mesh's devices are process major,
so host h holds block h of every array split over the batch axes). It reads back only its own
rows (`local_rows`) and reduces metrics over every host's (`all_rows`).

In a single process every function here returns its input (or the obvious value): one-host
runs are unchanged and need no `jax.distributed`.
"""

import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from prompt4trust_jax import sharding


def multiple() -> bool:
  return jax.process_count() > 1


def is_writer() -> bool:
  """Process 0 writes what a run writes once (metrics, reports, evaluation outputs)."""
  return jax.process_index() == 0


def prepared_once(read: Callable[[], Any], what: str):
  """`read()` on process 0 first (preparing whatever it writes on first use: a TFDS data set,
  the demos' random checkpoints), then on the others once it is done: the hosts of a
  multi-host run would otherwise all write the same files at once in a shared folder."""
  if not multiple():
    return read()
  out = read() if is_writer() else None
  multihost_utils.sync_global_devices(f"prompt4trust_jax prepared: {what}")
  return out if is_writer() else read()


def agree(n: int) -> int:
  """The largest `n` over the hosts: a padded length or row count every host must share (the
  hosts' blocks of a global array have one shape)."""
  if not multiple():
    return int(n)
  return int(np.max(multihost_utils.process_allgather(np.asarray(n, np.int64))))


def local_batch_devices(mesh=None) -> int:
  """The data-parallel devices of one host (`sharding.batch_devices` over the hosts)."""
  devices, hosts = sharding.batch_devices(mesh), jax.process_count()
  if devices % hosts:
    raise ValueError(f"The mesh's batch axes (data x fsdp = {devices} devices) do not split over "
                     f"{hosts} hosts; every host needs its own rows, so make data x fsdp a "
                     "multiple of the process count (tensor within a host).")
  return devices // hosts


def _mesh():
  mesh = jax.sharding.get_mesh()
  if mesh.empty:
    raise ValueError("A multi-host run places rows under its mesh: call inside "
                     "sharding.using(mesh).")
  return mesh


def global_rows(tree, axis: int = 0):
  """This host's rows (numpy, axis `axis`) -> global arrays split over the batch axes of the
  mesh set by `jax.set_mesh` (`jax.make_array_from_process_local_data`; every host passes
  as many rows). One process: `tree` unchanged (the programs split it themselves)."""
  if not multiple():
    return tree
  mesh = _mesh()

  def one(x):
    spec = P(*(None,) * axis, sharding.BATCH_AXES)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.asarray(x))

  return jax.tree.map(one, tree)


def local_rows(x) -> np.ndarray:
  """This host's rows (axis 0) of a global array split over the batch axes; one process: all
  of it."""
  if not multiple():
    return np.asarray(x)
  # Laid out rows-only first, so each of this host's shards holds whole rows.
  x = jax.device_put(x, NamedSharding(_mesh(), P(sharding.BATCH_AXES)))
  blocks = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # one per row block
  return np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])


def all_rows(x_local) -> np.ndarray:
  """Every host's rows of a per-host array, in process order (what one host alone would hold
  for the same global batch); one process: `x_local`."""
  x_local = np.asarray(x_local)
  if not multiple():
    return x_local
  return np.asarray(multihost_utils.process_allgather(x_local, tiled=True))


def part(items: Sequence) -> tuple[list, int]:
  """`(this host's items, how many of them count)`: host h's contiguous part of `items` (the
  parts in process order are `items`). Every host runs the same programs, so a host whose
  part is empty answers `items[:1]` and drops it (count 0)."""
  k = -(-len(items) // jax.process_count())
  mine = list(items[jax.process_index() * k:(jax.process_index() + 1) * k])
  return (mine, len(mine)) if mine else (list(items[:1]), 0)


def all_objects(obj) -> list:
  """Every host's `obj` (JSON-serialisable), in process order; one process: `[obj]`."""
  if not multiple():
    return [obj]
  encoded = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  padded = np.zeros(agree(len(encoded)), np.uint8)
  padded[:len(encoded)] = encoded
  sizes = all_rows(np.asarray([len(encoded)]))
  gathered = multihost_utils.process_allgather(padded)  # [hosts, longest]
  return [json.loads(bytes(row[:n])) for row, n in zip(gathered, sizes)]
