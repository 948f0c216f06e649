"""hpo from Python, as a script's or a notebook's user runs it: ``hpo.tune`` with a builder of
``__main__`` and arrays in memory, ``hpo.results``, an interrupt, bad input. Each script runs
in a subprocess of its own, as ``python script.py`` does, on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import BUILDER_MODULE, OWN_MODEL_STUDY, ok, run_hpo, wait_for, write_npz, write_study

# What every script starts with: a builder defined in __main__ (BUILDER_MODULE's, by exec, so the
# CLI test below can give the very same code as a module) and the shapes data set, in memory.
HEAD = f'''
import json, sys
import numpy as np
import hpo

exec({BUILDER_MODULE!r})  # defines build() in __main__

shapes = np.load("shapes.npz")
train, test = (shapes["x_train"], shapes["y_train"]), (shapes["x_test"], shapes["y_test"])
storage = sys.argv[1]
SPACE = {{"learning_rate": hpo.Range(0.003, 0.03, log=True), "batch_size": [16, 32],
         "epochs": hpo.Range(1, 2), "family": ["mlp", "cnn"],
         "mlp": {{"units": [16, 32, 64]}}, "cnn": {{"filters": [4, 8]}}}}
'''


def run_script(folder: Path, body: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    (folder / "script.py").write_text(HEAD + body, encoding="utf-8")
    return subprocess.run([sys.executable, "script.py", *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout)


def last_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_npz(tmp_path / "shapes.npz")
    return tmp_path


def test_a_builder_of_main_tunes_arrays_in_memory_with_two_workers(folder: Path, storage_url: str) -> None:
    result = run_script(folder, '''
result = hpo.tune(build, train, test_data=test, space=SPACE, trials=4, workers=2, storage=storage,
                  name="shapes", sampler="tpe", seed=3)
table = result.table()
again = hpo.results("shapes", storage=storage)
print(json.dumps({"rows": json.loads(table.to_json(orient="records")), "best": result.best_params,
                  "best_value": result.best_value, "again": len(again.table()), "repr": repr(result)}))
''', storage_url)
    ok(result)
    out = last_json(result)
    rows = out["rows"]
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]
    assert {row["state"] for row in rows} == {"COMPLETE"}
    values = [row["val_accuracy"] for row in rows]
    assert values == sorted(values, reverse=True)
    assert out["best_value"] == values[0] and out["again"] == 4
    assert out["best"]["family"] in ("mlp", "cnn") and "learning_rate" in out["best"]
    assert "4 of 4 trials complete" in out["repr"]

    # What the study recorded: the builder's pickle and its hash, the arrays as its data file.
    import optuna

    from hpo.storage import records

    study = optuna.load_study(study_name="shapes", storage=storage_url)
    builder = records.record_of(study)[records.BUILDER]
    assert builder["builder"] == "__main__:build" and builder["pickled"] and len(builder["sha256"]) == 64
    data = records.record_of(study)[records.DATA_IDENTITY]
    assert Path(data["location"]).parent.name == "data" and data["location"].endswith(".npz")
    assert Path(data["location"]).is_file()
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4  # each trial once: no retry, no duplicate
    # The CLI reads the same study: its export is the API's table.
    export = run_hpo("export", "shapes", "--format", "json", storage=storage_url, cwd=folder)
    ok(export)
    assert [r["trial"] for r in json.loads(export.stdout)] == [r["trial"] for r in rows]


REGRESSION = '''
import keras


def regressor(params, input_shape, num_classes):
    assert num_classes is None, num_classes  # float targets: no classes
    model = keras.Sequential([keras.Input(shape=input_shape),
                              keras.layers.Dense(params["units"], activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="huber", metrics=["mae"])  # its own loss and metric, kept
    return model


rng = np.random.default_rng(0)
x = rng.normal(size=(200, 5)).astype("float32")
y = (x @ rng.normal(size=5) + 0.1 * rng.normal(size=200)).astype("float32")
result = hpo.tune(regressor, (x[:160], y[:160]), test_data=(x[160:], y[160:]), storage=storage, name="regression",
                  space={"learning_rate": hpo.Range(0.003, 0.05, log=True), "batch_size": 16, "epochs": 3,
                         "units": [8, 32]}, trials=3, workers=2, metric="val_mae", seed=2)
table = result.table()
print(json.dumps({"rows": json.loads(table.to_json(orient="records")), "best_value": result.best_value}))
'''


def test_a_regression_with_its_own_loss_is_tuned_on_val_mae_and_ranked_ascending(folder: Path,
                                                                                  storage_url: str) -> None:
    result = run_script(folder, REGRESSION, storage_url)
    ok(result)
    rows = last_json(result)["rows"]
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3
    maes = [row["val_mae"] for row in rows]
    assert maes == sorted(maes) and last_json(result)["best_value"] == maes[0]  # the smallest error first
    assert {"test_mae", "val_loss", "test_loss"} <= set(rows[0]) and "val_accuracy" not in rows[0]

    import optuna

    study = optuna.load_study(study_name="regression", storage=storage_url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # known from the metric's name
    best = study.best_trial
    assert best.user_attrs["test_loss"] != best.user_attrs["test_mae"]  # Huber, not hpo's cross-entropy
    from hpo.storage import records

    assert records.record_of(study)[records.DATA_IDENTITY]["kind"] == "arrays"  # checked by every worker


def _workers_of(name: str) -> list[int]:
    """Processes running ``hpo worker`` on study ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and name.encode() in argv and b"hpo" in argv:
            found.append(int(entry.name))
    return found


def test_an_interrupt_during_tune_raises_keyboard_interrupt_in_the_caller(folder: Path, storage_url: str) -> None:
    script = folder / "script.py"
    script.write_text(HEAD + '''
try:
    hpo.tune(build, train, test_data=test, space={**SPACE, "epochs": 40}, trials=6, workers=2, storage=storage,
             name="stopped")
except KeyboardInterrupt:
    print("caught KeyboardInterrupt", flush=True)
print("the caller goes on", flush=True)
''', encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "script.py", storage_url], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        logs = folder / "hpo-logs" / "stopped"

        def training() -> bool:
            return any("trial" in p.read_text(errors="replace") and "(seed" in p.read_text(errors="replace")
                       for p in logs.glob("worker-*.log")) if logs.is_dir() else False

        wait_for(training, 180, "a worker to start a trial")
        assert len(_workers_of("stopped")) == 2
        proc.send_signal(signal.SIGINT)  # Ctrl-C, or a notebook's "interrupt kernel"
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert out.splitlines()[-2:] == ["caught KeyboardInterrupt", "the caller goes on"]
    assert "Traceback" not in err
    assert _workers_of("stopped") == []

    import optuna

    study = optuna.load_study(study_name="stopped", storage=storage_url)
    states = {t.state.name for t in study.get_trials(deepcopy=False)}
    assert "RUNNING" not in states and "FAIL" in states  # stopped trials failed as retryable


def test_bad_input_raises_an_hpo_error_naming_it_and_writes_nothing(folder: Path, storage_url: str) -> None:
    result = run_script(folder, '''
def raises(params, input_shape, num_classes):
    raise ValueError("no such layer")

cases = {
    "unknown parameter": dict(build=build, space={**SPACE, "dropout": [0.1, 0.2]}),
    "bad range": dict(build=build, space={**SPACE, "learning_rate": hpo.Range(0.1, 0.001)}),
    "mismatched arrays": dict(build=build, space=SPACE, train=(train[0], train[1][:-1])),
    "builder raises": dict(build=raises, space=SPACE),
}
seen = {}
for case, given in cases.items():
    try:
        hpo.tune(given["build"], given.get("train", train), test_data=test, space=given["space"], trials=2,
                 workers=1, storage=storage, name="bad")
    except hpo.HpoError as e:
        seen[case] = [type(e).__name__, str(e)]
print(json.dumps(seen))
''', storage_url)
    ok(result)
    seen = last_json(result)
    assert seen["unknown parameter"][0] == "ConfigError" and "params['dropout']" in seen["unknown parameter"][1]
    assert seen["bad range"][0] == "ConfigError" and "space.learning_rate" in seen["bad range"][1]
    assert seen["mismatched arrays"] == ["DataError", "train_data: x has 160 rows but y has 159: one label per "
                                                       "example"]
    assert seen["builder raises"][0] == "ConfigError"
    assert "raised ValueError: no such layer" in seen["builder raises"][1]
    # Nothing written: no study, no database file, no data file.
    assert not list(folder.glob("*.db")) and not (folder / "hpo-artifacts").exists()
    if storage_url.startswith("postgresql"):
        import optuna

        from hpo.storage.open import StorageEmpty, open_storage

        with contextlib.suppress(StorageEmpty):  # not even the schema
            assert optuna.get_all_study_summaries(open_storage(storage_url, create=False)) == []


def test_the_python_space_gives_the_stored_definition_of_the_study_file(tmp_path: Path) -> None:
    import hpo
    from hpo.api import space
    from hpo.study.files import load_definition

    body = OWN_MODEL_STUDY.format(trials=4).replace('source = "shapes.npz"', 'source = "data.npz"')
    from_file = load_definition(write_study(tmp_path, "same", body))
    from_python = space.definition(
        name="same", builder="my_models:build", source="data.npz", trials=4, max_retries=1, sampler="tpe", seed=3,
        metric="val_accuracy", direction=None, pruner="none", protocol="validation_split", validation_split=0.2,
        subset=None, repeats=1, description="",
        space={"learning_rate": hpo.Range(0.003, 0.03, log=True), "batch_size": [16, 32], "epochs": hpo.Range(1, 2),
               "family": ("mlp", "cnn"), "mlp": {"units": [16, 32, 64]}, "cnn": {"filters": range(4, 9, 4)}})
    assert from_python.to_dict() == from_file.to_dict()


def test_a_study_run_through_the_cli_and_through_tune_gives_identical_trials(folder: Path) -> None:
    """The same builder code, data, space and seeds: the CLI (a module and an .npz) and hpo.tune
    (the code in __main__, pickled; the arrays in memory) train the same trials to the same numbers."""
    (folder / "my_models.py").write_text(BUILDER_MODULE, encoding="utf-8")
    write_study(folder, "same", OWN_MODEL_STUDY.format(trials=3))
    ok(run_hpo("launch", "same.toml", "-n", "1", "--threads", "1", storage="sqlite:///cli.db", cwd=folder))
    ok(run_script(folder, '''
hpo.tune(build, train, test_data=test, space=SPACE, trials=3, workers=1, threads=1, storage=storage, name="same",
         sampler="tpe", seed=3, max_retries=1)
''', "sqlite:///api.db"))
    import optuna

    def trials(db: str) -> list[tuple[Any, ...]]:
        study = optuna.load_study(study_name="same", storage=f"sqlite:///{folder / db}")
        return [(t.number, t.params, t.value, t.user_attrs["test_loss"], t.user_attrs["test_accuracy"])
                for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]

    cli, api = trials("cli.db"), trials("api.db")
    assert len(cli) == 3 and cli == api


def test_launch_and_results_run_a_study_file_from_python(folder: Path, storage_url: str) -> None:
    (folder / "my_models.py").write_text(BUILDER_MODULE, encoding="utf-8")
    write_study(folder, "own", OWN_MODEL_STUDY.format(trials=2))
    result = run_script(folder, '''
found = hpo.launch("own.toml", workers=1, storage=storage)
print(json.dumps({"rows": len(found.table()), "status": found.status()["points"], "best": found.best_params}))
''', storage_url)
    ok(result)
    out = last_json(result)
    assert out["rows"] == 2 and out["status"]["complete"] == 2 and out["best"]


def test_results_of_a_study_that_does_not_exist_is_an_hpo_error(tmp_path: Path) -> None:
    import hpo

    with pytest.raises(hpo.StudyNotFound):
        hpo.results("nothing", storage=f"sqlite:///{tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()


def test_create_records_the_data_and_the_builder_as_hpo_create_does(folder: Path, storage_url: str) -> None:
    (folder / "my_models.py").write_text(BUILDER_MODULE, encoding="utf-8")
    write_study(folder, "own", OWN_MODEL_STUDY.format(trials=2))
    result = run_script(folder, '''
created = hpo.create("own.toml", storage=storage)
attrs = created.study.user_attrs  # what the dashboard shows beside the study
print(json.dumps({"status": created.status()["points"], "data": attrs["data set"],
                  "builder": attrs["model"]}))
''', storage_url)
    ok(result)
    out = last_json(result)
    assert out == {**out, "status": {**out["status"], "pending": 2, "total": 2}}
    assert "shapes.npz" in out["data"] and out["builder"].startswith("my_models:build (")


def _double(params: dict[str, Any], input_shape: Any, num_classes: int) -> Any:
    return params["units"] * 2


def test_a_pickled_builder_changed_in_the_database_is_refused_not_run() -> None:
    import base64
    import dataclasses

    import hpo
    from hpo.study import pickled
    from hpo.study.builder import BuilderIdentity, load_builder

    text, sha256 = pickled.encode(pickled.dumps(_double))
    identity = BuilderIdentity("test_api:_double", "", sha256, None, text, pickled.PYTHON)
    assert load_builder(identity).function({"units": 3}, (1,), 2) == 6
    tampered = base64.b64encode(base64.b64decode(text) + b".").decode()
    with pytest.raises(hpo.ConfigError, match="does not match its recorded sha256"):
        load_builder(dataclasses.replace(identity, pickled=tampered))
    with pytest.raises(hpo.ConfigError, match="damaged"):
        load_builder(dataclasses.replace(identity, pickled="not base64 !"))
    with pytest.raises(hpo.ConfigError, match="pickled under Python 2.7"):
        load_builder(dataclasses.replace(identity, python="2.7"))


def test_a_builder_that_captures_a_large_array_is_refused_with_the_reason() -> None:
    import numpy as np

    import hpo
    from hpo.study.builder import BuilderIdentity

    big = np.zeros(20 << 20, dtype=np.uint8)  # 20 MiB the function refers to

    def build(params: dict[str, Any], input_shape: Any, num_classes: int) -> Any:
        return big

    with pytest.raises(hpo.ConfigError, match="pickles to 20.0 MiB"):
        BuilderIdentity.of_function(build)
