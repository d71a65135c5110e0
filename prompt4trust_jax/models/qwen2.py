"""Qwen2 / Qwen2.5 decoder-only LMs in Flax NNX (the Prompt4Trust policy).

`Qwen2Decoder` is the text stack that the Qwen2-VL family reuses: it takes input
embeddings and either 1-D positions `[B, T]` or, when the config has an
`mrope_section`, 3-D (t, h, w) positions `[3, B, T]`. `DecoderLM` is what the sampler
calls (`protocol.DecoderModel`); `PARTITION_RULES` place the decoder's weights on a mesh
(`sharding.py`). Axis letters: `prompt4trust_jax/__init__.py`.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models import layers
from prompt4trust_jax.models import rope


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None  # None: hidden_size // num_heads
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  qkv_bias: bool = True
  mrope_section: tuple[int, ...] | None = None  # set by the Qwen2-VL family
  # What each layer keeps for the backward pass (`layers.REMAT_POLICIES`): "none" keeps
  # every activation, "full" recomputes the layer, "dots" keeps only matmul outputs.
  remat: str = "none"
  # Run the layers as one `lax.scan` over their stacked weights in calls of several tokens a
  # row (training forwards, prefills; a decode step of one token stays unrolled, where
  # stacking weights and cache every token would copy them). Costs one stacked copy of the
  # weights (and of their gradient) per call; buys a loop body that gathers one layer's
  # sharded weights and reduces one layer's gradients at a time, with the activations kept
  # split over the batch axes (`layers.batch_constraint`): what fully sharded training needs.
  scan_layers: bool = False
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if isinstance(self.remat, bool):  # remat=True: recompute the whole layer
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    layers.remat_policy(self.remat)  # fails early on an unknown name

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> "Qwen2Config":
    """Reads a hub `config.json` dict (text settings at top level)."""
    return cls(**{**_text_fields_from_hf(hf), **overrides})


def _text_fields_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
  if hf.get("use_sliding_window"):
    raise NotImplementedError("config.json sets use_sliding_window=true; sliding-window "
                              "attention is not implemented (Qwen2.5 checkpoints leave it off).")
  rope_params = hf.get("rope_parameters") or {}
  rope_scaling = hf.get("rope_scaling") or {}
  rope_type = rope_scaling.get("type", rope_scaling.get("rope_type", rope_params.get("rope_type", "default")))
  if rope_type not in ("default", "mrope"):
    raise NotImplementedError(f"config.json rope type {rope_type!r} is not supported "
                              "(supported: default, mrope).")
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads") if k not in hf]
  if missing:
    raise ValueError(f"config.json lacks required text-model fields {missing}.")
  section = rope_scaling.get("mrope_section", rope_params.get("mrope_section"))
  return dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      head_dim=hf.get("head_dim"),
      rope_theta=float(hf.get("rope_theta", rope_params.get("rope_theta", 10_000.0))),
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_word_embeddings=hf.get("tie_word_embeddings", False),
      mrope_section=tuple(section) if section else None)


def to_hf(config: Qwen2Config) -> dict[str, Any]:
  """The hub-format `config.json` of a Qwen2 model (readable by every transformers)."""
  return {
      "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim, "hidden_act": "silu", "rope_theta": config.rope_theta,
      "rms_norm_eps": config.rms_norm_eps, "tie_word_embeddings": config.tie_word_embeddings,
      "max_position_embeddings": 32768, "use_sliding_window": False,
      "torch_dtype": config.param_dtype, "attention_dropout": 0.0,
  }


# Shapes of the released checkpoints (their hub config.json files).
def qwen2p5_0p5b_instruct(**kw) -> Qwen2Config:
  return Qwen2Config(151936, 896, 4864, 24, 14, 2, tie_word_embeddings=True, **kw)


def qwen2p5_1p5b_instruct(**kw) -> Qwen2Config:
  return Qwen2Config(151936, 1536, 8960, 28, 12, 2, tie_word_embeddings=True, **kw)


def qwen2p5_3b_instruct(**kw) -> Qwen2Config:
  return Qwen2Config(151936, 2048, 11008, 36, 16, 2, tie_word_embeddings=True, **kw)


def qwen2p5_7b_instruct(**kw) -> Qwen2Config:
  return Qwen2Config(152064, 3584, 18944, 28, 28, 4, tie_word_embeddings=False, **kw)


# Where the decoder's weights live on a (data, fsdp, tensor) mesh, by regex on their dotted
# path. Matrices are [in, out]; the embedding table is [V, D]. Column-parallel projections
# (out split over `tensor`) feed row-parallel ones (in split over `tensor`), so a block's
# activations are split over `tensor` between them and gathered once after. Norm scales fall
# through to `sharding.py`'s replicated default.
PARTITION_RULES = (
    (r"embed_tokens\.embedding$", P("tensor", "fsdp")),
    (r"lm_head\.kernel$", P("fsdp", "tensor")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)\.kernel$", P("fsdp", "tensor")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)\.bias$", P("tensor")),
    (r"(o_proj|down_proj)\.kernel$", P("tensor", "fsdp")),
)


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.input_layernorm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdtype)
    self.self_attn = layers.Attention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                      qkv_bias=cfg.qkv_bias, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.post_attention_layernorm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps,
                                                   param_dtype=pdtype)
    self.mlp = layers.SwiGLU(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, param_dtype=pdtype,
                             rngs=rngs)

  def __call__(self, x_BxTxD, cos_BxTxH, sin_BxTxH, mask_BxTxS, cache, cache_index):
    attn_BxTxD, cache = self.self_attn(self.input_layernorm(x_BxTxD), cos_BxTxH, sin_BxTxH,
                                       mask_BxTxS, cache, cache_index)
    x_BxTxD = x_BxTxD + attn_BxTxD
    return x_BxTxD + self.mlp(self.post_attention_layernorm(x_BxTxD)), cache


class Qwen2Decoder(nnx.Module):
  """Embedding table, decoder layers and final norm (HF's `Qwen2Model`)."""

  def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
    self.config = cfg
    self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=jnp.dtype(cfg.dtype),
                                  param_dtype=jnp.dtype(cfg.param_dtype),
                                  embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps,
                               param_dtype=jnp.dtype(cfg.param_dtype))

  def __call__(self, x_BxTxD, positions, mask_BxTxS, cache=None, cache_index=0):
    """Runs the stack on embeddings; `positions` is `[B, T]` or, for M-RoPE, `[3, B, T]`."""
    cfg = self.config
    if cfg.mrope_section:
      if positions.ndim == 2:  # text tokens: t = h = w
        positions = jnp.broadcast_to(positions, (3, *positions.shape))
      cos_BxTxH, sin_BxTxH = rope.mrope_cos_sin(positions, cfg.head_dim, cfg.rope_theta,
                                                cfg.mrope_section)
    else:
      cos_BxTxH, sin_BxTxH = rope.cos_sin(positions, cfg.head_dim, cfg.rope_theta)
    call = layers.remat(DecoderLayer.__call__, cfg.remat)
    if cfg.scan_layers and x_BxTxD.shape[1] > 1 and not layers.loop_free():
      return self._scanned(call, x_BxTxD, cos_BxTxH, sin_BxTxH, mask_BxTxS, cache, cache_index)
    new_cache = []
    for i, layer in enumerate(self.layers):
      x_BxTxD, layer_cache = call(layer, x_BxTxD, cos_BxTxH, sin_BxTxH, mask_BxTxS,
                                  None if cache is None else cache[i], cache_index)
      x_BxTxD = layers.batch_constraint(x_BxTxD)
      new_cache.append(layer_cache)
    return self.norm(x_BxTxD), (None if cache is None else tuple(new_cache))

  def _scanned(self, call, x_BxTxD, cos_BxTxH, sin_BxTxH, mask_BxTxS, cache, cache_index):
    """The layer loop as a scan over the layers' stacked variables (and caches)."""
    stack = lambda *xs: jnp.stack(xs)
    graphdef = nnx.graphdef(self.layers[0])
    stacked_states = jax.tree.map(stack, *[nnx.state(layer) for layer in self.layers])
    stacked_cache = None if cache is None else jax.tree.map(stack, *cache)

    def body(x_BxTxD, layer_state_and_cache):
      state, layer_cache = layer_state_and_cache
      x_BxTxD, layer_cache = call(nnx.merge(graphdef, state), x_BxTxD, cos_BxTxH, sin_BxTxH,
                                  mask_BxTxS, layer_cache, cache_index)
      return layers.batch_constraint(x_BxTxD), layer_cache

    x_BxTxD, stacked_cache = jax.lax.scan(body, layers.batch_constraint(x_BxTxD),
                                          (stacked_states, stacked_cache))
    if cache is not None:
      cache = tuple(jax.tree.map(lambda x: x[i], stacked_cache) for i in range(len(self.layers)))
    return self.norm(x_BxTxD), cache


def positions_from_mask(attention_mask_BxT: jax.Array) -> jax.Array:
  """Position of each token counting only real ones, so padding never shifts RoPE."""
  return jnp.maximum(jnp.cumsum(attention_mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


class DecoderLM(nnx.Module):
  """What the sampler needs from a decoder LM (`protocol.DecoderModel`): embed, positions,
  step with a cache, logits.

  Subclasses set `self.text_config`, `self.model` (a `Qwen2Decoder`) and
  `self.lm_head` (None when tied to the embedding table).
  """

  def embed(self, tokens_BxT: jax.Array, image_embeds_MxD: jax.Array | None = None) -> jax.Array:
    if image_embeds_MxD is not None:
      raise ValueError(f"{type(self).__name__} takes no images.")
    return self.model.embed_tokens(tokens_BxT)

  def positions(self, attention_mask_BxT: jax.Array) -> jax.Array:
    """RoPE positions `[B, T]` of text rows (`positions_from_mask`); M-RoPE broadcasts them."""
    return positions_from_mask(attention_mask_BxT)

  def step(self, x_BxTxD, positions, mask_BxTxS, cache, cache_index):
    """Hidden states for new input embeddings written into `cache` at `cache_index`."""
    return self.model(x_BxTxD, positions, mask_BxTxS, cache, cache_index)

  def tied_embedding(self) -> jax.Array | None:
    """The embedding table `[V, D]` when the LM head is tied to it, else None."""
    return self.model.embed_tokens.embedding[...] if self.lm_head is None else None

  def lm_head_kernel(self) -> jax.Array:
    """The output projection `[D, V]` (the embedding table transposed when tied)."""
    if self.lm_head is None:
      return self.tied_embedding().T
    return self.lm_head.kernel[...]

  def logits(self, h_BxTxD: jax.Array, head_DxV: jax.Array | None = None) -> jax.Array:
    """Float32 logits; a caller decoding many steps may pass `lm_head_kernel()` hoisted."""
    if head_DxV is None:
      head_DxV = self.lm_head_kernel()
    dtype = jnp.dtype(self.text_config.dtype)
    # One 2-D matmul: XLA:CPU's backward of the 3-D form is ~25% slower.
    h_MxD = h_BxTxD.reshape(-1, h_BxTxD.shape[-1]).astype(dtype)
    logits_MxV = jnp.dot(h_MxD, head_DxV.astype(dtype), preferred_element_type=jnp.float32)
    return logits_MxV.reshape(*h_BxTxD.shape[:-1], -1)

  def init_cache(self, batch: int, length: int):
    cfg = self.text_config
    return kv_cache_lib.init(cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim,
                             jnp.dtype(cfg.dtype))


def _lm_head(config: Qwen2Config, rngs: nnx.Rngs):
  if config.tie_word_embeddings:
    return None
  return layers.linear(config.hidden_size, config.vocab_size, use_bias=False,
                       dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
                       rngs=rngs)


class Qwen2ForCausalLM(DecoderLM):
  """Decoder plus LM head (tied to the embedding table or not)."""

  def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs):
    self.config = self.text_config = config
    self.model = Qwen2Decoder(config, rngs=rngs)
    self.lm_head = _lm_head(config, rngs)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               position_ids: jax.Array | None = None) -> jax.Array:
    """Logits `[B, T, V]` (float32) for a batch without a cache.

    With an `attention_mask` (1 = token, 0 = padding, left or right), padded keys are
    ignored and positions count real tokens only; `position_ids` overrides that.
    """
    input_ids = jnp.asarray(input_ids)
    B, T = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((B, T), bool)
    attention_mask = jnp.asarray(attention_mask)
    if position_ids is None:
      position_ids = self.positions(attention_mask)
    mask_BxTxS = kv_cache_lib.attention_mask(attention_mask, 0, T)
    h_BxTxD, _ = self.step(self.embed(input_ids), jnp.asarray(position_ids), mask_BxTxS, None, 0)
    return self.logits(h_BxTxD)
