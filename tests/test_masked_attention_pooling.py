import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_addons_qa import _xla
from keras_addons_qa.layers import MaskedAttentionPooling
from tests import harness


@pytest.fixture(params=["batched_product", "fused_product"])
def weighted_sum(request, monkeypatch):
    """Runs a test with each formulation of the weighted sum over time: the
    batched matrix product (chosen without XLA) and the elementwise product
    with a reduction (chosen when XLA compiles, including all of JAX)."""
    monkeypatch.setattr(_xla, "compiling", lambda: request.param == "fused_product")
    return request.param


class MaskedAttentionPoolingHarnessTest(harness.TestCase):
    def test_layer_harness(self):
        self.run_layer_test(
            MaskedAttentionPooling,
            init_kwargs={"units": 4},
            input_shape=(2, 5, 3),
            expected_output_shape=(2, 3),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=0,
            expected_num_losses=0,
            supports_masking=True,
        )

    def test_layer_harness_no_bias(self):
        self.run_layer_test(
            MaskedAttentionPooling,
            init_kwargs={"units": 2, "use_bias": False, "kernel_regularizer": "l2"},
            input_shape=(3, 4, 6),
            expected_output_shape=(3, 6),
            expected_num_trainable_weights=2,
            expected_num_losses=1,
            supports_masking=True,
        )


def _scalar_layer():
    """features=1, units=1, W=1, b=0, u=1: the score of step t is tanh(h_t)."""
    layer = MaskedAttentionPooling(1, kernel_initializer="ones", context_initializer="ones")
    layer.build((None, None, 1))
    return layer


def test_seed_example_renormalizes_over_real_steps():
    # Seed 001: scores [0.1, 0.2, 0, 0, 0] with mask [1, 1, 0, 0, 0] must
    # give [0.475, 0.525, 0, 0, 0], not a softmax watered down by padding.
    scores = np.array([0.1, 0.2, 0.0, 0.0, 0.0])
    x = np.arctanh(scores).reshape(1, 5, 1).astype("float32")
    mask = np.array([[1, 1, 0, 0, 0]], bool)
    _, weights = _scalar_layer()(x, mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(
        harness.to_numpy(weights), [[0.47502, 0.52498, 0, 0, 0]], atol=1e-5
    )
    assert np.all(harness.to_numpy(weights)[0, 2:] == 0.0)
    # Without the mask, padding takes 56% of the attention (the seed's
    # [0.20, 0.23, 0.19, 0.19, 0.19]).
    _, unmasked = _scalar_layer()(x, return_attention_scores=True)
    expected = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(harness.to_numpy(unmasked), [expected], atol=1e-6)
    np.testing.assert_allclose(expected.round(2), [0.21, 0.23, 0.19, 0.19, 0.19])


@settings(max_examples=harness.examples(30), deadline=None)
@given(
    batch=st.integers(1, 4),
    time=st.integers(1, 9),
    features=st.integers(1, 6),
    units=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    pad=st.sampled_from([0.0, 1e30, -1e30, np.inf, np.nan]),
)
def test_padded_equals_truncated(batch, time, features, units, seed, pad):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, time + 1, size=batch)
    x = rng.normal(size=(batch, time, features)).astype("float32")
    mask = np.arange(time)[None, :] < lengths[:, None]
    x_padded = np.where(mask[..., None], x, np.float32(pad)).astype("float32")
    layer = MaskedAttentionPooling(units)
    pooled, weights = layer(x_padded, mask=mask, return_attention_scores=True)
    pooled, weights = harness.to_numpy(pooled), harness.to_numpy(weights)
    harness.assert_finite(pooled, weights)
    assert np.all(weights[~mask] == 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    for i, length in enumerate(lengths):
        ref_pooled, ref_weights = layer(
            x[i : i + 1, :length], return_attention_scores=True
        )
        np.testing.assert_allclose(pooled[i], harness.to_numpy(ref_pooled)[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            weights[i, :length], harness.to_numpy(ref_weights)[0], rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("pad", [0.0, 1e30, np.inf, np.nan])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_padding_reaches_no_gradient_in_a_graph(pad, jit_compile):
    """In a TensorFlow graph the layer zeroes the padding only when the
    inputs hold inf or NaN (both branches of a `cond` run here, in the
    graph `fit` runs) and always under XLA; values and gradients are those
    of the clean inputs either way."""
    if harness.BACKEND != "tensorflow":
        pytest.skip("TensorFlow graph and XLA compilation; on JAX and torch "
                    "test_padding_reaches_no_gradient checks the same padding")
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    layer = MaskedAttentionPooling(4)
    layer.build(x.shape)

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x, mask=mask)))
        return loss, tape.gradient(loss, [x] + layer.trainable_weights)

    clean_loss, clean = step(tf.constant(x))
    x_padded = x.copy()
    x_padded[0, 4:] = pad
    loss, padded = step(tf.constant(x_padded))
    np.testing.assert_allclose(loss, clean_loss, rtol=1e-6)
    for a, b in zip(padded, clean):
        harness.assert_finite(a.numpy())
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert np.all(padded[0].numpy()[0, 4:] == 0.0)


def test_finite_padding_whose_hidden_units_overflow_reaches_nothing():
    """Finite padding that sums to a finite number over its features, but
    whose hidden units are inf - inf in float32 (NaN on TensorFlow's CPU
    products, which add blocks of the features' terms): without a copy of
    the inputs, the layer must drop those hidden units, in values and
    gradients."""
    features = 600
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, features)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer = MaskedAttentionPooling(3)
    layer.build(x.shape)
    layer.kernel.assign(np.full((features, 3), 10.0, "float32"))

    def run(data):
        inputs = keras.Variable(data)
        value, grads = harness.gradients(
            lambda: keras.ops.sum(keras.ops.square(layer(inputs, mask=mask))),
            [inputs] + layer.trainable_weights,
        )
        return harness.to_numpy(value), [harness.to_numpy(g) for g in grads]

    clean_value, clean = run(x)
    x_padded = x.copy()
    x_padded[0, 3:] = np.repeat(np.float32([1e36, -1e36]), features // 2)
    value, padded = run(x_padded)
    np.testing.assert_allclose(value, clean_value, rtol=1e-6)
    for a, b in zip(padded, clean):
        harness.assert_finite(a)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pad", [1e30, np.inf, np.nan])
def test_padding_reaches_no_gradient(pad, weighted_sum):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    layer = MaskedAttentionPooling(4)
    layer.build(x.shape)

    def grads_for(data):
        inputs = keras.Variable(data)
        value, grads = harness.gradients(
            lambda: keras.ops.sum(keras.ops.square(layer(inputs, mask=mask))),
            [inputs] + layer.trainable_weights,
        )
        return value, [harness.to_numpy(g) for g in grads]

    clean_value, clean = grads_for(x)
    x_padded = x.copy()
    x_padded[0, 4:] = pad
    value, padded = grads_for(x_padded)
    np.testing.assert_allclose(harness.to_numpy(value), harness.to_numpy(clean_value), rtol=1e-6)
    for a, b in zip(padded, clean):
        harness.assert_finite(a)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert np.all(padded[0][0, 4:] == 0.0)


def test_row_without_real_steps_gives_zeros_and_finite_gradients(weighted_sum):
    x = np.random.default_rng(1).normal(size=(2, 4, 3)).astype("float32")
    x[0] = np.nan
    mask = np.array([[0, 0, 0, 0], [1, 1, 0, 0]], bool)
    layer = MaskedAttentionPooling(5)
    pooled, weights = layer(x, mask=mask, return_attention_scores=True)
    assert np.all(harness.to_numpy(pooled)[0] == 0.0)
    assert np.all(harness.to_numpy(weights)[0] == 0.0)
    inputs = keras.Variable(x)
    _, grads = harness.gradients(
        lambda: keras.ops.sum(layer(inputs, mask=mask)), [inputs] + layer.trainable_weights
    )
    harness.assert_finite(*grads)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_both_weighted_sums_agree_with_nan_padding(dtype, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 7, 5)).astype("float32")
    mask = np.arange(7)[None, :] < np.array([7, 3, 1])[:, None]
    x[~mask] = np.nan
    layer = MaskedAttentionPooling(4, dtype=dtype)
    outputs = {}
    for fused in (False, True):
        monkeypatch.setattr(_xla, "compiling", lambda: fused)
        pooled, weights = layer(x, mask=mask, return_attention_scores=True)
        outputs[fused] = harness.to_numpy(pooled).astype("float32")
        harness.assert_finite(outputs[fused])
    # Both round the sum to `dtype` once; the matrix product may sum in a
    # different order: two ulps of the output's magnitude (about 1) at most.
    atol = {"float32": 1e-6, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=0, atol=atol)


def _tf_value_and_gradients(layer, data, mask):
    """`sum(layer(data, mask) ** 2)` and its gradients for `data` and the
    weights, on TensorFlow."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(data)
        value = tf.reduce_sum(tf.square(layer(data, mask=mask)))
    return value, tape.gradient(value, [data] + layer.trainable_weights)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.function(jit_compile=True) is TensorFlow's; JAX always compiles",
)
def test_xla_compiled_layer_matches_eager_with_nan_padding():
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    x_padded = np.where(mask[..., None], x, np.float32(np.nan))
    layer = MaskedAttentionPooling(4)
    layer.build(x.shape)
    seen = []

    def step(data):
        seen.append(_xla.compiling())
        return _tf_value_and_gradients(layer, data, mask)

    eager_value, eager_grads = step(tf.constant(x))
    xla_value, xla_grads = tf.function(step, jit_compile=True)(tf.constant(x_padded))
    assert seen == [False, True]
    np.testing.assert_allclose(xla_value.numpy(), eager_value.numpy(), rtol=1e-5)
    for a, b in zip(xla_grads, eager_grads):
        harness.assert_finite(a.numpy())
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(xla_grads[0].numpy()[0, 3:] == 0.0)


def _outputs_and_gradients(layer, x, pool):
    """`pool(x)`, and the gradients of `sum(pool(x) * u)` for a fixed random
    `u` with respect to `x` and the layer's weights, as float64 arrays."""
    u = np.random.default_rng(15).normal(size=(x.shape[0], x.shape[-1]))
    upstream = keras.ops.convert_to_tensor(u.astype("float32"))
    inputs = keras.Variable(x)
    pooled = keras.ops.cast(pool(inputs), "float32")
    _, grads = harness.gradients(
        lambda: keras.ops.sum(keras.ops.cast(pool(inputs), "float32") * upstream),
        [inputs] + layer.trainable_weights,
    )
    return [harness.to_numpy(t).astype("float64") for t in (pooled, *grads)]


def _assert_same_outputs_and_gradients(got, expected, policy, mask):
    """Each array within `tol` of its largest entry (and at least `tol`).

    Under mixed precision the two computations round differently (a bias
    added inside or after a float16 product, sums taken in another order),
    so `tol` is eight units of roundoff of the compute dtype: 2**-8 for
    float16 and 2**-5 for bfloat16. Over 150 random initializations per
    policy on TensorFlow and torch, the largest error was 0.54 of that.
    """
    tol = {"float32": 1e-5, "mixed_float16": 2.0**-8, "mixed_bfloat16": 2.0**-5}[policy]
    assert len(got) == len(expected)
    for array, reference in zip(got, expected):
        harness.assert_finite(array)
        scale = max(1.0, np.max(np.abs(reference)))
        np.testing.assert_allclose(array, reference, rtol=tol, atol=tol * scale)
    if mask is not None:
        d_inputs = got[1]
        assert np.all(d_inputs[~mask] == 0.0)
        assert np.all(d_inputs[2] == 0.0)  # the row with no real step


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_weighted_sum_forms_agree_in_values_and_gradients(policy, masked, monkeypatch):
    # The XLA form (elementwise) against the other (a batched product),
    # forced on every backend. NaN padding, an empty row, unequal lengths.
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 6, 5)).astype("float32")
    mask = np.arange(6)[None, :] < np.array([6, 2, 0])[:, None] if masked else None
    if masked:
        x[~mask] = np.nan
    results = []
    with harness.dtype_policy(policy):
        layer = MaskedAttentionPooling(4, bias_initializer="random_normal")
        layer.build(x.shape)
        for fused in (True, False):
            monkeypatch.setattr(_xla, "compiling", lambda: fused)
            results.append(_outputs_and_gradients(layer, x, lambda v: layer(v, mask=mask)))
    _assert_same_outputs_and_gradients(*results, policy, mask)
    assert len(results[0]) == 1 + 4  # pooled; inputs, W, b, u


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="an unknown batch size exists only in TensorFlow graphs",
)
def test_unknown_batch_and_time_in_a_graph():
    import tensorflow as tf

    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer = MaskedAttentionPooling(4)
    layer.build(x.shape)

    def step(x, m):
        return _tf_value_and_gradients(layer, x, m)

    eager_value, eager_grads = step(tf.constant(x), tf.constant(mask))
    graph = tf.function(
        step,
        input_signature=[tf.TensorSpec((None, None, 3)), tf.TensorSpec((None, None), tf.bool)],
    )
    value, grads = graph(tf.constant(x), tf.constant(mask))
    np.testing.assert_allclose(value.numpy(), eager_value.numpy(), rtol=1e-6)
    for a, b in zip(grads, eager_grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_stateless_call_computes_in_the_compute_dtype():
    # `stateless_call` runs `call` with no autocast scope; the layer casts
    # its inputs and weights itself, so a mixed-precision layer still
    # computes in float16 there, with the values `__call__` gives.
    rng = np.random.default_rng(13)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer = MaskedAttentionPooling(4, dtype="mixed_float16")
    expected = layer(x, mask=mask)
    got, _ = layer.stateless_call(
        layer.trainable_variables, layer.non_trainable_variables, x, mask=mask
    )
    assert keras.backend.standardize_dtype(got.dtype) == "float16"
    np.testing.assert_array_equal(harness.to_numpy(got), harness.to_numpy(expected))


def test_compiling_answers_for_the_function_being_traced():
    """Eager code and a plain graph are not compiled by XLA; a TensorFlow
    function with `jit_compile=True` and everything `jax.jit` traces are;
    torch never is."""
    seen = []

    def probe(x):
        seen.append(_xla.compiling())
        return x + 1.0

    x = np.ones(2, "float32")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        for run in (probe, tf.function(probe), tf.function(probe, jit_compile=True)):
            run(tf.constant(x))
        assert seen == [False, False, True]
    elif backend == "jax":
        import jax

        jax.jit(probe)(x)
        assert seen == [True]
    else:
        probe(keras.ops.convert_to_tensor(x))
        assert seen == [False]


def test_implicit_mask_from_embedding_equals_explicit_mask():
    tokens = np.array([[4, 2, 7, 0, 0], [3, 3, 3, 3, 9]])
    inputs = keras.Input((5,), dtype="int32")
    embedding = keras.layers.Embedding(10, 6, mask_zero=True)
    pooling = MaskedAttentionPooling(3)
    model = keras.Model(inputs, pooling(embedding(inputs)))
    implicit = harness.to_numpy(model(tokens))
    explicit = harness.to_numpy(pooling(embedding(tokens), mask=tokens > 0))
    np.testing.assert_allclose(implicit, explicit, rtol=1e-6)
    truncated = harness.to_numpy(pooling(embedding(tokens[:1, :3])))
    np.testing.assert_allclose(implicit[0], truncated[0], rtol=1e-5)


def test_compute_mask_is_none_and_output_has_no_mask():
    layer = MaskedAttentionPooling(2)
    x = np.zeros((1, 3, 2), "float32")
    assert layer.compute_mask(x, np.ones((1, 3), bool)) is None


def test_bad_inputs_and_arguments():
    layer = MaskedAttentionPooling(2)
    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 3\)"):
        layer(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"inputs.shape=\(1, 2, 3, 4\)"):
        MaskedAttentionPooling(2)(np.zeros((1, 2, 3, 4), "float32"))
    with pytest.raises(ValueError, match=r"mask.shape=\(2, 4\)"):
        MaskedAttentionPooling(2)(np.zeros((2, 3, 5), "float32"), mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"mask.shape=\(2, 3, 5\)"):
        MaskedAttentionPooling(2)(np.zeros((2, 3, 5), "float32"), mask=np.ones((2, 3, 5), bool))
    for bad in (0, -3, 2.5, None):
        with pytest.raises(ValueError, match=f"units={bad!r}"):
            MaskedAttentionPooling(bad)


def test_config_round_trip():
    layer = MaskedAttentionPooling(
        7, use_bias=False, context_initializer="ones", kernel_regularizer="l2"
    )
    config = layer.get_config()
    for key in ("units", "use_bias", "kernel_initializer", "bias_initializer",
                "context_initializer", "kernel_regularizer"):
        assert key in config
    assert MaskedAttentionPooling.from_config(config).get_config() == config
