"""Tests for hpo.training.data: every source format, bad inputs, shuffling, subsets and the decode cache.

Data sets other than CIFAR-10 (any class names, sizes, grayscale, keras names) and the content
digest are tested in test_data_formats.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpo.training.data import CLASS_NAMES, Dataset, load_dataset, validation_split
from hpo.errors import DataError

from conftest import DEFAULT_DATA, missing

REPO = Path(__file__).resolve().parents[1]
LAYOUT = "data-v2"  # hpo.training.data._CACHE_LAYOUT
Arrays = dict[str, np.ndarray]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's HPO_DATA or writes to ~/.cache/hpo."""
    monkeypatch.delenv("HPO_DATA", raising=False)
    monkeypatch.setenv("HPO_CACHE", str(tmp_path / "default-cache"))


def _arrays(per_class_train: int = 4, per_class_test: int = 2, seed: int = 1) -> Arrays:
    """Random images grouped by class, as the archives store them."""
    rng = np.random.default_rng(seed)
    out: Arrays = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        n = per_class * len(CLASS_NAMES)
        out[f"x_{split}"] = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        out[f"y_{split}"] = np.repeat(np.arange(len(CLASS_NAMES)), per_class).astype(np.int64)
    return out


def _write_npz(path: Path, arrays: Arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _write_image_folder(root: Path, arrays: Arrays, ext: str = "png", names: tuple[str, ...] = CLASS_NAMES) -> Path:
    """``train/<name>/NNNN.png`` + ``test/...``: label i goes to the folder ``names[i]``."""
    for split in ("train", "test"):
        for i, (x, y) in enumerate(zip(arrays[f"x_{split}"], arrays[f"y_{split}"], strict=True)):
            folder = root / split / names[y]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.squeeze(-1) if x.shape[-1] == 1 else x).save(folder / f"{i:04d}.{ext}")
    return root


def _write_batches(root: Path, arrays: Arrays) -> Path:
    """A fake official ``cifar-10-batches-py`` folder: pickled CHW rows, five train batches."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    chw = {s: arrays[f"x_{s}"].transpose(0, 3, 1, 2).reshape(-1, 3072) for s in ("train", "test")}
    parts = np.array_split(np.arange(len(chw["train"])), 5)
    batches = {f"data_batch_{i + 1}": ("train", idx) for i, idx in enumerate(parts)}
    batches["test_batch"] = ("test", np.arange(len(chw["test"])))
    for name, (split, idx) in batches.items():
        batch = {b"data": chw[split][idx], b"labels": arrays[f"y_{split}"][idx].tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": list(CLASS_NAMES)}))
    return folder


def _write_tar(folder: Path, path: Path, *, top: str | None) -> Path:
    mode = "w" if path.suffix == ".tar" else "w:gz"
    with tarfile.open(path, mode) as tar:
        for child in sorted(folder.iterdir(), reverse=True):  # order must not matter
            tar.add(child, arcname=f"{top}/{child.name}" if top else child.name)
    return path


def _shuffled(arrays: Arrays, seed: int = 0) -> Arrays:
    """What load_dataset promises: train, then test, permuted by default_rng(seed)."""
    rng = np.random.default_rng(seed)
    train, test = rng.permutation(len(arrays["y_train"])), rng.permutation(len(arrays["y_test"]))
    return {k: v[train if k.endswith("train") else test] for k, v in arrays.items()}


FORMATS: dict[str, Callable[[Path, Arrays], Path]] = {
    "npz": lambda d, a: _write_npz(d / "cifar.npz", {**a, "class_names": np.array(CLASS_NAMES)}),
    "image folder": lambda d, a: _write_image_folder(d / "images", a),
    "image tar.gz with top folder": lambda d, a: _write_tar(
        _write_image_folder(d / "images", a), d / "images.tar.gz", top="cifar10"
    ),
    "image tar without top folder": lambda d, a: _write_tar(
        _write_image_folder(d / "images", a), d / "images.tar", top=None
    ),
    "official batches folder": lambda d, a: _write_batches(d, a),
    "official tar.gz": lambda d, a: _write_tar(
        _write_batches(d / "src", a), d / "cifar-10-python.tar.gz", top="cifar-10-batches-py"
    ),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_shuffled_arrays(fmt: str, tmp_path: Path) -> None:
    arrays = _arrays()
    source = FORMATS[fmt](tmp_path, arrays)
    data = load_dataset(source, cache_dir=tmp_path / "cache")
    expected = _shuffled(arrays, seed=0)
    assert data.x_train.shape == (40, 32, 32, 3) and data.x_test.shape == (20, 32, 32, 3)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    for name, want in expected.items():
        np.testing.assert_array_equal(getattr(data, name), want, err_msg=name)
    assert data.source == str(source.resolve())
    assert data.num_classes == 10 and data.input_shape == (32, 32, 3)
    assert data.class_names == CLASS_NAMES


def test_every_format_of_the_same_images_has_the_same_content_digest(tmp_path: Path) -> None:
    arrays = _arrays()
    contents = {fmt: load_dataset(build(tmp_path / fmt, arrays), cache_dir=tmp_path / "cache").content
                for fmt, build in FORMATS.items() if (tmp_path / fmt).mkdir() is None}
    assert len(set(contents.values())) == 1, contents
    assert len(_entries(tmp_path / "cache")) == len(FORMATS)  # six sources, six cache entries


def test_jpeg_folder_decodes_close_to_the_original(tmp_path: Path) -> None:
    arrays = _arrays(per_class_train=1, per_class_test=1)
    for split in ("train", "test"):  # flat colours survive JPEG almost exactly
        colours = np.linspace(0, 255, 30, dtype=np.uint8).reshape(10, 1, 1, 3)
        arrays[f"x_{split}"] = np.broadcast_to(colours, (10, 32, 32, 3)).copy()
    data = load_dataset(_write_image_folder(tmp_path / "jpg", arrays, "jpg"), seed=3)
    expected = _shuffled(arrays, seed=3)
    np.testing.assert_array_equal(data.y_train, expected["y_train"])
    error = np.abs(data.x_train.astype(int) - expected["x_train"].astype(int))
    assert error.max() <= 3


def test_labels_of_shape_n_by_1_are_flattened(tmp_path: Path) -> None:
    arrays = _arrays()
    column = {k: v[:, None] if k.startswith("y") else v for k, v in arrays.items()}
    data = load_dataset(_write_npz(tmp_path / "c.npz", column))
    assert data.y_train.shape == (40,) and data.y_test.shape == (20,)
    np.testing.assert_array_equal(data.y_train, _shuffled(arrays)["y_train"])


def test_repr_is_short(tmp_path: Path) -> None:
    data = load_dataset(_write_npz(tmp_path / "c.npz", _arrays()))
    assert repr(data) == f"Dataset(source={str(tmp_path / 'c.npz')!r})"


# --- bad inputs --------------------------------------------------------------------------------


def _npz_with(**changes: np.ndarray) -> Callable[[Path], Path]:
    return lambda d: _write_npz(d / "bad.npz", {**_arrays(), **changes})


def _folder_with_image(name: str, image: Image.Image | bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        root = _write_image_folder(d / "images", _arrays(1, 1))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(image, bytes):
            (root / name).write_bytes(image)
        else:
            image.save(root / name)
        return root

    return build


def _batches_with(name: str, content: bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        folder = _write_batches(d, _arrays())
        (folder / name).write_bytes(content)
        return folder

    return build


def _batch(data: np.ndarray, labels: list[int]) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels})


def _truncated_tar_gz(d: Path) -> Path:
    path = _write_tar(_write_image_folder(d / "images", _arrays()), d / "t.tar.gz", top=None)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _only_train(d: Path) -> Path:
    root = _write_image_folder(d / "images", _arrays(1, 1))
    for f in (root / "test").rglob("*.png"):
        f.unlink()
    return root


def _unknown_class(d: Path) -> Path:
    root = _write_image_folder(d / "images", _arrays(1, 1))
    (root / "train" / "airplane").rename(root / "train" / "unicorn")
    return root


def _empty_class(d: Path) -> Path:
    root = _write_image_folder(d / "images", _arrays(1, 1))
    (root / "train" / "deer" / "0004.png").unlink()  # the folder stays, empty
    return root


def _npy_named_npz(d: Path) -> Path:
    with (d / "x.npz").open("wb") as f:
        np.save(f, np.zeros(3))
    return d / "x.npz"


class _Evil:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.mkdir, ("/tmp/hpo-test-pwned",))


def _text(d: Path, name: str, content: str = "hello") -> Path:
    (d / name).parent.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(content)
    return d / name


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing file": (lambda d: d / "nope.tar.gz", "no such file or directory"),
    "unknown file type": (lambda d: _text(d, "data.txt"), "unrecognised data format"),
    "folder of nothing": (lambda d: _text(d, "f/readme.txt").parent, "unrecognised data format"),
    "garbage tar.gz": (lambda d: _text(d, "x.tar.gz", "garbage"), "corrupt archive"),
    "truncated tar.gz": (_truncated_tar_gz, "corrupt archive"),
    "garbage npz": (lambda d: _text(d, "x.npz", "garbage"), "corrupt .npz"),
    "npz without x_test": (
        lambda d: _write_npz(d / "bad.npz", {k: v for k, v in _arrays().items() if k != "x_test"}),
        "missing array(s) x_test",
    ),
    "npz features of other shapes in train and test": (
        _npz_with(x_train=np.zeros((40, 5), np.float32), x_test=np.zeros((20, 6), np.float32)),
        "x_train and x_test differ in shape per example: (5,) and (6,)",
    ),
    "npz images of 4 channels": (
        _npz_with(x_test=np.zeros((20, 32, 32, 4), np.uint8)),
        "x_test has shape (20, 32, 32, 4), expected (N, H, W), (N, H, W, 1) or (N, H, W, 3)",
    ),
    "npz images of 0 pixels": (
        _npz_with(x_test=np.zeros((20, 0, 32, 3), np.uint8)),
        "x_test has shape (20, 0, 32, 3)",
    ),
    "npz grayscale train, colour test": (
        _npz_with(x_train=np.zeros((40, 32, 32), np.uint8)),
        "train and test images differ in shape (H, W, C): (32, 32, 1) and (32, 32, 3)",
    ),
    "npz train and test of other sizes": (
        _npz_with(x_test=np.zeros((20, 28, 28, 3), np.uint8)),
        "train and test images differ in shape (H, W, C): (32, 32, 3) and (28, 28, 3)",
    ),
    "npz float images": (
        _npz_with(x_test=np.zeros((20, 32, 32, 3), np.float64)),
        "x_test has dtype float64, expected uint8 pixels 0..255: multiply and convert with .astype('uint8')",
    ),
    "npz float labels": (
        _npz_with(y_train=np.zeros(40, np.float32)),
        "y_train has dtype float32 but y_test int64: give both the same",
    ),
    "npz length mismatch": (
        _npz_with(y_train=np.zeros(39, np.int64)),
        "40 images in x_train but 39 labels in y_train",
    ),
    "npz label 12": (
        _npz_with(y_test=np.full(20, 12), class_names=np.array(CLASS_NAMES)),
        "y_test label 12 out of range 0..9 (class_names has 10 names)",
    ),
    "npz label -1": (_npz_with(y_train=np.r_[-1, np.arange(39) % 10]), "y_train label -1 out of range 0..9"),
    "npz class without training images": (
        _npz_with(y_train=np.arange(40) % 9, class_names=np.array(CLASS_NAMES)),
        "class 'truck' has no training images",
    ),
    "npz label 12 without class_names": (_npz_with(y_test=np.full(20, 12)), "class '10' has no training images"),
    "npz duplicate class names": (
        _npz_with(class_names=np.array([*CLASS_NAMES[:9], "cat"])),
        "class_names holds 'cat' twice",
    ),
    "npz empty class name": (_npz_with(class_names=np.array([*CLASS_NAMES[:9], " "])), "class_names[9] is empty"),
    "npz class names not strings": (
        _npz_with(class_names=np.arange(10)),
        "class_names has shape (10,) and dtype int64, expected a 1-D array of strings",
    ),
    "npz class names as objects": (
        _npz_with(class_names=np.array(CLASS_NAMES, dtype=object)),
        "class_names must be an array of strings (Object arrays cannot be loaded when allow_pickle=False)",
    ),
    "npy named .npz": (_npy_named_npz, "not an .npz archive"),
    "npz empty train": (
        _npz_with(x_train=np.zeros((0, 32, 32, 3), np.uint8), y_train=np.zeros(0, np.int64)),
        "the train set is empty",
    ),
    "folder without test images": (_only_train, "the test set is empty"),
    "train and test name different classes": (
        _unknown_class,
        "train/ and test/ name different classes (only in train/: 'unicorn'; only in test/: 'airplane')",
    ),
    "empty class folder": (_empty_class, "class 'deer' has no training images"),
    "undecodable image": (
        _folder_with_image("train/cat/bad.png", b"not a png"),
        "train/cat/bad.png: undecodable image",
    ),
    "16x16 image": (
        _folder_with_image("test/dog/small.png", Image.new("RGB", (16, 16))),
        "test/dog/small.png: image is RGB 16x16, the others are RGB 32x32",
    ),
    "grayscale image among colour ones": (
        _folder_with_image("train/cat/grey.png", Image.new("L", (32, 32))),
        "train/cat/grey.png: image is L 32x32, the others are RGB 32x32",
    ),
    "RGBA image": (
        _folder_with_image("train/cat/alpha.png", Image.new("RGBA", (32, 32))),
        "train/cat/alpha.png: image is RGBA; convert it to RGB or L (grayscale)",
    ),
    "palette image": (
        _folder_with_image("test/cat/palette.png", Image.new("P", (32, 32))),
        "test/cat/palette.png: image is P; convert it to RGB or L (grayscale)",
    ),
    "two image trees": (
        _folder_with_image("copy/train/cat/0000.png", Image.new("RGB", (32, 32))),
        "train/ and test/ folders both in 'the top' and in 'copy'; expected one tree",
    ),
    "batches without test_batch": (
        lambda d: _write_batches(d, _arrays()).joinpath("test_batch").unlink() or d,
        "missing CIFAR-10 batch 'test_batch'",
    ),
    "garbage batch": (_batches_with("data_batch_3", b"garbage"), "corrupt CIFAR-10 batch"),
    "batch label 10": (
        _batches_with("test_batch", _batch(np.zeros((2, 3072), np.uint8), [0, 10])),
        "y_test label 10 out of range 0..9 (CIFAR-10 has 10 classes)",
    ),
    "batch of 3000 values": (
        _batches_with("data_batch_1", _batch(np.zeros((2, 3000), np.uint8), [0, 1])),
        "batch 'data_batch_1' has data of shape (2, 3000), expected (N, 3072)",
    ),
    "pickle that runs code": (
        _batches_with("data_batch_2", pickle.dumps(_Evil())),
        "forbidden global posix.mkdir",
    ),
}


def _cuts(tar_bytes: bytes) -> list[int]:
    """Where a cut hurts most: at a header or the end marker, where tarfile stops without a word."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        headers = [m.offset for m in tar.getmembers()]
        end = tar.offset  # where the two zero blocks that end every tar begin
    return [*headers[1:], headers[-1] + 700, end, end + tarfile.BLOCKSIZE]


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_an_archive_cut_short_is_refused_wherever_the_cut_falls(compress: bool, tmp_path: Path) -> None:
    folder = _write_image_folder(tmp_path / "images", _arrays(1, 1))
    whole = _write_tar(folder, tmp_path / "whole.tar", top=None).read_bytes()
    for cut in _cuts(whole):
        part = gzip.compress(whole[:cut]) if compress else whole[:cut]
        source = tmp_path / f"cut-{cut}.tar{'.gz' if compress else ''}"
        source.write_bytes(part)
        with pytest.raises(DataError, match="corrupt archive"):
            load_dataset(source, cache_dir=tmp_path / "cache")
    if compress:  # and a gzip stream cut short, at a few places
        packed = gzip.compress(whole)
        for fraction in (0.3, 0.5, 0.9, 0.999):
            source = tmp_path / f"short-{fraction}.tar.gz"
            source.write_bytes(packed[: int(len(packed) * fraction)])
            with pytest.raises(DataError, match="corrupt archive"):
                load_dataset(source, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_naming_the_path_and_the_problem(case: str, tmp_path: Path) -> None:
    build, problem = BAD[case]
    source = build(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(source, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(source.resolve()) in message and problem in message
    assert "\n" not in message
    assert not Path("/tmp/hpo-test-pwned").exists()


@pytest.mark.parametrize("subset", [5, 9, 41])
def test_subset_out_of_range(subset: int, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"--subset must be between 10 and 40, got {subset}$"):
        load_dataset(_write_npz(tmp_path / "c.npz", _arrays()), subset=subset)


def test_unwritable_cache_is_a_data_error(tmp_path: Path) -> None:
    blocker = _text(tmp_path, "not-a-folder")
    with pytest.raises(DataError, match="cannot create the data cache"):
        load_dataset(_write_npz(tmp_path / "c.npz", _arrays()), cache_dir=blocker)


# --- shuffling and subsets ---------------------------------------------------------------------


@pytest.fixture
def big_npz(tmp_path: Path) -> Path:
    return _write_npz(tmp_path / "big.npz", _arrays(per_class_train=100, per_class_test=50))


def test_shuffle_mixes_classes_into_the_validation_part(big_npz: Path) -> None:
    data = load_dataset(big_npz)
    _, (_, y_val) = validation_split(data.x_train, data.y_train, 0.2)
    assert set(y_val) == set(range(10))
    assert np.bincount(y_val, minlength=10).max() < 0.2 * len(y_val)


def test_same_seed_same_order_other_seed_other_order(big_npz: Path) -> None:
    a, b, c = load_dataset(big_npz, seed=7), load_dataset(big_npz, seed=7), load_dataset(big_npz)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.mark.parametrize("subset", [10, 25, 333, 1000])
def test_subset_is_stratified_shuffled_and_deterministic(subset: int, big_npz: Path) -> None:
    data = load_dataset(big_npz, subset=subset, seed=4)
    train_quota = [subset // 10 + (c < subset % 10) for c in range(10)]
    test_n = subset // 5
    test_quota = [test_n // 10 + (c < test_n % 10) for c in range(10)]
    assert np.bincount(data.y_train, minlength=10).tolist() == train_quota
    assert np.bincount(data.y_test, minlength=10).tolist() == test_quota
    assert len(data.x_train) == subset and len(data.x_test) == test_n
    if subset >= 25:
        assert not np.all(np.diff(data.y_train) >= 0)  # not grouped by class
    again = load_dataset(big_npz, subset=subset, seed=4)
    np.testing.assert_array_equal(data.x_train, again.x_train)
    np.testing.assert_array_equal(data.x_test, again.x_test)
    # The subset's images are the full set's images with those labels.
    full = np.load(big_npz)
    rows = {bytes(x): y for x, y in zip(full["x_train"], full["y_train"], strict=True)}
    assert all(rows[bytes(x)] == y for x, y in zip(data.x_train, data.y_train, strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_validation_split_of_a_small_subset_holds_every_class(seed: int, tmp_path: Path) -> None:
    """The tail of a subset is as mixed as its head (a validation split takes the tail).

    A small quota out of a large class is where this goes wrong: kept in draw order, the
    classes that fill their quota first never reach the tail.
    """
    path = _write_npz(tmp_path / "large.npz", _arrays(per_class_train=1000, per_class_test=10))
    data = load_dataset(path, subset=1000, seed=seed)
    _, (_, y_val) = validation_split(data.x_train, data.y_train, 0.2)
    counts = np.bincount(y_val, minlength=10)
    assert counts.min() >= 5, counts


# --- validation_split --------------------------------------------------------------------------


def test_validation_split_takes_the_last_fraction_like_keras() -> None:
    x, y = np.arange(10) * 10, np.arange(10)
    (x_fit, y_fit), (x_val, y_val) = validation_split(x, y, 0.25)
    assert x_fit.tolist() == list(range(0, 70, 10)) and y_fit.tolist() == list(range(7))
    assert x_val.tolist() == [70, 80, 90] and y_val.tolist() == [7, 8, 9]
    (x_fit, _), (x_val, _) = validation_split(np.zeros(50000), np.zeros(50000), 0.1)
    assert (len(x_fit), len(x_val)) == (45000, 5000)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_validation_split_rejects_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(DataError, match="between 0 and 1"):
        validation_split(np.zeros(10), np.zeros(10), fraction)


def test_validation_split_refuses_an_empty_side() -> None:
    with pytest.raises(DataError, match="leaves a side empty"):
        validation_split(np.zeros(1), np.zeros(1), 0.5)


def test_validation_split_refuses_unequal_lengths() -> None:
    with pytest.raises(DataError, match="x has 10 samples but y has 9"):
        validation_split(np.zeros(10), np.zeros(9), 0.5)


# --- cache -------------------------------------------------------------------------------------


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / LAYOUT).iterdir() if p.is_dir())


def test_second_load_reads_the_cache(tmp_path: Path) -> None:
    source = _write_image_folder(tmp_path / "images", _arrays())
    first = load_dataset(source, cache_dir=tmp_path / "cache")
    [entry] = _entries(tmp_path / "cache")
    assert entry.name.startswith("tree-")
    names = sorted(p.name for p in entry.iterdir())
    assert names == ["meta.json", "x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"]
    second = load_dataset(source, cache_dir=tmp_path / "cache")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    # Proof that the second load came from the cache, not from the images: doctor the cache.
    np.save(entry / "x_train.npy", np.zeros((40, 32, 32, 3), np.uint8))
    assert not load_dataset(source, cache_dir=tmp_path / "cache").x_train.any()


def test_a_changed_source_is_decoded_again(tmp_path: Path) -> None:
    source = _write_npz(tmp_path / "c.npz", _arrays())
    load_dataset(source, cache_dir=tmp_path / "cache")
    changed = _arrays()
    changed["x_train"][:] = 0
    _write_npz(source, changed)
    os.utime(source, ns=(0, 10**9))  # a different mtime even on coarse file systems
    data = load_dataset(source, cache_dir=tmp_path / "cache")
    assert not data.x_train.any()
    assert len(_entries(tmp_path / "cache")) == 2


def test_an_image_added_to_a_folder_is_decoded_again(tmp_path: Path) -> None:
    source = _write_image_folder(tmp_path / "images", _arrays())
    assert len(load_dataset(source, cache_dir=tmp_path / "cache").y_train) == 40
    Image.new("RGB", (32, 32)).save(source / "train" / "cat" / "extra.png")
    assert len(load_dataset(source, cache_dir=tmp_path / "cache").y_train) == 41


def test_an_image_edited_in_place_is_decoded_again_even_with_its_size_and_time_put_back(tmp_path: Path) -> None:
    source = _write_image_folder(tmp_path / "images", _arrays())
    first = load_dataset(source, cache_dir=tmp_path / "cache")
    image = sorted((source / "train" / "cat").iterdir())[0]
    before = image.stat()
    data = bytearray(image.read_bytes())
    Image.new("RGB", (32, 32), (255, 0, 0)).save(edited := tmp_path / "red.png")
    red = edited.read_bytes()
    assert len(red) <= len(data)  # a plain red PNG is smaller: pad it to the old size with trailing bytes
    image.write_bytes(red + b"\0" * (len(data) - len(red)))
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r` would
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = load_dataset(source, cache_dir=tmp_path / "cache")
    assert second.content != first.content
    assert len(_entries(tmp_path / "cache")) == 2
    assert ((second.x_train == (255, 0, 0)).all(axis=(1, 2, 3))).sum() == 1  # the red image is read


def test_cache_dir_defaults_to_hpo_cache(tmp_path: Path) -> None:
    load_dataset(_write_npz(tmp_path / "c.npz", _arrays()))
    assert len(_entries(tmp_path / "default-cache")) == 1


def _decodes(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage().startswith("decoding ") for r in caplog.records if r.name == "hpo.training.data")


def test_one_archive_reached_by_several_paths_is_decoded_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = _write_tar(_write_image_folder(tmp_path / "images", _arrays()), tmp_path / "real.tar.gz", top=None)
    symlink, hard_link, copy = tmp_path / "link.tar.gz", tmp_path / "hard.tar.gz", tmp_path / "copy.tgz"
    symlink.symlink_to(archive)
    os.link(archive, hard_link)
    shutil.copyfile(archive, copy)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="hpo.training.data"):
        loads = [load_dataset(path, cache_dir=cache) for path in (archive, symlink, hard_link, copy)]
    assert _decodes(caplog) == 1
    assert len(_entries(cache)) == 1
    for data in loads[1:]:
        np.testing.assert_array_equal(data.x_train, loads[0].x_train)


def test_one_image_folder_reached_through_a_symlink_is_decoded_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _write_image_folder(tmp_path / "images", _arrays())
    (tmp_path / "alias").symlink_to(folder, target_is_directory=True)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="hpo.training.data"):
        load_dataset(folder, cache_dir=cache)
        load_dataset(tmp_path / "alias", cache_dir=cache)
    assert _decodes(caplog) == 1
    assert len(_entries(cache)) == 1


_CHILD = """
import logging, sys, time
from pathlib import Path
import numpy as np
from hpo.training.data import load_dataset
logging.basicConfig(level=logging.INFO)
ready, go, source, cache, out = sys.argv[1:]
Path(ready).touch()  # imported and at the starting line
while not Path(go).exists():
    time.sleep(0.005)
started = time.monotonic()
data = load_dataset(source, cache_dir=cache)
np.savez(out, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
         span=np.array([started, time.monotonic()]))
"""


def test_concurrent_cold_loads_decode_once_and_agree(tmp_path: Path) -> None:
    # 600 PNGs take long enough to decode that the three processes overlap.
    source = _write_image_folder(tmp_path / "images", _arrays(50, 10))
    go, cache = tmp_path / "go", tmp_path / "cache"
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    ready = [tmp_path / f"ready-{i}" for i in range(3)]
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(ready[i]), str(go), str(source), str(cache),
                          str(tmp_path / f"{i}.npz")], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    try:
        deadline = time.monotonic() + 120  # importing numpy on a busy machine
        while not all(path.exists() for path in ready):
            for child in children:
                if child.poll() is not None:
                    pytest.fail(f"a child exited with {child.returncode} before the start: {child.communicate()[1]}")
            assert time.monotonic() < deadline, "the children did not all reach the start in 120 s"
            time.sleep(0.01)
        go.touch()
        logs = [child.communicate(timeout=60)[1] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0, 0, 0], logs
    results = [np.load(tmp_path / f"{i}.npz") for i in range(3)]
    spans = np.array([result["span"] for result in results])
    # All three were inside load_dataset at one moment: the last to start began before the
    # first to finish was done, so two of them really waited on the third's decode.
    assert spans[:, 0].max() < spans[:, 1].min(), spans
    assert sum(log.count("decoding ") for log in logs) == 1, logs
    for other in results[1:]:
        for name in ("x_train", "y_train", "x_test"):
            np.testing.assert_array_equal(results[0][name], other[name])
    assert [p.name for p in (cache / LAYOUT).iterdir() if ".tmp-" in p.name] == []
    assert len(_entries(cache)) == 1


# --- keras.datasets ----------------------------------------------------------------------------


def _fake_keras(monkeypatch: pytest.MonkeyPatch, load_data: Callable[[], object]) -> None:
    fake = types.ModuleType("keras")
    fake.datasets = types.SimpleNamespace(cifar10=types.SimpleNamespace(load_data=load_data))
    monkeypatch.setitem(sys.modules, "keras", fake)


def test_no_source_and_no_internet_says_how_to_point_at_a_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def offline() -> object:
        raise OSError("URL fetch failure on https://www.cs.toronto.edu/...\nmore detail")

    _fake_keras(monkeypatch, offline)
    with pytest.raises(DataError) as info:
        load_dataset(cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "keras.datasets.cifar10" in message and "URL fetch failure" in message
    assert "HPO_DATA" in message and "--data" in message and "\n" not in message


def test_keras_source_is_flattened_shuffled_and_cached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    arrays = _arrays()
    calls = []

    def load_data() -> object:  # keras gives labels as (N, 1) uint8
        calls.append(1)
        y_train, y_test = (arrays[k][:, None].astype(np.uint8) for k in ("y_train", "y_test"))
        return (arrays["x_train"], y_train), (arrays["x_test"], y_test)

    _fake_keras(monkeypatch, load_data)
    for _ in range(2):
        data = load_dataset(cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(data.y_train, _shuffled(arrays)["y_train"])
    assert data.source == "keras.datasets.cifar10" and data.y_train.dtype == np.int64
    assert calls == [1]
    assert (tmp_path / "cache" / LAYOUT / "keras-cifar10" / "x_train.npy").is_file()
    assert data.class_names == CLASS_NAMES


def test_hpo_data_is_the_default_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = _write_npz(tmp_path / "c.npz", _arrays())
    monkeypatch.setenv("HPO_DATA", str(source))
    assert load_dataset().source == str(source)


# --- the real archive (HPO_DATA, or the shared copy: conftest.data_path) ------------------------


@pytest.fixture(scope="module")
def real(data_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    cache = tmp_path_factory.mktemp("real-cache")
    return load_dataset(data_path, cache_dir=cache), cache  # decodes 60,000 images once


def test_real_archive_has_cifar10s_shape_and_balance(real: tuple[Dataset, Path]) -> None:
    data, _ = real
    assert data.x_train.shape == (50000, 32, 32, 3) and data.x_test.shape == (10000, 32, 32, 3)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    assert data.class_names == CLASS_NAMES and data.input_shape == (32, 32, 3)
    assert np.bincount(data.y_train).tolist() == [5000] * 10
    assert np.bincount(data.y_test).tolist() == [1000] * 10
    # Shuffled: the last 20% (keras' validation part) holds every class in fair measure.
    assert np.bincount(data.y_train[40000:], minlength=10).min() > 800


# blake2b-128 of x_train, y_train, x_test, y_test (in that order) as load_dataset(seed=0) gave
# them for the shared cifar10-jpeg.tar.gz when it read CIFAR-10 alone: reading any data set must
# not change a single pixel, label or position of it. (Pillow decodes the JPEGs: a libjpeg that
# rounds differently would change these too.)
CIFAR_ARRAYS_BEFORE = {
    None: "b510425e0ce42e2f171cc23b0cb4fd1c",
    300: "4d247eb982dfdfa5c2175f937b787951",
    5000: "6b9faaa6888f2d706b9b74369de55efe",
}
CIFAR_CONTENT = "8f84676d9c4782115489020d487632e5"  # studies store it: a new value orphans them


@pytest.mark.parametrize("subset", CIFAR_ARRAYS_BEFORE)
def test_real_archive_gives_the_arrays_it_always_gave(
    subset: int | None, real: tuple[Dataset, Path], data_path: str
) -> None:
    if Path(data_path).name != DEFAULT_DATA.name:
        missing(f"the digests are of the shared {DEFAULT_DATA.name}, not of {data_path}")
    data = load_dataset(data_path, cache_dir=real[1], subset=subset)
    digest = hashlib.blake2b(digest_size=16)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        digest.update(np.ascontiguousarray(getattr(data, name)).data)
    assert digest.hexdigest() == CIFAR_ARRAYS_BEFORE[subset]
    assert data.content == CIFAR_CONTENT
    assert data.fingerprint == f"{CIFAR_CONTENT}/subset={subset}/seed=0"


def test_real_archive_loads_from_cache_fast(real: tuple[Dataset, Path], data_path: str, caplog) -> None:
    data, cache = real
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="hpo.training.data"):
        again = load_dataset(data_path, cache_dir=cache)
    elapsed = time.perf_counter() - started
    assert "decoding" not in caplog.text
    assert elapsed < 3.0  # a re-decode takes ~15 s; the cache takes ~0.1 s
    assert np.array_equal(data.x_train, again.x_train)  # assert_array_equal takes seconds here
    assert (again.class_names, again.content) == (data.class_names, data.content)
    small = load_dataset(data_path, cache_dir=cache, subset=1000)
    assert np.bincount(small.y_train).tolist() == [100] * 10
    assert np.bincount(small.y_test).tolist() == [20] * 10


def test_real_archive_through_a_symlink_reads_the_same_cache(
    real: tuple[Dataset, Path], data_path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, cache = real
    link = tmp_path / "cifar.tar.gz"
    link.symlink_to(data_path)
    with caplog.at_level(logging.INFO, logger="hpo.training.data"):
        again = load_dataset(link, cache_dir=cache, subset=100)
    assert _decodes(caplog) == 0
    assert len(_entries(cache)) == 1
    assert again.source == str(Path(data_path).resolve())
