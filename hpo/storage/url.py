"""The storage URL: checked and parsed once, then handed to whatever needs the database.

``--storage``, else ``HPO_STORAGE``, else an SQLite file ``hpo.db`` here. ``postgres://`` and
``postgresql://`` get the PostgreSQL driver hpo installs (psycopg 3). A :class:`StorageURL`
shows itself with its password hidden (``str()``, f-strings, errors); only :attr:`secret`,
for connecting and for the environment of a launch's workers, holds the password.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from hpo.errors import StorageError

DEFAULT_STORAGE = "sqlite:///hpo.db"
# The driver hpo installs, chosen for URLs that name none (postgres://, postgresql://).
POSTGRES_DRIVER = "postgresql+psycopg"
ACCEPTED = "sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB (or postgres://, postgresql+psycopg://)"
RESERVED = "@/:#?"  # characters a user name or password must percent-encode in a URL


@dataclass(frozen=True)
class StorageURL:
    """A storage URL that hpo can use: SQLite or PostgreSQL, its driver installed."""

    parsed: sqlalchemy.engine.URL

    @classmethod
    def resolve(cls, given: str | None = None) -> StorageURL:
        """The URL given (``--storage``), else ``HPO_STORAGE``, else ``sqlite:///hpo.db``; checked.
        No error repeats the password."""
        text = given or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE
        _check_userinfo(text)
        try:
            parsed = make_url(text)
        except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise StorageError(f"--storage {_hide_password(text)!r} is not a database URL; accepted: {ACCEPTED}") \
                from None
        if parsed.drivername in ("postgres", "postgresql"):
            parsed = parsed.set(drivername=POSTGRES_DRIVER)
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise StorageError(f"--storage {shown(parsed)!r}: only SQLite and PostgreSQL are supported; "
                               f"accepted: {ACCEPTED}")
        try:  # a driver named in the URL (postgresql+psycopg2://, as Optuna's docs write it) must be installed
            parsed.get_dialect().import_dbapi()
        except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
            raise StorageError(f"--storage {shown(parsed)!r}: its driver {parsed.get_driver_name()!r} is not "
                               f"installed ({exc}); accepted: {ACCEPTED}") from None
        return cls(parsed)

    @property
    def backend(self) -> str:
        """"sqlite" or "postgresql"."""
        return self.parsed.get_backend_name()

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file (None for PostgreSQL, or an in-memory database)."""
        database = self.parsed.database
        if self.backend != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database)

    @property
    def secret(self) -> str:
        """The whole URL, password and all: for connecting, never for showing."""
        return self.parsed.render_as_string(hide_password=False)

    def __str__(self) -> str:
        return shown(self.parsed)


def shown(url: str | sqlalchemy.engine.URL) -> str:
    """A URL as it may be shown or logged: with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return _hide_password(str(url))


def _hide_password(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``, for text that is no valid URL."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def _check_userinfo(url: str) -> None:
    """Refuse a user name or password holding a raw ``@ / : # ?``, before anything connects.

    Such a URL parses, but as something else: ``postgresql://u:Zq9@Secr/et@host/db`` has the
    password ``Zq9``, the host ``Secr`` (looked up in DNS) and a database named from the rest, so
    every error message would show a piece of the real password. The message here shows none.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.startswith("sqlite") or "@" not in rest:
        return
    userinfo, host = rest.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    raw = sorted({c for c in password if c in RESERVED}, key=RESERVED.index)
    where = "password"
    if any(c in RESERVED for c in user):
        raw, where = sorted({c for c in user if c in RESERVED}, key=RESERVED.index), "user name"
    if raw:
        shown = f"{scheme}://{'***' if where == 'user name' else user}:***@{host}"
        codes = ", ".join(f"{c} as {urllib.parse.quote(c, safe='')}" for c in raw)
        raise StorageError(f"--storage {shown}: the {where} holds a raw {' '.join(raw)}, which a URL reads as "
                           f"a separator; percent-encode it ({codes})")
