"""The frozen downstream MLLM answering multiple-choice questions with a confidence.

One interface, three elicitation modes (`ElicitationConfig.mode`):
- `verbalized`: free generation read by a named parser (the paper's regexes by
  default); a response that does not parse is flagged invalid. Decoding of a row
  stops once its answer and confidence are known: the host parses every
  `check_every` tokens (one round trip per chunk, never per token).
- `structured`: constrained decoding of "In conclusion, the answer is {A-D} with
  confidence {0-100}." through a `ChoiceTrie`, sampled (or argmaxed) from the model's
  own distribution restricted to the allowed tokens: every response is valid.
- `logit`: decode "In conclusion, the answer is {A-D}" and read the probability of
  each option letter at that position; confidence = the chosen letter's probability
  (renormalised over the letters, optionally temperature scaled).

For G hints per question the image is encoded once and the shared prefix (image,
instruction, question, options) prefilled once; the G rows then attend to its cache
as a shared prefix (`sampling.share`) and only the hints are prefilled per row
(`share_prefix=False` is the naive path).

The model is any `models.protocol.DecoderModel` (`MultimodalModel` for images); its family's
image processor comes from the registry (`models.families`), so no family is named here.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt4trust_jax import config_sections, hosts, padding, prompts, sharding
from prompt4trust_jax.downstream import constraints, images, parsing
from prompt4trust_jax.models import families, generation_config
from prompt4trust_jax.models import tokenizer as tokenizer_lib
from prompt4trust_jax.models.protocol import DecoderModel, MultimodalModel
from prompt4trust_jax.policy import head_layout, sampling

MODES = ("verbalized", "structured", "logit")


@dataclasses.dataclass(frozen=True)
class ElicitationConfig:
  mode: str = "structured"
  parser: str = "paper"  # verbalized mode
  max_new_tokens: int = 256  # verbalized mode
  temperature: float = 0.1  # 0: greedy
  top_p: float = 0.95
  top_k: int = 0
  repetition_penalty: float = 1.0  # over prompt and generated tokens (HF / vLLM semantics)
  check_every: int = 16  # verbalized: tokens between parse checks
  share_prefix: bool = True
  logit_temperature: float = 1.0  # temperature scaling of option probabilities
  letters: str = parsing.LETTERS
  preset: str = "clean"  # `prompts.preset`: wording and text handling
  instruction: str | None = None  # None: the preset's downstream instruction
  image_first: bool = True  # image before the text in the user turn (CSC puts it after)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"Unknown elicitation mode {self.mode!r}; choose from {MODES}.")
    parsing.get_parser(self.parser)
    prompts.preset(self.preset)
    if self.check_every < 1 or self.max_new_tokens < 1 or self.logit_temperature <= 0:
      raise ValueError("check_every, max_new_tokens and logit_temperature must be positive.")
    sampling.check_repetition_penalty(self.repetition_penalty)


def elicitation_config(section, path: str | None = None, **overrides) -> ElicitationConfig:
  """An `ElicitationConfig` from a config's `downstream` section and `overrides`.

  Keys named like the dataclass's fields are taken (None or "" keeps its default). Unset
  sampling fields (None) come from `path`'s generation_config.json when the section's
  `sampling_defaults` is "generation_config" (what vLLM did for the original), else from the
  neutral defaults (`models.generation_config`).
  """
  settings = config_sections.settings_for(ElicitationConfig, section, **overrides)
  settings = generation_config.resolve(settings, path, section.get("sampling_defaults", "neutral"))
  return config_sections.to_dataclass(ElicitationConfig, settings)


@dataclasses.dataclass(frozen=True)
class Item:
  """One multiple-choice question; `image` is a PIL image, a path or encoded bytes (or None)."""
  question: str
  options: tuple[str, ...]
  image: Any = None

  @classmethod
  def from_example(cls, example: dict) -> "Item":
    """A data set example's question, options and image (if any)."""
    return cls(example["question"], tuple(example["options"]), example.get("image"))


class Answers(NamedTuple):
  """Per response (item-major, G per item): letter index (-1 invalid), confidence in [0, 1]."""
  letter_index: np.ndarray
  confidence: np.ndarray
  valid: np.ndarray
  texts: list[str]
  option_probs: np.ndarray | None  # [B, letters], rows sum to 1 (structured, logit)
  num_tokens: np.ndarray

  def letters(self, letters: str = parsing.LETTERS) -> list[str | None]:
    return [letters[i] if i >= 0 else None for i in self.letter_index]


class Downstream:
  """A frozen (M)LLM that answers `Item`s under the configured elicitation mode."""

  def __init__(self, model: DecoderModel, tokenizer, image_processor=None,
               config: ElicitationConfig = ElicitationConfig(), mesh=None):
    """`image_processor`: what the model family's `processor_from_pretrained` returns
    (`models.families`), or None for a model without images. With a `mesh` the items'
    rows and images are split over its batch axes (`sharding.batch_devices`), the
    weights whole on each of those devices (`sharding.sampling_rules`)."""
    self.model, self.tokenizer, self.config = model, tokenizer, config
    self.image_processor, self.mesh = image_processor, mesh
    self.eos_token_ids = tuple(tokenizer_lib.stop_token_ids(tokenizer))
    self.pad_token_id = tokenizer.pad_token_id or 0
    self.trie = self.branch_letters = None
    if config.mode != "verbalized":
      if config.mode == "structured":
        completions = constraints.structured_answer_completions(config.letters)
      else:
        completions = constraints.answer_letter_completions(config.letters)
      self.trie = constraints.build_trie(tokenizer, completions)
      self.branch_letters = _branch_letters(self.trie, [c.split(" is ")[1][0] for c in completions],
                                            config.letters)

  @property
  def image_processing(self):
    """The model family's image processing (`protocol.ImageProcessing`), or None."""
    return families.of(self.model).images if isinstance(self.model, MultimodalModel) else None

  @classmethod
  def from_pretrained(cls, path: str, config: ElicitationConfig = ElicitationConfig(),
                      dtype: str = "float32", mesh=None, min_pixels=None, max_pixels=None):
    from prompt4trust_jax import models
    # Frozen and only sampled: kept in the sampling layout (no per-token fsdp gathers).
    model = models.from_pretrained(path, dtype=dtype, mesh=mesh,
                                   rules=sharding.sampling_rules())
    processing = families.of(model).images
    processor = None
    if processing is not None:
      processor = processing.processor_from_pretrained(path, min_pixels, max_pixels)
    return cls(model, models.load_tokenizer(path), processor, config, mesh)

  def with_config(self, config: ElicitationConfig) -> "Downstream":
    """The same model, tokenizer and image processor (shared, not copied) under `config`."""
    return Downstream(self.model, self.tokenizer, self.image_processor, config, self.mesh)

  def answer(self, items: Sequence[Item], hints: Sequence[Sequence[str | None]] | None = None,
             rng: jax.Array | None = None) -> Answers:
    """Answers each item once per hint (`hints[i]` holds item i's G hints; None: no hint)."""
    hints = [[None] for _ in items] if hints is None else [list(h) for h in hints]
    if len(hints) != len(items) or len({len(h) for h in hints}) != 1 or not hints[0]:
      raise ValueError(f"hints must hold the same number (>= 1) of hints for each of the "
                       f"{len(items)} items, got {[len(h) for h in hints]}.")
    with sharding.using(self.mesh):
      return self._answer(items, hints, rng)

  def _answer(self, items, hints, rng) -> Answers:
    cfg = self.config
    G = len(hints[0])
    per_item = self.preprocess_images(items)
    if rng is None:
      if cfg.temperature > 0:
        raise ValueError("Sampling the downstream at temperature > 0 needs rng.")
      rng = jax.random.key(0)
    grids = [None if im is None else im[1] for im in per_item]
    whole = [[self.prompt_ids(item, hint, grid) for hint in row]
             for item, row, grid in zip(items, hints, grids)]
    image_id = self.model.image_token_id if isinstance(self.model, MultimodalModel) else None
    split = [_shared_split(rows, image_id if grid is not None else None)
             for rows, grid in zip(whole, grids)]
    if cfg.share_prefix and all(s is not None for s in split):
      prefixes = [prefix for prefix, _ in split]
      suffixes = [suffix for _, row in split for suffix in row]
      copies, image_rows = G, list(range(len(items)))
      if not any(suffixes):  # every row's prompt is its item's whole prompt
        suffixes = None
    else:  # the naive path: every response prefills its whole prompt and its image
      prefixes = [ids for row in whole for ids in row]
      suffixes, copies = None, 1
      image_rows = [i for i in range(len(items)) for _ in range(G)]
    state = self._start(prefixes, suffixes, copies, per_item, image_rows, rng)
    state = self._finish(state, rng)
    return self._read(state, len(items) * G)

  # -- host-side preparation ---------------------------------------------------------

  def preprocess_images(self, items) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per item: `(pixel_values, image_grid)` of its image (the family's processor), or None."""
    loaded = [None if it.image is None else images.load_image(it.image) for it in items]
    if all(im is None for im in loaded):
      return [None] * len(items)
    processing = self.image_processing
    if self.image_processor is None or processing is None:
      raise ValueError("Items carry images but this downstream model takes none.")
    if any(im is None for im in loaded):
      raise ValueError("Either every item or no item must carry an image.")
    return [processing.preprocess([im], self.image_processor) for im in loaded]

  def prompt_text(self, item: Item, hint: str | None, with_image: bool) -> str:
    """The chat-rendered prompt of `item` (image placeholder unexpanded)."""
    cfg = self.config
    text = prompts.preset(cfg.preset).downstream(item.question, item.options, hint,
                                                 cfg.instruction)
    parts = [{"type": "text", "text": text}]
    if with_image:
      image = [{"type": "image"}]
      parts = image + parts if cfg.image_first else parts + image
    return tokenizer_lib.chat_text(self.tokenizer, parts)

  def prompt_ids(self, item: Item, hint: str | None, grid) -> list[int]:
    """Ids of the whole chat prompt, the text tokenized at once and the image placeholder
    expanded to the image's tokens by the model (`expand_image_placeholders`; `grid` is
    the image's from `preprocess_images`)."""
    ids = list(self.tokenizer.encode(self.prompt_text(item, hint, grid is not None),
                                     add_special_tokens=False))
    return ids if grid is None else self.model.expand_image_placeholders(ids, grid)

  def _start(self, prefixes, suffixes, copies, per_item, image_rows, rng):
    """Pads and places the prompts (row r of `prefixes` shows item `image_rows[r]`'s image)."""
    cfg = self.config
    batch = padding.bucket_rows(len(prefixes), copies)
    tokens, mask = padding.left_pad(prefixes, padding.shared_length(map(len, prefixes)),
                                    batch, self.pad_token_id)
    positions = image_embeds = None
    if per_item[0] is not None:
      pixels = np.concatenate([per_item[i][0] for i in image_rows])
      grids = np.concatenate([per_item[i][1] for i in image_rows])
      positions, image_embeds = self.model.multimodal_inputs(tokens, mask, pixels, grids)
      positions = hosts.global_rows(positions, axis=positions.ndim - 2)
    suffix_tokens = suffix_mask = None
    if suffixes is not None:
      # Forking repeats each padded prefix row, so suffix rows follow the same layout.
      suffix_tokens, suffix_mask = padding.left_pad(
          suffixes, padding.shared_length(map(len, suffixes)), batch * copies,
          self.pad_token_id)
    # Several hosts: each one's items are its rows of the global batch.
    tokens, mask, suffix_tokens, suffix_mask = hosts.global_rows(
        (tokens, mask, suffix_tokens, suffix_mask))
    max_new = self.trie.max_depth if self.trie is not None else cfg.max_new_tokens
    # Verbalized answers start with GROW_SLOTS cache slots (`decode_growing` adds more).
    first = max_new if self.trie is not None else min(max_new, sampling.GROW_SLOTS)
    graphdef, state = nnx.split(self.model)
    return sampling.compiled_start(
        graphdef, state, tokens, mask, rng, positions, image_embeds,
        head_layout.decode_head(self.model), suffix_tokens, suffix_mask, self.trie,
        max_new_tokens=max_new, params=self._params(), copies=copies, slots=first)

  def _params(self) -> sampling.SamplingParams:
    cfg = self.config
    return sampling.SamplingParams(cfg.temperature, cfg.top_k, cfg.top_p,
                                   () if self.trie is not None else self.eos_token_ids,
                                   self.pad_token_id, cfg.repetition_penalty)

  def _finish(self, state, rng):
    graphdef, weights = nnx.split(self.model)
    head_DxV = head_layout.decode_head(self.model)
    if self.trie is not None:
      return sampling.decode_chunk(graphdef, weights, head_DxV, state, rng, self.trie,
                                   steps=state.tokens_BxN.shape[1], params=self._params())
    parser = parsing.get_parser(self.config.parser)

    def stop_parsed(state):
      """Marks rows done whose text already holds the answer and confidence."""
      done = np.array(hosts.local_rows(state.done_B))  # this host's rows
      tokens, lengths = hosts.local_rows(state.tokens_BxN), hosts.local_rows(state.lengths_B)
      for row in np.flatnonzero(~done):
        text = self.tokenizer.decode(tokens[row, :lengths[row]], skip_special_tokens=True)
        # A number at the very end may still grow ("confidence 8" -> "80").
        if parser(text).valid and not text.rstrip()[-1:].isdigit():
          done[row] = True
      return state.replace(done_B=jnp.asarray(hosts.global_rows(done)))

    return sampling.decode_growing(graphdef, weights, head_DxV, state, rng, self._params(),
                                   steps=self.config.check_every, after_chunk=stop_parsed)

  def _read(self, state, rows: int) -> Answers:
    tokens = hosts.local_rows(state.tokens_BxN)[:rows]  # this host's rows
    lengths = hosts.local_rows(state.lengths_B)[:rows]
    texts = [self.tokenizer.decode(t[:n], skip_special_tokens=True) for t, n in zip(tokens, lengths)]
    option_probs = None
    if self.trie is not None:
      probs = hosts.local_rows(state.choice_probs_BxC)[:rows][:, :len(self.config.letters)]
      probs = probs[:, np.argsort(self.branch_letters)]  # child order -> letter order
      probs = probs ** (1.0 / self.config.logit_temperature)
      option_probs = probs / probs.sum(-1, keepdims=True)
    if self.config.mode == "logit":
      nodes = hosts.local_rows(state.node_B)[:rows]
      letter = np.array([constraints.completion_of(self.trie, n) for n in nodes], np.int32)
      confidence = option_probs[np.arange(rows), letter].astype(np.float32)
      return Answers(letter, confidence, np.ones(rows, bool), texts, option_probs, lengths)
    letter, confidence, valid = parsing.parse_batch(texts, self.config.parser)
    return Answers(letter, confidence, valid, texts, option_probs, lengths)


def _shared_split(rows: list[list[int]], image_id: int | None
                  ) -> tuple[list[int], list[list[int]]] | None:
  """`(prefix, suffixes)` with `prefix + suffixes[g] == rows[g]` for an item's G prompts.

  The prefix is the rows' longest common run of leading ids, so every row keeps exactly the
  ids of its whole prompt, tokenized at once (tokenizing a prefix and a suffix apart can
  merge differently at the seam, e.g. " " + "\n\n" vs " \n\n"). None when the item's image
  would not lie in the prefix (the image is encoded with the shared prefix only).
  """
  n = min(map(len, rows))
  first = rows[0]
  for row in rows[1:]:
    n = next((i for i in range(n) if row[i] != first[i]), n)
  prefix = first[:n]  # a row may be all prefix: it answers from the prefix's last state
  if image_id is not None and image_id not in prefix:
    return None
  return prefix, [row[len(prefix):] for row in rows]


def _branch_letters(trie: constraints.ChoiceTrie, completion_letters: list[str],
                    letters: str) -> np.ndarray:
  """For the first node with several children: the letter index behind each child."""
  child_token, child_node = np.asarray(trie.child_token), np.asarray(trie.child_node)
  leaf = np.asarray(trie.leaf_completion)
  _, node = constraints.first_branch(trie)
  order = []
  for child in child_node[node][child_token[node] >= 0]:
    while leaf[child] < 0:
      child = child_node[child, 0]
    order.append(letters.index(completion_letters[leaf[child]]))
  if sorted(order) != list(range(len(letters))):
    raise ValueError("The answer letters do not branch at one token; use one-token letters.")
  return np.asarray(order)
