"""Load CIFAR-10 from wherever it is, decode it once, and hand it out shuffled.

Sources: the official ``cifar-10-python.tar.gz`` (or its ``cifar-10-batches-py/`` folder), an
image-folder tree ``train/<class>/*.png|jpg`` + ``test/<class>/...`` (or a tar of one), an ``.npz``
with ``x_train, y_train, x_test, y_test``, or ``keras.datasets.cifar10`` when nothing is given.
The decoded arrays are cached as ``.npy`` files, so every later load (by any worker) is a
memory-mapped read instead of a 15-second JPEG decode.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import hashlib
import io
import logging
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hpo.errors import DataError

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)
IMAGE_SHAPE = (32, 32, 3)
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
_CACHE_LAYOUT = "data-v1"  # bump when decoding changes, so stale caches are never read

DecodedArrays = dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class Dataset:
    """CIFAR-10 train and test arrays: uint8 images (N, 32, 32, 3), int64 labels 0..9."""

    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    source: str

    @property
    def num_classes(self) -> int:
        return len(CLASS_NAMES)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPE


def load_dataset(
    source: str | os.PathLike[str] | None = None,
    *,
    subset: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load CIFAR-10 from ``source`` (default: env ``HPO_DATA``, else keras' download).

    The first load decodes and caches under ``cache_dir`` (default: env ``HPO_CACHE``, else
    ``~/.cache/hpo``). Train and test are shuffled with ``np.random.default_rng(seed)``;
    ``subset=N`` keeps N training and N // 5 test images, the same number per class (the first
    classes get the remainder; a class with too few images gives what it has), chosen by the seed.
    """
    source = source if source is not None else os.environ.get("HPO_DATA") or None
    root = Path(cache_dir or os.environ.get("HPO_CACHE") or Path.home() / ".cache" / "hpo")
    if source is None:
        description = "keras.datasets.cifar10"
        arrays = _cached(root / _CACHE_LAYOUT / "keras-cifar10", _load_keras, description)
    else:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        if not (path.is_file() or path.is_dir()):  # a FIFO or a device would be read without end
            raise DataError(f"{path}: not a regular file or folder")
        entry = root / _CACHE_LAYOUT / _cache_key(path)
        arrays = _cached(entry, lambda: _decode(path), str(path))
        description = str(path)

    rng = np.random.default_rng(seed)
    train = rng.permutation(len(arrays["y_train"]))
    test = rng.permutation(len(arrays["y_test"]))
    if subset is not None:
        if not 10 <= subset <= len(train):
            raise DataError(f"--subset must be between 10 and {len(train)}, got {subset}")
        # Shuffled again after the selection: kept in draw order, the classes that fill their
        # quota first would crowd the front, and a validation split (the tail) would miss them.
        train = rng.permutation(_stratified(train, arrays["y_train"], subset))
        test = rng.permutation(_stratified(test, arrays["y_test"], min(subset // 5, len(test))))
    # Gathering straight from the memory map copies only the rows we keep.
    return Dataset(
        x_train=arrays["x_train"][train],
        y_train=np.asarray(arrays["y_train"][train], dtype=np.int64),
        x_test=arrays["x_test"][test],
        y_test=np.asarray(arrays["y_test"][test], dtype=np.int64),
        source=description,
    )


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


def _stratified(order: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The first n // 10 (+1 for the first n % 10 classes) of each class in ``order``, in order."""
    y = np.asarray(labels)[order]
    quota = np.full(len(CLASS_NAMES), n // len(CLASS_NAMES))
    quota[: n % len(CLASS_NAMES)] += 1
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
    relative path, mtime and file names: the same tree through a symlink or a bind mount shares
    an entry. Hashing or even stat-ing 60,000 images would take longer than loading the cache,
    so an image edited in place (same name) goes unnoticed.
    """
    kind = _format(path)  # first: an unrecognised file is refused before it is read
    if kind == "folder":
        root = os.stat(path)
        digest = hashlib.blake2b(f"tree\0{root.st_dev}\0{root.st_ino}".encode(), digest_size=16)
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            relative = Path(dirpath).relative_to(path).as_posix()
            digest.update(f"\0{relative}\0{os.stat(dirpath).st_mtime_ns}\0".encode())
            digest.update("\0".join(sorted(filenames)).encode())
        return f"tree-{digest.hexdigest()}"
    try:
        with path.open("rb") as file:
            content = hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    content.update(f"\0{kind}".encode())
    return f"file-{content.hexdigest()}"


def _read_cache(entry: Path) -> DecodedArrays | None:
    try:
        return {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    except (OSError, ValueError):
        return None


def _cached(entry: Path, decode: Callable[[], DecodedArrays], what: str) -> DecodedArrays:
    """Read ``entry``, or decode and write it; one process decodes while the others wait."""
    if (arrays := _read_cache(entry)) is not None:
        return arrays
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = open(entry.parent / f"{entry.name}.lock", "w")  # noqa: SIM115  (its OSError is ours to word; `with lock` closes it)
    except OSError as e:
        raise DataError(f"{entry.parent}: cannot create the data cache ({e.strerror or e})") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (arrays := _read_cache(entry)) is not None:
            return arrays  # another process built it while we waited
        log.info("decoding %s (one-time, cached at %s)", what, entry)
        started = time.monotonic()
        arrays = decode()
        log.info("decoded %d images in %.1f s", len(arrays["y_train"]) + len(arrays["y_test"]),
                 time.monotonic() - started)
        _write_cache(entry, arrays)
    return arrays


def _write_cache(entry: Path, arrays: DecodedArrays) -> None:
    # Write aside, then rename: a reader sees the whole entry or none of it.
    try:
        shutil.rmtree(entry, ignore_errors=True)  # a damaged entry from an interrupted run
        tmp = Path(tempfile.mkdtemp(prefix=f"{entry.name}.tmp-", dir=entry.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", arrays[name])
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise DataError(f"{entry.parent}: cannot write the data cache ({e.strerror or e})") from e


# --- decoding ----------------------------------------------------------------------------------


def _load_keras() -> DecodedArrays:
    try:
        import keras  # noqa: PLC0415  (slow: it imports a backend; only this download path needs it)

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as e:  # any download or import failure; the user's fix is the same
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"keras.datasets.cifar10: cannot load CIFAR-10 ({reason}); "
            "set HPO_DATA or pass --data to a local copy, e.g. cifar-10-python.tar.gz"
        ) from e
    return _validate("keras.datasets.cifar10", x_train, y_train, x_test, y_test)


def _format(path: Path) -> str:
    """Which decoder reads ``path``: "folder", "npz" or "tar", from what it is and its name."""
    if path.is_dir():
        return "folder"
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    raise DataError(
        f"{path}: unrecognised data format (expected cifar-10-python.tar.gz, an image folder "
        "train/<class>/ + test/<class>/ or a .tar.gz of one, or an .npz)"
    )


def _decode(path: Path) -> DecodedArrays:
    kind = _format(path)
    if kind == "folder":
        try:
            return _from_members(path, _folder_members(path))
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e})") from e
    if kind == "npz":
        return _from_npz(path)
    try:
        with _open_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            return _from_members(path, _tar_members(path, stream, tar))
    except (tarfile.TarError, EOFError, OSError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: corrupt archive ({e})") from e


def _open_stream(path: Path) -> io.BufferedIOBase:
    """The archive's tar bytes, through gzip when it is compressed.

    gzip.GzipFile, unlike tarfile's own stream, checks the end-of-stream marker and the CRC, so
    a download cut short is an error rather than an archive that ends early.
    """
    with path.open("rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if compressed else path.open("rb")  # type: ignore[return-value]


def _check_end_of_archive(path: Path, stream: io.BufferedIOBase, tar: tarfile.TarFile) -> None:
    """Refuse a tar that stopped without its end-of-archive blocks.

    tarfile ends its member loop quietly when a header is cut short, so a truncated archive
    would otherwise load as a smaller data set. Every tar writer ends with two zero blocks
    (POSIX); tarfile stopped at the first, at ``tar.offset``.
    """
    while stream.read(1 << 20):  # a truncated gzip stream raises EOFError here
        pass
    if stream.tell() - tar.offset < 2 * tarfile.BLOCKSIZE:
        raise DataError(f"{path}: corrupt archive (truncated: no end-of-archive marker)")


def _folder_members(root: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        yield path.relative_to(root).as_posix(), path.read_bytes


def _tar_members(
    path: Path, stream: io.BufferedIOBase, tar: tarfile.TarFile
) -> Iterator[tuple[str, Callable[[], bytes]]]:
    for member in tar:
        if member.isfile():
            # Read now: a streamed tar cannot seek back to this member later.
            extracted = tar.extractfile(member)
            assert extracted is not None  # a regular file always has its contents
            data = extracted.read()
            yield member.name.removeprefix("./"), functools.partial(bytes, data)
    _check_end_of_archive(path, stream, tar)


def _from_members(path: Path, members: Iterator[tuple[str, Callable[[], bytes]]]) -> DecodedArrays:
    """Recognise an official-batches or image-folder layout, allowing one leading top folder."""
    batches: dict[str, Callable[[], bytes]] = {}
    images: list[tuple[int, int, str, Callable[[], bytes]]] = []  # (split, label, name, read)
    for name, read in members:
        parts = name.split("/")
        if parts[-1] in (*_BATCHES, "test_batch") and len(parts) <= 2:
            batches[parts[-1]] = read
        elif len(parts) in (3, 4) and parts[-3] in ("train", "test"):
            if parts[-1].startswith("."):
                continue  # macOS resource forks and the like
            if parts[-2] not in CLASS_NAMES:
                raise DataError(
                    f"{path}: unknown class folder {'/'.join(parts[-3:-1])!r} "
                    f"(expected one of {', '.join(CLASS_NAMES)})"
                )
            split = 0 if parts[-3] == "train" else 1
            images.append((split, CLASS_NAMES.index(parts[-2]), name, read))
    if batches:
        return _from_batches(path, batches)
    if images:
        return _from_images(path, images)
    raise DataError(
        f"{path}: unrecognised data format (no cifar-10-batches-py/data_batch_* and no "
        "train/<class>/*.png|jpg images)"
    )


_NUMPY_PICKLE_NAMES = ("_reconstruct", "ndarray", "dtype", "_frombuffer", "scalar")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The official batches are pickles: allow what a numpy array needs, never arbitrary code."""

    def find_class(self, module: str, name: str) -> object:
        numpy_ok = module.split(".")[0] == "numpy" and name in _NUMPY_PICKLE_NAMES
        if numpy_ok or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _from_batches(path: Path, batches: dict[str, Callable[[], bytes]]) -> DecodedArrays:
    xs, ys = [], []
    for name in (*_BATCHES, "test_batch"):
        if name not in batches:
            raise DataError(f"{path}: missing CIFAR-10 batch {name!r}")
        try:
            batch = _NumpyOnlyUnpickler(io.BytesIO(batches[name]()), encoding="bytes").load()
            data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
        except Exception as e:  # unpickling garbage raises nearly anything
            raise DataError(f"{path}: corrupt CIFAR-10 batch {name!r} ({e!r})") from e
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            shape = data.shape
            raise DataError(f"{path}: batch {name!r} has data of shape {shape}, expected (N, 3072)")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # stored as CHW rows
        ys.append(labels)
    return _validate(str(path), np.concatenate(xs[:-1]), np.concatenate(ys[:-1]), xs[-1], ys[-1])


def _from_images(path: Path, images: list[tuple[int, int, str, Callable[[], bytes]]]) -> DecodedArrays:
    images.sort(key=lambda item: item[:3])  # split, class, file name: independent of tar order
    x = np.empty((len(images), *IMAGE_SHAPE), dtype=np.uint8)
    for i, (_, _, name, read) in enumerate(images):
        try:
            with Image.open(io.BytesIO(read())) as image:
                image.load()
                mode, (width, height) = image.mode, image.size
                if (mode, width, height) == ("RGB", 32, 32):
                    x[i] = np.asarray(image)
        except Exception as e:  # Pillow raises many types for bad bytes
            raise DataError(f"{path}: {name}: undecodable image ({type(e).__name__}: {e})") from e
        if (mode, width, height) != ("RGB", 32, 32):
            raise DataError(f"{path}: {name}: image is {mode} {width}x{height}, expected RGB 32x32")
    split = np.array([item[0] for item in images])
    y = np.array([item[1] for item in images], dtype=np.int64)
    return _validate(str(path), x[split == 0], y[split == 0], x[split == 1], y[split == 1])


def _from_npz(path: Path) -> DecodedArrays:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in _ARRAYS if name not in npz.files]
            if missing:
                names = ", ".join(missing)
                raise DataError(f"{path}: missing array(s) {names} (expected {', '.join(_ARRAYS)})")
            arrays = [npz[name] for name in _ARRAYS]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: corrupt .npz ({e})") from e
    return _validate(str(path), *arrays)


def _validate(
    where: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> DecodedArrays:
    """Check shapes, dtypes and labels; return uint8 images and flat int64 labels."""
    arrays: DecodedArrays = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]  # keras returns labels as (N, 1)
        if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{where}: x_{split} has shape {x.shape}, expected (N, 32, 32, 3)")
        if x.dtype != np.uint8:
            raise DataError(f"{where}: x_{split} has dtype {x.dtype}, expected uint8")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            problem = f"has shape {y.shape} and dtype {y.dtype}, expected (N,) integers"
            raise DataError(f"{where}: y_{split} {problem}")
        if len(x) != len(y):
            counts = f"{len(x)} images in x_{split} but {len(y)} labels in y_{split}"
            raise DataError(f"{where}: {counts}")
        if len(x) == 0:
            raise DataError(f"{where}: the {split} set is empty")
        bad = y[(y < 0) | (y >= len(CLASS_NAMES))]
        if bad.size:
            raise DataError(f"{where}: y_{split} labels out of range 0..9 (found {bad[0]})")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y.astype(np.int64)
    return arrays
