"""Per-token log-probabilities and entropies of targets, with hand-written VJPs.

Two entry points with the same values:
  * `token_logprobs(logits_BxNxV, ...)` for logits already in hand (tests, small vocabularies);
  * `from_hidden(h_BxNxD, head_DxV, ...)` for the GRPO update and the reference forward:
    the logits are made chunk by chunk of C sequence positions from the final hidden
    states and never exist whole. At the paper's size a `[B, N, V]` float32 copy is
    64 x 512 x 151,936 x 4 B = 19.9 GB; here the forward keeps `[B, N]` statistics and
    the backward recomputes each chunk's logits, so the live logits are `[B, C, V]`.

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
  `DecoderLM.logits` does). `chunk` C is the number of sequence positions whose logits
  exist at once (None or >= N: all). Chunks run along the sequence, so every chunk keeps
  the batch axis, and with it the batch sharding of a data-parallel update.
  Differentiable in `h` and `head`.
  """
  B, N, D = h_BxNxD.shape
  C = N if chunk is None or chunk >= N else int(chunk)
  if C < 1:
    raise ValueError(f"logprob chunk must be a positive number of positions, got {chunk}.")
  pad = -N % C
  h_BxMxD = jnp.pad(h_BxNxD, ((0, 0), (0, pad), (0, 0)))
  targets_BxM = jnp.pad(targets_BxN, ((0, 0), (0, pad)))
  K = (N + pad) // C  # number of chunks
  h_KxBxCxD = jnp.swapaxes(h_BxMxD.reshape(B, K, C, D), 0, 1)
  targets_KxBxC = jnp.swapaxes(targets_BxM.reshape(B, K, C), 0, 1)
  logp_KxBxC, entropy_KxBxC = _chunked(h_KxBxCxD, head_DxV, targets_KxBxC)
  unchunk = lambda x_KxBxC: jnp.swapaxes(x_KxBxC, 0, 1).reshape(B, K * C)[:, :N]
  return unchunk(logp_KxBxC), unchunk(entropy_KxBxC)


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


# -- Chunked: logits made from hidden states, K chunks of C positions. --------------------

def _chunk_logits(h_BxCxD, head_DxV):
  return jnp.einsum("bcd,dv->bcv", h_BxCxD, head_DxV, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _chunked(h_KxBxCxD, head_DxV, targets_KxBxC):
  return _chunked_stats(h_KxBxCxD, head_DxV, targets_KxBxC)[:2]


def _chunked_stats(h_KxBxCxD, head_DxV, targets_KxBxC):
  def one(args):
    h_BxCxD, targets_BxC = args
    return _stats(_chunk_logits(h_BxCxD, head_DxV), targets_BxC)

  return jax.lax.map(one, (h_KxBxCxD, targets_KxBxC))


def _chunked_fwd(h, head, targets):
  # Symbolic zeros (`defvjp` below): each argument comes with whether it is differentiated.
  # A frozen head (LoRA, or a model whose head is not trained) then costs the backward no
  # [D, V] float32 accumulator and no third of its matmuls.
  h_KxBxCxD, head_DxV, targets_KxBxC = h.value, head.value, targets.value
  logp_KxBxC, entropy_KxBxC, lse_KxBxC = _chunked_stats(h_KxBxCxD, head_DxV, targets_KxBxC)
  residuals = (h_KxBxCxD, head_DxV, targets_KxBxC, lse_KxBxC, entropy_KxBxC)
  # Residuals hold arrays only, so whether the head is trained travels as pytree
  # structure: () when it is, None when not.
  return (logp_KxBxC, entropy_KxBxC), (residuals, () if head.perturbed else None)


def _dense_cotangent(g, like):
  """A cotangent that may be a symbolic zero (its output unused), as an array."""
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros(like.shape, like.dtype)
  return g


def _chunked_bwd(residuals_and_head, cotangents):
  (h_KxBxCxD, head_DxV, targets_KxBxC, lse_KxBxC, entropy_KxBxC), train_head = residuals_and_head
  train_head = train_head is not None
  g_logp_KxBxC, g_entropy_KxBxC = (_dense_cotangent(g, lse_KxBxC) for g in cotangents)
  dtype = h_KxBxCxD.dtype

  def one(dhead_DxV, args):
    h_BxCxD, targets_BxC, lse_BxC, entropy_BxC, g_logp_BxC, g_entropy_BxC = args
    dz_BxCxV = _dz(_chunk_logits(h_BxCxD, head_DxV), targets_BxC, lse_BxC, entropy_BxC,
                   g_logp_BxC, g_entropy_BxC).astype(dtype)
    dh_BxCxD = jnp.einsum("bcv,dv->bcd", dz_BxCxV, head_DxV, preferred_element_type=jnp.float32)
    if train_head:
      dhead_DxV = dhead_DxV + jnp.einsum("bcd,bcv->dv", h_BxCxD, dz_BxCxV,
                                         preferred_element_type=jnp.float32)
    return dhead_DxV, dh_BxCxD.astype(dtype)

  dhead_DxV = jnp.zeros(head_DxV.shape if train_head else (), jnp.float32)
  dhead_DxV, dh_KxBxCxD = jax.lax.scan(
      one, dhead_DxV,
      (h_KxBxCxD, targets_KxBxC, lse_KxBxC, entropy_KxBxC, g_logp_KxBxC, g_entropy_KxBxC))
  dhead_DxV = dhead_DxV.astype(head_DxV.dtype) if train_head else None
  return dh_KxBxCxD, dhead_DxV, _float0(targets_KxBxC)


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)
