"""What a finished trial leaves behind, in an Optuna artifact store the dashboard shows.

For every completed trial: its learning curves and its test-set confusion matrix as PNGs, the
trained model as a ``.keras`` file, and its metrics as JSON. The store is a folder beside the
SQLite file by default (``hpo.db`` -> ``hpo-artifacts/``), or one the user names; workers on
several machines need a folder they all share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on workers
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.storage import records
from hpo.training.data import CLASS_NAMES

if TYPE_CHECKING:
    import keras

    from hpo.training.events import TrainResult

log = logging.getLogger(__name__)

MAX_LABELLED_CLASSES = 20


class TrialArtifacts:
    """Writes a trial's plots, model and metrics into the store, all or nothing; a failure never
    fails the trial.

    :meth:`save` writes every file and returns the system attributes that link them to the
    trial; the worker loop records those in the same transaction as the trial's result, so a
    trial holds all its files or none, and a result another process took over links nothing
    (:meth:`remove` deletes its files). A failed write (a full disk, a read-only folder) removes
    what it wrote and links nothing: the trial stays COMPLETE with its numbers, and a warning
    says why its artifacts are missing. (Optuna's ``upload_artifact`` links each file before
    writing it, which would leave a broken artifact behind on a full disk.)
    """

    def __init__(self, folder: Path) -> None:
        self.store = FileSystemArtifactStore(str(folder))

    def save(self, trial: optuna.Trial, result: TrainResult, *, model: bool = True) -> dict[str, str]:
        written: list[str] = []
        links: dict[str, str] = {}
        try:
            with tempfile.TemporaryDirectory(prefix="hpo-artifacts-") as tmp:
                for path in self.write(Path(tmp), trial, result, model=model):
                    artifact_id = readable_id(trial.study.study_name, path.name)
                    written.append(artifact_id)  # before writing: a partial file is removed too
                    with path.open("rb") as body:
                        self.store.write(artifact_id, body)
                    key, meta = records.artifact_attr(artifact_id, path.name)
                    links[key] = meta
        except Exception as exc:  # noqa: BLE001  (the result matters more than its pictures)
            self._remove(written)
            log.warning("trial %d: artifacts not saved, the trial's results are kept: %s",
                        trial.number, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return {}
        return links

    def remove(self, links: Mapping[str, str]) -> None:
        self._remove([key.removeprefix(records.ARTIFACT_PREFIX) for key in links])

    def _remove(self, artifact_ids: Sequence[str]) -> None:
        for artifact_id in artifact_ids:
            with contextlib.suppress(OSError, ArtifactNotFound):
                self.store.remove(artifact_id)

    def write(self, folder: Path, trial: optuna.Trial, result: TrainResult, *, model: bool = True) -> list[Path]:
        params = records.trial_params(records.frozen(trial))
        title = f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in params.items())
        paths = [learning_curves(result.history, folder / f"learning_curves_trial{trial.number}.png", title,
                                 validated_on=result.validated_on)]
        if result.confusion is not None:  # hpo's own compile, on labels of classes
            paths.append(confusion_matrix_png(result.confusion, folder / f"confusion_matrix_trial{trial.number}.png",
                                              f"trial {trial.number}: test accuracy {result.test_accuracy:.4f}",
                                              result.class_names or CLASS_NAMES))
        metrics = folder / f"metrics_trial{trial.number}.json"
        metrics.write_text(json.dumps({"trial": trial.number, "params": params,
                                       **result.metrics(), "validated_on": result.validated_on,
                                       "history": result.history}, indent=2))
        paths.append(metrics)
        if model:
            model_path = folder / f"model_trial{trial.number}.keras"
            _inference_copy(result.model).save(model_path)
            paths.append(model_path)
        return paths


def readable_id(study: str, filename: str) -> str:
    """The name a file takes in the artifact folder: its study, its own name and a random part
    that keeps it apart from a retry's ("exp3-model_trial14-1a2b3c4d.keras"), in characters any
    file system and URL take."""
    stem, dot, suffix = filename.rpartition(".")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", study).strip("._")[:40] or "study"
    return f"{safe}-{re.sub(r'[^A-Za-z0-9_-]+', '_', stem or suffix)}-{uuid.uuid4().hex[:8]}" + \
        (f".{re.sub(r'[^A-Za-z0-9]+', '', suffix)}" if dot else "")


def _inference_copy(model: keras.Model) -> keras.Model:
    """The model without its optimizer state: a third of the size, and all a user loads it for."""
    import keras  # noqa: PLC0415  (only workers, which have it loaded already, save models)

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def learning_curves(history: dict[str, list[float]], path: Path, title: str, *,
                    validated_on: str = "validation") -> Path:
    """:func:`learning_curves_figure` as a PNG file at ``path``."""
    return save_figure(learning_curves_figure(history, title, validated_on=validated_on), path)


def learning_curves_figure(history: dict[str, list[float]], title: str, *,
                           validated_on: str = "validation") -> Figure:
    """Training and validation accuracy and loss per epoch, side by side (a model of its own
    metrics: each of them, and the loss). ``validated_on`` names what the ``val_`` series were
    measured on: "validation", or "test" where the test set was the validation data."""
    shown = [name for name in history if not name.startswith("val_") and name != "loss"] or ["accuracy"]
    metrics = [*shown[:3], "loss"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    for ax, metric in zip(axes, metrics, strict=True):
        for key, label in ((metric, "training"), (f"val_{metric}", validated_on)):
            values = history.get(key, [])
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.25
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    # A study's many parameters wrap onto more lines, rather than run past the figure's edges.
    fig.suptitle(textwrap.fill(f"Learning curves, {title}", width=45 * len(metrics)), fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG file and free it."""
    try:
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def confusion_matrix_png(matrix: np.ndarray, path: Path, title: str,
                         class_names: Sequence[str] = CLASS_NAMES) -> Path:
    """:func:`confusion_matrix_figure` as a PNG file at ``path``."""
    return save_figure(confusion_matrix_figure(matrix, title, class_names), path)


def confusion_matrix_figure(matrix: np.ndarray, title: str, class_names: Sequence[str] = CLASS_NAMES) -> Figure:
    """Counts per (true class, predicted class), with the count printed in each cell (up to 20
    classes; past that the cells are too small to read, and the colours alone tell)."""
    labelled = len(class_names) <= MAX_LABELLED_CLASSES
    fig, ax = plt.subplots(figsize=(7, 6) if labelled else (10, 9))
    image = ax.imshow(matrix, cmap="Blues")
    if labelled:
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix if labelled else np.zeros((0, 0))):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=10 if len(class_names) <= 10 else 8,
                color="white" if count > threshold else "black")
    bar = fig.colorbar(image, ax=ax)
    bar.locator = MaxNLocator(integer=True)  # counts: no tick at 2.5
    bar.update_ticks()
    ax.set_title(f"Confusion matrix on the test set, {title}", fontsize=10)
    fig.tight_layout()
    return fig

