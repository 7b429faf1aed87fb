"""QKVAttention as a drop-in for keras.layers.MultiHeadAttention.

Every constructor and call argument MultiHeadAttention has, with its meaning
(checked against MultiHeadAttention itself, same weights); its config, its
sublayers (LoRA, int8), its shape errors, its override point, its argument
order; and this package's guarantees (padding inert, zero context, padded ==
truncated) on the shapes and options MultiHeadAttention adds: rank-4 and
rank-5 inputs with `attention_axes`, `use_gate`, `sliding_window`.
"""

import inspect
import pathlib

import keras
import numpy as np
import pytest

from keras_addons_qa.layers import QKVAttention
from tests import harness

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
MHA_ARGUMENTS = set(inspect.signature(keras.layers.MultiHeadAttention.__init__).parameters)


def _skip_unless_multi_head_attention_has(kwargs):
    """Skips a comparison with MultiHeadAttention that this Keras's
    MultiHeadAttention cannot make (`use_gate` is Keras 3.14's,
    `sliding_window` 3.15's). QKVAttention has both on every Keras: on an
    older one, test_gate_and_window_saved_with_keras_3_15_predict_the_same
    checks them against MultiHeadAttention's results, saved by Keras 3.15."""
    missing = sorted(set(kwargs) - MHA_ARGUMENTS)
    if missing:
        pytest.skip(
            f"MultiHeadAttention in Keras {keras.__version__} has no {missing}"
        )


def _twins(mha_kwargs, query_shape, value_shape, key_shape=None):
    """A built MultiHeadAttention and `QKVAttention.from_config` of its
    config, with the same weights (random biases, so they matter)."""
    _skip_unless_multi_head_attention_has(mha_kwargs)
    mha = keras.layers.MultiHeadAttention(
        **{"bias_initializer": "random_normal", **mha_kwargs}
    )
    mha.build(query_shape, value_shape, key_shape)
    ours = QKVAttention.from_config(mha.get_config())
    ours.build(query_shape, value_shape, key_shape)
    ours.set_weights(mha.get_weights())
    return mha, ours


def _close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(
        harness.to_numpy(actual), harness.to_numpy(expected), rtol=1e-5, atol=atol
    )


# (MultiHeadAttention kwargs, query shape, value shape, step masks and
# causality are comparable with MultiHeadAttention's: single attention axis)
CONFIGS = {
    "default": ({}, (2, 5, 6), (2, 7, 4), True),
    "output_shape_int": ({"output_shape": 7}, (2, 5, 6), (2, 7, 4), True),
    "output_shape_tuple": ({"output_shape": (3, 2)}, (2, 5, 6), (2, 7, 4), True),
    "value_dim_no_bias": ({"value_dim": 3, "use_bias": False}, (2, 5, 6), (2, 7, 4), True),
    "use_gate": ({"use_gate": True}, (2, 5, 6), (2, 7, 4), True),
    "sliding_window": ({"sliding_window": 2}, (2, 6, 6), (2, 6, 4), True),
    "rank4_axis2": ({"attention_axes": 2}, (2, 3, 5, 6), (2, 3, 7, 4), True),
    "rank4_negative_axis_gate": (
        {"attention_axes": -2, "use_gate": True}, (2, 3, 5, 6), (2, 3, 7, 4), True,
    ),
    "rank4_two_axes": ({"attention_axes": (1, 2)}, (2, 3, 4, 6), (2, 2, 5, 4), False),
    "rank5_two_axes": ({"attention_axes": (2, 3)}, (2, 2, 3, 4, 6), (2, 2, 2, 5, 4), False),
    "rank5_default_axes": ({}, (1, 2, 3, 2, 6), (1, 3, 2, 2, 4), False),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_from_config_of_multi_head_attention_computes_the_same(name):
    kwargs, q_shape, v_shape, comparable_masks = CONFIGS[name]
    kwargs = {"num_heads": 2, "key_dim": 3, **kwargs}
    mha, ours = _twins(kwargs, q_shape, v_shape)
    assert [w.path.split("/", 1)[1] for w in ours.weights] == [
        w.path.split("/", 1)[1] for w in mha.weights
    ]
    rng = np.random.default_rng(0)
    q = rng.normal(size=q_shape).astype("float32")
    v = rng.normal(size=v_shape).astype("float32")
    calls = [{}]
    if comparable_masks:
        value_mask = rng.random(v_shape[:-1]) < 0.7
        value_mask[..., 0] = True  # every query sees a key
        calls.append({"value_mask": value_mask})
        if len(q_shape) == 3:  # MultiHeadAttention's causal mask reads axis 1
            calls.append({"value_mask": value_mask, "use_causal_mask": True})
    for call in calls:
        # Scores asked for: MultiHeadAttention's explicit path on every backend.
        expected, expected_scores = mha(q, v, return_attention_scores=True, **call)
        actual, scores = ours(q, v, return_attention_scores=True, **call)
        assert tuple(actual.shape) == tuple(expected.shape)
        _close(actual, expected)
        _close(scores, expected_scores)
        _close(ours(q, v, **call), expected)  # the fused path too


@pytest.mark.parametrize("name", ["use_gate", "rank4_two_axes", "output_shape_tuple"])
def test_from_multi_head_attention_copies_config_and_weights(name):
    kwargs, q_shape, v_shape, _ = CONFIGS[name]
    _skip_unless_multi_head_attention_has(kwargs)
    mha = keras.layers.MultiHeadAttention(2, 3, bias_initializer="random_normal", **kwargs)
    rng = np.random.default_rng(13)
    q = rng.normal(size=q_shape).astype("float32")
    v = rng.normal(size=v_shape).astype("float32")
    expected = mha(q, v, return_attention_scores=True)[0]
    ours = QKVAttention.from_multi_head_attention(mha, name="converted")
    assert ours.name == "converted"
    _close(ours(q, v), expected)


def test_regularizers_and_constraints_reach_every_projection():
    kwargs = dict(
        num_heads=2, key_dim=3, use_gate=True, kernel_regularizer="l2",
        bias_regularizer="l1", activity_regularizer="l2",
        kernel_constraint="non_neg", bias_constraint="non_neg",
    )
    mha, ours = _twins(kwargs, (2, 4, 5), (2, 6, 5))
    x = np.random.default_rng(1).normal(size=(2, 4, 5)).astype("float32")
    v = np.random.default_rng(2).normal(size=(2, 6, 5)).astype("float32")
    _close(ours(x, v), mha(x, v))
    # 5 projections: kernel and bias penalties, and one activity penalty each.
    assert len(ours.losses) == len(mha.losses) == 15
    _close(sorted(float(harness.to_numpy(l)) for l in ours.losses),
           sorted(float(harness.to_numpy(l)) for l in mha.losses))
    for dense in (ours.query_dense, ours.key_dense, ours.value_dense,
                  ours._gate_dense, ours.output_dense):
        assert isinstance(dense.kernel.constraint, keras.constraints.NonNeg)
        assert isinstance(dense.bias.constraint, keras.constraints.NonNeg)


@pytest.mark.parametrize("shape", [(5, 7), (1, 5, 7), (2, 5, 7), (2, 2, 5, 7), (2, 1, 5, 7)])
def test_attention_mask_broadcasts_as_in_multi_head_attention(shape):
    mha, ours = _twins({"num_heads": 2, "key_dim": 3}, (2, 5, 6), (2, 7, 4))
    rng = np.random.default_rng(3)
    q = rng.normal(size=(2, 5, 6)).astype("float32")
    v = rng.normal(size=(2, 7, 4)).astype("float32")
    mask = rng.random(shape) < 0.6
    mask[..., 0, :] = False  # query 0 sees no key: our zero context
    mask[..., 1:, 0] = True  # every other query sees one
    expected, expected_scores = mha(q, v, attention_mask=mask, return_attention_scores=True)
    for scores_asked in (True, False):
        result = ours(q, v, attention_mask=mask, return_attention_scores=scores_asked)
        actual = result[0] if scores_asked else result
        actual = harness.to_numpy(actual)
        _close(actual[:, 1:], harness.to_numpy(expected)[:, 1:])
        bias = harness.to_numpy(ours.output_dense.bias)
        np.testing.assert_array_equal(actual[:, 0], np.broadcast_to(bias, actual[:, 0].shape))
        if scores_asked:
            scores = harness.to_numpy(result[1])
            _close(scores[:, :, 1:], harness.to_numpy(expected_scores)[:, :, 1:])
            assert np.all(scores[:, :, 0] == 0.0)
            expanded = mask
            while expanded.ndim < 4:  # MultiHeadAttention's expansion
                expanded = np.expand_dims(expanded, -3)
            assert np.all(scores[np.broadcast_to(~expanded, scores.shape)] == 0.0)


def test_public_sublayers_are_the_projections():
    layer = QKVAttention(2, 3, use_gate=True)
    layer.build((2, 4, 5), (2, 6, 5))
    assert layer.query_dense is layer._query_dense
    assert layer.key_dense is layer._key_dense
    assert layer.value_dense is layer._value_dense
    assert layer.output_dense is layer._output_dense
    assert [d.name for d in (layer.query_dense, layer.key_dense, layer.value_dense,
                             layer.output_dense)] == ["query", "key", "value", "attention_output"]


def test_lora_on_the_query_projection_trains_only_the_lora_weights():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 5, 6)).astype("float32")
    y = rng.normal(size=(16, 5, 6)).astype("float32")
    inputs = keras.Input((5, 6))
    layer = QKVAttention(2, 3)
    model = keras.Model(inputs, layer(inputs, inputs))
    layer.query_dense.enable_lora(2)
    lora = [layer.query_dense.lora_kernel_a, layer.query_dense.lora_kernel_b]
    assert not layer.query_dense._kernel.trainable
    # Freeze everything else, as LoRA fine-tuning does (KerasHub's
    # `backbone.enable_lora`): only the two factors remain trainable.
    for sub in (layer.key_dense, layer.value_dense, layer.output_dense):
        sub.trainable = False
    layer.query_dense.bias.trainable = False
    assert {id(w) for w in model.trainable_weights} == {id(w) for w in lora}
    before_lora = [harness.to_numpy(w) for w in lora]
    frozen = [harness.to_numpy(w) for w in model.non_trainable_weights]
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    loss_before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert model.evaluate(x, y, verbose=0) < loss_before
    for w, before in zip(model.non_trainable_weights, frozen):
        np.testing.assert_array_equal(harness.to_numpy(w), before)
    for w, before in zip(lora, before_lora):
        assert np.abs(harness.to_numpy(w) - before).max() > 0


def test_int8_quantization_of_a_model_with_gated_rank4_attention():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 5, 8)).astype("float32")
    inputs = keras.Input((3, 5, 8))
    model = keras.Model(
        inputs, QKVAttention(2, 4, attention_axes=2, use_gate=True)(inputs, inputs)
    )
    expected = harness.to_numpy(model(x))
    model.quantize("int8")
    layer = model.layers[-1]
    for dense in (layer.query_dense, layer.key_dense, layer.value_dense,
                  layer._gate_dense, layer.output_dense):
        assert dense.quantization_mode == "int8"
    got = harness.to_numpy(model(x))
    harness.assert_finite(got)
    assert 0 < np.max(np.abs(got - expected)) <= 0.05 * np.max(np.abs(expected))


@pytest.mark.parametrize(
    "query_shape,value_shape,key_shape",
    [((2, 4, 8), (2, 2, 8), (2, 1, 7)), ((2, 4, 8), (2, 2, 7), (2,)),
     ((2, 4, 2, 3, 8), (2, 1, 1, 5, 8), (2, 1, 15, 5, 2))],
)
def test_key_and_value_shape_mismatch_raises(query_shape, value_shape, key_shape):
    layer = QKVAttention(4, 2)
    with pytest.raises(ValueError, match="must be equal"):
        layer.compute_output_shape(query_shape, value_shape, key_shape)
    with pytest.raises(ValueError, match="must be equal"):
        layer(np.ones(query_shape), np.ones(value_shape), np.ones(key_shape))


def test_compute_output_spec_gives_the_scores_shape():
    ours = QKVAttention(2, 3, output_shape=(4, 2), attention_axes=2)
    query = keras.Input(batch_shape=(2, 3, 5, 6))
    value = keras.Input(batch_shape=(2, 3, 7, 6))
    out, scores = ours(query, value, return_attention_scores=True)
    assert tuple(out.shape) == (2, 3, 5, 4, 2)
    assert tuple(scores.shape) == (2, 3, 2, 5, 7)
    q = np.zeros((2, 3, 5, 6), "float32")
    v = np.zeros((2, 3, 7, 6), "float32")
    eager_out, eager_scores = ours(q, v, return_attention_scores=True)
    assert tuple(eager_out.shape) == tuple(out.shape)
    assert tuple(eager_scores.shape) == tuple(scores.shape)


def test_a_subclass_overriding_compute_attention_is_called():
    seen = []

    class Halved(QKVAttention):
        def _compute_attention(self, query, key, value, attention_mask=None,
                               training=None, return_attention_scores=False):
            seen.append(attention_mask)
            context, scores = super()._compute_attention(
                query, key, value, attention_mask, training, return_attention_scores
            )
            return context * 0.5, scores

    x = np.random.default_rng(6).normal(size=(2, 4, 6)).astype("float32")
    query_mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    base = QKVAttention(2, 3, use_bias=False)
    base.build(x.shape, x.shape)
    halved = Halved(2, 3, use_bias=False)
    halved.build(x.shape, x.shape)
    halved.set_weights(base.get_weights())
    _close(halved(x, x, use_causal_mask=True, query_mask=query_mask),
           base(x, x, use_causal_mask=True, query_mask=query_mask) * 0.5, atol=1e-6)
    # The mask a subclass sees is MultiHeadAttention's: causality and the
    # query padding included.
    mask = np.broadcast_to(harness.to_numpy(seen[-1]), (2, 1, 4, 4))
    expected = np.tril(np.ones((4, 4), bool))[None, None] & query_mask[:, None, :, None]
    np.testing.assert_array_equal(mask, expected)


def test_call_arguments_in_multi_head_attention_order():
    import inspect

    ours = list(inspect.signature(QKVAttention.call).parameters)
    theirs = list(inspect.signature(keras.layers.MultiHeadAttention.call).parameters)
    # MultiHeadAttention's, in its order, then KerasHub's cache arguments.
    assert ours == theirs + ["cache", "cache_update_index"]
    x = np.random.default_rng(7).normal(size=(2, 4, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    layer = QKVAttention(2, 3, dropout=0.5)
    # Keras takes only tensors positionally in `__call__`: the masks.
    _close(layer(x, x, None, mask, mask), layer(x, x, query_mask=mask, value_mask=mask))
    # `call` itself (as a subclass's `super().call(...)` does): query, value,
    # key, query_mask, value_mask, key_mask, attention_mask,
    # return_attention_scores, training, use_causal_mask.
    out, scores = layer.call(x, x, None, None, None, None, None, True, False, True)
    assert tuple(scores.shape) == (2, 2, 4, 4)
    assert np.all(np.triu(harness.to_numpy(scores)[0, 0], k=1) == 0.0)  # causal
    _close(out, layer(x, x, use_causal_mask=True, training=False))  # no dropout


@pytest.mark.parametrize("name", ["num_heads", "key_dim", "value_dim"])
@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_bad_sizes_are_refused_in_multi_head_attention_words(name, bad):
    kwargs = {"num_heads": 4, "key_dim": 4, name: bad}
    with pytest.raises(ValueError, match=f"argument `{name}`.*Received: {name}={bad}"):
        QKVAttention(**kwargs)


def test_numpy_integer_sizes_are_accepted():
    layer = QKVAttention(np.int64(2), np.int32(3), value_dim=np.int64(4))
    assert (layer.num_heads, layer.key_dim, layer.value_dim) == (2, 3, 4)
    assert isinstance(layer.num_heads, int)


def test_seed_makes_dropout_reproducible():
    x = np.random.default_rng(8).normal(size=(2, 6, 4)).astype("float32")

    def run(seed):
        layer = QKVAttention(2, 3, dropout=0.5, seed=seed, kernel_initializer="ones")
        return harness.to_numpy(layer(x, x, training=True))

    np.testing.assert_array_equal(run(3), run(3))
    assert np.abs(run(3) - run(4)).max() > 1e-4


def test_flash_attention_refuses_scores_and_dropout():
    with pytest.raises(ValueError, match="Dropout is not supported"):
        QKVAttention(2, 2, flash_attention=True, dropout=0.1)
    layer = QKVAttention(2, 2, flash_attention=True)
    x = np.zeros((2, 4, 8), "float32")
    with pytest.raises(ValueError, match="Returning attention scores is not supported"):
        layer(x, x, return_attention_scores=True)


def test_output_dim_is_an_alias_of_output_shape():
    layer = QKVAttention(2, 3, output_dim=5)
    assert layer.get_config()["output_shape"] == (5,)
    x = np.zeros((2, 4, 6), "float32")
    assert tuple(layer(x, x).shape) == (2, 4, 5)
    assert QKVAttention(2, 3, output_dim=5, output_shape=5).get_config()["output_shape"] == (5,)


def test_model_saved_by_0_1_0_loads_and_predicts_the_same():
    from tests.fixtures.make_qkv_0_1_0 import inputs

    harness.skip_unless_keras_reads(FIXTURES / "qkv_attention_0_1_0.keras")
    model = keras.saving.load_model(FIXTURES / "qkv_attention_0_1_0.keras", safe_mode=True)
    expected = np.load(FIXTURES / "qkv_attention_0_1_0_expected.npy")
    np.testing.assert_allclose(model.predict(inputs(), verbose=0), expected, rtol=1e-5, atol=1e-6)
    qkv = model.get_layer("qkv")
    assert qkv.get_config()["output_shape"] == (6,) and qkv.value_dim == 5
    assert model.get_layer("qkv_penalty").distance_penalty == 0.5


def test_gate_and_window_saved_with_keras_3_15_predict_the_same():
    """QKVAttention's `use_gate` and `sliding_window` are MultiHeadAttention's
    on every supported Keras: a model saved with Keras 3.15 (whose
    MultiHeadAttention computed the expected outputs) loads and predicts
    the same, also on a Keras whose MultiHeadAttention has neither."""
    from tests.fixtures.make_qkv_gate_window import SETTINGS, inputs

    path = FIXTURES / "qkv_gate_window_keras_3_15.keras"
    model = keras.saving.load_model(path, safe_mode=True)
    expected = np.load(FIXTURES / "qkv_gate_window_keras_3_15_expected.npy")
    np.testing.assert_allclose(model.predict(inputs(), verbose=0), expected, rtol=1e-5, atol=1e-6)
    for name, kwargs in SETTINGS:
        config = model.get_layer(name).get_config()
        assert config["use_gate"] == kwargs.get("use_gate", False)
        assert config["sliding_window"] == kwargs.get("sliding_window")


def test_the_gate_gets_the_projections_regularizers_and_constraints():
    layer = QKVAttention(
        num_heads=2, key_dim=3, use_gate=True, kernel_regularizer="l2",
        bias_regularizer="l1", kernel_constraint="non_neg",
    )
    layer(np.ones((2, 4, 5), "float32"), np.ones((2, 6, 5), "float32"))
    names = [
        dense.name for dense in layer._layers
        if isinstance(dense, keras.layers.EinsumDense)
    ]
    assert names == ["query", "key", "gate", "value", "attention_output"]
    assert len(layer.losses) == 10  # a kernel and a bias penalty each
    assert isinstance(layer._gate_dense.kernel.constraint, keras.constraints.NonNeg)
    assert layer._gate_dense.activation is keras.activations.sigmoid


# -- the package's guarantees on MultiHeadAttention's newer shapes ----------

GUARANTEE_CASES = {
    "rank3_gate_window_causal": (dict(use_gate=True, sliding_window=3), (2, 7, 4), True),
    "rank3_window": (dict(sliding_window=2), (2, 7, 4), False),
    "rank4_axis2_gate_causal": (dict(attention_axes=2, use_gate=True), (2, 3, 7, 4), True),
    "rank4_axis2_window": (dict(attention_axes=2, sliding_window=2), (2, 3, 7, 4), False),
    "rank4_two_axes": (dict(attention_axes=(1, 2)), (2, 3, 7, 4), False),
    "rank5_two_axes_gate": (dict(attention_axes=(2, 3), use_gate=True), (2, 2, 3, 7, 4), False),
}


def _step_mask(shape):
    """Right-padded steps along axis -1 of the step shape; one example's
    steps all padding."""
    lengths = np.random.default_rng(9).integers(1, shape[-1] + 1, size=shape[:-1])
    mask = np.arange(shape[-1]) < lengths[..., None]
    mask[0] = False  # a fully padded example: every query sees no key
    return mask


@pytest.mark.parametrize("pad", [np.nan, np.inf])
@pytest.mark.parametrize("name", sorted(GUARANTEE_CASES))
def test_padding_reaches_no_output_and_no_gradient(name, pad):
    kwargs, shape, causal = GUARANTEE_CASES[name]
    rng = np.random.default_rng(10)
    x = rng.normal(size=shape).astype("float32")
    mask = _step_mask(shape[:-1])
    layer = QKVAttention(2, 3, bias_initializer="random_normal", **kwargs)
    layer.build(shape, shape)

    def run(data):
        tensor = keras.Variable(data)
        value, grads = harness.gradients(
            lambda: keras.ops.sum(keras.ops.square(layer(
                tensor, tensor, query_mask=mask, value_mask=mask, use_causal_mask=causal
            ))),
            [tensor] + layer.trainable_weights,
        )
        out = layer(keras.ops.convert_to_tensor(data), keras.ops.convert_to_tensor(data),
                    query_mask=mask, value_mask=mask, use_causal_mask=causal)
        return harness.to_numpy(out), [harness.to_numpy(g) for g in grads]

    clean_out, clean_grads = run(x)
    padded = x.copy()
    padded[~mask] = pad
    out, grads = run(padded)
    harness.assert_finite(out, *grads)
    np.testing.assert_array_equal(out, clean_out)
    for g, c in zip(grads, clean_grads):
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)
    assert np.all(grads[0][~mask] == 0.0)
    # Padded queries and the fully padded example: the output bias exactly.
    bias = harness.to_numpy(layer.output_dense.bias)
    np.testing.assert_array_equal(out[~mask], np.broadcast_to(bias, out[~mask].shape))


@pytest.mark.parametrize(
    "name", [n for n in sorted(GUARANTEE_CASES) if "two_axes" not in n]
)
def test_padded_equals_truncated(name):
    kwargs, shape, causal = GUARANTEE_CASES[name]
    rng = np.random.default_rng(11)
    x = rng.normal(size=shape).astype("float32")
    layer = QKVAttention(2, 3, bias_initializer="random_normal", **kwargs)
    keep = 4  # steps kept along the (last) attention axis
    mask = np.broadcast_to(np.arange(shape[-2]) < keep, shape[:-1])
    full = harness.to_numpy(layer(x, x, query_mask=mask, value_mask=mask, use_causal_mask=causal))
    short = x[..., :keep, :]
    truncated = harness.to_numpy(layer(short, short, use_causal_mask=causal))
    np.testing.assert_allclose(full[..., :keep, :], truncated, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(GUARANTEE_CASES))
def test_mixed_precision_agrees_with_float32(name, policy):
    kwargs, shape, causal = GUARANTEE_CASES[name]
    x = np.random.default_rng(12).normal(size=shape).astype("float32")
    mask = _step_mask(shape[:-1])
    reference = QKVAttention(2, 3, **kwargs)
    expected = harness.to_numpy(
        reference(x, x, query_mask=mask, value_mask=mask, use_causal_mask=causal)
    )
    with harness.dtype_policy(policy):
        layer = QKVAttention(2, 3, **kwargs)
        layer.build(shape, shape)
    layer.set_weights(reference.get_weights())
    out, scores = layer(x, x, query_mask=mask, value_mask=mask, use_causal_mask=causal,
                        return_attention_scores=True)
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    out = harness.to_numpy(keras.ops.cast(out, "float32"))
    harness.assert_finite(out)
    tolerance = 8 * (2.0**-8 if policy == "mixed_bfloat16" else 2.0**-11)
    np.testing.assert_allclose(out, expected, atol=tolerance * np.abs(expected).max() * 4)
    # Each visible query's weights sum to 1 (the softmax ran in float32).
    scores = harness.to_numpy(keras.ops.cast(scores, "float32"))
    n = len(kwargs.get("attention_axes", (1,))) if isinstance(
        kwargs.get("attention_axes"), tuple) else 1
    sums = scores.sum(axis=tuple(range(-n, 0)))
    assert np.all((np.abs(sums - 1) < 1e-2) | (sums == 0))


@pytest.mark.parametrize("key_is_value", [True, False])
def test_a_key_step_masked_by_key_mask_alone_is_inert_in_the_value_too(key_is_value):
    # A step the key mask hides gets no weight, so the value there (NaN
    # here, with no value mask saying so) reaches nothing either.
    rng = np.random.default_rng(14)
    q = rng.normal(size=(2, 3, 4)).astype("float32")
    v = rng.normal(size=(2, 5, 4)).astype("float32")
    k = v.copy() if key_is_value else rng.normal(size=(2, 5, 4)).astype("float32")
    key_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    layer = QKVAttention(2, 3)
    clean = harness.to_numpy(layer(q, v, key=k, key_mask=key_mask))
    v_bad, k_bad = v.copy(), k.copy()
    v_bad[~key_mask] = np.nan
    k_bad[~key_mask] = np.nan
    key = v_bad if key_is_value else k_bad
    out = harness.to_numpy(layer(q, v_bad, key=key, key_mask=key_mask))
    harness.assert_finite(out)
    np.testing.assert_array_equal(out, clean)
