"""Layers of keras_addons_qa."""

from keras_addons_qa.layers.activity_penalty import ActivityPenalty
from keras_addons_qa.layers.masked_attention_pooling import (
    MaskedAttentionPooling,
)
from keras_addons_qa.layers.monotone_grouped_softmax import MonotoneGroupedSoftmax
from keras_addons_qa.layers.monotone_grouped_softmax import expected_index
from keras_addons_qa.layers.monotone_grouped_softmax import monotone_decode
from keras_addons_qa.layers.qkv_attention import QKVAttention

__all__ = [
    "ActivityPenalty",
    "MaskedAttentionPooling",
    "MonotoneGroupedSoftmax",
    "QKVAttention",
    "expected_index",
    "monotone_decode",
]
