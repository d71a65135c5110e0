"""Qwen2-VL / Qwen2.5-VL logits against transformers' PyTorch models."""

import numpy as np
import pytest
from PIL import Image

from prompt4trust_jax import models
from prompt4trust_jax.models import qwen2_vl, vision
from tests import hf_oracle

S, E, IMG = hf_oracle.VISION_START, hf_oracle.VISION_END, hf_oracle.IMAGE_TOKEN


def _image(w, h, seed):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8))


def _prompt(text_ids, images_grid, merge=2):
  """[text] then, per image, <vision_start> image tokens <vision_end>, then [text]."""
  ids = list(text_ids[:3])
  for t, h, w in images_grid:
    ids += [S] + [IMG] * (t * h * w // merge**2) + [E]
  return ids + list(text_ids[3:])


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def vl_dir(request, tmp_path_factory):
  model = hf_oracle.qwen2_vl_model(seed=3, qwen2_5=request.param == "qwen2_5_vl")
  path = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(path)
  return path


def test_logits_match_transformers_batched(vl_dir):
  ref = hf_oracle.load_vl(vl_dir)
  model = models.from_pretrained(vl_dir)
  proc = hf_oracle.image_processor()
  rng = np.random.default_rng(0)
  # Row 0: one wide image; row 1: two images (square and tall), a longer prompt.
  row_images = [[_image(168, 112, 0)], [_image(56, 56, 1), _image(84, 140, 2)]]
  rows = []
  for b, images in enumerate(row_images):
    out = proc(images=images, return_tensors="np")
    ids = _prompt(rng.integers(0, 280, 6 + 5 * b), out["image_grid_thw"])
    rows.append((ids, out["pixel_values"], out["image_grid_thw"]))
  T = max(len(r[0]) for r in rows)
  ids = np.zeros((2, T), np.int64)
  mask = np.zeros((2, T), np.int64)
  for b, (row, _, _) in enumerate(rows):
    ids[b, T - len(row):], mask[b, T - len(row):] = row, 1
  logits = np.asarray(model(input_ids=ids, attention_mask=mask,
                            pixel_values=np.concatenate([r[1] for r in rows]),
                            image_grid_thw=np.concatenate([r[2] for r in rows])))
  for b, (row, pixels, grid) in enumerate(rows):
    expected = hf_oracle.vl_logits(ref, row, pixels, grid)
    ours = logits[b, T - len(row):]
    assert np.abs(ours - expected).max() / np.abs(expected).max() < 1e-4


def test_text_only_prompt_matches_transformers(vl_dir):
  ref = hf_oracle.load_vl(vl_dir)
  model = models.from_pretrained(vl_dir)
  ids = np.random.default_rng(1).integers(0, 280, 9)
  expected = hf_oracle.vl_logits(ref, ids)
  ours = np.asarray(model(input_ids=ids[None]))[0]
  assert np.abs(ours - expected).max() / np.abs(expected).max() < 1e-4


def test_image_token_mismatch_is_named(vl_dir):
  model = models.from_pretrained(vl_dir)
  out = hf_oracle.image_processor()(images=[_image(56, 56, 0)], return_tensors="np")
  ids = np.array([[1, S] + [IMG] * 3 + [E, 2]])  # the image needs 4 tokens
  with pytest.raises(ValueError, match="3 image tokens but the 1 images need 4"):
    model(input_ids=ids, pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"])


def test_vision_windows_cover_each_image(vl_dir):
  config = models.from_pretrained(vl_dir).config
  grid = np.array([[1, 8, 12], [1, 4, 4]])
  pixels = np.arange(112)[:, None] * np.ones((1, config.vision.patch_dim), np.float32)
  inputs, merged = vision.vision_inputs(pixels, grid, config.vision, images=4, length=128)
  assert merged == 28 and inputs.pixels_IxJxE.shape == (4, 128, config.vision.patch_dim)
  # One image per row, its patches first, in the processor's order; the rest is padding.
  np.testing.assert_array_equal(inputs.pixels_IxJxE[0, :96, 0], np.arange(96))
  np.testing.assert_array_equal(inputs.pixels_IxJxE[1, :16, 0], np.arange(96, 112))
  assert (inputs.image_IxJ[0, :96] == 0).all() and (inputs.image_IxJ[0, 96:] == -1).all()
  assert (inputs.image_IxJ[1, :16] == 0).all() and (inputs.image_IxJ[2:] == -1).all()
  # Merged tokens: image 0's 24 from row 0 (32 merged slots per row), then image 1's 4.
  np.testing.assert_array_equal(inputs.index_M[:merged],
                                np.concatenate([np.arange(24), 32 + np.arange(4)]))
  if config.vision.qwen2_5:  # 2x2 merged units per window: 4x6 merged grid -> 6 windows
    assert len(set(inputs.window_IxJ[0, :96].tolist())) == 6
    assert len(set(inputs.window_IxJ[1, :16].tolist())) == 1
  with pytest.raises(ValueError, match="do not fit 1 rows of 128"):
    vision.vision_inputs(pixels, grid, config.vision, images=1, length=128)


def test_image_features_match_transformers(vl_dir):
  """The vision tower alone, tighter than logits: windows and merges must line up."""
  import torch
  ref = hf_oracle.load_vl(vl_dir)
  model = models.from_pretrained(vl_dir)
  out = hf_oracle.image_processor()(images=[_image(168, 112, 0), _image(84, 140, 2)],
                                    return_tensors="np")
  with torch.no_grad():
    expected = ref.model.get_image_features(
        torch.as_tensor(out["pixel_values"]), torch.as_tensor(out["image_grid_thw"]),
        return_dict=True).pooler_output
  expected = torch.cat(expected).numpy()
  inputs, merged = vision.vision_inputs(out["pixel_values"], out["image_grid_thw"],
                                       model.config.vision)
  ours = np.asarray(model.encode_images(inputs))[:merged]
  assert ours.shape == expected.shape
  assert np.abs(ours - expected).max() / np.abs(expected).max() < 1e-5


def test_greedy_generation_matches_transformers(vl_dir):
  from prompt4trust_jax.policy import sampling
  ref = hf_oracle.load_vl(vl_dir)
  model = models.from_pretrained(vl_dir)
  proc = hf_oracle.image_processor()
  rng = np.random.default_rng(5)
  rows = []
  for b, images in enumerate([[_image(112, 84, 3)], [_image(56, 112, 4), _image(70, 70, 5)]]):
    out = proc(images=images, return_tensors="np")
    rows.append((_prompt(rng.integers(0, 280, 5 + 4 * b), out["image_grid_thw"]),
                 out["pixel_values"], out["image_grid_thw"]))
  out = sampling.generate(model, [r[0] for r in rows], max_new_tokens=24, temperature=0,
                          pixel_values=np.concatenate([r[1] for r in rows]),
                          image_grid_thw=np.concatenate([r[2] for r in rows]))
  for (prompt, pixels, grid), tokens in zip(rows, out.tokens):
    assert tokens == hf_oracle.vl_greedy(ref, prompt, pixels, grid, 24)


def _some_logits(model):
  out = hf_oracle.image_processor()(images=[_image(84, 56, 7)], return_tensors="np")
  ids = np.array([_prompt([5, 6, 7, 8, 9], out["image_grid_thw"])])
  return np.asarray(model(input_ids=ids, pixel_values=out["pixel_values"],
                          image_grid_thw=out["image_grid_thw"]))


def test_orbax_and_hub_export_round_trips(vl_dir, tmp_path):
  model = models.from_pretrained(vl_dir)
  models.save(model, str(tmp_path / "orbax"), source_dir=vl_dir)
  np.testing.assert_array_equal(_some_logits(models.from_pretrained(str(tmp_path / "orbax"))),
                                _some_logits(model))
  models.export_hf(model, str(tmp_path / "hf"))  # config.json written from our config
  exported = models.from_pretrained(str(tmp_path / "hf"))
  np.testing.assert_array_equal(_some_logits(exported), _some_logits(model))
  out = hf_oracle.image_processor()(images=[_image(84, 56, 7)], return_tensors="np")
  ids = _prompt([5, 6, 7, 8, 9], out["image_grid_thw"])
  reloaded = hf_oracle.vl_logits(hf_oracle.load_vl(str(tmp_path / "hf")), ids,
                                 out["pixel_values"], out["image_grid_thw"])
  np.testing.assert_allclose(reloaded, _some_logits(model)[0], atol=1e-5)


def test_layout_resaved_by_newer_transformers(vl_dir, tmp_path):
  import shutil
  import safetensors.numpy
  path = tmp_path / "resaved"
  shutil.copytree(vl_dir, path)
  with open(path / "model.safetensors", "rb") as f:
    tensors = safetensors.numpy.load(f.read())
  renamed = {("model.language_model." + k[len("model."):] if k.startswith("model.") else
              "model." + k if k.startswith("visual.") else k): v for k, v in tensors.items()}
  assert any(k.startswith("model.visual.") for k in renamed)
  safetensors.numpy.save_file(renamed, str(path / "model.safetensors"), metadata={"format": "pt"})
  np.testing.assert_array_equal(_some_logits(models.from_pretrained(str(path))),
                                _some_logits(models.from_pretrained(vl_dir)))


@pytest.mark.parametrize("preset,billions", [
    (qwen2_vl.qwen2_vl_2b_instruct, 2.21), (qwen2_vl.qwen2_vl_7b_instruct, 8.29),
    (qwen2_vl.qwen2p5_vl_3b_instruct, 3.75), (qwen2_vl.qwen2p5_vl_7b_instruct, 8.29)])
def test_presets_have_released_sizes(preset, billions):
  import jax
  from flax import nnx
  shapes = jax.eval_shape(lambda: models.flat_params(
      qwen2_vl.Qwen2VLForConditionalGeneration(preset(), rngs=nnx.Rngs(0))))
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  assert abs(n / 1e9 - billions) < 0.01 * billions
