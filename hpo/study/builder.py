"""A model of the user's own: ``[model] builder = "my_models:build"`` in a study file.

The module is looked for beside the study file first, then on Python's path. Naming it runs
its code in every worker, as running a Python script does.

The study records the builder's name, its module's file and a SHA-256 of that file when it is
created (:class:`BuilderIdentity`), and a SHA-256 of every module of the user's own that it
imports: the files beside it (or in its package) that its import statements name, directly or
through each other, found by reading the code, not by running it. A worker whose copy of any of
them differs refuses the study in one line, so no study is trained by two versions of a model.
What the module imports from installed packages (Keras, NumPy) is not hashed, nor a module it
imports by a computed name (``importlib.import_module(name)``).

Locating and hashing import nothing (no Keras), so a study that exists already is checked fast;
the dry build of a study about to be created (:mod:`hpo.training.probe`) and every worker import
the module (:func:`load_builder`).
"""

from __future__ import annotations

import ast
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
from hpo.study import pickled

Builder = Callable[..., Any]  # (params, *, input_shape, num_classes) -> keras.Model


@dataclass(frozen=True)
class BuilderIdentity:
    """Which builder a study trains with: its name, its module's file and that file's SHA-256,
    and the SHA-256 of each module of the user's own it imports, by path relative to its folder
    (None in a study created before hpo recorded them: not compared)."""

    builder: str   # "module:function"
    file: str      # the module's file, where the study's creator found it ("" for a pickled one)
    sha256: str    # of the module's file, or of the pickle
    imports: Mapping[str, str] | None = None
    pickled: str | None = None  # a function from a notebook or __main__, pickled (hpo.study.pickled)
    python: str | None = None   # the Python version that pickled it

    @property
    def is_pickled(self) -> bool:
        return self.pickled is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "imports": dict(self.imports) if self.imports is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuilderIdentity:
        return cls(**data)

    @classmethod
    def of_function(cls, function: Builder) -> BuilderIdentity:
        """A function given from Python: by its module's file where it has one a worker can import
        (a module beside the notebook, say), else pickled (a function of a cell or of ``__main__``)."""
        module = sys.modules.get(getattr(function, "__module__", "") or "")
        name = getattr(function, "__name__", "")
        file = getattr(module, "__file__", None)
        if (module is not None and module.__name__ != "__main__" and file and name.isidentifier()
                and getattr(module, name, None) is function):
            return locate(f"{module.__name__}:{name}", _root_of(Path(file).resolve(), module.__name__))
        text, sha256 = pickled.encode(pickled.dumps(function))
        return cls(pickled.label(function), "", sha256, None, text, pickled.PYTHON)


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
    """The builder's identity, from its module's file and the files of its own it imports,
    without importing anything."""
    module = builder.partition(":")[0]
    file = _module_file(module, folder)
    real = file.resolve()
    root = _root_of(real, module)
    imports = {f.relative_to(root).as_posix(): _sha256(f) for f in sorted(_own_imports(real, root, module))}
    return BuilderIdentity(builder, str(file), _sha256(file), imports)


def _sha256(file: Path) -> str:
    try:
        return hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError as e:
        raise ConfigError(f"model.builder: cannot read {file} ({e.strerror or e})") from e


def _root_of(file: Path, module: str) -> Path:
    """The folder on Python's path that ``module``, at ``file``, is imported from."""
    return file.parents[module.count(".") + (file.name == "__init__.py")]


_MAX_OWN_MODULES = 200  # a folder of the user's own code, not a library


def _own_imports(file: Path, root: Path, module: str) -> set[Path]:
    """The ``.py`` files under ``root`` that importing ``module`` (at ``file``) runs besides
    ``file``: its packages' ``__init__.py``, the files its import statements name, and theirs
    in turn. Nothing under an installed-packages folder counts as one's own."""
    if root.name in ("site-packages", "dist-packages"):
        return set()
    found = set(_files_of(module.rpartition(".")[0], root)) if "." in module else set()
    todo = [file, *found]
    while todo and len(found) < _MAX_OWN_MODULES:
        current = todo.pop()
        for name in _imported_names(current, root):
            for candidate in _files_of(name, root):
                if candidate != file and candidate not in found:
                    found.add(candidate)
                    todo.append(candidate)
    return found


def _imported_names(file: Path, root: Path) -> Iterator[str]:
    """Dotted names ``file`` imports (``from a import b`` gives ``a`` and ``a.b``, as b may be a
    module), relative imports made absolute from ``file``'s place under ``root``."""
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (SyntaxError, ValueError, OSError):
        return  # importing it will say what is wrong
    package = file.parent.relative_to(root).parts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base: tuple[str, ...] = ()
            if node.level:
                if node.level - 1 >= len(package):
                    continue  # beyond the top package: importing it will fail
                base = package[:len(package) - (node.level - 1)]
            module = (*base, *(node.module.split(".") if node.module else ()))
            if module:
                yield ".".join(module)
            yield from (".".join((*module, alias.name)) for alias in node.names if alias.name != "*")


def _files_of(name: str, root: Path) -> Iterator[Path]:
    """The files importing ``name`` from ``root`` runs: each package's ``__init__.py`` on the way,
    and the module's own file."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        path = root.joinpath(*parts[:depth])
        for candidate in (path / "__init__.py", path.with_name(path.name + ".py")):
            if candidate.is_file():
                yield candidate
                break


def check_same(stored: BuilderIdentity, mine: BuilderIdentity, study: str) -> None:
    """Refuse a worker whose builder is not the one the study was created with."""
    if stored.is_pickled or mine.is_pickled:
        if stored.sha256 != mine.sha256:
            raise ConfigError(f"study {study!r} was created with another {stored.builder} (sha256 "
                              f"{stored.sha256[:12]}; this one's is {mine.sha256[:12]}): a study is trained by one "
                              "version of its model: give the new one a new study")
        return
    if stored.builder != mine.builder:
        raise ConfigError(f"study {study!r} was created with builder {stored.builder}; this one names {mine.builder}")
    if stored.sha256 != mine.sha256:
        raise ConfigError(f"study {study!r}: {mine.file} is not the {Path(stored.file).name} the study was "
                          f"created with (sha256 {mine.sha256[:12]}, the study's {stored.sha256[:12]}); "
                          "a study is trained by one version of its model: give the new one a new study")
    if stored.imports is None:
        return  # created before hpo recorded the builder's own imports
    mine_imports = mine.imports or {}
    for name in sorted({*stored.imports, *mine_imports}):
        theirs, ours = stored.imports.get(name), mine_imports.get(name)
        if theirs != ours:
            here = _root_of(Path(mine.file).resolve(), mine.builder.partition(":")[0])
            what = (f"{here / name} is not the {name} the study was created with "
                    f"(sha256 {ours[:12]}, the study's {theirs[:12]})" if theirs and ours else
                    f"{name}, which {Path(mine.file).name} imports, is missing beside it" if theirs else
                    f"{name}, beside {Path(mine.file).name}, is a module of its own it imports that the study "
                    "was created without")
            raise ConfigError(f"study {study!r}: {what}; a study is trained by one version of its model: "
                              "give the new one a new study")


def load_builder(identity: BuilderIdentity) -> LoadedBuilder:
    """Import the builder's module from the file the identity names (or load the pickled
    function the study recorded) and return its function."""
    if identity.pickled is not None:
        return LoadedBuilder(identity.builder, pickled.load(identity.builder, identity.pickled, identity.sha256,
                                                            identity.python), identity.sha256)
    module_name, _, function = identity.builder.partition(":")
    file = Path(identity.file).resolve()
    root = _root_of(file, module_name)
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
