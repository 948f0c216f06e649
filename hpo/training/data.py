"""Load a data set from wherever it is, decode it once, and hand it out shuffled.

Sources (:mod:`hpo.training.decode` reads them): an image-folder tree ``train/<class>/*`` +
``test/<class>/*`` or ``<class>/*`` (or a tar of one), an ``.npz`` with ``x_train, y_train,
x_test, y_test`` (and optionally ``class_names``), CIFAR-10's official ``cifar-10-python.tar.gz``,
or one of Keras' data sets by name (:data:`KERAS_SOURCES`); ``keras.datasets.cifar10`` when
nothing is given. The decoded arrays are cached as ``.npy`` files beside a ``meta.json`` (the
class names and a digest of the content), so every later load (by any worker) is a memory-mapped
read instead of a 15-second JPEG decode.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpo.errors import DataError
from hpo.training import decode, limits
from hpo.training.decode import ARRAYS, CLASS_NAMES, KERAS_SOURCES, Decoded

__all__ = ["CLASS_NAMES", "KERAS_SOURCES", "Dataset", "load_dataset", "validation_split"]

log = logging.getLogger(__name__)

_CACHE_LAYOUT = "data-v2"  # bump when decoding changes, so stale caches are never read


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test arrays: uint8 images (N, H, W, C), int64 labels indexing ``class_names``;
    or, ``kind="arrays"``, numbers of any shape with their targets (:func:`decode.validate_arrays`)."""

    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    source: str  # where it came from: a path, or "keras.datasets.NAME"
    class_names: tuple[str, ...] = field(repr=False)
    # What the arrays are: a digest of the decoded data set, the same from any source that holds
    # the same images and labels, and the selection made from it (subset, seed).
    content: str = field(repr=False)
    subset: int | None = field(repr=False)
    seed: int = field(repr=False)
    kind: str = field(default="images", repr=False)  # or "arrays": not images, or not labelled with classes

    @property
    def is_images(self) -> bool:
        """Image classification data: what rescaling, augmentation and the report's CNNs are for."""
        return self.kind == "images"

    @property
    def has_classes(self) -> bool:
        """Whether the targets are labels of classes (images', or integer labels of arrays)."""
        return bool(self.class_names)

    @property
    def fingerprint(self) -> str:
        """Two workers with the same fingerprint hold the same images in the same order."""
        return f"{self.content}/subset={self.subset}/seed={self.seed}"

    @property
    def num_classes(self) -> int:
        """The classes the labels index; 0 for targets that are not classes."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape: (H, W, C) of an image."""
        return tuple(int(n) for n in self.x_train.shape[1:])


def load_dataset(
    source: str | os.PathLike[str] | None = None,
    *,
    subset: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load the data set at ``source``, a path or a name in :data:`KERAS_SOURCES` that is not a
    path here (default: env ``HPO_DATA``, else ``"cifar10"``, keras' download).

    The first load decodes and caches under ``cache_dir`` (default: env ``HPO_CACHE``, else
    ``~/.cache/hpo``). Train and test are shuffled with ``np.random.default_rng(seed)``;
    ``subset=N`` keeps N training and N // 5 test images, the same number per class (the first
    classes get the remainder; a class with too few images gives what it has), chosen by the seed.
    """
    source = source if source is not None else os.environ.get("HPO_DATA") or "cifar10"
    root = Path(cache_dir or os.environ.get("HPO_CACHE") or Path.home() / ".cache" / "hpo")
    description, key, load = _locate(source)
    data, content = _cached(root / _CACHE_LAYOUT / key, load, description)

    rng = np.random.default_rng(seed)
    train = rng.permutation(len(data.y_train))
    test = rng.permutation(len(data.y_test))
    if subset is not None:
        if not 10 <= subset <= len(train):
            raise DataError(f"--subset must be between 10 and {len(train)}, got {subset}")
        if data.class_names:
            # Shuffled again after the selection: kept in draw order, the classes that fill their
            # quota first would crowd the front, and a validation split (the tail) would miss them.
            classes = len(data.class_names)
            train = rng.permutation(_stratified(train, data.y_train, subset, classes))
            test = rng.permutation(_stratified(test, data.y_test, min(subset // 5, len(test)), classes))
        else:  # targets with no classes to balance: the first of the shuffled order
            train, test = train[:subset], test[:max(1, min(subset // 5, len(test)))]
    # Gathering straight from the memory map copies only the rows we keep.
    labels = (lambda y: np.asarray(y, dtype=np.int64)) if data.class_names else np.asarray
    return Dataset(
        x_train=data.x_train[train],
        y_train=labels(data.y_train[train]),
        x_test=data.x_test[test],
        y_test=labels(data.y_test[test]),
        source=description,
        class_names=data.class_names,
        content=content,
        subset=subset,
        seed=seed,
        kind=data.kind,
    )


def _locate(source: str | os.PathLike[str]) -> tuple[str, str, Callable[[], Decoded]]:
    """``source``'s description, cache key and decoder: a path, else the name of a keras data set."""
    path = Path(source).expanduser()
    if isinstance(source, str) and source in KERAS_SOURCES and not path.exists():
        return f"keras.datasets.{source}", f"keras-{source}", functools.partial(decode.load_keras, source)
    path = path.resolve()
    if not path.exists():
        bare = isinstance(source, str) and "/" not in source
        hint = f" (nor one of keras' data sets: {', '.join(KERAS_SOURCES)})" if bare else ""
        raise DataError(f"{path}: no such file or directory{hint}")
    if not (path.is_file() or path.is_dir()):  # a FIFO or a device would be read without end
        raise DataError(f"{path}: not a regular file or folder")
    return str(path), _cache_key(path), functools.partial(decode.decode, path)


def validation_split(
    x: np.ndarray, y: np.ndarray, fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Keras' ``validation_split`` semantics: the LAST ``fraction`` of the arrays is validation.

    Returns views, not copies. Shuffle first (``load_dataset`` does), or the split holds whole
    classes.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {fraction}")
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} samples but y has {len(y)}")
    split_at = int(math.floor(len(x) * (1.0 - fraction)))  # the same formula as keras
    if split_at in (0, len(x)):
        raise DataError(f"validation fraction {fraction} of {len(x)} samples leaves a side empty")
    return (x[:split_at], y[:split_at]), (x[split_at:], y[split_at:])


def _stratified(order: np.ndarray, labels: np.ndarray, n: int, classes: int) -> np.ndarray:
    """The first n // classes (+1 for the first n % classes classes) of each class in ``order``,
    in order."""
    y = np.asarray(labels)[order]
    quota = np.full(classes, n // classes)
    quota[: n % classes] += 1
    by_class = np.argsort(y, kind="stable")
    starts = np.searchsorted(y[by_class], y[by_class])  # where each item's class run begins
    rank = np.empty(len(y), dtype=np.int64)
    rank[by_class] = np.arange(len(y)) - starts
    return order[rank < quota[y]]


# --- cache -------------------------------------------------------------------------------------


def _cache_key(path: Path) -> str:
    """A folder name for what ``path`` holds, not for how it was reached.

    A file is named by a hash of its bytes (BLAKE2b: about 0.2 s for the official 163 MB
    archive, against a 15-second decode), so a symlink, a hard link or a copy of an archive
    shares one entry, and any edit gets a new one. Its format, which follows from its name, is
    part of the key.

    A folder tree is named by its root's (device, inode) and, below it, every directory's
    relative path and every file's name, inode, size, mtime and ctime: the same tree through a
    symlink or a bind mount shares an entry, and an image edited in place gets a new one, even
    with its size and mtime put back (``touch -r``), as the kernel sets ctime on every write.
    Hashing 60,000 images would take about as long as decoding them; stat-ing them takes 0.23 s
    (CIFAR-10 as a JPEG folder, warm, 2-core VM), once per worker. A chmod or a rename also
    changes ctime: the tree is decoded again, to the same content digest.
    """
    kind = decode.data_format(path)  # first: an unrecognised file is refused before it is read
    if kind != "folder":
        limits.check_file(path)  # a sparse file's length is a claim too: refused before it is hashed
    if kind == "folder":
        root = os.stat(path)
        digest = hashlib.blake2b(f"tree\0{root.st_dev}\0{root.st_ino}".encode(), digest_size=16)
        try:
            for dirpath, dirnames, filenames in os.walk(path, onerror=_raise):
                dirnames.sort()
                digest.update(f"\0{Path(dirpath).relative_to(path).as_posix()}\0".encode())
                for name in sorted(filenames):
                    member = os.path.join(dirpath, name)
                    try:
                        st = os.stat(member)
                    except FileNotFoundError:  # a dangling link
                        st = os.lstat(member)
                    digest.update(f"{name}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0".encode())
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
        return f"tree-{digest.hexdigest()}"
    try:
        with path.open("rb") as file:
            content = hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    content.update(f"\0{kind}".encode())
    return f"file-{content.hexdigest()}"


def _raise(error: OSError) -> None:
    raise error


def _content_digest(data: Decoded) -> str:
    """What the data set is, whatever it was decoded from: its arrays and its class names."""
    digest = hashlib.blake2b(json.dumps(list(data.class_names)).encode(), digest_size=16)
    for name in ARRAYS:
        array = np.ascontiguousarray(getattr(data, name))
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _read_cache(entry: Path) -> tuple[Decoded, str] | None:
    """The entry's data and content digest; None for a missing, partial or older entry."""
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    except (OSError, ValueError):  # a JSONDecodeError or a UnicodeDecodeError is a ValueError
        return None
    names, content = (meta.get("class_names"), meta.get("content")) if isinstance(meta, dict) else (None, None)
    if not (isinstance(content, str) and isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return None
    kind = meta.get("kind", "images")  # entries written before other kinds were all images
    if kind not in ("images", "arrays"):
        return None
    return Decoded(**arrays, class_names=tuple(names), kind=kind), content


def _cached(entry: Path, decode: Callable[[], Decoded], what: str) -> tuple[Decoded, str]:
    """Read ``entry``, or decode and write it; one process decodes while the others wait."""
    if (cached := _read_cache(entry)) is not None:
        return cached
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = open(entry.parent / f"{entry.name}.lock", "w")  # noqa: SIM115  (its OSError is ours to word; `with lock` closes it)
    except OSError as e:
        raise DataError(f"{entry.parent}: cannot create the data cache ({e.strerror or e})") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (cached := _read_cache(entry)) is not None:
            return cached  # another process built it while we waited
        log.info("decoding %s (one-time, cached at %s)", what, entry)
        started = time.monotonic()
        data = decode()
        log.info("decoded %d images in %.1f s", len(data.y_train) + len(data.y_test), time.monotonic() - started)
        content = _content_digest(data)
        _write_cache(entry, data, content)
    return data, content


def _write_cache(entry: Path, data: Decoded, content: str) -> None:
    # Write aside, then rename: a reader sees the whole entry or none of it.
    try:
        shutil.rmtree(entry, ignore_errors=True)  # a damaged entry from an interrupted run
        tmp = Path(tempfile.mkdtemp(prefix=f"{entry.name}.tmp-", dir=entry.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            for name in ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(data, name))
            meta = {"content": content, "class_names": list(data.class_names),
                    **({"kind": data.kind} if data.kind != "images" else {})}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise DataError(f"{entry.parent}: cannot write the data cache ({e.strerror or e})") from e
