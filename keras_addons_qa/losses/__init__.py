"""Losses of keras_addons_qa."""

from keras_addons_qa.losses.almost_one_hot_embedding_loss import (
    AlmostOneHotEmbeddingLoss,
)
from keras_addons_qa.losses.crf_loss import CRFLoss

__all__ = ["AlmostOneHotEmbeddingLoss", "CRFLoss"]
