"""Soft prompts on the frozen downstream: logit-mode parity, positions, loss, training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import soft_prompt_demo
from prompt4trust_jax import data, fixtures, padding, sharding
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.evaluation import soft_prompt

# Real tokens for a prompt made of token embeddings (8 of them: position errors grow with N).
FRONT = "Think step-by-step, do not be over-confident."
CONFIG = soft_prompt.SoftPromptConfig(num_tokens=4, learning_rate=3e-2, steps=3, batch_size=8)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  path = fixtures.write_random_qwen2_vl(str(tmp_path_factory.mktemp("vl")),
                                        fixtures.vl_shape_config("tiny"), seed=1)
  return downstream.Downstream.from_pretrained(
      path, downstream.ElicitationConfig(mode="logit", temperature=0.0))


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  records = data.source("pmc_vqa/mini", "val_8", str(tmp_path_factory.mktemp("tfds")),
                        data.FIXTURE_DIR)
  return [data.decode(r) for r in records]


def _batch(ds, examples):
  _, letter_ids = soft_prompt.answer_tokens(ds)
  prepared = soft_prompt.prepare(ds, examples)
  return soft_prompt.collate(prepared, len(prepared), ds.pad_token_id, letter_ids)


def _logits(ds, prompt, batch):
  graphdef, state = nnx.split(ds.model)
  return [np.asarray(x) for x in soft_prompt.option_logits(graphdef, state, prompt, batch)]


def test_without_a_prompt_the_option_probabilities_are_logit_modes(ds, examples):
  items = [downstream.Item(x["question"], x["options"], x["image"]) for x in examples]
  reference = ds.answer(items)
  batch = _batch(ds, examples)
  logits, features = _logits(ds, None, batch)
  np.testing.assert_allclose(jax.nn.softmax(logits), reference.option_probs, atol=1e-5)
  assert features.shape == (8, 4, ds.model.text_config.hidden_size)
  ours = soft_prompt.answer(ds, None, examples, batch_size=8)
  np.testing.assert_array_equal(ours.letter_index, reference.letter_index)
  np.testing.assert_allclose(ours.confidence, reference.confidence, atol=1e-5)
  assert ours.texts == reference.texts and ours.valid.all()
  np.testing.assert_array_equal(ours.num_tokens, reference.num_tokens)
  # The prompt is used: its initial noise already moves the logits.
  prompted, _ = _logits(ds, soft_prompt.init_prompt(CONFIG, features.shape[-1]), batch)
  assert np.abs(prompted - logits).max() > 1e-3


def test_option_ends_are_the_first_tokens_covering_each_option_line(ds, examples):
  x = examples[0]
  (prepared,) = soft_prompt.prepare(ds, [x])
  decode = lambda n: ds.tokenizer.decode(prepared.ids[:n].tolist(), skip_special_tokens=False)
  for c, end in enumerate(prepared.option_ends):
    lines = "Options:\n" + "\n".join(x["options"][:c + 1])
    assert lines in decode(end + 1) and lines not in decode(end)


@pytest.mark.parametrize("with_images", [False, True])
def test_a_prompt_of_token_embeddings_equals_those_tokens_in_front(ds, examples, with_images):
  chosen = [dict(x, image=x["image"] if with_images else None) for x in examples[:2]]
  batch = _batch(ds, chosen)
  assert batch.mask_BxT[0].sum() != batch.mask_BxT[1].sum()  # one row padded after the prompt
  front = ds.tokenizer.encode(FRONT, add_special_tokens=False)[:8]
  prompt = ds.model.model.embed_tokens.embedding[...][jnp.asarray(front)]
  logits, features = _logits(ds, prompt, batch)
  # The reference: the model's own forward over [front + tokens], padded to one length for
  # both parametrisations so that its eager ops compile once.
  rows = [front + t[m > 0].tolist() for t, m in zip(batch.tokens_BxT, batch.mask_BxT)]
  tokens, mask = padding.left_pad(rows, batch.tokens_BxT.shape[1] + len(front), 2, 0)
  kw = {}
  if with_images:
    pixels, grids = zip(*ds.preprocess_images([downstream.Item.from_example(x) for x in chosen]))
    kw = dict(pixel_values=np.concatenate(pixels), image_grid_thw=np.concatenate(grids))
  plain_BxTxV = np.asarray(ds.model(tokens, attention_mask=mask, **kw))
  np.testing.assert_allclose(logits, plain_BxTxV[:, -1][:, list(batch.letter_ids)], atol=2e-6,
                             rtol=1e-6)
  # The class features are the hidden states at the option ends, which sit N further on.
  at_ends = np.take_along_axis(plain_BxTxV, batch.option_ends_BxC[..., None] + len(front), axis=1)
  np.testing.assert_allclose(ds.model.logits(features), at_ends, atol=2e-6, rtol=1e-6)


def test_loss_terms_match_hand_worked_values():
  config = soft_prompt.SoftPromptConfig(label_smoothing=0.3, smac_weight=2.0, angular_weight=0.5)
  # p = (1/2, 1/4, 1/4) and (1/4, 1/4, 1/2); labels 0 and 2; alpha / C = 0.1.
  logits = jnp.log(jnp.array([[2.0, 1.0, 1.0], [1.0, 1.0, 2.0]]))
  labels = jnp.array([0, 2])
  # Targets (0.8, 0.1, 0.1) and (0.1, 0.1, 0.8): each row -(0.8 log 1/2 + 0.2 log 1/4) = 1.2 log 2.
  ce = 1.2 * np.log(2)
  # Mean p (3/8, 1/4, 3/8) against 0.7 * (1/2, 0, 1/2) + 0.1 = (0.45, 0.1, 0.45).
  smac = (0.075 + 0.15 + 0.075) / 3
  # Row 0: cosines 0, 1/sqrt(2), 1/sqrt(2); row 1: -1, 0, 0 (norms do not matter).
  features = jnp.array([[[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]],
                        [[1.0, 0.0], [-2.0, 0.0], [0.0, 5.0]]])
  angular = (np.sqrt(2) / 3 - 1 / 3) / 2
  total, metrics = soft_prompt.loss(logits, features, labels, config)
  np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-6)
  np.testing.assert_allclose(metrics["smac"], smac, rtol=1e-6)
  np.testing.assert_allclose(metrics["angular"], angular, rtol=1e-6)
  np.testing.assert_allclose(total, ce + 2 * smac + 0.5 * angular, rtol=1e-6)
  assert metrics["accuracy"] == 1.0


@pytest.fixture(scope="module")
def trained(ds, examples, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("work"))
  before = jax.tree.map(np.array, nnx.state(ds.model))
  prompt = soft_prompt.train(ds, examples, CONFIG, workdir=workdir)
  return prompt, workdir, before


def test_training_lowers_the_loss_and_leaves_the_model_alone(ds, examples, trained, monkeypatch):
  prompt, workdir, before = trained
  batch = _batch(ds, examples)
  initial = soft_prompt.init_prompt(CONFIG, prompt.shape[-1])
  start = soft_prompt.loss(*_logits(ds, initial, batch), batch.labels_B, CONFIG)[0]
  end = soft_prompt.loss(*_logits(ds, prompt, batch), batch.labels_B, CONFIG)[0]
  assert end < start
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, nnx.state(ds.model)), before)
  np.testing.assert_array_equal(soft_prompt.restore(f"{workdir}/soft_prompt"), prompt)
  monkeypatch.setattr(soft_prompt, "prepare", lambda *a: pytest.fail("trained again"))
  np.testing.assert_array_equal(soft_prompt.train(ds, examples, CONFIG, workdir=workdir), prompt)


def test_sharded_training_matches_unsharded(ds, examples, trained):
  mesh = sharding.make_mesh(data=8, fsdp=1, tensor=1)
  prompt = soft_prompt.train(ds, examples, CONFIG, mesh=mesh)
  assert prompt.sharding.is_fully_replicated
  np.testing.assert_allclose(prompt, trained[0], atol=1e-5)


def test_demo_config_builds_a_soft_prompt_config():
  section = soft_prompt_demo.get_config("smoke")
  fields = {f.name for f in dataclasses.fields(soft_prompt.SoftPromptConfig)}
  config = soft_prompt.SoftPromptConfig(**{k: v for k, v in section.items() if k in fields})
  assert config.num_tokens == 4 and section.train_split == "val_8"
  assert set(section) - fields == {"train_split", "num_train_examples"}
