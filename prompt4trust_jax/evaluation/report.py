"""The evaluation harness's outputs: results.json, samples.csv, reliability diagram, table."""

import csv
import io
import json

import numpy as np

from prompt4trust_jax import plots, run_files
from prompt4trust_jax.downstream import parsing


def write(config, workdir: str, test, runs, answers, results, per_method):
  """results.json, samples.csv, reliability.png and results.md; prints the table.

  `answers[run][id]` is a run's stored record of an item; `per_method[m]` the
  (letter_B, confidence_B, valid_B) of method m over `test`.
  """
  gold_B = np.asarray([x["answer"] for x in test])
  # The data set's labels; a letter past them (an added option) by its index.
  letters = config.downstream.get("letters") or parsing.LETTERS
  letters += parsing.OPTION_LETTERS[len(letters):]
  out_dir = run_files.path(workdir)  # may be remote
  run_files.replace_text(out_dir / "results.json", json.dumps(
      {"data": f"{config.data.name}:{config.data.split}", "num_items": len(test),
       "downstream": config.downstream.path or f"random {config.downstream.random_shape}",
       "mode": config.downstream.mode, "methods": results}, indent=1))
  with io.StringIO(newline="") as f:
    columns = ["id", "question", "options", "gold"]
    columns += [f"{r.name}/{k}" for r in runs if r.split == "test" for k in ("hint", "text")]
    columns += [f"{m}/{k}" for m in per_method for k in ("letter", "confidence")]
    out = csv.writer(f)
    out.writerow(columns)
    for i, x in enumerate(test):
      row = [x["id"], x["question"], "\n".join(x["options"]), letters[x["answer"]]]
      for r in runs:
        if r.split == "test":
          item = answers[r.name][x["id"]]
          row += [item["hint"] or "", item["texts"][0]]
      for letter, confidence, valid in per_method.values():
        row += [letters[letter[i]] if valid[i] else "", f"{confidence[i]:.4f}"]
      out.writerow(row)
    run_files.replace_text(out_dir / "samples.csv", f.getvalue())
  plots.reliability_diagram(
      {m: (np.where(v, c, 1e-12), v & (letter == gold_B)) for m, (letter, c, v) in
       per_method.items()}, out_dir / "reliability.png",
      config.eval.num_bins, config.eval.binning)
  table = markdown_table(results)
  run_files.replace_text(out_dir / "results.md", table + "\n")
  print(table)


def markdown_table(results: dict[str, dict]) -> str:
  """Method | n | accuracy | ECE [95% CI] | Brier | AUROC | invalid, over all samples."""
  def ci(m, name):
    lo, hi = m[f"all/{name}_ci"]
    return f"{m[f'all/{name}']:.3f} [{lo:.3f}, {hi:.3f}]"
  lines = ["| method | n | accuracy | ECE | Brier | AUROC | over-confident errors | invalid |",
           "|---|---|---|---|---|---|---|---|"]
  for name, m in results.items():
    lines.append(f"| {name} | {m['all/count']} | {ci(m, 'accuracy')} | {ci(m, 'ece')} | "
                 f"{ci(m, 'brier')} | {m['all/auroc']:.3f} | {m['all/overconfident_errors']:.3f}"
                 f" | {m['invalid_rate']:.3f} |")
  return "\n".join(lines)
