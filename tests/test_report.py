"""``hpo report`` run as a user runs it: Table 1 measured from real trials, figures, findings, safety."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from conftest import ROOT, STUDIES, TWO_LR_GRID, ok, run_hpo, user_error, write_study
from hpo.config import load_definition
from hpo.errors import HpoError
from hpo.report import Output, reference_params, safe_name, tolerance
from hpo.results import trial_params

TABLE1 = ROOT.parent / "shared" / "seed" / "table1.csv"
PNG = b"\x89PNG\r\n\x1a\n"

# The project's augmentation names for the report's augmentation columns.
AUGMENTATION_IN_TABLE1 = {"none": "none", "standard": "rotation15_shift0.1_hflip"}

GRID3 = """
description = "A two-point slice of experiment 3."
experiment = 3
""" + TWO_LR_GRID + """
[[reference]]
learning_rate = 0.01
batch_size = 64
epochs = 1
test_accuracy = 0.30
test_loss = 1.95
[[reference]]
learning_rate = 0.001
batch_size = 64
epochs = 1
test_accuracy = 0.25
test_loss = 2.05
[[reference]]
learning_rate = 0.0001
batch_size = 64
epochs = 1
test_accuracy = 0.20
test_loss = 2.20
"""

FIXED1 = """
description = "Experiment 1, two seeds of one epoch."
experiment = 1
trials = 2
[sampler]
type = "fixed"
[data]
protocol = "test"
[space]
architecture = "base"
augmentation = "none"
learning_rate = 0.001
batch_size = 64
epochs = 1
[[reference]]
architecture = "base"
augmentation = "none"
learning_rate = 0.001
batch_size = 64
epochs = 1
test_accuracy = 0.6382
test_loss = 1.13
"""

OTHER = """
description = "Not one of the report's experiments."
trials = 1
[sampler]
type = "fixed"
[data]
protocol = "validation_split"
[space]
architecture = "base"
augmentation = "none"
learning_rate = 0.001
batch_size = 128
epochs = 1
"""


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_study_references_are_the_reports_table1() -> None:
    """The report's numbers live in the study files: together, row for row, they are its Table 1."""
    if not TABLE1.exists():
        pytest.skip(f"no {TABLE1}")
    ours = []
    for number in (1, 2, 3, 4):
        definition = load_definition(STUDIES / f"exp{number}.toml")
        assert definition.experiment == number
        for ref in definition.references:
            params = reference_params(definition, ref)
            ours.append((str(number), params["architecture"], float(params["learning_rate"]),
                         int(params["batch_size"]), int(params["epochs"]),
                         AUGMENTATION_IN_TABLE1[params["augmentation"]], ref.test_accuracy, ref.test_loss))
    theirs = [(r["experiment"], r["architecture"], float(r["learning_rate"]), int(r["batch_size"]),
               int(r["epochs"]), r["augmentation"], float(r["test_accuracy"]), float(r["test_loss"]))
              for r in _csv(TABLE1)]
    assert len(ours) == 30
    assert ours == theirs


def test_report_measures_table1_from_the_trials(tmp_path: Path, data_path: str) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    files = [write_study(tmp_path, name, body) for name, body in
             (("grid3", GRID3), ("fixed1", FIXED1), ("other", OTHER))]
    # The database exists before the workers start: workers racing to create a new SQLite file's
    # tables is a separate matter, for hpo.storage's own tests.
    ok(run_hpo("create", str(files[0]), storage=db))
    workers = [subprocess.Popen([sys.executable, "-m", "hpo", "--storage", db, "worker", str(f),
                                 "--data", data_path, "--subset", "200"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for f in files]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]

    out = tmp_path / "out"
    result = run_hpo("report", "--output", str(out), storage=db, cwd=tmp_path)
    ok(result)
    report = (out / "report.md").read_text()

    # Table 1: the experiments' reference rows in order, measured as the mean of their trials.
    rows = _csv(out / "table1.csv")
    assert [(r["experiment"], float(r["learning_rate"]), r["batch_size"]) for r in rows] == \
        [("1", 0.001, "64"), ("3", 0.01, "64"), ("3", 0.001, "64"), ("3", 0.0001, "64")]
    for row in rows:
        study = optuna.load_study(study_name=row["study"], storage=db)
        runs = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
                if trial_params(t)["learning_rate"] == float(row["learning_rate"])]
        accuracies = [t.user_attrs["test_accuracy"] for t in runs]
        assert int(row["n"]) == len(runs)
        if not runs:
            assert row["note"] == "not run" and row["mean_test_accuracy"] == "" and row["diff_accuracy"] == ""
            continue
        assert ("diverged" in row["note"]) == any(t.user_attrs.get("diverged") for t in runs)
        mean = statistics.fmean(accuracies)
        assert float(row["mean_test_accuracy"]) == pytest.approx(mean, abs=5e-5)
        assert float(row["diff_accuracy"]) == pytest.approx(mean - float(row["report_accuracy"]), abs=1e-4)
        if len(runs) > 1:
            assert float(row["std_test_accuracy"]) == pytest.approx(statistics.stdev(accuracies), abs=5e-5)
        md_cells = f"| {row['study']} | {row['experiment']} | base | {row['learning_rate']} | 64 | 1 | none | " \
                   f"{row['n']} | {row['mean_test_accuracy']} |"
        assert md_cells in report
    assert [int(r["n"]) for r in rows] == [2, 1, 1, 0]
    assert "| grid3 | 3 | base | 0.0001 | 64 | 1 | none | 0 |" in report and "not run" in report
    assert "| other |" not in report and "### other" not in report  # not an experiment, not named

    # Findings, from the same numbers: the best row and the distance from the report.
    best = max((r for r in rows if r["mean_test_accuracy"]), key=lambda r: float(r["mean_test_accuracy"]))
    assert f"mean test accuracy {best['mean_test_accuracy']} over {best['n']} run(s)" in report
    diffs = [abs(float(r["diff_accuracy"])) for r in rows if r["experiment"] == "3" and r["diff_accuracy"]]
    found = re.search(r"Experiment 3: mean absolute difference from the report in test accuracy "
                      r"([0-9.]+) \(.*\) over 2 of 3 rows", report)
    assert found and float(found[1]) == pytest.approx(statistics.fmean(diffs), abs=2e-4), report
    assert "max(0.01, 2·std·√(1 + 1/n))" in report and "--subset" in report

    # Figures: the grid heatmap, and each study's best trial curves and confusion matrix.
    for name in ("grid3_heatmap.png", "grid3_learning_curves.png", "grid3_confusion_matrix.png",
                 "fixed1_learning_curves.png", "fixed1_confusion_matrix.png"):
        assert (out / name).read_bytes().startswith(PNG), name
        assert f"]({name})" in report, name
    best_fixed = optuna.load_study(study_name="fixed1", storage=db).best_trial.number
    stored = list((tmp_path / "hpo-artifacts").rglob("*"))
    assert (out / "fixed1_confusion_matrix.png").read_bytes() in {p.read_bytes() for p in stored if p.is_file()}
    assert f"Best trial: {best_fixed} " in report.split("### fixed1", 1)[1]

    # A study named on the command line that is no experiment gets its best-trial table.
    ok(run_hpo("report", "grid3", "other", "--output", str(tmp_path / "out2"), storage=db, cwd=tmp_path))
    report2 = (tmp_path / "out2" / "report.md").read_text()
    assert "### other" in report2 and "### fixed1" not in report2
    (other_row,) = _csv(tmp_path / "out2" / "other_best_trials.csv")
    assert other_row["rank"] == "1" and other_row["state"] == "COMPLETE" and other_row["batch_size"] == "128"
    assert f"| {other_row['rank']} | {other_row['trial']} | base |" in report2
    assert (tmp_path / "out2" / "other_learning_curves.png").read_bytes().startswith(PNG)
    assert [r["study"] for r in _csv(tmp_path / "out2" / "table1.csv")] == ["grid3"] * 3


def _study_with_trials(db: str, name: str, accuracies: list[float]) -> optuna.Study:
    """A study of experiment 1 named ``name``, with COMPLETE trials but no artifacts."""
    from hpo.storage import open_storage
    from hpo.study import create_study

    definition = dataclasses.replace(load_definition(STUDIES / "exp1.toml"), name=name)
    study, _ = create_study(open_storage(db, heartbeat=False), definition)
    params = {k: v[0] for k, v in definition.space.items()}
    for accuracy in accuracies:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: CategoricalDistribution([v]) for k, v in params.items()},
            value=accuracy, user_attrs={"test_accuracy": accuracy, "test_loss": 1.0, "val_accuracy": accuracy}))
    return study


def test_report_stays_inside_its_output_folder(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'work' / 'hpo.db'}"
    (tmp_path / "work").mkdir()
    hostile = ["../../escape", "..", "/etc/passwd", "a/../../b"]
    for i, name in enumerate(hostile):
        _study_with_trials(db, name, [0.60 + i / 100, 0.62])
    (tmp_path / "work" / "hpo-artifacts").mkdir()
    before = sorted(tmp_path.rglob("*"))

    out = tmp_path / "work" / "deep" / "out"
    ok(run_hpo("report", *hostile, "--output", str(out), storage=db, cwd=tmp_path / "work"))
    written = sorted(tmp_path.rglob("*"))
    new = [p for p in written if p not in before and not p.name.startswith("hpo.db")]
    assert new and all(p == out or p.is_relative_to(out) or p in (out.parent,) for p in new), new
    assert all(p.parent == out for p in out.rglob("*")), list(out.rglob("*"))
    report = (out / "report.md").read_text()
    # Each study has its own section and its own heading, and no artifacts is said, not an error.
    for name in hostile:
        assert f"### {name}" in report
    assert report.count("no artifacts were recorded") == len(hostile)
    assert len(_csv(out / "table1.csv")) == len(hostile)

    # A file in the output folder that links elsewhere is not written through.
    victim = tmp_path / "victim.csv"
    victim.write_text("keep me\n")
    (out / "table1.csv").unlink()
    (out / "table1.csv").symlink_to(victim)
    user_error(run_hpo("report", "..", "--output", str(out), storage=db, cwd=tmp_path), "outside")
    assert victim.read_text() == "keep me\n"


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    _study_with_trials(db, "exp1", [0.6])
    user_error(run_hpo("report", "nope", "--output", str(tmp_path / "out"), storage=db, cwd=tmp_path),
                "no study named 'nope'")
    (tmp_path / "file").write_text("")
    user_error(run_hpo("report", "--output", str(tmp_path / "file"), storage=db, cwd=tmp_path),
               "is a file, not a folder")


def test_safe_names_are_plain_file_names() -> None:
    for name in ("../../x", "..", ".", "/etc/passwd", "a\\b", "exp3", "ex p\n3", "", "é"):
        stem = safe_name(name)
        assert stem and Path(stem).name == stem and stem not in (".", "..")
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in stem)
    assert safe_name("exp3") == "exp3"


def test_two_studies_never_share_a_file_name(tmp_path: Path) -> None:
    out = Output(tmp_path / "out")
    stems = [out.stem(name) for name in ("x.y", "x_y", "x/y", "x.y")]
    assert stems[0] == stems[3] and len(set(stems[:3])) == 3
    with pytest.raises(HpoError):
        out.path("../escape.md")


def test_tolerance_allows_for_the_report_being_a_single_run() -> None:
    # Three runs with std 0.0152 (exp4 on the full data here) against the report's one run:
    # the difference varies with std * sqrt(1 + 1/3), so twice that is 0.0351, not 2 * std / sqrt(3).
    assert tolerance(0.0152, 3) == pytest.approx(2 * 0.0152 * (4 / 3) ** 0.5)
    assert tolerance(0.001, 10) == 0.01  # never below one point, a single run's noise
    assert tolerance(None, 1) == 0.01
