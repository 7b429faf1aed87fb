"""Every argument and input error in the documented table, raised as documented.

The table in docs/errors.md (between the `errors:start` / `errors:end` markers)
is the contract: each row names a case below, and the test checks that the
case raises `ValueError` with the message the row quotes. A row without a
case, or a case without a row, fails the test, so the two cannot drift.
"""

import pathlib
import re

import keras
import numpy as np
import pytest

import keras_addons_qa as kaq

ERRORS_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "errors.md"
L = kaq.layers
X3 = np.zeros((2, 5, 3), "float32")
X4 = np.zeros((2, 3, 4, 5), "float32")
BAD_MASK = np.ones((2, 4), bool)


def _mha_unbuilt():
    return L.QKVAttention.from_multi_head_attention(
        keras.layers.MultiHeadAttention(2, 4, name="mha")
    )


def _qkv_built_on_rank_3():
    layer = L.QKVAttention(2, 4)
    layer(X3, X3)
    return layer(X3[0], X3[0])


def _replace_in_dense_model():
    inputs = keras.Input((5, 3))
    return L.replace_attention(keras.Model(inputs, keras.layers.Dense(2)(inputs), name="dense_model"))


def _replace_graph_node():
    inputs = keras.Input((5, 3))
    attention = keras.layers.MultiHeadAttention(2, 4, name="mha")
    return L.replace_attention(keras.Model(inputs, attention(inputs, inputs), name="graph"))


def _replace_in_list():
    holder = keras.layers.Layer(name="holder")
    holder.heads = [keras.layers.MultiHeadAttention(2, 4, name="mha")]
    holder.heads[0].build((None, 5, 3), (None, 5, 3))
    holder.built = True
    return L.replace_attention(holder)


class _BiasedAttention(keras.layers.MultiHeadAttention):
    """A subclass that would compute something else with the same weights."""


def _replace_subclass():
    holder = keras.layers.Layer(name="holder")
    holder.attention = _BiasedAttention(2, 4, name="biased")
    holder.attention.build((None, 5, 3), (None, 5, 3))
    holder.built = True
    return L.replace_attention(holder)


def _replace_with_positions():
    return L.replace_attention(keras.layers.Layer(), position_encoding="rope")


class _NormedAttention(keras.layers.Layer):
    """Grouped-query projections plus a norm on the queries."""

    def build(self, shape):
        for role, equation, out in (
            ("_query_dense", "bqm,muh->bquh", (None, 2, 4)),
            ("_key_dense", "bkm,mvh->bkvh", (None, 1, 4)),
            ("_value_dense", "bkm,mvh->bkvh", (None, 1, 4)),
        ):
            setattr(self, role, keras.layers.EinsumDense(equation, out, name=role[1:-6]))
            getattr(self, role).build(shape)
        self._output_dense = keras.layers.EinsumDense("bquh,uhm->bqm", (None, 3), name="out")
        self._output_dense.build((None, None, 2, 4))
        self.query_norm = keras.layers.LayerNormalization(name="query_norm")
        self.query_norm.build((None, None, 2, 4))


def _convert_layer_with_norms():
    layer = _NormedAttention(name="normed")
    layer.build((None, 5, 3))
    return L.QKVAttention.from_grouped_query_attention(layer)


def _loss(y_true, y_pred):
    return kaq.losses.AlmostOneHotEmbeddingLoss(np.eye(4, 3))(y_true, y_pred)


CASES = {
    "ap-l1": lambda: L.ActivityPenalty(l1=-0.1),
    "ap-l2": lambda: L.ActivityPenalty(l2=float("nan")),
    "ap-mask": lambda: L.ActivityPenalty(l1=0.1)(X3, mask=BAD_MASK),
    "mgs-num_groups": lambda: L.MonotoneGroupedSoftmax(0, 4),
    "mgs-group_size": lambda: L.MonotoneGroupedSoftmax(3, 1),
    "mgs-penalty_weight": lambda: L.MonotoneGroupedSoftmax(3, 4, penalty_weight=-1.0),
    "mgs-margin": lambda: L.MonotoneGroupedSoftmax(3, 4, margin=float("inf")),
    "mgs-direction": lambda: L.MonotoneGroupedSoftmax(3, 4, direction="up"),
    "mgs-input": lambda: L.MonotoneGroupedSoftmax(3, 4)(np.zeros((5,), "float32")),
    "mgs-mask": lambda: L.MonotoneGroupedSoftmax(3, 4)(X3, mask=BAD_MASK),
    "decode-probs": lambda: L.monotone_decode(np.zeros((6,), "float32")),
    "map-units": lambda: L.MaskedAttentionPooling(0),
    "map-input": lambda: L.MaskedAttentionPooling(4)(np.zeros((2, 5), "float32")),
    "map-mask": lambda: L.MaskedAttentionPooling(4)(X3, mask=BAD_MASK),
    "qkv-num_heads": lambda: L.QKVAttention(0, 4),
    "qkv-key_dim": lambda: L.QKVAttention(2, 0),
    "qkv-dropout": lambda: L.QKVAttention(2, 4, dropout=1.0),
    "qkv-input": lambda: L.QKVAttention(2, 4)(np.zeros((2, 5), "float32"), X3),
    "qkv-key": lambda: L.QKVAttention(2, 4)(X3, X3, key=np.zeros((2, 6, 3), "float32")),
    "qkv-query_mask": lambda: L.QKVAttention(2, 4)(X3, X3, query_mask=BAD_MASK),
    "qkv-attention_mask": lambda: L.QKVAttention(2, 4)(
        X3, X3, attention_mask=np.ones((2, 5, 4), bool)
    ),
    "qkv-from_mha": _mha_unbuilt,
    "qkv-output_shape": lambda: L.QKVAttention(2, 4, output_shape=0),
    "qkv-sliding_window": lambda: L.QKVAttention(2, 4, sliding_window=0),
    "qkv-penalty_axes": lambda: L.QKVAttention(2, 4, distance_penalty=0.5)(X4, X4),
    "qkv-causal_axes": lambda: L.QKVAttention(2, 4, attention_axes=(1, 2))(
        X4, X4, use_causal_mask=True
    ),
    "nn-min_value": lambda: kaq.constraints.NonNegative(min_value=-1.0),
    "loss-embedding": lambda: kaq.losses.AlmostOneHotEmbeddingLoss(np.zeros(5)),
    "loss-power": lambda: kaq.losses.AlmostOneHotEmbeddingLoss(np.eye(3), power=0),
    "loss-iterations": lambda: kaq.losses.AlmostOneHotEmbeddingLoss(np.eye(3), iterations=0),
    "loss-distance": lambda: kaq.losses.AlmostOneHotEmbeddingLoss(np.eye(3), distance="l1"),
    "loss-y_pred": lambda: _loss(np.zeros((2, 3)), np.zeros((2, 5))),
    "loss-y_true": lambda: _loss(np.zeros((2, 2)), np.full((2, 4), 0.25)),
    "qkv-distance_penalty": lambda: L.QKVAttention(2, 4, distance_penalty=-1.0),
    "ps-axis": lambda: kaq.constraints.ProbabilitySimplex(axis=1.5),
    "ps-weight": lambda: kaq.constraints.ProbabilitySimplex(axis=2)(np.zeros((3, 2), "float32")),
    "na-num_classes": lambda: L.NoiseAdaptation(1),
    "na-input": lambda: L.NoiseAdaptation(3)(np.zeros((2, 4), "float32")),
    "na-trace_penalty": lambda: L.NoiseAdaptation(3, trace_penalty=-0.1),
    "dc-filters": lambda: L.DecomposedConv2D(0, 3),
    "dc-kernel_size": lambda: L.DecomposedConv2D(4, (3, 3, 3)),
    "dc-strides": lambda: L.DecomposedConv2D(4, 3, strides=0),
    "dc-padding": lambda: L.DecomposedConv2D(4, 3, padding="causal"),
    "dc-intermediate_filters": lambda: L.DecomposedConv2D(4, 3, intermediate_filters=0),
    "dc-input": lambda: L.DecomposedConv2D(4, 3)(X3),
    "gs-kl_weight": lambda: L.GaussianSampling(kl_weight=-1.0),
    "gs-seed": lambda: L.GaussianSampling(seed=-1),
    "gs-inputs": lambda: L.GaussianSampling()(X3),
    "gs-shapes": lambda: L.GaussianSampling()([X3, BAD_MASK.astype("float32")]),
    "pe-embeddings": lambda: L.PretrainedEmbedding(np.zeros(5)),
    "pe-finite": lambda: L.PretrainedEmbedding(np.array([[1.0, np.nan]])),
    "pe-trainable_tokens": lambda: L.PretrainedEmbedding(np.eye(4, 3), trainable_tokens=5),
    "pe-trainable_dim": lambda: L.PretrainedEmbedding(np.eye(4, 3), trainable_dim=2),
    "qkv-num_key_value_heads": lambda: L.QKVAttention(4, 4, num_key_value_heads=3),
    "qkv-scores_budget_mb": lambda: L.QKVAttention(2, 4, scores_budget_mb=0),
    "qkv-cache_update_index": lambda: L.QKVAttention(2, 4)(X3, X3, cache_update_index=0),
    "qkv-cache": lambda: L.QKVAttention(2, 4)(
        X3, X3, cache=np.zeros((2, 2, 8, 1, 4), "float32"), cache_update_index=0
    ),
    "qkv-cache-batch": lambda: L.QKVAttention(2, 4)(
        X3[:1], X3[:1], cache=np.zeros((3, 2, 8, 2, 4), "float32"), cache_update_index=0
    ),
    "qkv-cache-dtype": lambda: L.QKVAttention(2, 4)(
        X3, X3, cache=np.zeros((2, 2, 8, 2, 4), "int32"), cache_update_index=0
    ),
    "qkv-cache-max_length": lambda: L.QKVAttention(2, 4)(
        X3, X3, cache=np.zeros((2, 2, 0, 2, 4), "float32"), cache_update_index=0
    ),
    "qkv-cache-index": lambda: L.QKVAttention(2, 4)(
        X3, X3, cache=np.zeros((2, 2, 8, 2, 4), "float32"), cache_update_index=4
    ),
    "qkv-cache-index-negative": lambda: L.QKVAttention(2, 4)(
        X3, X3, cache=np.zeros((2, 2, 8, 2, 4), "float32"), cache_update_index=-1
    ),
    "qkv-cache-index-dtype": lambda: L.QKVAttention(2, 4)(
        X3, X3, cache=np.zeros((2, 2, 8, 2, 4), "float32"), cache_update_index=1.0
    ),
    "qkv-sliding_window-bool": lambda: L.QKVAttention(2, 4, sliding_window=True),
    "crf-num_tags": lambda: L.CRF(0),
    "crf-inputs": lambda: L.CRF(4)(np.zeros((2, 3), "float32")),
    "crf-use_kernel": lambda: L.CRF(4, use_kernel=False)(X3),
    "crf-loss": lambda: kaq.losses.CRFLoss()(np.zeros((2, 5)), X3),
    "crf-allowed_transitions": lambda: L.CRF(3, allowed_transitions=("BIO", ["O", "B-A"])),
    "crf-loss-tags": lambda: kaq.losses.CRFLoss()(
        np.array([[0, 1, 4, 0, 0], [0] * 5]), L.CRF(3, use_kernel=False)(X3)["potentials"]
    ),
    "crf-loss-scheme": lambda: kaq.losses.CRFLoss()(
        np.array([[0, 2, 0, 0, 0], [0] * 5]),
        L.CRF(3, use_kernel=False, allowed_transitions=("BIO", ["O", "B-A", "I-A"]))(X3)["potentials"],
    ),
    "text-inputs": lambda: kaq.text.crf_decode(np.zeros((2, 3), "float32"), np.zeros((3, 3)), [1, 1]),
    "text-transitions": lambda: kaq.text.crf_decode(X3, np.zeros((1, 1), "float32"), [5, 5]),
    "text-lengths": lambda: kaq.text.crf_log_norm(X3, np.array([5]), np.zeros((3, 3), "float32")),
    "text-negative": lambda: kaq.text.crf_log_norm(X3, np.array([5, -1]), np.zeros((3, 3), "float32")),
    "text-tags": lambda: kaq.text.crf_log_likelihood(
        X3, np.array([[0, 1, 3, 0, 0], [0] * 5]), [5, 5], np.zeros((3, 3), "float32")
    ),
    "text-tag_bitmap": lambda: kaq.text.crf_multitag_sequence_score(
        X3, np.ones((2, 5, 1), bool), [5, 5], np.zeros((3, 3), "float32")
    ),
    "text-viterbi-score": lambda: kaq.text.viterbi_decode(np.zeros((0, 3)), np.zeros((3, 3))),
    "text-viterbi-transitions": lambda: kaq.text.viterbi_decode(np.zeros((4, 3)), np.zeros(3)),
    "decode-group_size": lambda: L.monotone_decode(np.zeros((2, 3, 0), "float32")),
    "loss-embedding-finite": lambda: kaq.losses.AlmostOneHotEmbeddingLoss(
        np.array([[np.nan, 0.0, 0.0]] + [[0.0, 0.0, 1.0]] * 3)
    ),
    "loss-embedding_shape": lambda: kaq.losses.AlmostOneHotEmbeddingLoss(embedding_shape=[0, 3]),
    "loss-y_true-batch": lambda: _loss(np.zeros((1, 3)), np.full((2, 4), 0.25)),
    "text-lengths-whole": lambda: kaq.text.crf_log_norm(X3, np.array([3.5, 2.0]), np.zeros((3, 3), "float32")),
    "text-tags-batch": lambda: kaq.text.crf_log_likelihood(
        X3, np.zeros((1, 5), "int32"), [5, 5], np.zeros((3, 3), "float32")
    ),
    "text-tags-dtype": lambda: kaq.text.crf_log_likelihood(
        X3, np.zeros((2, 5), bool), [5, 5], np.zeros((3, 3), "float32")
    ),
    "text-tags-whole": lambda: kaq.text.crf_log_likelihood(
        X3, np.array([[0, 0.5, 0, 0, 0], [0] * 5], "float32"), [5, 5], np.zeros((3, 3), "float32")
    ),
    "text-ends": lambda: kaq.text.crf_log_norm(
        X3, [5, 5], np.zeros((3, 3), "float32"), np.zeros(1, "float32"), np.zeros(3, "float32")
    ),
    "text-state": lambda: kaq.text.crf_forward(X3[:, 1:], X3[:1, 0], np.zeros((3, 3), "float32"), [5, 5]),
    "text-inputs-dtype": lambda: kaq.text.crf_log_norm(X3 > 0, [5, 5], np.zeros((3, 3), "float32")),
    "text-none": lambda: kaq.text.crf_log_norm(X3, [5, 5], None),
    "crf-mask": lambda: L.CRF(3)(X3, mask=np.ones((2,), bool)),
    "crf-loss-batch": lambda: kaq.losses.CRFLoss()(np.zeros((3, 5)), L.CRF(3)(X3)["potentials"]),
    "crf-loss-whole": lambda: kaq.losses.CRFLoss()(
        np.array([[0, 0.5, 0, 0, 0], [0] * 5]), L.CRF(3)(X3)["potentials"]
    ),
    "qkv-rank": _qkv_built_on_rank_3,
    "qkv-cache-index-list": lambda: L.QKVAttention(2, 4)(
        X3, X3, cache=np.zeros((2, 2, 8, 2, 4), "float32"), cache_update_index=[1]
    ),
    "qkv-position_encoding": lambda: L.QKVAttention(2, 4, position_encoding="rope"),
    "qkv-position_encoding-rank": lambda: L.QKVAttention(
        2, 4, attention_axes=2, position_encoding=keras.layers.Identity()
    )(X4, X4),
    "qkv-from_gqa": lambda: L.QKVAttention.from_grouped_query_attention(
        keras.layers.Dense(3, name="dense")
    ),
    "replace-built": lambda: L.replace_attention(
        keras.Sequential([keras.layers.Dense(2)], name="unbuilt")
    ),
    "replace-none": _replace_in_dense_model,
    "replace-graph": _replace_graph_node,
    "replace-list": _replace_in_list,
    "replace-subclass": _replace_subclass,
    "replace-position_encoding": _replace_with_positions,
    "qkv-from_gqa-dropped": _convert_layer_with_norms,
    "tag-labels": lambda: kaq.text.allowed_transitions("BIO", None),
    "text-k": lambda: kaq.text.crf_top_k_decode(X3, np.zeros((3, 3), "float32"), [5, 5], 0),
    "tag-scheme": lambda: kaq.text.allowed_transitions("BILOU2", ["O"]),
    "tag-label": lambda: kaq.text.allowed_transitions("BIO", ["O", "X-PER"]),
    "wn-layer": lambda: L.WeightNormalization("dense"),
    "wn-kernel": lambda: L.WeightNormalization(keras.layers.MaxPooling1D(2))(X3),
}


def readme_rows():
    """(id, message) from each row of the error table in docs/errors.md."""
    text = ERRORS_PAGE.read_text()
    table = text.split("<!-- errors:start -->")[1].split("<!-- errors:end -->")[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "`id`":
            # The message cell is one code span; inner backticks are doubled.
            message = re.fullmatch(r"``? ?(.*?) ?``?", cells[3]).group(1)
            rows.append((cells[0].strip("`"), message))
    return rows


def test_the_table_and_the_cases_match():
    ids = [row[0] for row in readme_rows()]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(CASES)


@pytest.mark.parametrize("case_id,message", readme_rows(), ids=[r[0] for r in readme_rows()])
def test_each_row_raises_its_message(case_id, message):
    with pytest.raises(ValueError) as info:
        CASES[case_id]()
    assert message in str(info.value), (message, str(info.value))
