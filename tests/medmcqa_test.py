"""MedMCQA end to end: numbered options, answers read by number, train then evaluate."""

from configs import medmcqa
from prompt4trust_jax import data, evaluation, prompts
from prompt4trust_jax.downstream import answerer as downstream
from tests import launch


def test_medmcqa_trains_and_evaluates(tmp_path, monkeypatch):
  config = medmcqa.get_config()
  config.sampling.max_new_tokens = 8
  config.train.update(rollouts=1, checkpoint_every=1)
  seen = []
  original = downstream.Downstream.prompt_text

  def record(self, item, hint, with_image):
    seen.append(original(self, item, hint, with_image))
    return seen[-1]

  monkeypatch.setattr(downstream.Downstream, "prompt_text", record)
  metrics = launch.train(config, str(tmp_path / "train"))
  assert metrics["downstream/invalid_rate"] == 0  # structured mode over the numbers 1-4
  assert "four options (1, 2, 3, or 4)" in seen[0] and "\n(1) " in seen[0]
  assert "<|image_pad|>" not in seen[0]

  c = medmcqa.get_config("eval")
  c.policy.update(train_workdir=str(tmp_path / "train"), max_new_tokens=8)
  c.eval.update(methods=("no_hint", "prompt4trust", "csc"),
                corruptions=(), consistency_samples=3, entropy_samples=3, bootstrap_samples=20,
                batch_size=4)
  results = launch.evaluate(c, str(tmp_path / "eval"))
  assert set(results) == set(evaluation.method_names(c))
  assert results["no_hint"]["invalid_rate"] == 0  # structured: always a number 1-4
  # configs/medmcqa.py:eval's own method list plans (text methods, text noise only).
  full = medmcqa.get_config("eval")
  assert "abstain" not in evaluation.method_names(full) and "typo:3" in full.eval.corruptions


def test_medmcqa_prompt_and_labels():
  p = prompts.preset("medmcqa")
  text = p.downstream("Which hormone lowers blood glucose?",
                      ["(1) Insulin", "(2) Glucagon", "(3) Cortisol", "(4) Adrenaline"], None)
  assert text.endswith("Options:\n(1) Insulin\n(2) Glucagon\n(3) Cortisol\n(4) Adrenaline"
                       "\n\nAnswer:")
  assert data.letters("medmcqa") == "1234" and data.letters("pmc_vqa/paper") == "ABCD"
