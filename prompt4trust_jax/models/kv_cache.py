"""The key/value cache: one fixed-size buffer per layer, written in place.

Every row of a batch writes its step-t token at the same slot (prompts are left
padded), so a write is a single `dynamic_update_slice` at a scalar index; XLA does
it in place inside the sampler's while loop.
"""

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class LayerCache:
  """Keys transposed, `[B, K, H, S]`, and values `[B, K, S, H]` (see `layers.attend`).

  Optionally a read-only shared prefix: rows b*C .. b*C + C-1 all attend to prefix row b
  (keys `[Q, K, H, P]`, values `[Q, K, P, H]`, valid slots `[Q, P]`) before their own
  slots. G hints of one question then read the question's cache once per group instead
  of once per row (`decode_state.share`). With no own slots (`k` None, `prefix_only`), the
  call's own keys are its new tokens' (a training forward that needs no cache after).
  """
  k: jax.Array | None
  v: jax.Array | None
  prefix_k: jax.Array | None = None
  prefix_v: jax.Array | None = None
  prefix_valid: jax.Array | None = None

  def write(self, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, index) -> "LayerCache":
    k_BxKxHxT = jnp.transpose(k_BxTxKxH, (0, 2, 3, 1))
    v_BxKxTxH = jnp.swapaxes(v_BxTxKxH, 1, 2)
    return self.replace(
        k=jax.lax.dynamic_update_slice(self.k, k_BxKxHxT.astype(self.k.dtype), (0, 0, 0, index)),
        v=jax.lax.dynamic_update_slice(self.v, v_BxKxTxH.astype(self.v.dtype), (0, 0, index, 0)))

  @property
  def prefix(self):
    """`(keys, values, valid)` of the shared prefix, or None."""
    return None if self.prefix_k is None else (self.prefix_k, self.prefix_v, self.prefix_valid)


def init(num_layers: int, batch: int, length: int, num_kv_heads: int, head_dim: int,
         dtype) -> tuple[LayerCache, ...]:
  """An empty cache of `length` slots for each of `num_layers` layers."""
  return tuple(LayerCache(k=jnp.zeros((batch, num_kv_heads, head_dim, length), dtype),
                         v=jnp.zeros((batch, num_kv_heads, length, head_dim), dtype))
               for _ in range(num_layers))


def shared(cache: tuple[LayerCache, ...], valid_QxP: jax.Array, copies: int,
           length: int) -> tuple[LayerCache, ...]:
  """Caches for `copies` rows per row of `cache`, reading it as a read-only shared prefix.

  Each new row gets `length` empty slots of its own; its attention reads the prefix
  once per group (see `LayerCache`). Differentiable, so a training forward can share a
  prompt among the completions that continue it.
  """
  Q = valid_QxP.shape[0]
  return tuple(
      LayerCache(k=jnp.zeros((Q * copies, *layer.k.shape[1:3], length), layer.k.dtype),
                 v=jnp.zeros((Q * copies, layer.v.shape[1], length, layer.v.shape[3]),
                             layer.v.dtype),
                 prefix_k=layer.k, prefix_v=layer.v, prefix_valid=valid_QxP.astype(bool))
      for layer in cache)


def prefix_only(cache: tuple[LayerCache, ...], valid_QxP: jax.Array) -> tuple[LayerCache, ...]:
  """`shared` without own slots: the rows attend to the prefix and to one call's tokens.

  What a training forward over completions needs (`update._grouped_hidden`): no per-layer
  buffers for slots that are written once and never read again, which `shared` would
  allocate for every layer up front (5 GB at 64 completions of 512 tokens, Qwen2.5-1.5B).
  """
  return tuple(LayerCache(k=None, v=None, prefix_k=layer.k, prefix_v=layer.v,
                          prefix_valid=valid_QxP.astype(bool)) for layer in cache)


def extend(cache: tuple[LayerCache, ...], length: int) -> tuple[LayerCache, ...]:
  """The same caches with `length` own slots (at least the current number), new ones empty.

  A decode loop that grows its cache as it goes attends over the slots it has filled,
  not over the whole budget (attention reads every slot of the cache each step).
  """
  def pad(x, axis):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, widths)
  return tuple(layer.replace(k=pad(layer.k, 3), v=pad(layer.v, 2)) for layer in cache)


def attention_mask(kv_valid_BxS: jax.Array, cache_index, num_queries: int) -> jax.Array:
  """`[B, T, S]`: query t (at slot cache_index + t) sees valid keys at slots <= its own."""
  S = kv_valid_BxS.shape[1]
  query_slot_T = cache_index + jnp.arange(num_queries)
  causal_TxS = jnp.arange(S)[None, :] <= query_slot_T[:, None]
  return causal_TxS[None] & kv_valid_BxS[:, None, :].astype(bool)
