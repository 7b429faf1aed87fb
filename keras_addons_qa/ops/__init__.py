"""Functions of keras_addons_qa, in `keras.ops` style."""

from keras_addons_qa.ops.attention import attention
from keras_addons_qa.ops.attention import position_mask

__all__ = ["attention", "position_mask"]
