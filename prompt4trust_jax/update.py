"""The GRPO policy update: a pure `train_step(state, batch) -> (state, metrics)`.

Parameters stay in float32 (the master copy Optax updates); the policy may compute
in bfloat16 (its config's `dtype`). A batch holds rollouts as one token array per
completion: the prompt left padded to P tokens, then the completion right padded
to N tokens, with the sampler's log-probabilities as the "old" policy's.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from prompt4trust_jax import grpo
from prompt4trust_jax import sharding as sharding_lib
from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models import qwen2


@struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, model: nnx.Module, tx: optax.GradientTransformation) -> "TrainState":
    graphdef, params = nnx.split(model)
    return cls(step=jnp.int32(0), params=params, opt_state=tx.init(params), graphdef=graphdef,
               tx=tx)


@struct.dataclass
class Batch:
  tokens_BxL: jax.Array  # prompt (left padded to P) then completion (right padded to N)
  attention_mask_BxL: jax.Array
  completion_mask_BxN: jax.Array  # completion tokens up to and including the first EOS
  old_logp_BxN: jax.Array  # from the sampler at generation time
  advantages_B: jax.Array
  ref_logp_BxN: jax.Array | None = None  # the frozen reference's, when beta > 0


def optimizer(learning_rate: float | optax.Schedule = 1e-6, weight_decay: float = 0.0,
              max_grad_norm: float = 1.0, b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW after global-norm clipping (the paper: lr 1e-6, max grad norm 1.0)."""
  return optax.chain(optax.clip_by_global_norm(max_grad_norm),
                     optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay))


def completion_logprobs(model, tokens_BxL, attention_mask_BxL, completion_length: int,
                        temperature: float = 1.0, group_size: int = 1):
  """Per-token log-probs and entropies `[B, N]` of the last N tokens under the policy.

  Only the positions that predict completion tokens go through the LM head. With
  `group_size` G > 1, rows g*G .. g*G + G-1 must share their prompt (the first L - N
  tokens and mask, as a GRPO rollout's G completions do): each prompt then runs once
  and its G completions attend to its keys/values as a shared prefix (`kv_cache.shared`)
  instead of recomputing it G times. Same values, up to float rounding.
  """
  L = tokens_BxL.shape[1]
  N = completion_length
  if group_size > 1 and L > N:
    h_BxNxD = _grouped_hidden(model, tokens_BxL, attention_mask_BxL, N, group_size)
  else:
    mask_BxTxS = kv_cache_lib.attention_mask(attention_mask_BxL, 0, L)
    h_BxLxD, _ = model.step(model.embed(tokens_BxL),
                            qwen2.positions_from_mask(attention_mask_BxL), mask_BxTxS, None, 0)
    h_BxNxD = h_BxLxD[:, L - N - 1:L - 1]
  # logits / T as (h / T) @ head: the matmul writes the tempered logits directly instead
  # of a further pass over the [B, N, V] tensor (forward and backward).
  return grpo.token_logprobs(model.logits(h_BxNxD * (1.0 / temperature)), tokens_BxL[:, L - N:])


def _grouped_hidden(model, tokens_BxL, attention_mask_BxL, N: int, G: int):
  """Hidden states `[B, N, D]` predicting the completions, each prompt computed once."""
  B, L = tokens_BxL.shape
  if B % G:
    raise ValueError(f"A batch of {B} completions does not split into groups of {G}.")
  P = L - N
  prompt_QxP, prompt_mask_QxP = tokens_BxL[::G, :P], attention_mask_BxL[::G, :P]
  cache = model.init_cache(B // G, P)
  h_QxPxD, cache = model.step(
      model.embed(prompt_QxP), qwen2.positions_from_mask(prompt_mask_QxP),
      kv_cache_lib.attention_mask(prompt_mask_QxP, 0, P), cache, 0)
  completion_mask_BxN = attention_mask_BxL[:, P:]
  # Positions count real tokens, as positions_from_mask over the whole row would.
  prompt_length_B = jnp.repeat(prompt_mask_QxP.astype(jnp.int32).sum(-1), G)
  positions_BxN = jnp.maximum(
      prompt_length_B[:, None] + jnp.cumsum(completion_mask_BxN.astype(jnp.int32), -1) - 1, 0)
  h_BxNxD, _ = model.step(
      model.embed(tokens_BxL[:, P:]), positions_BxN,
      kv_cache_lib.attention_mask(completion_mask_BxN, 0, N),
      kv_cache_lib.shared(cache, prompt_mask_QxP, G, N), 0)
  # The last prompt position (a real token: prompts are left padded) predicts the first.
  first_Bx1xD = jnp.repeat(h_QxPxD[:, -1:], G, axis=0)
  return jnp.concatenate([first_Bx1xD, h_BxNxD[:, :-1]], axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "completion_length", "temperature",
                                             "group_size"))
def reference_logprobs(graphdef, params, tokens_BxL, attention_mask_BxL, completion_length: int,
                       temperature: float = 1.0, group_size: int = 1) -> jax.Array:
  """The frozen reference's per-token log-probs `[B, N]`, once per rollout (for the KL)."""
  model = nnx.merge(graphdef, params)
  return completion_logprobs(model, tokens_BxL, attention_mask_BxL, completion_length,
                             temperature, group_size)[0]


def _loss_fn(params, graphdef, batch: Batch, config: grpo.LossConfig, temperature: float,
             group_size: int):
  model = nnx.merge(graphdef, params)
  N = batch.completion_mask_BxN.shape[1]
  logp_BxN, entropy_BxN = completion_logprobs(model, batch.tokens_BxL, batch.attention_mask_BxL,
                                              N, temperature, group_size)
  value, metrics = grpo.loss(logp_BxN, batch.old_logp_BxN, batch.advantages_B,
                             batch.completion_mask_BxN, config, batch.ref_logp_BxN)
  mask = batch.completion_mask_BxN.astype(jnp.float32)
  metrics["entropy"] = (entropy_BxN * mask).sum() / jnp.maximum(mask.sum(), 1.0)
  return value, metrics


def _train_step(state: TrainState, batch: Batch, *, config: grpo.LossConfig,
                temperature: float = 1.0, micro_batches: int = 1, group_size: int = 1):
  """One optimizer step on `batch`, accumulating gradients over `micro_batches` slices.

  As in TRL, each micro-batch's loss is normalised on its own and the gradients averaged.
  `group_size` G > 1 computes each group's shared prompt once (`completion_logprobs`).
  """
  grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
  if micro_batches == 1:
    (_, metrics), grads = grad_fn(state.params, state.graphdef, batch, config, temperature,
                                  group_size)
  else:
    B = batch.tokens_BxL.shape[0]
    if B % (micro_batches * group_size):
      raise ValueError(f"A batch of {B} does not split into {micro_batches} micro-batches of "
                       f"whole groups of {group_size}.")
    split = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)

    def accumulate(grads, micro):
      (_, metrics), g = grad_fn(state.params, state.graphdef, micro, config, temperature,
                                group_size)
      return jax.tree.map(jnp.add, grads, g), metrics

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, metrics = jax.lax.scan(accumulate, zeros, split)
    grads = jax.tree.map(lambda g: g / micro_batches, grads)
    metrics = jax.tree.map(jnp.mean, metrics)
  metrics["grad_norm"] = optax.tree.norm(grads)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # A non-finite loss, gradient or update leaves the state as it was (the caller counts skips).
  ok = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        & jnp.isfinite(optax.tree.norm(updates)))
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  metrics["skipped"] = (~ok).astype(jnp.float32)
  mask = batch.completion_mask_BxN.astype(jnp.float32)
  metrics["completion_length/mean"] = mask.sum(-1).mean()
  metrics["advantage/mean"] = batch.advantages_B.mean()
  metrics["advantage/std"] = batch.advantages_B.std()
  return state.replace(step=state.step + ok.astype(jnp.int32), params=params,
                       opt_state=opt_state), metrics


train_step = jax.jit(_train_step,
                     static_argnames=("config", "temperature", "micro_batches", "group_size"),
                     donate_argnames=("state",))
train_step.__doc__ = _train_step.__doc__


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
  """Where each part of the state lives: parameters by the partition rules, Adam moments
  like their parameters, counters replicated."""
  params = sharding_lib.tree_shardings(state.params, mesh)
  opt_state = optax.tree_map_params(state.tx, lambda _, s: s, state.opt_state, params,
                                    transform_non_params=lambda _: sharding_lib.replicated(mesh))
  return state.replace(step=sharding_lib.replicated(mesh), params=params, opt_state=opt_state)


def sharded_train_step(state: TrainState, mesh: jax.sharding.Mesh, *, config: grpo.LossConfig,
                       temperature: float = 1.0, micro_batches: int = 1, group_size: int = 1):
  """`(state placed on mesh, step_fn)`: `step_fn(state, batch)` is `train_step` jitted with
  explicit in/out shardings (batch split over data x fsdp) and the state donated."""
  state_sh = state_shardings(state, mesh)
  batch_sh = sharding_lib.batch_sharding(mesh)
  jitted = jax.jit(
      functools.partial(_train_step, config=config, temperature=temperature,
                        micro_batches=micro_batches, group_size=group_size),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, sharding_lib.replicated(mesh)),
      donate_argnums=0)
  devices = mesh.shape["data"] * mesh.shape["fsdp"]

  def step_fn(state: TrainState, batch: Batch):
    if batch.tokens_BxL.shape[0] % devices:
      raise ValueError(f"A batch of {batch.tokens_BxL.shape[0]} completions does not split over "
                       f"the {devices} data-parallel devices; change questions or generations.")
    return jitted(state, jax.device_put(batch, batch_sh))

  return jax.device_put(state, state_sh), step_fn
