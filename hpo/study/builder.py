"""A model of the user's own: ``[model] builder = "my_models:build"`` in a study file.

The module is looked for beside the study file first, then on Python's path. Naming it runs
its code in every worker, as running a Python script does.

The study records the builder's name, its module's file and a SHA-256 of that file when it is
created (:class:`BuilderIdentity`); a worker whose copy differs refuses the study in one line, so
no study is trained by two versions of a model. Only the module's own file is hashed: what it
imports from elsewhere is not.

Locating and hashing import nothing (no Keras), so a study that exists already is checked fast;
the dry build of a study about to be created (:mod:`hpo.training.probe`) and every worker import
the module (:func:`load_builder`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpo.errors import ConfigError

Builder = Callable[..., Any]  # (params, *, input_shape, num_classes) -> keras.Model


@dataclass(frozen=True)
class BuilderIdentity:
    """Which builder a study trains with: its name, its module's file and that file's SHA-256."""

    builder: str   # "module:function"
    file: str      # the module's file, where the study's creator found it
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuilderIdentity:
        return cls(**data)


@dataclass(frozen=True)
class LoadedBuilder:
    """A builder imported into this process: its name ("module:function") and the function."""

    name: str
    function: Builder
    sha256: str  # of its module's file: part of what a checkpoint of its model is


@contextmanager
def _searching(folder: Path | None) -> Iterator[None]:
    """Python's path with ``folder`` first, for as long as a lookup or an import takes."""
    if folder is None:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def _module_file(module: str, folder: Path | None) -> Path:
    """The file ``module`` imports from with ``folder`` first on the path; a module of that name
    imported already (another study's) does not count."""
    reason = ""
    try:
        if "." in module:
            with _searching(folder):
                spec = importlib.util.find_spec(module)
        else:
            spec = importlib.machinery.PathFinder.find_spec(module, [*([str(folder)] if folder else []), *sys.path])
    except (ImportError, ValueError) as e:
        spec, reason = None, f" ({e})"
    if spec is None or spec.origin is None or not Path(spec.origin).is_file():
        where = f" (looked in {folder} and on Python's path)" if folder else ""
        raise ConfigError(f"model.builder: no module {module!r}{where}{reason}")
    return Path(spec.origin)


def locate(builder: str, folder: Path | None) -> BuilderIdentity:
    """The builder's identity, from its module's file, without importing it."""
    module = builder.partition(":")[0]
    file = _module_file(module, folder)
    try:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError as e:
        raise ConfigError(f"model.builder: cannot read {file} ({e.strerror or e})") from e
    return BuilderIdentity(builder, str(file), digest)


def check_same(stored: BuilderIdentity, mine: BuilderIdentity, study: str) -> None:
    """Refuse a worker whose builder is not the one the study was created with."""
    if stored.builder != mine.builder:
        raise ConfigError(f"study {study!r} was created with builder {stored.builder}; this one names {mine.builder}")
    if stored.sha256 != mine.sha256:
        raise ConfigError(f"study {study!r}: {mine.file} is not the {Path(stored.file).name} the study was "
                          f"created with (sha256 {mine.sha256[:12]}, the study's {stored.sha256[:12]}); "
                          "a study is trained by one version of its model: give the new one a new study")


def load_builder(identity: BuilderIdentity) -> LoadedBuilder:
    """Import the builder's module from the file the identity names and return its function."""
    module_name, _, function = identity.builder.partition(":")
    file = Path(identity.file).resolve()
    root = file.parents[module_name.count(".") + (file.name == "__init__.py")]
    with _searching(root):
        module = _import(module_name)
        if _file_of(module) != file and "." not in module_name:
            del sys.modules[module_name]  # another study's module of the same name
            module = _import(module_name)
    if _file_of(module) != file:
        raise ConfigError(f"model.builder: {module_name} imports from {_file_of(module)}, not {file}")
    found = getattr(module, function, None)
    if found is None:
        raise ConfigError(f"model.builder: module {module_name} ({file}) has no {function!r}")
    if not callable(found):
        raise ConfigError(f"model.builder: {identity.builder} is a {type(found).__name__}, not a function")
    return LoadedBuilder(identity.builder, found, identity.sha256)


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except Exception as e:  # the module's own code raised: anything at all
        raise ConfigError(f"model.builder: importing {module_name} raised {type(e).__name__}: {e}") from e


def _file_of(module: Any) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None
