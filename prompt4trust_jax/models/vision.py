"""The Qwen2-VL and Qwen2.5-VL vision transformers (patch embed, blocks, 2x2 merger).

Images arrive packed: all patches of all images in one `[L, C*tp*p*p]` array (the
order Qwen's image processor emits: 2x2 merge blocks consecutive). Attention stays
inside an image (Qwen2-VL) or inside a window of it (Qwen2.5-VL, except the full-
attention blocks) through segment ids, which is the same as HF's per-segment
attention: the window permutation HF applies only reorders merge blocks, and the
merger and RoPE act per token. Host-side metadata comes from `vision_inputs`.
Axis legend: L patches, W vision width, M merged tokens (L / merge**2), plus
`layers.py`'s.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt4trust_jax.models import layers
from prompt4trust_jax.models import rope


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int
  width: int
  num_heads: int
  mlp_hidden: int
  out_dim: int  # the language model's width
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  in_channels: int = 3
  rope_theta: float = 10_000.0
  # Qwen2.5-VL: RMSNorm + SwiGLU blocks, windowed attention outside these blocks.
  qwen2_5: bool = False
  window_size: int = 0  # in pixels, as in config.json
  fullatt_block_indexes: tuple[int, ...] = ()
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size**2


def _norm(dim, cfg, rngs):
  """Qwen2-VL: LayerNorm with bias; Qwen2.5-VL: RMSNorm."""
  if cfg.qwen2_5:
    return layers.RMSNorm(dim, eps=1e-6, param_dtype=jnp.dtype(cfg.param_dtype))
  return nnx.LayerNorm(dim, epsilon=1e-6, dtype=jnp.dtype(cfg.dtype),
                       param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class VisionAttention(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
    self.qkv = layers.linear(cfg.width, 3 * cfg.width, use_bias=True, **kw)
    self.proj = layers.linear(cfg.width, cfg.width, use_bias=True, **kw)

  def __call__(self, x_LxW, cos_LxH, sin_LxH, mask_LxL):
    L = x_LxW.shape[0]
    qkv_Lx3xNxH = self.qkv(x_LxW).reshape(L, 3, self.num_heads, self.head_dim)
    # HF rotates vision q/k in float32 whatever the compute dtype.
    q, k, v = (qkv_Lx3xNxH[None, :, i] for i in range(3))
    q = rope.apply(q.astype(jnp.float32), cos_LxH[None], sin_LxH[None]).astype(v.dtype)
    k = rope.apply(k.astype(jnp.float32), cos_LxH[None], sin_LxH[None]).astype(v.dtype)
    out_1xLxNxH = jax.nn.dot_product_attention(q, k, v, mask=mask_LxL[None, None],
                                               scale=self.head_dim**-0.5)
    return self.proj(out_1xLxNxH.reshape(L, self.num_heads * self.head_dim))


class QuickGeluMLP(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
              rngs=rngs)
    self.fc1 = layers.linear(cfg.width, cfg.mlp_hidden, **kw)
    self.fc2 = layers.linear(cfg.mlp_hidden, cfg.width, **kw)

  def __call__(self, x):
    h = self.fc1(x)
    return self.fc2(h * jax.nn.sigmoid(1.702 * h))


class VisionBlock(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.norm1 = _norm(cfg.width, cfg, rngs)
    self.norm2 = _norm(cfg.width, cfg, rngs)
    self.attn = VisionAttention(cfg, rngs=rngs)
    if cfg.qwen2_5:
      self.mlp = layers.SwiGLU(cfg.width, cfg.mlp_hidden, use_bias=True, dtype=jnp.dtype(cfg.dtype),
                               param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    else:
      self.mlp = QuickGeluMLP(cfg, rngs=rngs)

  def __call__(self, x_LxW, cos_LxH, sin_LxH, mask_LxL):
    x_LxW = x_LxW + self.attn(self.norm1(x_LxW), cos_LxH, sin_LxH, mask_LxL)
    return x_LxW + self.mlp(self.norm2(x_LxW))


class PatchMerger(nnx.Module):
  """Each 2x2 block of patches -> one token of the language model's width."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
              rngs=rngs)
    self.unit = cfg.merge_size**2
    self.ln_q = _norm(cfg.width, cfg, rngs)
    self.fc1 = layers.linear(cfg.width * self.unit, cfg.width * self.unit, **kw)
    self.fc2 = layers.linear(cfg.width * self.unit, cfg.out_dim, **kw)

  def __call__(self, x_LxW):
    x_MxU = self.ln_q(x_LxW).reshape(x_LxW.shape[0] // self.unit, -1)
    return self.fc2(jax.nn.gelu(self.fc1(x_MxU), approximate=False))


class VisionTransformer(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    # A Conv3d whose stride equals its kernel is a matmul over flattened patches; the
    # kernel keeps the hub's (C, tp, p, p) patch layout so import is a permutation.
    self.patch_embed = nnx.Param(nnx.initializers.normal(0.02)(
        rngs.params(), (cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size,
                        cfg.width), jnp.dtype(cfg.param_dtype)))
    self.blocks = nnx.List([VisionBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.merger = PatchMerger(cfg, rngs=rngs)

  def __call__(self, pixels_LxK, positions_Lx2, image_L, window_L):
    """Merged image tokens `[L / merge**2, out_dim]` for packed patches.

    `positions_Lx2` are each patch's (row, column) in its image; `image_L` and
    `window_L` are segment ids (attention stays inside equal ids; padding uses -1).
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    kernel_KxW = self.patch_embed[...].reshape(cfg.patch_dim, cfg.width)
    x_LxW = jnp.dot(pixels_LxK.astype(dtype), kernel_KxW.astype(dtype))
    inv_freq = rope.inverse_frequencies(cfg.head_dim // 2, cfg.rope_theta)
    angles_Lx2xh = positions_Lx2.astype(jnp.float32)[..., None] * inv_freq
    angles_LxH = jnp.tile(angles_Lx2xh.reshape(positions_Lx2.shape[0], -1), 2)
    cos_LxH, sin_LxH = jnp.cos(angles_LxH), jnp.sin(angles_LxH)
    full_LxL = image_L[:, None] == image_L[None, :]
    window_LxL = window_L[:, None] == window_L[None, :]
    for i, block in enumerate(self.blocks):
      use_window = cfg.qwen2_5 and i not in cfg.fullatt_block_indexes
      x_LxW = block(x_LxW, cos_LxH, sin_LxH, window_LxL if use_window else full_LxL)
    return self.merger(x_LxW)


def vision_inputs(image_grid_thw: np.ndarray, cfg: VisionConfig, length: int | None = None):
  """Host-side metadata for packed patches: `(positions_Lx2, image_L, window_L)`.

  Frames of a video and separate images are separate attention segments, as in HF.
  `length` pads to a bucket (padding gets segment -1).
  """
  m = cfg.merge_size
  window_units = max(cfg.window_size // m // cfg.patch_size, 1)
  positions, images, windows = [], [], []
  segment = window_base = 0
  for t, h, w in np.asarray(image_grid_thw, np.int64).reshape(-1, 3):
    if h % m or w % m:
      raise ValueError(f"image grid {(t, h, w)} is not a multiple of merge size {m}.")
    # Patch order within an image: merge blocks row-major, 2x2 patches inside each.
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = (h // m, m, w // m, m)
    hpos = hh.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    wpos = ww.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    win_h, win_w = hpos // m // window_units, wpos // m // window_units
    n_win_w = -(-(w // m) // window_units)
    for _ in range(t):
      positions.append(np.stack([hpos, wpos], -1))
      images.append(np.full(h * w, segment))
      windows.append(window_base + win_h * n_win_w + win_w)
      segment += 1
      window_base += (-(-(h // m) // window_units)) * n_win_w
  positions_Lx2 = np.concatenate(positions).astype(np.int32)
  image_L = np.concatenate(images).astype(np.int32)
  window_L = np.concatenate(windows).astype(np.int32)
  if length is not None and length > len(image_L):
    pad = length - len(image_L)
    positions_Lx2 = np.concatenate([positions_Lx2, np.zeros((pad, 2), np.int32)])
    image_L = np.concatenate([image_L, np.full(pad, -1, np.int32)])
    window_L = np.concatenate([window_L, np.full(pad, -1, np.int32)])
  return positions_Lx2, image_L, window_L
