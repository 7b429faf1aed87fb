"""Weight constraints of keras_addons_qa."""

from keras_addons_qa.constraints.non_negative import NonNegative
from keras_addons_qa.constraints.probability_simplex import ProbabilitySimplex

__all__ = ["NonNegative", "ProbabilitySimplex"]
