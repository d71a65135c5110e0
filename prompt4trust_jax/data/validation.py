"""Row validation shared by the dataset builders: skip and report, or fail on the first bad row.

A bad row is never dropped silently: `SkipReport` keeps its id under a reason and the
builder writes the counts and ids to `skipped.json` next to the prepared data; with
`strict=True` the first bad row raises `BadRowError` naming the file, the row and why.
"""

import collections
import json
import os
import zipfile
from collections.abc import Callable

import tensorflow_datasets as tfds
from absl import logging

from prompt4trust_jax.downstream import images

# Reasons a row is skipped (the keys of the report).
MISSING_COLUMN = "missing_column"
UNKNOWN_LABEL = "unknown_label"
UNSAFE_PATH = "unsafe_image_path"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
SMALL_IMAGE = "small_image"
UNDECODABLE_TEXT = "undecodable_text"
REASONS = (MISSING_COLUMN, UNKNOWN_LABEL, UNSAFE_PATH, MISSING_IMAGE, CORRUPT_IMAGE, SMALL_IMAGE,
           UNDECODABLE_TEXT)


class BadRowError(ValueError):
  """A row that cannot become an example: `reason` is one of `REASONS`."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


class SkipReport:
  """Bad rows per reason; `strict` turns the first one into an exception."""

  def __init__(self, strict: bool = False):
    self.strict = strict
    self.ids: dict[str, list[str]] = collections.defaultdict(list)
    self.checked = 0

  def skip(self, row_id: str, error: BadRowError, where: str):
    if self.strict:
      raise BadRowError(error.reason, f"{where}, row {row_id}: {error} (strict mode; rebuild "
                                      "without strict to skip and report bad rows).") from error
    self.ids[error.reason].append(row_id)

  @property
  def num_skipped(self) -> int:
    return sum(map(len, self.ids.values()))

  def as_dict(self) -> dict:
    return {"checked": self.checked, "skipped": self.num_skipped,
            "counts": {r: len(self.ids[r]) for r in REASONS if self.ids[r]},
            "ids": {r: self.ids[r] for r in REASONS if self.ids[r]}}

  def write(self, path: str):
    with open(path, "w") as f:
      json.dump(self.as_dict(), f, indent=1)


def text(value: str | None, column: str) -> str:
  """A required text cell: present, non-empty and valid UTF-8 (read with surrogateescape)."""
  if value is None or not value.strip():
    raise BadRowError(MISSING_COLUMN, f"column {column!r} is missing or empty")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    raise BadRowError(UNDECODABLE_TEXT, f"column {column!r} is not valid UTF-8") from None
  return value


class ImageStore:
  """Encoded image bytes by relative path, from an `images/` folder or an `images.zip`.

  Paths must stay inside the image root: absolute paths and `..` that escape it are
  refused (a CSV is data, not a licence to read any file on the machine).
  """

  def __init__(self, root: str):
    self.root, self.zip = root, None
    if not os.path.isdir(root):
      archive = root.rstrip("/") + ".zip"
      if not os.path.isfile(archive):
        raise FileNotFoundError(f"Neither an image folder {root} nor an archive {archive}; put "
                                "the data set's images there.")
      self.zip = zipfile.ZipFile(archive)
      self.members = set(self.zip.namelist())
      self.prefix = os.path.basename(root.rstrip("/")) + "/"

  def check(self, relative: str, min_side: int = images.MIN_SIDE) -> str:
    """`relative` if its image is inside the root, exists, decodes and is >= `min_side` px."""
    data = self.read(relative)
    try:
      images.load_image(data, min_side=min_side)
    except images.ImageTooSmallError as e:
      raise BadRowError(SMALL_IMAGE, f"image {relative!r}: {e}") from None
    except images.ImageError as e:
      raise BadRowError(CORRUPT_IMAGE, f"image {relative!r}: {e}") from None
    return relative

  def read(self, relative: str) -> bytes:
    """The encoded bytes of the image at `relative` (a path inside the root)."""
    parts = relative.replace("\\", "/").split("/")
    if os.path.isabs(relative) or ".." in parts:
      raise BadRowError(UNSAFE_PATH, f"image path {relative!r} leaves the image root")
    if self.zip is not None:
      name = next((n for n in (self.prefix + relative, relative) if n in self.members), None)
      if name is None:
        raise BadRowError(MISSING_IMAGE, f"image {relative!r} is not in {self.zip.filename}")
      return self.zip.read(name)
    path = os.path.join(self.root, relative)
    root = os.path.realpath(self.root)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:  # e.g. a symlink out
      raise BadRowError(UNSAFE_PATH, f"image path {relative!r} resolves outside {self.root}")
    if not os.path.isfile(path):
      raise BadRowError(MISSING_IMAGE, f"image {path} does not exist")
    with open(path, "rb") as f:
      return f.read()


class CheckedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A multiple-choice builder whose rows are checked (skip and report, or `strict`)."""

  def __init__(self, *, strict: bool = False, **kwargs):
    self.strict = strict
    super().__init__(**kwargs)

  def question_features(self, labels: str, **extra) -> tfds.features.FeaturesDict:
    """id, question, 4 options and the answer (a label of `labels`), plus `extra` features."""
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "question": tfds.features.Text(),
        "options": tfds.features.Sequence(tfds.features.Text(), length=4),
        "answer": tfds.features.ClassLabel(names=list(labels)), **extra})

  def checked_splits(self, check: Callable[[SkipReport], dict]) -> dict:
    """`check(report)`'s splits; the report goes to `skipped.json` even when a row stops it."""
    report = SkipReport(self.strict)
    try:
      return check(report)
    finally:
      os.makedirs(self.data_path, exist_ok=True)
      report.write(os.path.join(self.data_path, "skipped.json"))
      if report.num_skipped:
        logging.warning("%s: skipped %d of %d rows %s; ids in %s/skipped.json", self.name,
                        report.num_skipped, report.checked, report.as_dict()["counts"],
                        self.data_path)
