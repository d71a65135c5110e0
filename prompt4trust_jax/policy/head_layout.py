"""The LM head laid out for a decode loop, made once per embedding table on CPU."""

import weakref

import jax
import jax.numpy as jnp

from prompt4trust_jax.models.protocol import DecoderModel


def decode_head(model: DecoderModel) -> jax.Array:
  """The LM head `[D, V]` laid out for a decode loop (inside or outside `jit`).

  XLA:CPU reads a transposed matrix operand ~1.7x slower, and a tied head is the
  transposed embedding table, so on CPU the head is laid out row-major first. Outside
  `jit` that copy is made once per embedding table and reused while the table lives
  (`_transposed_head`): a frozen model pays it once, not once per call or chunk.
  """
  table_VxD = model.tied_embedding()
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
