"""CIFAR's official python archives: the pickled files inside, read into arrays.

- CIFAR-10 (``cifar-10-python.tar.gz``, folder ``cifar-10-batches-py``): ``data_batch_1`` to
  ``data_batch_5`` and ``test_batch``, each ``{b"data": (N, 3072) uint8, b"labels": [...]}``.
- CIFAR-100 (``cifar-100-python.tar.gz``, folder ``cifar-100-python``): ``train`` and ``test``,
  each ``{b"data": (N, 3072) uint8, b"fine_labels": [...], b"coarse_labels": [...]}``, and
  ``meta`` with ``b"fine_label_names"``. The 100 fine labels are read, as
  ``keras.datasets.cifar100.load_data()`` gives them by default.

Rows are stored channel-first (3 x 32 x 32); they come back as (N, 32, 32, 3). The pickles are
read with an unpickler that allows what a numpy array needs and nothing else: an archive from
anywhere never runs code. :func:`hpo.training.decode.validate` checks the arrays afterwards.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import DataError
from hpo.training.images import Read

CIFAR10_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
CIFAR100_FILES = ("train", "test")  # and "meta", for the class names
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_NUMPY_PICKLE_NAMES = ("_reconstruct", "ndarray", "dtype", "_frombuffer", "scalar")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The official files are pickles: allow what a numpy array needs, never arbitrary code."""

    def find_class(self, module: str, name: str) -> object:
        numpy_ok = module.split(".")[0] == "numpy" and name in _NUMPY_PICKLE_NAMES
        if numpy_ok or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _unpickle(path: Path, what: str, read: Read) -> Mapping[bytes, Any]:
    try:
        loaded = _NumpyOnlyUnpickler(io.BytesIO(read()), encoding="bytes").load()
    except Exception as e:  # unpickling garbage raises nearly anything
        raise DataError(f"{path}: corrupt {what} ({e!r})") from e
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: corrupt {what} (a {type(loaded).__name__}, not a dict)")
    return loaded


def _rows(path: Path, what: str, batch: Mapping[bytes, Any], labels: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A file's images as (N, 32, 32, 3) and its ``labels`` list as an array."""
    try:
        data, y = np.asarray(batch[b"data"]), np.asarray(batch[labels])
    except KeyError as e:
        raise DataError(f"{path}: corrupt {what} (no {e.args[0]!r} entry)") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: {what} has data of shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def read_cifar10(path: Path, files: Mapping[str, Read]) -> Arrays:
    """CIFAR-10's five training batches and its test batch (all six must be in ``files``)."""
    xs, ys = [], []
    for name in CIFAR10_BATCHES:
        if name not in files:
            raise DataError(f"{path}: missing CIFAR-10 batch {name!r}")
        what = f"CIFAR-10 batch {name!r}"
        x, y = _rows(path, what, _unpickle(path, what, files[name]), b"labels")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs[:-1]), np.concatenate(ys[:-1]), xs[-1], ys[-1]


def read_cifar100(path: Path, files: Mapping[str, Read]) -> tuple[Arrays, tuple[str, ...] | None]:
    """CIFAR-100's ``train`` and ``test`` with their fine labels, and the fine label names of
    ``meta`` (None when the archive has no ``meta``: the caller names them)."""
    rows: list[np.ndarray] = []
    for name in CIFAR100_FILES:
        what = f"CIFAR-100 file {name!r}"
        rows.extend(_rows(path, what, _unpickle(path, what, files[name]), b"fine_labels"))
    arrays: Arrays = (rows[0], rows[1], rows[2], rows[3])
    if "meta" not in files:
        return arrays, None
    meta = _unpickle(path, "CIFAR-100 file 'meta'", files["meta"])
    names = meta.get(b"fine_label_names")
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{path}: corrupt CIFAR-100 file 'meta' (no list of fine_label_names)")
    return arrays, tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)
