"""The KL's frozen reference: a copy in a chosen dtype, optionally in host memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from prompt4trust_jax import models
from prompt4trust_jax.training import grpo, reference, update

TOY = models.Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, tie_word_embeddings=True)
P, N = 5, 4


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(1, 64, (4, P + N)))
  mask = jnp.ones(tokens.shape, jnp.int32).at[0, :2].set(0)  # one left-padded prompt
  return tokens, mask


def test_reference_is_the_initial_policy_and_survives_donated_updates():
  model = models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tokens, mask = _batch()
  want = update.reference_logprobs(graphdef, params, tokens, mask, N, 0.7)
  frozen = reference.Reference.create(model)
  np.testing.assert_array_equal(frozen.logprobs(tokens, mask, N, temperature=0.7), want)
  # The train state is donated step after step; the reference is its own copy.
  state = update.TrainState.create(model, optax.sgd(1.0))
  batch = update.Batch(tokens, mask, jnp.ones((4, N)), want, jnp.asarray([1.0, -1.0, 0.5, -0.5]),
                       want)
  state, _ = update.train_step(state, batch, config=grpo.LossConfig(beta=0.04))
  np.testing.assert_array_equal(frozen.logprobs(tokens, mask, N, temperature=0.7), want)
  assert np.abs(update.reference_logprobs(state.graphdef, state.params, tokens, mask, N, 0.7)
                - want).max() > 1e-4  # the policy did move


def test_bfloat16_reference_halves_its_bytes_and_stays_close():
  model = models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(1))
  tokens, mask = _batch(1)
  full = reference.Reference.create(model)
  half = reference.Reference.create(model, "bfloat16")
  nbytes = lambda r: sum(x.nbytes for x in jax.tree.leaves(r.params))
  assert nbytes(half) * 2 == nbytes(full)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(half.params))
  # bfloat16 keeps 8 significant bits (relative error 2^-8 per rounding) on log-probs of
  # magnitude ~log(64) = 4.2.
  np.testing.assert_allclose(half.logprobs(tokens, mask, N), full.logprobs(tokens, mask, N),
                             atol=0.05)


def test_host_reference_lives_in_pinned_host_memory_and_gives_the_same_logprobs():
  model = models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(2))
  tokens, mask = _batch(2)
  host = reference.Reference.create(model, host=True)
  assert {x.sharding.memory_kind for x in jax.tree.leaves(host.params)} == {"pinned_host"}
  np.testing.assert_array_equal(host.logprobs(tokens, mask, N),
                                reference.Reference.create(model).logprobs(tokens, mask, N))
