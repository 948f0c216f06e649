"""The data belongs to the study: recorded when it is created, and a worker whose data, subset or
builder differs refuses the study in one line and trains nothing."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import (BUILDER_MODULE, STUDIES, TWO_LR_GRID, ok, own_model_study, run_hpo, user_error, write_npz,
                      write_study)
from hpo.study.builder import BuilderIdentity, check_same, locate
from hpo.storage import records


def _states(storage: str, name: str) -> set[TrialState]:
    return {t.state for t in optuna.load_study(study_name=name, storage=storage).get_trials()}


def test_a_worker_with_other_data_refuses_the_study(storage_url: str, tmp_path: Path, data_path: str) -> None:
    # The case: exp1 created and run on the CIFAR archive at --subset 300, then a worker
    # given another data set. It used to train on it and rank the two side by side.
    ok(run_hpo("create", str(STUDIES / "exp1.toml"), "--subset", "300", storage=storage_url))
    other = write_npz(tmp_path / "other.npz", size=32, channels=3, classes=10, train=400, test=100)
    line = user_error(run_hpo("worker", "exp1", "--data", str(other), storage=storage_url, cwd=tmp_path),
                      "study 'exp1' trains on 300 training images of cifar10", "this worker's are 10 (shape-0")
    assert str(other) in line
    assert _states(storage_url, "exp1") == {TrialState.WAITING}


def test_a_worker_with_another_subset_refuses_the_study(storage_url: str, tmp_path: Path, data_path: str) -> None:
    study = write_study(tmp_path, "two", TWO_LR_GRID)
    ok(run_hpo("create", str(study), "--subset", "200", storage=storage_url))
    user_error(run_hpo("worker", "two", "--subset", "300", storage=storage_url, cwd=tmp_path),
               "was created on 200 training images", "--subset 300")
    user_error(run_hpo("worker", str(study), "--subset", "300", storage=storage_url, cwd=tmp_path), "--subset 300")
    assert _states(storage_url, "two") == {TrialState.WAITING}
    # Without --subset, a worker trains on the study's: the data belongs to the study.
    ok(run_hpo("worker", "two", "--max-trials", "1", storage=storage_url, cwd=tmp_path))
    done = [t for t in optuna.load_study(study_name="two", storage=storage_url).get_trials()
            if t.state == TrialState.COMPLETE]
    assert [t.user_attrs["train_images"] for t in done] == [200]


def test_a_study_file_may_name_its_subset(tmp_path: Path, data_path: str) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "small", TWO_LR_GRID.replace("[data]", "[data]\nsubset = 150"))
    ok(run_hpo("create", str(study), storage=db))
    assert records.record_of(optuna.load_study(study_name="small", storage=db))[records.DATA_IDENTITY]["subset"] == 150
    user_error(run_hpo("create", str(study), "--subset", "300", storage=db), "data.subset = 150", "--subset 300")


def test_data_changed_under_a_study_is_refused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study_file = own_model_study(tmp_path, trials=2)
    ok(run_hpo("create", str(study_file), storage=db))
    write_npz(tmp_path / "shapes.npz", seed=1)  # the same shapes and classes, other images
    for worker in (str(study_file), "own"):
        user_error(run_hpo("worker", worker, storage=db, cwd=tmp_path), "images or labels are not the study's")
    write_npz(tmp_path / "shapes.npz", classes=3)
    user_error(run_hpo("worker", "own", storage=db, cwd=tmp_path), "the study's classes are 4", "this worker's are 3")
    assert _states(db, "own") == {TrialState.WAITING}


def test_another_version_of_the_builder_is_refused(storage_url: str, tmp_path: Path) -> None:
    study_file = own_model_study(tmp_path, trials=2)
    ok(run_hpo("create", str(study_file), storage=storage_url))
    module = tmp_path / "my_models.py"
    module.write_text(module.read_text().replace("relu", "tanh"), encoding="utf-8")
    for worker in (str(study_file), "own"):
        user_error(run_hpo("worker", worker, storage=storage_url, cwd=tmp_path),
                   "is not the my_models.py the study was created with", "new study")
    assert _states(storage_url, "own") == {TrialState.WAITING}


HELPED_BUILDER = BUILDER_MODULE.replace("import keras\n", "import keras\nimport blocks\n").replace(
    'activation="relu")(x)\n    return', 'activation=blocks.ACTIVATION)(x)\n    return')


def _write_helpers(folder: Path) -> None:
    """my_models.py imports blocks.py beside it, which imports parts/activation.py."""
    (folder / "blocks.py").write_text("from parts.activation import ACTIVATION\n", encoding="utf-8")
    (folder / "parts").mkdir()
    (folder / "parts" / "__init__.py").write_text("", encoding="utf-8")
    (folder / "parts" / "activation.py").write_text('ACTIVATION = "relu"\n', encoding="utf-8")


def test_a_builder_records_the_modules_of_its_own_it_imports(tmp_path: Path) -> None:
    own_model_study(tmp_path, module=HELPED_BUILDER)
    _write_helpers(tmp_path)
    identity = locate("my_models:build", tmp_path)
    assert sorted(identity.imports or {}) == ["blocks.py", "parts/__init__.py", "parts/activation.py"]
    # Relative imports inside a package of the user's own, and installed packages left out.
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "zoo" / "models.py").write_text("import numpy\nfrom .heads import head\nfrom . import necks\n",
                                               encoding="utf-8")
    (tmp_path / "zoo" / "heads.py").write_text("def head(): pass\n", encoding="utf-8")
    (tmp_path / "zoo" / "necks.py").write_text("from ..parts import activation\n", encoding="utf-8")
    assert sorted(locate("zoo.models:build", tmp_path).imports or {}) == ["zoo/__init__.py", "zoo/heads.py",
                                                                          "zoo/necks.py"]
    # A study created before the imports were recorded is checked on the builder's own file.
    before = {key: value for key, value in identity.to_dict().items() if key != "imports"}
    check_same(BuilderIdentity.from_dict(before), identity, "own")


def test_another_version_of_a_module_the_builder_imports_is_refused(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study_file = own_model_study(tmp_path, trials=2, module=HELPED_BUILDER)
    _write_helpers(tmp_path)
    ok(run_hpo("create", str(study_file), storage=storage))
    (tmp_path / "parts" / "activation.py").write_text('ACTIVATION = "tanh"\n', encoding="utf-8")
    for worker in (str(study_file), "own"):
        user_error(run_hpo("worker", worker, storage=storage, cwd=tmp_path),
                   "parts/activation.py is not the parts/activation.py the study was created with", "new study")
    (tmp_path / "parts" / "activation.py").write_text('ACTIVATION = "relu"\n', encoding="utf-8")
    (tmp_path / "blocks.py").unlink()
    user_error(run_hpo("worker", "own", storage=storage, cwd=tmp_path),
               "blocks.py, which my_models.py imports, is missing beside it")
    assert _states(storage, "own") == {TrialState.WAITING}


def test_a_local_copy_must_be_the_data_set_it_stands_for(tmp_path: Path) -> None:
    digits = write_npz(tmp_path / "digits.npz", size=8, classes=10)
    user_error(run_hpo("create", str(STUDIES / "exp1.toml"), "--data", str(digits),
                       storage=f"sqlite:///{tmp_path / 'hpo.db'}"),
               "holds 8x8x1 images in 10 classes", "names cifar10 (32x32x3, 10 classes)")


def test_a_named_data_set_that_cannot_download_is_one_line(tmp_path: Path) -> None:
    study = write_study(tmp_path, "fashion", TWO_LR_GRID.replace("[data]", '[data]\nsource = "fashion_mnist"'))
    user_error(run_hpo("create", str(study), storage=f"sqlite:///{tmp_path / 'hpo.db'}", env={"HPO_DATA": ""}),
               "fashion_mnist", "--data")


@pytest.mark.parametrize(("case", "make", "message"), [
    ("mixed sizes", "mixed", "the others are"),
    ("labels out of range", "labels", "out of range"),
    ("an empty class", "empty", "no training images"),
])
def test_inconsistent_data_is_refused_when_the_study_is_created(case: str, make: str, message: str,
                                                                  tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    study_file = own_model_study(tmp_path, trials=1)
    if make == "mixed":
        folder = tmp_path / "shapes"
        for split in ("train", "test"):
            for label in ("a", "b"):
                (folder / split / label).mkdir(parents=True)
                for i, size in enumerate((12, 12, 10 if split == "train" and label == "b" else 12)):
                    Image.fromarray(np.full((size, size), 40 * i, np.uint8)).save(folder / split / label / f"{i}.png")
        study_file.write_text(study_file.read_text().replace('"shapes.npz"', '"shapes"'))
    else:
        with np.load(tmp_path / "shapes.npz") as npz:
            arrays = dict(npz)
        if make == "labels":
            arrays["y_train"][0] = 7
        else:
            keep = arrays["y_train"] != 2
            arrays["x_train"], arrays["y_train"] = arrays["x_train"][keep], arrays["y_train"][keep]
        np.savez(tmp_path / "shapes.npz", **arrays)
    db = tmp_path / "hpo.db"
    user_error(run_hpo("create", str(study_file), storage=f"sqlite:///{db}"), message)
    assert not db.exists() or optuna.get_all_study_summaries(f"sqlite:///{db}") == []
