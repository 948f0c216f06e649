"""A launch's progress in a notebook: a progress bar (tqdm's, a widget where Jupyter has one),
in place of the line a terminal gets."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from hpo.results.status import StudyStatus
from hpo.workers.progress import done_of, summary


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel writing to a notebook (not a terminal)."""
    return "ipykernel" in sys.modules and not sys.stderr.isatty()


class Bar:
    """Trials done out of the total, with the running, failed and best value beside it."""

    def __init__(self, total: int, name: str) -> None:
        try:  # Jupyter's widget where ipywidgets is installed, else tqdm's line
            import ipywidgets  # noqa: F401, PLC0415  (only to know whether the widget can show)
            from tqdm.notebook import tqdm  # noqa: PLC0415  (only in a notebook)
        except ImportError:
            from tqdm import tqdm  # noqa: PLC0415  (optuna's dependency)

        self.bar: Any = tqdm(total=total, desc=name, unit="trial", dynamic_ncols=True)
        self.total = total

    def show(self, statuses: Sequence[StudyStatus], final: bool = False) -> None:
        self.bar.n = min(sum(done_of(s) for s in statuses), self.total)
        line = summary(statuses, self.total, with_done=False).removeprefix(f"{self.bar.desc}: ")  # named once
        self.bar.set_postfix_str(line, refresh=False)
        self.bar.refresh()
        if final:
            self.bar.close()
