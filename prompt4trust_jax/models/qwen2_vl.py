"""Qwen2-VL and Qwen2.5-VL (the Prompt4Trust downstream) in Flax NNX.

The text side is the Qwen2 decoder unchanged (`qwen2.Qwen2Decoder`, with M-RoPE);
`vision.py` holds the image encoder. Image placeholders (`<|image_pad|>`, one per
merged image token) are replaced by image embeddings in order of appearance, and
3-D positions (t, h, w) are computed on the host from the token ids and image
grids, as HF's `get_rope_index` does: an image at text position p takes
t = p, h = p + row, w = p + column, and the text after it continues from
p + max(rows, columns). Pixels become patches in `qwen2_vl_images.py`, the family's image
processor (`families.py`).
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt4trust_jax import hosts, padding
from prompt4trust_jax.models import kv_cache as kv_cache_lib
from prompt4trust_jax.models import qwen2
from prompt4trust_jax.models import vision


@dataclasses.dataclass(frozen=True)
class Qwen2VLConfig:
  text: qwen2.Qwen2Config
  vision: vision.VisionConfig
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  model_type: str = "qwen2_vl"  # or "qwen2_5_vl"

  @property
  def vocab_size(self) -> int:
    return self.text.vocab_size

  @classmethod
  def from_hf(cls, hf: dict[str, Any], dtype: str = "float32", param_dtype: str = "float32",
              **text_overrides) -> "Qwen2VLConfig":
    """Reads a hub config.json (text fields at top level) or a re-saved one (`text_config`)."""
    text = {**hf, **(hf.get("text_config") or {})}
    if "tie_word_embeddings" in hf:
      text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    text_cfg = qwen2.Qwen2Config.from_hf(text, dtype=dtype, param_dtype=param_dtype,
                                         **text_overrides)
    if not text_cfg.mrope_section:
      raise ValueError("config.json of a Qwen2-VL model lacks rope_scaling.mrope_section.")
    v = hf.get("vision_config") or {}
    qwen2_5 = hf.get("model_type") == "qwen2_5_vl"
    if qwen2_5:
      vis = vision.VisionConfig(
          depth=v["depth"], width=v["hidden_size"], num_heads=v["num_heads"],
          mlp_hidden=v["intermediate_size"], out_dim=v.get("out_hidden_size", text_cfg.hidden_size),
          qwen2_5=True, window_size=v.get("window_size", 112),
          fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", ())), **_vision_common(v),
          dtype=dtype, param_dtype=param_dtype)
    else:
      vis = vision.VisionConfig(
          depth=v["depth"], width=v["embed_dim"], num_heads=v["num_heads"],
          mlp_hidden=int(v["embed_dim"] * v.get("mlp_ratio", 4)),
          out_dim=v.get("hidden_size", text_cfg.hidden_size), **_vision_common(v),
          dtype=dtype, param_dtype=param_dtype)
    ids = {k: hf[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                              "vision_end_token_id") if k in hf}
    return cls(text_cfg, vis, model_type=hf["model_type"], **ids)


def _vision_common(v: dict) -> dict:
  return dict(patch_size=v.get("patch_size", 14), temporal_patch_size=v.get("temporal_patch_size", 2),
              merge_size=v.get("spatial_merge_size", 2),
              in_channels=v.get("in_channels", v.get("in_chans", 3)),
              rope_theta=float((v.get("rope_parameters") or {}).get("rope_theta", 10_000.0)))


def to_hf(config: Qwen2VLConfig) -> dict[str, Any]:
  """Hub-layout config.json (text settings at top level, mrope in rope_scaling)."""
  text = qwen2.to_hf(config.text)
  v = config.vision
  common = dict(depth=v.depth, num_heads=v.num_heads, patch_size=v.patch_size,
                temporal_patch_size=v.temporal_patch_size, spatial_merge_size=v.merge_size,
                in_channels=v.in_channels, in_chans=v.in_channels)
  if v.qwen2_5:
    vis = dict(common, hidden_size=v.width, intermediate_size=v.mlp_hidden, out_hidden_size=v.out_dim,
               window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes),
               hidden_act="silu", model_type="qwen2_5_vl")
    arch = "Qwen2_5_VLForConditionalGeneration"
  else:
    ratio = v.mlp_hidden // v.width if v.mlp_hidden % v.width == 0 else v.mlp_hidden / v.width
    vis = dict(common, embed_dim=v.width, mlp_ratio=ratio, hidden_size=v.out_dim,
               hidden_act="quick_gelu", model_type="qwen2_vl")
    arch = "Qwen2VLForConditionalGeneration"
  return {**text, "architectures": [arch], "model_type": config.model_type,
          "rope_scaling": {"type": "mrope", "mrope_section": list(config.text.mrope_section)},
          "vision_config": vis, "image_token_id": config.image_token_id,
          "video_token_id": config.video_token_id,
          "vision_start_token_id": config.vision_start_token_id,
          "vision_end_token_id": config.vision_end_token_id}


def _text(vocab, hidden, inter, layers, heads, kv, tie, **kw):
  return qwen2.Qwen2Config(vocab, hidden, inter, layers, heads, kv, tie_word_embeddings=tie,
                           mrope_section=(16, 24, 24), **kw)


# Shapes of the released checkpoints (their hub config.json files).
def qwen2_vl_2b_instruct(**kw) -> Qwen2VLConfig:
  return Qwen2VLConfig(_text(151936, 1536, 8960, 28, 12, 2, True, **kw),
                       vision.VisionConfig(32, 1280, 16, 5120, 1536, **kw))


def qwen2_vl_7b_instruct(**kw) -> Qwen2VLConfig:
  return Qwen2VLConfig(_text(152064, 3584, 18944, 28, 28, 4, False, **kw),
                       vision.VisionConfig(32, 1280, 16, 5120, 3584, **kw))


def qwen2p5_vl_3b_instruct(**kw) -> Qwen2VLConfig:
  return Qwen2VLConfig(_text(151936, 2048, 11008, 36, 16, 2, True, **kw),
                       vision.VisionConfig(32, 1280, 16, 3420, 2048, qwen2_5=True, window_size=112,
                                           fullatt_block_indexes=(7, 15, 23, 31), **kw),
                       model_type="qwen2_5_vl")


def qwen2p5_vl_7b_instruct(**kw) -> Qwen2VLConfig:
  return Qwen2VLConfig(_text(152064, 3584, 18944, 28, 28, 4, False, **kw),
                       vision.VisionConfig(32, 1280, 16, 3420, 3584, qwen2_5=True, window_size=112,
                                           fullatt_block_indexes=(7, 15, 23, 31), **kw),
                       model_type="qwen2_5_vl")


# The decoder's rules and the vision tower's (`sharding.py` assembles every family's).
PARTITION_RULES = qwen2.PARTITION_RULES + vision.PARTITION_RULES


def image_token_counts(image_grid_thw: np.ndarray, merge_size: int) -> np.ndarray:
  """`<|image_pad|>` tokens per image `[I]`: its patches after merge_size x merge_size merging."""
  grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
  if (grid[:, 1:] % merge_size).any():
    raise ValueError(f"image_grid_thw {grid.tolist()} has h or w not divisible by merge_size="
                     f"{merge_size}; pass the merge_size of the processor that made the grid.")
  return grid.prod(-1) // merge_size**2


def expand_image_placeholders(ids: Sequence[int], image_grid_thw: np.ndarray,
                              config: Qwen2VLConfig) -> list[int]:
  """`ids` with its one `<|image_pad|>` repeated to the image's token count (exactly what
  transformers' Qwen2-VL processor gives for a prompt of one image)."""
  ids, image_id = list(ids), config.image_token_id
  if ids.count(image_id) != 1:
    raise ValueError(f"The prompt holds {ids.count(image_id)} image placeholders "
                     f"(<|image_pad|>, id {image_id}); the chat template must render exactly "
                     "one per image, one image per prompt.")
  counts = image_token_counts(image_grid_thw, config.vision.merge_size)
  if len(counts) != 1:
    raise ValueError(f"image_grid_thw holds {len(counts)} images; a prompt here shows one.")
  at = ids.index(image_id)
  return ids[:at] + [image_id] * int(counts[0]) + ids[at + 1:]


def rope_positions(input_ids_BxT: np.ndarray, attention_mask_BxT: np.ndarray | None,
                   image_grid_thw: np.ndarray | None, config: Qwen2VLConfig):
  """M-RoPE positions `[3, B, T]` and each row's next text position `[B]` (host side).

  Raises if the image placeholders do not match the images (count or grouping).
  """
  ids = np.asarray(input_ids_BxT)
  mask = np.ones_like(ids, bool) if attention_mask_BxT is None else np.asarray(attention_mask_BxT, bool)
  m = config.vision.merge_size
  grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3)
  counts = image_token_counts(grids, m)
  n_placeholders = int(((ids == config.image_token_id) & mask).sum())
  if n_placeholders != counts.sum():
    raise ValueError(f"The prompts hold {n_placeholders} image tokens but the {len(grids)} images "
                     f"need {int(counts.sum())} ({counts.tolist()} per image); expand each "
                     "<|image_pad|> to its image's token count.")
  positions = np.zeros((3, *ids.shape), np.int32)
  next_position = np.zeros(ids.shape[0], np.int32)
  image = 0
  for b in range(ids.shape[0]):
    cols = np.flatnonzero(mask[b])
    if not len(cols):  # a padding row (batches are padded to whole rows per device)
      continue
    row = ids[b, cols]
    pos, i, out = 0, 0, []
    while i < len(row):
      if row[i] == config.image_token_id:
        t, h, w = grids[image]
        gh, gw = h // m, w // m
        n = int(counts[image])
        if not (row[i:i + n] == config.image_token_id).all():
          raise ValueError(f"Prompt {b}: image {image} needs {n} consecutive image tokens.")
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        out.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos)
        pos += max(gh, gw)
        i += n
        image += 1
      else:
        j = i
        while j < len(row) and row[j] != config.image_token_id:
          j += 1
        out.append(np.broadcast_to(np.arange(pos, pos + j - i), (3, j - i)))
        pos += j - i
        i = j
    positions[:, b, cols] = np.concatenate(out, axis=1)
    next_position[b] = pos
  return positions, next_position


class Qwen2VLForConditionalGeneration(qwen2.DecoderLM):

  def __init__(self, config: Qwen2VLConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.text_config = config.text
    self.visual = vision.VisionTransformer(config.vision, rngs=rngs)
    self.model = qwen2.Qwen2Decoder(config.text, rngs=rngs)
    self.lm_head = qwen2._lm_head(config.text, rngs)

  @property
  def image_token_id(self) -> int:
    return self.config.image_token_id

  def expand_image_placeholders(self, ids, image_grid_thw):
    """`expand_image_placeholders` under this model's config (one image per prompt)."""
    return expand_image_placeholders(ids, image_grid_thw, self.config)

  def encode_images(self, inputs: vision.VisionInputs) -> jax.Array:
    """Image tokens `[M, D]` in order, or row aligned `[I, K, D]` (see `vision.vision_inputs`)."""
    return self.visual(inputs).astype(jnp.dtype(self.text_config.dtype))

  def image_inputs(self, input_ids_BxT, attention_mask_BxT, pixel_values, image_grid_thw):
    """Host side: `(positions_3xBxT, vision_inputs, packed)`; `encode_images(vision_inputs)`
    (inside any jitted program: a trainer of the tower runs it under its gradient) gives the
    image tokens `embed` takes.

    When every row shows at most one image (one frame), the images are laid out in the rows
    of the prompts that show them and the tokens come out row aligned, `[B, K, D]`: split over
    the batch axes with the prompts, and the only layout of a multi-host run (each host's
    images are its rows; `hosts.global_rows`); `packed` is None. Otherwise (several images in
    a prompt) the tokens come out `[M', D]`, every image's in order, and `packed` = M, the
    real ones. Image and patch counts are bucketed, so new images of similar size do not
    recompile. `vision_inputs` is None without images.
    """
    positions, _ = rope_positions(input_ids_BxT, attention_mask_BxT, image_grid_thw, self.config)
    if pixel_values is None:
      return positions, None, None
    pixels = np.asarray(pixel_values, np.float32)
    if pixels.ndim != 2 or pixels.shape[1] != self.config.vision.patch_dim:
      raise ValueError(f"pixel_values has shape {pixels.shape}; expected [patches, "
                       f"{self.config.vision.patch_dim}] from the Qwen2-VL image processor.")
    grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    ids = np.asarray(input_ids_BxT)
    mask = np.ones(ids.shape, bool) if attention_mask_BxT is None else np.asarray(
        attention_mask_BxT, bool)
    rows = np.flatnonzero(((ids == self.config.image_token_id) & mask).any(-1))
    if not ((grid[:, 0] == 1).all() and len(rows) == len(grid)):  # several images in a row
      if hosts.multiple():
        raise ValueError("A multi-host run takes one image per prompt (row aligned images).")
      inputs, merged = vision.vision_inputs(pixels, grid, self.config.vision)
      return positions, inputs, merged
    longest = hosts.agree(grid[:, 1:].prod(-1).max())  # patches: one length on every host
    inputs, _ = vision.vision_inputs(pixels, grid, self.config.vision, images=len(ids),
                                     length=max(64, padding.bucket_length(longest)), rows=rows)
    return positions, vision.VisionInputs(*hosts.global_rows(tuple(inputs[:4])), None), None

  def multimodal_inputs(self, input_ids_BxT, attention_mask_BxT, pixel_values, image_grid_thw):
    """Host side, before a jitted prefill: `(positions_3xBxT, image_embeds)`, the images
    encoded by one jitted call (`image_inputs` says in which layout)."""
    positions, inputs, packed = self.image_inputs(input_ids_BxT, attention_mask_BxT,
                                                  pixel_values, image_grid_thw)
    if inputs is None:
      return positions, None
    image_embeds = _encode_images(*nnx.split(self), inputs)
    return positions, image_embeds if packed is None else image_embeds[:packed]

  def embed(self, tokens_BxT, image_embeds=None):
    """Token embeddings with image placeholders replaced by image tokens, in order:
    `image_embeds` `[M, D]` across the rows, or row aligned `[B, K, D]`."""
    x_BxTxD = self.model.embed_tokens(tokens_BxT)
    if image_embeds is None:
      return x_BxTxD
    is_image_BxT = tokens_BxT == self.config.image_token_id
    if image_embeds.ndim == 3:  # row b reads its own image's tokens
      index_BxT = jnp.clip(jnp.cumsum(is_image_BxT, axis=1) - 1, 0)
      image_BxTxD = jax.vmap(lambda e_KxD, i_T: jnp.take(e_KxD, i_T, axis=0))(image_embeds,
                                                                               index_BxT)
    else:
      index_BxT = jnp.cumsum(is_image_BxT.reshape(-1)).reshape(is_image_BxT.shape) - 1
      image_BxTxD = jnp.take(image_embeds, jnp.clip(index_BxT, 0), axis=0)
    return jnp.where(is_image_BxT[..., None], image_BxTxD.astype(x_BxTxD.dtype), x_BxTxD)

  def __call__(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
               position_ids=None) -> jax.Array:
    """Logits `[B, T, V]` (float32), HF argument names; runs eagerly on concrete inputs."""
    ids = np.asarray(input_ids)
    B, T = ids.shape
    mask = np.ones((B, T), bool) if attention_mask is None else np.asarray(attention_mask, bool)
    positions, image_embeds = self.multimodal_inputs(ids, mask, pixel_values, image_grid_thw)
    if position_ids is None:
      position_ids = positions
    x_BxTxD = self.embed(jnp.asarray(ids), image_embeds)
    mask_BxTxS = kv_cache_lib.attention_mask(jnp.asarray(mask), 0, T)
    h_BxTxD, _ = self.step(x_BxTxD, jnp.asarray(position_ids), mask_BxTxS, None, 0)
    return self.logits(h_BxTxD)


@functools.partial(jax.jit, static_argnums=0)
def _encode_images(graphdef, state, inputs: vision.VisionInputs):
  return nnx.merge(graphdef, state).encode_images(inputs)
