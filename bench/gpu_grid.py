"""Benchmark (d): the whole exp3 grid on one GPU, ``hpo launch -n N`` against the report's loop.

exp3 is 27 trials (learning rate {0.01, 0.001, 0.0001} x batch {32, 64, 128} x epochs
{5, 10, 15}, 270 epochs, validation_split 0.2, scored on the test set). Compared:

- sequential: the report's code, one process, a plain ``for`` loop over the 27 configs, each a
  fresh ``Sequential`` (``input_shape``) on images normalised ``x / 255.0`` up front,
  ``fit(..., validation_split=0.2)`` then ``evaluate`` on the test set;
- hpo -n N: ``hpo launch STUDY -n N --gpus 0`` (N workers sharing GPU 0) on a fresh SQLite
  study holding the same grid, N in ``--workers``; optionally with JAX's persistent compilation
  cache (``--compile-cache on|both``), passed to the workers as ``JAX_COMPILATION_CACHE_DIR``:
  Keras jits a new train step for every new model, so without it every trial compiles again.

Everything runs under ``KERAS_BACKEND=jax`` with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (the
GPU machine has JAX, not TensorFlow). Each mode is a fresh subprocess whose wall time (imports,
data load and exit included) gives trials and epochs per hour. With ``--repeats R`` the modes
run R times in rotated order, and every ratio is taken against the sequential run of the same
repeat. Each run gets its own empty compilation cache, so the cache only helps within a run.

    KERAS_BACKEND=jax python bench/gpu_grid.py --workers 1,2,4,8 --compile-cache both
    KERAS_BACKEND=jax python bench/gpu_grid.py --smoke    # check: 500 images, epochs {1,2,3}, -n 2
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import describe_machine  # bench/machine.py; bench/ is on sys.path when run as a script
from report_code import base_model
from subproc import emit, read_result

ROOT = Path(__file__).resolve().parents[1]
LEARNING_RATES = (0.01, 0.001, 0.0001)
BATCH_SIZES = (32, 64, 128)
EPOCHS = (5, 10, 15)






def scaled_epochs(scale: float) -> list[int]:
    epochs = [max(1, math.ceil(e * scale)) for e in EPOCHS]
    if len(set(epochs)) != len(epochs):
        raise SystemExit(f"--epochs-scale {scale} maps epochs {list(EPOCHS)} to {epochs}; pick a "
                         "scale that keeps them distinct (>= 0.2), so the grid keeps 27 points")
    return epochs


# --- the report's loop, in a child process ----------------------------------------------------


def child_sequential(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import keras

    from hpo.training.data import load_dataset

    data = load_dataset(args.data, subset=args.subset)
    x_train, x_test = data.x_train / 255.0, data.x_test / 255.0
    y_train, y_test = data.y_train, data.y_test
    trials = []
    for batch in BATCH_SIZES:  # the report's loop order: batch, epochs, learning rate
        for epochs in scaled_epochs(args.epochs_scale):
            for lr in LEARNING_RATES:
                started = time.perf_counter()
                model = base_model()
                model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
                model.fit(x_train, y_train, epochs=epochs, batch_size=batch, validation_split=0.2,
                          verbose=0)
                loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
                trials.append({"lr": lr, "batch": batch, "epochs": epochs, "test_accuracy": float(accuracy),
                               "seconds": time.perf_counter() - started})
                print(f"  sequential lr {lr} batch {batch} epochs {epochs}: "
                      f"{trials[-1]['seconds']:.1f} s, test accuracy {accuracy:.4f}", file=sys.stderr, flush=True)
    return {"device": str(jax.devices()[0]), "trials": trials}


# --- the parent ------------------------------------------------------------------------------


def child_env(cache_dir: Path | None) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    for key in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
        env.pop(key, None)
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def run_sequential(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child-sequential",
               "--subset", str(args.subset), "--epochs-scale", str(args.epochs_scale)]
    if args.data:
        command += ["--data", args.data]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=child_env(None), cwd=folder)
    wall = time.perf_counter() - started
    (folder / "sequential.log").write_text(proc.stderr)
    result = read_result(proc, "the sequential loop")
    trials = result["trials"]
    return {"mode": "sequential", "wall": wall, "complete": len(trials), "device": result["device"],
            "epochs": sum(t["epochs"] for t in trials),
            "best_test_accuracy": max(t["test_accuracy"] for t in trials)}


def create_grid_study(url: str, name: str, epochs: list[int]) -> None:
    import warnings

    import optuna

    from hpo.study.files import load_definition
    from hpo.storage.open import open_storage
    from hpo.study.create import create_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    exp3 = load_definition(ROOT / "studies" / "exp3.toml")
    space = {**exp3.space, "epochs": tuple(epochs)}
    definition = dataclasses.replace(exp3, name=name, space=space, max_retries=0, references=())
    create_study(open_storage(url), definition)


def run_hpo(workers: int, cache: bool, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import optuna

    name = f"grid_n{workers}{'_cache' if cache else ''}"
    url = f"sqlite:///{folder / 'hpo.db'}"
    create_grid_study(url, name, scaled_epochs(args.epochs_scale))
    command = [sys.executable, "-m", "hpo", "--storage", url, "launch", name, "-n", str(workers),
               "--gpus", args.gpu, "--subset", str(args.subset),
               "--artifacts", str(folder / "artifacts"), "--logs", str(folder / "logs")]
    if args.data:
        command += ["--data", args.data]
    cache_dir = folder / "jax-cache" if cache else None
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=child_env(cache_dir), cwd=folder)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"hpo launch -n {workers} failed with exit code {proc.returncode}; logs in {folder}")
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    first = min(t.datetime_start for t in done if t.datetime_start is not None)  # a COMPLETE trial has both
    last = max(t.datetime_complete for t in done if t.datetime_complete is not None)
    backends = {t.user_attrs.get("keras_backend") for t in done}
    return {
        "mode": f"hpo -n {workers}" + (" +cache" if cache else ""), "wall": wall,
        "complete": len(done), "failed": sum(t.state.name == "FAIL" for t in trials),
        "epochs": sum(int(t.user_attrs.get("epochs_run", 0)) for t in done),
        "span": (last - first).total_seconds(),
        "fit_seconds": sum(float(t.user_attrs.get("fit_seconds", 0.0)) for t in done),
        "build_seconds": sum(float(t.user_attrs.get("build_seconds", 0.0)) for t in done),
        "device": ", ".join(sorted({str(t.user_attrs.get("device")) for t in done})),
        "backend": ", ".join(sorted(str(b) for b in backends)),
        "cache_files": count_files(cache_dir),
        "best_test_accuracy": max(float(t.user_attrs.get("test_accuracy") or 0.0) for t in done),
    }


def count_files(folder: Path | None) -> int:
    if folder is None or not folder.exists():
        return 0
    return sum(1 for path in folder.rglob("*") if path.is_file())


def report_line(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    per_hour = r["complete"] / r["wall"] * 3600
    epochs_per_hour = r["epochs"] / r["wall"] * 3600
    ratio = f", x{base['wall'] / r['wall']:.2f} vs sequential" if base else ""
    extra = ""
    if "span" in r:
        extra = (f", first start to last end {r['span']:.1f} s, fit {r['fit_seconds']:.0f} s summed, "
                 f"{r['failed']} failed, cache files {r['cache_files']}")
    return (f"{r['mode']:22s} {r['complete']} trials / {r['epochs']} epochs in {r['wall']:.1f} s: "
            f"{per_hour:.0f} trials/h, {epochs_per_hour:.0f} epochs/h{ratio}; best test acc "
            f"{r['best_test_accuracy']:.4f}; device {r['device']}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, help="training images (default: all 50000)")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply exp3's epochs {5,10,15} (rounded up; must stay distinct)")
    parser.add_argument("--workers", help="comma-separated N for hpo launch -n N [default 1,2,4,8]")
    parser.add_argument("--compile-cache", choices=("off", "on", "both"), default="both",
                        help="run hpo with JAX's persistent compilation cache, without, or both")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every mode, rotated")
    parser.add_argument("--gpu", default="0", help="GPU id given to hpo launch --gpus")
    parser.add_argument("--data", default=os.environ.get("HPO_DATA"), help="[env HPO_DATA]")
    parser.add_argument("--keep", metavar="DIR", help="keep studies and worker logs in DIR")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check anywhere: --subset 500 --epochs-scale 0.2 --workers 2 "
                             "(unless given)")
    parser.add_argument("--child-sequential", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.subset, args.epochs_scale = args.subset or 500, 0.2
        args.workers = args.workers or "2"
    args.workers = args.workers or "1,2,4,8"

    if args.child_sequential:
        emit(child_sequential(args))
        return
    if importlib.util.find_spec("jax") is None:
        raise SystemExit("gpu_grid.py runs under KERAS_BACKEND=jax: install jax "
                         "(jax[cuda13] or jax[cuda12] on a GPU)")
    if os.environ.get("KERAS_BACKEND", "jax") != "jax":
        print(f"note: KERAS_BACKEND={os.environ['KERAS_BACKEND']} ignored; children run with jax",
              file=sys.stderr)

    epochs = scaled_epochs(args.epochs_scale)
    workers = [int(n) for n in args.workers.split(",")]
    caches = {"off": [False], "on": [True], "both": [False, True]}[args.compile_cache]
    modes: list[tuple[str, int, bool]] = [("sequential", 0, False)]
    modes += [("hpo", n, c) for n in workers for c in caches]
    describe_machine("start")
    print(f"exp3 grid: lr {list(LEARNING_RATES)} x batch {list(BATCH_SIZES)} x epochs {epochs} "
          f"= 27 trials, {9 * sum(epochs)} epochs; subset {args.subset or 'all'}; "
          f"{len(modes)} modes x {args.repeats} repeats", flush=True)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu-grid-"))
    root.mkdir(parents=True, exist_ok=True)
    results: list[list[dict[str, Any]]] = []
    try:
        for rep in range(args.repeats):
            shift = rep % len(modes)
            by_mode: dict[tuple[str, int, bool], dict[str, Any]] = {}
            for mode in modes[shift:] + modes[:shift]:
                kind, n, cache = mode
                folder = root / f"r{rep}-{kind}{n or ''}{'-cache' if cache else ''}"
                folder.mkdir(parents=True, exist_ok=True)
                r = run_sequential(args, folder) if kind == "sequential" else run_hpo(n, cache, args, folder)
                by_mode[mode] = r
                print(f"  repeat {rep}: {r['mode']}: {r['wall']:.1f} s, load {os.getloadavg()[0]:.2f}",
                      flush=True)
            results.append([by_mode[m] for m in modes])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    for rep, rs in enumerate(results):
        print(f"repeat {rep}:")
        for r in rs:
            print("  " + report_line(r, None if r["mode"] == "sequential" else rs[0]))
    if args.repeats > 1:
        print("\nmedian speed-up over the sequential loop (wall, paired per repeat):")
        for i in range(1, len(modes)):
            ratios = [rs[0]["wall"] / rs[i]["wall"] for rs in results]
            print(f"  {results[0][i]['mode']:22s} x{statistics.median(ratios):.2f} "
                  f"({', '.join(f'{x:.2f}' for x in ratios)})")
    describe_machine("end")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
