"""What the code outside `models/` may call on a model and on a model family.

The sampler (`sampling.py`, `decode_state.py`), the downstream (`downstream.py`) and the
update (`update.py`) see a model only through `DecoderModel` (and `MultimodalModel` when
it takes images); a family's host-side image handling is its `ImageProcessing`, reached
through its registry entry (`families.FAMILIES`). A new family implements these and adds
one registry entry; nothing outside `models/` changes. Axis letters: the package's
(`prompt4trust_jax/__init__.py`).
"""

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np


@runtime_checkable
class DecoderModel(Protocol):
  """A decoder LM the sampler drives: embed, positions, one cached step, logits.

  `config.vocab_size` is the vocabulary; `text_config` is the text stack's config (its
  `dtype` is the compute dtype). `step` runs new input embeddings against `cache` (None: no
  cache) written at slot `cache_index`, returning `(h_BxTxD, cache)`; `positions` is
  `[B, T]`, or what the family's `multimodal_inputs` gives (M-RoPE: `[3, B, T]`).
  """
  config: Any
  text_config: Any

  def embed(self, tokens_BxT: jax.Array,
            image_embeds_MxD: jax.Array | None = None) -> jax.Array: ...

  def positions(self, attention_mask_BxT: jax.Array) -> jax.Array:
    """Text positions of left- or right-padded rows (padding never shifts them)."""
    ...

  def step(self, x_BxTxD: jax.Array, positions: jax.Array, mask_BxTxS: jax.Array, cache,
           cache_index) -> tuple[jax.Array, Any]: ...

  def logits(self, h_BxTxD: jax.Array, head_DxV: jax.Array | None = None) -> jax.Array: ...

  def lm_head_kernel(self) -> jax.Array: ...

  def tied_embedding(self) -> jax.Array | None: ...

  def init_cache(self, batch: int, length: int) -> Any: ...


@runtime_checkable
class MultimodalModel(DecoderModel, Protocol):
  """A `DecoderModel` whose prompts hold images, each behind its placeholder tokens."""

  @property
  def image_token_id(self) -> int:
    """The placeholder token whose embeddings `embed` replaces by image tokens."""
    ...

  def expand_image_placeholders(self, ids: Sequence[int], image_grid: np.ndarray, /
                                ) -> list[int]:
    """`ids` with each image's one placeholder repeated to the image's token count."""
    ...

  def multimodal_inputs(self, input_ids_BxT, attention_mask_BxT, pixel_values, image_grid, /
                        ) -> tuple[jax.Array, jax.Array | None]:
    """Host side, before a jitted prefill: `(positions, image_embeds_MxD)`."""
    ...

  def image_inputs(self, input_ids_BxT, attention_mask_BxT, pixel_values, image_grid, /
                   ) -> tuple[jax.Array, Any, int | None]:
    """Host side: `(positions, vision_inputs, packed)`, `encode_images(vision_inputs)` being
    the image tokens (row aligned `[B, K, D]` when `packed` is None, else the first `packed`
    of `[M', D]`): what trains the vision tower (`training.supervised`)."""
    ...

  def encode_images(self, vision_inputs: Any, /) -> jax.Array:
    """Image tokens for `embed`, traceable (inside a jitted, differentiated program)."""
    ...


class ImageProcessing(Protocol):
  """A multimodal family's host-side image handling (a module satisfies it).

  `image_grid` is whatever the family's processor says about each image's layout (Qwen2-VL:
  `image_grid_thw` `[I, 3]`); the model's `expand_image_placeholders` and
  `multimodal_inputs` read it back.
  """

  def processor_from_pretrained(self, path: str, min_pixels: int | None = None,
                                max_pixels: int | None = None, /) -> Any:
    """The image processor a local checkpoint directory ships, optionally re-budgeted."""
    ...

  def preprocess(self, images: Sequence[Any], processor: Any, /
                 ) -> tuple[np.ndarray, np.ndarray]:
    """RGB PIL images -> `(pixel_values, image_grid)` for `multimodal_inputs`."""
    ...
