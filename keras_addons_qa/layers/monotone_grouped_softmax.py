import math

import keras
from keras import ops

from keras_addons_qa import _buffers
from keras_addons_qa import _checks
from keras_addons_qa import _numerics

_DIRECTIONS = ("increasing", "decreasing")


def expected_index(probs):
    """Expected class index of each group, `E_g = sum_i i * p[..., g, i]`.

    The differentiable stand-in for `argmax` that `MonotoneGroupedSoftmax`
    penalizes.

    Args:
        probs: `(..., num_groups, group_size)` probabilities.

    Returns:
        float32 tensor `(..., num_groups)`.
    """
    return _numerics.expected_index(probs)


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


def monotone_decode(probs, direction="increasing"):
    """Most probable monotone index sequence across groups.

    Returns, for each example, the indices `k_0, ..., k_{G-1}` that maximize
    `sum_g log p[g, k_g]` subject to `k_0 <= k_1 <= ... <= k_{G-1}` (or `>=`
    for `direction="decreasing"`): the exact maximum a-posteriori decoding
    under the monotonicity constraint, unlike a per-group `argmax`. On ties
    the smaller index wins; a NaN or negative probability counts as 0.

    It is a dynamic program over groups (Viterbi with a running max): a
    forward loop over groups (`keras.ops.fori_loop`) that records where
    each group's running max rises, and a backward loop that recovers the
    path from those records. The traced graph does not grow with the number
    of groups, and it holds only comparisons, `where`, `max`, `min`, pads,
    slices, sums and a buffer update (no float `argmax`, no gather, no
    tensor lists), so it exports to SavedModel, LiteRT's builtin ops and ONNX
    (from TensorFlow and from torch, with a dynamic batch size). Called on
    a symbolic tensor (a functional model), it adds a `MonotoneDecode`
    layer.

    Args:
        probs: `(..., num_groups, group_size)` probabilities, for example the
            output of `MonotoneGroupedSoftmax`.
        direction: `"increasing"` (non-decreasing indices) or `"decreasing"`.

    Returns:
        int32 tensor `(..., num_groups)` of indices.

    Example:

    >>> import numpy as np
    >>> probs = np.array([[[0.1, 0.0, 0.9], [0.0, 0.6, 0.4]]], "float32")
    >>> keras.ops.convert_to_numpy(monotone_decode(probs)).tolist()  # argmax: [2, 1]
    [[2, 2]]
    """
    _checks.one_of("direction", direction, _DIRECTIONS)
    if probs is None:
        raise ValueError("monotone_decode: `probs` must be a tensor. Received: probs=None")
    if isinstance(probs, keras.KerasTensor):
        from keras_addons_qa.layers.monotone_decode import MonotoneDecode

        return MonotoneDecode(direction=direction)(probs)
    probs = ops.convert_to_tensor(probs)
    return _decode(probs, direction, *_groups(probs.shape))


def _groups(shape):
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


def _decode(probs, direction, num_groups, group_size):
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


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class MonotoneGroupedSoftmax(keras.layers.Layer):
    """Grouped softmax whose active index is pushed to be monotone.

    One dense projection to `num_groups * group_size` logits, reshaped
    group-major to `(num_groups, group_size)`, and a softmax inside each
    group. The class chosen in each group (for example the row of a boundary
    in each image column) should not decrease from group to group. `argmax`
    has no gradient, so the layer penalizes the expected index
    `E_g = sum_i i * p[g, i]` instead and adds, through `add_loss`,

        penalty_weight * mean_over_batch(sum_g relu(E_g - E_{g+1} + margin)^2)

    for `direction="increasing"` (`E_{g+1} - E_g` for `"decreasing"`). The
    penalty is zero when the groups are already ordered and has a non-zero
    gradient with respect to the kernel and bias otherwise. At inference,
    `monotone_decode` returns the most probable sequence that is exactly
    monotone.

    Inputs of rank > 2 are projected along their last axis: the penalty is
    then summed over every position of an example and averaged over the
    batch. With a mask, masked positions add nothing to the penalty.

    Softmax and penalty are computed in float32; the output is cast to the
    layer's compute dtype.

    Args:
        num_groups: Number of groups, an integer >= 1.
        group_size: Classes per group, an integer >= 2.
        penalty_weight: Weight of the monotonicity penalty, a float >= 0.
        margin: Required gap between consecutive expected indices, >= 0.
        direction: `"increasing"` or `"decreasing"`.
        use_bias: Whether the projection has a bias.
        kernel_initializer: Initializer of the `(features, G * K)` kernel.
        bias_initializer: Initializer of the `(G * K,)` bias.
        kernel_regularizer: Optional regularizer of the kernel.
        kernel_constraint: Optional constraint of the kernel.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: `(batch, ..., features)` tensor.
        mask: Optional bool mask of the leading shape of `inputs`.

    Input shape:
        `(batch, ..., features)`.

    Output shape:
        `(batch, ..., num_groups, group_size)` probabilities; each group sums
        to 1.

    Example:

    >>> import numpy as np
    >>> layer = MonotoneGroupedSoftmax(num_groups=4, group_size=8)
    >>> probs = layer(np.random.rand(2, 16).astype("float32"))
    >>> tuple(probs.shape)
    (2, 4, 8)
    >>> tuple(layer.monotone_decode(probs).shape)
    (2, 4)
    """

    def __init__(
        self,
        num_groups,
        group_size,
        penalty_weight=1.0,
        margin=0.0,
        direction="increasing",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        kernel_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_groups = _checks.integer_at_least("num_groups", num_groups, 1)
        self.group_size = _checks.integer_at_least("group_size", group_size, 2)
        self.penalty_weight = _checks.non_negative_float(
            "penalty_weight", penalty_weight
        )
        self.margin = _checks.non_negative_float("margin", margin)
        self.direction = _checks.one_of("direction", direction, _DIRECTIONS)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "MonotoneGroupedSoftmax expects inputs of shape "
                "(batch, ..., features) with a known feature size. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        units = self.num_groups * self.group_size
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(units,), initializer=self.bias_initializer
            )
        else:
            self.bias = None

    def call(self, inputs, mask=None):
        if mask is not None:
            _checks.check_mask_shape(mask.shape, inputs.shape)
            # Padding may hold anything; keep it out of every gradient.
            inputs = _numerics.sanitize(inputs, mask)
        inputs, kernel, bias = _numerics.cast_to_compute_dtype(
            self, inputs, self.kernel, self.bias
        )
        logits = ops.matmul(inputs, kernel)
        if bias is not None:
            logits = logits + bias
        grouped_shape = tuple(ops.shape(logits)[:-1]) + (
            self.num_groups,
            self.group_size,
        )
        logits = ops.reshape(logits, grouped_shape)
        probs = ops.softmax(_numerics.widen(logits), axis=-1)
        self.add_loss(self.monotonicity_penalty(probs, mask))
        return ops.cast(probs, self.compute_dtype)

    def monotonicity_penalty(self, probs, mask=None):
        """The float32 penalty this layer adds through `add_loss` for `probs`.

        `penalty_weight * mean_over_batch(sum_g relu(E_g - E_{g+1} + margin)^2)`
        (mirrored for `"decreasing"`); masked positions add nothing.
        """
        index = _numerics.expected_index(probs)
        step = index[..., 1:] - index[..., :-1]
        if self.direction == "increasing":
            violation = ops.relu(self.margin - step)
        else:
            violation = ops.relu(self.margin + step)
        per_position = ops.sum(ops.square(violation), axis=-1)
        if mask is not None:
            per_position = _numerics.sanitize(per_position, mask)
        batch_size = ops.cast(ops.shape(per_position)[0], per_position.dtype)
        # max(batch, 1): an empty batch gives 0, not 0 / 0.
        total = ops.sum(per_position) / ops.maximum(batch_size, 1.0)
        return self.penalty_weight * total

    def expected_index(self, probs):
        """Expected index per group of `probs` (see `expected_index`)."""
        return expected_index(probs)

    def monotone_decode(self, probs):
        """Exactly monotone decoding of `probs` in this layer's direction."""
        return monotone_decode(probs, direction=self.direction)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_groups, self.group_size)

    def get_config(self):
        return {
            **super().get_config(),
            "num_groups": self.num_groups,
            "group_size": self.group_size,
            "penalty_weight": self.penalty_weight,
            "margin": self.margin,
            "direction": self.direction,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
            "kernel_regularizer": keras.regularizers.serialize(
                self.kernel_regularizer
            ),
            "kernel_constraint": keras.constraints.serialize(
                self.kernel_constraint
            ),
        }
