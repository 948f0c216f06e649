"""Benchmark (a): one ``hpo worker`` trial against the report's plain Keras script.

Both sides train the base model (Conv2D 32, MaxPool, Flatten, Dense 128, Dense 10) with Adam
0.001, sparse cross-entropy, batch 32, on the same ``--subset`` training images, validated on
the same test images, for ``--epochs`` epochs:

- plain: the report's script. ``Sequential`` with ``input_shape``, the images normalised
  ``x / 255.0`` up front (float64 NumPy, as the TensorFlow CIFAR-10 tutorial does),
  ``model.fit(..., validation_data=(x_test, y_test))``, then ``model.evaluate``.
- hpo: the real ``hpo worker STUDY --max-trials 1`` command (hpo.cli, run in-process) on a
  fresh SQLite study holding one trial of an exp1-like definition: storage, heartbeats,
  ``load_dataset``, ``run_trial`` with the worker loop's report of every epoch (a database write
  per epoch), test-set predict/evaluate, and the artifacts (plots, ``.keras`` model, metrics JSON).

Each run is a fresh subprocess, and the two sides alternate (plain, hpo, hpo, plain, ...):
start-up costs (interpreter, imports, TensorFlow's first graph trace) exist only in a fresh
process, a second fit in one process would reuse warmed allocators and thread pools and favour
whichever runs second, and alternating the order cancels a drifting machine load.

Timing: the plain side's callback records the start of every epoch and the end of training, so
an epoch's time includes validation. hpo's side marks the moments its objective resumes (it
trains an epoch per step): after the run begins and after each epoch's report to the database,
so an hpo epoch holds its database write too. The first epoch holds the graph trace; "per epoch"
is the mean of epochs 2..E, and "first-epoch extra" is epoch 1 minus that. hpo's side is
instrumented by wrapping ``hpo.training.data.load_dataset``, ``hpo.training.objective.run_trial`` and
``TrialArtifacts.save`` in the child; the wrapped functions themselves run unchanged.

    python bench/bench_overhead.py --subset 10000 --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clock import Marks, epoch_clock, steady  # bench/ is on sys.path when run as a script
from machine import describe_machine
from report_code import base_model
from subproc import emit, read_result

ROOT = Path(__file__).resolve().parents[1]

STUDY_TOML = """\
# Written by bench/bench_overhead.py: experiment 1's trial with the benchmark's epoch count.
[study]
name = "overhead"
description = "bench_overhead: base model, Adam 0.001, batch 32, validated on the test set."
metric = "val_accuracy"
direction = "maximize"
trials = 1
max_retries = 0

[sampler]
type = "fixed"
seed = 1

[data]
protocol = "test"

[space]
architecture = "base"
augmentation = "none"
learning_rate = 0.001
batch_size = 32
epochs = {epochs}
"""


# --- children: one training run each, reporting a JSON line ------------------------------------


def child_plain(args: argparse.Namespace) -> dict[str, Any]:
    t0 = args.t0
    import keras  # noqa: F401  (imported here so that start-up time includes it)

    from hpo.training.data import load_dataset  # the same arrays as hpo's side; the report used load_data()

    imported = time.time()
    data = load_dataset(args.data, subset=args.subset)
    x_train, x_test = data.x_train / 255.0, data.x_test / 255.0
    y_train, y_test = data.y_train, data.y_test
    loaded = time.time()

    model = base_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    built = time.time()

    marks = Marks()
    clock = epoch_clock(marks)
    fit_started = time.time()
    model.fit(x_train, y_train, epochs=args.epochs, validation_data=(x_test, y_test),
              callbacks=[clock], verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    done = time.time()
    return {
        "start_imports": imported - t0,
        "data_load": loaded - imported,
        "build_compile": built - loaded,
        "fit_setup": marks.wall[0] - fit_started,
        **marks.summary(),
        "after_fit": done - marks.wall[-1],  # fit's tear-down, then evaluate
        "test_accuracy": float(accuracy),
        "done": done - t0,
    }


def child_hpo(args: argparse.Namespace) -> dict[str, Any]:
    t0 = args.t0
    marks: dict[str, float] = {}
    from hpo.workers import device

    device.apply(None)  # what `hpo worker` does first (no --threads given)
    import keras  # noqa: F401  (imported for its start-up cost, which this phase measures)

    import hpo.training.artifacts  # the worker's artifact hook; imports matplotlib
    import hpo.training.data
    import hpo.training.objective
    import hpo.training.events
    import hpo.workers.inputs
    import hpo.workers.loop
    from hpo.cli import main

    marks["imported"] = time.time()

    load_dataset = hpo.training.data.load_dataset
    run_trial = hpo.training.objective.run_trial

    def timed_load(*a: Any, **kw: Any) -> Any:
        marks["load_start"] = time.time()
        data = load_dataset(*a, **kw)
        marks["load_end"] = time.time()
        return data

    epochs = Marks()

    def timed_run_trial(run: Any, *a: Any, **kw: Any) -> Iterator[Any]:
        """The objective, unchanged; the epoch marks fall where the worker loop hands control
        back to it: after the run begins, and after each epoch's report to the database."""
        marks["trial_start"] = time.time()
        marks["trial_id"] = run.trial._trial_id
        for event in run_trial(run, *a, **kw):
            yield event
            if isinstance(event, (hpo.training.events.Begun, hpo.training.events.EpochEnd)):
                epochs.mark()
        marks["trial_end"] = time.time()

    save = hpo.training.artifacts.TrialArtifacts.save

    def timed_save(self: Any, *a: Any, **kw: Any) -> dict[str, str]:
        started = time.time()
        links = save(self, *a, **kw)
        marks["artifacts"] = time.time() - started
        return links

    hpo.training.artifacts.TrialArtifacts.save = timed_save  # type: ignore[method-assign]
    hpo.workers.inputs.load_dataset = timed_load  # the name `hpo worker` calls it by (through its Loader)
    hpo.training.objective.run_trial = timed_run_trial

    argv = ["--storage", args.storage, "worker", "overhead", "--subset", str(args.subset),
            "--artifacts", args.artifacts, "--max-trials", "1"]
    if args.data:
        argv += ["--data", args.data]
    main(argv, standalone_mode=False)
    done = time.time()

    from hpo.storage.open import open_storage

    trial = open_storage(args.storage).get_trial(int(marks["trial_id"]))
    if trial.state.name != "COMPLETE":
        raise SystemExit(f"the hpo trial ended {trial.state.name}: {trial.user_attrs.get('error')}")
    build = float(trial.user_attrs["build_seconds"])
    fit = float(trial.user_attrs["fit_seconds"])
    return {
        "start_imports": marks["imported"] - t0,
        "storage_study": marks["load_start"] - marks["imported"],
        "data_load": marks["load_end"] - marks["load_start"],
        "claim_describe": marks["trial_start"] - marks["load_end"],
        "build_compile": build,
        "fit_setup": epochs.wall[0] - marks["trial_start"],  # suggest, what it runs with (build: in epoch 1)
        **epochs.summary(),
        # predict, confusion matrix, the result recorded in one transaction; the artifacts apart
        "after_fit": marks["trial_end"] - epochs.wall[-1] - marks["artifacts"],
        "artifacts": marks["artifacts"],
        "worker_exit": done - marks["trial_end"],  # the loop finds the queue empty
        "fit_seconds_recorded": fit,
        "test_accuracy": trial.user_attrs.get("test_accuracy"),
        "done": done - t0,
    }


# --- the parent: alternate the two sides, then summarise ---------------------------------------


def create_study(folder: Path, epochs: int) -> str:
    import warnings

    import optuna

    from hpo.study.files import load_definition
    from hpo.storage.open import open_storage
    from hpo.study.create import create_study as create

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study_file = folder / "overhead.toml"
    study_file.write_text(STUDY_TOML.format(epochs=epochs), encoding="utf-8")
    url = f"sqlite:///{folder / 'hpo.db'}"
    create(open_storage(url), load_definition(study_file))
    return url


def run_child(side: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side,
               "--subset", str(args.subset), "--epochs", str(args.epochs)]
    if args.data:
        command += ["--data", args.data]
    if side == "hpo":
        command += ["--storage", create_study(folder, args.epochs),
                    "--artifacts", str(folder / "artifacts")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    proc = subprocess.run([*command, "--t0", repr(t0)], capture_output=True, text=True, env=env,
                          cwd=folder)
    wall = time.time() - t0
    result = read_result(proc, f"{side} run")
    result["process_wall"] = wall
    result["process_exit"] = wall - result["done"]
    return result


Runs = dict[str, list[dict[str, Any]]]  # "plain" / "hpo" -> one result per repeat

PHASES = (  # (label, result key, how often a worker pays it)
    ("process start + imports", "start_imports", "per worker"),
    ("storage + study load", "storage_study", "per worker"),
    ("data load (+ /255 for plain)", "data_load", "per worker"),
    ("describe device, artifact store, claim trial", "claim_describe", "per worker"),
    ("model build + compile", "build_compile", "per trial"),
    ("fit set-up (before epoch 1)", "fit_setup", "per trial"),
    ("first-epoch extra (trace)", "first_epoch_extra", "per trial"),
    ("after fit (evaluate; hpo: predict + evaluate)", "after_fit", "per trial"),
    ("artifacts (plots, .keras model, JSON)", "artifacts", "per trial"),
    ("worker loop exit", "worker_exit", "per worker"),
    ("interpreter exit", "process_exit", "per worker"),
)


def summarise(runs: Runs) -> None:
    for side in ("plain", "hpo"):
        for r in runs[side]:
            r["per_epoch"] = steady(r["epochs"])
            r["cpu_per_epoch"] = steady(r["cpu_epochs"])
            r["first_epoch_extra"] = r["epochs"][0] - r["per_epoch"]
    print_runs(runs)
    print_per_epoch(runs)
    print_fixed_costs(runs)


def print_runs(runs: Runs) -> None:
    print("\nper run (seconds):")
    for side in ("plain", "hpo"):
        for i, r in enumerate(runs[side]):
            epochs = " ".join(f"{e:.2f}" for e in r["epochs"])
            cpu = " ".join(f"{e:.2f}" for e in r["cpu_epochs"])
            others = " ".join(f"{e:.2f}" for e in r["others_cores"])
            print(f"  {side:5s} #{i}: epochs [{epochs}] per-epoch {r['per_epoch']:.3f}; cpu [{cpu}]; "
                  f"other processes' cores [{others}]; process {r['process_wall']:.1f}; "
                  f"test acc {r['test_accuracy']:.4f}")


def print_per_epoch(runs: Runs) -> None:
    ratios = [h["per_epoch"] / p["per_epoch"] for p, h in zip(runs["plain"], runs["hpo"], strict=True)]
    med = {side: statistics.median(r["per_epoch"] for r in runs[side]) for side in runs}
    print("\nper epoch, epochs 2..E (median over repeats):")
    print(f"  plain {med['plain']:.3f} s   hpo {med['hpo']:.3f} s")
    print(f"  ratio hpo/plain: median of paired ratios {statistics.median(ratios):.3f} "
          f"(each: {', '.join(f'{x:.3f}' for x in ratios)}); ratio of medians "
          f"{med['hpo'] / med['plain']:.3f}; target <= 1.03")
    cpu_ratios = [h["cpu_per_epoch"] / p["cpu_per_epoch"] for p, h in zip(runs["plain"], runs["hpo"], strict=True)]
    cpu = {side: statistics.median(r["cpu_per_epoch"] for r in runs[side]) for side in runs}
    print(f"  process CPU time per epoch (all threads; less disturbed by other jobs): plain "
          f"{cpu['plain']:.3f} s, hpo {cpu['hpo']:.3f} s, median of paired ratios "
          f"{statistics.median(cpu_ratios):.3f} (each: {', '.join(f'{x:.3f}' for x in cpu_ratios)})")
    others = {side: statistics.median(x for r in runs[side] for x in r["others_cores"][1:]) for side in runs}
    print(f"  other processes on the machine used a median {others['plain']:.2f} cores during plain's "
          f"epochs 2..E and {others['hpo']:.2f} during hpo's")


def print_fixed_costs(runs: Runs) -> None:
    print("\nfixed costs (median seconds):")
    print(f"  {'phase':48s} {'plain':>8s} {'hpo':>8s}  kind")
    for label, key, kind in PHASES:
        cells = []
        for side in ("plain", "hpo"):
            values = [r[key] for r in runs[side] if key in r]
            cells.append(f"{statistics.median(values):8.2f}" if values else f"{'-':>8s}")
        print(f"  {label:48s} {cells[0]} {cells[1]}  {kind}")
    for side in ("plain", "hpo"):
        per_trial = [sum(r.get(k, 0.0) for _, k, kind in PHASES if kind == "per trial") for r in runs[side]]
        per_worker = [sum(r.get(k, 0.0) for _, k, kind in PHASES if kind == "per worker") for r in runs[side]]
        print(f"  {side}: fixed per trial {statistics.median(per_trial):.2f} s, "
              f"once per worker {statistics.median(per_worker):.2f} s, "
              f"whole process {statistics.median(r['process_wall'] for r in runs[side]):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=10000, help="training images (test: N/5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternated")
    parser.add_argument("--data", default=os.environ.get("HPO_DATA"), help="[env HPO_DATA]")
    parser.add_argument("--child", choices=("plain", "hpo"), help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child_plain(args) if args.child == "plain" else child_hpo(args)
        emit(result)
        return

    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 holds the graph trace")
    describe_machine("start")
    print(f"subset {args.subset} train / {args.subset // 5} test images, {args.epochs} epochs, "
          f"batch 32, {args.repeats} repeats, data {args.data or 'keras download'}", flush=True)
    runs: Runs = {"plain": [], "hpo": []}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for i in range(args.repeats):
            order = ("plain", "hpo") if i % 2 == 0 else ("hpo", "plain")
            for side in order:
                folder = Path(tmp) / f"{side}-{i}"
                folder.mkdir()
                result = run_child(side, args, folder)
                runs[side].append(result)
                print(f"  repeat {i} {side:5s}: per-epoch {steady(result['epochs']):.3f} s, "
                      f"process {result['process_wall']:.1f} s, load {os.getloadavg()[0]:.2f}",
                      flush=True)
    summarise(runs)
    describe_machine("end")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
