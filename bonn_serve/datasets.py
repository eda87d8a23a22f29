"""Read CIFAR-10 splits into uint8 NHWC arrays with numpy only (used by `bonn-serve eval` and the trainer).

Three layouts of a data directory are accepted:
- ``npz``: ``cifar10_train.npz`` / ``cifar10_test.npz`` with arrays ``x`` (N,32,32,3) uint8 RGB and ``y``;
- ``mini``: a single ``cifar10_mini.npz`` with ``x_train``/``y_train``/``x_test``/``y_test`` (smoke tests);
- ``batches``: the standard CIFAR-10 python release (``data_batch_1..5``, ``test_batch``). Those files are
  Python pickles; they are read only because they are a well-known format in a directory the *user* names
  (trusted local data), never from the network or from a client.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

LAYOUTS = ("auto", "npz", "mini", "batches")
SPLITS = ("train", "test")


class DatasetError(ValueError):
    """The data directory does not hold a readable CIFAR-10 split."""


def detect_layout(data_dir: Path, split: str | None = None) -> str:
    """The layout that holds `split` (either split if None): its npz file, else its python batches. The
    mini file only when the directory has neither layout at all, so a full split is never mixed with it.
    Per split, because a directory may hold the test split as npz and the training split as batches."""
    npz = {s: [data_dir / f"cifar10_{s}.npz"] for s in SPLITS}
    batches = {"train": [data_dir / f"data_batch_{i}" for i in range(1, 6)], "test": [data_dir / "test_batch"]}
    wanted = [split] if split else list(SPLITS)
    if any(p.exists() for s in wanted for p in npz[s]):
        return "npz"
    if any(p.exists() for s in wanted for p in batches[s]):
        return "batches"  # the batch reader names any batch file that is missing
    if any(p.exists() for ps in [*npz.values(), *batches.values()] for p in ps):
        return "npz"  # this split is missing altogether: the npz reader names the file it expected
    if (data_dir / "cifar10_mini.npz").exists():
        return "mini"
    raise DatasetError(f"{data_dir}: no cifar10_{{train,test}}.npz, cifar10_mini.npz "
                       "or CIFAR-10 python batches")


def _check(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DatasetError(f"{where}: expected uint8 images (N,32,32,3), got {x.dtype} {x.shape}")
    if x.shape[0] == 0:
        raise DatasetError(f"{where}: no images")
    y = np.asarray(y).reshape(-1)
    if y.size and not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                              and np.all(y == np.round(y)))):
        raise DatasetError(f"{where}: labels must be whole numbers, got {y.dtype}")
    y = y.astype(np.int64)
    if y.shape[0] != x.shape[0]:
        raise DatasetError(f"{where}: {x.shape[0]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{where}: labels outside 0..9")
    return np.ascontiguousarray(x), y


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DatasetError(f"missing CIFAR-10 batch file {path}")
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")  # trusted, user-provided CIFAR-10 release (module docstring)
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DatasetError(f"{path}: not a CIFAR-10 python batch (no data/labels)")
    x = np.asarray(d[b"data"])
    if x.dtype != np.uint8:  # a cast would wrap 300 to 44 and floats in [0, 1] to 0 without a word
        if not np.issubdtype(x.dtype, np.integer) or x.size and (x.min() < 0 or x.max() > 255):
            raise DatasetError(f"{path}: data must be uint8 pixels 0..255, got {x.dtype}")
        x = x.astype(np.uint8)
    if x.ndim != 2 or x.shape[1] != 3072:
        raise DatasetError(f"{path}: data has shape {x.shape}, expected (N, 3072)")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(d[b"labels"])


def load_cifar10(data_dir: str | Path, split: str, layout: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Return (x uint8 (N,32,32,3) RGB, y int64 (N,)) for ``split`` in {"train", "test"}."""
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose from {SPLITS}")
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    if not data_dir.is_dir():
        raise DatasetError(f"data directory {data_dir} does not exist")
    if layout == "auto":
        layout = detect_layout(data_dir, split)
    where = f"{data_dir} ({layout}, {split})"
    try:
        if layout == "npz":
            path = data_dir / f"cifar10_{split}.npz"
            if not path.exists():
                raise DatasetError(f"missing {path}")
            with np.load(path, allow_pickle=False) as d:
                return _check(d["x"], d["y"], where)
        if layout == "mini":
            path = data_dir / "cifar10_mini.npz"
            if not path.exists():
                raise DatasetError(f"missing {path}")
            with np.load(path, allow_pickle=False) as d:
                return _check(d[f"x_{split}"], d[f"y_{split}"], where)
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        parts = [_read_batch(data_dir / n) for n in names]
        return _check(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), where)
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError, TypeError, OverflowError, EOFError, pickle.UnpicklingError) as e:
        raise DatasetError(f"{where}: cannot read: {e}") from e


def balanced_subset(y: np.ndarray, n: int) -> np.ndarray:
    """Indices of n images taken class by class in turn (each class in file order), sorted.

    Why: the npz files are class-major, so the first n images of the test split are all airplanes and a
    `--limit` prefix would measure one class. Round-robin keeps the classes within one image of each other,
    is deterministic and keeps file order, so a larger n contains a smaller n's images.
    """
    y = np.asarray(y)
    rank = np.empty(len(y), dtype=np.int64)  # position of each image within its class
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rank[members] = np.arange(len(members))
    order = np.lexsort((y, rank))  # by rank within class, then class: one of each class per round
    return np.sort(order[:n])
