"""Tests for hpo.training.models: the report's architectures, their registry and compilation."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from hpo.training.augment import RandomAffine
from hpo.errors import ConfigError, TrialError
from hpo.training.models import ARCHITECTURES, build_model, compile_model

# The report's layer stacks, after the shared Rescaling(1/255) front.
LAYERS = {
    "base": ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"],
    "deeper_dropout": [
        "Conv2D", "MaxPooling2D", "Dropout", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout", "Dense",
    ],
    "batchnorm": ["Conv2D", "BatchNormalization", "MaxPooling2D", "Flatten", "Dense", "BatchNormalization", "Dense"],
}


def _count(weights: list) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


def test_registry_keys() -> None:
    assert list(ARCHITECTURES) == ["base", "deeper_dropout", "batchnorm"]


@pytest.mark.parametrize(
    ("architecture", "trainable", "non_trainable"),
    [
        # conv 3*3*3*32+32 = 896; 15*15*32 = 7200 -> dense 7200*128+128 = 921,728; 128*10+10 = 1,290
        ("base", 923_914, 0),
        # + conv 3*3*32*128+128 = 36,992; 6*6*128 = 4608 -> dense 4608*128+128 = 589,952
        ("deeper_dropout", 629_130, 0),
        # base + BN gamma/beta 2*32 + 2*128 = 320 trainable, moving mean/variance 320 not
        ("batchnorm", 924_234, 320),
    ],
)
def test_parameter_counts(architecture: str, trainable: int, non_trainable: int) -> None:
    model = build_model(architecture)
    assert _count(model.trainable_weights) == trainable
    assert _count(model.non_trainable_weights) == non_trainable


@pytest.mark.parametrize("architecture", list(LAYERS))
def test_layer_order(architecture: str) -> None:
    model = build_model(architecture)
    assert [type(layer).__name__ for layer in model.layers] == ["Rescaling", *LAYERS[architecture]]


def test_layer_settings_follow_the_report() -> None:
    model = build_model("deeper_dropout")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size, c.activation.__name__) for c in convs] == [
        (32, (3, 3), "relu"), (128, (3, 3), "relu"),
    ]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.25, 0.5]
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.layers[0].scale == pytest.approx(1 / 255)


def test_augmentation_sits_before_rescaling() -> None:
    model = build_model("batchnorm", augmentation="standard", seed=1)
    assert isinstance(model.layers[0], RandomAffine)
    assert model.layers[0].flip_probability == 0.5
    assert type(model.layers[1]).__name__ == "Rescaling"
    # The augmentation adds no weights.
    assert _count(model.trainable_weights) == 924_234


def test_unknown_architecture_names_the_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"'resnet'.*base, deeper_dropout, batchnorm"):
        build_model("resnet")


def test_unknown_augmentation_names_the_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"'mixup'"):
        build_model("base", augmentation="mixup")


def test_output_is_a_distribution_over_num_classes() -> None:
    model = build_model("base", num_classes=4, input_shape=(16, 16, 3))
    x = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3)).astype("uint8")
    probs = keras.ops.convert_to_numpy(model(x))
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # uint8 and float pixels are the same input.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x.astype("float32"))), probs, rtol=1e-5)


def test_builds_do_not_share_layers() -> None:
    a, b = build_model("base"), build_model("base")
    assert not set(map(id, a.layers)) & set(map(id, b.layers))


def test_compile_uses_adam_and_the_report_loss() -> None:
    model = compile_model(build_model("base"), 0.01, jit_compile=False, steps_per_execution=4)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.01)
    assert model.loss == "sparse_categorical_crossentropy"
    assert model.steps_per_execution == 4


@pytest.mark.parametrize("learning_rate", [0.0, -1e-3, float("nan"), "fast"])
def test_compile_rejects_bad_learning_rates(learning_rate: object) -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        compile_model(build_model("base"), learning_rate)  # type: ignore[arg-type]


def test_augmented_model_trains_under_xla_and_round_trips(tmp_path: Path) -> None:
    # torch's jit_compile means torch.compile, not XLA; the point here is XLA.
    jit = keras.backend.backend() != "torch"
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 32, 32, 3)).astype("uint8")
    y = rng.integers(0, 10, size=(64,))
    model = compile_model(build_model("batchnorm", augmentation="standard", seed=0), 1e-3, jit_compile=jit)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    # Keras silently drops to jit_compile=False for layers that do not support XLA.
    assert model.jit_compile is jit
    assert np.isfinite(history.history["loss"][0])

    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], RandomAffine)
    assert loaded.layers[0].get_config() == model.layers[0].get_config()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


# --- the architecture's knobs and the optimizer ----------------------------------------------------

@pytest.mark.parametrize("architecture", list(LAYERS))
def test_the_knobs_set_to_a_models_own_values_build_that_model_and_train_it_alike(architecture: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(64, 32, 32, 3)).astype("uint8")
    y = rng.integers(0, 10, size=(64,))
    weights = []
    for knobs in (None, dict(ARCHITECTURES[architecture])):
        keras.utils.set_random_seed(5)
        model = compile_model(build_model(architecture, seed=5, knobs=knobs), 1e-3, jit_compile=False)
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        weights.append([keras.ops.convert_to_numpy(w) for w in model.weights])
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))


def test_the_knobs_shape_the_model() -> None:
    knobs = {"conv_blocks": 3, "filters_1": 8, "filters_2": 16, "filters_3": 24, "dense_units": 40,
             "dropout_conv": 0.1, "dropout_dense": 0.3, "batch_norm": True}
    model = build_model("base", knobs=knobs)
    block = ["Conv2D", "BatchNormalization", "MaxPooling2D"]
    assert [type(layer).__name__ for layer in model.layers] == [
        "Rescaling", *block, "Dropout", *block, "Dropout", *block, "Flatten", "Dense", "BatchNormalization",
        "Dropout", "Dense"]
    convs = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs == [8, 16, 24]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.1, 0.1, 0.3]
    # 32 -> conv 30 -> pool 15 -> 13 -> 6 -> 4 -> 2: 2 x 2 x 24 = 96 inputs to Dense(40).
    assert model.layers[-4].kernel.shape == (96, 40)


def test_more_blocks_than_the_images_have_room_for_fail_the_trial() -> None:
    with pytest.raises(TrialError, match=r"2 conv blocks need images of at least 10x10 pixels; these are 8x8"):
        build_model("deeper_dropout", input_shape=(8, 8, 1))
    assert build_model("base", input_shape=(8, 8, 1)).output_shape == (None, 10)


@pytest.mark.parametrize(("name", "settings", "kind", "setting"), [
    ("sgd", {}, keras.optimizers.SGD, ("momentum", 0.9)),
    ("sgd", {"momentum": 0.5}, keras.optimizers.SGD, ("momentum", 0.5)),
    ("rmsprop", {"momentum": 0.2}, keras.optimizers.RMSprop, ("momentum", 0.2)),
    ("adamw", {"weight_decay": 0.01}, keras.optimizers.AdamW, ("weight_decay", 0.01)),
])
def test_the_optimizer_is_a_parameter_with_its_own_settings(name: str, settings: dict, kind: type,
                                                             setting: tuple[str, float]) -> None:
    model = compile_model(build_model("base"), 0.01, optimizer=name, settings={**settings, "dense_units": 64})
    assert type(model.optimizer) is kind
    assert getattr(model.optimizer, setting[0]) == pytest.approx(setting[1])
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.01)
