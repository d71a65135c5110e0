"""The LM head laid out for a decode loop, made once per embedding table on CPU."""

import weakref

import jax
import jax.numpy as jnp


def decode_head(model) -> jax.Array:
  """The LM head `[D, V]` laid out for a decode loop (inside or outside `jit`).

  XLA:CPU reads a transposed matrix operand ~1.7x slower, and a tied head is the
  transposed embedding table, so on CPU the head is laid out row-major first. Outside
  `jit` that copy is made once per embedding table and reused while the table lives
  (`_transposed_head`): a frozen model pays it once, not once per call or chunk.
  """
  tied = getattr(model, "tied_embedding", None)  # optional in the sampler's model protocol
  table_VxD = tied() if tied is not None else None
  if table_VxD is None or jax.default_backend() != "cpu":
    return model.lm_head_kernel()
  if isinstance(table_VxD, jax.core.Tracer):
    return jax.lax.optimization_barrier(table_VxD.T)  # once per traced call
  return _transposed_head(table_VxD)


_TRANSPOSED_HEADS: dict[int, tuple[weakref.ref, jax.Array]] = {}


def _transposed_head(table_VxD: jax.Array) -> jax.Array:
  """`table.T` materialised, cached for as long as `table_VxD` itself is alive."""
  key = id(table_VxD)
  hit = _TRANSPOSED_HEADS.get(key)
  if hit is not None and hit[0]() is table_VxD:
    return hit[1]
  head_DxV = _transpose(table_VxD)
  evict = lambda _, key=key: _TRANSPOSED_HEADS.pop(key, None)
  _TRANSPOSED_HEADS[key] = (weakref.ref(table_VxD, evict), head_DxV)
  return head_DxV


_transpose = jax.jit(jnp.transpose)
