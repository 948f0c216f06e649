"""Issues 11 and 20: does a search find the grid's best configuration with fewer epochs, and does
searching the architecture beat the report's hand-picked configurations at equal compute?

On one fixed, stratified subset (``--subset`` training images, the last 20% of them held out
for validation, ``--subset``/5 test images), through the real service (``hpo launch``, one
SQLite file for every study):

- the report's exp3 grid over its own space (studies/exp3.toml, validation scored), the baseline;
- over the space of studies/search.toml: random search, TPE without pruning, TPE with median
  pruning and TPE with Hyperband, each with ``--seeds`` study seeds, each stopped once its
  trials have spent ``--budget`` training epochs (the same budget for every method; the trials
  running at that moment are stopped, and their epochs count). studies/search.toml's space holds
  each architecture's knobs (its ``[space.<architecture>]`` tables); ``tpe-hyperband-frozen`` is
  TPE with Hyperband over the same space without them, the report's three models as they are
  (issue 20's question). ``--methods`` picks which run.

Then ``hpo confirm`` retrains each method's best configuration (best over its seeds) with fresh
seeds on the whole training subset, scored on the test images; ``--phase analyse`` prints the
table, the epochs each run needed to reach the grid's best validation accuracy, and draws the
curves (median and range over seeds) into ``--out``.

    python bench/search.py --subset 2000 --out bench/results/search
    python bench/search.py --subset 2000 --budget 135 --seeds 0 1 --methods tpe-hyperband tpe-hyperband-frozen \
        --out bench/results/architecture

Phases can run apart (``--phase run|confirm|analyse``) on the same ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine

from hpo.study.files import load_definition
from hpo.results.curves import epochs_trained, search_curve
from hpo.results.rows import confirmed_rows
from hpo.study.create import load_study

ROOT = Path(__file__).resolve().parent.parent
METHODS = {  # name: (sampler, pruner, whether the architectures' knobs are searched)
    "random": ("random", "none", True),
    "tpe": ("tpe", "none", True),
    "tpe-median": ("tpe", "median", True),
    "tpe-hyperband": ("tpe", "hyperband", True),
    "tpe-hyperband-frozen": ("tpe", "hyperband", False),
}
GRID = "bench-grid"
REPORT_GRID_EPOCHS = 270  # the exp3 grid as the report ran it: 27 points, 5 + 10 + 15 epochs each row
TARGET = REPORT_GRID_EPOCHS / 3  # issue 11: reach the grid's best within a third of its epochs


def study_name(method: str, seed: int) -> str:
    return f"bench-{method}-s{seed}"


def grid_file(folder: Path) -> Path:
    """studies/exp3.toml under another name: the grid over its own space, validation scored."""
    text = (ROOT / "studies" / "exp3.toml").read_text(encoding="utf-8")
    path = folder / "grid.toml"
    path.write_text(text.replace('name = "exp3"', f'name = "{GRID}"', 1), encoding="utf-8")
    return path


def method_file(folder: Path, method: str, seed: int, trials: int) -> Path:
    """studies/search.toml's space and data protocol, with this method's sampler, pruner and seed."""
    raw = tomllib.loads((ROOT / "studies" / "search.toml").read_text(encoding="utf-8"))
    sampler, pruner, knobs = METHODS[method]
    # A [space.<architecture>] table is written inline: `base = { filters_1 = [...], ... }`.
    space = "\n".join(f"{key} = {_toml(value)}" for key, value in raw["space"].items()
                      if knobs or not (isinstance(value, dict) and "low" not in value))
    text = f"""[study]
name = "{study_name(method, seed)}"
description = "bench/search.py: {method}, study seed {seed}, over studies/search.toml's space"
metric = "val_accuracy"
trials = {trials}

[sampler]
type = "{sampler}"
seed = {seed}

[pruner]
type = "{pruner}"

[data]
source = "{raw["data"].get("source", "cifar10")}"
protocol = "validation_split"
validation_split = {raw["data"]["validation_split"]}

[space]
{space}
"""
    path = folder / f"{method}-s{seed}.toml"
    path.write_text(text, encoding="utf-8")
    load_definition(path)  # refuse a bad file here, not in the middle of the benchmark
    return path


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def hpo_command(args: argparse.Namespace, *rest: str) -> list[str]:
    command = [sys.executable, "-m", "hpo", "--storage", args.url, *rest]
    return command


def launch(args: argparse.Namespace, study_file: Path, name: str, budget: int | None) -> dict[str, Any]:
    """``hpo launch`` the study; with a budget, stop it (as Ctrl-C does) once its finished and
    running trials have spent that many epochs."""
    command = hpo_command(args, "launch", str(study_file), "-n", str(args.workers), "--subset", str(args.subset),
                          "--artifacts", str(args.out / "artifacts"), "--logs", str(args.out / "logs"))
    if args.data:
        command += ["--data", args.data]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    stopped_at = None
    while proc.poll() is None:
        time.sleep(2.0)
        if budget is not None and stopped_at is None and _epochs_spent(args.url, name) >= budget:
            stopped_at = time.perf_counter() - started
            os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 130) and stopped_at is None:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"hpo launch {study_file} failed with exit code {proc.returncode}")
    print(f"{name}: {wall:.0f} s" + (f", stopped at the budget after {stopped_at:.0f} s" if stopped_at else ""),
          flush=True)
    return {"study": name, "wall_s": round(wall, 1), "stopped_s": stopped_at and round(stopped_at, 1)}


def _epochs_spent(url: str, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return 0  # not created yet
    return sum(map(epochs_trained, study.get_trials(deepcopy=False)))


def run_phase(args: argparse.Namespace) -> None:
    describe_machine("bench/search.py run")
    files = args.out / "studies"
    files.mkdir(parents=True, exist_ok=True)
    runs = [launch(args, grid_file(files), GRID, None)]
    for seed in args.seeds:
        for method in args.methods:
            name = study_name(method, seed)
            runs.append(launch(args, method_file(files, method, seed, args.max_trials), name, args.budget))
            _save(args, "runs.json", runs)
    describe_machine("bench/search.py run, end")


def _save(args: argparse.Namespace, name: str, data: Any) -> None:
    (args.out / name).write_text(json.dumps(data, indent=1), encoding="utf-8")


def curves(args: argparse.Namespace) -> dict[str, list[Any]]:
    """Per study: (epochs spent, seconds, best val accuracy so far) after each finished trial."""
    out = {}
    storage = optuna.storages.RDBStorage(args.url)
    for summary in optuna.get_all_study_summaries(storage):
        if not summary.study_name.startswith("bench-") or summary.study_name.endswith("-confirm"):
            continue
        study, definition = load_study(storage, summary.study_name)
        out[summary.study_name] = [(p.epochs, p.seconds, p.best) for p in search_curve(study, definition)]
    return out


def best_at(curve: list[Any], epochs: float) -> float | None:
    """The best value a curve had reached with at most ``epochs`` spent."""
    best = None
    for spent, _, value in curve:
        if spent > epochs:
            break
        best = value
    return best


def epochs_to_reach(curve: list[Any], target: float, budget: int) -> int | None:
    """Epochs spent when the curve first reached ``target`` within the budget, else None."""
    for spent, _, value in curve:
        if spent > budget:
            return None
        if value is not None and value >= target:
            return spent
    return None


def confirm_phase(args: argparse.Namespace) -> None:
    """Every run's best configuration within the budget (each method and seed, and the grid's),
    retrained with fresh seeds on the whole training subset and scored on the test images."""
    storage = optuna.storages.RDBStorage(args.url)
    chosen = {}
    for name in [GRID, *(study_name(m, s) for m in args.methods for s in args.seeds)]:
        study, definition = load_study(storage, name)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        best = None
        for point in search_curve(study, definition):
            trial = trials[point.trial]
            if point.epochs > args.budget:
                break
            if trial.value is not None and (best is None or trial.value > best[0]):
                best = (trial.value, trial.number)
        if best is None:
            print(f"{name}: no COMPLETE trial within the budget; nothing to confirm", flush=True)
            continue
        chosen[name] = best
        print(f"confirming {name} trial {best[1]} (val accuracy {best[0]:.4f})", flush=True)
        command = hpo_command(args, "confirm", name, "--top", "1", "--repeats", str(args.confirm_repeats),
                              "-n", str(args.workers), "--subset", str(args.subset),
                              "--artifacts", str(args.out / "artifacts"), "--logs", str(args.out / "logs"))
        if args.data:
            command += ["--data", args.data]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _save(args, "confirmed.json", chosen)


def analyse_phase(args: argparse.Namespace) -> None:
    data = curves(args)
    _save(args, "curves.json", data)
    grid = data[GRID]
    grid_best = max(v for _, _, v in grid if v is not None)
    grid_epochs = grid[-1][0]
    print(f"grid: best val accuracy {grid_best:.4f}, {grid_epochs} epochs trained "
          f"({len(grid)} trials; {REPORT_GRID_EPOCHS} epochs without shared prefixes)")
    rows = []
    for method in args.methods:
        names = [study_name(method, s) for s in args.seeds]
        reach = [epochs_to_reach(data[n], grid_best, args.budget) for n in names]
        final = [best_at(data[n], args.budget) for n in names]
        at_target = [best_at(data[n], TARGET) for n in names]
        rows.append({
            "method": method,
            # Anytime performance: the median over seeds of the best so far, averaged over every
            # epoch of the budget (a run with no result yet counts 0).
            "mean_best_so_far": round(statistics.fmean(
                statistics.median(best_at(data[n], e) or 0.0 for n in names) for e in range(1, args.budget + 1)), 4),
            "epochs_to_grid_best": reach,
            "median_epochs": _median_or_none(reach, args.budget),
            "best_at_budget": final,
            "best_at_90_epochs": at_target,
            "trials": [len(data[n]) for n in names],
        })
    confirmed = _confirmed(args)
    for row in rows:
        runs = [confirmed.get(study_name(row["method"], s)) for s in args.seeds]
        row["confirmed_test_accuracy"] = [r and r["test_accuracy_mean"] for r in runs]
        row["confirmed_configurations"] = [r and r["params"] for r in runs]
    _save(args, "summary.json", {"grid_best": grid_best, "grid_epochs": grid_epochs, "rows": rows,
                                 "grid_confirmed": confirmed.get(GRID)})
    print(f"grid confirmed: {json.dumps(confirmed.get(GRID))}")
    for row in rows:
        print(json.dumps(row))
    _figure(args, data, grid_best)


def _confirmed(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per run (study): the configuration confirm_phase chose, its search value and its
    confirmed test accuracy (mean and std over the fresh seeds), from the confirmation study."""
    path = args.out / "confirmed.json"
    if not path.exists():
        return {}
    storage = optuna.storages.RDBStorage(args.url)
    out = {}
    for name, (_value, number) in json.loads(path.read_text()).items():
        study, definition = load_study(storage, f"{name}-confirm")
        (row,) = confirmed_rows(study, definition)
        if row["search_trial"] != number:
            print(f"note: {name}: hpo confirm took trial {row['search_trial']}, the budget's best was {number}")
        out[name] = {"trial": row["search_trial"], "search_val_accuracy": row["search_value"],
                     "params": {k: row[k] for k in definition.parameter_names if row.get(k) is not None},
                     "n": row["n"],
                     "test_accuracy_mean": row["mean_test_accuracy"], "test_accuracy_std": row["std_test_accuracy"]}
    return out


def _median_or_none(values: list[int | None], budget: int) -> float | None:
    """Median epochs to reach, counting a run that never reached as more than the budget."""
    ranked = sorted(v if v is not None else budget + 1 for v in values)
    median = statistics.median(ranked)
    return None if median > budget else median


def _figure(args: argparse.Namespace, data: dict[str, list[Any]], grid_best: float) -> None:
    """One panel per method: each seed's curve, their median, the grid's curve and best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, args.budget + 1))
    grid = data[GRID]
    columns = 2 if len(args.methods) > 1 else 1
    rows = (len(args.methods) + 1) // 2
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.75 * rows), sharex=True, sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(args.methods):]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, args.methods, strict=False):
        runs = [[best_at(data[study_name(method, s)], e) for e in steps] for s in args.seeds]
        for seed, run in zip(args.seeds, runs, strict=True):
            xs = [e for e, v in zip(steps, run, strict=True) if v is not None]
            ax.step(xs, [v for v in run if v is not None], where="post", linewidth=0.8, alpha=0.6,
                    label=f"seed {seed}")
        at_step = [(e, [v for v in (r[i] for r in runs) if v is not None]) for i, e in enumerate(steps)]
        full = [(e, statistics.median(vs)) for e, vs in at_step if len(vs) == len(runs)]  # every seed has a value
        ax.step([e for e, _ in full], [m for _, m in full], where="post", color="black", linewidth=2,
                label="median over seeds")
        ax.step([p[0] for p in grid], [p[2] for p in grid], where="post", color="grey", linewidth=1.2,
                linestyle="-.", label="exp3 grid (its own order)")
        ax.axhline(grid_best, color="grey", linestyle="--", linewidth=1, label=f"grid's best {grid_best:.3f}")
        ax.axvline(TARGET, color="grey", linestyle=":", linewidth=1,
                   label=f"{TARGET:.0f} epochs: a third of the grid's {REPORT_GRID_EPOCHS}")
        ax.set_title(method)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("training epochs spent")
    for ax in axes[:, 0]:
        ax.set_ylabel("best validation accuracy so far")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Search vs the exp3 grid: {args.subset} CIFAR-10 images, {args.budget}-epoch budget, "
                 f"{len(args.seeds)} study seeds")
    fig.tight_layout()
    fig.savefig(args.out / "search_curves.png", dpi=110)
    print(f"wrote {args.out / 'search_curves.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", type=int, default=2000, help="training images (stratified)")
    parser.add_argument("--budget", type=int, default=180, help="training epochs per search run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS)[:4])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-trials", type=int, default=300, help="trials queued per search study")
    parser.add_argument("--confirm-repeats", type=int, default=3)
    parser.add_argument("--data", default=os.environ.get("HPO_DATA"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/search"))
    parser.add_argument("--phase", choices=["all", "run", "confirm", "analyse"], default="all")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.url = f"sqlite:///{args.out / 'hpo.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.phase in ("all", "run"):
        run_phase(args)
    if args.phase in ("all", "confirm"):
        confirm_phase(args)
    if args.phase in ("all", "analyse"):
        analyse_phase(args)


if __name__ == "__main__":
    main()
