"""Transformer building blocks shared by the Qwen2 decoder and the Qwen2-VL family.

Axis letters: the package's (`prompt4trust_jax/__init__.py`).
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from prompt4trust_jax import sharding as sharding_lib
from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models import rope


# An attention score tensor or MLP intermediate of one call above this many bytes is made
# block by block (queries, tokens): a downstream prefill of 64 hints x 608 tokens over a
# 1,120-token image prefix would otherwise hold 3.2 GB of float32 scores per layer. Exact
# either way: each query's softmax sees all its keys, each token's MLP is its own.
BLOCK_BYTES = 256 << 20
_LOOP_FREE = False  # set by `unblocked()`


@contextlib.contextmanager
def unblocked():
  """Traces without loops inside the block: attention and MLPs whole (no blocks), decoder
  layers unrolled (no layer scan). For counting work: XLA's cost analysis counts a loop's
  body once (`experiments.plan_memory`)."""
  global BLOCK_BYTES, _LOOP_FREE
  saved, BLOCK_BYTES, _LOOP_FREE = BLOCK_BYTES, float("inf"), True
  try:
    yield
  finally:
    BLOCK_BYTES, _LOOP_FREE = saved, False


def loop_free() -> bool:
  """Whether tracing is inside `unblocked()`."""
  return _LOOP_FREE


def batch_constraint(x, leading: int = 0, free: bool = False):
  """`x` with its batch axis (after `leading` others, e.g. micro-batches) split over the
  batch axes (`sharding.BATCH_AXES`) of the mesh it is traced under (`jax.set_mesh` /
  `jax.sharding.use_abstract_mesh`); unchanged without one, or when those axes do not
  divide the batch. The other axes are replicated, or with `free` left to XLA (a KV
  cache's heads stay split over `tensor` like the projections that write them).

  Why: the embedding table is split along the model width, so a lookup's output is too, and
  without a constraint XLA may keep every later layer width-split, each device computing
  every row (the fsdp update did 8x the work and held 8x the activations on 8 devices)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  axes = tuple(a for a in sharding_lib.BATCH_AXES if mesh.shape.get(a, 1) > 1)
  if not axes or x.shape[leading] % int(np.prod([mesh.shape[a] for a in axes])):
    return x
  rest = P.UNCONSTRAINED if free else None
  return jax.lax.with_sharding_constraint(
      x, P(*(rest,) * leading, axes, *(rest,) * (x.ndim - leading - 1)))


# Activation checkpointing of a layer: which of its intermediates the backward pass keeps.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the layer: least memory
    # Keep the weight matmuls' outputs, recompute the rest (norms, activations, attention
    # softmax): most of remat's saving at a fraction of its recompute.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str):
  """The checkpoint policy of a `remat` setting ("none": None, nothing recomputed)."""
  if name == "none":
    return None
  if name not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat policy {name!r}; choose 'none' or one of "
                     f"{sorted(REMAT_POLICIES)}.")
  return REMAT_POLICIES[name]


def remat(fn, name: str):
  """`fn(module, *args)` (a layer's `__call__`) under the named remat policy; unchanged
  for "none".

  The module's state goes through `jax.checkpoint` as an explicit argument, so the same
  model also runs inside a sampler's `while_loop` when it was merged outside it (where
  `nnx.remat` would update parameters across trace levels and fail).
  """
  policy = remat_policy(name)
  if policy is None:
    return fn

  def checkpointed(module, *args):
    graphdef, state = nnx.split(module)
    pure = lambda state, *args: fn(nnx.merge(graphdef, state), *args)
    return jax.checkpoint(pure, policy=policy)(state, *args)

  return checkpointed


class Linear(nnx.Linear):
  """`nnx.Linear` that may carry a LoRA adapter (`models.lora`): y = x W + b + s (x A) B.

  Without one (`lora_a` None) it is `nnx.Linear`, same parameters and paths. With one, many
  tokens go through the low-rank path unmerged (no `[in, out]` weight gradient is formed
  in the backward), and `effective_kernel` gives W + s A B for a decode loop, which
  hoists it out of the loop as a loop invariant.
  """
  lora_a = lora_b = None  # nnx.LoRAParam [in, r] and [r, out] once `lora.apply` adds them
  lora_scale = 1.0

  def __call__(self, x):
    y = super().__call__(x)
    if self.lora_a is None:
      return y
    dtype = self.dtype or x.dtype
    low_rank = jnp.dot(x.astype(dtype), self.lora_a[...].astype(dtype))
    return y + jnp.dot(low_rank, self.lora_b[...].astype(dtype)) * self.lora_scale

  def effective_kernel(self) -> jax.Array:
    kernel = self.kernel[...]
    if self.lora_a is None:
      return kernel
    delta = jnp.dot(self.lora_a[...], self.lora_b[...]) * self.lora_scale
    return kernel + delta.astype(kernel.dtype)


def linear(in_features, out_features, *, use_bias, dtype, param_dtype, rngs):
  # HF initialises linear layers with N(0, 0.02); random demo models then give
  # logits of a sensible scale.
  return Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                param_dtype=param_dtype, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def fused_linear(projections, x_MxD: jax.Array) -> jax.Array:
  """`[p(x) for p in projections]` concatenated, computed as one matmul (and bias add)."""
  dtype = projections[0].dtype or x_MxD.dtype
  kernel_DxF = jnp.concatenate([p.effective_kernel() for p in projections], axis=1).astype(dtype)
  out_MxF = jnp.dot(x_MxD.astype(dtype), kernel_DxF)
  if projections[0].bias is not None:
    out_MxF = out_MxF + jnp.concatenate([p.bias[...] for p in projections]).astype(dtype)
  return out_MxF


class RMSNorm(nnx.Module):
  """x / rms(x) * scale, normalised in float32 and cast back (as Qwen does)."""

  def __init__(self, dim: int, *, eps: float, param_dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(x.dtype) * x32.astype(x.dtype)


class SwiGLU(nnx.Module):
  """down(silu(gate(x)) * up(x))."""

  def __init__(self, dim: int, hidden: int, *, use_bias: bool = False, dtype, param_dtype, rngs):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = linear(dim, hidden, **kw)
    self.up_proj = linear(dim, hidden, **kw)
    self.down_proj = linear(hidden, dim, **kw)

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    B, T, D = x_BxTxD.shape
    F = self.gate_proj.out_features

    def mlp(x_BxUxD):
      # 2-D matmuls: XLA:CPU's backward of the [B, T, D] form is ~25% slower.
      x_MxD = x_BxUxD.reshape(-1, D)
      out_MxD = self.down_proj(jax.nn.silu(self.gate_proj(x_MxD)) * self.up_proj(x_MxD))
      return out_MxD.reshape(x_BxUxD.shape)

    itemsize = jnp.dtype(self.gate_proj.dtype or x_BxTxD.dtype).itemsize
    # Each [B, T, F] intermediate over the budget is made for blocks of positions in turn (a
    # prefill of 64 hints x 608 tokens: 0.7 GB each in bfloat16 at F = 8,960). Blocks run
    # along the sequence and keep the batch axis whole, so a batch-sharded input stays
    # sharded (blocks of flattened tokens would mix rows and replicate the MLP's work).
    blocks = -(-B * T * F * itemsize // BLOCK_BYTES)
    if blocks <= 1 or T == 1:
      return mlp(x_BxTxD)
    U = -(-T // min(blocks, T))  # positions per block
    pad = -T % U
    x_XxBxUxD = jnp.moveaxis(
        jnp.pad(x_BxTxD, ((0, 0), (0, pad), (0, 0))).reshape(B, -1, U, D), 1, 0)
    out_XxBxUxD = jax.lax.map(mlp, x_XxBxUxD)
    return jnp.moveaxis(out_XxBxUxD, 0, 1).reshape(B, T + pad, D)[:, :T]


def attend(q_BxTxAxH, k_BxKxHxS, v_BxKxSxH, mask_BxTxS, prefix=None,
           scale: float | None = None) -> jax.Array:
  """Grouped-query softmax attention over T queries, in query blocks when the scores are
  large (`BLOCK_BYTES`); see `_attend`. `scale` multiplies the logits (default H^-1/2)."""
  B, T, A, H = q_BxTxAxH.shape
  S = k_BxKxHxS.shape[-1] + (0 if prefix is None else prefix[2].shape[1])
  blocks = -(-B * A * T * S * 4 // BLOCK_BYTES)
  if blocks <= 1 or T == 1:
    return _attend(q_BxTxAxH, k_BxKxHxS, v_BxKxSxH, mask_BxTxS, prefix, scale)
  U = -(-T // min(blocks, T))  # queries per block
  pad = -T % U
  q_BxTxAxH = jnp.pad(q_BxTxAxH, ((0, 0), (0, pad), (0, 0), (0, 0)))
  mask_BxTxS = jnp.pad(mask_BxTxS, ((0, 0), (0, pad), (0, 0)))
  q_XxBxUxAxH = jnp.moveaxis(q_BxTxAxH.reshape(B, -1, U, A, H), 1, 0)
  mask_XxBxUxS = jnp.moveaxis(mask_BxTxS.reshape(B, -1, U, mask_BxTxS.shape[-1]), 1, 0)
  out_XxBxUxAxH = jax.lax.map(
      lambda qm: _attend(qm[0], k_BxKxHxS, v_BxKxSxH, qm[1], prefix, scale),
      (q_XxBxUxAxH, mask_XxBxUxS))
  return jnp.moveaxis(out_XxBxUxAxH, 0, 1).reshape(B, T + pad, A, H)[:, :T]


def _attend(q_BxTxAxH, k_BxKxHxS, v_BxKxSxH, mask_BxTxS, prefix=None, scale=None) -> jax.Array:
  """Grouped-query softmax attention; logits and softmax in float32 (as HF does).

  Keys come transposed, `[B, K, H, S]`, and values as `[B, K, S, H]`: each kv head's
  logits are then a plain matmul `q[T*R, H] @ k[H, S]` and its output `p[T*R, S] @ v[S, H]`,
  so XLA:CPU never transposes the cache. Keys stored `[B, S, K, H]` cost a copy of
  every layer's keys per decode step (~25% more attention time at batch 64, 304 slots).
  Fully masked rows (padding queries) get a finite uniform softmax, never NaN.

  `prefix = (keys [Q, K, H, P], values [Q, K, P, H], valid [Q, P])`: keys every group of
  G = B / Q consecutive rows also attends to (all before its own), in one softmax. The
  G rows' queries meet each prefix key in one matmul, so the prefix is read once per
  group: ~4x less time than G copies at G = 8, P = 288 on XLA:CPU.
  """
  B, T, A, H = q_BxTxAxH.shape
  K = k_BxKxHxS.shape[1]
  R = A // K
  dtype = q_BxTxAxH.dtype
  scale = H**-0.5 if scale is None else scale
  q_BxKxTxRxH = jnp.transpose(q_BxTxAxH.reshape(B, T, K, R, H), (0, 2, 1, 3, 4))
  logits_BxKxTxRxS = jnp.einsum("bktrh,bkhs->bktrs", q_BxKxTxRxH, k_BxKxHxS.astype(dtype),
                                preferred_element_type=jnp.float32) * scale
  logits_BxKxTxRxS = jnp.where(mask_BxTxS[:, None, :, None], logits_BxKxTxRxS,
                               jnp.finfo(jnp.float32).min)
  if prefix is not None:
    k_QxKxHxP, v_QxKxPxH, valid_QxP = prefix
    Q, P = valid_QxP.shape
    G = B // Q
    q_QxKxGxTxRxH = jnp.swapaxes(q_BxKxTxRxH.reshape(Q, G, K, T, R, H), 1, 2)
    prefix_QxKxGxTxRxP = jnp.einsum("qkgtrh,qkhp->qkgtrp", q_QxKxGxTxRxH, k_QxKxHxP.astype(dtype),
                                    preferred_element_type=jnp.float32) * scale
    prefix_QxKxGxTxRxP = jnp.where(valid_QxP[:, None, None, None, None], prefix_QxKxGxTxRxP,
                                   jnp.finfo(jnp.float32).min)
    logits_BxKxTxRxS = jnp.concatenate(
        [jnp.swapaxes(prefix_QxKxGxTxRxP, 1, 2).reshape(B, K, T, R, P), logits_BxKxTxRxS], axis=-1)
  probs_BxKxTxRxS = jax.nn.softmax(logits_BxKxTxRxS, axis=-1).astype(dtype)
  if prefix is not None:
    probs_QxKxGxTxRxP = jnp.swapaxes(probs_BxKxTxRxS[..., :P].reshape(Q, G, K, T, R, P), 1, 2)
    probs_BxKxTxRxS = probs_BxKxTxRxS[..., P:]
  out_BxKxTxRxH = jnp.einsum("bktrs,bksh->bktrh", probs_BxKxTxRxS, v_BxKxSxH.astype(dtype))
  if prefix is not None:
    out_QxKxGxTxRxH = jnp.einsum("qkgtrp,qkph->qkgtrh", probs_QxKxGxTxRxP, v_QxKxPxH.astype(dtype))
    out_BxKxTxRxH = out_BxKxTxRxH + jnp.swapaxes(out_QxKxGxTxRxH, 1, 2).reshape(B, K, T, R, H)
  return jnp.transpose(out_BxKxTxRxH, (0, 2, 1, 3, 4)).reshape(B, T, A, H)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE, q/k/v bias and an optional KV cache."""

  def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               qkv_bias: bool, dtype, param_dtype, rngs):
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = linear(dim, num_heads * head_dim, use_bias=qkv_bias, **kw)
    self.k_proj = linear(dim, num_kv_heads * head_dim, use_bias=qkv_bias, **kw)
    self.v_proj = linear(dim, num_kv_heads * head_dim, use_bias=qkv_bias, **kw)
    self.o_proj = linear(num_heads * head_dim, dim, use_bias=False, **kw)

  def __call__(self, x_BxTxD, cos_BxTxH, sin_BxTxH, mask_BxTxS,
               cache: kv_cache_lib.LayerCache | None = None, cache_index=0):
    """Attends T new positions to S keys; with a cache, writes them at `cache_index`.

    `mask_BxTxS` is True where query t may attend key s (causality and padding).
    Returns the output and the updated layer cache (None without a cache).
    """
    B, T, D = x_BxTxD.shape
    x_MxD = x_BxTxD.reshape(B * T, D)  # 2-D matmuls, as in SwiGLU
    projections = (self.q_proj, self.k_proj, self.v_proj)
    if T == 1:
      # Decoding: one matmul for q, k and v. The weights are loop invariants, so XLA
      # hoists their concatenation out of a decode loop, and the GEMV-shaped products
      # are bandwidth- and per-op-bound on CPU (one saves ~4% of a `small` decode step).
      q_MxF, k_MxF, v_MxF = jnp.split(fused_linear(projections, x_MxD),
                                      np.cumsum([p.out_features for p in projections[:2]]),
                                      axis=-1)
    else:
      q_MxF, k_MxF, v_MxF = (p(x_MxD) for p in projections)
    q_BxTxAxH = q_MxF.reshape(B, T, self.num_heads, self.head_dim)
    k_BxTxKxH = k_MxF.reshape(B, T, self.num_kv_heads, self.head_dim)
    v_BxTxKxH = v_MxF.reshape(B, T, self.num_kv_heads, self.head_dim)
    q_BxTxAxH = rope.apply(q_BxTxAxH, cos_BxTxH, sin_BxTxH)
    k_BxTxKxH = rope.apply(k_BxTxKxH, cos_BxTxH, sin_BxTxH)
    if cache is not None and cache.k is not None:
      cache = cache.write(k_BxTxKxH, v_BxTxKxH, cache_index)
      k_BxKxHxS, v_BxKxSxH, prefix = cache.k, cache.v, cache.prefix
    else:  # no cache, or only a shared prefix (`kv_cache.prefix_only`)
      k_BxKxHxS = jnp.transpose(k_BxTxKxH, (0, 2, 3, 1))
      v_BxKxSxH = jnp.swapaxes(v_BxTxKxH, 1, 2)
      prefix = None if cache is None else cache.prefix
    out_BxTxAxH = attend(q_BxTxAxH, k_BxKxHxS, v_BxKxSxH, mask_BxTxS, prefix)
    out_BxTxD = self.o_proj(out_BxTxAxH.reshape(B * T, self.num_heads * self.head_dim))
    return out_BxTxD.reshape(B, T, D), cache
