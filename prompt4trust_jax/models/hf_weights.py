"""Hugging Face safetensors <-> our parameters, through a declarative key table.

Each `Rule` pairs a hub key template with our parameter path template (`{name}`
matches one dotted segment) and says whether the matrix is stored transposed
(torch Linear keeps [out, in]; ours is [in, out]) or otherwise permuted. The same table drives import
and export. Only safetensors are read: pickle checkpoints can execute code.
"""

import contextlib
import dataclasses
import functools
import json
import os
import re
from collections.abc import Mapping

import jax
import numpy as np
import safetensors
import safetensors.numpy

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_FILE = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class Rule:
  """`perm`: our axis k is the hub tensor's axis perm[k] (None: same layout)."""
  hf: str
  ours: str
  perm: tuple[int, ...] | None = None


T = (1, 0)  # torch Linear [out, in] -> ours [in, out]


@functools.lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
  parts = re.split(r"\{(\w+)\}", template)
  regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^.]+)" for i, p in enumerate(parts))
  return re.compile(regex + r"\Z")


def _translate(key: str, rules, src: str, dst: str):
  for rule in rules:
    m = _template_regex(getattr(rule, src)).match(key)
    if m:
      return getattr(rule, dst).format(**m.groupdict()), rule.perm
  return None, None


def hf_to_ours(key: str, rules) -> tuple[str | None, tuple[int, ...] | None]:
  return _translate(key, rules, "hf", "ours")


def ours_to_hf(path: str, rules) -> tuple[str | None, tuple[int, ...] | None]:
  return _translate(path, rules, "ours", "hf")


def weight_files(hf_dir: str) -> dict[str, str]:
  """Maps every tensor key of a checkpoint directory to the safetensors file holding it."""
  index_path = os.path.join(hf_dir, INDEX_FILE)
  if os.path.exists(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)["weight_map"]
    files = {k: os.path.join(hf_dir, v) for k, v in weight_map.items()}
    absent = sorted({f for f in files.values() if not os.path.exists(f)})
    if absent:
      raise FileNotFoundError(f"{index_path} lists shard files that are missing: {absent}. "
                              "Download every model-*.safetensors shard.")
    return files
  shards = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
  if not shards:
    pickles = sorted(f for f in os.listdir(hf_dir) if f.endswith(_PICKLE_SUFFIXES))
    if pickles:
      raise ValueError(
          f"{hf_dir} holds only pickle weights {pickles}; they are never loaded because "
          "unpickling can run arbitrary code. Re-save the model as safetensors, e.g. "
          "`model.save_pretrained(dir, safe_serialization=True)` in transformers.")
    raise FileNotFoundError(f"No *.safetensors weights in {hf_dir}.")
  files = {}
  for shard in shards:
    with safetensors.safe_open(os.path.join(hf_dir, shard), framework="numpy") as f:
      files.update({k: os.path.join(hf_dir, shard) for k in f.keys()})
  return files


def load(hf_dir: str, targets: Mapping[str, jax.ShapeDtypeStruct], rules,
         ignore: tuple[str, ...] = ()) -> dict[str, jax.Array]:
  """Loads `targets` (our path -> shape, dtype, sharding) from the safetensors of `hf_dir`.

  Every key, shape and dtype is checked from the file headers before a single
  tensor is read, so a bad checkpoint fails whole. Each device then reads only its
  own slice straight from the memory-mapped file (no full host copy of the model).
  """
  files = weight_files(hf_dir)
  ignore_res = [re.compile(p) for p in ignore]
  plan: dict[str, tuple[str, tuple[int, ...] | None]] = {}
  unknown = []
  for key in files:
    path, perm = hf_to_ours(key, rules)
    if path is None or path not in targets:
      if not any(r.search(key) for r in ignore_res):
        unknown.append(key)
      continue
    plan[path] = (key, perm)
  if unknown:
    raise ValueError(f"{hf_dir}: tensors this model does not have: {unknown[:8]}"
                     f"{' ...' if len(unknown) > 8 else ''}. Is config.json the checkpoint's own?")
  missing = [ours_to_hf(p, rules)[0] or p for p in targets if p not in plan]
  if missing:
    raise ValueError(f"{hf_dir}: checkpoint lacks tensors {missing[:8]}"
                     f"{' ...' if len(missing) > 8 else ''} (truncated or incomplete download?).")

  with contextlib.ExitStack() as stack:
    handles = {f: stack.enter_context(safetensors.safe_open(f, framework="numpy"))
               for f in sorted(set(files.values()))}
    slices = {}
    for path, (key, perm) in plan.items():
      sl = handles[files[key]].get_slice(key)
      hf_shape = tuple(sl.get_shape())
      shape = hf_shape if perm is None else tuple(hf_shape[a] for a in perm)
      if shape != tuple(targets[path].shape):
        expected = tuple(targets[path].shape)
        if perm is not None:
          expected = tuple(expected[perm.index(a)] for a in range(len(perm)))
        raise ValueError(f"{hf_dir}: tensor {key} has shape {hf_shape}, expected {expected} "
                         "for this config.json.")
      slices[path] = (sl, perm)

    def read(path, index):
      sl, perm = slices[path]
      if perm is None:
        return np.asarray(sl[index]).astype(targets[path].dtype)
      hf_index = tuple(index[perm.index(a)] for a in range(len(perm)))
      return np.transpose(np.asarray(sl[hf_index]), perm).astype(targets[path].dtype)

    return {path: jax.make_array_from_callback(t.shape, t.sharding,
                                               lambda index, path=path: read(path, index))
            for path, t in targets.items()}


def save(params: Mapping[str, jax.Array], out_dir: str, rules, *, dtype=None,
         max_shard_bytes: int = 4 << 30) -> None:
  """Writes `params` (our path -> array) as hub-layout safetensors shards (+ index)."""
  os.makedirs(out_dir, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for path in sorted(params):
    key, perm = ours_to_hf(path, rules)
    if key is None:
      raise ValueError(f"No Hugging Face name for parameter {path}; add a rule.")
    array = np.asarray(jax.device_get(params[path]))
    if dtype is not None:
      array = array.astype(dtype)
    if perm is not None:
      array = np.ascontiguousarray(np.transpose(array, np.argsort(perm)))
    if size and size + array.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = array
    size += array.nbytes
  if len(shards) == 1:
    safetensors.numpy.save_file(shards[0], os.path.join(out_dir, "model.safetensors"),
                                metadata={"format": "pt"})
    return
  weight_map, total = {}, 0
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    safetensors.numpy.save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
    weight_map.update({k: name for k in shard})
    total += sum(a.nbytes for a in shard.values())
  with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
