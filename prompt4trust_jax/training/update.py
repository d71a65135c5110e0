"""The GRPO policy update: a pure `train_step(state, batch) -> (state, metrics)`.

Trained parameters stay in float32 (the master copy Optax updates); the policy may compute
in bfloat16 (its config's `dtype`). With LoRA adapters (`models.lora`) only they are
trained and have optimizer state; the base is held frozen in the state. A batch holds
rollouts as one token array per completion: the prompt left padded to P tokens, then the
completion right padded to N tokens, with the sampler's log-probabilities as the "old"
policy's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from prompt4trust_jax import sharding as sharding_lib
from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models import layers
from prompt4trust_jax.models import lora
from prompt4trust_jax.models.protocol import DecoderModel
from prompt4trust_jax.training import grpo
from prompt4trust_jax.training import logprobs as logprobs_lib


@struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State  # what the optimizer updates: all parameters, or the LoRA adapters
  opt_state: optax.OptState
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  frozen: nnx.State | None = None  # the rest of the model (the base under LoRA), never updated

  @classmethod
  def create(cls, model: nnx.Module, tx: optax.GradientTransformation) -> "TrainState":
    graphdef, params, frozen = nnx.split(model, lora.trainable(model), ...)
    return cls(step=jnp.int32(0), params=params, opt_state=tx.init(params), graphdef=graphdef,
               tx=tx, frozen=frozen)

  def model_state(self, params: nnx.State | None = None) -> nnx.State:
    """The whole model's state: `params` (default: the trained ones) and the frozen rest."""
    return nnx.merge_state(self.params if params is None else params, self.frozen)

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.model_state())


@struct.dataclass
class Batch:
  tokens_BxL: jax.Array  # prompt (left padded to P) then completion (right padded to N)
  attention_mask_BxL: jax.Array
  completion_mask_BxN: jax.Array  # completion tokens up to and including the first EOS
  old_logp_BxN: jax.Array  # from the sampler at generation time
  advantages_B: jax.Array
  ref_logp_BxN: jax.Array | None = None  # the frozen reference's, when beta > 0

  @classmethod
  def from_rollout(cls, output, copies: int, advantages_B: jax.Array) -> "Batch":
    """The layout above from the sampler's output (`sampling.GenerateOutput`, `copies`
    completions per prompt, prompt-major): each prompt as the sampler padded it, repeated
    for its completions, then the completion; its mask covers tokens up to and including
    the first EOS."""
    N = output.tokens_BxN.shape[1]
    completion_BxN = (np.arange(N)[None] < output.lengths_B[:, None]).astype(np.float32)
    prompt_BxP = np.repeat(output.prompt_QxP, copies, 0)
    prompt_mask_BxP = np.repeat(output.prompt_mask_QxP, copies, 0)
    return cls(
        tokens_BxL=jnp.asarray(np.concatenate([prompt_BxP, output.tokens_BxN], 1)),
        attention_mask_BxL=jnp.asarray(np.concatenate([prompt_mask_BxP, completion_BxN], 1),
                                       jnp.int32),
        completion_mask_BxN=jnp.asarray(completion_BxN),
        old_logp_BxN=jnp.asarray(output.logprobs_BxN), advantages_B=advantages_B)


def optimizer(learning_rate: float | optax.Schedule = 1e-6, weight_decay: float = 0.0,
              max_grad_norm: float = 1.0, b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW after global-norm clipping (the paper: lr 1e-6, max grad norm 1.0)."""
  return optax.chain(optax.clip_by_global_norm(max_grad_norm),
                     optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay))


def completion_logprobs(model: DecoderModel, tokens_BxL, attention_mask_BxL, completion_length: int,
                        temperature: float = 1.0, group_size: int = 1,
                        logprob_chunk: int | None = None):
  """Per-token log-probs and entropies `[B, N]` of the last N tokens under the policy.

  Only the positions that predict completion tokens go through the LM head, and their
  logits exist for about `logprob_chunk` tokens (rows x positions) at a time
  (`logprobs.from_hidden`; None: all B x N at once). With
  `group_size` G > 1, rows g*G .. g*G + G-1 must share their prompt (the first L - N
  tokens and mask, as a GRPO rollout's G completions do): each prompt then runs once
  and its G completions attend to its keys/values as a shared prefix (`kv_cache.prefix_only`)
  instead of recomputing it G times. Same values, up to float rounding.
  """
  L = tokens_BxL.shape[1]
  N = completion_length
  if group_size > 1 and L > N:
    h_BxNxD = _grouped_hidden(model, tokens_BxL, attention_mask_BxL, N, group_size)
  else:
    mask_BxTxS = kv_cache_lib.attention_mask(attention_mask_BxL, 0, L)
    h_BxLxD, _ = model.step(model.embed(tokens_BxL), model.positions(attention_mask_BxL),
                            mask_BxTxS, None, 0)
    h_BxNxD = h_BxLxD[:, L - N - 1:L - 1]
  # logits / T as (h / T) @ head: the matmul writes the tempered logits directly instead
  # of a further pass over the [B, N, V] tensor (forward and backward).
  dtype = jnp.dtype(model.text_config.dtype)
  positions = None if logprob_chunk is None else max(1, logprob_chunk // tokens_BxL.shape[0])
  return logprobs_lib.from_hidden((h_BxNxD * (1.0 / temperature)).astype(dtype),
                                  model.lm_head_kernel().astype(dtype), tokens_BxL[:, L - N:],
                                  positions)


def _grouped_hidden(model: DecoderModel, tokens_BxL, attention_mask_BxL, N: int, G: int):
  """Hidden states `[B, N, D]` predicting the completions, each prompt computed once."""
  B, L = tokens_BxL.shape
  if B % G:
    raise ValueError(f"A batch of {B} completions does not split into groups of {G}.")
  P = L - N
  prompt_QxP, prompt_mask_QxP = tokens_BxL[::G, :P], attention_mask_BxL[::G, :P]
  cache = model.init_cache(B // G, P)
  h_QxPxD, cache = model.step(
      model.embed(prompt_QxP), model.positions(prompt_mask_QxP),
      kv_cache_lib.attention_mask(prompt_mask_QxP, 0, P), cache, 0)
  completion_mask_BxN = attention_mask_BxL[:, P:]
  # The completions' positions are those of the whole rows' (a row's prompt is its group's).
  positions_BxN = model.positions(attention_mask_BxL)[:, P:]
  h_BxNxD, _ = model.step(
      model.embed(tokens_BxL[:, P:]), positions_BxN,
      kv_cache_lib.attention_mask(completion_mask_BxN, 0, N),
      kv_cache_lib.prefix_only(cache, prompt_mask_QxP), 0)
  # The last prompt position (a real token: prompts are left padded) predicts the first.
  first_Bx1xD = jnp.repeat(h_QxPxD[:, -1:], G, axis=0)
  return jnp.concatenate([first_Bx1xD, h_BxNxD[:, :-1]], axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "completion_length", "temperature",
                                             "group_size", "logprob_chunk"))
def reference_logprobs(graphdef, params, tokens_BxL, attention_mask_BxL, completion_length: int,
                       temperature: float = 1.0, group_size: int = 1,
                       logprob_chunk: int | None = None) -> jax.Array:
  """The frozen reference's per-token log-probs `[B, N]`, once per rollout (for the KL).

  Under a mesh (`jax.set_mesh`) rows in, activations and log-probs out are split over the
  batch axes (`layers.batch_constraint`), the weights where they lie."""
  model = nnx.merge(graphdef, params)
  tokens_BxL, attention_mask_BxL = map(layers.batch_constraint, (tokens_BxL, attention_mask_BxL))
  return layers.batch_constraint(completion_logprobs(
      model, tokens_BxL, attention_mask_BxL, completion_length, temperature, group_size,
      logprob_chunk)[0])


def _loss_fn(params, frozen, graphdef, batch: Batch, config: grpo.LossConfig,
             temperature: float, group_size: int, logprob_chunk: int | None):
  model = nnx.merge(graphdef, params, frozen)
  N = batch.completion_mask_BxN.shape[1]
  logp_BxN, entropy_BxN = completion_logprobs(model, batch.tokens_BxL, batch.attention_mask_BxL,
                                              N, temperature, group_size, logprob_chunk)
  value, metrics = grpo.loss(logp_BxN, batch.old_logp_BxN, batch.advantages_B,
                             batch.completion_mask_BxN, config, batch.ref_logp_BxN)
  mask = batch.completion_mask_BxN.astype(jnp.float32)
  metrics["entropy"] = (entropy_BxN * mask).sum() / jnp.maximum(mask.sum(), 1.0)
  return value, metrics


def micro_split(batch: Batch, micro_batches: int, group_size: int = 1) -> Batch:
  """`[micro_batches, B / micro_batches, ...]` slices; slice k holds groups k, k + m, k + 2m, ...

  Striding over groups (not cutting B into consecutive blocks) gives every slice an equal
  share of each device's rows when the batch is split over devices in contiguous blocks:
  each slice stays sharded over the batch axes instead of living on a few devices, and the
  slices are the same on every mesh.
  """
  B = batch.tokens_BxL.shape[0]
  if B % (micro_batches * group_size):
    raise ValueError(f"A batch of {B} does not split into {micro_batches} micro-batches of "
                     f"whole groups of {group_size}.")
  def split(x):
    x = x.reshape(B // (group_size * micro_batches), micro_batches, group_size, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape(micro_batches, B // micro_batches, *x.shape[3:])
  return jax.tree.map(split, batch)


def _train_step(state: TrainState, batch: Batch, *, config: grpo.LossConfig,
                temperature: float = 1.0, micro_batches: int = 1, group_size: int = 1,
                logprob_chunk: int | None = None, mesh: jax.sharding.Mesh | None = None):
  """One optimizer step on `batch`, accumulating gradients over `micro_batches` slices.

  As in TRL, each micro-batch's loss is normalised on its own and the gradients averaged
  (`micro_split` says which rows each holds). `group_size` G > 1 computes each group's
  shared prompt once (`completion_logprobs`). With a `mesh`, each slice and the
  activations of its forward stay split over the batch axes (`layers.batch_constraint`).
  """
  if mesh is not None:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return _train_step(state, batch, config=config, temperature=temperature,
                         micro_batches=micro_batches, group_size=group_size,
                         logprob_chunk=logprob_chunk)
  grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
  # One path for any number of slices (a one-slice scan compiles to straight-line code).
  # With several, each slice's backward runs inside the loop body, apart from the
  # optimizer's update: XLA:CPU's scheduler, given both in one block, keeps every layer's
  # rematerialised activations alive at once.
  split = micro_split(batch, micro_batches, group_size)
  split = jax.tree.map(lambda x: layers.batch_constraint(x, leading=1), split)  # as the batch

  def accumulate(grads, micro):
    (_, metrics), g = grad_fn(state.params, state.frozen, state.graphdef, micro, config,
                              temperature, group_size, logprob_chunk)
    return jax.tree.map(jnp.add, grads, g), metrics

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  grads, metrics = jax.lax.scan(accumulate, zeros, split)
  grads = jax.tree.map(lambda g: g / micro_batches, grads)
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics["grad_norm"] = optax.tree.norm(grads)
  # A non-finite loss, gradient or update leaves the state as it was (the caller counts
  # skips). The update is computed twice: once only for its norm (an elementwise map
  # reduced on the fly, nothing stored), then under `lax.cond`, where the new state replaces
  # the old in place. Selecting between both (a `where`) would hold two optimizer states.
  update_norm = optax.tree.norm(state.tx.update(grads, state.opt_state, state.params)[0])
  ok = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        & jnp.isfinite(update_norm))

  def apply(params, opt_state):
    updates, opt_state = state.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = jax.lax.cond(ok, apply, lambda *old: old, state.params, state.opt_state)
  metrics["skipped"] = (~ok).astype(jnp.float32)
  mask = batch.completion_mask_BxN.astype(jnp.float32)
  metrics["completion_length/mean"] = mask.sum(-1).mean()
  metrics["advantage/mean"] = batch.advantages_B.mean()
  metrics["advantage/std"] = batch.advantages_B.std()
  return state.replace(step=state.step + ok.astype(jnp.int32), params=params,
                       opt_state=opt_state), metrics


train_step = jax.jit(_train_step,
                     static_argnames=("config", "temperature", "micro_batches", "group_size",
                                      "logprob_chunk"),
                     donate_argnames=("state",))
train_step.__doc__ = _train_step.__doc__


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
  """Where each part of the state lives: parameters (trained and frozen) by the partition
  rules, Adam moments like their parameters, counters replicated."""
  params = sharding_lib.tree_shardings(state.params, mesh)
  opt_state = optax.tree_map_params(state.tx, lambda _, s: s, state.opt_state, params,
                                    transform_non_params=lambda _: sharding_lib.replicated(mesh))
  return state.replace(step=sharding_lib.replicated(mesh), params=params, opt_state=opt_state,
                       frozen=sharding_lib.tree_shardings(state.frozen, mesh))


def jit_train_step(state: TrainState, mesh: jax.sharding.Mesh, *, config: grpo.LossConfig,
                   temperature: float = 1.0, micro_batches: int = 1, group_size: int = 1,
                   logprob_chunk: int | None = None):
  """`train_step` jitted with explicit in/out shardings on `mesh` (batch split over
  data x fsdp) and the state donated. `state` may be abstract (`jax.eval_shape`): the
  memory planner lowers this same program."""
  state_sh = state_shardings(state, mesh)
  return jax.jit(
      functools.partial(_train_step, config=config, temperature=temperature,
                        micro_batches=micro_batches, group_size=group_size,
                        logprob_chunk=logprob_chunk,
                        mesh=mesh),
      in_shardings=(state_sh, sharding_lib.batch_sharding(mesh)),
      out_shardings=(state_sh, sharding_lib.replicated(mesh)), donate_argnums=0)


def sharded_train_step(state: TrainState, mesh: jax.sharding.Mesh, **options):
  """`(state placed on mesh, step_fn)`: `step_fn(state, batch)` runs `jit_train_step`
  (`options` are its keywords) after placing the batch."""
  jitted = jit_train_step(state, mesh, **options)
  batch_sh = sharding_lib.batch_sharding(mesh)
  devices = mesh.shape["data"] * mesh.shape["fsdp"]

  def step_fn(state: TrainState, batch: Batch):
    if batch.tokens_BxL.shape[0] % devices:
      raise ValueError(f"A batch of {batch.tokens_BxL.shape[0]} completions does not split over "
                       f"the {devices} data-parallel devices; change questions or generations.")
    return jitted(state, jax.device_put(batch, batch_sh))

  return jax.device_put(state, state_shardings(state, mesh)), step_fn
