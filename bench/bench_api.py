"""The report's exp1 through the CLI and through ``hpo.tune``: identical trials, and each one's
start-up cost (from the call to the first epoch's value in the database).

    HPO_DATA=../shared/datasets/cifar10-jpeg.tar.gz python bench/bench_api.py --subset 300 --out /tmp/bench-api

The CLI runs ``hpo launch studies/exp1.toml -n 1 --threads 1 --subset N``. The API gets the same
study in Python: CIFAR-10's decoded arrays in memory (the order the archive holds them, so the
subset drawn from them is the CLI's), a builder of ``__main__`` giving the report's base model
(hpo puts the rescaling in front of a builder's model, as it does of its own), Adam at 0.001,
batch 32, 10 epochs, the fixed sampler with exp1's seed, validated on the test set. Each side
runs twice: first on a new database (the API writes its arrays and the worker decodes them once),
then again with the study deleted (data decoded and cached already).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def build(params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The report's base model, as a user would give it (without the rescaling hpo puts in front)."""
    import keras

    from hpo.training.models import report_layers

    return keras.Sequential([keras.Input(shape=input_shape), *report_layers("base", {}, num_classes)])


def first_epoch_after(storage: str, name: str, started: float, stop: threading.Event) -> list[float]:
    """Seconds from ``started`` until study ``name`` has its first epoch's value (polled every 0.1 s)."""
    import optuna

    found: list[float] = []
    while not stop.is_set() and not found:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
                found.append(time.perf_counter() - started)
        except Exception:  # noqa: BLE001  (no such study yet: keep polling)
            pass
        time.sleep(0.1)
    return found


def watched(storage: str, name: str, run: Any) -> tuple[float, float]:
    """(seconds to the first epoch, seconds in all) of ``run()``."""
    stop = threading.Event()
    started = time.perf_counter()
    result: list[float] = []
    watcher = threading.Thread(target=lambda: result.extend(first_epoch_after(storage, name, started, stop)))
    watcher.start()
    run()
    total = time.perf_counter() - started
    stop.set()
    watcher.join()
    return (result[0] if result else float("nan")), total


def trials(storage: str, name: str) -> list[tuple[Any, ...]]:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return [(t.number, t.system_attrs.get("seed"), t.user_attrs.get("seed"), t.value, t.user_attrs["test_loss"],
             t.user_attrs["test_accuracy"]) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subset", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-api"))
    args = parser.parse_args()
    describe_machine("start")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    os.chdir(args.out)
    import optuna

    import hpo
    from hpo.training.decode import decode

    decoded = decode(Path(os.environ["HPO_DATA"]))
    cli_db, api_db = f"sqlite:///{args.out / 'cli.db'}", f"sqlite:///{args.out / 'api.db'}"
    timings: dict[str, list[tuple[float, float]]] = {"cli": [], "api": []}
    command = [sys.executable, "-m", "hpo", "--storage", cli_db, "launch", str(ROOT / "studies" / "exp1.toml"),
               "-n", "1", "--threads", "1", "--subset", str(args.subset)]
    for attempt in (1, 2):
        for db in (cli_db, api_db):
            if attempt == 2:
                optuna.delete_study(study_name="exp1", storage=db)
        timings["cli"].append(watched(cli_db, "exp1", lambda: subprocess.run(command, check=True,
                                                                             capture_output=True)))
        timings["api"].append(watched(api_db, "exp1", lambda: hpo.tune(
            build, (decoded.x_train, decoded.y_train), test_data=(decoded.x_test, decoded.y_test),
            class_names=decoded.class_names, space={"augmentation": "none", "learning_rate": 0.001,
                                                    "batch_size": 32, "epochs": 10},
            sampler="fixed", seed=1, trials=3, protocol="test", subset=args.subset, workers=1, threads=1,
            storage=api_db, name="exp1", progress=False)))
        cli, api = trials(cli_db, "exp1"), trials(api_db, "exp1")
        same = [a[3:] == b[3:] for a, b in zip(cli, api, strict=True)]
        print(f"run {attempt}: {sum(same)}/{len(same)} trials identical (value, test loss, test accuracy)")
        for a, b in zip(cli, api, strict=True):
            print(f"  trial {a[0]}: cli val {a[3]:.6f} loss {a[4]:.6f} acc {a[5]:.4f} | "
                  f"api val {b[3]:.6f} loss {b[4]:.6f} acc {b[5]:.4f}")
    print("start-up: seconds from the call to the first epoch's value in the database (then the whole run)")
    for side, label in (("cli", "hpo launch"), ("api", "hpo.tune")):
        for attempt, (first, total) in enumerate(timings[side], 1):
            print(f"  {label:10s} run {attempt}: first epoch after {first:6.2f} s, done after {total:6.2f} s")
    for attempt in (0, 1):
        ratio = timings["api"][attempt][0] / timings["cli"][attempt][0]
        print(f"  run {attempt + 1}: hpo.tune / hpo launch, time to the first epoch: {ratio:.2f}x")
    describe_machine("end")


if __name__ == "__main__":
    main()
