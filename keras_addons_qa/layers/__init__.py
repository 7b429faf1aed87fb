"""Layers of keras_addons_qa."""

from keras_addons_qa.layers.activity_penalty import ActivityPenalty
from keras_addons_qa.layers.monotone_grouped_softmax import MonotoneGroupedSoftmax
from keras_addons_qa.layers.monotone_grouped_softmax import expected_index
from keras_addons_qa.layers.monotone_grouped_softmax import monotone_decode

__all__ = [
    "ActivityPenalty",
    "MonotoneGroupedSoftmax",
    "expected_index",
    "monotone_decode",
]
