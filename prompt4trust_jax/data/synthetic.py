"""Synthetic PMC-VQA: tiny scans whose answers can be read off the image, in PMC-VQA's layout.

Writes what the public release holds: `train.csv`, `test.csv` and `test_clean.csv` (columns
`pmc_vqa.COLUMNS`; choices carry their letter, "A:Upper left quadrant "; `Answer` is the
correct choice's text, `Answer_label` its letter) and `images/<Figure_path>`, optionally also
`images.zip`. test_clean rows are a subset of test rows, as in the release.

Each row is one image and one question (`TEMPLATES`): a dark background, a noisy elliptical
body with a bright wall and two darker lungs, and bright findings that answer the question.
Pixels come from integer arithmetic on a seeded numpy Generator, so they are the same on
every machine; the PNG bytes also depend on Pillow's zlib.

Regenerate the committed copy (`pipeline.FIXTURE_DIR`):
  python -m prompt4trust_jax.data.synthetic --out=prompt4trust_jax/data/fixture/pmc_vqa_tiny
"""

import csv
import dataclasses
import io
import os
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
from absl import app, flags
from PIL import Image

from prompt4trust_jax.data.pmc_vqa import COLUMNS, LETTERS

# Findings must stay recognisable: below this a lesion is a handful of pixels.
MIN_IMAGE_SIZE = 48
# Choice cells end in a space ("A:CT scan "), a quirk of scraped CSV cells; the builders keep
# cells as they are, so the fixture exercises it.
_CHOICE_END = " "
# Grey levels; findings are far brighter than anything else, so a threshold finds them.
_BACKGROUND, _LUNG, _TISSUE, _WALL, _NOISE = 8, 45, 90, 150, 3
_LESION_RANGE = (215, 246)
_DYES = ((215, 40, 40), (40, 190, 60), (50, 70, 225), (225, 205, 40))  # TEMPLATES["stain"]
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the archive does not carry today's date


@dataclasses.dataclass(frozen=True)
class Template:
  """A question kind: phrasings (one drawn per row) and its four options.

  A row's finding is an option index `value`; the image shows `options[value]`.
  """
  questions: tuple[str, ...]
  options: tuple[str, str, str, str]


TEMPLATES = {
    "quadrant": Template(
        ("In which quadrant of the image is the lesion located?",
         "Where in the image is the hyperintense lesion?"),
        ("Upper left quadrant", "Upper right quadrant", "Lower left quadrant",
         "Lower right quadrant")),
    "count": Template(
        ("How many nodules are visible?", "How many bright nodules does the scan show?"),
        ("One", "Two", "Three", "Four")),
    "shape": Template(
        ("What is the shape of the lesion?", "Which best describes the outline of the lesion?"),
        ("Round", "Square", "Triangular", "Ring-shaped")),
    "side": Template(
        ("Which side of the image shows the abnormality?",
         "On which side of the image are lesions seen?"),
        ("Left", "Right", "Both sides", "Neither side")),
    # A stained section: the lesion takes up one of four dyes (an RGB image).
    "stain": Template(
        ("What colour is the stained lesion?", "Which stain colour does the lesion show?"),
        ("Red", "Green", "Blue", "Yellow")),
    "size": Template(
        ("How large is the lesion?", "What is the size of the lesion?"),
        ("Small", "Medium", "Large", "Very large")),
    # Not answerable from the image: every grade is drawn as the same lesion, so no reader
    # beats chance (the hard questions of the toy world, `toy_world.KINDS`).
    "grade": Template(
        ("What is the histological grade of the lesion?",
         "Which grade best describes the lesion?"),
        ("Grade I", "Grade II", "Grade III", "Grade IV")),
}
# The committed fixture's kinds, in the order its rows were drawn with.
DEFAULT_KINDS = ("quadrant", "count", "shape", "side")
_SHAPES = ("circle", "square", "triangle", "ring")  # in the order of TEMPLATES["shape"]


def correct_letter(kind: str, value: int, choices: Sequence[str]) -> str:
  """The letter of the choice ("A:...") that states finding `value` of question `kind`."""
  if kind not in TEMPLATES:
    raise ValueError(f"Unknown question kind {kind!r}; choose from {sorted(TEMPLATES)}.")
  answer = TEMPLATES[kind].options[value]
  for letter, choice in zip(LETTERS, choices):
    if choice.strip() == f"{letter}:{answer}":
      return letter
  raise ValueError(f"No choice states {answer!r} ({kind} finding {value}): {list(choices)}.")


@dataclasses.dataclass(frozen=True)
class Question:
  """One synthetic row: question kind and text, lettered choices, answer and image."""
  kind: str
  question: str
  choices: tuple[str, str, str, str]  # "A:Upper left quadrant " ...
  answer: str  # the correct choice's text
  letter: str  # its letter
  pixels: np.ndarray  # [size, size] uint8 grey scan ([size, size, 3] RGB for `stain`)


def questions(n: int, rng: np.random.Generator, image_size: int = 64,
              kinds: Sequence[str] = DEFAULT_KINDS, ordered_options: bool = False
              ) -> list[Question]:
  """`n` rows of kinds drawn uniformly from `kinds`, answer letters balanced (each letter
  answers a quarter of the rows, which rows is random); the stream `write_pmc_vqa` writes.
  `ordered_options`: every row lists its kind's options in one order, so the letter names
  the finding (a reader need not match the image against the option texts)."""
  unknown = sorted(set(kinds) - set(TEMPLATES))
  if unknown or not kinds:
    raise ValueError(f"Unknown question kinds {unknown or kinds!r}; choose from "
                     f"{sorted(TEMPLATES)}.")
  if image_size < MIN_IMAGE_SIZE:
    raise ValueError(f"image_size={image_size} is below {MIN_IMAGE_SIZE} px, too small for "
                     "the findings to be drawn; pass a larger image_size.")
  answer_slots = rng.permutation(np.arange(n) % len(LETTERS))
  rows = []
  for slot in answer_slots:
    kind = kinds[rng.integers(len(kinds))]
    template = TEMPLATES[kind]
    value = int(slot if ordered_options else rng.integers(len(template.options)))
    question = template.questions[rng.integers(len(template.questions))]
    if ordered_options:
      texts = list(template.options)
    else:
      others = [o for j, o in enumerate(template.options) if j != value]
      texts = [others[j] for j in rng.permutation(len(others))]
      texts.insert(int(slot), template.options[value])
    choices = tuple(f"{letter}:{text}{_CHOICE_END}" for letter, text in zip(LETTERS, texts))
    pixels = _render(kind, value, image_size, rng)
    rows.append(Question(kind, question, choices, template.options[value],
                         correct_letter(kind, value, choices), pixels))
  return rows


def write_pmc_vqa(out_dir: str, num_train: int = 48, num_test: int = 16,
                  num_test_clean: int = 16, image_size: int = 64, seed: int = 0,
                  zip_images: bool = False, kinds: Sequence[str] = DEFAULT_KINDS,
                  ordered_options: bool = False) -> str:
  """Writes a synthetic PMC-VQA copy into `out_dir` (created if missing); returns `out_dir`.

  Same arguments, same files. Question kinds are drawn uniformly from `kinds`;
  `ordered_options` as in `questions`. Train and test rows come from separate seeded streams and
  name distinct images (`synthetic_<row number>.png`, train first). Each split's answer
  letters are balanced (each letter within one row of a quarter); test_clean is a seeded
  choice of `num_test_clean` test rows in test order. Existing files of the same names are
  overwritten; other files in `out_dir` are left alone.
  """
  if min(num_train, num_test, num_test_clean) < 0:
    raise ValueError(f"Row counts must be >= 0, got num_train={num_train}, "
                     f"num_test={num_test}, num_test_clean={num_test_clean}.")
  if num_test_clean > num_test:
    raise ValueError(f"num_test_clean={num_test_clean} exceeds num_test={num_test}: "
                     "test_clean rows are a subset of test rows.")
  image_dir = os.path.join(out_dir, "images")
  os.makedirs(image_dir, exist_ok=True)
  encoded = {}
  draw = lambda n, stream: questions(n, np.random.default_rng([seed, stream]), image_size, kinds,
                                     ordered_options)
  train = _rows(draw(num_train, 0), 0, encoded)
  test = _rows(draw(num_test, 1), num_train, encoded)
  keep = np.sort(np.random.default_rng([seed, 2]).choice(num_test, num_test_clean, replace=False))
  for stem, rows in (("train", train), ("test", test), ("test_clean", [test[i] for i in keep])):
    _write_csv(os.path.join(out_dir, f"{stem}.csv"), rows)
  for name, data in encoded.items():
    with open(os.path.join(image_dir, name), "wb") as f:
      f.write(data)
  if zip_images:
    _write_zip(os.path.join(out_dir, "images.zip"), encoded)
  return out_dir


def _rows(rows: Sequence[Question], first: int, encoded: dict[str, bytes]) -> list[list[str]]:
  """CSV rows numbered from `first`; their PNGs go into `encoded` by file name."""
  out = []
  for i, row in enumerate(rows):
    name = f"synthetic_{first + i:05d}.png"
    buffer = io.BytesIO()
    Image.fromarray(row.pixels).save(buffer, format="PNG")
    encoded[name] = buffer.getvalue()
    out.append([name, row.question, row.answer, *row.choices, row.letter])
  return out


def _render(kind: str, value: int, size: int, rng: np.random.Generator) -> np.ndarray:
  """A `size` x `size` uint8 grey scan showing finding `value` of question `kind` (`stain`:
  `[size, size, 3]` RGB, the lesion in its dye's colour)."""
  # Doubled coordinates (x2 = 2x - (size - 1)) put the origin on the image centre and keep
  # every length an integer, so masks are exact comparisons of integers.
  y2, x2 = (2 * np.mgrid[0:size, 0:size] - (size - 1)).astype(np.int64)
  body_a = size * int(rng.integers(80, 92)) // 100  # doubled semi-axes of the body
  body_b = size * int(rng.integers(72, 84)) // 100
  wall = 2 * max(2, size // 32)
  jitter = rng.integers(-6, 7, (size, size))  # per-pixel percent: a ragged outline
  inner_a, inner_b = body_a - wall, body_b - wall
  lung_a, lung_b = inner_a * 30 // 100, inner_b * 60 // 100
  lungs = (_ellipse(x2 - inner_a * 45 // 100, y2, lung_a, lung_b)
           | _ellipse(x2 + inner_a * 45 // 100, y2, lung_a, lung_b))
  inner = _ellipse(x2, y2, inner_a, inner_b, jitter)
  scan = np.full((size, size), _BACKGROUND, np.int64)
  scan[_ellipse(x2, y2, body_a, body_b, jitter)] = _WALL
  scan[inner] = _TISSUE
  scan[inner & lungs] = _LUNG
  lesion = np.zeros((size, size), bool)
  for shape, cx, cy, radius in _findings(kind, value, size, inner_a, inner_b, rng):
    mask = _shape_mask(shape, x2 - cx, y2 - cy, radius)
    scan[mask] = rng.integers(*_LESION_RANGE)
    lesion |= mask
  scan += rng.integers(-_NOISE, _NOISE + 1, (size, size))
  if kind == "stain":
    scan = np.repeat(scan[..., None], 3, axis=-1)
    scan[lesion] = np.array(_DYES[value]) + rng.integers(-_NOISE, _NOISE + 1, (lesion.sum(), 3))
  return np.clip(scan, 0, 255).astype(np.uint8)


def _ellipse(x2: np.ndarray, y2: np.ndarray, a: int, b: int,
             jitter_percent: np.ndarray | int = 0) -> np.ndarray:
  lhs = x2 * x2 * (b * b) + y2 * y2 * (a * a)
  return 100 * lhs <= (100 + jitter_percent) * (a * a) * (b * b)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: int) -> np.ndarray:
  """Pixels of `shape` with doubled offsets `dx`, `dy` from its centre and doubled size `r`."""
  d2 = dx * dx + dy * dy
  if shape == "circle":
    return d2 <= r * r
  if shape == "square":
    return np.maximum(np.abs(dx), np.abs(dy)) <= 4 * r // 5
  if shape == "triangle":  # apex up, base 2r wide at dy = r
    return (dy <= r) & (2 * np.abs(dx) <= dy + r)
  if shape == "ring":  # the hole has 55% of the outer radius
    return (d2 <= r * r) & (100 * d2 >= 30 * r * r)
  raise ValueError(f"Unknown shape {shape!r}; choose from {_SHAPES}.")


def _findings(kind: str, value: int, size: int, inner_a: int, inner_b: int,
              rng: np.random.Generator) -> list[tuple[str, int, int, int]]:
  """(shape, doubled centre x, y, doubled radius) of each finding that shows `value`."""
  lesion = 2 * max(2, round(size * 0.08))

  def off_axis(sign: int) -> Callable[[int], bool]:  # a margin of 1 px from the midline
    return lambda c: sign * c >= lesion + 2

  if kind == "quadrant":
    up_down, left_right = divmod(value, 2)
    centres = _centres(rng, 1, inner_a, inner_b, lesion,
                       off_axis(1 if left_right else -1), off_axis(1 if up_down else -1))
    return [("circle", *centres[0], lesion)]
  if kind == "count":
    nodule = 2 * max(2, round(size * 0.05))
    return [("circle", x, y, nodule) for x, y in _centres(rng, value + 1, inner_a, inner_b, nodule)]
  if kind == "shape":
    radius = 2 * max(4, round(size * 0.13))
    return [(_SHAPES[value], *_centres(rng, 1, inner_a, inner_b, radius)[0], radius)]
  if kind == "side":
    signs = ((-1,), (1,), (-1, 1), ())[value]
    return [("circle", *_centres(rng, 1, inner_a, inner_b, lesion, off_axis(s))[0], lesion)
            for s in signs]
  if kind == "size":  # radii of 5, 8, 11 and 15% of the side
    radius = 2 * max(2, round(size * (5, 8, 11, 15)[value] / 100))
    return [("circle", *_centres(rng, 1, inner_a, inner_b, radius)[0], radius)]
  if kind in ("grade", "stain"):  # one lesion, drawn alike for every grade (dyed: stain)
    return [("circle", *_centres(rng, 1, inner_a, inner_b, lesion)[0], lesion)]
  raise ValueError(f"Unknown question kind {kind!r}; choose from {sorted(TEMPLATES)}.")


def _centres(rng: np.random.Generator, n: int, inner_a: int, inner_b: int, radius: int,
             x_ok: Callable[[int], bool] = lambda c: True,
             y_ok: Callable[[int], bool] = lambda c: True) -> list[tuple[int, int]]:
  """`n` doubled centres of findings of doubled `radius` inside the body, edges 2 px apart."""
  # Findings keep 1 px clear of the body wall.
  a, b = inner_a - radius - 2, inner_b - radius - 2
  centres = []
  for _ in range(10_000):
    if len(centres) == n:
      return centres
    x, y = int(rng.integers(-a, a + 1)), int(rng.integers(-b, b + 1))
    if (_ellipse(np.int64(x), np.int64(y), a, b) and x_ok(x) and y_ok(y)
        and all((x - u) ** 2 + (y - v) ** 2 >= (2 * radius + 4) ** 2 for u, v in centres)):
      centres.append((x, y))
  raise RuntimeError(f"Could not place {n} findings of radius {radius / 2} px in a body of "
                     f"semi-axes {inner_a / 2} x {inner_b / 2} px.")


def _write_csv(path: str, rows: Sequence[Sequence[str]]):
  # "\n" line ends, as pandas' to_csv writes them.
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)


def _write_zip(path: str, encoded: dict[str, bytes]):
  with zipfile.ZipFile(path, "w") as archive:
    for name in sorted(encoded):
      info = zipfile.ZipInfo(f"images/{name}", date_time=_ZIP_DATE)
      info.external_attr = 0o644 << 16
      # PNGs are compressed already; storing them keeps the archive independent of zlib.
      archive.writestr(info, encoded[name], compress_type=zipfile.ZIP_STORED)


def _define_flags():
  # Defined only when run as a script: importing the library must not claim global flag
  # names such as --out, which experiments use too.
  flags.DEFINE_string("out", None, "Folder to write (created if missing).", required=True)
  flags.DEFINE_integer("num_train", 48, "Rows in train.csv.")
  flags.DEFINE_integer("num_test", 16, "Rows in test.csv.")
  flags.DEFINE_integer("num_test_clean", 16, "Rows in test_clean.csv (a subset of test.csv).")
  flags.DEFINE_integer("image_size", 64, "Side of the square PNG scans, in pixels.")
  flags.DEFINE_integer("seed", 0, "Seed of every random choice.")
  flags.DEFINE_bool("zip_images", False, "Also write images.zip.")
  flags.DEFINE_list("kinds", list(DEFAULT_KINDS), f"Question kinds, of {sorted(TEMPLATES)}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  f = flags.FLAGS
  out = write_pmc_vqa(f.out, num_train=f.num_train, num_test=f.num_test,
                      num_test_clean=f.num_test_clean, image_size=f.image_size, seed=f.seed,
                      zip_images=f.zip_images, kinds=tuple(f.kinds))
  print(f"wrote {out}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
