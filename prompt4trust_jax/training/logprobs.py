"""Per-token log-probabilities and entropies of targets, with hand-written VJPs.

Two entry points with the same values:
  * `token_logprobs(logits_BxNxV, ...)` for logits already in hand (tests, small vocabularies);
  * `from_hidden(h_BxNxD, head_DxV, ...)` for the GRPO update and the reference forward:
    the logits are made chunk by chunk of U sequence positions from the final hidden
    states and never exist whole. At the paper's size a `[B, N, V]` float32 copy is
    64 x 512 x 151,936 x 4 B = 19.9 GB; here the forward keeps `[B, N]` statistics and
    the backward recomputes each chunk's logits, so the live logits are `[B, U, V]`.

`logits[:, t]` is the distribution that produced `targets[:, t]`, the quantity the sampler
records for what it emitted. Autodiff of log_softmax would write the full log-probs, their
exponential and a scattered one-hot (~4 passes over the largest tensor of the update); the
VJPs here make one exp pass forward and one fused pass backward.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def token_logprobs(logits_BxNxV: jax.Array, targets_BxN: jax.Array, temperature: float = 1.0):
  """Log-probability of each target and the entropy `[B, N]` under logits / temperature.

  Differentiable in the logits (both outputs). Callers that can should fold 1 / temperature
  into what produces the logits (as `update.completion_logprobs` scales the hidden state).
  """
  return _dense(logits_BxNxV, targets_BxN, float(temperature))


def from_hidden(h_BxNxD: jax.Array, head_DxV: jax.Array, targets_BxN: jax.Array,
                chunk: int | None = None):
  """`token_logprobs(h @ head, targets)` without materialising `[B, N, V]`.

  `h` and `head` come in the compute dtype; logits are accumulated in float32 (as
  `DecoderLM.logits` does). `chunk` U is the number of sequence positions whose logits
  exist at once (None or >= N: all). Chunks run along the sequence, so every chunk keeps
  the batch axis, and with it the batch sharding of a data-parallel update.
  Differentiable in `h` and `head`.
  """
  B, N, D = h_BxNxD.shape
  U = N if chunk is None or chunk >= N else int(chunk)
  if U < 1:
    raise ValueError(f"logprob chunk must be a positive number of positions, got {chunk}.")
  pad = -N % U
  padded_h_BxNxD = jnp.pad(h_BxNxD, ((0, 0), (0, pad), (0, 0)))
  padded_targets_BxN = jnp.pad(targets_BxN, ((0, 0), (0, pad)))
  X = (N + pad) // U  # number of chunks
  h_XxBxUxD = jnp.swapaxes(padded_h_BxNxD.reshape(B, X, U, D), 0, 1)
  targets_XxBxU = jnp.swapaxes(padded_targets_BxN.reshape(B, X, U), 0, 1)
  logp_XxBxU, entropy_XxBxU = _chunked(h_XxBxUxD, head_DxV, targets_XxBxU)
  unchunk = lambda x_XxBxU: jnp.swapaxes(x_XxBxU, 0, 1).reshape(B, X * U)[:, :N]
  return unchunk(logp_XxBxU), unchunk(entropy_XxBxU)


def _stats(z_BxNxV, targets_BxN):
  """(log p(target), entropy, log-sum-exp) of float32 logits."""
  max_BxN = jax.lax.stop_gradient(z_BxNxV.max(-1))
  # Both sums share exp(z - max), one pass (written unlike the backward's exp(z - lse),
  # which XLA would otherwise merge with it into a materialised [B, N, V] array).
  e_BxNxV = jnp.exp(z_BxNxV - max_BxN[..., None])
  sum_BxN, weighted_BxN = e_BxNxV.sum(-1), (e_BxNxV * z_BxNxV).sum(-1)
  lse_BxN = max_BxN + jnp.log(sum_BxN)
  target_BxN = jnp.take_along_axis(z_BxNxV, targets_BxN[..., None], axis=-1)[..., 0]
  # entropy = lse - E_p[z]
  return target_BxN - lse_BxN, lse_BxN - weighted_BxN / sum_BxN, lse_BxN


def _dz(z_BxNxV, targets_BxN, lse_BxN, entropy_BxN, g_logp_BxN, g_entropy_BxN):
  """d(g_logp . logp + g_entropy . entropy) / dz, float32."""
  p_BxNxV = jnp.exp(z_BxNxV - lse_BxN[..., None])
  onehot_BxNxV = jnp.arange(z_BxNxV.shape[-1]) == targets_BxN[..., None]
  mean_z_BxN = lse_BxN - entropy_BxN
  # d logp / dz = onehot - p;  d entropy / dz = p * (E_p[z] - z).
  return (g_logp_BxN[..., None] * (onehot_BxNxV - p_BxNxV)
          + g_entropy_BxN[..., None] * p_BxNxV * (mean_z_BxN[..., None] - z_BxNxV))


def _float0(x):
  return np.zeros(x.shape, jax.dtypes.float0)


# -- Dense: logits in hand. --------------------------------------------------------------

def _tempered(logits_BxNxV, temperature):
  z_BxNxV = logits_BxNxV.astype(jnp.float32)
  return z_BxNxV if temperature == 1.0 else z_BxNxV / temperature


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(logits_BxNxV, targets_BxN, temperature):
  logp_BxN, entropy_BxN, _ = _stats(_tempered(logits_BxNxV, temperature), targets_BxN)
  return logp_BxN, entropy_BxN


def _dense_fwd(logits_BxNxV, targets_BxN, temperature):
  logp_BxN, entropy_BxN, lse_BxN = _stats(_tempered(logits_BxNxV, temperature), targets_BxN)
  return (logp_BxN, entropy_BxN), (logits_BxNxV, targets_BxN, lse_BxN, entropy_BxN)


def _dense_bwd(temperature, residuals, cotangents):
  logits_BxNxV, targets_BxN, lse_BxN, entropy_BxN = residuals
  dz_BxNxV = _dz(_tempered(logits_BxNxV, temperature), targets_BxN, lse_BxN, entropy_BxN,
                 *cotangents)
  if temperature != 1.0:
    dz_BxNxV = dz_BxNxV / temperature  # d z / d logits
  return dz_BxNxV.astype(logits_BxNxV.dtype), _float0(targets_BxN)


_dense.defvjp(_dense_fwd, _dense_bwd)


# -- Chunked: logits made from hidden states, X chunks of U positions. --------------------

def _chunk_logits(h_BxUxD, head_DxV):
  return jnp.einsum("bcd,dv->bcv", h_BxUxD, head_DxV, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _chunked(h_XxBxUxD, head_DxV, targets_XxBxU):
  return _chunked_stats(h_XxBxUxD, head_DxV, targets_XxBxU)[:2]


def _chunked_stats(h_XxBxUxD, head_DxV, targets_XxBxU):
  def one(args):
    h_BxUxD, targets_BxU = args
    return _stats(_chunk_logits(h_BxUxD, head_DxV), targets_BxU)

  return jax.lax.map(one, (h_XxBxUxD, targets_XxBxU))


def _chunked_fwd(h, head, targets):
  # Symbolic zeros (`defvjp` below): each argument comes with whether it is differentiated.
  # A frozen head (LoRA, or a model whose head is not trained) then costs the backward no
  # [D, V] float32 accumulator and no third of its matmuls.
  h_XxBxUxD, head_DxV, targets_XxBxU = h.value, head.value, targets.value
  logp_XxBxU, entropy_XxBxU, lse_XxBxU = _chunked_stats(h_XxBxUxD, head_DxV, targets_XxBxU)
  residuals = (h_XxBxUxD, head_DxV, targets_XxBxU, lse_XxBxU, entropy_XxBxU)
  # Residuals hold arrays only, so whether the head is trained travels as pytree
  # structure: () when it is, None when not.
  return (logp_XxBxU, entropy_XxBxU), (residuals, () if head.perturbed else None)


def _dense_cotangent(g, like):
  """A cotangent that may be a symbolic zero (its output unused), as an array."""
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros(like.shape, like.dtype)
  return g


def _chunked_bwd(residuals_and_head, cotangents):
  (h_XxBxUxD, head_DxV, targets_XxBxU, lse_XxBxU, entropy_XxBxU), train_head = residuals_and_head
  train_head = train_head is not None
  g_logp_XxBxU, g_entropy_XxBxU = (_dense_cotangent(g, lse_XxBxU) for g in cotangents)
  dtype = h_XxBxUxD.dtype

  def one(dhead_DxV, args):
    h_BxUxD, targets_BxU, lse_BxU, entropy_BxU, g_logp_BxU, g_entropy_BxU = args
    dz_BxUxV = _dz(_chunk_logits(h_BxUxD, head_DxV), targets_BxU, lse_BxU, entropy_BxU,
                   g_logp_BxU, g_entropy_BxU).astype(dtype)
    dh_BxUxD = jnp.einsum("bcv,dv->bcd", dz_BxUxV, head_DxV, preferred_element_type=jnp.float32)
    if train_head:
      dhead_DxV = dhead_DxV + jnp.einsum("bcd,bcv->dv", h_BxUxD, dz_BxUxV,
                                         preferred_element_type=jnp.float32)
    return dhead_DxV, dh_BxUxD.astype(dtype)

  dhead_DxV = jnp.zeros(head_DxV.shape if train_head else (), jnp.float32)
  dhead_DxV, dh_XxBxUxD = jax.lax.scan(
      one, dhead_DxV,
      (h_XxBxUxD, targets_XxBxU, lse_XxBxU, entropy_XxBxU, g_logp_XxBxU, g_entropy_XxBxU))
  dhead_DxV = dhead_DxV.astype(head_DxV.dtype) if train_head else None
  return dh_XxBxUxD, dhead_DxV, _float0(targets_XxBxU)


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)
