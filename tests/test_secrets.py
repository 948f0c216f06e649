"""The storage URL's password is never printed, logged, stored or put on a command line.

A launch against the real PostgreSQL server with a password in the URL (the server trusts
local connections, so any password works) is watched from outside, as another user would:
every process's command line while it runs, everything it prints, its workers' logs, what it
stores, the report and the dashboard's note.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note  # the dashboard's own reader of a study's note

from hpo.storage import records

from conftest import ok, run_hpo, study_body, user_error, write_study

SECRET = "S3cretPassw0rdXyZ"

GRID = study_body(learning_rate=[0.001, 0.0001], batch_size=[128])


def _with_password(url: str, scheme: str = "postgresql+psycopg") -> str:
    """The test database's URL with a password (and the given scheme)."""
    rest = url.split("://", 1)[1]
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{SECRET}@{host}"


def _command_lines() -> list[str]:
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # the process ended meanwhile
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


def _places(text: str) -> int:
    return text.count(SECRET)


@pytest.mark.postgres
@pytest.mark.parametrize("via", ["flag", "environment"])
def test_launch_never_shows_the_password(via: str, postgres_url: str, data_path: str, tmp_path: Path) -> None:
    url = _with_password(postgres_url)
    study = write_study(tmp_path, "secret", GRID)
    command = [sys.executable, "-m", "hpo", *(["--storage", url] if via == "flag" else []), "launch", str(study),
               "-n", "2", "--threads", "1", "--data", data_path, "--subset", "200", "--logs", str(tmp_path / "logs")]
    env = {**os.environ, **({"HPO_STORAGE": url} if via == "environment" else {})}
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=tmp_path)
    seen_on_command_lines = 0
    workers_seen = False
    while launcher.poll() is None:
        lines = [line for line in _command_lines() if "hpo" in line]
        workers_seen |= any(" worker secret" in line for line in lines)
        # Our own launcher was given the URL by the test (as a user types it); its workers must not be.
        seen_on_command_lines += sum(_places(line) for line in lines if " worker " in line)
        time.sleep(0.2)
    stdout, stderr = launcher.communicate()
    ok(subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr))
    assert workers_seen, "the workers were never seen running"

    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.log"))
    report_dir = tmp_path / "report"
    reported = run_hpo("report", "secret", "-o", str(report_dir), storage=url, cwd=tmp_path)
    ok(reported)
    report = "".join(p.read_text(errors="replace") for p in report_dir.iterdir() if p.suffix in (".md", ".csv"))
    exported = run_hpo("export", "secret", "--format", "json", storage=url)
    status = run_hpo("status", storage=url)
    bad_scheme = run_hpo("status", storage=_with_password(postgres_url, "mysql"))
    not_a_url = run_hpo("status", storage=f"postgresql://user:{SECRET}@host:notaport/db")

    study_obj = optuna.load_study(study_name="secret", storage=postgres_url)
    stored = (repr([(t.user_attrs, t.system_attrs) for t in study_obj.get_trials()]) + repr(study_obj.user_attrs)
              + repr(records.record_of(study_obj)))
    note = repr(get_note(study_obj))

    places = {
        "worker command lines": seen_on_command_lines,
        "launch output": _places(stdout + stderr),
        "worker logs": _places(logs),
        "report": _places(report + reported.stderr),
        "export, status": _places(exported.stdout + exported.stderr + status.stdout + status.stderr),
        "errors": _places(bad_scheme.stderr + not_a_url.stderr),
        "trial and study attributes": _places(stored),
        "dashboard note": _places(note),
    }
    print(f"password ({via}) seen in: {places}")
    assert places == dict.fromkeys(places, 0)
    user_error(bad_scheme, "only SQLite and PostgreSQL", "***")
    user_error(not_a_url, "not a database URL", "***")
    assert "best trials: " in stderr and "-m hpo " in stderr and "export secret" in stderr
    # The last lines' commands run as printed: with a password given by --storage, once HPO_STORAGE
    # holds the URL (the line before them says so); given by HPO_STORAGE, they name no storage.
    export = next(line for line in stderr.splitlines() if line.startswith("best trials: "))
    export = export.removeprefix("best trials: ")
    if via == "flag":
        assert "export HPO_STORAGE=" in stderr and '--storage "$HPO_STORAGE" export secret' in export
    else:
        assert "--storage" not in export and "HPO_STORAGE=" not in stderr
    printed = subprocess.run(["bash", "-c", export], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                             env={**os.environ, "HPO_STORAGE": url})
    ok(printed)
    assert "rank" in printed.stdout and _places(printed.stdout + printed.stderr) == 0




