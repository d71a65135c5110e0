"""Loading and saving models: hub directories, Orbax checkpoints, hub export.

A converted checkpoint is a hub-style directory whose weights are an Orbax
checkpoint in `params/` instead of safetensors: config.json, tokenizer and
processor files stay as downloaded, so both kinds load through `from_pretrained`.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from flax import traverse_util

from prompt4trust_jax import sharding as sharding_lib
from prompt4trust_jax.models import families
from prompt4trust_jax.models import hf_weights
from prompt4trust_jax.models import lora

PARAMS_DIR = "params"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_config(path: str) -> dict:
  config_path = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Model directory {path} does not exist.")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{path} has no config.json; point at a Hugging Face model directory "
                            "(as downloaded from the hub) or a converted checkpoint.")
  with open(config_path) as f:
    return json.load(f)


def flat_params(model: nnx.Module) -> dict[str, jax.Array]:
  """Parameters as a flat dict keyed by dotted path (e.g. `model.layers.0.mlp.up_proj.kernel`)."""
  return {".".join(map(str, path)): var.get_value()
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def abstract_model(family: families.Family, config):
  return nnx.eval_shape(lambda: family.model_cls(config, rngs=nnx.Rngs(0)))


def graphdef_in(model: nnx.Module, dtype: str | None) -> nnx.GraphDef | None:
  """`model`'s graph computing and storing in `dtype` (its parameters then cast to it);
  None when `dtype` is unset or already the model's."""
  if not dtype or (dtype == model.config.dtype and dtype == model.config.param_dtype):
    return None
  config = dataclasses.replace(model.config, dtype=dtype, param_dtype=dtype)
  adapters = lora.config_of(model)

  def build():
    out = type(model)(config, rngs=nnx.Rngs(0))
    return out if adapters is None else lora.apply(out, adapters, nnx.Rngs(0))

  return nnx.graphdef(nnx.eval_shape(build))


def _targets(model: nnx.Module, mesh, rules=None) -> dict[str, jax.ShapeDtypeStruct]:
  return {path: jax.ShapeDtypeStruct(
              x.shape, x.dtype, sharding=sharding_lib.param_sharding(path, x.shape, mesh, rules))
          for path, x in flat_params(model).items()}


def _with_params(model: nnx.Module, params: dict[str, jax.Array]) -> nnx.Module:
  graphdef, state = nnx.split(model)
  nested = traverse_util.unflatten_dict({tuple(k.split(".")): v for k, v in params.items()})
  nnx.replace_by_pure_dict(state, nested)
  return nnx.merge(graphdef, state)


def from_pretrained(path: str, dtype: str = "float32", param_dtype: str | None = None,
                    mesh: jax.sharding.Mesh | None = None, rules=None,
                    **config_overrides) -> nnx.Module:
  """Loads a hub directory or converted checkpoint, dispatching on `model_type`.

  `dtype` is the compute dtype; parameters are stored in `param_dtype` (default:
  `dtype`). With a `mesh`, each parameter lands directly on its sharding, by `rules`
  (default `sharding.param_rules()`; a frozen sampler: `sharding.sampling_rules()`).
  `config_overrides` set text-model options such as `remat="full"`.
  """
  hf_config = read_config(path)
  family = families.get(hf_config.get("model_type"), os.path.join(path, "config.json"))
  config = family.config_from_hf(hf_config, dtype=jnp.dtype(dtype).name,
                                 param_dtype=jnp.dtype(param_dtype or dtype).name,
                                 **config_overrides)
  model = abstract_model(family, config)
  targets = _targets(model, mesh, rules)
  params_dir = os.path.join(os.path.abspath(path), PARAMS_DIR)
  if os.path.isdir(params_dir):
    params = ocp.StandardCheckpointer().restore(params_dir, targets)
  else:
    params = hf_weights.load(path, targets, family.rules, family.ignore)
  return _with_params(model, params)


def _write_config_and_assets(model, out_dir: str, source_dir: str | None) -> None:
  """Copies tokenizer/processor files (and config.json) from `source_dir`, or writes a config."""
  os.makedirs(out_dir, exist_ok=True)
  if source_dir:
    for name in os.listdir(source_dir):
      src = os.path.join(source_dir, name)
      if (os.path.isfile(src) and not name.endswith(_WEIGHT_SUFFIXES)
          and name != hf_weights.INDEX_FILE):
        shutil.copy2(src, os.path.join(out_dir, name))
  if not os.path.exists(os.path.join(out_dir, "config.json")):
    family = _family_of(model)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(family.config_to_hf(model.config), f, indent=2)


def _family_of(model) -> families.Family:
  for family in families.FAMILIES.values():
    if isinstance(model, family.model_cls):
      return family
  raise TypeError(f"{type(model).__name__} is not a registered model family.")


def save(model: nnx.Module, out_dir: str, source_dir: str | None = None) -> None:
  """Saves `model` as an Orbax checkpoint directory that `from_pretrained` reads."""
  out_dir = os.path.abspath(out_dir)
  _write_config_and_assets(model, out_dir, source_dir)
  params_dir = os.path.join(out_dir, PARAMS_DIR)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(params_dir, flat_params(model), force=True)
  checkpointer.wait_until_finished()


def export_hf(model: nnx.Module, out_dir: str, source_dir: str | None = None,
              dtype: str | None = None) -> None:
  """Writes `model` as a hub-layout safetensors directory other stacks can serve (LoRA
  adapters merged into the kernels)."""
  if lora.has_adapters(model):
    model = lora.merged(model)
  _write_config_and_assets(model, out_dir, source_dir)
  hf_weights.save(flat_params(model), out_dir, _family_of(model).rules,
                  dtype=None if dtype is None else jnp.dtype(dtype))
