"""Arrays in memory as a study's data: written once as an ``.npz`` the workers read.

:func:`hpo.tune` takes ``(x, y)`` pairs as Keras' ``fit`` does. They are checked, then written
to ``<artifacts>/data/<digest>.npz``, named by a SHA-256 of their dtypes, shapes and bytes, so
the same arrays given again are the same file. From there they are a study's data like any
``.npz``: decoded and checked by the same code, fingerprinted, recorded with the study and
compared by every worker (:mod:`hpo.study.data`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import DataError, OutputError

NAMES = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Arrays:
    """The four arrays of a study's data, checked, and the file they are (or will be) written to."""

    arrays: dict[str, np.ndarray]
    class_names: tuple[str, ...] | None
    digest: str

    def path(self, folder: Path) -> Path:
        return folder / f"{self.digest[:20]}.npz"


def check(train: Any, test: Any, class_names: Sequence[str] | None = None) -> Arrays:
    """``train`` and ``test``, each an ``(x, y)`` pair of array-likes of equal length, as arrays."""
    arrays: dict[str, np.ndarray] = {}
    for what, pair in (("train_data", train), ("test_data", test)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DataError(f"{what} must be a pair (x, y) of arrays, got {type(pair).__name__}"
                            + (f" of {len(pair)}" if isinstance(pair, (tuple, list)) else ""))
        split = what.removesuffix("_data")
        x, y = (_array(value, f"{what}: {axis}") for value, axis in zip(pair, ("x", "y"), strict=True))
        if len(x) != len(y):
            raise DataError(f"{what}: x has {len(x)} rows but y has {len(y)}: one label per example")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    names = None if class_names is None else tuple(str(n) for n in class_names)
    return Arrays(arrays, names, _digest(arrays, names))


def _array(value: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists, say
        raise DataError(f"{where}: not an array ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: has dtype {array.dtype}; a study's data is numbers (bool, int, uint or float)")
    if array.ndim == 0 or len(array) == 0:
        raise DataError(f"{where}: is empty")
    return array


def _digest(arrays: dict[str, np.ndarray], class_names: tuple[str, ...] | None) -> str:
    digest = hashlib.sha256()
    for name in NAMES:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.data)  # contiguous: hashed in place, not copied
    digest.update(repr(class_names).encode())
    return digest.hexdigest()


def write(data: Arrays, folder: Path) -> tuple[Path, bool]:
    """Write the arrays into ``folder`` (made if need be) unless the same are there already;
    returns the file and whether this call wrote it. Written beside and renamed: a full disk
    never leaves half a file under the final name."""
    path = data.path(folder)
    if path.is_file():
        return path, False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".arrays-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as file:
                extra = {"class_names": np.array(data.class_names)} if data.class_names is not None else {}
                members: dict[str, Any] = {**data.arrays, **extra}
                np.savez(file, **members)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would keep it from workers of other users
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    except OSError as exc:
        raise OutputError(f"cannot write the study's data to {folder}: {exc.strerror or exc}") from None
    return path, True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
