"""Batched sampling with a KV cache: one jitted prefill plus a `lax.while_loop` decode.

Prompts are left padded to a bucketed length (and the batch to a bucketed size, `padding`), so
every row writes step t at the same cache slot and new prompts of a similar size
reuse the compiled program. The loop stops when every row has emitted an EOS token
or the budget is spent, with no host round-trip per token (long budgets: one per
`GROW_SLOTS`-token chunk, as the cache grows; `decode_growing`).

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
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from prompt4trust_jax import constraints, head_layout, next_token, padding
from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models.qwen2 import positions_from_mask


# Chunked decoding (`decode_growing`) extends its cache by this many slots at a time.
GROW_SLOTS = 64


class GenerateOutput(NamedTuple):
  tokens: list[list[int]]  # generated ids per prompt, up to and including the first EOS
  logprobs: list[np.ndarray]  # float32, one per generated token (see module docstring)
  tokens_BxN: np.ndarray  # the same, padded with pad_token_id
  logprobs_BxN: np.ndarray  # padded with 0
  lengths_B: np.ndarray
  # The prompts as the sampler left padded them (one row per prompt, not per copy): what
  # the completions continue, for a GRPO batch (`update.Batch.from_rollout`).
  prompt_QxP: np.ndarray
  prompt_mask_QxP: np.ndarray


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


def init_state(model, batch: int, cache_length: int, max_new_tokens: int,
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


def prefill(model, state: DecodeState, x_BxTxD: jax.Array, positions, mask_BxT: jax.Array,
            tokens_BxT: jax.Array | None = None):
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


def decode(model, state: DecodeState, rng: jax.Array, params: SamplingParams, head_DxV,
           max_steps: int, trie: constraints.ChoiceTrie | None = None) -> DecodeState:
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
    return emit(state, model.logits(h_Bx1xD[:, 0], head_DxV),
                jax.random.fold_in(rng, state.step), params, trie)

  return jax.lax.while_loop(cond, body, state)


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


def start(model, tokens_BxP, mask_BxP, rng, positions, image_embeds_IxD, head_DxV, *,
          max_new_tokens: int, params: SamplingParams, copies: int = 1,
          slots: int | None = None) -> DecodeState:
  """Prefills left-padded prompts and emits each row's first token.

  `slots` is the number of cache slots for generated tokens (default: all
  `max_new_tokens`; `decode_growing` starts with fewer). See `generate_padded`.
  """
  B, P = tokens_BxP.shape
  slots = max_new_tokens if slots is None else slots
  if positions is None:
    positions = positions_from_mask(mask_BxP)
  s = init_state(model, B, P if copies > 1 else P + slots, max_new_tokens,
                 pad_token_id=params.pad_token_id, track_seen=params.penalized)
  s = s.replace(done_B=~mask_BxP.any(axis=-1))
  h_BxD, s = prefill(model, s, model.embed(tokens_BxP, image_embeds_IxD), positions, mask_BxP,
                     tokens_BxP)
  if copies > 1:
    s = share(s, copies, slots)
    h_BxD = jnp.repeat(h_BxD, copies, axis=0)
  return emit(s, model.logits(h_BxD, head_DxV), jax.random.fold_in(rng, 0), params)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "params", "copies",
                                             "slots"))
def _start(graphdef, weights, tokens_BxP, mask_BxP, rng, positions, image_embeds_IxD, head_DxV,
           *, max_new_tokens: int, params: SamplingParams, copies: int, slots: int):
  return start(nnx.merge(graphdef, weights), tokens_BxP, mask_BxP, rng, positions,
               image_embeds_IxD, head_DxV, max_new_tokens=max_new_tokens, params=params,
               copies=copies, slots=slots)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "params", "copies"))
def generate_padded(graphdef, state, tokens_BxP, mask_BxP, rng, positions=None,
                    image_embeds_IxD=None, head_DxV=None, *, max_new_tokens: int,
                    params: SamplingParams, copies: int = 1):
  """Pure, jitted core of `generate` over left-padded prompts (one compiled call).

  Rows whose mask is all zero (batch padding) produce nothing. `positions` defaults
  to counting real tokens; multimodal callers pass M-RoPE positions and image tokens.
  With `copies` > 1 each prompt is sampled that many times (rows prompt-major), its
  cache shared by the copies (`share`) rather than prefilled or stored once per copy.
  `head_DxV` is `head_layout.decode_head(model)` computed by the caller (None: here).
  Returns `(tokens_BxN, logprobs_BxN, lengths_B)`, padded after each row's first EOS.
  """
  model = nnx.merge(graphdef, state)
  if head_DxV is None:
    head_DxV = head_layout.decode_head(model)
  s = start(model, tokens_BxP, mask_BxP, rng, positions, image_embeds_IxD, head_DxV,
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


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_ids: Sequence[int] = (), rng: jax.Array | None = None,
             pad_token_id: int = 0, pixel_values=None, image_grid_thw=None,
             copies: int = 1, repetition_penalty: float = 1.0) -> GenerateOutput:
  """Samples continuations of token-id prompts of different lengths.

  temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off. Each row
  stops after its first token in `eos_token_ids`. Same inputs and `rng`, same output.
  `repetition_penalty` (1: off) is HF's and vLLM's: the logits of tokens already in the
  row's prompt or output are divided by it if positive, else multiplied, before
  temperature and the filters; the recorded log-probs ignore it (module docstring).
  A multimodal model also takes HF-style `pixel_values` / `image_grid_thw` for the
  images of all prompts in order, each prompt's `<|image_pad|>` already expanded.
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
  tokens, mask = padding.left_pad(prompts, padding.bucket_length(max(len(p) for p in prompts)),
                                  padding.bucket_batch(len(prompts)), pad_token_id)
  positions = image_embeds = None
  if pixel_values is not None or image_grid_thw is not None:
    if not hasattr(model, "multimodal_inputs"):
      raise ValueError(f"{type(model).__name__} takes no images.")
    positions, image_embeds = model.multimodal_inputs(tokens, mask, pixel_values, image_grid_thw)
  graphdef, state = nnx.split(model)
  params = SamplingParams(float(temperature), int(top_k), float(top_p),
                          tuple(int(e) for e in eos_token_ids), int(pad_token_id),
                          float(repetition_penalty))
  head_DxV = head_layout.decode_head(model)
  if max_new_tokens > GROW_SLOTS:  # a growing cache, GROW_SLOTS tokens per compiled chunk
    s = _start(graphdef, state, tokens, mask, rng, positions, image_embeds, head_DxV,
               max_new_tokens=max_new_tokens, params=params, copies=copies, slots=GROW_SLOTS)
    s = decode_growing(graphdef, state, head_DxV, s, rng, params, steps=GROW_SLOTS)
    out = s.tokens_BxN, s.logprobs_BxN, s.lengths_B
  else:
    out = generate_padded(graphdef, state, tokens, mask, rng, positions, image_embeds, head_DxV,
                          max_new_tokens=max_new_tokens, params=params, copies=copies)
  rows = len(prompts) * copies
  tokens_BxN, logprobs_BxN, lengths_B = (np.asarray(x)[:rows] for x in jax.device_get(out))
  return GenerateOutput(
      tokens=[row[:n].tolist() for row, n in zip(tokens_BxN, lengths_B)],
      logprobs=[row[:n] for row, n in zip(logprobs_BxN, lengths_B)],
      tokens_BxN=tokens_BxN, logprobs_BxN=logprobs_BxN, lengths_B=lengths_B,
      prompt_QxP=np.asarray(tokens)[:len(prompts)],
      prompt_mask_QxP=np.asarray(mask)[:len(prompts)])
