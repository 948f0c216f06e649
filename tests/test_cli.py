"""The ``hpo`` command run as a user runs it: real processes, real training on a data subset."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import STUDIES, TWO_LR_GRID, ok, run_hpo, user_error, write_study

# Two learning rates x two batch sizes, one epoch each.
GRID = TWO_LR_GRID.replace("batch_size = [64]", "batch_size = [64, 128]")


def test_create_launch_export_runs_the_whole_grid(tmp_path: Path, data_path: str) -> None:
    study = write_study(tmp_path, "smallgrid", GRID)
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("create", str(study), "--data", data_path, "--subset", "300", storage=db))
    status = run_hpo("status", "smallgrid", "--format", "json", storage=db)
    ok(status)
    assert json.loads(status.stdout)[0]["points"]["pending"] == 4

    launched = run_hpo("launch", str(study), "-n", "2", "--data", data_path, "--subset", "300",
                       "--logs", str(tmp_path / "logs"), storage=db, cwd=tmp_path)
    ok(launched)
    assert "2 workers on study smallgrid" in launched.stderr
    assert "4/4 done, 0 running, 0 failed" in launched.stderr

    exported = run_hpo("export", "smallgrid", "--format", "csv", storage=db)
    ok(exported)
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert {(float(r["learning_rate"]), int(r["batch_size"])) for r in rows} == \
        {(lr, b) for lr in (0.01, 0.001) for b in (64, 128)}
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert all(r["state"] == "COMPLETE" and r["epochs"] == "1" for r in rows)
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 and float(r["test_loss"]) > 0 for r in rows)

    # Every format carries the same columns and the same rounded numbers.
    best = rows[0]
    for fmt in ("table", "md", "json", "latex", "html"):
        out = tmp_path / f"best.{fmt}"
        ok(run_hpo("export", "smallgrid", "--format", fmt, "--output", str(out), storage=db))
        text = out.read_text().replace("\\_", "_")
        for column in ("rank", "trial", "learning_rate", "val_accuracy", "test_accuracy", "test_loss", "state"):
            assert column in text, (fmt, column)
        if fmt == "json":
            first = json.loads(text)[0]
            assert (first["test_accuracy"], first["val_accuracy"]) == \
                (float(best["test_accuracy"]), float(best["val_accuracy"]))
        else:
            assert best["test_accuracy"] in text and best["val_accuracy"] in text, fmt

    # The artifacts of every trial sit beside the database: its curves, confusion matrix and
    # metrics, and the model of each trial that was the best so far (keep_models, by default).
    files = [p for p in (tmp_path / "hpo-artifacts").rglob("*") if p.is_file()]
    kinds = Counter(p.suffix for p in files)
    assert kinds[".png"] == 2 * 4 and kinds[".json"] == 4 and 1 <= kinds[".keras"] <= 4, kinds
    # ... under names a person can read: study, what the file is, trial, a random part, its kind.
    named = re.compile(r"smallgrid-(learning_curves|confusion_matrix|metrics|model)_trial\d+-[0-9a-f]{8}"
                       r"\.(png|json|keras)")
    assert all(named.fullmatch(p.name) for p in files), sorted(p.name for p in files)

    # Workers that find nothing left to do exit at once, and add nothing.
    again = run_hpo("worker", "smallgrid", "--data", data_path, "--subset", "300", storage=db)
    ok(again)
    assert "0 complete" in again.stderr


def test_status_lists_every_study(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    for name in ("exp1", "exp3", "search"):
        ok(run_hpo("create", str(STUDIES / f"{name}.toml"), storage=db))
    result = run_hpo("status", "--format", "json", storage=db)
    ok(result)
    totals = {s["study"]: s["points"]["total"] for s in json.loads(result.stdout)}
    assert totals == {"exp1": 3, "exp3": 27, "search": 40}
    table = run_hpo("status", storage=db)
    ok(table)
    assert table.stdout.splitlines()[0].split()[:3] == ["study", "sampler", "pending"]


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    user_error(run_hpo("create", str(tmp_path / "missing.toml"), storage=db), "missing.toml", "no such study file")
    bad = write_study(tmp_path, "bad", GRID.replace("[0.01, 0.001]", "[0.01, -1]"))
    user_error(run_hpo("create", str(bad), storage=db), "bad.toml", "space.learning_rate", "-1")
    user_error(run_hpo("export", "nope", storage=db), "no study named 'nope'")
    user_error(run_hpo("status", "nope", storage=db), "no study named 'nope'")
    user_error(run_hpo("status", storage="mysql://x@y/z"), "only SQLite and PostgreSQL")
    user_error(run_hpo("status", storage="postgresql+psycopg://postgres@127.0.0.1:1/none"), "cannot connect")

    # A changed definition under an existing name: refused, and the stored study is untouched.
    study = write_study(tmp_path, "smallgrid", GRID)
    ok(run_hpo("create", str(study), storage=db))
    study.write_text(study.read_text().replace("epochs = [1]", "epochs = [1, 2]"))
    user_error(run_hpo("create", str(study), storage=db), "different definition", "space.epochs")
    status = run_hpo("status", "smallgrid", "--format", "json", storage=db)
    assert json.loads(status.stdout)[0]["points"]["total"] == 4


def test_bad_data_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "smallgrid", GRID)
    user_error(run_hpo("worker", str(study), "--data", str(tmp_path / "nowhere.tar.gz"), storage=db),
                "nowhere.tar.gz")
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    user_error(run_hpo("worker", str(study), "--data", str(corrupt), storage=db,
                        env={"HPO_CACHE": str(tmp_path / "cache")}), "corrupt.tar.gz")


def test_dashboard_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_hpo("dashboard", "--port", str(port), storage=f"sqlite:///{tmp_path / 'hpo.db'}", timeout=60)
    user_error(result, f"127.0.0.1:{port}", "in use")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_hpo("--debug", "create", str(tmp_path / "missing.toml"),
                     storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_storage_and_debug_work_before_and_after_the_subcommand(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("create", str(STUDIES / "exp1.toml"), "--storage", db))
    before = run_hpo("--storage", db, "status", "--format", "json")
    after = run_hpo("status", "exp1", "--format", "json", "--storage", db)
    ok(before)
    ok(after)
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert json.loads(after.stdout)[0]["points"]["total"] == 3
    # The flag after the subcommand wins over HPO_STORAGE, as the one before it does.
    elsewhere = run_hpo("status", "--format", "json", "--storage", db, env={"HPO_STORAGE": "sqlite:////nowhere/x.db"})
    ok(elsewhere)
    assert json.loads(elsewhere.stdout)[0]["study"] == "exp1"
    for args in (["--debug", "create", "missing.toml"], ["create", "missing.toml", "--debug"]):
        result = run_hpo(*args, "--storage", db, cwd=tmp_path)
        assert result.returncode != 0 and "Traceback" in result.stderr, args


def test_a_bad_option_is_one_line_too(tmp_path: Path) -> None:
    user_error(run_hpo("status", "--format", "nope", storage=f"sqlite:///{tmp_path / 'hpo.db'}"),
               "--format", "nope", "hpo status --help")


def test_the_commands_printed_after_a_launch_run_as_this_one_was(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    from hpo.cli.common import invoked_as

    script = tmp_path / "venv" / "bin" / "hpo"  # a venv's script, its folder not on the PATH
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [str(script), "launch"])
    assert invoked_as() == str(script)  # pasteable: `hpo` alone would not be found
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert invoked_as() == "hpo"
    monkeypatch.setattr(sys, "argv", ["/somewhere/hpo/__main__.py", "launch"])
    assert invoked_as() == f"{sys.executable} -m hpo"


def test_read_only_commands_load_no_dashboard_and_no_keras(tmp_path: Path) -> None:
    """status and export answer in about a second: they import neither the dashboard (which
    brings scikit-learn, 1.6 s) nor Keras and its backend."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("create", str(write_study(tmp_path, "quick", GRID)), storage=db))
    for command in (["status"], ["export", "quick"]):
        shown = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpo", "--storage", db, *command],
                               capture_output=True, text=True, timeout=120)
        ok(shown)
        loaded = {line.split("|")[-1].strip() for line in shown.stderr.splitlines() if line.startswith("import time:")}
        assert not loaded & {"optuna_dashboard", "sklearn", "keras", "tensorflow"}, (command, sorted(
            loaded & {"optuna_dashboard", "sklearn", "keras", "tensorflow"}))
