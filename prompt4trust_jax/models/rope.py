"""Rotary position embeddings (RoPE), 1-D and multimodal (3-D, Qwen2-VL's M-RoPE).

Both produce `cos_BxTxH, sin_BxTxH` that the attention applies in the "rotate half"
layout Qwen uses (the two halves of a head, not interleaved pairs). Angles are
computed in float32 whatever the compute dtype: bf16 positions lose integers above 256.
"""

import jax
import jax.numpy as jnp


def inverse_frequencies(head_dim: int, theta: float) -> jax.Array:
  """The H/2 rotation frequencies theta^(-2i/H)."""
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  return 1.0 / (theta**exponents)


def cos_sin(positions_BxT: jax.Array, head_dim: int, theta: float):
  """cos/sin tables for integer positions: each `[B, T, H]`, float32."""
  angles_BxTxh = positions_BxT.astype(jnp.float32)[..., None] * inverse_frequencies(head_dim, theta)
  angles_BxTxH = jnp.concatenate([angles_BxTxh, angles_BxTxh], axis=-1)
  return jnp.cos(angles_BxTxH), jnp.sin(angles_BxTxH)


def mrope_cos_sin(positions_3xBxT: jax.Array, head_dim: int, theta: float,
                  mrope_section: tuple[int, ...]):
  """M-RoPE: frequency band i of a head rotates with the t, h or w position.

  `mrope_section` splits the H/2 frequencies into (t, h, w) chunks; the same split
  is used for both halves of the head.
  """
  if sum(mrope_section) != head_dim // 2:
    raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
  angles_3xBxTxh = positions_3xBxT.astype(jnp.float32)[..., None] * inverse_frequencies(head_dim, theta)
  # Which of t/h/w drives each of the H/2 frequencies.
  axis_of_freq = jnp.repeat(jnp.arange(len(mrope_section)), jnp.array(mrope_section),
                            total_repeat_length=head_dim // 2)
  angles_BxTxh = jnp.take_along_axis(
      jnp.moveaxis(angles_3xBxTxh, 0, -1), axis_of_freq[None, None, :, None], axis=-1)[..., 0]
  angles_BxTxH = jnp.concatenate([angles_BxTxh, angles_BxTxh], axis=-1)
  return jnp.cos(angles_BxTxH), jnp.sin(angles_BxTxH)


def apply(x_BxTxAxH: jax.Array, cos_BxTxH: jax.Array, sin_BxTxH: jax.Array) -> jax.Array:
  """Rotates each head of `x` by its position's angles (rotate-half layout)."""
  dtype = x_BxTxAxH.dtype
  cos = cos_BxTxH[:, :, None, :].astype(dtype)
  sin = sin_BxTxH[:, :, None, :].astype(dtype)
  first, second = jnp.split(x_BxTxAxH, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return x_BxTxAxH * cos + rotated * sin
