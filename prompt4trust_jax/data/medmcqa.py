"""MedMCQA (text-only medical multiple choice) as a TFDS builder, from local JSON-lines files.

`manual_dir` holds the released `train.json` and `dev.json`: one JSON object per line with
`question, opa, opb, opc, opd, cop` (cop = the correct option, 1-4) and usually `id` and
`subject_name`. The released test.json has no answers and is not built.

Splits: `train` and `validation` (dev.json). Options are stored numbered as the original
implementation shows them ("(1) ...", ..., "(4) ..."): pair the data with the "medmcqa" parser
(answers are option numbers), letters "1234" in structured/logit modes and the "medmcqa"
prompt preset (`configs/medmcqa.py`). Bad rows
(malformed JSON or text, a missing field, `cop` outside 1-4) are skipped and listed in
`skipped.json`, or raise with `strict=True`. Ids: the row's `id`, else `<file stem>-<line>`.
"""

import json
import os

import tensorflow_datasets as tfds

from prompt4trust_jax.data import validation

FIELDS = ("question", "opa", "opb", "opc", "opd", "cop")
NUMBERS = "1234"
_FILES = {"train": "train.json", "validation": "dev.json"}


class Medmcqa(validation.CheckedBuilder):
  """MedMCQA from local files (see the module docstring)."""

  name = "medmcqa"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Options numbered \"(1) text\" as the original shows them.",
                   "1.0.0": "Options numbered \"1:text\"."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put MedMCQA's train.json and dev.json in manual_dir."

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=self.question_features(NUMBERS, subject=tfds.features.Text()),
        homepage="https://medmcqa.github.io")

  def _split_generators(self, dl_manager):
    manual = os.fspath(dl_manager.manual_dir)
    splits = self.checked_splits(lambda report: {
        split: _usable_rows(os.path.join(manual, name), report) for split, name in _FILES.items()})
    return {split: self._generate_examples(rows) for split, rows in splits.items()}

  def _generate_examples(self, rows):
    for example in rows:
      yield example["id"], example


def _usable_rows(path: str, report: validation.SkipReport) -> list[dict]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing; manual_dir must hold MedMCQA's "
                            f"{os.path.basename(path)}.")
  stem = os.path.splitext(os.path.basename(path))[0]
  examples, seen = [], set()
  with open(path, "rb") as f:
    for line_number, line in enumerate(f):
      if not line.strip():
        continue
      report.checked += 1
      fallback = f"{stem}-{line_number:06d}"
      try:
        example = _example(line, fallback)
      except validation.BadRowError as e:
        report.skip(fallback, e, path)
        continue
      if example["id"] in seen:  # TFDS keys must be unique; keep the row under its line
        example["id"] = fallback
      seen.add(example["id"])
      examples.append(example)
  return examples


def _example(line: bytes, fallback_id: str) -> dict:
  try:
    row = json.loads(line.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise validation.BadRowError(validation.UNDECODABLE_TEXT, f"not a UTF-8 JSON object ({e})")
  if not isinstance(row, dict):
    raise validation.BadRowError(validation.UNDECODABLE_TEXT, "the line is not a JSON object")
  cells = {k: validation.text(None if row.get(k) is None else str(row[k]), k) for k in FIELDS}
  cop = cells["cop"].strip()
  if cop not in NUMBERS:
    raise validation.BadRowError(validation.UNKNOWN_LABEL, f"cop {cop!r} is not one of 1-4")
  return {"id": str(row.get("id") or fallback_id), "question": cells["question"],
          "options": [f"({n}) {cells[k]}" for n, k in zip(NUMBERS, ("opa", "opb", "opc", "opd"))],
          "answer": NUMBERS.index(cop), "subject": str(row.get("subject_name") or "")}
