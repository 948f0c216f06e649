"""Decoding an image classification data set from the forms it comes in, into checked arrays.

- CIFAR-10's and CIFAR-100's official python archives (``cifar-10-python.tar.gz``,
  ``cifar-100-python.tar.gz``, or their folders; :mod:`hpo.training.cifar`);
- an image-folder tree ``train/<class>/*`` + ``test/<class>/*``, or a plain class-folder tree
  ``<class>/*`` split the same way everywhere: within each class the files sorted by name, every
  5th one (index % 5 == 4) is a test image. Either tree as a folder or as a tar (gzipped or not),
  with at most one top folder; classes are the folder names, sorted (:mod:`hpo.training.images`);
- an ``.npz`` with ``x_train, y_train, x_test, y_test`` and optionally ``class_names``;
- one of Keras' built-in data sets, by name (:data:`KERAS_SOURCES`).

Every form is checked the same way (:func:`validate`): uint8 images (N, H, W, 1|3) of one size
in train and test, int64 labels 0..K-1, K >= 2, every class with a training image. A damaged
archive is refused rather than read as a smaller data set.

An ``.npz`` (or arrays given from Python) may also hold data of any other task
(:func:`validate_arrays`): numbers of any shape (tabular features, token ids, float images) and
targets of any shape (float regression targets; integer labels 0..K-1 are classes, checked as
above). Such data is ``kind="arrays"``: image-only steps (rescaling, augmentation, the report's
CNNs, the confusion matrix) do not apply to it.
"""

from __future__ import annotations

import functools
import gzip
import io
import tarfile
import zipfile
import zlib
from collections.abc import Mapping, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo.errors import DataError
from hpo.training import cifar, images, limits

CLASS_NAMES: tuple[str, ...] = (  # CIFAR-10's, in label order
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)
CIFAR100_CLASS_NAMES: tuple[str, ...] = (  # the fine labels, in label order
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
KERAS_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": CLASS_NAMES,
    "cifar100": CIFAR100_CLASS_NAMES,
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}
KERAS_SOURCES = tuple(KERAS_CLASS_NAMES)
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True, eq=False)
class Decoded:
    """A checked data set: uint8 images (N, H, W, C), int64 labels indexing ``class_names``; or,
    ``kind="arrays"``, numbers of any shape with targets (``class_names`` empty unless they are
    integer labels of classes)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    kind: str = "images"


def load_keras(name: str) -> Decoded:
    """``keras.datasets.<name>.load_data()``; it downloads on first use, so it fails offline."""
    try:
        from hpo.workers import device  # noqa: PLC0415  (slow: it imports a backend; only this path needs it)

        device.import_backend()  # TensorFlow's import-time lines filtered, as a worker's are
        import keras  # noqa: PLC0415  (loaded just above)

        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # any download or import failure; the user's fix is the same
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"keras.datasets.{name}: cannot load it ({reason}); pass a local copy with --data or "
            "HPO_DATA (an image folder, a .tar.gz of one, or an .npz)"
        ) from e
    names = KERAS_CLASS_NAMES[name]
    where = f"keras.datasets.{name}"
    return validate(where, x_train, y_train, x_test, y_test, names, f"{where} has {len(names)} classes")


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
        f"{path}: unrecognised data format (expected an image folder train/<class>/ + test/<class>/ "
        "or <class>/, a .tar.gz of one, cifar-10-python.tar.gz, cifar-100-python.tar.gz, or an .npz)"
    )


def decode(path: Path) -> Decoded:
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


# --- archives and folders ----------------------------------------------------------------------

Member = tuple[str, images.Read | None]  # a relative name and how to read it; None for a folder


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


def _folder_members(root: Path) -> Iterator[Member]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            limits.check_file(path)  # read one at a time, but a sparse one would still be read whole
            yield path.relative_to(root).as_posix(), path.read_bytes
        elif path.is_dir():  # so that an empty class folder is seen
            yield path.relative_to(root).as_posix(), None


def _tar_members(path: Path, stream: io.BufferedIOBase, tar: tarfile.TarFile) -> Iterator[Member]:
    budget = limits.Budget(str(path))  # every member is held until the images are decoded
    for member in tar:
        name = member.name.removeprefix("./")
        if member.isdir():
            yield name, None
        elif member.isfile():
            budget.take(member.size, f"member {name}")
            # Read now: a streamed tar cannot seek back to this member later.
            extracted = tar.extractfile(member)
            assert extracted is not None  # a regular file always has its contents
            yield name, functools.partial(bytes, extracted.read())
    _check_end_of_archive(path, stream, tar)


def _from_members(path: Path, members: Iterator[Member]) -> Decoded:
    """Recognise CIFAR-10's or CIFAR-100's official layout or an image-folder tree, allowing one
    leading top folder."""
    batches: dict[str, images.Read] = {}
    files: dict[tuple[str, ...], images.Read] = {}
    folders: set[tuple[str, ...]] = set()
    for name, read in members:
        parts = tuple(name.split("/"))
        if any(part.startswith(".") for part in parts):
            continue  # macOS resource forks, .ipynb_checkpoints and the like
        if read is None:
            folders.add(parts)
        elif parts[-1] in cifar.CIFAR10_BATCHES and len(parts) <= 2:
            batches[parts[-1]] = read
        else:
            files[parts] = read
    if batches:
        return _from_cifar10(path, batches)
    for top in sorted({parts[:-1] for parts in files if len(parts) <= 2}):
        # Files (not folders) named train and test side by side: no image tree looks like that.
        if all(top + (name,) in files for name in cifar.CIFAR100_FILES):
            named = {name: files[top + (name,)] for name in (*cifar.CIFAR100_FILES, "meta") if top + (name,) in files}
            return _from_cifar100(path, named)
    class_names, x_train, y_train, x_test, y_test = images.decode_tree(path, files, folders)
    return validate(str(path), x_train, y_train, x_test, y_test, class_names)


# --- CIFAR's official archives ------------------------------------------------------------------


def _from_cifar10(path: Path, batches: dict[str, images.Read]) -> Decoded:
    x_train, y_train, x_test, y_test = cifar.read_cifar10(path, batches)
    return validate(str(path), x_train, y_train, x_test, y_test, CLASS_NAMES, "CIFAR-10 has 10 classes")


def _from_cifar100(path: Path, files: dict[str, images.Read]) -> Decoded:
    (x_train, y_train, x_test, y_test), names = cifar.read_cifar100(path, files)
    if names is None:
        return validate(str(path), x_train, y_train, x_test, y_test, CIFAR100_CLASS_NAMES, "CIFAR-100 has 100 classes")
    return validate(str(path), x_train, y_train, x_test, y_test, names, f"the meta file names {len(names)} classes")


# --- .npz --------------------------------------------------------------------------------------


def _from_npz(path: Path) -> Decoded:
    limits.check_npz(path)  # what its members claim, before any is read
    try:
        npz = np.load(path, allow_pickle=False, mmap_mode="r")  # a bare .npy is mapped, not read
        if not isinstance(npz, np.lib.npyio.NpzFile):  # np.load reads a bare .npy too
            raise DataError(f"{path}: not an .npz archive (one array, not {', '.join(ARRAYS)})")
        with npz:
            missing = [name for name in ARRAYS if name not in npz.files]
            if missing:
                names = ", ".join(missing)
                raise DataError(f"{path}: missing array(s) {names} (expected {', '.join(ARRAYS)})")
            x_train, y_train, x_test, y_test = (npz[name] for name in ARRAYS)
            try:
                names_array = npz["class_names"] if "class_names" in npz.files else None
            except ValueError as e:  # an object array, which allow_pickle=False will not load
                raise DataError(f"{path}: class_names must be an array of strings ({e})") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: corrupt .npz ({e})") from e
    if names_array is None:
        return validate(str(path), x_train, y_train, x_test, y_test)
    class_names = _class_names(path, names_array)
    named_by = f"class_names has {len(class_names)} names"
    return validate(str(path), x_train, y_train, x_test, y_test, class_names, named_by)


def _class_names(path: Path, names: np.ndarray) -> tuple[str, ...]:
    if names.ndim != 1 or names.dtype.kind != "U":
        raise DataError(
            f"{path}: class_names has shape {names.shape} and dtype {names.dtype}, "
            "expected a 1-D array of strings"
        )
    class_names = tuple(str(name) for name in names)
    seen: set[str] = set()
    for i, name in enumerate(class_names):
        if not name.strip():
            raise DataError(f"{path}: class_names[{i}] is empty")
        if name in seen:
            raise DataError(f"{path}: class_names holds {name!r} twice")
        seen.add(name)
    return class_names


# --- the checks every format passes ------------------------------------------------------------


def validate(
    where: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: Sequence[str] | None = None,
    named_by: str = "",
) -> Decoded:
    """Check shapes, dtypes and labels; return uint8 images (N, H, W, C) and flat int64 labels.

    Without ``class_names`` the classes are 0..the largest label, named "0", "1", ...;
    ``named_by`` says where given names come from, for the out-of-range message. Data that is not
    uint8 images with integer labels is checked as arrays of another task (:func:`validate_arrays`).
    """
    if not is_images(np.asarray(x_train), np.asarray(y_train)):
        return validate_arrays(where, x_train, y_train, x_test, y_test, class_names, named_by)
    arrays: dict[str, np.ndarray] = {}
    given: dict[str, np.ndarray] = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        shape = x.shape
        if x.ndim == 3:
            x = x[..., np.newaxis]  # grayscale without a channel axis, as keras gives MNIST
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]  # keras returns CIFAR labels as (N, 1)
        if x.ndim != 4 or x.shape[3] not in (1, 3) or min(x.shape[1:3]) < 1:
            raise DataError(
                f"{where}: x_{split} has shape {shape}, "
                "expected (N, H, W), (N, H, W, 1) or (N, H, W, 3)"
            )
        if x.dtype != np.uint8:
            raise DataError(
                f"{where}: x_{split} has dtype {x.dtype}, expected uint8 pixels 0..255: "
                "multiply and convert with .astype('uint8')"
            )
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            problem = f"has shape {y.shape} and dtype {y.dtype}, expected (N,) integers"
            raise DataError(f"{where}: y_{split} {problem}")
        if len(x) != len(y):
            counts = f"{len(x)} images in x_{split} but {len(y)} labels in y_{split}"
            raise DataError(f"{where}: {counts}")
        if len(x) == 0:
            raise DataError(f"{where}: the {split} set is empty")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = np.ascontiguousarray(x), y.astype(np.int64)
        given[split] = y  # a label past int64 (uint64) is negative in the cast: its message shows this one
    train_shape, test_shape = arrays["x_train"].shape[1:], arrays["x_test"].shape[1:]
    if train_shape != test_shape:
        raise DataError(f"{where}: train and test images differ in shape (H, W, C): {train_shape} and {test_shape}")
    names = _checked_labels(where, arrays["y_train"], arrays["y_test"], class_names, named_by, given)
    return Decoded(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], names)


def is_images(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether ``x`` and ``y`` are an image classification set: uint8 pixels (N, H, W) or
    (N, H, W, 1|3), with integer labels (N,) or (N, 1)."""
    pixels = x.dtype == np.uint8 and (x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3)))
    labels = np.issubdtype(y.dtype, np.integer) and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1))
    return bool(pixels and labels)


def validate_arrays(
    where: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: Sequence[str] | None = None,
    named_by: str = "",
) -> Decoded:
    """Check the data of a task other than image classification: numbers (bool, int, uint or
    float) of one shape and dtype in train and test, one target per example. Integer targets of
    one value per example (N,) are labels of classes, checked as images' labels are; any other
    targets (floats, several per example) are kept as they are, with no classes. A 1-D ``x`` is
    one feature per example, (N, 1)."""
    arrays: dict[str, np.ndarray] = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        for name, array in ((f"x_{split}", x), (f"y_{split}", y)):
            if array.dtype.kind not in "biuf":
                raise DataError(f"{where}: {name} has dtype {array.dtype}; expected numbers "
                                "(bool, int, uint or float)")
            if array.ndim == 0:
                raise DataError(f"{where}: {name} is a single value, expected one row per example")
        if x.ndim == 1:
            x = x[:, np.newaxis]
        if y.ndim == 2 and y.shape[1] == 1 and np.issubdtype(y.dtype, np.integer):
            y = y[:, 0]
        if len(x) != len(y):
            raise DataError(f"{where}: {len(x)} examples in x_{split} but {len(y)} targets in y_{split}")
        if len(x) == 0:
            raise DataError(f"{where}: the {split} set is empty")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = np.ascontiguousarray(x), np.ascontiguousarray(y)
    for axis in ("x", "y"):
        train, test = arrays[f"{axis}_train"], arrays[f"{axis}_test"]
        if train.shape[1:] != test.shape[1:]:
            raise DataError(f"{where}: {axis}_train and {axis}_test differ in shape per example: "
                            f"{train.shape[1:]} and {test.shape[1:]}")
        if train.dtype != test.dtype:
            raise DataError(f"{where}: {axis}_train has dtype {train.dtype} but {axis}_test {test.dtype}: "
                            "give both the same")
    y = arrays["y_train"]
    if np.issubdtype(y.dtype, np.integer) and y.ndim == 1:  # labels of classes
        given = {"train": y, "test": arrays["y_test"]}
        arrays["y_train"], arrays["y_test"] = y.astype(np.int64), arrays["y_test"].astype(np.int64)
        names = _checked_labels(where, arrays["y_train"], arrays["y_test"], class_names, named_by, given)
        return Decoded(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], names, "arrays")
    if class_names is not None:
        raise DataError(f"{where}: class names are given, but y_train holds {y.dtype} targets of shape "
                        f"{y.shape[1:]} per example, not integer labels of classes")
    for name in ("y_train", "y_test"):
        target = arrays[name]
        if target.dtype.kind == "f" and not np.isfinite(target).all():
            raise DataError(f"{where}: {name} holds a NaN or an infinity at row "
                            f"{int(np.flatnonzero(~np.isfinite(target.reshape(len(target), -1)).all(axis=1))[0])}")
    return Decoded(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], (), "arrays")


def _checked_labels(where: str, y_train: np.ndarray, y_test: np.ndarray, class_names: Sequence[str] | None,
                    named_by: str, given: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The class names of int64 labels: checked in range, every class with a training example.
    ``given`` are the labels as they came (per split): a uint64 label past int64 is negative in
    the cast, and the message shows the one given."""
    arrays = {"y_train": y_train, "y_test": y_test}
    if class_names is None:
        num_classes = max(int(arrays["y_train"].max()), int(arrays["y_test"].max()), 0) + 1
    else:
        num_classes = len(class_names)
    for split in ("train", "test"):
        y = arrays[f"y_{split}"]
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if bad.size:
            origin = f" ({named_by})" if named_by else ""
            label = given[split][bad[0]]
            raise DataError(f"{where}: y_{split} label {label} out of range 0..{num_classes - 1}{origin}")
    present = np.unique(arrays["y_train"])  # sorted: class i is present iff present[i] == i
    gaps = np.flatnonzero(present != np.arange(len(present)))
    missing = int(gaps[0]) if gaps.size else len(present)
    if missing < num_classes:  # found without naming every class: a stray label 10**9 is cheap
        name = class_names[missing] if class_names is not None else str(missing)
        raise DataError(f"{where}: class {name!r} has no training images")
    if class_names is None:
        class_names = [str(label) for label in range(num_classes)]
    if num_classes < 2:
        raise DataError(f"{where}: one class only ({class_names[0]!r}): a classifier needs two or more")
    return tuple(class_names)
