"""The data a study trains on: named in its file, identified when it is created, checked by every worker.

A study file's ``[data] source`` is a named data set (``cifar10``, ``cifar100``, ``mnist``,
``fashion_mnist``) or a path, relative to the study file. A named set is read from a local copy
(``--data``, else the environment's ``HPO_DATA``) where one is given, else through Keras' download.
A path is the study's own: ``--data`` and ``HPO_DATA`` do not move it (they may point at
CIFAR-10 for the report's studies in the same launch).

When a study is created it stores its data's :class:`DataIdentity`: the content's fingerprint,
the subset, the image shape, the class names and counts. Every worker compares the data it
loaded with it and refuses the study, in one line and before training anything, where they
differ: another file, another subset, other classes. So no study ranks trials trained on
different data side by side.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpo.errors import DataError

# The data sets a study may name, with what a local copy of each must hold: (H, W, C), classes.
NAMED_SOURCES: Mapping[str, tuple[tuple[int, int, int], int]] = {
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
}
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000


def check_source(source: str) -> str | None:
    """Why ``source`` cannot name a study's data, or None."""
    if not source.strip() or "\0" in source:
        return f"must be a named data set ({', '.join(NAMED_SOURCES)}) or a path relative to the study file"
    return None


def is_named(source: str) -> bool:
    return source in NAMED_SOURCES


@dataclass(frozen=True)
class DataIdentity:
    """What a study's data is: stored with the study, compared by every worker."""

    source: str              # as the study file names it: "cifar10", or "digits.npz"
    location: str            # where its creator read it: a path, or "keras.datasets.NAME"
    content: str             # fingerprint of the decoded images and labels (hpo.training.data)
    subset: int | None       # training images kept (None: all)
    seed: int                # the seed the subset was drawn with
    shape: tuple[int, ...]   # (H, W, C) of one image
    class_names: tuple[str, ...]
    train: int               # training images (before a validation split)
    test: int                # test images
    kind: str = "images"     # or "arrays" (hpo.training.data.Dataset.kind); studies before it: images

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "shape": list(self.shape), "class_names": list(self.class_names)}
        if self.kind == "images":
            del data["kind"]  # stored as before kinds were recorded
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataIdentity:
        return cls(**{**data, "shape": tuple(data["shape"]), "class_names": tuple(data["class_names"])})

    @property
    def description(self) -> str:
        size = "all" if self.subset is None else f"{self.subset:,}"
        if self.kind != "images":
            classes = f"{len(self.class_names)} classes" if self.class_names else "targets"
            return (f"{size} training examples of {self.source} (each {_shape(self.shape) or 'one value'}, "
                    f"{classes}, content {self.content[:12]})")
        height, width, channels = self.shape
        return (f"{size} training images of {self.source} ({height}x{width}x{channels}, "
                f"{len(self.class_names)} classes, content {self.content[:12]})")

    def difference(self, other: DataIdentity) -> str | None:
        """How ``other`` (a worker's data) differs from this (the study's), or None."""
        if self.subset != other.subset or self.seed != other.seed:
            return f"the study was created on {_subset(self.subset)}; this worker has {_subset(other.subset)}"
        if self.kind != other.kind:
            return f"the study's data is {self.kind}; this worker's is {other.kind}"
        if self.shape != other.shape:
            return f"the study's images are {_shape(self.shape)}; this worker's are {_shape(other.shape)}"
        if self.class_names != other.class_names:
            return (f"the study's classes are {_names(self.class_names)}; "
                    f"this worker's are {_names(other.class_names)}")
        if self.content != other.content:
            return (f"this worker's images or labels are not the study's (content {other.content[:12]}; "
                    f"the study's is {self.content[:12]}, read at {self.location})")
        return None

    @property
    def is_report_data(self) -> bool:
        """Whether this is the data the report trained on: all of CIFAR-10 (a local copy or Keras')."""
        return (self.source == "cifar10" and self.subset is None and self.shape == (32, 32, 3)
                and len(self.class_names) == 10 and (self.train, self.test) == (CIFAR10_TRAIN, CIFAR10_TEST))


def check_same(stored: DataIdentity, mine: DataIdentity, study: str) -> None:
    """Refuse data (a worker's, or another creator's) that is not what the study recorded."""
    problem = stored.difference(mine)
    if problem:
        raise DataError(f"study {study!r} trains on {stored.description}: {problem} (this one read {mine.location})")


def _subset(subset: int | None) -> str:
    return "all training images (no subset)" if subset is None else f"{subset} training images (a subset)"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _names(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{len(names)} ({shown})"


def study_folder(study_file: str | os.PathLike[str], *, follow: bool = False) -> Path:
    """Where a study file's relative paths (its data, its builder's module) start: the file's
    folder (the folder of the file a symlink names, with ``follow``), or the working directory
    for a study file that is no regular file (a pipe, ``hpo create <(generate-study)``), which has
    no folder of its own."""
    path = Path(study_file)
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError:  # gone, or unreadable: the path as given (its reader says what is wrong)
        regular = True
    if not regular:
        return Path.cwd()
    return (path.resolve() if follow else path).parent


def location(source: str, *, study_file: str | os.PathLike[str] | None, stored: DataIdentity | None,
             data: str | None) -> str:
    """Where to read a study's data from.

    A named set: ``data`` (``--data``), else ``HPO_DATA``, else the name (Keras' download). A
    path: beside the study file when a worker is given one, else where the study's creator read it.
    """
    if is_named(source):
        return data or os.environ.get("HPO_DATA") or source
    if study_file is not None:
        return str((study_folder(study_file) / source).resolve())
    if stored is not None:
        return stored.location
    return str(Path(source).resolve())


def choose_subset(definition_subset: int | None, stored: DataIdentity | None, given: int | None,
                  study: str) -> int | None:
    """The subset a worker trains the study on: the one the study was created with (or its file
    names); a ``--subset`` given must agree."""
    wanted = stored.subset if stored is not None else definition_subset
    if given is None:
        return wanted
    if definition_subset is not None and given != definition_subset:
        raise DataError(f"study {study!r}: its file sets data.subset = {definition_subset}; --subset {given} differs")
    if stored is not None and given != stored.subset:
        raise DataError(f"study {study!r} was created on {_subset(stored.subset)}; --subset {given} would train "
                        "on other images (leave --subset out to use the study's)")
    return given


def check_named_copy(source: str, shape: tuple[int, ...], classes: int, where: str) -> None:
    """Refuse a local copy (``--data``, ``HPO_DATA``) that cannot be the named data set it stands for."""
    if not is_named(source):
        return
    expected_shape, expected_classes = NAMED_SOURCES[source]
    if tuple(shape) != expected_shape or classes != expected_classes:
        raise DataError(f"{where} holds {_shape(tuple(shape))} images in {classes} classes; the study names "
                        f"{source} ({_shape(expected_shape)}, {expected_classes} classes): pass --data a copy of "
                        f"{source}, or name the file as the study's data.source")
