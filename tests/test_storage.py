"""Storage URLs and opening the database: the driver, the password kept out of sight, what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.errors import StorageError
from hpo.storage.url import StorageURL

from conftest import ok, run_hpo, study_body, user_error, write_study

SECRET = "S3cretPassw0rdXyZ"


def _with_password(url: str, scheme: str = "postgresql+psycopg") -> str:
    """The test database's URL with a password (and the given scheme)."""
    rest = url.split("://", 1)[1]
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{SECRET}@{host}"


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_plain_postgres_urls_get_a_driver(scheme: str, postgres_url: str, tmp_path: Path) -> None:
    url = _with_password(postgres_url, scheme)
    ok(run_hpo("create", str(write_study(tmp_path, "plain", study_body())), storage=url))
    status = run_hpo("status", "plain", "--format", "json", storage=url)
    ok(status)
    assert '"plain"' in status.stdout


@pytest.mark.parametrize("driver", ["psycopg2", "nosuchdriver"])
def test_a_driver_that_is_not_installed_is_one_line_without_the_password(driver: str, tmp_path: Path) -> None:
    # Optuna's docs write postgresql+psycopg2://; hpo installs psycopg 3.
    url = f"postgresql+{driver}://postgres:{SECRET}@127.0.0.1:5432/postgres"
    line = user_error(run_hpo("status", storage=url, cwd=tmp_path), f"driver {driver!r} is not installed", "***")
    assert SECRET not in line and "postgresql://" in line


def test_a_storage_url_never_shows_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    url = StorageURL.resolve(f"postgres://me:{SECRET}@db.example:5432/studies")
    assert url.backend == "postgresql" and url.sqlite_file is None
    assert str(url) == f"{url}" == "postgresql+psycopg://me:***@db.example:5432/studies"
    assert SECRET in url.secret  # for connecting only
    with pytest.raises(StorageError) as refused:
        StorageURL.resolve(f"mysql://me:{SECRET}@db.example/studies")
    assert SECRET not in str(refused.value) and "only SQLite and PostgreSQL" in str(refused.value)


def test_the_flag_then_hpo_storage_then_hpo_db_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    assert StorageURL.resolve(None).sqlite_file == Path("hpo.db")
    monkeypatch.setenv("HPO_STORAGE", f"sqlite:///{tmp_path / 'env.db'}")
    assert StorageURL.resolve(None).sqlite_file == tmp_path / "env.db"
    assert StorageURL.resolve(f"sqlite:///{tmp_path / 'flag.db'}").sqlite_file == tmp_path / "flag.db"
