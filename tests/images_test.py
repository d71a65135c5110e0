"""Image loading: modes, broken files, size filter (Qwen2-VL's processor:
tests/models/qwen2_vl_images_test.py)."""

import numpy as np
import pytest
from PIL import Image

from prompt4trust_jax.downstream import images


def _noise(width, height, seed=0):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _save(img, path, fmt="PNG"):
  img.save(path, format=fmt)
  return str(path)


def test_rgb_passes_through_unchanged(tmp_path):
  img = _noise(40, 30)
  out = images.load_image(_save(img, tmp_path / "a.png"))
  assert out.mode == "RGB" and out.size == (40, 30)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_grayscale_and_palette_become_rgb(tmp_path):
  gray = Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32) % 251, "L")
  out = np.asarray(images.load_image(_save(gray, tmp_path / "l.png")))
  np.testing.assert_array_equal(out, np.repeat(np.asarray(gray)[..., None], 3, axis=-1))
  palette = _noise(32, 32).quantize(16)
  out = images.load_image(_save(palette, tmp_path / "p.png"))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(palette.convert("RGB")))


def test_transparency_is_composited_on_white(tmp_path):
  rgba = np.zeros((32, 32, 4), np.uint8)
  rgba[0, 0] = (0, 0, 0, 0)          # fully transparent black
  rgba[0, 1] = (10, 20, 30, 255)     # opaque
  rgba[0, 2] = (0, 0, 0, 128)        # half-transparent black
  out = np.asarray(images.load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")))
  np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
  np.testing.assert_array_equal(out[0, 1], [10, 20, 30])
  np.testing.assert_allclose(out[0, 2], [127, 127, 127], atol=1)
  la = Image.fromarray(rgba[..., [0, 3]].copy(), "LA")
  assert tuple(images.load_image(_save(la, tmp_path / "la.png")).getpixel((0, 0))) == (255,) * 3
  palette = Image.new("P", (32, 32), 3)
  palette.putpalette([0, 0, 0] * 4)
  palette.save(tmp_path / "p.png", transparency=3)
  out = images.load_image(tmp_path / "p.png")
  assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 255, 255)


def test_16_bit_is_scaled_not_clipped(tmp_path):
  deep = np.full((32, 32), 65535, np.uint16)
  deep[0, :3] = (0, 128 * 257, 1000)
  out = images.load_image(_save(Image.fromarray(deep), tmp_path / "d.png"))
  assert out.mode == "RGB"
  np.testing.assert_array_equal(np.asarray(out)[0, :4, 0], [0, 128, 4, 255])


def test_float_and_cmyk_become_rgb(tmp_path):
  x = np.zeros((32, 32), np.float32)
  x[0, :3] = (-1.0, 0.0, 1.0)
  out = np.asarray(images.load_image(_save(Image.fromarray(x, "F"), tmp_path / "f.tiff", "TIFF")))
  np.testing.assert_array_equal(out[0, :3, 0], [0, 128, 255])
  cmyk = images.load_image(_save(_noise(32, 32).convert("CMYK"), tmp_path / "c.jpg", "JPEG"))
  assert cmyk.mode == "RGB"


def test_bytes_input_matches_path(tmp_path):
  path = _save(_noise(30, 50), tmp_path / "a.png")
  with open(path, "rb") as f:
    data = f.read()
  np.testing.assert_array_equal(np.asarray(images.load_image(data)),
                                np.asarray(images.load_image(path)))
  with pytest.raises(images.ImageError, match=f"<{len(data) // 2} bytes>"):
    images.load_image(data[:len(data) // 2])


def test_corrupt_and_missing_files_name_the_path(tmp_path):
  path = tmp_path / "noise.png"
  path.write_bytes(np.random.default_rng(0).bytes(500))
  with pytest.raises(images.ImageError, match="noise.png.*not an image"):
    images.load_image(str(path))
  with pytest.raises(images.ImageError, match="nope.png.*no such file"):
    images.load_image(tmp_path / "nope.png")
  with pytest.raises(TypeError, match="int"):
    images.load_image(3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_fails_at_load(tmp_path, fmt):
  path = tmp_path / f"cut.{fmt.lower()}"
  data = open(_save(_noise(64, 64), path, fmt), "rb").read()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(images.ImageError, match=f"cut.{fmt.lower()}.*truncated"):
    images.load_image(str(path))


@pytest.mark.parametrize("width,height", [(1, 1), (20, 300), (300, 27)])
def test_too_small_images_are_rejected_with_their_size(tmp_path, width, height):
  path = _save(_noise(width, height), tmp_path / "small.png")
  with pytest.raises(images.ImageError, match=f"small.png.*{width}x{height} px"):
    images.load_image(path)


def test_min_side_is_configurable(tmp_path):
  path = _save(_noise(20, 300), tmp_path / "a.png")
  assert images.load_image(path, min_side=20).size == (20, 300)


def test_decompression_bomb_is_wrapped(tmp_path, monkeypatch):
  path = _save(_noise(64, 64), tmp_path / "bomb.png")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2x the limit: an error
  with pytest.raises(images.ImageError, match="bomb.png.*MAX_IMAGE_PIXELS"):
    images.load_image(path)
