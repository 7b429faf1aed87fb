"""MultiHeadAttention's attention axes, for `QKVAttention`.

Projected heads are `(B, *steps, heads, dim)`; attention runs over the
`axes` among the steps, and the scores are laid out as the other steps,
the heads, the query's attention axes, then the key's. This module says how
masks broadcast to that layout, as MultiHeadAttention broadcasts them, and
folds attention over several axes (or with other axes before the heads)
into `ops.attention`'s `(B, steps, heads, dim)`: the other axes into the
batch, the attention axes into one.
"""

import math

import numpy as np
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import ops as kaq_ops


def resolve(axes, input_rank):
    """The attention axes of inputs of `input_rank` as `build` resolves
    them (`None`: every axis but the batch and the features)."""
    projected = input_rank + 1
    if axes is None:
        return tuple(range(1, projected - 2))
    return tuple(a if a >= 0 else (projected - 1) + a for a in axes)


def expand_mask(mask, rank, axes):
    """`mask` broadcast to the scores' `rank` as MultiHeadAttention does it:
    unit axes inserted where the heads axis goes."""
    axis = -2 * len(axes) - 1
    for _ in range(rank - len(mask.shape)):
        mask = ops.expand_dims(mask, axis)
    return mask


def steps_to_scores(steps, axes, keys):
    """A step mask (the input's shape without features) in the scores'
    layout: `(B, 1, T, 1)` for queries, `(B, 1, 1, S)` for keys (rank-3
    inputs); the other axes stay where the scores have them."""
    if steps is None:
        return None
    steps = ops.cast(steps, "bool")
    free = [i for i in range(len(steps.shape)) if i not in axes]
    if free + list(axes) != list(range(len(steps.shape))):
        steps = ops.transpose(steps, free + list(axes))
    steps = ops.expand_dims(steps, len(free))  # the heads axis
    for _ in axes:  # the other side's attention axes
        steps = ops.expand_dims(steps, len(free) + 1 if keys else -1)
    return steps


def one_mask(mask, key_valid, query_valid, positions, rank, axes):
    """The scores' mask (`mask`, already in their layout) AND the key and
    query step masks AND the `(T, S)` `positions` mask, each broadcast to
    the scores' layout; None if all are None."""
    return and_masks(
        mask,
        steps_to_scores(key_valid, axes, keys=True),
        steps_to_scores(query_valid, axes, keys=False),
        None if positions is None else expand_mask(positions, rank, axes),
    )


def and_masks(*masks):
    """The bool AND of the masks given (None ones skipped), broadcast; None
    if every one is None."""
    out = None
    for mask in masks:
        if mask is not None:
            mask = ops.cast(mask, "bool")
            out = mask if out is None else ops.logical_and(out, mask)
    return out


def check_attention_mask(shape, steps, axes, heads):
    """Raises unless an `attention_mask` of `shape` broadcasts to the
    scores of query and value `steps` as MultiHeadAttention broadcasts it
    (unit axes only)."""
    query_steps, value_steps = steps
    free = [query_steps[i] for i in range(len(query_steps)) if i not in axes]
    full = tuple(free) + tuple(query_steps[i] for i in axes) + tuple(
        value_steps[i] for i in axes
    )
    with_heads = full[: len(free)] + (heads,) + full[len(free):]
    shape = _checks.static_shape(shape)
    expected = with_heads if len(shape) == len(with_heads) else full[-len(shape):]
    ok = 2 <= len(shape) <= len(with_heads) and all(
        s is None or e is None or s == e or s == 1 for s, e in zip(shape, expected)
    )
    if not ok:
        raise ValueError(
            "`attention_mask` must broadcast to the attention scores: shape "
            f"{full[-2:]} (queries, keys), {full} or {with_heads} (with "
            f"heads), size-1 axes allowed. Received: "
            f"attention_mask.shape={shape}"
        )


def scores_shape(query_shape, key_steps, axes, heads):
    """The scores' shape for a query of `query_shape` and keys of
    `key_steps` along the attention axes."""
    free = [query_shape[i] for i in range(len(query_shape) - 1) if i not in axes]
    return tuple(free) + (heads,) + tuple(query_shape[i] for i in axes) + tuple(key_steps)


def attention(q, k, v, *, axes, key_valid, mask, return_weights, **options):
    """`ops.attention` over the attention `axes` of projected heads `(B,
    *steps, heads, dim)`; `key_valid` has the key's steps, `mask` is in the
    scores' layout (`expand_mask`). Returns `(context, scores or None)`."""
    options["return_weights"] = return_weights
    if len(q.shape) == 4:
        outputs = kaq_ops.attention(q, k, v, key_mask=key_valid, mask=mask, **options)
        return outputs if return_weights else (outputs, None)
    rank, heads = len(q.shape), q.shape[-2]
    free = [i for i in range(1, rank - 2) if i not in axes]
    order = [0] + free + list(axes) + [rank - 2, rank - 1]
    q_steps, k_steps = ops.shape(q), ops.shape(k)
    lead = [q_steps[i] for i in [0] + free]
    queries = [q_steps[i] for i in axes]
    keys = [k_steps[i] for i in axes]

    def fold(x, steps):
        x = ops.transpose(x, order)
        return ops.reshape(x, [-1, math.prod(steps[i] for i in axes)] + list(steps[-2:]))

    if key_valid is not None:
        key_valid = ops.reshape(ops.transpose(key_valid, order[:-2]), (-1, math.prod(keys)))
    if mask is not None:
        full = lead + [heads] + queries + keys
        mask = ops.reshape(
            ops.broadcast_to(mask, full), (-1, heads, math.prod(queries), math.prod(keys))
        )
    outputs = kaq_ops.attention(
        fold(q, q_steps), fold(k, k_steps), fold(v, ops.shape(v)),
        key_mask=key_valid, mask=mask, **options,
    )
    context, scores = outputs if return_weights else (outputs, None)
    unfolded = lead + queries + [heads, ops.shape(v)[-1]]
    context = ops.transpose(ops.reshape(context, unfolded), list(np.argsort(order)))
    if scores is not None:
        scores = ops.reshape(scores, lead + [heads] + queries + keys)
    return context, scores
