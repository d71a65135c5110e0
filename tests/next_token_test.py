"""Drawing the next token: filters never leave their set, frequencies, log-probs, the draw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt4trust_jax.policy import next_token


def _keys(n):
  return jax.random.split(jax.random.key(0), n)


def test_top_k_and_top_p_never_leave_the_allowed_set():
  logits = jax.random.normal(jax.random.key(1), (4, 50)) * 3
  draw = jax.jit(jax.vmap(lambda k: next_token.sample_token(logits, k, temperature=0.7,
                                                            top_k=5, top_p=0.8)[0]))
  tokens = np.asarray(draw(_keys(2000)))  # [draws, rows]
  probs = np.asarray(jax.nn.softmax(logits / 0.7))
  for row in range(4):
    order = np.argsort(-probs[row])
    nucleus_size = np.searchsorted(np.cumsum(probs[row][order]), 0.8) + 1
    allowed = set(order[:min(5, nucleus_size)].tolist())
    seen = set(tokens[:, row].tolist())
    assert seen <= allowed
    assert seen == allowed  # every allowed token shows up in 2000 draws


def test_sampling_frequencies_follow_the_tempered_distribution():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  draw = jax.jit(jax.vmap(lambda k: next_token.sample_token(logits, k, temperature=0.5)[0][0]))
  freqs = np.bincount(np.asarray(draw(_keys(20000))), minlength=4) / 20000
  p = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
  np.testing.assert_allclose(freqs, p / p.sum(), atol=0.015)


def test_logprob_is_the_full_tempered_log_softmax():
  logits = jax.random.normal(jax.random.key(2), (3, 20))
  token, logprob = next_token.sample_token(logits, jax.random.key(3), temperature=0.6, top_k=4,
                                           top_p=0.9)
  expected = jax.nn.log_softmax(logits / 0.6)[jnp.arange(3), token]
  np.testing.assert_allclose(logprob, expected, rtol=1e-6)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, 0, 1.0), (0.6, 0, 1.0), (0.6, 0, 0.9),
                                                    (0.6, 4, 0.9)])
def test_logprob_in_every_sampling_path(temperature, top_k, top_p):
  logits = jax.random.normal(jax.random.key(5), (3, 300)) * 2
  token, logprob = jax.jit(lambda x: next_token.sample_token(
      x, jax.random.key(6), temperature=temperature, top_k=top_k, top_p=top_p))(logits)
  expected = jax.nn.log_softmax(logits / (temperature or 1.0))[jnp.arange(3), token]
  np.testing.assert_allclose(logprob, expected, rtol=1e-6, atol=1e-6)


def test_top_p_alone_keeps_exactly_the_nucleus():
  logits = jax.random.normal(jax.random.key(4), (6, 300)) * 2
  probs = np.asarray(jax.nn.softmax(logits / 0.8))
  for top_p in (0.5, 0.9, 0.95):
    threshold = np.asarray(jax.jit(next_token.top_p_threshold, static_argnums=1)(
        jnp.asarray(probs), top_p))
    for row in range(6):
      order = np.argsort(-probs[row])
      size = np.searchsorted(np.cumsum(probs[row][order]), top_p) + 1
      assert set(np.flatnonzero(probs[row] >= threshold[row])) == set(order[:size])
  draw = jax.jit(jax.vmap(lambda k: next_token.sample_token(logits, k, temperature=0.8,
                                                            top_p=0.9)[0]))
  tokens = np.asarray(draw(_keys(500)))
  for row in range(6):
    order = np.argsort(-probs[row])
    nucleus = set(order[:np.searchsorted(np.cumsum(probs[row][order]), 0.9) + 1].tolist())
    assert set(tokens[:, row].tolist()) <= nucleus


def test_top_p_early_stop_keeps_exactly_the_nucleus():
  # A real model's peaked rows (the search can stop after a few halvings), a top token
  # that reaches top_p alone with a runner-up just below it, and a two-token nucleus.
  probs = np.full((3, 1000), 1e-6, np.float32)
  probs[0, 7] = 0.99
  probs[1, [3, 9]] = [0.5, 0.4999]
  probs[2] = 0.15 / 997
  probs[2, [1, 2, 4]] = [0.35, 0.3, 0.2]
  probs /= probs.sum(-1, keepdims=True)
  threshold = jax.jit(next_token.top_p_threshold, static_argnums=(1, 2, 3, 4))
  for check_after in (8, 0):  # 0: all 24 halvings
    t = np.asarray(threshold(jnp.asarray(probs), 0.45, None, 24, check_after))
    kept = [set(np.flatnonzero(row >= cut)) for row, cut in zip(probs, t)]
    assert kept == [{7}, {3}, {1, 2}], check_after


def test_inverse_cdf_categorical_matches_the_distribution():
  probs = np.zeros((2, 300), np.float32)
  probs[0, [0, 127, 128, 299]] = [0.1, 0.2, 0.3, 0.4]  # block edges, V not a multiple of 128
  probs[1, 5:15] = 1.0  # unnormalised
  draw = jax.jit(jax.vmap(lambda k: next_token.categorical(k, jnp.asarray(probs))))
  tokens = np.asarray(draw(_keys(20000)))
  for row in range(2):
    freqs = np.bincount(tokens[:, row], minlength=300) / 20000
    assert (freqs[probs[row] == 0] == 0).all()
    np.testing.assert_allclose(freqs, probs[row] / probs[row].sum(), atol=0.012)


def test_inverse_cdf_draw_on_an_empty_entry_takes_the_mode(monkeypatch):
  # A draw at the very top of the CDF lands past the last non-zero entry.
  probs = np.zeros((2, 300), np.float32)
  probs[0, [3, 10]] = [0.2, 0.8]
  probs[1, 5] = 1.0
  monkeypatch.setattr(jax.random, "uniform", lambda key, shape: jnp.ones(shape))
  assert next_token.categorical(jax.random.key(0), jnp.asarray(probs)).tolist() == [10, 5]


def test_argmax_takes_the_first_maximum():
  x = jnp.array([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -2.0, -1.0, -0.5]])
  np.testing.assert_array_equal(next_token.argmax(x), jnp.argmax(x, axis=-1))


def test_repetition_penalty_on_hand_worked_logits():
  # Row 0 sees 0, 1 (twice: penalised once) and 4; row 1's first position is padding, so
  # its id 4 is not seen there, while 3 (a zero logit, left at 0) and 0 are.
  tokens_BxT = jnp.array([[0, 1, 1, 4], [4, 2, 3, 0]])
  mask_BxT = jnp.array([[1, 1, 1, 1], [0, 1, 1, 1]])
  seen_BxV = next_token.mark_seen(jnp.zeros((2, 5), bool), tokens_BxT, mask_BxT)
  np.testing.assert_array_equal(seen_BxV, [[1, 1, 0, 0, 1], [1, 0, 1, 1, 0]])
  logits_BxV = jnp.array([[2.0, -1.0, 0.5, 3.0, -2.0], [1.0, 1.0, -1.0, 0.0, 4.0]])
  np.testing.assert_array_equal(next_token.apply_repetition_penalty(logits_BxV, seen_BxV, 2.0),
                                [[1.0, -2.0, 0.5, 3.0, -4.0], [0.5, 1.0, -2.0, 0.0, 4.0]])
  # Below 1 it rewards repeats: positive seen logits grow, negative ones shrink toward 0.
  np.testing.assert_array_equal(next_token.apply_repetition_penalty(logits_BxV, seen_BxV, 0.5),
                                [[4.0, -0.5, 0.5, 3.0, -1.0], [2.0, 1.0, -0.5, 0.0, 4.0]])
  # One emitted id per row; a masked row (finished) marks nothing.
  seen_BxV = next_token.mark_seen(seen_BxV, jnp.array([[2], [4]]), jnp.array([[True], [False]]))
  np.testing.assert_array_equal(seen_BxV, [[1, 1, 1, 0, 1], [1, 0, 1, 1, 0]])
  with pytest.raises(ValueError, match="seen_BxV"):
    next_token.apply_repetition_penalty(logits_BxV, seen_BxV[:, :4], 2.0)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, 0, 1.0), (0.7, 0, 0.9), (0.7, 3, 1.0)])
def test_logprob_comes_from_the_unpenalised_logits(temperature, top_k, top_p):
  raw_BxV = jax.random.normal(jax.random.key(7), (4, 40)) * 2
  seen_BxV = jax.random.bernoulli(jax.random.key(8), 0.5, (4, 40))
  draw_BxV = next_token.apply_repetition_penalty(raw_BxV, seen_BxV, 3.0)
  kw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
  token, logprob = next_token.sample_token(draw_BxV, jax.random.key(9), logprob_logits_BxV=raw_BxV,
                                           **kw)
  # The draw follows the penalised logits (same key, same token as drawing from them alone) ...
  alone = next_token.sample_token(draw_BxV, jax.random.key(9), **kw)[0]
  np.testing.assert_array_equal(token, alone)
  # ... the log-prob is the model's own.
  expected = jax.nn.log_softmax(raw_BxV / (temperature or 1.0))[jnp.arange(4), token]
  np.testing.assert_allclose(logprob, expected, rtol=1e-6, atol=1e-6)
  if temperature == 0:
    np.testing.assert_array_equal(token, jnp.argmax(draw_BxV, axis=-1))
