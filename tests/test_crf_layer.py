"""The `CRF` layer and `CRFLoss`: brute force over all tag sequences,
masks anywhere, training with a plain `fit`, saving, precision, XLA."""

import itertools

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_addons_qa as kaq
from keras_addons_qa import text
from tests import harness

CRF = kaq.layers.CRF
CRFLoss = kaq.losses.CRFLoss


def _weights(layer):
    transitions = harness.to_numpy(layer.chain_kernel)
    if not layer.use_boundary:
        return transitions, 0.0, 0.0
    return transitions, harness.to_numpy(layer.left_boundary), harness.to_numpy(layer.right_boundary)


def _brute_force(scores, valid, transitions, start, end):
    """Every tag sequence over the valid steps, and its score."""
    steps = np.flatnonzero(valid)
    num_tags = scores.shape[-1]
    for path in itertools.product(range(num_tags), repeat=len(steps)):
        value = sum(scores[t, tag] for t, tag in zip(steps, path))
        value += sum(transitions[a, b] for a, b in zip(path, path[1:]))
        if path:
            value += np.broadcast_to(start, (num_tags,))[path[0]]
            value += np.broadcast_to(end, (num_tags,))[path[-1]]
        yield path, float(value)


def _random_layer(num_tags, use_boundary, seed, **kwargs):
    layer = CRF(num_tags, use_kernel=False, use_boundary=use_boundary, name="crf", **kwargs)
    layer.build((None, None, num_tags))
    rng = np.random.default_rng(seed)
    layer.chain_kernel.assign(rng.normal(size=(num_tags, num_tags)).astype("float32"))
    if use_boundary:
        layer.left_boundary.assign(rng.normal(size=num_tags).astype("float32"))
        layer.right_boundary.assign(rng.normal(size=num_tags).astype("float32"))
    return layer


@settings(max_examples=harness.examples(40), deadline=None)
@given(
    steps=st.integers(1, 5),
    num_tags=st.integers(1, 3),
    use_boundary=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_loss_and_tags_equal_brute_force_with_masks_anywhere(steps, num_tags, use_boundary, seed):
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(3, steps, num_tags)) * 2).astype("float32")
    valid = rng.random((3, steps)) > 0.35  # holes, left and right padding
    valid[0] = False  # an example with no step
    tags = rng.integers(0, num_tags, size=(3, steps))
    layer = _random_layer(num_tags, use_boundary, seed, return_marginals=True)
    out = layer(scores, mask=valid)
    loss = harness.to_numpy(CRFLoss(reduction=None)(tags, out["potentials"]))
    decoded = harness.to_numpy(out["tags"])
    marginals = harness.to_numpy(out["marginals"])
    assert decoded.dtype == np.int32 and decoded.shape == (3, steps)
    assert marginals.shape == (3, steps, num_tags)
    for b in range(3):
        paths = dict(_brute_force(scores[b], valid[b], *_weights(layer)))
        values = np.array(list(paths.values()))
        gold = paths[tuple(tags[b, valid[b]])]
        np.testing.assert_allclose(loss[b], np.logaddexp.reduce(values) - gold, rtol=1e-5, atol=1e-5)
        best = paths[tuple(decoded[b, valid[b]])]
        np.testing.assert_allclose(best, values.max(), rtol=1e-5, atol=1e-5)
        assert np.all(decoded[b, ~valid[b]] == 0)
        expected = np.zeros((steps, num_tags))
        for path, p in zip(paths, np.exp(values - np.logaddexp.reduce(values))):
            expected[np.flatnonzero(valid[b]), list(path)] += p
        np.testing.assert_allclose(marginals[b], expected, rtol=1e-4, atol=1e-6)


@settings(max_examples=harness.examples(25), deadline=None)
@given(
    steps=st.integers(1, 5),
    num_tags=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_loss_gradient_equals_brute_force_with_masks_anywhere(steps, num_tags, seed):
    # d loss / d weight = E[feature] - gold feature: the expected count of
    # each (step, tag), transition, first and last tag, over all sequences.
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(3, steps, num_tags)) * 2).astype("float32")
    valid = rng.random((3, steps)) > 0.35
    valid[0] = False
    tags = rng.integers(0, num_tags, size=(3, steps))
    layer = _random_layer(num_tags, True, seed)
    x = keras.Variable(scores)
    weights = [layer.chain_kernel, layer.left_boundary, layer.right_boundary]
    _, grads = harness.gradients(
        lambda: CRFLoss(reduction="sum")(tags, layer(x.value, mask=valid)["potentials"]), [x, *weights]
    )
    expected = [np.zeros(scores.shape), np.zeros((num_tags, num_tags)), np.zeros(num_tags), np.zeros(num_tags)]

    def add(path, steps_, weight):
        expected[0][b, steps_, path] += weight
        for a, c in zip(path, path[1:]):
            expected[1][a, c] += weight
        if path:
            expected[2][path[0]] += weight
            expected[3][path[-1]] += weight

    for b in range(3):
        paths = dict(_brute_force(scores[b], valid[b], *_weights(layer)))
        values = np.array(list(paths.values()), np.float64)
        probs = np.exp(values - np.logaddexp.reduce(values))
        steps_ = np.flatnonzero(valid[b])
        for path, p in zip(paths, probs):
            add(list(path), steps_, p)
        add(list(tags[b, valid[b]]), steps_, -1.0)
    for grad, want in zip(grads, expected):
        np.testing.assert_allclose(harness.to_numpy(grad), want, rtol=1e-4, atol=1e-5)


def test_matches_the_tensorflow_addons_functions_on_right_padding():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 6, 5)).astype("float32")
    lengths = np.array([6, 3, 1, 0])
    valid = np.arange(6)[None] < lengths[:, None]
    tags = rng.integers(0, 5, size=(4, 6))
    layer = _random_layer(5, use_boundary=False, seed=2)
    out = layer(scores, mask=valid)
    transitions = layer.chain_kernel
    likelihood, _ = text.crf_log_likelihood(scores, tags, lengths, transitions)
    np.testing.assert_allclose(
        harness.to_numpy(CRFLoss(reduction=None)(tags, out["potentials"])),
        -harness.to_numpy(likelihood), rtol=1e-5, atol=1e-5,
    )
    decoded, _ = text.crf_decode(scores, transitions, lengths)
    np.testing.assert_array_equal(harness.to_numpy(out["tags"]), harness.to_numpy(decoded))


def test_masked_steps_change_nothing_and_get_no_gradient():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(2, 7, 4)).astype("float32")
    valid = np.array([[0, 1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]], bool)
    tags = rng.integers(0, 4, size=(2, 7))
    layer = _random_layer(4, use_boundary=True, seed=4)
    loss = CRFLoss()
    noisy = scores.copy()
    noisy[~valid] = 1e4  # anything at masked steps, tags too
    other_tags = np.where(valid, tags, 3)
    base = layer(scores, mask=valid)
    moved = layer(noisy, mask=valid)
    np.testing.assert_array_equal(harness.to_numpy(base["tags"]), harness.to_numpy(moved["tags"]))
    np.testing.assert_allclose(
        harness.to_numpy(loss(tags, base["potentials"])),
        harness.to_numpy(loss(other_tags, moved["potentials"])), rtol=1e-6,
    )
    # Out-of-range padding labels (-1, num_tags) are never read either.
    for pad in (-1, 4):
        np.testing.assert_allclose(
            harness.to_numpy(loss(np.where(valid, tags, pad), base["potentials"])),
            harness.to_numpy(loss(tags, base["potentials"])), rtol=1e-6,
        )
    x = keras.Variable(scores)
    _, (grad,) = harness.gradients(lambda: loss(tags, layer(x.value, mask=valid)["potentials"]), [x])
    grad = harness.to_numpy(grad)
    harness.assert_finite(grad)
    assert np.all(grad[~valid] == 0) and np.any(grad[valid] != 0)


@pytest.mark.parametrize("padding", [np.nan, np.inf, -np.inf, 1e38])
def test_inf_and_nan_features_at_masked_steps_reach_nothing(padding):
    # The features of masked steps go through the layer's projection: they
    # are replaced by zeros first, so the kernel's gradient stays finite.
    rng = np.random.default_rng(8)
    features = rng.normal(size=(2, 6, 5)).astype("float32")
    valid = np.array([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], bool)
    tags = rng.integers(0, 3, size=(2, 6))
    layer = CRF(3, name="crf")
    clean = layer(features, mask=valid)
    noisy = features.copy()
    noisy[~valid] = padding
    x = keras.Variable(noisy)
    loss = CRFLoss()
    value, grads = harness.gradients(lambda: loss(tags, layer(x.value, mask=valid)["potentials"]),
                                     [x, layer.dense.kernel, layer.chain_kernel])
    np.testing.assert_allclose(harness.to_numpy(value), harness.to_numpy(loss(tags, clean["potentials"])), rtol=1e-6)
    for grad in grads:
        harness.assert_finite(harness.to_numpy(grad))
    assert np.all(harness.to_numpy(grads[0])[~valid] == 0)
    decoded = harness.to_numpy(layer(noisy, mask=valid)["tags"])
    np.testing.assert_array_equal(decoded, harness.to_numpy(clean["tags"]))


def test_tags_out_of_range():
    layer = _random_layer(3, use_boundary=True, seed=9)
    scores = np.random.default_rng(9).normal(size=(2, 4, 3)).astype("float32")
    valid = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    potentials = layer(scores, mask=valid)["potentials"]
    good = np.array([[0, 1, 2, 7], [2, 2, 0, 1]])  # 7 at a masked step: never read
    np.testing.assert_allclose(
        harness.to_numpy(CRFLoss(reduction=None)(good, potentials)),
        harness.to_numpy(CRFLoss(reduction=None)(np.where(valid, good, 0), potentials)), rtol=1e-6,
    )
    for bad_tag in (3, -1, 100):
        bad = good.copy()
        bad[1, 2] = bad_tag
        with pytest.raises(ValueError, match=rf"y_true values \[{bad_tag}\]"):
            CRFLoss()(bad, potentials)  # eager
    # Compiled: the example with the bad tag gets loss 0; the other its own.
    bad = good.copy()
    bad[1, 2] = 3
    want = harness.to_numpy(CRFLoss(reduction=None)(good, potentials))
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        got = tf.function(lambda p: CRFLoss(reduction=None)(bad, p))(potentials)
    elif harness.BACKEND == "jax":
        import jax

        got = jax.jit(lambda p: CRFLoss(reduction=None)(bad, p))(potentials)
    else:
        pytest.skip("torch runs eagerly: the error above is what it gives")
    np.testing.assert_allclose(harness.to_numpy(got), [want[0], 0.0], rtol=1e-6)


def _tagging_data(seed, batch=96, steps=10, vocabulary=12):
    """Tokens whose tag is the token modulo 4, except that tag 3 may only
    follow tag 3 or 2 (and otherwise becomes 2): transitions matter."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocabulary, size=(batch, steps))
    lengths = rng.integers(2, steps + 1, size=batch)
    tokens[np.arange(steps)[None] >= lengths[:, None]] = 0
    tags = tokens % 4
    for t in range(steps):
        previous = tags[:, t - 1] if t else np.zeros(batch, int)
        tags[:, t] = np.where((tags[:, t] == 3) & ~np.isin(previous, (2, 3)), 2, tags[:, t])
    tags[tokens == 0] = 0
    return tokens.astype("int32"), tags.astype("int32")


def _tagger(vocabulary=12, num_tags=4):
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, 16, mask_zero=True)(tokens)
    x = keras.layers.Bidirectional(keras.layers.GRU(8, return_sequences=True))(x)
    return keras.Model(tokens, CRF(num_tags, name="crf")(x))


# The modes where a fit runs at the speed users see; the others (JAX
# without jit, TensorFlow eagerly) train two epochs: the same code, slower.
_FAST = {"tensorflow": ("graph", "xla"), "jax": ("xla",), "torch": ("eager", "graph")}


@pytest.mark.parametrize("mode", sorted(harness.FIT_MODES))
def test_trains_with_plain_fit_and_evaluates(mode):
    if mode == "xla" and harness.BACKEND == "torch":
        pytest.skip("torch has no jit_compile=True fit in Keras")
    fast = mode in _FAST[harness.BACKEND]
    keras.utils.set_random_seed(0)
    tokens, tags = _tagging_data(0)
    model = _tagger()
    model.compile(keras.optimizers.Adam(0.03), loss={"potentials": CRFLoss()}, **harness.FIT_MODES[mode])
    history = model.fit(tokens, tags, epochs=25 if fast else 2, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < (0.25 if fast else 1.0) * losses[0]
    decoded = model.predict(tokens, verbose=0)["tags"]
    valid = tokens != 0
    if fast:
        assert np.mean(decoded[valid] == tags[valid]) > 0.95
    assert np.all(decoded[~valid] == 0)
    evaluated = model.evaluate(tokens, tags, verbose=0)
    assert np.isfinite(evaluated) and evaluated < losses[0]


def test_tag_metric_with_both_outputs_given():
    tokens, tags = _tagging_data(1, batch=32)
    model = _tagger()
    if harness.KERAS_VERSION < (3, 12):
        # Keras before 3.12 matches a metrics dict against the output layers'
        # names, not the dict's keys; the docstring's remedy: name them.
        model = keras.Model(model.input, {
            key: keras.layers.Identity(name=key)(value)
            for key, value in model.output.items()
        })
    model.compile("adam", loss={"potentials": CRFLoss()}, metrics={"tags": [keras.metrics.Accuracy()]})
    history = model.fit(tokens, {"tags": tags, "potentials": tags}, epochs=1, verbose=0)
    assert "tags_accuracy" in history.history
    logs = model.evaluate(tokens, {"tags": tags, "potentials": tags}, batch_size=32, verbose=0, return_dict=True)
    decoded = model.predict(tokens, verbose=0)["tags"]
    np.testing.assert_allclose(logs["tags_accuracy"], np.mean(decoded == tags), rtol=1e-6)


def test_save_load_in_safe_mode_and_deployed_model(tmp_path):
    keras.utils.set_random_seed(1)
    tokens, tags = _tagging_data(2, batch=32)
    model = _tagger()
    model.compile("adam", loss={"potentials": CRFLoss()})
    model.fit(tokens, tags, epochs=1, verbose=0)
    restored = harness.save_and_reload(model, tmp_path)  # safe mode
    want, got = model.predict(tokens, verbose=0), restored.predict(tokens, verbose=0)
    np.testing.assert_array_equal(got["tags"], want["tags"])
    np.testing.assert_allclose(got["potentials"], want["potentials"], rtol=1e-6, atol=1e-6)
    assert isinstance(restored.loss["potentials"], CRFLoss)
    np.testing.assert_allclose(restored.evaluate(tokens, tags, verbose=0), model.evaluate(tokens, tags, verbose=0), rtol=1e-5)
    deployed = keras.Model(model.input, model.output["tags"])
    np.testing.assert_array_equal(deployed.predict(tokens, verbose=0), want["tags"])


def test_config_round_trip():
    layer = CRF(7, use_boundary=False, chain_initializer="zeros", chain_regularizer="l2", name="tagger")
    clone = CRF.from_config(layer.get_config())
    assert (clone.num_tags, clone.use_boundary, clone.use_kernel) == (7, False, True)
    assert isinstance(clone.chain_regularizer, keras.regularizers.L2)
    loss = CRFLoss.from_config(CRFLoss(reduction="sum").get_config())
    assert loss.reduction == "sum"
    loss = CRFLoss.from_config(CRFLoss(reduction="token_mean").get_config())
    assert loss.get_config()["reduction"] == "token_mean" and loss.token_mean


def test_token_mean_is_the_loss_per_unmasked_step():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(3, 6, 4)).astype("float32")
    valid = np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    tags = rng.integers(0, 4, size=(3, 6))
    potentials = _random_layer(4, True, 6)(scores, mask=valid)["potentials"]
    per_example = harness.to_numpy(CRFLoss(reduction=None)(tags, potentials))
    weights = np.array([0.5, 2.0, 1.0], "float32")
    for sample_weight, factor in ((None, np.ones(3)), (weights, weights)):
        got = harness.to_numpy(CRFLoss(reduction="token_mean")(tags, potentials, sample_weight=sample_weight))
        np.testing.assert_allclose(got, np.sum(per_example * factor) / valid.sum(), rtol=1e-6)
    # No unmasked step at all: 0, not a division by zero.
    none = _random_layer(4, True, 6)(scores, mask=np.zeros_like(valid))["potentials"]
    assert harness.to_numpy(CRFLoss(reduction="token_mean")(tags, none)) == 0


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_computes_the_chain_in_float32(policy):
    rng = np.random.default_rng(5)
    features = (rng.normal(size=(3, 6, 8)) * 50).astype("float32")  # large scores
    valid = np.arange(6)[None] < np.array([[6], [4], [1]])
    tags = rng.integers(0, 4, size=(3, 6))
    with harness.dtype_policy(policy):
        layer = CRF(4, name="crf")
        out = layer(features, mask=valid)
    assert keras.backend.standardize_dtype(out["potentials"].dtype) == "float32"
    loss = harness.to_numpy(CRFLoss(reduction=None)(tags, out["potentials"]))
    harness.assert_finite(loss)
    # The same layer in float32, its kernel rounded to the policy's dtype
    # as the half-precision projection sees it.
    reference = CRF(4, name="crf")
    reference.build((None, None, 8))
    for v, w in zip(reference.weights, layer.weights):
        v.assign(w)
    half = policy.split("_")[1]
    rounded = harness.to_numpy(keras.ops.cast(keras.ops.cast(features, half), "float32"))
    want = reference(rounded, mask=valid)
    assert np.mean(harness.to_numpy(want["tags"]) == harness.to_numpy(out["tags"])) > 0.9
    assert np.all(loss >= 0)
    x = keras.Variable(features)
    with harness.dtype_policy(policy):
        _, (grad,) = harness.gradients(
            lambda: CRFLoss()(tags, layer(x.value, mask=valid)["potentials"]), [x]
        )
    harness.assert_finite(harness.to_numpy(grad))


@pytest.mark.parametrize("constrained", [False, True])
def test_compiled_with_one_trace_for_several_lengths_and_masks(constrained):
    kwargs = dict(allowed_transitions=("BIO", ["O", "B-A", "I-A"]), return_marginals=True) if constrained else {}
    layer = _random_layer(3, use_boundary=True, seed=11, **kwargs)
    loss = CRFLoss(reduction=None)

    def both(scores, mask, tags):
        out = layer(scores, mask=mask)
        return out["tags"], loss(tags, out["potentials"]), out.get("marginals", out["tags"])

    cases = []
    for seed, steps in ((12, 5), (13, 8)):
        rng = np.random.default_rng(seed)
        mask = rng.random((4, steps)) > 0.3
        scores = rng.normal(size=(4, steps, 3)).astype("float32")
        tags = rng.integers(0, 3, size=(4, steps)).astype("int32")
        if constrained:  # gold tags the scheme allows: decoded ones
            tags = harness.to_numpy(layer(scores, mask=mask)["tags"]).astype("int32")
        cases.append((scores, mask, tags))
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        spec = (tf.TensorSpec([None, None, 3]), tf.TensorSpec([None, None], tf.bool),
                tf.TensorSpec([None, None], tf.int32))
        compiled = [tf.function(both, input_signature=spec), tf.function(both, jit_compile=True)]
    elif harness.BACKEND == "jax":
        import jax

        compiled = [jax.jit(both)]
    else:
        pytest.skip("torch has no compiled call to test here")
    for fn in compiled:
        for scores, mask, tags in cases:
            want = [harness.to_numpy(v) for v in both(scores, mask, tags)]
            got = [harness.to_numpy(v) for v in fn(scores, mask, tags)]
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-6)


def test_no_steps_at_all():
    out = CRF(3)(np.zeros((2, 0, 4), "float32"))
    assert harness.to_numpy(out["tags"]).shape == (2, 0)
    np.testing.assert_array_equal(harness.to_numpy(CRFLoss(reduction=None)(np.zeros((2, 0)), out["potentials"])), 0.0)


def test_errors():
    with pytest.raises(ValueError, match="num_tags=0"):
        CRF(0)
    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 3\)"):
        CRF(3)(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="num_tags=3"):
        CRF(3, use_kernel=False)(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="y_pred.shape"):
        CRFLoss()(np.zeros((2, 3)), np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="y_true.shape"):
        CRFLoss()(np.zeros((2, 3, 1)), np.zeros((2, 3, 4, 3), "float32"))
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 4\)"):
        CRFLoss()(np.zeros((2, 4)), np.zeros((2, 3, 4, 3), "float32"))


@pytest.mark.skipif(harness.BACKEND != "torch", reason="the torch ONNX export; TensorFlow's is in test_deploy")
def test_torch_onnx_export_of_a_fixed_length_tagger(tmp_path):
    import onnxruntime

    keras.utils.set_random_seed(3)
    tokens = keras.Input((8,), dtype="int32")
    x = keras.layers.Embedding(12, 8, mask_zero=True)(tokens)
    model = keras.Model(tokens, CRF(4)(x)["tags"])
    data = {batch: _tagging_data(batch, batch=batch, steps=8)[0] for batch in (3, 5)}
    want = {batch: model.predict(data[batch], verbose=0) for batch in data}
    path = tmp_path / "tagger.onnx"
    model.export(str(path), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in data:  # the batch stays dynamic
        np.testing.assert_array_equal(session.run(None, {name: data[batch]})[0], want[batch])
