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

from hpo.storage import records
from conftest import ROOT, STUDIES, created_study, missing, ok, run_hpo, study_body, user_error, write_study
from hpo.study.files import load_definition
from hpo.errors import ConfigError, HpoError
from hpo.paths import OutputFolder, safe_name
from hpo.results.table1 import COLUMNS, parse, reference_params, report_rows, tolerance

TABLE1 = ROOT.parent / "shared" / "seed" / "table1.csv"
PNG = b"\x89PNG\r\n\x1a\n"

# The project's augmentation names for the report's augmentation columns.
AUGMENTATION_IN_TABLE1 = {"none": "none", "standard": "rotation15_shift0.1_hflip"}

# A three-point slice of experiment 3's grid: three of Table 1's rows (5 epochs, batch 64).
GRID3 = study_body(study={"description": "A three-point slice of experiment 3.", "experiment": 3},
                   data={"protocol": "validation_split", "validation_split": 0.2}, learning_rate=[0.01, 0.001, 0.0001],
                   epochs=[5])

# Experiment 1's configuration, twice: its row of Table 1 over two runs.
FIXED1 = study_body("fixed", study={"description": "Experiment 1, two seeds.", "experiment": 1, "trials": 2},
                    data={"protocol": "test"}, learning_rate=0.001, batch_size=32, epochs=10)

OTHER = study_body("fixed", study={"description": "Not one of the report's experiments.", "trials": 1},
                   data={"protocol": "validation_split"}, learning_rate=0.001, batch_size=128, epochs=1)


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_packaged_table1_is_the_study_files_references() -> None:
    """Table 1 ships with hpo, and the study files carry the same numbers: row for row, in order."""
    in_files = []
    for number in (1, 2, 3, 4):
        definition = load_definition(STUDIES / f"exp{number}.toml")
        assert definition.experiment == number
        in_files += [(number, reference_params(definition, ref), ref.test_accuracy, ref.test_loss)
                     for ref in definition.references]
    packaged = [(row.experiment, row.params, row.reference.test_accuracy, row.reference.test_loss)
                for row in report_rows()]
    assert len(packaged) == 30
    assert packaged == in_files


def test_packaged_table1_is_the_reports() -> None:
    if not TABLE1.exists():
        missing(f"no {TABLE1}, the seed's Table 1")
    theirs = [(int(r["experiment"]), r["architecture"], float(r["learning_rate"]), int(r["batch_size"]),
               int(r["epochs"]), r["augmentation"], float(r["test_accuracy"]), float(r["test_loss"]))
              for r in _csv(TABLE1)]
    ours = [(row.experiment, row.params["architecture"], row.params["learning_rate"], row.params["batch_size"],
             row.params["epochs"], AUGMENTATION_IN_TABLE1[row.params["augmentation"]],
             row.reference.test_accuracy, row.reference.test_loss) for row in report_rows()]
    assert ours == theirs


def test_a_bad_table1_row_names_its_line_and_column() -> None:
    header = ",".join(COLUMNS)
    with pytest.raises(ConfigError, match=r"t\.csv: line 3: learning_rate = 'fast' must be float"):
        parse(f"{header}\n1,base,0.001,32,10,none,0.6,1.1\n1,base,fast,32,10,none,0.6,1.1\n", "t.csv")
    with pytest.raises(ConfigError, match="unknown architecture 'vgg'"):
        parse(f"{header}\n1,vgg,0.001,32,10,none,0.6,1.1\n", "t.csv")
    with pytest.raises(ConfigError, match="columns"):
        parse("experiment,architecture\n1,base\n", "t.csv")


def test_report_measures_table1_from_the_trials(tmp_path: Path, data_path: str) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    # grid3 runs two of its three points, so one row it holds is not run yet.
    studies = [(write_study(tmp_path, name, body), extra) for name, body, extra in
               (("grid3", GRID3, ["--max-trials", "2"]), ("fixed1", FIXED1, []), ("other", OTHER, []))]
    # The database exists before the workers start: workers racing to create a new SQLite file's
    # tables is a separate matter, for hpo.storage.open's own tests.
    ok(run_hpo("create", str(studies[0][0]), "--data", data_path, "--subset", "200", storage=db))
    workers = [subprocess.Popen([sys.executable, "-m", "hpo", "--storage", db, "worker", str(f),
                                 "--data", data_path, "--subset", "200", *extra],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for f, extra in studies]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]

    out = tmp_path / "out"
    result = run_hpo("report", "--output", str(out), storage=db, cwd=tmp_path)
    ok(result)
    report = (out / "report.md").read_text()

    # Table 1: all the report's rows in its order, those the studies hold measured as the mean of their trials.
    rows = _csv(out / "table1.csv")
    assert [(int(r["experiment"]), float(r["learning_rate"]), int(r["batch_size"]), int(r["epochs"]))
            for r in rows] == [(row.experiment, *(row.params[k] for k in ("learning_rate", "batch_size", "epochs")))
                               for row in report_rows()]
    held = [r for r in rows if r["study"]]
    assert [(r["study"], r["experiment"], float(r["learning_rate"]), r["batch_size"], r["epochs"]) for r in held] == \
        [("fixed1", "1", 0.001, "32", "10"), ("grid3", "3", 0.01, "64", "5"), ("grid3", "3", 0.001, "64", "5"),
         ("grid3", "3", 0.0001, "64", "5")]
    for row in held:
        study = optuna.load_study(study_name=row["study"], storage=db)
        runs = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
                if records.trial_params(t)["learning_rate"] == float(row["learning_rate"])]
        accuracies = [t.user_attrs["test_accuracy"] for t in runs]
        assert int(row["n"]) == len(runs)
        md_cells = f"| {row['study']} | {row['experiment']} | base | {row['learning_rate']} | {row['batch_size']} | " \
                   f"{row['epochs']} | none | {row['n']} | {row['mean_test_accuracy']} |"
        assert md_cells in report
        if not runs:
            assert row["note"] == "not run" and row["mean_test_accuracy"] == "" and row["diff_accuracy"] == ""
            continue
        assert ("diverged" in row["note"]) == any(t.user_attrs.get("diverged") for t in runs)
        mean = statistics.fmean(accuracies)
        assert float(row["mean_test_accuracy"]) == pytest.approx(mean, abs=5e-5)
        assert float(row["diff_accuracy"]) == pytest.approx(mean - float(row["report_accuracy"]), abs=1e-4)
        if len(runs) > 1:
            assert float(row["std_test_accuracy"]) == pytest.approx(statistics.stdev(accuracies), abs=5e-5)
    assert int(held[0]["n"]) == 2 and sorted(int(r["n"]) for r in held[1:]) == [0, 1, 1]
    # A row no stored study can run is in the table too, and says so.
    assert all(r["n"] == "0" and r["note"] == "not run" and r["mean_test_accuracy"] == "" for r in rows
               if not r["study"])
    assert "|  | 2 | deeper_dropout | 0.001 | 32 | 10 | none | 0 |" in report
    assert "| other |" not in report and "### other" not in report  # not an experiment, not named

    # Findings, from the same numbers: the best row, the rows not run, the distance from the report.
    best = max((r for r in rows if r["mean_test_accuracy"]), key=lambda r: float(r["mean_test_accuracy"]))
    assert f"mean test accuracy {best['mean_test_accuracy']} over {best['n']} run(s)" in report
    assert "27 of the 30 rows of Table 1 not run yet" in report
    assert "Experiment 2: none of its 1 rows run yet." in report and "Experiment(s) 2, 4: no study" in report
    diffs = [abs(float(r["diff_accuracy"])) for r in rows if r["experiment"] == "3" and r["diff_accuracy"]]
    found = re.search(r"Experiment 3: mean absolute difference from the report in test accuracy "
                      r"([0-9.]+) \(.*\) over 2 of 27 rows", report)
    assert found and float(found[1]) == pytest.approx(statistics.fmean(diffs), abs=2e-4), report
    assert "max(0.01, 2·std·√(1 + 1/n))" in report and "--subset" in report

    # fixed1 ran its one configuration twice: its section ranks configurations by their mean.
    (configuration,) = _csv(out / "fixed1_configurations.csv")
    fixed1 = optuna.load_study(study_name="fixed1", storage=db).get_trials(states=(TrialState.COMPLETE,))
    assert configuration["n"] == "2" and configuration["trials"] == " ".join(str(t.number) for t in fixed1)
    assert float(configuration["mean_val_accuracy"]) == pytest.approx(
        statistics.fmean(t.value for t in fixed1 if t.value is not None), abs=5e-5)
    assert "](fixed1_configurations.csv)" in report and not (out / "grid3_configurations.csv").exists()

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
    rows2 = _csv(tmp_path / "out2" / "table1.csv")
    assert len(rows2) == 30 and [r["study"] for r in rows2 if r["study"]] == ["grid3"] * 3
    assert "Experiment(s) 1, 2, 4: no study among the studies named" in report2


def _study_with_trials(db: str, name: str, accuracies: list[float]) -> optuna.Study:
    """A study of experiment 1 named ``name``, with COMPLETE trials but no artifacts, trained (so
    their records say) on all 50,000 training images, as a study stored before hpo recorded its data."""
    from hpo.storage.open import open_storage
    from hpo.study.create import create_study

    definition = dataclasses.replace(load_definition(STUDIES / "exp1.toml"), name=name)
    study, _ = create_study(open_storage(db), definition)
    params = {k: v[0] for k, v in definition.space.items()}
    for accuracy in accuracies:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: CategoricalDistribution([v]) for k, v in params.items()},
            value=accuracy, user_attrs={"test_accuracy": accuracy, "test_loss": 1.0, "val_accuracy": accuracy,
                                        records.TRAIN_IMAGES: 50_000}))
    return study


def test_report_has_all_of_table1_with_only_one_study(storage_url: str, tmp_path: Path) -> None:
    """A storage holding one small study of experiment 1: Table 1 still has the report's 30 rows."""
    _study_with_trials(storage_url, "exp1", [0.60, 0.62])
    out = tmp_path / "out"
    ok(run_hpo("report", "--output", str(out), storage=storage_url, cwd=tmp_path))
    rows = _csv(out / "table1.csv")
    assert [int(r["experiment"]) for r in rows] == [1, 2] + [3] * 27 + [4]
    assert [r["note"] for r in rows].count("not run") == 29
    assert all(r["n"] == "0" and r["study"] == "" and r["mean_test_accuracy"] == "" for r in rows[1:])
    first = rows[0]
    assert (first["study"], first["architecture"], first["batch_size"], first["epochs"], first["n"]) == \
        ("exp1", "base", "32", "10", "2")
    assert float(first["mean_test_accuracy"]) == pytest.approx(0.61)
    assert float(first["std_test_accuracy"]) == pytest.approx(statistics.stdev([0.60, 0.62]), abs=5e-5)
    assert float(first["report_accuracy"]) == 0.6382 and first["note"] == ""

    report = (out / "report.md").read_text()
    assert report.count("| not run |") == 29
    assert "29 of the 30 rows of Table 1 not run yet" in report
    assert "Experiment 3: none of its 27 rows run yet." in report
    assert "Experiment(s) 2, 3, 4: no study in this storage" in report
    # Its two runs of one configuration, ranked by their mean in its own section.
    (configuration,) = _csv(out / "exp1_configurations.csv")
    assert configuration["n"] == "2" and float(configuration["mean_val_accuracy"]) == pytest.approx(0.61)


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
    rows = _csv(out / "table1.csv")
    assert sorted(r["study"] for r in rows if r["study"]) == sorted(hostile) and len(rows) == 29 + len(hostile)

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
    out = OutputFolder(tmp_path / "out")
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


def test_a_report_with_nothing_to_report_by_default_names_the_studies_to_give_it(tmp_path: Path) -> None:
    """A storage holding only a study of the user's own (no experiment, no search): the report
    without names would be empty; it says which studies to name instead, and writes nothing."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    created_study(db, tmp_path)
    user_error(run_hpo("report", "--output", str(tmp_path / "out"), storage=db, cwd=tmp_path),
               "no experiment, search or confirmation to report by default", "hpo report grid --output DIR")
    assert not (tmp_path / "out").exists()
