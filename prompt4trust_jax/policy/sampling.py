"""Batched sampling with a KV cache: one jitted prefill plus a `lax.while_loop` decode.

Prompts are left padded to a bucketed length (and the batch to a bucketed size, `padding`), so
every row writes step t at the same cache slot and new prompts of a similar size
reuse the compiled program. The loop stops when every row has emitted an EOS token
or the budget is spent, with no host round-trip per token (long budgets: one per
`GROW_SLOTS`-token chunk, as the cache grows; `decode_growing`).

The state these loops carry, the prefill and the token draw (`emit`: temperature, top-k/p,
repetition penalty, choice tries; which log-probs it records) are `decode_state.py`'s,
re-exported here as the sampler's API. A model is anything that satisfies
`models.protocol.DecoderModel` (`MultimodalModel` with images).
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt4trust_jax import hosts, padding
from prompt4trust_jax.downstream import constraints
from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models import layers
from prompt4trust_jax.models.protocol import DecoderModel, MultimodalModel
from prompt4trust_jax.policy import head_layout
from prompt4trust_jax.policy.decode_state import (DecodeState, SamplingParams,
                                                  check_repetition_penalty, emit, extend,
                                                  init_state, prefill, share, split_rows)

__all__ = [
    "GROW_SLOTS", "DecodeState", "GenerateOutput", "SamplingParams", "check_repetition_penalty",
    "compiled_start", "decode", "decode_chunk", "decode_growing", "emit", "extend", "generate",
    "generate_padded", "init_state", "prefill", "share", "start",
]


# Chunked decoding (`decode_growing`) extends its cache by this many slots at a time.
GROW_SLOTS = 64


class GenerateOutput(NamedTuple):
  tokens: list[list[int]]  # generated ids per prompt, up to and including the first EOS
  logprobs: list[np.ndarray]  # float32, one per generated token (`decode_state`'s docstring)
  tokens_BxN: np.ndarray  # the same, padded with pad_token_id
  logprobs_BxN: np.ndarray  # padded with 0
  lengths_B: np.ndarray
  # The prompts as the sampler left padded them (one row per prompt, not per copy): what
  # the completions continue, for a GRPO batch (`update.Batch.from_rollout`).
  prompt_QxP: np.ndarray
  prompt_mask_QxP: np.ndarray


def decode(model: DecoderModel, state: DecodeState, rng: jax.Array, params: SamplingParams,
           head_DxV, max_steps: int, trie: constraints.ChoiceTrie | None = None) -> DecodeState:
  """Feeds the last token and emits the next until every row is done or the budget ends.

  Stops at `min(step + max_steps, N)` emitted tokens; step t uses key fold_in(rng, t).
  """
  limit = jnp.minimum(state.step + max_steps, state.tokens_BxN.shape[1])

  def cond(state):
    return (state.step < limit) & ~jnp.all(state.done_B)

  def body(state):
    valid = state.kv_valid_BxS.at[:, state.slot].set(True)
    h_Bx1xD, cache = model.step(model.embed(state.token_B[:, None]), state.position_B[:, None],
                                kv_cache_lib.attention_mask(valid, state.slot, 1), state.cache,
                                state.slot)
    state = state.replace(cache=cache, kv_valid_BxS=valid, slot=state.slot + 1,
                          position_B=state.position_B + 1)
    return split_rows(emit(state, model.logits(h_Bx1xD[:, 0], head_DxV),
                           jax.random.fold_in(rng, state.step), params, trie))

  return jax.lax.while_loop(cond, body, split_rows(state))


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "params"),
                   donate_argnames=("state",))
def decode_chunk(graphdef, weights, head_DxV, state: DecodeState, rng, trie=None, *,
                 steps: int, params: SamplingParams) -> DecodeState:
  """`decode` of up to `steps` more tokens as one compiled call (one per cache size)."""
  return decode(nnx.merge(graphdef, weights), state, rng, params, head_DxV, steps, trie)


def decode_growing(graphdef, weights, head_DxV, state: DecodeState, rng, params: SamplingParams,
                   *, steps: int, after_chunk=None) -> DecodeState:
  """Decodes `steps` tokens per call until every row is done or the budget is spent.

  Attention reads every cache slot at every step, so a cache sized for the whole budget
  makes the early steps read empty slots: here the cache starts small and grows
  `GROW_SLOTS` at a time (`extend`), each size one compiled `decode_chunk`. One host
  round trip per chunk; `after_chunk(state)` may mark rows done between chunks (the
  downstream's parse check). Same tokens as one `decode` over the full cache.
  """
  total = state.tokens_BxN.shape[1]
  step = int(state.step)
  # Each decode step writes one slot and emits one token, so slot - step never changes.
  offset = int(state.slot) - step
  while True:
    needed = offset + min(step + steps, total)
    if needed > state.kv_valid_BxS.shape[1]:
      state = extend(state, min(-(-needed // GROW_SLOTS) * GROW_SLOTS, offset + total))
    state = decode_chunk(graphdef, weights, head_DxV, state, rng, steps=steps, params=params)
    step = int(state.step)
    if step >= total or bool(jnp.all(state.done_B)):
      return state
    if after_chunk is not None:
      state = after_chunk(state)


def start(model: DecoderModel, tokens_BxP, mask_BxP, rng, positions, image_embeds_MxD, head_DxV,
          *, max_new_tokens: int, params: SamplingParams, copies: int = 1,
          slots: int | None = None, suffix_BxT=None, suffix_mask_BxT=None,
          trie: constraints.ChoiceTrie | None = None) -> DecodeState:
  """Prefills left-padded prompts and emits each row's first token.

  `positions` None: `model.positions(mask_BxP)`. With `copies` > 1 each prompt becomes that
  many rows sharing its cache (`share`). `suffix_BxT` (left padded, one row per copy) is
  then prefilled after each row's prompt, positions continuing from it; a row whose suffix
  is empty answers from its prompt's last state (the downstream's per-hint suffixes).
  `slots` is the number of cache slots for generated tokens (default: all
  `max_new_tokens`; `decode_growing` starts with fewer). A `trie` constrains the first
  token as `emit` says. See `generate_padded`.
  """
  B, P = tokens_BxP.shape
  # Under a mesh (`jax.set_mesh`) the rows are split over its batch axes from here on.
  tokens_BxP, mask_BxP = layers.batch_constraint(tokens_BxP), layers.batch_constraint(mask_BxP)
  slots = max_new_tokens if slots is None else slots
  own = slots + (0 if suffix_BxT is None else suffix_BxT.shape[1])  # cache slots per row
  if positions is None:
    positions = model.positions(mask_BxP)
  positions = layers.batch_constraint(positions, leading=positions.ndim - 2)  # [3, B, P] too
  children = 1 if trie is None else trie.child_token.shape[1]
  # Shared prompts get only their own slots; the rows' slots come with `share`.
  s = init_state(model, B, P if copies > 1 else P + own, max_new_tokens, children,
                 params.pad_token_id, track_seen=params.penalized)
  s = split_rows(s.replace(done_B=~mask_BxP.any(axis=-1)))
  h_BxD, s = prefill(model, s, model.embed(tokens_BxP, image_embeds_MxD), positions, mask_BxP,
                     tokens_BxP)
  if copies > 1:
    s = split_rows(share(s, copies, own))
    h_BxD = jnp.repeat(h_BxD, copies, axis=0)
  if suffix_BxT is not None:
    suffix_BxT = layers.batch_constraint(suffix_BxT)
    suffix_mask_BxT = layers.batch_constraint(suffix_mask_BxT)
    suffix_positions = s.position_B[:, None] + jnp.cumsum(suffix_mask_BxT, axis=-1) - 1
    h_suffix_BxD, s = prefill(model, s, model.embed(suffix_BxT), suffix_positions,
                              suffix_mask_BxT, suffix_BxT)
    h_BxD = jnp.where(suffix_mask_BxT.any(axis=-1)[:, None], h_suffix_BxD, h_BxD)
  return split_rows(emit(s, model.logits(h_BxD, head_DxV), jax.random.fold_in(rng, 0), params,
                         trie))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "params", "copies",
                                             "slots"))
def compiled_start(graphdef, weights, tokens_BxP, mask_BxP, rng, positions, image_embeds_MxD,
                   head_DxV, suffix_BxT=None, suffix_mask_BxT=None, trie=None, *,
                   max_new_tokens: int, params: SamplingParams, copies: int = 1,
                   slots: int | None = None) -> DecodeState:
  """`start` as one compiled call over a split model (`decode_growing` continues it)."""
  return start(nnx.merge(graphdef, weights), tokens_BxP, mask_BxP, rng, positions,
               image_embeds_MxD, head_DxV, max_new_tokens=max_new_tokens, params=params,
               copies=copies, slots=slots, suffix_BxT=suffix_BxT,
               suffix_mask_BxT=suffix_mask_BxT, trie=trie)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "params", "copies"))
def generate_padded(graphdef, state, tokens_BxP, mask_BxP, rng, positions=None,
                    image_embeds_MxD=None, head_DxV=None, *, max_new_tokens: int,
                    params: SamplingParams, copies: int = 1):
  """Pure, jitted core of `generate` over left-padded prompts (one compiled call).

  Rows whose mask is all zero (batch padding) produce nothing. `positions` defaults
  to `model.positions` (real tokens counted); multimodal callers pass the positions and
  image tokens of `model.multimodal_inputs`.
  With `copies` > 1 each prompt is sampled that many times (rows prompt-major), its
  cache shared by the copies (`share`) rather than prefilled or stored once per copy.
  `head_DxV` is `head_layout.decode_head(model)` computed by the caller (None: here).
  Returns `(tokens_BxN, logprobs_BxN, lengths_B)`, padded after each row's first EOS.
  """
  model = nnx.merge(graphdef, state)
  if head_DxV is None:
    head_DxV = head_layout.decode_head(model)
  s = start(model, tokens_BxP, mask_BxP, rng, positions, image_embeds_MxD, head_DxV,
            max_new_tokens=max_new_tokens, params=params, copies=copies)
  s = decode(model, s, rng, params, head_DxV, max_new_tokens - 1)
  return s.tokens_BxN, s.logprobs_BxN, s.lengths_B


def _validate(prompts, vocab_size, max_new_tokens, temperature, top_k, top_p,
              repetition_penalty):
  if not prompts:
    raise ValueError("prompts is empty; pass a list of token-id lists.")
  for i, prompt in enumerate(prompts):
    if len(prompt) == 0:
      raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token.")
    lo, hi = min(prompt), max(prompt)
    if lo < 0 or hi >= vocab_size:
      raise ValueError(f"prompts[{i}] has token id {lo if lo < 0 else hi} outside the "
                       f"vocabulary [0, {vocab_size}).")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}.")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
  check_repetition_penalty(repetition_penalty)


def generate(model: DecoderModel, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_ids: Sequence[int] = (), rng: jax.Array | None = None,
             pad_token_id: int = 0, pixel_values=None, image_grid_thw=None,
             copies: int = 1, repetition_penalty: float = 1.0) -> GenerateOutput:
  """Samples continuations of token-id prompts of different lengths.

  temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off. Each row
  stops after its first token in `eos_token_ids`. Same inputs and `rng`, same output.
  `repetition_penalty` (1: off) is HF's and vLLM's: the logits of tokens already in the
  row's prompt or output are divided by it if positive, else multiplied, before
  temperature and the filters; the recorded log-probs ignore it (`decode_state`).
  A multimodal model also takes HF-style `pixel_values` / `image_grid_thw` for the
  images of all prompts in order, each prompt's image placeholders already expanded
  (`model.expand_image_placeholders`).
  `copies` samples each prompt that many times (outputs prompt-major) from one prefill
  whose cache the copies share: GRPO's G completions per prompt. Budgets beyond
  `GROW_SLOTS` tokens decode in chunks over a growing cache (`decode_growing`).
  """
  if copies < 1:
    raise ValueError(f"copies must be >= 1, got {copies}.")
  _validate(prompts, model.config.vocab_size, max_new_tokens, temperature, top_k, top_p,
            repetition_penalty)
  if rng is None:
    if temperature > 0:
      raise ValueError("Sampling with temperature > 0 needs rng=jax.random.key(seed).")
    rng = jax.random.key(0)
  prompt_QxP, prompt_mask_QxP = padding.left_pad(
      prompts, padding.shared_length([len(p) for p in prompts]),
      padding.bucket_rows(len(prompts), copies), pad_token_id)
  positions = image_embeds = None
  if pixel_values is not None or image_grid_thw is not None:
    if not isinstance(model, MultimodalModel):
      raise ValueError(f"{type(model).__name__} takes no images.")
    positions, image_embeds = model.multimodal_inputs(prompt_QxP, prompt_mask_QxP, pixel_values,
                                                      image_grid_thw)
    positions = hosts.global_rows(positions, axis=positions.ndim - 2)
  # Several hosts: each one's prompts are its rows of the global batch.
  tokens, mask = hosts.global_rows((prompt_QxP, prompt_mask_QxP))
  graphdef, state = nnx.split(model)
  params = SamplingParams(float(temperature), int(top_k), float(top_p),
                          tuple(int(e) for e in eos_token_ids), int(pad_token_id),
                          float(repetition_penalty))
  head_DxV = head_layout.decode_head(model)
  if max_new_tokens > GROW_SLOTS:  # a growing cache, GROW_SLOTS tokens per compiled chunk
    s = compiled_start(graphdef, state, tokens, mask, rng, positions, image_embeds, head_DxV,
                       max_new_tokens=max_new_tokens, params=params, copies=copies,
                       slots=GROW_SLOTS)
    s = decode_growing(graphdef, state, head_DxV, s, rng, params, steps=GROW_SLOTS)
    out = s.tokens_BxN, s.logprobs_BxN, s.lengths_B
  else:
    out = generate_padded(graphdef, state, tokens, mask, rng, positions, image_embeds, head_DxV,
                          max_new_tokens=max_new_tokens, params=params, copies=copies)
  rows = len(prompts) * copies
  tokens_BxN, logprobs_BxN, lengths_B = (hosts.local_rows(x)[:rows] for x in out)
  return GenerateOutput(
      tokens=[row[:n].tolist() for row, n in zip(tokens_BxN, lengths_B)],
      logprobs=[row[:n] for row, n in zip(logprobs_BxN, lengths_B)],
      tokens_BxN=tokens_BxN, logprobs_BxN=logprobs_BxN, lengths_B=lengths_B,
      prompt_QxP=prompt_QxP[:len(prompts)], prompt_mask_QxP=prompt_mask_QxP[:len(prompts)])
