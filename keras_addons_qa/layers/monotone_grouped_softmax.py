import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _monotone
from keras_addons_qa import _numerics
from keras_addons_qa.layers.monotone_decode import monotone_decode


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
        self.direction = _checks.one_of("direction", direction, _monotone.DIRECTIONS)
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
        total = _numerics.batch_mean(ops.sum(per_position), per_position)
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
