import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _numerics
from keras_addons_qa.constraints.probability_simplex import ProbabilitySimplex


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class NoiseAdaptation(keras.layers.Layer):
    """A learned label-noise transition on top of a classifier.

    The noise layer of Sukhbaatar et al. (2015): training labels are noisy,
    with `Q[i, j] = P(noisy label i | true class j)`. Put this layer on top
    of the classifier's softmax and train on the noisy labels: the model's
    prediction of the *noisy* label is `p_noisy = Q p_clean`, so the
    classifier below learns the clean classes while `Q` absorbs the noise.
    At test time, drop this layer and use the classifier's output.

    `Q` is one `(num_classes, num_classes)` weight whose columns are
    distributions, kept so by `ProbabilitySimplex(axis=0)` after every
    optimizer step. It starts as the identity, so the layer changes nothing
    until it is trained. Outputs are `p @ Q^T`: rows that sum to 1 when the
    inputs do. The product runs in float32 and is cast back.

    Trained jointly with a flexible classifier, the model is not
    identifiable: the classifier can learn the noisy labels itself and leave
    `Q` at the identity, which is a stationary point of the projected
    gradient (the diagonal of each column gets the larger push). Sukhbaatar
    et al. break the tie by pushing `Q` away from the identity;
    `trace_penalty` adds `trace_penalty * trace(Q)` to the loss for that,
    so the noise goes into `Q` and the classifier below stays clean. 0.05 is a
    good start with a mean cross-entropy (tutorial 07 shows the effect).

    Args:
        num_classes: The number of classes, an int >= 2.
        trace_penalty: Weight of the `trace(Q)` loss, a finite float >= 0
            (0: none).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: `(..., num_classes)` class probabilities (a softmax output).

    Output shape:
        Same as the input. A mask is passed on unchanged.

    Example:

    >>> import numpy as np
    >>> layer = NoiseAdaptation(3)
    >>> p = np.array([[0.7, 0.2, 0.1]], "float32")
    >>> keras.ops.convert_to_numpy(layer(p)).astype("float64").round(4).tolist()
    [[0.7, 0.2, 0.1]]
    >>> keras.ops.convert_to_numpy(layer.transition).tolist()  # the identity at first
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

    References:
        - [Sukhbaatar et al., 2015](https://arxiv.org/abs/1406.2080),
          Training Convolutional Networks with Noisy Labels.
    """

    def __init__(self, num_classes, trace_penalty=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _checks.integer_at_least("num_classes", num_classes, 2)
        self.trace_penalty = _checks.non_negative_float("trace_penalty", trace_penalty)
        self.supports_masking = True

    def build(self, input_shape):
        self._check_classes(input_shape)
        self.transition = self.add_weight(
            name="transition",
            shape=(self.num_classes, self.num_classes),
            initializer="identity",
            constraint=ProbabilitySimplex(axis=0),
        )

    def call(self, inputs):
        self._check_classes(inputs.shape)
        p = _numerics.widen(inputs)
        q = ops.cast(self.transition, p.dtype)
        if self.trace_penalty:
            self.add_loss(self.trace_penalty * ops.trace(q))
        return ops.cast(ops.matmul(p, ops.transpose(q)), self.compute_dtype)

    def _check_classes(self, shape):
        shape = _checks.static_shape(shape)
        if len(shape) < 1 or shape[-1] not in (None, self.num_classes):
            raise ValueError(
                f"NoiseAdaptation(num_classes={self.num_classes}) expects "
                f"inputs of shape (..., {self.num_classes}). Received: "
                f"inputs.shape={tuple(shape)}"
            )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "trace_penalty": self.trace_penalty,
        }
