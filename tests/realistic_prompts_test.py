"""Every prompt the library builds, tokenized as transformers' own processors tokenize it.

On the realistic checkpoints (Qwen's real BPE and the hub's chat templates, tests/realistic.py)
each prompt's ids, pixel values and image grid must equal what `Qwen2VLProcessor`
(`apply_chat_template`, then `processor(text=..., images=...)`) gives for the same message,
and the policy's what its tokenizer's `apply_chat_template` gives.
"""

import json
import os

import jax
import numpy as np
import pytest
import transformers
from PIL import Image

from prompt4trust_jax import models, prompts
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.evaluation import soft_prompt
from prompt4trust_jax.evaluation.methods import abstain, prompt_search
from prompt4trust_jax.policy import hints
from tests import realistic

# PMC-VQA's option cells end in a space; the question in this copy has stray spaces too.
QUESTION = " Which side of the image shows the abnormality? "
OPTIONS = ("A:Both sides ", "B:Left ", "C:Neither side ", "D:Right ")
HINTS = ["Look at the left lung field.", "Look at the right lung field.", "\nCompare sides."]


class _Processor(transformers.Qwen2VLProcessor):
  """Qwen2-VL's processor without its video half (whose class needs torchvision)."""

  def check_argument_for_proper_class(self, name, arg):
    if arg is not None:
      return super().check_argument_for_proper_class(name, arg)


@pytest.fixture(scope="module")
def processor(realistic_vl_dir):
  with open(os.path.join(realistic_vl_dir, "chat_template.json")) as f:
    template = json.load(f)["chat_template"]
  return _Processor(image_processor=transformers.AutoImageProcessor.from_pretrained(
      realistic_vl_dir), tokenizer=transformers.AutoTokenizer.from_pretrained(realistic_vl_dir),
      video_processor=None, chat_template=template)


@pytest.fixture(scope="module")
def image():
  return Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8))


def _expected(processor, text, image, image_first=True):
  """transformers' ids, pixel values and grid for one user turn."""
  parts = [{"type": "text", "text": text}]
  if image is not None:
    parts = [{"type": "image"}] + parts if image_first else parts + [{"type": "image"}]
  chat = processor.apply_chat_template([{"role": "user", "content": parts}],
                                       add_generation_prompt=True, tokenize=False)
  out = processor(text=[chat], images=None if image is None else [image], return_tensors="np")
  return (out["input_ids"][0].tolist(), out.get("pixel_values"), out.get("image_grid_thw"))


def _fed(monkeypatch, ds, items, hint_rows, **config):
  """What `Downstream.answer` prefills, row by row: (ids, pixel values, grid)."""
  seen = {}
  original = downstream.Downstream._start

  def capture(self, prefixes, suffixes, copies, per_item, image_rows, rng):
    seen.update(prefixes=prefixes, suffixes=suffixes, copies=copies, per_item=per_item,
                image_rows=image_rows)
    return original(self, prefixes, suffixes, copies, per_item, image_rows, rng)

  monkeypatch.setattr(downstream.Downstream, "_start", capture)
  ds = ds.with_config(downstream.ElicitationConfig(**{"mode": "structured", **config}))
  ds.answer(items, hint_rows, jax.random.key(0))
  rows = []
  for r in range(len(items) * (1 if hint_rows is None else len(hint_rows[0]))):
    prefix = seen["prefixes"][r // seen["copies"]]
    suffix = [] if seen["suffixes"] is None else seen["suffixes"][r]
    pixels, grid = (None, None) if items[0].image is None else (
        seen["per_item"][seen["image_rows"][r // seen["copies"]]])
    rows.append((prefix + suffix, pixels, grid))
  return rows


@pytest.fixture(scope="module")
def answerer(realistic_vl_dir):
  return downstream.Downstream.from_pretrained(realistic_vl_dir)


def _check(rows, expected):
  for (ids, pixels, grid), (want_ids, want_pixels, want_grid) in zip(rows, expected, strict=True):
    assert ids == want_ids
    if want_pixels is not None:
      np.testing.assert_array_equal(pixels, want_pixels)
      np.testing.assert_array_equal(grid, want_grid)


@pytest.mark.parametrize("preset", ["reference", "clean"])
def test_downstream_prompts_with_and_without_hints(monkeypatch, answerer, processor, image,
                                                   preset):
  p = prompts.preset(preset)
  item = downstream.Item(QUESTION, OPTIONS, image)
  rows = _fed(monkeypatch, answerer, [item], [HINTS], preset=preset)
  _check(rows, [_expected(processor, p.downstream(QUESTION, OPTIONS, h), image) for h in HINTS])
  rows = _fed(monkeypatch, answerer, [item], None, preset=preset)
  (ids, _, _), = rows
  assert ids == _expected(processor, p.downstream(QUESTION, OPTIONS, None), image)[0]
  if preset == "clean":  # "Right " then "\n\nAnswer:": one " \n\n" token, not " " + "\n\n"
    assert 4710 in ids and [220, 271] not in [ids[i:i + 2] for i in range(len(ids) - 1)]


def test_fixed_hint_abstain_and_searched_instruction(monkeypatch, answerer, processor, image):
  p = prompts.preset("reference")
  item = downstream.Item(QUESTION, OPTIONS, image)
  instruction, hint = p.fixed_hint_setting()
  rows = _fed(monkeypatch, answerer, [item], [[hint]], preset="reference", instruction=instruction)
  _check(rows, [_expected(processor, p.fixed_hint(QUESTION, OPTIONS), image)])
  example = abstain.with_abstain_option({"question": QUESTION, "options": OPTIONS})
  rows = _fed(monkeypatch, answerer, [downstream.Item(QUESTION, example["options"], image)], None,
              preset="reference", instruction=abstain.INSTRUCTION, letters="ABCDE",
              parser="abstain")
  _check(rows, [_expected(processor, p.downstream(QUESTION, example["options"], None,
                                                  abstain.INSTRUCTION), image)])
  searched = "Answer with care.\n" + p.downstream_instruction
  rows = _fed(monkeypatch, answerer, [item], None, preset="reference", instruction=searched)
  _check(rows, [_expected(processor, p.downstream(QUESTION, OPTIONS, None, searched), image)])


@pytest.mark.parametrize("image_first", [False, True])  # CSC/CSA's samples; entropy's
def test_sampled_baselines(monkeypatch, answerer, processor, image, image_first):
  p = prompts.preset("reference")
  items = [downstream.Item(QUESTION, OPTIONS, image), downstream.Item("Which organ?", OPTIONS,
                                                                       image.rotate(90))]
  rows = _fed(monkeypatch, answerer, items, [[None] * 3] * 2, preset="reference",
              image_first=image_first, mode="verbalized", temperature=0.5, top_k=100,
              max_new_tokens=4)
  want = [_expected(processor, p.downstream(it.question, OPTIONS, None), it.image, image_first)
          for it in items for _ in range(3)]
  _check(rows, want)


def test_policy_prompts_hints_rewrites_and_proposals(realistic_policy_dir):
  policy = models.from_pretrained(realistic_policy_dir)
  tok = models.load_tokenizer(realistic_policy_dir)
  hf = transformers.AutoTokenizer.from_pretrained(realistic_policy_dir)

  def expect(text):
    ids = hf.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                 tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

  p = prompts.preset("reference")
  examples = [{"question": QUESTION, "options": OPTIONS},
              {"question": "Which organ?", "options": OPTIONS}]
  out = hints.write(policy, tok, [realistic.IM_END], examples, preset=p, max_new_tokens=2,
                    temperature=0.0)
  assert out.prompt_ids == [expect(p.policy(x["question"], x["options"])) for x in examples]
  assert tok.decode(out.prompt_ids[0]).startswith(
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
  rewrite = p.rewrite(QUESTION, OPTIONS)
  meta = prompt_search.meta_prompt([prompt_search.Candidate(p.downstream_instruction, .5, .1, 0)])
  for text in (rewrite, meta):
    got = hints.complete(policy, tok, [realistic.IM_END], [text], max_new_tokens=2,
                         temperature=0.0).prompt_ids[0]
    assert got == expect(text)


def test_soft_prompt_inputs(answerer, processor, image):
  ds = answerer.with_config(downstream.ElicitationConfig(mode="logit", preset="reference"))
  example = {"question": QUESTION, "options": OPTIONS, "answer": 1, "image": image}
  (encoded,) = soft_prompt.prepare(ds, [example])
  want, _, _ = _expected(processor, prompts.preset("reference").downstream(QUESTION, OPTIONS, None),
                         image)
  forced, _ = soft_prompt.answer_tokens(ds)
  assert encoded.ids.tolist() == want + forced
  assert processor.tokenizer.decode(forced) == "In conclusion, the answer is"


def test_pixel_budget_overrides_the_checkpoints(realistic_vl_dir, processor, image):
  """min/max_pixels from the config give transformers' processor with the same budget."""
  small = downstream.Downstream.from_pretrained(realistic_vl_dir, max_pixels=56 * 56)
  pixels, grid = small.preprocess_images([downstream.Item(QUESTION, OPTIONS, image)])[0]
  want = transformers.AutoImageProcessor.from_pretrained(realistic_vl_dir, max_pixels=56 * 56)(
      [image], return_tensors="np")
  np.testing.assert_array_equal(pixels, want["pixel_values"])
  np.testing.assert_array_equal(grid, want["image_grid_thw"])
  _, _, default_grid = _expected(processor, "x", image)
  assert grid.prod() < default_grid.prod()  # the checkpoint's budget keeps more patches
