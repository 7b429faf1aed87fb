import keras
import numpy as np
import pytest

from keras_addons_qa.layers import ActivityPenalty
from tests import harness


class ActivityPenaltyHarnessTest(harness.TestCase):
    def test_layer_harness(self):
        self.run_layer_test(
            ActivityPenalty,
            init_kwargs={"l1": 0.01, "l2": 0.02},
            input_shape=(2, 3, 4),
            expected_output_shape=(2, 3, 4),
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
            expected_num_losses=1,
            supports_masking=True,
            assert_built_after_instantiation=True,
        )


def test_seed_value_matches_activity_regularization():
    # l2=0.01 on a 5x5 tensor of 2s: 0.01 * 25 * 4 / 5 = 0.2.
    layer = ActivityPenalty(l2=0.01)
    out = layer(np.full((5, 5), 2.0, "float32"))
    np.testing.assert_allclose(harness.to_numpy(out), 2.0)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(harness.to_numpy(layer.losses[0]), 0.2, rtol=1e-6)


def test_equals_keras_activity_regularization_on_random_data():
    x = np.random.default_rng(0).normal(size=(7, 3, 5)).astype("float32")
    ours = ActivityPenalty(l1=0.03, l2=0.2)
    stock = keras.layers.ActivityRegularization(l1=0.03, l2=0.2)
    ours(x)
    stock(x)
    # Keras divides the penalty by the batch size from 3.14 on; before, it
    # adds the sum.
    divisor = 1 if harness.KERAS_VERSION >= (3, 14) else len(x)
    np.testing.assert_allclose(
        harness.to_numpy(ours.losses[0]),
        harness.to_numpy(stock.losses[0]) / divisor,
        rtol=1e-6,
    )


def test_output_is_input_and_mask_passes_through():
    x = np.random.default_rng(1).normal(size=(2, 4, 3)).astype("float32")
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    layer = ActivityPenalty(l1=1.0)
    np.testing.assert_array_equal(harness.to_numpy(layer(x, mask=mask)), x)
    np.testing.assert_array_equal(
        harness.to_numpy(layer.compute_mask(x, mask)), mask
    )


@pytest.mark.parametrize("l1, l2", [(0.3, 0.0), (0.0, 0.2), (0.3, 0.2)])
def test_value_and_gradient_equal_the_formula(l1, l2):
    """Value and hand-written gradient against the formula in NumPy, for
    each set of terms. At exact zeros d|x|/dx is 0 on every backend, as
    TensorFlow and torch take it (JAX's own `abs` takes 1 there)."""
    rng = np.random.default_rng(5)
    data = rng.normal(size=(6, 4, 3)).astype("float32")
    data[0, 0] = 0.0
    x = keras.Variable(data, name="x")
    layer = ActivityPenalty(l1=l1, l2=l2)

    value, (grad,) = harness.gradients(lambda: layer.penalty(x), [x])
    np.testing.assert_allclose(
        harness.to_numpy(value),
        (l1 * np.abs(data).sum() + l2 * np.square(data).sum()) / 6.0,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        harness.to_numpy(grad),
        (l1 * np.sign(data) + 2.0 * l2 * data) / 6.0,
        rtol=1e-6,
        atol=1e-9,
    )
    np.testing.assert_array_equal(harness.to_numpy(grad)[0, 0], 0.0)


@pytest.mark.parametrize("pad_value", [0.0, 1e30, np.inf, np.nan])
def test_masked_steps_add_nothing(pad_value):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    x_padded = x.copy()
    x_padded[0, 3:] = pad_value
    layer = ActivityPenalty(l1=0.1, l2=0.3)
    expected = (
        0.1 * np.abs(x[mask]).sum() + 0.3 * np.square(x[mask]).sum()
    ) / 2
    np.testing.assert_allclose(
        harness.to_numpy(layer.penalty(x_padded, mask)), expected, rtol=1e-5
    )

    inputs = keras.Variable(x_padded)
    value, (grad,) = harness.gradients(
        lambda: layer.penalty(inputs, mask), [inputs]
    )
    grad = harness.to_numpy(grad)
    np.testing.assert_array_equal(grad[0, 3:], 0.0)
    harness.assert_finite(value, grad)
    # Real steps get the analytic gradient (l1 * sign + 2 * l2 * x) / batch.
    np.testing.assert_allclose(
        grad[mask], (0.1 * np.sign(x[mask]) + 0.6 * x[mask]) / 2, rtol=1e-5
    )


def test_mask_from_embedding_is_used_in_a_model():
    tokens = np.array([[3, 4, 0, 0], [5, 0, 0, 0]])
    inputs = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(10, 3, mask_zero=True)(inputs)
    penalized = ActivityPenalty(l2=1.0)(embedded)
    model = keras.Model(inputs, penalized)
    model(tokens)
    table = harness.to_numpy(model.layers[1].embeddings)
    expected = sum(np.square(table[t]).sum() for t in (3, 4, 5)) / 2
    np.testing.assert_allclose(
        harness.to_numpy(model.losses[0]), expected, rtol=1e-5
    )


def test_mask_shape_mismatch_is_rejected():
    layer = ActivityPenalty(l1=1.0)
    with pytest.raises(ValueError, match="mask"):
        layer(np.zeros((2, 4, 3), "float32"), mask=np.ones((2, 5), bool))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_penalty_is_float32_under_mixed_precision(policy):
    with harness.dtype_policy(policy):
        layer = ActivityPenalty(l2=1.0)
        # 300**2 * 1000 overflows float16 (max 65504); float32 does not.
        x = keras.ops.full((1, 1000), 300.0, dtype=layer.compute_dtype)
        out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == layer.compute_dtype
    (loss,) = layer.losses
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    np.testing.assert_allclose(harness.to_numpy(loss), 9e7, rtol=1e-3)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"l1": -0.1}, "l1"),
        ({"l2": float("nan")}, "l2"),
        ({"l2": float("inf")}, "l2"),
        ({"l1": "0.1"}, "l1"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"{name}={kwargs[name]!r}"):
        ActivityPenalty(**kwargs)


def test_config_round_trip():
    layer = ActivityPenalty(l1=0.5, l2=0.25, name="p")
    config = layer.get_config()
    assert config["l1"] == 0.5 and config["l2"] == 0.25
    clone = ActivityPenalty.from_config(config)
    assert clone.get_config() == config
