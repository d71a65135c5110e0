"""LoRA adapters: exact at zero, only adapters trained, the base as reference, merged export."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from prompt4trust_jax import models
from prompt4trust_jax.models import lora
from prompt4trust_jax.policy import sampling
from prompt4trust_jax.training import grpo, reference, update

TOY = models.Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, tie_word_embeddings=True)
P, N = 5, 4
IDS = jnp.asarray(np.random.default_rng(0).integers(1, 64, (4, P + N)))
MASK = jnp.ones(IDS.shape, jnp.int32).at[0, :2].set(0)


def _adapted(seed=0, rank=4, targets=lora.ALL_PROJECTIONS):
  model = models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(seed))
  base = model(IDS, MASK)
  return lora.apply(model, lora.LoRAConfig(rank, 8.0, targets), nnx.Rngs(seed + 1)), base


def _trained_step(model):
  """`(initial state, state after two steps)`: B moves first (A's gradient is 0 while B is),
  then A."""
  state = update.TrainState.create(model, optax.adam(1e-2))
  logp = update.reference_logprobs(state.graphdef, state.model_state(), IDS, MASK, N)
  batch = update.Batch(IDS, MASK, jnp.ones((4, N)), logp, jnp.asarray([1.0, -1.0, 0.5, -0.5]))
  initial = jax.tree.map(jnp.copy, state)  # the step donates its input
  for _ in range(2):
    state, metrics = update.train_step(state, batch, config=grpo.LossConfig(beta=0.0))
    assert float(metrics["skipped"]) == 0
  return initial, state


def test_zero_initialised_adapters_give_the_base_logits_exactly():
  model, base = _adapted()
  np.testing.assert_array_equal(model(IDS, MASK), base)
  # A, B on every projection of every layer; B starts at 0.
  adapters = nnx.state(model, nnx.LoRAParam)
  assert len(jax.tree.leaves(adapters)) == 2 * 7 * TOY.num_layers
  with pytest.raises(ValueError, match="not projections of the decoder"):
    lora.LoRAConfig(4, targets=("lm_head",))


def test_an_update_changes_only_the_adapters_and_keeps_state_for_them_alone():
  model, _ = _adapted()
  before = jax.tree.map(np.asarray, nnx.state(model))
  state, after = _trained_step(model)
  n_adapter = sum(x.size for x in jax.tree.leaves(state.params))
  n_all = sum(x.size for x in jax.tree.leaves(before))
  assert n_adapter < n_all / 4
  # Adam's two moments for the adapters only.
  assert sum(x.size for x in jax.tree.leaves(after.opt_state)) == 2 * n_adapter + 1
  for new, old in zip(jax.tree.leaves(after.frozen), jax.tree.leaves(state.frozen)):
    np.testing.assert_array_equal(new, old)
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params))]
  assert min(moved) > 0, moved


def test_reference_is_the_base_with_adapters_off_and_the_export_merges_them(tmp_path):
  model, base = _adapted()
  _, state = _trained_step(model)
  frozen = reference.Reference.create(model)
  assert frozen.adapters_off and frozen.params is None  # no copy of the base
  base_model = models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(0))
  want = update.reference_logprobs(*nnx.split(base_model), IDS, MASK, N)
  np.testing.assert_array_equal(frozen.logprobs(IDS, MASK, N, state=state), want)
  adapted = state.model()
  assert np.abs(np.asarray(adapted(IDS, MASK)) - np.asarray(base)).max() > 1e-3
  # Export: the adapters folded into the kernels, in hub layout, loads as a plain Qwen2.
  models.export_hf(adapted, str(tmp_path))
  exported = models.from_pretrained(str(tmp_path))
  assert not lora.has_adapters(exported)
  np.testing.assert_allclose(exported(IDS, MASK), adapted(IDS, MASK), atol=1e-5)
  # Decoding uses the merged kernels (one fused q/k/v matmul): the same greedy tokens.
  prompts = [[5, 6, 7], [9, 10]]
  greedy = lambda m: sampling.generate(m, prompts, max_new_tokens=6, temperature=0).tokens
  assert greedy(adapted) == greedy(exported)


def test_sampling_in_bfloat16_keeps_the_adapters():
  model, _ = _adapted(targets=("q_proj", "v_proj"))
  _, state = _trained_step(model)
  graphdef = models.graphdef_in(state.model(), "bfloat16")
  cast = nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(jnp.bfloat16), state.model_state()))
  assert lora.has_adapters(cast)
  np.testing.assert_allclose(cast(IDS, MASK), state.model()(IDS, MASK), atol=0.1)
