"""Tiny random checkpoints in the hub's exact layout, made offline and without torch.

The embedded demo, the benchmarks and the tests use them: a byte-level BPE tokenizer
with Qwen's special tokens and ChatML chat template, trained on a few sentences, and
a randomly initialised model exported through the same code path as a trained one.
"""

import json
import os
import shutil
from collections.abc import Sequence

from flax import nnx
import tokenizers
from tokenizers import decoders, models as tok_models, pre_tokenizers, trainers
import transformers

from prompt4trust_jax import hosts
from prompt4trust_jax.data import synthetic
from prompt4trust_jax.models import checkpoint
from prompt4trust_jax.models import qwen2
from prompt4trust_jax.models import qwen2_vl
from prompt4trust_jax.models import qwen2_vl_images
from prompt4trust_jax.models import vision

# Benchmark shapes (issue #2), tied embeddings.
SHAPES = {
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=352, num_layers=2,
                 num_heads=4, num_kv_heads=2),
    "small": dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8,
                  num_heads=8, num_kv_heads=2),
}

# Vision towers for the downstream benchmark shapes (issue #3); text as in SHAPES.
VISION_SHAPES = {
    "tiny": dict(depth=2, width=32, num_heads=4, mlp_hidden=64),
    "small": dict(depth=4, width=256, num_heads=4, mlp_hidden=1024),
}

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# Qwen's ChatML layout (system turn omitted); image parts render as Qwen2-VL's do.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

_CORPUS = (
    "You are answering a multiple-choice question with four options (A, B, C, or D).",
    "In conclusion, the answer is B with confidence 80.",
    "Question: What imaging modality was used to acquire this image?",
    "Options: A: CT scan B: MRI C: X-ray D: Ultrasound",
    "Hint: Look at the contrast between soft tissue and bone before deciding.",
    "The lesion is hyperintense on T2-weighted images and shows peripheral enhancement.",
    "Think step-by-step, do not be over-confident.",
)


def shape_config(name: str, **overrides) -> qwen2.Qwen2Config:
  if name not in SHAPES:
    raise ValueError(f"Unknown shape {name!r}; choose from {sorted(SHAPES)}.")
  return qwen2.Qwen2Config(**{**SHAPES[name], "tie_word_embeddings": True, **overrides})


def write_tokenizer(out_dir: str, vocab_size: int, corpus: Sequence[str] = _CORPUS * 4
                    ) -> transformers.PreTrainedTokenizerFast:
  """Trains and saves a small byte-level BPE tokenizer on `corpus` whose ids fit `vocab_size`
  (at most 1,024)."""
  tok = tokenizers.Tokenizer(tok_models.BPE())
  # Digits split one by one, as Qwen's pre-tokenizer does (confidences are digit tokens).
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, 1024), special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(corpus, trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      chat_template=CHAT_TEMPLATE)
  fast.save_pretrained(out_dir)
  return fast


def write_random_qwen2(out_dir: str, config: qwen2.Qwen2Config, seed: int = 0,
                       vocab_from_tokenizer: bool = False, tokenizer_dir: str | None = None
                       ) -> str:
  """A random Qwen2 checkpoint + tokenizer in hub layout at `out_dir`; returns it.

  `vocab_from_tokenizer`: the model's vocabulary is the tokenizer's (a few hundred ids), so
  every id it samples decodes to text (the demos' policy; benchmark shapes keep theirs).
  `tokenizer_dir`: a checkpoint directory whose tokenizer is copied (default: a new
  `write_tokenizer`).
  """
  if tokenizer_dir:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(out_dir)
  else:
    tokenizer = write_tokenizer(out_dir, config.vocab_size)
  if vocab_from_tokenizer:
    config = qwen2.Qwen2Config(**{**config.__dict__, "vocab_size": len(tokenizer)})
  model = qwen2.Qwen2ForCausalLM(config, rngs=nnx.Rngs(seed))
  checkpoint.export_hf(model, out_dir)
  write_special_token_ids(out_dir, tokenizer)
  return out_dir


def write_special_token_ids(out_dir: str, tokenizer) -> None:
  """Adds the tokenizer's `bos_token_id` / `eos_token_id` to `out_dir`/config.json, as the
  hub's Qwen checkpoints carry them (<|endoftext|>, <|im_end|>); without them transformers
  assumes Qwen's full-vocabulary ids and warns on every load of a small vocabulary."""
  path = os.path.join(out_dir, "config.json")
  with open(path) as f:
    config = json.load(f)
  vocab = tokenizer.get_vocab()
  config.update(bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"])
  with open(path, "w") as f:
    json.dump(config, f, indent=2)


def vl_shape_config(name: str, qwen2_5: bool = False, vocab_size: int | None = None,
                    **dtypes) -> qwen2_vl.Qwen2VLConfig:
  """A Qwen2-VL (or Qwen2.5-VL) of a named shape whose special ids match `write_tokenizer`
  (`vocab_size`: the shape's unless given)."""
  text = shape_config(name, **dtypes, **({} if vocab_size is None else {"vocab_size": vocab_size}))
  half = text.head_dim // 2  # split like Qwen's (16, 24, 24) of 64
  section = (half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8)
  text = qwen2.Qwen2Config(**{**text.__dict__, "mrope_section": section})
  extra = dict(qwen2_5=True, window_size=112, fullatt_block_indexes=(1,)) if qwen2_5 else {}
  vis = vision.VisionConfig(**VISION_SHAPES[name], out_dim=text.hidden_size, **extra, **dtypes)
  ids = {name: SPECIAL_TOKENS.index(token) for name, token in (
      ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
      ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}
  return qwen2_vl.Qwen2VLConfig(text, vis, model_type="qwen2_5_vl" if qwen2_5 else "qwen2_vl",
                                **ids)


def write_random_qwen2_vl(
    out_dir: str, config: qwen2_vl.Qwen2VLConfig, seed: int = 0,
    image_config: qwen2_vl_images.ImageConfig = qwen2_vl_images.ImageConfig(max_pixels=224 * 224)
) -> str:
  """A random Qwen2-VL checkpoint + tokenizer + image processor in hub layout at `out_dir`."""
  model = qwen2_vl.Qwen2VLForConditionalGeneration(config, rngs=nnx.Rngs(seed))
  checkpoint.export_hf(model, out_dir)
  write_special_token_ids(out_dir, write_tokenizer(out_dir, config.vocab_size))
  qwen2_vl_images.processor(image_config).save_pretrained(out_dir)
  return out_dir


def with_demo_inputs(config, workdir: str):
  """`config` (a copy) with what the embedded demos make on the fly, once per workdir:

  - every unset model path (`policy.path`, `downstream.path`): a random checkpoint of its
    section's `random_shape` under `<workdir>/random_models/` (the policy's under
    `policy.train_workdir` when an evaluation names one: the base its training started
    from), the policy's over `policy.random_tokenizer`'s tokenizer when that is set;
  - `data.manual_dir` unset and `data.synthetic` set: the synthetic PMC-VQA copy those
    `synthetic.write_pmc_vqa` arguments describe, under `<workdir>/synthetic_data/`.

  What the launchers call before training or evaluating; the loop and the harness only read
  paths."""
  config = config.copy_and_resolve_references()
  p, d = config.policy, config.downstream
  seed = config.seed

  def made(out: str, write, marker: str = "config.json") -> str:
    def make():  # process 0 of a multi-host run writes it, the others wait and read
      if not os.path.exists(os.path.join(out, marker)):
        write(out)
    hosts.prepared_once(make, out)
    return out

  if not p.path:
    p.path = made(os.path.join(p.get("train_workdir") or workdir, "random_models",
                               f"qwen2_{p.random_shape}"),
                  lambda out: write_random_qwen2(out, shape_config(p.random_shape), seed,
                                                 vocab_from_tokenizer=True,
                                                 tokenizer_dir=p.get("random_tokenizer") or None))
  if not d.path:
    d.path = made(os.path.join(workdir, "random_models", f"qwen2_vl_{d.random_shape}"),
                  lambda out: write_random_qwen2_vl(out, vl_shape_config(d.random_shape), seed))
  described = config.data.get("synthetic")
  if not config.data.get("manual_dir") and described:
    args = dict(described)
    args["kinds"] = tuple(args.get("kinds", synthetic.DEFAULT_KINDS))
    def write(out: str):  # whole or not at all: train.csv is written before the images
      partial = out + ".partial"
      shutil.rmtree(partial, ignore_errors=True)
      synthetic.write_pmc_vqa(partial, **args)
      shutil.rmtree(out, ignore_errors=True)  # an incomplete copy (no train.csv)
      os.replace(partial, out)

    config.data.manual_dir = made(os.path.join(workdir, "synthetic_data"), write, "train.csv")
  return config
