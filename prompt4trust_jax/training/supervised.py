"""Supervised next-token training of a decoder (with its vision tower) on prompt -> reply pairs.

What teaches the toy world's downstream (`toy_world`, `experiments/teach_toy_downstream.py`):
the prompts are the ones `Downstream` builds, the replies the answer format it reads, so the
taught model is used exactly as it was trained. One pure jitted `train_step(state, batch)` on
`update.TrainState`; the loss is the mean negative log-likelihood of the reply tokens, through
the same chunked log-probs as the GRPO update (`logprobs.from_hidden`: no `[B, T, V]` logits).
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from prompt4trust_jax import padding
from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models.protocol import DecoderModel, MultimodalModel
from prompt4trust_jax.training import logprobs as logprobs_lib
from prompt4trust_jax.training import update


class Batch(NamedTuple):
  """Rows of prompt then reply, right padded to T; `reply_BxT` marks the reply tokens (the
  ones the loss predicts, each from the token before it)."""
  tokens_BxT: np.ndarray  # int32
  mask_BxT: np.ndarray  # int32, 1 for real tokens
  reply_BxT: np.ndarray  # float32, 1 for reply tokens
  positions: np.ndarray  # [B, T], or the family's (M-RoPE: [3, B, T])
  images: object = None  # what the model's `encode_images` takes (row aligned), or None


def make_batch(model: DecoderModel, prompts: Sequence[Sequence[int]],
               replies: Sequence[Sequence[int]], pad_id: int, images=None,
               length: int | None = None) -> Batch:
  """Rows `prompt + reply`, padded to `length` (default: the longest, bucketed, so batches of
  similar lengths share a compiled step). `images`: per row the family's preprocessed
  `(pixel_values, image_grid)` (`Downstream.preprocess_images`), one image per prompt."""
  if len(prompts) != len(replies) or not prompts:
    raise ValueError(f"Got {len(prompts)} prompts and {len(replies)} replies; pass one reply "
                     "per prompt, at least one.")
  if any(not r for r in replies):
    raise ValueError("Every reply needs at least one token: the loss is over reply tokens.")
  rows = [list(p) + list(r) for p, r in zip(prompts, replies)]
  longest = max(map(len, rows))
  T = length or padding.bucket_length(longest)
  if longest > T:
    raise ValueError(f"A row of {longest} tokens exceeds length={T}.")
  tokens = np.full((len(rows), T), pad_id, np.int32)
  mask = np.zeros((len(rows), T), np.int32)
  reply = np.zeros((len(rows), T), np.float32)
  for b, (p, row) in enumerate(zip(prompts, rows)):
    tokens[b, :len(row)], mask[b, :len(row)], reply[b, len(p):len(row)] = row, 1, 1.0
  if images is None:
    return Batch(tokens, mask, reply, np.asarray(model.positions(jnp.asarray(mask))))
  if not isinstance(model, MultimodalModel):
    raise ValueError(f"{type(model).__name__} takes no images; pass images=None.")
  pixels = np.concatenate([im[0] for im in images])
  grids = np.concatenate([im[1] for im in images])
  positions, vision_inputs, packed = model.image_inputs(tokens, mask, pixels, grids)
  if packed is not None:
    raise ValueError("Supervised batches take one image per prompt (row aligned images).")
  return Batch(tokens, mask, reply, positions, vision_inputs)


def reply_nll(model: DecoderModel, batch: Batch, logprob_chunk: int | None = None):
  """The mean negative log-likelihood of the reply tokens."""
  tokens = jnp.asarray(batch.tokens_BxT)
  T = tokens.shape[1]
  image_embeds = None if batch.images is None else model.encode_images(batch.images)
  x_BxTxD = model.embed(tokens, image_embeds)
  mask_BxTxS = kv_cache_lib.attention_mask(jnp.asarray(batch.mask_BxT), 0, T)
  h_BxTxD, _ = model.step(x_BxTxD, jnp.asarray(batch.positions), mask_BxTxS, None, 0)
  dtype = jnp.dtype(model.text_config.dtype)
  logp_BxT, _ = logprobs_lib.from_hidden(h_BxTxD[:, :-1].astype(dtype),
                                         model.lm_head_kernel().astype(dtype), tokens[:, 1:],
                                         logprob_chunk)
  w_BxT = jnp.asarray(batch.reply_BxT)[:, 1:]
  return -(logp_BxT * w_BxT).sum() / jnp.maximum(w_BxT.sum(), 1.0)


@functools.partial(jax.jit, static_argnames=("logprob_chunk",), donate_argnames=("state",))
def train_step(state: update.TrainState, batch: Batch, logprob_chunk: int | None = None):
  """One optimizer step on the reply NLL; `(state, {"loss", "grad_norm"})`."""
  def loss_fn(params):
    model = nnx.merge(state.graphdef, state.model_state(params))
    return reply_nll(model, batch, logprob_chunk)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
