"""Qwen2 logits and greedy generation against transformers' PyTorch Qwen2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prompt4trust_jax import models
from prompt4trust_jax.policy import sampling
from tests import hf_oracle

CONFIGS = {
    "tied_gqa": dict(tie_word_embeddings=True),
    "untied_mqa": dict(tie_word_embeddings=False, num_key_value_heads=1),
    "mha_theta1e6": dict(num_attention_heads=4, num_key_value_heads=4, rope_theta=1e6),
    # q/k/v width (heads x head_dim = 96) differs from the model width (64).
    "wide_heads": dict(num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                       num_hidden_layers=3),
}


def _relative_error(ours, ref):
  return np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(tmp_path, name):
  path = hf_oracle.write_qwen2(str(tmp_path), seed=1, **CONFIGS[name])
  ref_model = hf_oracle.load(path)
  model = models.from_pretrained(path)
  ids = np.random.default_rng(0).integers(0, 512, size=(2, 11))
  ref = hf_oracle.logits(ref_model, ids)
  assert _relative_error(model(input_ids=ids), ref) < 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_unpadded_rows(qwen2_dir, side):
  ref_model = hf_oracle.load(qwen2_dir)
  model = models.from_pretrained(qwen2_dir)
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, 512, n).tolist() for n in (5, 9)]
  T = 9
  ids = np.zeros((2, T), np.int64)
  mask = np.zeros((2, T), np.int64)
  for row, p in enumerate(prompts):
    cols = slice(T - len(p), T) if side == "left" else slice(0, len(p))
    ids[row, cols], mask[row, cols] = p, 1
  logits = np.asarray(model(input_ids=ids, attention_mask=mask))
  for row, p in enumerate(prompts):
    ref = hf_oracle.logits(ref_model, [p])[0]
    ours = logits[row][mask[row].astype(bool)]
    assert _relative_error(ours, ref) < 1e-4


def test_greedy_generation_matches_transformers(qwen2_dir):
  ref_model = hf_oracle.load(qwen2_dir)
  model = models.from_pretrained(qwen2_dir)
  rng = np.random.default_rng(2)
  prompts = [rng.integers(0, 512, n).tolist() for n in (3, 17, 8)]
  out = sampling.generate(model, prompts, max_new_tokens=40, temperature=0)
  for prompt, tokens in zip(prompts, out.tokens):
    assert tokens == hf_oracle.greedy(ref_model, prompt, 40)


def test_scanned_layers_match_the_unrolled_stack(qwen2_dir):
  # scan_layers runs the layers as one scan over their stacked weights in calls of several
  # tokens (forwards, prefills; decode steps stay unrolled): same logits, gradients and
  # greedy tokens as the unrolled stack.
  plain = models.from_pretrained(qwen2_dir)
  scanned = models.from_pretrained(qwen2_dir, scan_layers=True)
  ids = np.random.default_rng(3).integers(0, 512, size=(2, 11))
  np.testing.assert_allclose(scanned(input_ids=ids), plain(input_ids=ids), rtol=1e-5, atol=1e-5)
  jaxpr = str(jax.make_jaxpr(lambda x: scanned(input_ids=x))(ids))
  assert jaxpr.count("scan[") == 1 and f"length={plain.config.num_layers}" in jaxpr

  def grads(model):
    graphdef, params = nnx.split(model)
    loss = lambda p: nnx.merge(graphdef, p)(input_ids=ids).mean()
    return jax.tree.leaves(jax.grad(loss)(params))

  for a, b in zip(grads(scanned), grads(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  prompts = [[5, 9, 2], list(range(40, 57))]
  assert (sampling.generate(scanned, prompts, max_new_tokens=12, temperature=0).tokens ==
          sampling.generate(plain, prompts, max_new_tokens=12, temperature=0).tokens)


def test_greedy_generation_stops_at_eos_like_transformers(qwen2_dir):
  ref_model = hf_oracle.load(qwen2_dir)
  model = models.from_pretrained(qwen2_dir)
  prompts = [[7, 8, 9, 10], [100, 200]]
  free_run = hf_oracle.greedy(ref_model, prompts[0], 12)
  eos = free_run[5]
  out = sampling.generate(model, prompts, max_new_tokens=12, temperature=0, eos_token_ids=[eos])
  for prompt, tokens in zip(prompts, out.tokens):
    assert tokens == hf_oracle.greedy(ref_model, prompt, 12, eos_token_id=eos)
  assert out.tokens[0][-1] == eos and len(out.tokens[0]) <= 6


def test_bfloat16_compute_tracks_float32(qwen2_dir):
  f32 = models.from_pretrained(qwen2_dir)
  bf16 = models.from_pretrained(qwen2_dir, dtype="bfloat16")
  mixed = models.from_pretrained(qwen2_dir, dtype="bfloat16", param_dtype="float32")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(models.flat_params(bf16)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(models.flat_params(mixed)))
  ids = np.random.default_rng(3).integers(0, 512, size=(2, 16))
  ref = np.asarray(f32(input_ids=ids))
  for model in (bf16, mixed):
    logits = np.asarray(model(input_ids=ids))
    assert logits.dtype == np.float32
    # bf16 keeps 8 mantissa bits: a few percent of the logit scale, far from f32's 1e-6.
    assert 1e-5 < _relative_error(logits, ref) < 0.05


def test_presets_have_released_shapes():
  cfg = models.qwen2p5_1p5b_instruct()
  assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
      1536, 28, 12, 2, 128)
  assert cfg.tie_word_embeddings and not models.qwen2p5_7b_instruct().tie_word_embeddings
  n_params = sum(np.prod(s.shape) for s in jax.tree.leaves(jax.eval_shape(
      lambda: models.flat_params(models.Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0))))))
  assert 1.50e9 < n_params < 1.56e9  # Qwen2.5-1.5B has 1.54B parameters


def test_query_blocked_attention_is_exact(monkeypatch):
  """Scores over the budget are made block by block (a padded last block too)."""
  from prompt4trust_jax.models import layers
  rng = np.random.default_rng(7)
  B, T, K, G, H, S, Q, P = 4, 7, 2, 3, 8, 9, 2, 5
  q = jnp.asarray(rng.normal(size=(B, T, K * G, H)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, K, H, S)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(B, K, S, H)), jnp.float32)
  mask = jnp.asarray(rng.random((B, T, S)) < 0.7)
  prefix = (jnp.asarray(rng.normal(size=(Q, K, H, P)), jnp.float32),
            jnp.asarray(rng.normal(size=(Q, K, P, H)), jnp.float32),
            jnp.asarray(rng.random((Q, P)) < 0.8))
  whole = layers.attend(q, k, v, mask, prefix)
  monkeypatch.setattr(layers, "BLOCK_BYTES", B * K * G * 3 * (S + P) * 4)  # 3 queries a block
  blocked = layers.attend(q, k, v, mask, prefix)
  np.testing.assert_allclose(blocked, whole, rtol=1e-6, atol=1e-6)
  assert "scan" in str(jax.make_jaxpr(lambda q: layers.attend(q, k, v, mask, prefix))(q))


def test_position_blocked_mlp_is_exact_and_keeps_the_batch_sharding(monkeypatch):
  from jax.sharding import NamedSharding, PartitionSpec as P
  from prompt4trust_jax.models import layers
  mlp = layers.SwiGLU(16, 24, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(8).normal(size=(8, 5, 16)), jnp.float32)
  whole = mlp(x)
  monkeypatch.setattr(layers, "BLOCK_BYTES", 8 * 2 * 24 * 4)  # 2 of the 5 positions a block
  np.testing.assert_allclose(mlp(x), whole, rtol=1e-6, atol=1e-6)
  assert "scan" in str(jax.make_jaxpr(mlp)(x))
  # Rows split over 8 devices: each device's MLP computes its own row only (1/8 of the
  # work), blocks and all; blocks of flattened tokens would mix rows and replicate it.
  mesh = jax.make_mesh((8,), ("data",))
  rows = NamedSharding(mesh, P("data"))
  graphdef, params = nnx.split(mlp)
  forward = lambda p, x: nnx.merge(graphdef, p)(x)
  run = jax.jit(forward, in_shardings=(None, rows), out_shardings=rows)
  flops = lambda fn: fn.lower(params, x).compile().cost_analysis()["flops"]
  sharded, single = flops(run), flops(jax.jit(forward))  # per device; one device
  assert sharded <= single / 8 * 1.15, (sharded, single)
  np.testing.assert_allclose(run(params, jax.device_put(x, rows)), whole, rtol=1e-6, atol=1e-6)
