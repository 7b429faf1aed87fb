"""Property tests across every component (hypothesis).

Random shapes, lengths, masks (all-masked rows and length-1 sequences
included), dtype policies (float32, mixed_float16, mixed_bfloat16) and
extreme values (logits of +-1e4, probabilities of exactly 0, padding full
of NaN): outputs and gradients are always finite, and the invariants of the
attention issue hold (masked weight exactly 0, real weights summing to 1,
queries that see no key giving exactly the output bias). The number of
cases each property ran is printed at the end of the session
(`CASES_RUN`, see conftest.py).
"""

import collections

import keras
import numpy as np
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_addons_qa as kaq
from tests import harness

CASES_RUN = collections.Counter()
POLICIES = ["float32", "mixed_float16", "mixed_bfloat16"]
SETTINGS = settings(
    max_examples=harness.examples(100),
    deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def padded_batch(draw, max_batch=3, max_len=6, max_dim=5):
    """(x, mask): rows with lengths 0..T (0 = all masked), T may be 1."""
    batch = draw(st.integers(1, max_batch))
    length = draw(st.integers(1, max_len))
    dim = draw(st.integers(1, max_dim))
    lengths = draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    scale = draw(st.sampled_from([1.0, 1e2]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(batch, length, dim)) * scale).astype("float32")
    mask = np.arange(length)[None, :] < np.array(lengths)[:, None]
    if draw(st.booleans()):  # not right-padded: holes anywhere
        mask = rng.permuted(mask, axis=1)
    x[~mask] = np.nan  # padding holds garbage
    return x, mask


def _finite_grads(fn, variables):
    value, grads = harness.gradients(fn, variables)
    harness.assert_finite(value, *grads)
    return grads


@SETTINGS
@given(data=padded_batch(), policy=st.sampled_from(POLICIES), pool=st.booleans())
def test_attention_pooling_properties(data, policy, pool):
    x, mask = data
    CASES_RUN["MaskedAttentionPooling"] += 1
    with harness.dtype_policy(policy):
        layer = kaq.layers.MaskedAttentionPooling(3)
        pooled, weights = layer(x, mask=mask, return_attention_scores=True)
        weights = harness.to_numpy(weights).astype("float64")
        harness.assert_finite(pooled, weights)
        assert np.all(weights[~mask] == 0.0)
        has_real = mask.any(axis=1)
        np.testing.assert_allclose(weights[has_real].sum(-1), 1.0, atol=1e-2)
        assert np.all(harness.to_numpy(pooled)[~has_real] == 0.0)
        inputs = keras.Variable(x)
        grads = _finite_grads(
            lambda: keras.ops.sum(keras.ops.cast(layer(inputs, mask=mask), "float32")),
            [inputs] + layer.trainable_weights,
        )
        assert np.all(harness.to_numpy(grads[0])[~mask] == 0.0)


@SETTINGS
@given(
    query=padded_batch(max_dim=4),
    value_len=st.integers(1, 6),
    value_lengths=st.data(),
    policy=st.sampled_from(POLICIES),
    causal=st.booleans(),
    scores=st.booleans(),
    distance_penalty=st.sampled_from([0.0, 0.5, 1e6]),
)
def test_qkv_attention_properties(
    query, value_len, value_lengths, policy, causal, scores, distance_penalty
):
    q, query_mask = query
    batch, _, dim = q.shape
    lengths = value_lengths.draw(
        st.lists(st.integers(0, value_len), min_size=batch, max_size=batch)
    )
    rng = np.random.default_rng(value_len)
    v = rng.normal(size=(batch, value_len, dim)).astype("float32")
    value_mask = np.arange(value_len)[None, :] < np.array(lengths)[:, None]
    v[~value_mask] = np.nan
    CASES_RUN["QKVAttention"] += 1
    with harness.dtype_policy(policy):
        layer = kaq.layers.QKVAttention(
            2, 3, bias_initializer="random_normal", distance_penalty=distance_penalty
        )
        kwargs = dict(query_mask=query_mask, value_mask=value_mask, use_causal_mask=causal)
        result = layer(q, v, return_attention_scores=scores, **kwargs)
        out = harness.to_numpy(result[0] if scores else result).astype("float64")
        harness.assert_finite(out)
        # Which queries see a key: real query, and a real key (<= i if causal).
        visible = query_mask[:, :, None] & value_mask[:, None, :]
        if causal:
            visible &= np.tril(np.ones((q.shape[1], value_len), bool))[None]
        blind = ~visible.any(-1)
        bias = harness.to_numpy(keras.ops.cast(layer.weights[-1], layer.compute_dtype))
        np.testing.assert_array_equal(out[blind], np.broadcast_to(bias, out[blind].shape))
        if scores:
            weights = harness.to_numpy(result[1]).astype("float64")
            harness.assert_finite(weights)
            hidden = np.broadcast_to(~visible[:, None], weights.shape)
            assert np.all(weights[hidden] == 0.0)
            rows = np.broadcast_to(~blind[:, None], weights.shape[:-1])
            np.testing.assert_allclose(weights.sum(-1)[rows], 1.0, atol=1e-2)
        value = keras.Variable(v)
        _finite_grads(
            lambda: keras.ops.sum(keras.ops.cast(layer(q, value, **kwargs), "float32")),
            [value] + layer.trainable_weights,
        )


@SETTINGS
@given(
    batch=st.integers(1, 3),
    groups=st.integers(1, 4),
    size=st.integers(2, 5),
    scale=st.sampled_from([1.0, 1e2, 1e4]),
    policy=st.sampled_from(POLICIES),
    direction=st.sampled_from(["increasing", "decreasing"]),
    seed=st.integers(0, 2**16),
)
def test_monotone_grouped_softmax_properties(batch, groups, size, scale, policy, direction, seed):
    CASES_RUN["MonotoneGroupedSoftmax"] += 1
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 4)).astype("float32")
    with harness.dtype_policy(policy):
        layer = kaq.layers.MonotoneGroupedSoftmax(
            groups, size, direction=direction, margin=0.5,
            kernel_initializer=keras.initializers.RandomNormal(stddev=scale, seed=seed),
        )
        probs = harness.to_numpy(layer(x)).astype("float64")  # logits up to ~1e4
        harness.assert_finite(probs, layer.losses[0])
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-2)
        assert float(harness.to_numpy(layer.losses[0])) >= 0.0
        decoded = harness.to_numpy(kaq.layers.monotone_decode(probs, direction))
        steps = np.diff(decoded, axis=-1)
        assert np.all(steps >= 0) if direction == "increasing" else np.all(steps <= 0)

        def total():
            layer(x)
            return keras.ops.sum(layer.losses[0]) + keras.ops.sum(
                keras.ops.cast(layer(x), "float32")
            )

        _finite_grads(total, layer.trainable_weights)


@SETTINGS
@given(
    data=padded_batch(),
    l1=st.sampled_from([0.0, 0.1]),
    l2=st.sampled_from([0.1, 1e3]),
    policy=st.sampled_from(POLICIES),
)
def test_activity_penalty_properties(data, l1, l2, policy):
    x, mask = data
    CASES_RUN["ActivityPenalty"] += 1
    with harness.dtype_policy(policy):
        layer = kaq.layers.ActivityPenalty(l1=l1, l2=l2)
        inputs = keras.Variable(x)
        penalty = harness.to_numpy(layer.penalty(inputs, mask))
        harness.assert_finite(penalty)
        assert penalty >= 0
        assert harness.to_numpy(layer.penalty(inputs, mask)).dtype == np.float32
        grads = _finite_grads(lambda: layer.penalty(inputs, mask), [inputs])
        assert np.all(harness.to_numpy(grads[0])[~mask] == 0.0)


@SETTINGS
@given(
    batch=st.integers(1, 3),
    vocab=st.integers(2, 6),
    dim=st.integers(1, 4),
    power=st.sampled_from([1.0, 4.0, 1000.0]),
    iterations=st.integers(1, 3),
    from_logits=st.booleans(),
    distance=st.sampled_from(["mse", "cosine"]),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_almost_one_hot_embedding_loss_properties(
    batch, vocab, dim, power, iterations, from_logits, distance, dtype, seed
):
    CASES_RUN["AlmostOneHotEmbeddingLoss"] += 1
    rng = np.random.default_rng(seed)
    if from_logits:
        y_pred = rng.choice([-1e4, 0.0, 1e4], size=(batch, vocab))
    else:
        y_pred = rng.dirichlet(np.ones(vocab), size=batch)
        y_pred[:, 0] = 0.0  # probabilities of exactly zero
        y_pred /= y_pred.sum(-1, keepdims=True)
    loss = kaq.losses.AlmostOneHotEmbeddingLoss(
        rng.normal(size=(vocab, dim)), power=power, iterations=iterations,
        from_logits=from_logits, distance=distance,
    )
    pred = keras.Variable(keras.ops.cast(y_pred, dtype))
    y_true = rng.normal(size=(batch, dim)).astype("float32")
    value = harness.to_numpy(loss(y_true, pred))
    harness.assert_finite(value)
    assert value >= (-1.0 - 1e-3 if distance == "cosine" else 0.0)
    if dtype == "float16" and power**iterations > 1e4:
        # The exact gradient at a tie is ~power**iterations / 4 (2.5e5 for
        # power 1000, two iterations): past float16's 65504, so it rounds to
        # +-inf, which is what LossScaleOptimizer reads to lower its scale.
        # It must never be NaN.
        _, grads = harness.gradients(lambda: loss(y_true, pred), [pred])
        assert not np.any(np.isnan(harness.to_numpy(grads[0]).astype("float64")))
    else:
        _finite_grads(lambda: loss(y_true, pred), [pred])


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    scale=st.sampled_from([1.0, 1e4]),
    min_value=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_non_negative_properties(shape, scale, min_value, seed):
    CASES_RUN["NonNegative"] += 1
    w = np.random.default_rng(seed).normal(size=shape).astype("float32") * scale
    out = harness.to_numpy(kaq.constraints.NonNegative(min_value)(w))
    assert np.all(out >= min_value)
    np.testing.assert_array_equal(out[w >= min_value], w[w >= min_value])
    np.testing.assert_array_equal(
        harness.to_numpy(kaq.constraints.NonNegative(min_value)(out)), out
    )  # a projection: applying it twice changes nothing


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3)),
    axis=st.integers(-3, 2),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_probability_simplex_properties(shape, axis, scale, seed):
    CASES_RUN["ProbabilitySimplex"] += 1
    w = (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")
    project = kaq.constraints.ProbabilitySimplex(axis)
    out = harness.to_numpy(project(w)).astype("float64")
    assert np.all(out >= 0.0)
    np.testing.assert_allclose(out.sum(axis=axis), 1.0, rtol=1e-5)
    # The closest point: w - out is constant (theta) on the support.
    theta = np.where(out > 0, w - out, np.nan)
    spread = np.nanmax(theta, axis=axis) - np.nanmin(theta, axis=axis)
    assert np.all(spread <= 1e-5 * max(scale, 1.0))
    np.testing.assert_allclose(
        harness.to_numpy(project(out.astype("float32"))), out, atol=1e-6
    )


@SETTINGS
@given(
    batch=st.integers(1, 4),
    classes=st.integers(2, 6),
    policy=st.sampled_from(POLICIES),
    zeros=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_noise_adaptation_properties(batch, classes, policy, zeros, seed):
    CASES_RUN["NoiseAdaptation"] += 1
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=batch)
    if zeros:  # one-hot rows: probabilities of exactly 0
        probs = np.eye(classes)[rng.integers(0, classes, batch)]
    with harness.dtype_policy(policy):
        layer = kaq.layers.NoiseAdaptation(classes, trace_penalty=0.1)
        layer.build((batch, classes))
        layer.transition.assign(rng.dirichlet(np.ones(classes), size=classes).T)
        x = keras.Variable(probs.astype("float32"))
        out = harness.to_numpy(layer(x)).astype("float64")
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-2)
        assert np.all(out >= 0.0)
        _finite_grads(
            lambda: -keras.ops.sum(keras.ops.log(keras.ops.cast(layer(x), "float32") + 1e-7))
            + layer.losses[-1],
            [x, layer.transition],
        )


@SETTINGS
@given(
    batch=st.integers(1, 4),
    dim=st.integers(1, 5),
    mean_scale=st.sampled_from([1.0, 1e2, 1e4]),
    log_var_scale=st.sampled_from([1.0, 50.0, 1e4]),
    policy=st.sampled_from(POLICIES),
    seed=st.integers(0, 2**16),
)
def test_gaussian_sampling_properties(batch, dim, mean_scale, log_var_scale, policy, seed):
    CASES_RUN["GaussianSampling"] += 1
    rng = np.random.default_rng(seed)
    mean = keras.Variable((rng.normal(size=(batch, dim)) * mean_scale).astype("float32"))
    log_var = keras.Variable((rng.normal(size=(batch, dim)) * log_var_scale).astype("float32"))
    with harness.dtype_policy(policy):
        layer = kaq.layers.GaussianSampling(kl_weight=0.5, seed=seed)
        for training in (False, True):
            z = layer([mean, log_var], training=training)
            harness.assert_finite(z, layer.losses[-1])
            assert keras.backend.standardize_dtype(layer.losses[-1].dtype) == "float32"
        _finite_grads(
            lambda: keras.ops.sum(
                keras.ops.cast(layer([mean, log_var], training=True), "float32")
            ) + layer.losses[-1],
            [mean, log_var],
        )
