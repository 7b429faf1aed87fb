import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _compat
from keras_addons_qa import _numerics


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class ActivityPenalty(keras.layers.Layer):
    """Identity layer that penalizes its input through `add_loss`.

    Place it after any intermediate layer to regularize that layer's output
    (its activity) rather than its weights. It adds

        (l1 * sum(|x|) + l2 * sum(x ** 2)) / batch_size

    to the model's losses: the same value `keras.layers.ActivityRegularization`
    adds from Keras 3.14 on (before, it does not divide by the batch size).
    Unlike it, this layer

    - respects masks: padded steps add nothing to the penalty (and so pass no
      gradient through it), whatever they hold;
    - computes the penalty in float32 and adds it as float32, so it works
      under the `"mixed_float16"` policy (a float16 loss crashes `fit`) and
      cannot overflow there.

    Args:
        l1: L1 factor, a finite float >= 0.
        l2: L2 factor, a finite float >= 0.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor of any shape; axis 0 is the batch.
        mask: Optional bool mask of the leading shape of `inputs` (for
            example `(batch, time)` for `(batch, time, features)` inputs),
            True for real steps. Keras passes it in automatically after an
            `Embedding(mask_zero=True)` or a `Masking` layer.

    Input shape:
        Arbitrary.

    Output shape:
        Same as the input. The mask, if any, is passed on unchanged.

    Example:

    >>> import numpy as np
    >>> layer = ActivityPenalty(l2=0.01)
    >>> outputs = layer(np.full((5, 5), 2.0, dtype="float32"))
    >>> [round(float(loss), 4) for loss in layer.losses]
    [0.2]
    """

    def __init__(self, l1=0.0, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.l1 = _checks.non_negative_float("l1", l1)
        self.l2 = _checks.non_negative_float("l2", l2)
        self.supports_masking = True
        _compat.build_at_init(self)

    def call(self, inputs, mask=None):
        self.add_loss(self.penalty(inputs, mask))
        return inputs

    def penalty(self, inputs, mask=None):
        """Returns the float32 penalty for `inputs`, without adding it."""
        x = _numerics.widen(inputs)
        if mask is not None:
            _checks.check_mask_shape(mask.shape, inputs.shape)
            x = _numerics.sanitize(x, mask)
        if not (self.l1 or self.l2):
            total = ops.zeros((), x.dtype)
        else:
            total = _l1_l2(x, self.l1, self.l2)
        if len(x.shape) == 0:
            return total
        return _numerics.batch_mean(total, x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "l1": self.l1, "l2": self.l2}


def _l1_l2(x, l1, l2):
    """`l1 * sum(|x|) + l2 * sum(x ** 2)`, with the gradient
    `g * (l1 * sign(x) + 2 * l2 * x)` written out.

    Written out so that at `x = 0` the l1 term's gradient is `sign(0) = 0`
    on every backend, as TensorFlow and torch take it (JAX's `abs` takes 1
    there). It costs what automatic differentiation costs on `make bench`'s
    penalty case.
    """

    @_numerics.custom_gradient
    def penalty(x):
        terms = [l1 * ops.sum(ops.abs(x))] if l1 else []
        if l2:
            terms.append(l2 * ops.sum(ops.square(x)))
        total = terms[0] if len(terms) == 1 else terms[0] + terms[1]

        def grad(upstream):
            upstream = ops.cast(upstream, x.dtype)
            if not l1:
                return x * (2.0 * l2 * upstream)
            d_x = ops.sign(x) * (l1 * upstream)
            if l2:
                d_x = d_x + x * (2.0 * l2 * upstream)
            return d_x

        return total, grad

    return penalty(x)
