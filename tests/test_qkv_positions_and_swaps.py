"""QKVAttention's `position_encoding` hook, the kernel-reading converter and
`replace_attention`, on every backend (KerasHub's own layers: see
test_keras_hub.py)."""

import inspect

import keras
import numpy as np
import pytest
from keras import ops

from keras_addons_qa.layers import QKVAttention
from keras_addons_qa.layers import replace_attention
from tests import harness


@keras.saving.register_keras_serializable(package="keras_addons_qa_tests")
class Rotary(keras.layers.Layer):
    """Rotary positions over the last axis, halves rotated (as KerasHub's
    `RotaryEmbedding` lays them out), called as `layer(x, start_index=i)`."""

    def __init__(self, max_wavelength=100.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength

    def call(self, x, start_index=0):
        half = x.shape[-1] // 2
        positions = ops.cast(ops.arange(ops.shape(x)[1]) + start_index, "float32")
        inverse = self.max_wavelength ** (-np.arange(half, dtype="float32") / half)
        angles = ops.expand_dims(positions[:, None] * inverse[None], 1)  # (T, 1, half)
        cos, sin = ops.cos(angles), ops.sin(angles)
        x1, x2 = x[..., :half], x[..., half:]
        return ops.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def get_config(self):
        return {**super().get_config(), "max_wavelength": self.max_wavelength}


def _rotate(x, start, wavelength=100.0):  # NumPy: x (B, T, N, D)
    half = x.shape[-1] // 2
    angles = (np.arange(x.shape[1]) + start)[:, None] * wavelength ** (-np.arange(half) / half)
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _reference(layer, x, start=0):
    """Causal attention with rotated queries and keys, from the layer's
    weights, in float64 NumPy."""
    w = {name: [harness.to_numpy(v).astype("float64") for v in dense.weights]
         for name, dense in (("q", layer.query_dense), ("k", layer.key_dense),
                             ("v", layer.value_dense), ("o", layer.output_dense))}
    q = _rotate(np.einsum("btf,fnd->btnd", x, w["q"][0]) + w["q"][1], start)
    k = _rotate(np.einsum("btf,fnd->btnd", x, w["k"][0]) + w["k"][1], start)
    v = np.einsum("btf,fnd->btnd", x, w["v"][0]) + w["v"][1]
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    logits = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])
    steps = x.shape[1]
    logits = np.where(np.tril(np.ones((steps, steps), bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = np.einsum("bnts,bsnd->btnd", weights, v)
    return np.einsum("btnd,ndf->btf", context, w["o"][0]) + w["o"][1]


def _read_cache(layer, x, cache):
    """NumPy: a query rotated from position 0 attending over a whole cache."""
    w = {name: [harness.to_numpy(v).astype("float64") for v in dense.weights]
         for name, dense in (("q", layer.query_dense), ("o", layer.output_dense))}
    q = _rotate(np.einsum("btf,fnd->btnd", x, w["q"][0]) + w["q"][1], 0)
    cache = harness.to_numpy(cache).astype("float64")
    groups = q.shape[2] // cache.shape[3]
    k, v = (np.repeat(cache[:, i], groups, axis=2) for i in (0, 1))
    logits = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = np.einsum("bnts,bsnd->btnd", weights, v)
    return np.einsum("btnd,ndf->btf", context, w["o"][0]) + w["o"][1]


def _positioned(num_key_value_heads=2, **kwargs):
    return QKVAttention(
        num_heads=4, key_dim=8, num_key_value_heads=num_key_value_heads,
        position_encoding=Rotary(), **kwargs,
    )


def test_position_encoding_rotates_queries_and_keys():
    x = np.random.default_rng(0).normal(size=(2, 7, 16)).astype("float32")
    layer = _positioned(bias_initializer="random_normal")
    out = layer(x, x, use_causal_mask=True)
    np.testing.assert_allclose(harness.to_numpy(out), _reference(layer, x.astype("float64")),
                               atol=1e-5)


def test_position_encoding_decodes_like_the_full_pass_and_caches_rotated_keys():
    x = np.random.default_rng(1).normal(size=(2, 7, 16)).astype("float32")
    layer = _positioned()
    full = harness.to_numpy(layer(x, x, use_causal_mask=True))
    cache = ops.zeros((2, 2, 9, 2, 8))
    out, cache = layer(x[:, :4], x[:, :4], use_causal_mask=True, cache=cache,
                       cache_update_index=0)
    outputs = [harness.to_numpy(out)]
    for t in range(4, 7):
        out, cache = layer(x[:, t:t + 1], x[:, t:t + 1], use_causal_mask=True, cache=cache,
                           cache_update_index=t)
        outputs.append(harness.to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)
    kernel = harness.to_numpy(layer.key_dense.kernel)
    bias = harness.to_numpy(layer.key_dense.bias)
    keys = _rotate(np.einsum("btf,fnd->btnd", x, kernel) + bias, 0)
    np.testing.assert_allclose(harness.to_numpy(cache)[:, 0, :7], keys, atol=1e-5)
    np.testing.assert_array_equal(harness.to_numpy(cache)[:, :, 7:], 0.0)
    # Reading the cache as it is (no index): the query rotates from position
    # 0, as in KerasHub's Llama, and attends over every slot of the cache.
    out, _ = layer(x[:, :1], x[:, :1], cache=cache)
    np.testing.assert_allclose(harness.to_numpy(out), _read_cache(layer, x[:, :1], cache),
                               atol=1e-5)


def test_position_encoding_saves_and_loads(tmp_path):
    inputs = keras.Input((7, 16))
    model = keras.Model(inputs, _positioned()(inputs, inputs, use_causal_mask=True))
    x = np.random.default_rng(2).normal(size=(2, 7, 16)).astype("float32")
    restored = harness.save_and_reload(model, tmp_path)
    layer = restored.layers[-1]
    assert isinstance(layer.position_encoding, Rotary)
    np.testing.assert_allclose(harness.to_numpy(restored(x)), harness.to_numpy(model(x)),
                               atol=1e-6)
    # Without the hook the config is 0.2.0's: no new key.
    assert "position_encoding" not in QKVAttention(2, 4).get_config()


@pytest.mark.parametrize("bad", ["rope", Rotary])
def test_position_encoding_must_be_a_layer(bad):
    with pytest.raises(ValueError, match="position_encoding"):
        QKVAttention(2, 4, position_encoding=bad)


def test_position_encoding_needs_rank_3_inputs():
    x = np.zeros((2, 3, 5, 8), "float32")
    with pytest.raises(ValueError, match="rank-3"):
        QKVAttention(2, 4, attention_axes=2, position_encoding=Rotary())(x, x)


class _LlamaLikeAttention(keras.layers.Layer):
    """A grouped-query self-attention that is not a MultiHeadAttention:
    projections named as Keras's, no biases, a rotary sublayer held as
    KerasHub's layers hold it, and a `get_config` that cannot serialize it
    (the converter must read kernels and attributes, not the config)."""

    def __init__(self, heads, groups, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.groups, self.dropout = heads, groups, dropout

    def build(self, shape):
        features = shape[-1]
        dim = features // self.heads
        self._query_dense = keras.layers.EinsumDense(
            "bqm,muh->bquh", (None, self.heads, dim), name="query")
        self._key_dense = keras.layers.EinsumDense(
            "bkm,mvh->bkvh", (None, self.groups, dim), name="key")
        self._value_dense = keras.layers.EinsumDense(
            "bkm,mvh->bkvh", (None, self.groups, dim), name="value")
        self._output_dense = keras.layers.EinsumDense(
            "bquh,uhm->bqm", (None, features), name="attention_output")
        for dense in (self._query_dense, self._key_dense, self._value_dense):
            dense.build(shape)
        self._output_dense.build((None, None, self.heads, dim))
        self.rotary_embedding_layer = Rotary()

    def get_config(self):
        raise AttributeError("not serializable")


def test_kernel_reading_converter_takes_a_llama_like_layer():
    x = np.random.default_rng(3).normal(size=(2, 6, 16)).astype("float32")
    original = _LlamaLikeAttention(4, 2, dropout=0.25, name="self_attention")
    original.build(x.shape)
    layer = QKVAttention.from_grouped_query_attention(original)
    config = layer.get_config()
    assert (config["num_heads"], config["key_dim"], config["num_key_value_heads"]) == (4, 4, 2)
    assert config["use_bias"] is False and config["dropout"] == 0.25
    assert layer.position_encoding is original.rotary_embedding_layer
    assert [v.path for v in layer.weights] == [v.path for v in original.weights]
    for ours, theirs in zip(layer.weights, original.weights):
        np.testing.assert_array_equal(harness.to_numpy(ours), harness.to_numpy(theirs))
    out = layer(x, x, use_causal_mask=True)
    np.testing.assert_allclose(harness.to_numpy(out), _reference_no_bias(layer, x), atol=1e-5)


def _reference_no_bias(layer, x):
    class Zeros:  # the reference reads `weights[1]` as the bias
        def __init__(self, dense):
            self.weights = [dense.kernel, np.zeros(dense.kernel.shape[-1])]
    wrapped = type("Wrapped", (), {
        name: Zeros(getattr(layer, name))
        for name in ("query_dense", "key_dense", "value_dense", "output_dense")
    })
    return _reference(wrapped, x.astype("float64"))


@pytest.mark.skipif(
    "use_gate" not in inspect.signature(keras.layers.GroupQueryAttention).parameters,
    reason="GroupQueryAttention has no gate before Keras 3.14",
)
def test_kernel_reading_converter_copies_a_gate_and_biases():
    x = np.random.default_rng(5).normal(size=(2, 6, 16)).astype("float32")
    gqa = keras.layers.GroupQueryAttention(8, 4, 2, use_gate=True,
                                           bias_initializer="random_normal")
    reference = harness.to_numpy(gqa(x, x))
    layer = QKVAttention.from_grouped_query_attention(gqa)
    assert layer.get_config()["use_gate"] and layer.get_config()["use_bias"]
    np.testing.assert_allclose(harness.to_numpy(layer(x, x)), reference, atol=1e-5)


def test_kernel_reading_converter_names_what_it_needs():
    with pytest.raises(ValueError, match="_query_dense"):
        QKVAttention.from_grouped_query_attention(keras.layers.Dense(3, name="d").__class__(3))


# -- replace_attention --------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_addons_qa_tests")
class Block(keras.layers.Layer):
    """Attention held as attributes, one layer under two names: where
    subclassed models and KerasHub's blocks keep it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(2, 4, name="self_attention")
        self.cross = keras.layers.MultiHeadAttention(2, 4, name="cross")
        self.again = self.attention
        self.norm = keras.layers.LayerNormalization()

    def build(self, shape):  # so that a loaded model has weights to fill
        for layer in (self.attention, self.cross):
            layer.build(shape, shape)
        self.norm.build(shape)

    def call(self, x):
        y = self.attention(x, x, use_causal_mask=True)
        y = self.cross(y, x)
        return self.norm(y + self.again(x, y))


def _model():
    inputs = keras.Input((6, 8))
    return keras.Model(inputs, Block(name="block")(inputs))


def test_replace_attention_swaps_in_place_and_keeps_everything(tmp_path):
    keras.utils.set_random_seed(0)
    model = _model()
    x = np.random.default_rng(4).normal(size=(3, 6, 8)).astype("float32")
    before = harness.to_numpy(model.predict(x, verbose=0))
    paths = [v.path for v in model.weights]
    values = [harness.to_numpy(v) for v in model.weights]
    new = replace_attention(model, scores_budget_mb=64)
    block = model.get_layer("block")
    assert [layer.name for layer in new] == ["self_attention", "cross"]
    assert all(isinstance(layer, QKVAttention) for layer in new)
    assert block.attention is block.again is new[0]  # shared: converted once
    assert block.cross is new[1]
    assert new[0].scores_budget_mb == 64
    assert [v.path for v in model.weights] == paths
    for ours, theirs in zip(model.weights, values):
        np.testing.assert_array_equal(harness.to_numpy(ours), theirs)
    np.testing.assert_allclose(harness.to_numpy(model.predict(x, verbose=0)), before, atol=1e-5)
    # Training reaches the new layers' variables.
    model.compile("sgd", "mse")
    model.fit(x, np.zeros_like(before), epochs=1, verbose=0)
    assert not np.array_equal(harness.to_numpy(new[0].query_dense.kernel), values[0])
    # Saved and loaded: the block builds MultiHeadAttention again, with these weights.
    after = harness.to_numpy(model.predict(x, verbose=0))
    restored = harness.save_and_reload(model, tmp_path)
    np.testing.assert_allclose(harness.to_numpy(restored.predict(x, verbose=0)), after,
                               atol=1e-5)
    assert len(replace_attention(restored)) == 2


def test_replace_attention_refuses_what_it_cannot_swap():
    inputs = keras.Input((6, 8))
    graph = keras.Model(inputs, keras.layers.MultiHeadAttention(2, 4)(inputs, inputs))
    with pytest.raises(ValueError, match="clone_model"):
        replace_attention(graph)
    dense = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="no `keras.layers.MultiHeadAttention`"):
        replace_attention(dense)
    with pytest.raises(ValueError, match="must be built"):
        replace_attention(Block())
    # The convertible attribute comes first among the sublayers: an error
    # met after it still leaves the model as it was.
    listed = keras.layers.Layer()
    listed.attention = keras.layers.MultiHeadAttention(2, 4)
    listed.heads = [keras.layers.MultiHeadAttention(2, 4)]
    for layer in (listed.attention, listed.heads[0]):
        layer.build((None, 6, 8), (None, 6, 8))
    listed.built = True
    with pytest.raises(ValueError, match="list or dict"):
        replace_attention(listed)
    assert type(listed.attention) is keras.layers.MultiHeadAttention
    # A graph node is refused even when an attribute holds it too.
    inputs = keras.Input((6, 8))
    attention = keras.layers.MultiHeadAttention(2, 4)
    held = keras.Model(inputs, attention(inputs, inputs))
    held.attention = attention
    with pytest.raises(ValueError, match="clone_model"):
        replace_attention(held)
    assert type(held.attention) is keras.layers.MultiHeadAttention
    model = _model()
    replace_attention(model)
    with pytest.raises(ValueError, match="no `keras.layers.MultiHeadAttention`"):
        replace_attention(model)  # QKVAttention stays as it is


class _Subclass(keras.layers.MultiHeadAttention):
    pass


def test_replace_attention_converts_other_subclasses_only_when_named():
    holder = keras.layers.Layer()
    holder.attention = _Subclass(2, 4)
    holder.attention.build((None, 6, 8), (None, 6, 8))
    holder.built = True
    with pytest.raises(ValueError, match="classes="):
        replace_attention(holder)
    assert type(holder.attention) is _Subclass
    (new,) = replace_attention(holder, classes=_Subclass)
    assert holder.attention is new and isinstance(new, QKVAttention)
    with pytest.raises(ValueError, match="position_encoding"):
        replace_attention(_model(), position_encoding=Rotary())


@pytest.mark.skipif(harness.BACKEND != "torch", reason="torch's own parameter list")
def test_replace_attention_refreshes_torch_parameters():
    model = _model()
    new = replace_attention(model)
    parameters = {id(p) for p in model.parameters()}
    assert {id(v.value) for v in new[0].weights} <= parameters
