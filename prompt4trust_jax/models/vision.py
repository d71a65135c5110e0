"""The Qwen2-VL and Qwen2.5-VL vision transformers (patch embed, blocks, 2x2 merger).

Images arrive one per row, `[I, J, E]` (E = channels x tp x p x p values per patch), each
padded to a common J (in the order
Qwen's image processor emits: 2x2 merge blocks consecutive). Attention stays inside its row,
so memory is linear in the number of images and quadratic only within one: ~1,000-token
images packed into one sequence with a block-diagonal mask would need an `[8 x 4096]^2`
score matrix per head for 8 images (208 GB for the 2B tower), one image at a time ~1 GB.
Within a row, segment ids say what attends to what: the image's patches (Qwen2-VL, and
Qwen2.5-VL's full-attention blocks) or a window of them (Qwen2.5-VL's other blocks), the
same as HF's per-segment attention (the window permutation HF applies only reorders merge
blocks; the merger and RoPE act per token). `vision_inputs` lays images out on the host.
Axis letters: the package's (`prompt4trust_jax/__init__.py`); I counts frames.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from prompt4trust_jax import padding, sharding
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
  # Attention kernel (`segment_attention`): "auto" picks the platform's fused one.
  attention: str = "auto"

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size**2


# Where the tower's weights live on a mesh (as `qwen2.PARTITION_RULES`, which also place the
# Qwen2.5-VL blocks' SwiGLU MLP): fused qkv and fc1 column-parallel, the attention output and
# fc2 row-parallel; the patch embedding (1.5M parameters) replicated.
PARTITION_RULES = (
    (r"(attn\.qkv|mlp\.fc1|merger\.fc1)\.kernel$", P("fsdp", "tensor")),
    (r"(attn\.qkv|mlp\.fc1|merger\.fc1)\.bias$", P("tensor")),
    (r"(attn\.proj|mlp\.fc2|merger\.fc2)\.kernel$", P("tensor", "fsdp")),
    (r"patch_embed$", P()),
)


def _norm(dim, cfg, rngs):
  """Qwen2-VL: LayerNorm with bias; Qwen2.5-VL: RMSNorm."""
  if cfg.qwen2_5:
    return layers.RMSNorm(dim, eps=1e-6, param_dtype=jnp.dtype(cfg.param_dtype))
  return nnx.LayerNorm(dim, epsilon=1e-6, dtype=jnp.dtype(cfg.dtype),
                       param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas_tpu")


def attention_implementation(name: str, dtype) -> str:
  """The kernel "auto" means here: cuDNN's fused attention on GPU (half precision only),
  the Pallas flash kernel on TPU, XLA elsewhere (the CPU fallback)."""
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"Unknown vision attention {name!r}; choose from "
                     f"{ATTENTION_IMPLEMENTATIONS}.")
  if name != "auto":
    return name
  backend = jax.default_backend()
  if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "pallas_tpu" if backend == "tpu" else "xla"


def segment_attention(q_IxJxAxH, k_IxJxAxH, v_IxJxAxH, segment_IxJ, scale: float,
                      implementation: str = "xla"):
  """Softmax attention within each row where query and key segment ids are equal.

  "xla" runs one image at a time (`lax.map`) through the decoder's `layers.attend`, so its
  scores exist for one image, in query blocks when large (`layers.BLOCK_BYTES`); the fused
  kernels never materialise them. Padding (id -1) attends only padding.
  """
  if implementation == "pallas_tpu":
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
    to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # the kernel's [I, A, J, H]
    out = tpu_flash.flash_attention(
        to_heads(q_IxJxAxH), to_heads(k_IxJxAxH), to_heads(v_IxJxAxH),
        segment_ids=tpu_flash.SegmentIds(segment_IxJ, segment_IxJ), sm_scale=scale)
    return to_heads(out)
  if implementation == "cudnn":
    mask_Ix1xJxJ = (segment_IxJ[:, :, None] == segment_IxJ[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q_IxJxAxH, k_IxJxAxH, v_IxJxAxH, mask=mask_Ix1xJxJ,
                                        scale=scale, implementation="cudnn")

  def one(args):
    q_JxAxH, k_JxAxH, v_JxAxH, segment_J = args
    mask_1xJxJ = (segment_J[:, None] == segment_J[None, :])[None]
    # One kv head per query head, in the layouts `attend` takes: keys [1, A, H, J],
    # values [1, A, J, H].
    return layers.attend(q_JxAxH[None], jnp.transpose(k_JxAxH, (1, 2, 0))[None],
                         jnp.swapaxes(v_JxAxH, 0, 1)[None], mask_1xJxJ, scale=scale)[0]

  # Under a mesh whose batch axes split the images (D ways), each loop step takes one image
  # per device, `[I / D, D, ...]` with D split: a loop over the split axis itself would
  # gather every image onto every device.
  I = segment_IxJ.shape[0]
  D = sharding.batch_devices()
  D = D if I % D == 0 else 1
  def per_step(x):
    return layers.batch_constraint(jnp.swapaxes(x.reshape(D, I // D, *x.shape[1:]), 0, 1),
                                   leading=1, free=True)
  out = jax.lax.map(jax.vmap(one), tuple(map(per_step, (q_IxJxAxH, k_IxJxAxH, v_IxJxAxH,
                                                        segment_IxJ))))
  return jnp.swapaxes(out, 0, 1).reshape(q_IxJxAxH.shape)


class VisionAttention(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
    self.implementation = attention_implementation(cfg.attention, cfg.dtype)
    self.qkv = layers.linear(cfg.width, 3 * cfg.width, use_bias=True, **kw)
    self.proj = layers.linear(cfg.width, cfg.width, use_bias=True, **kw)

  def __call__(self, x_IxJxW, cos_IxJxH, sin_IxJxH, segment_IxJ):
    I, J, W = x_IxJxW.shape
    qkv = self.qkv(x_IxJxW.reshape(I * J, W)).reshape(I, J, 3, self.num_heads, self.head_dim)
    # HF rotates vision q/k in float32 whatever the compute dtype.
    q, k, v = (qkv[:, :, i] for i in range(3))
    q = rope.apply(q.astype(jnp.float32), cos_IxJxH, sin_IxJxH).astype(v.dtype)
    k = rope.apply(k.astype(jnp.float32), cos_IxJxH, sin_IxJxH).astype(v.dtype)
    out_IxJxAxH = segment_attention(q, k, v, segment_IxJ, self.head_dim**-0.5,
                                    self.implementation)
    return self.proj(out_IxJxAxH.reshape(I * J, W)).reshape(I, J, W)


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

  def __call__(self, x_IxJxW, cos_IxJxH, sin_IxJxH, segment_IxJ):
    x_IxJxW = x_IxJxW + self.attn(self.norm1(x_IxJxW), cos_IxJxH, sin_IxJxH, segment_IxJ)
    return x_IxJxW + self.mlp(self.norm2(x_IxJxW))


class PatchMerger(nnx.Module):
  """Each 2x2 block of patches -> one token of the language model's width."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
              rngs=rngs)
    self.unit = cfg.merge_size**2
    self.ln_q = _norm(cfg.width, cfg, rngs)
    self.fc1 = layers.linear(cfg.width * self.unit, cfg.width * self.unit, **kw)
    self.fc2 = layers.linear(cfg.width * self.unit, cfg.out_dim, **kw)

  def __call__(self, x_IxJxW):
    I, J, W = x_IxJxW.shape
    # M merged tokens, each its `unit` patches' features side by side.
    merged = self.ln_q(x_IxJxW).reshape(I * J // self.unit, W * self.unit)
    return self.fc2(jax.nn.gelu(self.fc1(merged), approximate=False))


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

  def __call__(self, inputs: "VisionInputs") -> jax.Array:
    """Merged image tokens `[M, out_dim]` in order, M = `len(inputs.index_M)`; without
    `index_M`, row aligned: `[I, K, out_dim]`, row i's K = J / merge_size**2 tokens (the
    tokens of row i's image first, then padding)."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    kernel_ExW = self.patch_embed[...].reshape(cfg.patch_dim, cfg.width)
    # Under a mesh each data-parallel device encodes its own images (one per row).
    pixels_IxJxE = layers.batch_constraint(inputs.pixels_IxJxE)
    x_IxJxW = jnp.einsum("ije,ew->ijw", pixels_IxJxE.astype(dtype), kernel_ExW.astype(dtype))
    inv_freq = rope.inverse_frequencies(cfg.head_dim // 2, cfg.rope_theta)
    angles_IxJx2xh = inputs.positions_IxJx2.astype(jnp.float32)[..., None] * inv_freq
    angles_IxJxH = jnp.tile(angles_IxJx2xh.reshape(*angles_IxJx2xh.shape[:2], -1), 2)
    cos_IxJxH, sin_IxJxH = jnp.cos(angles_IxJxH), jnp.sin(angles_IxJxH)
    for i, block in enumerate(self.blocks):
      use_window = cfg.qwen2_5 and i not in cfg.fullatt_block_indexes
      x_IxJxW = layers.batch_constraint(block(x_IxJxW, cos_IxJxH, sin_IxJxH,
                                              inputs.window_IxJ if use_window
                                              else inputs.image_IxJ))
    merged_MxD = self.merger(x_IxJxW)  # M = I x K: K merged tokens per row
    if inputs.index_M is None:  # row aligned: row i's tokens, padding included
      return layers.batch_constraint(merged_MxD.reshape(x_IxJxW.shape[0], -1,
                                                        merged_MxD.shape[-1]))
    return jnp.take(merged_MxD, inputs.index_M, axis=0)


class VisionInputs(NamedTuple):
  """Images laid out one per row for `VisionTransformer` (a pytree; see `vision_inputs`)."""
  pixels_IxJxE: np.ndarray
  positions_IxJx2: np.ndarray  # each patch's (row, column) in its image
  image_IxJ: np.ndarray  # 0 for the image's patches, -1 for padding
  window_IxJ: np.ndarray  # the patch's window id (Qwen2.5-VL), -1 for padding
  # Where each image's merged tokens are, images in order, then padding; None: row aligned.
  index_M: np.ndarray | None


def vision_inputs(pixel_values, image_grid_thw, cfg: VisionConfig,
                  images: int | None = None, length: int | None = None, rows=None):
  """`(VisionInputs, merged token count)` for the processor's packed `pixel_values`.

  Each frame of each image gets its own row (frames and images are separate attention
  segments, as in HF), padded to `length` patches (default: the largest image's, bucketed
  as prompts are, at least 64); `images` rows in all (default: the next power of two), so
  images of similar sizes share one compiled encoder. `index_M` is padded to a power of two.
  `rows` (one per frame) puts frame f in row `rows[f]` and leaves `index_M` None: the
  encoder's tokens then stay row aligned with the prompts that show them (one image each).
  """
  m = cfg.merge_size
  window_units = max(cfg.window_size // m // cfg.patch_size, 1)
  frames = []  # (first patch, h, w) per frame
  start = 0
  for t, h, w in np.asarray(image_grid_thw, np.int64).reshape(-1, 3):
    if h % m or w % m:
      raise ValueError(f"image grid {(t, h, w)} is not a multiple of merge size {m}.")
    for _ in range(t):
      frames.append((start, h, w))
      start += h * w
  pixels = np.asarray(pixel_values, np.float32)
  if pixels.shape[0] != start:
    raise ValueError(f"pixel_values has {pixels.shape[0]} patches but image_grid_thw describes "
                     f"{start}.")
  longest = int(max(h * w for _, h, w in frames))
  J = max(64, padding.bucket_length(longest)) if length is None else length
  I = padding.bucket_rows(len(frames)) if images is None else images
  if J < longest or I < len(frames) or J % (m * m):
    raise ValueError(f"{len(frames)} images of up to {longest} patches "
                     f"do not fit {I} rows of {J} (a multiple of {m * m}).")
  pixels_IxJxE = np.zeros((I, J, pixels.shape[1]), np.float32)
  positions_IxJx2 = np.zeros((I, J, 2), np.int32)
  image_IxJ = np.full((I, J), -1, np.int32)
  window_IxJ = np.full((I, J), -1, np.int32)
  index = []
  placed = range(len(frames)) if rows is None else np.asarray(rows)
  if len(placed) != len(frames) or (len(placed) and not 0 <= min(placed) <= max(placed) < I):
    raise ValueError(f"rows {list(placed)} must place each of the {len(frames)} images in one "
                     f"of {I} rows.")
  for row, (first, h, w) in zip(placed, frames):
    n = h * w
    # Patch order within an image: merge blocks row-major, 2x2 patches inside each.
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = (h // m, m, w // m, m)
    hpos = hh.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    wpos = ww.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    n_win_w = -(-(w // m) // window_units)
    pixels_IxJxE[row, :n] = pixels[first:first + n]
    positions_IxJx2[row, :n] = np.stack([hpos, wpos], -1)
    image_IxJ[row, :n] = 0
    window_IxJ[row, :n] = (hpos // m // window_units) * n_win_w + wpos // m // window_units
    index.append(row * (J // (m * m)) + np.arange(n // (m * m)))
  index_M = np.concatenate(index).astype(np.int32)
  merged = len(index_M)
  if rows is not None:
    index_M = None
  else:
    index_M = np.concatenate([index_M, np.zeros(padding.bucket_batch(merged) - merged, np.int32)])
  return VisionInputs(pixels_IxJxE, positions_IxJx2, image_IxJ, window_IxJ, index_M), merged
