"""Log-probs and entropies of targets: the dense VJP and the chunked one from hidden states."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt4trust_jax.training import logprobs


def test_token_logprobs_and_entropy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 4))
  logp, entropy = logprobs.token_logprobs(jnp.asarray(logits), jnp.asarray(targets), 0.6)
  scaled = logits / 0.6
  log_z = np.log(np.exp(scaled).sum(-1, keepdims=True))
  lp = scaled - log_z
  np.testing.assert_allclose(logp, np.take_along_axis(lp, targets[..., None], -1)[..., 0],
                             rtol=1e-5)
  np.testing.assert_allclose(entropy, -(np.exp(lp) * lp).sum(-1), rtol=1e-5)


def test_token_logprobs_gradient_matches_autodiff_of_log_softmax():
  # The hand-written VJP against JAX's autodiff of the textbook formula, for
  # cotangents on both outputs (an entropy bonus differentiates the entropy too).
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(3, 5, 11)).astype(np.float32)) * 3
  targets = jnp.asarray(rng.integers(0, 11, (3, 5)))
  w_logp = jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32))
  w_ent = jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32))

  def textbook(x):
    lp = jax.nn.log_softmax(x / 0.7)
    logp = jnp.take_along_axis(lp, targets[..., None], -1)[..., 0]
    return (w_logp * logp).sum() + (w_ent * -(jnp.exp(lp) * lp).sum(-1)).sum()

  def ours(x):
    logp, entropy = logprobs.token_logprobs(x, targets, 0.7)
    return (w_logp * logp).sum() + (w_ent * entropy).sum()

  np.testing.assert_allclose(ours(logits), textbook(logits), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(textbook)(logits), rtol=1e-5,
                             atol=1e-6)
  # bf16 logits get a bf16 gradient of the same values.
  grad_bf16 = jax.grad(ours)(logits.astype(jnp.bfloat16))
  assert grad_bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(grad_bf16.astype(np.float32), jax.grad(textbook)(logits), atol=2e-2)


def _hidden_case(B=3, N=7, D=6, V=13, seed=3):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(B, N, D)).astype(np.float32))
  head = jnp.asarray(rng.normal(size=(D, V)).astype(np.float32))
  targets = jnp.asarray(rng.integers(0, V, (B, N)))
  w_logp = jnp.asarray(rng.normal(size=(B, N)).astype(np.float32))
  w_ent = jnp.asarray(rng.normal(size=(B, N)).astype(np.float32))
  return h, head, targets, w_logp, w_ent


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 64])
def test_chunked_from_hidden_equals_dense_values_and_gradients(chunk):
  # chunk 3 does not divide N = 7: the last chunk is padded and its padding dropped.
  h, head, targets, w_logp, w_ent = _hidden_case()

  def objective(fn):
    def f(h, head):
      logp, entropy = fn(h, head)
      return (w_logp * logp).sum() + (w_ent * entropy).sum()
    return f

  dense = objective(lambda h, head: logprobs.token_logprobs(jnp.einsum("bnd,dv->bnv", h, head),
                                                            targets))
  chunked = objective(lambda h, head: logprobs.from_hidden(h, head, targets, chunk))
  np.testing.assert_allclose(chunked(h, head), dense(h, head), rtol=1e-5)
  for ours, want in zip(jax.grad(chunked, (0, 1))(h, head), jax.grad(dense, (0, 1))(h, head)):
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)


def test_chunked_bfloat16_inputs_get_bfloat16_gradients():
  h, head, targets, w_logp, _ = _hidden_case()
  f = lambda h, head: (w_logp * logprobs.from_hidden(h, head, targets, 2)[0]).sum()
  want = jax.grad(f, (0, 1))(h, head)
  got = jax.grad(f, (0, 1))(h.astype(jnp.bfloat16), head.astype(jnp.bfloat16))
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(g.astype(np.float32), w, rtol=0.05, atol=0.05)


def test_chunked_gradient_never_holds_the_whole_logits():
  # B x N x V float32 logits are 64 MiB here; the chunked program's temporaries must stay
  # well under one copy (a chunk's logits are 1/16 of it), the dense one's must not.
  B, N, D, V = 4, 256, 64, 16384
  h = jax.ShapeDtypeStruct((B, N, D), jnp.float32)
  head = jax.ShapeDtypeStruct((D, V), jnp.float32)
  targets = jax.ShapeDtypeStruct((B, N), jnp.int32)

  def temp_bytes(fn):
    grad = jax.grad(lambda h, head, t: fn(h, head, t)[0].sum(), (0, 1))
    return jax.jit(grad).lower(h, head, targets).compile().memory_analysis().temp_size_in_bytes

  full = B * N * V * 4
  chunked = temp_bytes(lambda h, head, t: logprobs.from_hidden(h, head, t, 16))
  dense = temp_bytes(lambda h, head, t: logprobs.token_logprobs(
      jnp.einsum("bnd,dv->bnv", h, head), t))
  assert dense >= full, dense
  assert chunked < full / 4, (chunked, full)


def test_chunked_frozen_head_and_unused_entropy_cost_no_head_gradient():
  # Differentiating in h alone (a frozen head: LoRA) gives the same dh, and the backward
  # holds no [D, V] float32 accumulator; an unused entropy is a symbolic-zero cotangent.
  h, head, targets, w_logp, _ = _hidden_case()
  f = lambda h, head: (w_logp * logprobs.from_hidden(h, head, targets, 3)[0]).sum()
  dh_both, _ = jax.grad(f, (0, 1))(h, head)
  np.testing.assert_allclose(jax.grad(f)(h, head), dh_both, rtol=1e-6, atol=1e-7)

  B, N, D, V = 2, 64, 256, 32768  # a [D, V] float32 copy: 32 MiB; a chunk's logits: 2 MiB
  shapes = [jax.ShapeDtypeStruct(s, d) for s, d in
            (((B, N, D), jnp.float32), ((D, V), jnp.float32), ((B, N), jnp.int32))]
  temp_bytes = lambda argnums: jax.jit(jax.grad(
      lambda h, head, t: logprobs.from_hidden(h, head, t, 8)[0].sum(), argnums)).lower(
          *shapes).compile().memory_analysis().temp_size_in_bytes
  head_bytes = D * V * 4
  assert temp_bytes((0, 1)) >= head_bytes, temp_bytes((0, 1))
  assert temp_bytes(0) < head_bytes / 4, temp_bytes(0)
