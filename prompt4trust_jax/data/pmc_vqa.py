"""PMC-VQA as a TFDS builder (array_record, no TensorFlow), from a local copy of the files.

`manual_dir` holds what users download: `train.csv`, `test.csv`, `test_clean.csv` and the
images as an `images/` folder or `images.zip`. CSV columns: Figure_path, Question, Answer,
Choice A..D (with their "A:" prefixes), Answer_label.

Configs:
- `paper`: the paper's splits. `train_5k` is the original implementation's draw
  (vccrl-llm's dataset/gen_train.py): `random.Random(42).randint` over train.csv's rows,
  skipping rows already drawn and rows whose image is missing, does not open and convert
  to RGB, or has a side under 28 px, until 5,000 are kept, in draw order. `val_1k` is the
  next 1,000 rows that draw keeps (the original built none; disjoint from train_5k).
  `test_clean` is every usable row of test_clean.csv. Only drawn rows are checked, so
  building it reads ~6k images.
- `paper_permutation`: builder 1.0.0's `paper`: the first 5,000 / next 1,000 usable rows in
  the order of a seed-42 permutation (`numpy.random.RandomState(42).permutation`, the order
  `pandas.DataFrame.sample(frac=1, random_state=42)` gives).
- `full`: every usable row of train.csv, test.csv and test_clean.csv.
- `mini`: like `paper` with 32 / 8 rows (`train_32`, `val_8`): for the committed fixture.
- `toy`: like `paper` with 256 / 64 rows (`train_256`, `val_64`): the demo's toy world.

"Usable" means the row passes `validation` (all columns, a known label, an image that
exists inside the image root, decodes and has sides >= 28 px, UTF-8 text). Unusable rows
are listed by reason in `skipped.json` next to the prepared files, or raise with
`strict=True`. Images are stored as the source encoded them and decoded on read.

The draw counts a row exactly when the original would keep it, so the chosen rows are the
original's: the image is Figure_path as written (unstripped), and an image path that leaves
the image root (refused here) counts as not kept. Rows the draw passes over are reported
under their reason. Our other checks (columns, label, UTF-8 text) then run on the chosen
rows; one that fails is reported and dropped, not replaced by a further draw, so the rest
stay aligned with the original's selection and the split holds fewer rows. Text cells are
stored as written (prompt presets decide on stripping); only Answer_label is stripped.

Example ids are stable: `<csv stem>-<0-based data row>`, e.g. `train-000123`.
"""

import csv
import dataclasses
import os
import random

import numpy as np
import tensorflow_datasets as tfds

from prompt4trust_jax.data import validation
from prompt4trust_jax.downstream import parsing

COLUMNS = ("Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
           "Answer_label")
LETTERS = parsing.LETTERS  # PMC-VQA's option letters are the ones the parsers read
# How `paper`-like configs choose train/val rows (see the module docstring).
SELECTIONS = ("reference_draw", "permutation")


@dataclasses.dataclass
class PmcVqaConfig(tfds.core.BuilderConfig):
  """`train_size` / `val_size` rows of train.csv chosen by `selection` (see the module
  docstring); None: the full splits."""
  train_size: int | None = None
  val_size: int | None = None
  seed: int = 42
  selection: str = "reference_draw"

  def __post_init__(self):
    if self.selection not in SELECTIONS:
      raise ValueError(f"PmcVqaConfig {self.name!r} has selection {self.selection!r}; choose "
                       f"from {SELECTIONS}.")


def _size_name(n: int) -> str:
  return f"{n // 1000}k" if n % 1000 == 0 else str(n)


class PmcVqa(validation.CheckedBuilder):
  """PMC-VQA multiple-choice medical VQA (local files; see the module docstring)."""

  name = "pmc_vqa"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.1.0": "paper and mini draw train/val rows like the original's gen_train.py "
               "(random.Random(42).randint); the old permutation is paper_permutation.",
      "1.0.0": "Initial release.",
  }
  BUILDER_CONFIGS = [
      PmcVqaConfig(name="paper", description="The paper's train_5k / val_1k / test_clean.",
                   train_size=5000, val_size=1000, selection="reference_draw"),
      PmcVqaConfig(name="paper_permutation",
                   description="train_5k / val_1k by a seed-42 numpy permutation (1.0.0's paper).",
                   train_size=5000, val_size=1000, selection="permutation"),
      PmcVqaConfig(name="full", description="All of train.csv, test.csv, test_clean.csv."),
      PmcVqaConfig(name="mini", description="train_32 / val_8 / test_clean (fixtures).",
                   train_size=32, val_size=8, selection="reference_draw"),
      PmcVqaConfig(name="toy", description="train_256 / val_64 / test_clean (the toy world's "
                   "synthetic copy, configs/demo.py).", train_size=256, val_size=64,
                   selection="reference_draw"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put PMC-VQA's train.csv, test.csv, test_clean.csv and its images/ folder (or images.zip) "
      "in manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=self.question_features(
            LETTERS, answer_text=tfds.features.Text(),
            image=tfds.features.Image(shape=(None, None, 3)), image_path=tfds.features.Text()),
        homepage="https://github.com/xiaoman-zhang/PMC-VQA")

  def _split_generators(self, dl_manager):
    manual = os.fspath(dl_manager.manual_dir)
    store = validation.ImageStore(os.path.join(manual, "images"))
    splits = self.checked_splits(lambda report: self._checked_splits(manual, store, report))
    return {name: self._generate_examples(rows, store) for name, rows in splits.items()}

  def _checked_splits(self, manual, store, report) -> dict[str, list[dict]]:
    cfg = self.builder_config
    if cfg.train_size is None:
      return {name: _usable_rows(manual, name, store, report)
              for name in ("train", "test", "test_clean")}
    needed = cfg.train_size + cfg.val_size
    if cfg.selection == "reference_draw":
      picked = _drawn_rows(manual, store, report, cfg.seed, needed)
    else:
      picked = _usable_rows(manual, "train", store, report, order_seed=cfg.seed, limit=needed)
    if len(picked) < needed:
      raise ValueError(f"{manual}/train.csv has {len(picked)} usable rows; config {cfg.name!r} "
                       f"needs {cfg.train_size} + {cfg.val_size} (skipped rows are listed in "
                       "skipped.json). Use the `full` config for a small copy.")
    # A drawn row our checks dropped is None: it keeps its place, so the split is short.
    kept = lambda part: [row for row in part if row is not None]
    return {f"train_{_size_name(cfg.train_size)}": kept(picked[:cfg.train_size]),
            f"val_{_size_name(cfg.val_size)}": kept(picked[cfg.train_size:]),
            "test_clean": _usable_rows(manual, "test_clean", store, report)}

  def _generate_examples(self, rows, store):
    # Rows hold paths, not bytes, so the full train split never sits in memory at once.
    for example in rows:
      yield example["id"], {**example, "image": store.read(example["image_path"])}


def _read_csv(manual: str, stem: str) -> tuple[str, list[dict]]:
  """The path of `<stem>.csv` and its data rows, with PMC-VQA's header checked."""
  path = os.path.join(manual, f"{stem}.csv")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing; manual_dir must hold PMC-VQA's {stem}.csv.")
  # surrogateescape keeps undecodable bytes so the row, not the file, is rejected.
  with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path}: header lacks {missing}; expected PMC-VQA's columns {COLUMNS}.")
    return path, list(reader)


def _row_id(stem: str, index: int, num_rows: int) -> str:
  return f"{stem}-{index:0{max(6, len(str(num_rows)))}d}"


def _usable_rows(manual: str, stem: str, store: validation.ImageStore,
                 report: validation.SkipReport, order_seed: int | None = None,
                 limit: int | None = None) -> list[dict]:
  """Checked examples of `<stem>.csv` in file order (or a seeded permutation), up to `limit`."""
  path, rows = _read_csv(manual, stem)
  order = range(len(rows)) if order_seed is None else np.random.RandomState(
      order_seed).permutation(len(rows))
  examples = []
  for index in order:
    if limit is not None and len(examples) == limit:
      break
    row_id = _row_id(stem, index, len(rows))
    report.checked += 1
    try:
      examples.append(_example(rows[index], row_id, store))
    except validation.BadRowError as e:
      report.skip(row_id, e, path)
  return examples


def _drawn_rows(manual: str, store: validation.ImageStore, report: validation.SkipReport,
                seed: int, limit: int) -> list[dict | None]:
  """The original's gen_train.py draw over train.csv: up to `limit` kept rows in draw order,
  each a checked example or None where our further checks dropped it."""
  path, rows = _read_csv(manual, "train")
  rng = random.Random(seed)  # The stream of random.seed(seed) + random.randint.
  used, kept = set(), []
  while len(kept) < limit and len(used) < len(rows):
    index = rng.randint(0, len(rows) - 1)
    if index in used:
      continue
    used.add(index)
    row_id = _row_id("train", index, len(rows))
    report.checked += 1
    try:
      # The original's test alone decides what counts: the image as written opens as RGB.
      image_path = store.check(rows[index].get("Figure_path") or "")
    except validation.BadRowError as e:
      report.skip(row_id, e, path)
      continue
    try:
      kept.append(_example(rows[index], row_id, store, image_path))
    except validation.BadRowError as e:
      report.skip(row_id, e, path)
      kept.append(None)  # Not replaced: later rows stay those the original kept.
  return kept


def _example(row: dict, row_id: str, store: validation.ImageStore,
             image_path: str | None = None) -> dict:
  """The stored example of a CSV row; `image_path` is its image if already checked, else the
  stripped Figure_path is checked."""
  cells = {c: validation.text(row.get(c), c) for c in COLUMNS}
  label = cells["Answer_label"].strip()
  if label not in LETTERS:
    raise validation.BadRowError(validation.UNKNOWN_LABEL,
                                 f"Answer_label {label!r} is not one of {LETTERS}")
  if image_path is None:
    image_path = store.check(cells["Figure_path"].strip())
  return {"id": row_id, "question": cells["Question"],
          "options": [cells[f"Choice {letter}"] for letter in LETTERS],
          "answer": LETTERS.index(label), "answer_text": cells["Answer"],
          "image_path": image_path}
