"""Tests for hpo.training.data on data sets other than CIFAR-10: any class names, any image size,
grayscale, the plain class-folder tree, Keras' data sets by name, and the content digest that
names what a data set is, whatever it was read from."""

from __future__ import annotations

import logging
import pickle
import sys
import tarfile
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ok, run_hpo, study_body, write_study
from hpo.errors import DataError
from hpo.training.data import KERAS_SOURCES, Dataset, load_dataset
from hpo.training.decode import CIFAR100_CLASS_NAMES

Arrays = dict[str, np.ndarray]
FRUITS = ("apple", "pear", "plum")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's HPO_DATA or writes to ~/.cache/hpo."""
    monkeypatch.delenv("HPO_DATA", raising=False)
    monkeypatch.setenv("HPO_CACHE", str(tmp_path / "default-cache"))


def _arrays(classes: int, shape: tuple[int, ...], train: int = 4, test: int = 2, seed: int = 1) -> Arrays:
    """Random images (N, *shape), grouped by class in label order, as a folder reads back."""
    rng = np.random.default_rng(seed)
    out: Arrays = {}
    for split, per_class in (("train", train), ("test", test)):
        out[f"x_{split}"] = rng.integers(0, 256, size=(per_class * classes, *shape), dtype=np.uint8)
        out[f"y_{split}"] = np.repeat(np.arange(classes), per_class).astype(np.int64)
    return out


def _shuffled(arrays: Arrays, seed: int = 0) -> Arrays:
    """What load_dataset promises: train, then test, permuted by default_rng(seed)."""
    rng = np.random.default_rng(seed)
    train, test = rng.permutation(len(arrays["y_train"])), rng.permutation(len(arrays["y_test"]))
    return {k: v[train if k.endswith("train") else test] for k, v in arrays.items()}


def _assert_holds(data: Dataset, arrays: Arrays, seed: int = 0) -> None:
    for name, want in _shuffled(arrays, seed).items():
        if want.ndim == 3:  # (N, H, W) grayscale: the data set has its channel axis
            want = want[..., np.newaxis]
        np.testing.assert_array_equal(getattr(data, name), want, err_msg=name)


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _write_split_tree(root: Path, arrays: Arrays, names: tuple[str, ...]) -> Path:
    """``train/<names[label]>/NNNN.png`` + ``test/...``."""
    for split in ("train", "test"):
        for i, (x, y) in enumerate(zip(arrays[f"x_{split}"], arrays[f"y_{split}"], strict=True)):
            _save(x, root / split / names[y] / f"{i:04d}.png")
    return root


def _write_tar(folder: Path, path: Path, top: str | None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for child in sorted(folder.iterdir(), reverse=True):  # order must not matter
            tar.add(child, arcname=f"{top}/{child.name}" if top else child.name)
    return path


def _load(source: Path | str, tmp_path: Path, subset: int | None = None, seed: int = 0) -> Dataset:
    return load_dataset(source, cache_dir=tmp_path / "cache", subset=subset, seed=seed)


# --- .npz --------------------------------------------------------------------------------------


def test_grayscale_npz_with_class_names(tmp_path: Path) -> None:
    names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    arrays = _arrays(10, (8, 8))  # (N, 8, 8): no channel axis, as MNIST comes
    np.savez(tmp_path / "digits.npz", **arrays, class_names=np.array(names))
    data = _load(tmp_path / "digits.npz", tmp_path)
    assert data.input_shape == (8, 8, 1) and data.x_train.shape == (40, 8, 8, 1)
    assert data.class_names == names and data.num_classes == 10
    _assert_holds(data, arrays)


def test_npz_without_class_names_names_the_classes_by_number(tmp_path: Path) -> None:
    arrays = _arrays(4, (6, 5, 3))
    arrays["y_train"] = arrays["y_train"][:, np.newaxis]  # (N, 1), as keras gives labels
    np.savez(tmp_path / "four.npz", **arrays)
    data = _load(tmp_path / "four.npz", tmp_path)
    assert data.class_names == ("0", "1", "2", "3") and data.input_shape == (6, 5, 3)
    _assert_holds(data, {**arrays, "y_train": arrays["y_train"][:, 0]})


# --- image folders -----------------------------------------------------------------------------


def test_image_folder_with_any_class_names_as_a_folder_a_tar_and_an_npz(tmp_path: Path) -> None:
    arrays = _arrays(3, (20, 20, 3))
    folder = _write_split_tree(tmp_path / "fruit", arrays, FRUITS)
    data = _load(folder, tmp_path)
    assert data.class_names == FRUITS and data.input_shape == (20, 20, 3) and data.num_classes == 3
    _assert_holds(data, arrays)

    archive = _load(_write_tar(folder, tmp_path / "fruit.tar.gz", top="fruit"), tmp_path)
    np.savez(tmp_path / "fruit.npz", **arrays, class_names=np.array(FRUITS))
    npz = _load(tmp_path / "fruit.npz", tmp_path)
    assert archive.content == npz.content == data.content
    assert archive.fingerprint == npz.fingerprint == data.fingerprint == f"{data.content}/subset=None/seed=0"
    _assert_holds(archive, arrays)


def test_class_folders_are_labelled_in_sorted_order(tmp_path: Path) -> None:
    written = ("b", "B", "a10", "a9")  # label i is written to the folder written[i]
    arrays = _arrays(4, (5, 5, 3), train=2, test=1)
    data = _load(_write_split_tree(tmp_path / "letters", arrays, written), tmp_path)
    assert data.class_names == ("B", "a10", "a9", "b")
    folder_of = {x.tobytes(): written[y] for x, y in zip(arrays["x_train"], arrays["y_train"], strict=True)}
    assert all(folder_of[x.tobytes()] == data.class_names[y] for x, y in zip(data.x_train, data.y_train, strict=True))


def test_plain_class_folders_put_every_5th_file_of_a_class_in_the_test_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images = {name: rng.integers(0, 256, size=(11, 9, 7, 3), dtype=np.uint8) for name in FRUITS}
    root = tmp_path / "fruit"
    for name, pixels in images.items():
        for i, image in enumerate(pixels):
            _save(image, root / name / f"{i:04d}.png")
    (root / "README.txt").write_text("not an image: beside the class folders, it is not read")
    (root / "plum" / ".DS_Store").write_bytes(b"\0hidden")
    test = [4, 9]  # of 0..10, sorted by name
    train = [i for i in range(11) if i not in test]
    expected = {
        "x_train": np.concatenate([images[name][train] for name in FRUITS]),
        "y_train": np.repeat(np.arange(3), len(train)),
        "x_test": np.concatenate([images[name][test] for name in FRUITS]),
        "y_test": np.repeat(np.arange(3), len(test)),
    }
    data = _load(root, tmp_path, seed=2)
    assert data.class_names == FRUITS and data.input_shape == (9, 7, 3)
    _assert_holds(data, expected, seed=2)
    (root / "README.txt").unlink()
    archive = _load(_write_tar(root, tmp_path / "fruit.tgz", top="fruit"), tmp_path, seed=2)
    assert archive.content == data.content


def test_grayscale_image_folder_has_one_channel(tmp_path: Path) -> None:
    arrays = _arrays(3, (10, 12))  # 12 wide, 10 high: a transposed image would show
    data = _load(_write_split_tree(tmp_path / "grey", arrays, FRUITS), tmp_path)
    assert data.input_shape == (10, 12, 1)
    _assert_holds(data, arrays)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda a: a["x_train"].__setitem__((5, 3, 4, 1), a["x_train"][5, 3, 4, 1] ^ 1), "one pixel"),
        (lambda a: a["y_test"].__setitem__(0, 1), "one label"),
        (lambda a: a.__setitem__("x_test", a["x_test"][::-1].copy()), "the test images' order"),
    ],
)
def test_any_change_to_the_images_or_labels_changes_the_content_digest(
    change: Callable[[Arrays], None], what: str, tmp_path: Path
) -> None:
    arrays = _arrays(3, (20, 20, 3))
    before = _load(_write_split_tree(tmp_path / "before", arrays, FRUITS), tmp_path)
    change(arrays)
    np.savez(tmp_path / "after.npz", **arrays, class_names=np.array(FRUITS))
    after = _load(tmp_path / "after.npz", tmp_path)
    assert after.content != before.content, what
    assert after.fingerprint != before.fingerprint


def test_other_class_names_are_other_content(tmp_path: Path) -> None:
    arrays = _arrays(3, (4, 4, 3))
    np.savez(tmp_path / "a.npz", **arrays, class_names=np.array(FRUITS))
    np.savez(tmp_path / "b.npz", **arrays, class_names=np.array(("apple", "pear", "quince")))
    assert _load(tmp_path / "a.npz", tmp_path).content != _load(tmp_path / "b.npz", tmp_path).content


def test_fingerprint_names_the_selection(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", **_arrays(3, (4, 4, 3), train=10, test=5))
    data = _load(tmp_path / "a.npz", tmp_path, subset=12, seed=3)
    assert (data.subset, data.seed) == (12, 3)
    assert data.fingerprint == f"{data.content}/subset=12/seed=3"
    assert _load(tmp_path / "a.npz", tmp_path).fingerprint != data.fingerprint


# --- subsets of any number of classes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("classes", "subset", "train_quota", "test_quota"),
    [
        (3, 10, [4, 3, 3], [1, 1, 0]),
        (13, 20, [2] * 7 + [1] * 6, [1] * 4 + [0] * 9),
        (2, 30, [15, 15], [3, 3]),
    ],
)
def test_subset_takes_the_same_number_of_each_class(
    classes: int, subset: int, train_quota: list[int], test_quota: list[int], tmp_path: Path
) -> None:
    np.savez(tmp_path / "a.npz", **_arrays(classes, (4, 4, 3), train=20, test=10))
    data = _load(tmp_path / "a.npz", tmp_path, subset=subset, seed=1)
    assert np.bincount(data.y_train, minlength=classes).tolist() == train_quota
    assert np.bincount(data.y_test, minlength=classes).tolist() == test_quota


def test_a_class_with_too_few_images_gives_what_it_has(tmp_path: Path) -> None:
    arrays = _arrays(3, (4, 4, 3), train=10, test=3)
    keep = arrays["y_train"] != 0
    keep[0] = True  # one image of class 0
    arrays["x_train"], arrays["y_train"] = arrays["x_train"][keep], arrays["y_train"][keep]
    np.savez(tmp_path / "a.npz", **arrays)
    data = _load(tmp_path / "a.npz", tmp_path, subset=12)
    assert np.bincount(data.y_train).tolist() == [1, 4, 4]


# --- refusals ----------------------------------------------------------------------------------


def _empty_plain_class(d: Path) -> Path:
    for name in ("apple", "pear"):
        for i in range(5):
            _save(np.zeros((4, 4, 3), np.uint8), d / "fruit" / name / f"{i}.png")
    (d / "fruit" / "plum").mkdir()
    return d / "fruit"


def _split_tree_with(extra: str, image: Image.Image) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        root = _write_split_tree(d / "fruit", _arrays(3, (20, 20, 3), train=1, test=1), FRUITS)
        image.save(root / extra)
        return root

    return build


def _one_class(d: Path) -> Path:
    for i in range(5):
        _save(np.zeros((4, 4, 3), np.uint8), d / "fruit" / "apple" / f"{i}.png")
    return d / "fruit"


def _one_label_npz(d: Path) -> Path:
    arrays = _arrays(1, (4, 4))
    np.savez(d / "ones.npz", **arrays)
    return d / "ones.npz"


REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "a plain class folder without images": (_empty_plain_class, "class 'plum' has no training images"),
    "one class folder": (_one_class, "one class only ('apple'): a classifier needs two or more"),
    "an .npz of one label": (_one_label_npz, "one class only ('0'): a classifier needs two or more"),
    "mixed sizes": (
        _split_tree_with("train/pear/0003.png", Image.new("RGB", (28, 28))),
        "train/pear/0003.png: image is RGB 28x28, the others are RGB 20x20",
    ),
    "grayscale among colour": (
        _split_tree_with("test/plum/0009.png", Image.new("L", (20, 20))),
        "test/plum/0009.png: image is L 20x20, the others are RGB 20x20",
    ),
    "RGBA": (
        _split_tree_with("train/apple/0009.png", Image.new("RGBA", (20, 20))),
        "train/apple/0009.png: image is RGBA; convert it to RGB or L (grayscale)",
    ),
    "16-bit grayscale": (
        _split_tree_with("train/apple/0009.png", Image.new("I;16", (20, 20))),
        "train/apple/0009.png: image is I;16; convert it to RGB or L (grayscale)",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refusals_are_one_line_naming_the_file_and_the_problem(case: str, tmp_path: Path) -> None:
    build, problem = REFUSED[case]
    source = build(tmp_path)
    with pytest.raises(DataError) as info:
        _load(source, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{source.resolve()}: ") and problem in message and "\n" not in message


# --- CIFAR-100's official archive --------------------------------------------------------------


def _write_cifar100(root: Path, arrays: Arrays, names: tuple[str, ...] | None) -> Path:
    """A fake official ``cifar-100-python`` folder: ``train`` and ``test`` pickled as the real
    ones are (bytes keys, CHW rows, fine and coarse labels), and ``meta`` naming the classes."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        (folder / split).write_bytes(pickle.dumps({
            b"filenames": [f"{i}.png".encode() for i in range(len(y))], b"batch_label": split.encode(),
            b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(),
            b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),
        }, protocol=2))
    if names is not None:
        (folder / "meta").write_bytes(pickle.dumps({
            b"fine_label_names": [name.encode() for name in names],
            b"coarse_label_names": [f"group-{i}".encode() for i in range(20)],
        }, protocol=2))
    return folder


def _cifar100_with(name: str, content: bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        folder = _write_cifar100(d, _arrays(100, (32, 32, 3), train=1, test=1), CIFAR100_CLASS_NAMES)
        (folder / name).write_bytes(content)
        return folder

    return build


@pytest.mark.parametrize(("build", "problem"), [
    (_cifar100_with("train", b"garbage"), "corrupt CIFAR-100 file 'train'"),
    (_cifar100_with("test", pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)})),
     "corrupt CIFAR-100 file 'test' (no b'fine_labels' entry)"),
    (_cifar100_with("test", pickle.dumps([1, 2])), "corrupt CIFAR-100 file 'test' (a list, not a dict)"),
    (_cifar100_with("meta", pickle.dumps({b"coarse_label_names": []})), "no list of fine_label_names"),
    (_cifar100_with("meta", pickle.dumps({b"fine_label_names": [b"a", b"b"]})), "out of range 0..1"),
], ids=["garbage train", "no fine labels", "not a dict", "meta without names", "meta of two names"])
def test_a_damaged_cifar100_archive_is_one_line(build: Callable[[Path], Path], problem: str, tmp_path: Path) -> None:
    source = build(tmp_path)
    with pytest.raises(DataError) as info:
        _load(source, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{source.resolve()}: ") and problem in message and "\n" not in message


def test_cifar100_official_archive_as_a_folder_and_a_tar_gz(tmp_path: Path) -> None:
    arrays = _arrays(100, (32, 32, 3), train=2, test=1)
    names = tuple(f"kind-{i:02d}" for i in range(100))
    folder = _write_cifar100(tmp_path / "src", arrays, names)
    archive = _write_tar(folder, tmp_path / "cifar-100-python.tar.gz", top="cifar-100-python")
    for source in (folder, archive):
        data = _load(source, tmp_path)
        _assert_holds(data, arrays)
        assert data.class_names == names  # the fine label names, from meta
    assert _load(folder, tmp_path).content == _load(archive, tmp_path).content


def test_cifar100_without_meta_has_the_official_class_names(tmp_path: Path) -> None:
    folder = _write_cifar100(tmp_path, _arrays(100, (32, 32, 3), train=1, test=1), names=None)
    assert _load(folder, tmp_path).class_names == CIFAR100_CLASS_NAMES


def test_a_study_of_cifar100_takes_the_official_archive_as_its_local_copy(tmp_path: Path) -> None:
    archive = _write_tar(_write_cifar100(tmp_path / "src", _arrays(100, (32, 32, 3), train=2, test=1),
                                         CIFAR100_CLASS_NAMES),
                         tmp_path / "cifar-100-python.tar.gz", top="cifar-100-python")
    study = write_study(tmp_path, "hundred", study_body(data={"source": "cifar100"}))
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("create", str(study), "--data", str(archive), storage=storage))
    status = run_hpo("status", "hundred", storage=storage)
    ok(status)
    assert "cifar100" in status.stdout and "100 classes" in status.stdout


# --- keras.datasets by name --------------------------------------------------------------------


def _fake_keras(monkeypatch: pytest.MonkeyPatch, **loaders: Callable[[], object]) -> None:
    fake = types.ModuleType("keras")
    fake.datasets = types.SimpleNamespace(
        **{name: types.SimpleNamespace(load_data=load) for name, load in loaders.items()}
    )
    monkeypatch.setitem(sys.modules, "keras", fake)


def _keras_like(classes: int, shape: tuple[int, ...]) -> Callable[[], object]:
    arrays = _arrays(classes, shape, train=2, test=1)
    return lambda: ((arrays["x_train"], arrays["y_train"].astype(np.uint8)),
                    (arrays["x_test"], arrays["y_test"].astype(np.uint8)))


def test_keras_data_sets_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_keras(monkeypatch, mnist=_keras_like(10, (28, 28)), fashion_mnist=_keras_like(10, (28, 28)),
                cifar100=_keras_like(100, (32, 32, 3)))
    mnist = _load("mnist", tmp_path)
    assert mnist.source == "keras.datasets.mnist" and mnist.input_shape == (28, 28, 1)
    assert mnist.class_names == tuple("0123456789")
    fashion = _load("fashion_mnist", tmp_path)
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    assert fashion.content != mnist.content  # the same arrays, other class names
    cifar100 = _load("cifar100", tmp_path)
    assert cifar100.num_classes == 100 and cifar100.input_shape == (32, 32, 3)
    assert cifar100.class_names[:3] == ("apple", "aquarium_fish", "baby") and cifar100.class_names[-1] == "worm"
    assert list(cifar100.class_names) == sorted(cifar100.class_names)  # the fine labels are alphabetical
    assert sorted(p.name for p in (tmp_path / "cache" / "data-v2").iterdir() if p.is_dir()) == [
        "keras-cifar100", "keras-fashion_mnist", "keras-mnist"
    ]


@pytest.mark.parametrize("name", KERAS_SOURCES)
def test_a_keras_data_set_that_cannot_download_says_to_pass_a_copy(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def offline() -> object:
        raise Exception(f"URL fetch failure on https://example.org/{name}: [Errno -2] Name or service not known")

    _fake_keras(monkeypatch, **{name: offline})
    with pytest.raises(DataError) as info:
        _load(name, tmp_path)
    message = str(info.value)
    assert message.startswith(f"keras.datasets.{name}: cannot load it (URL fetch failure")
    assert "pass a local copy with --data or HPO_DATA" in message and "\n" not in message


def test_hpo_data_may_name_a_keras_data_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_keras(monkeypatch, mnist=_keras_like(10, (28, 28)))
    monkeypatch.setenv("HPO_DATA", "mnist")
    assert load_dataset(cache_dir=tmp_path / "cache").source == "keras.datasets.mnist"


def test_a_path_wins_over_a_keras_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_keras(monkeypatch)  # no data sets: a keras load would fail
    folder = _write_split_tree(tmp_path / "mnist", _arrays(3, (4, 4)), FRUITS)
    monkeypatch.chdir(tmp_path)
    assert _load("mnist", tmp_path).source == str(folder)


def test_an_unknown_name_is_neither_a_path_nor_a_keras_data_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"cifar-10: no such file or directory \(nor one of keras' data sets: "
                                        r"cifar10, cifar100, mnist, fashion_mnist\)$"):
        _load("cifar-10", tmp_path)


# --- the cache ---------------------------------------------------------------------------------


def _decodes(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage().startswith("decoding ") for r in caplog.records if r.name == "hpo.training.data")


@pytest.mark.parametrize("damage", ["missing", "garbage", "a list", "no content"])
def test_an_entry_without_a_readable_meta_json_is_decoded_again(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _write_split_tree(tmp_path / "fruit", _arrays(3, (6, 6, 3)), FRUITS)
    first = _load(folder, tmp_path)
    [meta] = (tmp_path / "cache" / "data-v2").glob("*/meta.json")
    if damage == "missing":  # as an entry written before meta.json existed
        meta.unlink()
    else:
        meta.write_text({"garbage": "{not json", "a list": "[]", "no content": '{"class_names": []}'}[damage])
    with caplog.at_level(logging.INFO, logger="hpo.training.data"):
        again = _load(folder, tmp_path)
        cached = _load(folder, tmp_path)
    assert _decodes(caplog) == 1
    assert again.content == cached.content == first.content
    assert cached.class_names == FRUITS
