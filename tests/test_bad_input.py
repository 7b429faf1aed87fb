"""Bad and degenerate call-time inputs: a clear error, or a defined result.

One section per API. Each has a property test (random valid inputs,
extremes included, never give NaN or an out-of-range output) and tests of
what used to go silently wrong: a KV-cache index past the end or before the
start (clamped), a batch of one initializing WeightNormalization (a length
of 1e5, NaN under float16), a zero kernel's norm (a NaN gradient), CRF
scores near float32's end (an inf loss), NaN probabilities in
`monotone_decode` (an index out of range). The error messages themselves
are checked by `test_errors.py`, row by row of docs/errors.md.
"""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

import keras_addons_qa as kaq
from keras_addons_qa import text
from tests import harness

SETTINGS = settings(
    max_examples=harness.examples(40), deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# The CRF's scans compile once per shape on JAX: fewer cases there.
CRF_SETTINGS = settings(SETTINGS, max_examples=harness.examples(30))


def _compiled(fn):
    """`fn` compiled the way `fit` compiles it: a `tf.function` on
    TensorFlow, `jax.jit` on JAX. None on torch, whose `fit` runs the layer
    eagerly (where the values are checked)."""
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if harness.BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return None


# --- QKVAttention's KV cache ------------------------------------------------

MAX_LENGTH = 6


def _attention_and_steps(steps, seed=0):
    layer = kaq.layers.QKVAttention(num_heads=2, key_dim=4)
    x = np.random.default_rng(seed).normal(size=(2, steps, 8)).astype("float32")
    return layer, x


def _new_keys_and_values(layer, x):
    """The `(B, 2, T, heads, key_dim)` keys and values of `x`'s steps: a
    cache of exactly T slots, written from 0."""
    empty = np.zeros((x.shape[0], 2, x.shape[1], 2, 4), "float32")
    return harness.to_numpy(layer(x, x, cache=empty, cache_update_index=0)[1])


@pytest.mark.parametrize("index,steps", [(6, 1), (-1, 1), (5, 2), (-2, 3), (4, 3)])
@pytest.mark.parametrize("form", ["int", "numpy", "tensor"])
def test_a_cache_index_that_leaves_no_room_raises(index, steps, form):
    layer, x = _attention_and_steps(steps)
    cache = np.zeros((2, 2, MAX_LENGTH, 2, 4), "float32")
    given_index = {
        "int": index, "numpy": np.int32(index), "tensor": ops.convert_to_tensor(index, "int32"),
    }[form]
    with pytest.raises(ValueError, match="`cache_update_index` must leave room"):
        layer(x, x, cache=cache, cache_update_index=given_index, use_causal_mask=True)


@pytest.mark.parametrize("index", [0, 2, 4, 5, 6, 9, -1, -3])
def test_compiled_code_writes_each_step_to_its_own_slot_or_nowhere(index):
    """Compiled code cannot raise on the index's value: a step whose slot
    falls outside the cache is dropped, and no step moves (TensorFlow and
    JAX clamped the block back inside, overwriting earlier slots)."""
    steps = 2
    layer, x = _attention_and_steps(steps)
    step = _compiled(
        lambda x, cache, i: layer(x, x, cache=cache, cache_update_index=i, use_causal_mask=True)
    )
    if step is None:
        pytest.skip("torch runs the layer eagerly, where the index is checked and raises")
    new = _new_keys_and_values(layer, x)
    old = np.random.default_rng(1).normal(size=(2, 2, MAX_LENGTH, 2, 4)).astype("float32")
    output, cache = step(x, old, np.asarray(index, "int32"))
    expected = old.copy()
    for t in range(steps):
        if 0 <= index + t < MAX_LENGTH:
            expected[:, :, index + t] = new[:, :, t]
    np.testing.assert_allclose(harness.to_numpy(cache), expected, rtol=1e-6, atol=1e-6)
    harness.assert_finite(output)
    if 0 <= index <= MAX_LENGTH - steps:  # in range: the same as eager code
        eager_output, eager_cache = layer(x, x, cache=old, cache_update_index=index, use_causal_mask=True)
        np.testing.assert_allclose(harness.to_numpy(output), harness.to_numpy(eager_output), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(harness.to_numpy(cache), harness.to_numpy(eager_cache), rtol=1e-6, atol=1e-6)


@SETTINGS
@given(
    max_length=st.integers(1, 7),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_cache_properties(max_length, data, seed):
    """Any steps that fit, at any index: exactly their slots change, the
    padded new steps included, and every output is finite."""
    steps = data.draw(st.integers(1, max_length))
    index = data.draw(st.integers(0, max_length - steps))
    layer, x = _attention_and_steps(steps, seed)
    rng = np.random.default_rng(seed)
    old = rng.normal(size=(2, 2, max_length, 2, 4)).astype("float32")
    mask = rng.random((2, steps)) < 0.7
    x_padded = np.where(mask[..., None], x, np.nan).astype("float32")  # padding is garbage
    output, cache = layer(
        x_padded, x_padded, query_mask=mask, value_mask=mask,
        cache=old, cache_update_index=index, use_causal_mask=True,
    )
    cache = harness.to_numpy(cache)
    harness.assert_finite(output, cache)
    untouched = np.ones(max_length, bool)
    untouched[index:index + steps] = False
    np.testing.assert_array_equal(cache[:, :, untouched], old[:, :, untouched])
    assert not np.allclose(cache[:, :, index:index + steps], old[:, :, index:index + steps])


# --- WeightNormalization ----------------------------------------------------


def _weight_normalized(units=3, **dense_kwargs):
    return kaq.layers.WeightNormalization(keras.layers.Dense(units, **dense_kwargs))


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_data_init_on_a_batch_of_one_keeps_the_lengths(policy):
    """A batch of one has no variance: each unit keeps its length and is
    only centred (the init made the lengths 1e5: losses of 1e7 and more,
    NaN from the first step under float16)."""
    keras.utils.set_random_seed(0)
    with harness.dtype_policy(policy):
        layer = _weight_normalized(8, activation="relu")
        model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(1)])
        model.compile("adam", "mse")
        x = np.random.default_rng(0).normal(size=(1, 4)).astype("float32")
        norm = np.linalg.norm(harness.to_numpy(layer.layer.kernel), axis=0)
        losses = model.fit(x, np.ones((1, 1), "float32"), epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and max(losses) < 10.0, losses
    # The first step saw the initial lengths; Adam moves each by ~1e-3 a step.
    lengths = harness.to_numpy(layer.g + layer.g_init)
    np.testing.assert_allclose(lengths, norm, atol=1e-2)


def test_data_init_centres_units_that_do_not_vary_and_scales_the_others():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    x[:, 1] = 0.0  # a constant input
    layer = _weight_normalized(3, kernel_initializer="glorot_uniform")
    layer.build((None, 4))
    kernel = harness.to_numpy(layer.layer.kernel).copy()
    kernel[[0, 2, 3], 1] = 0.0  # unit 1 reads only the constant input
    layer.layer.kernel.assign(kernel)
    length = harness.to_numpy(layer.g)[1]
    out = harness.to_numpy(layer(x))
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, [0, 2]].std(0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(harness.to_numpy(layer.g + layer.g_init)[1], length, rtol=1e-6)


def test_a_zero_kernel_has_finite_gradients():
    """`sqrt` has an infinite slope at 0: the norm of a zero kernel gave a
    NaN gradient on JAX and torch."""
    layer = _weight_normalized(3, kernel_initializer="zeros")
    layer.data_init = False
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    layer.build((None, 4))
    value, grads = harness.gradients(lambda: ops.sum(layer(x)), layer.trainable_variables)
    harness.assert_finite(value, *grads)


@SETTINGS
@given(
    batch=st.integers(1, 5),
    constant=st.booleans(),
    scale=st.sampled_from([1e-4, 1.0, 1e3]),
    policy=st.sampled_from(["float32", "mixed_float16", "mixed_bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_weight_normalization_properties(batch, constant, scale, policy, seed):
    """Any first batch, a single row or constant rows included: finite
    outputs and gradients, and no length past 1 / sqrt(1e-6)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(batch, 4)) * scale).astype("float32")
    if constant:
        x[:] = x[:1]
    with harness.dtype_policy(policy):
        layer = _weight_normalized(3)
        layer.build((None, 4))
        layer(x)  # the data init
        value, grads = harness.gradients(
            lambda: ops.sum(ops.square(ops.cast(layer(x), "float32"))), layer.trainable_variables
        )
    harness.assert_finite(value, *grads)
    lengths = np.abs(harness.to_numpy(layer.g + layer.g_init))
    assert np.all(lengths <= 1e3 * (1 + 1e-3)), lengths


# --- The CRF ----------------------------------------------------------------


def test_scores_near_the_float32_end_give_finite_losses_and_gradients():
    """Scores of 1e38 summed over a chain overflowed to inf: an inf loss,
    NaN gradients and a false "breaks the tagging scheme" error."""
    scores = np.full((2, 4, 3), 1e38, "float32")
    scores[:, :, 1] = -1e38
    tags = np.array([[0, 1, 2, 0], [1, 1, 0, 0]])
    inputs = keras.Variable(scores)
    value, (grad,) = harness.gradients(
        lambda: ops.sum(text.crf_log_likelihood(inputs, tags, [4, 3], np.zeros((3, 3), "float32"))[0]),
        [inputs],
    )
    harness.assert_finite(value, grad)
    layer = kaq.layers.CRF(3)
    features = np.random.default_rng(0).normal(size=(2, 4, 5)).astype("float32") * 1e37
    layer.build((None, 4, 5))
    loss, grads = harness.gradients(
        lambda: kaq.losses.CRFLoss()(tags, layer(features)["potentials"]), layer.trainable_variables
    )
    harness.assert_finite(loss, *grads)
    decoded = harness.to_numpy(layer(features)["tags"])
    assert decoded.min() >= 0 and decoded.max() < 3


@CRF_SETTINGS
@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 5),
    num_tags=st.integers(1, 4),
    scale=st.sampled_from([1.0, 1e4, 1e30, 3e38]),
    ruled_out=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_crf_function_properties(batch, steps, num_tags, scale, ruled_out, seed):
    """Any finite scores (and -inf transitions) with lengths 0..T: finite
    log-likelihoods <= 0 and gradients, tags in range, marginals that sum
    to 1 at each step inside a length and are 0 past it."""
    rng = np.random.default_rng(seed)
    scores = np.clip(rng.normal(size=(batch, steps, num_tags)) * scale, -3e38, 3e38).astype("float32")
    transitions = rng.normal(size=(num_tags, num_tags)).astype("float32")
    if ruled_out:
        transitions[rng.random((num_tags, num_tags)) < 0.3] = -np.inf
        np.fill_diagonal(transitions, 0.0)  # one allowed path at least
    lengths = rng.integers(0, steps + 1, size=batch)
    tags = np.zeros((batch, steps), "int32")  # the diagonal: always allowed
    inputs = keras.Variable(scores)
    value, (grad,) = harness.gradients(
        lambda: ops.sum(text.crf_log_likelihood(inputs, tags, lengths, transitions)[0]), [inputs]
    )
    harness.assert_finite(value, grad)
    log_likelihood = harness.to_numpy(text.crf_log_likelihood(scores, tags, lengths, transitions)[0])
    assert np.all(log_likelihood <= 1e-3 * np.maximum(1.0, np.abs(log_likelihood)))
    decoded, best = text.crf_decode(scores, transitions, lengths)
    decoded = harness.to_numpy(decoded)
    harness.assert_finite(best)
    assert decoded.min() >= 0 and decoded.max() < num_tags
    marginals = harness.to_numpy(text.crf_marginals(scores, lengths, transitions))
    harness.assert_finite(marginals)
    inside = np.arange(steps)[None, :] < lengths[:, None]
    np.testing.assert_allclose(marginals.sum(-1)[inside], 1.0, atol=1e-4)
    np.testing.assert_array_equal(marginals[~inside], 0.0)


@pytest.mark.parametrize("shape", [(2, 0, 3), (0, 4, 3), (0, 0, 3)])
def test_no_step_or_no_example(shape):
    """Scores with no step score the empty sequence (0, probability 1);
    an empty batch gives empty results (both crashed in a max or a slice)."""
    scores = np.zeros(shape, "float32")
    transitions = np.random.default_rng(0).normal(size=(3, 3)).astype("float32")
    batch, steps = shape[:2]
    lengths = np.zeros(batch, "int32")
    tags = np.zeros((batch, steps), "int32")
    log_likelihood, _ = text.crf_log_likelihood(scores, tags, lengths, transitions)
    np.testing.assert_array_equal(harness.to_numpy(log_likelihood), np.zeros(batch))
    np.testing.assert_array_equal(harness.to_numpy(text.crf_log_norm(scores, lengths, transitions)), np.zeros(batch))
    decoded, best = text.crf_decode(scores, transitions, lengths)
    assert harness.to_numpy(decoded).shape == (batch, steps)
    np.testing.assert_array_equal(harness.to_numpy(best), np.zeros(batch))
    assert harness.to_numpy(text.crf_marginals(scores, lengths, transitions)).shape == shape
    top, top_scores = text.crf_top_k_decode(scores, transitions, lengths, 2)
    assert harness.to_numpy(top).shape == (batch, 2, steps)
    np.testing.assert_array_equal(harness.to_numpy(top_scores), np.tile([[0.0, -np.inf]], (batch, 1)))
    outputs = kaq.layers.CRF(3, return_marginals=True)(scores)
    assert harness.to_numpy(outputs["tags"]).shape == (batch, steps)
    np.testing.assert_array_equal(
        harness.to_numpy(kaq.losses.CRFLoss(reduction=None)(tags, outputs["potentials"])), np.zeros(batch)
    )


def test_nan_scores_decode_to_tags():
    """A NaN score counts as the lowest: the decoded tag is a tag (it was
    `num_tags`), in the functions and the layer."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 4, 3)).astype("float32")
    scores[0, 1] = np.nan
    scores[1, :, 2] = np.nan
    transitions = rng.normal(size=(3, 3)).astype("float32")
    decoded = harness.to_numpy(text.crf_decode(scores, transitions, [4, 4])[0])
    assert decoded.min() >= 0 and decoded.max() < 3
    assert np.all(decoded[1] != 2)  # never the NaN tag
    tags = harness.to_numpy(kaq.layers.CRF(3, use_kernel=False)(scores)["tags"])
    assert tags.min() >= 0 and tags.max() < 3
    path, _ = text.viterbi_decode(scores[1], transitions)
    assert 2 not in path


def test_int_scores_give_float_results():
    """Int scores are scores: the results were cast back to int."""
    scores = np.ones((1, 2, 3), "int32")
    log_likelihood, _ = text.crf_log_likelihood(scores, np.zeros((1, 2), "int32"), [2], np.zeros((3, 3), "float32"))
    np.testing.assert_allclose(harness.to_numpy(log_likelihood), [-2 * np.log(3.0)], rtol=1e-6)


def test_an_empty_first_batch_leaves_weight_normalization_uninitialized():
    """The mean of no rows is NaN: an empty first batch made every later
    output NaN."""
    layer = _weight_normalized(4)
    layer.build((None, 5))
    layer(np.zeros((0, 5), "float32"))
    assert float(harness.to_numpy(layer.initialized)) == 0.0
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    out = harness.to_numpy(layer(x))
    harness.assert_finite(out)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(0), 1.0, rtol=1e-3)


@CRF_SETTINGS
@given(
    steps=st.integers(1, 5),
    num_tags=st.integers(1, 4),
    garbage=st.sampled_from([np.nan, np.inf, -np.inf, 1e38]),
    scale=st.sampled_from([1.0, 1e36]),
    seed=st.integers(0, 2**16),
)
def test_crf_layer_properties(steps, num_tags, garbage, scale, seed):
    """Masked steps holding anything and finite features of any size: a
    finite loss and finite gradients, decoded tags in range."""
    rng = np.random.default_rng(seed)
    features = (rng.normal(size=(2, steps, 3)) * scale).astype("float32")
    mask = np.arange(steps)[None, :] < rng.integers(0, steps + 1, size=(2, 1))
    features[~mask] = garbage
    tags = rng.integers(0, num_tags, size=(2, steps))
    layer = kaq.layers.CRF(num_tags)
    layer.build((None, steps, 3))
    loss, grads = harness.gradients(
        lambda: kaq.losses.CRFLoss()(tags, layer(features, mask=mask)["potentials"]),
        layer.trainable_variables,
    )
    harness.assert_finite(loss, *grads)
    decoded = harness.to_numpy(layer(features, mask=mask)["tags"])
    assert decoded.min() >= 0 and decoded.max() < num_tags


# --- monotone_decode --------------------------------------------------------


@SETTINGS
@given(
    batch=st.integers(0, 3),
    groups=st.integers(0, 6),
    size=st.integers(1, 5),
    holes=st.sampled_from([None, np.nan, 0.0, np.inf]),
    direction=st.sampled_from(["increasing", "decreasing"]),
    seed=st.integers(0, 2**16),
)
def test_monotone_decode_properties(batch, groups, size, holes, direction, seed):
    """Any probabilities, NaN, zeros and empty batches included: indices
    in range, monotone, the same compiled as eager."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(size), size=(batch, groups)).astype("float32")
    if holes is not None and probs.size:
        probs[rng.random(probs.shape) < 0.3] = holes
    path = harness.to_numpy(kaq.layers.monotone_decode(probs, direction))
    assert path.shape == (batch, groups) and path.dtype == np.int32
    if path.size:
        assert path.min() >= 0 and path.max() < size
        steps = np.diff(path.astype("int64"), axis=-1)
        assert np.all(steps >= 0 if direction == "increasing" else steps <= 0)
    decode = _compiled(lambda p: kaq.layers.monotone_decode(p, direction))
    if decode is not None and probs.size:
        np.testing.assert_array_equal(harness.to_numpy(decode(probs)), path)


def test_nan_probabilities_count_as_zero():
    probs = np.array([[[0.2, np.nan, 0.8], [0.1, 0.9, np.nan], [np.nan] * 3]], "float32")
    zeros = np.nan_to_num(probs, nan=0.0)
    np.testing.assert_array_equal(
        harness.to_numpy(kaq.layers.monotone_decode(probs)),
        harness.to_numpy(kaq.layers.monotone_decode(zeros)),
    )
    path = harness.to_numpy(kaq.layers.monotone_decode(probs))
    assert path.min() >= 0 and path.max() < 3


def test_whole_float_tags_are_tags():
    """Tags read from a float dataset (whole numbers) score as ints do;
    fewer tag steps than scores raise instead of a backend shape error."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 4, 3)).astype("float32")
    transitions = rng.normal(size=(3, 3)).astype("float32")
    tags = rng.integers(0, 3, size=(2, 4))
    as_ints, _ = text.crf_log_likelihood(scores, tags, [4, 2], transitions)
    as_floats, _ = text.crf_log_likelihood(scores, tags.astype("float32"), [4, 2], transitions)
    np.testing.assert_array_equal(harness.to_numpy(as_floats), harness.to_numpy(as_ints))
    with pytest.raises(ValueError, match="time >= 4"):
        text.crf_log_likelihood(scores, tags[:, :3], [4, 2], transitions)
