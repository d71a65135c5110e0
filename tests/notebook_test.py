"""The Colab notebook's cells run top to bottom on CPU with the demo config."""

import json
import os

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
  assert [row["rollout"] for row in namespace["history"]] == [1, 2]
