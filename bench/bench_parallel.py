"""Benchmark (c), part 2: ``hpo launch -n 2`` against ``-n 1`` on this machine, in trials per hour.

A small grid study (the base model, learning rate {0.01, 0.001, 0.0001} x batch {32, 64}, 2
epochs: 6 trials, exp3's shape in miniature) is written to a temporary folder and run to the
end by real ``hpo launch`` subprocesses, each against a fresh SQLite file, on ``--subset``
images. ``-n 1`` gives its one worker every core (TF threads = cores); ``-n 2`` splits them
(:func:`hpo.workers.pool.plan`: cores // 2 threads each). Launches alternate n1, n2, n2, n1, ... and
the ratio is taken per pair, then the median.

Two throughputs per launch:

- wall: trials / the launch's wall time (start-up, data load and worker exit included);
- span: trials / (last trial's completion - first trial's start), read from the storage, which
  leaves out the start-up of the launcher and its workers.

    python bench/bench_parallel.py --subset 3000 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import launches  # bench/launches.py; bench/ is on sys.path when run as a script
from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]

STUDY_TOML = """\
# Written by bench/bench_parallel.py: exp3's grid in miniature.
[study]
name = "parallel"
description = "bench_parallel: base model, 3 learning rates x 2 batch sizes, {epochs} epochs."
metric = "val_accuracy"
direction = "maximize"
max_retries = 0

[sampler]
type = "grid"
seed = 3

[data]
protocol = "validation_split"
validation_split = 0.2

[space]
architecture = "base"
augmentation = "none"
learning_rate = [0.01, 0.001, 0.0001]
batch_size = [32, 64]
epochs = [{epochs}]
"""






def trial_times(url: str) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="parallel", storage=url)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
    if not done:
        return {"complete": 0, "failed": len(failed), "span": float("nan"), "busy": 0.0}
    spans = [(t.datetime_start, t.datetime_complete) for t in done
             if t.datetime_start is not None and t.datetime_complete is not None]  # a COMPLETE trial has both
    first = min(start for start, _ in spans)
    last = max(end for _, end in spans)
    busy = sum((end - start).total_seconds() for start, end in spans)
    return {"complete": len(done), "failed": len(failed), "span": (last - first).total_seconds(),
            "busy": busy}


def run_launch(workers: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    study_file = folder / "parallel.toml"
    study_file.write_text(STUDY_TOML.format(epochs=args.epochs), encoding="utf-8")
    launch = launches.run_launch([study_file], folder / "run", workers=workers, subset=args.subset, data=args.data)
    times = trial_times(launch.url)
    if times["failed"]:
        raise SystemExit(f"hpo launch -n {workers}: {times['failed']} trials failed; see {folder}/run/logs")
    return {"workers": workers, "wall": launch.wall, **times,
            "wall_per_hour": times["complete"] / launch.wall * 3600,
            "span_per_hour": times["complete"] / times["span"] * 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=3000, help="training images per trial")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    parser.add_argument("--repeats", type=int, default=2, help="launches of each -n, alternated")
    parser.add_argument("--workers", type=int, default=2, help="the candidate -n (baseline: -n 1)")
    parser.add_argument("--data", default=os.environ.get("HPO_DATA"), help="[env HPO_DATA]")
    args = parser.parse_args()

    describe_machine("start")
    print(f"6-trial grid (lr 3 x batch 2, {args.epochs} epochs), subset {args.subset}, "
          f"-n 1 vs -n {args.workers}, {args.repeats} repeats", flush=True)
    runs: dict[int, list[dict[str, Any]]] = {1: [], args.workers: []}
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        for i in range(args.repeats):
            order = (1, args.workers) if i % 2 == 0 else (args.workers, 1)
            for n in order:
                r = run_launch(n, args, Path(tmp) / f"n{n}-{i}")
                runs[n].append(r)
                print(f"  repeat {i} -n {n}: {r['complete']} trials in {r['wall']:.1f} s wall "
                      f"({r['wall_per_hour']:.0f}/h), span {r['span']:.1f} s ({r['span_per_hour']:.0f}/h), "
                      f"trial busy time {r['busy']:.0f} s, load {os.getloadavg()[0]:.2f}", flush=True)

    print(f"\n{'':8s} {'wall s':>7s} {'trials/h':>9s} {'span s':>7s} {'trials/h':>9s}   (medians)")
    for n, rs in runs.items():
        print(f"-n {n:<5d} {statistics.median(r['wall'] for r in rs):7.1f} "
              f"{statistics.median(r['wall_per_hour'] for r in rs):9.0f} "
              f"{statistics.median(r['span'] for r in rs):7.1f} "
              f"{statistics.median(r['span_per_hour'] for r in rs):9.0f}")
    for key, label in (("wall_per_hour", "wall"), ("span_per_hour", "span")):
        ratios = [c[key] / b[key] for b, c in zip(runs[1], runs[args.workers], strict=True)]
        print(f"throughput -n {args.workers} / -n 1 ({label}): median {statistics.median(ratios):.3f} "
              f"(each: {', '.join(f'{x:.3f}' for x in ratios)}); target >= 0.95")
    describe_machine("end")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
