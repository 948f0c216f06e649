"""One dry build of a user's model, when its study is created: a builder that cannot build the
model the study needs is refused then, in one line, and not in every trial.

The builder is called with a few points of the study's space (:func:`hpo.study.space.probe_points`:
together they reach every parameter) on the data's real input shape and class count. Refused:
a builder that raises, returns something that is not a ``keras.Model``, a model that does not take
the data's images or does not give one output per class, and a parameter of ``[space]`` the builder
never reads (it would be tuned for nothing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hpo.errors import ConfigError, TrialError
from hpo.study.builder import LoadedBuilder
from hpo.study.definition import StudyDefinition
from hpo.study.space import TRAINING, probe_points
from hpo.training.models import build_own


class _Reads(dict[str, Any]):
    """The parameters a builder is given, noting which of them it reads."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def _all(self) -> None:
        self.read.update(self)

    def __iter__(self) -> Iterator[str]:  # **params, dict(params), for name in params
        self._all()
        return super().__iter__()

    def keys(self) -> Any:
        self._all()
        return super().keys()

    def items(self) -> Any:
        self._all()
        return super().items()

    def values(self) -> Any:
        self._all()
        return super().values()

    def copy(self) -> dict[str, Any]:
        self._all()
        return dict(super().items())


def check_builder(loaded: LoadedBuilder, definition: StudyDefinition, *, input_shape: Iterable[int],
                  num_classes: int, origin: str) -> None:
    """Build the study's model once per probe point; refuse, in one line, what cannot train.

    Raises:
        ConfigError: the builder failed, or its model does not fit the data, or a parameter of the
            space never reaches the model.
    """
    read: set[str] = set()
    for point in probe_points(definition.space, definition.conditional, builder=True):
        params = _Reads(point)
        try:
            build_own(functools.partial(_call, loaded.function, params), loaded.name, point,
                      input_shape=tuple(input_shape), num_classes=num_classes, seed=0)
        except TrialError as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items() if k not in TRAINING)
            raise ConfigError(f"{origin}: model.builder: {e} (dry build with {shown or 'no parameters'})") from e
        read |= params.read
    unread = [name for name in _own_names(definition) if name not in read]
    if unread:
        raise ConfigError(f"{origin}: space.{unread[0]}: {loaded.name} never reads params[{unread[0]!r}], "
                          "so it would be tuned for nothing (take it out of [space], or use it in the model)")


def _call(function: Callable[..., Any], params: _Reads, _given: object, **shape: Any) -> Any:
    """The builder called with the parameters that note what it reads (``build_own`` gives a copy)."""
    return function(params, **shape)


def _own_names(definition: StudyDefinition) -> list[str]:
    """The space's parameters that are the builder's own (not hpo's training parameters)."""
    names = [*definition.space, *(n for table in definition.conditional.values() for n in table)]
    return [n for n in dict.fromkeys(names) if n not in TRAINING]
