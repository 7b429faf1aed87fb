import itertools

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_addons_qa.layers import MonotoneGroupedSoftmax
from keras_addons_qa.layers import expected_index
from keras_addons_qa.layers import monotone_decode
from tests import harness


class MonotoneGroupedSoftmaxHarnessTest(harness.TestCase):
    def test_layer_harness(self):
        self.run_layer_test(
            MonotoneGroupedSoftmax,
            init_kwargs={"num_groups": 3, "group_size": 4, "margin": 0.1},
            input_shape=(2, 6),
            expected_output_shape=(2, 3, 4),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            expected_num_losses=1,
            supports_masking=True,
        )

    def test_layer_harness_rank3_no_bias(self):
        self.run_layer_test(
            MonotoneGroupedSoftmax,
            init_kwargs={
                "num_groups": 2,
                "group_size": 3,
                "use_bias": False,
                "direction": "decreasing",
            },
            input_shape=(2, 5, 6),
            expected_output_shape=(2, 5, 2, 3),
            expected_num_trainable_weights=1,
            expected_num_losses=1,
            supports_masking=True,
        )


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _layer_with_bias(bias, features=3):
    """A layer whose output is softmax(bias) per group (zero kernel)."""
    num_groups, group_size = bias.shape
    layer = MonotoneGroupedSoftmax(
        num_groups, group_size, kernel_initializer="zeros"
    )
    layer.build((None, features))
    layer.bias.assign(bias.reshape(-1).astype("float32"))
    return layer


def test_weights_and_group_major_layout():
    rng = np.random.default_rng(0)
    layer = MonotoneGroupedSoftmax(num_groups=3, group_size=4)
    x = rng.normal(size=(5, 6)).astype("float32")
    probs = harness.to_numpy(layer(x))
    kernel, bias = (harness.to_numpy(w) for w in layer.weights)
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "bias"]
    assert kernel.shape == (6, 12) and bias.shape == (12,)
    logits = x @ kernel + bias
    for g in range(3):
        np.testing.assert_allclose(
            probs[:, g], _softmax(logits[:, 4 * g : 4 * g + 4]), atol=1e-6
        )
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


def _reference_penalty(probs, margin, direction, weight):
    index = (probs * np.arange(probs.shape[-1])).sum(-1)
    step = np.diff(index, axis=-1)
    violation = margin - step if direction == "increasing" else margin + step
    return weight * (np.maximum(violation, 0) ** 2).sum(-1).mean()


def test_penalty_is_zero_for_ordered_groups():
    # Group g peaks at index g: expected indices strictly increase.
    bias = np.full((4, 4), -20.0)
    bias[np.arange(4), np.arange(4)] = 20.0
    layer = _layer_with_bias(bias)
    layer(np.ones((2, 3), "float32"))
    assert float(harness.to_numpy(layer.losses[0])) == 0.0


@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_penalty_value_and_gradient(direction, margin):
    rng = np.random.default_rng(1)
    layer = MonotoneGroupedSoftmax(
        5, 4, penalty_weight=2.0, margin=margin, direction=direction
    )
    x = rng.normal(size=(8, 6)).astype("float32") * 3
    probs = harness.to_numpy(layer(x))
    expected = _reference_penalty(probs, margin, direction, 2.0)
    assert expected > 0
    np.testing.assert_allclose(
        harness.to_numpy(layer.losses[0]), expected, rtol=1e-5
    )

    def penalty():
        layer(x)
        return layer.losses[0]

    value, grads = harness.gradients(penalty, layer.trainable_weights)
    for grad in grads:
        grad = harness.to_numpy(grad)
        assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_reversed_groups_are_penalized_in_the_increasing_direction_only():
    bias = np.full((3, 4), -20.0)
    bias[np.arange(3), [3, 2, 1]] = 20.0  # peaks 3, 2, 1: decreasing
    x = np.ones((1, 3), "float32")
    increasing = _layer_with_bias(bias)
    increasing(x)
    np.testing.assert_allclose(harness.to_numpy(increasing.losses[0]), 2.0, rtol=1e-4)
    decreasing = MonotoneGroupedSoftmax(
        3, 4, direction="decreasing", kernel_initializer="zeros"
    )
    decreasing.build((None, 3))
    decreasing.bias.assign(bias.reshape(-1).astype("float32"))
    decreasing(x)
    assert float(harness.to_numpy(decreasing.losses[0])) == 0.0


def test_expected_index():
    probs = np.array([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]], "float32")
    np.testing.assert_allclose(harness.to_numpy(expected_index(probs)), [[0.5, 2.0]])
    layer = MonotoneGroupedSoftmax(2, 3)
    np.testing.assert_allclose(
        harness.to_numpy(layer.expected_index(probs)), [[0.5, 2.0]]
    )


@pytest.mark.parametrize("pad_value", [1e30, np.inf, np.nan])
def test_masked_positions_reach_neither_penalty_nor_gradient(pad_value):
    rng = np.random.default_rng(3)
    layer = MonotoneGroupedSoftmax(3, 4)
    x = rng.normal(size=(2, 5, 6)).astype("float32") * 3
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer(x, mask=mask)
    clean = harness.to_numpy(layer.losses[0])
    x_padded = x.copy()
    x_padded[0, 3:] = pad_value
    value, grads = harness.gradients(
        lambda: layer.monotonicity_penalty(layer(x_padded, mask=mask), mask),
        layer.trainable_weights,
    )
    np.testing.assert_allclose(harness.to_numpy(value), clean, rtol=1e-5)
    harness.assert_finite(*grads)
    # Reference: the same sum over real positions only, over batch size 2.
    probs = harness.to_numpy(layer(x))
    index = (probs * np.arange(4)).sum(-1)
    violation = np.maximum(-np.diff(index, axis=-1), 0) ** 2
    expected = violation.sum(-1)[mask].sum() / 2
    np.testing.assert_allclose(clean, expected, rtol=1e-5)


def _brute_force_decode(probs, direction):
    num_groups, group_size = probs.shape
    best, best_path = -np.inf, None
    for path in itertools.product(range(group_size), repeat=num_groups):
        diffs = np.diff(path)
        if direction == "increasing" and np.any(diffs < 0):
            continue
        if direction == "decreasing" and np.any(diffs > 0):
            continue
        score = np.log(np.maximum(probs[np.arange(num_groups), path], 1e-38)).sum()
        if score > best:
            best, best_path = score, path
    return best, best_path


@settings(max_examples=harness.examples(40), deadline=None)
@given(
    num_groups=st.integers(1, 4),
    group_size=st.integers(2, 5),
    direction=st.sampled_from(["increasing", "decreasing"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_monotone_decode_is_the_best_monotone_path(
    num_groups, group_size, direction, seed
):
    rng = np.random.default_rng(seed)
    probs = _softmax(rng.normal(size=(3, num_groups, group_size)) * 3)
    probs = probs.astype("float32")
    decoded = harness.to_numpy(monotone_decode(probs, direction=direction))
    assert decoded.shape == (3, num_groups)
    assert decoded.dtype == np.int32
    for example, path in zip(probs, decoded):
        diffs = np.diff(path)
        assert np.all(diffs >= 0) if direction == "increasing" else np.all(diffs <= 0)
        best, _ = _brute_force_decode(example, direction)
        score = np.log(example[np.arange(num_groups), path]).sum()
        np.testing.assert_allclose(score, best, rtol=1e-5, atol=1e-5)


def test_monotone_decode_keeps_monotone_argmax_and_handles_zeros():
    probs = np.zeros((1, 4, 3), "float32")
    probs[0, np.arange(4), [0, 1, 1, 2]] = 1.0  # exact zeros elsewhere
    np.testing.assert_array_equal(
        harness.to_numpy(monotone_decode(probs)), [[0, 1, 1, 2]]
    )
    # Leading axes are kept: (batch, time, groups, size) -> (batch, time, groups).
    stacked = np.stack([probs, probs], axis=1)
    assert tuple(monotone_decode(stacked).shape) == (1, 2, 4)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_groups": 0, "group_size": 3}, "num_groups"),
        ({"num_groups": 2.5, "group_size": 3}, "num_groups"),
        ({"num_groups": 2, "group_size": 1}, "group_size"),
        ({"num_groups": 2, "group_size": 3, "penalty_weight": -1.0}, "penalty_weight"),
        ({"num_groups": 2, "group_size": 3, "margin": float("nan")}, "margin"),
        ({"num_groups": 2, "group_size": 3, "direction": "up"}, "direction"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"{name}={kwargs[name]!r}"):
        MonotoneGroupedSoftmax(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="direction='sideways'"):
        monotone_decode(np.ones((1, 2, 3), "float32"), direction="sideways")
    with pytest.raises(ValueError, match="mask"):
        MonotoneGroupedSoftmax(2, 3)(
            np.zeros((2, 4, 5), "float32"), mask=np.ones((2, 3), bool)
        )


def test_config_round_trip():
    layer = MonotoneGroupedSoftmax(
        3,
        4,
        penalty_weight=0.5,
        margin=0.25,
        direction="decreasing",
        use_bias=False,
        kernel_regularizer="l2",
        kernel_constraint="non_neg",
    )
    config = layer.get_config()
    for key in (
        "num_groups", "group_size", "penalty_weight", "margin", "direction",
        "use_bias", "kernel_initializer", "bias_initializer",
        "kernel_regularizer", "kernel_constraint",
    ):
        assert key in config
    assert MonotoneGroupedSoftmax.from_config(config).get_config() == config


def test_stateless_call_computes_in_the_compute_dtype():
    # `stateless_call` (how JAX training steps call a layer) runs `call`
    # with no autocast scope; the layer casts its inputs and weights itself,
    # so a mixed-precision layer's logits are float16 there too, and the
    # output is the one `__call__` gives, bit for bit.
    rng = np.random.default_rng(21)
    x = rng.normal(size=(4, 12)).astype("float32")
    layer = MonotoneGroupedSoftmax(3, 5, dtype="mixed_float16", bias_initializer="random_normal")
    expected = layer(x)
    got, _ = layer.stateless_call(layer.trainable_variables, layer.non_trainable_variables, x)
    assert keras.backend.standardize_dtype(got.dtype) == "float16"
    np.testing.assert_array_equal(harness.to_numpy(got), harness.to_numpy(expected))


def test_monotone_decode_layer_in_a_trained_model(tmp_path):
    from keras_addons_qa.layers import MonotoneDecode

    rng = np.random.default_rng(21)
    x = rng.normal(size=(64, 6)).astype("float32")
    labels = np.sort(rng.integers(0, 4, size=(64, 3)), axis=1)
    inputs = keras.Input((6,))
    probs = MonotoneGroupedSoftmax(3, 4, penalty_weight=0.5)(
        keras.layers.Dense(8, activation="relu")(inputs)
    )
    trained = keras.Model(inputs, probs)
    trained.compile("adam", loss="categorical_crossentropy")
    trained.fit(x, np.eye(4, dtype="float32")[labels], epochs=2, verbose=0)
    # The deployed model: the same layers, ending in the decode layer; the
    # function called on a symbolic tensor adds the same layer.
    deployed = keras.Model(inputs, MonotoneDecode()(probs))
    via_function = keras.Model(inputs, monotone_decode(probs))
    path = harness.to_numpy(deployed.predict(x, verbose=0))
    assert path.dtype == np.int32 and path.shape == (64, 3)
    np.testing.assert_array_equal(path, harness.to_numpy(via_function.predict(x, verbose=0)))
    p = harness.to_numpy(trained.predict(x, verbose=0))
    np.testing.assert_array_equal(path, harness.to_numpy(monotone_decode(p)))
    for example, row in zip(p[:8], path[:8]):
        best, _ = _brute_force_decode(example, "increasing")
        score = np.log(np.maximum(example[np.arange(3), row], 1e-38)).sum()
        np.testing.assert_allclose(score, best, rtol=1e-5, atol=1e-5)
    restored = harness.save_and_reload(deployed, tmp_path)
    np.testing.assert_array_equal(harness.to_numpy(restored.predict(x, verbose=0)), path)


@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
def test_monotone_decode_at_many_groups_is_exact_under_jit(direction):
    # The dynamic program is a loop over groups, not unrolled: 64 groups
    # compile quickly and decode exactly (checked against a NumPy Viterbi).
    rng = np.random.default_rng(22)
    probs = _softmax(rng.normal(size=(5, 64, 7)) * 3).astype("float32")
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda p: monotone_decode(p, direction), jit_compile=True)
    elif harness.BACKEND == "jax":
        import jax

        fn = jax.jit(lambda p: monotone_decode(p, direction))
    else:
        fn = lambda p: monotone_decode(p, direction)  # noqa: E731
    got = harness.to_numpy(fn(probs))
    log_p = np.log(np.maximum(probs, 1e-38))
    if direction == "decreasing":
        log_p = log_p[..., ::-1]
    best = log_p[:, 0]
    for g in range(1, 64):
        best = np.maximum.accumulate(best, axis=-1) + log_p[:, g]
    expected_score = best.max(-1)
    path = got if direction == "increasing" else 6 - got
    assert np.all(np.diff(path, axis=-1) >= 0)
    score = np.take_along_axis(log_p, path[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(score, expected_score, rtol=1e-5)


def test_monotone_decode_layer_config_and_errors():
    from keras_addons_qa.layers import MonotoneDecode

    layer = MonotoneDecode("decreasing", name="decode")
    assert MonotoneDecode.from_config(layer.get_config()).direction == "decreasing"
    with pytest.raises(ValueError, match="direction='up'"):
        MonotoneDecode("up")
    with pytest.raises(ValueError, match=r"probs.shape=\(None,\)"):
        MonotoneDecode()(keras.Input(batch_shape=(None,)))


def _numpy_viterbi(log_p):
    """The plain dynamic program, ties to the smaller index."""
    best, history = log_p[:, 0], []
    for g in range(1, log_p.shape[1]):
        history.append(best)
        best = np.maximum.accumulate(best, axis=-1) + log_p[:, g]
    path = [best.argmax(-1)]
    for earlier in reversed(history):
        reachable = np.where(np.arange(best.shape[-1]) <= path[-1][:, None], earlier, -np.inf)
        path.append(reachable.argmax(-1))
    return np.stack(path[::-1], -1)


@pytest.mark.parametrize("put", ["default", "select"])
@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
@pytest.mark.parametrize("num_groups", [2, 3, 5, 10, 17, 26])
def test_monotone_decode_equals_numpy_viterbi_with_ties(num_groups, direction, put, monkeypatch):
    # Probabilities on a coarse grid tie often; the path must be NumPy's
    # exactly (the smaller index wins), for group counts that fill the
    # record buffer's chunks partly. Both buffer updates give the same path
    # on every backend.
    from keras_addons_qa import _buffers

    if put == "select":
        monkeypatch.setattr(_buffers, "put", _buffers.put_by_select)
    rng = np.random.default_rng(num_groups)
    probs = rng.integers(1, 4, size=(6, num_groups, 4)).astype("float32")
    probs[0, :, 1:] = probs[0, :, :1]  # all classes tied
    probs /= probs.sum(-1, keepdims=True)
    log_p = np.log(probs)
    if direction == "decreasing":
        expected = _numpy_viterbi(log_p[:, ::-1])[:, ::-1]
    else:
        expected = _numpy_viterbi(log_p)
    got = harness.to_numpy(monotone_decode(probs, direction=direction))
    np.testing.assert_array_equal(got, expected)
