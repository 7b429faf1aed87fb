import keras
import numpy as np
import pytest

from keras_addons_qa.constraints import NonNegative
from keras_addons_qa.layers import MonotoneGroupedSoftmax
from tests import harness


class NonNegativeHarnessTest(harness.TestCase):
    def test_class_serialization(self):
        self.run_class_serialization_test(NonNegative(min_value=0.5))


def test_projection_and_idempotence():
    w = np.array([[-2.0, 0.0], [0.3, 5.0]], "float32")
    constraint = NonNegative(min_value=0.25)
    once = harness.to_numpy(constraint(w))
    np.testing.assert_array_equal(once, np.maximum(w, np.float32(0.25)))
    assert once.min() == np.float32(0.25)
    np.testing.assert_array_equal(harness.to_numpy(constraint(once)), once)
    np.testing.assert_array_equal(
        harness.to_numpy(NonNegative()(w)), [[0, 0], [w[1, 0], 5]]
    )


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), None])
def test_bad_min_value(value):
    with pytest.raises(ValueError, match=f"min_value={value!r}"):
        NonNegative(min_value=value)


def _regression_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 6)).astype("float32")
    # A target that a non-negative kernel cannot fit exactly: the
    # unconstrained solution has negative weights.
    y = (x @ rng.normal(size=(6, 3))).astype("float32")
    return x, y


@pytest.mark.parametrize("layer_factory", ["dense", "monotone"])
def test_kernel_stays_non_negative_in_fit(layer_factory):
    x, y = _regression_data()
    if layer_factory == "dense":
        layer = keras.layers.Dense(3, kernel_constraint=NonNegative())
        target = y
    else:
        layer = MonotoneGroupedSoftmax(3, 2, kernel_constraint=NonNegative())
        target = np.stack([y > 0, y <= 0], -1).astype("float32")
    model = keras.Sequential([keras.Input((6,)), layer])
    model.compile("sgd", "mse")
    model.fit(x, target, epochs=3, batch_size=16, verbose=0)
    kernel = harness.to_numpy(layer.kernel)
    assert kernel.min() >= 0.0
    assert (kernel == 0).any(), "the constraint should have been active"


class _CountingNonNegative(NonNegative):
    """Counts how often Python runs the constraint (i.e. how often it is traced)."""

    calls = 0

    def __call__(self, w):
        type(self).calls += 1
        return super().__call__(w)


@harness.tensorflow_only
def test_constraint_is_compiled_into_the_train_step():
    # Seed 001: clipping after each step from Python "slows training by a
    # factor of 50". Keras applies the constraint inside the optimizer's
    # update, in the same compiled step: its Python runs when the step is
    # traced, never per batch, and more steps add no trace and no call.
    x, y = _regression_data()
    _CountingNonNegative.calls = 0
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(3, kernel_constraint=_CountingNonNegative())]
    )
    model.compile("sgd", "mse", jit_compile=False)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)  # 16 steps
    calls_after_first_epoch = _CountingNonNegative.calls
    assert 1 <= calls_after_first_epoch <= 2  # traced, not run, per step
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, shuffle=False)  # 32 more
    assert _CountingNonNegative.calls == calls_after_first_epoch
    assert harness.to_numpy(model.layers[0].kernel).min() >= 0.0


@harness.tensorflow_only
def test_under_mirrored_strategy_matches_one_replica():
    import tensorflow as tf

    x, y = _regression_data(1)

    def train(strategy):
        keras.utils.set_random_seed(7)
        with strategy.scope():
            model = keras.Sequential(
                [keras.Input((6,)), keras.layers.Dense(3, kernel_constraint=NonNegative())]
            )
            model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
        return harness.to_numpy(model.layers[0].kernel)

    mirrored = train(harness.mirrored_strategy())
    single = train(tf.distribute.get_strategy())
    assert mirrored.min() >= 0.0 and (mirrored == 0).any()
    np.testing.assert_allclose(mirrored, single, atol=1e-5)
