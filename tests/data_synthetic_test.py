"""The synthetic PMC-VQA generator: the committed copy, the file format, answers in the pixels."""

import collections
import csv
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from prompt4trust_jax import data
from prompt4trust_jax.data import synthetic, validation
from prompt4trust_jax.downstream import images

FIXTURE = data.FIXTURE_DIR
# PMC-VQA's header, written out rather than taken from the library under test.
HEADER = "Figure_path,Question,Answer,Choice A,Choice B,Choice C,Choice D,Answer_label"
SPLITS = ("train", "test", "test_clean")
# Findings are drawn at 215+ grey levels, everything else at 153 or less.
BRIGHT = 185


def _rows(folder, stem):
  with open(os.path.join(folder, f"{stem}.csv"), newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _files(folder):
  return sorted(os.path.relpath(os.path.join(root, name), folder)
                for root, _, names in os.walk(folder) for name in names)


def _pixels(path):
  with Image.open(path) as img:
    return img.mode, img.size, np.asarray(img)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
  """The committed copy's arguments (those of `python -m ...synthetic` without flags)."""
  return synthetic.write_pmc_vqa(str(tmp_path_factory.mktemp("regenerated")), num_train=48,
                                 num_test=16, num_test_clean=16, image_size=64, seed=0)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
  return synthetic.write_pmc_vqa(str(tmp_path_factory.mktemp("large")), num_train=200,
                                 num_test=40, num_test_clean=10, seed=1)


def test_committed_copy_matches_the_generator(regenerated):
  """CSVs byte for byte, PNGs pixel for pixel (their bytes also depend on Pillow's zlib)."""
  assert _files(FIXTURE) == _files(regenerated)
  for name in _files(FIXTURE):
    committed, fresh = os.path.join(FIXTURE, name), os.path.join(regenerated, name)
    if name.endswith(".csv"):
      with open(committed, "rb") as a, open(fresh, "rb") as b:
        assert a.read() == b.read(), name
    else:
      (mode_a, size_a, a), (mode_b, size_b, b) = _pixels(committed), _pixels(fresh)
      assert (mode_a, size_a) == (mode_b, size_b), name
      np.testing.assert_array_equal(a, b, err_msg=name)
  assert [len(_rows(FIXTURE, s)) for s in SPLITS] == [48, 16, 16]
  assert sum(os.path.getsize(os.path.join(FIXTURE, n)) for n in _files(FIXTURE)) < 200_000


def test_same_arguments_write_identical_bytes(tmp_path):
  kwargs = {"num_train": 8, "num_test": 4, "num_test_clean": 2, "image_size": 56, "seed": 3,
            "zip_images": True}
  first = synthetic.write_pmc_vqa(str(tmp_path / "a"), **kwargs)
  second = synthetic.write_pmc_vqa(str(tmp_path / "b"), **kwargs)
  assert _files(first) == _files(second)
  for name in _files(first):
    with open(os.path.join(first, name), "rb") as a, open(os.path.join(second, name), "rb") as b:
      assert a.read() == b.read(), name
  other = synthetic.write_pmc_vqa(str(tmp_path / "c"), **{**kwargs, "seed": 4})
  assert _rows(other, "train") != _rows(first, "train")


def test_csv_header_and_cells_follow_pmc_vqa():
  for split in SPLITS:
    with open(os.path.join(FIXTURE, f"{split}.csv"), "rb") as f:
      assert f.readline() == (HEADER + "\n").encode()
    for row in _rows(FIXTURE, split):
      assert list(row) == HEADER.split(",") and None not in row.values()
      assert re.fullmatch(r"synthetic_\d{5}\.png", row["Figure_path"])
      label = row["Answer_label"]
      assert label in ("A", "B", "C", "D")
      texts = {}
      for letter in "ABCD":
        choice = row[f"Choice {letter}"]
        assert choice.startswith(f"{letter}:"), choice
        texts[letter] = choice[2:].strip()
      assert row["Answer"] == texts[label]
      assert list(texts.values()).count(row["Answer"]) == 1


def test_images_exist_and_open_at_the_requested_size(tmp_path):
  other = synthetic.write_pmc_vqa(str(tmp_path), num_train=4, num_test=2, num_test_clean=1,
                                  image_size=80)
  for folder, size in ((FIXTURE, 64), (other, 80)):
    for split in SPLITS:
      for row in _rows(folder, split):
        path = os.path.join(folder, "images", row["Figure_path"])
        mode, shape, _ = _pixels(path)
        assert (mode, shape) == ("L", (size, size)), path
        assert images.load_image(path).size == (size, size)


def test_test_clean_is_an_ordered_subset_of_test(large):
  for folder in (FIXTURE, large):
    test = [tuple(r.values()) for r in _rows(folder, "test")]
    positions = [test.index(tuple(r.values())) for r in _rows(folder, "test_clean")]
    assert positions == sorted(set(positions))
  assert len(_rows(large, "test_clean")) == 10


def test_train_and_test_rows_are_distinct(large):
  for folder in (FIXTURE, large):
    train = {r["Figure_path"] for r in _rows(folder, "train")}
    test = {r["Figure_path"] for r in _rows(folder, "test")}
    assert not train & test
    scans = [{_pixels(os.path.join(folder, "images", n))[2].tobytes() for n in names}
             for names in (train, test)]
    assert not scans[0] & scans[1]


def test_answer_letters_are_balanced_and_every_template_is_used(large):
  for split in ("train", "test"):
    rows = _rows(large, split)
    counts = collections.Counter(r["Answer_label"] for r in rows)
    assert sorted(counts) == list("ABCD")
    assert max(counts.values()) - min(counts.values()) <= 1, counts
  questions = {r["Question"] for r in _rows(large, "train")}
  assert questions == {q for k in synthetic.DEFAULT_KINDS for q in synthetic.TEMPLATES[k].questions}


def _components(mask):
  """Number of 4-connected groups of True pixels."""
  seen, count = np.zeros_like(mask), 0
  for start in zip(*np.nonzero(mask)):
    if seen[start]:
      continue
    count, stack = count + 1, [start]
    seen[start] = True
    while stack:
      y, x = stack.pop()
      for v, u in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
        if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
          seen[v, u] = True
          stack.append((v, u))
  return count


def _read(kind, scan):
  """The option index a reader of the pixels would choose, for the kinds read here."""
  h = scan.shape[0] // 2
  bright = scan > BRIGHT
  if kind == "quadrant":  # the brightest quadrant: upper left, upper right, lower left, ...
    means = [scan[:h, :h].mean(), scan[:h, h:].mean(), scan[h:, :h].mean(), scan[h:, h:].mean()]
    return int(np.argmax(means))
  if kind == "count":
    return _components(bright) - 1
  if kind == "side":  # left, right, both, neither
    sides = (_components(bright[:, :h]) > 0, _components(bright[:, h:]) > 0)
    return [(True, False), (False, True), (True, True), (False, False)].index(sides)
  return None


def test_answers_are_readable_from_the_pixels(large):
  kind_of = {q: k for k, t in synthetic.TEMPLATES.items() for q in t.questions}
  read = collections.Counter()
  for folder in (FIXTURE, large):
    for split in SPLITS:
      for row in _rows(folder, split):
        kind = kind_of[row["Question"]]
        scan = _pixels(os.path.join(folder, "images", row["Figure_path"]))[2].astype(np.float64)
        value = _read(kind, scan)
        if value is None:
          continue
        assert synthetic.TEMPLATES[kind].options[value] == row["Answer"], row
        choices = [row[f"Choice {x}"] for x in "ABCD"]
        assert synthetic.correct_letter(kind, value, choices) == row["Answer_label"], row
        read[kind] += 1
  assert min(read[k] for k in ("quadrant", "count", "side")) >= 20, read


def test_correct_letter_finds_the_choice_stating_the_finding():
  choices = ["A:Two ", "B:Four ", "C:One ", "D:Three "]
  assert synthetic.correct_letter("count", 0, choices) == "C"
  assert synthetic.correct_letter("count", 3, choices) == "B"
  with pytest.raises(ValueError, match="'One'"):
    synthetic.correct_letter("count", 0, ["A:Two", "B:Four", "C:Three", "D:Five"])
  with pytest.raises(ValueError, match="colour"):
    synthetic.correct_letter("colour", 0, choices)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_test": 4, "num_test_clean": 5}, "num_test_clean=5"),
    ({"num_train": -1}, "num_train=-1"),
    ({"image_size": 32}, "image_size=32"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    synthetic.write_pmc_vqa(str(tmp_path), **kwargs)


def test_command_line_writes_the_folder_and_a_readable_zip(tmp_path):
  args = {"num_train": 4, "num_test": 3, "num_test_clean": 2, "image_size": 48, "seed": 5}
  out = tmp_path / "cli"
  subprocess.run([sys.executable, "-m", "prompt4trust_jax.data.synthetic", f"--out={out}",
                  *(f"--{k}={v}" for k, v in args.items()), "--zip_images"], check=True,
                 capture_output=True)
  expected = synthetic.write_pmc_vqa(str(tmp_path / "api"), **args, zip_images=True)
  assert _files(str(out)) == _files(expected)
  for name in _files(expected):
    with open(out / name, "rb") as a, open(os.path.join(expected, name), "rb") as b:
      assert a.read() == b.read(), name
  with zipfile.ZipFile(out / "images.zip") as archive:
    names = sorted(os.listdir(out / "images"))
    assert archive.namelist() == [f"images/{n}" for n in names]
  # Without the folder, the builders' image store reads the same bytes from the archive.
  store = validation.ImageStore(os.path.join(expected, "images"))
  os.rename(out / "images", tmp_path / "moved")
  archive_store = validation.ImageStore(str(out / "images"))
  for name in names:
    assert archive_store.read(name) == store.read(name)
