"""Batched sampling with a KV cache: one jitted prefill plus a `lax.while_loop` decode.

Prompts are left padded to a bucketed length (and the batch to a bucketed size), so
every row writes step t at the same cache slot and new prompts of a similar size
reuse the compiled program. The loop stops when every row has emitted an EOS token
or the budget is spent, with no host round-trip per token.

Log-probabilities: `logprobs[t]` is log softmax(logits / temperature) at the chosen
token, over the full vocabulary (before top-k/top-p truncation), which is what a
GRPO update recomputes as the "old" policy log-probability. With temperature 0
(greedy) it is the plain log softmax of the logits.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models.qwen2 import positions_from_mask


class GenerateOutput(NamedTuple):
  tokens: list[list[int]]  # generated ids per prompt, up to and including the first EOS
  logprobs: list[np.ndarray]  # float32, one per generated token (see module docstring)
  tokens_BxN: np.ndarray  # the same, padded with pad_token_id
  logprobs_BxN: np.ndarray  # padded with 0
  lengths_B: np.ndarray


def bucket_length(n: int) -> int:
  """Prompt lengths round up to 16, 32, ..., 512, then to multiples of 512."""
  if n <= 512:
    return max(16, 1 << (n - 1).bit_length())
  return -(-n // 512) * 512


def bucket_batch(n: int) -> int:
  return 1 << (n - 1).bit_length()


def sample_token(logits_BxV: jax.Array, key: jax.Array, *, temperature: float, top_k: int = 0,
                 top_p: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row; returns `(token_B, logprob_B)` (see module docstring).

  Order as in vLLM/transformers: temperature, then top-k, then top-p (the smallest set
  of most likely tokens whose mass reaches top_p). temperature 0 is greedy.
  """
  if temperature == 0:
    token_B = jnp.argmax(logits_BxV, axis=-1)
    logprobs_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
  else:
    scaled_BxV = logits_BxV / temperature
    logprobs_BxV = jax.nn.log_softmax(scaled_BxV, axis=-1)
    vocab = logits_BxV.shape[-1]
    k = top_k if 0 < top_k < vocab else vocab
    if k < vocab or top_p < 1.0:
      top_BxK, ids_BxK = jax.lax.top_k(scaled_BxV, k)  # sorted, most likely first
      if top_p < 1.0:
        probs_BxK = jax.nn.softmax(top_BxK, axis=-1)
        mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
        top_BxK = jnp.where(mass_before_BxK < top_p, top_BxK, -jnp.inf)
      choice_B = jax.random.categorical(key, top_BxK, axis=-1)
      token_B = jnp.take_along_axis(ids_BxK, choice_B[:, None], axis=-1)[:, 0]
    else:
      token_B = jax.random.categorical(key, scaled_BxV, axis=-1)
  logprob_B = jnp.take_along_axis(logprobs_BxV, token_B[:, None], axis=-1)[:, 0]
  return token_B.astype(jnp.int32), logprob_B


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "eos_token_ids",
    "pad_token_id"))
def generate_padded(graphdef, state, tokens_BxP, mask_BxP, rng, *, max_new_tokens: int,
                    temperature: float, top_k: int, top_p: float,
                    eos_token_ids: tuple[int, ...], pad_token_id: int):
  """Pure, jitted core of `generate` over left-padded prompts.

  Rows whose mask is all zero (batch padding) produce nothing. Returns
  `(tokens_BxN, logprobs_BxN, lengths_B)`, padded after each row's first EOS.
  """
  model = nnx.merge(graphdef, state)
  B, P = tokens_BxP.shape
  N = max_new_tokens
  eos_E = jnp.asarray(eos_token_ids if eos_token_ids else (-1,), jnp.int32)
  sample = functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p)

  head_DxV = model.lm_head_kernel()
  if jax.default_backend() == "cpu":
    # XLA:CPU reads a transposed matrix operand ~1.7x slower; a tied head is the
    # transposed embedding table, so lay it out once per call instead of per token.
    head_DxV = jax.lax.optimization_barrier(head_DxV)
  cache = model.init_cache(B, P + N)
  kv_valid_BxS = jnp.concatenate([mask_BxP.astype(bool), jnp.ones((B, N), bool)], axis=1)
  h_BxPxD, cache = model.step(model.embed(tokens_BxP), positions_from_mask(mask_BxP),
                              kv_cache_lib.attention_mask(kv_valid_BxS, 0, P), cache, 0)
  token_B, logprob_B = sample(model.logits(h_BxPxD[:, -1], head_DxV), jax.random.fold_in(rng, 0))
  is_row_B = mask_BxP.any(axis=-1)
  token_B = jnp.where(is_row_B, token_B, pad_token_id)
  logprob_B = jnp.where(is_row_B, logprob_B, 0.0)
  done_B = ~is_row_B | jnp.isin(token_B, eos_E)
  tokens_BxN = jnp.full((B, N), pad_token_id, jnp.int32).at[:, 0].set(token_B)
  logprobs_BxN = jnp.zeros((B, N), jnp.float32).at[:, 0].set(logprob_B)
  lengths_B = is_row_B.astype(jnp.int32)
  first_position_B = mask_BxP.sum(axis=-1).astype(jnp.int32)

  def cond(carry):
    i, _, _, _, _, done_B, _ = carry
    return (i < N) & ~jnp.all(done_B)

  def body(carry):
    i, token_B, tokens_BxN, logprobs_BxN, lengths_B, done_B, cache = carry
    slot = P + i - 1  # where the previous token goes
    h_Bx1xD, cache = model.step(model.embed(token_B[:, None]), (first_position_B + i - 1)[:, None],
                                kv_cache_lib.attention_mask(kv_valid_BxS, slot, 1), cache, slot)
    new_B, logprob_B = sample(model.logits(h_Bx1xD[:, 0], head_DxV), jax.random.fold_in(rng, i))
    new_B = jnp.where(done_B, pad_token_id, new_B)
    logprob_B = jnp.where(done_B, 0.0, logprob_B)
    tokens_BxN = jax.lax.dynamic_update_slice(tokens_BxN, new_B[:, None], (0, i))
    logprobs_BxN = jax.lax.dynamic_update_slice(logprobs_BxN, logprob_B[:, None], (0, i))
    lengths_B = lengths_B + (~done_B).astype(jnp.int32)
    done_B = done_B | jnp.isin(new_B, eos_E)
    return i + 1, new_B, tokens_BxN, logprobs_BxN, lengths_B, done_B, cache

  carry = (jnp.int32(1), token_B, tokens_BxN, logprobs_BxN, lengths_B, done_B, cache)
  _, _, tokens_BxN, logprobs_BxN, lengths_B, _, _ = jax.lax.while_loop(cond, body, carry)
  return tokens_BxN, logprobs_BxN, lengths_B


def left_pad(prompts: Sequence[Sequence[int]], length: int, batch: int, pad_token_id: int):
  """`(tokens, mask)` of shape `[batch, length]`, each prompt flush right."""
  tokens = np.full((batch, length), pad_token_id, np.int32)
  mask = np.zeros((batch, length), np.int32)
  for row, prompt in enumerate(prompts):
    if len(prompt):
      tokens[row, length - len(prompt):] = prompt
      mask[row, length - len(prompt):] = 1
  return tokens, mask


def _validate(prompts, vocab_size, max_new_tokens, temperature, top_k, top_p):
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


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_ids: Sequence[int] = (), rng: jax.Array | None = None,
             pad_token_id: int = 0) -> GenerateOutput:
  """Samples continuations of token-id prompts of different lengths.

  temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off. Each row
  stops after its first token in `eos_token_ids`. Same inputs and `rng`, same output.
  """
  _validate(prompts, model.config.vocab_size, max_new_tokens, temperature, top_k, top_p)
  if rng is None:
    if temperature > 0:
      raise ValueError("Sampling with temperature > 0 needs rng=jax.random.key(seed).")
    rng = jax.random.key(0)
  tokens, mask = left_pad(prompts, bucket_length(max(len(p) for p in prompts)),
                          bucket_batch(len(prompts)), pad_token_id)
  graphdef, state = nnx.split(model)
  out = generate_padded(graphdef, state, tokens, mask, rng, max_new_tokens=max_new_tokens,
                        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                        eos_token_ids=tuple(int(e) for e in eos_token_ids),
                        pad_token_id=int(pad_token_id))
  tokens_BxN, logprobs_BxN, lengths_B = (np.asarray(x)[:len(prompts)] for x in jax.device_get(out))
  return GenerateOutput(
      tokens=[row[:n].tolist() for row, n in zip(tokens_BxN, lengths_B)],
      logprobs=[row[:n] for row, n in zip(logprobs_BxN, lengths_B)],
      tokens_BxN=tokens_BxN, logprobs_BxN=logprobs_BxN, lengths_B=lengths_B)
