"""Decoding CIFAR-10 from the forms it comes in: the official pickled batches (a tar.gz or its
folder), an image-folder tree ``train/<class>/*.png|jpg`` + ``test/<class>/...`` (or a tar of
one), an ``.npz``, or Keras' download. Every form is checked the same way (shapes, dtypes,
labels), and a damaged archive is refused rather than read as a smaller data set.
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from hpo.errors import DataError

CLASS_NAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)
IMAGE_SHAPE = (32, 32, 3)
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")

DecodedArrays = dict[str, np.ndarray]


def load_keras_cifar10() -> DecodedArrays:
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


def data_format(path: Path) -> str:
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


def decode(path: Path) -> DecodedArrays:
    kind = data_format(path)
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
        if parts[-1] in (*BATCHES, "test_batch") and len(parts) <= 2:
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
    for name in (*BATCHES, "test_batch"):
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
            missing = [name for name in ARRAYS if name not in npz.files]
            if missing:
                names = ", ".join(missing)
                raise DataError(f"{path}: missing array(s) {names} (expected {', '.join(ARRAYS)})")
            arrays = [npz[name] for name in ARRAYS]
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
