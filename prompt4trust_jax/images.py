"""Images for the downstream Qwen2-VL: decode to RGB, then its own image processor.

Axis letters: I images, P patches over all images, D = 3 * temporal_patch * patch**2.

Resizing, normalisation and patch layout are transformers' `Qwen2VLImageProcessorPil`
(PIL + numpy). The default `Qwen2VLImageProcessor` is the torchvision backend, which needs
torch; its bicubic resize may differ slightly from PIL's.
"""

import dataclasses
import functools
import io
import os
from collections.abc import Sequence

import numpy as np
import transformers
from PIL import Image, UnidentifiedImageError

# PMC-VQA drops images with a side under 28 px (one merged 2x2 block of 14-px patches).
MIN_SIDE = 28

# Exceptions Pillow raises for malformed image data (a bad chunk is a SyntaxError there).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
_HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N")
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class ImageError(ValueError):
  """An image that cannot be used; the message names its source and the problem."""


class ImageTooSmallError(ImageError):
  """An image that decodes but has a side under the minimum."""


def load_image(source: str | os.PathLike | bytes | Image.Image,
               min_side: int = MIN_SIDE) -> Image.Image:
  """Decodes a file path or encoded bytes fully (truncation fails here) into an RGB image.

  A PIL image is checked and converted the same way (no decoding needed).

  Conversion to RGB: transparency ("RGBA", "LA", "PA", palette with a transparent index)
  is composited onto white, as qwen_vl_utils does; 16-bit grayscale ("I;16*") is scaled
  65535 -> 255; 32-bit "I" and float "F" have no fixed range, so their own min..max is
  stretched to 0..255; every other mode ("L", "1", "P", "CMYK", "YCbCr", ...) uses Pillow's
  convert. Only the first frame of a multi-frame file is read; EXIF rotation is not applied
  (neither does qwen_vl_utils). Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`)
  applies.
  """
  if isinstance(source, Image.Image):
    name = f"<{source.mode} image {source.width}x{source.height}>"
    if min(source.size) < min_side:
      raise ImageTooSmallError(f"{name}: below the {min_side} px minimum side.")
    return _to_rgb(source, name)
  if isinstance(source, (bytes, bytearray)):
    name, stream = f"<{len(source)} bytes>", io.BytesIO(source)
  elif isinstance(source, (str, os.PathLike)):
    name = stream = os.fspath(source)
  else:
    raise TypeError(f"load_image takes a path, encoded bytes or a PIL image, got "
                    f"{type(source).__name__}.")
  with _open(stream, name) as img:
    width, height = img.size
    if min(width, height) < min_side:
      raise ImageTooSmallError(f"{name}: image is {width}x{height} px, below the {min_side} px "
                               "minimum side; drop the example or pass a smaller min_side.")
    try:
      img.load()
    except _DECODE_ERRORS as e:
      raise ImageError(f"{name}: image data cannot be decoded ({e}); the file is truncated or "
                       "corrupt, re-download it.") from e
    return _to_rgb(img, name)


def _open(stream, name: str) -> Image.Image:
  try:
    return Image.open(stream)
  except FileNotFoundError:
    raise ImageError(f"{name}: no such file; check the path and the data directory.") from None
  except Image.DecompressionBombError as e:
    raise ImageError(f"{name}: {e} Raise PIL.Image.MAX_IMAGE_PIXELS only for files you "
                     "trust.") from e
  except UnidentifiedImageError:
    raise ImageError(f"{name}: not an image Pillow can identify (unknown format or corrupt "
                     "header).") from None
  except _DECODE_ERRORS as e:
    raise ImageError(f"{name}: cannot read the image ({e}); the file is truncated or "
                     "corrupt.") from e


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
  if img.mode in _HIGH_BIT_DEPTH:
    # Pillow's own convert clips these at 255, turning most of a 16-bit scan white.
    return _gray_to_rgb(np.asarray(img, dtype=np.float64) / 257.0)
  if img.mode in ("I", "F"):
    x = np.asarray(img, dtype=np.float64)
    span = x.max() - x.min()
    return _gray_to_rgb((x - x.min()) * (255.0 / span) if span > 0 else np.zeros_like(x))
  if img.has_transparency_data:
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
  try:
    return img.convert("RGB")
  except ValueError as e:
    raise ImageError(f"{name}: Pillow cannot convert mode {img.mode!r} to RGB ({e}); save "
                     "the image as PNG or JPEG.") from e


def _gray_to_rgb(gray_HxW: np.ndarray) -> Image.Image:
  return Image.fromarray(np.rint(gray_HxW).clip(0, 255).astype(np.uint8), "L").convert("RGB")


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
  # whenever it is installed, which `load_image` callers should not pay for.
  cls = getattr(transformers, "Qwen2VLImageProcessorPil", None)
  if cls is None:
    raise ImportError(f"transformers {transformers.__version__} has no Qwen2VLImageProcessorPil "
                      "(its torch-free Qwen2-VL image processor); upgrade: pip install -U "
                      "transformers.")
  return cls


@functools.lru_cache(maxsize=None)
def image_processor(config: ImageConfig = ImageConfig()) -> "transformers.BaseImageProcessor":
  """The transformers PIL-backend Qwen2-VL image processor for `config` (shared, cached)."""
  return _processor_class()(**dataclasses.asdict(config))


def image_processor_from_pretrained(path: str | os.PathLike, min_pixels: int | None = None,
                                    max_pixels: int | None = None
                                    ) -> "transformers.BaseImageProcessor":
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


def preprocess(images: Sequence[Image.Image],
               config: "ImageConfig | transformers.BaseImageProcessor" = ImageConfig()
               ) -> tuple[np.ndarray, np.ndarray]:
  """(pixel_values float32 [P, D], image_grid_thw int64 [I, 3]) exactly as transformers makes them.

  `config` is an `ImageConfig` or a processor from `image_processor_from_pretrained`. Images
  must be RGB (use `load_image`), so transparency and bit depth are handled one way.
  """
  if not images:
    raise ValueError("preprocess got no images; pass at least one PIL image.")
  for i, img in enumerate(images):
    if not isinstance(img, Image.Image) or img.mode != "RGB":
      what = f"mode {img.mode!r}" if isinstance(img, Image.Image) else type(img).__name__
      raise ImageError(f"Image {i} is {what}, not an RGB PIL image; load it with load_image.")
  processor = image_processor(config) if isinstance(config, ImageConfig) else config
  out = processor(list(images), return_tensors="np")
  pixel_values_PxD = np.asarray(out["pixel_values"], dtype=np.float32)
  grid_thw_Ix3 = np.asarray(out["image_grid_thw"], dtype=np.int64)
  return pixel_values_PxD, grid_thw_Ix3


def num_image_tokens(grid_thw: Sequence[int], merge_size: int) -> int:
  """`<|image_pad|>` tokens for one image: its patches after merge_size x merge_size merging."""
  t, h, w = (int(v) for v in grid_thw)
  if h % merge_size or w % merge_size:
    raise ValueError(f"grid_thw {(t, h, w)} has h or w not divisible by merge_size={merge_size}; "
                     "pass the merge_size of the processor that made the grid.")
  return t * h * w // merge_size**2
