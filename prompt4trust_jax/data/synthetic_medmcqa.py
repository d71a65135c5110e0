"""Synthetic MedMCQA: text-only four-option questions in MedMCQA's JSON-lines layout.

Writes `train.json` and `dev.json` (one object per line: `id, question, opa, opb, opc, opd,
cop, subject_name`, cop = the correct option 1-4), as the release holds them. Each row asks
one of `FACTS` with its four options in a seeded order, so the answer letter varies.

Regenerate the committed copy (`pipeline.MEDMCQA_FIXTURE_DIR`):
  python -m prompt4trust_jax.data.synthetic_medmcqa --out=prompt4trust_jax/data/fixture/medmcqa_tiny
"""

import json
import os

import numpy as np
from absl import app, flags

# (subject, question, correct answer, three wrong answers)
FACTS = (
    ("Anatomy", "Which nerve supplies the deltoid muscle?", "Axillary", ("Radial", "Ulnar",
                                                                       "Median")),
    ("Physiology", "Which hormone lowers blood glucose?", "Insulin", ("Glucagon", "Cortisol",
                                                                    "Adrenaline")),
    ("Pharmacology", "Which drug reverses a heparin overdose?", "Protamine",
     ("Vitamin K", "Naloxone", "Flumazenil")),
    ("Microbiology", "Which organism causes tuberculosis?", "Mycobacterium tuberculosis",
     ("Staphylococcus aureus", "Escherichia coli", "Candida albicans")),
    ("Biochemistry", "Which vitamin deficiency causes scurvy?", "Vitamin C",
     ("Vitamin A", "Vitamin D", "Vitamin B12")),
    ("Pathology", "Which cells form granulomas?", "Epithelioid macrophages",
     ("Neutrophils", "Eosinophils", "Plasma cells")),
    ("Anatomy", "Which bone is the most frequently fractured in the body?", "Clavicle",
     ("Femur", "Scaphoid", "Radius")),
    ("Physiology", "Where is erythropoietin mainly produced in adults?", "Kidney",
     ("Liver", "Spleen", "Bone marrow")),
)


def write_medmcqa(out_dir: str, num_train: int = 24, num_dev: int = 8, seed: int = 0) -> str:
  """Writes a synthetic MedMCQA copy into `out_dir` (created if missing); returns `out_dir`."""
  if min(num_train, num_dev) < 0:
    raise ValueError(f"Row counts must be >= 0, got num_train={num_train}, num_dev={num_dev}.")
  os.makedirs(out_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  for stem, n, first in (("train", num_train, 0), ("dev", num_dev, num_train)):
    with open(os.path.join(out_dir, f"{stem}.json"), "w", encoding="utf-8") as f:
      for i in range(first, first + n):
        subject, question, right, wrong = FACTS[i % len(FACTS)]
        options = [right, *wrong]
        order = rng.permutation(4)
        row = {"id": f"synthetic-{i:05d}", "question": question,
               **{k: options[j] for k, j in zip(("opa", "opb", "opc", "opd"), order)},
               "cop": int(np.flatnonzero(order == 0)[0]) + 1, "subject_name": subject}
        f.write(json.dumps(row) + "\n")
  return out_dir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  print(f"wrote {write_medmcqa(flags.FLAGS.out)}")


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Folder to write (created if missing).", required=True)
  app.run(main)
