"""The ratio suite's cases: each component against what a user would write
instead, on whichever Keras backend runs (this module imports only Keras,
NumPy and the package; `cpu.py` times the cases on TensorFlow, graph and
XLA, and `backends.py` on JAX and torch).

Each case builds both sides and returns
    {"ours": (loss_fn, variables, inputs), "theirs": (...)}
where loss_fn(*inputs) is the scalar whose gradient the step computes with
respect to `variables` and the float inputs.
"""

import inspect

import keras
import numpy as np
from keras import ops

import keras_addons_qa as kaq
from benchmarks.stock import StockPooling


def _normal(rng, shape):
    return ops.convert_to_tensor(rng.normal(size=shape).astype("float32"))


def _padded(batch, length, dim, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, dim)).astype("float32")
    lengths = rng.integers(length // 2, length + 1, size=batch)
    mask = np.arange(length)[None] < lengths[:, None]
    return ops.convert_to_tensor(x), ops.convert_to_tensor(mask)


def case_qkv_attention(batch=16, length=128, dim=128, heads=4):
    x, mask = _padded(batch, length, dim)
    mha = keras.layers.MultiHeadAttention(heads, dim // heads)
    mha(x, x)
    ours = kaq.layers.QKVAttention.from_multi_head_attention(mha)
    square = ops.logical_and(ops.expand_dims(mask, 2), ops.expand_dims(mask, 1))

    def theirs_fn(x):
        return ops.sum(ops.square(mha(x, x, attention_mask=square)))

    def ours_fn(x):
        return ops.sum(
            ops.square(ours(x, x, query_mask=mask, value_mask=mask))
        )

    return {
        "ours": (ours_fn, ours.trainable_variables, (x,)),
        "theirs": (theirs_fn, mha.trainable_variables, (x,)),
    }


def case_masked_attention_pooling(batch=64, length=256, dim=128, units=64):
    x, mask = _padded(batch, length, dim, seed=1)
    ours = kaq.layers.MaskedAttentionPooling(units)
    theirs = StockPooling(units, name="stock_pooling")
    ours(x, mask=mask)
    theirs(x, mask)
    return {
        "ours": (lambda x: ops.sum(ops.square(ours(x, mask=mask))),
                 ours.trainable_variables, (x,)),
        "theirs": (lambda x: ops.sum(ops.square(theirs(x, mask))),
                   theirs.trainable_variables, (x,)),
    }


def case_monotone_grouped_softmax(batch=256, features=512, groups=32, size=16):
    x = _normal(np.random.default_rng(2), (batch, features))
    ours = kaq.layers.MonotoneGroupedSoftmax(groups, size)
    ours(x)
    # The hand-written loop: one Dense + softmax per group (its argmax penalty has
    # no gradient, so it is left out; ours includes its penalty).
    loop = [keras.layers.Dense(size, activation="softmax") for _ in range(groups)]
    for layer in loop:
        layer(x)

    def ours_fn(x):
        probs = ours(x)
        return ops.sum(ops.square(probs)) + ours.losses[-1]

    def theirs_fn(x):
        probs = ops.stack([layer(x) for layer in loop], axis=1)
        return ops.sum(ops.square(probs))

    theirs_vars = [v for layer in loop for v in layer.trainable_variables]
    return {
        "ours": (ours_fn, ours.trainable_variables, (x,)),
        "theirs": (theirs_fn, theirs_vars, (x,)),
    }


def case_activity_penalty(batch=256, features=512, units=512):
    x = _normal(np.random.default_rng(3), (batch, features))
    dense = keras.layers.Dense(units, activation="relu")
    penalty = kaq.layers.ActivityPenalty(l1=1e-4, l2=1e-4)
    dense(x)

    def ours_fn(x):
        h = penalty(dense(x))
        return ops.sum(ops.square(h)) + penalty.losses[-1]

    def theirs_fn(x):
        return ops.sum(ops.square(dense(x)))

    return {
        "ours": (ours_fn, dense.trainable_variables, (x,)),
        "theirs": (theirs_fn, dense.trainable_variables, (x,)),
    }


def case_almost_one_hot_embedding_loss(batch=64, vocab=4096, dim=128, power=4.0,
                                       from_logits=False, through_softmax=False):
    """The loss against the hand-written recipe it replaces.

    That recipe is a loss of `(target, softmax)`: it starts from the
    probabilities the model outputs. So the default case differentiates
    both losses with respect to those probabilities, and nothing else is in
    the measured step. `through_softmax=True` puts the model's softmax in
    the step too (both sides): its gradient holds three `(B, V)` buffers of
    its own, which is the same cost whichever loss follows it. With
    `from_logits=True` our loss takes the logits and the recipe gets the
    softmax of them, so the softmax is in both steps.
    """
    rng = np.random.default_rng(4)
    embedding = rng.normal(size=(vocab, dim)).astype("float32")
    logits = _normal(rng, (batch, vocab))
    target = _normal(rng, (batch, dim))
    loss = kaq.losses.AlmostOneHotEmbeddingLoss(
        embedding, power=power, from_logits=from_logits
    )
    matrix = ops.convert_to_tensor(embedding)

    # What the step differentiates: the model's probabilities, or its logits
    # when the softmax is part of the step.
    softmax_in_step = from_logits or through_softmax
    inputs = logits if softmax_in_step else ops.softmax(logits)

    def ours_fn(inputs):
        if from_logits:  # the model's last layer has no softmax
            return loss(target, inputs)
        return loss(target, ops.softmax(inputs) if through_softmax else inputs)

    def theirs_fn(inputs):
        # The recipe: p ** power, normalize, reshape to (B, 1, V), tile the
        # matrix per example, batched matmul, then the MSE.
        probs = ops.softmax(inputs) if softmax_in_step else inputs
        lifted = probs ** power
        q = lifted / ops.sum(lifted, axis=1, keepdims=True)
        tiled = ops.tile(matrix[None], (ops.shape(q)[0], 1, 1))
        vectors = ops.squeeze(ops.matmul(q[:, None, :], tiled), 1)
        return ops.mean(ops.square(vectors - target))

    return {
        "ours": (ours_fn, [], (inputs,)),
        "theirs": (theirs_fn, [], (inputs,)),
    }


def case_almost_one_hot_embedding_loss_from_logits(batch=64, **kwargs):
    """The same loss value, from the logits (`from_logits=True`)."""
    return case_almost_one_hot_embedding_loss(batch, from_logits=True, **kwargs)


def case_almost_one_hot_embedding_loss_through_softmax(batch=64, **kwargs):
    """Probabilities, with the model's softmax in both measured steps."""
    return case_almost_one_hot_embedding_loss(batch, through_softmax=True, **kwargs)


CASES = {
    "QKVAttention B16 T128 D128 H4 (padded self-attention)": (
        case_qkv_attention, "keras.layers.MultiHeadAttention, same weights", 1.0
    ),
    "MaskedAttentionPooling B64 T256 D128 units 64": (
        case_masked_attention_pooling,
        "Dense(tanh) -> Dense(1) -> Softmax(mask) -> weighted sum", 1.0,
    ),
    "MonotoneGroupedSoftmax 32 groups of 16 (B256, 512 features)": (
        case_monotone_grouped_softmax, "hand-written loop: a Dense + softmax per group", 0.5
    ),
    "Dense(512) + ActivityPenalty (B256)": (
        case_activity_penalty, "the same Dense alone", 1.10
    ),
    "AlmostOneHotEmbeddingLoss B64 V4096 D128": (
        case_almost_one_hot_embedding_loss, "hand-written recipe: p**4, tile, matmul", 0.25
    ),
    "AlmostOneHotEmbeddingLoss B64 V4096 D128, from_logits=True": (
        case_almost_one_hot_embedding_loss_from_logits,
        "hand-written recipe: softmax, p**4, tile, matmul", 0.25,
    ),
    "AlmostOneHotEmbeddingLoss B64 V4096 D128, through the model's softmax": (
        case_almost_one_hot_embedding_loss_through_softmax,
        "softmax, then the hand-written recipe", 0.25,
    ),
}

# A loss's input is the prediction being trained: it always needs a gradient.
LOSS_CASES = (
    case_almost_one_hot_embedding_loss,
    case_almost_one_hot_embedding_loss_from_logits,
    case_almost_one_hot_embedding_loss_through_softmax,
)

TINY = {
    case_qkv_attention: dict(batch=2, length=16, dim=16, heads=2),
    case_masked_attention_pooling: dict(batch=2, length=16, dim=8, units=4),
    case_monotone_grouped_softmax: dict(batch=2, features=8, groups=4, size=4),
    case_activity_penalty: dict(batch=2, features=8, units=8),
    case_almost_one_hot_embedding_loss: dict(batch=2, vocab=32, dim=8),
    case_almost_one_hot_embedding_loss_from_logits: dict(batch=2, vocab=32, dim=8),
    case_almost_one_hot_embedding_loss_through_softmax: dict(batch=2, vocab=32, dim=8),
}


def case_kwargs(case_fn, size, tiny):
    """The case's keyword arguments at a size: its own, or a 4x batch."""
    kwargs = dict(TINY[case_fn]) if tiny else {}
    if size != "base":
        batch = kwargs.get("batch", _default(case_fn, "batch"))
        kwargs["batch"] = 4 * batch
    return kwargs


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default
