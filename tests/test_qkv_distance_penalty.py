"""QKVAttention(distance_penalty=...): Speech-Transformer's locality bias.

The padding guarantee with a penalty is checked in test_qkv_attention.py
(`test_padding_changes_neither_outputs_nor_gradients`, parametrized).
"""

import keras
import numpy as np
import pytest

from keras_addons_qa.layers import QKVAttention
from tests import harness


def _reference(layer, query, value, penalty, query_mask=None, value_mask=None):
    """NumPy attention with `penalty * |i' - j|` subtracted from the logits."""
    w = [harness.to_numpy(v).astype("float64") for v in layer.weights]
    qk, qb, kk, kb, vk, vb, ok, ob = w
    q = np.einsum("btc,cnh->btnh", query, qk) + qb
    k = np.einsum("bsc,cnh->bsnh", value, kk) + kb
    v = np.einsum("bsc,cnh->bsnh", value, vk) + vb
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(layer.key_dim)
    t, s = query.shape[1], value.shape[1]
    aligned = (np.arange(t) + 0.5) * s / t - 0.5
    logits = logits - penalty * np.abs(aligned[:, None] - np.arange(s)[None, :])
    valid = np.ones((len(query), t, s), bool)
    if query_mask is not None:
        valid &= query_mask[:, :, None]
    if value_mask is not None:
        valid &= value_mask[:, None, :]
    logits = np.where(valid[:, None], logits, -np.inf)
    peak = np.max(logits, -1, keepdims=True)
    e = np.where(valid[:, None], np.exp(logits - np.where(np.isfinite(peak), peak, 0)), 0)
    total = e.sum(-1, keepdims=True)
    scores = e / np.where(total > 0, total, 1)
    context = np.einsum("bnts,bsnh->btnh", scores, v)
    return np.einsum("btnh,nho->bto", context, ok) + ob, scores


@pytest.mark.parametrize("q_len,v_len", [(6, 6), (3, 7), (8, 4)])
@pytest.mark.parametrize("penalty", [0.3, 2.0])
def test_matches_the_reference_with_masks(q_len, v_len, penalty):
    rng = np.random.default_rng(q_len * 10 + v_len)
    query = rng.normal(size=(2, q_len, 5)).astype("float32")
    value = rng.normal(size=(2, v_len, 4)).astype("float32")
    query_mask = np.ones((2, q_len), bool)
    query_mask[1, -1] = False
    value_mask = np.ones((2, v_len), bool)
    value_mask[0, -2:] = False
    layer = QKVAttention(2, 3, distance_penalty=penalty, bias_initializer="random_normal")
    out, scores = layer(
        query, value, query_mask=query_mask, value_mask=value_mask,
        return_attention_scores=True,
    )
    ref_out, ref_scores = _reference(layer, query, value, penalty, query_mask, value_mask)
    np.testing.assert_allclose(harness.to_numpy(scores), ref_scores, atol=1e-5)
    np.testing.assert_allclose(harness.to_numpy(out), ref_out, rtol=1e-4, atol=1e-5)
    # The same without returned scores (the path a model takes).
    np.testing.assert_allclose(
        harness.to_numpy(layer(query, value, query_mask=query_mask, value_mask=value_mask)),
        ref_out, rtol=1e-4, atol=1e-5,
    )


def test_the_penalty_changes_attention_and_zero_is_plain_attention():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 4)).astype("float32")
    plain = QKVAttention(2, 3)
    plain.build(x.shape, x.shape)
    zero = QKVAttention(2, 3, distance_penalty=0.0)
    local = QKVAttention(2, 3, distance_penalty=1.0)
    for layer in (zero, local):
        layer.build(x.shape, x.shape)
        layer.set_weights(plain.get_weights())
    np.testing.assert_array_equal(harness.to_numpy(zero(x, x)), harness.to_numpy(plain(x, x)))
    assert np.abs(harness.to_numpy(local(x, x)) - harness.to_numpy(plain(x, x))).max() > 1e-2
    _, scores = local(x, x, return_attention_scores=True)
    scores = harness.to_numpy(scores)
    # Mass on the diagonal band grows with the penalty.
    _, plain_scores = plain(x, x, return_attention_scores=True)
    band = np.abs(np.arange(6)[:, None] - np.arange(6)[None, :]) <= 1
    assert scores[..., band].sum() > harness.to_numpy(plain_scores)[..., band].sum()


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_a_huge_penalty_makes_self_attention_the_identity(policy):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 4)).astype("float32")
    mask = np.array([[1, 1, 0, 1, 0], [1] * 5], bool)
    with harness.dtype_policy(policy):
        layer = QKVAttention(2, 3, distance_penalty=1e30)
        identity = QKVAttention(2, 3)
    out, scores = layer(x, x, query_mask=mask, value_mask=mask, return_attention_scores=True)
    identity.build(x.shape, x.shape)
    identity.set_weights(layer.get_weights())
    eye = np.broadcast_to(np.eye(5, dtype=bool), (2, 5, 5))
    expected = identity(x, x, query_mask=mask, value_mask=mask, attention_mask=eye)
    scores = harness.to_numpy(scores).astype("float32")
    np.testing.assert_allclose(scores[1], np.broadcast_to(np.eye(5), (2, 5, 5)), atol=1e-6)
    real = mask[0]
    np.testing.assert_allclose(
        scores[0][:, real][:, :, real], np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-6
    )
    tolerance = 1e-5 if policy == "float32" else 2e-2
    np.testing.assert_allclose(
        harness.to_numpy(out).astype("float32")[mask],
        harness.to_numpy(expected).astype("float32")[mask],
        rtol=tolerance, atol=tolerance,
    )


def test_with_its_own_key_masked_a_query_attends_to_the_nearest_valid_key():
    x = np.random.default_rng(2).normal(size=(1, 5, 4)).astype("float32")
    query_mask = np.ones((1, 5), bool)
    value_mask = np.array([[1, 0, 0, 1, 1]], bool)
    layer = QKVAttention(1, 3, distance_penalty=1e6)
    _, scores = layer(
        x, x, query_mask=query_mask, value_mask=value_mask, return_attention_scores=True
    )
    nearest = np.argmax(harness.to_numpy(scores)[0, 0], axis=-1)
    np.testing.assert_array_equal(nearest, [0, 0, 3, 3, 4])  # query 2: key 3 is 1 away


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_no_nan_in_low_precision_with_a_fully_padded_row(policy):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(2, 7, 4)) * 100).astype("float32")
    mask = np.array([[0] * 7, [1, 1, 1, 0, 0, 0, 0]], bool)
    with harness.dtype_policy(policy):
        layer = QKVAttention(2, 3, distance_penalty=1e4)
        layer.build(x.shape, x.shape)
    tensor = keras.Variable(x)
    value, grads = harness.gradients(
        lambda: keras.ops.sum(
            keras.ops.cast(layer(tensor, tensor, query_mask=mask, value_mask=mask), "float32")
        ),
        [tensor] + layer.trainable_weights,
    )
    harness.assert_finite(value, *grads)


def test_default_config_and_round_trip():
    assert QKVAttention(2, 3).distance_penalty == 0.0
    layer = QKVAttention(2, 3, distance_penalty=0.25)
    config = layer.get_config()
    assert config["distance_penalty"] == 0.25
    assert QKVAttention.from_config(config).distance_penalty == 0.25
    mha = keras.layers.MultiHeadAttention(2, 3)
    x = np.zeros((1, 4, 6), "float32")
    mha(x, x)
    assert QKVAttention.from_multi_head_attention(mha, distance_penalty=1.5).distance_penalty == 1.5


@pytest.mark.parametrize("value", [-0.1, float("inf"), float("nan"), "1"])
def test_bad_distance_penalty(value):
    with pytest.raises(ValueError, match=f"distance_penalty={value!r}"):
        QKVAttention(2, 3, distance_penalty=value)
