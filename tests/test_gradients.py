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
from keras_addons_qa.layers import DecomposedConv2D
from keras_addons_qa.layers import GaussianSampling
from keras_addons_qa.layers import MaskedAttentionPooling
from keras_addons_qa.layers import MonotoneGroupedSoftmax
from keras_addons_qa.layers import NoiseAdaptation
from keras_addons_qa.layers import PretrainedEmbedding
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


@pytest.mark.parametrize(
    "causal,distance_penalty", [(False, 0.0), (True, 0.0), (False, 0.7)],
    ids=["full", "causal", "distance_penalty"],
)
def test_qkv_attention(causal, distance_penalty):
    with float64():
        x = _inputs((2, 5, 4), 6)
        mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
        layer = QKVAttention(
            2, 3, dtype="float64", bias_initializer="random_normal",
            distance_penalty=distance_penalty,
        )
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


def test_noise_adaptation():
    with float64():
        logits = np.random.default_rng(10).normal(size=(4, 3))
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        x = keras.Variable(probs, dtype="float64", name="inputs")
        layer = NoiseAdaptation(3, trace_penalty=0.3, dtype="float64")
        layer.build((4, 3))
        layer.transition.assign(np.array([[0.7, 0.1, 0.2], [0.2, 0.8, 0.3], [0.1, 0.1, 0.5]]))
        labels = keras.ops.convert_to_tensor(np.eye(3)[[0, 2, 1, 1]])

        def fn():
            out = layer(x)
            return -keras.ops.sum(labels * keras.ops.log(out)) + layer.losses[-1]

        check(fn, [x, layer.transition])


def test_gaussian_sampling_kl_term():
    with float64():
        mean = _inputs((3, 4), 11)
        log_var = _inputs((3, 4), 12)
        layer = GaussianSampling(kl_weight=0.4, dtype="float64")
        weights = keras.ops.convert_to_tensor(np.random.default_rng(13).normal(size=(3, 4)))

        def fn():  # inference: the output is the mean, plus the KL term
            out = layer([mean, log_var], training=False)
            return keras.ops.sum(out * weights) + layer.losses[-1]

        check(fn, [mean, log_var])


def test_decomposed_conv2d():
    # sigmoid, not tanh, in between: Keras 3.15's JAX `ops.tanh` returns
    # float32 for float64 inputs, which would drown the differences.
    with float64():
        x = _inputs((2, 5, 6, 2), 14)
        layer = DecomposedConv2D(
            3, (3, 2), strides=(2, 1), padding="same", activation="sigmoid", dtype="float64"
        )
        layer.build((2, 5, 6, 2))
        out_shape = tuple(layer.compute_output_shape((2, 5, 6, 2)))
        weights = keras.ops.convert_to_tensor(np.random.default_rng(15).normal(size=out_shape))

        def fn():
            return keras.ops.sum(layer(x) * weights)

        check(fn, [x, layer.vertical.kernel, layer.horizontal.kernel])


def test_pretrained_embedding_table():
    with float64():
        vectors = np.random.default_rng(16).normal(size=(6, 3))
        layer = PretrainedEmbedding(vectors, trainable_tokens=4, trainable_dim=2, dtype="float64")
        layer.build()
        layer.trainable_embeddings.assign(np.random.default_rng(17).normal(size=(4, 2)))
        ids = np.array([[0, 3, 5], [1, 1, 4]])
        weights = keras.ops.convert_to_tensor(np.random.default_rng(18).normal(size=(2, 3, 5)))

        def fn():
            return keras.ops.sum(keras.ops.square(layer(ids)) * weights)

        check(fn, [layer.trainable_embeddings])
