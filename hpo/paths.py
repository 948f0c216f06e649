"""Folders and files hpo is told to write into, checked before anything is written.

A mistyped ``--logs``, ``--artifacts`` or ``--output`` is refused in one line naming the
option, before a study is created or a worker starts, so a refused command changes nothing.
What ``-o`` names is written as what it is: a file replaced whole, a pipe or device written into.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hpo.errors import OutputError
from hpo.storage.url import StorageURL


def folder(path: str | Path, option: str, *, make: bool = True) -> Path:
    """``path`` as a folder hpo may write into: refused if it is a file or cannot be made."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise OutputError(f"{option} {path}: {part} is a file, not a folder")
            if not os.access(part, os.W_OK | os.X_OK):
                raise OutputError(f"{option} {path}: {part} is not writable")
            break
    if make:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{option} {path}: cannot create the folder: {exc.strerror or exc}") from None
    return path


@dataclass(frozen=True)
class OutputFile:
    """A file ``-o`` names, checked: where its bytes go, and how they get there."""

    named: Path    # as the user named it
    target: Path   # the file itself: a symlink's target, followed to its end
    replace: bool  # a regular file (or none yet): written beside, then renamed over; else written into


SPECIAL = (Path("/dev"), Path("/proc"))  # /dev/stdout, /dev/fd/N, /proc/self/fd/N: written into


def output_file(path: str | Path, option: str) -> OutputFile | None:
    """``path`` as a file to write, checked before anything is read or written; None for ``-``
    (standard output).

    A regular file, or a name not taken yet, is replaced whole (written beside, then renamed),
    so a full disk never leaves half a table; a symlink is followed and its target treated so. A
    FIFO, a terminal, a device or a descriptor (``/dev/stdout``, ``/dev/fd/N`` from process
    substitution) is written into: hpo never replaces a path that is not a regular file.
    """
    if str(path) == "-":
        return None
    named = Path(path)
    absolute = Path(os.path.abspath(named))
    target = absolute if _special(absolute) else Path(os.path.realpath(named))
    try:
        info = target.stat() if target.exists() else None
    except OSError as exc:
        raise OutputError(f"{option} {named}: {exc.strerror or exc}") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{option} {named} is a folder; name a file")
    if _special(target) or (info is not None and not stat.S_ISREG(info.st_mode)):
        if not os.access(target, os.W_OK):
            raise OutputError(f"{option} {named} is not writable")
        return OutputFile(named, target, replace=False)
    if not target.parent.is_dir():
        raise OutputError(f"{option} {named}: folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {named}: folder {target.parent} is not writable")
    if info is not None and not os.access(target, os.W_OK):
        raise OutputError(f"{option} {named} is not writable")
    return OutputFile(named, target, replace=True)


def _special(path: Path) -> bool:
    return any(path == root or path.is_relative_to(root) for root in SPECIAL)


def write_text(output: OutputFile, text: str, option: str) -> None:
    """Write ``text`` to a file :func:`output_file` checked: whole or not at all where it is
    replaced, straight in where it is a pipe or a device."""
    data = text.encode("utf-8")
    try:
        if not output.replace:
            with open(output.target, "ab") as into:  # append: never truncate what a shell opened
                into.write(data)
            return
        _replace(output.target, data)
    except OSError as exc:
        raise OutputError(f"{option} {output.named}: cannot write: {exc.strerror or exc}") from None


def _replace(target: Path, data: bytes) -> None:
    """Write ``data`` beside ``target`` and rename it over, keeping an existing file's mode."""
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if target.exists():
            shutil.copymode(target, partial)
        else:
            os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def artifact_dir(url: StorageURL, folder_given: str | Path | None = None, *, make: bool = True) -> Path:
    """The trials' artifact folder: as given, beside an SQLite file, or ./hpo-artifacts."""
    if folder_given is not None:
        path = Path(folder_given)
    elif url.sqlite_file is not None:
        path = url.sqlite_file.with_name(f"{url.sqlite_file.stem}-artifacts")
    else:
        path = Path("hpo-artifacts")
    return folder(path, "--artifacts", make=make)


def safe_name(name: str) -> str:
    """A file-name stem from a study name: letters, digits, '-' and '_' only."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")
    return stem[:80] or "study"


class OutputFolder:
    """A folder hpo writes many files into (``hpo report --output``): every path handed out is
    unique and inside it, whatever the study names it is built from."""

    def __init__(self, path: str | Path, option: str = "--output") -> None:
        self.folder = folder(path, option).resolve()  # checked, and made
        self.option = option
        self.stems: dict[str, str] = {}

    def path(self, name: str) -> Path:
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder) or path.parent != self.folder:
            raise OutputError(f"{self.option}: refusing to write {name!r} outside {self.folder}")
        return path

    def stem(self, study_name: str) -> str:
        """The study's file-name stem, the same on every call, and no other study's."""
        if study_name not in self.stems:
            stem, i = safe_name(study_name), 2
            while stem in self.stems.values():
                stem, i = f"{safe_name(study_name)}_{i}", i + 1
            self.stems[study_name] = stem
        return self.stems[study_name]
