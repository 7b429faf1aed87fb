"""Layers of keras_addons_qa."""

from keras_addons_qa.layers.activity_penalty import ActivityPenalty
from keras_addons_qa.layers.crf import CRF
from keras_addons_qa.layers.decomposed_conv2d import DecomposedConv2D
from keras_addons_qa.layers.gaussian_sampling import GaussianSampling
from keras_addons_qa.layers.masked_attention_pooling import (
    MaskedAttentionPooling,
)
from keras_addons_qa.layers.monotone_decode import MonotoneDecode
from keras_addons_qa.layers.monotone_decode import monotone_decode
from keras_addons_qa.layers.monotone_grouped_softmax import MonotoneGroupedSoftmax
from keras_addons_qa.layers.monotone_grouped_softmax import expected_index
from keras_addons_qa.layers.noise_adaptation import NoiseAdaptation
from keras_addons_qa.layers.pretrained_embedding import PretrainedEmbedding
from keras_addons_qa.layers.qkv_attention import QKVAttention
from keras_addons_qa.layers.replace_attention import replace_attention
from keras_addons_qa.layers.weight_normalization import WeightNormalization

__all__ = [
    "ActivityPenalty",
    "CRF",
    "DecomposedConv2D",
    "GaussianSampling",
    "MaskedAttentionPooling",
    "MonotoneDecode",
    "MonotoneGroupedSoftmax",
    "NoiseAdaptation",
    "PretrainedEmbedding",
    "QKVAttention",
    "WeightNormalization",
    "expected_index",
    "monotone_decode",
    "replace_attention",
]
