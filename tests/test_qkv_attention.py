import keras
import numpy as np
import pytest
from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_addons_qa.layers import QKVAttention
from tests import harness


class QKVAttentionHarnessTest(harness.TestCase):
    def test_layer_harness(self):
        # As Keras's own MultiHeadAttention test: no training check here
        # (test_models.py trains it in a model).
        self.run_layer_test(
            QKVAttention,
            init_kwargs={"num_heads": 2, "key_dim": 3},
            input_shape={"query_shape": (2, 4, 8), "value_shape": (2, 6, 5)},
            expected_output_shape=(2, 4, 8),
            expected_num_trainable_weights=8,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=0,  # no dropout, no seed
            expected_num_losses=0,
            supports_masking=True,
            run_training_check=False,
        )

    def test_layer_harness_no_bias_custom_dims(self):
        self.run_layer_test(
            QKVAttention,
            init_kwargs={
                "num_heads": 3,
                "key_dim": 2,
                "value_dim": 5,
                "output_shape": 7,
                "use_bias": False,
                "dropout": 0.1,
            },
            input_shape={"query_shape": (2, 4, 8), "value_shape": (2, 6, 5)},
            expected_output_shape=(2, 4, 7),
            expected_num_trainable_weights=4,
            expected_num_seed_generators=1,
            run_training_check=False,
        )


def _pair(num_heads=2, key_dim=3, value_dim=None, output_dim=None, shapes=None):
    """A built MultiHeadAttention and a QKVAttention with its weights."""
    q_shape, v_shape, k_shape = shapes
    mha = keras.layers.MultiHeadAttention(
        num_heads, key_dim, value_dim=value_dim, output_shape=output_dim,
        bias_initializer="random_normal",
    )
    mha.build(q_shape, v_shape, k_shape)
    ours = QKVAttention(num_heads, key_dim, value_dim=value_dim, output_dim=output_dim)
    ours.build(q_shape, v_shape, k_shape)
    ours.set_weights(mha.get_weights())
    return mha, ours


def _keras_tf_misplaces_bias(num_heads, head_dim, lengths):
    """Keras 3.15's TensorFlow `ops.add(x, bias)` squeezes a `(heads, 1)`
    bias to `(heads,)` and, when `x.shape[1]` (the sequence length) equals
    `heads`, adds it along that axis (`tf.nn.bias_add`, channels first)
    instead of broadcasting like NumPy. `EinsumDense`, so MultiHeadAttention,
    then adds the wrong bias entries."""
    return (
        keras.backend.backend() == "tensorflow"
        and head_dim == 1
        and num_heads > 1
        and num_heads in lengths
    )


def test_same_variables_in_the_same_order_as_multi_head_attention():
    mha, ours = _pair(2, 3, 4, 5, shapes=((None, 4, 6), (None, 7, 8), (None, 7, 9)))
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in mha.weights]
    assert [tuple(w.shape) for w in ours.weights] == [
        (6, 2, 3), (2, 3), (9, 2, 3), (2, 3), (8, 2, 4), (2, 4), (2, 4, 5), (5,)
    ]
    names = [w.path.split("/", 1)[1] for w in ours.weights]
    assert names == [w.path.split("/", 1)[1] for w in mha.weights]


def test_from_multi_head_attention():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 3, 6)).astype("float32")
    v = rng.normal(size=(2, 5, 4)).astype("float32")
    mha = keras.layers.MultiHeadAttention(3, 2, value_dim=4, bias_initializer="ones")
    # MultiHeadAttention's own fused path crashes on JAX when value_dim !=
    # key_dim; asking it for scores takes its explicit path on every backend.
    expected = harness.to_numpy(mha(q, v, return_attention_scores=True)[0])
    ours = QKVAttention.from_multi_head_attention(mha, name="converted")
    np.testing.assert_allclose(harness.to_numpy(ours(q, v)), expected, atol=1e-5)
    assert ours.name == "converted" and ours.value_dim == 4
    with pytest.raises(ValueError, match="must be built"):
        QKVAttention.from_multi_head_attention(keras.layers.MultiHeadAttention(2, 2))


class _Block(keras.layers.Layer):
    """A transformer block's shape: attention built inside the block."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(2, 4, name="self_attention")

    def build(self, shape):
        self.attention.build(shape, shape)

    def call(self, x):
        return self.attention(x, x)


def test_a_converted_layer_keeps_its_weight_paths():
    """Built in the original's scope: `block/self_attention/query/kernel`,
    not `self_attention/query/kernel`, so LayoutMap patterns and
    checkpoints that name the weights keep matching them."""
    inputs = keras.Input((5, 8))
    block = _Block(name="transformer_layer_0")
    keras.Model(inputs, block(inputs))
    converted = QKVAttention.from_multi_head_attention(block.attention)
    assert [w.path for w in converted.weights] == [w.path for w in block.attention.weights]
    assert converted.weights[0].path == "transformer_layer_0/self_attention/query/kernel"
    mesh = keras.distribution.DeviceMesh((1,), ["model"], devices=["cpu:0"])
    layout = keras.distribution.LayoutMap(mesh)
    layout["transformer_layer.*self_attention.*(query|key|value).kernel"] = (None, "model")
    matched = [w.path for w in converted.weights if layout[w.path] is not None]
    assert len(matched) == 3


@settings(max_examples=harness.examples(30), deadline=None)
@given(
    batch=st.integers(1, 3),
    q_len=st.integers(1, 6),
    v_len=st.integers(1, 6),
    features=st.integers(1, 6),
    num_heads=st.integers(1, 3),
    key_dim=st.integers(1, 4),
    separate_key=st.booleans(),
    use_value_mask=st.booleans(),
    use_query_mask=st.booleans(),
    use_attention_mask=st.booleans(),
    causal=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_equals_multi_head_attention(
    batch, q_len, v_len, features, num_heads, key_dim, separate_key,
    use_value_mask, use_query_mask, use_attention_mask, causal, seed,
):
    # Where Keras's TensorFlow `ops.add` mistakes the projection bias for a
    # channels-first bias, MultiHeadAttention itself is wrong: no reference.
    # (`test_projection_bias_where_keras_tensorflow_add_misplaces_it`.)
    assume(not _keras_tf_misplaces_bias(num_heads, key_dim, (q_len, v_len)))
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, q_len, features)).astype("float32")
    v = rng.normal(size=(batch, v_len, features + 1)).astype("float32")
    k = rng.normal(size=(batch, v_len, features + 2)).astype("float32") if separate_key else None
    shapes = (q.shape, v.shape, None if k is None else k.shape)
    mha, ours = _pair(num_heads, key_dim, shapes=shapes)

    value_mask = rng.random((batch, v_len)) < 0.7 if use_value_mask else None
    query_mask = rng.random((batch, q_len)) < 0.7 if use_query_mask else None
    attention_mask = rng.random((batch, q_len, v_len)) < 0.8 if use_attention_mask else None
    # MultiHeadAttention reads the query mask only from the query's Keras
    # mask; handing it over as part of the attention mask is the same thing.
    mha_attention_mask = attention_mask
    if query_mask is not None:
        full = np.ones((batch, q_len, v_len), bool) if attention_mask is None else attention_mask
        mha_attention_mask = full & query_mask[:, :, None]

    visible = np.ones((batch, q_len, v_len), bool)
    for part in (
        None if value_mask is None else value_mask[:, None, :],
        None if query_mask is None else query_mask[:, :, None],
        attention_mask,
        np.tril(np.ones((q_len, v_len), bool))[None] if causal else None,
    ):
        if part is not None:
            visible = visible & part
    sees_a_key = visible.any(-1)  # (batch, q_len)

    for return_scores in (False, True):
        kwargs = dict(
            key=k, value_mask=value_mask, use_causal_mask=causal,
            return_attention_scores=return_scores,
        )
        expected = mha(q, v, attention_mask=mha_attention_mask, **kwargs)
        actual = ours(q, v, query_mask=query_mask, attention_mask=attention_mask, **kwargs)
        if return_scores:
            (expected, expected_scores), (actual, actual_scores) = expected, actual
            expected_scores = harness.to_numpy(expected_scores)
            actual_scores = harness.to_numpy(actual_scores)
            np.testing.assert_allclose(
                actual_scores.transpose(0, 2, 1, 3)[sees_a_key],
                expected_scores.transpose(0, 2, 1, 3)[sees_a_key],
                atol=1e-5,
            )
            assert np.all(actual_scores.transpose(0, 2, 1, 3)[~sees_a_key] == 0.0)
            assert np.all(actual_scores[np.broadcast_to(~visible[:, None], actual_scores.shape)] == 0.0)
        expected, actual = harness.to_numpy(expected), harness.to_numpy(actual)
        np.testing.assert_allclose(actual[sees_a_key], expected[sees_a_key], atol=1e-5)
        # A query that sees no key: a zero context, so exactly the output bias.
        bias = harness.to_numpy(ours.weights[-1])
        np.testing.assert_array_equal(actual[~sees_a_key], np.broadcast_to(bias, actual[~sees_a_key].shape))


def test_fully_padded_value_gives_the_output_bias_with_finite_gradients():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 3, 4)).astype("float32")
    v = rng.normal(size=(2, 5, 4)).astype("float32")
    v[0] = np.nan  # fully padded sequence, holding garbage
    value_mask = np.array([[0] * 5, [1, 1, 0, 0, 0]], bool)
    layer = QKVAttention(2, 3, bias_initializer="random_normal")
    for return_scores in (False, True):
        result = layer(q, v, value_mask=value_mask, return_attention_scores=return_scores)
        out = harness.to_numpy(result[0] if return_scores else result)
        bias = harness.to_numpy(layer.weights[-1])
        np.testing.assert_array_equal(out[0], np.broadcast_to(bias, out[0].shape))
        harness.assert_finite(out)
    value = keras.Variable(v)
    _, grads = harness.gradients(
        lambda: keras.ops.sum(layer(q, value, value_mask=value_mask)),
        [value] + layer.trainable_weights,
    )
    harness.assert_finite(*grads)
    assert np.all(harness.to_numpy(grads[0])[0] == 0.0)


@pytest.mark.parametrize("distance_penalty", [0.0, 0.5])
@pytest.mark.parametrize("pad", [1e30, np.inf, np.nan])
def test_padding_changes_neither_outputs_nor_gradients(pad, distance_penalty):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 4)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
    layer = QKVAttention(2, 3, distance_penalty=distance_penalty)
    layer.build(x.shape, x.shape)

    def run(data):
        tensor = keras.Variable(data)
        value, grads = harness.gradients(
            lambda: keras.ops.sum(
                keras.ops.square(layer(tensor, tensor, query_mask=mask, value_mask=mask))
                * keras.ops.convert_to_tensor(mask[..., None], "float32")
            ),
            [tensor] + layer.trainable_weights,
        )
        return harness.to_numpy(value), [harness.to_numpy(g) for g in grads]

    clean_value, clean = run(x)
    padded_x = x.copy()
    padded_x[0, 4:] = pad
    value, padded = run(padded_x)
    np.testing.assert_allclose(value, clean_value, rtol=1e-6)
    for a, b in zip(padded, clean):
        harness.assert_finite(a)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_and_explicit_paths_agree():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(3, 5, 6)).astype("float32")
    v = rng.normal(size=(3, 7, 6)).astype("float32")
    value_mask = np.arange(7)[None] < np.array([[7], [3], [0]])
    layer = QKVAttention(2, 4, dropout=0.3, bias_initializer="random_normal")
    fused = layer(q, v, value_mask=value_mask, use_causal_mask=True, training=False)
    explicit, _ = layer(
        q, v, value_mask=value_mask, use_causal_mask=True, training=False,
        return_attention_scores=True,
    )
    np.testing.assert_allclose(harness.to_numpy(fused), harness.to_numpy(explicit), atol=1e-6)


_STEP_MASKS = {
    # Right-padded rows (one empty): the JAX backend sends these to the
    # length-based kernel (cuDNN on a GPU, XLA elsewhere).
    "right_padded": np.arange(9)[None] < np.array([[9], [4], [1], [0]]),
    # Not right-padded: the same layer must take the boolean-mask branch.
    "left_padded": np.arange(9)[None] >= np.array([[0], [5], [8], [9]]),
    "holes": np.array([[1, 0, 1, 1, 0, 1, 1, 1, 0]] * 2 + [[0] * 8 + [1]] + [[0] * 9], bool),
}


@pytest.mark.parametrize("gpu_path", [False, True], ids=["generic", "gpu_path"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", sorted(_STEP_MASKS))
def test_fused_path_keeps_mask_semantics(kind, causal, gpu_path, monkeypatch):
    """The fused path equals the explicit softmax; empty rows give zeros.

    `gpu_path` runs, on this CPU, the layer's JAX-on-GPU path (the length-
    based `_jax_attention.padded_attention`, with XLA's kernel standing in
    for cuDNN's): any mask without causality, right-padded or not, and both
    branches of the causal `lax.cond`.
    """
    if gpu_path:
        if harness.BACKEND != "jax":
            pytest.skip("the length-based path exists only on JAX")
        from keras_addons_qa import _jax_attention

        monkeypatch.setattr(_jax_attention, "on_gpu", lambda: True)
    rng = np.random.default_rng(5)
    value_mask = _STEP_MASKS[kind]
    query_mask = np.roll(value_mask, 1, axis=0)
    x = rng.normal(size=(4, 9, 8)).astype("float32")
    layer = QKVAttention(2, 4, bias_initializer="random_normal")
    kwargs = dict(query_mask=query_mask, value_mask=value_mask, use_causal_mask=causal)
    fused = harness.to_numpy(layer(x, x, **kwargs))
    explicit, _ = layer(x, x, return_attention_scores=True, **kwargs)
    np.testing.assert_allclose(fused, harness.to_numpy(explicit), atol=2e-6)
    harness.assert_finite(fused)


@pytest.mark.skipif(
    harness.BACKEND != "jax", reason="the length-based path exists only on JAX"
)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", sorted(_STEP_MASKS))
def test_jax_length_path_matches_a_boolean_mask(kind, causal):
    """`padded_attention` (run on CPU here: XLA's length-based kernel) equals
    attention with the boolean mask, in values and in gradients.

    Without causality any mask becomes lengths by moving valid keys first;
    with causality a `lax.cond` picks lengths or the boolean mask.
    """
    import jax
    import jax.numpy as jnp

    from keras_addons_qa import _jax_attention

    rng = np.random.default_rng(6)
    key_valid = jnp.asarray(_STEP_MASKS[kind])
    q, k, v = (jnp.asarray(rng.normal(size=(4, 9, 2, 4)), "float32") for _ in range(3))
    seen = np.asarray(_STEP_MASKS[kind])
    if causal:
        seen = np.cumsum(seen, axis=1) > 0  # query i sees a key j <= i
    else:
        seen = np.broadcast_to(seen.any(1, keepdims=True), seen.shape)

    def ours(q, k, v):
        return _jax_attention.padded_attention(q, k, v, key_valid, 0.5, causal)

    def reference(q, k, v):
        return jax.nn.dot_product_attention(
            q, k, v, mask=key_valid[:, None, None, :], scale=0.5, is_causal=causal
        )

    out = np.asarray(ours(q, k, v))
    assert np.all(np.isfinite(out))  # empty rows too: finite, zeroed by the caller
    np.testing.assert_allclose(out[seen], np.asarray(reference(q, k, v))[seen], atol=1e-6)

    # Gradients of a loss over the rows that see a key (the others are
    # zeroed by the layer), through the hand-off's layout changes.
    weights = jnp.asarray(rng.normal(size=out.shape), "float32") * seen[:, :, None, None]
    grads = jax.grad(lambda *a: jnp.sum(ours(*a) * weights), argnums=(0, 1, 2))(q, k, v)
    expected = jax.grad(
        lambda *a: jnp.sum(reference(*a) * weights), argnums=(0, 1, 2)
    )(q, k, v)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-5)

    text = jax.jit(ours).lower(q, k, v).as_text()
    assert ("cond" in text or "case" in text) == causal


def test_dropout_only_in_training():
    x = np.random.default_rng(4).normal(size=(2, 8, 4)).astype("float32")
    layer = QKVAttention(2, 4, dropout=0.5)
    inference = harness.to_numpy(layer(x, x, training=False))
    np.testing.assert_array_equal(inference, harness.to_numpy(layer(x, x)))
    trained = harness.to_numpy(layer(x, x, training=True))
    harness.assert_finite(trained)
    assert np.abs(trained - inference).max() > 1e-3


def test_output_carries_the_query_mask_and_masks_arrive_implicitly():
    tokens = np.array([[5, 6, 7, 0], [1, 0, 0, 0]])
    inputs = keras.Input((4,), dtype="int32")
    embedding = keras.layers.Embedding(10, 8, mask_zero=True)
    attention = QKVAttention(2, 4)
    embedded = embedding(inputs)
    attended = attention(embedded, embedded)
    model = keras.Model(inputs, attended)
    implicit = harness.to_numpy(model(tokens))
    vectors = embedding(tokens)
    mask = tokens > 0
    explicit = attention(vectors, vectors, query_mask=mask, value_mask=mask)
    np.testing.assert_allclose(implicit, harness.to_numpy(explicit), atol=1e-6)
    out_mask = getattr(explicit, "_keras_mask", None)
    if out_mask is not None:  # attribute-based on TF and torch
        np.testing.assert_array_equal(harness.to_numpy(out_mask), mask)
    # Downstream layers see it: averaging over real steps only.
    pooled = keras.layers.GlobalAveragePooling1D()(attended)
    pooled_model = keras.Model(inputs, pooled)
    expected = np.stack([implicit[0, :3].mean(0), implicit[1, :1].mean(0)])
    np.testing.assert_allclose(harness.to_numpy(pooled_model(tokens)), expected, atol=1e-5)


def test_bad_arguments_and_inputs():
    for kwargs, message in (
        ({"num_heads": 0, "key_dim": 2}, "num_heads=0"),
        ({"num_heads": 2.0, "key_dim": 2}, "num_heads=2.0"),
        ({"num_heads": 2, "key_dim": -1}, "key_dim=-1"),
        ({"num_heads": 2, "key_dim": 2, "dropout": 1.0}, "dropout=1.0"),
        ({"num_heads": 2, "key_dim": 2, "dropout": -0.1}, "dropout=-0.1"),
        ({"num_heads": 2, "key_dim": 2, "value_dim": 0}, "value_dim=0"),
        ({"num_heads": 2, "key_dim": 2, "output_dim": 0}, "output_dim=0"),
        ({"num_heads": 2, "key_dim": 2, "output_shape": 0}, "output_shape=0"),
        ({"num_heads": 2, "key_dim": 2, "output_shape": (4, -1)}, r"output_shape=\(4, -1\)"),
        ({"num_heads": 2, "key_dim": 2, "output_dim": 3, "output_shape": 4}, "output_dim=3"),
        ({"num_heads": True, "key_dim": 2}, "argument `num_heads`"),
    ):
        with pytest.raises(ValueError, match=message):
            QKVAttention(**kwargs)
    q = np.zeros((2, 3, 4), "float32")
    v = np.zeros((2, 5, 4), "float32")
    layer = QKVAttention(2, 2)
    with pytest.raises(ValueError, match=r"value_mask.shape=\(2, 3\)"):
        layer(q, v, value_mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"query_mask.shape=\(2, 5\)"):
        layer(q, v, query_mask=np.ones((2, 5), bool))
    with pytest.raises(ValueError, match=r"attention_mask.shape=\(2, 5, 3\)"):
        layer(q, v, attention_mask=np.ones((2, 5, 3), bool))
    with pytest.raises(ValueError, match=r"attention_mask.shape=\(2, 3\)"):
        layer(q, v, attention_mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"attention_mask.shape=\(2, 3, 3, 5\)"):
        layer(q, v, attention_mask=np.ones((2, 3, 3, 5), bool))  # 3 heads, not 2
    with pytest.raises(ValueError, match=r"query.shape=\(2, 3\)"):
        QKVAttention(2, 2)(np.zeros((2, 3), "float32"), v)


def test_config_round_trip():
    layer = QKVAttention(
        3, 4, value_dim=5, output_shape=6, dropout=0.2, use_bias=False,
        kernel_regularizer="l2", kernel_constraint="non_neg",
        distance_penalty=0.25,
    )
    config = layer.get_config()
    # MultiHeadAttention's keys, and this layer's own. Keras 3.15's has
    # `use_gate` and `sliding_window`; this layer writes them on every Keras.
    mha_keys = set(keras.layers.MultiHeadAttention(3, 4).get_config())
    mha_keys |= {"use_gate", "sliding_window"}
    assert set(config) == mha_keys | {
        "distance_penalty", "num_key_value_heads", "scores_budget_mb"
    }
    assert config["output_shape"] == (6,) and config["distance_penalty"] == 0.25
    assert QKVAttention.from_config(config).get_config() == config


def test_value_dim_different_from_key_dim_matches_multi_head_attention():
    # The fused op of the JAX backend requires value_dim == key_dim; the
    # layer must take the explicit path otherwise, on every backend.
    rng = np.random.default_rng(5)
    q = rng.normal(size=(2, 4, 6)).astype("float32")
    v = rng.normal(size=(2, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1] * 5], bool)
    mha, ours = _pair(2, 3, value_dim=5, shapes=(q.shape, v.shape, None))
    np.testing.assert_allclose(
        harness.to_numpy(ours(q, v, value_mask=mask)),
        harness.to_numpy(mha(q, v, value_mask=mask, return_attention_scores=True)[0]),
        atol=1e-5,
    )


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_flattened_projections_equal_the_einsum_dense_sublayers(policy):
    from keras_addons_qa.layers import qkv_attention

    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 7, 6)).astype("float32")
    with harness.dtype_policy(policy):
        layer = QKVAttention(2, 4, bias_initializer="random_normal")
        layer(x, x)
    context = rng.normal(size=(3, 7, 2, 4)).astype("float32")
    pairs = [(layer.query_dense, x, 1), (layer.value_dense, x, 1),
             (layer.output_dense, context, 2)]
    for dense, inputs, contracted in pairs:
        expected = dense(inputs)
        # Called bare, outside any autocast scope (as under `stateless_call`).
        got = qkv_attention._project(dense, inputs, contracted)
        assert keras.backend.standardize_dtype(got.dtype) == dense.compute_dtype
        tol = 1e-6 if policy == "float32" else 2e-2
        np.testing.assert_allclose(
            harness.to_numpy(keras.ops.cast(got, "float32")),
            harness.to_numpy(keras.ops.cast(expected, "float32")),
            rtol=tol, atol=tol,
        )


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="an unknown batch size exists only in TensorFlow graphs",
)
def test_unknown_batch_size_in_a_graph():
    import tensorflow as tf

    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer = QKVAttention(2, 3)
    eager = harness.to_numpy(layer(x, x, query_mask=mask, value_mask=mask))
    graph = tf.function(
        lambda x, m: layer(x, x, query_mask=m, value_mask=m),
        input_signature=[tf.TensorSpec((None, None, 6)), tf.TensorSpec((None, None), tf.bool)],
    )
    np.testing.assert_allclose(graph(x, mask).numpy(), eager, rtol=1e-5, atol=1e-6)


def test_quantized_projections_take_the_sublayers_own_call():
    # `Model.quantize` quantizes the EinsumDense sublayers; their quantized
    # kernels have their own call, which the layer then uses.
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    inputs = keras.Input((5, 8))
    model = keras.Model(inputs, QKVAttention(2, 4)(inputs, inputs))
    expected = harness.to_numpy(model(x))
    model.quantize("int8")
    layer = model.layers[-1]
    assert layer.query_dense.quantization_mode == "int8"
    got = harness.to_numpy(model(x))
    harness.assert_finite(got)
    scale = np.max(np.abs(expected))
    assert 0 < np.max(np.abs(got - expected)) <= 0.05 * scale


def test_lora_on_a_projection_reaches_the_flattened_product():
    # KerasHub's `enable_lora` targets sublayers named "query" and "value".
    from keras_addons_qa.layers import qkv_attention

    x = np.random.default_rng(8).normal(size=(2, 5, 6)).astype("float32")
    layer = QKVAttention(2, 3)
    before = harness.to_numpy(layer(x, x))
    dense = layer.query_dense
    dense.enable_lora(2)
    dense.lora_kernel_b.assign(np.full(dense.lora_kernel_b.shape, 0.3, "float32"))
    np.testing.assert_allclose(
        harness.to_numpy(qkv_attention._project(dense, x)),
        harness.to_numpy(dense(x)), rtol=1e-5, atol=1e-6,
    )
    assert np.max(np.abs(harness.to_numpy(layer(x, x)) - before)) > 1e-3


def test_projection_bias_where_keras_tensorflow_add_misplaces_it():
    # Two heads of width 1 over two steps: the case `_keras_tf_misplaces_bias`
    # describes. QKVAttention adds its biases with NumPy broadcasting on every
    # backend; checked against attention written out in NumPy.
    rng = np.random.default_rng(9)
    x = rng.normal(size=(1, 2, 3)).astype("float32")
    layer = QKVAttention(2, 1, bias_initializer="random_normal")
    got = harness.to_numpy(layer(x, x))
    wq, bq, wk, bk, wv, bv, wo, bo = [harness.to_numpy(w) for w in layer.weights]
    q = np.einsum("btc,cnh->btnh", x, wq) + bq
    k = np.einsum("btc,cnh->btnh", x, wk) + bk
    v = np.einsum("btc,cnh->btnh", x, wv) + bv
    logits = np.einsum("btnh,bsnh->bnts", q, k)  # key_dim 1: scale 1
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = np.einsum("bnts,bsnh->btnh", weights, v)
    expected = np.einsum("btnh,nhe->bte", context, wo) + bo
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if keras.backend.backend() == "tensorflow":
        # The Keras behaviour this works around, so the test notices a fix.
        mha = keras.layers.MultiHeadAttention(2, 1)
        mha.build(x.shape, x.shape)
        mha.set_weights(layer.get_weights())
        assert _keras_tf_misplaces_bias(2, 1, (2,))
        assert np.max(np.abs(harness.to_numpy(mha(x, x)) - expected)) > 1e-4


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_stateless_call_computes_in_the_compute_dtype(policy):
    # `stateless_call` (how JAX training steps call layers) runs `call`
    # without the autocast scope of `__call__`.
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    with harness.dtype_policy(policy):
        layer = QKVAttention(2, 3)
        expected = layer(x, x, query_mask=mask, value_mask=mask)
        values = [v.value for v in layer.trainable_variables]
        got, _ = layer.stateless_call(
            values, [], keras.ops.cast(x, layer.compute_dtype), x,
            query_mask=mask, value_mask=mask,
        )
    assert keras.backend.standardize_dtype(got.dtype) == layer.compute_dtype
    np.testing.assert_allclose(
        harness.to_numpy(keras.ops.cast(got, "float32")),
        harness.to_numpy(keras.ops.cast(expected, "float32")),
        rtol=1e-6, atol=1e-6,
    )


def test_a_missing_argument_names_the_class():
    with pytest.raises(TypeError, match="QKVAttention: missing a required argument: 'key_dim'"):
        QKVAttention(num_heads=4)
