"""Losses of keras_addons_qa."""

from keras_addons_qa.losses.almost_one_hot_embedding_loss import (
    AlmostOneHotEmbeddingLoss,
)

__all__ = ["AlmostOneHotEmbeddingLoss"]
