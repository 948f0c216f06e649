"""The report's figures: the experiment 3 grid as heatmaps, and each best trial's own plots.

The heatmaps put the measured test accuracy above the report's, on one colour scale, so the
two can be compared at a glance. A best trial's learning curves are redrawn from the history in
its metrics artifact, and its confusion matrix is the PNG the worker already rendered.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from hpo.storage import records
from hpo.training.artifacts import learning_curves, save_figure
from optuna.trial import FrozenTrial


log = logging.getLogger(__name__)

Cell = tuple[float, int, int]  # learning rate, batch size, epochs


def grid_heatmap(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """Test accuracy over learning rate x batch size, one panel per epoch count.

    The top row is the measured mean (with the number of runs), the bottom row the report's
    number; both share one colour scale. A cell not run yet is grey, hatched and says so.
    """
    lrs = sorted({float(r["learning_rate"]) for r in rows}, reverse=True)
    batches = sorted({int(r["batch_size"]) for r in rows})
    epochs = sorted({int(r["epochs"]) for r in rows})
    measured = {_cell(r): (r["mean_test_accuracy"], r["n"]) for r in rows}
    report = {_cell(r): (r["report_accuracy"], None) for r in rows}
    values = [v for v, _ in [*measured.values(), *report.values()] if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    norm = Normalize(vmin=low, vmax=high if high > low else low + 0.01)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#e0e0e0")

    fig, axes = plt.subplots(2, len(epochs), figsize=(max(8.0, 3.6 * len(epochs) + 1.5), 7.2),
                             squeeze=False, layout="constrained")
    image = None
    for i, (label, data) in enumerate((("measured (mean of n runs)", measured), ("the report", report))):
        for j, epoch in enumerate(epochs):
            ax = axes[i][j]
            grid = np.array([[_value(data, (lr, b, epoch)) for b in batches] for lr in lrs], dtype=float)
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm)
            for (y, x), value in np.ndenumerate(grid):
                _annotate(ax, x, y, value, data.get((lrs[y], batches[x], epoch), (None, None))[1], cmap, norm)
            ax.set_xticks(range(len(batches)), [str(b) for b in batches])
            ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
            ax.set_xlabel("batch size")
            ax.set_ylabel("learning rate")
            ax.set_title(f"{label}, {epoch} epoch{'' if epoch == 1 else 's'}", fontsize=10)
    assert image is not None  # epochs is never empty
    fig.colorbar(image, ax=axes, label="test accuracy", shrink=0.8)
    fig.suptitle(title)
    return save_figure(fig, path)


def _cell(row: Mapping[str, Any]) -> Cell:
    return float(row["learning_rate"]), int(row["batch_size"]), int(row["epochs"])


def _value(data: Mapping[Cell, tuple[float | None, int | None]], cell: Cell) -> float:
    value = data.get(cell, (None, None))[0]
    return math.nan if value is None else float(value)


def _annotate(ax: Any, x: int, y: int, value: float, runs: int | None, cmap: Any, norm: Normalize) -> None:
    if math.isnan(value):
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="//", edgecolor="#999999", lw=0))
        ax.text(x, y, "not run", ha="center", va="center", fontsize=9, color="#444444")
        return
    red, green, blue, _ = cmap(norm(value))
    colour = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
    text = f"{value:.3f}" if runs is None else f"{value:.3f}\nn={runs}"
    ax.text(x, y, text, ha="center", va="center", fontsize=9, color=colour)


PNG_END = b"IEND\xaeB`\x82"  # a PNG file's last chunk: a truncated copy lacks it


def best_trial_figures(storage: optuna.storages.BaseStorage, trial: FrozenTrial, folder: Path,
                       place: Callable[[str], Path], stem: str) -> tuple[dict[str, Path], str | None]:
    """The trial's learning curves and confusion matrix as files from ``place(name)``.

    Returns the figures made, by kind, and what went missing, if anything: a trial without
    artifacts is reported, never an error.
    """
    metas = {meta.filename: meta for meta in get_all_artifact_meta(trial, storage=storage)}
    metrics = next((m for name, m in metas.items()
                    if name.startswith("metrics_trial") and name.endswith(".json")), None)
    matrix = next((m for name, m in metas.items()
                   if name.startswith("confusion_matrix_trial") and name.endswith(".png")), None)
    if metrics is None and matrix is None:
        return {}, "no artifacts were recorded (learning curves, confusion matrix)"
    store = FileSystemArtifactStore(str(folder))
    figures: dict[str, Path] = {}
    missing = []
    with tempfile.TemporaryDirectory(prefix="hpo-report-") as tmp:
        try:
            if metrics is None:
                raise FileNotFoundError("no metrics artifact")
            local = Path(tmp) / "metrics.json"
            download_artifact(artifact_store=store, file_path=str(local), artifact_id=metrics.artifact_id)
            recorded = json.loads(local.read_text(encoding="utf-8"))
            history = recorded["history"]
            title = f"best trial {trial.number}: " + ", ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in records.trial_params(trial).items())
            figures["learning curves"] = learning_curves(history, place(f"{stem}_learning_curves.png"), title,
                                                         validated_on=str(recorded.get("validated_on", "validation")))
        except (OSError, KeyError, TypeError, AttributeError, ValueError,
                optuna.artifacts.exceptions.ArtifactNotFound) as exc:  # a damaged file: no figure
            log.warning("trial %d: learning curves not drawn: %s", trial.number, exc)
            missing.append("learning curves")
        try:
            if matrix is None:
                raise FileNotFoundError("no confusion matrix artifact")
            local = Path(tmp) / "confusion.png"
            download_artifact(artifact_store=store, file_path=str(local), artifact_id=matrix.artifact_id)
            if not local.read_bytes().endswith(PNG_END):
                raise OSError(f"artifact {matrix.artifact_id} is not a complete PNG file")
            figures["confusion matrix"] = Path(shutil.copyfile(local, place(f"{stem}_confusion_matrix.png")))
        except (OSError, optuna.artifacts.exceptions.ArtifactNotFound) as exc:
            log.warning("trial %d: confusion matrix not copied: %s", trial.number, exc)
            missing.append("confusion matrix")
    problem = f"{' and '.join(missing)} not found in the artifact folder {folder}" if missing else None
    return figures, problem


def search_progress(curves: Mapping[str, Sequence[Any]], references: Mapping[str, float], path: Path,
                    metric: str) -> Path:
    """:func:`search_progress_figure` as a PNG file at ``path``."""
    return save_figure(search_progress_figure(curves, references, metric), path, dpi=110)


def search_progress_figure(curves: Mapping[str, Sequence[Any]], references: Mapping[str, float],
                           metric: str) -> Any:
    """Best ``metric`` so far of each search, and each finished trial's own value, against training
    epochs spent (left) and wall time (right), with horizontal reference lines (the report's best, the grid's best).

    ``curves``: study name -> :class:`hpo.results.status.CurvePoint` list, as :func:`search_curve` gives it.
    """
    fig, (by_epochs, by_time) = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    for name, points in curves.items():
        reached = [p for p in points if p.best is not None]
        if not reached:
            continue
        (line,) = by_epochs.step([p.epochs for p in reached], [p.best for p in reached], where="post",
                                 label=f"{name}, best so far")
        by_time.step([p.seconds / 60 for p in reached], [p.best for p in reached], where="post",
                     color=line.get_color(), label=f"{name}, best so far")
        # Each finished trial's own value too, as Optuna's plot_optimization_history shows it.
        valued = [p for p in points if p.value is not None]
        by_epochs.scatter([p.epochs for p in valued], [p.value for p in valued], s=14, alpha=0.5,
                          color=line.get_color(), label=f"{name}, a trial")
        by_time.scatter([p.seconds / 60 for p in valued], [p.value for p in valued], s=14, alpha=0.5,
                        color=line.get_color(), label=f"{name}, a trial")
    styles = iter(["--", ":", "-."])
    for label, value in references.items():
        style = next(styles, "--")
        for ax in (by_epochs, by_time):
            ax.axhline(value, color="black", linestyle=style, linewidth=1, label=f"{label} {value:.4f}")
    by_epochs.set_xlabel("training epochs spent (pruned and failed trials included)")
    by_time.set_xlabel("wall-clock minutes since the study's first trial")
    by_epochs.set_ylabel(f"best {metric} so far")
    for ax in (by_epochs, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the curves, not on them
    fig.suptitle("Search progress")
    fig.tight_layout()
    return fig
