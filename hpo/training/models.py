"""The models hpo trains: the report's CNNs with their knobs, or a builder of the user's own.

Building is kept apart from training (as keras-tuner's ``HyperModel.build`` is from ``fit``):
:func:`build_model` returns an uncompiled model, :func:`compile_model` adds the optimizer, loss
and metrics the report used. Every model takes pixels in 0..255 (uint8 or float), applies the
augmentation layer if one is asked for, rescales to 0..1, then runs its layer stack: the
report's (:func:`report_layers`, shaped by the knobs of :mod:`hpo.study.space`), or the model a
user's builder returns (:func:`build_own`). Only the public ``keras`` API is used, so the models
run under any Keras backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from hpo.errors import ConfigError, TrialError, ended_by
from hpo.study.space import ARCHITECTURES, MODEL_KNOBS, OPTIMIZERS, check_value  # the one rule for each value
from hpo.training.augment import augmentation_layer

logger = logging.getLogger(__name__)

def report_layers(architecture: str, knobs: Mapping[str, Any], num_classes: int) -> list[keras.layers.Layer]:
    """The layers of one of the report's CNNs, its knobs set from ``knobs`` (the rest its own).

    A block is Conv2D (3x3, relu), BatchNormalization where ``batch_norm``, MaxPooling2D (2x2),
    and Dropout(``dropout_conv``) between blocks; then Flatten, Dense(``dense_units``, relu),
    BatchNormalization, Dropout(``dropout_dense``) and the softmax. With its own knobs each is the
    report's model, layer for layer (tests/test_models.py).
    """
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {architecture!r}; valid names: {', '.join(ARCHITECTURES)}")
    k = {**ARCHITECTURES[architecture], **{name: value for name, value in knobs.items() if name in MODEL_KNOBS}}
    stack: list[keras.layers.Layer] = []
    for block in range(1, int(k["conv_blocks"]) + 1):
        stack.append(layers.Conv2D(int(k[f"filters_{block}"]), (3, 3), activation="relu"))
        if k["batch_norm"]:
            stack.append(layers.BatchNormalization())
        stack.append(layers.MaxPooling2D((2, 2)))
        if block < k["conv_blocks"] and k["dropout_conv"] > 0:
            stack.append(layers.Dropout(float(k["dropout_conv"])))
    stack += [layers.Flatten(), layers.Dense(int(k["dense_units"]), activation="relu")]
    if k["batch_norm"]:
        stack.append(layers.BatchNormalization())
    if k["dropout_dense"] > 0:
        stack.append(layers.Dropout(float(k["dropout_dense"])))
    stack.append(layers.Dense(num_classes, activation="softmax"))
    return stack


def smallest_image(conv_blocks: int) -> int:
    """The smallest height and width that ``conv_blocks`` valid 3x3 convolutions, each followed
    by a 2x2 pooling, leave at least one pixel of."""
    size = 1
    for _ in range(conv_blocks):
        size = 2 * size + 2
    return size


def build_model(
    architecture: str,
    *,
    augmentation: str = "none",
    input_shape: tuple[int, ...] = (32, 32, 3),
    num_classes: int = 10,
    seed: int | None = None,
    knobs: Mapping[str, Any] | None = None,
) -> keras.Model:
    """Build (not compile) the model for ``architecture`` with ``augmentation`` in front.

    ``seed`` seeds the augmentation layer's random draws; weight initialisation follows Keras'
    global seed (``keras.utils.set_random_seed``).

    Raises:
        ConfigError: unknown architecture or augmentation name.
        TrialError: more conv blocks than the images have room for.
    """
    stack = report_layers(architecture, knobs or {}, num_classes)
    blocks = sum(isinstance(layer, layers.Conv2D) for layer in stack)
    if min(input_shape[:2]) < smallest_image(blocks):
        raise TrialError(f"{blocks} conv blocks need images of at least {smallest_image(blocks)}x"
                         f"{smallest_image(blocks)} pixels; these are {input_shape[0]}x{input_shape[1]}")
    logger.debug("built %s (augmentation=%s, input_shape=%s)", architecture, augmentation, input_shape)
    return keras.Sequential([*_front(input_shape, augmentation, seed), *stack], name=architecture)


def _front(input_shape: tuple[int, ...], augmentation: str, seed: int | None) -> list[Any]:
    """What every model starts with: its input, the augmentation asked for, the rescaling to 0..1."""
    augment = augmentation_layer(augmentation, seed=seed)
    return [keras.Input(shape=input_shape), *([augment] if augment is not None else []), layers.Rescaling(1.0 / 255)]


def build_own(builder: Callable[..., Any], name: str, params: Mapping[str, Any], *, augmentation: str = "none",
              input_shape: tuple[int, ...], num_classes: int, seed: int | None = None, images: bool = True,
              check_classes: bool = True) -> keras.Model:
    """The model a user's builder returns, behind hpo's front where the data is images.

    ``builder(params, input_shape=..., num_classes=...)`` is called with the trial's parameters
    (every one, hpo's own included). On image data it must return a ``keras.Model`` taking
    ``input_shape`` images in 0..1 (hpo's front, augmentation and rescaling, comes before it); on
    other data (``images=False``) one taking the arrays as they are, and ``num_classes`` is None
    where the targets are not classes. With ``check_classes`` (hpo's own compile, sparse
    cross-entropy) it must give ``num_classes`` probabilities (a softmax). It may return a compiled
    model: its loss and metrics are kept (:func:`compile_own`).

    Raises:
        TrialError: the builder raised (SystemExit and KeyboardInterrupt too: no user's code ends
            an hpo process), or returned something hpo cannot train (a trial that fails once: no
            retry would mend it).
    """
    try:
        model = builder(dict(params), input_shape=tuple(input_shape), num_classes=num_classes or None)
    except Exception as e:  # the user's code: anything at all
        raise TrialError(f"{name} raised {type(e).__name__}: {e}") from e
    except (SystemExit, KeyboardInterrupt) as e:  # a user's code never ends an hpo process
        raise TrialError(f"{name} {ended_by(e)}, instead of returning a model") from e
    if not isinstance(model, keras.Model):
        raise TrialError(f"{name} returned {type(model).__name__}, not a keras.Model")
    front = _front(input_shape, augmentation, seed) if images else [keras.Input(shape=input_shape)]
    what = "images" if images else "examples"
    try:
        wrapped = keras.Sequential([*front, model], name="own")
        wrapped.output_shape  # noqa: B018  (built on the data's shape: Keras refuses one that does not fit)
    except Exception as e:  # Keras' refusal of a model that does not fit the images
        raise TrialError(f"{name}: its model does not take {'x'.join(map(str, input_shape))} {what} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    except (SystemExit, KeyboardInterrupt) as e:  # its layers' code, called on the images' shape
        raise TrialError(f"{name}: its model {ended_by(e)} when called on {'x'.join(map(str, input_shape))} "
                         f"{what}") from e
    if check_classes:
        check_class_outputs(wrapped, num_classes, name)
    return wrapped


def check_class_outputs(model: keras.Model, num_classes: int, name: str) -> None:
    """Refuse a model for hpo's own compile (sparse cross-entropy) without one output per class."""
    output = tuple(model.output_shape)
    if output[1:] != (num_classes,):
        raise TrialError(f"{name}: its model gives outputs of shape {output[1:]}; the data has {num_classes} "
                         f"classes, so it must give ({num_classes},)")


def own_compile(model: keras.Model) -> dict[str, Any] | None:
    """What the builder's own model (the last layer of :func:`build_own`'s) was compiled with:
    ``model.compile``'s arguments (optimizer, loss, metrics, ...), or None for one not compiled."""
    inner = model.layers[-1] if model.layers else model
    if not getattr(inner, "compiled", False):
        return None
    config = getattr(inner, "_compile_config", None)  # Keras 3 keeps compile's arguments here
    if config is None:
        return {"optimizer": inner.optimizer, "loss": inner.loss}
    return dict(config.config)


@dataclass(frozen=True)
class StudyCompile:
    """How a study compiles a builder's model: the ``[model] loss`` and ``metrics`` it names, and
    whether its space names the optimizer (else a compiled model keeps its own, at the trial's
    learning rate)."""

    loss: str | None = None
    metrics: tuple[str, ...] = ()
    optimizer_named: bool = False

    def is_hpos(self, own: Mapping[str, Any] | None) -> bool:
        """Whether hpo's own compile applies (the report's: sparse cross-entropy and accuracy)."""
        return own is None and self.loss is None and not self.metrics


def compile_own(model: keras.Model, own: Mapping[str, Any] | None, study: StudyCompile, learning_rate: float, *,
                optimizer: str = "adam", settings: Mapping[str, Any] | None = None, classes: bool = True,
                name: str = "the builder") -> keras.Model:
    """Compile a builder's model with its own loss and metrics (``own``, :func:`own_compile`) or
    the study's (``study``; the study's win), and the trial's optimizer and learning rate.

    The optimizer is the trial's where the space names one, else the compiled model's own kind
    with its settings, at the trial's learning rate, else Adam.

    Raises:
        TrialError: no loss anywhere for targets that are not classes, or a name Keras does not know.
    """
    check_value("learning_rate", learning_rate, "compile_own(learning_rate)")
    own = dict(own or {})
    loss = study.loss if study.loss is not None else own.get("loss")
    if loss is None:
        if not classes:
            raise TrialError(f"{name}: its model is not compiled and the study names no loss; the targets are "
                             "not classes, so say which loss ([model] loss, or loss= in hpo.tune)")
        loss = "sparse_categorical_crossentropy"
    metrics = list(study.metrics) if study.metrics else own.get("metrics")
    if metrics is None and own.get("loss") is None and classes:
        metrics = ["accuracy"]
    chosen = own.get("optimizer")
    if study.optimizer_named or chosen is None:
        trained_by = make_optimizer(optimizer, float(learning_rate), settings or {})
    else:
        try:
            mine = keras.optimizers.get(chosen)
            trained_by = type(mine).from_config({**mine.get_config(), "learning_rate": float(learning_rate)})
        except (ValueError, TypeError) as e:
            raise TrialError(f"{name}: cannot set its optimizer's learning rate ({type(e).__name__}: {e})") from e
    try:
        model.compile(optimizer=trained_by, loss=loss, metrics=metrics, loss_weights=own.get("loss_weights"),
                      weighted_metrics=own.get("weighted_metrics"))
    except (ValueError, TypeError) as e:  # a loss or metric Keras does not know
        raise TrialError(f"{name}: cannot compile its model with loss {loss!r} and metrics {metrics!r} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    return model


def compile_model(
    model: keras.Model,
    learning_rate: float,
    *,
    optimizer: str = "adam",
    settings: Mapping[str, Any] | None = None,
    jit_compile: bool | str = "auto",
    steps_per_execution: int = 1,
) -> keras.Model:
    """Compile ``model`` as the report did: Adam, sparse categorical cross-entropy, accuracy.

    ``optimizer`` may be another of :data:`hpo.study.space.OPTIMIZERS`, with its ``settings``
    (momentum, weight decay; the rest its defaults).

    ``jit_compile="auto"`` lets Keras decide; note that on the TensorFlow backend it means no XLA
    on a CPU-only machine. Returns the same model, for chaining.

    Raises:
        ConfigError: ``learning_rate`` is not a positive finite number (the study files' rule,
            :mod:`hpo.study.definition`'s, so the two cannot drift apart).
    """
    check_value("learning_rate", learning_rate, "compile_model(learning_rate)")
    model.compile(
        optimizer=make_optimizer(optimizer, float(learning_rate), settings or {}),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def make_optimizer(name: str, learning_rate: float, settings: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """Adam as the report; SGD with momentum, RMSprop or AdamW with their settings."""
    check_value("optimizer", name, "compile_model(optimizer)")
    chosen = {key: float(settings.get(key, default)) for key, default in OPTIMIZERS[name].items()}
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, **chosen)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate, **chosen)
    return keras.optimizers.AdamW(learning_rate=learning_rate, **chosen)
