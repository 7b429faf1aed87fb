"""The stock recipes the benchmarks compare the package against, shared by
`cpu.py` and `end_to_end.py` (this module imports only Keras)."""

import keras
from keras import ops


class StockPooling(keras.layers.Layer):
    """The stock composition: Dense(tanh) -> Dense(1) -> Softmax(mask) -> sum."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(units, activation="tanh")
        self.score = keras.layers.Dense(1, use_bias=False)
        self.softmax = keras.layers.Softmax(axis=1)
        self.supports_masking = True

    def compute_mask(self, x, mask=None):
        return None

    def call(self, x, mask=None):
        scores = ops.squeeze(self.score(self.hidden(x)), -1)
        weights = self.softmax(scores, mask=mask)
        return ops.sum(x * weights[:, :, None], axis=1)
