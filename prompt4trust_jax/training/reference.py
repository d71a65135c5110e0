"""The frozen reference policy of GRPO's KL term.

It is the policy as training started, used once per rollout for `[B, N]` log-probs. At the
paper's size a float32 copy is 6.2 GB held on every device for one forward per rollout, so
it can be kept in a smaller dtype (bfloat16 halves it, and computes in it, as TRL's
reference in bfloat16 does) and in host memory between uses (`pinned_host`, moved to the
device for the forward and dropped after it). A LoRA policy's reference is its base with
the adapters off (`lora.adapters_off`): the frozen base in the train state, no copy.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from prompt4trust_jax import models
from prompt4trust_jax.models import lora
from prompt4trust_jax.training import update


def _with_memory_kind(x: jax.Array, kind: str) -> jax.Array:
  return jax.device_put(x, x.sharding.with_memory_kind(kind))


@dataclasses.dataclass
class Reference:
  """Parameters of the reference and how to run them; `logprobs` as `update.reference_logprobs`."""
  graphdef: nnx.GraphDef | None
  params: nnx.State | None
  host: bool = False
  adapters_off: bool = False  # LoRA: the train state's base, adapters zeroed

  @classmethod
  def create(cls, model: nnx.Module, dtype: str | None = None, host: bool = False) -> "Reference":
    """A copy of `model`'s parameters in `dtype` (None / "": as they are), in host memory
    when `host`. Shardings are the model's (a mesh's layout carries over). For a model with
    LoRA adapters, no copy: the base it is trained from (`dtype` and `host` do not apply)."""
    if lora.has_adapters(model):
      return cls(None, None, adapters_off=True)
    graphdef, params = nnx.split(model)
    converted = models.graphdef_in(model, dtype)
    if converted is not None:
      graphdef, params = converted, jax.tree.map(lambda x: x.astype(dtype), params)
    else:
      params = jax.tree.map(jnp.copy, params)
    if host:
      params = jax.tree.map(lambda x: _with_memory_kind(x, "pinned_host"), params)
    return cls(graphdef, params, host)

  def logprobs(self, tokens_BxL, attention_mask_BxL, completion_length: int,
               state: update.TrainState | None = None, **kwargs):
    """`[B, N]` log-probs; `state` (the current train state) is needed with `adapters_off`."""
    graphdef, params = self.graphdef, self.params
    if self.adapters_off:
      if state is None:
        raise ValueError("A LoRA policy's reference reads the train state's base; pass state=.")
      graphdef, params = state.graphdef, state.model_state(lora.adapters_off(state.params))
    elif self.host:  # to the device for this forward only; the copy is freed after it
      params = jax.tree.map(lambda x: _with_memory_kind(x, "device"), params)
    return update.reference_logprobs(graphdef, params, tokens_BxL, attention_mask_BxL,
                                     completion_length, **kwargs)
