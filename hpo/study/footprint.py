"""What training a study's models needs in memory, estimated before any model is built.

A model far too large for the machine (the report's base model on 2000x2000 images has about
4.1 billion parameters) is refused when its study is created, saying how much it needs, instead
of every worker being killed for memory. The estimate, in float32: the weights, their gradients
and an optimizer's two moments (Adam's), four copies of every parameter, plus each layer's output
for a batch, kept for the backward pass, with its gradient. The report's models are counted from
their knobs; a builder's model from what its dry build returned (:mod:`hpo.training.probe`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hpo.study.space import ARCHITECTURES, MAX_CONV_BLOCKS, Range, Spec

BYTES = 4  # float32
PARAMETER_COPIES = 4  # weights, gradients, and the optimizer's two moments
ACTIVATION_COPIES = 2  # each layer's output for the backward pass, and its gradient


def training_bytes(parameters: int, activations: int = 0, batch_size: int = 1) -> int:
    """Bytes to train a model of ``parameters`` whose layers give ``activations`` values per example."""
    return BYTES * (PARAMETER_COPIES * parameters + ACTIVATION_COPIES * activations * batch_size)


def report_model(knobs: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> tuple[int, int]:
    """(parameters, activations per image) of the report's CNN with ``knobs`` (all of them given)
    on ``input_shape`` images, as :func:`hpo.training.models.report_layers` builds it."""
    height, width, channels = input_shape
    parameters, activations = 0, 2 * height * width * channels  # the rescaled input (and any augmentation)
    norm = bool(knobs["batch_norm"])
    for block in range(1, int(knobs["conv_blocks"]) + 1):
        filters = int(knobs[f"filters_{block}"])
        height, width = max(height - 2, 0), max(width - 2, 0)
        parameters += (9 * channels + 1) * filters + (4 * filters if norm else 0)
        activations += height * width * filters * (2 if norm else 1)
        height, width = height // 2, width // 2
        activations += height * width * filters
        channels = filters
    units = int(knobs["dense_units"])
    parameters += (height * width * channels + 1) * units + (4 * units if norm else 0) + (units + 1) * num_classes
    return parameters, activations + units * (2 if norm else 1) + num_classes


@dataclass(frozen=True)
class Largest:
    """The space's largest model: where it is, its parameters and what training it needs."""

    point: Mapping[str, Any]
    parameters: int
    bytes: int


def largest_report_model(space: Mapping[str, Spec], conditional: Mapping[str, Mapping[str, Spec]],
                         input_shape: tuple[int, ...], num_classes: int) -> Largest:
    """The report's model of the space that needs the most memory: per architecture (and number
    of conv blocks), every knob at the top of its values, at the largest batch size."""
    batch = int(_top(space["batch_size"]))
    best: Largest | None = None
    for architecture in _values(space.get("architecture", "base")):
        table = {**space, **conditional.get(str(architecture), {})}
        knobs = dict(ARCHITECTURES[str(architecture)])
        for name in knobs:
            if name in table and name != "conv_blocks":
                knobs[name] = _top(table[name])
        for blocks in _blocks(table.get("conv_blocks", knobs["conv_blocks"])):
            point = {**knobs, "conv_blocks": blocks}
            parameters, activations = report_model(point, input_shape, num_classes)
            need = training_bytes(parameters, activations, batch)
            if best is None or need > best.bytes:
                best = Largest({"architecture": architecture, **point, "batch_size": batch}, parameters, need)
    assert best is not None  # a space has one architecture at least
    return best


def _values(spec: Any) -> Iterator[Any]:
    yield from (spec if isinstance(spec, (tuple, list)) else (spec,))


def _top(spec: Any) -> Any:
    if isinstance(spec, Range):
        return spec.high
    return max(_values(spec))


def _blocks(spec: Any) -> Iterator[int]:
    if isinstance(spec, Range):
        yield from range(max(int(spec.low), 1), min(int(spec.high), MAX_CONV_BLOCKS) + 1)
    else:
        yield from (int(v) for v in dict.fromkeys(_values(spec)))
