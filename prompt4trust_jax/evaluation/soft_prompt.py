"""Calibration-aware soft-prompt learning for the frozen downstream (CalibPrompt, arXiv 2509.15226).

N prompt embeddings `[N, D]` go in front of the downstream's input embeddings (before
the chat template's first token); only they are trained, the model stays frozen. The
downstream sees its no-hint prompt followed by the forced reply "In conclusion, the
answer is", and the option letters' logits at that position are read as in the logit
elicitation mode (`downstream.py`), so the letter tokens are those of its `ChoiceTrie`.

Positions: the prompt takes 0..N-1 and every real token moves up by N (all three
M-RoPE components). Rows are left padded after the prompt, `[prompt | pad | tokens]`:
padded keys are masked and positions are explicit, so the gap changes nothing.

Class text features: for each option c, the final (normed) hidden state at the first
token whose text reaches the end of option c's line in the prompt, i.e. the earliest
position that has read the whole option. They depend on the soft prompt through
attention, which is what the angular term acts on.

Axis letters: the package's (`prompt4trust_jax/__init__.py`).
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx, struct

from prompt4trust_jax import padding, prompts, run_files
from prompt4trust_jax import sharding as sharding_lib
from prompt4trust_jax.downstream import constraints
from prompt4trust_jax.downstream import answerer as downstream_lib
from prompt4trust_jax.models import kv_cache as kv_cache_lib

CHECKPOINT_DIR = "soft_prompt"


@dataclasses.dataclass(frozen=True)
class SoftPromptConfig:
  num_tokens: int = 8
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  steps: int = 100
  batch_size: int = 8
  label_smoothing: float = 0.1  # alpha, for the CE targets and the SMAC frequencies
  smac_weight: float = 1.0
  angular_weight: float = 0.1  # w
  init_scale: float = 0.02  # std of the prompt's normal init (CoOp's random init)
  seed: int = 0

  def __post_init__(self):
    if min(self.num_tokens, self.steps, self.batch_size) < 1:
      raise ValueError("num_tokens, steps and batch_size must be >= 1, got "
                       f"{self.num_tokens}, {self.steps}, {self.batch_size}.")
    if not 0 <= self.label_smoothing < 1:
      raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")


@struct.dataclass
class OptionBatch:
  """Left-padded prompts ending in the forced answer prefix; every leaf is batch-major."""
  tokens_BxT: jax.Array
  mask_BxT: jax.Array
  positions: jax.Array  # [B, T], or [B, 3, T] for M-RoPE with images; without the soft prompt
  option_ends_BxC: jax.Array  # token index of each option line's end (class features)
  labels_B: jax.Array  # gold option index, -1 when unknown
  image_embeds_BxJxD: jax.Array | None  # each row's image tokens, zero padded
  letter_ids: tuple[int, ...] = struct.field(pytree_node=False)  # token of each option letter


@dataclasses.dataclass(frozen=True)
class EncodedExample:
  """One example ready for `collate`: unpadded ids, positions, image tokens."""
  ids: np.ndarray
  positions: np.ndarray  # [L] or [3, L]
  option_ends: np.ndarray
  label: int
  image_embeds: np.ndarray | None


def answer_tokens(downstream: downstream_lib.Downstream) -> tuple[list[int], tuple[int, ...]]:
  """(forced ids of "In conclusion, the answer is", letter id per option) from the logit trie."""
  if downstream.config.mode != "logit":
    downstream = downstream.with_config(dataclasses.replace(downstream.config, mode="logit"))
  forced, node = constraints.first_branch(downstream.trie)
  children = np.asarray(downstream.trie.child_token)[node]
  letter_ids = np.zeros(len(downstream.config.letters), np.int64)
  letter_ids[downstream.branch_letters] = children[children >= 0]
  return forced, tuple(int(i) for i in letter_ids)


def _option_ends(tokenizer, ids: list[int], options: Sequence[str]) -> list[int]:
  """Per option, the first token whose decoded text reaches the end of the option's line."""
  decode = lambda n: tokenizer.decode(ids[:n], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)
  block = prompts.format_options(options)
  end = decode(len(ids)).rfind(block)  # the last copy: the prompt's own options block
  if end < 0:
    raise ValueError(f"Options {list(options)} are not found in the decoded prompt; the "
                     "tokenizer must decode its ids back to the text.")
  ends = []
  for option in options:
    end += len(option)
    lo, hi = 1, len(ids)  # the smallest n whose decoded prefix covers `end` characters
    while lo < hi:
      mid = (lo + hi) // 2
      lo, hi = (lo, mid) if len(decode(mid)) >= end else (mid + 1, hi)
    ends.append(lo - 1)
    end += 1  # the newline
  return ends


def prepare(downstream: downstream_lib.Downstream,
            examples: Sequence[dict]) -> list[EncodedExample]:
  """Examples (dicts: question, options, answer, image) as the downstream's no-hint logit prompt.

  Images are encoded here, once: the vision tower is frozen, so training reuses them.
  """
  forced, letter_ids = answer_tokens(downstream)
  for x in examples:
    if len(x["options"]) != len(letter_ids):
      raise ValueError(f"Example {x.get('id')} has {len(x['options'])} options; the downstream "
                       f"reads {len(letter_ids)} letters ({downstream.config.letters}).")
  items = [downstream_lib.Item.from_example(x) for x in examples]
  out = []
  for x, item, image in zip(examples, items, downstream.preprocess_images(items)):
    prompt = downstream.prompt_ids(item, None, None if image is None else image[1])
    ids = prompt + forced
    shown = prompts.preset(downstream.config.preset).cells(item.question, item.options)[1]
    ends = _option_ends(downstream.tokenizer, prompt, shown)
    positions, embeds = np.arange(len(ids), dtype=np.int32), None
    if image is not None:
      positions, embeds = downstream.model.multimodal_inputs(
          np.asarray([ids]), np.ones((1, len(ids))), *image)
      # One prompt, one image: row 0's tokens (row aligned), its padding dropped.
      image_tokens = ids.count(downstream.model.image_token_id)
      positions, embeds = np.asarray(positions)[:, 0], np.asarray(embeds)[0, :image_tokens]
    out.append(EncodedExample(np.asarray(ids, np.int32), positions, np.asarray(ends, np.int32),
                        int(x.get("answer", -1)), embeds))
  return out


def collate(examples: Sequence[EncodedExample], rows: int, pad_token_id: int,
            letter_ids: tuple[int, ...]) -> OptionBatch:
  """Left pads `examples` to a bucketed length into `rows` rows (extra rows all padding)."""
  T = padding.bucket_length(max(len(x.ids) for x in examples))
  tokens, mask = padding.left_pad([x.ids for x in examples], T, rows, pad_token_id)
  positions = np.zeros((rows, *examples[0].positions.shape[:-1], T), np.int32)
  ends = np.zeros((rows, len(letter_ids)), np.int32)
  labels = np.full(rows, -1, np.int32)
  embeds = None
  if examples[0].image_embeds is not None:
    I = padding.bucket_length(max(len(x.image_embeds) for x in examples))
    embeds = np.zeros((rows, I, examples[0].image_embeds.shape[-1]),
                      examples[0].image_embeds.dtype)
  for r, x in enumerate(examples):
    shift = T - len(x.ids)
    positions[r, ..., shift:] = x.positions
    ends[r], labels[r] = x.option_ends + shift, x.label
    if embeds is not None:
      embeds[r, :len(x.image_embeds)] = x.image_embeds
  return OptionBatch(tokens, mask, positions, ends, labels, embeds, tuple(letter_ids))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def option_logits(graphdef, state, prompt_PxD: jax.Array | None,
                  batch: OptionBatch) -> tuple[jax.Array, jax.Array]:
  """(option logits `[B, C]` at the last position, class text features `[B, C, D]`)."""
  model = nnx.merge(graphdef, state)
  if batch.image_embeds_BxJxD is None:
    x_BxTxD = model.embed(batch.tokens_BxT)
  else:  # each row indexes its own image tokens
    x_BxTxD = jax.vmap(lambda t_T, e_JxD: model.embed(t_T[None], e_JxD)[0])(
        batch.tokens_BxT, batch.image_embeds_BxJxD)
  mask_BxT, positions = batch.mask_BxT.astype(bool), batch.positions
  ends_BxC = batch.option_ends_BxC
  if prompt_PxD is not None:
    B, N = x_BxTxD.shape[0], prompt_PxD.shape[0]
    prompt_BxPxD = jnp.broadcast_to(prompt_PxD.astype(x_BxTxD.dtype), (B, *prompt_PxD.shape))
    x_BxTxD = jnp.concatenate([prompt_BxPxD, x_BxTxD], axis=1)
    mask_BxT = jnp.concatenate([jnp.ones((B, N), bool), mask_BxT], axis=1)
    prompt_positions = jnp.broadcast_to(jnp.arange(N, dtype=positions.dtype),
                                        (*positions.shape[:-1], N))
    positions = jnp.concatenate([prompt_positions, positions + N], axis=-1)
    ends_BxC = ends_BxC + N
  if positions.ndim == 3:
    positions = jnp.swapaxes(positions, 0, 1)  # [3, B, T], as the decoder takes M-RoPE
  T = x_BxTxD.shape[1]
  h_BxTxD, _ = model.step(x_BxTxD, positions, kv_cache_lib.attention_mask(mask_BxT, 0, T), None, 0)
  head_DxC = model.lm_head_kernel()[:, jnp.asarray(batch.letter_ids)]
  logits_BxC = model.logits(h_BxTxD[:, -1], head_DxC)
  features_BxCxD = jnp.take_along_axis(h_BxTxD, ends_BxC[..., None], axis=1)
  return logits_BxC, features_BxCxD.astype(jnp.float32)


def loss(logits_BxC: jax.Array, features_BxCxD: jax.Array, labels_B: jax.Array,
         config: SoftPromptConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CE + smac_weight * SMAC + angular_weight * angular, with a = label_smoothing:

  ce      = mean_b -sum_c q_bc log p_bc,  q_b = (1 - a) onehot(y_b) + a / C
  smac    = mean_c |mean_b p_bc - ((1 - a) freq_c + a / C)|,  freq_c = mean_b [y_b = c]
  angular = mean_b mean_{c < c'} cos(f_bc, f_bc')  (pairwise cosine of the class features)
  """
  C = logits_BxC.shape[-1]
  a = config.label_smoothing
  logp_BxC = jax.nn.log_softmax(logits_BxC.astype(jnp.float32), axis=-1)
  onehot_BxC = jax.nn.one_hot(labels_B, C)
  ce = -jnp.sum(((1 - a) * onehot_BxC + a / C) * logp_BxC, axis=-1).mean()
  target_C = (1 - a) * onehot_BxC.mean(0) + a / C
  smac = jnp.abs(jnp.exp(logp_BxC).mean(0) - target_C).mean()
  unit_BxCxD = features_BxCxD / jnp.maximum(
      jnp.linalg.norm(features_BxCxD, axis=-1, keepdims=True), 1e-12)
  cos_BxCxC = jnp.einsum("bcd,bed->bce", unit_BxCxD, unit_BxCxD)
  upper_C, lower_C = np.triu_indices(C, 1)
  angular = cos_BxCxC[:, upper_C, lower_C].mean()
  total = ce + config.smac_weight * smac + config.angular_weight * angular
  accuracy = (jnp.argmax(logp_BxC, axis=-1) == labels_B).mean()
  return total, dict(loss=total, ce=ce, smac=smac, angular=angular, accuracy=accuracy)


def init_prompt(config: SoftPromptConfig, dim: int) -> jax.Array:
  """Small normal noise `[N, D]` (std init_scale), float32 whatever the model computes in."""
  key = jax.random.key(config.seed)
  return config.init_scale * jax.random.normal(key, (config.num_tokens, dim), jnp.float32)


def _train_step(prompt_PxD, opt_state, state, batch, *, graphdef, tx, config):
  def loss_fn(prompt_PxD):  # the model's state is a constant here: only the prompt learns
    logits_BxC, features_BxCxD = option_logits(graphdef, state, prompt_PxD, batch)
    return loss(logits_BxC, features_BxCxD, batch.labels_B, config)

  (_, metrics), grad_PxD = jax.value_and_grad(loss_fn, has_aux=True)(prompt_PxD)
  updates, opt_state = tx.update(grad_PxD, opt_state, prompt_PxD)
  return optax.apply_updates(prompt_PxD, updates), opt_state, metrics


def train(downstream: downstream_lib.Downstream, examples: Sequence[dict],
          config: SoftPromptConfig, mesh: jax.sharding.Mesh | None = None,
          workdir: str | None = None) -> jax.Array:
  """The learned prompt `[N, D]`; with a workdir, saved to (or, if there, read from)
  `workdir/soft_prompt`. Batches are consecutive slices of seeded per-epoch shuffles."""
  path = None if workdir is None else run_files.path(workdir, CHECKPOINT_DIR)  # may be remote
  dim = downstream.model.text_config.hidden_size
  if path is not None and path.exists():
    prompt_PxD = restore(path)
    if prompt_PxD.shape != (config.num_tokens, dim):
      raise ValueError(f"{path} holds a prompt of shape {prompt_PxD.shape}, not "
                       f"{(config.num_tokens, dim)}; delete it or use another workdir.")
    logging.info("Soft prompt restored from %s", path)
    return prompt_PxD
  prepared = prepare(downstream, examples)
  if any(x.label < 0 for x in prepared) or len(prepared) < config.batch_size:
    raise ValueError(f"Training needs at least batch_size={config.batch_size} examples, each "
                     f"with its gold 'answer'; got {len(prepared)}.")
  _, letter_ids = answer_tokens(downstream)
  graphdef, state = nnx.split(downstream.model)
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  step = functools.partial(_train_step, graphdef=graphdef, tx=tx, config=config)
  prompt_PxD = init_prompt(config, dim)
  opt_state = tx.init(prompt_PxD)
  if mesh is None:
    step_fn = jax.jit(step, donate_argnums=(0, 1))
  else:
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.batch_size % devices:
      raise ValueError(f"batch_size={config.batch_size} does not split over the {devices} "
                       "data-parallel devices of the mesh.")
    replicated, batch_sh = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
    state_sh = sharding_lib.tree_shardings(state, mesh)
    state = jax.device_put(state, state_sh)
    prompt_PxD, opt_state = jax.device_put((prompt_PxD, opt_state), replicated)
    jitted = jax.jit(step, donate_argnums=(0, 1), out_shardings=replicated,
                     in_shardings=(replicated, replicated, state_sh, batch_sh))
    step_fn = lambda p, o, s, b: jitted(p, o, s, jax.device_put(b, batch_sh))
  order = np.random.default_rng(config.seed)
  queue: list[int] = []
  for i in range(config.steps):
    while len(queue) < config.batch_size:
      queue += order.permutation(len(prepared)).tolist()
    rows, queue = queue[:config.batch_size], queue[config.batch_size:]
    batch = collate([prepared[r] for r in rows], config.batch_size, downstream.pad_token_id,
                    letter_ids)
    prompt_PxD, opt_state, metrics = step_fn(prompt_PxD, opt_state, state, batch)
    logging.info("soft prompt step %d: %s", i, {k: float(v) for k, v in metrics.items()})
  if path is not None:
    save(prompt_PxD, path)
  return prompt_PxD


def save(prompt_PxD: jax.Array, path: str) -> None:
  """Writes the prompt alone as an Orbax checkpoint directory (atomically: tmp, then rename)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(run_files.path(str(path)), {"prompt": prompt_PxD})
  checkpointer.wait_until_finished()


def restore(path: str) -> jax.Array:
  """The prompt `save` wrote at `path`."""
  return jnp.asarray(ocp.StandardCheckpointer().restore(run_files.path(str(path)))["prompt"])


def answer(downstream: downstream_lib.Downstream, prompt_PxD: jax.Array | None,
           examples: Sequence[dict], batch_size: int = 8) -> downstream_lib.Answers:
  """The logit-mode answers with the prompt in front: argmax letter, its softmax probability
  over the options (T = 1; temperature scaling is the evaluation's own step)."""
  forced, letter_ids = answer_tokens(downstream)
  graphdef, state = nnx.split(downstream.model)
  probs = []
  for start in range(0, len(examples), batch_size):
    chunk = prepare(downstream, examples[start:start + batch_size])  # image tokens live one batch
    batch = collate(chunk, padding.bucket_rows(len(chunk)), downstream.pad_token_id, letter_ids)
    logits_BxC, _ = option_logits(graphdef, state, prompt_PxD, batch)
    probs.append(np.asarray(jax.nn.softmax(logits_BxC[:len(chunk)], axis=-1)))
  option_probs = np.concatenate(probs)
  letter = option_probs.argmax(-1).astype(np.int32)
  rows = np.arange(len(letter))
  completions = constraints.answer_letter_completions(downstream.config.letters)
  return downstream_lib.Answers(letter, option_probs[rows, letter], np.ones(len(letter), bool),
                                [completions[i] for i in letter], option_probs,
                                np.full(len(letter), len(forced) + 1))
