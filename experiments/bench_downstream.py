"""Downstream answering throughput: 8 images x G=8 hints per step (optionally vs transformers).

  python -m experiments.bench_downstream --shape=small --compare_hf

Shape `small`: the text model of bench_sampler's `small`, a vision tower of depth 4,
width 256, 4 heads, patch 14, merge 2; random weights; 224x224 images. Each mode
answers every (image, hint) pair; the first (compiling) call is excluded. Ours
encodes each image once and forks the shared prefix; transformers runs the same
prompts as one padded `generate` batch (structured mode through
`prefix_allowed_tokens_fn` on the same choice trie). `answers_per_s=` comes last.
"""

import tempfile

import jax
import numpy as np
from absl import app, flags
from PIL import Image

from experiments import timing
from prompt4trust_jax import fixtures
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.models import qwen2_vl_images

_SHAPE = flags.DEFINE_enum("shape", "small", ["tiny", "small"], "Model shape.")
_IMAGES = flags.DEFINE_integer("images", 8, "Questions (one image each) per step.")
_HINTS = flags.DEFINE_integer("hints", 8, "Hints (answers) per question, G.")
_MODES = flags.DEFINE_list("modes", ["verbalized", "structured"], "Elicitation modes to time.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Verbalized answer budget.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Square image side in pixels.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls (the median is reported).")
_COMPARE_HF = flags.DEFINE_bool("compare_hf", False, "Also time transformers on the same work.")

OPTIONS = ("A:CT scan", "B:MRI", "C:X-ray", "D:Ultrasound")


def _work():
  rng = np.random.default_rng(0)
  side = _SIZE.value
  items = [downstream.Item(f"Question {i}: what does the image show?", OPTIONS,
                           Image.fromarray(rng.integers(0, 255, (side, side, 3), np.uint8)))
           for i in range(_IMAGES.value)]
  hints = [[f"Hint {g} for question {i}: look at the contrast and the borders."
            for g in range(_HINTS.value)] for i in range(_IMAGES.value)]
  return items, hints


def _hf_answers_per_s(path, ds, items, hints, mode):
  import torch  # test/benchmark dependency only
  import transformers
  model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
  rows, pixels, grids = [], [], []
  for item, row in zip(items, hints):
    pv, grid = ds.preprocess_images([item])[0]
    for hint in row:
      rows.append(ds.prompt_ids(item, hint, grid))
      pixels.append(pv)
      grids.append(grid)
  width = max(map(len, rows))
  ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
  mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
  kwargs = dict(input_ids=ids, attention_mask=mask,
                pixel_values=torch.as_tensor(np.concatenate(pixels)),
                image_grid_thw=torch.as_tensor(np.concatenate(grids)),
                mm_token_type_ids=(ids == model.config.image_token_id).long(), do_sample=True,
                temperature=0.1, top_p=0.95, pad_token_id=ds.pad_token_id)
  if mode == "structured":
    trie = ds.trie
    child_token, child_node = np.asarray(trie.child_token), np.asarray(trie.child_node)

    def allowed(batch_id, generated):
      node = 0
      for token in generated[width:].tolist():
        if (child_token[node] < 0).all():  # a finished answer pads
          break
        node = child_node[node][list(child_token[node]).index(token)]
      return [int(t) for t in child_token[node] if t >= 0] or [ds.pad_token_id]

    kwargs.update(max_new_tokens=trie.max_depth, prefix_allowed_tokens_fn=allowed)
  else:
    kwargs.update(max_new_tokens=_MAX_NEW.value, eos_token_id=list(ds.eos_token_ids))

  def run():
    with torch.no_grad():
      model.generate(**kwargs)

  return len(rows) / timing.median_seconds(run, _REPEATS.value)


def main(argv):
  del argv
  timing.setup_host()
  path = tempfile.mkdtemp()
  image_config = qwen2_vl_images.ImageConfig(max_pixels=_SIZE.value**2)
  fixtures.write_random_qwen2_vl(path, fixtures.vl_shape_config(_SHAPE.value),
                                 image_config=image_config)
  items, hints = _work()
  answers = len(items) * len(hints[0])
  results = []
  for mode in _MODES.value:
    ds = downstream.Downstream.from_pretrained(
        path, downstream.ElicitationConfig(mode=mode, max_new_tokens=_MAX_NEW.value))
    keys = iter(jax.random.split(jax.random.key(0), _REPEATS.value + 1))
    seconds = timing.median_seconds(lambda: ds.answer(items, hints, next(keys)), _REPEATS.value)
    line = f"mode={mode} answers={answers} seconds={seconds:.2f} answers_per_s={answers / seconds:.1f}"
    if _COMPARE_HF.value:
      hf = _hf_answers_per_s(path, ds, items, hints, mode)
      line += f" hf_answers_per_s={hf:.1f} speedup={answers / seconds / hf:.2f}"
    print(line)
    results.append(answers / seconds)
  print(f"device={jax.devices()[0].device_kind} shape={_SHAPE.value} images={_IMAGES.value} "
        f"hints={_HINTS.value} image_size={_SIZE.value}")
  print(f"answers_per_s={min(results):.1f}")


if __name__ == "__main__":
  app.run(main)
