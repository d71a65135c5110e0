"""The evaluation harness end to end on tiny models: outputs, resume without recompute, transfer."""

import csv
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from configs import (demo, eval_abstain, eval_calibprompt, eval_demo, eval_noise, eval_pmcvqa,
                     eval_prompt_search)
from prompt4trust_jax import checkpoints, evaluation, fixtures, models, prompts
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.evaluation import harness, noise, registry, run_store
from prompt4trust_jax.models import tokenizer as tokenizer_lib
from prompt4trust_jax.policy import hints
from tests import launch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A demo training run of 2 steps (a checkpoint to evaluate)."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = demo.get_config("smoke")
  config.sampling.max_new_tokens = 8
  config.train.update(rollouts=2, checkpoint_every=2, heldout_questions=0)
  launch.train(config, workdir)
  return workdir


def _config(trained_dir, **eval_overrides):
  config = eval_demo.get_config("smoke")
  config.policy.update(train_workdir=trained_dir, max_new_tokens=8)
  config.data.num_examples = 6
  config.eval.update(batch_size=4, consistency_samples=5, entropy_samples=4,
                     bootstrap_samples=50, **eval_overrides)
  config.soft_prompt.update(steps=3, num_train_examples=8, batch_size=8)
  config.prompt_search.update(rounds=1, per_round=2, max_new_tokens=8)
  return config


def test_every_method_is_scored_and_written(trained, tmp_path, capsys):
  workdir = str(tmp_path / "eval")
  config = _config(trained)
  results = launch.evaluate(config, workdir)
  names = list(registry.methods()) + [f"{m}@{c}" for c in ("gaussian_noise:3", "typo:3")
                                    for m in ("no_hint", "prompt4trust", "rewrite")]
  assert list(results) == evaluation.method_names(config) == names
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["num_items"] == 6 and list(saved["methods"]) == names
  for metrics in saved["methods"].values():
    assert metrics["all/count"] == 6
    for population in ("all", "valid"):
      for name in ("accuracy", "ece", "brier", "auroc", "aurc"):
        assert f"{population}/{name}" in metrics and len(metrics[f"{population}/{name}_ci"]) == 2
  with open(os.path.join(workdir, "samples.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6
  for m in names:  # the CSV's letters give back results.json's accuracy
    accuracy = np.mean([r[f"{m}/letter"] == r["gold"] for r in rows])
    if m != "abstain":  # whose metrics are over the answered questions
      assert accuracy == pytest.approx(saved["methods"][m]["all/accuracy"])
  assert 0 <= saved["methods"]["abstain"]["abstain/rate"] <= 1
  assert "abstain/rate_when_wrong" in saved["methods"]["abstain"]
  assert saved["methods"]["logit_scaled"]["temperature"] > 0
  # The instruction search kept its candidates and its pick in the workdir.
  with open(os.path.join(workdir, "prompt_search.json")) as f:
    search = json.load(f)
  assert search["best"] in [c["instruction"] for c in search["candidates"]]
  # Text noise reached what the downstream saw; image noise left the question alone.
  typo, gaussian = (run_store.RunStore(os.path.join(workdir, "runs", f"no_hint@{c}.jsonl")).items
                    for c in ("typo:3", "gaussian_noise:3"))
  questions = {r["id"]: r["question"] for r in rows}
  assert any(typo[i]["question"] != questions[i] for i in questions)
  assert all(gaussian[i]["question"] == questions[i] for i in questions)
  # "clean" gives the fixed sentence as the hint ("reference" puts it in the instruction).
  assert config.prompts.preset == "clean"
  assert all(r["fixed_hint/hint"] == prompts.FIXED_HINT for r in rows)
  # logit_scaled only rescales: same letters as logit, confidences moved by one temperature.
  assert [r["logit/letter"] for r in rows] == [r["logit_scaled/letter"] for r in rows]
  with open(os.path.join(workdir, "reliability.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(os.path.join(workdir, "reliability.png")) > 10_000
  assert "| prompt4trust | 6 |" in capsys.readouterr().out


def test_interrupted_evaluation_resumes_without_recomputing(trained, tmp_path, monkeypatch):
  workdir = str(tmp_path / "eval")
  config = _config(trained, methods=("no_hint", "csc", "entropy"), corruptions=())
  launch.evaluate(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    uninterrupted = json.load(f)
  # A kill during the second batch of the samples run: its line for item 5 is cut short.
  samples = os.path.join(workdir, "runs", "samples.jsonl")
  with open(samples) as f:
    lines = f.readlines()
  with open(samples, "w") as f:
    f.writelines(lines[:5])
    f.write(lines[5][:40])
  calls = []
  answer = harness.answer_batch
  monkeypatch.setattr(harness, "answer_batch",
                      lambda r, *a: calls.append(r.name) or answer(r, *a))
  launch.evaluate(config, workdir)
  assert calls == ["samples"]  # only the broken batch of the broken run
  # Item 4 of that batch is answered again, identically (the batch's key is fixed).
  assert run_store.RunStore(samples).items == {json.loads(x)["id"]: json.loads(x) for x in lines}
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == uninterrupted
  # Answers made with other settings are never mixed into a resumed evaluation.
  config.eval.entropy_samples = 6
  with pytest.raises(ValueError, match="other \\['eval.entropy_samples'\\]"):
    launch.evaluate(config, workdir)


def test_zero_shot_transfer_to_another_downstream(trained, tmp_path):
  """The trained policy's hints drive a Qwen2.5-VL it never saw in training."""
  other = fixtures.write_random_qwen2_vl(str(tmp_path / "qwen2_5_vl"),
                                         fixtures.vl_shape_config("tiny", qwen2_5=True), seed=7)
  config = _config(trained, methods=("no_hint", "prompt4trust"), corruptions=())
  config.downstream.path = other
  results = launch.evaluate(config, str(tmp_path / "eval"))
  assert set(results) == {"no_hint", "prompt4trust"}
  with open(os.path.join(tmp_path, "eval", "results.json")) as f:
    assert json.load(f)["downstream"] == other


def test_a_released_hint_writer_needs_no_training_workdir(tiny_dir, tmp_path):
  """`policy.path` alone (e.g. the published prompt4trust-cgpgenerator-1.5B): its own hints."""
  config = _config("", methods=("prompt4trust",), corruptions=())
  config.policy.update(path=tiny_dir, train_workdir="")
  workdir = str(tmp_path / "eval")
  launch.evaluate(config, workdir)
  with open(os.path.join(workdir, "runs", "prompt4trust.jsonl")) as f:
    stored = {r["id"]: r["hint"] for r in map(json.loads, f)}
  examples = evaluation.examples(config, workdir, config.data.split, config.data.num_examples)
  policy, tok = models.from_pretrained(tiny_dir), models.load_tokenizer(tiny_dir)
  preset = prompts.preset(config.prompts.preset)
  want = hints.write(policy, tok, tokenizer_lib.stop_token_ids(tok, tiny_dir), examples,
                     preset=preset, max_new_tokens=8, temperature=0.0).texts
  assert [stored[x["id"]] for x in examples] == want


def test_load_policy_restores_the_trained_parameters(trained):
  base = models.from_pretrained(os.path.join(trained, "random_models", "qwen2_tiny"),
                                param_dtype="float32")
  before = jax.tree.map(np.asarray, nnx.state(base))
  assert checkpoints.load_policy(trained, base) == 2
  after = jax.tree.map(np.asarray, nnx.state(base))
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                      jax.tree.leaves(after))]
  assert any(changed)  # two GRPO steps moved the weights
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    checkpoints.load_policy(os.path.dirname(trained), base)


def test_plan_runs_each_pass_once_and_names_unknown_methods():
  methods = ("csc", "csa", "entropy", "entropy_prompt4trust", "logit_scaled")
  plan = lambda methods, **e: evaluation.plan(
      dict(methods=methods, consistency_samples=21, entropy_samples=40, **e))
  runs = plan(methods)
  # The original's entropy samples the downstream's own settings, without and with the hint.
  assert [(r.name, r.samples, r.sampling, r.hint, r.split) for r in runs] == [
      ("samples", 21, True, "none", "test"), ("entropy", 40, False, "none", "test"),
      ("entropy_prompt4trust", 40, False, "policy", "test"), ("logit", 1, False, "none", "test"),
      ("logit_val", 1, False, "none", "val")]
  # "consistency": entropy reads the CSC samples (one run of the larger count).
  shared = plan(("csc", "entropy"), entropy_sampling="consistency")
  assert [(r.name, r.samples, r.sampling) for r in shared] == [("samples", 40, True)]
  with pytest.raises(ValueError, match="entropy_sampling='downstream'"):
    plan(("entropy_prompt4trust",), entropy_sampling="consistency")
  assert [r.samples for r in plan(("csa",))] == [21]
  # Abstention compares with the no-hint answers, so it brings that run along.
  assert [r.name for r in plan(("abstain",))] == ["no_hint", "abstain"]
  noisy = plan((), corruptions=("typo:2",), noise_methods=("prompt4trust", "rewrite"))
  assert [(r.name, r.hint, r.corruption, r.family) for r in noisy] == [
      ("prompt4trust@typo:2", "policy", "typo:2", "direct"),
      ("rewrite@typo:2", "none", "typo:2", "rewrite")]
  with pytest.raises(ValueError, match="Unknown evaluation methods \\['verbal'\\]"):
    plan(("verbal", "no_hint"))
  with pytest.raises(ValueError, match="Severity of 'typo' must be an int in 1..5, got 9"):
    plan(("no_hint",), corruptions=("typo:9",), noise_methods=("no_hint",))


def test_run_store_drops_a_torn_last_line(tmp_path):
  path = str(tmp_path / "run.jsonl")
  store = run_store.RunStore(path)
  store.append([{"id": "a", "x": 1}, {"id": "b", "x": 2}])
  with open(path, "a") as f:
    f.write('{"id": "c", "x"')
  reopened = run_store.RunStore(path)
  assert set(reopened.items) == {"a", "b"} and reopened.done(["a", "b"])
  assert not reopened.done(["a", "c"])
  with open(path) as f:
    assert f.read().count("\n") == 2 and not f.read()


@pytest.mark.parametrize("module", [eval_demo, eval_pmcvqa, eval_abstain, eval_calibprompt,
                                    eval_noise, eval_prompt_search])
def test_configs_plan_their_methods(module):
  config = module.get_config()
  e = config.eval
  runs = evaluation.plan(e)
  assert len({r.name for r in runs}) == len(runs)
  names = evaluation.method_names(config)
  assert len(names) == len(set(names)) >= len(e.methods)
  if module is eval_noise:  # every corruption at three severities, per noise method
    assert len(names) == 2 + 3 * len(noise.CORRUPTIONS) * len(e.noise_methods)


def test_a_saved_instruction_is_reused_without_searching(trained, tmp_path, monkeypatch):
  path = tmp_path / "best.json"
  path.write_text(json.dumps({"best": "Answer carefully. " + prompts.DOWNSTREAM_INSTRUCTION}))
  used = []
  with_config = downstream.Downstream.with_config
  monkeypatch.setattr(downstream.Downstream, "with_config",
                      lambda self, c: used.append(c.instruction) or with_config(self, c))
  config = _config(trained, methods=("prompt_search",), corruptions=())
  config.prompt_search.instruction_file = str(path)
  launch.evaluate(config, str(tmp_path / "eval"))
  assert used == [json.loads(path.read_text())["best"]]
  assert not os.path.exists(tmp_path / "eval" / "prompt_search.json")  # no search ran


def test_a_new_baseline_is_one_registered_family(trained, tmp_path, monkeypatch):
  # A baseline defined outside the package: confidence 1/2 on the no-hint answers, whose
  # run it shares with no_hint (planned once), scored with its own extra metric.
  monkeypatch.setattr(registry, "FAMILIES", dict(registry.FAMILIES))

  @registry.register("half")
  class Half(registry.Family):
    methods = ("half",)

    def runs(self, methods, settings):
      return [registry.Run("no_hint")]

    def score(self, method, stored):
      base = stored.first_answers("no_hint")
      return registry.Scored(base.letter_B, np.full(len(stored.test), 0.5), base.valid_B,
                             {"half/constant": 0.5})

  with pytest.raises(ValueError, match="already registered"):
    registry.register("half")(Half)
  assert [r.name for r in evaluation.plan(dict(methods=("no_hint", "half")))] == ["no_hint"]
  config = _config(trained, methods=("no_hint", "half"), corruptions=())
  results = launch.evaluate(config, str(tmp_path / "eval"))
  assert results["half"]["half/constant"] == 0.5
  assert results["half"]["all/accuracy"] == results["no_hint"]["all/accuracy"]
  # ECE of a constant confidence: |accuracy - 1/2| (one bin holds every answer).
  assert results["half"]["all/ece"] == pytest.approx(abs(results["half"]["all/accuracy"] - 0.5))
