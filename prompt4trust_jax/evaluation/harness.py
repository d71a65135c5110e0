"""The evaluation harness: one split, one downstream, every confidence method side by side.

`config.eval.methods` names methods of the registered families (`methods/`: the original's
baselines, then the related methods); under input noise (`config.eval.corruptions`,
"name:severity" from `noise.CORRUPTIONS`) each of `config.eval.noise_methods` runs again on
corrupted inputs, reported as `<method>@<name>:<severity>`.

`plan` asks each family for the runs its methods need (`registry.Run`: passes of the
downstream), each planned once. Each run's answers are appended to `runs/<run>.jsonl` one
batch at a time, so an interrupted evaluation resumes where it stopped: finished batches
are read back, never recomputed, and a batch's sampling key is a function of (seed, run,
batch), so the results equal an uninterrupted run's. Then each method's family scores the
stored answers. In a multi-host run each host answers its part of every batch (`hosts.part`),
every host keeps all of the batch's records and process 0 writes them; the workdir is
shared (a network or `gs://` folder), so any host count resumes it.

Outputs in the workdir: `results.json` (every metric over all / valid-only samples with
bootstrap intervals), `samples.csv` (one row per item: question, options, gold, and per
run its hint and answer text, per method its letter and confidence), `reliability.png`
and `results.md` (the table printed at the end).
"""

import dataclasses
import zlib

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from prompt4trust_jax import (calibration, checkpoints, data, hosts, prompts, run_files,
                              run_models, sharding)
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.evaluation import methods as _methods  # noqa: F401  (registers them)
from prompt4trust_jax.evaluation import noise, registry, report, run_store
from prompt4trust_jax.evaluation.registry import Run
from prompt4trust_jax.policy import hints


def plan(settings) -> list[Run]:
  """The runs that `settings` (`config.eval`: methods, corruptions, noise_methods and the
  families' settings) need, each once, in the families' order."""
  methods, noise_methods = tuple(settings["methods"]), tuple(settings.get("noise_methods", ()))
  unknown = (sorted(set(methods) - set(registry.methods()))
             + sorted(set(noise_methods) - set(registry.noise_methods())))
  if unknown:
    raise ValueError(f"Unknown evaluation methods {unknown}; choose from {registry.methods()} "
                     f"(and {registry.noise_methods()} under noise).")
  corruptions = tuple(settings.get("corruptions", ()))
  for corruption in corruptions:
    noise.parse(corruption)
  runs = []
  for family in registry.FAMILIES.values():
    asked = tuple(m for m in family.methods if m in methods)
    if asked:
      runs += family.runs(asked, settings)
  runs += [registry.family_of(m).noise_run(m, c) for c in corruptions for m in noise_methods]
  return _merged(runs)


def _merged(runs: list[Run]) -> list[Run]:
  """One run per name; runs that differ only in their sample count keep the largest (the
  consistency baselines and the entropy baseline may share one set of samples)."""
  by_name = {}
  for r in runs:
    if r.name in by_name:
      other = by_name[r.name]
      if dataclasses.replace(other, samples=r.samples) != r:
        raise ValueError(f"Two different runs are named {r.name!r}: {other} and {r}.")
      r = dataclasses.replace(r, samples=max(r.samples, other.samples))
    by_name[r.name] = r
  return list(by_name.values())


def method_names(config) -> list[str]:
  """Every reported row: the methods, then each noise method under each corruption."""
  e = config.eval
  return list(e.methods) + [f"{m}@{c}" for c in e.get("corruptions", ())
                            for m in e.get("noise_methods", ())]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Evaluates every configured method on the split; returns {method: metrics}."""
  sharding.join_configured(config)  # before anything touches a device
  run_files.path(workdir, "runs").mkdir(parents=True, exist_ok=True)  # may be remote
  run_store.check_settings(config, workdir)
  mesh = sharding.make_mesh(**config.mesh)
  e = config.eval
  runs = plan(e)
  families = [registry.FAMILIES[r.family] for r in runs]
  splits = {"test": examples(config, workdir, config.data.split, config.data.num_examples)}
  if any(r.split == "val" for r in runs) or any("val" in f.extra_splits for f in families):
    splits["val"] = examples(config, workdir, config.data.val_split)
  d = config.downstream
  downstream_path = run_models.model_dir(d, "downstream")
  answerer = downstream.Downstream.from_pretrained(
      downstream_path, dtype=d.dtype, mesh=mesh, min_pixels=d.get("min_pixels"),
      max_pixels=d.get("max_pixels"))
  needs_policy = any(registry.FAMILIES[r.family].needs_policy(r, config) for r in runs)
  ctx = Context(config, workdir, mesh, answerer, downstream_path,
                Policy(config, mesh) if needs_policy else None, splits)

  stores = {}
  for r in runs:
    stores[r.name] = store = run_store.RunStore(run_files.path(workdir, "runs", f"{r.name}.jsonl"),
                                                writer=hosts.is_writer())
    items = splits[r.split]
    batches = [items[i:i + e.batch_size] for i in range(0, len(items), e.batch_size)]
    todo = [(b, batch) for b, batch in enumerate(batches) if not store.done(x["id"] for x in batch)]
    if not todo:
      continue
    run_answerer = ctx.answerer_for(r)
    progress = _progress(f"{r.name} ({r.split})", len(batches), len(batches) - len(todo))
    for b, batch in todo:
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed),
                                                  zlib.crc32(r.name.encode())), b)
      # Several hosts: each answers its part of the batch; every host keeps all the records.
      mine, count = hosts.part(batch)
      records = answer_batch(r, run_answerer, ctx, mine, key)[:count]
      store.append([record for part in hosts.all_objects(records) for record in part])
      progress.update(1)
    progress.close()

  results, per_method = score(config, registry.Stored(config, stores, splits))
  if hosts.is_writer():
    report.write(config, workdir, splits["test"], runs,
                 {name: store.items for name, store in stores.items()}, results, per_method)
  return results


def examples(config, workdir, split: str, num_examples: int = 0) -> list[dict]:
  """The first `num_examples` (0: all) examples of `split` in id order."""
  records = data.configured_source(config.data, split, workdir)
  n = len(records) if not num_examples else min(num_examples, len(records))
  # Sorted by id: the evaluated items and their batches do not depend on storage order.
  chosen = sorted(range(len(records)), key=lambda i: records[i]["id"])[:n]
  return [data.decode(records[i]) for i in chosen]


class Policy:
  """The (trained) policy: greedy hints, and completions of other requests (rewrites)."""

  def __init__(self, config, mesh):
    p = config.policy
    # The trained parameters are restored onto the base model, loaded as training loads it.
    self.model, self.tokenizer, self.eos, base = run_models.policy_model(p, config.seed, mesh)
    if p.train_workdir:
      step = checkpoints.load_policy(p.train_workdir, self.model, p.get("step") or None)
      logging.info("Prompt4Trust policy: rollout %d of %s", step, p.train_workdir)
    else:  # a released hint writer, e.g. xingshen/prompt4trust-cgpgenerator-1.5B
      logging.info("Prompt4Trust policy: the checkpoint at %s as it is (no "
                   "policy.train_workdir)", base)
    # Only sampled from here on: the weights in the sampling layout (`sharding.sampling_copy`).
    graphdef, state = nnx.split(self.model)
    self.model = nnx.merge(graphdef, sharding.sampling_copy(state, mesh))
    self.mesh = mesh
    self.preset = prompts.preset(config.prompts.preset)
    self.max_new_tokens = p.max_new_tokens
    self.settings = run_models.policy_sampling(p, base)

  def complete(self, user_texts) -> list[str]:
    """Greedy (or as configured) completions of chat user turns, rows split over the mesh."""
    with sharding.using(self.mesh):
      return hints.complete(self.model, self.tokenizer, self.eos, user_texts,
                            max_new_tokens=self.max_new_tokens, rng=jax.random.key(0),
                            **self.settings).texts

  def hints(self, batch) -> list[str]:
    return [self.preset.hint(t) for t in self.complete(
        [self.preset.policy(x["question"], x["options"]) for x in batch])]


class Context:
  """What runs share: the config, the downstream, the policy, the splits, and what a family
  makes once and reuses (`memo`: a searched instruction, a learnt soft prompt)."""

  def __init__(self, config, workdir, mesh, answerer, downstream_path, policy, splits):
    self.config, self.workdir, self.mesh = config, workdir, mesh
    self.answerer, self.downstream_path = answerer, downstream_path
    self.policy, self.splits = policy, splits
    self.preset = prompts.preset(config.prompts.preset)
    self._memo = {}

  def memo(self, name: str, make):
    if name not in self._memo:
      self._memo[name] = make()
    return self._memo[name]

  def examples(self, split: str, num_examples: int = 0) -> list[dict]:
    return examples(self.config, self.workdir, split, num_examples)

  def elicitation(self, r: Run) -> downstream.ElicitationConfig:
    """How the downstream is asked in run `r`: as configured, then the run's settings, then
    its family's (`Family.elicitation`)."""
    d, b = self.config.downstream, self.config.eval
    kwargs = dict(mode=r.mode or d.mode, preset=self.preset.name,
                  letters=d.get("letters") or data.letters(self.config.data.name))
    if r.sampling:  # the baselines' own sampling settings, every one set
      kwargs.update(temperature=b.sample_temperature, top_p=b.sample_top_p, top_k=b.sample_top_k,
                    repetition_penalty=b.get("sample_repetition_penalty", 1.0),
                    max_new_tokens=b.get("sample_max_new_tokens") or d.max_new_tokens,
                    image_first=b.get("sample_image_first", True))
    if r.mode == "logit":
      kwargs.update(temperature=0.0)  # the letter with the highest probability
    kwargs.update(registry.FAMILIES[r.family].elicitation(self, r))
    return downstream.elicitation_config(d, self.downstream_path, **kwargs)

  def answerer_for(self, r: Run) -> downstream.Downstream:
    return self.answerer.with_config(self.elicitation(r))


def answer_batch(r: Run, answerer, ctx: Context, batch, key) -> list[dict]:
  """One batch of run `r`: the records its store keeps, one per example."""
  family = registry.FAMILIES[r.family]
  if r.corruption:
    name, severity = noise.parse(r.corruption)
    batch = [noise.corrupt_example(x, name, severity, ctx.config.seed) for x in batch]
  batch = family.inputs(ctx, r, batch)
  if r.hint == "policy":
    written = ctx.policy.hints(batch)  # from the question as the downstream will see it
  else:
    written = [ctx.preset.fixed_hint_setting()[1] if r.hint == "fixed" else None] * len(batch)
  out = family.answer(ctx, r, answerer, batch, written, key)
  S = r.samples
  records = []
  for i, (x, hint) in enumerate(zip(batch, written)):
    rows = slice(i * S, (i + 1) * S)
    record = {"id": x["id"], "hint": hint, "texts": list(out.texts[rows]),
              "letters": out.letter_index[rows].tolist(),
              "confidences": out.confidence[rows].tolist(), "valid": out.valid[rows].tolist()}
    if r.corruption:
      record["question"] = x["question"]  # what the downstream was shown
    if out.option_probs is not None and r.mode == "logit":
      record["option_probs"] = out.option_probs[rows].tolist()
    records.append(record)
  return records


def score(config, stored: registry.Stored):
  """Per method: its family's letters, confidences and validity over the test items, and
  every metric of them (plus the family's own)."""
  e = config.eval
  gold_B = np.asarray([x["answer"] for x in stored.test])
  results, per_method = {}, {}
  for m in method_names(config):
    scored = registry.family_of(m.split("@")[0]).score(m, stored)
    letter, confidence, valid = (np.asarray(x) for x in (scored.letter_B, scored.confidence_B,
                                                         scored.valid_B))
    per_method[m] = (letter, confidence, valid)
    results[m] = {**calibration.population_metrics(
        confidence, valid & (letter == gold_B), valid, num_bins=e.num_bins, binning=e.binning,
        bootstrap_samples=e.bootstrap_samples, seed=config.seed), **scored.extra}
  return results, per_method


def _progress(name: str, total: int, done: int):
  import tqdm  # a progress bar with rate and ETA on stderr
  return tqdm.tqdm(total=total, initial=done, desc=name, unit="batch", dynamic_ncols=True,
                   disable=not hosts.is_writer())  # one bar per run, not one per host
