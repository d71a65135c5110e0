"""Sampler properties: EOS, determinism, log-probabilities, batching, cache sharing and growth,
compile reuse, repetition penalty (the token draw itself: next_token_test.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prompt4trust_jax import models, padding
from prompt4trust_jax.downstream import constraints
from prompt4trust_jax.policy import head_layout, sampling
from tests import hf_oracle


@pytest.fixture(scope="module")
def model(tiny_dir):
  return models.from_pretrained(tiny_dir)


def test_sampler_logprobs_match_a_full_forward(model):
  prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15]]
  out = sampling.generate(model, prompts, max_new_tokens=12, temperature=0.6, top_p=0.95,
                          top_k=100, rng=jax.random.key(0))
  for prompt, tokens, logprobs in zip(prompts, out.tokens, out.logprobs):
    logits = np.asarray(model(input_ids=np.array([prompt + tokens])))[0]
    scaled = jax.nn.log_softmax(logits[len(prompt) - 1:-1] / 0.6)
    np.testing.assert_allclose(logprobs, np.asarray(scaled)[np.arange(len(tokens)), tokens],
                               atol=1e-5)


def test_eos_stops_only_its_row(model):
  prompts = [[5, 6, 7], [20, 21]]
  free = sampling.generate(model, prompts, max_new_tokens=10, temperature=0)
  eos = free.tokens[0][3]
  assert eos not in free.tokens[1], "pick prompts whose second row avoids the EOS"
  out = sampling.generate(model, prompts, max_new_tokens=10, temperature=0, eos_token_ids=[eos])
  stop = free.tokens[0].index(eos)
  assert out.tokens[0] == free.tokens[0][:stop + 1]
  assert out.tokens[1] == free.tokens[1] and len(out.tokens[1]) == 10
  assert out.lengths_B.tolist() == [stop + 1, 10]
  assert (out.tokens_BxN[0, stop + 1:] == 0).all() and (out.logprobs_BxN[0, stop + 1:] == 0).all()


def test_deterministic_for_a_given_rng(model):
  prompts = [[5, 6, 7], [8, 9]]
  kw = dict(max_new_tokens=16, temperature=1.0, rng=jax.random.key(7))
  a = sampling.generate(model, prompts, **kw)
  b = sampling.generate(model, prompts, **kw)
  c = sampling.generate(model, prompts, **{**kw, "rng": jax.random.key(8)})
  assert a.tokens == b.tokens and a.tokens != c.tokens


def test_batched_rows_equal_single_rows(model):
  prompts = [[5, 6, 7], list(range(30, 55)), [99]]
  batched = sampling.generate(model, prompts, max_new_tokens=20, temperature=0, pad_token_id=1)
  for prompt, tokens in zip(prompts, batched.tokens):
    assert sampling.generate(model, [prompt], max_new_tokens=20, temperature=0).tokens[0] == tokens
  # The prompts come back as the sampler padded them: left, to the length bucket.
  P = padding.bucket_length(25)
  assert batched.prompt_QxP.shape == batched.prompt_mask_QxP.shape == (3, P)
  for prompt, row, mask in zip(prompts, batched.prompt_QxP, batched.prompt_mask_QxP):
    assert row[P - len(prompt):].tolist() == prompt and (row[:P - len(prompt)] == 1).all()
    assert mask.tolist() == [0] * (P - len(prompt)) + [1] * len(prompt)


def test_copies_share_the_prompt_cache_and_sample_like_repeated_prompts(model):
  """G copies of a prompt reading one shared cache == the prompt repeated G times."""
  prompts, G = [[5, 6, 7], list(range(30, 55))], 4
  kw = dict(max_new_tokens=24, temperature=1.0, top_k=50, rng=jax.random.key(3))
  shared = sampling.generate(model, prompts, copies=G, **kw)
  repeated = sampling.generate(model, [p for p in prompts for _ in range(G)], **kw)
  assert shared.tokens == repeated.tokens  # same draws row for row
  assert len({tuple(t) for t in shared.tokens[:G]}) > 1  # the copies differ from each other
  np.testing.assert_allclose(shared.logprobs_BxN, repeated.logprobs_BxN, atol=2e-5)
  with pytest.raises(ValueError, match="copies must be >= 1"):
    sampling.generate(model, prompts, copies=0, **kw)


@pytest.mark.parametrize("copies", [1, 3])
def test_growing_cache_samples_like_a_full_one(model, monkeypatch, copies):
  prompts = [[5, 6, 7], list(range(30, 55))]
  kw = dict(max_new_tokens=40, temperature=1.0, top_k=50, rng=jax.random.key(4), copies=copies)
  monkeypatch.setattr(sampling, "GROW_SLOTS", 8)  # 8-token chunks, cache grown 8 slots a time
  extended = []
  extend = sampling.extend
  monkeypatch.setattr(sampling, "extend", lambda s, n: extended.append(n) or extend(s, n))
  grown = sampling.generate(model, prompts, **kw)
  monkeypatch.setattr(sampling, "GROW_SLOTS", 10**6)  # one call over the whole budget
  full = sampling.generate(model, prompts, **kw)
  assert len(extended) >= 4 and extended == sorted(extended)
  assert grown.tokens == full.tokens and (grown.lengths_B == 40).all()
  np.testing.assert_allclose(grown.logprobs_BxN, full.logprobs_BxN, atol=2e-5)


def test_no_recompilation_within_a_bucket(model):
  kw = dict(max_new_tokens=8, temperature=0.6, top_k=100, top_p=0.95)
  sampling.generate(model, [[1, 2, 3], [4, 5, 6, 7, 8]], rng=jax.random.key(0), **kw)
  compiled = sampling.generate_padded._cache_size()
  # New prompts, lengths, batch size and rng; same (batch, length) buckets.
  sampling.generate(model, [[9] * 12, [10] * 2], rng=jax.random.key(1), **kw)
  assert sampling.generate_padded._cache_size() == compiled
  sampling.generate(model, [[9] * 20, [10] * 2], rng=jax.random.key(1), **kw)  # next bucket
  assert sampling.generate_padded._cache_size() == compiled + 1


@pytest.mark.parametrize("prompts,kwargs,match", [
    ([], {}, "prompts is empty"),
    ([[1], []], {}, r"prompts\[1\] is empty"),
    ([[1, 5000]], {}, r"prompts\[0\] has token id 5000 outside"),
    ([[1]], {"max_new_tokens": 0}, "max_new_tokens"),
    ([[1]], {"top_p": 0.0}, "top_p"),
    ([[1]], {"temperature": 0.5, "rng": None}, "rng"),
    ([[1]], {"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0"),
    ([[1]], {"repetition_penalty": -1.3}, "repetition_penalty"),
    ([[1]], {"repetition_penalty": float("nan")}, "repetition_penalty"),
])
def test_bad_arguments_are_named(model, prompts, kwargs, match):
  kw = {"max_new_tokens": 4, "temperature": 0, **kwargs}
  with pytest.raises(ValueError, match=match):
    sampling.generate(model, prompts, **kw)


def test_buckets():
  lengths = (1, 16, 17, 44, 64, 65, 100, 128, 129, 311, 512, 513)
  assert [padding.bucket_length(n) for n in lengths] == [16, 16, 24, 48, 64, 80, 112, 128, 160,
                                                          320, 512, 640]
  # Beyond 32 tokens padding stays under a quarter of the length, with 4 buckets per doubling.
  buckets = {padding.bucket_length(n) for n in range(1, 4097)}
  assert all(padding.bucket_length(n) < 1.25 * n for n in range(33, 4097))
  assert len([b for b in buckets if 1024 < b <= 2048]) == 4
  assert [padding.bucket_batch(n) for n in (1, 3, 8, 9)] == [1, 4, 8, 16]


def test_tied_decode_head_is_laid_out_once_per_embedding_table():
  from flax import nnx
  from prompt4trust_jax import fixtures
  model = models.Qwen2ForCausalLM(fixtures.shape_config("tiny"), rngs=nnx.Rngs(0))
  assert model.tied_embedding() is not None
  head = head_layout.decode_head(model)
  np.testing.assert_array_equal(head, model.model.embed_tokens.embedding[...].T)
  assert head_layout.decode_head(model) is head  # reused, not recomputed
  # New weights (an optimizer step): a new layout, and the old one is dropped with its table.
  old_key = id(model.model.embed_tokens.embedding[...])
  model.model.embed_tokens.embedding[...] = model.model.embed_tokens.embedding[...] * 2
  new_head = head_layout.decode_head(model)
  np.testing.assert_array_equal(new_head, 2 * head)
  assert old_key not in head_layout._TRANSPOSED_HEADS
  # Inside jit the head is computed from the traced table, never cached.
  traced = jax.jit(lambda m: head_layout.decode_head(m))(model)
  np.testing.assert_array_equal(traced, new_head)


# -- repetition penalty ---------------------------------------------------------------


class _AlsoSeen(transformers.LogitsProcessor):
  """HF's repetition penalty as if `extra_ids` were in every row's prompt too."""

  def __init__(self, penalty: float, extra_ids: list[int]):
    self.penalty = transformers.RepetitionPenaltyLogitsProcessor(penalty)
    self.extra_1xE = torch.tensor([extra_ids])

  def __call__(self, input_ids, scores):
    extra = self.extra_1xE.expand(input_ids.shape[0], -1)
    return self.penalty(torch.cat([extra, input_ids], dim=1), scores)


def _hf_greedy(model, prompt, max_new_tokens, penalty, also_seen=None):
  """transformers' greedy `generate(repetition_penalty=...)` of one unpadded prompt."""
  kw = (dict(repetition_penalty=penalty) if also_seen is None
        else dict(logits_processor=[_AlsoSeen(penalty, also_seen)]))
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                           dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None,
                         pad_token_id=0, **kw)
  return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("copies", [1, 2])
def test_greedy_repetition_penalty_matches_transformers(qwen2_dir, copies):
  ref_model = hf_oracle.load(qwen2_dir)
  model = models.from_pretrained(qwen2_dir)
  rng = np.random.default_rng(2)
  # Three lengths in one batch of 4: every row left padded (bucket 24), one row all padding.
  prompts = [rng.integers(0, 512, n).tolist() for n in (3, 17, 8)]
  expected = [_hf_greedy(ref_model, p, 24, 1.3) for p in prompts]
  assert expected != [hf_oracle.greedy(ref_model, p, 24) for p in prompts]  # the penalty bites
  # A padding id that some row's greedy output needs: counted as seen, it would change that
  # row (the two short rows, here), so equal outputs show padding is not counted.
  pad = 162
  assert all(pad not in p for p in prompts)
  assert _hf_greedy(ref_model, prompts[0], 24, 1.3, also_seen=[pad]) != expected[0]
  assert _hf_greedy(ref_model, prompts[2], 24, 1.3, also_seen=[pad]) != expected[2]
  out = sampling.generate(model, prompts, max_new_tokens=24, temperature=0, pad_token_id=pad,
                          repetition_penalty=1.3, copies=copies)
  assert out.tokens == [t for t in expected for _ in range(copies)]


def test_repetition_penalty_one_is_the_unpenalised_program(model):
  prompts = [[5, 6, 7, 5, 6], list(range(30, 55))]
  kw = dict(max_new_tokens=20, temperature=0.8, top_p=0.9, rng=jax.random.key(5), copies=2)
  plain = sampling.generate(model, prompts, **kw)
  one = sampling.generate(model, prompts, repetition_penalty=1.0, **kw)
  assert one.tokens == plain.tokens
  np.testing.assert_array_equal(one.logprobs_BxN, plain.logprobs_BxN)
  assert sampling.generate(model, prompts, repetition_penalty=1.5, **kw).tokens != plain.tokens
  # No presence mask is built or read: a [B, 0] placeholder and no scatter in the draw.
  tokens, mask = padding.left_pad(prompts, 32, 2, 0)
  head_DxV = head_layout.decode_head(model)

  def start(params):
    return sampling.start(model, tokens, mask, jax.random.key(0), None, None, head_DxV,
                          max_new_tokens=4, params=params)

  off, on = sampling.SamplingParams(), sampling.SamplingParams(repetition_penalty=1.3)
  assert jax.eval_shape(lambda: start(off)).seen_BxV.shape == (2, 0)
  assert jax.eval_shape(lambda: start(on)).seen_BxV.shape == (2, model.config.vocab_size)
  state = start(off)
  logits_BxV = jnp.zeros((2, model.config.vocab_size))
  emit = lambda params: lambda s, x: sampling.emit(s, x, jax.random.key(1), params)
  assert "scatter" not in str(jax.make_jaxpr(emit(off))(state, logits_BxV))
  assert "scatter" in str(jax.make_jaxpr(emit(on))(start(on), logits_BxV))
  with pytest.raises(ValueError, match="track_seen=True"):
    sampling.emit(state, logits_BxV, jax.random.key(1), on)


@pytest.mark.parametrize("temperature", [0.7])  # greedy: the transformers parity test above
def test_penalised_logprobs_are_the_models_own(model, temperature):
  prompts = [[5, 6, 7, 5, 6, 7], [9, 10, 11, 12, 13, 14, 15]]
  kw = dict(max_new_tokens=16, temperature=temperature, top_k=100, top_p=0.95,
            rng=jax.random.key(0))
  out = sampling.generate(model, prompts, repetition_penalty=1.8, **kw)
  assert out.tokens != sampling.generate(model, prompts, **kw).tokens  # the penalty bites
  for prompt, tokens, logprobs in zip(prompts, out.tokens, out.logprobs):
    logits = np.asarray(model(input_ids=np.array([prompt + tokens])))[0]
    scaled = jax.nn.log_softmax(logits[len(prompt) - 1:-1] / (temperature or 1.0))
    np.testing.assert_allclose(logprobs, np.asarray(scaled)[np.arange(len(tokens)), tokens],
                               atol=1e-5)


@pytest.mark.parametrize("copies", [3])  # copies=1 shares the code path of the unpenalised test
def test_growing_cache_penalises_like_a_full_one(model, monkeypatch, copies):
  prompts = [[5, 6, 7], list(range(30, 55))]
  kw = dict(max_new_tokens=40, temperature=1.0, top_k=50, rng=jax.random.key(4), copies=copies,
            repetition_penalty=1.3)
  monkeypatch.setattr(sampling, "GROW_SLOTS", 8)  # 8-token chunks
  grown = sampling.generate(model, prompts, **kw)
  monkeypatch.setattr(sampling, "GROW_SLOTS", 10**6)  # one call over the whole budget
  full = sampling.generate(model, prompts, **kw)
  assert grown.tokens == full.tokens and (grown.lengths_B == 40).all()
  np.testing.assert_allclose(grown.logprobs_BxN, full.logprobs_BxN, atol=2e-5)
  plain = sampling.generate(model, prompts, **{**kw, "repetition_penalty": 1.0})
  assert full.tokens != plain.tokens  # the penalty bites


class _SpaceSeparatedIds:
  """A 'tokenizer' whose texts are their ids, for hand-made tries."""

  def encode(self, text, add_special_tokens=False):
    return [int(t) for t in text.split()]


def test_penalty_applies_before_the_trie_restriction(model):
  trie = constraints.build_trie(_SpaceSeparatedIds(), ["5 7 9", "5 8 9"])
  params = sampling.SamplingParams(temperature=0.0, repetition_penalty=1.5)
  state = sampling.init_state(model, 1, 4, 3, trie.child_token.shape[1], track_seen=True)
  state = state.replace(seen_BxV=state.seen_BxV.at[0, 7].set(True))  # 7 was in the prompt
  logits_BxV = jnp.zeros((1, model.config.vocab_size)).at[0, jnp.array([5, 7, 8])].set(
      jnp.array([1.0, 3.0, 2.5]))
  key = jax.random.key(0)
  state = sampling.emit(state, logits_BxV, key, params, trie)  # 5: the only child of the root
  state = sampling.emit(state, logits_BxV, key, params, trie)  # 3 / 1.5 = 2 < 2.5
  assert state.tokens_BxN[0, :2].tolist() == [5, 8]
  assert bool(state.seen_BxV[0, 5]) and bool(state.seen_BxV[0, 8])
  # The log-prob and the option probabilities are the model's own, unpenalised.
  np.testing.assert_allclose(state.logprobs_BxN[0, 1], 2.5 - np.logaddexp(3.0, 2.5), rtol=1e-6)
  probs_V = jax.nn.softmax(logits_BxV[0])
  np.testing.assert_allclose(state.choice_probs_BxC[0], probs_V[jnp.array([7, 8])], rtol=1e-6)
  plain = sampling.SamplingParams(temperature=0.0)
  state = sampling.init_state(model, 1, 4, 3, trie.child_token.shape[1])
  for _ in range(2):
    state = sampling.emit(state, logits_BxV, key, plain, trie)
  assert state.tokens_BxN[0, :2].tolist() == [5, 7]
