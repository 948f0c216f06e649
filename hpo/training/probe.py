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
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import keras
import numpy as np

from hpo.errors import ConfigError, TrialError
from hpo.study.builder import LoadedBuilder
from hpo.study import footprint
from hpo.study.definition import StudyDefinition
from hpo.study.space import TRAINING, probe_points
from hpo.training import limits
from hpo.training.data import Dataset
from hpo.training.models import build_own, check_class_outputs, compile_own, own_compile
from hpo.training.objective import study_compile


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
        # dict.keys, not self: iterating self would call __iter__, which calls this again.
        self.read.update(dict.keys(self))

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
                  num_classes: int, origin: str, data: Dataset | None = None) -> int:
    """Build the study's model once per probe point; refuse, in one line, what cannot train.
    Returns the bytes the largest of them needs to train (:mod:`hpo.study.footprint`: its
    parameters, four times over; its activations are not counted).

    With ``data``, the model is also compiled as a trial compiles it (hpo's own compile, or its
    loss and metrics) and, for the first point, scored on two training examples: a loss or metric
    Keras does not know, a model that gives no probabilities to hpo's cross-entropy, and a study
    metric the model does not report are refused here rather than in every trial.

    Raises:
        ConfigError: the builder failed, or its model does not fit the data, or a parameter of the
            space never reaches the model, or its model cannot train in the memory available.
    """
    read: set[str] = set()
    images = data.is_images if data is not None else True
    largest = 0
    for index, point in enumerate(probe_points(definition.space, definition.conditional, builder=True)):
        params = _Reads(point)
        try:
            with _CtrlC() as ctrl_c:
                model = build_own(functools.partial(_call, loaded.function, params), loaded.name, point,
                                  input_shape=tuple(input_shape), num_classes=num_classes, seed=0, images=images,
                                  check_classes=data is None)
                if data is not None:
                    compiled(model, loaded.name, definition, data, point, score=index == 0)
        except TrialError as e:
            if ctrl_c.pressed:  # a real Ctrl-C, not the builder's own KeyboardInterrupt: the caller's
                raise KeyboardInterrupt from None
            raise ConfigError(f"{origin}: model.builder: {e} (dry build with {_shown(point)})") from e
        read |= params.read
        parameters = model.count_params()
        need, available = footprint.training_bytes(parameters), limits.available_memory()
        if need > available:
            raise ConfigError(f"{origin}: model.builder: {loaded.name}'s model has {parameters:,} parameters and needs "
                              f"about {limits.human(need)} to train; this machine has {limits.human(available)} "
                              f"available (dry build with {_shown(point)})")
        largest = max(largest, need)
    unread = [name for name in _own_names(definition) if name not in read]
    if unread:
        raise ConfigError(f"{origin}: space.{unread[0]}: {loaded.name} never reads params[{unread[0]!r}], "
                          "so it would be tuned for nothing (take it out of [space], or use it in the model)")
    return largest


def _shown(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items() if k not in TRAINING) or "no parameters"


def compiled(model: keras.Model, name: str, definition: StudyDefinition, data: Dataset, point: Mapping[str, Any],
             *, score: bool) -> None:
    """Compile ``model`` as a trial of ``definition`` would and, with ``score``, run it on two
    training examples: what Keras refuses of its loss and metrics, outputs that are not
    probabilities for hpo's cross-entropy, and a study metric it does not report, as TrialErrors."""
    study = study_compile(definition)
    own = own_compile(model)
    learning_rate = float(point.get("learning_rate", 1e-3))
    hpos = study.is_hpos(own) and data.has_classes
    if hpos:
        check_class_outputs(model, data.num_classes, name)
    else:
        compile_own(model, own, study, learning_rate, optimizer=str(point.get("optimizer", "adam")),
                    settings=point, classes=data.has_classes, name=name)
    if not score:
        return
    x, y = data.x_train[:2], data.y_train[:2]
    if hpos:
        outputs = keras.ops.convert_to_numpy(model(x, training=False))
        sums = outputs.sum(axis=-1)
        if (outputs < 0).any() or not np.allclose(sums, 1.0, atol=1e-3):
            raise TrialError(f"{name}: its model's outputs are not probabilities (they sum to {float(sums[0]):.3g}, "
                             "not 1): end it with a softmax (Dense(num_classes, activation='softmax')), or return "
                             "it compiled with its own loss (from_logits=True)")
        return
    try:
        reported = model.evaluate(x, y, verbose=0, return_dict=True)
    except Exception as e:
        raise TrialError(f"cannot train its model on the data ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if definition.measure not in reported:
        raise TrialError(f"the study's metric is {definition.metric}, but its model reports only "
                         f"{', '.join(f'val_{m}' for m in reported)} (name {definition.measure!r} among its metrics)")


class _CtrlC:
    """Tells a Ctrl-C (SIGINT) during a dry build from a builder's own ``raise KeyboardInterrupt``
    (which fails the builder): the signal still raises KeyboardInterrupt, and is noted. Only the
    main thread receives signals; elsewhere nothing changes."""

    def __init__(self) -> None:
        self.pressed = False
        self._main = threading.current_thread() is threading.main_thread()
        self._previous: Any = signal.SIG_DFL

    def __enter__(self) -> _CtrlC:
        if self._main:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._main:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)

    def _handle(self, _signum: int, _frame: object) -> None:
        self.pressed = True
        raise KeyboardInterrupt


def _call(function: Callable[..., Any], params: _Reads, _given: object, **shape: Any) -> Any:
    """The builder called with the parameters that note what it reads (``build_own`` gives a copy)."""
    return function(params, **shape)


def _own_names(definition: StudyDefinition) -> list[str]:
    """The space's parameters that are the builder's own (not hpo's training parameters)."""
    names = [*definition.space, *(n for table in definition.conditional.values() for n in table)]
    return [n for n in dict.fromkeys(names) if n not in TRAINING]
