"""Functions of keras_addons_qa, in `keras.ops` style."""

from keras_addons_qa.ops.attention import attention

__all__ = ["attention"]
