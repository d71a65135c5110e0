"""The GRPO update: a toy task learns, the sampler's log-probs match the recompute."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from prompt4trust_jax import models, padding
from prompt4trust_jax.policy import sampling
from prompt4trust_jax.training import grpo, update

TOY = models.Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, tie_word_embeddings=True)
TARGET, G, PROMPTS, NEW = 7, 8, 4, 8


def _rollout(state, prompts, key):
  model = nnx.merge(state.graphdef, state.params)
  out = sampling.generate(model, [p for p in prompts for _ in range(G)], max_new_tokens=NEW,
                          temperature=1.0, rng=key)
  rewards = jnp.asarray((out.tokens_BxN == TARGET).mean(-1), jnp.float32)
  tokens = np.concatenate([np.repeat(np.asarray(prompts), G, axis=0), out.tokens_BxN], axis=1)
  batch = update.Batch(tokens_BxL=jnp.asarray(tokens), attention_mask_BxL=jnp.ones(tokens.shape, jnp.int32),
                       completion_mask_BxN=jnp.ones(out.tokens_BxN.shape, jnp.float32),
                       old_logp_BxN=jnp.asarray(out.logprobs_BxN),
                       advantages_B=grpo.advantages(rewards, G))
  return batch, float(rewards.mean())


def test_toy_reward_rises_and_ratios_start_at_one():
  state = update.TrainState.create(models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(0)),
                                   update.optimizer(learning_rate=1e-2))
  prompts = np.random.default_rng(0).integers(0, 64, (PROMPTS, 4)).tolist()
  config = grpo.LossConfig(beta=0.0)
  rewards = []
  for step in range(25):
    batch, reward = _rollout(state, prompts, jax.random.key(step))
    rewards.append(reward)
    state, metrics = update.train_step(state, batch, config=config, temperature=1.0)
    # mu = 1: the update sees exactly the sampling policy, so every ratio is 1.
    assert abs(float(metrics["ratio/max"]) - 1) < 1e-4 and abs(float(metrics["ratio/min"]) - 1) < 1e-4
  assert int(state.step) == 25
  assert np.mean(rewards[:3]) < 0.1 and np.mean(rewards[-3:]) > 0.5, rewards


def test_micro_batches_give_the_same_update():
  prompts = np.random.default_rng(1).integers(0, 64, (PROMPTS, 4)).tolist()
  make = lambda: update.TrainState.create(models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(0)),
                                          update.optimizer(learning_rate=1e-3))
  batch, _ = _rollout(make(), prompts, jax.random.key(0))
  config = grpo.LossConfig(beta=0.0)
  one, m1 = update.train_step(make(), batch, config=config)
  two, m2 = update.train_step(make(), batch, config=config, micro_batches=2)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m2["loss"], atol=1e-6)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_step_matches_single_device(scan_layers):
  import dataclasses
  from prompt4trust_jax import sharding
  prompts = np.random.default_rng(2).integers(0, 64, (PROMPTS, 4)).tolist()
  # SGD with lr 1 makes a parameter difference a gradient difference. (Adam's first step is
  # ~lr * sign(g), so a gradient of 1e-9 vs -1e-9 would differ by 2 lr whatever the sharding.)
  make = lambda tx, cfg=TOY: update.TrainState.create(
      models.Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)), tx)
  batch, _ = _rollout(make(optax.sgd(1.0)), prompts, jax.random.key(3))
  batch = batch.replace(ref_logp_BxN=batch.old_logp_BxN - 0.05)
  config = grpo.LossConfig(beta=0.04)
  single, single_metrics = make(optax.sgd(1.0)), None
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  # The sharded step also runs each prompt once for its G completions (group_size), and
  # with scan_layers its layers as one scan (prompt cache stacked too); the single-device
  # reference does neither.
  state, step_fn = update.sharded_train_step(
      make(optax.sgd(1.0), dataclasses.replace(TOY, scan_layers=scan_layers)), mesh,
      config=config, micro_batches=2, group_size=G)
  kernel = state.params["model"]["layers"][0]["mlp"]["up_proj"]["kernel"][...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  for _ in range(2):  # twice: the second step sees donated, resharded buffers
    state, metrics = step_fn(state, batch)
    single, single_metrics = update.train_step(single, batch, config=config, micro_batches=2)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  for key in ("loss", "kl", "grad_norm", "entropy"):
    np.testing.assert_allclose(metrics[key], single_metrics[key], rtol=1e-5, atol=1e-6)


def test_fully_sharded_update_splits_its_activations_over_the_batch():
  # 32 completions of 256 tokens, 4 remat'd layers: activations are most of the update's
  # temporaries. At fsdp=8 with the layers scanned, each device holds 1/8 of them (the
  # layer loop's activations constrained to the batch axes). Without the constraint
  # (measured: 3.7x one device's eighth) XLA keeps the width-split layout of the embedding
  # lookup and every device works on every row.
  from prompt4trust_jax import sharding
  cfg = models.Qwen2Config(1024, 128, 512, 4, 4, 2, remat="full", scan_layers=True)
  B, L, N = 32, 256, 128

  def temporaries(devices: int) -> int:
    mesh = sharding.make_mesh(fsdp=devices, devices=jax.devices()[:devices])
    state = jax.eval_shape(lambda: update.TrainState.create(
        models.Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)), update.optimizer(1e-3)))
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         state, update.state_shardings(state, mesh))
    rows = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,
                                                     sharding=sharding.batch_sharding(mesh))
    batch = update.Batch(rows((B, L), jnp.int32), rows((B, L), jnp.int32),
                         rows((B, N), jnp.float32), rows((B, N), jnp.float32),
                         rows((B,), jnp.float32))
    step = update.jit_train_step(state, mesh, config=grpo.LossConfig(beta=0.0))
    return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes

  one, eight = temporaries(1), temporaries(8)
  assert eight <= one / 8 * 1.25, (eight, one)


def test_adam_moments_are_sharded_like_their_parameters():
  from prompt4trust_jax import sharding
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  state = update.TrainState.create(models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(0)),
                                   update.optimizer(1e-3))
  shardings = update.state_shardings(state, mesh)
  adam = shardings.opt_state[1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
  spec = lambda tree: tree["model"]["layers"][0]["mlp"]["down_proj"]["kernel"].get_value().spec
  assert spec(adam.mu) == spec(adam.nu) == spec(shardings.params) == jax.sharding.PartitionSpec(
      "tensor", "fsdp")


def test_non_finite_loss_leaves_the_state_unchanged():
  prompts = np.random.default_rng(4).integers(0, 64, (PROMPTS, 4)).tolist()
  state = update.TrainState.create(models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(0)),
                                   update.optimizer(learning_rate=1e-3))
  before = jax.tree.map(np.asarray, state.params)
  batch, _ = _rollout(state, prompts, jax.random.key(5))
  batch = batch.replace(advantages_B=batch.advantages_B.at[0].set(jnp.nan))
  state, metrics = update.train_step(state, batch, config=grpo.LossConfig(beta=0.0))
  assert float(metrics["skipped"]) == 1.0 and int(state.step) == 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_gradients(policy):
  import dataclasses
  prompts = np.random.default_rng(6).integers(0, 64, (PROMPTS, 4)).tolist()
  make = lambda cfg: update.TrainState.create(models.Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)),
                                              optax.sgd(1.0))
  batch, _ = _rollout(make(TOY), prompts, jax.random.key(7))
  plain, m1 = update.train_step(make(TOY), batch, config=grpo.LossConfig(beta=0.0))
  remat, m2 = update.train_step(make(dataclasses.replace(TOY, remat=policy)), batch,
                                config=grpo.LossConfig(beta=0.0))
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(remat.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-6)
  loss = lambda params: nnx.merge(remat.graphdef, params)(input_ids=jnp.ones((1, 4), jnp.int32)).sum()
  assert str(jax.make_jaxpr(jax.grad(loss))(remat.params)).count("remat") == TOY.num_layers
  # The sampler runs the same remat model inside its decode loop.
  sample = lambda state: sampling.generate(nnx.merge(state.graphdef, state.params), prompts,
                                           max_new_tokens=4, temperature=0).tokens
  assert sample(remat) == sample(plain)
  with pytest.raises(ValueError, match="Unknown remat policy 'some'"):
    dataclasses.replace(TOY, remat="some")


def test_bfloat16_compute_keeps_float32_master_weights():
  import dataclasses
  prompts = np.random.default_rng(8).integers(0, 64, (PROMPTS, 4)).tolist()
  mixed = dataclasses.replace(TOY, dtype="bfloat16", param_dtype="float32")
  state = update.TrainState.create(models.Qwen2ForCausalLM(mixed, rngs=nnx.Rngs(0)),
                                   update.optimizer(learning_rate=1e-3))
  batch, _ = _rollout(state, prompts, jax.random.key(9))
  state, metrics = update.train_step(state, batch, config=grpo.LossConfig(beta=0.0))
  assert float(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state)
             if hasattr(x, "dtype") and x.ndim > 0)


def test_grouped_prompts_give_the_same_logprobs_gradients_and_step():
  # Prompts of different lengths (left padded) and completions that end early (right
  # padded after EOS), as train._rollout builds them; G completions per prompt.
  rng = np.random.default_rng(5)
  P, N, Gs = 6, 5, 3
  prompts = [rng.integers(1, 64, n).tolist() for n in (6, 3, 4, 2)]
  tokens_QxP, mask_QxP = padding.left_pad(prompts, P, len(prompts), 0)
  completions_BxN = rng.integers(1, 64, (len(prompts) * Gs, N))
  lengths_B = rng.integers(1, N + 1, len(prompts) * Gs)
  completion_mask_BxN = (np.arange(N)[None] < lengths_B[:, None]).astype(np.int32)
  tokens = jnp.asarray(np.concatenate([np.repeat(tokens_QxP, Gs, 0), completions_BxN], 1))
  mask = jnp.asarray(np.concatenate([np.repeat(mask_QxP, Gs, 0), completion_mask_BxN], 1))
  model = models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(3))
  graphdef, params = nnx.split(model)

  def logprobs(params, group_size):
    return update.completion_logprobs(nnx.merge(graphdef, params), tokens, mask, N, 0.7,
                                      group_size)

  full, grouped = logprobs(params, 1), logprobs(params, Gs)
  real = completion_mask_BxN > 0
  for a, b in zip(full, grouped):
    np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], atol=2e-5)
  weights = jnp.asarray(rng.normal(size=(len(prompts) * Gs, N)) * completion_mask_BxN,
                        jnp.float32)
  grad = lambda g: jax.grad(lambda p: (logprobs(p, g)[0] * weights).sum())(params)
  for a, b in zip(jax.tree.leaves(grad(1)), jax.tree.leaves(grad(Gs))):
    np.testing.assert_allclose(a, b, atol=2e-5)
  np.testing.assert_allclose(
      update.reference_logprobs(graphdef, params, tokens, mask, N, 0.7, group_size=Gs)[real],
      np.asarray(full[0])[real], atol=2e-5)
  # A whole train step (SGD: Adam's first step is sign(grad), which float noise flips
  # where a gradient is ~0), with micro-batches of whole groups.
  batch = update.Batch(tokens, mask, jnp.asarray(completion_mask_BxN, jnp.float32),
                       full[0], jnp.asarray(rng.normal(size=len(prompts) * Gs), jnp.float32))
  make = lambda: update.TrainState.create(models.Qwen2ForCausalLM(TOY, rngs=nnx.Rngs(3)),
                                          optax.sgd(1.0))
  config = grpo.LossConfig(beta=0.0)
  one, m1 = update.train_step(make(), batch, config=config, temperature=0.7)
  # Logits made for 2 tokens at a time (12 rows: one position; N = 5) change nothing.
  two, m2 = update.train_step(make(), batch, config=config, temperature=0.7, group_size=Gs,
                              logprob_chunk=2)
  np.testing.assert_allclose(m1["loss"], m2["loss"], atol=1e-6)
  np.testing.assert_allclose(m1["entropy"], m2["entropy"], atol=1e-5)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
    np.testing.assert_allclose(a, b, atol=2e-5)
  np.testing.assert_allclose(
      update.reference_logprobs(graphdef, params, tokens, mask, N, 0.7, group_size=Gs,
                                logprob_chunk=2)[real], np.asarray(full[0])[real], atol=2e-5)
  # Micro-batches of whole groups; as many as the batch allows.
  _, m4 = update.train_step(make(), batch, config=config, temperature=0.7, micro_batches=2,
                            group_size=Gs)
  assert np.isfinite(float(m4["loss"])) and float(m4["skipped"]) == 0
  with pytest.raises(ValueError, match="whole groups"):
    update.train_step(make(), batch, config=config, micro_batches=3, group_size=Gs)


def test_micro_batches_stride_over_groups_and_stay_sharded():
  from prompt4trust_jax import sharding
  B, G, m = 16, 2, 2
  rows = jnp.arange(B)
  batch = update.Batch(rows[:, None], rows[:, None], rows[:, None] * 1.0, rows[:, None] * 1.0,
                       rows * 1.0)
  split = update.micro_split(batch, m, G)
  # Slice k holds groups k, k + m, ...: groups (0, 1), (2, 3), ... alternate.
  np.testing.assert_array_equal(split.tokens_BxL[0, :, 0], [0, 1, 4, 5, 8, 9, 12, 13])
  np.testing.assert_array_equal(split.tokens_BxL[1, :, 0], [2, 3, 6, 7, 10, 11, 14, 15])
  # Batch rows split over 8 devices in contiguous blocks (2 rows, one group, each): every
  # slice takes half the devices' groups, and XLA keeps the slices split over the batch
  # axes without moving any row.
  mesh = sharding.make_mesh(data=2, fsdp=4)
  placed = jax.device_put(batch, sharding.batch_sharding(mesh))
  out = jax.jit(lambda b: update.micro_split(b, m, G)).lower(placed).compile()
  spec = out.output_shardings.tokens_BxL.spec
  assert spec[0] is None and spec[1] is not None, spec


def test_batch_from_rollout_lays_out_padded_prompts_then_completions():
  # 2 prompts x 2 copies; prompts as the sampler left padded them, completions right padded.
  out = sampling.GenerateOutput(
      tokens=[[5, 6], [7], [8, 9, 1], [3, 3, 3]], logprobs=[],
      tokens_BxN=np.array([[5, 6, 0], [7, 0, 0], [8, 9, 1], [3, 3, 3]], np.int32),
      logprobs_BxN=np.full((4, 3), -0.5, np.float32), lengths_B=np.array([2, 1, 3, 3]),
      prompt_QxP=np.array([[0, 1, 2], [3, 4, 5]], np.int32),
      prompt_mask_QxP=np.array([[0, 1, 1], [1, 1, 1]], np.int32))
  batch = update.Batch.from_rollout(out, 2, jnp.arange(4.0))
  np.testing.assert_array_equal(batch.tokens_BxL, [[0, 1, 2, 5, 6, 0], [0, 1, 2, 7, 0, 0],
                                                   [3, 4, 5, 8, 9, 1], [3, 4, 5, 3, 3, 3]])
  np.testing.assert_array_equal(batch.attention_mask_BxL, [[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0],
                                                           [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(batch.completion_mask_BxN, [[1, 1, 0], [1, 0, 0], [1, 1, 1],
                                                            [1, 1, 1]])
  assert batch.attention_mask_BxL.dtype == jnp.int32
  np.testing.assert_array_equal(batch.old_logp_BxN, out.logprobs_BxN)
  np.testing.assert_array_equal(batch.advantages_B, [0, 1, 2, 3])
