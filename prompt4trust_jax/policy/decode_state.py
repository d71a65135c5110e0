"""What a decode loop carries (`DecodeState`) and the steps that change it.

`prefill` writes prompt tokens into the KV cache, `share` turns each row into copies that
read its cache as a shared prefix, `extend` adds cache slots, and `emit` draws each row's
next token from its logits under the static `SamplingParams`. The loops that drive these
are in `sampling.py`. Models are seen through `models.protocol.DecoderModel`.

Tokens are drawn by `next_token.sample_token`: `logprobs[t]` is log softmax(logits /
temperature) at the chosen token over the full vocabulary (before top-k/top-p), what a
GRPO update recomputes as the "old" policy log-probability.

A repetition penalty (`SamplingParams.repetition_penalty` != 1, HF and vLLM semantics)
rescales the raw logits of every token already in the row's prompt or its output
before temperature, top-k and top-p (and before a `ChoiceTrie`'s restriction). Rows
track what they have seen in `DecodeState.seen_BxV`, set by `prefill` from the real
(unmasked) prompt tokens and by `emit` from each token drawn. The penalty shapes only
the draw: `logprobs[t]` is still that of the model's own logits, as above.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from prompt4trust_jax.downstream import constraints
from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models import layers
from prompt4trust_jax.models.protocol import DecoderModel
from prompt4trust_jax.policy import next_token


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static sampling settings (part of the compiled program's key)."""
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0
  repetition_penalty: float = 1.0  # 1: off (no presence mask is kept or read)

  def __post_init__(self):
    check_repetition_penalty(self.repetition_penalty)

  @property
  def penalized(self) -> bool:
    """Whether the draw penalises seen tokens (the state then needs `seen_BxV`)."""
    return self.repetition_penalty != 1.0


def check_repetition_penalty(penalty: float) -> None:
  """Raises unless `penalty` is a finite number > 0 (1: off)."""
  # `not penalty > 0` also catches NaN; inf would zero every positive seen logit.
  if not (np.isfinite(penalty) and penalty > 0):
    raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = off), got {penalty}.")


@struct.dataclass
class DecodeState:
  """Everything a decode loop carries; a pytree, so it can cross jit boundaries.

  Cache slots are shared by all rows: stage k of a prompt (a shared prefix, a
  per-row suffix) is written at the same slots for every row, left padded, and
  `kv_valid_BxS` marks the real entries. Positions are per row.
  """
  cache: Any
  kv_valid_BxS: jax.Array
  slot: jax.Array  # [] next free cache slot
  position_B: jax.Array  # position of the next token
  token_B: jax.Array  # the last emitted token (the next step's input)
  step: jax.Array  # [] tokens emitted so far
  tokens_BxN: jax.Array
  logprobs_BxN: jax.Array
  lengths_B: jax.Array
  done_B: jax.Array
  node_B: jax.Array  # ChoiceTrie node when decoding is constrained, else 0
  choice_probs_BxC: jax.Array  # probabilities of the children at the first branching node
  # Tokens each row has in its prompt or output so far; [B, 0] when no penalty reads it.
  seen_BxV: jax.Array


def split_rows(state: DecodeState) -> DecodeState:
  """`state` with every row-indexed array split over the batch axes of the mesh it is traced
  under (`layers.batch_constraint`; a no-op without one): each device decodes its own rows,
  their caches and outputs on it. Every array but the scalar counters is row-major (a shared
  prefix's rows are groups of consecutive rows, so a group stays on one device)."""
  return jax.tree.map(lambda x: x if x.ndim == 0 else layers.batch_constraint(x, free=True),
                      state)


def init_state(model: DecoderModel, batch: int, cache_length: int, max_new_tokens: int,
               max_children: int = 1, pad_token_id: int = 0,
               track_seen: bool = False) -> DecodeState:
  """An empty state; `track_seen` (`params.penalized`) keeps a `[B, V]` presence mask."""
  vocab = model.config.vocab_size if track_seen else 0
  return DecodeState(
      cache=model.init_cache(batch, cache_length),
      kv_valid_BxS=jnp.zeros((batch, cache_length), bool), slot=jnp.int32(0),
      position_B=jnp.zeros(batch, jnp.int32), token_B=jnp.full(batch, pad_token_id, jnp.int32),
      step=jnp.int32(0), tokens_BxN=jnp.full((batch, max_new_tokens), pad_token_id, jnp.int32),
      logprobs_BxN=jnp.zeros((batch, max_new_tokens), jnp.float32),
      lengths_B=jnp.zeros(batch, jnp.int32), done_B=jnp.zeros(batch, bool),
      node_B=jnp.zeros(batch, jnp.int32),
      choice_probs_BxC=jnp.zeros((batch, max_children), jnp.float32),
      seen_BxV=jnp.zeros((batch, vocab), bool))


def prefill(model: DecoderModel, state: DecodeState, x_BxTxD: jax.Array, positions,
            mask_BxT: jax.Array, tokens_BxT: jax.Array | None = None):
  """Writes T (left padded) inputs at `state.slot`; returns the last hidden state `[B, D]`.

  `positions` is `[B, T]` or `[3, B, T]` (M-RoPE). A row's next position becomes one
  past the largest position of its real tokens (unchanged if it has none here). When
  the state tracks seen tokens (a repetition penalty), `tokens_BxT`, the ids behind
  `x_BxTxD` (image placeholders included, as HF counts them), are marked where the mask is set.
  """
  T = x_BxTxD.shape[1]
  mask_BxT = mask_BxT.astype(bool)
  if state.seen_BxV.shape[1]:
    if tokens_BxT is None:
      raise ValueError("prefill needs tokens_BxT (the prompt ids) when the state tracks seen "
                       "tokens for a repetition penalty.")
    state = state.replace(seen_BxV=next_token.mark_seen(state.seen_BxV, tokens_BxT, mask_BxT))
  kv_valid_BxS = jax.lax.dynamic_update_slice(state.kv_valid_BxS, mask_BxT, (0, state.slot))
  h_BxTxD, cache = model.step(x_BxTxD, positions,
                              kv_cache_lib.attention_mask(kv_valid_BxS, state.slot, T),
                              state.cache, state.slot)
  top_B = jnp.where(mask_BxT, positions, -1).max(axis=-1)
  if top_B.ndim == 2:  # M-RoPE: the largest of t, h, w
    top_B = top_B.max(axis=0)
  position_B = jnp.where(mask_BxT.any(axis=-1), top_B + 1, state.position_B)
  state = state.replace(cache=cache, kv_valid_BxS=kv_valid_BxS, slot=state.slot + T,
                        position_B=position_B.astype(jnp.int32))
  return h_BxTxD[:, -1], state


def share(state: DecodeState, copies: int, cache_length: int) -> DecodeState:
  """Each row becomes `copies` consecutive rows that attend to its cache as a shared prefix.

  The prefix is not copied: the new rows get an empty cache of `cache_length` slots of
  their own and read the old one, read-only, once per group (`kv_cache.LayerCache`'s
  prefix). Same results as repeating the rows' caches, up to float rounding.
  """
  def repeat(x):
    return x if x.ndim == 0 else jnp.repeat(x, copies, axis=0)
  B = state.kv_valid_BxS.shape[0] * copies
  cache = kv_cache_lib.shared(state.cache, state.kv_valid_BxS, copies, cache_length)
  rows = jax.tree.map(repeat, state.replace(cache=(), kv_valid_BxS=jnp.zeros((0,), bool)))
  return rows.replace(cache=cache, kv_valid_BxS=jnp.zeros((B, cache_length), bool),
                      slot=jnp.int32(0))


@functools.partial(jax.jit, static_argnames="length")
def extend(state: DecodeState, length: int) -> DecodeState:
  """`state` with `length` cache slots of its own (`kv_cache.extend`); the rest unchanged."""
  valid_BxS = state.kv_valid_BxS
  return state.replace(cache=kv_cache_lib.extend(state.cache, length),
                       kv_valid_BxS=jnp.pad(valid_BxS, ((0, 0), (0, length - valid_BxS.shape[1]))))


def emit(state: DecodeState, logits_BxV: jax.Array, key: jax.Array, params: SamplingParams,
         trie: constraints.ChoiceTrie | None = None) -> DecodeState:
  """Samples each unfinished row's next token from `logits_BxV` and records it.

  With a `trie` the draw (and its recorded log-prob) is from the model's distribution
  restricted to the row's allowed children; the children's unrestricted probabilities
  at the first branching node are kept in `choice_probs_BxC` (the logit mode reads them).
  A repetition penalty rescales the raw logits of seen tokens for the draw only: the
  log-prob and `choice_probs_BxC` are the model's own (unpenalised) ones.
  """
  draw_BxV = logits_BxV
  if params.penalized:
    if state.seen_BxV.shape != logits_BxV.shape:
      raise ValueError(f"repetition_penalty={params.repetition_penalty} needs seen_BxV of shape "
                       f"{logits_BxV.shape}, got {state.seen_BxV.shape}: build the state with "
                       f"init_state(..., track_seen=True).")
    draw_BxV = next_token.apply_repetition_penalty(logits_BxV, state.seen_BxV,
                                                   params.repetition_penalty)
  if trie is not None:
    children_BxC = trie.child_token[state.node_B]
    branching_B = (children_BxC >= 0).sum(-1) > 1
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
    probs_BxC = jnp.where(children_BxC >= 0, jnp.take_along_axis(
        probs_BxV, jnp.maximum(children_BxC, 0), axis=-1), 0.0)
    first_B = branching_B & (state.choice_probs_BxC.sum(-1) == 0)
    choice_probs_BxC = jnp.where(first_B[:, None], probs_BxC[:, :state.choice_probs_BxC.shape[1]],
                                 state.choice_probs_BxC)
    logits_BxV = constraints.allowed_logits(trie, state.node_B, logits_BxV)
    draw_BxV = (constraints.allowed_logits(trie, state.node_B, draw_BxV) if params.penalized
                else logits_BxV)
    state = state.replace(choice_probs_BxC=choice_probs_BxC)
  token_B, logprob_B = next_token.sample_token(
      draw_BxV, key, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
      logprob_logits_BxV=logits_BxV if params.penalized else None)
  if params.penalized:  # finished rows emit padding, which they never see
    state = state.replace(seen_BxV=next_token.mark_seen(
        state.seen_BxV, token_B[:, None], ~state.done_B[:, None]))
  token_B = jnp.where(state.done_B, params.pad_token_id, token_B)
  logprob_B = jnp.where(state.done_B, 0.0, logprob_B)
  done_B = state.done_B | jnp.isin(token_B, jnp.asarray(params.eos_token_ids or (-1,), jnp.int32))
  node_B = state.node_B
  if trie is not None:
    node_B = constraints.advance(trie, node_B, token_B)
    done_B = done_B | constraints.is_done(trie, node_B)
  return state.replace(
      token_B=token_B, step=state.step + 1, node_B=node_B,
      tokens_BxN=jax.lax.dynamic_update_slice(state.tokens_BxN, token_B[:, None], (0, state.step)),
      logprobs_BxN=jax.lax.dynamic_update_slice(state.logprobs_BxN, logprob_B[:, None],
                                                (0, state.step)),
      lengths_B=state.lengths_B + (~state.done_B).astype(jnp.int32), done_B=done_B)
