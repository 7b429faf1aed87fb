import keras
import numpy as np
import pytest

from keras_addons_qa.layers import WeightNormalization
from tests import harness


def _data(seed=0, shape=(128, 5)):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * 3 + 1).astype("float32")


@pytest.mark.parametrize("make, shape", [
    (lambda: keras.layers.Dense(4), (64, 5)),
    (lambda: keras.layers.Conv1D(3, 2), (16, 6, 2)),
    (lambda: keras.layers.Conv2D(3, 2), (16, 5, 5, 2)),
    (lambda: keras.layers.Conv3D(2, 2), (8, 3, 3, 3, 1)),
])
def test_data_init_normalizes_the_first_batch_once(make, shape):
    x = _data(1, shape)
    layer = WeightNormalization(make())
    first = harness.to_numpy(layer(x))
    axes = tuple(range(first.ndim - 1))
    np.testing.assert_allclose(first.mean(axis=axes), 0.0, atol=1e-4)
    np.testing.assert_allclose(first.std(axis=axes), 1.0, rtol=1e-3)
    # Not again: a batch twice as spread out comes out twice as spread out.
    second = harness.to_numpy(layer(2 * x))
    assert float(harness.to_numpy(layer.initialized)) == 1.0
    np.testing.assert_allclose(second.std(axis=axes), 2.0, rtol=1e-3)


def test_kernel_is_g_times_the_unit_direction():
    dense = keras.layers.Dense(3, kernel_initializer="glorot_uniform")
    layer = WeightNormalization(dense, data_init=False)
    x = _data(2, (10, 4))
    out = harness.to_numpy(layer(x))
    v = harness.to_numpy(dense.kernel)
    # data_init=False: g = ||v|| per unit, so the layer computes what Dense does.
    np.testing.assert_allclose(harness.to_numpy(layer.g), np.linalg.norm(v, axis=0), rtol=1e-6)
    np.testing.assert_allclose(out, x @ v + harness.to_numpy(dense.bias), rtol=1e-5, atol=1e-5)
    layer.g.assign(np.array([1.0, 2.0, 3.0], "float32"))
    kernel = v / np.linalg.norm(v, axis=0) * np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(harness.to_numpy(layer(x)), x @ kernel, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data_init", [True, False])
@pytest.mark.parametrize("make, shape", [
    (lambda: keras.layers.Dense(2), (3, 4)),
    (lambda: keras.layers.SimpleRNN(2), (3, 5, 4)),
    (lambda: keras.layers.LSTM(2), (3, 5, 4)),
    (lambda: keras.layers.Conv2D(3, 1), (3, 3, 3, 1)),
])
def test_remove_gives_the_same_outputs(make, shape, data_init):
    x = _data(3, shape)
    base = make()
    layer = WeightNormalization(base, data_init)
    out = harness.to_numpy(layer(x))
    removed = layer.remove()
    assert removed is base
    np.testing.assert_allclose(harness.to_numpy(removed(x)), out, rtol=1e-5, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="Received: layer="):
        WeightNormalization(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="contains a `kernel`"):
        WeightNormalization(keras.layers.MaxPooling2D(2))(np.zeros((1, 4, 4, 1), "float32"))


def test_fit_save_and_load_keep_the_initialization(tmp_path):
    x = _data(4)
    y = x[:, :1] * 0.5
    inputs = keras.Input((5,))
    hidden = WeightNormalization(keras.layers.Dense(8, activation="relu"))(inputs)
    outputs = WeightNormalization(keras.layers.Dense(1), data_init=False)(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse", jit_compile=harness.BACKEND != "torch")
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    wrapper = model.layers[1]
    assert float(harness.to_numpy(wrapper.initialized)) == 1.0
    assert np.any(harness.to_numpy(wrapper.g_init) != 0)
    restored = harness.save_and_reload(model, tmp_path)  # safe mode
    assert isinstance(restored.layers[1], WeightNormalization) and restored.layers[1].data_init
    np.testing.assert_allclose(
        harness.to_numpy(restored.predict(x, verbose=0)),
        harness.to_numpy(model.predict(x, verbose=0)), rtol=1e-6, atol=1e-6,
    )
    # The restored layer does not initialize again on other data.
    before = harness.to_numpy(restored.layers[1].g_init)
    restored.predict(x * 10, verbose=0)
    np.testing.assert_array_equal(harness.to_numpy(restored.layers[1].g_init), before)


def test_config_round_trip():
    layer = WeightNormalization(keras.layers.Conv2D(3, 1), data_init=False)
    clone = WeightNormalization.from_config(layer.get_config())
    assert clone.data_init is False and isinstance(clone.layer, keras.layers.Conv2D)
    rnn = WeightNormalization(keras.layers.SimpleRNN(2))
    assert WeightNormalization.from_config(rnn.get_config()).is_rnn


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    x = _data(5, (64, 5)) * 100  # large pre-activations
    with harness.dtype_policy(policy):
        layer = WeightNormalization(keras.layers.Dense(4))
        out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    out = harness.to_numpy(out).astype("float32")
    harness.assert_finite(out)
    np.testing.assert_allclose(out.std(axis=0), 1.0, rtol=3e-2)


@harness.tensorflow_only
def test_mirrored_strategy():
    x = _data(6, (64, 5))
    with harness.mirrored_strategy().scope():
        inputs = keras.Input((5,))
        model = keras.Model(inputs, WeightNormalization(keras.layers.Dense(1))(inputs))
        model.compile("sgd", "mse")
    history = model.fit(x, x[:, :1], epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert float(harness.to_numpy(model.layers[1].initialized)) == 1.0


def test_the_first_predict_initializes_when_it_comes_first():
    x = _data(7, (32, 5))
    inputs = keras.Input((5,))
    model = keras.Model(inputs, WeightNormalization(keras.layers.Dense(3))(inputs))
    out = model.predict(x, verbose=0)  # as in TensorFlow Addons
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1.0, rtol=1e-3)
    assert float(harness.to_numpy(model.layers[1].initialized)) == 1.0
    model.predict(x * 10, verbose=0)  # other data: no second initialization
    np.testing.assert_allclose(model.predict(x, verbose=0), out, rtol=1e-5, atol=1e-5)
