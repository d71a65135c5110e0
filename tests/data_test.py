"""The TFDS builders (on the committed fixture and on broken copies) and the Grain pipeline."""

import csv
import json
import os
import random
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from prompt4trust_jax import data
from prompt4trust_jax.data import pmc_vqa, validation

FIXTURE = data.FIXTURE_DIR


def _csv_rows(folder, stem):
  with open(os.path.join(folder, f"{stem}.csv"), newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _write_csv(folder, stem, rows):
  with open(os.path.join(folder, f"{stem}.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return {split: data.source("pmc_vqa/mini", split, data_dir, FIXTURE)
          for split in ("train_32", "val_8", "test_clean")}


def _reference_draw(folder, limit):
  """vccrl-llm's gen_train.py loop, re-done plainly: (kept row indices in order, rows drawn)."""
  rows = _csv_rows(folder, "train")
  rng = random.Random(42)
  used, kept = set(), []
  while len(kept) < limit and len(used) < len(rows):
    idx = rng.randint(0, len(rows) - 1)
    if idx in used:
      continue
    used.add(idx)
    path = os.path.join(folder, "images", rows[idx]["Figure_path"])
    if not os.path.exists(path):
      continue
    try:
      image = Image.open(path).convert("RGB")
    except Exception:
      continue
    if image.height >= 28 and image.width >= 28:
      kept.append(idx)
  return kept, len(used)


def _id_set(records):
  return {data.decode(r)["id"] for r in records}


def _skipped(data_dir, config):
  with open(os.path.join(data_dir, "pmc_vqa", config, str(pmc_vqa.PmcVqa.VERSION),
                         "skipped.json")) as f:
    return json.load(f)


def test_mini_splits_follow_the_reference_draw_of_train_csv(mini):
  train_rows = _csv_rows(FIXTURE, "train")
  # The original's draw: the first 32 rows it keeps train, the next 8 validate. TFDS stores
  # records in its own (key-hash) order, so only the sets can be compared.
  order, _ = _reference_draw(FIXTURE, 40)
  assert len(order) == 40
  train = [data.decode(r) for r in mini["train_32"]]
  val = [data.decode(r) for r in mini["val_8"]]
  assert {e["id"] for e in train} == {f"train-{i:06d}" for i in order[:32]}
  assert {e["id"] for e in val} == {f"train-{i:06d}" for i in order[32:]}
  assert len(mini["test_clean"]) == len(_csv_rows(FIXTURE, "test_clean"))
  for example in train + val:
    row = train_rows[int(example["id"].split("-")[1])]
    # Cells as written in the CSV (the options keep their trailing spaces).
    assert example["question"] == row["Question"]
    assert example["options"] == tuple(row[f"Choice {x}"] for x in "ABCD")
    assert "ABCD"[example["answer"]] == row["Answer_label"]
    with Image.open(os.path.join(FIXTURE, "images", row["Figure_path"])) as source:
      np.testing.assert_array_equal(np.asarray(example["image"]),
                                    np.asarray(source.convert("RGB")))


def _build(config, manual, data_dir):
  """Every split of a PMC-VQA build under a config made for the test."""
  builder = pmc_vqa.PmcVqa(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))
  skip = {"image": tfds.decode.SkipDecoding()}  # Records as data.source gives them.
  return {name: builder.as_data_source(split=name, decoders=skip)
          for name in builder.info.splits}


def test_paper_permutation_keeps_the_seed_42_permutation(tmp_path):
  config = pmc_vqa.PmcVqa.builder_configs["paper_permutation"]
  assert (config.selection, config.seed, config.train_size, config.val_size) == (
      "permutation", 42, 5000, 1000)
  # The same selection at the fixture's size: a seed-42 permutation of train.csv's rows
  # (pandas' sample(frac=1, random_state=42) order); the first 32 train, the next 8 validate.
  small = pmc_vqa.PmcVqaConfig(name="permutation_32", train_size=32, val_size=8,
                               selection="permutation")
  splits = _build(small, FIXTURE, str(tmp_path / "tfds"))
  order = np.random.RandomState(42).permutation(len(_csv_rows(FIXTURE, "train")))
  assert _id_set(splits["train_32"]) == {f"train-{i:06d}" for i in order[:32]}
  assert _id_set(splits["val_8"]) == {f"train-{i:06d}" for i in order[32:40]}
  with pytest.raises(ValueError, match="selection 'shuffle'; choose from"):
    pmc_vqa.PmcVqaConfig(name="bad", train_size=1, val_size=1, selection="shuffle")


def _spoilt_copy(tmp_path, spoil):
  """The fixture with `spoil(rows)` applied to train.csv's rows."""
  folder = str(tmp_path / "spoilt")
  shutil.copytree(FIXTURE, folder)
  rows = _csv_rows(folder, "train")
  spoil(rows)
  _write_csv(folder, "train", rows)
  return folder


def test_reference_draw_passes_over_rows_the_original_skips(tmp_path):
  order, _ = _reference_draw(FIXTURE, 48)  # The intact draw: every row, in draw order.
  missing, unsafe = order[3], order[35]

  def spoil(rows):
    rows[missing]["Figure_path"] = "no_such_scan.png"
    # The original would open this (it exists); leaving the image root is refused here.
    rows[unsafe]["Figure_path"] = "../images/" + rows[unsafe]["Figure_path"]

  folder = _spoilt_copy(tmp_path, spoil)
  data_dir = str(tmp_path / "tfds")
  train = data.source("pmc_vqa/mini", "train_32", data_dir, folder)
  val = data.source("pmc_vqa/mini", "val_8", data_dir, folder)
  # The draw goes on past both: the same stream, the rows after them move up.
  expected = [i for i in order if i not in (missing, unsafe)][:40]
  assert expected[:32] != order[:32] and expected[32:] != order[32:40]
  assert _id_set(train) == {f"train-{i:06d}" for i in expected[:32]}
  assert _id_set(val) == {f"train-{i:06d}" for i in expected[32:]}
  report = _skipped(data_dir, "mini")
  assert report["ids"] == {validation.UNSAFE_PATH: [f"train-{unsafe:06d}"],
                           validation.MISSING_IMAGE: [f"train-{missing:06d}"]}
  # Every row drawn until 40 were kept was checked once.
  assert report["checked"] == order.index(expected[-1]) + 1 + len(_csv_rows(FIXTURE,
                                                                            "test_clean"))


def test_reference_draw_drops_rows_our_checks_refuse_without_replacing_them(tmp_path):
  order, drawn = _reference_draw(FIXTURE, 40)
  unknown, untrimmed = order[5], order[33]

  def spoil(rows):
    rows[unknown]["Answer_label"] = "E"
    # Kept as written: the builder strips the label only.
    rows[untrimmed]["Question"] = "  " + rows[untrimmed]["Question"] + " "
    rows[untrimmed]["Answer_label"] = " " + rows[untrimmed]["Answer_label"]

  folder = _spoilt_copy(tmp_path, spoil)
  data_dir = str(tmp_path / "tfds")
  train = data.source("pmc_vqa/mini", "train_32", data_dir, folder)
  val = [data.decode(r) for r in data.source("pmc_vqa/mini", "val_8", data_dir, folder)]
  # The original keeps the unknown label (it checks images only), so it holds its place:
  # train_32 has 31 rows and val_8 the original's 8.
  assert _id_set(train) == {f"train-{i:06d}" for i in order[:32] if i != unknown}
  assert {e["id"] for e in val} == {f"train-{i:06d}" for i in order[32:]}
  rows = _csv_rows(folder, "train")
  spaced = next(e for e in val if e["id"] == f"train-{untrimmed:06d}")
  assert spaced["question"] == rows[untrimmed]["Question"]
  assert spaced["question"].startswith("  ") and "ABCD"[spaced["answer"]] == rows[untrimmed][
      "Answer_label"].strip()
  report = _skipped(data_dir, "mini")
  assert report["ids"] == {validation.UNKNOWN_LABEL: [f"train-{unknown:06d}"]}
  assert report["checked"] == drawn + len(_csv_rows(FIXTURE, "test_clean"))


def test_records_keep_the_source_encoding(mini):
  record = mini["test_clean"][0]
  rows = {f"test_clean-{i:06d}": r for i, r in enumerate(_csv_rows(FIXTURE, "test_clean"))}
  path = os.path.join(FIXTURE, "images", rows[record["id"].decode()]["Figure_path"])
  with open(path, "rb") as f:
    assert record["image"] == f.read()


def _broken_copy(tmp_path):
  """The fixture with one bad train row per reason; returns {reason: row id}."""
  folder = str(tmp_path / "broken")
  shutil.copytree(FIXTURE, folder)
  rows = _csv_rows(folder, "train")
  images_dir = os.path.join(folder, "images")
  bad = {}

  def spoil(index, reason):
    bad[reason] = f"train-{index:06d}"
    return rows[index]

  spoil(0, validation.MISSING_COLUMN)["Question"] = ""
  spoil(1, validation.UNKNOWN_LABEL)["Answer_label"] = "E"
  spoil(2, validation.UNSAFE_PATH)["Figure_path"] = "../train.csv"
  spoil(3, validation.MISSING_IMAGE)["Figure_path"] = "no_such_scan.png"
  corrupt = spoil(4, validation.CORRUPT_IMAGE)["Figure_path"]
  with open(os.path.join(images_dir, corrupt), "rb") as f:
    head = f.read()[:60]  # a truncated PNG: the header is there, the pixels are not
  with open(os.path.join(images_dir, corrupt), "wb") as f:
    f.write(head)
  small = spoil(5, validation.SMALL_IMAGE)["Figure_path"]
  Image.new("RGB", (27, 64)).save(os.path.join(images_dir, small))
  spoil(6, validation.UNDECODABLE_TEXT)["Question"] = "@@NOT-UTF8@@"
  _write_csv(folder, "train", rows)
  path = os.path.join(folder, "train.csv")
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(raw.replace(b"@@NOT-UTF8@@", b"Which \xff\xfe scan?"))
  return folder, bad


def test_bad_rows_are_skipped_and_reported_by_reason(tmp_path):
  folder, bad = _broken_copy(tmp_path)
  data_dir = str(tmp_path / "tfds")
  train = data.source("pmc_vqa/full", "train", data_dir, folder)
  ids = {r["id"].decode() for r in train}
  assert len(train) == len(_csv_rows(FIXTURE, "train")) - len(bad)
  assert not ids & set(bad.values())
  report = _skipped(data_dir, "full")
  assert report["ids"] == {reason: [row_id] for reason, row_id in bad.items()}
  assert report["counts"] == {reason: 1 for reason in bad}
  assert report["skipped"] == len(bad) == len(validation.REASONS)


def test_strict_build_names_the_first_bad_row(tmp_path):
  folder, bad = _broken_copy(tmp_path)
  with pytest.raises(validation.BadRowError, match=f"{bad[validation.MISSING_COLUMN]}.*Question"):
    data.source("pmc_vqa/full", "train", str(tmp_path / "tfds"), folder, strict=True)


def test_images_zip_gives_the_same_examples_as_the_folder(tmp_path, mini):
  folder = str(tmp_path / "zipped")
  shutil.copytree(FIXTURE, folder)
  with zipfile.ZipFile(os.path.join(folder, "images.zip"), "w") as z:
    for name in sorted(os.listdir(os.path.join(folder, "images"))):
      z.write(os.path.join(folder, "images", name), f"images/{name}")
  shutil.rmtree(os.path.join(folder, "images"))
  zipped = data.source("pmc_vqa/mini", "test_clean", str(tmp_path / "tfds"), folder)
  by_id = {r["id"]: r for r in mini["test_clean"]}
  assert len(zipped) == len(by_id)
  for record in zipped:
    assert record["image"] == by_id[record["id"]]["image"]


def test_paper_config_on_a_small_copy_says_how_many_rows_it_has(tmp_path):
  with pytest.raises(ValueError, match="48 usable rows; config 'paper' needs 5000 \\+ 1000"):
    data.source("pmc_vqa/paper", "train_5k", str(tmp_path / "tfds"), FIXTURE)


def test_missing_files_and_unknown_names_are_explained(tmp_path):
  empty = tmp_path / "empty"
  (empty / "images").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="train.csv"):
    data.source("pmc_vqa/full", "train", str(tmp_path / "tfds"), str(empty))
  with pytest.raises(ValueError, match="Unknown data set 'pmc'"):
    data.source("pmc", "train", str(tmp_path / "tfds"))


def test_medmcqa_builder_numbers_the_options_and_reports_bad_lines(tmp_path):
  manual = tmp_path / "medmcqa"
  manual.mkdir()
  good = [dict(id=f"q{i}", question=f"Which nerve {i}?", opa="Ulnar", opb="Radial", opc="Median",
               opd="Axillary", cop=1 + i % 4, subject_name="Anatomy") for i in range(6)]
  lines = [json.dumps(r).encode() for r in good]
  no_opc = {k: v for k, v in good[0].items() if k != "opc"} | {"id": "no-opc"}
  lines += [b"{not json", json.dumps({**good[0], "id": "bad-cop", "cop": 7}).encode(),
            json.dumps(no_opc).encode()]
  (manual / "train.json").write_bytes(b"\n".join(lines) + b"\n")
  (manual / "dev.json").write_bytes(b"\n".join(lines[:2]) + b"\n")
  data_dir = str(tmp_path / "tfds")
  train = sorted(map(data.decode, data.source("medmcqa", "train", data_dir, str(manual))),
                 key=lambda e: e["id"])
  assert [e["id"] for e in train] == [f"q{i}" for i in range(6)]
  assert train[1]["options"] == ("(1) Ulnar", "(2) Radial", "(3) Median", "(4) Axillary")
  assert [e["answer"] for e in train] == [i % 4 for i in range(6)]
  assert train[0]["image"] is None
  assert len(data.source("medmcqa", "validation", data_dir, str(manual))) == 2
  with open(os.path.join(data_dir, "medmcqa", "1.1.0", "skipped.json")) as f:
    report = json.load(f)
  # Bad lines are named by file and line: their own id may be what is broken.
  assert report["ids"] == {validation.MISSING_COLUMN: ["train-000008"],
                           validation.UNKNOWN_LABEL: ["train-000007"],
                           validation.UNDECODABLE_TEXT: ["train-000006"]}


def _ids(batches):
  return [[e["id"] for e in batch] for batch in batches]


def test_grain_batches_are_seeded_reshuffled_per_epoch_and_resume_from_their_state(mini):
  records = mini["train_32"]
  it = iter(data.batches(records, 8, seed=3))
  first = _ids(next(it) for _ in range(8))  # two epochs of 4 batches
  again = iter(data.batches(records, 8, seed=3))
  assert _ids(next(again) for _ in range(8)) == first
  epoch_1, epoch_2 = sum(first[:4], []), sum(first[4:], [])
  all_ids = sorted(data.decode(r)["id"] for r in records)
  assert sorted(epoch_1) == sorted(epoch_2) == all_ids  # each epoch sees every record once
  assert epoch_1 != epoch_2  # and in a new order
  assert _ids([next(iter(data.batches(records, 8, seed=4)))]) != first[:1]
  # Resume: the state after 5 batches continues exactly like the uninterrupted iterator.
  it = iter(data.batches(records, 8, seed=3))
  for _ in range(5):
    next(it)
  state = it.get_state()
  resumed = iter(data.batches(records, 8, seed=3))
  resumed.set_state(state)
  assert _ids(next(resumed) for _ in range(3)) == first[5:]


def test_grain_shards_read_their_part_of_every_global_batch(mini):
  records = mini["train_32"]
  whole = _ids(data.batches(records, 8, seed=0, num_epochs=1))
  read = [[], []]

  class Counted(list):  # records that remember which were read
    def __getitem__(self, i):
      read[shard].append(i)
      return super().__getitem__(i)

  parts = []
  for shard in range(2):
    parts.append(_ids(data.batches(Counted(records), 8, seed=0, num_epochs=1, shard_index=shard,
                                   shard_count=2)))
  assert [a + b for a, b in zip(*parts)] == whole  # host 0's half, then host 1's
  assert all(len(p) == 4 for p in parts[0] + parts[1])
  # Each shard read its own half of the records, once each.
  assert len(read[0]) == len(read[1]) == len(records) // 2
  assert sorted(read[0] + read[1]) == list(range(len(records)))
  with pytest.raises(ValueError, match="multiple of the process count"):
    data.batches(records, 3, seed=0, shard_count=2)
