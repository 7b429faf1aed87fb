import keras
from keras import ops

from keras_addons_qa import _checks


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class NonNegative(keras.constraints.Constraint):
    """Projects a weight onto `w >= min_value`, elementwise.

    Pass it as `kernel_constraint` (or any `*_constraint`) of a layer. Keras
    applies constraints inside the optimizer step, right after each variable
    update: the projection is one `maximum` op in the same compiled train
    step, so it costs nothing like the "clip the weights after every batch"
    recipe (a Python callback and a second pass over the variables per step).
    It works unchanged under `tf.distribute` strategies and `jit_compile`.

    The projection is idempotent: applying it twice gives the result of
    applying it once.

    Args:
        min_value: The lower bound, a finite float >= 0.

    Example:

    >>> import numpy as np
    >>> keras.ops.convert_to_numpy(NonNegative()(np.array([-1.0, 0.5], "float32"))).tolist()
    [0.0, 0.5]
    >>> layer = keras.layers.Dense(3, kernel_constraint=NonNegative())
    """

    def __init__(self, min_value=0.0):
        self.min_value = _checks.non_negative_float("min_value", min_value)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        return ops.maximum(w, ops.cast(self.min_value, w.dtype))

    def get_config(self):
        return {"min_value": self.min_value}
