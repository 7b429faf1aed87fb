"""Weight constraints of keras_addons_qa."""

from keras_addons_qa.constraints.non_negative import NonNegative

__all__ = ["NonNegative"]
