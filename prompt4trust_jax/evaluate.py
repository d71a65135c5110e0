"""The evaluation harness: one split, one downstream, every confidence method side by side.

Methods (`config.eval.methods`: the original's baselines, then the related methods):
- `no_hint`, `fixed_hint`: the downstream's own answer and confidence (configured mode).
- `prompt4trust`: the same with the policy's greedy hint (a trained checkpoint; the policy
  may be paired with a different downstream than it was trained with).
- `csc`, `csa`: sample consistency / average confidence over `consistency_samples`
  downstream samples at the `sample_*` settings (the original's csc.py: 0.5 / 0.95 / top_k
  100, 512 tokens, the text before the image); answer = the first sample; valid only when
  all samples parse (`consistency_valid="all"`) or when the first does ("first").
- `entropy`, `entropy_prompt4trust`: 1 - normalised entropy of the answers of
  `entropy_samples` samples of the no-hint / Prompt4Trust prompt, at the downstream's own
  settings (`entropy_sampling="downstream"`, the original's) or sharing the CSC samples
  ("consistency": one set of samples serves both; no-hint only).
- `logit`: the option-letter probability at the answer position; `logit_scaled`: the same
  after one temperature fitted (NLL) on the validation split `data.val_split`.
- `calibprompt`: `logit` with soft prompt embeddings learnt on labelled examples
  (`soft_prompt.py`, settings in `config.soft_prompt`).
- `abstain`: the no-hint answer with an "I don't know" option added (`abstention.py`).
- `prompt_search`: the no-hint answer under the instruction an iterative LLM search found
  on the validation split (`prompt_search.py`, `config.prompt_search`).
- Under input noise (`config.eval.corruptions`, "name:severity" from `noise.CORRUPTIONS`),
  each of `config.eval.noise_methods` is run again on corrupted inputs and reported as
  `<method>@<name>:<severity>`; `rewrite` there is the training-free mitigation: the
  policy rewrites the noisy question before the downstream sees it. Prompt4Trust's hint is
  written from the noisy question, as a deployed policy would see it.

Work is split into *runs* (what the downstream is asked: hint source, samples, mode,
inputs) and *methods* (how a confidence is read from a run). Each run's answers are
appended to `runs/<run>.jsonl` one batch at a time, so an interrupted evaluation resumes
where it stopped: finished batches are read back, never recomputed, and a batch's sampling
key is a function of (seed, run, batch), so the results equal an uninterrupted run's.

Outputs in the workdir: `results.json` (every metric over all / valid-only samples with
bootstrap intervals), `samples.csv` (one row per item: question, options, gold, and per
run its hint and answer text, per method its letter and confidence), `reliability.png`
(one curve per method over confidence histograms) and `results.md` (the table printed at
the end).
"""

import dataclasses
import json
import os
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from prompt4trust_jax import (abstention, baselines, calibration, checkpoints, data, downstream,
                              hints, noise, parsing, prompt_search, prompts, report, run_models,
                              run_store, sharding, soft_prompt)
from prompt4trust_jax.run_store import RunStore

METHODS = ("no_hint", "fixed_hint", "prompt4trust", "csc", "csa", "entropy",
           "entropy_prompt4trust", "logit", "logit_scaled", "calibprompt", "abstain",
           "prompt_search")
NOISE_METHODS = ("no_hint", "prompt4trust", "rewrite")
_SINGLE = ("no_hint", "fixed_hint", "prompt4trust", "calibprompt", "abstain", "prompt_search")


@dataclasses.dataclass(frozen=True)
class Run:
  """One pass of the downstream over a split: its inputs, hints and how it answers."""
  name: str
  hint: str = "none"  # "none", "fixed" or "policy"
  samples: int = 1
  sampling: bool = False  # the baselines' sampling settings instead of the evaluation's
  mode: str | None = None  # None: the configured elicitation mode
  split: str = "test"  # "test" or "val"
  abstain: bool = False  # add the "I don't know" option
  searched: bool = False  # the instruction prompt search found
  soft_prompt: bool = False  # option probabilities under the learnt soft prompt
  corruption: str | None = None  # "name:severity"
  rewrite: bool = False  # the policy rewrites the question first


def plan(methods, consistency_samples: int = 21, entropy_samples: int = 40,
         corruptions=(), noise_methods=(), entropy_sampling: str = "downstream") -> list[Run]:
  """The runs `methods` (and the noise grid) need, each once, in a fixed order."""
  unknown = sorted(set(methods) - set(METHODS)) + sorted(set(noise_methods) - set(NOISE_METHODS))
  if unknown:
    raise ValueError(f"Unknown evaluation methods {unknown}; choose from {METHODS} (and "
                     f"{NOISE_METHODS} under noise).")
  for corruption in corruptions:
    noise.parse(corruption)
  hint_of = {"no_hint": "none", "fixed_hint": "fixed", "prompt4trust": "policy"}
  runs = [Run(m, hint_of[m]) for m in hint_of if m in methods or (m == "no_hint" and
                                                                    "abstain" in methods)]
  if entropy_sampling not in ("downstream", "consistency"):
    raise ValueError(f"Unknown eval.entropy_sampling {entropy_sampling!r}; choose 'downstream' "
                     "or 'consistency'.")
  shared = entropy_sampling == "consistency"
  if shared and "entropy_prompt4trust" in methods:
    raise ValueError("entropy_prompt4trust samples the downstream's own settings; set "
                     "eval.entropy_sampling='downstream'.")
  samples = max([consistency_samples for m in ("csc", "csa") if m in methods] +
                [entropy_samples] * (shared and "entropy" in methods) + [0])
  if samples:
    runs.append(Run("samples", samples=samples, sampling=True))
  if not shared:
    runs += [Run(m, hint="policy" if m == "entropy_prompt4trust" else "none",
                 samples=entropy_samples) for m in ("entropy", "entropy_prompt4trust")
             if m in methods]
  if "logit" in methods or "logit_scaled" in methods:
    runs.append(Run("logit", mode="logit"))
  if "logit_scaled" in methods:
    runs.append(Run("logit_val", mode="logit", split="val"))
  if "calibprompt" in methods:
    runs.append(Run("calibprompt", mode="logit", soft_prompt=True))
  if "abstain" in methods:
    runs.append(Run("abstain", abstain=True))
  if "prompt_search" in methods:
    runs.append(Run("prompt_search", searched=True))
  for corruption in corruptions:
    for m in noise_methods:
      runs.append(Run(f"{m}@{corruption}", hint="policy" if m == "prompt4trust" else "none",
                      corruption=corruption, rewrite=m == "rewrite"))
  return runs


def method_names(config) -> list[str]:
  """Every reported row: the methods, then each noise method under each corruption."""
  e = config.eval
  return list(e.methods) + [f"{m}@{c}" for c in e.get("corruptions", ())
                            for m in e.get("noise_methods", ())]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Evaluates every configured method on the split; returns {method: metrics}."""
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  run_store.check_settings(config, workdir)
  mesh = sharding.make_mesh(**config.mesh)
  e = config.eval
  runs = plan(e.methods, e.consistency_samples, e.entropy_samples, e.get("corruptions", ()),
              e.get("noise_methods", ()), e.get("entropy_sampling", "downstream"))
  splits = {"test": _examples(config, workdir, config.data.split, config.data.num_examples)}
  if any(r.split == "val" or r.searched for r in runs):
    splits["val"] = _examples(config, workdir, config.data.val_split)
  d = config.downstream
  downstream_path = run_models.model_dir(d, workdir, config.seed, vision=True)
  answerer = downstream.Downstream.from_pretrained(
      downstream_path, dtype=d.dtype, mesh=mesh, min_pixels=d.get("min_pixels"),
      max_pixels=d.get("max_pixels"))
  needs_policy = any(r.hint == "policy" or r.rewrite for r in runs) or (
      "prompt_search" in e.methods and not config.prompt_search.get("instruction_file"))
  ctx = _Context(config, workdir, mesh, answerer, downstream_path,
                 _Policy(config, workdir, mesh) if needs_policy else None, splits)

  stores = {}
  for r in runs:
    stores[r.name] = store = RunStore(os.path.join(workdir, "runs", f"{r.name}.jsonl"),
                                      writer=jax.process_index() == 0)
    examples = splits[r.split]
    batches = [examples[i:i + e.batch_size] for i in range(0, len(examples), e.batch_size)]
    todo = [(b, batch) for b, batch in enumerate(batches) if not store.done(x["id"] for x in batch)]
    if not todo:
      continue
    run_answerer = ctx.answerer_for(r)
    progress = _progress(f"{r.name} ({r.split})", len(batches), len(batches) - len(todo))
    for b, batch in todo:
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed),
                                                  zlib.crc32(r.name.encode())), b)
      store.append(_answer(r, run_answerer, ctx, batch, key))
      progress.update(1)
    progress.close()

  results, per_method = _score(config, stores, splits)
  if jax.process_index() == 0:
    report.write(config, workdir, splits["test"], runs,
                 {name: store.items for name, store in stores.items()}, results, per_method)
  return results


def _examples(config, workdir, split: str, num_examples: int = 0) -> list[dict]:
  """The first `num_examples` (0: all) examples of `split` in id order."""
  records = data.configured_source(config.data, split, workdir)
  n = len(records) if not num_examples else min(num_examples, len(records))
  # Sorted by id: the evaluated items and their batches do not depend on storage order.
  chosen = sorted(range(len(records)), key=lambda i: records[i]["id"])[:n]
  return [data.decode(records[i]) for i in chosen]


class _Policy:
  """The (trained) policy: greedy hints, and rewrites of noisy questions or instructions."""

  def __init__(self, config, workdir, mesh):
    p = config.policy
    # The trained parameters are restored onto the base model, loaded as training loads it.
    self.model, self.tokenizer, self.eos, base = run_models.policy_model(
        p, p.train_workdir or workdir, config.seed, mesh)
    if p.train_workdir:
      step = checkpoints.load_policy(p.train_workdir, self.model, p.get("step") or None)
      logging.info("Prompt4Trust policy: rollout %d of %s", step, p.train_workdir)
    elif p.path:  # a released hint writer, e.g. xingshen/prompt4trust-cgpgenerator-1.5B
      logging.info("Prompt4Trust policy: the checkpoint at %s as it is", p.path)
    else:
      logging.warning("Neither policy.path nor policy.train_workdir is set: hints come from the "
                      "random model %s.", base)
    self.preset = prompts.preset(config.prompts.preset)
    self.max_new_tokens = p.max_new_tokens
    self.settings = run_models.policy_sampling(p, base)

  def _complete(self, user_texts) -> list[str]:
    return hints.complete(self.model, self.tokenizer, self.eos, user_texts,
                          max_new_tokens=self.max_new_tokens, rng=jax.random.key(0),
                          **self.settings).texts

  def hints(self, examples) -> list[str]:
    return [self.preset.hint(t) for t in self._complete(
        [self.preset.policy(x["question"], x["options"]) for x in examples])]

  def rewrite_questions(self, examples) -> list[str]:
    texts = self._complete([self.preset.rewrite(x["question"], x["options"]) for x in examples])
    # An empty rewrite would drop the question: keep the noisy one then.
    return [t.strip() or x["question"] for t, x in zip(texts, examples)]


class _Context:
  """What runs share: the downstream, the policy, and the searched instruction / soft prompt
  (each made once, on first use, and kept in the workdir)."""

  def __init__(self, config, workdir, mesh, answerer, downstream_path, policy, splits):
    self.config, self.workdir, self.mesh = config, workdir, mesh
    self.answerer, self.downstream_path = answerer, downstream_path
    self.policy, self.splits = policy, splits
    self.preset = prompts.preset(config.prompts.preset)
    self._instruction = self._prompt = None

  def elicitation(self, r: Run) -> downstream.ElicitationConfig:
    d, b = self.config.downstream, self.config.eval
    kwargs = dict(mode=r.mode or d.mode, preset=self.preset.name,
                  letters=d.get("letters") or data.letters(self.config.data.name))
    if r.sampling:  # the consistency baselines' own settings, every one set
      kwargs.update(temperature=b.sample_temperature, top_p=b.sample_top_p, top_k=b.sample_top_k,
                    repetition_penalty=b.get("sample_repetition_penalty", 1.0),
                    max_new_tokens=b.get("sample_max_new_tokens") or d.max_new_tokens,
                    image_first=b.get("sample_image_first", True))
    if r.mode == "logit":
      kwargs.update(temperature=0.0)  # the letter with the highest probability
    if r.hint == "fixed":
      kwargs.update(instruction=self.preset.fixed_hint_setting()[0])
    if r.abstain:
      kwargs.update(letters=parsing.ABSTAIN_LETTERS, parser="abstain",
                    instruction=prompts.ABSTAIN_INSTRUCTION)
    if r.searched:
      kwargs.update(instruction=self.searched_instruction())
    return downstream.elicitation_config(d, self.downstream_path, **kwargs)

  def answerer_for(self, r: Run) -> downstream.Downstream:
    return self.answerer.with_config(self.elicitation(r))

  def searched_instruction(self) -> str:
    if self._instruction is None:
      self._instruction = _search_instruction(self)
    return self._instruction

  def soft_prompt(self):
    if self._prompt is None:
      c = self.config.soft_prompt
      examples = _examples(self.config, self.workdir, c.train_split, c.num_train_examples)
      settings = soft_prompt.SoftPromptConfig(**{
          k: v for k, v in c.items() if k not in ("train_split", "num_train_examples")})
      learner = self.answerer.with_config(self.elicitation(Run("calibprompt", mode="logit")))
      self._prompt = soft_prompt.train(learner, examples, settings, mesh=self.mesh,
                                       workdir=self.workdir)
    return self._prompt


def _answer(r: Run, answerer, ctx: _Context, batch, key) -> list[dict]:
  seed = ctx.config.seed
  if r.corruption:
    name, severity = noise.parse(r.corruption)
    batch = [noise.corrupt_example(x, name, severity, seed) for x in batch]
  if r.rewrite:
    batch = [{**x, "question": q} for x, q in zip(batch, ctx.policy.rewrite_questions(batch))]
  if r.abstain:
    batch = [abstention.with_abstain_option(x) for x in batch]
  if r.hint == "policy":
    written = ctx.policy.hints(batch)  # from the question as the downstream will see it
  else:
    written = [ctx.preset.fixed_hint_setting()[1] if r.hint == "fixed" else None] * len(batch)
  if r.soft_prompt:
    out = soft_prompt.answer(answerer, ctx.soft_prompt(), batch, len(batch))
  else:
    items = [downstream.Item.from_example(x) for x in batch]
    out = answerer.answer(items, [[h] * r.samples for h in written], key)
  S = r.samples
  records = []
  for i, (x, hint) in enumerate(zip(batch, written)):
    rows = slice(i * S, (i + 1) * S)
    record = {"id": x["id"], "hint": hint, "texts": list(out.texts[rows]),
              "letters": out.letter_index[rows].tolist(),
              "confidences": out.confidence[rows].tolist(), "valid": out.valid[rows].tolist()}
    if r.corruption or r.rewrite:
      record["question"] = x["question"]  # what the downstream was shown
    if out.option_probs is not None and r.mode == "logit":
      record["option_probs"] = out.option_probs[rows].tolist()
    records.append(record)
  return records


def _search_instruction(ctx: _Context) -> str:
  """The best instruction of a prompt search on the validation split (cached in the workdir)."""
  c = ctx.config.prompt_search
  if c.get("instruction_file"):
    with open(c.instruction_file) as f:
      return json.load(f)["best"]
  path = os.path.join(ctx.workdir, "prompt_search.json")
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      cache = {x["instruction"]: x for x in json.load(f)["candidates"]}
  examples = ctx.splits["val"][:c.num_examples or None]
  base = Run("prompt_search")

  def score(instruction: str) -> tuple[float, float]:
    if instruction not in cache:
      config = dataclasses.replace(ctx.elicitation(base), instruction=instruction)
      answerer = ctx.answerer.with_config(config)
      items = [downstream.Item.from_example(x) for x in examples]
      out = answerer.answer(items, None, jax.random.key(ctx.config.seed))
      gold = np.asarray([x["answer"] for x in examples])
      m = calibration.summary(jnp.asarray(out.confidence), jnp.asarray(out.valid),
                              jnp.asarray(out.letter_index == gold))
      cache[instruction] = {"instruction": instruction, "accuracy": float(m["accuracy"]),
                            "ece": float(m["ece"])}
      _save_search(path, cache)
    return cache[instruction]["accuracy"], cache[instruction]["ece"]

  proposer = prompt_search.llm_proposer(
      ctx.policy.model, ctx.policy.tokenizer, ctx.policy.eos, seed=ctx.config.seed,
      max_new_tokens=c.max_new_tokens, temperature=c.temperature)
  ranked = prompt_search.search(proposer, score, [ctx.config.downstream.get("instruction") or
                                                  ctx.preset.downstream_instruction],
                                rounds=c.rounds, per_round=c.per_round, top_k=c.top_k,
                                bucket=c.bucket)
  _save_search(path, cache, best=ranked[0].instruction)
  logging.info("prompt_search: best of %d candidates (accuracy %.3f, ECE %.3f)", len(ranked),
               ranked[0].accuracy, ranked[0].ece)
  return ranked[0].instruction


def _save_search(path: str, cache: dict, best: str | None = None):
  if jax.process_index() == 0:
    with open(path + ".tmp", "w") as f:
      json.dump({"best": best, "candidates": list(cache.values())}, f, indent=1)
    os.replace(path + ".tmp", path)  # never a half-written cache


def _score(config, stores, splits):
  """Per method: letter, confidence and validity per test item, then every metric."""
  e, test = config.eval, splits["test"]
  gold_B = np.asarray([x["answer"] for x in test])
  per_method, extra = {}, {}
  for m in method_names(config):
    base = m.split("@")[0]
    if base in _SINGLE or base == "rewrite":
      per_method[m] = stores[m].first_answers(test)
    elif m in ("csc", "csa"):
      s, n = stores["samples"], e.consistency_samples
      letter, csc, csa, valid = baselines.sample_consistency(
          *(jnp.asarray(s.arrays(test, k, n)) for k in ("letters", "confidences", "valid")),
          valid=e.get("consistency_valid", "all"))
      per_method[m] = (letter, csc if m == "csc" else csa, valid)
    elif m in ("entropy", "entropy_prompt4trust"):
      s, n = stores[m if m in stores else "samples"], e.entropy_samples
      per_method[m] = baselines.entropy_confidence(
          jnp.asarray(s.arrays(test, "letters", n)), jnp.asarray(s.arrays(test, "valid", n)),
          len(test[0]["options"]))
    else:
      probs_BxC = stores["logit"].arrays(test, "option_probs")[:, 0]
      if m == "logit_scaled":
        val = splits["val"]
        temperature = float(calibration.fit_temperature(
            jnp.asarray(stores["logit_val"].option_logits(val)),
            jnp.asarray([x["answer"] for x in val])))
        logging.info("logit_scaled: temperature %.4f fitted on %s", temperature,
                     config.data.val_split)
        extra[m] = {"temperature": temperature}
        probs_BxC = np.asarray(calibration.apply_temperature(
            jnp.asarray(stores["logit"].option_logits(test)), temperature))
      per_method[m] = (probs_BxC.argmax(-1), probs_BxC.max(-1), np.ones(len(test), bool))
  if "abstain" in per_method:
    letter, _, valid = per_method["abstain"]
    no_hint_letter, _, no_hint_valid = stores["no_hint"].first_answers(test)
    extra["abstain"] = abstention.abstention_metrics(
        letter, valid, gold_B, ~(no_hint_valid & (no_hint_letter == gold_B)))
  results = {}
  for m, (letter, confidence, valid) in per_method.items():
    letter, confidence, valid = (np.asarray(x) for x in (letter, confidence, valid))
    if m == "abstain":  # calibration over the questions it answered
      valid = valid & (letter != abstention.ABSTAIN_INDEX)
    per_method[m] = (letter, confidence, valid)
    results[m] = {**calibration.population_metrics(
        confidence, valid & (letter == gold_B), valid, num_bins=e.num_bins, binning=e.binning,
        bootstrap_samples=e.bootstrap_samples, seed=config.seed), **extra.get(m, {})}
  return results, per_method


def _progress(name: str, total: int, done: int):
  import tqdm  # a progress bar with rate and ETA on stderr
  return tqdm.tqdm(total=total, initial=done, desc=name, unit="batch", dynamic_ncols=True)

