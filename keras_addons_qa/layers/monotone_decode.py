import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _monotone


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class MonotoneDecode(keras.layers.Layer):
    """The most probable monotone index path, as a layer of a model.

    `monotone_decode` as a layer: from `(..., num_groups, group_size)`
    probabilities (a `MonotoneGroupedSoftmax`'s output) to the int32
    `(..., num_groups)` indices that maximize `sum_g log p[g, k_g]` subject
    to `k_0 <= ... <= k_{G-1}` (`>=` for `"decreasing"`), exactly. No
    weights; it is an inference head. Train the model that ends in the
    softmax, then build the one a server or a phone runs from the same
    layers:

    ```python
    probs = kaq.layers.MonotoneGroupedSoftmax(32, 64)(features)
    trained = keras.Model(inputs, probs)      # compile, fit
    path = kaq.layers.MonotoneDecode()(probs)
    deployed = keras.Model(inputs, path)      # save, export
    ```

    The dynamic program is a loop over groups written with comparisons,
    slices and sums only, so the exported graph stays the same size for any
    number of groups and uses LiteRT builtins and plain ONNX ops (see
    `monotone_decode`).

    Args:
        direction: `"increasing"` (non-decreasing indices) or
            `"decreasing"`.
        **kwargs: Base layer keyword arguments, such as `name`.

    Input shape:
        `(..., num_groups, group_size)` probabilities.

    Output shape:
        `(..., num_groups)` int32 indices.

    Example:

    >>> import numpy as np
    >>> probs = np.array([[[0.1, 0.0, 0.9], [0.0, 0.6, 0.4]]], "float32")
    >>> keras.ops.convert_to_numpy(MonotoneDecode()(probs)).tolist()
    [[2, 2]]
    """

    def __init__(self, direction="increasing", **kwargs):
        super().__init__(**kwargs)
        self.direction = _checks.one_of(
            "direction", direction, _monotone.DIRECTIONS
        )

    def build(self, probs_shape):
        # Known here, so that a traced call (torch's ONNX export) never
        # reads a size from a tensor.
        self._groups = _monotone.groups(probs_shape)

    def call(self, probs):
        return _monotone.decode(
            ops.convert_to_tensor(probs), self.direction, *self._groups
        )

    def compute_output_spec(self, probs):
        _monotone.groups(probs.shape)  # raises if bad
        return keras.KerasTensor(probs.shape[:-1], dtype="int32")

    def get_config(self):
        return {**super().get_config(), "direction": self.direction}


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
    _checks.one_of("direction", direction, _monotone.DIRECTIONS)
    if probs is None:
        raise ValueError("monotone_decode: `probs` must be a tensor. Received: probs=None")
    if isinstance(probs, keras.KerasTensor):
        return MonotoneDecode(direction=direction)(probs)
    probs = ops.convert_to_tensor(probs)
    return _monotone.decode(probs, direction, *_monotone.groups(probs.shape))
