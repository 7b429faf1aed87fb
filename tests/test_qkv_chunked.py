"""QKVAttention's chunked path (long sequences in bounded memory) against
its full path: same outputs and gradients under every mask, forced at small
lengths by a tiny `scores_budget_mb`."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

from keras_addons_qa.ops import _blockwise
from keras_addons_qa.layers import QKVAttention
from tests import harness


def _budget(heads, keys, rows):
    """The `scores_budget_mb` that gives chunks of exactly `rows` queries."""
    return heads * keys * 4 * rows / 2**20


class _Spy:
    """Counts calls of the chunked path."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = _blockwise.attention

        def spy(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(_blockwise, "attention", spy)


def _pair(rows, heads, keys, **kwargs):
    full = QKVAttention(heads, 4, scores_budget_mb=None, **kwargs)
    chunked = QKVAttention(heads, 4, scores_budget_mb=_budget(heads, keys, rows), **kwargs)
    return full, chunked


def _run_both(full, chunked, query, value, key=None, **call):
    """Outputs and gradients (inputs and weights) of both layers."""
    full(query, value, key)
    chunked(query, value, key)
    chunked.set_weights(full.get_weights())
    inputs = [keras.Variable(query), keras.Variable(value)]
    if key is not None:
        inputs.append(keras.Variable(key))
    results = []
    for layer in (full, chunked):
        def loss(layer=layer):
            k = None if key is None else inputs[2].value
            out = layer(inputs[0].value, inputs[1].value, k, **call)
            return ops.sum(ops.sin(out) * ops.arange(out.shape[-1], dtype=out.dtype))

        value_, grads = harness.gradients(loss, inputs + layer.trainable_variables)
        k = None if key is None else key
        out = harness.to_numpy(layer(query, value, k, **call))
        results.append((out, [harness.to_numpy(g) for g in grads]))
    return results


def _assert_same(results, tolerance=1e-5):
    (out_a, grads_a), (out_b, grads_b) = results
    np.testing.assert_allclose(out_b, out_a, rtol=tolerance, atol=tolerance)
    # A gradient that is zero in exact arithmetic (a key's, when one key is
    # all a query sees: its softmax is 1 whatever the logit) comes out as
    # float32 rounding of terms the size of the largest gradient, which
    # differs between the two paths: the absolute tolerance grows with
    # that size (about 8 float32 ulps of it).
    scale = max(float(np.max(np.abs(a), initial=0.0)) for a in grads_a)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(b, a, rtol=tolerance, atol=tolerance + 1e-6 * scale)


@settings(max_examples=harness.examples(30), deadline=None)
@given(
    batch=st.integers(1, 2),
    q_len=st.integers(2, 9),
    k_len=st.integers(1, 8),
    heads=st.integers(1, 3),
    rows_seed=st.integers(0, 100),
    self_attention=st.booleans(),
    separate_key=st.booleans(),
    mask_kind=st.sampled_from(["none", "ts", "bts", "bnts", "b1s", "1t1"]),
    masks=st.booleans(),
    causal=st.booleans(),
    window=st.sampled_from([None, 1, 3]),
    penalty=st.sampled_from([0.0, 0.7]),
    gate=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_chunked_equals_full(
    batch, q_len, k_len, heads, rows_seed, self_attention, separate_key,
    mask_kind, masks, causal, window, penalty, gate, seed,
):
    rng = np.random.default_rng(seed)
    if self_attention:
        k_len = q_len
    rows = 1 + rows_seed % (q_len - 1)  # 1 .. q_len - 1: always chunked
    full, chunked = _pair(
        rows, heads, k_len, sliding_window=window, distance_penalty=penalty, use_gate=gate
    )
    query = rng.normal(size=(batch, q_len, 5)).astype("float32")
    value = query if self_attention else rng.normal(size=(batch, k_len, 5)).astype("float32")
    key = rng.normal(size=(batch, k_len, 5)).astype("float32") if separate_key else None
    call = {"use_causal_mask": causal}
    if masks:
        call["query_mask"] = rng.random((batch, q_len)) > 0.3
        call["value_mask"] = rng.random((batch, k_len)) > 0.3
        call["value_mask"][0] = False  # a fully padded row
        if separate_key:
            call["key_mask"] = rng.random((batch, k_len)) > 0.2
    shapes = {
        "ts": (q_len, k_len), "bts": (batch, q_len, k_len),
        "bnts": (batch, heads, q_len, k_len), "b1s": (batch, 1, k_len),
        "1t1": (1, q_len, 1),
    }
    if mask_kind in shapes:
        call["attention_mask"] = rng.random(shapes[mask_kind]) > 0.25
    _assert_same(_run_both(full, chunked, query, value, key, **call))


def test_the_chunked_path_runs_when_scores_exceed_the_budget(monkeypatch):
    spy = _Spy(monkeypatch)
    x = np.random.default_rng(0).normal(size=(2, 6, 4)).astype("float32")
    # A general mask keeps the call off a backend's own kernel (torch's SDPA).
    mask = np.ones((6, 6), bool)
    layer = QKVAttention(2, 4, scores_budget_mb=_budget(2, 6, 4))  # 2 * 6 * 6 * 4 bytes > it
    layer(x, x, attention_mask=mask)
    assert spy.calls == 1
    QKVAttention(2, 4, scores_budget_mb=_budget(2, 6, 6))(x, x, attention_mask=mask)  # fits exactly
    assert spy.calls == 1
    # The default, 128 MiB per example: 8 heads over 2048 x 2048 fit, 4096 do not.
    default = QKVAttention(8, 64)
    assert default.scores_budget_mb == 128.0
    for steps, calls in ((2048, 1), (4096, 2)):
        x = ops.zeros((1, steps, 16))
        default(x, x, attention_mask=np.ones((steps, steps), bool))
        assert spy.calls == calls


@pytest.mark.skipif(harness.BACKEND != "jax", reason="cuDNN's path exists only on JAX")
def test_on_a_jax_gpu_only_cudnns_attention_skips_the_chunks(monkeypatch):
    """cuDNN's kernel is linear in memory; attention it does not take
    (float32, a user's attention mask) still chunks on a JAX GPU."""
    from keras_addons_qa import _jax_attention

    monkeypatch.setattr(_jax_attention, "on_gpu", lambda: True)
    spy = _Spy(monkeypatch)
    budget = _budget(2, 6, 4)
    x = np.random.default_rng(0).normal(size=(2, 6, 4)).astype("float32")
    QKVAttention(2, 4, scores_budget_mb=budget)(x, x)  # float32: chunks
    assert spy.calls == 1
    layer = QKVAttention(2, 4, scores_budget_mb=budget, dtype="bfloat16")
    layer(x, x)  # cuDNN's (XLA's kernel stands in on this CPU)
    assert spy.calls == 1
    layer(x, x, attention_mask=np.tril(np.ones((6, 6), bool)))  # a full mask: chunks
    assert spy.calls == 2


def test_the_full_path_runs_for_scores_and_dropout(monkeypatch):
    spy = _Spy(monkeypatch)
    x = np.random.default_rng(0).normal(size=(2, 6, 4)).astype("float32")
    budget = _budget(2, 6, 2)
    layer = QKVAttention(2, 4, scores_budget_mb=budget)
    _, scores = layer(x, x, return_attention_scores=True)
    assert tuple(scores.shape) == (2, 2, 6, 6)
    QKVAttention(2, 4, dropout=0.5, scores_budget_mb=budget)(x, x, training=True)
    assert spy.calls == 0
    layer = QKVAttention(2, 4, dropout=0.5, scores_budget_mb=budget)
    layer(x, x, attention_mask=np.ones((6, 6), bool), training=False)  # not torch's kernel
    assert spy.calls == 1


@pytest.mark.parametrize("pad_value", [np.nan, np.inf])
def test_padding_is_inert_in_the_chunked_path(pad_value):
    rng = np.random.default_rng(3)
    full, chunked = _pair(2, 2, 7, distance_penalty=0.2)
    x = rng.normal(size=(2, 7, 5)).astype("float32")
    mask = np.ones((2, 7), bool)
    mask[0, 4:] = False
    mask[1, :] = False  # every step padded
    x[~mask] = pad_value
    results = _run_both(full, chunked, x, x, query_mask=mask, value_mask=mask, use_causal_mask=True)
    for out, grads in results:
        harness.assert_finite(out, *grads)
    _assert_same(results)
    assert np.all(results[1][0][1] == results[1][0][1][0, 0])  # the output bias only


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_chunked_path_under_mixed_precision(policy):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(2, 9, 6)) * 30).astype("float32")  # large logits
    mask = rng.random((2, 9)) > 0.3
    with harness.dtype_policy(policy):
        full, chunked = _pair(4, 2, 9, distance_penalty=0.5)
        full(x, x)
        chunked(x, x)
        chunked.set_weights(full.get_weights())
        a = harness.to_numpy(full(x, x, query_mask=mask, value_mask=mask)).astype("float32")
        b = harness.to_numpy(chunked(x, x, query_mask=mask, value_mask=mask)).astype("float32")
    harness.assert_finite(b)
    tolerance = 2e-2 if policy == "mixed_bfloat16" else 2e-3
    np.testing.assert_allclose(b, a, rtol=tolerance, atol=tolerance * np.abs(a).max())


def test_chunked_path_compiles():
    # Static shapes only: under XLA (TensorFlow's jit_compile, jax.jit) the
    # chunked path compiles and equals the full path.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 11, 6)).astype("float32")
    mask = rng.random((2, 11)) > 0.2
    full, chunked = _pair(4, 2, 11, sliding_window=4)
    full(x, x)
    chunked(x, x)
    chunked.set_weights(full.get_weights())
    expected = harness.to_numpy(full(x, x, query_mask=mask, value_mask=mask, use_causal_mask=True))
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda a, m: chunked(a, a, query_mask=m, value_mask=m, use_causal_mask=True),
                         jit_compile=True)
    elif harness.BACKEND == "jax":
        import jax

        fn = jax.jit(lambda a, m: chunked(a, a, query_mask=m, value_mask=m, use_causal_mask=True))
    else:
        fn = lambda a, m: chunked(a, a, query_mask=m, value_mask=m, use_causal_mask=True)  # noqa: E731
    np.testing.assert_allclose(harness.to_numpy(fn(x, mask)), expected, rtol=1e-5, atol=1e-5)


def test_budget_argument_and_config():
    layer = QKVAttention(2, 4, scores_budget_mb=64)
    assert QKVAttention.from_config(layer.get_config()).scores_budget_mb == 64.0
    assert QKVAttention.from_config(
        QKVAttention(2, 4, scores_budget_mb=None).get_config()
    ).scores_budget_mb is None
    for bad in (0, -1.0, float("nan"), "big"):
        with pytest.raises(ValueError, match="scores_budget_mb"):
            QKVAttention(2, 4, scores_budget_mb=bad)


def test_a_long_prompt_prefills_a_cache_block_by_block(monkeypatch):
    """A causal prompt written into a cache goes blockwise once its scores
    pass the budget, and gives the uncached causal pass's outputs and
    cache."""
    spy = _Spy(monkeypatch)
    rng = np.random.default_rng(5)
    steps, max_length = 11, 16
    x = rng.normal(size=(2, steps, 8)).astype("float32")
    mask = np.ones((2, steps), bool)
    mask[1, :3] = False  # a left-padded prompt
    uncached = QKVAttention(4, 4, num_key_value_heads=2, scores_budget_mb=None)
    expected = harness.to_numpy(uncached(x, x, value_mask=mask, use_causal_mask=True))
    layer = QKVAttention(
        4, 4, num_key_value_heads=2, scores_budget_mb=_budget(4, max_length, 3)
    )
    layer(x, x)
    layer.set_weights(uncached.get_weights())
    cache = ops.zeros((2, 2, max_length, 2, 4))
    spy.calls = 0
    out, cache = layer(x, x, value_mask=mask, use_causal_mask=True, cache=cache,
                       cache_update_index=0)
    assert spy.calls == 1
    out = harness.to_numpy(out)
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-5, atol=1e-5)
    keys = harness.to_numpy(uncached.key_dense(x))
    np.testing.assert_allclose(harness.to_numpy(cache)[:, 0, :steps][mask], keys[mask],
                               rtol=1e-5, atol=1e-5)
    assert not harness.to_numpy(cache)[:, :, steps:].any()
