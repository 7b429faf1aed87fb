import numbers

import keras
from keras import ops

from keras_addons_qa import _numerics


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class ProbabilitySimplex(keras.constraints.Constraint):
    """Projects each vector along `axis` onto the probability simplex.

    The Euclidean projection (Duchi et al., 2008): every vector `v` along
    `axis` is replaced by the closest `w` (in L2) with `w >= 0` and
    `sum(w) == 1`, which is `w = max(v - theta, 0)` for the one threshold
    `theta` that makes the sum 1. A vector already on the simplex stays as it
    is, and the projection is idempotent.

    `theta` is computed without a data-dependent index: with `u` the vector
    sorted in decreasing order, `theta = max_j (sum(u[:j]) - 1) / j`. That is
    one sort, one cumulative sum and one max, in float32 (float64 stays
    float64), so it runs inside a compiled train step (XLA, `tf.distribute`)
    like any other constraint. Non-finite weights are a diverged model, and
    are not repaired.

    Use it for weights that are distributions: `axis=0` makes each column
    of a `(inputs, outputs)` kernel sum to 1 (a column-stochastic matrix, as
    in `NoiseAdaptation`), `axis=-1` each row.

    Args:
        axis: The axis whose vectors are projected, an int (negative counts
            from the end).

    Example:

    >>> import numpy as np
    >>> w = np.array([[0.5, 1.0], [0.8, 1.0], [-0.2, 1.0]], "float32")
    >>> projected = keras.ops.convert_to_numpy(ProbabilitySimplex(axis=0)(w))
    >>> projected.T.astype("float64").round(4).tolist()
    [[0.35, 0.65, 0.0], [0.3333, 0.3333, 0.3333]]

    References:
        - [Duchi et al., 2008](https://doi.org/10.1145/1390156.1390191),
          Efficient Projections onto the l1-Ball for Learning in High
          Dimensions.
    """

    def __init__(self, axis=0):
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ValueError(
                f"Argument `axis` must be an integer. Received: axis={axis!r}"
            )
        self.axis = int(axis)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        rank = len(w.shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"ProbabilitySimplex(axis={self.axis}) needs a weight with "
                f"more than {max(self.axis, -self.axis - 1)} axes. Received: "
                f"weight.shape={tuple(w.shape)}"
            )
        v = ops.moveaxis(_numerics.widen(w), self.axis, -1)
        # Sorted in decreasing order (ops.sort is ascending).
        u = ops.flip(ops.sort(v, axis=-1), axis=-1)
        count = ops.arange(1, u.shape[-1] + 1, dtype=u.dtype)
        theta = ops.max((ops.cumsum(u, axis=-1) - 1.0) / count, axis=-1, keepdims=True)
        projected = ops.maximum(v - theta, ops.zeros((), v.dtype))
        return ops.cast(ops.moveaxis(projected, -1, self.axis), w.dtype)

    def get_config(self):
        return {"axis": self.axis}
