"""Gradient checks: autodiff against central finite differences, in float64.

Every layer and the loss run in float64 (their float32 internals stay
float64 for float64 inputs), and the analytic gradient of a scalar with
respect to the inputs and the first weight is compared with
`(f(x + h) - f(x - h)) / 2h`, h = 1e-6. `NonNegative` is a projection
applied after the optimizer step, not part of any gradient, so it has no
gradient to check.
"""

import contextlib

import keras
import numpy as np
import pytest

from keras_addons_qa.layers import ActivityPenalty
from keras_addons_qa.layers import MaskedAttentionPooling
from keras_addons_qa.layers import MonotoneGroupedSoftmax
from keras_addons_qa.layers import QKVAttention
from keras_addons_qa.losses import AlmostOneHotEmbeddingLoss
from tests import harness

STEP = 1e-6

# Keras 3.15's torch backend returns float32 from `ops.matmul` on two
# float64 tensors (and from `divide_no_nan`, `cumsum`), so a float64 model is
# not float64 there and differences of 1e-6 drown in float32 rounding.
pytestmark = pytest.mark.skipif(
    harness.BACKEND == "torch",
    reason="Keras's torch backend computes float64 matmuls in float32; the "
    "float64 gradient checks run on TensorFlow and JAX",
)


@contextlib.contextmanager
def float64():
    """float64 that is really float64 (JAX needs x64 switched on)."""
    if harness.BACKEND == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def numeric_gradient(fn, variable):
    """Central differences of the scalar `fn()` in the entries of `variable`."""
    base = harness.to_numpy(variable.value).astype("float64")
    grad = np.zeros_like(base)
    for index in np.ndindex(base.shape):
        values = []
        for sign in (1.0, -1.0):
            shifted = base.copy()
            shifted[index] += sign * STEP
            variable.assign(shifted)
            values.append(float(harness.to_numpy(fn())))
        grad[index] = (values[0] - values[1]) / (2 * STEP)
    variable.assign(base)
    return grad


def check(fn, variables):
    _, analytic = harness.gradients(fn, variables)
    for variable, grad in zip(variables, analytic):
        expected = numeric_gradient(fn, variable)
        np.testing.assert_allclose(
            harness.to_numpy(grad), expected, rtol=1e-5, atol=1e-7,
            err_msg=f"gradient of {variable.path}",
        )
        assert np.abs(expected).max() > 0  # the check is not vacuous


def _inputs(shape, seed, away_from_zero=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    if away_from_zero:  # |x| has a kink at 0
        x = np.sign(x) * (0.5 + np.abs(x))
    return keras.Variable(x, dtype="float64", name="inputs")


def test_activity_penalty():
    with float64():
        x = _inputs((3, 4, 5), 0, away_from_zero=True)
        mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
        layer = ActivityPenalty(l1=0.3, l2=0.2, dtype="float64")
        weights = keras.ops.convert_to_tensor(np.random.default_rng(1).normal(size=(3, 4, 5)))

        def fn():
            out = layer(x, mask=mask)
            return keras.ops.sum(out * weights) + layer.penalty(x, mask)

        check(fn, [x])


def test_monotone_grouped_softmax():
    with float64():
        x = _inputs((4, 6), 2)
        layer = MonotoneGroupedSoftmax(
            3, 4, penalty_weight=0.7, margin=0.2, dtype="float64",
            bias_initializer="random_normal",
        )
        layer.build((4, 6))
        weights = keras.ops.convert_to_tensor(np.random.default_rng(3).normal(size=(4, 3, 4)))

        def fn():
            probs = layer(x)
            return keras.ops.sum(probs * weights) + layer.monotonicity_penalty(probs)

        check(fn, [x, layer.kernel])


def test_masked_attention_pooling():
    with float64():
        x = _inputs((3, 5, 4), 4)
        mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
        layer = MaskedAttentionPooling(3, dtype="float64", bias_initializer="random_normal")
        layer.build((3, 5, 4))
        weights = keras.ops.convert_to_tensor(np.random.default_rng(5).normal(size=(3, 4)))

        def fn():
            return keras.ops.sum(layer(x, mask=mask) * weights)

        check(fn, [x, layer.kernel, layer.context])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_qkv_attention(causal):
    with float64():
        x = _inputs((2, 5, 4), 6)
        mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
        layer = QKVAttention(2, 3, dtype="float64", bias_initializer="random_normal")
        layer.build((2, 5, 4), (2, 5, 4))
        weights = keras.ops.convert_to_tensor(np.random.default_rng(7).normal(size=(2, 5, 4)))
        kernel = layer.trainable_weights[0]  # the query projection

        def fn():
            out = layer(x, x, query_mask=mask, value_mask=mask, use_causal_mask=causal)
            return keras.ops.sum(out * weights)

        check(fn, [x, kernel])


@pytest.mark.parametrize("from_logits", [False, True], ids=["probs", "logits"])
@pytest.mark.parametrize("distance", ["mse", "cosine"])
def test_almost_one_hot_embedding_loss(distance, from_logits):
    with float64():
        rng = np.random.default_rng(8)
        embedding = rng.normal(size=(6, 3))
        logits = rng.normal(size=(4, 6))
        start = logits if from_logits else np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        y_pred = keras.Variable(start, dtype="float64", name="y_pred")
        y_true = rng.normal(size=(4, 3))
        loss = AlmostOneHotEmbeddingLoss(
            embedding, power=3.0, iterations=2, distance=distance,
            from_logits=from_logits, dtype="float64",
        )
        check(lambda: loss(y_true, y_pred), [y_pred])
