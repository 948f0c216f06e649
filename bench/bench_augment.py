"""Benchmark: the report's ImageDataGenerator pipeline against RandomAffine, images per second.

Both augment the same uint8 CIFAR-10 images (the real ones when ``HPO_DATA`` points at the data
and ``hpo.training.data`` is importable, random pixels otherwise) with rotation 15, shifts 0.1 and
horizontal flips, 64 images a batch. ImageDataGenerator runs its NumPy/SciPy loop on the host;
RandomAffine runs as a model whose predict step is compiled with ``jit_compile=True``, driven one
batch at a time as ``fit`` drives its train step: uint8 batches in, float32 augmented batches out
(the headline ratio); ``model.predict`` over the whole array is shown too. Warm-up (including XLA
compilation) is excluded; each side reports the best of ``--repeats`` full passes.

    python bench/bench_augment.py --images 10000 --threads 1 [--grid /tmp/aug_grid.png]

``--threads`` caps TensorFlow's intra- and inter-op thread pools (XLA on CPU uses the intra-op
pool); it has no effect on other backends. ImageDataGenerator is single-threaded either way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
from keras import ops

from hpo.training.augment import AUGMENTATIONS, RandomAffine, augmentation_layer

BATCH = 64


def limit_threads(threads: int | None) -> None:
    if threads is None or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def load_images(n: int) -> tuple[np.ndarray, str]:
    source = os.environ.get("HPO_DATA")
    if source:
        try:
            from hpo.training.data import load_dataset
        except ImportError:
            pass
        else:
            data = load_dataset(source, subset=n)
            return np.ascontiguousarray(data.x_train[:n]), f"CIFAR-10 train ({source})"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), "random uint8"


def image_data_generator() -> Any:
    try:
        from keras.preprocessing.image import ImageDataGenerator  # type: ignore[attr-defined]
    except ImportError:  # Keras 3 keeps it only in its legacy namespace
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    spec = AUGMENTATIONS["standard"]
    assert spec is not None
    return ImageDataGenerator(
        rotation_range=spec.rotation,
        width_shift_range=spec.width_shift,
        height_shift_range=spec.height_shift,
        horizontal_flip=spec.horizontal_flip,
    )


class Augmenter(keras.Model):
    """Only the augmentation, always in training mode: uint8 in, float32 out, as in ``fit``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        layer = augmentation_layer("standard", seed=seed)
        assert layer is not None
        self.augment = layer

    def call(self, x: object) -> object:
        return self.augment(ops.cast(x, "float32"), training=True)


def generator_pass(x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    """One epoch of the report's pipeline, warmed up."""
    gen = image_data_generator()
    next(iter(gen.flow(x[:BATCH], y[:BATCH], batch_size=BATCH)))

    def run() -> None:
        flow = gen.flow(x, y, batch_size=BATCH, shuffle=False)
        for _ in range(len(flow)):
            next(flow)

    return run


def layer_passes(x: np.ndarray) -> tuple[Callable[[], None], Callable[[], None]]:
    """One pass of RandomAffine per batch through a compiled step, and one through ``predict``.

    The first drives Keras' own jit-compiled predict function one batch at a time, as ``fit``
    drives its train step: it still pays the host-to-device copy of each uint8 batch and the copy
    of the augmented batch back, which a training step does not. The second adds ``predict``'s
    loop (tf.data, callbacks, concatenating all outputs), which is not augmentation cost.
    """
    model = Augmenter()
    model.compile(jit_compile=True)
    batches = [x[i : i + BATCH] for i in range(0, len(x), BATCH)]
    model.predict(x, batch_size=BATCH, verbose=0)  # warm-up: compiles full and last-batch shapes
    for batch in (batches[0], batches[-1]):
        model.predict_on_batch(batch)

    def per_batch() -> None:
        for batch in batches:
            model.predict_on_batch(batch)

    return per_batch, lambda: model.predict(x, batch_size=BATCH, verbose=0)


def best_rates(n: int, runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Images per second of each run's fastest pass; passes interleave so noise hits all alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: n / seconds for name, seconds in best.items()}


def save_grid(x: np.ndarray, path: Path) -> None:
    """16 originals, each followed by RandomAffine's and ImageDataGenerator's augmentations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    originals = x[:16]
    ours = ops.convert_to_numpy(RandomAffine(15, 0.1, 0.1, 0.5, seed=1)(originals, training=True))
    theirs = next(iter(image_data_generator().flow(originals, batch_size=16, shuffle=False, seed=1)))
    fig, axes = plt.subplots(4, 12, figsize=(12, 4.6))
    for i in range(16):
        for j, (img, title) in enumerate(
            [(originals[i], "original"), (ours[i], "RandomAffine"), (theirs[i], "ImageDataGen")]
        ):
            ax = axes[i // 4, (i % 4) * 3 + j]
            ax.imshow(np.clip(img, 0, 255).astype(np.uint8), interpolation="nearest")
            ax.set_axis_off()
            if i < 4:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"grid saved to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow intra/inter-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", type=Path, default=None, help="also save a PNG of 16 augmented images")
    args = parser.parse_args()

    limit_threads(args.threads)
    x, what = load_images(args.images)
    y = np.zeros(len(x), dtype=np.int64)
    print(f"backend={keras.backend.backend()} threads={args.threads or 'default'} images={len(x)} ({what}), "
          f"batch={BATCH}, best of {args.repeats}")

    step, whole = layer_passes(x)
    runs = {"ImageDataGenerator.flow": generator_pass(x, y), "RandomAffine, jit step": step,
            "RandomAffine, model.predict": whole}
    rates = best_rates(len(x), runs, args.repeats)
    baseline = rates["ImageDataGenerator.flow"]
    for name, rate in rates.items():
        print(f"{name:30s}{rate:10,.0f} images/s  {rate / baseline:5.1f}x")
    if args.grid is not None:
        save_grid(x, args.grid)


if __name__ == "__main__":
    main()
