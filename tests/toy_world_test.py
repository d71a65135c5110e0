"""The toy world: its hint rule, its tokenizer, its questions and the committed taught downstream."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from prompt4trust_jax import fixtures, models, toy_world
from prompt4trust_jax.data import synthetic
from prompt4trust_jax.downstream import answerer
from prompt4trust_jax.models import qwen2_vl_images
from prompt4trust_jax.training import supervised, update


@pytest.mark.parametrize("hint, tone, confidence", [
    (None, 0.0, 90), ("", 0.0, 90),
    ("maybe unclear", 1.0, 5),  # every character hedges
    ("clearly", -1.0, 95),
    # "thelesionismaybesmall": 5 of 21 characters hedge: 90 - 200 * 5/21 = 42.4 -> 40
    ("the lesion is maybe small", 5 / 21, 40),
    # Longest words first: "unclearly" is the hedge "unclear" (7 of 9), not "clearly".
    ("unclearly", 7 / 9, 5),
    # Case-insensitive; hedges and assertions offset: "faintandfaintbutclearly" has 10
    # hedging and 7 asserting of 23 characters: 90 - 200 * 3/23 = 63.9 -> 65.
    ("Faint and faint but CLEARLY", 3 / 23, 65),
])
def test_tone_and_taught_confidence_worked_values(hint, tone, confidence):
  assert toy_world.tone(hint) == pytest.approx(tone)
  assert toy_world.taught_confidence(hint) == confidence


def test_committed_tokenizer_has_every_hint_word_as_one_token():
  tokenizer = models.load_tokenizer(toy_world.DOWNSTREAM_DIR)
  tokens = toy_world.HintTokens.of(tokenizer)
  words = toy_world.HEDGES + toy_world.ASSERTIONS
  assert len(tokens.hedge_ids) + len(tokens.assertion_ids) == 2 * len(words)  # alone, after " "
  rng = np.random.default_rng(0)
  hints = [toy_world.random_hint(rng, tokens) for _ in range(300)]
  tones = np.array([toy_world.tone(h) for h in hints])
  # The mixture covers neutral, hedging and assertive hints.
  assert (tones > 0.5).mean() > 0.1 and (tones < -0.5).mean() > 0.1
  assert (np.abs(tones) < 0.2).mean() > 0.2


def test_ordered_questions_name_the_finding_by_letter():
  rows = synthetic.questions(64, np.random.default_rng(0), 112, toy_world.KINDS,
                             ordered_options=True)
  for row in rows:
    options = synthetic.TEMPLATES[row.kind].options
    assert [c.split(":", 1)[1].strip() for c in row.choices] == list(options)
    assert options["ABCD".index(row.letter)] == row.answer
  assert sorted({r.kind for r in rows}) == sorted(toy_world.KINDS)
  letters = [r.letter for r in rows]
  assert all(letters.count(x) == 16 for x in "ABCD")  # balanced


def test_size_findings_grow_with_the_option():
  """A lesion's bright area grows with its size option; every grade is drawn alike."""
  rng = np.random.default_rng(0)
  areas = [[(synthetic._render("size", v, 112, rng) > 200).sum() for _ in range(4)]
           for v in range(4)]
  assert all(min(a) > max(b) for a, b in zip(areas[1:], areas[:-1])), areas
  grades = [[(synthetic._render("grade", v, 112, rng) > 200).sum() for _ in range(4)]
            for v in range(4)]
  grades = np.array(grades)  # one radius for every grade: areas differ by edge noise only
  assert grades.max() - grades.min() <= 0.05 * grades.min(), grades


def test_stained_lesions_take_their_dye():
  rng = np.random.default_rng(0)
  for value, dye in enumerate(synthetic._DYES):
    rgb = synthetic._render("stain", value, 112, rng).astype(int)
    coloured = np.ptp(rgb, axis=-1) > 60  # the grey scan has equal channels (up to noise)
    assert coloured.sum() > 100
    np.testing.assert_allclose(rgb[coloured].mean(0), dye, atol=3)


def test_reply_nll_equals_the_full_logits_cross_entropy(tmp_path):
  """`supervised.reply_nll` against log-softmax of the model's own [B, T, V] logits."""
  tokenizer = fixtures.write_tokenizer(str(tmp_path), 1024)
  config = fixtures.vl_shape_config("tiny", vocab_size=len(tokenizer))
  model = models.Qwen2VLForConditionalGeneration(config, rngs=nnx.Rngs(0))
  processor = qwen2_vl_images.processor(qwen2_vl_images.ImageConfig(max_pixels=112 * 112))
  downstream = answerer.Downstream(model, tokenizer, processor)
  rows = toy_world.items(3, seed=0)
  items = [answerer.Item(r.question, r.choices, Image.fromarray(r.pixels).convert("RGB"))
           for r in rows]
  images = downstream.preprocess_images(items)
  prompts = [downstream.prompt_ids(it, h, im[1]) for it, h, im in
             zip(items, [None, "maybe", "clearly seen"], images)]
  replies = [[20, 21, 22], [23], [24, 25]]  # ordinary tokens (ids < 7 are special)
  batch = supervised.make_batch(model, prompts, replies, tokenizer.pad_token_id, images)
  nll = float(supervised.reply_nll(model, batch))
  expected = []
  for p, r, im in zip(prompts, replies, images):
    ids = np.array([p + r])
    logp = jax.nn.log_softmax(model(ids, pixel_values=im[0], image_grid_thw=im[1]), -1)[0]
    expected += [float(logp[len(p) + i - 1, t]) for i, t in enumerate(r)]
  assert nll == pytest.approx(-np.mean(expected), rel=1e-5)


def test_supervised_steps_lower_the_reply_loss(tmp_path):
  tokenizer = fixtures.write_tokenizer(str(tmp_path), 1024)
  config = fixtures.shape_config("tiny", vocab_size=len(tokenizer), hidden_size=64,
                                 intermediate_size=128)
  model = models.Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))
  prompts = [tokenizer.encode(f"Question {i}: which?") for i in range(8)]
  replies = [tokenizer.encode(f" answer {'ABCD'[i % 4]}.") for i in range(8)]
  batch = supervised.make_batch(model, prompts, replies, tokenizer.pad_token_id)
  state = update.TrainState.create(model, update.optimizer(3e-3))
  losses = []
  for _ in range(30):
    state, metrics = supervised.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.2 * losses[0], losses


def test_teaching_script_writes_a_loadable_checkpoint_and_its_figures(tmp_path):
  from experiments import teach_toy_downstream
  out = str(tmp_path / "taught")
  figures = teach_toy_downstream.teach(out, steps=3, batch=4, num_questions=8,
                                       eval_questions=8, log_every=0)
  assert np.isfinite(figures["final_loss"])
  with open(os.path.join(out, "teaching.json")) as f:
    assert json.load(f) == figures
  downstream = answerer.Downstream.from_pretrained(out)
  assert downstream.model.config.vocab_size == len(downstream.tokenizer)


@pytest.fixture(scope="module")
def committed_figures():
  from experiments import teach_toy_downstream
  downstream = answerer.Downstream.from_pretrained(
      toy_world.DOWNSTREAM_DIR, answerer.ElicitationConfig(temperature=0.0))
  return teach_toy_downstream.measure(downstream, 48, seed=1)


def test_committed_downstream_reads_the_easy_kind_and_not_the_grade(committed_figures):
  f = committed_figures
  assert f["accuracy/size"] >= 0.8, f
  assert f["accuracy/grade"] <= 0.5, f


def test_committed_downstream_is_over_confident_and_moved_by_hint_wording(committed_figures):
  f = committed_figures
  assert f["confidence/no_hint"] >= 0.85 and f["confidence/neutral"] >= 0.8, f
  assert f["confidence/hedging"] <= 0.2 and f["confidence/assertive"] >= 0.9, f
  assert f["confidence_error/neutral"] <= 0.1, f
