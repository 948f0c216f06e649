"""Folders and files hpo is told to write into, checked before anything is written.

A mistyped ``--logs``, ``--artifacts`` or ``--output`` is refused in one line naming the
option, before a study is created or a worker starts, so a refused command changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

from hpo.errors import OutputError


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


def output_file(path: str | Path, option: str) -> Path:
    """``path`` as a file to write: its folder must exist, and it must not be a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; name a file")
    if not path.parent.is_dir():
        raise OutputError(f"{option} {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: folder {path.parent} is not writable")
    return path


def write_text(path: Path, text: str, option: str) -> None:
    """Write ``text`` whole or not at all: a full disk leaves no truncated file behind."""
    output_file(path, option)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(f"{option} {path}: cannot write: {exc.strerror or exc}") from None


def artifact_dir(storage_url: str, folder_given: str | Path | None = None, *, make: bool = True) -> Path:
    """The trials' artifact folder: as given, beside an SQLite file, or ./hpo-artifacts."""
    if folder_given is not None:
        path = Path(folder_given)
    else:
        url = make_url(storage_url)
        database = url.database if url.get_backend_name() == "sqlite" else None
        if database and database != ":memory:":
            db = Path(database)
            path = db.with_name(f"{db.stem}-artifacts")
        else:
            path = Path("hpo-artifacts")
    return folder(path, "--artifacts", make=make)
