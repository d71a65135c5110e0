"""Input corruptions: reproducible, input left alone, stronger with severity, each doing its job."""

import glob
import io
import os

import numpy as np
import pytest
from PIL import Image

from prompt4trust_jax.evaluation import noise

_FIXTURE_IMAGES = sorted(glob.glob(os.path.join(
    os.path.dirname(os.path.dirname(noise.__file__)), "data", "fixture", "pmc_vqa_tiny",
    "images", "*.png")))
_OPTIONS = ("A:Left lower lobe consolidation ", "B: Right pleural effusion",
            "C:Normal chest examination ", "D:Magnetic resonance imaging without contrast ")
_QUESTIONS = (
    ("A 45-year old patient with a history of chest pain underwent computed tomography. "
     "What is the most likely diagnosis?"),
    "Which structure is indicated by the arrow on the axial magnetic resonance image?",
    "What abnormality is visible in the right upper quadrant of this abdominal ultrasound?",
    "How many enhancing lesions are seen in the posterior fossa on this contrast scan?",
)


def _shapes(seed: int) -> Image.Image:
  """64x64 RGB: a gradient, a bright disc, a dark square and mild texture."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:64, :64]
  x = np.stack([xx * 2.0 + 40, yy * 2.0 + 30, np.full((64, 64), 90.0)], axis=-1)
  cy, cx = rng.integers(16, 48, 2)
  x[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = (230, 220, 200)
  x[5 + seed:20 + seed, 40:55] = (20, 25, 30)
  x += rng.normal(0, 6, x.shape)
  return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8), "RGB")


def _images() -> list[Image.Image]:
  return [_shapes(s) for s in range(3)] + [Image.open(p).convert("RGB")
                                           for p in _FIXTURE_IMAGES[:2]]


def _example(i: int = 0, image=True) -> dict:
  return {"id": f"pmc_{i:05d}", "question": _QUESTIONS[i % len(_QUESTIONS)],
          "options": _OPTIONS, "answer": 2, "image": _shapes(i) if image else None}


def _pixels(image: Image.Image) -> np.ndarray:
  return np.asarray(image, np.int64)


def _levenshtein(a: str, b: str) -> int:
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
  return row[-1]


def test_levenshtein_by_hand():
  assert _levenshtein("kitten", "sitting") == 3
  assert _levenshtein("ab", "ba") == 2 and _levenshtein("", "abc") == 3


def test_registry():
  assert set(noise.CORRUPTIONS) == set(noise.IMAGE_CORRUPTIONS) | set(noise.TEXT_CORRUPTIONS)
  assert not set(noise.IMAGE_CORRUPTIONS) & set(noise.TEXT_CORRUPTIONS)
  assert {noise.kind(n) for n in noise.IMAGE_CORRUPTIONS} == {"image"}
  assert {noise.kind(n) for n in noise.TEXT_CORRUPTIONS} == {"text"}
  for name in noise.CORRUPTIONS:
    assert len(noise._LEVELS[name]) == 5, name
    assert noise.parse(f"{name}:4") == (name, 4)


@pytest.mark.parametrize("name", sorted(noise.IMAGE_CORRUPTIONS))
def test_image_corruption_is_reproducible_and_leaves_the_input_alone(name):
  example = _example(1)
  before = _pixels(example["image"])
  fields = {k: v for k, v in example.items() if k != "image"}
  out = noise.corrupt_example(example, name, 3, seed=7)
  again = noise.corrupt_example(dict(example), name, 3, seed=7)
  assert out is not example and out["image"] is not example["image"]
  assert out["image"].mode == "RGB" and out["image"].size == example["image"].size
  np.testing.assert_array_equal(_pixels(out["image"]), _pixels(again["image"]))
  np.testing.assert_array_equal(_pixels(example["image"]), before)
  assert {k: v for k, v in out.items() if k != "image"} == fields
  assert {k: v for k, v in example.items() if k != "image"} == fields
  assert np.any(_pixels(out["image"]) != before)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "salt_and_pepper"])
def test_noise_differs_by_id_and_seed(name):
  example = _example(0)
  base = _pixels(noise.corrupt_example(example, name, 2, seed=0)["image"])
  other_id = _pixels(noise.corrupt_example({**example, "id": "pmc_00001"}, name, 2, 0)["image"])
  other_seed = _pixels(noise.corrupt_example(example, name, 2, seed=1)["image"])
  assert np.any(base != other_id) and np.any(base != other_seed)


@pytest.mark.parametrize("name", ["motion_blur", "brightness"])
def test_random_direction_varies_over_examples(name):
  example = _example(0)
  outs = {_pixels(noise.corrupt_example({**example, "id": f"x{i}"}, name, 3, 0)["image"])
          .tobytes() for i in range(8)}
  assert len(outs) > 1


def test_image_severity_is_monotone():
  images = _images()
  for name in noise.IMAGE_CORRUPTIONS:
    diffs = []
    for severity in noise.SEVERITIES:
      per_image = [np.abs(_pixels(noise.corrupt_example(
          {"id": f"img{i}", "image": img}, name, severity, seed=3)["image"]) - _pixels(img)).mean()
                   for i, img in enumerate(images)]
      diffs.append(np.mean(per_image))
    assert diffs[0] > 0.5 and np.all(np.diff(diffs) > 0), (name, diffs)


def test_salt_and_pepper_sets_whole_pixels_black_or_white():
  image = _shapes(2)
  out = _pixels(noise.salt_and_pepper(image, 5, np.random.default_rng(0)))
  changed = np.any(out != _pixels(image), axis=-1)
  assert 0.15 < changed.mean() < 0.3  # 25% hit, minus hits that already were 0/255
  values = out[changed]
  assert np.all((values == 0) | (values == 255))
  assert np.all(values.min(axis=-1) == values.max(axis=-1))


def test_low_resolution_is_blocky():
  def distinct_per_block(x_HxWxC):
    h, w, c = x_HxWxC.shape
    blocks = x_HxWxC.reshape(h // 2, 2, w // 2, 2, c).transpose(0, 2, 4, 1, 3).reshape(-1, 4)
    return np.mean([len(set(b)) for b in blocks])

  for image in _images():
    out = noise.low_resolution(image, 5, np.random.default_rng(0))
    assert out.size == image.size
    assert distinct_per_block(_pixels(out)) == 1.0  # 8x8 blocks of one colour
    assert distinct_per_block(_pixels(image)) > 2.0
    # Each block is the mean of its 8x8 area.
    area = _pixels(image)[:8, :8].mean(axis=(0, 1))
    np.testing.assert_allclose(_pixels(out)[0, 0], area, atol=1)


def test_jpeg_changes_pixels_and_decodes():
  image = _shapes(0)
  out = noise.jpeg(image, 5, np.random.default_rng(0))
  assert out.mode == "RGB" and out.size == image.size
  assert np.abs(_pixels(out) - _pixels(image)).mean() > 1
  buffer = io.BytesIO()
  out.save(buffer, "PNG")
  np.testing.assert_array_equal(_pixels(Image.open(io.BytesIO(buffer.getvalue()))), _pixels(out))


@pytest.mark.parametrize("severity", noise.SEVERITIES)
def test_motion_blur_spreads_a_point_along_a_line(severity):
  taps = noise._IMAGE_LEVELS["motion_blur"][severity - 1]
  point = np.zeros((61, 61, 3), np.uint8)
  point[30, 30] = 255
  for seed in range(4):
    out = _pixels(noise.motion_blur(Image.fromarray(point), severity,
                                    np.random.default_rng(seed)))[..., 0]
    ys, xs = np.nonzero(out)
    assert len(ys) == taps and np.all(out[ys, xs] == round(255 / taps))
    coords = np.stack([ys - 30, xs - 30], axis=-1).astype(float)
    centred = coords - coords.mean(axis=0)
    _, _, vt = np.linalg.svd(centred)
    off_line = np.abs(centred @ vt[1])
    along = centred @ vt[0]
    assert off_line.max() <= 0.75, off_line  # on one line (up to pixel rounding)
    assert along.max() - along.min() >= taps - 1
    assert np.abs(coords).max() <= taps // 2 + 1e-9  # centred on the point
  flat = Image.new("RGB", (30, 20), (70, 140, 210))  # edges extended: a flat image stays flat
  np.testing.assert_array_equal(_pixels(noise.motion_blur(flat, severity,
                                                          np.random.default_rng(0))),
                                _pixels(flat))


def test_text_only_example_passes_image_corruptions_unchanged():
  example = _example(0, image=False)
  out = noise.corrupt_example(example, "gaussian_blur", 5, seed=0)
  assert out == example and out is not example


@pytest.mark.parametrize("name", sorted(noise.TEXT_CORRUPTIONS))
def test_text_corruption_is_reproducible_and_leaves_the_input_alone(name):
  example = _example(0)
  image_before = _pixels(example["image"])
  snapshot = {k: v for k, v in example.items() if k != "image"}
  out = noise.corrupt_example(example, name, 5, seed=11)
  assert out == noise.corrupt_example(dict(example), name, 5, seed=11)
  assert {k: v for k, v in example.items() if k != "image"} == snapshot
  assert out["image"] is example["image"]
  np.testing.assert_array_equal(_pixels(example["image"]), image_before)
  assert out["answer"] == example["answer"] and out["id"] == example["id"]
  assert isinstance(out["options"], tuple) and len(out["options"]) == 4
  text = lambda x: x["question"] + "\n".join(x["options"])
  assert text(out) != text(example)
  assert text(noise.corrupt_example({**example, "id": "pmc_99999"}, name, 5, 11)) != text(out)
  assert text(noise.corrupt_example(example, name, 5, seed=12)) != text(out)


def test_text_severity_is_monotone():
  text = lambda x: x["question"] + "\n" + "\n".join(x["options"])
  for name in noise.TEXT_CORRUPTIONS:
    distances = []
    for severity in noise.SEVERITIES:
      total = 0
      for i in range(len(_QUESTIONS)):
        for seed in range(3):
          clean = _example(i, image=False)
          total += _levenshtein(text(clean), text(noise.corrupt_example(clean, name, severity,
                                                                        seed)))
      distances.append(total / (3 * len(_QUESTIONS)))
    assert distances[0] > 0 and np.all(np.diff(distances) > 0), (name, distances)


@pytest.mark.parametrize("name", sorted(noise.TEXT_CORRUPTIONS))
def test_option_prefixes_survive(name):
  options = ("A:Left lung ", "B: Right lower lobe ", "C) with contrast", "1:Computed tomography",
             "D:x")
  for severity in noise.SEVERITIES:
    for i in range(5):
      out = noise.corrupt_example({**_example(i), "options": options}, name, severity, 0)
      for before, after in zip(options, out["options"]):
        prefix = before[:3] if before[2] == " " else before[:2]
        assert after.startswith(prefix), (name, severity, before, after)


def test_abbreviation_table():
  rng = np.random.default_rng(0)
  out = noise.abbreviation("Axial Computed  Tomography of the left lung without contrast in a "
                           "patient with a history of magnetic resonance imaging", 3, rng)
  assert out == "Axial CT of the L lung w/o contrast in a pt w/ a hx of MRI"
  assert noise.abbreviation("computed tomography", 5, rng) == "CT"
  assert noise.abbreviation("leftover rightward", 3, rng) == "leftover rightward"  # whole words
  assert noise.abbreviation("consolidation", 5, np.random.default_rng(1)) in (
      "consolidation", "cnsldtn")


def test_bad_inputs_are_named():
  example = _example(0)
  with pytest.raises(ValueError, match="'gaussian_nosie'.*gaussian_noise"):
    noise.corrupt_example(example, "gaussian_nosie", 3, 0)
  for bad in (0, 6, 2.0, "3"):
    with pytest.raises(ValueError, match=f"Severity of 'typo' must be an int in 1..5, got {bad!r}"):
      noise.corrupt_example(example, "typo", bad, 0)
  with pytest.raises(ValueError, match="Severity of 'jpeg'"):
    noise.jpeg(example["image"], 9, np.random.default_rng(0))
  with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
    noise.corrupt_example(example, "typo", 1, -1)
  with pytest.raises(KeyError, match="needs the example's 'id'"):
    noise.corrupt_example({k: v for k, v in example.items() if k != "id"}, "typo", 1, 0)
  with pytest.raises(ValueError, match="'typo3'.*'name:severity'"):
    noise.parse("typo3")
  with pytest.raises(ValueError, match="Unknown corruption 'blur'"):
    noise.parse("blur:2")
  with pytest.raises(ValueError, match="Severity of 'contrast'.*got 7"):
    noise.parse("contrast:7")
  with pytest.raises(ValueError, match="Unknown corruption .nope.*text corruptions"):
    noise.kind("nope")
