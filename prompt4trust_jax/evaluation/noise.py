"""Reproducible input corruptions for the robustness benchmark (IMC-style, arXiv 2512.21964).

Image corruptions (an RGB PIL image in, an RGB PIL image of the same size out):
`gaussian_noise`, `shot_noise` (Poisson), `salt_and_pepper`, `gaussian_blur`, `motion_blur`,
`jpeg`, `contrast` (reduced), `brightness` (raised or lowered), `low_resolution`
(downsampled, then upsampled back with nearest neighbours so the blocks show).

Text corruptions, applied to the question and to every option's text, never to an option's
letter prefix ("A:", "1:"), so answers still parse: `typo` (keyboard-neighbour
substitutions), `char_swap` (adjacent transpositions), `char_delete`, `word_delete`,
`word_swap` (adjacent word pairs swapped), `abbreviation` (clinical shorthand from
`ABBREVIATIONS`; severities 4-5 also drop the vowels of long words) and `casing`
(random case flips).

Severity is 1 (mild) .. 5 (severe); each level's parameter is in `_IMAGE_LEVELS` /
`_TEXT_LEVELS` and grows monotonically in strength. For the text corruptions the parameter is
the share of eligible characters, words or table matches that are changed; the number
changed is that share of the eligible count, rounded up or down at random so that its
expectation is exact (a short option may come through untouched at a low severity).

`corrupt_example(example, name, severity, seed)` seeds every draw from (seed, name,
severity, example id) with CRC-32 (never Python's salted `hash`), so an example is corrupted
identically in every run, process and batch order. `parse("typo:3")` reads the
"name:severity" strings the evaluation config uses.
"""

import io
import re
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

SEVERITIES = (1, 2, 3, 4, 5)

# One parameter per severity 1..5 (ImageNet-C-like magnitudes for 224-px-ish scans).
_IMAGE_LEVELS = {
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26),  # noise std, pixel range 0..1
    "shot_noise": (60.0, 25.0, 12.0, 5.0, 3.0),  # photons at full intensity (fewer: noisier)
    "salt_and_pepper": (0.02, 0.05, 0.09, 0.15, 0.25),  # share of pixels set to 0 or 255
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),  # std in pixels
    "motion_blur": (5, 9, 13, 19, 25),  # taps along the line (pixels on its major axis)
    "jpeg": (30, 20, 12, 8, 5),  # JPEG quality
    "contrast": (0.6, 0.45, 0.3, 0.2, 0.1),  # factor on the distance to the mean
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # shift of every channel, sign drawn at random
    "low_resolution": (2, 3, 4, 6, 8),  # downsampling factor per side
}
_TEXT_LEVELS = {
    "typo": (0.02, 0.04, 0.07, 0.10, 0.15),  # share of letters/digits
    "char_swap": (0.02, 0.04, 0.07, 0.10, 0.15),  # share of adjacent letter/digit pairs
    "char_delete": (0.02, 0.04, 0.07, 0.10, 0.15),  # share of letters/digits
    "word_delete": (0.05, 0.10, 0.15, 0.20, 0.30),  # share of words (one always stays)
    "word_swap": (0.05, 0.10, 0.20, 0.30, 0.40),  # share of adjacent word pairs
    # (share of table matches abbreviated, share of long words losing their vowels)
    "abbreviation": ((0.25, 0.0), (0.5, 0.0), (1.0, 0.0), (1.0, 0.3), (1.0, 0.6)),
    "casing": (0.05, 0.10, 0.20, 0.30, 0.50),  # share of ASCII letters whose case flips
}
_LEVELS = {**_IMAGE_LEVELS, **_TEXT_LEVELS}

# Clinical shorthand; matched case-insensitively on whole words, longest phrase first.
ABBREVIATIONS = {
    "magnetic resonance imaging": "MRI", "computed tomography": "CT",
    "positron emission tomography": "PET", "chest x-ray": "CXR", "x-ray": "XR",
    "ultrasound": "US", "ultrasonography": "US", "electrocardiogram": "ECG",
    "hematoxylin and eosin": "H&E", "immunohistochemistry": "IHC",
    "patient": "pt", "patients": "pts", "history": "hx", "diagnosis": "dx",
    "treatment": "tx", "symptoms": "sx", "fracture": "fx", "left": "L", "right": "R",
    "left ventricle": "LV", "right ventricle": "RV", "with": "w/", "without": "w/o",
    "bilateral": "b/l", "abdomen": "abd", "abdominal": "abd", "anterior": "ant",
    "posterior": "post", "lateral": "lat", "normal": "nl", "examination": "exam",
    "year old": "y/o", "years old": "y/o", "blood pressure": "BP", "heart rate": "HR",
    "lymph node": "LN", "lymph nodes": "LNs", "shortness of breath": "SOB",
    "approximately": "approx", "image": "img", "images": "imgs",
}
_ABBREVIATION_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(p).replace(r"\ ", r"\s+")
                        for p in sorted(ABBREVIATIONS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE)
_ABBREVIATION_OF = {p.lower(): a for p, a in ABBREVIATIONS.items()}
_LONG_WORD_RE = re.compile(r"[A-Za-z]{7,}")
# "A:", "B) ", "1:" ... at the start of an option line.
_OPTION_PREFIX_RE = re.compile(r"^\s*(?:[A-Za-z]|\d{1,2})\s*[:.)]\s*")


def _keyboard_neighbours() -> dict[str, str]:
  # QWERTY rows are staggered half a key right per row down: key i of a row touches keys
  # i-1 and i+1 beside it, i and i+1 of the row above, i-1 and i of the row below.
  rows = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")
  out = {}
  for r, row in enumerate(rows):
    for i, key in enumerate(row):
      near = [(r, i - 1), (r, i + 1), (r - 1, i), (r - 1, i + 1), (r + 1, i - 1), (r + 1, i)]
      out[key] = "".join(rows[rr][j] for rr, j in near
                         if 0 <= rr < len(rows) and 0 <= j < len(rows[rr]))
  return out


_NEIGHBOURS = _keyboard_neighbours()


def _level(name: str, severity: int):
  """The parameter of `name` at `severity`, failing on a severity outside 1..5."""
  if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
      or severity not in SEVERITIES:
    raise ValueError(f"Severity of {name!r} must be an int in 1..5, got {severity!r}.")
  return _LEVELS[name][int(severity) - 1]


# ---------------------------------------------------------------------------------------
# Images: rgb floats in 0..1 in between.


def _pixels(image: Image.Image) -> np.ndarray:
  return np.asarray(image.convert("RGB"), np.float64) / 255.0


def _image(rgb: np.ndarray) -> Image.Image:
  return Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


def gaussian_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
  rgb = _pixels(image)
  std = _level("gaussian_noise", severity)
  return _image(rgb + rng.normal(0.0, std, rgb.shape))


def shot_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
  photons = _level("shot_noise", severity)
  return _image(rng.poisson(_pixels(image) * photons) / photons)


def salt_and_pepper(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
  """Whole pixels (all three channels) set to black or white."""
  share = _level("salt_and_pepper", severity)
  rgb = np.array(image.convert("RGB"))
  hit = rng.random(rgb.shape[:2]) < share
  white = rng.random(rgb.shape[:2]) < 0.5
  rgb[hit] = np.where(white[hit], 255, 0)[:, None]
  return Image.fromarray(rgb, "RGB")


def gaussian_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
  del rng  # deterministic
  std = _level("gaussian_blur", severity)
  return image.convert("RGB").filter(ImageFilter.GaussianBlur(std))  # PIL's radius is the std


def motion_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
  """The mean over `taps` pixels on a line through each pixel, at a random angle.

  One tap per step along the line's major axis (so no two taps coincide); edges are
  extended. Any number of taps works, the kernel is applied as shifted sums.
  """
  taps = _level("motion_blur", severity)
  angle = rng.uniform(0.0, np.pi)
  steps = np.arange(taps) - taps // 2
  cos, sin = np.cos(angle), np.sin(angle)
  if abs(cos) >= abs(sin):  # mostly horizontal: one tap per column
    dx, dy = steps, np.round(steps * sin / cos).astype(int)
  else:
    dx, dy = np.round(steps * cos / sin).astype(int), steps
  rgb = _pixels(image)
  h, w, _ = rgb.shape
  pad = int(max(np.abs(dx).max(), np.abs(dy).max()))
  padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
  out_HxWxC = np.zeros_like(rgb)
  for ox, oy in zip(dx, dy):
    out_HxWxC += padded[pad + oy:pad + oy + h, pad + ox:pad + ox + w]
  return _image(out_HxWxC / taps)


def jpeg(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
  del rng  # deterministic
  buffer = io.BytesIO()
  image.convert("RGB").save(buffer, "JPEG", quality=_level("jpeg", severity))
  buffer.seek(0)
  with Image.open(buffer) as decoded:
    return decoded.convert("RGB")


def contrast(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
  del rng  # deterministic
  rgb = _pixels(image)
  mean = rgb.mean()
  return _image((rgb - mean) * _level("contrast", severity) + mean)


def brightness(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
  """Every channel shifted by the level, up or down (a fair coin per example)."""
  shift = _level("brightness", severity) * rng.choice((-1.0, 1.0))
  return _image(_pixels(image) + shift)


def low_resolution(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
  del rng  # deterministic
  factor = _level("low_resolution", severity)
  rgb = image.convert("RGB")
  small = rgb.resize((max(1, round(rgb.width / factor)), max(1, round(rgb.height / factor))),
                     Image.Resampling.BOX)
  return small.resize(rgb.size, Image.Resampling.NEAREST)


# ---------------------------------------------------------------------------------------
# Text: each function corrupts one string (a question, or an option without its prefix).


def _count(share: float, eligible: int, rng: np.random.Generator) -> int:
  """`share * eligible` rounded up or down at random, so its expectation is exact."""
  return min(eligible, int(np.floor(share * eligible + rng.random())))


def _pick(eligible: int, share: float, rng: np.random.Generator) -> list[int]:
  """Random indices into `eligible` items, `_count` of them, in random order."""
  return [int(i) for i in rng.choice(eligible, _count(share, eligible, rng), replace=False)]


def _words(text: str) -> tuple[str, list[str], str]:
  """Leading whitespace, the words, trailing whitespace (words rejoin with one space)."""
  core = text.strip()
  lead = text[:len(text) - len(text.lstrip())]
  return lead, core.split(), text[len(lead) + len(core):]


def typo(text: str, severity: int, rng: np.random.Generator) -> str:
  chars = list(text)
  where = [i for i, c in enumerate(chars) if c.lower() in _NEIGHBOURS]
  for k in _pick(len(where), _level("typo", severity), rng):
    i = where[k]
    near = _NEIGHBOURS[chars[i].lower()]
    new = near[int(rng.integers(len(near)))]
    chars[i] = new.upper() if chars[i].isupper() else new
  return "".join(chars)


def char_swap(text: str, severity: int, rng: np.random.Generator) -> str:
  chars = list(text)
  where = [i for i in range(len(chars) - 1)
           if chars[i].isalnum() and chars[i + 1].isalnum() and chars[i] != chars[i + 1]]
  wanted = _count(_level("char_swap", severity), len(where), rng)
  used = set()
  for k in rng.permutation(len(where)):  # first `wanted` pairs that share no character
    i = where[k]
    if len(used) == 2 * wanted:
      break
    if i not in used and i + 1 not in used:
      chars[i], chars[i + 1] = chars[i + 1], chars[i]
      used.update((i, i + 1))
  return "".join(chars)


def char_delete(text: str, severity: int, rng: np.random.Generator) -> str:
  where = [i for i, c in enumerate(text) if c.isalnum()]
  gone = {where[k] for k in _pick(len(where), _level("char_delete", severity), rng)}
  return "".join(c for i, c in enumerate(text) if i not in gone)


def word_delete(text: str, severity: int, rng: np.random.Generator) -> str:
  lead, words, trail = _words(text)
  # One word always stays (_pick's order is random, so the cut keeps a random subset).
  gone = set(_pick(len(words), _level("word_delete", severity), rng)[:len(words) - 1])
  return lead + " ".join(w for i, w in enumerate(words) if i not in gone) + trail


def word_swap(text: str, severity: int, rng: np.random.Generator) -> str:
  lead, words, trail = _words(text)
  pairs = max(0, len(words) - 1)
  wanted = _count(_level("word_swap", severity), pairs, rng)
  used = set()
  for i in rng.permutation(pairs):  # first `wanted` pairs that share no word
    if len(used) == 2 * wanted:
      break
    if i not in used and i + 1 not in used:
      words[i], words[i + 1] = words[i + 1], words[i]
      used.update((i, i + 1))
  return lead + " ".join(words) + trail


def abbreviation(text: str, severity: int, rng: np.random.Generator) -> str:
  table_share, vowel_share = _level("abbreviation", severity)
  matches = list(_ABBREVIATION_RE.finditer(text))
  chosen = {matches[k].start() for k in _pick(len(matches), table_share, rng)}
  text = _ABBREVIATION_RE.sub(
      lambda m: (_ABBREVIATION_OF[re.sub(r"\s+", " ", m.group().lower())]
                 if m.start() in chosen else m.group()), text)
  long_words = list(_LONG_WORD_RE.finditer(text))
  shortened = {long_words[k].start() for k in _pick(len(long_words), vowel_share, rng)}
  return _LONG_WORD_RE.sub(
      lambda m: (m.group()[0] + re.sub("[aeiouAEIOU]", "", m.group()[1:])
                 if m.start() in shortened else m.group()), text)


def casing(text: str, severity: int, rng: np.random.Generator) -> str:
  chars = list(text)
  where = [i for i, c in enumerate(chars) if c.isascii() and c.isalpha()]
  for k in _pick(len(where), _level("casing", severity), rng):
    chars[where[k]] = chars[where[k]].swapcase()
  return "".join(chars)


# ---------------------------------------------------------------------------------------
# Registry and examples.

IMAGE_CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise,
    "salt_and_pepper": salt_and_pepper, "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur, "jpeg": jpeg, "contrast": contrast, "brightness": brightness,
    "low_resolution": low_resolution}
TEXT_CORRUPTIONS: dict[str, Callable] = {
    "typo": typo, "char_swap": char_swap, "char_delete": char_delete,
    "word_delete": word_delete, "word_swap": word_swap, "abbreviation": abbreviation,
    "casing": casing}
CORRUPTIONS: dict[str, Callable] = {**IMAGE_CORRUPTIONS, **TEXT_CORRUPTIONS}


def kind(name: str) -> str:
  """"image" or "text"."""
  if name in IMAGE_CORRUPTIONS:
    return "image"
  if name in TEXT_CORRUPTIONS:
    return "text"
  raise ValueError(f"Unknown corruption {name!r}; choose from image corruptions "
                   f"{sorted(IMAGE_CORRUPTIONS)} or text corruptions {sorted(TEXT_CORRUPTIONS)}.")


def parse(spec: str) -> tuple[str, int]:
  """"name:severity" (e.g. "gaussian_noise:3") -> (name, severity), both checked."""
  name, sep, level = str(spec).partition(":")
  if not sep or not level.strip().isdigit():
    raise ValueError(f"Corruption {spec!r} must read 'name:severity' with severity 1..5, "
                     "e.g. 'gaussian_noise:3'.")
  kind(name)
  severity = int(level)
  _level(name, severity)
  return name, severity


def example_rng(seed: int, corruption: str, severity: int, example_id: str) -> np.random.Generator:
  """The generator for one (seed, corruption, severity, example) cell; stable across runs."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  return np.random.default_rng([int(seed), zlib.crc32(corruption.encode("utf-8")),
                                int(severity), zlib.crc32(str(example_id).encode("utf-8"))])


def _corrupt_option(line: str, corrupt: Callable, severity: int, rng) -> str:
  prefix = _OPTION_PREFIX_RE.match(line)
  cut = prefix.end() if prefix else 0
  return line[:cut] + corrupt(line[cut:], severity, rng)


def corrupt_example(example: dict, corruption: str, severity: int, seed: int) -> dict:
  """A new example with its image (image corruptions) or question and options corrupted.

  Text-only examples (image None) come back unchanged under an image corruption. The id
  (as `str`) seeds the draws, so it must be present.
  """
  is_image = kind(corruption) == "image"
  _level(corruption, severity)
  corrupt = CORRUPTIONS[corruption]
  if "id" not in example:
    raise KeyError(f"corrupt_example needs the example's 'id' (it seeds the corruption); "
                   f"the example has keys {sorted(example)}.")
  rng = example_rng(seed, corruption, severity, example["id"])
  if is_image:
    if example.get("image") is None:
      return dict(example)
    return {**example, "image": corrupt(example["image"], severity, rng)}
  question = corrupt(example["question"], severity, rng)
  options = tuple(_corrupt_option(o, corrupt, severity, rng) for o in example["options"])
  return {**example, "question": question, "options": options}
