"""Checkpoints: a run's training state, saved as it trains, so that a retry goes on where the
last attempt stopped instead of from epoch 0.

A checkpoint belongs to a queue slot (the slot of the trial a run trains to its end) and lives
in the artifact store, which every worker of a study shares (a volume in Compose and
Kubernetes): ``<artifacts>/checkpoints/<study>/slot-<N>.npz``. It is written beside its place and
renamed over it, so a reader finds the last whole checkpoint or none. It is used only by a run
of the same slot of the same study (its name and the random id it was given when created: not
one of the same name in another database, or deleted and made again) with the same parameters,
seed, data and model code (its :class:`Identity`); anything else, and anything unreadable, is
ignored with one warning, and the run trains from scratch. The worker loop discards it when its
trial completes, is pruned or fails for good.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.paths import safe_name
from hpo.training.train import TrainingState

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what a checkpoint holds changes; an older one is then ignored


@dataclass(frozen=True)
class Identity:
    """What a run must share with the run that saved a checkpoint to go on from it."""

    study: str
    uid: str    # the study's random id (hpo.storage.records.UID): "" for a study made before it had one
    slot: int
    params: Mapping[str, Any]
    seed: int
    data: str   # the data's fingerprint (hpo.training.data.Dataset.fingerprint)
    model: str  # a hash of the code that builds the model (model_code_version)


def model_code_version() -> str:
    """A hash of the modules whose code decides what a model is and how it trains: a checkpoint
    saved by other code is not continued."""
    digest = hashlib.blake2b(digest_size=8)
    for module in ("models.py", "augment.py", "train.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()


class Checkpoints:
    """The checkpoints of the trials of one study, in the artifact store at ``folder``."""

    def __init__(self, folder: Path, study: str) -> None:
        self.folder = Path(folder) / "checkpoints" / safe_name(study)

    def path(self, slot: int) -> Path:
        return self.folder / f"slot-{slot}.npz"

    def save(self, identity: Identity, state: TrainingState, trained: int) -> None:
        """Save ``state`` for ``identity``'s slot, whole or not at all; ``trained`` is the epochs
        trained so far by every attempt of the slot. A failure is logged, never raised: a run
        that cannot checkpoint still trains."""
        meta = {"format": FORMAT, "identity": _jsonable(asdict(identity)), "epochs_done": state.epochs_done,
                "batches_done": state.batches_done, "history": state.history, "fit_seconds": state.fit_seconds,
                "trained": trained, "model_variables": len(state.model_variables),
                "optimizer_variables": len(state.optimizer_variables)}
        arrays: dict[str, Any] = {f"m{i}": v for i, v in enumerate(state.model_variables)}
        arrays.update({f"o{i}": v for i, v in enumerate(state.optimizer_variables)})
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=self.folder, prefix=".slot-", suffix=".partial")
            try:
                with os.fdopen(handle, "wb") as file:
                    np.savez(file, **arrays)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(partial, self.path(identity.slot))
            finally:
                Path(partial).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("trial of slot %d: checkpoint not saved (%s); training goes on", identity.slot,
                        exc.strerror or exc)

    def load(self, identity: Identity) -> tuple[TrainingState, int] | None:
        """The state saved for ``identity``'s slot and the epochs its attempts trained, or None
        where there is none, or none this run may go on from (one warning says why)."""
        path = self.path(identity.slot)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                meta = json.loads(bytes(saved["meta"]).decode())
                if meta.get("format") != FORMAT or meta.get("identity") != _jsonable(asdict(identity)):
                    log.warning("checkpoint %s belongs to another run (%s); training from scratch", path,
                                _difference(meta.get("identity"), _jsonable(asdict(identity))))
                    return None
                state = TrainingState(
                    model_variables=[saved[f"m{i}"] for i in range(meta["model_variables"])],
                    optimizer_variables=[saved[f"o{i}"] for i in range(meta["optimizer_variables"])],
                    epochs_done=int(meta["epochs_done"]), batches_done=int(meta["batches_done"]),
                    history={k: [float(v) for v in values] for k, values in meta["history"].items()},
                    fit_seconds=float(meta["fit_seconds"]))
                return state, int(meta["trained"])
        except Exception as exc:  # noqa: BLE001  (a damaged checkpoint is never fatal: train from scratch)
            log.warning("checkpoint %s is unreadable (%s); training from scratch", path,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None

    def discard(self, slot: int) -> None:
        with contextlib.suppress(OSError):
            self.path(slot).unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _difference(saved: Any, wanted: Any) -> str:
    if not isinstance(saved, dict):
        return "no identity"
    keys = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    return ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} here" for k in keys[:2]) or "format"
