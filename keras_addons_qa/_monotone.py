"""Monotone decoding across softmax groups (internal): the dynamic
program behind `monotone_decode` and `MonotoneDecode`."""

import math

from keras import ops

from keras_addons_qa import _buffers
from keras_addons_qa import _checks
from keras_addons_qa import _numerics

DIRECTIONS = ("increasing", "decreasing")


def _prefix_max(values, size):
    """Running max over the last axis, of static size `size`.

    A Hillis-Steele scan: log2(K) vectorized steps instead of a loop over K.
    """
    lead = [[0, 0]] * (len(values.shape) - 1)
    shift = 1
    while shift < size:
        shifted = ops.pad(
            values[..., : size - shift],
            lead + [[shift, 0]],
            constant_values=float("-inf"),
        )
        values = ops.maximum(values, shifted)
        shift *= 2
    return values


def groups(shape):
    """The static `(num_groups, group_size)` of `(..., G, K)` probabilities."""
    shape = _checks.static_shape(shape)
    if len(shape) < 2 or shape[-2] is None or shape[-1] is None:
        raise ValueError(
            "`probs` must have shape (..., num_groups, group_size), with a "
            f"known number of groups. Received: probs.shape={shape}"
        )
    if shape[-1] == 0:
        raise ValueError(
            "`probs` must have a class to choose in each group (group_size >= 1). "
            f"Received: probs.shape={shape}"
        )
    return shape[-2:]


def decode(probs, direction, num_groups, group_size):
    """`monotone_decode` with the group count and size as Python ints."""
    rank = len(probs.shape)
    if num_groups == 0 or 0 in _checks.static_shape(probs.shape):  # nothing to decode
        return ops.zeros(ops.shape(probs)[:-1], "int32")
    # `safe_log` with a select for its floor: a NaN probability fails the
    # comparison and counts as 0, so the path stays in range, the same in
    # every mode (a max passes NaN on under XLA, not in a graph).
    probs = _numerics.widen(probs)
    tiny = _numerics.FLOAT32_TINY
    log_probs = ops.log(ops.where(probs >= tiny, probs, tiny))
    # Groups first, for the loops: (G, ..., K). A decreasing path is an
    # increasing one read from the last group to the first.
    log_probs = ops.transpose(log_probs, (rank - 2,) + tuple(range(rank - 2)) + (rank - 1,))
    if direction == "decreasing":
        log_probs = ops.flip(log_probs, axis=0)
    # Compared against (..., K) by broadcasting: no size is read from a
    # tensor, so a traced export (torch's) keeps its batch size dynamic.
    positions = ops.arange(group_size, dtype="int32")
    if num_groups == 1:
        return ops.expand_dims(_buffers.first_argmax(log_probs[0], positions, group_size), -1)

    # The path back from j at group g + 1 goes to the first i <= j with the
    # best score at g: the last i <= j where the running max of g's scores
    # rises strictly (a record). The backward pass needs each group's
    # records, a bool per class, kept in a buffer of (chunks, size) entries
    # filled a chunk at a time: XLA updates a buffer in place, TensorFlow's
    # graph executor copies it, and two levels of about sqrt(G) entries
    # copy about 2 G^1.5 entries instead of G^2. Zero scores after the last
    # group leave the path where it ends.
    steps = num_groups - 1
    size = math.isqrt(steps - 1) + 1  # ceil(sqrt(steps))
    chunks = -(-steps // size)
    rest = ops.pad(log_probs[1:], [[0, chunks * size - steps]] + [[0, 0]] * (rank - 1))
    empty_chunk = ops.zeros_like(rest[:size], dtype="bool")
    lead = [[0, 0]] * (rank - 2)

    def forward(c, carry):
        def step(i, carry):
            # best[..., j]: the best score of a path over the groups so far
            # ending at j; the next group may follow any i <= j.
            best, chunk = carry
            running = _prefix_max(best, group_size)
            before = ops.pad(running[..., :-1], lead + [[1, 0]], constant_values=float("-inf"))
            scores = rest[c * size + i]
            return running + scores, _buffers.put(chunk, i, best > before)

        best, history = carry
        best, chunk = ops.fori_loop(0, size, step, (best, empty_chunk))
        return best, _buffers.put(history, c, chunk)

    history = ops.tile(ops.expand_dims(empty_chunk, 0), (chunks,) + (1,) * rank)
    best, history = ops.fori_loop(0, chunks, forward, (log_probs[0], history))
    last = _buffers.first_argmax(best, positions, group_size)

    def backward(c, carry):
        c = chunks - 1 - c
        chunk = history[c]

        def step(i, carry):
            i = size - 1 - i
            index, path = carry
            records = ops.logical_and(chunk[i], positions <= ops.expand_dims(index, -1))
            index = ops.max(ops.where(records, positions, 0), axis=-1)
            return index, _buffers.put(path, c * size + i, index)

        return ops.fori_loop(0, size, step, carry)

    path = ops.zeros_like(rest[..., 0], dtype="int32")
    _, path = ops.fori_loop(0, chunks, backward, (last, path))
    path = ops.concatenate([path[:steps], ops.expand_dims(last, 0)], axis=0)
    if direction == "decreasing":
        path = ops.flip(path, axis=0)
    return ops.transpose(path, tuple(range(1, rank - 1)) + (0,))
