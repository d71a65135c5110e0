"""The TFDS builders (on the committed fixture and on broken copies) and the Grain pipeline."""

import csv
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from prompt4trust_jax import data
from prompt4trust_jax.data import validation

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


def test_mini_splits_follow_the_seed_42_order_of_train_csv(mini):
  train_rows = _csv_rows(FIXTURE, "train")
  # The paper's recipe, worked out independently: a seed-42 permutation of train.csv's rows
  # (pandas' sample(frac=1, random_state=42) order); the first 32 train, the next 8 validate.
  order = np.random.RandomState(42).permutation(len(train_rows))
  expected_train = {f"train-{i:06d}" for i in order[:32]}
  expected_val = {f"train-{i:06d}" for i in order[32:40]}
  train = [data.decode(r) for r in mini["train_32"]]
  val = [data.decode(r) for r in mini["val_8"]]
  assert {e["id"] for e in train} == expected_train
  assert {e["id"] for e in val} == expected_val
  assert len(mini["test_clean"]) == len(_csv_rows(FIXTURE, "test_clean"))
  for example in train + val:
    row = train_rows[int(example["id"].split("-")[1])]
    assert example["question"] == row["Question"]
    assert example["options"] == tuple(row[f"Choice {x}"] for x in "ABCD")
    assert "ABCD"[example["answer"]] == row["Answer_label"]
    with Image.open(os.path.join(FIXTURE, "images", row["Figure_path"])) as source:
      np.testing.assert_array_equal(np.asarray(example["image"]),
                                    np.asarray(source.convert("RGB")))


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
  with open(os.path.join(data_dir, "pmc_vqa", "full", "1.0.0", "skipped.json")) as f:
    report = json.load(f)
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
  assert train[1]["options"] == ("1:Ulnar", "2:Radial", "3:Median", "4:Axillary")
  assert [e["answer"] for e in train] == [i % 4 for i in range(6)]
  assert train[0]["image"] is None
  assert len(data.source("medmcqa", "validation", data_dir, str(manual))) == 2
  with open(os.path.join(data_dir, "medmcqa", "1.0.0", "skipped.json")) as f:
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


def test_grain_shards_are_disjoint_and_cover_the_split(mini):
  records = mini["train_32"]
  shards = [sum(_ids(data.batches(records, 4, seed=0, num_epochs=1, shard_index=i,
                                  shard_count=2)), []) for i in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(data.decode(r)["id"] for r in records)
