"""QKVAttention's KV cache (KerasHub's convention) and grouped-query heads."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_addons_qa.layers import QKVAttention
from tests import harness


def _left_padded(batch=3, length=9, features=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, features)).astype("float32")
    mask = np.ones((batch, length), bool)
    mask[1, :3] = False
    mask[2, :1] = False
    x[~mask] = np.nan  # padding may hold anything
    return x, mask


def _decode(layer, x, mask, prompt, step=None):
    """The prompt in one call, then one token per call, through the cache;
    `step` replaces the per-token call (a compiled one)."""
    batch, length = mask.shape
    cache = ops.zeros((batch, 2, length, layer.num_key_value_heads, layer._key_dim))
    out, cache = layer(
        x[:, :prompt], x[:, :prompt], query_mask=mask[:, :prompt], value_mask=mask[:, :prompt],
        attention_mask=np.repeat(mask[:, None, :], prompt, axis=1), use_causal_mask=True,
        cache=cache, cache_update_index=0,
    )
    outputs = [harness.to_numpy(out)]
    for t in range(prompt, length):
        args = (x[:, t : t + 1], mask[:, t : t + 1], mask[:, None, :], cache, np.int32(t))
        out, cache = step(*args) if step else _one_step(layer, *args)
        outputs.append(harness.to_numpy(out))
    return np.concatenate(outputs, axis=1), cache


def _one_step(layer, token, token_mask, attention_mask, cache, index):
    return layer(
        token, token, query_mask=token_mask, value_mask=token_mask,
        attention_mask=attention_mask, use_causal_mask=True,
        cache=cache, cache_update_index=index,
    )


@pytest.mark.parametrize("options", [
    {},
    {"num_key_value_heads": 2},
    {"num_key_value_heads": 1, "use_gate": True},
    {"distance_penalty": 0.3, "sliding_window": 4},
])
def test_cached_decoding_equals_the_full_causal_pass(options):
    x, mask = _left_padded()
    layer = QKVAttention(4, 4, **options)
    full = harness.to_numpy(layer(x, x, query_mask=mask, value_mask=mask, use_causal_mask=True))
    got, cache = _decode(layer, x, mask, prompt=4)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)
    harness.assert_finite(got, cache)
    # The cache holds num_key_value_heads heads: (batch, 2, max_length, K, key_dim).
    assert tuple(cache.shape) == (3, 2, 9, layer.num_key_value_heads, 4)


def test_cached_decoding_compiles_with_a_static_cache():
    x, mask = _left_padded(seed=1)
    layer = QKVAttention(4, 4, num_key_value_heads=2)
    full = harness.to_numpy(layer(x, x, query_mask=mask, value_mask=mask, use_causal_mask=True))
    step = lambda *args: _one_step(layer, *args)  # noqa: E731
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        step = tf.function(step, jit_compile=True)
    elif harness.BACKEND == "jax":
        import jax

        step = jax.jit(step)
    got, _ = _decode(layer, x, mask, prompt=2, step=step)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)


def test_cache_without_an_update_reads_it_as_it_is():
    x, mask = _left_padded(seed=2)
    layer = QKVAttention(2, 4)
    _, cache = _decode(layer, x, mask, prompt=9)
    # Attention over the filled cache, from new queries: the same as over
    # the full sequence as keys and values.
    queries = np.random.default_rng(3).normal(size=(3, 2, 8)).astype("float32")
    got, same = layer(queries, queries, attention_mask=np.repeat(mask[:, None, :], 2, 1), cache=cache)
    want = layer(queries, x, value_mask=mask)
    np.testing.assert_allclose(harness.to_numpy(got), harness.to_numpy(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(harness.to_numpy(same), harness.to_numpy(cache))


@pytest.mark.parametrize("num_key_value_heads", [None, 2])
def test_scores_with_a_cache(num_key_value_heads):
    """`return_attention_scores` with a cache returns `(output, scores,
    cache)`, KerasHub's order: each decoded step's weights over the cache
    are its row of the full causal pass's, the unwritten slots weighing 0."""
    x, mask = _left_padded(seed=4)
    layer = QKVAttention(4, 4, num_key_value_heads=num_key_value_heads)
    full, full_scores = layer(
        x, x, query_mask=mask, value_mask=mask, use_causal_mask=True, return_attention_scores=True
    )
    _, cache = _decode(layer, x, mask, prompt=4)
    empty = ops.zeros_like(cache)
    out, scores, written = layer(
        x[:, :4], x[:, :4], query_mask=mask[:, :4], value_mask=mask[:, :4],
        attention_mask=np.repeat(mask[:, None, :], 4, axis=1), use_causal_mask=True,
        cache=empty, cache_update_index=0, return_attention_scores=True,
    )
    assert tuple(scores.shape) == (3, 4, 4, 9)
    np.testing.assert_allclose(harness.to_numpy(out), harness.to_numpy(full)[:, :4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        harness.to_numpy(scores), harness.to_numpy(full_scores)[:, :, :4], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        harness.to_numpy(written)[:, :, :4], harness.to_numpy(cache)[:, :, :4], rtol=1e-6, atol=1e-6
    )
    symbolic = layer.compute_output_spec(
        keras.KerasTensor((3, 1, 8)), keras.KerasTensor((3, 1, 8)), cache=keras.KerasTensor((3, 2, 9, 4, 4)),
        cache_update_index=0, return_attention_scores=True,
    )
    assert [tuple(t.shape) for t in symbolic] == [(3, 1, 8), (3, 4, 1, 9), (3, 2, 9, 4, 4)]


def test_cache_errors():
    layer = QKVAttention(4, 4, num_key_value_heads=2)
    x = np.zeros((1, 3, 8), "float32")
    with pytest.raises(ValueError, match="needs a `cache`"):
        layer(x, x, cache_update_index=0)
    with pytest.raises(ValueError, match=r"num_key_value_heads=2"):
        layer(x, x, cache=ops.zeros((1, 2, 5, 4, 4)), cache_update_index=0)
    with pytest.raises(ValueError, match="value_dim == key_dim"):
        QKVAttention(2, 4, value_dim=3)(x, x, cache=ops.zeros((1, 2, 5, 2, 4)), cache_update_index=0)


def test_grouped_heads_equal_keras_grouped_query_attention():
    rng = np.random.default_rng(4)
    q = rng.normal(size=(2, 5, 6)).astype("float32")
    v = rng.normal(size=(2, 7, 6)).astype("float32")
    mask = rng.random((2, 7)) > 0.3
    mask[0, :] = True
    gqa = keras.layers.GroupQueryAttention(head_dim=4, num_query_heads=6, num_key_value_heads=2)
    gqa(q, v)
    ours = QKVAttention.from_grouped_query_attention(gqa)
    assert ours.num_key_value_heads == 2 and ours.num_heads == 6
    assert [w.shape for w in ours.weights] == [w.shape for w in gqa.weights]
    for call in ({"value_mask": mask}, {"use_causal_mask": True}, {}):
        value = q if "use_causal_mask" in call else v
        np.testing.assert_allclose(
            harness.to_numpy(ours(q, value, **call)),
            harness.to_numpy(gqa(q, value, **call)),
            rtol=1e-5, atol=1e-5,
        )
    # Built by hand with the same weights, too.
    layer = QKVAttention(6, 4, num_key_value_heads=2)
    layer(q, v)
    layer.set_weights(gqa.get_weights())
    np.testing.assert_allclose(harness.to_numpy(layer(q, v)), harness.to_numpy(gqa(q, v)), rtol=1e-5, atol=1e-5)


def test_grouped_heads_chunked_equal_full():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 9, 6)).astype("float32")
    mask = rng.random((2, 9)) > 0.3
    full = QKVAttention(4, 4, num_key_value_heads=2, scores_budget_mb=None)
    chunked = QKVAttention(4, 4, num_key_value_heads=2, scores_budget_mb=4 * 9 * 4 * 2 / 2**20)
    full(x, x)
    chunked(x, x)
    chunked.set_weights(full.get_weights())
    for layer in (full, chunked):
        layer.out = harness.to_numpy(
            layer(x, x, query_mask=mask, value_mask=mask, use_causal_mask=True)
        )
    np.testing.assert_allclose(chunked.out, full.out, rtol=1e-5, atol=1e-5)


def test_grouped_heads_arguments_and_saving(tmp_path):
    with pytest.raises(ValueError, match="multiple of `num_key_value_heads`"):
        QKVAttention(4, 4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        QKVAttention(4, 4, num_key_value_heads=0)
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = QKVAttention(4, 2, num_key_value_heads=2, scores_budget_mb=32, use_gate=True)(
        x, x, use_causal_mask=True
    )
    model = keras.Model(tokens, x)
    data = np.array([[3, 4, 5, 0], [6, 7, 8, 9]])
    restored = harness.save_and_reload(model, tmp_path)  # safe mode
    layer = restored.layers[-1]
    assert (layer.num_key_value_heads, layer.scores_budget_mb) == (2, 32.0)
    np.testing.assert_allclose(
        harness.to_numpy(restored.predict(data, verbose=0)),
        harness.to_numpy(model.predict(data, verbose=0)), rtol=1e-6, atol=1e-6,
    )
