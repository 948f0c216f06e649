"""Benchmark (b), whole epochs: experiment 4 trained the report's way and hpo's way.

Both sides train the report's batch-norm model (Conv2D 32, BatchNormalization, MaxPool,
Flatten, Dense 128, BatchNormalization, Dense 10) with Adam 0.001, sparse cross-entropy,
batch 64, augmentation rotation 15 / shifts 0.1 / horizontal flip, validated on the test set
after every epoch, on the same ``--subset`` training images for ``--epochs`` epochs:

- report: the report's cell. ``Sequential`` with ``input_shape``, the images ``/ 255.0`` up
  front, ``ImageDataGenerator(...)``, ``.fit(x_train)``, then
  ``model.fit(datagen.flow(x_train, y_train, batch_size=64), validation_data=(x_test, y_test))``:
  the augmentation runs in NumPy/SciPy on the host, one image at a time, in the ``tf.data``
  thread Keras puts in front of a ``PyDataset``.
- hpo: ``hpo.training.train.train`` (what a worker's trial runs) on hpo's uint8 arrays with
  ``architecture="batchnorm", augmentation="standard"``: the augmentation is the model's first
  layer (``hpo.training.augment.RandomAffine``), run inside the compiled train step.

Each run is a fresh subprocess with its own seed; the sides alternate in ABBA order (report,
hpo, hpo, report, ...), run r of each side using seed r, so every pair shares a seed and a
drifting machine load cancels out. Per-epoch wall and CPU time come from a callback marking
every epoch's start and the end of training (validation included); "per epoch" is the mean of
epochs 2..E. Speed is the median of the paired ratios report/hpo; accuracy is each run's test
accuracy after its last epoch, compared with the spread between seeds on each side.

    python bench/bench_exp4.py --epochs 5 --repeats 3          # full training set
    python bench/bench_exp4.py --subset 2000 --epochs 2 --repeats 1   # a quick try
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clock import Marks, epoch_clock, steady  # bench/ is on sys.path when run as a script
from machine import describe_machine
from report_code import batchnorm_model
from subproc import emit, read_result

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("report", "hpo")


# --- children: one training run each, reporting a JSON line ------------------------------------


def child_report(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    from bench_augment import image_data_generator  # the report's ImageDataGenerator settings
    from hpo.training.data import load_dataset  # the same images as hpo's side; the report used load_data()

    keras.utils.set_random_seed(args.seed)
    data = load_dataset(args.data, subset=args.subset)
    x_train, x_test = data.x_train / 255.0, data.x_test / 255.0
    model = batchnorm_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    datagen = image_data_generator()
    datagen.fit(x_train)
    marks = Marks()
    history = model.fit(datagen.flow(x_train, data.y_train, batch_size=64), epochs=args.epochs,
                        validation_data=(x_test, data.y_test), callbacks=[epoch_clock(marks)],
                        verbose=0).history
    return {**marks.summary(), "val_accuracy": history["val_accuracy"], "xla": bool(model.jit_compile)}


def child_hpo(args: argparse.Namespace) -> dict[str, Any]:
    from hpo.workers import device

    device.apply(None)  # what `hpo worker` does first (no --threads given)
    from hpo.training.data import load_dataset
    from hpo.training.train import Params, train

    data = load_dataset(args.data, subset=args.subset)
    params = Params(architecture="batchnorm", augmentation="standard", learning_rate=0.001,
                    batch_size=64, epochs=args.epochs)
    marks = Marks()
    result = train(params, data, protocol="test", seed=args.seed, callbacks=[epoch_clock(marks)])
    return {**marks.summary(), "val_accuracy": result.history["val_accuracy"], "xla": result.xla,
            "test_accuracy": result.test_accuracy}


# --- the parent: alternate the two sides, then summarise ---------------------------------------


def run_child(side: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--seed", str(seed),
               "--epochs", str(args.epochs)]
    if args.subset:
        command += ["--subset", str(args.subset)]
    if args.data:
        command += ["--data", args.data]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    result = read_result(proc, f"{side} run (seed {seed})")
    result["process_wall"] = time.time() - started
    result["seed"] = seed
    result["per_epoch"] = steady(result["epochs"])
    result["cpu_per_epoch"] = steady(result["cpu_epochs"])
    result["final_accuracy"] = result["val_accuracy"][-1]
    return result


def paired(runs: dict[str, list[dict[str, Any]]], key: str) -> list[float]:
    return [r[key] / h[key] for r, h in zip(runs["report"], runs["hpo"], strict=True)]


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def summarise(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    print("\nper run:")
    for side in SIDES:
        for r in runs[side]:
            epochs = " ".join(f"{e:.1f}" for e in r["epochs"])
            cpus = " ".join(f"{e:.1f}" for e in r["cpu_epochs"])
            acc = " ".join(f"{a:.4f}" for a in r["val_accuracy"])
            others = statistics.median(r["others_cores"])
            print(f"  {side:6s} seed {r['seed']}: epochs [{epochs}] s, cpu [{cpus}] s, other processes "
                  f"{others:.2f} cores, xla {r['xla']}; test accuracy per epoch [{acc}]")

    wall = paired(runs, "per_epoch")
    cpu = paired(runs, "cpu_per_epoch")
    median = {side: statistics.median(r["per_epoch"] for r in runs[side]) for side in SIDES}
    print(f"\nper epoch, epochs 2..{args.epochs} (median over runs): report {median['report']:.2f} s, "
          f"hpo {median['hpo']:.2f} s")
    print(f"  speed-up report/hpo, wall: median of paired ratios {statistics.median(wall):.3f} "
          f"(each: {', '.join(f'{x:.3f}' for x in wall)}); target >= 1.4")
    print(f"  process CPU time, report/hpo: median of paired ratios {statistics.median(cpu):.3f} "
          f"(each: {', '.join(f'{x:.3f}' for x in cpu)})")

    print("\ntest accuracy per epoch, mean (seed-to-seed std) over runs:")
    print("  epoch  " + "  ".join(f"{side:>15s}" for side in SIDES))
    for e in range(args.epochs):
        cells = []
        for side in SIDES:
            values = [r["val_accuracy"][e] for r in runs[side]]
            cells.append(f"{statistics.mean(values):.4f} ({spread(values):.4f})")
        print(f"  {e + 1:5d}  " + "  ".join(f"{c:>15s}" for c in cells))

    final = {side: [r["final_accuracy"] for r in runs[side]] for side in SIDES}
    diff = statistics.mean(final["hpo"]) - statistics.mean(final["report"])
    noise = {side: spread(final[side]) for side in SIDES}
    pooled = math.sqrt((noise["report"] ** 2 + noise["hpo"] ** 2) / 2)
    n = len(final["hpo"])
    bound = 2 * pooled * math.sqrt(2 / n)  # two standard errors of a difference of two means
    print(f"\ntest accuracy after epoch {args.epochs} (validation on the test set, as the report did):")
    for side in SIDES:
        print(f"  {side:6s} mean {statistics.mean(final[side]):.4f}, seed-to-seed std {noise[side]:.4f} "
              f"({', '.join(f'{a:.4f}' for a in final[side])})")
    verdict = "needs --repeats >= 2" if math.isnan(bound) else "within" if abs(diff) <= bound else "OUTSIDE"
    print(f"  hpo - report: {diff:+.4f}; run-to-run noise of that difference (2 standard errors, "
          f"pooled seed-to-seed std {pooled:.4f}, n = {n} per side): +-{bound:.4f} -> {verdict} noise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=None,
                        help="training images (test: N/5); default: the whole data set")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (>= 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs (seeds) of each side, alternated")
    parser.add_argument("--data", default=os.environ.get("HPO_DATA"), help="[env HPO_DATA]")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child_report(args) if args.child == "report" else child_hpo(args)
        emit(result)
        return

    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 holds the graph trace")
    describe_machine("start")
    size = f"{args.subset} training / {args.subset // 5} test" if args.subset else "all 50,000 training / 10,000 test"
    print(f"{size} images, {args.epochs} epochs, batch 64, {args.repeats} runs per side, "
          f"data {args.data or 'keras download'}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for i in range(args.repeats):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            result = run_child(side, i, args)
            runs[side].append(result)
            print(f"  run {i} {side:6s}: per-epoch {result['per_epoch']:.2f} s, test accuracy "
                  f"{result['final_accuracy']:.4f}, process {result['process_wall']:.0f} s, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    summarise(runs, args)
    describe_machine("end")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
