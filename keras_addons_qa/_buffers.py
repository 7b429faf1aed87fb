"""Loops that keep their results in fixed-shape buffers, for
`MonotoneGroupedSoftmax`'s decoding (chunks of steps, so each write is
cheap), and the arg-max the decoders share.

Written with comparisons, selects and scatters only, so the traced graph
exports to SavedModel, LiteRT's builtin ops and ONNX with a dynamic batch.
"""

import keras
from keras import ops


def first_argmax(values, positions, size):
    """`argmax` over the last axis (the first maximum), written with a
    comparison and a min: Keras's TensorFlow `argmax` of floats lowers to
    Bitcast and BitwiseAnd, which LiteRT's builtins and ONNX Runtime lack.
    `positions` is `arange(size)`, broadcastable to `values`."""
    top = ops.max(values, axis=-1, keepdims=True)
    return ops.min(ops.where(values >= top, positions, size), axis=-1)


def put(buffer, index, value):
    """`buffer[index] = value` along the first axis, for a traced index and
    a slot still all zeros (False).

    A scatter, which XLA does in place. On torch, `put_by_select`
    (tested on each decoder): torch's ONNX export writes a scatter's shapes
    as constants, which breaks the file for another batch size.
    """
    if keras.backend.backend() == "torch":
        return put_by_select(buffer, index, value)
    return ops.scatter_update(buffer, ops.reshape(index, (1, 1)), ops.expand_dims(value, 0))


def put_by_select(buffer, index, value):
    """`put` as selects; a bool buffer takes an `or` (ONNX Runtime has no
    bool `Where`)."""
    rows = ops.arange(buffer.shape[0], dtype="int32")
    hit = ops.reshape(ops.equal(rows, index), (-1,) + (1,) * (len(buffer.shape) - 1))
    value = ops.expand_dims(value, 0)
    if keras.backend.standardize_dtype(buffer.dtype) == "bool":
        return ops.logical_or(buffer, ops.logical_and(hit, value))
    return ops.where(hit, value, buffer)
