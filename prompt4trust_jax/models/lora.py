"""LoRA adapters on a decoder's linear projections (Hu et al., 2021).

`apply` gives each targeted projection (`layers.Linear`) A `[in, r]` ~ N(0, 1/in) and B
`[r, out]` = 0 as `nnx.LoRAParam`s, so the adapted model starts exactly at the base model;
its output is x W + b + (alpha / r) x A B. Training then keeps optimizer state for the
adapters only (`trainable`), the GRPO reference is the base with the adapters off
(`adapters_off`: no copy of the base), checkpoints hold the adapters, and `merged` folds
them into the kernels for a hub-layout export.

At the paper's size (Qwen2.5-1.5B, rank 16, every projection) the adapters are 18.5M
parameters, 1.2% of the model: AdamW's two moments shrink from 12.4 GB to 0.15 GB.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from prompt4trust_jax.models import layers

# Every projection of a Qwen2 decoder layer, as PEFT's "all-linear" picks them.
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  rank: int
  alpha: float = 32.0
  targets: tuple[str, ...] = ALL_PROJECTIONS

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}.")
    unknown = set(self.targets) - set(ALL_PROJECTIONS)
    if not self.targets or unknown:
      raise ValueError(f"LoRA targets {sorted(unknown) or '()'} are not projections of the "
                       f"decoder; choose among {ALL_PROJECTIONS}.")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _targeted(model: nnx.Module, targets):
  for path, module in nnx.iter_modules(model):
    if isinstance(module, layers.Linear) and path and path[-1] in targets:
      yield path, module


def apply(model: nnx.Module, config: LoRAConfig, rngs: nnx.Rngs) -> nnx.Module:
  """Adds zero-initialised adapters to `model`'s targeted projections (in place)."""
  found = 0
  for _, module in _targeted(model, config.targets):
    d_in, d_out = module.kernel.shape
    a = jax.random.normal(rngs.params(), (d_in, config.rank), jnp.float32) * d_in**-0.5
    module.lora_a = nnx.LoRAParam(a)
    module.lora_b = nnx.LoRAParam(jnp.zeros((config.rank, d_out), jnp.float32))
    module.lora_scale = config.scale
    found += 1
  if not found:
    raise ValueError(f"{type(model).__name__} has no projections named {config.targets}.")
  model.lora_config = config  # static: rebuilding the graph (`models.graphdef_in`) reads it
  return model


def config_of(model: nnx.Module) -> LoRAConfig | None:
  return getattr(model, "lora_config", None)


def has_adapters(model: nnx.Module) -> bool:
  return any(m.lora_a is not None for _, m in _targeted(model, ALL_PROJECTIONS))


def trainable(model: nnx.Module):
  """The filter of what training updates: the adapters when there are any, else all
  parameters."""
  return nnx.LoRAParam if has_adapters(model) else nnx.Param


def adapters_off(adapters: nnx.State) -> nnx.State:
  """Adapters that add nothing (B = 0): with them the model computes the base exactly."""
  return jax.tree.map(jnp.zeros_like, adapters)


def merged(model: nnx.Module) -> nnx.Module:
  """A copy of `model` with each adapter folded into its kernel (W + s A B) and removed."""
  graphdef, state = nnx.split(model)
  out = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
  for _, module in _targeted(out, ALL_PROJECTIONS):
    if module.lora_a is not None:
      module.kernel[...] = module.effective_kernel()
      del module.lora_a, module.lora_b, module.lora_scale
  if config_of(out) is not None:
    del out.lora_config
  return out
