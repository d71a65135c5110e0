"""Qwen2-VL's image processor: RGB images -> patches and their grid (the family's
`protocol.ImageProcessing`, registered in `families.py`).

Axis letters: the package's (`prompt4trust_jax/__init__.py`); J counts the patches of all
images, E = 3 x temporal_patch x patch^2.

Resizing, normalisation and patch layout are transformers' `Qwen2VLImageProcessorPil`
(PIL + numpy). The default `Qwen2VLImageProcessor` is the torchvision backend, which needs
torch; its bicubic resize may differ slightly from PIL's. Decoding files to RGB is
family-neutral (`prompt4trust_jax/downstream/images.py`).
"""

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np
import transformers
from PIL import Image

from prompt4trust_jax.downstream import images

_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """The Qwen2-VL processor's settings; defaults are transformers' Qwen2-VL defaults.

  The pixel budget bounds the resized area: at most max_pixels / (patch * merge)**2 image
  tokens per image (1280 by default).
  """
  min_pixels: int = 56 * 56
  max_pixels: int = 28 * 28 * 1280
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2

  def __post_init__(self):
    if not 0 < self.min_pixels <= self.max_pixels:
      raise ValueError(f"ImageConfig needs 0 < min_pixels <= max_pixels, got min_pixels="
                       f"{self.min_pixels}, max_pixels={self.max_pixels}.")


def _processor_class() -> type:
  # Looked up on first use (and annotations are quoted): transformers' image stack imports torch
  # whenever it is installed, which importing the model families should not pay for.
  cls = getattr(transformers, "Qwen2VLImageProcessorPil", None)
  if cls is None:
    raise ImportError(f"transformers {transformers.__version__} has no Qwen2VLImageProcessorPil "
                      "(its torch-free Qwen2-VL image processor); upgrade: pip install -U "
                      "transformers.")
  return cls


@functools.lru_cache(maxsize=None)
def processor(config: ImageConfig = ImageConfig()) -> "transformers.BaseImageProcessor":
  """The transformers PIL-backend Qwen2-VL image processor for `config` (shared, cached)."""
  return _processor_class()(**dataclasses.asdict(config))


def processor_from_pretrained(path: str | os.PathLike, min_pixels: int | None = None,
                              max_pixels: int | None = None) -> "transformers.BaseImageProcessor":
  """The image processor a local checkpoint directory ships (mean/std, patch and merge size,
  pixel budget), optionally with a different pixel budget. Never touches the network."""
  if not os.path.isdir(path) or not any(os.path.exists(os.path.join(path, f))
                                        for f in _PROCESSOR_FILES):
    raise FileNotFoundError(
        f"No preprocessor_config.json (or processor_config.json) in {path}. Copy it from the "
        "Qwen2-VL hub download next to config.json.")
  overrides = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels))
               if v is not None}
  return _processor_class().from_pretrained(path, local_files_only=True, **overrides)


def preprocess(rgb_images: Sequence[Image.Image],
               config: "ImageConfig | transformers.BaseImageProcessor" = ImageConfig()
               ) -> tuple[np.ndarray, np.ndarray]:
  """(pixel_values float32 [P, D], image_grid_thw int64 [I, 3]) exactly as transformers makes them.

  `config` is an `ImageConfig` or a processor from `processor_from_pretrained`. Images must
  be RGB (`images.load_image`), so transparency and bit depth are handled one way.
  """
  if not rgb_images:
    raise ValueError("preprocess got no images; pass at least one PIL image.")
  for i, img in enumerate(rgb_images):
    if not isinstance(img, Image.Image) or img.mode != "RGB":
      what = f"mode {img.mode!r}" if isinstance(img, Image.Image) else type(img).__name__
      raise images.ImageError(f"Image {i} is {what}, not an RGB PIL image; load it with "
                              "load_image.")
  chosen = processor(config) if isinstance(config, ImageConfig) else config
  out = chosen(list(rgb_images), return_tensors="np")
  pixel_values_JxE = np.asarray(out["pixel_values"], dtype=np.float32)
  grid_thw_Ix3 = np.asarray(out["image_grid_thw"], dtype=np.int64)
  return pixel_values_JxE, grid_thw_Ix3
