"""Running real ``hpo launch`` subprocesses for a benchmark, each on a fresh SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna


@dataclass
class Launch:
    url: str                          # its storage
    wall: float                       # seconds, the launch command from start to exit
    trials: list[Any]                 # every study's FrozenTrials, as stored

    @property
    def complete(self) -> list[Any]:
        return [t for t in self.trials if t.state.name == "COMPLETE"]

    @property
    def epochs_trained(self) -> int:
        """Epochs actually trained: a trial completed on the way by a longer trial's run
        (user attr prefix_run naming another trial) cost no epochs of its own."""
        return sum(int(t.user_attrs.get("epochs_run", 0)) for t in self.trials
                   if t.user_attrs.get("prefix_run", t.number) == t.number)


def run_launch(study_files: list[Path], folder: Path, *, workers: int, subset: int, data: str | None) -> Launch:
    """``hpo launch FILES -n workers --subset subset`` into ``folder``; fails loudly if it does."""
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'hpo.db'}"
    command = [sys.executable, "-m", "hpo", "--storage", url, "launch", *map(str, study_files),
               "-n", str(workers), "--subset", str(subset),
               "--artifacts", str(folder / "artifacts"), "--logs", str(folder / "logs")]
    if data:
        command += ["--data", data]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TF_NUM_", "OMP_NUM", "OPENBLAS_NUM", "MKL_NUM"))}
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"hpo launch failed with exit code {proc.returncode}; see {folder}/logs")
    return Launch(url, wall, stored_trials(url))


def stored_trials(url: str) -> list[Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return [t for s in optuna.get_all_study_summaries(url)
            for t in optuna.load_study(study_name=s.study_name, storage=url).get_trials(deepcopy=False)]
