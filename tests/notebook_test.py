"""The Colab notebook's cells run top to bottom on CPU with the demo config."""

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_colab_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  with open(os.path.join(ROOT, "experiments", "colab_prompt4trust.ipynb")) as f:
    notebook = json.load(f)
  monkeypatch.setenv("PROMPT4TRUST_CI", "1")
  monkeypatch.setenv("PROMPT4TRUST_WORKDIR", str(tmp_path))
  monkeypatch.chdir(ROOT)
  namespace: dict = {}
  ran = 0
  for cell in notebook["cells"]:
    if cell["cell_type"] != "code" or "colab-only" in cell["metadata"].get("tags", []):
      continue
    source = "".join(cell["source"])
    assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines()), (
        "shell magics belong in colab-only cells")
    exec(compile(source, "notebook", "exec"), namespace)
    ran += 1
  assert ran == 5
  assert set(namespace["results"]) == {"no_hint", "prompt4trust", "logit"}
  assert namespace["metrics"]["downstream/invalid_rate"] == 0
  assert [(row["rollout"], "heldout/ece" in row) for row in namespace["history"]] == [
      (0, True), (1, False), (2, False), (2, True)]
  assert namespace["choice"].startswith("setting 'lora'")  # what one CPU fits


def test_the_paper_config_fits_the_runtime_it_finds():
  from configs import pmcvqa

  class Chip:
    def __init__(self, gb):
      self.gb = gb

    def memory_stats(self):
      return {"bytes_limit": self.gb * 1e9}

  config, choice = pmcvqa.for_runtime([Chip(16)])  # a Colab v2/v3/v5e chip
  assert choice.startswith("setting 'lora'") and config.policy.lora_rank == 16
  config, choice = pmcvqa.for_runtime([Chip(16)] * 8)  # a v5e-8 slice
  assert choice.startswith("setting 'fsdp'") and config.policy.lora_rank == 0
  assert config.policy.reference_dtype == "bfloat16" and config.policy.remat == "full"
  config, choice = pmcvqa.for_runtime([Chip(80)])  # one H100
  assert choice.startswith("setting 'one_gpu'") and config.grpo.micro_batches == 8
  assert pmcvqa.get_config("lora,multihost").distributed is not None
  with pytest.raises(ValueError, match="Unknown configs/pmcvqa.py args"):
    pmcvqa.get_config("huge")
