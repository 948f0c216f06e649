"""Image-folder data sets: recognising the layout of a tree of image files, and decoding it.

Two layouts, as a folder or inside a tar, each allowed one leading top folder:

- ``train/<class>/*`` + ``test/<class>/*``: the split is the user's; train/ and test/ must name
  the same classes.
- ``<class>/*`` alone: a fixed split is made, the same everywhere. Within each class the files
  are sorted by name and every 5th one (index % 5 == 4: the 5th, the 10th, ...) is a test image,
  the rest are training images; about 20% of each class is test.

The classes are the class folders' names in sorted (``str``) order, and an image's label is the
index of its folder's name: CIFAR-10's folder names sorted are its label order. Files in deeper
folders are ignored. Every image must have the size and mode of the first one (train before test,
then by class, then by file name): mode RGB gives (H, W, 3) pixels, L (grayscale) (H, W, 1).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from hpo.errors import DataError
from hpo.training import limits

Read = Callable[[], bytes]
Files = dict[tuple[str, ...], Read]  # a file's path parts, relative to the tree's root
Item = tuple[int, int, str, Read]  # split (0 train, 1 test), label, member name, read
SPLITS = ("train", "test")
CHANNELS = {"L": 1, "RGB": 3}


def decode_tree(
    path: Path, files: Files, folders: set[tuple[str, ...]]
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(class_names, x_train, y_train, x_test, y_test)`` of the images in ``files``.

    ``folders`` are the tree's folders, so that an empty class folder counts as a class.
    """
    split_tree = {parts: read for parts, read in files.items() if len(parts) in (3, 4) and parts[-3] in SPLITS}
    if split_tree:
        class_names, items = _split_layout(path, split_tree, folders)
    else:
        class_names, items = _class_layout(path, files, folders)
    x, split, y = _decode_images(path, items)
    train = split == 0
    return class_names, x[train], y[train], x[~train], y[~train]


def _split_layout(path: Path, files: Files, folders: set[tuple[str, ...]]) -> tuple[tuple[str, ...], list[Item]]:
    tops = sorted({parts[:-3] for parts in files})
    if len(tops) > 1:
        first, second = ("/".join(top) or "the top" for top in tops[:2])
        raise DataError(f"{path}: train/ and test/ folders both in {first!r} and in {second!r}; expected one tree")
    top = tops[0]
    classes: dict[str, set[str]] = {split: set() for split in SPLITS}
    for parts in folders:
        if len(parts) == len(top) + 2 and parts[: len(top)] == top and parts[-2] in SPLITS:
            classes[parts[-2]].add(parts[-1])
    for parts in files:
        classes[parts[-3]].add(parts[-2])
    train, test = classes["train"], classes["test"]
    if train and test and train != test:  # one side missing is "the ... set is empty", later
        only = [f"only in {split}/: {', '.join(map(repr, sorted(names)))}"
                for split, names in (("train", train - test), ("test", test - train)) if names]
        raise DataError(f"{path}: train/ and test/ name different classes ({'; '.join(only)})")
    class_names = tuple(sorted(train | test))
    label = {name: i for i, name in enumerate(class_names)}
    items = [(SPLITS.index(parts[-3]), label[parts[-2]], "/".join(parts), read) for parts, read in files.items()]
    return class_names, items


def _class_layout(path: Path, files: Files, folders: set[tuple[str, ...]]) -> tuple[tuple[str, ...], list[Item]]:
    firsts = {parts[0] for parts in files}
    top = tuple(firsts) if len(firsts) == 1 and any(len(parts) >= 3 for parts in files) else ()
    by_class: dict[str, list[tuple[str, Read]]] = {}
    for parts in folders:
        if len(parts) == len(top) + 1 and parts[: len(top)] == top:
            by_class.setdefault(parts[-1], [])
    for parts, read in files.items():
        if len(parts) == len(top) + 2:
            by_class.setdefault(parts[-2], []).append(("/".join(parts), read))
    if not any(by_class.values()):
        raise DataError(
            f"{path}: unrecognised data format (no cifar-10-batches-py/data_batch_*, no "
            "train/<class>/ + test/<class>/ images and no <class>/ folders of images)"
        )
    class_names = tuple(sorted(by_class))
    items: list[Item] = []
    for label, name in enumerate(class_names):
        members = sorted(by_class[name], key=lambda member: member[0])
        items += [(int(i % 5 == 4), label, member, read) for i, (member, read) in enumerate(members)]
    return class_names, items


def _decode_images(path: Path, items: list[Item]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, splits and labels of ``items``, sorted: independent of the tar's order."""
    items.sort(key=lambda item: item[:3])  # split, class, file name
    budget = limits.Budget(str(path))
    first = _pixels(path, *items[0][2:], budget.bound)
    budget.take(len(items) * first.nbytes, f"{len(items)} images of {_describe(first)}")
    x = np.empty((len(items), *first.shape), dtype=np.uint8)
    x[0] = first
    for i, (_, _, name, read) in enumerate(items[1:], start=1):
        pixels = _pixels(path, name, read, budget.bound)
        if pixels.shape != first.shape:
            raise DataError(f"{path}: {name}: image is {_describe(pixels)}, the others are {_describe(first)}")
        x[i] = pixels
    split = np.array([item[0] for item in items])
    y = np.array([item[1] for item in items], dtype=np.int64)
    return x, split, y


def _pixels(path: Path, name: str, read: Read, bound: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(read())) as image:
            width, height = image.size  # from its header: checked before its pixels are decoded
            claimed = width * height * len(image.getbands())
            if claimed > bound:
                raise DataError(f"{path}: {name}: a {width}x{height} image claims {limits.human(claimed)}, more than "
                                f"hpo reads into memory ({limits.human(bound)}: {limits.ENV})")
            image.load()
            mode = image.mode
            pixels = np.asarray(image) if mode in CHANNELS else None
    except DataError:
        raise
    except Exception as e:  # Pillow raises many types for bad bytes
        raise DataError(f"{path}: {name}: undecodable image ({type(e).__name__}: {e})") from e
    if pixels is None:
        raise DataError(f"{path}: {name}: image is {mode}; convert it to RGB or L (grayscale)")
    return pixels.reshape(*pixels.shape[:2], CHANNELS[mode])


def _describe(pixels: np.ndarray) -> str:
    height, width, channels = pixels.shape
    return f"{'RGB' if channels == 3 else 'L'} {width}x{height}"
