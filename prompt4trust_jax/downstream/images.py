"""Image files decoded to RGB PIL images, checked on the way (the data builders, the downstream).

Family-neutral: what a model family's image processor does with the RGB image (resizing,
patches) is that family's (`models/families.py`, e.g. `models/qwen2_vl_images.py`).
"""

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

# PMC-VQA drops images with a side under 28 px (one merged 2x2 block of 14-px patches).
MIN_SIDE = 28

# Exceptions Pillow raises for malformed image data (a bad chunk is a SyntaxError there).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
_HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N")


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
