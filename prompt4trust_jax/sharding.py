"""Device meshes and where parameters live on them.

Mesh axes: `data` (batch), `fsdp` (parameters and batch), `tensor` (heads / MLP
width). Parameters are placed by regex rules on their dotted path, which each model family
declares beside its model (`param_rules`); an axis that is absent from the mesh or does not
divide a dimension is dropped (that dimension is replicated), so one rule table serves every
mesh from one CPU to a pod slice.
"""

import contextlib
import os
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# After every family's own rules (`param_rules`): what any family may carry.
_SHARED_RULES = (
    (r"lora_(a|b)$", P()),  # LoRA adapters: rank 8-64, small enough to replicate
    (r".*", P()),  # norm scales and biases: replicated
)


def param_rules() -> tuple[tuple[str, P], ...]:
  """Every registered family's partition rules (`models/families.py`, each family's own beside
  its model), in registry order without repeats, then the shared ones; the first match wins.

  Every parameter of two or more dimensions of every family has a rule before the
  replicated default (tests/sharding_test.py checks each family).
  """
  # Imported here: the models import this module (`BATCH_AXES`), so it cannot import them first.
  from prompt4trust_jax.models import families
  rules = []
  for family in families.FAMILIES.values():
    rules += [rule for rule in family.partition_rules if rule not in rules]
  return tuple(rules) + _SHARED_RULES


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 for "all remaining devices"."""
  devices = jax.devices() if devices is None else devices
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into data={data} fsdp={fsdp} "
                       f"tensor={tensor}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"{len(devices)} are present.")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that the mesh lacks or that do not divide their dimension."""
  fitted = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    size = mesh.shape.get(axis, 0) if axis else 0
    fitted.append(axis if size > 1 and dim % size == 0 else None)
  return P(*fitted)


def param_sharding(path: str, shape: tuple[int, ...], mesh: Mesh | None, rules=None):
  """The sharding of one parameter (a single device when there is no mesh); `rules` None:
  `param_rules()`."""
  if mesh is None:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  for pattern, spec in param_rules() if rules is None else rules:
    if re.search(pattern, path):
      return NamedSharding(mesh, fit_spec(spec, shape, mesh))
  raise ValueError(f"No sharding rule matches parameter {path}.")


def dotted_path(path) -> str:
  """`model.layers.0.mlp.up_proj.kernel` for a pytree key path (Variable `.value` dropped)."""
  parts = []
  for key in path:
    name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))
    if name != "value":
      parts.append(str(name))
  return ".".join(parts)


def tree_shardings(params, mesh: Mesh | None, rules=None):
  """A sharding for every parameter of a pytree (e.g. an `nnx.State`), by its path."""
  rules = param_rules() if rules is None else rules
  return jax.tree_util.tree_map_with_path(
      lambda path, x: param_sharding(dotted_path(path), x.shape, mesh, rules), params)


BATCH_AXES = ("data", "fsdp")  # the mesh axes examples are split over


def sampling_rules(rules=None) -> tuple[tuple[str, P], ...]:
  """`rules` (default `param_rules()`) without the `fsdp` axis: the sampling layout.

  Sampling runs every row's decode step on its own device, so a weight split over fsdp would
  be gathered (and its partial products reduced: the fsdp-split LM head's float32 logits,
  `[rows, V]`) at every token. In this layout the weights are whole on every data-parallel
  device and split over `tensor` only: the policy's sampling copy is gathered once per
  rollout (`sampling_copy`), the frozen downstream is kept in it.
  """
  rules = param_rules() if rules is None else rules
  def drop(axis):
    if isinstance(axis, tuple):
      kept = tuple(a for a in axis if a != "fsdp")
      return kept[0] if len(kept) == 1 else (kept or None)
    return None if axis == "fsdp" else axis
  return tuple((pattern, P(*map(drop, spec))) for pattern, spec in rules)


def sampling_copy(params, mesh: Mesh | None, dtype=None):
  """`params` in the sampling layout (`sampling_rules`) and in `dtype` (None: as they are):
  the policy's weights for one rollout, its fsdp shards gathered once rather than at every
  token. Arrays already laid out so (and in `dtype`) are not copied."""
  if dtype is not None:
    params = jax.tree.map(lambda x: x.astype(dtype), params)
  if mesh is None:
    return params
  return jax.device_put(params, tree_shardings(params, mesh, sampling_rules()))


def using(mesh: Mesh | None):
  """`jax.set_mesh(mesh)`, or no context for None: what the samplers trace under, so that
  their rows split over the batch axes (`layers.batch_constraint`)."""
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def batch_devices(mesh: Mesh | None = None) -> int:
  """How many ways a batch is split: the batch axes' sizes of `mesh` (default: the mesh set
  by `jax.set_mesh`, 1 without one)."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if mesh.empty:
    return 1
  return int(np.prod([mesh.shape.get(axis, 1) for axis in BATCH_AXES]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Examples split over every data-parallel device (data x fsdp); the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# Read by `initialize_distributed` when its arguments are unset (JAX itself reads only the
# coordinator's address from the environment, not the process count or id).
DISTRIBUTED_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
                   "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-host run (once; later calls return); call before anything touches a
  device.

  On a TPU pod slice (and under SLURM or Open MPI) every argument is discovered; on
  plain GPU hosts pass the coordinator's host:port, the process count and this
  host's index, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  On CPU hosts the processes' collectives run over gloo.
  """
  if jax.distributed.is_initialized():  # the launcher joined already
    return
  given = dict(coordinator_address=coordinator_address, num_processes=num_processes,
               process_id=process_id)
  for name, variable in DISTRIBUTED_ENV.items():
    if given[name] is None and os.environ.get(variable):
      value = os.environ[variable]
      given[name] = value if name == "coordinator_address" else int(value)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices' only
  jax.distributed.initialize(**given)


def join_configured(config) -> None:
  """Joins the run `config.distributed` describes (`initialize_distributed`'s arguments; a
  TPU pod slice: `{}`), if set: what the launchers, the loop and the harness call first."""
  if config.get("distributed") is not None:
    initialize_distributed(**config.distributed)
