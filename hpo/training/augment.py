"""Data augmentation that runs inside the compiled training step.

Experiment 4 of the report augmented with ``ImageDataGenerator(rotation_range=15,
width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True)``: a NumPy/SciPy loop on the
host, one image at a time. Keras' own ``RandomRotation`` and ``RandomTranslation`` layers declare
``supports_jit = False``, so a model that holds them silently trains without XLA (measured on a
GPU under JAX: 198 s per epoch against 2.4 s).

:class:`RandomAffine` does the same augmentation as one Keras layer written only with
``keras.ops`` and ``keras.random``: per image it draws a rotation, a translation and a horizontal
flip, composes them into ONE affine transform about the image centre, and resamples the image
once (bilinear, edges extended with the nearest pixel, as ``ImageDataGenerator`` does by default).
It is active only when ``training=True``; at inference it is the identity.

The resampling is a gather over the flattened batch rather than ``keras.ops.image.affine_transform``
because on the TensorFlow backend that op lowers to ``ImageProjectiveTransformV3``, which has no
XLA kernel: a model using it fails to compile with ``jit_compile=True``. The matrix convention is
the same as ``affine_transform``'s (a row ``[a0, a1, a2, b0, b1, b2, c0, c1]`` maps an OUTPUT
pixel ``(x, y)`` to the INPUT point ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``), and the tests check
the two agree.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from collections.abc import Mapping

import keras
from keras import ops

from hpo.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Augmentation:
    """The report's augmentation settings, in ``ImageDataGenerator``'s terms.

    ``rotation`` is in degrees (uniform in ±rotation); the shifts are fractions of the image width
    and height (uniform in ±shift); ``horizontal_flip`` flips half of the images.
    """

    rotation: float
    width_shift: float
    height_shift: float
    horizontal_flip: bool


AUGMENTATIONS: Mapping[str, Augmentation | None] = MappingProxyType(
    {
        "none": None,
        "standard": Augmentation(rotation=15.0, width_shift=0.1, height_shift=0.1, horizontal_flip=True),
    }
)


def affine_transforms(angle: Any, tx: Any, ty: Any, flip: Any, height: int, width: int) -> Any:
    """Build one output-to-input transform per image, shape ``(N, 8)``.

    The output image is the input flipped horizontally (where ``flip`` is true), rotated by
    ``angle`` radians about the image centre, then shifted by ``tx`` pixels right and ``ty``
    pixels down. All arguments but the sizes are tensors of shape ``(N,)``. The rows follow
    ``keras.ops.image.affine_transform``'s convention, so they map OUTPUT to INPUT coordinates:
    in coordinates centred on the image, ``input = S @ R(-angle) @ (output - t)`` with
    ``S = diag(-1 if flip else 1, 1)``.
    """
    cx = (width - 1) / 2.0  # pixel centres sit on integer coordinates
    cy = (height - 1) / 2.0
    sign = ops.where(flip, -1.0, 1.0)
    cos, sin = ops.cos(angle), ops.sin(angle)
    a0, a1 = sign * cos, sign * sin
    b0, b1 = -sin, cos
    # input = A @ (output - c - t) + c, so the offset is c - A @ (c + t).
    ox, oy = cx + tx, cy + ty
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    zeros = ops.zeros_like(a0)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def warp(images: Any, transforms: Any) -> Any:
    """Resample a float batch ``(N, H, W, C)`` through per-image affine ``transforms`` ``(N, 8)``.

    Bilinear interpolation; points outside the image take the nearest edge pixel (clamping the
    source coordinate before interpolating is exactly that). Only gathers and arithmetic, so it
    compiles under XLA on every backend.
    """
    _, height, width, channels = images.shape
    rows = ops.arange(height, dtype="float32")
    cols = ops.arange(width, dtype="float32")
    ys, xs = ops.meshgrid(rows, cols, indexing="ij")  # (H, W)
    t = ops.cast(transforms, "float32")[:, :, None, None]  # (N, 8, 1, 1)
    src_x = ops.clip(t[:, 0] * xs + t[:, 1] * ys + t[:, 2], 0.0, width - 1.0)  # (N, H, W)
    src_y = ops.clip(t[:, 3] * xs + t[:, 4] * ys + t[:, 5], 0.0, height - 1.0)
    x0f, y0f = ops.floor(src_x), ops.floor(src_y)
    wx = (src_x - x0f)[..., None]
    wy = (src_y - y0f)[..., None]
    x0 = ops.cast(x0f, "int32")
    y0 = ops.cast(y0f, "int32")
    x1 = ops.minimum(x0 + 1, width - 1)
    y1 = ops.minimum(y0 + 1, height - 1)

    flat = ops.reshape(images, (-1, channels))  # (N*H*W, C)
    batch = ops.shape(images)[0]
    base = (ops.arange(batch, dtype="int32") * (height * width))[:, None, None]

    def gather(y: Any, x: Any) -> Any:
        return ops.take(flat, base + y * width + x, axis=0)  # (N, H, W, C)

    top = gather(y0, x0) * (1.0 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1.0 - wx) + gather(y1, x1) * wx
    return top * (1.0 - wy) + bottom * wy


@keras.saving.register_keras_serializable(package="hpo")
class RandomAffine(keras.layers.Layer):
    """Random rotation, translation and horizontal flip as one affine resample per image.

    Args:
        rotation: largest rotation in degrees; each image gets a uniform angle in ±rotation.
        width_shift: largest horizontal shift as a fraction of the width (uniform in ±).
        height_shift: largest vertical shift as a fraction of the height (uniform in ±).
        flip_probability: chance that an image is flipped left-right (0.5 for the report).
        seed: seed of the layer's ``keras.random.SeedGenerator``; None draws one.

    Input: a channels-last batch ``(N, H, W, C)`` of any numeric dtype; the output has the same
    shape and dtype (integer images are rounded back after interpolation).
    """

    def __init__(
        self,
        rotation: float = 0.0,
        width_shift: float = 0.0,
        height_shift: float = 0.0,
        flip_probability: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        checks = {
            "rotation": (rotation, 0.0, 180.0),
            "width_shift": (width_shift, 0.0, 1.0),
            "height_shift": (height_shift, 0.0, 1.0),
            "flip_probability": (flip_probability, 0.0, 1.0),
        }
        for name, (value, low, high) in checks.items():
            if not (low <= float(value) <= high):
                raise ValueError(f"RandomAffine: {name} must be in [{low}, {high}]. Received: {name}={value!r}")
        self.rotation = float(rotation)
        self.width_shift = float(width_shift)
        self.height_shift = float(height_shift)
        self.flip_probability = float(flip_probability)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
            raise ValueError(
                "RandomAffine expects a channels-last batch (N, H, W, C) with known H, W, C. "
                f"Received: input_shape={input_shape}"
            )

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return inputs
        _, height, width, _ = inputs.shape
        batch = ops.shape(inputs)[0]
        # One draw of four uniforms per image: angle, x shift, y shift, flip.
        u = keras.random.uniform((batch, 4), seed=self.seed_generator)
        angle = (2.0 * u[:, 0] - 1.0) * math.radians(self.rotation)
        tx = (2.0 * u[:, 1] - 1.0) * (self.width_shift * width)
        ty = (2.0 * u[:, 2] - 1.0) * (self.height_shift * height)
        flip = u[:, 3] < self.flip_probability
        transforms = affine_transforms(angle, tx, ty, flip, height, width)
        out = warp(ops.cast(inputs, "float32"), transforms)
        if not keras.backend.is_float_dtype(inputs.dtype):
            # Bilinear weights are convex, so the result stays inside the input's range.
            out = ops.round(out)
        return ops.cast(out, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            rotation=self.rotation,
            width_shift=self.width_shift,
            height_shift=self.height_shift,
            flip_probability=self.flip_probability,
            seed=self.seed,
        )
        return config


def augmentation_layer(name: str, *, seed: int | None = None) -> keras.layers.Layer | None:
    """The layer for augmentation ``name`` from :data:`AUGMENTATIONS`, or None for ``"none"``.

    Raises:
        ConfigError: ``name`` is not a known augmentation.
    """
    if name not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {name!r}; valid names: {', '.join(AUGMENTATIONS)}")
    spec = AUGMENTATIONS[name]
    if spec is None:
        return None
    logger.debug("augmentation %r: %s (seed=%s)", name, spec, seed)
    return RandomAffine(
        rotation=spec.rotation,
        width_shift=spec.width_shift,
        height_shift=spec.height_shift,
        flip_probability=0.5 if spec.horizontal_flip else 0.0,
        seed=seed,
        name="augment",
    )
