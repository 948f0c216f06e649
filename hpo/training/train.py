"""Training one configuration: build, fit, evaluate. Knows Keras, not Optuna.

The report's loop, made a function: the model is trained on the training images and watched
on a validation set (the last 20% of the shuffled training set, or the test set where the
report did that), then scored on the test set, the report's Table 1 columns.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import keras
import numpy as np

from hpo.training.data import Dataset, validation_split
from hpo.study.builder import LoadedBuilder
from hpo.training.models import (StudyCompile, build_model, build_own, check_class_outputs, compile_model, compile_own,
                                 own_compile)
from hpo.training.events import STOP, TrainResult

log = logging.getLogger(__name__)

# Optimizer steps before a loss at or above chance means training failed rather than that it has
# not started: a CNN at a sane learning rate is visibly below ln(10) by then, while 1 epoch on
# 200 images (3 steps) is still at chance, and its first steps at lr 0.01 overshoot far above.
JUDGE_AFTER_STEPS = 100
HPOS_COMPILE = StudyCompile()  # no loss or metrics of the study's own


@dataclass(frozen=True)
class Params:
    """One trial's configuration: what hpo's training reads, and the rest (model knobs, optimizer
    settings, a builder's own parameters) in ``others``, under the names the model reads them by."""

    architecture: str
    augmentation: str
    learning_rate: float
    batch_size: int
    epochs: int
    optimizer: str = "adam"
    others: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Params:
        own = ("architecture", "augmentation", "learning_rate", "batch_size", "epochs", "optimizer")
        return cls(
            architecture=str(values.get("architecture", "")),
            augmentation=str(values.get("augmentation", "none")),
            learning_rate=float(values["learning_rate"]),
            batch_size=int(values["batch_size"]),
            epochs=int(values["epochs"]),
            optimizer=str(values.get("optimizer", "adam")),
            others={name: value for name, value in values.items() if name not in own},
        )

    def values(self) -> dict[str, Any]:
        """Every parameter by the name the model reads it by: what a builder of the user's own gets."""
        values = {"architecture": self.architecture, "augmentation": self.augmentation,
                  "learning_rate": self.learning_rate, "batch_size": self.batch_size, "epochs": self.epochs,
                  "optimizer": self.optimizer, **self.others}
        if not self.architecture:  # a builder of the user's own, whose space names none
            del values["architecture"]
        return values


ImagesLabels = tuple[np.ndarray, np.ndarray]  # images, labels


def split(data: Dataset, protocol: str, fraction: float) -> tuple[ImagesLabels, ImagesLabels]:
    """(training, validation) arrays for a data protocol."""
    if protocol == "test":
        return (data.x_train, data.y_train), (data.x_test, data.y_test)
    return validation_split(data.x_train, data.y_train, fraction)


@dataclass
class TrainingState:
    """What makes the rest of a run what it would have been had it never stopped: the model's
    variables (its weights, and the random state of its dropout and augmentation layers), the
    optimizer's (its step count and moments), the epochs done and, for a run stopped in the middle
    of an epoch, the batches done of that epoch. Each epoch's data order follows from the seed and
    the epoch's number alone, so it needs no state."""

    model_variables: list[np.ndarray]
    optimizer_variables: list[np.ndarray]
    epochs_done: int
    batches_done: int
    history: dict[str, list[float]]
    fit_seconds: float


class Training:
    """One configuration in training: built and compiled when made, then trained an epoch at a
    time (:meth:`epochs`), and scored on the test set whenever asked (:meth:`result`).

    Each epoch is a ``model.fit`` call of its own, on the training images in an order drawn from
    the seed and the epoch's number (``np.random.default_rng([seed, epoch])``), so that a run can
    stop after any batch, save its :class:`TrainingState`, and go on in another process exactly
    as it would have (tests/test_checkpoints.py). Nothing depends on the total epoch count, so
    the model after k epochs is the one a k-epoch run of the same seed trains.
    """

    def __init__(self, params: Params, data: Dataset, *, protocol: str = "validation_split", fraction: float = 0.2,
                 seed: int = 0, callbacks: Sequence[keras.callbacks.Callback] = (),
                 builder: LoadedBuilder | None = None, compile: StudyCompile = HPOS_COMPILE) -> None:
        keras.backend.clear_session()  # a worker trains many models; free the last one's graph
        keras.utils.set_random_seed(seed)
        started = time.perf_counter()
        self.hpos_compile = True  # sparse cross-entropy and accuracy, scored as the report did
        if builder is None:
            model = build_model(params.architecture, augmentation=params.augmentation, seed=seed, knobs=params.others,
                                input_shape=data.input_shape, num_classes=data.num_classes)
            self.model = compile_model(model, params.learning_rate, optimizer=params.optimizer,
                                       settings=params.others)
        else:
            model = build_own(builder.function, builder.name, params.values(), augmentation=params.augmentation,
                              seed=seed, input_shape=data.input_shape, num_classes=data.num_classes,
                              images=data.is_images, check_classes=False)
            own = own_compile(model)
            self.hpos_compile = compile.is_hpos(own) and data.has_classes
            if self.hpos_compile:
                check_class_outputs(model, data.num_classes, builder.name)
                self.model = compile_model(model, params.learning_rate, optimizer=params.optimizer,
                                           settings=params.others)
            else:
                self.model = compile_own(model, own, compile, params.learning_rate, optimizer=params.optimizer,
                                         settings=params.others, classes=data.has_classes, name=builder.name)
        self.build_seconds = time.perf_counter() - started
        self.params, self.data, self.seed, self.callbacks = params, data, seed, list(callbacks)
        (self.x_fit, self.y_fit), self.validation = split(data, protocol, fraction)
        # What the val_* series are measured on, as the learning curves name it.
        self.validated_on = "test" if protocol == "test" else "validation"
        self.history: dict[str, list[float]] = {}
        self.fit_seconds = 0.0
        self.batches_done = 0  # of the epoch in progress, when the run resumes in the middle of one
        # Called, at a stop, with the state the run stopped in (a checkpoint), before Stopped is raised.
        self.on_stop: Callable[[TrainingState], None] | None = None

    @property
    def epochs_run(self) -> int:
        return len(self.history.get("loss", []))

    def order(self, epoch: int) -> np.ndarray:
        """The order of the training images in epoch ``epoch`` (from 0): the seed's and the epoch's."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.x_fit))

    def epochs(self) -> Iterator[int]:
        """Train the epochs left, one per step; yields the number of the epoch just ended (from 1).

        A stop asked for (:data:`hpo.training.events.STOP`, a worker's signal) raises
        :class:`hpo.training.events.Stopped` at the next batch boundary, after :attr:`on_stop`
        has been handed the state to go on from.
        """
        while self.epochs_run < self.params.epochs:
            if STOP.reason is not None:
                self._stop(self.batches_done)
            epoch = self.epochs_run
            rest = self.order(epoch)[self.batches_done * self.params.batch_size:]
            started = time.perf_counter()
            logs = self.model.fit(self.x_fit[rest], self.y_fit[rest], batch_size=self.params.batch_size,
                                  epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                                  validation_data=self.validation, verbose=0,
                                  callbacks=[*self.callbacks, _StopAtBatchEnd(self, self.batches_done)]).history
            self.fit_seconds += time.perf_counter() - started
            self.batches_done = 0
            for key, values in logs.items():
                self.history.setdefault(key, []).extend(float(v) for v in values)
            yield epoch + 1

    def state(self, batches_done: int = 0) -> TrainingState:
        """The run as it stands, to go on from later (after ``batches_done`` of the next epoch)."""
        numpy = keras.ops.convert_to_numpy
        return TrainingState(model_variables=[numpy(v) for v in self.model.variables],
                             optimizer_variables=[numpy(v) for v in self.model.optimizer.variables],
                             epochs_done=self.epochs_run, batches_done=batches_done,
                             history={k: list(v) for k, v in self.history.items()}, fit_seconds=self.fit_seconds)

    def restore(self, state: TrainingState) -> None:
        """Go on from ``state`` (saved by a run of the same configuration, seed and data)."""
        self.model.optimizer.build(self.model.trainable_variables)
        for variables, values in ((self.model.variables, state.model_variables),
                                  (self.model.optimizer.variables, state.optimizer_variables)):
            if len(variables) != len(values):
                raise ValueError(f"the state holds {len(values)} variables where the model has {len(variables)}")
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)
        self.history = {k: list(v) for k, v in state.history.items()}
        self.batches_done, self.fit_seconds = state.batches_done, state.fit_seconds

    def _stop(self, batches_done: int) -> None:
        if self.on_stop is not None:
            self.on_stop(self.state(batches_done))
        STOP.check()

    def result(self) -> TrainResult:
        """The epochs trained so far: the model as it is now, scored on the test set."""
        score = _score if self.hpos_compile else _score_any
        result = score(self.model, self.history, self.data, fit_images=len(self.x_fit),
                       batch_size=self.params.batch_size, fit_seconds=self.fit_seconds,
                       build_seconds=self.build_seconds)
        result.validated_on = self.validated_on
        return result


class _StopAtBatchEnd(keras.callbacks.Callback):
    """At the first batch boundary after a stop was asked for, hands the training's state to its
    ``on_stop`` and raises :class:`hpo.training.events.Stopped`: a point Keras expects callbacks
    to raise at, where a signal handler's raise is not."""

    def __init__(self, training: Training, first_batch: int) -> None:
        super().__init__()
        self.training, self.first_batch = training, first_batch

    def on_train_batch_end(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
        # After an epoch's last batch the epoch ends first (its validation, its history), and the
        # stop comes at the next epoch's start: a state is never one of no batches left.
        if STOP.reason is not None and batch + 1 < (self.params or {}).get("steps", batch + 2):
            self.training._stop(self.first_batch + batch + 1)


def train(params: Params, data: Dataset, *, protocol: str = "validation_split", fraction: float = 0.2, seed: int = 0,
          callbacks: Sequence[keras.callbacks.Callback] = (), builder: LoadedBuilder | None = None,
          compile: StudyCompile = HPOS_COMPILE) -> TrainResult:
    """Train ``params`` for all its epochs and score it on the test set."""
    training = Training(params, data, protocol=protocol, fraction=fraction, seed=seed, callbacks=callbacks,
                        builder=builder, compile=compile)
    for _ in training.epochs():
        pass
    return training.result()


def _score(model: keras.Model, history: Mapping[str, Sequence[float]], data: Dataset, *, fit_images: int,
           batch_size: int, fit_seconds: float, build_seconds: float) -> TrainResult:
    """The result of the epochs in ``history``: the model as it is now, scored on the test set."""
    epochs_run = len(history.get("loss", []))
    # One pass over the test set gives the report's two columns and the confusion matrix;
    # model.evaluate would trace and run a second one (about 2 s a trial here).
    probabilities = model.predict(data.x_test, batch_size=1024, verbose=0)
    predicted = np.argmax(probabilities, axis=1)
    test_loss, test_accuracy = _loss_and_accuracy(probabilities, data.y_test, predicted)
    val_accuracy = float(history["val_accuracy"][-1]) if epochs_run else math.nan
    val_loss = float(history["val_loss"][-1]) if epochs_run else math.nan
    steps = math.ceil(fit_images / batch_size) * epochs_run
    diverged = _diverged(history.get("loss", []), steps, test_accuracy, data.num_classes)
    if diverged:
        log.info("training diverged: test accuracy %.4f, loss %s after %d steps", test_accuracy,
                 list(history["loss"][-1:]), steps)
    return _result(model, history, data, fit_images=fit_images, fit_seconds=fit_seconds, build_seconds=build_seconds,
                   steps=steps, diverged=diverged, confusion=confusion_matrix(data.y_test, predicted, data.num_classes),
                   scores={}, val_accuracy=val_accuracy, val_loss=val_loss, test_accuracy=test_accuracy,
                   test_loss=test_loss)


def _score_any(model: keras.Model, history: Mapping[str, Sequence[float]], data: Dataset, *, fit_images: int,
               batch_size: int, fit_seconds: float, build_seconds: float) -> TrainResult:
    """The result of a model compiled with a loss and metrics of its own: every metric it reports,
    on the validation set (the last epoch's, ``val_<name>``) and on the test set (``test_<name>``)."""
    epochs_run = len(history.get("loss", []))
    tested = model.evaluate(data.x_test, data.y_test, batch_size=max(batch_size, 256), verbose=0, return_dict=True)
    scores = {name: float(values[-1]) for name, values in history.items() if name.startswith("val_") and values}
    scores |= {f"test_{name}": float(value) for name, value in tested.items() if np.ndim(value) == 0}
    steps = math.ceil(fit_images / batch_size) * epochs_run
    losses = history.get("loss", [])
    diverged = not all(math.isfinite(loss) for loss in losses) or not math.isfinite(scores.get("test_loss", 0.0))
    return _result(model, history, data, fit_images=fit_images, fit_seconds=fit_seconds, build_seconds=build_seconds,
                   steps=steps, diverged=diverged, confusion=None, scores=scores,
                   **{name: scores.get(name, math.nan) for name in ("val_accuracy", "val_loss", "test_accuracy",
                                                                     "test_loss")})


def _result(model: keras.Model, history: Mapping[str, Sequence[float]], data: Dataset, *, fit_images: int,
            fit_seconds: float, build_seconds: float, steps: int, diverged: bool, confusion: np.ndarray | None,
            scores: dict[str, float], val_accuracy: float, val_loss: float, test_accuracy: float,
            test_loss: float) -> TrainResult:
    """A TrainResult of the epochs in ``history``, with its scores."""
    epochs_run = len(history.get("loss", []))
    return TrainResult(
        history={k: [float(v) for v in values] for k, values in history.items()},
        val_accuracy=val_accuracy,
        val_loss=val_loss,
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        epochs_run=epochs_run,
        fit_seconds=fit_seconds,
        build_seconds=build_seconds,
        images_per_second=fit_images * epochs_run / fit_seconds if fit_seconds > 0 else 0.0,
        steps=steps,
        diverged=diverged,
        xla=bool(getattr(model, "jit_compile", False)),
        model=model,
        confusion=confusion,
        class_names=tuple(data.class_names),
        scores=scores,
    )


def _loss_and_accuracy(probabilities: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Sparse categorical cross-entropy and accuracy, as Keras computes them (clipped at 1e-7)."""
    p = np.clip(probabilities[np.arange(len(labels)), labels].astype(np.float64), 1e-7, 1.0 - 1e-7)
    return float(-np.log(p).mean()), float((predicted == labels).mean())


def _diverged(losses: Sequence[float], steps: int, test_accuracy: float, num_classes: int) -> bool:
    """True when training went wrong, as against having learned nothing yet.

    A fresh classifier starts at a training loss of ln(classes), uniform guessing (2.303 for
    CIFAR-10). Diverged is a non-finite loss at any point, or, after ``JUDGE_AFTER_STEPS``
    steps, a final training loss still at or above that start: above it by 10% (worse than
    guessing), or within 1% of it with chance accuracy on the test set (collapsed to one class,
    the report's 10% rows at lr 0.01). A shorter run near chance has just not learned yet.
    """
    if not losses:
        return False
    if not all(math.isfinite(loss) for loss in losses):
        return True
    if steps < JUDGE_AFTER_STEPS:
        return False
    chance, final = math.log(num_classes), losses[-1]
    worse_than_guessing = final > 1.10 * chance
    stuck_at_chance = final >= 0.99 * chance and test_accuracy <= 1.5 / num_classes
    return worse_than_guessing or stuck_at_chance


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix
