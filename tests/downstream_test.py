"""The downstream answerer: three elicitation modes, prefix sharing, early stopping."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from prompt4trust_jax import fixtures, models
from prompt4trust_jax.downstream import images, parsing
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.models import qwen2_vl
from prompt4trust_jax.policy import sampling

OPTIONS = ("A:CT scan", "B:MRI", "C:X-ray", "D:Ultrasound")


def _image(w, h, seed):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8))


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
  return fixtures.write_random_qwen2_vl(str(tmp_path_factory.mktemp("vl")),
                                        fixtures.vl_shape_config("tiny"), seed=1)


@pytest.fixture(scope="module")
def items():
  return [downstream.Item("What imaging modality is shown?", OPTIONS, _image(120, 90, 0)),
          downstream.Item("Which finding is present?", OPTIONS, _image(64, 160, 1))]


HINTS = [["Look at bone contrast.", "Consider soft tissue.", "Check the edges.", "Think."]] * 2


def _answers(path, items, hints=HINTS, rng=jax.random.key(0), **config):
  ds = downstream.Downstream.from_pretrained(path, downstream.ElicitationConfig(**config))
  return ds, ds.answer(items, hints, rng)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_structured_mode_is_always_valid(vl_dir, items, temperature):
  _, out = _answers(vl_dir, items, mode="structured", temperature=temperature)
  assert out.valid.all() and len(out.texts) == 8
  assert ((out.confidence >= 0) & (out.confidence <= 1)).all()
  for text, letter, confidence in zip(out.texts, out.letters(), out.confidence):
    assert text == f"In conclusion, the answer is {letter} with confidence {round(confidence * 100)}."
  np.testing.assert_allclose(out.option_probs.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("mode,temperature", [("structured", 0.0), ("structured", 1.0),
                                              ("logit", 0.0), ("verbalized", 0.0)])
def test_shared_prefix_and_one_image_encoding_match_the_naive_path(vl_dir, items, mode,
                                                                   temperature, monkeypatch):
  encoded = []
  original = qwen2_vl.Qwen2VLForConditionalGeneration.multimodal_inputs

  def counting(self, ids, mask, pixels, grid):
    encoded.append(len(grid))
    return original(self, ids, mask, pixels, grid)

  monkeypatch.setattr(qwen2_vl.Qwen2VLForConditionalGeneration, "multimodal_inputs", counting)
  kw = dict(mode=mode, temperature=temperature, max_new_tokens=12)
  _, shared = _answers(vl_dir, items, share_prefix=True, **kw)
  _, naive = _answers(vl_dir, items, share_prefix=False, **kw)
  assert encoded == [2, 8]  # each image once per batch vs once per response
  assert shared.texts == naive.texts
  np.testing.assert_array_equal(shared.letter_index, naive.letter_index)
  np.testing.assert_allclose(shared.confidence, naive.confidence, atol=1e-5)


def test_verbalized_cache_growth_matches_a_full_cache(vl_dir, items, monkeypatch):
  kw = dict(mode="verbalized", temperature=0.0, max_new_tokens=40, check_every=4)
  monkeypatch.setattr(sampling, "GROW_SLOTS", 8)  # extended every other chunk
  extended = []
  extend = sampling.extend
  monkeypatch.setattr(sampling, "extend", lambda state, n: extended.append(n) or extend(state, n))
  _, grown = _answers(vl_dir, items, **kw)
  assert len(extended) >= 3 and extended == sorted(extended)
  extended.clear()
  monkeypatch.setattr(sampling, "GROW_SLOTS", 10**6)  # the whole budget from the start
  _, full = _answers(vl_dir, items, **kw)
  assert not extended
  assert grown.texts == full.texts
  np.testing.assert_array_equal(grown.num_tokens, full.num_tokens)


def test_logit_mode_reads_the_letter_probabilities(vl_dir, items):
  ds, out = _answers(vl_dir, items[:1], hints=[["Look at bone contrast."]], mode="logit",
                     temperature=0.0)
  tok, model = ds.tokenizer, ds.model
  pixels, grid = ds.preprocess_images(items[:1])[0]
  prompt = ds.prompt_ids(items[0], "Look at bone contrast.", grid)
  forced = tok.encode("In conclusion, the answer is A", add_special_tokens=False)[:-1]
  letter_ids = [tok.encode(f"In conclusion, the answer is {l}", add_special_tokens=False)[-1]
                for l in "ABCD"]
  logits = np.asarray(model(input_ids=np.array([prompt + forced]), pixel_values=pixels,
                            image_grid_thw=grid))[0, -1]
  p = np.exp(logits[letter_ids] - logits[letter_ids].max())
  np.testing.assert_allclose(out.option_probs[0], p / p.sum(), atol=1e-5)
  assert out.letter_index[0] == np.argmax(p) and np.isclose(out.confidence[0], p.max() / p.sum())
  _, hot = _answers(vl_dir, items[:1], hints=[["Look at bone contrast."]], mode="logit",
                    temperature=0.0, logit_temperature=2.0)
  q = np.sqrt(p / p.sum())
  np.testing.assert_allclose(hot.option_probs[0], q / q.sum(), atol=1e-5)


@dataclasses.dataclass(frozen=True)
class _VocabConfig:
  vocab_size: int


class ScriptedLM(nnx.Module):
  """A fake decoder LM (`protocol.DecoderModel`) that emits `script` after a prompt of
  `prompt_length` tokens."""

  def __init__(self, script, prompt_length, vocab_size, eos):
    self.config = self.text_config = _VocabConfig(vocab_size)
    table = np.full(prompt_length + len(script) + 600, eos, np.int32)
    table[prompt_length - 1:prompt_length - 1 + len(script)] = script
    self.table = nnx.Variable(jnp.asarray(table))  # next token by position

  def embed(self, tokens_BxT, image_embeds=None):
    return jnp.zeros((*tokens_BxT.shape, 1), jnp.float32)

  def positions(self, attention_mask_BxT):
    return jnp.maximum(jnp.cumsum(attention_mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)

  def step(self, x_BxTxD, positions_BxT, mask, cache, cache_index):
    return positions_BxT[..., None].astype(jnp.float32), cache

  def lm_head_kernel(self):
    return jnp.zeros((1, 1))

  def tied_embedding(self):
    return None

  def logits(self, h, head=None):
    next_token = self.table[...][h[..., 0].astype(jnp.int32)]
    return jax.nn.one_hot(next_token, self.config.vocab_size) * 40.0

  def init_cache(self, batch, length):
    return ()


def _scripted(tiny_dir, text, check_every, max_new_tokens=128):
  tok = models.load_tokenizer(tiny_dir)
  item = downstream.Item("What imaging modality is shown?", OPTIONS)
  config = downstream.ElicitationConfig(mode="verbalized", temperature=0.0,
                                        check_every=check_every, max_new_tokens=max_new_tokens)
  probe = downstream.Downstream(ScriptedLM([0], 1, 4096, 0), tok, None, config)
  prompt = probe.prompt_ids(item, None, None)
  script = tok.encode(text, add_special_tokens=False)
  eos = tok.convert_tokens_to_ids("<|im_end|>")
  ds = downstream.Downstream(ScriptedLM(script, len(prompt), 4096, eos), tok, None, config)
  return script, ds.answer([item])


TEXT = ("In conclusion, the answer is B with confidence 75. The image shows a dense region in the "
        "lower lobe, which is typical of a consolidation on a plain radiograph of the chest.")


def test_verbalized_parses_and_stops_early(tiny_dir):
  script, out = _scripted(tiny_dir, TEXT, check_every=4)
  assert out.valid[0] and out.letters()[0] == "B" and out.confidence[0] == pytest.approx(0.75)
  # Through "75." the parse is complete; the host checks after 1, 5, 9, 13, ... tokens.
  complete = next(n for n in range(1, len(script)) if parsing.parse(
      models.load_tokenizer(tiny_dir).decode(script[:n])).valid) + 1
  assert complete <= out.num_tokens[0] < complete + 4 < len(script)
  _, full = _scripted(tiny_dir, TEXT, check_every=128)
  assert full.num_tokens[0] == len(script) + 1  # ran to EOS
  assert parsing.parse(full.texts[0]) == parsing.parse(out.texts[0])


def test_verbalized_waits_for_a_number_to_end(tiny_dir):
  tok = models.load_tokenizer(tiny_dir)
  text = TEXT.replace("75", "100")
  script = tok.encode(text, add_special_tokens=False)
  # A chunk ending inside the number ("confidence 1", "confidence 10") must not stop the row.
  cuts = [cut for cut in range(1, len(script) + 1)
          if tok.decode(script[:cut]).rstrip()[-1:].isdigit()]
  assert cuts
  for cut in cuts:
    _, out = _scripted(tiny_dir, text, check_every=cut)
    assert out.confidence[0] == pytest.approx(1.0), cut


def test_verbalized_flags_unparseable_responses(tiny_dir):
  _, out = _scripted(tiny_dir, "The answer is probably B, I am fairly sure.", check_every=4)
  assert not out.valid[0] and out.letters()[0] is None
  assert out.texts[0].startswith("The answer is probably B")


def test_bad_inputs_are_named(vl_dir, items, tmp_path):
  ds = downstream.Downstream.from_pretrained(vl_dir)
  with pytest.raises(ValueError, match="same number"):
    ds.answer(items, [["a", "b"], ["c"]])
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"\x89PNG not really")
  with pytest.raises(images.ImageError, match="broken.png"):
    ds.answer([downstream.Item("q?", OPTIONS, str(bad))])
  with pytest.raises(images.ImageError, match="1x1"):
    ds.answer([downstream.Item("q?", OPTIONS, Image.new("RGB", (1, 1)))], rng=jax.random.key(0))
  with pytest.raises(ValueError, match="Unknown elicitation mode"):
    downstream.ElicitationConfig(mode="vibes")


def test_grayscale_and_rgba_images_are_converted(vl_dir):
  ds = downstream.Downstream.from_pretrained(vl_dir, downstream.ElicitationConfig(temperature=0))
  rgb = _image(80, 60, 3)
  gray, rgba = rgb.convert("L"), rgb.convert("RGBA")
  out = ds.answer([downstream.Item("q?", OPTIONS, im) for im in (rgb, gray, rgba, gray.convert("RGB"))])
  assert out.valid.all()
  assert out.texts[1] == out.texts[3]  # grayscale is replicated to three channels
  assert out.texts[2] == out.texts[0]  # opaque RGBA is the RGB image
