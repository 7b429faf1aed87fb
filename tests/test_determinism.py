"""Determinism: with `keras.utils.set_random_seed`, two runs are identical.

A model with every component, dropout included (QKVAttention's attention
dropout), trains for a few steps twice from the same seed; the losses and
every weight match exactly.
"""

import numpy as np

import keras
import keras_addons_qa as kaq
from tests import harness


def _run():
    keras.utils.set_random_seed(11)
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(12, 8, mask_zero=True)(tokens)
    x = kaq.layers.QKVAttention(2, 4, dropout=0.3)(x, x)
    x = kaq.layers.ActivityPenalty(l1=1e-2)(x)
    x = keras.layers.Dropout(0.2)(x)
    pooled = kaq.layers.MaskedAttentionPooling(5)(x)
    hidden = keras.layers.Dense(16, kernel_constraint=kaq.constraints.NonNegative())(pooled)
    groups = kaq.layers.MonotoneGroupedSoftmax(4, 3)(hidden)
    model = keras.Model(tokens, groups)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    data, y = harness.every_component_data()
    history = model.fit(data, y["groups"], batch_size=4, epochs=3, verbose=0)
    return history.history["loss"], [harness.to_numpy(w) for w in model.weights]


def test_two_seeded_runs_are_identical():
    losses_1, weights_1 = _run()
    losses_2, weights_2 = _run()
    assert losses_1 == losses_2
    for a, b in zip(weights_1, weights_2):
        np.testing.assert_array_equal(a, b)
    assert len(set(np.round(losses_1, 6))) > 1  # it did train
