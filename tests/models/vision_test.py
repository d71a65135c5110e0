"""The vision tower's attention: within each image, memory linear in the number of images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prompt4trust_jax.models import vision

CFG = vision.VisionConfig(depth=2, width=64, num_heads=4, mlp_hidden=128, out_dim=32)


def _temp_bytes(images: int, length: int) -> int:
  graphdef, state = nnx.split(nnx.eval_shape(lambda: vision.VisionTransformer(CFG, rngs=nnx.Rngs(0))))
  sds = jax.ShapeDtypeStruct
  inputs = vision.VisionInputs(sds((images, length, CFG.patch_dim), jnp.float32),
                               sds((images, length, 2), jnp.int32),
                               sds((images, length), jnp.int32), sds((images, length), jnp.int32),
                               sds((images * length // 4,), jnp.int32))
  compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, inputs).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_encoder_memory_is_linear_in_images_not_quadratic_in_patches():
  L = 1024
  one, eight = _temp_bytes(1, L), _temp_bytes(8, L)
  # Scores for one image: heads x L^2 float32; packed with a block-diagonal mask, 8 images
  # would need 64 times that per layer.
  scores_one = CFG.num_heads * L * L * 4
  assert eight < 8 * one, (one, eight)
  assert eight < 8 * scores_one, (eight, scores_one)


def test_segment_attention_equals_masked_attention_over_packed_images():
  rng = np.random.default_rng(0)
  I, L, N, H = 3, 16, 2, 8
  q, k, v = (jnp.asarray(rng.normal(size=(I, L, N, H)), jnp.float32) for _ in range(3))
  lengths = [16, 9, 4]
  segment = np.full((I, L), -1, np.int32)
  for i, n in enumerate(lengths):
    segment[i, :n] = np.arange(n) // 4  # windows of 4 patches
  ours = vision.segment_attention(q, k, v, jnp.asarray(segment), H**-0.5)
  # The textbook form: all real patches in one sequence, attending within (image, window).
  rows = [(i, t) for i, n in enumerate(lengths) for t in range(n)]
  seg = np.array([(i, segment[i, t]) for i, t in rows])
  pick = lambda x: np.stack([np.asarray(x)[i, t] for i, t in rows])
  logits = np.einsum("tnh,snh->nts", pick(q), pick(k)) * H**-0.5
  same = (seg[:, None] == seg[None, :]).all(-1)
  logits = np.where(same[None], logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  want = np.einsum("nts,snh->tnh", probs / probs.sum(-1, keepdims=True), pick(v))
  np.testing.assert_allclose(pick(ours), want, rtol=1e-5, atol=1e-6)


def test_attention_implementation_falls_back_to_xla_on_cpu():
  assert vision.attention_implementation("auto", jnp.bfloat16) == "xla"
  assert vision.attention_implementation("cudnn", jnp.bfloat16) == "cudnn"
  with pytest.raises(ValueError, match="Unknown vision attention 'flash'"):
    vision.attention_implementation("flash", jnp.float32)
